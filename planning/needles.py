"""Needle catalogue: the needles and RF electrodes sacroplan plans with, read from data.

The catalogue lives in ``resources/needles.json`` (gauge, length, outer diameter, working
length, kind, active tip). Nothing here hard-codes a needle: add or edit rows in the data
file. Reach is judged against the **working length** (length minus the hub and the
operator's grip, about 15 mm), the deepest skin-to-target distance a needle reaches.

This module also holds :func:`read_resource_json`, the one reader of ``resources/*.json``
used by the planning package.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, cast

from imaging.errors import PlanningParameterError, ResourceDataError

NeedleKind = Literal["coaxial_biopsy", "bone", "rfa_electrode"]
NEEDLE_KINDS: tuple[str, ...] = ("coaxial_biopsy", "bone", "rfa_electrode")


def read_resource_json(name: str) -> dict[str, Any]:
    """Read a JSON data file shipped in the ``resources`` package.

    Parameters
    ----------
    name : str
        File name inside ``resources/`` (e.g. ``"needles.json"``).

    Returns
    -------
    dict
        The parsed top-level JSON object.

    Raises
    ------
    ResourceDataError
        The file is missing, is not valid JSON or is not a JSON object.
    """
    try:
        text = resources.files("resources").joinpath(name).read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError) as exc:
        raise ResourceDataError(
            f"the data file resources/{name} is missing ({exc}); reinstall sacroplan"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResourceDataError(f"the data file resources/{name} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ResourceDataError(f"the data file resources/{name} must hold a JSON object")
    return data


def require_number(
    value: object, what: str, *, low: float | None = None, high: float | None = None
) -> float:
    """Return ``value`` as a finite float within ``[low, high]`` or raise.

    Parameters
    ----------
    value : object
        The value to check (bools are refused).
    what : str
        Plain name of the value, used in the message.
    low, high : float, optional
        Inclusive bounds.

    Raises
    ------
    PlanningParameterError
        ``value`` is not a finite number or is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanningParameterError(f"{what} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise PlanningParameterError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and out < low) or (high is not None and out > high):
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise PlanningParameterError(f"{what} must be between {lo} and {hi}, got {out:g}")
    return out


@dataclass(frozen=True)
class Needle:
    """One needle or RF electrode of the catalogue.

    Attributes
    ----------
    id : str
        Stable identifier used in plans (``"15G-138"``, ``"13G-100"``, ``"17G-rfa-20"``).
    label : str
        Plain name shown to the user.
    gauge : int
        Needle gauge (G).
    length_mm : float
        Shaft length, mm.
    outer_diameter_mm : float
        Outer diameter of the shaft, mm; trajectories model the needle as a capsule of this
        diameter.
    working_length_mm : float
        Deepest reachable skin-to-target distance, mm (length minus hub and grip).
    kind : {"coaxial_biopsy", "bone", "rfa_electrode"}
        What the needle is.
    active_tip_mm : float or None
        Length of the active (uninsulated) tip of an RF electrode, mm; ``None`` otherwise.
    """

    id: str
    label: str
    gauge: int
    length_mm: float
    outer_diameter_mm: float
    working_length_mm: float
    kind: NeedleKind
    active_tip_mm: float | None = None

    @property
    def radius_mm(self) -> float:
        """Outer radius, mm."""
        return self.outer_diameter_mm / 2.0

    def to_json(self) -> dict[str, Any]:
        """The needle as a JSON-ready dict (same keys as ``resources/needles.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, *, where: str = "needle") -> Needle:
        """Build and validate a needle from a catalogue row.

        Raises
        ------
        PlanningParameterError
            A field is missing, of the wrong type or out of range (the message names it).
        """
        if not isinstance(data, dict):
            raise PlanningParameterError(f"{where} must be a JSON object")
        fields = (
            "id",
            "label",
            "gauge",
            "length_mm",
            "outer_diameter_mm",
            "working_length_mm",
            "kind",
            "active_tip_mm",
        )
        missing = [f for f in fields if f not in data]
        unknown = sorted(set(data) - set(fields))
        if missing:
            raise PlanningParameterError(f"{where} lacks the field(s) {', '.join(missing)}")
        if unknown:
            raise PlanningParameterError(f"{where} has unknown field(s) {', '.join(unknown)}")
        nid, label, kind = data["id"], data["label"], data["kind"]
        if not isinstance(nid, str) or not nid.strip():
            raise PlanningParameterError(f"{where}.id must be a non-empty string")
        where = f"needle {nid!r}"
        if not isinstance(label, str) or not label.strip():
            raise PlanningParameterError(f"{where}: label must be a non-empty string")
        if kind not in NEEDLE_KINDS:
            raise PlanningParameterError(
                f"{where}: kind must be one of {', '.join(NEEDLE_KINDS)}, got {kind!r}"
            )
        gauge = data["gauge"]
        if isinstance(gauge, bool) or not isinstance(gauge, int) or not 6 <= gauge <= 30:
            raise PlanningParameterError(f"{where}: gauge must be a whole number 6-30")
        length = require_number(data["length_mm"], f"{where}: length_mm", low=1.0, high=1000.0)
        od = require_number(
            data["outer_diameter_mm"], f"{where}: outer_diameter_mm", low=0.1, high=10.0
        )
        working = require_number(
            data["working_length_mm"], f"{where}: working_length_mm", low=1.0, high=length
        )
        tip_raw = data["active_tip_mm"]
        if kind == "rfa_electrode":
            tip: float | None = require_number(
                tip_raw, f"{where}: active_tip_mm", low=1.0, high=length
            )
        elif tip_raw is not None:
            raise PlanningParameterError(f"{where}: only RF electrodes have an active_tip_mm")
        else:
            tip = None
        return cls(
            id=nid,
            label=label,
            gauge=gauge,
            length_mm=length,
            outer_diameter_mm=od,
            working_length_mm=working,
            kind=cast(NeedleKind, kind),
            active_tip_mm=tip,
        )


@functools.cache
def _catalogue() -> MappingProxyType[str, Needle]:
    data = read_resource_json("needles.json")
    rows = data.get("needles")
    if not isinstance(rows, list) or not rows:
        raise ResourceDataError("resources/needles.json must list at least one needle")
    by_id: dict[str, Needle] = {}
    for n, row in enumerate(rows):
        try:
            needle = Needle.from_json(row, where=f"needles[{n}]")
        except PlanningParameterError as exc:
            raise ResourceDataError(f"resources/needles.json: {exc}") from exc
        if needle.id in by_id:
            raise ResourceDataError(f"resources/needles.json: needle id {needle.id!r} repeats")
        by_id[needle.id] = needle
    return MappingProxyType(by_id)


def needle_catalogue() -> tuple[Needle, ...]:
    """All needles of ``resources/needles.json``, in file order.

    Raises
    ------
    ResourceDataError
        The catalogue file is missing or malformed.
    """
    return tuple(_catalogue().values())


@functools.cache
def default_needle() -> Needle:
    """The catalogue's default needle (``default_id`` in ``resources/needles.json``).

    Raises
    ------
    ResourceDataError
        ``default_id`` is missing or names no needle of the catalogue.
    """
    default_id = read_resource_json("needles.json").get("default_id")
    cat = _catalogue()
    if not isinstance(default_id, str) or default_id not in cat:
        raise ResourceDataError(
            f"resources/needles.json: default_id {default_id!r} is not one of {', '.join(cat)}"
        )
    return cat[default_id]


def get_needle(needle_id: str) -> Needle:
    """Look a needle up by its id.

    Raises
    ------
    PlanningParameterError
        No needle has this id; the message lists the valid ids.
    """
    cat = _catalogue()
    try:
        return cat[needle_id]
    except (KeyError, TypeError):
        raise PlanningParameterError(
            f"unknown needle {needle_id!r}; the catalogue has: {', '.join(cat)}"
        ) from None


def reach_deficit_mm(skin_to_target_mm: float, needle: Needle | str) -> float:
    """How many millimetres the needle is too short for a path (0 when it reaches).

    Parameters
    ----------
    skin_to_target_mm : float
        Straight skin-entry-to-target distance, mm.
    needle : Needle or str
        The needle or its catalogue id.
    """
    n = get_needle(needle) if isinstance(needle, str) else needle
    dist = require_number(skin_to_target_mm, "skin-to-target distance (mm)", low=0.0)
    return max(0.0, dist - n.working_length_mm)


def reach_ok(skin_to_target_mm: float, needle: Needle | str) -> bool:
    """Whether ``needle``'s working length reaches a target ``skin_to_target_mm`` deep."""
    return reach_deficit_mm(skin_to_target_mm, needle) == 0.0
