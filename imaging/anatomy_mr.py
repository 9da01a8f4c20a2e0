"""Automatic sacral anatomy on a T1-weighted MR, through a synthetic CT ("pseudo-CT").

:func:`segment_anatomy_mr` turns a T1-weighted MR into a pseudo-CT on the MR's own grid
(:func:`pseudo_ct_from_t1`) and runs the CT anatomy (:func:`imaging.anatomy.segment_anatomy`)
on it, so the sacrum, ilia, canal, S1-S4 foramina, SI joints and S1 endplate come out as
the same :class:`~imaging.anatomy.AnatomyMasks` a CT gives.

How the pseudo-CT is made (T1 contrast: fat and fatty marrow bright, cortex, CSF and air
dark, muscle intermediate, a lytic metastasis hypointense to marrow):

1. **Body and scale.** The body is the largest component above a low threshold, with its
   holes filled slice by slice along all three grid axes (the canal reaches the edge of the
   field of view, so a 3-D fill would miss it). Intensities are divided by a high
   percentile inside the body (subcutaneous fat), so fat is ~1.
2. **Classes.** *Dark* (< ``dark``), *bright* (> ``bright``) and *intermediate* in between.
   Dark voxels are *thin* (cortex candidates) or *thick* (CSF, gas, joint fluid) by their
   local thickness: a dark voxel is thick when it lies in the opening of the dark mask by
   a ball of half the ``thin_mm`` limit (never less than one slice), measured in mm.
3. **Marrow.** Bone marrow is bright tissue *enclosed by a thin dark shell*; fat outside
   the bone is just as bright but bordered by muscle, skin and vessels. The bright mask is
   eroded by ``erode_mm`` (partial volume on thick slices leaves one-voxel leaks through
   the cortex; the erosion cuts them) and split into components; a component is marrow
   when at least ``enclosed_fraction`` of its border lies within reach of thin dark voxels
   and it is thick enough to be bone (its deepest point ``min_marrow_depth_mm`` or more
   from its border: the fat of the canal and of the foramina is enclosed by cortex too,
   but is a tube a few millimetres wide). Marrow is then grown back into the bright mask.
   On slices thicker than the cortex, the cortex between marrow and fat is only a dip in
   intensity: voxels darker than both neighbours along an axis (by ``valley``) count as
   cortex for this step.
4. **Lesions.** Intermediate tissue (a T1-hypointense lytic lesion) whose edge mostly
   touches the marrow of one single bone is part of that bone's marrow; muscle and discs
   are bordered by a cortex, a disc by two vertebrae. The marrow is then found again with
   the lesion counted as a shell (marrow between a lesion and the cortex is enclosed by
   the two).
5. **Cortex.** Dark voxels within ``cortex_mm`` of the marrow or a lesion (thick dark
   CSF further from the bone stays CSF; the middle of the SI joint space stays a gap).
6. **Hounsfield units.** Cortex 1800, marrow and lesions 220, the partial-volume rim
   between them interpolated on intensity, fat -100, intermediate tissue 50, thick dark
   0 (fluid) or -1000 (gas, darker than ``gas``), and -1000 outside the body. Bone-density
   bridges between different bones are cut.

After the CT anatomy has run on the pseudo-CT, every marrow piece (with its lesion) goes
wholly to the bone (sacrum, left or right ilium) that holds most of it: the pseudo-CT's
marrow is one flat value, so the CT anatomy's split of joined bones can run through it.

The method is tuned for T1-weighted images. On STIR, T2 or fat-suppressed series, marrow
and fat are not bright and the result is implausible: :class:`SegmentationError` then asks
the user to place the foramen and endplate landmarks by hand.

Headless: numpy, scipy and SimpleITK only. All points are LPS millimetres.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numba import njit
from scipy import ndimage as ndi
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from imaging.anatomy import AnatomyMasks, segment_anatomy
from imaging.errors import OperationCancelledError, SegmentationError
from imaging.volume import Volume

__all__ = ["MrAnatomyParams", "pseudo_ct_from_t1", "segment_anatomy_mr"]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

#: What to tell the user when the automatic MR anatomy cannot be trusted.
MANUAL_MESSAGE = (
    "automatic anatomy on this MR failed: place the foramen and endplate landmarks by hand"
)

# Hounsfield units written into the pseudo-CT.
_HU_AIR = -1000.0
_HU_FAT = -100.0
_HU_FLUID = 0.0
_HU_JOINT = 40.0
_HU_MUSCLE = 50.0
_HU_MARROW = 220.0
_HU_CORTEX = 1800.0
#: A marrow piece belongs to one bone when that bone holds at least this share of it.
_ONE_BONE_SHARE = 0.9
#: Marrow pieces reaching this far from the midline (mm) are more than a sacrum.
_ALA_REACH_MM = 75.0
#: Marrow pieces this far from the midline (mm), not around the canal, are an ilium.
_ILIUM_OFFSET_MM = 40.0
#: Marrow pieces centred this far above the S1 endplate (mm) are lumbar.
_ABOVE_ENDPLATE_MM = 10.0
#: Pseudo-CT voxels above this are bone (as the CT anatomy's bone threshold).
_BONE_HU = 150.0

#: Share of the pseudo-CT step in the overall progress (the CT anatomy gets the rest).
_PSEUDO_SHARE = 0.25


@dataclass(frozen=True)
class MrAnatomyParams:
    """Options of :func:`pseudo_ct_from_t1` (intensities relative to fat = 1; lengths in mm).

    Attributes
    ----------
    body_fraction : float
        Body threshold, as a fraction of the image's 99.5th intensity percentile.
    reference_percentile : float
        Percentile of the body's intensities taken as fat (scaled to 1).
    dark, bright : float
        Dark (cortex, CSF, air) below ``dark``; fat and fatty marrow above ``bright``.
    dim : float
        Thick dark structures are looked for where the 3-voxel mean is below this.
    gas : float
        Thick dark tissue darker than this (locally averaged) is gas (-1000 HU), otherwise
        fluid (0 HU).
    thin_mm : float
        Dark structures thinner than about this are cortex candidates; thicker ones (CSF,
        gas, joint fluid) are not. Never less than three voxels along any axis.
    guard_mm : float
        Bright voxels this close to a dark one (at least a voxel) are left out when the
        bright mask is split into components.
    shell_reach_mm : float
        Where a component's bright tissue ends, it counts as enclosed when a thin dark
        voxel lies this close (at least a voxel).
    enclosed_fraction : float
        Marrow needs at least this fraction of its edge enclosed.
    marrow_core_mm : float
        Marrow needs a cube of twice this size (plus a voxel) of bright tissue somewhere:
        this rejects the fat of the canal and the foramina, enclosed by cortex too but
        only a few millimetres wide.
    leak_check_ml, leak_fraction : float
        Components of at least ``leak_check_ml`` that are not enclosed are searched for
        marrow joined to them through a leak (a cortex the slices missed in places): an
        enclosed part whose front to the rest is under ``leak_fraction`` of its edge.
    min_piece_ml : float
        Narrow enclosed components smaller than this (with the touching components of
        their kind) are not bone pieces (fat pockets).
    beyond_mm : tuple of float
        Band (from, to) around a narrow enclosed component where marrow is looked for.
    channel_fraction : float
        A narrow enclosed component with at least this fraction of marrow in the band
        around it is the fat of a channel (canal, foramen), not a piece of bone.
    channel_max_ml : float
        Enclosed components wide enough for a core but smaller than this are checked the
        same way (the lower sacral canal's fat, a wide foramen).
    plate_mm : float
        Bright tissue too thin for the erosion (iliac wings) is marrow where thin dark
        voxels lie within this distance on both sides along a grid axis.
    unmix_margin : float
        Partial-volume voxels outside the cortex are unmixed against the neighbouring
        tissue's level minus this margin (noise on pure tissue must not read as bone).
    gap_mm : float
        Non-bright voxels with marrow within this distance on both sides along a grid
        axis lie between two bones (the SI joint space): they never become bone, except
        for the cortex right next to marrow.
    apart_mm : float
        Voxels with two different bones within this distance on either side are never
        given partial-volume bone values (they would bridge the bones).
    bridge_hu : float
        Voxels above this (HU) count as bone when bridges between bones are cut.
    merge_front_mm2 : float
        Marrow pieces whose bone territories meet over at least this area are one bone
        (a bridge between two bones is narrower).
    cortex_mm, cortex_thick_mm : float
        Dark voxels this close to marrow are cortex (the second distance applies inside
        thick dark regions, where the cortex borders the thecal sac or a joint space).
    valley : float
        A voxel darker than both its neighbours along a grid axis by more than this is a
        cortex seen in partial volume (a cortex thinner than the slices), for telling
        marrow from fat.
    inside_fraction : float
        Intermediate tissue (a lytic lesion) is inside a bone when at least this fraction
        of its edge touches the marrow of that one bone, and at least ``inside_min_ml``
        of it is left after a one-voxel erosion.
    """

    body_fraction: float = 0.15
    reference_percentile: float = 98.0
    dark: float = 0.20
    bright: float = 0.70
    dim: float = 0.25
    gas: float = 0.07
    thin_mm: float = 3.0
    guard_mm: float = 1.5
    shell_reach_mm: float = 1.5
    enclosed_fraction: float = 0.7
    marrow_core_mm: float = 4.0
    min_piece_ml: float = 0.5
    leak_check_ml: float = 50.0
    leak_fraction: float = 0.03
    beyond_mm: tuple[float, float] = (2.0, 5.0)
    channel_fraction: float = 0.5
    channel_max_ml: float = 20.0
    plate_mm: float = 3.0
    unmix_margin: float = 0.08
    gap_mm: float = 6.0
    apart_mm: float = 10.0
    bridge_hu: float = 100.0
    merge_front_mm2: float = 500.0
    cortex_mm: float = 2.0
    cortex_thick_mm: float = 1.6
    valley: float = 0.1
    inside_fraction: float = 0.6
    inside_min_ml: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.dark < self.bright < 1.0:
            raise ValueError(
                f"MR classes need 0 < dark < bright < 1, got {self.dark}, {self.bright}"
            )
        if not 0.0 < self.enclosed_fraction <= 1.0:
            raise ValueError(f"enclosed_fraction must be in (0, 1], got {self.enclosed_fraction}")
        for name in (
            "thin_mm",
            "guard_mm",
            "shell_reach_mm",
            "marrow_core_mm",
            "plate_mm",
            "gap_mm",
            "apart_mm",
            "cortex_mm",
            "cortex_thick_mm",
        ):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


# == public API ===============================================================================


def segment_anatomy_mr(
    mr: Volume,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    params: MrAnatomyParams | None = None,
) -> AnatomyMasks:
    """Segment the sacrum and its surroundings in a T1-weighted MR study.

    Parameters
    ----------
    mr : Volume
        T1-weighted MR (arbitrary intensity units), any spacing and direction.
    progress : callable, optional
        ``progress(fraction, stage_name)`` called at each stage (fraction in 0..1).
    cancel : callable, optional
        Polled between stages; when it returns True the run stops with
        :class:`~imaging.errors.OperationCancelledError`.
    params : MrAnatomyParams, optional
        Options of the pseudo-CT.

    Returns
    -------
    AnatomyMasks
        As :func:`~imaging.anatomy.segment_anatomy` returns for a CT, on a crop of the MR
        grid; ``image`` is the MR crop (not the pseudo-CT), foramina and endplate are in
        LPS mm, and ``timings_s``/``notes`` include the pseudo-CT step.

    Raises
    ------
    SegmentationError
        When the series is a CT, or no plausible sacrum is found (e.g. a STIR, T2 or
        fat-suppressed series): place the landmarks by hand.
    OperationCancelledError
        When ``cancel()`` returned True.
    """
    if mr.modality.upper() == "CT":
        raise SegmentationError("this series is a CT, not an MR: run the CT anatomy on it instead")
    t0 = time.perf_counter()
    if progress is not None:
        progress(0.0, "synthesising a CT from the MR")
    if cancel is not None and cancel():
        raise OperationCancelledError("anatomy segmentation cancelled")
    p = params or MrAnatomyParams()
    t = _tissues(mr, params=p)
    ct = _pseudo_ct(mr, t, params=p)
    t_pseudo = time.perf_counter() - t0

    def sub_progress(fraction: float, stage: str) -> None:
        if progress is not None:
            progress(_PSEUDO_SHARE + (1.0 - _PSEUDO_SHARE) * float(fraction), stage)

    try:
        masks = segment_anatomy(ct, progress=sub_progress, cancel=cancel)
    except OperationCancelledError:
        raise
    except SegmentationError as exc:
        raise SegmentationError(MANUAL_MESSAGE) from exc
    masks = _bones_by_marrow(masks, t, ct)
    _check_plausible(masks)
    i0, j0, k0 = masks.crop_index
    k, j, i = masks.image.array.shape
    mr_crop = Volume(
        array=mr.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i],
        origin=masks.image.origin,
        spacing=masks.image.spacing,
        direction=masks.image.direction,
        modality=mr.modality,
        meta=dict(mr.meta),
    )
    notes = [
        "anatomy found on a CT synthesised from the T1-weighted MR: check the foramina "
        "and the S1 endplate",
        *masks.notes,
    ]
    timings = {"synthesising a CT from the MR": t_pseudo, **masks.timings_s}
    return dataclasses.replace(masks, image=mr_crop, notes=notes, timings_s=timings)


def pseudo_ct_from_t1(mr: Volume, *, params: MrAnatomyParams | None = None) -> Volume:
    """A CT-like image (HU) synthesised from a T1-weighted MR, on the MR's grid.

    Parameters
    ----------
    mr : Volume
        T1-weighted MR, ``(K, J, I)`` array of any real dtype; any spacing and direction.
    params : MrAnatomyParams, optional

    Returns
    -------
    Volume
        ``(K, J, I)`` float32 pseudo-CT in Hounsfield units, same origin, spacing and
        direction as ``mr``, modality ``"CT"``. ``meta["pseudo_ct"]`` records the fat
        intensity used as the scale and the marrow and cortex volumes (mL).

    Raises
    ------
    SegmentationError
        When the image holds no body or no bright tissue enclosed by a dark cortex.
    """
    p = params or MrAnatomyParams()
    return _pseudo_ct(mr, _tissues(mr, params=p), params=p)


def _pseudo_ct(mr: Volume, t: _Tissues, *, params: MrAnatomyParams) -> Volume:
    """The pseudo-CT of :func:`pseudo_ct_from_t1` from the tissue classes ``t``."""
    p = params
    hu = _to_hu(t, spacing=mr.spacing, params=p)
    out = np.full(mr.array.shape, _HU_AIR, dtype=np.float32)
    out[t.box] = hu
    vox_ml = mr.voxel_volume_mm3 / 1000.0
    meta = dict(mr.meta)
    meta["pseudo_ct"] = {
        "source_modality": mr.modality,
        "fat_intensity": t.fat,
        "marrow_ml": float(np.count_nonzero(t.marrow) * vox_ml),
        "cortex_ml": float(np.count_nonzero(t.cortex) * vox_ml),
    }
    return Volume(out, mr.origin, mr.spacing, mr.direction, modality="CT", meta=meta)


# == steps ====================================================================================


@dataclass
class _Tissues:
    """Tissue classes of a T1 image on the bounding box ``box`` of the body.

    ``n`` is the intensity relative to fat; the masks are boolean arrays of its shape.
    """

    box: tuple[slice, slice, slice]
    fat: float
    n: np.ndarray
    body: np.ndarray
    dark: np.ndarray
    bright: np.ndarray
    thick: np.ndarray
    pieces: np.ndarray
    marrow: np.ndarray
    fatty: np.ndarray
    gap: np.ndarray
    apart: np.ndarray
    cortex: np.ndarray
    inside: np.ndarray


def _tissues(mr: Volume, *, params: MrAnatomyParams) -> _Tissues:
    """Body, intensity classes, marrow and cortex of a T1 image (see the module docstring).

    Raises
    ------
    SegmentationError
        No body, or no marrow.
    """
    p = params
    sp = mr.spacing
    img = np.asarray(mr.array, dtype=np.float32)
    if min(img.shape) < 8 or not np.all(np.isfinite(img)):
        raise SegmentationError(MANUAL_MESSAGE)
    body = _body_mask(img, fraction=p.body_fraction, fill_axis=_axial_array_axis(mr))
    if np.count_nonzero(body) * mr.voxel_volume_mm3 < 1e5:  # under 100 mL: no pelvis
        raise SegmentationError(MANUAL_MESSAGE)
    box = _bbox(body)
    body = body[box]
    values = img[box][body]
    fat = float(np.percentile(values[:: max(1, values.size // 2_000_000)], p.reference_percentile))
    if not fat > 0.0:
        raise SegmentationError(MANUAL_MESSAGE)
    n = img[box] / np.float32(fat)
    dark = (n < p.dark) & body
    bright = (n > p.bright) & body
    # thickness is judged on the 3-voxel mean, so that noise cannot break a joint space or
    # the thecal sac into thin pieces
    dim = (ndi.uniform_filter(n, size=3) < p.dim) & body
    across = tuple(max(1, int(0.5 * p.thin_mm / v)) for v in sp[::-1])
    thick = _opening_box(dim, across)  # type: ignore[arg-type]
    thin = dark & ~thick
    # a cortex thinner than the slices is only a dip between marrow and fat: such dips
    # separate the bright components too
    dip = _valleys(n, p.valley) & body & ~thick
    pieces, fatty = _marrow(bright, dark | dip, thin | dip, sp, params=p)
    if not pieces.any():
        raise SegmentationError(MANUAL_MESSAGE)
    # a lytic lesion (intermediate tissue inside a bone) is part of that bone's marrow
    mid = body & ~dark & ~bright & ~thick
    inside = _enclosed_soft(mid, pieces, sp, params=p)
    if inside.any():
        # marrow between a lesion and the cortex is enclosed by the two
        pieces, fatty = _marrow(bright, dark | dip, thin | dip | (inside > 0), sp, params=p)
        # bright specks the guard cut off next to the lesion, enclosed but too small to
        # judge, join the marrow they touch
        specks = bright & ~fatty & _dilate_box(inside > 0, _half(p.guard_mm + 1.0, sp))
        for _ in range(3):
            reach = ndi.maximum_filter(pieces, size=3)
            step = (pieces == 0) & specks & (reach > 0)
            pieces[step] = reach[step]
        inside = _enclosed_soft(mid, pieces, sp, params=p)
    # between two bones (the SI joints): marrow of two different pieces on either side,
    # a few millimetres away
    gap = _between_pieces(pieces, _half(p.gap_mm, sp)) & ~(pieces > 0) & ~bright & ~(inside > 0)
    apart = _between_pieces(pieces, _half(p.apart_mm, sp)) & ~(pieces > 0) & ~(inside > 0)
    pieces = np.where(inside > 0, inside, pieces)
    marrow = pieces > 0
    cortex = _cortex(dark, thick, gap, marrow, sp, params=p)
    return _Tissues(
        box,
        fat,
        n,
        body,
        dark,
        bright,
        thick,
        pieces,
        marrow,
        fatty,
        gap,
        apart,
        cortex,
        inside > 0,
    )


def _valleys(n: np.ndarray, depth: float) -> np.ndarray:
    """Voxels darker by more than ``depth`` than both neighbours along some grid axis."""
    out = np.zeros(n.shape, dtype=bool)
    for axis in range(3):
        a = np.moveaxis(n, axis, 0)
        o = np.moveaxis(out, axis, 0)
        mid = a[1:-1]
        o[1:-1] |= (a[:-2] - mid > depth) & (a[2:] - mid > depth)
    return out


def _enclosed_soft(
    mid: np.ndarray, pieces: np.ndarray, spacing: np.ndarray, *, params: MrAnatomyParams
) -> np.ndarray:
    """Intermediate tissue inside one bone: a lytic lesion, a fused disc remnant.

    The intermediate mask is eroded by one voxel (partial volume across a thin cortex must
    not join a lesion to the muscle outside), split into 6-connected components and grown
    back. A component lies inside a bone when at least ``inside_fraction`` of its edge
    touches the marrow of one single piece: muscle and discs are bordered by a cortex, a
    disc by the marrow of two vertebrae.

    Parameters
    ----------
    mid : (K, J, I) bool ndarray
        Intermediate tissue (neither dark nor bright).
    pieces : (K, J, I) integer ndarray
        Marrow pieces ``1..``, 0 elsewhere.
    spacing : (3,) float ndarray, mm
    params : MrAnatomyParams

    Returns
    -------
    (K, J, I) int32 ndarray
        The piece each such voxel belongs to, 0 elsewhere.
    """
    out = np.zeros(mid.shape, dtype=np.int32)
    count_pieces = int(pieces.max())
    if count_pieces == 0 or not mid.any():
        return out
    cross = ndi.generate_binary_structure(3, 1)
    core = ndi.binary_erosion(mid, structure=cross)
    labels, count = ndi.label(core, structure=cross)
    if count == 0:
        return out
    grown = labels.astype(np.int32)
    for _ in range(2):
        reach = ndi.maximum_filter(grown, size=3)
        step = (grown == 0) & mid & (reach > 0)
        grown[step] = reach[step]
    edge = (grown > 0) & ndi.binary_dilation(~mid, structure=cross)
    owner = grown[edge]
    border = np.bincount(owner, minlength=count + 1)
    # the marrow piece next to each edge voxel (0: none)
    near = ndi.maximum_filter(pieces.astype(np.int32), size=3)[edge]
    hit = near > 0
    touch = csr_matrix(
        (np.ones(int(hit.sum())), (owner[hit], near[hit])), shape=(count + 1, count_pieces + 1)
    )
    best = np.asarray(touch.max(axis=1).todense()).ravel()
    which = np.asarray(touch.argmax(axis=1)).ravel().astype(np.int32)
    keep = best >= params.inside_fraction * np.maximum(border, 1)
    # (partial-volume rims and joint fluid leave only specks after the erosion)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep &= np.bincount(labels.ravel(), minlength=count + 1) * voxel_ml >= params.inside_min_ml
    keep[0] = False
    which[~keep] = 0
    return np.where(mid, which[grown], 0).astype(np.int32)


def _body_mask(img: np.ndarray, *, fraction: float, fill_axis: int) -> np.ndarray:
    """Largest component above ``fraction`` of the 99.5th percentile, holes filled.

    Holes are filled in the planes across ``fill_axis`` (the most axial ones): the canal
    and the bowel reach the edge of the field of view, so a 3-D fill would miss them.
    """
    top = float(np.percentile(img[:: max(1, img.shape[0] // 32)], 99.5))
    labels, count = ndi.label(img > fraction * top)
    if count == 0:
        raise SegmentationError(MANUAL_MESSAGE)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    structure = np.zeros((3, 3, 3), dtype=bool)
    index: list[slice | int] = [slice(None)] * 3
    index[fill_axis] = 1
    structure[tuple(index)] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_fill_holes(body, structure=structure)


def _marrow(
    bright: np.ndarray,
    dark: np.ndarray,
    thin: np.ndarray,
    spacing: np.ndarray,
    *,
    params: MrAnatomyParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Marrow: bright components enclosed by a thin dark shell.

    Returns
    -------
    marrow : (K, J, I) integer ndarray
        Marrow pieces labelled ``1..`` (one per component; 0 elsewhere).
    fatty : (K, J, I) bool ndarray
        Bright tissue of the components that are fat: not enclosed, or the contents of a
        channel (canal, foramen). The rest of the bright mask is marrow, or small or thin
        bright tissue inside bone.
    """
    p = params
    # bright voxels next to a dark one are left out, so that one-voxel leaks through a
    # cortex the slices missed do not join marrow and fat into one component
    guard = _half(p.guard_mm, spacing)
    safe = bright & ~_dilate_box(dark, guard)
    labels, count = ndi.label(safe)
    if count == 0:
        return np.zeros_like(bright)
    # grow the labels back into the bright mask (geodesic, so never across a cortex)
    grown = labels.astype(np.uint16 if count < 65535 else np.int32)
    for _ in range(int(max(guard)) + 1):
        reach = ndi.maximum_filter(grown, size=3)
        step = (grown == 0) & bright & (reach > 0)
        grown[step] = reach[step]
    # where each component's bright tissue ends, is a thin dark shell right there?
    edge = bright & ndi.binary_dilation(~bright, structure=ndi.generate_binary_structure(3, 1))
    shell = _dilate_box(thin, _half(p.shell_reach_mm, spacing))
    owner = grown[edge]
    border = np.bincount(owner, minlength=count + 1)
    enclosed = np.bincount(owner[shell[edge]], minlength=count + 1)
    is_enclosed = enclosed >= p.enclosed_fraction * np.maximum(border, 1)
    is_enclosed[0] = False
    core = _erode_box(bright, _half(p.marrow_core_mm, spacing)) & safe
    has_core = np.bincount(labels[core].ravel(), minlength=count + 1) > 0
    keep = is_enclosed & has_core
    # a big component that is not enclosed may hold marrow joined to it by a leak
    vox_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(grown.ravel(), minlength=count + 1)
    leaked = np.zeros(bright.shape, dtype=bool)
    for c in np.flatnonzero(~is_enclosed & (sizes * vox_ml >= p.leak_check_ml)):
        if c > 0:
            leaked |= _leaked_marrow(grown == c, safe, edge, shell, core, guard, spacing, params=p)
    # enclosed but narrow: a piece of bone (a lamina cut off by the guard) or fat (in a
    # channel, or between two bones)? A bone piece joins marrow through bright tissue and
    # has no marrow all around it, beyond its cortex.
    pieces = is_enclosed & ~has_core
    channel = np.zeros(count + 1, dtype=bool)
    if pieces.any():
        whole, _ = ndi.label(bright)
        with_core = np.zeros(int(whole.max()) + 1, dtype=bool)
        with_core[whole[keep[grown]]] = True
        joined = np.zeros(count + 1, dtype=bool)
        piece_voxels = pieces[grown]
        joined[grown[piece_voxels][with_core[whole[piece_voxels]]]] = True
        around = _fraction_around(
            np.where(piece_voxels, grown, 0), keep[grown], count, spacing, params=p
        )
        sizes = np.bincount(grown[piece_voxels], minlength=count + 1)
        bone_like = pieces & joined & (around < p.channel_fraction)
        # the guard cuts a thin bone (a spinous process) into pieces smaller than a fat
        # pocket: pieces of that kind touching one another are judged by their total size
        groups, _ = ndi.label(bone_like[grown])
        group_of = np.zeros(count + 1, dtype=np.int64)
        group_of[grown[groups > 0]] = groups[groups > 0]
        totals = np.bincount(group_of, weights=sizes * bone_like)
        totals[0] = 0.0
        big = totals[group_of] * float(np.prod(spacing)) >= 1000.0 * p.min_piece_ml
        keep |= bone_like & big
        channel = pieces & (around >= p.channel_fraction)
    # a channel wide enough to hold a core (the lower sacral canal's epidural fat below the
    # thecal sac) is enclosed too, but has the marrow of other pieces all around it
    small = keep & (np.bincount(grown.ravel(), minlength=count + 1) * vox_ml < p.channel_max_ml)
    if small.any():
        marrow = keep[grown] | leaked
        around = _fraction_around(
            np.where(small[grown], grown, 0), marrow, count, spacing, params=p
        )
        wide = small & (around >= p.channel_fraction)
        keep &= ~wide
        channel |= wide
    kept = np.where(keep[grown], grown, 0)
    if leaked.any():
        kept = np.where(leaked & (kept == 0), count + 1, kept)
    fatty = ~is_enclosed | channel
    fatty[0] = False
    return _merge_touching(kept), fatty[grown] & ~leaked


def _leaked_marrow(
    region: np.ndarray,
    safe: np.ndarray,
    edge: np.ndarray,
    shell: np.ndarray,
    core: np.ndarray,
    guard: tuple[int, int, int],
    spacing: np.ndarray,
    *,
    params: MrAnatomyParams,
) -> np.ndarray:
    """Marrow inside a component that is not enclosed, joined to the rest by a leak.

    The component's safe voxels are eroded once more and split; each part takes the
    bright voxels it reaches first. A part is marrow when its edge is enclosed, it has
    a core (or touches such a part), and its front to the parts that are not enclosed is
    a small fraction of its edge.

    Parameters
    ----------
    region : (K, J, I) bool ndarray
        Bright voxels of the component.
    safe, edge, shell, core : (K, J, I) bool ndarray
        As in :func:`_marrow`.
    guard : tuple of int
        Box half-sizes of the guard (voxels).
    spacing : (3,) float ndarray, mm
    params : MrAnatomyParams

    Returns
    -------
    (K, J, I) bool ndarray
    """
    p = params
    box = _bbox(region, pad=np.ones(3, dtype=int))
    sub = region[box]
    out = np.zeros(region.shape, dtype=bool)
    parts, count = ndi.label(_erode_box(safe[box] & sub, (1, 1, 1)))
    if count < 2 or count > 5000:
        return out
    sx, sy, sz = (float(v) for v in spacing)
    faces = np.array([sy * sz, sx * sz, sx * sy])
    owner, _, front = _territories(parts.astype(np.int32), np.ascontiguousarray(sub), faces, count)
    front = front + front.T
    e = edge[box] & sub
    border = np.bincount(owner[e], minlength=count + 1)
    enclosed = np.bincount(owner[e & shell[box]], minlength=count + 1)
    is_enclosed = enclosed >= p.enclosed_fraction * np.maximum(border, 1)
    is_enclosed[0] = False
    has_core = np.bincount(parts[core[box] & sub], minlength=count + 1) > 0
    # the front to the parts that are not enclosed (the fat) is the leak
    leak = front[:, ~is_enclosed].sum(axis=1)
    narrow = leak <= p.leak_fraction * border * float(np.mean(faces))
    ok = is_enclosed & has_core & narrow
    # parts the extra erosion cut off the marrow come along
    ok |= is_enclosed & narrow & (front[:, ok].sum(axis=1) > 0)
    ok[0] = False
    out[box] = ok[owner]
    return out


def _merge_touching(labels: np.ndarray) -> np.ndarray:
    """Relabel so that labels touching face to face become one (pieces of one bone).

    Parameters
    ----------
    labels : (K, J, I) integer ndarray
        0 is background.

    Returns
    -------
    (K, J, I) int32 ndarray
        Labels ``1..m`` of the merged groups, 0 elsewhere.
    """
    count = int(labels.max())
    if count == 0:
        return labels.astype(np.int32)
    pairs = []
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        touch = (lo > 0) & (hi > 0) & (lo != hi)
        pairs.append(np.stack([lo[touch], hi[touch]], axis=1))
    edges = np.unique(np.concatenate(pairs), axis=0)
    graph = csr_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count + 1, count + 1)
    )
    _, group = connected_components(graph, directed=False)
    used = np.unique(labels[labels > 0])
    table = np.zeros(count + 1, dtype=np.int32)
    _, table[used] = np.unique(group[used], return_inverse=True)
    table[used] += 1
    return table[labels]


