"""The plan: everything a planning session decides, as one versioned JSON document.

A :class:`Plan` is an immutable value (frozen dataclasses; change it with
``dataclasses.replace`` or :meth:`PlanModel.update`). It holds the case reference, the
anatomy landmarks, the lesion, the margins, the needle, the candidate trajectories and the
suggestion, the chosen trajectories, the cement and RFA plans, and the workstation's view
state. :func:`save_plan` writes it atomically; :func:`load_plan` reads it back and refuses,
with a message a radiologist can act on, anything that is not a valid plan of this version.

JSON schema ``sacroplan.plan/1`` (top-level keys, in order)::

    schema            "sacroplan.plan/1"
    created, modified ISO 8601 UTC timestamps
    software_version  sacroplan version that wrote the file
    case              {source_path, series_uid, patient_name, patient_id, study_date,
                      modality, grid} (strings or null; ``grid`` null or {size [i, j, k],
                      spacing_mm, origin_lps, direction (9 numbers, columns i, j, k)}: the
                      study grid the plan was made on). Loading a plan never opens
                      ``source_path``; ``sacroplan report``/``export`` read (never write) the
                      study there to redraw the images and rebuild the lesion mask.
                      ``modality`` and ``grid`` may be absent in older files.
    anatomy           free-form JSON object (landmarks, LPS mm)
    lesion            null or {volume_ml, max_diameter_mm, centroid_lps, denis_zone, zones_ml,
                      flags, seed_lps, mode, ...}; optional ``band`` [low, high] (the value
                      band the lesion grew in) and ``mask`` (the lesion voxels on the study
                      grid, see :func:`encode_mask`)
    margins           {foramen_mm, canal_mm, anterior_cortex_mm, allow_anterior_exit,
                      si_joint_only_transiliac}
    needle            needle id (resources/needles.json)
    evaluated         {approach: number of trajectories evaluated}
    candidates        [{approach, side, skin_entry_lps, bone_entry_lps, target_lps, needle,
                      needle_od_mm, skin_to_target_mm, in_bone_mm,
                      clearance_mm {foramina, by_foramen {name: mm}, canal, exact},
                      tip_to_anterior_cortex_mm, exits_anterior, si_joint_crossed, feasible,
                      violations [str], score, c_arm {primary_deg, secondary_deg, text}}]
    best_by_approach  {approach: {"candidate": index into candidates}
                      or {"blocked_by": [plain sentences]}}
    suggestion        null or {approach, candidate (index or null), reasons [str]}
    trajectories      [{entry_lps, target_lps, needle, approach, source: suggested|manual}]
    cement            null or CementSuggestion.to_json()
    rfa               null or RfaPlan.to_json()
    view_state        free-form JSON object for the workstation
    multi_needle      optional: absent (files without it still load) or
                      :meth:`planning.multi_needle.MultiNeedlePlan.to_json` (schema
                      ``sacroplan.multi_needle/1``: how many needles the lesion needs, each
                      needle with its candidate, cement share and reach, the coverage and the
                      reasons); written only when the plan has one

Versioning: the number in ``schema`` changes only when a reader of the older version could
misread a file. A new optional block (``multi_needle``, ``case.modality``, ``case.grid``)
is a minor change: it keeps the number, older files without it load unchanged, and the
block is written only when it holds something.

Points are ``[x, y, z]`` in LPS millimetres. Non-finite numbers are never written or read.

Events: :class:`PlanModel` is a tiny Qt-free observer around the current plan;
``subscribe(callback)`` gets ``callback(what, plan)`` after every change, where ``what``
names the changed field(s) (``"lesion"``, ``"candidates"``, ...) or ``"plan"`` for a whole
new plan. The app layer adapts it to Qt signals and undo commands (each command stores the
plan before and after).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from imaging.atomic import atomic_write_text
from imaging.errors import PlanFileError, PlanningParameterError
from planning.carm import CArmView
from planning.cement import CementSuggestion
from planning.margins import Margins
from planning.needles import default_needle
from planning.rfa import RfaPlan

if TYPE_CHECKING:
    from planning.multi_needle import MultiNeedlePlan

SCHEMA = "sacroplan.plan/1"
SCHEMA_VERSION = 1
_SCHEMA_RE = re.compile(r"^sacroplan\.plan/(\d{1,6})$")
#: Larger files are refused before parsing (a plan is a few hundred kB at most).
MAX_PLAN_BYTES = 50_000_000
TRAJECTORY_SOURCES: tuple[str, ...] = ("suggested", "manual")
LESION_KEYS: tuple[str, ...] = (
    "volume_ml",
    "max_diameter_mm",
    "centroid_lps",
    "denis_zone",
    "zones_ml",
    "flags",
    "seed_lps",
    "mode",
)

Point = tuple[float, float, float]


# -- reading typed values out of parsed JSON --------------------------------------------------
class _FieldError(Exception):
    """A field of a plan has the wrong type or value; ``path`` names it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


