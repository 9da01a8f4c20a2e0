"""From image records to series plans: grouping, splitting and the geometry of each volume.

Everything here works on headers only (:class:`~imaging.dicom_headers.ImageRecord`), so a
scan reports exactly the grid that loading will produce. The plan for one series says
which images make the volume, in which order, on which grid (origin, spacing, direction
in LPS mm), and - when the slices are not already a regular orthogonal stack (gantry
tilt, uneven spacing, missing slices) - how each target slice is interpolated from the
acquired ones.

Slices are ordered by their position along the slice normal ``n = row x column`` of
ImageOrientationPatient, never by file name or InstanceNumber.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
from pydicom.uid import generate_uid

from imaging.dicom_headers import ImageRecord, read_pixel_bytes
from imaging.volume import orientation_from_normal

_ORIENTATION_TOL_DEG = 0.5
_MAX_GAP_FACTOR = 3.0
_MAX_RESAMPLE_FACTOR = 10
_MAX_SLICES = 5000
# Row and column directions further than ~11 degrees from perpendicular are unusable.
_MAX_ROW_COLUMN_COSINE = 0.2


class SeriesRefused(Exception):  # noqa: N818 - internal control flow, never escapes
    """A group of images that cannot become one volume; the message says why."""


@dataclass(frozen=True, eq=False)
class Resampling:
    """How to interpolate each target slice from the acquired slices.

    Target slice ``k`` = ``(1 - weight[k]) * A + weight[k] * B`` where ``A``/``B`` are
    acquired slices ``lower[k]``/``upper[k]`` translated in their plane so that source
    pixel ``(i, j)`` = target pixel ``(i, j) + shift_ij[s]``. Pixels outside every
    acquired slice get ``fill``.
    """

    lower: np.ndarray  # (K,) int
    upper: np.ndarray  # (K,) int
    weight: np.ndarray  # (K,) float
    shift_ij: np.ndarray  # (S, 2) float, (column, row) shift per acquired slice
    fill: float


@dataclass(eq=False)
class SeriesPlan:
    """One loadable series: its images in slice order and the grid of the volume.

    ``size``/``spacing`` are ``(x, y, z)``; ``direction`` is a 3x3 matrix whose columns
    are the LPS directions of the ``i``, ``j``, ``k`` axes; ``origin`` is voxel (0,0,0).
    """

    uid: str
    records: list[ImageRecord]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    warnings: list[str] = field(default_factory=list)
    resampling: Resampling | None = None
    dropped: list[ImageRecord] = field(default_factory=list)

    @property
    def first(self) -> ImageRecord:
        return self.records[0]

    @property
    def modality(self) -> str:
        return self.first.modality

    @property
    def paths(self) -> list[str]:
        """Source files in slice order, each once."""
        return list(dict.fromkeys(r.path for r in self.records))


@dataclass
class Refusal:
    """Images that could not be planned, with the reason (one per group)."""

    paths: list[str]
    reason: str
    kind: str = "series"  # "series": a group refused for its geometry; "file": one file


# ------------------------------------------------------------------------------------------------
# grouping
PixelComparator = Callable[[ImageRecord, ImageRecord], bool]


def plan_all(
    records: list[ImageRecord], *, same_pixels: PixelComparator | None = None
) -> tuple[list[SeriesPlan], list[Refusal]]:
    """Group records into series, split mixed series and plan every volume.

    Parameters
    ----------
    records : list of ImageRecord
        Every image found by a scan, in any order.
    same_pixels : callable, optional
        ``same_pixels(a, b)`` decodes two images that share a position and tells whether
        their values are identical (used only when their encoded bytes differ).

    Returns
    -------
    plans : list of SeriesPlan
        Loadable series, ordered by patient, study, series number and UID.
    refusals : list of Refusal
        Groups that cannot form a volume, with a one-line reason naming the series.
    """
    plans: list[SeriesPlan] = []
    refusals: list[Refusal] = []
    by_series: dict[str, list[ImageRecord]] = defaultdict(list)
    synthetic: set[str] = set()
    for rec in records:
        uid = rec.series_uid or ""
        if not uid:
            uid = _synthetic_uid(rec)
            synthetic.add(uid)
        by_series[uid].append(rec)
    for uid, group in by_series.items():
        group.sort(key=lambda r: (r.path, r.frame))
        try:
            new_plans, new_refusals = _plan_series_uid(
                uid, group, synthetic=uid in synthetic, same_pixels=same_pixels
            )
        except Exception as exc:  # malformed values no check foresaw: refuse, never crash
            reason = f"series {uid}: the headers could not be analysed ({exc})"
            new_plans, new_refusals = [], [Refusal(_unique_paths(group), reason)]
        plans.extend(new_plans)
        refusals.extend(new_refusals)
    plans.sort(key=_plan_sort_key)
    return plans, refusals


def _plan_sort_key(plan: SeriesPlan) -> tuple:
    rec = plan.first
    return (
        rec.patient_id,
        rec.study_date,
        rec.study_uid,
        rec.series_number if rec.series_number is not None else 1 << 30,
        plan.uid,
    )


def _synthetic_uid(rec: ImageRecord) -> str:
    keys = [
        os.path.dirname(os.path.abspath(rec.path)),
        rec.study_uid,
        rec.frame_of_reference_uid,
        str(rec.series_number),
        rec.series_description,
        rec.modality,
        rec.patient_id,
    ]
    return str(generate_uid(entropy_srcs=keys))


@dataclass(frozen=True)
class _Stage:
    name: str
    key: Callable[[ImageRecord], Hashable]
    describe: Callable[[Hashable, ImageRecord], str]


def _orientation_key_factory() -> Callable[[ImageRecord], Hashable]:
    references: list[np.ndarray] = []
    cos_tol = math.cos(math.radians(_ORIENTATION_TOL_DEG))

    def key(rec: ImageRecord) -> Hashable:
        if rec.orientation is None:
            return -1
        rc = _unit_rows(rec.orientation)
        if rc is None:
            return -1
        for n, ref in enumerate(references):
            if np.dot(rc[0], ref[0]) >= cos_tol and np.dot(rc[1], ref[1]) >= cos_tol:
                return n
        references.append(rc)
        return len(references) - 1

    return key


def _unit_rows(iop: np.ndarray) -> np.ndarray | None:
    """Unit row and column directions, or None when they are null or far from perpendicular."""
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if not (1e-6 < nr < 1e6 and 1e-6 < nc < 1e6):
        return None
    r, c = r / nr, c / nc
    if abs(float(np.dot(r, c))) > _MAX_ROW_COLUMN_COSINE:
        return None
    return np.stack([r, c])


def _describe_orientation(key: Hashable, rec: ImageRecord) -> str:
    if key == -1 or rec.orientation is None:
        return "no usable image orientation"
    rc = _unit_rows(rec.orientation)
    label = orientation_from_normal(np.cross(rc[0], rc[1])) if rc is not None else "unknown"
    return f"{label} orientation"


def _stages() -> list[_Stage]:
    return [
        _Stage(
            "study",
            lambda r: r.study_uid,
            lambda k, r: f"study {k or '(no Study Instance UID)'}",
        ),
        _Stage("orientation", _orientation_key_factory(), _describe_orientation),
        _Stage(
            "size",
            lambda r: (r.layout.rows, r.layout.columns),
            lambda k, r: f"{r.layout.columns}x{r.layout.rows} pixels",
        ),
        _Stage(
            "pixel spacing",
            lambda r: (
                None if r.pixel_spacing is None else tuple(round(v, 4) for v in r.pixel_spacing)
            ),
            lambda k, r: (
                "no pixel spacing" if k is None else f"pixel spacing {k[0]:g} x {k[1]:g} mm"
            ),
        ),
        _Stage("echo", lambda r: r.echo_number, lambda k, r: f"echo {k or '(none)'}"),
        _Stage(
            "position",
            lambda r: r.position is not None,
            lambda k, r: "with image positions" if k else "without image position",
        ),
    ]


def _split(group: list[ImageRecord]) -> list[tuple[list[ImageRecord], list[str]]]:
    parts: list[tuple[list[ImageRecord], list[str]]] = [(group, [])]
    for stage in _stages():
        next_parts: list[tuple[list[ImageRecord], list[str]]] = []
        for recs, labels in parts:
            buckets: dict[Hashable, list[ImageRecord]] = {}
            for rec in recs:
                buckets.setdefault(stage.key(rec), []).append(rec)
            if len(buckets) == 1:
                next_parts.append((recs, labels))
                continue
            for key, sub in buckets.items():
                next_parts.append((sub, [*labels, stage.describe(key, sub[0])]))
        parts = next_parts
    return parts


def _plan_series_uid(
    uid: str, group: list[ImageRecord], *, synthetic: bool, same_pixels: PixelComparator | None
) -> tuple[list[SeriesPlan], list[Refusal]]:
    parts = _split(group)
    expanded: list[tuple[list[ImageRecord], list[str], list[ImageRecord], list[str]]] = []
    refusals: list[Refusal] = []
    for recs, labels in parts:
        try:
            for sub, sub_labels, dropped, notes in _resolve_duplicates(recs, uid, same_pixels):
                expanded.append((sub, [*labels, *sub_labels], dropped, notes))
        except SeriesRefused as exc:
            refusals.append(Refusal(_unique_paths(recs), str(exc)))
    expanded.sort(key=lambda p: (-len(p[0]), p[0][0].path, p[0][0].frame))
    planned: list[tuple[SeriesPlan, list[str], list[str]]] = []
    for recs, labels, dropped, notes in expanded:
        try:
            plan = plan_geometry(uid, recs, description=_series_label(uid, recs[0], labels))
        except SeriesRefused as exc:
            refusals.append(Refusal(_unique_paths(recs), str(exc)))
            continue
        plan.dropped = dropped
        planned.append((plan, labels, notes))
    names = [uid if n == 0 else f"{uid}#{n + 1}" for n in range(len(planned))]
    for n, (plan, labels, notes) in enumerate(planned):
        plan.uid = names[n]
        plan.warnings[:0] = _split_warnings(uid, n, names, labels, synthetic=synthetic) + notes
    return [p for p, _, _ in planned], refusals


def _split_warnings(
    uid: str, n: int, names: list[str], labels: list[str], *, synthetic: bool
) -> list[str]:
    warnings: list[str] = []
    if synthetic:
        warnings.append(
            "no Series Instance UID: images grouped by folder, frame of reference and "
            f"series number/description; {uid} is a made-up identifier"
        )
    if n == 0 and len(names) > 1:
        warnings.append(
            "images sharing this Series Instance UID but differing in orientation, size, "
            f"spacing, study or acquisition were split off as {', '.join(names[1:])}"
        )
    if n > 0:
        warnings.append(f"split off from series {uid}: {'; '.join(labels)}")
    return warnings


def _unique_paths(recs: list[ImageRecord]) -> list[str]:
    return list(dict.fromkeys(r.path for r in recs))


def _series_label(uid: str, rec: ImageRecord, labels: list[str]) -> str:
    desc = f" ({rec.series_description})" if rec.series_description else ""
    part = f", images with {'; '.join(labels)}" if labels else ""
    return f"series {uid}{desc}{part}"


# ------------------------------------------------------------------------------------------------
# duplicates
_PARTITION_KEYS: tuple[tuple[str, Callable[[ImageRecord], Hashable]], ...] = (
    ("temporal position", lambda r: r.temporal_index),
    ("stack", lambda r: r.stack_id),
    ("acquisition number", lambda r: r.acquisition_number),
    ("trigger time", lambda r: r.trigger_time),
    ("rescale", lambda r: (round(r.slope, 9), round(r.intercept, 6))),
)


def _resolve_duplicates(
    recs: list[ImageRecord], uid: str, same_pixels: PixelComparator | None
) -> list[tuple[list[ImageRecord], list[str], list[ImageRecord], list[str]]]:
    """Drop identical copies; split or refuse images that share a position but differ.

    Returns ``(records, split labels, dropped records, warnings)`` per resulting group.
    """
    if len(recs) < 2 or any(r.position is None or r.orientation is None for r in recs):
        return [(recs, [], [], [])]
    normal = _normal(recs[0])
    kept, pairs = _drop_identical(recs, normal, same_pixels)
    dropped = [copy for copy, _ in pairs]
    notes = _duplicate_notes(pairs)
    if not _has_duplicates(kept, normal):
        return [(kept, [], dropped, notes)]
    for label, key in _PARTITION_KEYS:
        buckets: dict[Hashable, list[ImageRecord]] = {}
        for rec in kept:
            buckets.setdefault(key(rec), []).append(rec)
        if len(buckets) > 1 and not any(_has_duplicates(b, normal) for b in buckets.values()):
            out = []
            for value, sub in buckets.items():
                shown = value if not isinstance(value, tuple) else f"{value[0]:g}/{value[1]:g}"
                out.append((sub, [f"{label} {shown}"], [], []))
            out[0] = (out[0][0], out[0][1], dropped, notes)
            return out
    a, b = _first_duplicate(kept, normal)
    raise SeriesRefused(
        f"series {uid}: {a.name} and {b.name} lie at the same position "
        f"({_fmt_point(a.position)} mm) but hold different images, and nothing in their "
        "headers tells the acquisitions apart; export the series again or load each "
        "file on its own"
    )


def _drop_identical(
    recs: list[ImageRecord], normal: np.ndarray, same_pixels: PixelComparator | None
) -> tuple[list[ImageRecord], list[tuple[ImageRecord, ImageRecord]]]:
    """Keep one image per set of identical copies; return kept and (copy, kept twin) pairs."""
    kept: list[ImageRecord] = []
    pairs: list[tuple[ImageRecord, ImageRecord]] = []
    for cluster in _position_clusters(recs, normal):
        survivors: list[ImageRecord] = []
        for rec in cluster:
            twin = next((s for s in survivors if _identical(s, rec, same_pixels)), None)
            if twin is None:
                survivors.append(rec)
            else:
                pairs.append((rec, twin))
        kept.extend(survivors)
    return kept, pairs


def _duplicate_notes(pairs: list[tuple[ImageRecord, ImageRecord]]) -> list[str]:
    if len(pairs) <= 3:
        return [
            f"duplicate image {copy.name} dropped: same position "
            f"({_fmt_point(copy.position)} mm) and pixels as {twin.name}"
            for copy, twin in pairs
        ]
    copy, twin = pairs[0]
    return [
        f"{len(pairs)} duplicate images dropped: same positions and pixels as images already "
        f"in the series (e.g. {copy.name} is a copy of {twin.name})"
    ]


def _normal(rec: ImageRecord) -> np.ndarray:
    rc = _unit_rows(rec.orientation) if rec.orientation is not None else None
    if rc is None:
        return np.array([0.0, 0.0, 1.0])
    n = np.cross(rc[0], rc[1])
    return n / np.linalg.norm(n)


def _dup_tolerance(t: np.ndarray) -> float:
    gaps = np.diff(np.sort(t))
    gaps = gaps[gaps > 1e-6]
    median = float(np.median(gaps)) if gaps.size else 0.0
    return max(1e-3, min(0.05, 0.02 * median))


def _position_clusters(recs: list[ImageRecord], normal: np.ndarray) -> list[list[ImageRecord]]:
    t = np.array([float(np.dot(r.position, normal)) for r in recs])
    tol = _dup_tolerance(t)
    order = np.argsort(t, kind="stable")
    clusters: list[list[ImageRecord]] = []
    last = -np.inf
    for idx in order:
        if clusters and t[idx] - last <= tol:
            clusters[-1].append(recs[idx])
        else:
            clusters.append([recs[idx]])
        last = t[idx]
    return clusters


def _has_duplicates(recs: list[ImageRecord], normal: np.ndarray) -> bool:
    return any(len(c) > 1 for c in _position_clusters(recs, normal))


def _first_duplicate(
    recs: list[ImageRecord], normal: np.ndarray
) -> tuple[ImageRecord, ImageRecord]:
    cluster = next(c for c in _position_clusters(recs, normal) if len(c) > 1)
    return cluster[0], cluster[1]


def _identical(a: ImageRecord, b: ImageRecord, same_pixels: PixelComparator | None) -> bool:
    if (a.layout.rows, a.layout.columns) != (b.layout.rows, b.layout.columns):
        return False
    same_rescale = (a.slope, a.intercept, a.modality_lut) == (b.slope, b.intercept, b.modality_lut)
    if same_rescale and a.path == b.path and a.frame == b.frame:
        return True
    if same_rescale and a.layout.transfer_syntax == b.layout.transfer_syntax:
        pa, pb = read_pixel_bytes(a), read_pixel_bytes(b)
        if pa is not None and pa == pb:
            return True
    return same_pixels is not None and same_pixels(a, b)


def _fmt_point(p: np.ndarray | None) -> str:
    if p is None:
        return "?"
    return ", ".join(f"{v:.2f}" for v in p)


# ------------------------------------------------------------------------------------------------
# geometry
def plan_geometry(uid: str, recs: list[ImageRecord], *, description: str = "") -> SeriesPlan:
    """Plan the grid of one homogeneous group (same orientation, size, spacing).

    Parameters
    ----------
    uid : str
        Series identifier used in the plan and in messages.
    recs : list of ImageRecord
        The group's images, any order, no duplicate positions.
    description : str
        How to name the series in messages (``"series 1.2.3 (CT Body)"``).

    Returns
    -------
    SeriesPlan

    Raises
    ------
    SeriesRefused
        When the images cannot form one regular volume (positions missing, large gaps).
    """
    label = description or f"series {uid}"
    first = recs[0]
    warnings: list[str] = []
    for rec in recs:
        for note in rec.notes:
            if note not in warnings:
                warnings.append(note)
    row, col, normal = _frame_axes(first, label, single=len(recs) == 1, warnings=warnings)
    sy, sx = _pixel_spacing(first, warnings)
    if first.modality == "CT" and not all(r.has_rescale for r in recs):
        warnings.append(
            "CT image(s) without Rescale Slope/Intercept: stored values are taken as "
            "Hounsfield units unchanged"
        )
    direction = np.column_stack([row, col, normal])
    rows, cols = first.layout.rows, first.layout.columns
    if len(recs) == 1:
        origin = first.position if first.position is not None else np.zeros(3)
        if first.position is None:
            warnings.append("no Image Position (Patient): origin (0, 0, 0) assumed")
        sz = _single_slice_thickness(first, warnings)
        _note_tilt_tag(recs, warnings, corrected=False)
        return SeriesPlan(
            uid, list(recs), (cols, rows, 1), (sx, sy, sz), origin, direction, warnings
        )
    missing = [r for r in recs if r.position is None]
    if missing:
        raise SeriesRefused(
            f"{label}: {len(missing)} of {len(recs)} images have no Image Position (Patient), "
            "so their order along the body is unknown; re-export the series with complete "
            "headers"
        )
    positions = np.array([r.position for r in recs], dtype=np.float64)
    t = positions @ normal
    order = np.argsort(t, kind="stable")
    recs = [recs[i] for i in order]
    positions, t = positions[order], t[order]
    gaps = np.diff(t)
    if np.any(gaps <= 1e-6):
        raise SeriesRefused(f"{label}: two images share a slice position")
    inplane = (positions - positions[0]) @ np.column_stack([row, col])
    geometry = _StackGeometry(t, gaps, inplane, sx, sy, label)
    if geometry.regular and not geometry.sheared:
        _note_tilt_tag(recs, warnings, corrected=False)
        spacing = (sx, sy, geometry.mean_gap)
        size = (cols, rows, len(recs))
        return SeriesPlan(uid, recs, size, spacing, positions[0].copy(), direction, warnings)
    return _resampled_plan(uid, recs, geometry, direction, positions[0], warnings)


def _frame_axes(
    rec: ImageRecord, label: str, *, single: bool, warnings: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rc = _unit_rows(rec.orientation) if rec.orientation is not None else None
    if rc is None:
        if not single:
            raise SeriesRefused(
                f"{label}: no usable Image Orientation (Patient), so the slice direction is "
                "unknown; re-export the series with complete headers"
            )
        warnings.append("no Image Orientation (Patient): axial slices assumed")
        return np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
    row, col = rc
    skew = float(np.dot(row, col))
    if abs(skew) > 1e-3:
        angle = math.degrees(math.acos(max(-1.0, min(1.0, skew))))
        warnings.append(
            f"row and column directions are {angle:.2f}° apart, not 90°: made perpendicular"
        )
    col = col - skew * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _pixel_spacing(rec: ImageRecord, warnings: list[str]) -> tuple[float, float]:
    if rec.pixel_spacing is None:
        warnings.append(
            "no Pixel Spacing: 1 mm pixels assumed - distances in this image are not reliable"
        )
        return 1.0, 1.0
    return rec.pixel_spacing


def _single_slice_thickness(rec: ImageRecord, warnings: list[str]) -> float:
    if rec.spacing_between_slices:
        return rec.spacing_between_slices
    if rec.slice_thickness:
        return rec.slice_thickness
    warnings.append("single slice without Slice Thickness: 1 mm assumed")
    return 1.0


def _note_tilt_tag(recs: list[ImageRecord], warnings: list[str], *, corrected: bool) -> None:
    tilt = recs[0].gantry_tilt_deg
    if corrected or tilt is None or abs(tilt) < 0.05:
        return
    if len(recs) == 1:
        warnings.append(f"gantry tilt {tilt:.1f}° (Gantry/Detector Tilt) on a single slice")
        return
    warnings.append(
        f"gantry tilt {tilt:.1f}° (Gantry/Detector Tilt), but the slices are already stacked "
        "along their own normal: loaded as a regular grid without resampling"
    )


@dataclass(eq=False)
class _StackGeometry:
    """Positions of a sorted stack: along the normal (``t``) and within the plane."""

    t: np.ndarray
    gaps: np.ndarray
    inplane: np.ndarray  # (N, 2) mm offsets along row / column direction from slice 0
    sx: float
    sy: float
    label: str

    @property
    def span(self) -> float:
        return float(self.t[-1] - self.t[0])

    @property
    def mean_gap(self) -> float:
        return self.span / (len(self.t) - 1)

    @property
    def median_gap(self) -> float:
        return float(np.median(self.gaps))

    @property
    def position_tol(self) -> float:
        return max(1e-3, min(0.05, 0.05 * self.median_gap))

    @property
    def inplane_tol(self) -> float:
        return max(1e-3, 0.05 * min(self.sx, self.sy))

    @property
    def regular(self) -> bool:
        expected = self.t[0] + np.arange(len(self.t)) * self.mean_gap
        return float(np.max(np.abs(self.t - expected))) <= self.position_tol

    @property
    def sheared(self) -> bool:
        return float(np.max(np.abs(self.inplane))) > self.inplane_tol


def _resampled_plan(
    uid: str,
    recs: list[ImageRecord],
    geo: _StackGeometry,
    direction: np.ndarray,
    first_position: np.ndarray,
    warnings: list[str],
) -> SeriesPlan:
    dz, n_target = _target_spacing(geo, warnings)
    if geo.sheared:
        warnings.append(_shear_message(geo, recs))
    else:
        _note_tilt_tag(recs, warnings, corrected=False)
    rows, cols = recs[0].layout.rows, recs[0].layout.columns
    umin, vmin = np.minimum(geo.inplane.min(axis=0), 0.0)
    umax, vmax = np.maximum(geo.inplane.max(axis=0), 0.0)
    nx = cols + math.ceil((umax - umin) / geo.sx - 1e-6)
    ny = rows + math.ceil((vmax - vmin) / geo.sy - 1e-6)
    row, col = direction[:, 0], direction[:, 1]
    origin = first_position + umin * row + vmin * col
    shift = np.column_stack(
        [(umin - geo.inplane[:, 0]) / geo.sx, (vmin - geo.inplane[:, 1]) / geo.sy]
    )
    target_t = geo.t[0] + np.arange(n_target) * dz
    upper = np.clip(np.searchsorted(geo.t, target_t, side="right"), 1, len(geo.t) - 1)
    lower = upper - 1
    weight = np.clip((target_t - geo.t[lower]) / (geo.t[upper] - geo.t[lower]), 0.0, 1.0)
    fill = -1024.0 if recs[0].modality == "CT" else 0.0
    resampling = Resampling(lower, upper, weight, shift, fill)
    size = (int(nx), int(ny), int(n_target))
    spacing = (geo.sx, geo.sy, float(dz))
    return SeriesPlan(uid, recs, size, spacing, origin, direction, warnings, resampling)


def _target_spacing(geo: _StackGeometry, warnings: list[str]) -> tuple[float, int]:
    """Regular spacing and slice count of the target grid, with the matching warning."""
    if geo.regular:
        return geo.mean_gap, len(geo.t)
    gaps, t, median = geo.gaps, geo.t, geo.median_gap
    worst = int(np.argmax(gaps))
    if gaps[worst] > _MAX_GAP_FACTOR * median + geo.position_tol:
        raise SeriesRefused(
            f"{geo.label}: a gap of {gaps[worst]:.2f} mm between slices at "
            f"{_fmt_t(t[worst])} and {_fmt_t(t[worst + 1])} mm (usual spacing {median:.2f} mm) - "
            "slices are missing; load a complete series"
        )
    dmin = float(gaps.min())
    ratios = gaps / dmin
    tol = geo.position_tol / dmin
    if np.all(np.abs(ratios - np.round(ratios)) <= max(tol, 0.02)):
        steps = int(round(geo.span / dmin))
        dz = geo.span / steps
        holes = [
            f"between z={_fmt_t(t[i])} and {_fmt_t(t[i + 1])} mm ({int(round(r)) - 1} slice(s))"
            for i, r in enumerate(ratios)
            if round(r) >= 2
        ]
        warnings.append(
            "missing slice(s) "
            + "; ".join(holes)
            + f": interpolated onto the regular {dz:.3g} mm grid"
        )
    else:
        steps = math.ceil(geo.span / dmin - 1e-6)
        dz = geo.span / steps
        warnings.append(
            f"uneven slice spacing ({dmin:.2f} to {float(gaps.max()):.2f} mm between slices): "
            f"resampled to a regular {dz:.3g} mm spacing"
        )
    n_target = steps + 1
    if n_target > _MAX_RESAMPLE_FACTOR * len(t) + 10 or n_target > _MAX_SLICES:
        raise SeriesRefused(
            f"{geo.label}: slice spacing varies from {dmin:.3g} to {float(gaps.max()):.3g} mm; "
            f"a regular grid would need {n_target} slices from {len(t)} images - refused"
        )
    return dz, n_target


def _fmt_t(value: float) -> str:
    return f"{value:.2f}"


def _shear_message(geo: _StackGeometry, recs: list[ImageRecord]) -> str:
    dt = geo.t - geo.t[0]
    denom = float(np.dot(dt, dt))
    slope = (geo.inplane.T @ dt) / denom if denom > 0 else np.zeros(2)
    residual = float(np.max(np.linalg.norm(geo.inplane - np.outer(dt, slope), axis=1)))
    angle = math.degrees(math.atan(float(np.linalg.norm(slope))))
    tag = recs[0].gantry_tilt_deg
    if residual <= max(geo.inplane_tol, 0.1 * min(geo.sx, geo.sy)):
        text = f"gantry tilt {angle:.1f}° corrected by resampling onto a regular orthogonal grid"
        if tag is not None and abs(abs(tag) - angle) > 0.5:
            text += f" (the Gantry/Detector Tilt tag says {tag:.1f}°)"
        return text
    shift = float(np.max(np.linalg.norm(geo.inplane, axis=1)))
    return (
        f"slices are shifted within their planes by up to {shift:.2f} mm (not a plain gantry "
        "tilt): resampled onto a regular orthogonal grid"
    )