def _fraction_around(
    labels: np.ndarray,
    target: np.ndarray,
    count: int,
    spacing: np.ndarray,
    *,
    params: MrAnatomyParams,
) -> np.ndarray:
    """Per label, the fraction of a band around it (``beyond_mm``) inside ``target``.

    Parameters
    ----------
    labels : (K, J, I) integer ndarray
        Labels ``1..count`` (0 elsewhere).
    target : (K, J, I) bool ndarray
    count : int
    spacing : (3,) float ndarray, mm

    Returns
    -------
    (count + 1,) float ndarray
        Fractions in 0..1 (index 0 unused). Where bands of two labels overlap, the higher
        label takes the voxel.
    """
    near, far = params.beyond_mm
    mask = labels > 0
    outer = _half(far, spacing)
    band = _dilate_box(mask, outer) & ~_dilate_box(mask, _half(near, spacing))
    owner = ndi.maximum_filter(labels, size=tuple(2 * h + 1 for h in outer))[band]
    total = np.bincount(owner, minlength=count + 1)
    hits = np.bincount(owner[target[band]], minlength=count + 1)
    return hits / np.maximum(total, 1)


def _cortex(
    dark: np.ndarray,
    thick: np.ndarray,
    gap: np.ndarray,
    marrow: np.ndarray,
    spacing: np.ndarray,
    *,
    params: MrAnatomyParams,
) -> np.ndarray:
    """Dark voxels next to marrow, and the thin dark sheets connected to them.

    The second part brings in cortical plates with little marrow between them (iliac
    wings, laminae), which are one dark sheet on T1.
    """
    near = _within_mm(marrow, params.cortex_mm, spacing)
    # in a thick dark region (thecal sac, joint space) only the first millimetres are cortex
    closer = _within_mm(marrow, params.cortex_thick_mm, spacing)
    thin = dark & ~thick & ~gap
    cortex = dark & near & (thin | closer)
    # (not through dark voxels touching a thick dark region: the thin end of the thecal
    # sac is no cortex)
    sheet = thin & ~_dilate_box(dark & thick, (1, 1, 1))
    sheets, count = ndi.label(sheet | cortex, structure=np.ones((3, 3, 3), dtype=bool))
    touching = np.zeros(count + 1, dtype=bool)
    touching[np.unique(sheets[cortex])] = True
    touching[0] = False
    return touching[sheets]