def _obj(
    value: object, path: str, keys: tuple[str, ...] | None = None, *, extra_ok: bool = False
) -> dict[str, Any]:
    """``value`` as a dict holding ``keys``; other keys are refused unless ``extra_ok``."""
    if not isinstance(value, dict):
        raise _FieldError(path, f"must be an object, got {_kind(value)}")
    if keys is not None:
        missing = [k for k in keys if k not in value]
        if missing:
            raise _FieldError(f"{path}.{missing[0]}" if path else missing[0], "is missing")
        unknown = [k for k in value if k not in keys]
        if unknown and not extra_ok:
            raise _FieldError(
                f"{path}.{unknown[0]}" if path else unknown[0], "is not a known field"
            )
    return value


def _kind(value: object) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true/false",
        type(None): "null",
    }.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _num(value: object, path: str, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(path, f"must be a number, got {_kind(value)}")
    out = float(value)
    if not math.isfinite(out):
        raise _FieldError(path, "must be a finite number")
    if low is not None and out < low:
        raise _FieldError(path, f"must be at least {low:g}, got {out:g}")
    return out


def _opt_num(value: object, path: str, *, low: float | None = None) -> float | None:
    return None if value is None else _num(value, path, low=low)


def _int(value: object, path: str, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(path, f"must be a whole number, got {_kind(value)}")
    if value < low:
        raise _FieldError(path, f"must be at least {low}, got {value}")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _FieldError(path, f"must be a string, got {_kind(value)}")
    return value


def _opt_str(value: object, path: str) -> str | None:
    return None if value is None else _str(value, path)


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(path, f"must be true or false, got {_kind(value)}")
    return value


def _point(value: object, path: str) -> Point:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise _FieldError(path, "must be a point [x, y, z] in LPS mm")
    x, y, z = (_num(v, f"{path}[{i}]") for i, v in enumerate(value))
    return (x, y, z)


def _opt_point(value: object, path: str) -> Point | None:
    return None if value is None else _point(value, path)


def _str_list(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _FieldError(path, f"must be a list of strings, got {_kind(value)}")
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _plain(value: object, path: str) -> Any:
    """A JSON-ready copy of ``value`` (numpy values become plain numbers and lists)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _FieldError(path, "holds a non-finite number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _FieldError(path, f"has a non-string key {k!r}")
            out[k] = _plain(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise _FieldError(path, f"holds a value JSON cannot store ({type(value).__name__})")


def _nested(path: str, parse: Callable[[object], Any], value: object) -> Any:
    """Run a component's ``from_json`` and name the plan field when it refuses."""
    try:
        return parse(value)
    except PlanningParameterError as exc:
        raise _FieldError(path, f"is not valid: {exc}") from exc


def _pt_json(p: Point | None) -> list[float] | None:
    return None if p is None else [p[0], p[1], p[2]]


# -- components ------------------------------------------------------------------------------
#: Keys of ``case.grid``.
GRID_KEYS: tuple[str, ...] = ("size", "spacing_mm", "origin_lps", "direction")
#: Fields of ``case`` that files written before they existed may lack.
_CASE_OPTIONAL: tuple[str, ...] = ("modality", "grid")
#: A lesion mask may hold at most this many runs (a plan stays well under its size limit).
MAX_MASK_RUNS = 1_000_000


@dataclass(frozen=True)
class CaseRef:
    """Which study the plan belongs to (all optional).

    ``source_path`` is never opened, resolved or written by sacroplan when a plan loads;
    the report and export commands read the study there (never write it) to redraw the
    images, and check it against ``grid``.

    Attributes
    ----------
    source_path, series_uid, patient_name, patient_id, study_date : str or None
        Where the study was read from and its DICOM identifiers.
    modality : str or None
        ``"CT"`` or ``"MR"``.
    grid : dict or None
        The study grid: ``{"size": [i, j, k], "spacing_mm": [x, y, z], "origin_lps": [x, y,
        z], "direction": [9 numbers, row-major, columns = i, j, k axes]}`` (mm, LPS).
    """

    source_path: str | None = None
    series_uid: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    modality: str | None = None
    grid: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["grid"] = None if self.grid is None else _grid(self.grid, "case.grid")
        return out

    @classmethod
    def from_json(cls, data: object, path: str = "case") -> CaseRef:
        """Parse and validate (strings or null; ``modality`` and ``grid`` may be absent)."""
        names = tuple(f.name for f in dataclasses.fields(cls))
        required = tuple(n for n in names if n not in _CASE_OPTIONAL)
        d = _obj(data, path, required, extra_ok=True)
        unknown = [k for k in d if k not in names]
        if unknown:
            raise _FieldError(f"{path}.{unknown[0]}", "is not a known field")
        values: dict[str, Any] = {
            n: _opt_str(d.get(n), f"{path}.{n}") for n in names if n != "grid"
        }
        grid = d.get("grid")
        values["grid"] = None if grid is None else _grid(grid, f"{path}.grid")
        return cls(**values)


def study_reference(source: str) -> str:
    """``case.source_path`` for a study read from ``source``: an existing path made absolute
    (a plan is read from anywhere later), anything else (``"sample:<site>"``) as it is."""
    if source.startswith("sample:"):
        return source
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


def grid_json(
    size: tuple[int, int, int] | list[int],
    spacing_mm: object,
    origin_lps: object,
    direction: object,
) -> dict[str, Any]:
    """The ``case.grid`` object of a study grid.

    Parameters
    ----------
    size : (3,) int
        Voxels along ``i, j, k``.
    spacing_mm, origin_lps : (3,) float, mm, LPS
    direction : (3, 3) float
        Columns are the LPS unit vectors of the ``i, j, k`` axes.
    """
    return _grid(
        {
            "size": [int(v) for v in size],
            "spacing_mm": np.asarray(spacing_mm, dtype=float).reshape(3).tolist(),
            "origin_lps": np.asarray(origin_lps, dtype=float).reshape(3).tolist(),
            "direction": np.asarray(direction, dtype=float).reshape(9).tolist(),
        },
        "case.grid",
    )


def _grid(value: object, path: str) -> dict[str, Any]:
    d = _obj(value, path, GRID_KEYS)
    size = d["size"]
    if not isinstance(size, list | tuple) or len(size) != 3:
        raise _FieldError(f"{path}.size", "must be three whole numbers [i, j, k]")
    sizes = [_int(v, f"{path}.size[{n}]", low=1) for n, v in enumerate(size)]
    spacing = _point(d["spacing_mm"], f"{path}.spacing_mm")
    if min(spacing) <= 0:
        raise _FieldError(f"{path}.spacing_mm", "must be positive")
    direction = d["direction"]
    if not isinstance(direction, list | tuple) or len(direction) != 9:
        raise _FieldError(f"{path}.direction", "must be nine numbers (a 3x3 matrix)")
    return {
        "size": sizes,
        "spacing_mm": list(spacing),
        "origin_lps": list(_point(d["origin_lps"], f"{path}.origin_lps")),
        "direction": [_num(v, f"{path}.direction[{n}]") for n, v in enumerate(direction)],
    }


def clearance_is_lower_bound(
    value_mm: float | None, needle_od_mm: float, *, exact: bool = False
) -> bool:
    """True when a reported clearance is the scoring kernel's cap, i.e. only "at least" this.

    The kernel follows each structure only up to :data:`geometry.kernels.DEFAULT_CLEARANCE_CAP_MM`
    from the needle's axis; a farther structure is reported at the cap minus the needle's radius
    (less the interpolation bound). Such a value is a true lower bound, shown as "≥". Clearances
    measured on the structures' surfaces (``exact``, see :attr:`Clearance.exact`) have no cap.
    """
    from geometry.kernels import DEFAULT_CLEARANCE_CAP_MM

    if exact or value_mm is None or not math.isfinite(value_mm):
        return False
    return value_mm + needle_od_mm / 2.0 >= DEFAULT_CLEARANCE_CAP_MM - 0.5


def clearance_text(
    value_mm: float | None, needle_od_mm: float, *, exact: bool = False, digits: int = 1
) -> str:
    """A clearance for people: ``"11.3 mm"``, ``"≥ 18.8 mm"`` at the kernel's cap (unless
    ``exact``: measured without a cap), ``"–"`` when absent."""
    if value_mm is None:
        return "–"
    mark = "≥ " if clearance_is_lower_bound(value_mm, needle_od_mm, exact=exact) else ""
    return f"{mark}{value_mm:.{digits}f} mm"


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Run-length code of a binary mask on the study grid, for ``lesion.mask``.

    Parameters
    ----------
    mask : (K, J, I) ndarray
        Nonzero = inside, indexed ``[k, j, i]`` like :class:`imaging.volume.Volume`.

    Returns
    -------
    dict
        ``{"shape": [K, J, I], "runs": [start, length, start, length, ...]}``: the inside
        voxels as runs over the C-order flattened array.
    """
    inside = np.flatnonzero(np.asarray(mask).reshape(-1))  # one pass; the lesion is small
    if inside.size == 0:
        runs = np.zeros(0, dtype=np.int64)
    else:
        breaks = np.flatnonzero(np.diff(inside) != 1)
        starts = inside[np.concatenate([[0], breaks + 1])]
        stops = inside[np.concatenate([breaks, [inside.size - 1]])] + 1
        runs = np.column_stack([starts, stops - starts]).reshape(-1)
    return {"shape": [int(v) for v in np.shape(mask)], "runs": [int(v) for v in runs]}


def decode_mask(data: Mapping[str, Any]) -> np.ndarray:
    """The boolean ``[k, j, i]`` mask of :func:`encode_mask` output (validated on load)."""
    shape = tuple(int(v) for v in data["shape"])
    flat = np.zeros(int(np.prod(shape)), dtype=bool)
    runs = np.asarray(data["runs"], dtype=np.int64).reshape(-1, 2)
    for start, length in runs:
        flat[start : start + length] = True
    return flat.reshape(shape)


def _mask(value: object, path: str) -> dict[str, Any]:
    d = _obj(value, path, ("shape", "runs"))
    shape = d["shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        raise _FieldError(f"{path}.shape", "must be three whole numbers [k, j, i]")
    dims = [_int(v, f"{path}.shape[{n}]", low=1) for n, v in enumerate(shape)]
    total = dims[0] * dims[1] * dims[2]
    runs = d["runs"]
    if not isinstance(runs, list) or len(runs) % 2 or len(runs) > 2 * MAX_MASK_RUNS:
        raise _FieldError(f"{path}.runs", "must be a list of start, length pairs")
    end = 0
    for n in range(0, len(runs), 2):
        start = _int(runs[n], f"{path}.runs[{n}]")
        length = _int(runs[n + 1], f"{path}.runs[{n + 1}]", low=1)
        if start < end or start + length > total:
            raise _FieldError(f"{path}.runs", "must be ordered runs inside the grid")
        end = start + length
    return {"shape": dims, "runs": list(runs)}


@dataclass(frozen=True)
class Clearance:
    """Needle-surface clearances of one trajectory, mm (negative = the needle cuts in).

    Attributes
    ----------
    foramina : float or None
        Least clearance to any foramen.
    by_foramen : dict of str to float
        Clearance per named foramen (``"left S1"``).
    canal : float or None
        Clearance to the spinal canal.
    exact : bool
        True when measured on the structures' surfaces without a cap (the candidates a plan
        reports); False for the scoring kernel's values, which stop at its cap (a needle being
        dragged): a value at the cap then means "at least".
    """

    foramina: float | None
    by_foramen: dict[str, float]
    canal: float | None
    exact: bool = False

    def to_json(self) -> dict[str, Any]:
        """``{"foramina", "by_foramen", "canal", "exact"}``."""
        return {
            "foramina": self.foramina,
            "by_foramen": dict(self.by_foramen),
            "canal": self.canal,
            "exact": self.exact,
        }

    @classmethod
    def from_json(cls, data: object, path: str = "clearance_mm") -> Clearance:
        """Parse and validate (``exact`` is optional: plans saved before it are not exact)."""
        d = _obj(data, path, ("foramina", "by_foramen", "canal"), extra_ok=True)
        unknown = [k for k in d if k not in ("foramina", "by_foramen", "canal", "exact")]
        if unknown:
            raise _FieldError(f"{path}.{unknown[0]}", "is not a known field")
        exact = d.get("exact", False)
        if not isinstance(exact, bool):
            raise _FieldError(f"{path}.exact", f"must be true/false, got {_kind(exact)}")
        by = _obj(d["by_foramen"], f"{path}.by_foramen")
        return cls(
            foramina=_opt_num(d["foramina"], f"{path}.foramina"),
            by_foramen={k: _num(v, f"{path}.by_foramen.{k}") for k, v in by.items()},
            canal=_opt_num(d["canal"], f"{path}.canal"),
            exact=exact,
        )


CANDIDATE_KEYS: tuple[str, ...] = (
    "approach",
    "side",
    "skin_entry_lps",
    "bone_entry_lps",
    "target_lps",
    "needle",
    "needle_od_mm",
    "skin_to_target_mm",
    "in_bone_mm",
    "clearance_mm",
    "tip_to_anterior_cortex_mm",
    "exits_anterior",
    "si_joint_crossed",
    "feasible",
    "violations",
    "score",
    "c_arm",
)


@dataclass(frozen=True)
class Candidate:
    """One evaluated trajectory.

    Attributes
    ----------
    approach : str
        Approach key (``"posterior_short"``, ``"transiliac"``, ...).
    side : str or None
        ``"left"``, ``"right"`` or ``"midline"``.
    skin_entry_lps, target_lps : (float, float, float)
        Skin entry and needle tip, mm, LPS.
    bone_entry_lps : (float, float, float) or None
        Where the needle enters bone, mm, LPS.
    needle : str
        Needle id.
    needle_od_mm : float
        Outer diameter used for the clearances, mm.
    skin_to_target_mm, in_bone_mm : float
        Path length from skin to tip, and the part of it in bone, mm.
    clearance_mm : Clearance
        Needle-surface clearances, mm.
    tip_to_anterior_cortex_mm : float or None
        Bone left ahead of the tip along the needle direction, mm.
    exits_anterior, si_joint_crossed, feasible : bool
        Whether the path leaves the sacrum anteriorly, crosses the SI joint, meets every
        hard constraint.
    violations : tuple of str
        Plain-language reasons it is infeasible.
    score : float or None
        Ranking score (higher is better); ``None`` when not ranked.
    c_arm : CArmView or None
        Bull's-eye view of the trajectory.
    """

    approach: str
    side: str | None
    skin_entry_lps: Point
    bone_entry_lps: Point | None
    target_lps: Point
    needle: str
    needle_od_mm: float
    skin_to_target_mm: float
    in_bone_mm: float
    clearance_mm: Clearance
    tip_to_anterior_cortex_mm: float | None
    exits_anterior: bool
    si_joint_crossed: bool
    feasible: bool
    violations: tuple[str, ...] = ()
    score: float | None = None
    c_arm: CArmView | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with exactly :data:`CANDIDATE_KEYS`."""
        return {
            "approach": self.approach,
            "side": self.side,
            "skin_entry_lps": _pt_json(self.skin_entry_lps),
            "bone_entry_lps": _pt_json(self.bone_entry_lps),
            "target_lps": _pt_json(self.target_lps),
            "needle": self.needle,
            "needle_od_mm": self.needle_od_mm,
            "skin_to_target_mm": self.skin_to_target_mm,
            "in_bone_mm": self.in_bone_mm,
            "clearance_mm": self.clearance_mm.to_json(),
            "tip_to_anterior_cortex_mm": self.tip_to_anterior_cortex_mm,
            "exits_anterior": self.exits_anterior,
            "si_joint_crossed": self.si_joint_crossed,
            "feasible": self.feasible,
            "violations": list(self.violations),
            "score": self.score,
            "c_arm": None if self.c_arm is None else self.c_arm.to_json(),
        }

    @classmethod
    def from_json(cls, data: object, path: str = "candidate") -> Candidate:
        """Parse and validate; the error names the offending field."""
        d = _obj(data, path, CANDIDATE_KEYS)
        p = f"{path}."
        return cls(
            approach=_str(d["approach"], p + "approach"),
            side=_opt_str(d["side"], p + "side"),
            skin_entry_lps=_point(d["skin_entry_lps"], p + "skin_entry_lps"),
            bone_entry_lps=_opt_point(d["bone_entry_lps"], p + "bone_entry_lps"),
            target_lps=_point(d["target_lps"], p + "target_lps"),
            needle=_str(d["needle"], p + "needle"),
            needle_od_mm=_num(d["needle_od_mm"], p + "needle_od_mm", low=0.0),
            skin_to_target_mm=_num(d["skin_to_target_mm"], p + "skin_to_target_mm", low=0.0),
            in_bone_mm=_num(d["in_bone_mm"], p + "in_bone_mm", low=0.0),
            clearance_mm=Clearance.from_json(d["clearance_mm"], p + "clearance_mm"),
            tip_to_anterior_cortex_mm=_opt_num(
                d["tip_to_anterior_cortex_mm"], p + "tip_to_anterior_cortex_mm"
            ),
            exits_anterior=_bool(d["exits_anterior"], p + "exits_anterior"),
            si_joint_crossed=_bool(d["si_joint_crossed"], p + "si_joint_crossed"),
            feasible=_bool(d["feasible"], p + "feasible"),
            violations=_str_list(d["violations"], p + "violations"),
            score=_opt_num(d["score"], p + "score"),
            c_arm=None
            if d["c_arm"] is None
            else _nested(p + "c_arm", CArmView.from_json, d["c_arm"]),
        )


@dataclass(frozen=True)
class Trajectory:
    """A trajectory the user chose (from a suggestion or placed by hand).

    Attributes
    ----------
    entry_lps, target_lps : (float, float, float)
        Skin entry and tip, mm, LPS.
    needle : str
        Needle id.
    approach : str or None
        Approach key, when known.
    source : {"suggested", "manual"}
        Where it came from.
    """

    entry_lps: Point
    target_lps: Point
    needle: str
    approach: str | None
    source: Literal["suggested", "manual"]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "entry_lps": _pt_json(self.entry_lps),
            "target_lps": _pt_json(self.target_lps),
            "needle": self.needle,
            "approach": self.approach,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: object, path: str = "trajectory") -> Trajectory:
        """Parse and validate."""
        d = _obj(data, path, ("entry_lps", "target_lps", "needle", "approach", "source"))
        source = _str(d["source"], f"{path}.source")
        if source not in TRAJECTORY_SOURCES:
            raise _FieldError(f"{path}.source", f"must be 'suggested' or 'manual', got {source!r}")
        return cls(
            entry_lps=_point(d["entry_lps"], f"{path}.entry_lps"),
            target_lps=_point(d["target_lps"], f"{path}.target_lps"),
            needle=_str(d["needle"], f"{path}.needle"),
            approach=_opt_str(d["approach"], f"{path}.approach"),
            source=cast(Literal["suggested", "manual"], source),
        )


