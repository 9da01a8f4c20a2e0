"""Hard safety margins for trajectory planning (DESIGN 5.4), typed and range-checked.

Defaults and allowed ranges are data in ``resources/margins.json``:

* needle **surface** >= ``foramen_mm`` from every sacral foramen (default 2 mm);
* needle surface >= ``canal_mm`` from the spinal canal (default 2 mm);
* the tip >= ``anterior_cortex_mm`` inside the anterior sacral cortex (default 5 mm);
* no anterior exit unless ``allow_anterior_exit``;
* only the transiliac approach may cross the SI joint while ``si_joint_only_transiliac``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from imaging.errors import PlanningParameterError, ResourceDataError
from planning.needles import read_resource_json, require_number

_DISTANCE_FIELDS = ("foramen_mm", "canal_mm", "anterior_cortex_mm")
_FLAG_FIELDS = ("allow_anterior_exit", "si_joint_only_transiliac")
_FIELDS = _DISTANCE_FIELDS + _FLAG_FIELDS
_PLAIN_NAMES = {
    "foramen_mm": "foramen margin (mm)",
    "canal_mm": "canal margin (mm)",
    "anterior_cortex_mm": "anterior cortex margin (mm)",
    "allow_anterior_exit": "allow anterior exit",
    "si_joint_only_transiliac": "SI joint only for transiliac",
}


@functools.cache
def _margin_data() -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    data = read_resource_json("margins.json")
    defaults, ranges = data.get("defaults"), data.get("ranges_mm")
    if not isinstance(defaults, dict) or set(defaults) != set(_FIELDS):
        raise ResourceDataError(f"resources/margins.json: defaults must give {', '.join(_FIELDS)}")
    if not isinstance(ranges, dict) or set(ranges) != set(_DISTANCE_FIELDS):
        raise ResourceDataError(
            f"resources/margins.json: ranges_mm must give {', '.join(_DISTANCE_FIELDS)}"
        )
    out: dict[str, tuple[float, float]] = {}
    for name, pair in ranges.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
            or not 0 <= pair[0] < pair[1]
        ):
            raise ResourceDataError(f"resources/margins.json: ranges_mm.{name} must be [low, high]")
        out[name] = (float(pair[0]), float(pair[1]))
    return defaults, out


def margin_range_mm(name: str) -> tuple[float, float]:
    """Allowed ``(low, high)`` range of a distance margin, mm (from ``resources/margins.json``)."""
    return _margin_data()[1][name]


def _default(name: str) -> Any:
    """Default of one margin (a float or a bool; :class:`Margins` checks it)."""
    return _margin_data()[0][name]


@dataclass(frozen=True)
class Margins:
    """User-adjustable hard margins; validated on construction.

    Attributes
    ----------
    foramen_mm : float
        Least distance from the needle surface to any sacral foramen, mm.
    canal_mm : float
        Least distance from the needle surface to the spinal canal, mm.
    anterior_cortex_mm : float
        Least bone left ahead of the tip before the anterior cortex, mm.
    allow_anterior_exit : bool
        Whether a path may leave the sacrum through its anterior cortex.
    si_joint_only_transiliac : bool
        Whether only the transiliac approach may cross the SI joint.

    Raises
    ------
    PlanningParameterError
        A distance is not a finite number within its range, or a flag is not a bool.
    """

    foramen_mm: float = dataclasses.field(default_factory=lambda: _default("foramen_mm"))
    canal_mm: float = dataclasses.field(default_factory=lambda: _default("canal_mm"))
    anterior_cortex_mm: float = dataclasses.field(
        default_factory=lambda: _default("anterior_cortex_mm")
    )
    allow_anterior_exit: bool = dataclasses.field(
        default_factory=lambda: _default("allow_anterior_exit")
    )
    si_joint_only_transiliac: bool = dataclasses.field(
        default_factory=lambda: _default("si_joint_only_transiliac")
    )

    def __post_init__(self) -> None:
        for name in _DISTANCE_FIELDS:
            low, high = margin_range_mm(name)
            value = require_number(getattr(self, name), _PLAIN_NAMES[name], low=low, high=high)
            object.__setattr__(self, name, value)
        for name in _FLAG_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise PlanningParameterError(
                    f"{_PLAIN_NAMES[name]} must be true or false, got {getattr(self, name)!r}"
                )

    def with_overrides(self, **changes: float | bool) -> Margins:
        """A copy with some margins changed (validated).

        Raises
        ------
        PlanningParameterError
            An unknown margin name, or a value out of range.
        """
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise PlanningParameterError(
                f"unknown margin(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, float | bool]:
        """The margins as a JSON-ready dict."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, data: object) -> Margins:
        """Margins from a dict written by :meth:`to_json` (every field required).

        Raises
        ------
        PlanningParameterError
            Not an object, a field missing or unknown, or a value out of range.
        """
        if not isinstance(data, dict):
            raise PlanningParameterError("margins must be a JSON object")
        missing = [f for f in _FIELDS if f not in data]
        unknown = sorted(set(data) - set(_FIELDS))
        if missing:
            raise PlanningParameterError(f"margins lack the field(s) {', '.join(missing)}")
        if unknown:
            raise PlanningParameterError(f"margins have unknown field(s) {', '.join(unknown)}")
        return cls(**{name: data[name] for name in _FIELDS})
