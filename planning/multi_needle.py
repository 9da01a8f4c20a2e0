"""Multi-needle plans: a second needle when one cannot fill the lesion (DESIGN 5.1, 5.4, 5.6).

In the reference cohort a lesion took 1.38 needles on average (Tian et al., AJNR 2022). This
module decides when one needle is not enough and, if so, chooses two that each keep every
margin and keep their distance from each other.

Cement-spread model. The cement leaving a needle tip is modelled as a cloud that fills, from
the tip outward, the nearest voxels of the lesion and of the sacrum around it (cement does not
flow into soft tissue, the foramina or the canal), nearness measured in an ellipsoidal metric
``elongation`` times longer along the needle axis (1 by default: the sphere that
:mod:`planning.cement` uses for its predicted filling). The cloud holds the needle's share of
the plan's suggested cement (:func:`planning.cement.suggest_cement`, split evenly between the
needles: a second needle distributes the same cement, it does not add to it). Without
confinement the cloud is exactly the ellipsoid of that volume centred on the tip.

Two measures of a set of clouds:

* coverage: the fraction of the lesion's volume inside their union. Cement is usually less
  than the lesion (0.79 x its volume for PSP alone), so even perfect placement covers at most
  ``attainable = min(1, cement / lesion)``; ``coverage / attainable`` is the relative coverage,
  how much of what the cement could fill the tips actually reach;
* filling degree, the cohort's measure: the largest diameter of the cement over the largest
  diameter of the lesion (both measured the same way on voxel centres), at most 1.

Decision. One needle is enough when its relative coverage reaches ``min_relative_coverage``
and its filling degree reaches the cohort's mean (76 % PSP alone, 85 % PSP+RFA, from
``resources/cement.json``). Otherwise pairs are searched (bilateral: a needle from each side;
tandem: both from one side, with tips in the two halves of the lesion along its principal
axis), ranked by relative coverage plus filling degree, then by the smaller of their
clearances; the pair is kept when it gains ``min_gain`` in either measure without placing the
cement worse than the threshold (or than the single needle).

The number of needles can also be asked for (``needles=1`` or ``2`` in
:func:`plan_multi_needle`); :func:`with_multi_needle` puts the decision into a
:class:`~planning.plan.Plan` (its optional ``multi_needle`` block; two needles become the
plan's chosen trajectories).

Every needle comes from the planner's own search (:mod:`planning.planner`): the same approach
cones, entry rules, hard margins and reach; the chosen ones are re-scored exactly with
:func:`planning.planner.score_trajectory`. Needles stay ``min_tip_gap_mm`` apart at the tips
and ``min_path_gap_mm`` apart (axis to axis) along their whole length. This is a geometric
model of cement distribution, not a simulation of cement flow; the cohort gives no
per-needle volumes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from geometry.fieldstack import FieldStack
from imaging.errors import PlanFileError, PlanningParameterError, ResourceDataError
from imaging.volume import Volume
from planning.approaches import approach_registry
from planning.case import Case
from planning.needles import Needle, read_resource_json, require_number
from planning.plan import Candidate, Plan, Trajectory, clearance_text
from planning.planner import (
    TARGET_DEPTH_MM,
    TARGET_SPACING_MM,
    PlanningError,
    PlanOptions,
    _BoneProbe,
    _cement,
    _crop_of,
    _needle_choices,
    _needle_for,
    _search_approach,
    body_mask,
    build_fields,
    danger_surfaces,
    lesion_targets,
    score_trajectory,
)
from planning.scoring_exact import DangerSurfaces

SCHEMA = "sacroplan.multi_needle/1"
KINDS = ("single", "bilateral", "tandem")
_ML_PER_MM3 = 1e-3


# -- options -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultiNeedleOptions:
    """How the number of needles is decided and how far apart they must stay.

    Attributes
    ----------
    min_relative_coverage : float
        One needle is enough when it reaches this fraction of what the cement could fill
        (0-1; default 0.8).
    min_gain : float
        A second needle is kept only when it adds this much relative coverage (0-1).
    min_tip_gap_mm : float
        Least distance between the two tips, mm.
    min_path_gap_mm : float
        Least distance between the two needle axes anywhere from skin to tip, mm.
    elongation : float
        Axial-to-radial ratio of a needle's cement cloud (1 = sphere).
    region_margin_mm : float
        How far around the lesion the cement may spread into bone, mm.
    targets_per_part : int
        Tip targets tried in each half of the lesion (besides the planner's own).
    coverage_tolerance : float
        Pairs within this coverage of the best are ranked by safety instead (0-1).
    """

    min_relative_coverage: float = 0.8
    min_gain: float = 0.05
    min_tip_gap_mm: float = 10.0
    min_path_gap_mm: float = 5.0
    elongation: float = 1.0
    region_margin_mm: float = 15.0
    targets_per_part: int = 6
    coverage_tolerance: float = 0.02

    def __post_init__(self) -> None:
        limits = {
            "min_relative_coverage": (0.0, 1.0),
            "min_gain": (0.0, 1.0),
            "min_tip_gap_mm": (0.0, 100.0),
            "min_path_gap_mm": (0.0, 100.0),
            "elongation": (0.2, 5.0),
            "region_margin_mm": (0.0, 60.0),
            "coverage_tolerance": (0.0, 0.5),
        }
        for name, (low, high) in limits.items():
            value = require_number(getattr(self, name), name.replace("_", " "), low=low, high=high)
            object.__setattr__(self, name, value)
        n = self.targets_per_part
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 50:
            raise PlanningParameterError(f"targets per part must be a whole number 1-50, got {n!r}")

    def to_json(self) -> dict[str, float | int]:
        """JSON-ready dict of every option."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> MultiNeedleOptions:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        PlanningParameterError
            Not an object of the known options, or a value out of range.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise PlanningParameterError(
                f"multi-needle options must be an object with {', '.join(sorted(names))}"
            )
        return cls(**data)


# -- the cement-spread model -------------------------------------------------------------------
@dataclass(frozen=True)
class SpreadRegion:
    """Where cement may go: voxels of the lesion and the bone around it, as world points.

    Attributes
    ----------
    points_lps : (M, 3) float ndarray, mm, LPS
        Centres of the voxels cement may fill.
    in_lesion : (M,) bool ndarray
        Which of them belong to the lesion.
    voxel_ml : float
        Volume of one voxel, mL.
    """

    points_lps: np.ndarray
    in_lesion: np.ndarray
    voxel_ml: float

    @property
    def lesion_ml(self) -> float:
        """Lesion volume counted on the grid, mL."""
        return float(np.count_nonzero(self.in_lesion)) * self.voxel_ml

    @classmethod
    def from_masks(
        cls,
        grid: Volume,
        lesion_mask: np.ndarray,
        *,
        confine_mask: np.ndarray | None = None,
        margin_mm: float = 15.0,
    ) -> SpreadRegion:
        """The region on ``grid`` (spacing and direction honoured).

        Parameters
        ----------
        grid : Volume
            Geometry of the masks (its array is not used).
        lesion_mask : (K, J, I) bool ndarray
            Lesion voxels.
        confine_mask : (K, J, I) bool ndarray, optional
            Voxels cement may fill besides the lesion (bone); ``None`` = everywhere.
        margin_mm : float
            Only voxels within this distance of the lesion are kept, mm.

        Raises
        ------
        PlanningParameterError
            Empty lesion or masks not on the grid.
        """
        lesion = np.asarray(lesion_mask, dtype=bool)
        shape = tuple(grid.array.shape)
        if lesion.shape != shape or (confine_mask is not None and np.shape(confine_mask) != shape):
            raise PlanningParameterError("lesion and bone masks must be on the grid given")
        if not lesion.any():
            raise PlanningParameterError("the lesion mask is empty; segment the lesion first")
        sp = np.asarray(grid.spacing, dtype=np.float64)[::-1]
        pad = np.ceil(margin_mm / sp).astype(int) + 1
        idx = np.nonzero(lesion)
        lo = np.maximum([a.min() - p for a, p in zip(idx, pad, strict=True)], 0)
        hi = np.minimum([a.max() + p + 1 for a, p in zip(idx, pad, strict=True)], shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        les = lesion[box]
        near = ndi.distance_transform_edt(~les, sampling=sp) <= margin_mm
        allowed = les | (near if confine_mask is None else near & np.asarray(confine_mask)[box])
        kji = np.argwhere(allowed) + lo
        points = grid.index_to_world(kji[:, ::-1].astype(np.float64))
        return cls(points, les[allowed], float(np.prod(sp)) * _ML_PER_MM3)


def cement_cloud(
    region: SpreadRegion,
    tip_lps: np.ndarray,
    axis: np.ndarray,
    volume_ml: float,
    *,
    elongation: float = 1.0,
) -> np.ndarray:
    """The voxels one needle's cement fills: the ``volume_ml`` nearest to the tip.

    Nearness is the ellipsoidal distance ``sqrt((a / e)^2 + r^2)`` with ``a`` the offset along
    the needle axis and ``r`` across it (``e`` = ``elongation``), so in free space the cloud is
    the ellipsoid of that volume centred on the tip.

    Parameters
    ----------
    region : SpreadRegion
    tip_lps : (3,) float ndarray, mm, LPS
    axis : (3,) float ndarray
        Needle direction (entry to tip), any length.
    volume_ml : float
        Cement injected through this needle, mL.
    elongation : float
        Axial-to-radial ratio of the cloud.

    Returns
    -------
    (M,) bool ndarray
        Over ``region.points_lps``.
    """
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    d = region.points_lps - np.asarray(tip_lps, dtype=np.float64)
    along = d @ u
    across2 = np.einsum("ij,ij->i", d, d) - along**2
    rho2 = (along / elongation) ** 2 + np.maximum(across2, 0.0)
    n = int(round(volume_ml / region.voxel_ml))
    out = np.zeros(len(rho2), dtype=bool)
    if n >= len(rho2):
        out[:] = True
    elif n > 0:
        out[np.argpartition(rho2, n - 1)[:n]] = True
    return out


def lesion_coverage(region: SpreadRegion, clouds: list[np.ndarray]) -> float:
    """Fraction (0-1) of the lesion's voxels inside the union of the cement clouds."""
    if not clouds:
        return 0.0
    union = np.logical_or.reduce(clouds)
    return float(np.count_nonzero(union & region.in_lesion)) / float(
        np.count_nonzero(region.in_lesion)
    )


def _directions(count: int = 256) -> np.ndarray:
    """``count`` unit vectors spread evenly over a hemisphere (Fibonacci lattice)."""
    k = np.arange(count) + 0.5
    z = 1.0 - k / count
    r = np.sqrt(1.0 - z * z)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.column_stack([r * np.cos(phi), r * np.sin(phi), z])


_DIRS = _directions()


def _extents(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least and greatest projection of ``points`` on each of ``_DIRS``, mm."""
    if not len(points):
        return np.full(len(_DIRS), np.inf), np.full(len(_DIRS), -np.inf)
    proj = points @ _DIRS.T
    return proj.min(axis=0), proj.max(axis=0)


def feret_diameter_mm(points_lps: np.ndarray) -> float:
    """Largest diameter (mm) of a point set: its widest extent over 256 directions.

    Underestimates the exact Feret diameter by at most ~0.8 % (every direction lies within
    ~7 deg of one of them).
    """
    lo, hi = _extents(np.asarray(points_lps, dtype=np.float64))
    return float(max(0.0, np.max(hi - lo)))


def filling_degree(region: SpreadRegion, clouds: list[np.ndarray]) -> float:
    """The cohort's filling degree of the cement clouds: largest cement diameter over largest
    lesion diameter (both measured the same way on the region's voxel centres), at most 1."""
    if not clouds:
        return 0.0
    cement = feret_diameter_mm(region.points_lps[np.logical_or.reduce(clouds)])
    lesion = feret_diameter_mm(region.points_lps[region.in_lesion])
    return min(1.0, cement / lesion) if lesion > 0 else 1.0


def cohort_filling_degree(*, with_rfa: bool) -> float:
    """The cohort's mean filling degree (largest cement / largest lesion diameter), 0-1.

    From ``resources/cement.json``: 0.76 for PSP alone, 0.85 for PSP+RFA.
    """
    data = read_resource_json("cement.json")
    try:
        return float(data["cohorts"]["psp_rfa" if with_rfa else "psp_alone"]["filling_degree_mean"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResourceDataError(f"resources/cement.json is malformed ({exc!r})") from exc


# -- needle-to-needle distance -----------------------------------------------------------------
def segment_distance_mm(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> float:
    """Least distance between segments ``p0-p1`` and ``q0-q1`` (axis to axis), mm.

    Parameters
    ----------
    p0, p1, q0, q1 : (3,) float ndarray, mm, LPS

    Returns
    -------
    float
        Exact closest distance (degenerate segments handled).
    """
    p0, p1, q0, q1 = (np.asarray(v, dtype=np.float64) for v in (p0, p1, q0, q1))
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = d1 @ d1, d2 @ d2, d2 @ r
    eps = 1e-12
    if a <= eps and e <= eps:
        return float(np.linalg.norm(r))
    if a <= eps:
        s, t = 0.0, float(np.clip(f / e, 0.0, 1.0))
    else:
        c = d1 @ r
        if e <= eps:
            s, t = float(np.clip(-c / a, 0.0, 1.0)), 0.0
        else:
            b = d1 @ d2
            denom = a * e - b * b
            s = float(np.clip((b * f - c * e) / denom, 0.0, 1.0)) if denom > eps else 0.0
            t = (b * s + f) / e
            if t < 0.0:
                s, t = float(np.clip(-c / a, 0.0, 1.0)), 0.0
            elif t > 1.0:
                s, t = float(np.clip((b - c) / a, 0.0, 1.0)), 1.0
    return float(np.linalg.norm((p0 + s * d1) - (q0 + t * d2)))


# -- the result --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlacedNeedle:
    """One needle of a multi-needle plan.

    Attributes
    ----------
    label : str
        ``"needle 1"``, ``"needle 2"``.
    candidate : Candidate
        The exactly re-scored trajectory (entry, tip, approach, side, needle id, clearances).
    cement_ml : float
        Cement planned through this needle, mL.
    reaches_ml : float
        Lesion volume inside this needle's cement cloud, mL.
    """

    label: str
    candidate: Candidate
    cement_ml: float
    reaches_ml: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``label``, ``cement_ml``, ``reaches_ml``, ``candidate``."""
        return {
            "label": self.label,
            "cement_ml": round(self.cement_ml, 2),
            "reaches_ml": round(self.reaches_ml, 2),
            "candidate": self.candidate.to_json(),
        }


@dataclass(frozen=True)
class MultiNeedlePlan:
    """How many needles, which, and how much of the lesion their cement reaches.

    Attributes
    ----------
    kind : str
        ``"single"``, ``"bilateral"`` (one needle per side) or ``"tandem"`` (same side).
    needles : tuple of PlacedNeedle
    cement_total_ml : float
        Suggested cement for the lesion, shared evenly between the needles, mL.
    lesion_ml, lesion_max_diameter_mm : float
        The lesion measured on the planning grid (mL) and its largest diameter (mm).
    coverage_single : float
        Coverage (0-1) of the best single needle.
    coverage : float
        Coverage (0-1) of the chosen needles.
    filling_single, filling : float
        Filling degree (0-1: largest cement diameter over largest lesion diameter, the
        cohort's measure) of the best single needle and of the chosen needles.
    attainable : float
        ``min(1, cement / lesion)``: the coverage perfectly placed cement would give.
    tip_gap_mm, path_gap_mm : float or None
        Distance between the tips and least distance between the needle axes (two needles).
    options : MultiNeedleOptions
    reasons : tuple of str
        The decision in plain words.
    """

    kind: str
    needles: tuple[PlacedNeedle, ...]
    cement_total_ml: float
    lesion_ml: float
    lesion_max_diameter_mm: float
    coverage_single: float
    coverage: float
    filling_single: float
    filling: float
    attainable: float
    tip_gap_mm: float | None
    path_gap_mm: float | None
    options: MultiNeedleOptions
    reasons: tuple[str, ...]

    @property
    def relative_coverage(self) -> float:
        """Coverage over what the cement could fill at best (0-1)."""
        return self.coverage / self.attainable if self.attainable > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, the optional ``"multi_needle"`` block of a plan file."""
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "needles": [n.to_json() for n in self.needles],
            "cement_total_ml": round(self.cement_total_ml, 2),
            "lesion_ml": round(self.lesion_ml, 3),
            "lesion_max_diameter_mm": round(self.lesion_max_diameter_mm, 1),
            "coverage_single": round(self.coverage_single, 4),
            "coverage": round(self.coverage, 4),
            "filling_single": round(self.filling_single, 4),
            "filling": round(self.filling, 4),
            "attainable": round(self.attainable, 4),
            "tip_gap_mm": None if self.tip_gap_mm is None else round(self.tip_gap_mm, 2),
            "path_gap_mm": None if self.path_gap_mm is None else round(self.path_gap_mm, 2),
            "options": self.options.to_json(),
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: object) -> MultiNeedlePlan:
        """Parse and validate the block written by :meth:`to_json`.

        Raises
        ------
        PlanFileError
            Wrong schema, a field missing, unknown or ill-typed (the message names it), or
            needles that disagree with ``kind``.
        """
        keys = (
            "schema",
            "kind",
            "needles",
            "cement_total_ml",
            "lesion_ml",
            "lesion_max_diameter_mm",
            "coverage_single",
            "coverage",
            "filling_single",
            "filling",
            "attainable",
            "tip_gap_mm",
            "path_gap_mm",
            "options",
            "reasons",
        )
        where = "multi_needle"
        if not isinstance(data, dict):
            raise PlanFileError(f"the field '{where}' must be an object")
        for k in keys:
            if k not in data:
                raise PlanFileError(f"the field '{where}.{k}' is missing")
        for k in data:
            if k not in keys:
                raise PlanFileError(f"the field '{where}.{k}' is not a known field")
        if data["schema"] != SCHEMA:
            raise PlanFileError(f"the field '{where}.schema' must be {SCHEMA!r}")
        kind = data["kind"]
        if kind not in KINDS:
            raise PlanFileError(f"the field '{where}.kind' must be one of {', '.join(KINDS)}")
        raw = data["needles"]
        if not isinstance(raw, list) or not raw:
            raise PlanFileError(f"the field '{where}.needles' must be a non-empty list")
        needles = tuple(_needle_from_json(n, f"{where}.needles[{i}]") for i, n in enumerate(raw))
        if (kind == "single") != (len(needles) == 1):
            raise PlanFileError(
                f"the field '{where}.kind' is {kind!r} but there are {len(needles)} needles"
            )
        sides = {n.candidate.side for n in needles}
        if (kind == "bilateral" and len(sides) < 2) or (kind == "tandem" and len(sides) != 1):
            raise PlanFileError(
                f"the field '{where}.kind' is {kind!r} but the needles' sides differ"
            )

        def num(k: str, *, high: float | None = None) -> float:
            return _field_num(data[k], f"{where}.{k}", high=high)

        def opt(k: str) -> float | None:
            return None if data[k] is None else num(k)

        reasons = data["reasons"]
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise PlanFileError(f"the field '{where}.reasons' must be a list of strings")
        try:
            options = MultiNeedleOptions.from_json(data["options"])
        except PlanningParameterError as exc:
            raise PlanFileError(f"the field '{where}.options' is not valid: {exc}") from exc
        return cls(
            kind=kind,
            needles=needles,
            cement_total_ml=num("cement_total_ml"),
            lesion_ml=num("lesion_ml"),
            lesion_max_diameter_mm=num("lesion_max_diameter_mm"),
            coverage_single=num("coverage_single", high=1.0),
            coverage=num("coverage", high=1.0),
            filling_single=num("filling_single", high=1.0),
            filling=num("filling", high=1.0),
            attainable=num("attainable", high=1.0),
            tip_gap_mm=opt("tip_gap_mm"),
            path_gap_mm=opt("path_gap_mm"),
            options=options,
            reasons=tuple(reasons),
        )


def _field_num(value: object, path: str, *, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanFileError(f"the field '{path}' must be a finite number")
    if value < 0 or (high is not None and value > high):
        limit = f"0-{high:g}" if high is not None else "0 or more"
        raise PlanFileError(f"the field '{path}' must be {limit}, got {value}")
    return float(value)


def _needle_from_json(data: object, path: str) -> PlacedNeedle:
    keys = {"label", "cement_ml", "reaches_ml", "candidate"}
    if not isinstance(data, dict) or set(data) != keys:
        raise PlanFileError(f"the field '{path}' must be an object with {', '.join(sorted(keys))}")
    if not isinstance(data["label"], str):
        raise PlanFileError(f"the field '{path}.label' must be a string")
    try:
        candidate = Candidate.from_json(data["candidate"], f"{path}.candidate")
    except Exception as exc:  # the plan module's field error names the field
        raise PlanFileError(f"the field {exc}") from exc
    return PlacedNeedle(
        label=data["label"],
        candidate=candidate,
        cement_ml=_field_num(data["cement_ml"], f"{path}.cement_ml"),
        reaches_ml=_field_num(data["reaches_ml"], f"{path}.reaches_ml"),
    )


# -- the search --------------------------------------------------------------------------------
@dataclass
class _Pool:
    """Feasible needles from the planner's search (one row each)."""

    approach: np.ndarray  # (P,) str
    side: np.ndarray  # (P,) str
    entries: np.ndarray  # (P, 3)
    tips: np.ndarray  # (P, 3)
    length_mm: np.ndarray  # (P,)
    safety_mm: np.ndarray  # (P,) least clearance to a foramen or the canal
    rank: np.ndarray  # (P,)


def part_targets(case: Case, *, per_part: int = 6) -> np.ndarray:
    """Tip targets in each half of the lesion, split across its principal axis.

    Lattice points (every ``TARGET_SPACING_MM``) at least ``TARGET_DEPTH_MM`` inside the
    lesion, the ``per_part`` nearest to each half's centroid.

    Returns
    -------
    (T, 3) float ndarray, mm, LPS
    """
    assert case.lesion is not None
    mask = case.lesion.mask
    inside = mask.array > 0
    kji = np.argwhere(inside)
    lo, hi = kji.min(axis=0), kji.max(axis=0) + 1
    sub = inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    depth = ndi.distance_transform_edt(np.pad(sub, 1), sampling=mask.spacing[::-1])[
        1:-1, 1:-1, 1:-1
    ]
    points = mask.index_to_world(kji[:, ::-1].astype(np.float64))
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    axis = vt[0]
    step = np.maximum(1, np.round(TARGET_SPACING_MM / mask.spacing[::-1]).astype(int))
    lattice = np.zeros_like(sub)
    lattice[:: step[0], :: step[1], :: step[2]] = True
    deep = mask.index_to_world(
        (np.argwhere(lattice & (depth >= TARGET_DEPTH_MM)) + lo)[:, ::-1].astype(np.float64)
    )
    out = []
    side_of_points = (points - centre) @ axis > 0
    side_of_deep = (deep - centre) @ axis > 0
    for half in (False, True):
        c = points[side_of_points == half].mean(axis=0)
        cand = deep[side_of_deep == half]
        order = np.argsort(np.linalg.norm(cand - c, axis=1))
        out.append(cand[order[:per_part]])
    return np.vstack(out) if out else np.zeros((0, 3))


def _pool(
    case: Case,
    stack: FieldStack,
    options: PlanOptions,
    multi: MultiNeedleOptions,
) -> tuple[_Pool, list[Needle]]:
    """Every feasible needle of every approach to the planner's and the half-lesion targets."""
    assert case.metrics is not None
    targets = np.vstack([lesion_targets(case), part_targets(case, per_part=multi.targets_per_part)])
    targets = np.unique(np.round(targets, 3), axis=0)
    needles = _needle_choices(options.needle_id)
    radius = max(n.radius_mm for n in needles)
    centroid = np.asarray(case.metrics.centroid_lps, dtype=np.float64)
    body = body_mask(case.image)
    probe = _BoneProbe.of(case)
    rows: dict[str, list[Any]] = {k: [] for k in _Pool.__dataclass_fields__}
    for key, approach in approach_registry().items():
        r = _search_approach(
            case,
            approach,
            stack,
            body,
            probe,
            targets,
            centroid,
            needles,
            radius,
            options.margins,
            case.metrics.denis_zone,
        )
        if r.scores is None or not r.feasible.any():
            continue
        ok = np.flatnonzero(r.feasible)
        # the best needle per side and tip target
        best: dict[tuple[str, bytes], int] = {}
        for i in ok:
            k = (str(r.sides[i]), np.round(r.tips[i], 2).tobytes())
            if k not in best or r.rank[i] > r.rank[best[k]]:
                best[k] = int(i)
        sel = np.array(sorted(best.values()))
        s = r.scores
        safety = np.minimum(
            np.nan_to_num(s.nearest_foramen_clearance_mm[sel], nan=99.0),
            np.nan_to_num(s.canal_clearance_mm[sel], nan=99.0),
        )
        rows["approach"].append(np.full(len(sel), key))
        rows["side"].append(np.asarray(r.sides[sel], dtype=str))
        rows["entries"].append(r.entries[sel])
        rows["tips"].append(r.tips[sel])
        rows["length_mm"].append(np.asarray(s.length_mm[sel], dtype=np.float64))
        rows["safety_mm"].append(safety)
        rows["rank"].append(np.asarray(r.rank[sel], dtype=np.float64))
    if not rows["approach"]:
        raise PlanningError("no approach has a needle that meets every margin for this lesion")
    return _Pool(**{k: np.concatenate(v) for k, v in rows.items()}), needles


def _exact(
    case: Case,
    pool: _Pool,
    i: int,
    stack: FieldStack,
    options: PlanOptions,
    needles: list[Needle],
    probe: _BoneProbe,
) -> Candidate:
    assert case.metrics is not None
    entry, tip = pool.entries[i], pool.tips[i]
    dirn = (tip - entry) / np.linalg.norm(tip - entry)
    bone_at = probe.distance(entry[None, :], dirn[None, :])[0]
    bone_entry = entry + bone_at * dirn if np.isfinite(bone_at) else None
    return score_trajectory(
        entry,
        tip,
        _needle_for(float(pool.length_mm[i]), needles),
        fields=stack,
        margins=options.margins,
        approach=str(pool.approach[i]),
        lesion_centroid=np.asarray(case.metrics.centroid_lps, dtype=np.float64),
        side=str(pool.side[i]),
        bone_entry_lps=bone_entry,
    )


def _rescored(
    c: Candidate, case: Case, options: PlanOptions, stack: FieldStack, surfaces: DangerSurfaces
) -> Candidate:
    """``c`` scored again, its foramen and canal clearances measured on ``surfaces``."""
    assert case.metrics is not None
    return score_trajectory(
        np.asarray(c.skin_entry_lps, dtype=np.float64),
        np.asarray(c.target_lps, dtype=np.float64),
        c.needle,
        fields=stack,
        margins=options.margins,
        approach=c.approach,
        lesion_centroid=np.asarray(case.metrics.centroid_lps, dtype=np.float64),
        side=c.side,
        bone_entry_lps=None if c.bone_entry_lps is None else np.asarray(c.bone_entry_lps),
        surfaces=surfaces,
    )


def spread_region_of(case: Case, *, margin_mm: float = 15.0) -> SpreadRegion:
    """The lesion and the sacrum around it on the anatomy crop grid (see :class:`SpreadRegion`).

    Raises
    ------
    PlanningError
        No anatomy or no lesion yet.
    """
    if case.masks is None or case.lesion is None:
        raise PlanningError("plan after the anatomy and the lesion: run both first")
    m = case.masks
    lesion = _crop_of(case.lesion.mask.array > 0, m.crop_index, m.image.array.shape)
    return SpreadRegion.from_masks(
        m.image, lesion, confine_mask=m.masks["sacrum"] | lesion, margin_mm=margin_mm
    )


def plan_multi_needle(
    case: Case,
    *,
    plan: Plan | None = None,
    options: PlanOptions = PlanOptions(),  # noqa: B008 (frozen)
    multi: MultiNeedleOptions = MultiNeedleOptions(),  # noqa: B008 (frozen)
    fields: FieldStack | None = None,
    needles: int | None = None,
) -> MultiNeedlePlan:
    """Decide between one and two needles for the case's lesion and choose them.

    Parameters
    ----------
    case : Case
        With anatomy and lesion.
    plan : Plan, optional
        The single-needle plan (:func:`planning.planner.plan_case`); its cement suggestion is
        shared between the needles, its margins are used, and its suggested needle is kept
        when it is enough.
    options : PlanOptions
        Needle choice and margins, as for the planner.
    multi : MultiNeedleOptions
    fields : FieldStack, optional
        From :func:`planning.planner.build_fields` (built when not given).
    needles : {None, 1, 2}
        ``None`` decides (see the module notes); 1 keeps one needle; 2 plans the best two
        needles that meet every margin however little they gain (one needle, with the
        reason, when no two do).

    Returns
    -------
    MultiNeedlePlan

    Raises
    ------
    PlanningError
        No anatomy or lesion, or no needle meets every margin.
    PlanningParameterError
        ``needles`` is not None, 1 or 2.
    """
    if needles is not None and (isinstance(needles, bool) or needles not in (1, 2)):
        raise PlanningParameterError(
            f"the number of needles must be 1, 2 or automatic, got {needles!r}"
        )
    if case.anatomy is None or case.masks is None or case.lesion is None or case.metrics is None:
        raise PlanningError("plan after the anatomy and the lesion: run both first")
    if plan is not None:
        options = dataclasses.replace(options, margins=plan.margins)
    stack = fields if fields is not None else build_fields(case)
    total_ml = (
        plan.cement.suggested_ml
        if plan is not None and plan.cement is not None
        else _cement(case, stack, options).suggested_ml
    )
    region = spread_region_of(case, margin_mm=multi.region_margin_mm)
    pool, choices = _pool(case, stack, options, multi)
    probe = _BoneProbe.of(case)
    scoring = (stack, options, choices, probe)
    lesion_ml = region.lesion_ml
    attainable = min(1.0, total_ml / lesion_ml)
    lesion_feret = feret_diameter_mm(region.points_lps[region.in_lesion])
    full = _Clouds.of(region, pool, total_ml, multi.elongation, lesion_feret)
    merit1 = full.coverage / attainable + full.filling
    single_cand, cov_single, fill_single = _best_single(
        case, pool, full, merit1, plan, region, total_ml, multi, attainable, scoring
    )
    surfaces: list[DangerSurfaces] = []

    def measured(c: Candidate) -> Candidate:
        """``c`` with its foramen and canal clearances measured on the structures' surfaces
        (as the plan's own candidates are), not the search's capped values."""
        if c.clearance_mm.exact:
            return c
        if not surfaces:
            surfaces.append(danger_surfaces(case))
        return _rescored(c, case, options, stack, surfaces[0])

    single_cand = measured(single_cand)
    diameter = float(case.metrics.max_diameter_mm)
    cohort_filling = cohort_filling_degree(with_rfa=options.with_rfa)
    head = (
        f"one needle with {total_ml:.1f} mL of cement reaches {100 * cov_single:.0f} % of the "
        f"{lesion_ml:.1f} mL lesion ({100 * cov_single / attainable:.0f} % of what "
        f"{total_ml:.1f} mL can fill) and spreads over {100 * fill_single:.0f} % of its "
        f"{diameter:.0f} mm largest diameter (cohort mean filling {100 * cohort_filling:.0f} %)"
    )
    single_result = MultiNeedlePlan(
        kind="single",
        needles=(PlacedNeedle("needle 1", single_cand, total_ml, cov_single * lesion_ml),),
        cement_total_ml=total_ml,
        lesion_ml=lesion_ml,
        lesion_max_diameter_mm=diameter,
        coverage_single=cov_single,
        coverage=cov_single,
        filling_single=fill_single,
        filling=fill_single,
        attainable=attainable,
        tip_gap_mm=None,
        path_gap_mm=None,
        options=multi,
        reasons=(),
    )

    def single(why: str) -> MultiNeedlePlan:
        return dataclasses.replace(
            single_result, reasons=(f"{head}; {why}", _needle_words(single_cand))
        )

    if needles == 1:
        return single("one needle was asked for")
    enough = cov_single / attainable >= multi.min_relative_coverage
    if needles is None and enough and fill_single >= cohort_filling:
        return single("a second needle is not needed")
    halves = _Clouds.of(region, pool, total_ml / 2.0, multi.elongation, lesion_feret)
    pair = _best_pair(case, pool, halves, attainable, multi, scoring)
    if pair is None:
        return single(
            f"no two needles meet every margin {multi.min_tip_gap_mm:.0f} mm apart at the tips "
            f"and {multi.min_path_gap_mm:.0f} mm apart along their paths, so one needle is planned"
        )
    (i, j), (ci, cj), cov2, fill2, tip_gap, path_gap = pair
    ci, cj = measured(ci), measured(cj)
    gain_cov = (cov2 - cov_single) / attainable
    gain_fill = fill2 - fill_single
    placed_well = cov2 / attainable >= min(multi.min_relative_coverage, cov_single / attainable)
    if needles is None and (max(gain_cov, gain_fill) < multi.min_gain or not placed_well):
        why = "too little gain" if placed_well else "more of the cement outside the lesion"
        return single(
            f"the best two needles would reach {100 * cov2:.0f} % and spread over "
            f"{100 * fill2:.0f} %: {why} for a second needle"
        )
    kind = "tandem" if ci.side == cj.side else "bilateral"
    labels = approach_registry()
    how = (
        f"from the {ci.side} ({labels[ci.approach].label} and {labels[cj.approach].label})"
        if kind == "tandem"
        else f"from the {ci.side} ({labels[ci.approach].label}) and the {cj.side} "
        f"({labels[cj.approach].label})"
    )
    reasons = [
        f"{head}; two {kind} needles {how} with {total_ml / 2:.1f} mL each reach "
        f"{100 * cov2:.0f} % ({100 * cov2 / attainable:.0f} % of what the cement can fill) and "
        f"spread over {100 * fill2:.0f} % of its largest diameter",
        f"the tips are {tip_gap:.0f} mm apart and the needles at least "
        f"{round(path_gap, 2):.1f} mm apart along their whole length (limits "
        f"{multi.min_tip_gap_mm:.0f} and {multi.min_path_gap_mm:.0f} mm)",
    ]
    reasons.extend(_needle_words(c, f"needle {n}") for n, c in enumerate((ci, cj), start=1))
    reach = halves.counts * region.voxel_ml
    return dataclasses.replace(
        single_result,
        kind=kind,
        needles=(
            PlacedNeedle("needle 1", ci, total_ml / 2, float(reach[i])),
            PlacedNeedle("needle 2", cj, total_ml / 2, float(reach[j])),
        ),
        coverage=cov2,
        filling=fill2,
        tip_gap_mm=tip_gap,
        path_gap_mm=path_gap,
        reasons=tuple(reasons),
    )


@dataclass(frozen=True)
class _Clouds:
    """The cement clouds of every pool needle for one volume per needle."""

    in_lesion: np.ndarray  # (P, L) bool: the cloud on the lesion's voxels
    counts: np.ndarray  # (P,) lesion voxels reached
    lo: np.ndarray  # (P, D) least projection of the cloud on each direction, mm
    hi: np.ndarray  # (P, D) greatest
    coverage: np.ndarray  # (P,) 0-1
    filling: np.ndarray  # (P,) 0-1
    lesion_feret_mm: float

    @classmethod
    def of(
        cls,
        region: SpreadRegion,
        pool: _Pool,
        volume_ml: float,
        elongation: float,
        lesion_feret_mm: float,
    ) -> _Clouds:
        rows, los, his = [], [], []
        for tip, entry in zip(pool.tips, pool.entries, strict=True):
            cloud = cement_cloud(region, tip, tip - entry, volume_ml, elongation=elongation)
            rows.append(cloud[region.in_lesion])
            lo, hi = _extents(region.points_lps[cloud])
            los.append(lo)
            his.append(hi)
        in_lesion = np.array(rows)
        counts = in_lesion.sum(axis=1).astype(np.float64)
        lo, hi = np.array(los), np.array(his)
        return cls(
            in_lesion,
            counts,
            lo,
            hi,
            counts / float(np.count_nonzero(region.in_lesion)),
            np.minimum(1.0, np.max(hi - lo, axis=1) / lesion_feret_mm),
            lesion_feret_mm,
        )


def _best_single(
    case: Case,
    pool: _Pool,
    full: _Clouds,
    merit: np.ndarray,
    plan: Plan | None,
    region: SpreadRegion,
    total_ml: float,
    multi: MultiNeedleOptions,
    attainable: float,
    scoring: tuple[FieldStack, PlanOptions, list[Needle], _BoneProbe],
) -> tuple[Candidate, float, float]:
    """The best single needle, its coverage and its filling degree.

    The plan's suggested needle when its cement is enough (or as good as any), else the pool's
    needle with the most relative coverage plus filling degree (the planner's rank among those
    within ``coverage_tolerance`` of it), re-scored exactly; the first feasible one wins.
    """
    if plan is not None and plan.suggestion is not None:
        c = plan.candidates[plan.suggestion.candidate]
        if c.feasible:
            tip, entry = np.asarray(c.target_lps), np.asarray(c.skin_entry_lps)
            cloud = cement_cloud(region, tip, tip - entry, total_ml, elongation=multi.elongation)
            cov = lesion_coverage(region, [cloud])
            fill = filling_degree(region, [cloud])
            if cov / attainable + fill >= merit.max() - multi.coverage_tolerance:
                return c, cov, fill
    near_best = merit >= merit.max() - multi.coverage_tolerance
    order = np.lexsort((-pool.rank, ~near_best))  # near the best first, then by rank
    first: tuple[Candidate, float, float] | None = None
    for i in order[:50]:
        c = _exact(case, pool, int(i), *scoring)
        row = (c, float(full.coverage[i]), float(full.filling[i]))
        first = first or row
        if c.feasible:
            return row
    assert first is not None
    return first


def _best_pair(
    case: Case,
    pool: _Pool,
    halves: _Clouds,
    attainable: float,
    multi: MultiNeedleOptions,
    scoring: tuple[FieldStack, PlanOptions, list[Needle], _BoneProbe],
) -> tuple[tuple[int, int], tuple[Candidate, Candidate], float, float, float, float] | None:
    """The pair whose cement reaches most (relative coverage plus filling degree), then the
    safest within ``coverage_tolerance`` of it; spaced apart and exactly feasible."""
    tip_gap = np.linalg.norm(pool.tips[:, None, :] - pool.tips[None, :, :], axis=2)
    ii, jj = np.nonzero(np.triu(tip_gap >= multi.min_tip_gap_mm, k=1))
    if not len(ii):
        return None
    h = halves.in_lesion.astype(np.float32)
    both = np.einsum("pl,pl->p", h[ii], h[jj])
    cov = (halves.counts[ii] + halves.counts[jj] - both) / float(h.shape[1])
    span = np.max(
        np.maximum(halves.hi[ii], halves.hi[jj]) - np.minimum(halves.lo[ii], halves.lo[jj]),
        axis=1,
    )
    fill = np.minimum(1.0, span / halves.lesion_feret_mm)
    merit = cov / attainable + fill
    safety = np.minimum(pool.safety_mm[ii], pool.safety_mm[jj])
    order = np.argsort(-merit, kind="stable")
    best: float | None = None
    shortlist: list[tuple[float, int, float]] = []
    for n in order:
        if best is not None and merit[n] < best - multi.coverage_tolerance:
            break
        i, j = int(ii[n]), int(jj[n])
        gap = segment_distance_mm(pool.entries[i], pool.tips[i], pool.entries[j], pool.tips[j])
        if gap < multi.min_path_gap_mm:
            continue
        best = float(merit[n]) if best is None else best
        shortlist.append((float(safety[n]), int(n), gap))
        if len(shortlist) >= 200:
            break
    shortlist.sort(key=lambda row: -row[0])
    exact: dict[int, Candidate] = {}
    for _, n, gap in shortlist:
        i, j = int(ii[n]), int(jj[n])
        for k in (i, j):
            if k not in exact:
                exact[k] = _exact(case, pool, k, *scoring)
        if exact[i].feasible and exact[j].feasible:
            if _order_key(exact[j]) < _order_key(exact[i]):
                i, j = j, i
            return (
                (i, j),
                (exact[i], exact[j]),
                float(cov[n]),
                float(fill[n]),
                float(tip_gap[i, j]),
                gap,
            )
    return None


def _order_key(c: Candidate) -> tuple[int, str]:
    return ({"left": 0, "right": 1}.get(c.side or "", 2), c.approach)


def _needle_words(c: Candidate, label: str = "needle") -> str:
    od, ex = c.needle_od_mm, c.clearance_mm.exact
    parts = [
        f"{label}: {approach_registry()[c.approach].label} ({c.side}), {c.needle}",
        f"{clearance_text(c.clearance_mm.foramina, od, exact=ex)} from the nearest foramen",
        f"{clearance_text(c.clearance_mm.canal, od, exact=ex)} from the canal",
    ]
    if c.tip_to_anterior_cortex_mm is not None:
        parts.append(f"{c.tip_to_anterior_cortex_mm:.1f} mm of bone ahead of the tip")
    parts.append(f"{c.skin_to_target_mm:.0f} mm skin to tip")
    return ", ".join(parts)


def with_multi_needle(plan: Plan, multi: MultiNeedlePlan) -> Plan:
    """``plan`` holding the multi-needle decision ``multi``.

    With two needles they become the plan's chosen trajectories (``source`` "suggested",
    needle 1 first), so everything drawing or exporting the chosen needles shows both; with
    one, the chosen trajectories stay as they are.

    Parameters
    ----------
    plan : Plan
        The single-needle plan ``multi`` was made from.
    multi : MultiNeedlePlan

    Returns
    -------
    Plan
    """
    if len(multi.needles) < 2:
        return dataclasses.replace(plan, multi_needle=multi)
    chosen = tuple(
        Trajectory(
            entry_lps=n.candidate.skin_entry_lps,
            target_lps=n.candidate.target_lps,
            needle=n.candidate.needle,
            approach=n.candidate.approach,
            source="suggested",
        )
        for n in multi.needles
    )
    return dataclasses.replace(plan, multi_needle=multi, trajectories=chosen)