@dataclass(frozen=True)
class Suggestion:
    """The suggested approach and trajectory with the reasons, in plain words.

    Attributes
    ----------
    approach : str or None
        Suggested approach key (``None`` when nothing is feasible).
    candidate : int or None
        Index into :attr:`Plan.candidates`.
    reasons : tuple of str
        Why this one, and why the others were rejected.
    """

    approach: str | None
    candidate: int | None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "approach": self.approach,
            "candidate": self.candidate,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: object, path: str = "suggestion") -> Suggestion:
        """Parse and validate."""
        d = _obj(data, path, ("approach", "candidate", "reasons"))
        cand = d["candidate"]
        return cls(
            approach=_opt_str(d["approach"], f"{path}.approach"),
            candidate=None if cand is None else _int(cand, f"{path}.candidate"),
            reasons=_str_list(d["reasons"], f"{path}.reasons"),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def software_version() -> str:
    """The installed sacroplan version (``"unknown"`` when not installed)."""
    try:
        return metadata.version("sacroplan")
    except metadata.PackageNotFoundError:
        return "unknown"


PLAN_KEYS: tuple[str, ...] = (
    "schema",
    "created",
    "modified",
    "software_version",
    "case",
    "anatomy",
    "lesion",
    "margins",
    "needle",
    "evaluated",
    "candidates",
    "best_by_approach",
    "suggestion",
    "trajectories",
    "cement",
    "rfa",
    "view_state",
)
#: Top-level blocks a plan file may lack (written only when the plan holds them).
PLAN_OPTIONAL_KEYS: tuple[str, ...] = ("multi_needle",)


@dataclass(frozen=True)
class Plan:
    """A whole plan (see the module docstring for its JSON form).

    Treat it as immutable, including its dict fields: make changes with
    ``dataclasses.replace`` or :meth:`PlanModel.update`.
    """

    created: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)
    software_version: str = field(default_factory=software_version)
    case: CaseRef = field(default_factory=CaseRef)
    anatomy: dict[str, Any] = field(default_factory=dict)
    lesion: dict[str, Any] | None = None
    margins: Margins = field(default_factory=Margins)
    needle: str = field(default_factory=lambda: default_needle().id)
    evaluated: dict[str, int] = field(default_factory=dict)
    candidates: tuple[Candidate, ...] = ()
    best_by_approach: dict[str, dict[str, Any]] = field(default_factory=dict)
    suggestion: Suggestion | None = None
    trajectories: tuple[Trajectory, ...] = ()
    cement: CementSuggestion | None = None
    rfa: RfaPlan | None = None
    view_state: dict[str, Any] = field(default_factory=dict)
    multi_needle: MultiNeedlePlan | None = None

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict with :data:`PLAN_KEYS` (and ``multi_needle`` when
        the plan has one).

        Raises
        ------
        PlanFileError
            A free-form field (anatomy, lesion, view state) holds something JSON cannot
            store, or a number is not finite; the message names the field.
        """
        try:
            out = {
                "schema": SCHEMA,
                "created": self.created,
                "modified": self.modified,
                "software_version": self.software_version,
                "case": self.case.to_json(),
                "anatomy": _plain(self.anatomy, "anatomy"),
                "lesion": None if self.lesion is None else _plain(self.lesion, "lesion"),
                "margins": self.margins.to_json(),
                "needle": self.needle,
                "evaluated": dict(self.evaluated),
                "candidates": [c.to_json() for c in self.candidates],
                "best_by_approach": _plain(self.best_by_approach, "best_by_approach"),
                "suggestion": None if self.suggestion is None else self.suggestion.to_json(),
                "trajectories": [t.to_json() for t in self.trajectories],
                "cement": None if self.cement is None else self.cement.to_json(),
                "rfa": None if self.rfa is None else self.rfa.to_json(),
                "view_state": _plain(self.view_state, "view_state"),
            }
            if self.multi_needle is not None:
                out["multi_needle"] = self.multi_needle.to_json()
            # Every number of the typed parts must be finite too.
            _plain(out, "")
        except _FieldError as exc:
            raise PlanFileError(f"the plan cannot be saved: {_describe(exc)}") from exc
        return out

    @classmethod
    def from_json(cls, data: object) -> Plan:
        """Build a plan from parsed JSON (as :func:`load_plan` does, without a file).

        Raises
        ------
        PlanFileError
            Not a plan of a known schema, or a field is missing or ill-typed (named).
        """
        _check_schema(data, "the data")
        try:
            return _plan_from_json(data)
        except _FieldError as exc:
            raise PlanFileError(f"the plan is not valid: {_describe(exc)}") from exc


def _describe(exc: _FieldError) -> str:
    where = exc.path.lstrip(".") or "the plan"
    return f"the field '{where}' {exc.problem}"


def _lesion(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    d = _obj(value, "lesion", LESION_KEYS, extra_ok=True)
    _num(d["volume_ml"], "lesion.volume_ml", low=0.0)
    _num(d["max_diameter_mm"], "lesion.max_diameter_mm", low=0.0)
    _opt_point(d["centroid_lps"], "lesion.centroid_lps")
    _opt_point(d["seed_lps"], "lesion.seed_lps")
    zone = d["denis_zone"]
    if zone is not None and (_int(zone, "lesion.denis_zone", low=1) > 3):
        raise _FieldError("lesion.denis_zone", "must be 1, 2, 3 or null")
    if d["zones_ml"] is not None:
        for k, v in _obj(d["zones_ml"], "lesion.zones_ml").items():
            _num(v, f"lesion.zones_ml.{k}", low=0.0)
    if not isinstance(d["flags"], dict | list):
        raise _FieldError("lesion.flags", f"must be an object or a list, got {_kind(d['flags'])}")
    _opt_str(d["mode"], "lesion.mode")
    if d.get("band") is not None:
        band = d["band"]
        if not isinstance(band, list) or len(band) != 2:
            raise _FieldError("lesion.band", "must be [low, high]")
        low, high = (_num(v, f"lesion.band[{n}]") for n, v in enumerate(band))
        if not low < high:
            raise _FieldError("lesion.band", "must have low < high")
    out = cast(dict[str, Any], _plain(d, "lesion"))
    if d.get("mask") is not None:
        out["mask"] = _mask(d["mask"], "lesion.mask")
    return out


def _best_entry(
    value: object, path: str, index: Callable[[object, str], int | None]
) -> dict[str, Any]:
    """One ``best_by_approach`` entry: ``{"candidate": i}`` or ``{"blocked_by": [...]}``."""
    d = _obj(value, path)
    if set(d) == {"candidate"}:
        return {"candidate": index(d["candidate"], f"{path}.candidate")}
    if set(d) == {"blocked_by"} and isinstance(d["blocked_by"], list):
        return {"blocked_by": [_str(r, f"{path}.blocked_by") for r in d["blocked_by"]]}
    raise _FieldError(path, 'must be {"candidate": index} or {"blocked_by": [reasons]}')


def _multi_needle(value: object) -> MultiNeedlePlan | None:
    """The optional ``multi_needle`` block (absent or null: none)."""
    if value is None:
        return None
    from planning.multi_needle import MultiNeedlePlan  # it builds on this module

    try:
        return MultiNeedlePlan.from_json(value)
    except PlanFileError as exc:
        raise _FieldError("multi_needle", f"is not valid: {exc}") from exc


def _plan_from_json(data: object) -> Plan:
    d = _obj(data, "", PLAN_KEYS, extra_ok=True)
    unknown = [k for k in d if k not in PLAN_KEYS + PLAN_OPTIONAL_KEYS]
    if unknown:
        raise _FieldError(unknown[0], "is not a known field")
    for ts in ("created", "modified"):
        text = _str(d[ts], ts)
        try:
            datetime.fromisoformat(text)
        except ValueError:
            raise _FieldError(ts, f"must be an ISO 8601 date and time, got {text!r}") from None
    candidates = d["candidates"]
    if not isinstance(candidates, list):
        raise _FieldError("candidates", f"must be a list, got {_kind(candidates)}")
    cands = tuple(Candidate.from_json(c, f"candidates[{i}]") for i, c in enumerate(candidates))

    def index(value: object, path: str) -> int | None:
        if value is None:
            return None
        i = _int(value, path)
        if i >= len(cands):
            raise _FieldError(path, f"points to candidate {i}, but there are {len(cands)}")
        return i

    best = {
        k: _best_entry(v, f"best_by_approach.{k}", index)
        for k, v in _obj(d["best_by_approach"], "best_by_approach").items()
    }
    suggestion = None
    if d["suggestion"] is not None:
        suggestion = Suggestion.from_json(d["suggestion"])
        index(suggestion.candidate, "suggestion.candidate")
    trajectories = d["trajectories"]
    if not isinstance(trajectories, list):
        raise _FieldError("trajectories", f"must be a list, got {_kind(trajectories)}")
    return Plan(
        created=d["created"],
        modified=d["modified"],
        software_version=_str(d["software_version"], "software_version"),
        case=CaseRef.from_json(d["case"]),
        anatomy=cast(dict[str, Any], _plain(_obj(d["anatomy"], "anatomy"), "anatomy")),
        lesion=_lesion(d["lesion"]),
        margins=_nested("margins", Margins.from_json, d["margins"]),
        needle=_str(d["needle"], "needle"),
        evaluated={
            k: _int(v, f"evaluated.{k}") for k, v in _obj(d["evaluated"], "evaluated").items()
        },
        candidates=cands,
        best_by_approach=best,
        suggestion=suggestion,
        trajectories=tuple(
            Trajectory.from_json(t, f"trajectories[{i}]") for i, t in enumerate(trajectories)
        ),
        cement=None
        if d["cement"] is None
        else _nested("cement", CementSuggestion.from_json, d["cement"]),
        rfa=None if d["rfa"] is None else _nested("rfa", RfaPlan.from_json, d["rfa"]),
        view_state=cast(dict[str, Any], _plain(_obj(d["view_state"], "view_state"), "view_state")),
        multi_needle=_multi_needle(d.get("multi_needle")),
    )


# -- files -----------------------------------------------------------------------------------
def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


def _check_schema(data: object, name: str) -> None:
    """Refuse anything but a JSON object whose schema is this version's (or an older one)."""
    if not isinstance(data, dict):
        raise PlanFileError(
            f"{name} is not a sacroplan plan (schema missing: it holds {_kind(data)}, "
            "not an object)"
        )
    schema = data.get("schema")
    if schema is None:
        raise PlanFileError(f"{name} is not a sacroplan plan (schema missing; expected {SCHEMA})")
    match = _SCHEMA_RE.match(schema) if isinstance(schema, str) else None
    if match is None or int(match.group(1)) < 1:
        shown = repr(schema) if len(repr(schema)) <= 60 else repr(schema)[:59] + "…"
        raise PlanFileError(f"{name} is not a sacroplan plan (schema {shown}; expected {SCHEMA})")
    if int(match.group(1)) > SCHEMA_VERSION:
        raise PlanFileError(
            f"{name} was written by a newer sacroplan (schema {schema}); update sacroplan to "
            "open it"
        )
    _check_path_fields(data, name)


