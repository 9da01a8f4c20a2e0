"""Trajectory search: candidates per approach, hard constraints, ranking and the suggestion.

Flow: distance fields of the danger zones on the anatomy crop (pooled to about 1 mm when the
study is finer; the lumbar canal above the sacrum followed in the CT) -> for each approach and side,
travel directions in its cone x tip targets inside the lesion -> skin entry found by marching
back to the body surface -> every needle scored as a capsule by the compiled kernel -> hard
constraints (margins, reach, SI joint, entry region) -> ranking -> the best per approach, a
suggestion with reasons, cement and (optionally) RFA, all in a :class:`~planning.plan.Plan`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from geometry.distance import DistanceField, signed_distance_mm, sub_grid_origin
from geometry.fieldstack import FieldStack, FieldStackBuilder, QuantizedField
from geometry.kernels import NeedleScores, score_needles, score_one
from geometry.pooling import pool_labels, pool_mask
from geometry.rays import distance_to_packed_mm, exit_distance_mm
from imaging.anatomy_grid import label_masks, release_free_memory, sparse_zeros
from imaging.canal_lumbar import NOT_IMAGES, follow_lumbar_canal
from imaging.errors import OperationCancelledError, SacroplanError
from imaging.volume import Volume
from planning.anatomy import SacralAnatomy
from planning.approaches import (
    Approach,
    EntryContext,
    admitted_for_zone,
    approach_registry,
    entry_rules_ok,
)
from planning.carm import bulls_eye_view
from planning.case import Case
from planning.cement import (
    cement_box,
    cement_margin_voxels,
    geometric_cement_cap_ml,
    suggest_cement,
)
from planning.margins import Margins
from planning.needles import Needle, get_needle, needle_catalogue
from planning.plan import (
    Candidate,
    CaseRef,
    Clearance,
    Plan,
    Suggestion,
    Trajectory,
    clearance_text,
    encode_mask,
    grid_json,
    study_reference,
)
from planning.rfa import plan_rfa_for_track
from planning.scoring_exact import DangerSurfaces, StructureSurface

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

FIELD_MARGIN_MM = 25.0  # distance fields are exact this far from each structure
TARGET_SPACING_MM = 5.0  # tip targets on this lattice inside the lesion
TARGET_DEPTH_MM = 2.0  # ... at least this deep inside it
MAX_TARGETS = 12
CANDIDATES_PER_APPROACH = 3
AUTO_NEEDLES = ("13G-100", "15G-138")  # tried in this order when no needle is chosen
# Ranking weights (a feasible needle's score is their weighted sum, each term in 0..1).
W_CLEARANCE, CLEARANCE_SATURATION_MM = 0.35, 10.0
W_LENGTH = 0.2
W_CENTRING = 0.2
W_PREFERENCE = 0.25


class PlanningError(SacroplanError):
    """Planning cannot run (no anatomy, no lesion)."""


@dataclass
class ApproachResult:
    """All needles evaluated for one approach (both sides together)."""

    approach: Approach
    sides: np.ndarray  # (N,) str
    entries: np.ndarray  # (N, 3) skin entries, mm LPS
    tips: np.ndarray  # (N, 3)
    scores: NeedleScores | None
    feasible: np.ndarray  # (N,) bool
    rank: np.ndarray  # (N,) float, -inf where infeasible
    needles: list[str] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)


# -- fields ------------------------------------------------------------------------------------
def build_fields(
    case: Case,
    *,
    canal: np.ndarray | None = None,
    box: tuple[slice, slice, slice] | None = None,
) -> FieldStack:
    """Distance fields of the sacrum, foramina, canal, SI joints, ilia, pelvic side and lesion.

    All on the anatomy crop grid (:func:`field_grid`), in mm (spacing and direction honoured).
    ``canal`` is the canal with the lumbar canal (:func:`canal_with_lumbar`) when the caller has
    it already. ``box`` (``[k, j, i]`` slices of that grid) keeps only that part of the grid,
    with the same values there (the search stores only where its needles read,
    :func:`_reads_box`).

    Raises
    ------
    PlanningError
        No anatomy or no lesion yet.
    """
    if case.masks is None or case.lesion is None:
        raise PlanningError("plan after the anatomy and the lesion: run both first")
    m = case.masks
    crop = m.image
    grid = field_grid(crop)
    geo = {"origin": grid.origin, "spacing": grid.spacing, "direction": grid.direction}
    factors = field_factors(crop.spacing)
    shape = grid.array.shape
    region = box if box is not None else tuple(slice(0, n) for n in shape)
    origin = sub_grid_origin(grid.origin, grid.spacing, grid.direction, region)
    lesion = _lesion_on_crop(case)

    def field_of(masks: list[np.ndarray], *, danger: bool = True) -> DistanceField:
        """The field of the masks' union over ``region`` (masks pooled over their own boxes, in
        slabs: no crop-size temporary)."""
        pooled = _pool_union(masks, factors, shape, any_voxel=danger)
        return DistanceField.from_mask(pooled, crop_margin_mm=FIELD_MARGIN_MM, region=box, **geo)

    # The stack takes its memory when its first channel is written: the large fields are made
    # before that and kept as int16 codes meanwhile; the small ones go in as they are made. One
    # float32 field is alive at a time.
    sacrum_field = DistanceField.from_mask(
        _pool_union([m.masks["sacrum"], lesion], factors, shape, any_voxel=False),
        crop_margin_mm=FIELD_MARGIN_MM,
        **geo,
    )  # on the whole grid: the pelvic side is found from it
    cortex = _pool_union([m.masks["anterior_cortex"]], factors, shape, any_voxel=True)
    pelvic = _pelvic_side(sacrum_field.values, cortex, grid.spacing)
    del cortex
    if box is not None:
        sacrum_field = DistanceField(
            sacrum_field.values[box],
            origin,
            grid.spacing,
            grid.direction,
            exact_within_mm=sacrum_field.exact_within_mm,
        )
    codes = {"sacrum": QuantizedField.of(sacrum_field)}
    del sacrum_field
    codes["pelvic_side"] = QuantizedField.of(
        DistanceField.from_mask(pelvic, crop_margin_mm=FIELD_MARGIN_MM, region=box, **geo)
    )
    del pelvic
    if canal is None:
        canal = canal_with_lumbar(m.masks["canal"], crop)
    codes["canal"] = QuantizedField.of(field_of([canal]))
    joints = [m.masks["si_joint_left"], m.masks["si_joint_right"]]
    codes["si_joint"] = QuantizedField.of(field_of(joints))
    ilia = [m.masks["left_ilium"], m.masks["right_ilium"]]
    codes["ilium"] = QuantizedField.of(field_of(ilia, danger=False))

    release_free_memory()  # what the large fields' working memory left, before the stack
    found = {f.name: int(f.label) for f in m.foramina if f.label > 0}
    k, j, i = (r.stop - r.start for r in region)
    stack = FieldStackBuilder(
        (k, j, i), origin, grid.spacing, grid.direction, n_channels=6 + len(found)
    )
    stack.add("sacrum", codes.pop("sacrum"))
    if found:
        at, pooled_foramina = _pool_labels_box(
            m.masks["foramina"], factors, shape, max(found.values()), any_voxel=True
        )
        for name, label in found.items():
            pooled = np.zeros(shape, dtype=bool)
            pooled[at] = pooled_foramina[label - 1]
            field = DistanceField.from_mask(
                pooled, crop_margin_mm=FIELD_MARGIN_MM, region=box, **geo
            )
            stack.add_foramen(name, field)
            del field, pooled
        del pooled_foramina
    for name in ("canal", "pelvic_side", "si_joint", "ilium"):
        stack.add(name, codes.pop(name))
    stack.add("lesion", field_of([lesion], danger=False))
    return stack.build()


def _reads_box(
    case: Case, grid: Volume, paths: list[tuple[np.ndarray, ...]]
) -> tuple[slice, slice, slice]:
    """The part of the field grid ``grid`` the search's needles read: a box of whole voxels.

    The kernel reads a needle along its axis from the skin entry to the tip, at points clamped
    to the grid (so the box of the clamped points of all needles is the box of their entries
    and tips, clamped), and from the tip forward while it is in the sacrum (so within the
    pooled sacrum and lesion), each point with the 8 voxels around it. The cement cap reads the
    lesion's box and its keep-out margin. A stack on this box gives the search the same values
    (:func:`build_fields`).
    """
    assert case.masks is not None and case.lesion is not None
    shape = np.array(grid.array.shape)
    lo, hi = shape.copy(), np.zeros(3, dtype=np.int64)
    points = [p for path in paths for p in path[:2] if len(p)]
    if points:
        ijk = grid.world_to_index(np.vstack(points))[:, ::-1]  # (k, j, i)
        ijk = np.clip(ijk, 0, shape - 1)
        lo = np.minimum(lo, np.floor(ijk.min(axis=0)).astype(np.int64) - 1)
        hi = np.maximum(hi, np.ceil(ijk.max(axis=0)).astype(np.int64) + 2)
    m = case.masks
    factors = field_factors(m.image.spacing)
    lesion = _lesion_on_crop(case)
    pad = cement_margin_voxels(grid.spacing) + 2
    for masks, grow in (([m.masks["sacrum"], lesion], 3), ([lesion], pad)):
        got = _block_box(masks, factors, tuple(shape))
        if got is not None:
            lo = np.minimum(lo, got[0] - grow)
            hi = np.maximum(hi, got[1] + grow)
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.any(hi - lo < 2):
        return tuple(slice(0, int(n)) for n in shape)  # type: ignore[return-value]
    return _slices(lo, hi)  # type: ignore[return-value]


#: Pooling works through the masks in slabs of this many blocks along k.
_POOL_SLAB_BLOCKS = 8


def _block_box(
    masks: list[np.ndarray], factors: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pooled-grid box ``(lo, hi)`` (k, j, i; hi exclusive) of the blocks holding any
    nonzero voxel of ``masks`` (within the whole blocks of ``shape``), or None."""
    extents = [e for e in (_extent(mk) for mk in masks) if e is not None]
    if not extents:
        return None
    f = np.array(factors)
    lo = np.min([e[0] for e in extents], axis=0) // f
    hi = np.minimum(-(-np.max([e[1] for e in extents], axis=0) // f), shape)
    return (lo, hi) if np.all(hi > lo) else None


def _pool_union(
    masks: list[np.ndarray],
    factors: tuple[int, int, int],
    shape: tuple[int, ...],
    *,
    any_voxel: bool,
) -> np.ndarray:
    """``pool_mask(masks[0] | masks[1] | ..., factors)`` (nonzero = inside) on the field grid of
    ``shape``, computed over the masks' box in slabs of whole blocks: the same result without a
    mask-size temporary."""
    out = np.zeros(shape, dtype=bool)
    box = _block_box(masks, factors, shape)
    if box is None:
        return out
    (k0, j0, i0), (k1, j1, i1) = box
    fk, fj, fi = factors
    for k in range(int(k0), int(k1), _POOL_SLAB_BLOCKS):
        ke = min(k + _POOL_SLAB_BLOCKS, int(k1))
        cut = (slice(k * fk, ke * fk), slice(j0 * fj, j1 * fj), slice(i0 * fi, i1 * fi))
        union = masks[0][cut] != 0
        for mk in masks[1:]:
            union |= mk[cut] != 0
        out[k:ke, j0:j1, i0:i1] = pool_mask(union, factors, any_voxel=any_voxel)
    return out


def _pool_labels_box(
    labels: np.ndarray,
    factors: tuple[int, int, int],
    shape: tuple[int, ...],
    n_labels: int,
    *,
    any_voxel: bool,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """``pool_labels(labels, ...)`` on the field grid of ``shape``, only over the labels' box:
    that box (slices of the field grid) and the ``(n_labels, ...)`` pooled masks inside it
    (every label is empty outside it)."""
    box = _block_box([labels], factors, shape)
    if box is None:
        return (slice(0, 0),) * 3, np.zeros((n_labels, 0, 0, 0), dtype=bool)
    lo, hi = box
    cut = _slices(lo * np.array(factors), hi * np.array(factors))
    return _slices(lo, hi), pool_labels(labels[cut], factors, n_labels, any_voxel=any_voxel)


def _lesion_on_crop(case: Case) -> np.ndarray:
    """The lesion mask (uint8, nonzero inside) cut to the anatomy crop: a view, no copy."""
    assert case.lesion is not None and case.masks is not None
    m = case.masks
    i0, j0, k0 = m.crop_index
    k, j, i = m.image.array.shape
    return case.lesion.mask.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i]


def _sparse_copy(mask: np.ndarray) -> np.ndarray:
    """A copy of a bool mask that takes memory only around its voxels (:func:`sparse_zeros`)."""
    out = sparse_zeros(mask.shape, bool)
    extent = _extent(mask)
    if extent is not None:
        box = _slices(*extent)
        out[box] = mask[box]
    return out


def danger_surfaces(case: Case, *, canal: np.ndarray | None = None) -> DangerSurfaces:
    """Triangulated surfaces of the foramina and the canal (with the lumbar canal) of a case.

    The reported candidates' clearances are measured exactly against these
    (:mod:`planning.scoring_exact`), on the anatomy crop's own grid, not pooled and not capped.
    ``canal`` as for :func:`build_fields`.

    Raises
    ------
    PlanningError
        No anatomy yet.
    """
    if case.masks is None:
        raise PlanningError("plan after the anatomy: run it first")
    m = case.masks
    found = [f for f in m.foramina if f.label > 0]
    foramina = label_masks(m.masks["foramina"], {f.name: f.label for f in found})
    if canal is None:
        canal = canal_with_lumbar(m.masks["canal"], m.image)
    envelope = _Envelope(case)
    surfaces = {name: StructureSurface.from_mask(mask, m.image) for name, mask in foramina.items()}
    lesion = _lesion_on_crop(case) if case.lesion is not None else None
    channels = {}
    for f in found:
        radius = max(f.radius_mm, wall_radius(surfaces[f.name], f.center_lps, f.axis))
        if lesion is not None:
            cut = _outside_channel(foramina[f.name], lesion, f.center_lps, f.axis, radius, m.image)
            if cut is not None:
                surfaces[f.name] = StructureSurface.from_mask(foramina[f.name] & ~cut, m.image)
        channels[f.name] = foramen_exits(f.center_lps, f.axis, radius, envelope, m.image)
    canal_surface = StructureSurface.from_mask(canal, m.image) if canal.any() else None
    return DangerSurfaces(surfaces, canal_surface, channels)


#: Inside a lesion, a foramen's wall is taken this far outside its channel's radius (mm).
FORAMEN_IN_LESION_SLACK_MM = 0.3


def _outside_channel(
    mask: np.ndarray,
    lesion: np.ndarray,
    center: np.ndarray,
    axis: np.ndarray,
    radius_mm: float,
    grid: Volume,
) -> np.ndarray | None:
    """Voxels of a foramen's ``mask`` in or next to (one voxel) the ``lesion`` (nonzero inside)
    whose centres lie more than ``FORAMEN_IN_LESION_SLACK_MM`` outside its channel
    (``center``, ``axis``, ``radius_mm``; LPS mm), both masks on ``grid``'s array; None when
    there are none.

    Where a lesion has eroded a foramen's wall, the wall cannot be seen and the channel's
    mask, grown over the dark wall voxels it lost to the search, runs on into the lesion;
    there the fitted channel is the best estimate of the nerve's edge.
    """
    extent = _extent(mask)
    if extent is None:
        return None
    box = _slices(np.maximum(extent[0] - 1, 0), extent[1] + 1)
    near = mask[box] & ndi.binary_dilation(lesion[box] > 0, structure=np.ones((3, 3, 3), bool))
    if not near.any():
        return None
    kji = np.argwhere(near) + np.array([b.start for b in box])
    rel = grid.index_to_world(kji[:, ::-1].astype(np.float64)) - np.asarray(center, float)
    unit = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    radial = np.linalg.norm(rel - (rel @ unit)[:, None] * unit, axis=1)
    far = kji[radial > radius_mm + FORAMEN_IN_LESION_SLACK_MM]
    if not len(far):
        return None
    out = np.zeros(mask.shape, dtype=bool)
    out[tuple(far.T)] = True
    return out


def wall_radius(surface: StructureSurface, center: np.ndarray, axis: np.ndarray) -> float:
    """Radius (mm) of a channel's wall as its measured surface has it: the median distance
    from the axis (through ``center``, LPS mm) of the surface's points along the middle
    half of its length (away from the slanted ends). 0 for an empty surface.

    The channel's fitted radius is often a fraction of a millimetre short of its mask's wall
    (more so on thick slices); the channel continued out of the bone (:func:`foramen_exits`)
    takes the larger of the two, so that it is no narrower than the channel inside the bone.
    """
    if not len(surface.points):
        return 0.0
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    rel = surface.points - np.asarray(center, dtype=np.float64)
    along = rel @ axis
    lo, hi = np.percentile(along, [25.0, 75.0])
    middle = (along >= lo) & (along <= hi)
    radial = np.linalg.norm(rel[middle] - along[middle, None] * axis, axis=1)
    return float(np.median(radial)) if len(radial) else 0.0


class _Envelope:
    """The solid sacrum with its holes (sacrum, foramina, sacral canal and lesion) on the
    anatomy crop, read only where it is indexed (``envelope[k, j, i]`` with index arrays): no
    crop-size mask is made."""

    def __init__(self, case: Case) -> None:
        assert case.masks is not None
        self._masks = case.masks.masks
        i0, j0, k0 = case.masks.crop_index
        self._at = (k0, j0, i0)
        self._lesion = case.lesion.mask.array if case.lesion is not None else None

    def __getitem__(self, kji: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        m = self._masks
        out = m["sacrum"][kji] | (m["foramina"][kji] > 0) | m["canal"][kji]
        if self._lesion is not None:
            k, j, i = (np.asarray(v) + a for v, a in zip(kji, self._at, strict=True))
            out |= self._lesion[k, j, i] > 0
        return out


#: Where a foramen's channel leaves the bone, it is followed this far past the step where its
#: whole cross-section is out (mm).
FORAMEN_EXIT_OVERHANG_MM = 0.5
#: The channel's wall is looked for this far outside its fitted radius (mm): about a voxel,
#: the bone of the wall's lip that the mask may leave out at the mouth.
FORAMEN_WALL_PROBE_MM = 1.0


def foramen_exits(
    center: np.ndarray, axis: np.ndarray, radius_mm: float, envelope: np.ndarray, grid: Volume
) -> tuple[tuple[np.ndarray, np.ndarray, float], ...]:
    """The parts of a foramen's channel that stick out of the bone, as cylinders (LPS mm).

    The sacral surface crosses a foramen obliquely, so one side of the channel (and the
    nerve in it) leaves the bone before the other: the mask, which stops at the bone, ends
    with a slanted face. From the fitted channel (centre, unit axis, radius), each end is
    continued as a cylinder from the first step where any part of its cross-section is out of
    ``envelope`` (the solid sacrum with its holes, ``[k, j, i]`` on ``grid``) to
    ``FORAMEN_EXIT_OVERHANG_MM`` past the step where all of it is, its wall included (probed
    ``FORAMEN_WALL_PROBE_MM`` outside the radius: the mouth of a channel under a lip of bone
    is left out of the mask, while the lip is still bone).
    """
    center = np.asarray(center, dtype=np.float64)
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    ring = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    circle = np.cos(ring)[:, None] * e1 + np.sin(ring)[:, None] * e2
    # The rim is probed just inside the channel's wall, where the mask is unambiguous, and
    # just outside it: where the channel's mouth opens under an overhanging lip of bone, the
    # mask (which stops where the bone no longer encloses the channel) ends before the bone
    # does, but the wall is still there, next to the channel.
    disc = np.vstack(
        [
            np.zeros((1, 3)),
            0.5 * radius_mm * circle,
            0.85 * radius_mm * circle,
            radius_mm * circle,
            (radius_mm + FORAMEN_WALL_PROBE_MM) * circle,
        ]
    )
    steps = np.arange(0.0, 60.0, 0.25)
    size = np.asarray(grid.size)
    out = []
    for sense in (-1.0, 1.0):
        pts = center + sense * steps[:, None, None] * axis + disc[None, :, :]
        ijk = np.round(grid.world_to_index(pts.reshape(-1, 3))).astype(int)
        ok = np.all((ijk >= 0) & (ijk < size), axis=1)
        inside = np.zeros(len(ijk), bool)
        inside[ok] = envelope[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
        inside = inside.reshape(len(steps), -1)
        any_out, all_out = ~inside.all(axis=1), ~inside.any(axis=1)
        if not all_out.any() or not any_out.any():
            continue
        first, last = steps[int(np.argmax(any_out))], steps[int(np.argmax(all_out))]
        if last < first:
            continue
        start = center + sense * first * axis
        end = center + sense * (last + FORAMEN_EXIT_OVERHANG_MM) * axis
        out.append((start, end, float(radius_mm)))
    return tuple(out)


#: The planner's distance fields are built on a grid of about this spacing (mm) or finer:
#: finer studies are pooled in whole blocks of voxels (a 0.43-0.6 mm CT by 2 along each axis;
#: a 0.7 mm or coarser one not at all).
FIELD_SPACING_MM = 1.0


def field_factors(spacing: np.ndarray) -> tuple[int, int, int]:
    """Pooling factors (k, j, i) taking a grid of ``spacing`` (x, y, z mm) to the field grid."""
    f = np.maximum(1, np.round(FIELD_SPACING_MM / np.asarray(spacing, float)))
    return tuple(int(v) for v in f[::-1])  # type: ignore[return-value]


def field_grid(crop: Volume) -> Volume:
    """The grid of the planner's fields over ``crop``: whole blocks of ``field_factors``.

    A block's centre is the mean of its voxel centres; the grid covers whole blocks only
    (at most ``factor - 1`` voxels are dropped at the far ends of the crop).
    """
    fk, fj, fi = field_factors(crop.spacing)
    f_xyz = np.array([fi, fj, fk], float)
    shape = tuple(n // f for n, f in zip(crop.array.shape, (fk, fj, fi), strict=True))
    origin = crop.index_to_world(((f_xyz - 1.0) / 2.0)[None, :])[0]
    empty = np.zeros(shape, np.uint8)
    return Volume(empty, origin, crop.spacing * f_xyz, crop.direction, modality="LABEL")


HEAD_LPS = np.array([0.0, 0.0, 1.0])
LUMBAR_CANAL_MM = 60.0  # how far the canal is carried above the top of the sacral canal
CANAL_TOP_MM = 4.0  # the slab of the sacral canal's top that is carried up


def canal_with_lumbar(canal: np.ndarray, crop: Volume) -> np.ndarray:
    """The sacral canal plus the lumbar canal above it (on the anatomy crop grid).

    In an image (a CT, or any other series, read as a T1-weighted MR as the anatomy reads it)
    the lumbar canal is followed (:func:`follow_lumbar_canal`); on a mask's grid the top of
    the sacral canal is carried straight up (:func:`extend_canal_cranially`).
    """
    if crop.modality.upper() not in NOT_IMAGES:
        return follow_lumbar_canal(crop, canal, length_mm=LUMBAR_CANAL_MM)
    return extend_canal_cranially(canal, crop, HEAD_LPS)


def extend_canal_cranially(
    canal: np.ndarray, grid: Volume, up: np.ndarray, *, length_mm: float = LUMBAR_CANAL_MM
) -> np.ndarray:
    """The sacral canal carried up along ``e_z`` as the lumbar canal (thecal sac).

    The segmentation stops at the top of the sacrum, but a needle passing behind S1 or L5
    must keep its margin from the canal above it too: the top ``CANAL_TOP_MM`` of the canal
    is swept ``length_mm`` along ``up``. The lumbar lordosis turns the canal from the sacral
    slope back toward the body's long axis, so the caller passes the head direction (LPS +z),
    not the S1 endplate normal.

    Parameters
    ----------
    canal : (K, J, I) bool ndarray
        Canal mask on ``grid``.
    grid : Volume
        Its grid.
    up : (3,) float ndarray
        Unit vector toward the head, LPS.

    Returns
    -------
    (K, J, I) bool ndarray
    """
    kji = np.argwhere(canal)
    if not len(kji):
        return canal
    points = grid.index_to_world(kji[:, ::-1].astype(np.float64))
    up = np.asarray(up, dtype=np.float64)
    height = points @ up
    top = points[height >= height.max() - CANAL_TOP_MM]
    step = 0.5 * float(np.min(grid.spacing))
    shifts = np.arange(step, length_mm + step, step)
    swept = (top[None, :, :] + shifts[:, None, None] * up[None, None, :]).reshape(-1, 3)
    ijk = np.round(grid.world_to_index(swept)).astype(int)
    size = np.asarray(grid.size)
    ok = np.all((ijk >= 0) & (ijk < size), axis=1)
    out = canal.copy()
    out[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]] = True
    return out


def _crop_of(
    full: np.ndarray, crop_index: tuple[int, int, int], shape: tuple[int, ...]
) -> np.ndarray:
    i0, j0, k0 = crop_index
    k, j, i = shape
    return np.ascontiguousarray(full[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i])


def _pelvic_side(
    sacrum_mm: np.ndarray, anterior_cortex: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """The space in front of the sacrum: outside voxels whose nearest bone is anterior cortex.

    ``sacrum_mm`` is the sacrum's signed distance field (mm, exact within
    ``FIELD_MARGIN_MM``); a voxel outside the sacrum is on the pelvic side when the anterior
    cortex (part of the sacrum) is as near as the sacrum itself, within that margin.
    """
    if not anterior_cortex.any():
        return np.zeros(sacrum_mm.shape, dtype=bool)
    to_cortex = signed_distance_mm(anterior_cortex, spacing, crop_margin_mm=FIELD_MARGIN_MM)
    outside = (sacrum_mm > 0) & (sacrum_mm < FIELD_MARGIN_MM)
    return outside & (to_cortex <= sacrum_mm + 1e-3)


# -- candidates --------------------------------------------------------------------------------
def lesion_targets(case: Case) -> np.ndarray:
    """Tip targets (T, 3), mm LPS: the lesion centroid, then lattice points deep inside it."""
    assert case.lesion is not None and case.metrics is not None
    mask = case.lesion.mask
    extent = _extent(mask.array)  # the lesion's box: no study-size temporary
    assert extent is not None
    lo, hi = extent
    sub = mask.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] > 0
    depth = ndi.distance_transform_edt(np.pad(sub, 1), sampling=mask.spacing[::-1])[
        1:-1, 1:-1, 1:-1
    ]
    step = np.maximum(1, np.round(TARGET_SPACING_MM / mask.spacing[::-1]).astype(int))
    lattice = np.zeros_like(sub)
    lattice[:: step[0], :: step[1], :: step[2]] = True
    pick = np.argwhere(lattice & (depth >= TARGET_DEPTH_MM)) + lo
    points = mask.index_to_world(pick[:, ::-1].astype(np.float64))
    centroid = np.asarray(case.metrics.centroid_lps, dtype=np.float64)
    if len(points) > MAX_TARGETS - 1:
        order = np.argsort(np.linalg.norm(points - centroid, axis=1))
        points = points[order[: MAX_TARGETS - 1]]
    c_ijk = np.round(mask.world_to_index(centroid)).astype(int)
    centroid_inside = bool(
        np.all((c_ijk >= 0) & (c_ijk < mask.size)) and mask.array[c_ijk[2], c_ijk[1], c_ijk[0]] > 0
    )
    head = [centroid] if centroid_inside or not len(points) else []
    return np.vstack([*head, points]) if len(points) else np.asarray(head)


def body_mask(image: Volume) -> Volume:
    """The patient's body (skin inward, cavities filled) on a 2x coarser grid."""
    arr = image.array[::2, ::2, ::2]
    if image.modality.upper() == "CT":
        solid = arr > -400
    else:
        hi = float(np.percentile(arr, 99.5))
        solid = arr > 0.08 * hi
    labels, n = ndi.label(solid)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        solid = labels == int(np.argmax(sizes))
    filled = ndi.binary_fill_holes(solid)
    for k in range(filled.shape[0]):  # axial holes open at the ends of the scan (bowel gas)
        filled[k] = ndi.binary_fill_holes(filled[k])
    coarse = Volume(
        filled.astype(np.uint8),
        image.origin,
        image.spacing * 2,
        image.direction,
        modality="LABEL",
    )
    return coarse


def _world_to_index(volume: Volume) -> np.ndarray:
    m = np.linalg.inv(volume.direction * volume.spacing[np.newaxis, :])
    return np.hstack([m, (-m @ volume.origin)[:, None]])


def _entry_context(
    anatomy: SacralAnatomy, entries: np.ndarray, tips: np.ndarray, side: str
) -> EntryContext:
    frame = anatomy.frame
    levels = sorted(anatomy.denis_levels, key=lambda d: d.z_mm)
    zs = np.array([d.z_mm for d in levels])
    medial = np.array([d.medial_mm for d in levels])
    lateral = np.array([d.lateral_mm for d in levels])
    mid_x = float(getattr(anatomy, "_mid_x", 0.0))

    def to_frame(p: np.ndarray) -> np.ndarray:
        f = frame.to_frame(p)
        f[:, 0] -= mid_x
        return f

    s2 = [d.z_mm for d in levels if d.level == "S2"]
    s1 = [d for d in levels if d.level == "S1"] or levels[-1:]
    # the S1 foramen's radius is half its medial-to-lateral width; its top is that far above
    s1_top = s1[0].z_mm + 0.5 * (s1[0].lateral_mm - s1[0].medial_mm) if s1 else np.inf
    s1_centre = 0.5 * (s1[0].lateral_mm + s1[0].medial_mm) if s1 else 0.0
    return EntryContext(
        entry=to_frame(entries),
        target=to_frame(tips),
        side_sign={"left": 1.0, "right": -1.0}.get(side, 0.0),
        foramen_medial_x=lambda z: np.interp(z, zs, medial),
        foramen_lateral_x=lambda z: np.interp(z, zs, lateral),
        s2_z=float(s2[0]) if s2 else float(np.median(zs)),
        s1_top_z=float(s1_top),
        s1_centre_x=float(s1_centre),
    )


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lo, hi)`` (k, j, i) of the nonzero voxels' bounding box (hi exclusive), or None."""
    lo, hi = [], []
    for axis in range(3):
        rest = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=rest))
        if not len(hit):
            return None
        lo.append(hit[0])
        hi.append(hit[-1] + 1)
    return np.array(lo), np.array(hi)


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclass(frozen=True)
class _BoneProbe:
    """Where needles first meet bone (sacrum, ilia or lesion), on the study grid.

    Only the box around the bone is stored (as in :meth:`Case.label_map`: sacrum and ilia
    without the canal and foramina, plus the lesion); the rest of the study is "not bone".
    """

    bone: np.ndarray  # (K, J, ceil(I / 8)) uint8: the box's bone voxels, 8 per byte along i
    offset: np.ndarray  # (4,) int64: the box's first voxel (k, j, i) in the study, and I
    shape: np.ndarray  # (3,) int64: the study's shape (k, j, i)
    world_to_index: np.ndarray

    @classmethod
    def of(cls, case: Case) -> _BoneProbe:
        study = case.image.array.shape
        boxes = []
        m = case.masks.masks if case.masks is not None else None
        at = np.zeros(3, dtype=np.int64)
        if case.masks is not None and m is not None:
            i0, j0, k0 = case.masks.crop_index
            at = np.array([k0, j0, i0], dtype=np.int64)
            for name in ("sacrum", "left_ilium", "right_ilium"):
                extent = _extent(m[name])
                if extent is not None:
                    boxes.append((extent[0] + at, extent[1] + at))
        lesion = case.lesion.mask.array if case.lesion is not None else None
        if lesion is not None:
            extent = _extent(lesion)
            if extent is not None:
                boxes.append(extent)
        if boxes:
            lo = np.min([b[0] for b in boxes], axis=0)
            hi = np.max([b[1] for b in boxes], axis=0)
        else:
            lo = hi = np.zeros(3, dtype=np.int64)
        nk, nj, ni = (int(v) for v in hi - lo)
        bone = np.zeros((nk, nj, (ni + 7) // 8), dtype=np.uint8)  # bits along i, packbits order
        crop_shape = np.array(case.masks.image.array.shape) if m is not None else np.zeros(3)
        c_lo = np.maximum(lo, at)
        c_hi = np.minimum(hi, at + crop_shape)
        for k in range(nk):  # slice by slice: no full-size temporary
            plane = np.zeros((nj, ni), dtype=bool)
            kk = lo[0] + k
            if m is not None and c_lo[0] <= kk < c_hi[0] and np.all(c_hi[1:] > c_lo[1:]):
                src = (int(kk - at[0]), *_slices(c_lo[1:] - at[1:], c_hi[1:] - at[1:]))
                part = m["sacrum"][src] | m["left_ilium"][src] | m["right_ilium"][src]
                part &= ~m["canal"][src]
                part &= m["foramina"][src] == 0
                plane[_slices(c_lo[1:] - lo[1:], c_hi[1:] - lo[1:])] = part
            if lesion is not None:
                plane |= lesion[(int(kk), *_slices(lo[1:], hi[1:]))] > 0
            bone[k] = np.packbits(plane, axis=1)
        return cls(
            bone,
            np.array([*lo, ni], dtype=np.int64),
            np.array(study, dtype=np.int64),
            _world_to_index(case.image),
        )

    def distance(self, entries: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Distance (mm) from each skin entry along its direction to the first bone voxel."""
        return distance_to_packed_mm(
            self.bone,
            self.offset,
            self.shape,
            self.world_to_index,
            entries,
            dirs,
            step_mm=0.5,
            max_mm=300.0,
        )


# -- the search --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanOptions:
    """What the user chose: needle (None = automatic), margins, ablation."""

    needle_id: str | None = None
    margins: Margins = field(default_factory=Margins)
    with_rfa: bool = False
    rfa_device: str = "17G-rfa-20"


def plan_case(
    case: Case,
    *,
    options: PlanOptions = PlanOptions(),  # noqa: B008 (frozen)
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Plan:
    """Search every approach for the case's lesion and build the plan.

    Raises
    ------
    PlanningError
        No anatomy or lesion yet.
    OperationCancelledError
        ``cancel()`` returned True.
    """
    if case.anatomy is None or case.masks is None or case.lesion is None or case.metrics is None:
        raise PlanningError("plan after the anatomy and the lesion: run both first")
    report = progress or (lambda _f, _s: None)
    t0 = time.perf_counter()
    report(0.0, "distance fields")
    canal = _sparse_copy(canal_with_lumbar(case.masks.masks["canal"], case.masks.image))
    body = body_mask(case.image)
    targets = lesion_targets(case)
    needles = _needle_choices(options.needle_id)
    radius = max(n.radius_mm for n in needles)
    centroid = np.asarray(case.metrics.centroid_lps, dtype=np.float64)
    zone = case.metrics.denis_zone
    registry = approach_registry()
    paths = {a.key: _approach_paths(case, a, body, targets, zone) for a in registry.values()}
    del body
    # only the part of the field grid the needles read is stored
    box = _reads_box(case, field_grid(case.masks.image), list(paths.values()))
    stack = build_fields(case, canal=canal, box=box)
    release_free_memory()
    t_fields = time.perf_counter()
    results: dict[str, ApproachResult] = {}
    probe = _BoneProbe.of(case)
    for n, approach in enumerate(registry.values()):
        if cancel is not None and cancel():
            raise OperationCancelledError("planning was cancelled")
        report(0.1 + 0.8 * n / len(registry), f"searching {approach.label}")
        results[approach.key] = _search_approach(
            case,
            approach,
            stack,
            None,
            probe,
            targets,
            centroid,
            needles,
            radius,
            options.margins,
            zone,
            paths=paths.pop(approach.key),
        )
    report(0.9, "suggestion")
    t_search = time.perf_counter()
    # what needs the fields is done first: the surfaces are made once they are released
    scored = _score_picked(case, results, stack, probe, needles)
    cement = _cement(case, stack, options)
    del stack, probe
    release_free_memory()
    surfaces = danger_surfaces(case, canal=canal)
    del canal
    plan = _assemble_plan(case, results, scored, surfaces, options, needles, zone, cement)
    del surfaces, results, scored
    release_free_memory()  # the stage's working memory goes back to the system
    t_end = time.perf_counter()
    case.timings_s["plan"] = t_end - t0
    case.timings_s["plan_fields"] = t_fields - t0
    case.timings_s["plan_search"] = t_search - t_fields
    case.timings_s["plan_suggestion"] = t_end - t_search
    report(1.0, "done")
    return plan


def _needle_choices(needle_id: str | None) -> list[Needle]:
    if needle_id is not None:
        return [get_needle(needle_id)]
    known = {n.id for n in needle_catalogue()}
    return [get_needle(i) for i in AUTO_NEEDLES if i in known]


def _approach_paths(
    case: Case, approach: Approach, body: Volume, targets: np.ndarray, zone: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The needles an approach tries: ``(entries, tips, dirs, sides)``, every direction of its
    cone to every target, entering where the line back from the target leaves the body."""
    assert case.anatomy is not None
    entries_l, tips_l, sides_l, dirs_l = [], [], [], []
    for side in _sides_for(approach, case, zone):
        dirs = approach.directions(side, _axes(case.anatomy))
        d = np.repeat(dirs, len(targets), axis=0)
        t = np.tile(targets, (len(dirs), 1))
        back = exit_distance_mm(body.array, _world_to_index(body), t, -d, step_mm=1.0, max_mm=350.0)
        ok = np.isfinite(back)
        entries_l.append(t[ok] - back[ok, None] * d[ok])
        tips_l.append(t[ok])
        dirs_l.append(d[ok])
        sides_l.append(np.full(int(ok.sum()), side))
    return np.vstack(entries_l), np.vstack(tips_l), np.vstack(dirs_l), np.concatenate(sides_l)


def _search_approach(
    case: Case,
    approach: Approach,
    stack: FieldStack,
    body: Volume | None,
    probe: _BoneProbe,
    targets: np.ndarray,
    centroid: np.ndarray,
    needles: list[Needle],
    radius_mm: float,
    margins: Margins,
    zone: int | None,
    *,
    paths: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> ApproachResult:
    """Score an approach's needles (``paths`` from :func:`_approach_paths`, made from ``body``
    when not given)."""
    assert case.anatomy is not None
    if paths is None:
        assert body is not None
        paths = _approach_paths(case, approach, body, targets, zone)
    entries, tips, dirs, sides = paths
    if not len(entries):
        return ApproachResult(
            approach,
            sides,
            entries,
            tips,
            None,
            np.zeros(0, bool),
            np.zeros(0),
            blocked_by=["no straight path from the skin"],
        )
    scores = score_needles(entries, tips, stack, radius_mm=radius_mm, lesion_centroid=centroid)
    bone_at = probe.distance(entries, dirs)
    bone_entry = entries + np.nan_to_num(bone_at)[:, None] * dirs
    rules_ok = np.zeros(len(entries), bool)
    for side in np.unique(sides):
        sel = sides == side
        ctx = _entry_context(case.anatomy, bone_entry[sel], tips[sel], side)
        rules_ok[sel] = entry_rules_ok(approach, ctx)
    reach_mm = max(n.working_length_mm for n in needles)
    slack = _slacks(scores, approach, margins, reach_mm, rules_ok)
    feasible = np.all([s >= 0 for s in slack.values()], axis=0)
    rank = np.where(feasible, _rank(scores, approach, reach_mm, case, zone), -np.inf)
    result = ApproachResult(approach, sides, entries, tips, scores, feasible, rank)
    if not feasible.any():
        result.blocked_by = _blocked_reasons(slack, scores, margins)
    return result


def _sides_for(approach: Approach, case: Case, zone: int | None) -> tuple[str, ...]:
    """An approach that must enter on the lesion's side is only tried on that side when the
    lesion lies lateral (zones 1 and 2); a midline lesion is tried from both sides."""
    if "same_side" not in approach.entry_rules or zone not in (1, 2):
        return approach.sides
    assert case.anatomy is not None and case.metrics is not None
    x = case.anatomy.frame.to_frame(np.asarray(case.metrics.centroid_lps)[None, :])[0, 0]
    x -= float(getattr(case.anatomy, "_mid_x", 0.0))
    side = "left" if x > 0 else "right"
    return (side,) if side in approach.sides else approach.sides


def _axes(anatomy: SacralAnatomy) -> Any:
    from planning.approaches import SacralAxes

    f = anatomy.frame
    return SacralAxes(np.asarray(f.origin), f.e_x, f.e_y, f.e_z)


def _slacks(
    s: NeedleScores, approach: Approach, margins: Margins, reach_mm: float, rules_ok: np.ndarray
) -> dict[str, np.ndarray]:
    """Per constraint, how much each needle has to spare (>= 0 passes), mm or +-1."""
    flag = lambda ok: np.where(ok, 1.0, -1.0)  # noqa: E731
    out = {
        "foramina": np.nan_to_num(s.nearest_foramen_clearance_mm, nan=99.0) - margins.foramen_mm,
        "canal": np.nan_to_num(s.canal_clearance_mm, nan=99.0) - margins.canal_mm,
        "anterior_cortex": np.where(
            s.tip_in_bone, np.nan_to_num(s.bone_ahead_mm, posinf=99.0, nan=0.0), -1.0
        )
        - margins.anterior_cortex_mm,
        "reach": reach_mm - s.length_mm,
        "entry": flag(rules_ok),
    }
    if not margins.allow_anterior_exit:
        out["anterior_exit"] = flag(~s.exits_anterior)
    if margins.si_joint_only_transiliac and not approach.may_cross_si_joint:
        out["si_joint"] = flag(~s.crosses_si_joint)
    return out


def _rank(
    s: NeedleScores, approach: Approach, reach_mm: float, case: Case, zone: int | None
) -> np.ndarray:
    assert case.metrics is not None
    clear = np.minimum(
        np.nan_to_num(s.nearest_foramen_clearance_mm, nan=99.0),
        np.nan_to_num(s.canal_clearance_mm, nan=99.0),
    )
    radius = max(case.metrics.max_diameter_mm / 2.0, 1.0)
    centring = 1.0 - np.clip(np.nan_to_num(s.tip_to_lesion_centroid_mm, nan=radius) / radius, 0, 1)
    preference = approach.preference * (1.0 if zone is None or zone in approach.zones else 0.3)
    return (
        W_CLEARANCE * np.clip(clear / CLEARANCE_SATURATION_MM, 0, 1)
        + W_LENGTH * (1.0 - np.clip(s.length_mm / reach_mm, 0, 1))
        + W_CENTRING * centring
        + W_PREFERENCE * preference
    )


_CONSTRAINT_TEXT = {
    "foramina": "stays {value:.1f} mm from the nearest foramen (margin {margin:.1f} mm)",
    "canal": "stays {value:.1f} mm from the canal (margin {margin:.1f} mm)",
    "anterior_cortex": "leaves {value:.1f} mm of bone ahead of the tip (margin {margin:.1f} mm)",
    "reach": "is {value:.0f} mm from skin to tip, beyond the needle's reach ({margin:.0f} mm)",
    "entry": "does not enter in the approach's region",
    "anterior_exit": "leaves the sacrum through its anterior cortex",
    "si_joint": "crosses the SI joint (only the transiliac approach may)",
}


def _blocked_reasons(slack: dict[str, np.ndarray], s: NeedleScores, margins: Margins) -> list[str]:
    """Which constraints block the approach: those no needle meets, else the closest miss."""
    margin_of = {
        "foramina": margins.foramen_mm,
        "canal": margins.canal_mm,
        "anterior_cortex": margins.anterior_cortex_mm,
    }
    reasons = []
    for name, values in slack.items():
        if values.max() < 0:
            best = int(np.argmax(values))
            reasons.append("every needle " + _describe(name, values[best], s, best, margin_of))
    if reasons:
        return reasons
    worst = np.min(
        np.vstack(
            [
                v / (1.0 if k in ("entry", "anterior_exit", "si_joint") else 5.0)
                for k, v in slack.items()
            ]
        ),
        axis=0,
    )
    best = int(np.argmax(worst))
    misses = [
        _describe(name, values[best], s, best, margin_of)
        for name, values in slack.items()
        if values[best] < 0
    ]
    return ["no needle meets every constraint at once; the closest " + "; ".join(misses)]


def _describe(name: str, slack: float, s: NeedleScores, i: int, margin_of: dict[str, float]) -> str:
    if name == "reach":
        return _CONSTRAINT_TEXT[name].format(value=s.length_mm[i], margin=s.length_mm[i] + slack)
    if name in margin_of:
        value = slack + margin_of[name]
        text = _CONSTRAINT_TEXT[name].format(value=value, margin=margin_of[name])
        if name == "foramina" and s.nearest_foramen[i] >= 0:
            text = text.replace(
                "the nearest foramen", f"the {s.foramen_names[s.nearest_foramen[i]]} foramen"
            )
        return f"{text}, {-slack:.1f} mm short"
    return _CONSTRAINT_TEXT[name]


# -- assembling the plan -----------------------------------------------------------------------
def _pick(result: ApproachResult) -> list[int]:
    """Indices of the candidates to keep: the best few feasible (distinct), else the closest."""
    if result.scores is None or not len(result.rank):
        return []
    if not result.feasible.any():
        return []
    order = np.argsort(-result.rank)
    chosen: list[int] = []
    for i in order:
        if not result.feasible[i]:
            break
        if all(
            result.sides[i] != result.sides[j]
            or np.linalg.norm(result.tips[i] - result.tips[j]) > 4.0
            or np.linalg.norm(result.entries[i] - result.entries[j]) > 15.0
            for j in chosen
        ):
            chosen.append(int(i))
        if len(chosen) == CANDIDATES_PER_APPROACH:
            break
    return chosen


def _needle_for(length_mm: float, needles: list[Needle]) -> Needle:
    for n in needles:
        if length_mm <= n.working_length_mm:
            return n
    return needles[-1]


def score_trajectory(
    entry_lps: np.ndarray,
    target_lps: np.ndarray,
    needle: Needle | str,
    *,
    fields: FieldStack,
    margins: Margins = Margins(),  # noqa: B008 (frozen)
    approach: str | None = None,
    lesion_centroid: np.ndarray | None = None,
    side: str | None = None,
    bone_entry_lps: np.ndarray | None = None,
    surfaces: DangerSurfaces | None = None,
) -> Candidate:
    """Re-score one needle (e.g. while the user drags a handle); well under 5 ms.

    Parameters
    ----------
    entry_lps, target_lps : (3,) float ndarray, mm, LPS
        Skin entry and tip.
    needle : Needle or str
        The needle (its outer radius sets the clearances; its working length the reach).
    fields : FieldStack
        From :func:`build_fields`.
    margins : Margins
    approach : str, optional
        Approach key, for the SI-joint rule (only ``"transiliac"`` may cross it).
    surfaces : DangerSurfaces, optional
        When given (:func:`danger_surfaces`), the foramen and canal clearances are measured
        exactly against these surfaces, with no cap (a few ms more), instead of read from the
        fields.

    Returns
    -------
    Candidate
        Clearances, lengths, flags, feasibility with violations, bull's-eye C-arm view.
    """
    n = get_needle(needle) if isinstance(needle, str) else needle
    entry = np.asarray(entry_lps, dtype=np.float64)
    tip = np.asarray(target_lps, dtype=np.float64)
    s = score_one(entry, tip, fields, radius_mm=n.radius_mm, lesion_centroid=lesion_centroid)
    return _trajectory_candidate(
        s, entry, tip, n, margins, approach, side, bone_entry_lps, surfaces
    )


def _trajectory_candidate(
    s: NeedleScores,
    entry: np.ndarray,
    tip: np.ndarray,
    n: Needle,
    margins: Margins,
    approach: str | None,
    side: str | None,
    bone_entry_lps: np.ndarray | None,
    surfaces: DangerSurfaces | None,
) -> Candidate:
    """:func:`score_trajectory` from the needle's field scores ``s`` (:func:`score_one`)."""
    if surfaces is not None:
        s = _with_exact_clearances(s, surfaces, entry, tip, n.radius_mm)
    may_cross = approach is not None and approach_registry()[approach].may_cross_si_joint
    exact = surfaces is not None
    violations = _violations(s, 0, n, margins, may_cross=may_cross, exact=exact)
    return _candidate(
        s,
        0,
        approach=approach or "manual",
        side=side,
        needle=n,
        entry=entry,
        tip=tip,
        bone_entry=bone_entry_lps,
        violations=violations,
        score=None,
        exact=exact,
    )


def _with_exact_clearances(
    s: NeedleScores, surfaces: DangerSurfaces, entry: np.ndarray, tip: np.ndarray, radius: float
) -> NeedleScores:
    """``s`` (one needle) with its foramen and canal clearances measured on ``surfaces``."""
    import dataclasses

    by, canal = surfaces.clearances(entry, tip, radius)
    names = tuple(by)
    values = np.array([[by[k] for k in names]], dtype=np.float64).reshape(1, len(names))
    nearest = int(np.argmin(values[0])) if len(names) else -1
    return dataclasses.replace(
        s,
        foramen_names=names,
        foramen_clearance_mm=values,
        nearest_foramen=np.array([nearest]),
        nearest_foramen_clearance_mm=np.array([values[0, nearest] if nearest >= 0 else np.nan]),
        canal_clearance_mm=np.array([canal]),
    )


def _violations(
    s: NeedleScores,
    i: int,
    needle: Needle,
    margins: Margins,
    *,
    may_cross: bool,
    exact: bool = False,
) -> list[str]:
    out = []
    f = float(np.nan_to_num(s.nearest_foramen_clearance_mm[i], nan=99.0))
    if f < margins.foramen_mm:
        name = s.foramen_names[s.nearest_foramen[i]] if s.nearest_foramen[i] >= 0 else "a"
        text = clearance_text(f, needle.outer_diameter_mm, exact=exact)
        out.append(f"{text} from the {name} foramen (margin {margins.foramen_mm:.1f} mm)")
    c = float(np.nan_to_num(s.canal_clearance_mm[i], nan=99.0))
    if c < margins.canal_mm:
        text = clearance_text(c, needle.outer_diameter_mm, exact=exact)
        out.append(f"{text} from the canal (margin {margins.canal_mm:.1f} mm)")
    ahead = float(s.bone_ahead_mm[i]) if s.tip_in_bone[i] else 0.0
    if ahead < margins.anterior_cortex_mm:
        where = "the tip is outside bone" if not s.tip_in_bone[i] else f"{ahead:.1f} mm of bone"
        out.append(f"{where} ahead of the tip (margin {margins.anterior_cortex_mm:.1f} mm)")
    if s.exits_anterior[i] and not margins.allow_anterior_exit:
        out.append("leaves the sacrum through its anterior cortex")
    if s.crosses_si_joint[i] and margins.si_joint_only_transiliac and not may_cross:
        out.append("crosses the SI joint (only the transiliac approach may)")
    if s.length_mm[i] > needle.working_length_mm:
        out.append(
            f"{s.length_mm[i]:.0f} mm from skin to tip, beyond the {needle.label}'s "
            f"{needle.working_length_mm:.0f} mm reach"
        )
    return out


def _num(v: float) -> float | None:
    v = float(v)
    return round(v, 2) if np.isfinite(v) else None


def _candidate(
    s: NeedleScores,
    i: int,
    *,
    approach: str,
    side: str | None,
    needle: Needle,
    entry: np.ndarray,
    tip: np.ndarray,
    bone_entry: np.ndarray | None,
    violations: list[str],
    score: float | None,
    exact: bool = False,
) -> Candidate:
    by = {
        name: round(float(s.foramen_clearance_mm[i, k]), 2)
        for k, name in enumerate(s.foramen_names)
        if np.isfinite(s.foramen_clearance_mm[i, k])
    }
    ahead = float(s.bone_ahead_mm[i]) if s.tip_in_bone[i] else 0.0
    return Candidate(
        approach=approach,
        side=side,
        skin_entry_lps=tuple(round(float(v), 2) for v in entry),  # type: ignore[arg-type]
        bone_entry_lps=None
        if bone_entry is None
        else tuple(round(float(v), 2) for v in bone_entry),  # type: ignore[arg-type]
        target_lps=tuple(round(float(v), 2) for v in tip),  # type: ignore[arg-type]
        needle=needle.id,
        needle_od_mm=needle.outer_diameter_mm,
        skin_to_target_mm=round(float(s.length_mm[i]), 1),
        in_bone_mm=round(float(s.in_bone_length_mm[i]), 1),
        clearance_mm=Clearance(
            foramina=_num(s.nearest_foramen_clearance_mm[i]),
            by_foramen=by,
            canal=_num(s.canal_clearance_mm[i]),
            exact=exact,
        ),
        tip_to_anterior_cortex_mm=_num(min(ahead, 999.0)),
        exits_anterior=bool(s.exits_anterior[i]),
        si_joint_crossed=bool(s.crosses_si_joint[i]),
        feasible=not violations,
        violations=tuple(violations),
        score=None if score is None else round(float(score), 4),
        c_arm=bulls_eye_view(entry, tip),
    )


#: A picked needle scored on the fields: (index in its approach's result, needle, bone entry
#: (LPS mm) or None, its :func:`score_one` scores).
_Scored = tuple[int, Needle, np.ndarray | None, NeedleScores]


def _score_picked(
    case: Case,
    results: dict[str, ApproachResult],
    stack: FieldStack,
    probe: _BoneProbe,
    needles: list[Needle],
) -> dict[str, list[_Scored]]:
    """The candidates each approach keeps (:func:`_pick`), re-scored one by one on the fields
    with the needle that reaches (as :func:`score_trajectory` does), so that the plan is
    assembled after the fields are released."""
    assert case.metrics is not None
    centroid = np.asarray(case.metrics.centroid_lps, dtype=np.float64)
    out: dict[str, list[_Scored]] = {}
    for key, r in results.items():
        out[key] = []
        for i in _pick(r):
            needle = _needle_for(float(r.scores.length_mm[i]), needles)  # type: ignore[union-attr]
            dirn = r.tips[i] - r.entries[i]
            dirn /= np.linalg.norm(dirn)
            bone_at = probe.distance(r.entries[i : i + 1], dirn[None, :])[0]
            bone_entry = None if not np.isfinite(bone_at) else r.entries[i] + bone_at * dirn
            entry = np.asarray(r.entries[i], dtype=np.float64)
            tip = np.asarray(r.tips[i], dtype=np.float64)
            s = score_one(entry, tip, stack, radius_mm=needle.radius_mm, lesion_centroid=centroid)
            out[key].append((i, needle, bone_entry, s))
    return out


def _assemble_plan(
    case: Case,
    results: dict[str, ApproachResult],
    scored: dict[str, list[_Scored]],
    surfaces: DangerSurfaces,
    options: PlanOptions,
    needles: list[Needle],
    zone: int | None,
    cement: Any,
) -> Plan:
    assert case.metrics is not None and case.lesion is not None and case.anatomy is not None
    candidates: list[Candidate] = []
    best: dict[str, dict[str, Any]] = {}
    for key, r in results.items():
        picked = scored[key]
        if not picked:
            best[key] = {"blocked_by": r.blocked_by or ["no feasible needle"]}
            continue
        for n_pick, (i, needle, bone_entry, s) in enumerate(picked):
            cand = _trajectory_candidate(
                s,
                np.asarray(r.entries[i], dtype=np.float64),
                np.asarray(r.tips[i], dtype=np.float64),
                needle,
                options.margins,
                key,
                str(r.sides[i]),
                bone_entry,
                surfaces,
            )
            cand = _with_score(cand, float(r.rank[i]))
            if n_pick == 0:
                best[key] = {"candidate": len(candidates)}
            candidates.append(cand)
        if not candidates[best[key]["candidate"]].feasible:
            # the exact needle's re-score disagrees: report it honestly
            best[key] = {"blocked_by": list(candidates[best[key]["candidate"]].violations)}
    suggestion = _suggest(candidates, best, results, zone)
    trajectories: tuple[Trajectory, ...] = ()
    chosen = None
    if suggestion is not None:
        chosen = candidates[suggestion.candidate]
        trajectories = (
            Trajectory(
                entry_lps=chosen.skin_entry_lps,
                target_lps=chosen.target_lps,
                needle=chosen.needle,
                approach=chosen.approach,
                source="suggested",
            ),
        )
    rfa = _rfa(case, chosen, options) if options.with_rfa and chosen is not None else None
    lesion = case.metrics.to_json()
    lesion["seed_lps"] = [float(v) for v in case.lesion.seed_lps]
    lesion["mode"] = case.lesion.mode_used
    lesion["band"] = [float(v) for v in case.lesion.band]
    lesion["mask"] = encode_mask(case.lesion.mask.array)
    meta = case.image.meta
    image = case.image
    return Plan(
        case=CaseRef(
            source_path=study_reference(case.source),
            series_uid=meta.get("series_uid"),
            patient_name=meta.get("patient_name"),
            patient_id=meta.get("patient_id"),
            study_date=meta.get("study_date"),
            modality=image.modality,
            grid=grid_json(image.size, image.spacing, image.origin, image.direction),
        ),
        anatomy=case.anatomy_json() or {},
        lesion=lesion,
        margins=options.margins,
        needle=chosen.needle if chosen is not None else needles[0].id,
        evaluated={k: int(len(r.entries)) for k, r in results.items()},
        candidates=tuple(candidates),
        best_by_approach=best,
        suggestion=suggestion,
        trajectories=trajectories,
        cement=cement,
        rfa=rfa,
    )


def _with_score(c: Candidate, score: float) -> Candidate:
    import dataclasses

    return dataclasses.replace(c, score=round(score, 4) if c.feasible else None)


def _suggest(
    candidates: list[Candidate],
    best: dict[str, dict[str, Any]],
    results: dict[str, ApproachResult],
    zone: int | None,
) -> Suggestion | None:
    admitted = set(admitted_for_zone(zone))
    feasible = {k: v["candidate"] for k, v in best.items() if "candidate" in v}
    pool = {k: i for k, i in feasible.items() if k in admitted} or feasible
    if not pool:
        return None
    key = max(pool, key=lambda k: candidates[pool[k]].score or -1.0)
    c = candidates[pool[key]]
    label = results[key].approach.label
    reasons = [_why(label, c)]
    if key not in admitted:
        reasons.append(
            f"none of the approaches the cohort rule favours for a zone {zone} lesion is feasible"
        )
    else:
        reasons.append(_zone_rule(zone))
    for other, entry in best.items():
        if other == key:
            continue
        other_label = results[other].approach.label
        if "blocked_by" in entry:
            reasons.append(f"{other_label} rejected: {entry['blocked_by'][0]}")
        else:
            oc = candidates[entry["candidate"]]
            why = "not favoured for this zone" if other not in admitted else "ranks lower"
            reasons.append(f"{other_label} feasible but {why} ({_brief(oc)})")
    return Suggestion(approach=key, candidate=pool[key], reasons=tuple(reasons))


def _why(label: str, c: Candidate) -> str:
    parts = [f"{label} ({c.side})"]
    by = c.clearance_mm.by_foramen
    if by:
        name = min(by, key=lambda k: by[k])
        text = clearance_text(by[name], c.needle_od_mm, exact=c.clearance_mm.exact)
        parts.append(f"{text} from the {name} foramen")
    if c.clearance_mm.canal is not None:
        text = clearance_text(c.clearance_mm.canal, c.needle_od_mm, exact=c.clearance_mm.exact)
        parts.append(f"{text} from the canal")
    if c.tip_to_anterior_cortex_mm is not None:
        parts.append(f"{c.tip_to_anterior_cortex_mm:.1f} mm of bone ahead of the tip")
    needle = get_needle(c.needle)
    parts.append(
        f"{c.skin_to_target_mm:.0f} mm skin to tip with the {needle.label} "
        f"({needle.working_length_mm:.0f} mm reach)"
    )
    return ": ".join(parts[:1]) + ": " + ", ".join(parts[1:])


def _brief(c: Candidate) -> str:
    f = clearance_text(c.clearance_mm.foramina, c.needle_od_mm, exact=c.clearance_mm.exact)
    return f"{f} from a foramen, {c.skin_to_target_mm:.0f} mm long"


def _zone_rule(zone: int | None) -> str:
    rule = {
        1: "ala lesions (zone 1) suit anterior-oblique, transiliac or posterior approaches",
        2: "lesions through the foramina (zone 2) suit posterior approaches",
        3: "sacral-body lesions (zone 3) suit the interpedicular approach",
    }
    return "cohort rule (Tian et al., AJNR 2022): " + rule.get(zone or 0, "no zone known")


def _cement(case: Case, stack: FieldStack, options: PlanOptions) -> Any:
    assert case.metrics is not None and case.lesion is not None and case.masks is not None
    m = case.masks
    # The cap reads only the lesion's box on the field grid: the lesion and the bone are pooled
    # over the whole blocks around it, and only that box of each keep-out channel is converted.
    factors = np.array(field_factors(m.image.spacing))
    full = field_grid(m.image)
    grid = np.array(full.array.shape)
    # the stack may hold a box of the field grid only (plan_case): where it starts (k, j, i)
    start = np.round(full.world_to_index(stack.origin[None, :])[0, ::-1]).astype(np.int64)
    i0, j0, k0 = m.crop_index
    at = np.array([k0, j0, i0])
    extent = _extent(case.lesion.mask.array)
    lo = hi = np.zeros(3, dtype=np.int64)
    if extent is not None:
        pad = cement_margin_voxels(stack.spacing) + 1
        lo = np.clip((extent[0] - at) // factors - pad, 0, grid)
        hi = np.clip(-((at - extent[1]) // factors) + pad, 0, grid)
    hi = np.maximum(hi, lo)
    cut = (*_slices(at + lo * factors, at + hi * factors),)
    lesion_part = case.lesion.mask.array[cut] > 0
    lesion = pool_mask(lesion_part, tuple(factors), any_voxel=False)
    sacrum = m.masks["sacrum"][_slices(lo * factors, hi * factors)] | lesion_part
    bone = pool_mask(sacrum, tuple(factors), any_voxel=False)
    del lesion_part, sacrum
    keep_out: dict[str, np.ndarray] = {}
    box: tuple[slice, ...] = ()
    if lesion.any():
        box = cement_box(lesion, stack.spacing)
        first = lo + [b.start for b in box] - start
        last = lo + [b.stop for b in box] - start
        if np.any(first < 0) or np.any(last > np.array(stack.shape)):
            raise ValueError("the field stack does not cover the lesion's surroundings")
        part = _slices(first, last)
        for name, ch in (("canal", stack.canal), ("si_joint", stack.si_joint)):
            if ch >= 0:
                keep_out[name] = stack.channel_mm(ch, part)
        for ch in stack.foramen_channels:
            keep_out[f"foramen {ch}"] = stack.channel_mm(ch, part)
    cap = geometric_cement_cap_ml(
        lesion[box], stack.spacing, keep_out_distance_mm=keep_out, bone_mask=bone[box]
    )
    return suggest_cement(
        case.metrics.volume_ml,
        with_rfa=options.with_rfa,
        lesion_max_diameter_mm=case.metrics.max_diameter_mm,
        geometric_cap_ml=cap,
    )


def _rfa(case: Case, chosen: Candidate, options: PlanOptions) -> Any:
    assert case.lesion is not None and case.metrics is not None
    mask = case.lesion.mask
    kji = np.argwhere(mask.array > 0)
    points = mask.index_to_world(kji[:, ::-1].astype(np.float64))
    flags = case.metrics
    intact = not (flags.foraminal_erosion or flags.epidural_extension)
    return plan_rfa_for_track(
        np.asarray(chosen.skin_entry_lps),
        np.asarray(chosen.target_lps),
        points,
        device=options.rfa_device,
        clearance_to_foramen_mm=chosen.clearance_mm.foramina,
        clearance_to_canal_mm=chosen.clearance_mm.canal,
        intact_cortex_between=intact,
        needle_od_mm=chosen.needle_od_mm,
    )