def _to_hu(t: _Tissues, *, spacing: np.ndarray, params: MrAnatomyParams) -> np.ndarray:
    """Hounsfield units per voxel of the body's bounding box (see the module docstring)."""
    p = params
    n, body, dark, thick, bright = t.n, t.body, t.dark, t.thick, t.bright
    marrow, fatty, cortex = t.marrow, t.fatty, t.cortex
    hu = np.full(n.shape, _HU_MUSCLE, dtype=np.float32)
    hu[~body] = _HU_AIR
    hu[bright] = _HU_FAT
    fluid = dark & thick & ~cortex
    # the thin dark end of a fluid space that is no cortex (the tapering end of the thecal
    # sac) is fluid too, not soft tissue: as muscle it would plug the canal
    fluid |= dark & ~thick & ~cortex & _dilate_box(fluid, (1, 1, 1))
    local = ndi.uniform_filter(n, size=3)
    hu[fluid] = np.where(local[fluid] < p.gas, _HU_AIR, _HU_FLUID)
    # between cortex and marrow, and between two cortical plates: bone whose intensity is
    # partial volume of both; interpolate on intensity
    next_to_cortex = _dilate_box(cortex, (1, 1, 1))
    rim = next_to_cortex & _dilate_box(marrow, (1, 1, 1)) & ~marrow & ~dark & ~bright
    between = _sandwiched(cortex, _half(p.plate_mm, spacing)) & ~dark & ~thick & ~fatty
    pv = (rim | between) & ~marrow & ~t.apart
    n_cortex = float(np.median(n[cortex])) if cortex.any() else 0.0
    n_marrow = float(np.median(n[marrow & ~t.inside]))
    w = np.clip((n[pv] - n_cortex) / max(n_marrow - n_cortex, 1e-3), 0.0, 1.0)
    hu[pv] = _HU_CORTEX + w * (_HU_MARROW - _HU_CORTEX)
    # outside the cortex: partial-volume voxels hold some cortex; unmix them against fat
    # (next to fat) or against the soft-tissue level (elsewhere)
    outer = next_to_cortex & ~cortex & ~marrow & ~pv & ~bright & ~thick & ~t.apart & body
    mid = body & ~dark & ~bright
    fat_near = ndi.uniform_filter(fatty.view(np.uint8).astype(np.float32), size=3)
    soft_near = ndi.uniform_filter(mid.view(np.uint8).astype(np.float32), size=3)
    fat_side = outer & (fat_near > soft_near)
    # (against a level a little below the tissue's, so that noise on pure fat or muscle
    # next to a cortex does not read as bone)
    top = 1.0 - p.unmix_margin
    w = np.clip((n[fat_side] - n_cortex) / max(top - n_cortex, 1e-3), 0.0, 1.0)
    hu[fat_side] = _HU_CORTEX + w * (_HU_FAT - _HU_CORTEX)
    soft = outer & ~fat_side
    n_soft = float(np.median(n[mid][:: max(1, int(mid.sum()) // 200_000)])) if mid.any() else 0.4
    top = n_soft - p.unmix_margin
    w = np.clip((n[soft] - n_cortex) / max(top - n_cortex, 1e-3), 0.0, 1.0)
    hu[soft] = _HU_CORTEX + w * (_HU_MUSCLE - _HU_CORTEX)
    hu[marrow] = _HU_MARROW
    hu[cortex] = _HU_CORTEX
    # the joint space between two bones stays a gap, whatever the partial volume says
    # (the cortex on either side stays: it marks where each bone begins)
    joint = t.gap & ~(dark & _within_mm(marrow, p.cortex_mm, spacing))
    hu[joint] = _HU_JOINT
    _separate_bones(hu, t.pieces, spacing, params=p)
    return hu


def _separate_bones(
    hu: np.ndarray,
    pieces: np.ndarray,
    spacing: np.ndarray,
    *,
    params: MrAnatomyParams,
) -> None:
    """Cut bone-density bridges between different bones, in place.

    Every bone-density voxel is given to the marrow piece it is geodesically closest to
    (breadth-first through the bone, all pieces at once). Pieces whose territories meet
    over a broad front (``merge_front_mm2``) are parts of one bone and are merged; where
    the territories of different bones meet, the voxels that are not right next to marrow
    become joint space.

    Parameters
    ----------
    hu : (K, J, I) float32 ndarray
        The pseudo-CT (HU); changed in place.
    pieces : (K, J, I) integer ndarray
        Marrow pieces, 0 elsewhere.
    spacing : (3,) float ndarray, mm
    params : MrAnatomyParams
    """
    count = int(pieces.max())
    if count < 2 or count > 1000:
        return
    bone = (hu > params.bridge_hu) | (pieces > 0)
    box = _bbox(bone, pad=np.ones(3, dtype=int))
    bone = np.ascontiguousarray(bone[box])
    seeds = np.ascontiguousarray(pieces[box], dtype=np.int32)
    sx, sy, sz = (float(v) for v in spacing)
    faces = np.array([sy * sz, sx * sz, sx * sy])  # across i, j, k
    _, _, front = _territories(seeds, bone, faces, count)
    a, b = np.nonzero(np.triu(front + front.T) >= params.merge_front_mm2)
    graph = csr_matrix((np.ones(len(a)), (a, b)), shape=(count + 1, count + 1))
    _, group = connected_components(graph, directed=False)
    group = group.astype(np.int32) + 1
    group[0] = 0
    _, meet, _ = _territories(group[seeds], bone, faces, count)
    meet = _dilate_box(meet, (1, 1, 1)) & bone
    meet &= seeds == 0
    view = hu[box]
    view[meet] = np.minimum(view[meet], _HU_JOINT)


@njit(cache=True)
def _territories(
    seeds: np.ndarray, mask: np.ndarray, faces: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Breadth-first territories of seeds within a mask, and where they meet.

    Parameters
    ----------
    seeds : (K, J, I) int32 ndarray
        Seed labels ``1..count``, 0 elsewhere.
    mask : (K, J, I) bool ndarray
        Where the territories may grow.
    faces : (3,) float ndarray, mm^2
        Area of a voxel face across ``i``, ``j`` and ``k``.
    count : int

    Returns
    -------
    owner : (K, J, I) int32 ndarray
        The territory of every voxel (0 outside the mask or out of reach).
    meet : (K, J, I) bool ndarray
        Voxels with a 6-neighbour in another territory.
    front : (count + 1, count + 1) float ndarray, mm^2
        Area of the front between each pair of territories (``front[a, b]``, a < b).
    """
    nk, nj, ni = seeds.shape
    owner = seeds.copy().ravel()
    flat = mask.ravel()
    meet = np.zeros(owner.size, dtype=np.bool_)
    front = np.zeros((count + 1, count + 1))
    queue = np.empty(owner.size, dtype=np.int64)
    tail = 0
    for v in range(owner.size):
        if owner[v] > 0:
            queue[tail] = v
            tail += 1
    head = 0
    steps = (1, -1, ni, -ni, ni * nj, -ni * nj)
    while head < tail:
        v = queue[head]
        head += 1
        lab = owner[v]
        k = v // (ni * nj)
        j = (v // ni) % nj
        i = v % ni
        for s in range(6):
            if (s == 0 and i == ni - 1) or (s == 1 and i == 0):
                continue
            if (s == 2 and j == nj - 1) or (s == 3 and j == 0):
                continue
            if (s == 4 and k == nk - 1) or (s == 5 and k == 0):
                continue
            u = v + steps[s]
            if not flat[u]:
                continue
            other = owner[u]
            if other == 0:
                owner[u] = lab
                queue[tail] = u
                tail += 1
            elif other != lab:
                if not (meet[u] and meet[v]):
                    front[min(lab, other), max(lab, other)] += faces[s // 2]
                meet[u] = True
                meet[v] = True
    return owner.reshape(seeds.shape), meet.reshape(seeds.shape), front


# == helpers ==================================================================================


def _half(radius_mm: float, spacing: np.ndarray) -> tuple[int, int, int]:
    """Box half-sizes ``(k, j, i)`` in voxels for a radius in mm (at least one voxel)."""
    return tuple(max(1, int(radius_mm / s + 0.5)) for s in spacing[::-1])  # type: ignore[return-value]


def _erode_box(mask: np.ndarray, half: tuple[int, int, int]) -> np.ndarray:
    """Erosion by a box of half-sizes ``half`` (voxels); the array border is inside."""
    size = tuple(2 * h + 1 for h in half)
    return ndi.minimum_filter(mask.view(np.uint8), size=size).view(bool)


def _dilate_box(mask: np.ndarray, half: tuple[int, int, int]) -> np.ndarray:
    """Dilation by a box of half-sizes ``half`` (voxels)."""
    size = tuple(2 * h + 1 for h in half)
    return ndi.maximum_filter(mask.view(np.uint8), size=size).view(bool)


def _opening_box(mask: np.ndarray, half: tuple[int, int, int]) -> np.ndarray:
    """Opening by a box: the parts of ``mask`` at least ``2 * half + 1`` voxels thick."""
    return _dilate_box(_erode_box(mask, half), half) & mask


def _sandwiched(thin: np.ndarray, half: tuple[int, int, int]) -> np.ndarray:
    """Voxels with ``thin`` within ``half[a]`` voxels on both sides along some axis ``a``."""
    u = thin.view(np.uint8)
    out = np.zeros(thin.shape, dtype=bool)
    for axis, h in enumerate(half):
        size = h + 1
        ahead = ndi.maximum_filter1d(u, size=size, axis=axis, origin=-(size // 2))
        behind = ndi.maximum_filter1d(u, size=size, axis=axis, origin=(size - 1) // 2)
        out |= (ahead > 0) & (behind > 0)
    return out


def _between_pieces(pieces: np.ndarray, half: tuple[int, int, int]) -> np.ndarray:
    """Voxels with two different labels of ``pieces`` within ``half[a]`` voxels on either
    side along some axis ``a`` (the highest label in each direction is compared)."""
    out = np.zeros(pieces.shape, dtype=bool)
    for axis, h in enumerate(half):
        size = h + 1
        ahead = ndi.maximum_filter1d(pieces, size=size, axis=axis, origin=-(size // 2))
        behind = ndi.maximum_filter1d(pieces, size=size, axis=axis, origin=(size - 1) // 2)
        out |= (ahead > 0) & (behind > 0) & (ahead != behind)
    return out


def _within_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Voxels within ``radius_mm`` (Euclidean, mm) of ``mask``, computed on its bounding box."""
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    pad = np.ceil(radius_mm / spacing[::-1]).astype(int) + 1
    box = _bbox(mask, pad=pad)
    image = sitk.GetImageFromArray(mask[box].view(np.uint8))
    image.SetSpacing(tuple(float(v) for v in spacing))
    dist = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    out[box] = sitk.GetArrayFromImage(dist) <= radius_mm + 1e-6
    return out


def _bbox(mask: np.ndarray, *, pad: np.ndarray | None = None) -> tuple[slice, slice, slice]:
    """Index slices of the bounding box of ``mask`` grown by ``pad`` voxels per axis."""
    pad = np.zeros(3, dtype=int) if pad is None else np.asarray(pad, dtype=int)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo = max(int(hit[0]) - int(pad[axis]), 0)
        hi = min(int(hit[-1]) + 1 + int(pad[axis]), mask.shape[axis])
        out.append(slice(lo, hi))
    return (out[0], out[1], out[2])


def _axial_array_axis(volume: Volume) -> int:
    """Array axis (0 = k, 1 = j, 2 = i) closest to the patient's head-foot direction."""
    return 2 - int(np.argmax(np.abs(volume.direction[2, :])))


def _bones_by_marrow(masks: AnatomyMasks, t: _Tissues, ct: Volume) -> AnatomyMasks:
    """Decide sacrum and ilia by the MR's marrow pieces (a lesion inside one included).

    The CT anatomy splits joined bones by their CT numbers; the pseudo-CT's marrow is one
    flat value, so where a joint is thin the split can run through the marrow of one bone,
    and on oblique grids whole hip bones can be taken for sacrum. The marrow pieces of the
    MR know which bone they belong to: the piece around the canal below the S1 endplate is
    the sacrum (unless it reaches far beyond the alae: bones joined into one piece), a
    piece well to one side of the midline is that side's ilium; other pieces follow the
    CT anatomy when it gives them to one bone (``_ONE_BONE_SHARE``). Every voxel of the
    three bones then goes to the bone of the nearest marrow piece that has one.
    """
    names = ("sacrum", "left_ilium", "right_ilium")
    full = np.zeros(ct.array.shape, dtype=np.int32)
    full[t.box] = np.where(t.marrow, t.pieces, 0)
    i0, j0, k0 = masks.crop_index
    k, j, i = masks.image.array.shape
    crop = (slice(k0, k0 + k), slice(j0, j0 + j), slice(i0, i0 + i))
    pieces = full[crop]
    hu = ct.array[crop]
    lesion = np.zeros(ct.array.shape, dtype=bool)
    lesion[t.box] = t.inside
    lesion = lesion[crop]
    count = int(pieces.max())
    if count == 0:
        return masks
    image = masks.image
    spacing = image.spacing
    channels = masks.masks["canal"] | (masks.masks["foramina"] > 0)
    bones = np.zeros(pieces.shape, dtype=np.int32)
    for code, name in enumerate(names, start=1):
        bones[masks.masks[name] & (bones == 0)] = code
    kji = np.argwhere(pieces > 0)
    ids = pieces[tuple(kji.T)]
    size = np.bincount(ids, minlength=count + 1).astype(np.float64)
    votes = np.bincount(ids * 4 + bones[tuple(kji.T)], minlength=(count + 1) * 4).reshape(
        count + 1, 4
    )
    votes[:, 0] = 0
    x = image.index_to_world(kji[:, ::-1].astype(np.float64))
    sums = [np.bincount(ids, weights=x[:, a], minlength=count + 1) for a in range(3)]
    centre = np.stack(sums, axis=1) / np.maximum(size, 1)[:, None]
    dx = centre[:, 0] - masks.midline_x_mm
    wide = np.bincount(
        ids[np.abs(x[:, 0] - masks.midline_x_mm) > _ALA_REACH_MM], minlength=count + 1
    ) / np.maximum(size, 1)
    above = (centre - masks.endplate.center_lps) @ masks.endplate.normal > _ABOVE_ENDPLATE_MM
    canal = _dilate_box(masks.masks["canal"], _half(3.0, spacing))
    near_canal = np.bincount(pieces[canal & (pieces > 0)], minlength=count + 1) > 0
    is_bone = votes[:, 1:].sum(axis=1) >= 0.5 * size
    best = votes.argmax(axis=1)
    best[votes.max(axis=1) < _ONE_BONE_SHARE * np.maximum(votes.sum(axis=1), 1)] = 0
    sacral = is_bone & near_canal & ~above & (wide < 0.1)
    code = np.where(sacral, 1, 0)
    side = is_bone & ~near_canal & (np.abs(dx) > _ILIUM_OFFSET_MM)
    code[side] = np.where(dx[side] > 0, 2, 3)
    code = np.where(code > 0, code, best)
    code[0] = 0
    if not np.any(code > 0):
        return masks
    # every voxel of the three bones (and the lesions) to the nearest piece with a bone
    decided = code[pieces] > 0
    _, nearest = ndi.distance_transform_edt(~decided, sampling=spacing[::-1], return_indices=True)
    owner = code[pieces[tuple(nearest)]]
    owner[~((bones > 0) | lesion) | channels] = 0
    out = dict(masks.masks)
    for c, name in enumerate(names, start=1):
        out[name] = (out[name] & ~(owner > 0)) | (owner == c)
    # cavities left in the sacrum (partial-volume voxels around a lesion) are bone, and so
    # is bone-density tissue of the pseudo-CT touching it that no other bone holds
    channels = masks.masks["canal"] | (masks.masks["foramina"] > 0)
    sacrum = out["sacrum"] | (ndi.binary_fill_holes(out["sacrum"]) & ~channels)
    free = (hu > _BONE_HU) & ~channels & ~(masks.masks["bone"] & ~out["sacrum"])
    cross = ndi.generate_binary_structure(3, 1)
    for _ in range(2):
        sacrum |= ndi.binary_dilation(sacrum, structure=cross) & free
    # a lesion inside the sacrum has the sacrum's cortex all round it, whatever the
    # joint-space cut made of the thin cortex between it and an ilium
    lesion &= sacrum
    sacrum |= ndi.binary_dilation(lesion, structure=cross) & ~channels
    out["left_ilium"] &= ~sacrum
    out["right_ilium"] &= ~sacrum
    out["sacrum"] = sacrum
    return dataclasses.replace(masks, masks=out)


def _check_plausible(masks: AnatomyMasks) -> None:
    """Refuse results no sacrum could give (landmarks by hand instead)."""
    vox_ml = masks.image.voxel_volume_mm3 / 1000.0
    sacrum_ml = float(np.count_nonzero(masks.masks["sacrum"]) * vox_ml)
    levels = [f.level for f in masks.foramina]
    pairs = {lv for lv in levels if levels.count(lv) == 2}
    if not 40.0 <= sacrum_ml <= 1000.0 or not pairs:
        raise SegmentationError(MANUAL_MESSAGE)