#: Longest file path a plan may record (PATH_MAX on Linux).
MAX_PATH_CHARS = 4096


def _check_path_fields(data: dict, name: str) -> None:
    """Refuse a recorded study path no file system could hold (control characters, length).

    Paths in a plan are only ever read by the commands that redraw the study; a relative
    path stays relative to where the command runs, and nothing is written there.
    """
    case = data.get("case")
    source = case.get("source_path") if isinstance(case, dict) else None
    if not isinstance(source, str):
        return
    problem = ""
    if len(source) > MAX_PATH_CHARS:
        problem = f"is {len(source)} characters long, more than a file path can be"
    elif any(ord(c) < 32 or ord(c) == 127 for c in source):
        problem = "holds control characters, which no file path can"
    if problem:
        raise PlanFileError(
            f"{name} is not a valid sacroplan plan: the field 'case.source_path' {problem}"
        )


def parse_plan_text(text: str, *, name: str = "the file") -> Plan:
    """Parse the text of a plan file.

    Parameters
    ----------
    text : str
        File content.
    name : str
        How to call the file in messages.

    Raises
    ------
    PlanFileError
        Not JSON, not a plan, a newer plan, or an invalid field (see :func:`load_plan`).
    """
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise PlanFileError(
            f"{name} is not a sacroplan plan file (it is not valid JSON: {exc.msg} at line "
            f"{exc.lineno}, column {exc.colno})"
        ) from exc
    except ValueError as exc:
        raise PlanFileError(
            f"{name} is not a sacroplan plan file (it is not valid JSON: {exc})"
        ) from exc
    except RecursionError as exc:
        raise PlanFileError(
            f"{name} is not a sacroplan plan file (it is not valid JSON: nested too deeply)"
        ) from exc
    _check_schema(data, name)
    try:
        return _plan_from_json(data)
    except _FieldError as exc:
        raise PlanFileError(f"{name} is not a valid sacroplan plan: {_describe(exc)}") from exc
    except RecursionError as exc:
        raise PlanFileError(f"{name} is not a valid sacroplan plan: nested too deeply") from exc


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a plan file.

    Nothing inside the file is used as a path: references such as
    ``case.source_path`` are informational and never opened or written.

    Parameters
    ----------
    path : path
        A ``.json`` plan written by :func:`save_plan`.

    Returns
    -------
    Plan

    Raises
    ------
    PlanFileError
        The file cannot be read, is larger than 50 MB, is not UTF-8 JSON, is not a sacroplan
        plan, was written by a newer sacroplan, or has a missing or ill-typed field (named
        in the message).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_PLAN_BYTES:
                raise PlanFileError(
                    f"{p} is not a sacroplan plan: it is {size / 1e6:.0f} MB, more than the "
                    f"{MAX_PLAN_BYTES / 1e6:.0f} MB a plan file may be"
                )
            raw = fh.read(MAX_PLAN_BYTES + 1)
    except IsADirectoryError as exc:
        raise PlanFileError(f"{p} is a folder, not a plan file") from exc
    except OSError as exc:
        raise PlanFileError(f"cannot open the plan {p}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanFileError(
            f"{p} is not a sacroplan plan: it is more than the {MAX_PLAN_BYTES / 1e6:.0f} MB a "
            "plan file may be"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanFileError(
            f"{p} is not a sacroplan plan file (it is not valid JSON: not UTF-8 text)"
        ) from exc
    return parse_plan_text(text, name=str(p))


def save_plan(plan: Plan, path: str | os.PathLike[str], *, stamp: bool = True) -> Plan:
    """Write a plan atomically (the old file survives any failure untouched).

    Parameters
    ----------
    plan : Plan
    path : path
        Target file; its folder must exist.
    stamp : bool
        Set ``modified`` to now and ``software_version`` to this sacroplan before writing.

    Returns
    -------
    Plan
        The plan exactly as written, with free-form fields as plain JSON values (numpy
        arrays become lists); :func:`load_plan` of the file returns an equal plan.

    Raises
    ------
    PlanFileError
        The plan holds something that cannot be saved, the folder does not exist, or the
        write failed (disk full, no permission).
    """
    p = Path(path)
    if stamp:
        plan = dataclasses.replace(plan, modified=_now(), software_version=software_version())
    data = plan.to_json()
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if len(text.encode("utf-8")) > MAX_PLAN_BYTES:
        raise PlanFileError(
            f"the plan cannot be saved to {p}: it would be larger than "
            f"{MAX_PLAN_BYTES / 1e6:.0f} MB (check the view state and anatomy fields)"
        )
    if p.is_dir():
        raise PlanFileError(f"cannot save the plan to {p}: it is a folder")
    if not p.parent.is_dir():
        raise PlanFileError(f"cannot save the plan to {p}: the folder {p.parent} does not exist")
    try:
        atomic_write_text(p, text)
    except OSError as exc:
        raise PlanFileError(
            f"cannot save the plan to {p}: {exc.strerror or exc}; any earlier file there is "
            "unchanged"
        ) from exc
    return _plan_from_json(data)


# -- events ----------------------------------------------------------------------------------
PlanCallback = Callable[[str, Plan], None]


class PlanModel:
    """The session's current plan with a tiny observer list (no Qt).

    Parameters
    ----------
    plan : Plan, optional
        Initial plan (a new empty one by default).
    """

    def __init__(self, plan: Plan | None = None) -> None:
        self._plan = plan if plan is not None else Plan()
        self._subscribers: list[PlanCallback] = []

    @property
    def plan(self) -> Plan:
        """The current plan."""
        return self._plan

    def subscribe(self, callback: PlanCallback) -> Callable[[], None]:
        """Call ``callback(what, plan)`` after every change; returns an unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def notify(self, what: str) -> None:
        """Tell every subscriber that ``what`` changed (in subscription order)."""
        for callback in list(self._subscribers):
            callback(what, self._plan)

    def set_plan(self, plan: Plan, *, what: str = "plan") -> None:
        """Replace the whole plan (e.g. after loading, or an undo step) and notify."""
        self._plan = plan
        self.notify(what)

    def update(self, **changes: Any) -> Plan:
        """Change some fields of the plan and notify with their names (comma-separated).

        Raises
        ------
        PlanningParameterError
            An unknown field name.
        """
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Plan)})
        if unknown:
            raise PlanningParameterError(f"a plan has no field(s) {', '.join(unknown)}")
        self._plan = dataclasses.replace(self._plan, **changes)
        self.notify(",".join(changes))
        return self._plan
