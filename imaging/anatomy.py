"""Automatic CT anatomy of the sacrum: bone, sacrum, ilia, canal, foramina, cortex, SI joints.

:func:`segment_anatomy` takes a CT :class:`~imaging.volume.Volume` (any spacing and
orientation) and returns :class:`AnatomyMasks`: boolean masks on a *crop* of the study
around the sacrum and both hip bones (a sub-block of the CT grid, same spacing and
direction), the S1-S4 foramina as fitted channels (centre, axis, radius), the S1 superior
endplate (centre and normal), and how to paste any mask back onto the full study grid.
The ilium masks hold the whole hip bone in the field of view (ilium, ischium, pubis and
acetabulum, not the femoral head).

How (DESIGN.md section 6): a coarse pass on a ~3 mm axis-aligned grid finds the posterior
pelvic ring, the hip bones (their dense cortex), the femoral heads (the balls the
acetabular linings cradle), the S1 endplate (bright endplate under a dark disc) and the
sacrum (:mod:`imaging.anatomy_locate`); a fine pass on a ~1-1.5 mm axis-aligned grid over
the sacrum and its surroundings refines the bone boundaries at the joint gaps (seeded
watershed; along the brightest ridge where thin fatty bone hides the joint), finds the
canal and the foramina as the channels a 12 mm ball cannot enter
(:mod:`imaging.anatomy_channels`), the anterior cortex (outward normal facing forward) and
the SI joints (the gap where sacrum and ilium come within a few millimetres). The hip
bones beyond the fine grid keep the coarse labels, refined on the study grid. On coarse
studies (3 mm) the one-voxel rim is finally decided by partial volume on the study grid.
Everything is in millimetres; all points are LPS.

Headless: numpy, scipy, scikit-image and SimpleITK only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from imaging.anatomy_channels import (
    ChannelFit,
    ChannelParams,
    anterior_surface,
    find_channels,
    fit_endplate,
    fit_foramina,
    grow_channel,
)
from imaging.anatomy_grid import (
    Grid,
    bbox_slices,
    close_mm,
    dilate_mm,
    distance_outside_mm,
    enclosed_mm,
    erode_mm,
    fill_holes,
    release_free_memory,
    resample_to_grid,
    sparse_zeros,
    world_bounds,
)
from imaging.anatomy_locate import CoarseAnatomy, LocateParams, locate_pelvis
from imaging.errors import OperationCancelledError, SegmentationError
from imaging.labels import Label
from imaging.volume import Volume

__all__ = [
    "FORAMEN_NAMES",
    "MASK_NAMES",
    "AnatomyMasks",
    "AnatomyParams",
    "Endplate",
    "Foramen",
    "sacral_axes",
    "segment_anatomy",
]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]

#: Names of the boolean masks of :class:`AnatomyMasks` (``"foramina"`` is a label image).
MASK_NAMES = (
    "bone",
    "sacrum",
    "left_ilium",
    "right_ilium",
    "canal",
    "foramina",
    "anterior_cortex",
    "si_joint_left",
    "si_joint_right",
)
#: The eight foramina in a fixed order; ``masks["foramina"] == i + 1`` is ``FORAMEN_NAMES[i]``.
FORAMEN_NAMES = tuple(f"{side} S{n}" for n in range(1, 5) for side in ("left", "right"))

# fine-grid label codes (internal)
_SAC, _LIL, _RIL, _OTHER, _CANAL, _SIL, _SIR = 1, 2, 3, 4, 5, 7, 8
_FORAMEN0 = 20
_FLAG_CORTEX, _FLAG_SIL, _FLAG_SIR = 1, 2, 4


@dataclass(frozen=True)
class AnatomyParams:
    """Options of :func:`segment_anatomy` (CT numbers in HU, lengths in mm).

    Attributes
    ----------
    coarse_mm : float
        Voxel size of the localisation grid.
    fine_mm : tuple of float
        Lower and upper bound of the fine grid's voxel size (the study's finest spacing,
        clipped to this range).
    bone_hu : float
        Bone threshold (cortex and most cancellous bone; lytic lesions are filled in).
    fill_close_mm : tuple of float
        Closing radii: the small one fills the marrow when the cortex is closed; the big
        one outlines the sacrum to measure how dense its marrow is.
    dense_marrow_fraction : float
        The marrow counts as dense (the small closing fills it) when at least this fraction
        of the sacrum's interior (3 mm inside its filled outline) is above ``bone_hu``;
        otherwise the study is treated as *fatty*.
    channel_hu : float
        Channels (canal, foramina) hold fat, nerve and CSF: darker than this.
    fatty_close_mm : float
        Closing radius of the sacrum in a fatty study (fills fat-density marrow pockets).
    fatty_enclose_mm : float
        In a fatty study the marrow of all bones is first filled where the bone encloses
        it within this reach in a cross-section (:func:`~imaging.anatomy_grid.enclosed_mm`;
        unlike a closing this leaves the grooves and notches outside the bone open); the
        coarse labels of the hip bones beyond the fine grid are trimmed the same way.
    fatty_channel_hu : float
        Channel threshold in a fatty study (fatty marrow is darker than ``channel_hu``).
    crop_margin_mm : tuple of float
        Margins added around the sacrum along x (each side), y and z for the crop.
    hip_margin_mm : float
        Margin added around the hip bones found by the localisation: the crop holds the
        whole hip bones in the field of view (ilium, ischium, pubis, acetabulum).
    si_gap_mm : float
        Sacrum and ilium closer than this (each way) form the SI joint.
    split_band_mm, split_reach_mm : float
        Where no CT number separates joined bones in a coarse study (thin fatty bone, joint
        space below the resolution), the split along the brightest ridge is seeded by the
        coarse cores farther than ``split_band_mm`` from another bone, and moves a bone at
        most ``split_reach_mm`` beyond its coarse region.
    peel_max_spacing_mm : float
        Bone surfaces are moved to the cortex half-maximum only when the study's coarsest
        spacing is at most this (a 3 mm study's boundary is a voxel uncertain anyway);
        studies coarser than this are *coarse* (ridge split, partial-volume rim).
    rim_hu : tuple of float
        On coarser studies the one-voxel rim of the sacrum and the hip bones is decided by
        partial volume on the study grid instead: a surface voxel darker than the first
        value (fat or fluid, not bone) leaves the bone; an outside voxel touching it and
        brighter than the second (above any soft tissue) joins it.
    locate, channels : LocateParams, ChannelParams
        Options of the coarse localisation and of the channel search.
    """

    coarse_mm: float = 3.0
    fine_mm: tuple[float, float] = (1.0, 1.5)
    bone_hu: float = 150.0
    fill_close_mm: tuple[float, float] = (1.5, 9.0)
    dense_marrow_fraction: float = 0.6
    channel_hu: float = 25.0
    crop_margin_mm: tuple[float, float, float] = (45.0, 25.0, 20.0)
    hip_margin_mm: float = 9.0
    si_gap_mm: float = 4.0
    split_band_mm: float = 6.0
    split_reach_mm: float = 6.0
    peel_max_spacing_mm: float = 2.5
    rim_hu: tuple[float, float] = (0.0, 100.0)
    fatty_close_mm: float = 12.0
    fatty_enclose_mm: float = 30.0
    fatty_channel_hu: float = 0.0
    locate: LocateParams = field(default_factory=LocateParams)
    channels: ChannelParams = field(default_factory=ChannelParams)


@dataclass
class Foramen:
    """One sacral foramen found in the study.

    Attributes
    ----------
    name : str
        ``"left S1"`` ... ``"right S4"``.
    level, side : str
        ``"S1"``..``"S4"`` and ``"left"``/``"right"`` (patient side).
    center_lps : (3,) float ndarray, mm, LPS
        Centroid of the channel inside the bone.
    axis : (3,) float ndarray
        Unit channel direction, pointing posteriorly.
    radius_mm : float
        Radius of the circle with the channel's mean cross-section area.
    label : int
        Value of this foramen in ``masks["foramina"]``.
    volume_ml : float
        Channel volume inside the bone.
    """

    name: str
    level: str
    side: str
    center_lps: np.ndarray
    axis: np.ndarray
    radius_mm: float
    label: int
    volume_ml: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description (lists of floats)."""
        return {
            "name": self.name,
            "level": self.level,
            "side": self.side,
            "center_lps": [float(v) for v in self.center_lps],
            "axis": [float(v) for v in self.axis],
            "radius_mm": float(self.radius_mm),
            "label": int(self.label),
            "volume_ml": float(self.volume_ml),
        }


@dataclass
class Endplate:
    """The S1 superior endplate: centre (LPS mm) and unit normal toward the head."""

    center_lps: np.ndarray
    normal: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "center_lps": [float(v) for v in self.center_lps],
            "normal": [float(v) for v in self.normal],
        }


@dataclass
class AnatomyMasks:
    """Anatomy masks on a crop of the CT around the sacrum and both hip bones.

    Attributes
    ----------
    image : Volume
        The CT crop (a sub-block of the study grid: same spacing and direction). Every mask
        has its shape ``(K, J, I)`` and geometry.
    masks : dict of str to ndarray
        Boolean ``(K, J, I)`` masks named in :data:`MASK_NAMES`; ``"foramina"`` is uint8
        with ``i + 1`` for :data:`FORAMEN_NAMES` ``[i]`` and 0 elsewhere. Ordinary writeable
        arrays whose memory is taken only around what they hold
        (:func:`~imaging.anatomy_grid.sparse_zeros`).
    foramina : list of Foramen
        The foramina found (possibly fewer than eight; see ``missing_foramina``).
    endplate : Endplate
        The S1 superior endplate.
    midline_x_mm : float
        LPS x of the body's midsagittal plane found by the localisation (mm).
    crop_index : tuple of int
        ``(i, j, k)`` of the crop's first voxel in the full study grid.
    full_shape : tuple of int
        ``(K, J, I)`` of the full study grid.
    missing_foramina : list of str
        Names of the foramina not found.
    timings_s : dict of str to float
        Seconds spent per stage.
    notes : list of str
        Plain remarks about the result (what was uncertain).
    """

    image: Volume
    masks: dict[str, np.ndarray]
    foramina: list[Foramen]
    endplate: Endplate
    midline_x_mm: float
    crop_index: tuple[int, int, int]
    full_shape: tuple[int, int, int]
    missing_foramina: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def mask(self, name: str) -> Volume:
        """One mask as a :class:`Volume` on the crop grid (``modality="LABEL"``)."""
        if name not in self.masks:
            raise KeyError(f"unknown anatomy mask {name!r}; known: {', '.join(self.masks)}")
        return self.image.with_array(self.masks[name], modality="LABEL")

    def foramen(self, name: str) -> Foramen | None:
        """The foramen called ``name`` (e.g. ``"left S1"``), or None when not found."""
        for f in self.foramina:
            if f.name == name:
                return f
        return None

    def paste(self, array: np.ndarray | str, full: Volume) -> Volume:
        """Put a crop-grid array (or a mask by name) into a zero array on the full grid.

        Parameters
        ----------
        array : (K, J, I) ndarray or str
            Array on the crop grid, or the name of one of ``masks``.
        full : Volume
            The study the crop was taken from (supplies the grid).

        Returns
        -------
        Volume
            Same grid as ``full``, holding ``array`` at the crop position and 0 elsewhere.
        """
        arr = self.masks[array] if isinstance(array, str) else np.asarray(array)
        if arr.shape != self.image.array.shape:
            raise ValueError(f"array shape {arr.shape} != crop shape {self.image.array.shape}")
        if full.array.shape != self.full_shape:
            raise ValueError(f"full grid {full.array.shape} is not the study {self.full_shape}")
        out = np.zeros(self.full_shape, dtype=arr.dtype)
        i0, j0, k0 = self.crop_index
        k, j, i = arr.shape
        out[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] = arr
        return full.with_array(out, modality="LABEL")

    def label_map(self) -> Volume:
        """All structures as one :class:`~imaging.labels.Label` map on the crop grid."""
        lab = np.zeros(self.image.array.shape, np.uint8)
        lab[self.masks["left_ilium"]] = Label.LEFT_ILIUM
        lab[self.masks["right_ilium"]] = Label.RIGHT_ILIUM
        lab[self.masks["si_joint_left"] & (lab == 0)] = Label.SI_JOINT
        lab[self.masks["si_joint_right"] & (lab == 0)] = Label.SI_JOINT
        lab[self.masks["sacrum"]] = Label.SACRUM
        lab[self.masks["canal"]] = Label.CANAL
        lab[self.masks["foramina"] > 0] = Label.FORAMEN
        return self.image.with_array(lab, modality="LABEL")

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: crop, volumes (mL), foramina, endplate, notes."""
        vox = self.image.voxel_volume_mm3 / 1000.0
        return {
            "crop_index": list(self.crop_index),
            "crop": self.image.summary(),
            "volumes_ml": {
                name: float(np.count_nonzero(m) * vox)
                for name, m in self.masks.items()
                if name != "foramina"
            },
            "foramina": [f.to_json() for f in self.foramina],
            "missing_foramina": list(self.missing_foramina),
            "endplate": self.endplate.to_json(),
            "midline_x_mm": float(self.midline_x_mm),
            "notes": list(self.notes),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
        }


# == the frame ================================================================================


def sacral_axes(
    endplate_normal: np.ndarray,
    *,
    left_points: np.ndarray | None = None,
    right_points: np.ndarray | None = None,
) -> np.ndarray:
    """Axes of the sacral frame (DESIGN.md section 5.2) as rows ``e_x, e_y, e_z``.

    Parameters
    ----------
    endplate_normal : (3,) float ndarray
        S1 endplate normal toward the head: becomes ``e_z``.
    left_points, right_points : (N, 3) float ndarray, mm, LPS, optional
        Paired foramen centres (same order). ``e_x`` is the mean right-to-left
        direction of the pairs, made orthogonal to ``e_z``; without pairs it is LPS +x.

    Returns
    -------
    (3, 3) float ndarray
        Rows ``e_x`` (toward patient left), ``e_y`` (posterior), ``e_z`` (head).
    """
    ez = np.asarray(endplate_normal, dtype=np.float64)
    ez = ez / np.linalg.norm(ez)
    ex = np.array([1.0, 0.0, 0.0])
    if left_points is not None and right_points is not None and len(left_points):
        d = np.asarray(left_points, dtype=np.float64) - np.asarray(right_points, np.float64)
        d = d[np.linalg.norm(d, axis=1) > 1e-6]
        if len(d):
            ex = (d / np.linalg.norm(d, axis=1, keepdims=True)).mean(axis=0)
    ex = ex - (ex @ ez) * ez
    if np.linalg.norm(ex) < 1e-6:
        raise SegmentationError("the sacral frame is degenerate: check the landmarks")
    ex = ex / np.linalg.norm(ex)
    ey = np.cross(ez, ex)
    return np.stack([ex, ey, ez])


# == the pipeline =============================================================================


class _Stages:
    """Progress, cancel and timing bookkeeping of one run."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self._progress = progress
        self._cancel = cancel
        self._t = time.perf_counter()
        self._name = ""
        self.timings: dict[str, float] = {}

    def begin(self, fraction: float, name: str) -> None:
        self._close()
        if self._cancel is not None and self._cancel():
            raise OperationCancelledError("anatomy segmentation cancelled")
        if self._progress is not None:
            self._progress(float(fraction), name)
        self._name = name

    def _close(self) -> None:
        now = time.perf_counter()
        if self._name:
            self.timings[self._name] = now - self._t
        self._t = now

    def end(self) -> None:
        self._close()
        self._name = ""
        if self._progress is not None:
            self._progress(1.0, "anatomy done")


def segment_anatomy(
    ct: Volume,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    params: AnatomyParams | None = None,
) -> AnatomyMasks:
    """Segment the sacrum and its surroundings in a CT study.

    Parameters
    ----------
    ct : Volume
        CT in Hounsfield units, any spacing and direction (oblique and anisotropic grids
        are fine).
    progress : callable, optional
        ``progress(fraction, stage_name)`` called at each stage (fraction in 0..1).
    cancel : callable, optional
        Polled between stages; when it returns True the run stops with
        :class:`~imaging.errors.OperationCancelledError`.
    params : AnatomyParams, optional

    Returns
    -------
    AnatomyMasks

    Raises
    ------
    SegmentationError
        When the study is not a CT or holds no pelvis/sacrum.
    OperationCancelledError
        When ``cancel()`` returned True.
    """
    try:
        return _segment_anatomy(ct, progress=progress, cancel=cancel, params=params)
    finally:  # the stage's working memory goes back to the system, not only to the allocator
        release_free_memory()


def _segment_anatomy(
    ct: Volume,
    *,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    params: AnatomyParams | None,
) -> AnatomyMasks:
    p = params or AnatomyParams()
    _check_ct(ct)
    st = _Stages(progress, cancel)
    st.begin(0.02, "locating the pelvis")
    lo, hi = world_bounds(ct)
    cgrid = Grid.covering(lo, hi, p.coarse_mm)
    cimg = resample_to_grid(ct, cgrid, default=-1024.0, antialias=True)
    coarse = locate_pelvis(cimg, cgrid, params=p.locate)
    st.begin(0.25, "resampling the sacral region")
    crop, crop_index, region = _crop(
        ct, coarse, margins_mm=p.crop_margin_mm, hip_margin_mm=p.hip_margin_mm
    )
    fine = _fine_grid(region, p.fine_mm)
    img = resample_to_grid(crop, fine, default=-1024.0, antialias=True)
    st.begin(0.35, "separating sacrum and ilia")
    fb = _fine_bones(img, fine, coarse, source_spacing_mm=float(np.max(ct.spacing)), params=p)
    bones, open_bone, notes = fb.labels, fb.open_bone, fb.notes
    solid = bones > 0
    st.begin(0.55, "finding canal and foramina")
    sac_full = bones == _SAC
    channel_hu = p.fatty_channel_hu if fb.fatty else p.channel_hu
    channel_ok = ndi.gaussian_filter(img, 0.7 / fine.spacing[::-1]) < channel_hu
    sac_open = sac_full & (open_bone | ~channel_ok)
    canal, candidates = find_channels(
        sac_open,
        fine,
        midline_x_mm=coarse.midline_x_mm,
        exclude=(bones > 0) & ~sac_full | ~channel_ok,
        params=p.channels,
    )
    free = ~((bones > 0) & ~sac_full)
    canal = grow_channel(canal, img, fine, allowed=free)
    candidates = [grow_channel(c, img, fine, allowed=free & ~canal) for c in candidates]
    st.begin(0.7, "fitting the S1 endplate")
    filled_sac = sac_full | canal
    point, normal, support = fit_endplate(
        filled_sac,
        fine,
        point=coarse.endplate_point,
        normal=coarse.endplate_normal,
        midline_x_mm=coarse.midline_x_mm,
        canal=canal,
    )
    if support < 10:
        notes.append("the S1 endplate surface was hard to see; its position is approximate")
    length = _sacral_length(sac_full, fine, point)
    fits = fit_foramina(
        candidates,
        fine,
        midline_x_mm=coarse.midline_x_mm,
        endplate_center=point,
        sacral_length_mm=length,
        posterior_axis=sacral_axes(normal)[1],
        params=p.channels,
    )
    st.begin(0.8, "anterior cortex and SI joints")
    axes = _frame_from_fits(normal, fits)
    sacrum = sac_full & ~canal
    for f in fits:
        sacrum &= ~f.mask
    cortex = anterior_surface(
        sacrum | canal | _union(fits, sacrum.shape), fine, posterior_axis=axes[1]
    )
    cortex = dilate_mm(cortex, 1.0, fine.spacing) & sacrum
    si_gap, si_flags = _si_joints(bones, sacrum, fine, gap_mm=p.si_gap_mm)
    st.begin(0.9, "writing the masks on the study grid")
    codes = np.where(bones == _SAC, 0, bones).astype(np.uint8)
    codes[sacrum] = _SAC
    codes[canal] = _CANAL
    codes[si_gap == 2] = _SIL
    codes[si_gap == 3] = _SIR
    foramina = []
    for f in fits:
        idx = FORAMEN_NAMES.index(f.name)
        codes[f.mask] = _FORAMEN0 + idx
        foramina.append(
            Foramen(
                name=f.name,
                level=f.level,
                side=f.side,
                center_lps=f.center_lps,
                axis=f.axis,
                radius_mm=f.radius_mm,
                label=idx + 1,
                volume_ml=f.volume_ml,
            )
        )
    flags = (cortex * _FLAG_CORTEX) | si_flags
    outer = _outer_labels(cimg, coarse, p)
    coarse_study = float(np.max(ct.spacing)) > p.peel_max_spacing_mm
    masks = _to_crop(
        codes,
        flags,
        solid,
        fine,
        crop,
        region=region,
        outer=outer,
        outer_grid=cgrid,
        bone_hu=p.bone_hu,
        refine=not coarse_study,
    )
    if coarse_study:
        _partial_volume_rim(masks, crop.array, lo_hu=p.rim_hu[0], hi_hu=p.rim_hu[1])
    if "pseudo_ct" not in ct.meta:  # a synthetic CT's walls are drawn, not blurred
        _channels_to_half_level(masks, crop.array, crop.spacing)
    foramina.sort(key=lambda f: FORAMEN_NAMES.index(f.name))
    found = {f.name for f in foramina}
    missing = [n for n in FORAMEN_NAMES if n not in found]
    if missing:
        notes.append(f"{len(missing)} of 8 foramina not found: {', '.join(missing)}")
    st.end()
    return AnatomyMasks(
        image=crop,
        masks=masks,
        foramina=foramina,
        endplate=Endplate(center_lps=point, normal=normal),
        midline_x_mm=coarse.midline_x_mm,
        crop_index=crop_index,
        full_shape=ct.array.shape,
        missing_foramina=missing,
        timings_s=st.timings,
        notes=notes,
    )


def _outer_labels(
    image: np.ndarray, coarse: CoarseAnatomy, params: AnatomyParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse bone labels for the crop outside the fine grid (the hip bones far out).

    The localisation's labels within the bone its cortex encloses (no closing, so the
    outline keeps its notches), with the femoral heads taken out of the hip bones.
    Returns these labels, the labels grown by one voxel into unlabelled voxels (where a
    finer study shows bone, they hold it) and their interior (held whatever the CT
    number: marrow).
    """
    bone = image > params.bone_hu
    tight = fill_holes(enclosed_mm(bone, params.fatty_enclose_mm, coarse.grid.spacing))
    labels = _free_femoral_heads(coarse.labels, coarse.grid, coarse)
    labels = np.where(tight, labels, 0).astype(np.uint8)
    labels[labels == _SAC] = _OTHER
    grown = ndi.grey_dilation(labels, size=(3, 3, 3))
    grown = np.where(labels > 0, labels, grown).astype(np.uint8)
    inner = ndi.grey_erosion(labels, size=(3, 3, 3))
    inner = np.where(inner == labels, labels, 0).astype(np.uint8)
    return labels, grown, inner


def _nearest_onto(
    image: sitk.Image, onto: Volume, *, k_range: tuple[int, int] | None = None
) -> np.ndarray:
    """Nearest-neighbour resampling of an integer image onto a volume's grid (0 outside).

    With ``k_range`` ``(k0, k1)`` only the slices ``k0:k1`` of ``onto`` are resampled.
    """
    k0, k1 = k_range if k_range is not None else (0, onto.array.shape[0])
    size = [int(v) for v in onto.size]
    size[2] = int(k1 - k0)
    origin = onto.origin if k0 == 0 else onto.index_to_world(np.array([[0.0, 0.0, k0]]))[0]
    ref = sitk.Image(size, image.GetPixelID())
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetSpacing(tuple(float(v) for v in onto.spacing))
    ref.SetDirection(tuple(float(v) for v in onto.direction.reshape(-1)))
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def _partial_volume_rim(
    masks: dict[str, np.ndarray], hu: np.ndarray, *, lo_hu: float, hi_hu: float
) -> None:
    """Re-decide the one-voxel rim of the sacrum and the hip bones by partial volume.

    On the study grid (in place): a voxel of a bone touching the outside (face
    neighbours) and darker than ``lo_hu`` leaves it; an outside voxel touching it and
    brighter than ``hi_hu`` joins it. For the sacrum the canal, the foramina and other
    bone (the last lumbar vertebra) count as outside, and a dark voxel dropped from the
    canal wall joins the canal; the hip bones never take other bone (the femur).
    ``masks`` as returned by :func:`_to_crop`.
    """
    names = ("sacrum", "left_ilium", "right_ilium")
    channels = masks["canal"] | (masks["foramina"] > 0)
    other = masks["bone"] & ~channels
    for n in names:
        other &= ~masks[n]
    st = ndi.generate_binary_structure(3, 1)
    taken = np.zeros(hu.shape, bool)
    for n in names:
        m = masks[n]
        outside = ~(masks["sacrum"] | masks["left_ilium"] | masks["right_ilium"])
        if n != "sacrum":
            outside &= ~other
        drop = m & ndi.binary_dilation(outside, st) & (hu < lo_hu)
        add = outside & ndi.binary_dilation(m, st) & (hu > hi_hu) & ~taken
        masks[n] = (m & ~drop) | add
        taken |= add
        masks["bone"] = (masks["bone"] & ~drop) | add
        if n == "sacrum":
            # a dark voxel on the canal wall is canal
            masks["canal"] |= drop & ndi.binary_dilation(masks["canal"], st)
    masks["canal"] &= ~taken
    masks["foramina"][taken] = 0


#: A channel's wall is the brightest CT number within this reach of a voxel (mm).
CHANNEL_WALL_REACH_MM = 2.0
#: Only where the wall is at least this much brighter than the channel's contents (HU) is
#: there a wall to find the half level of (not where a lesion has replaced it).
CHANNEL_WALL_CONTRAST_HU = 400.0


def _channels_to_half_level(
    masks: dict[str, np.ndarray], hu: np.ndarray, spacing: np.ndarray
) -> None:
    """Move the canal's and the foramina's walls out to the half level, on the study grid.

    The channels are found on the fine grid with a fixed threshold, which leaves their
    boundary a fraction of a voxel inside the wall's blurred edge (a quarter of a
    millimetre on a 1 mm CT: the mask, and every clearance measured to it, is off by that).
    The true edge of a blurred step lies where the CT number is half-way between the two
    sides: a voxel touching a channel (face neighbours) joins it when it is darker than
    half-way between the channel's contents (their median) and the brightest wall within
    ``CHANNEL_WALL_REACH_MM``, where that wall stands out by ``CHANNEL_WALL_CONTRAST_HU``,
    and a face neighbour of it is brighter than that half level (the edge passes between).
    Voxels of the hip bones or of another channel are never taken. In place, on
    ``masks`` as returned by :func:`_to_crop` (``hu`` on the same grid; ``spacing`` x, y, z).
    """
    st = ndi.generate_binary_structure(3, 1)
    reach = np.maximum(1, np.round(CHANNEL_WALL_REACH_MM / np.asarray(spacing)[::-1])).astype(int)
    zz, yy, xx = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    sp = np.asarray(spacing, float)[::-1]
    ball = (zz * sp[0]) ** 2 + (yy * sp[1]) ** 2 + (xx * sp[2]) ** 2 <= CHANNEL_WALL_REACH_MM**2
    codes = masks["foramina"]
    # each channel's bounding box, without a crop-sized temporary (the masks are sparse)
    found: list[tuple[str, int, tuple[slice, ...] | None]] = []
    canal_nz = [np.flatnonzero(masks["canal"].any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if len(canal_nz[0]):
        found.append(("canal", 0, tuple(slice(int(n[0]), int(n[-1]) + 1) for n in canal_nz)))
    for code, where in enumerate(ndi.find_objects(codes), start=1):
        if where is not None:
            found.append(("foramina", code, where))
    for name, code, where in found:
        assert where is not None
        box = tuple(
            slice(max(w.start - r - 1, 0), w.stop + r + 1)
            for w, r in zip(where, reach, strict=True)
        )
        m = masks["canal"][box] if name == "canal" else codes[box] == code
        sub = np.asarray(hu[box], dtype=np.float32)
        contents = float(np.median(sub[m]))
        wall = ndi.maximum_filter(sub, footprint=ball, mode="nearest")
        fixed = masks["left_ilium"][box] | masks["right_ilium"][box]
        taken = fixed | masks["canal"][box] | (codes[box] > 0)
        ring = ndi.binary_dilation(m, st) & ~m & ~taken
        half = 0.5 * (contents + wall)
        # the half level is crossed between the voxel and a neighbour: the voxel is on the
        # wall's edge, not in a flat region that the wall merely lies near
        brighter = ndi.maximum_filter(sub, footprint=st, mode="nearest") > half
        grow = ring & (wall - contents >= CHANNEL_WALL_CONTRAST_HU) & (sub < half) & brighter
        if not grow.any():
            continue
        if name == "canal":
            masks["canal"][box] |= grow
        else:
            codes[box][grow] = code
        masks["sacrum"][box] &= ~grow
        masks["anterior_cortex"][box] &= ~grow  # (the cortex flags part of the sacrum)


def _check_ct(ct: Volume) -> None:
    if ct.modality.upper() not in ("CT", "OT"):
        raise SegmentationError(
            f"automatic anatomy needs a CT; this series is {ct.modality} -- place the "
            "landmarks by hand"
        )
    if min(ct.array.shape) < 8:
        raise SegmentationError(
            f"the series is too small for automatic anatomy ({ct.size} voxels); check the "
            "series or place the landmarks by hand"
        )
    extent = np.asarray(ct.size) * ct.spacing
    if np.min(extent) < 60.0:
        raise SegmentationError(
            "the study covers less than 60 mm along one axis; it cannot hold the sacrum -- "
            "check the series or place the landmarks by hand"
        )


# -- crop and fine grid -----------------------------------------------------------------------


def _crop(
    ct: Volume,
    coarse: CoarseAnatomy,
    *,
    margins_mm: tuple[float, float, float],
    hip_margin_mm: float,
) -> tuple[Volume, tuple[int, int, int], Volume]:
    """Sub-blocks of the CT grid: the crop and the sacral region inside it.

    The sacral region covers the sacrum plus ``margins_mm`` (it is segmented on the fine
    grid); the crop covers it and both hip bones plus ``hip_margin_mm``. Returns the crop,
    its first voxel ``(i, j, k)`` in the study and the sacral region.
    """
    half = coarse.grid.spacing / 2.0
    pts = coarse.grid.index_to_world(np.argwhere(coarse.labels == _SAC))
    lo = pts.min(axis=0) - half - np.asarray(margins_mm)
    hi = pts.max(axis=0) + half + np.asarray(margins_mm)
    region, _ = _block(ct, lo, hi)
    hips = np.isin(coarse.labels, (_LIL, _RIL))
    if hips.any():
        pts = coarse.grid.index_to_world(np.argwhere(hips))
        lo = np.minimum(lo, pts.min(axis=0) - half - hip_margin_mm)
        hi = np.maximum(hi, pts.max(axis=0) + half + hip_margin_mm)
    crop, index = _block(ct, lo, hi)
    return crop, index, region


def _block(ct: Volume, lo: np.ndarray, hi: np.ndarray) -> tuple[Volume, tuple[int, int, int]]:
    """The sub-block of the CT grid covering the LPS box ``[lo, hi]`` (mm)."""
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    ijk = ct.world_to_index(corners)
    size = np.asarray(ct.size)
    i0 = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size - 1)
    i1 = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 1, size)
    arr = ct.array[i0[2] : i1[2], i0[1] : i1[1], i0[0] : i1[0]]
    block = Volume(
        array=arr,
        origin=ct.index_to_world(i0.astype(float)),
        spacing=ct.spacing,
        direction=ct.direction,
        modality=ct.modality,
        meta=dict(ct.meta),
    )
    return block, (int(i0[0]), int(i0[1]), int(i0[2]))


def _fine_grid(region: Volume, bounds_mm: tuple[float, float]) -> Grid:
    """Axis-aligned grid over a region with its finest spacing clipped to bounds."""
    spacing = float(np.clip(np.min(region.spacing), bounds_mm[0], bounds_mm[1]))
    lo, hi = world_bounds(region)
    return Grid.covering(lo, hi, spacing)


# -- fine bones -------------------------------------------------------------------------------


@dataclass
class _FineBones:
    """Bones on the fine grid.

    ``labels``: 1 sacrum, 2/3 left/right ilium, 4 other bone (marrow filled);
    ``open_bone``: bone with its channels open; ``fatty``: the marrow needed the big
    closing (thin or fatty cortex); ``notes``: plain remarks.
    """

    labels: np.ndarray
    open_bone: np.ndarray
    fatty: bool
    notes: list[str]


def _fine_bones(
    img: np.ndarray,
    fine: Grid,
    coarse: CoarseAnatomy,
    *,
    source_spacing_mm: float,
    params: AnatomyParams,
) -> _FineBones:
    """Sacrum, ilia and other bone on the fine grid.

    Bone components that the joint gaps already separate take the coarse label most of
    their voxels carry; components where the gaps are not visible are split by a seeded
    watershed (bright bone floods first, so fronts meet in the darkest gap). Each bone is
    then closed and hole-filled: 1.5 mm when the marrow is dense, ``fatty_close_mm`` when
    it is fatty or osteoporotic (most of the sacral interior below ``bone_hu``).

    The half-maximum peel (:func:`_peel_half_max`) runs only on studies fine enough to
    resolve the cortex.
    """
    notes: list[str] = []
    sp = fine.spacing
    bone = img > params.bone_hu
    prior = resample_to_grid(coarse.grid.image(coarse.labels), fine, linear=False, dtype=np.uint8)
    pad = int(np.ceil((params.fill_close_mm[1] + 3.0) / np.min(sp))) + 2
    sl = bbox_slices(prior == _SAC, pad=pad)
    region = dilate_mm(prior[sl] == _SAC, 3.0, sp)
    open_bone = np.zeros(bone.shape, bool)
    open_bone[sl] = fill_holes(close_mm(bone[sl], params.fill_close_mm[0], sp))
    big_sac = fill_holes(close_mm(bone[sl], params.fill_close_mm[1], sp))
    interior = erode_mm(big_sac & region, 3.0, sp)
    marrow = np.count_nonzero(bone[sl] & interior) / max(np.count_nonzero(interior), 1)
    dense = marrow >= params.dense_marrow_fraction
    if dense:
        base = fill_holes(bone)
    else:
        base = fill_holes(enclosed_mm(bone, params.fatty_enclose_mm, sp))
        notes.append(
            "fatty or osteoporotic bone: the marrow was filled where the cortex encloses it, "
            "so the SI joints, the foramen walls and lesions breaking the cortex are less "
            "exact; check them"
        )
    labels = _label_components(base, prior)
    mixed = labels == 255
    if mixed.any():
        labels = _split_mixed(
            img,
            labels,
            mixed,
            fine,
            coarse,
            band_mm=params.split_band_mm,
            reach_mm=params.split_reach_mm,
            ridge=source_spacing_mm > params.peel_max_spacing_mm,
        )
    labels = _free_femoral_heads(labels, fine, coarse)
    if source_spacing_mm <= params.peel_max_spacing_mm:
        labels = _peel_half_max(labels, img, sp)
    if dense:
        labels = _close_labels(labels, params.fill_close_mm[0], sp)
    else:
        # the base was closed as a whole already; the sacrum's fat pockets need more
        labels = _close_labels(labels, params.fatty_close_mm, sp, codes=(_SAC,))
        smooth = ndi.gaussian_filter(img, 0.7 / sp[::-1])
        open_bone = (labels > 0) & (smooth >= params.fatty_channel_hu)
    return _FineBones(labels=labels, open_bone=open_bone, fatty=not dense, notes=notes)


def _label_components(tight: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Label whole bone components by the coarse label most of their voxels carry.

    A component is *mixed* (255, to be split) when another bone label has a good part of
    its voxels there too (over 35 % of that label's voxels and 5 % of the component):
    the joint between them is not visible at this resolution.
    """
    lab, n = ndi.label(tight)
    out = np.zeros(tight.shape, np.uint8)
    if n == 0:
        return out
    flat = lab.ravel().astype(np.int64) * 5 + prior.ravel().clip(0, 4)
    votes = np.bincount(flat, minlength=(n + 1) * 5).reshape(n + 1, 5)
    votes[:, 0] = 0
    votes[0] = 0
    total = votes.sum(axis=1)
    best = votes.argmax(axis=1)
    per_label = votes.sum(axis=0)
    table = best.astype(np.uint8)
    for comp in np.nonzero(total)[0]:
        for code in range(1, 5):
            if code == best[comp] or votes[comp, code] == 0:
                continue
            own = votes[comp, code] / max(per_label[code], 1)
            if own > 0.35 and votes[comp, code] > 0.05 * total[comp]:
                table[comp] = 255
    table[total == 0] = 0
    return table[lab]


def _split_mixed(
    img: np.ndarray,
    labels: np.ndarray,
    mixed: np.ndarray,
    fine: Grid,
    coarse: CoarseAnatomy,
    *,
    band_mm: float,
    reach_mm: float,
    ridge: bool,
) -> np.ndarray:
    """Seeded watershed inside components that join several bones (gap not visible).

    Seeds: the pieces the component falls into at the lowest higher CT number where each
    bone keeps a fair share of pure pieces (dense cortex shells, separated by the joint
    gaps); bones without such pieces are seeded by their coarse cores. Bright bone floods
    first, so fronts meet in the darkest gap.

    When no threshold separates the bones (thin, fatty bone at low resolution) bright
    cortex would carry such fronts past the joints. On a coarse study (``ridge``: the
    joint space is below the resolution, the subchondral cortex of both sides merges into
    one bright band) the coarse cores farther than ``band_mm`` from another bone then
    seed a watershed in which *dark* bone floods first, so the fronts meet on the
    brightest ridge between them: that band. A bone may take voxels at most ``reach_mm``
    beyond its coarse region; beyond that (where a dark path would carry a front to a far
    bone) the coarse label stays. Otherwise the cores grow at equal speed (nearest core
    wins).
    """
    sp = fine.spacing
    prior = resample_to_grid(coarse.grid.image(coarse.labels), fine, linear=False, dtype=np.uint8)
    cores = resample_to_grid(
        coarse.grid.image(_coarse_cores(coarse)), fine, linear=False, dtype=np.uint8
    )
    markers = _ladder_seeds(img, mixed, prior)
    seeded = bool(markers.any())
    fill = (markers == 0) & mixed
    covered = set(np.unique(markers[markers > 0]).tolist())
    for code in (_SAC, _LIL, _RIL, _OTHER):
        if code not in covered:
            markers[fill & (cores == code)] = code
    markers[~mixed] = 0
    smooth = ndi.gaussian_filter(img, 0.7 / sp[::-1])
    if seeded:
        split = _watershed(-smooth, markers, mixed, fine)
    elif not ridge:
        split = _watershed(np.zeros_like(smooth), markers, mixed, fine)
    else:
        split = _ridge_split(
            smooth, markers, mixed, prior, fine, coarse, band_mm=band_mm, reach_mm=reach_mm
        )
    out = labels.copy()
    out[mixed] = split[mixed]
    return out


def _ridge_split(
    smooth: np.ndarray,
    cores: np.ndarray,
    mask: np.ndarray,
    prior: np.ndarray,
    fine: Grid,
    coarse: CoarseAnatomy,
    *,
    band_mm: float,
    reach_mm: float,
) -> np.ndarray:
    """Split ``mask`` between bones along the brightest ridges (see :func:`_split_mixed`).

    Distances to the coarse regions are taken on the coarse grid (they only need to be
    good to a coarse voxel); where the ridge result is not allowed the coarse label
    ``prior`` stays. Coarse *other bone* is never handed to another bone.
    """
    codes = (_SAC, _LIL, _RIL, _OTHER)
    dist = {c: distance_outside_mm(coarse.labels == c, coarse.grid.spacing) for c in codes}
    bits = np.zeros(coarse.labels.shape, np.uint8)
    for n, code in enumerate(codes):
        others = np.minimum.reduce([d for c, d in dist.items() if c != code])
        bits |= ((others > band_mm) * (1 << n) | (dist[code] <= reach_mm) * (16 << n)).astype(
            np.uint8
        )
    bits = resample_to_grid(coarse.grid.image(bits), fine, linear=False, dtype=np.uint8)
    seeds = np.zeros(cores.shape, np.uint8)
    for n, code in enumerate(codes):
        seeds[(cores == code) & ((bits & (1 << n)) > 0)] = code
    ridge = _watershed(smooth, seeds, mask, fine)
    ok = np.zeros(cores.shape, bool)
    for n, code in enumerate(codes):
        ok |= (ridge == code) & ((bits & (16 << n)) > 0)
    # other bone (the last lumbar vertebra, the femurs) meets the sacrum and the hip bones
    # at the endplate plane and the femoral heads, which the coarse labels already follow
    ok &= (prior != _OTHER) | (ridge == _OTHER)
    return np.where(ok | (prior == 0), ridge, prior).astype(np.uint8)


def _watershed(
    elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray, grid: Grid
) -> np.ndarray:
    """Marker watershed of ``elevation`` within ``mask`` (labels 0 outside the mask)."""
    cost = np.where(mask, elevation, np.float32(4000.0)).astype(np.float32)
    img = sitk.GetImageFromArray(cost)
    img.SetSpacing(tuple(float(v) for v in grid.spacing))
    mk = sitk.GetImageFromArray(np.ascontiguousarray(markers, dtype=np.uint8))
    mk.CopyInformation(img)
    ws = sitk.MorphologicalWatershedFromMarkers(
        img, mk, markWatershedLine=False, fullyConnected=False
    )
    return np.where(mask, sitk.GetArrayFromImage(ws), 0).astype(np.uint8)


_SEED_LADDER_HU = (250.0, 350.0, 500.0, 700.0, 900.0, 1200.0)


def _free_femoral_heads(
    labels: np.ndarray,
    fine: Grid,
    coarse: CoarseAnatomy,
    *,
    cup_mm: float = 12.0,
    open_deg: float = 65.0,
) -> np.ndarray:
    """The femoral heads found by the localisation are femur, not hip bone.

    Bone inside each head's ball becomes *other bone*. In the shell ``cup_mm`` around
    the ball, bone within ``open_deg`` of the acetabular opening (lateral, 45 degrees
    down and a little forward: the femoral neck and the exposed head) is femur too; other
    bone elsewhere in the shell above the lower third of the head is the acetabulum,
    which covers the upper half of the head, and goes back to that side's hip bone.
    Works on any axis-aligned grid with these label codes (``fine`` or the coarse one).
    """
    out = labels.copy()
    sp = fine.spacing
    for centre, radius in coarse.femoral_heads:
        side = _LIL if centre[0] > coarse.midline_x_mm else _RIL
        reach = radius + cup_mm
        lo = np.floor(fine.world_to_index(centre - reach)).astype(int)
        hi = np.ceil(fine.world_to_index(centre + reach)).astype(int) + 1
        lo = np.clip(lo, 0, fine.shape)
        hi = np.clip(hi, 0, fine.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        sub = out[box]
        kk = np.arange(sub.shape[0])[:, None, None]
        jj = np.arange(sub.shape[1])[None, :, None]
        ii = np.arange(sub.shape[2])[None, None, :]
        o = fine.index_to_world(lo.astype(float)) - centre
        dz = o[2] + kk * sp[2]
        dist = np.sqrt((o[0] + ii * sp[0]) ** 2 + (o[1] + jj * sp[1]) ** 2 + dz**2)
        bone = np.isin(sub, (_LIL, _RIL, _OTHER))
        sub[bone & (dist <= radius)] = _OTHER
        shell = bone & (dist > radius) & (dist <= reach)
        lateral = 1.0 if side == _LIL else -1.0
        opening = np.array([0.7 * lateral, -0.25, -0.67])
        opening /= np.linalg.norm(opening)
        cosine = (
            (o[0] + ii * sp[0]) * opening[0] + (o[1] + jj * sp[1]) * opening[1] + dz * opening[2]
        ) / np.maximum(dist, 1e-6)
        neck = shell & (cosine > np.cos(np.radians(open_deg)))
        cup = shell & ~neck & (sub == _OTHER) & (dz > -radius / 3.0)
        sub[cup] = side
        sub[neck] = _OTHER
    return out


def _ladder_seeds(img: np.ndarray, mixed: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Pure dense pieces of a mixed component, labelled by the coarse vote (0 elsewhere).

    Empty when no threshold leaves every bone of the component a fair share (15 %) of
    pure pieces -- then the coarse cores seed everything.
    """
    votes_all = np.bincount(prior[mixed].clip(0, 4), minlength=5)
    votes_all[0] = 0
    present = [c for c in range(1, 5) if votes_all[c] > 0.05 * votes_all.sum()]
    for hu in _SEED_LADDER_HU:
        pieces = _label_components(mixed & (img > hu), prior)
        pieces[pieces == 255] = 0
        cov = [np.count_nonzero(pieces == c) / max(votes_all[c], 1) for c in present]
        if cov and min(cov) >= 0.15:
            return pieces
    return np.zeros(img.shape, np.uint8)


def _peel_half_max(
    labels: np.ndarray, img: np.ndarray, spacing: np.ndarray, *, min_contrast_hu: float = 300.0
) -> np.ndarray:
    """Move bone surfaces to the half-maximum between cortex and surroundings.

    A surface voxel whose CT number is below the midpoint of the local cortex peak (within
    ~3 mm) and the local soft-tissue level is removed, in two passes. Only where the cortex
    stands out (``min_contrast_hu``); fatty bone without a bright cortex keeps its voxels.
    """
    out = labels.copy()
    size = tuple(
        int(v) for v in np.maximum(np.round(6.0 / np.asarray(spacing)[::-1]) // 2 * 2 + 1, 3)
    )
    peak = ndi.maximum_filter(np.where(labels > 0, img, -1024.0).astype(np.float32), size=size)
    for _ in range(2):
        bone = out > 0
        surf = bone & ~ndi.binary_erosion(bone, border_value=1)
        soft = ~bone
        w = ndi.uniform_filter(soft.astype(np.float32), size=size)
        level = ndi.uniform_filter(np.where(soft, img, 0.0).astype(np.float32), size=size)
        level = level / np.maximum(w, 1e-3)
        half = 0.5 * (peak + level)
        drop = surf & (img < half) & (peak - level >= min_contrast_hu) & (w > 0.05)
        if not drop.any():
            break
        out[drop] = 0
    return out


def _close_labels(
    labels: np.ndarray,
    radius_mm: float,
    spacing: np.ndarray,
    *,
    codes: tuple[int, ...] = (_SAC, _LIL, _RIL, _OTHER),
) -> np.ndarray:
    """Close and hole-fill bone labels; gains go only to voxels no bone holds."""
    out = labels.copy()
    for code in codes:
        m = labels == code
        if not m.any():
            continue
        sl = bbox_slices(m, pad=int(np.ceil(radius_mm / np.min(spacing))) + 2)
        sub = fill_holes(close_mm(m[sl], radius_mm, spacing))
        gain = sub & (out[sl] == 0)
        out[sl][gain] = code
    return _keep_connected(out, _SAC)


def _coarse_cores(coarse: CoarseAnatomy) -> np.ndarray:
    """Coarse labels eroded by one voxel each (the confident cores used as markers)."""
    out = np.zeros(coarse.labels.shape, np.uint8)
    for code in (_SAC, _LIL, _RIL, _OTHER):
        m = coarse.labels == code
        core = ndi.binary_erosion(m)
        if core.sum() < 0.2 * m.sum():
            core = m
        out[core] = code
    return out


def _keep_connected(labels: np.ndarray, code: int) -> np.ndarray:
    """Keep the largest component of one label; the rest becomes other bone."""
    m = labels == code
    lab, n = ndi.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        labels = labels.copy()
        labels[m & (lab != np.argmax(sizes))] = _OTHER
    return labels


def _sacral_length(sacrum: np.ndarray, fine: Grid, point: np.ndarray) -> float:
    """Largest distance (mm) of sacral voxels from the endplate centre (about its length)."""
    kji = np.argwhere(sacrum)
    if len(kji) == 0:
        return 0.0
    pts = fine.index_to_world(kji[:: max(1, len(kji) // 20000)])
    return float(np.percentile(np.linalg.norm(pts - point, axis=1), 99.5))


def _union(fits: list[ChannelFit], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for f in fits:
        out |= f.mask
    return out


def _frame_from_fits(normal: np.ndarray, fits: list[ChannelFit]) -> np.ndarray:
    by_name = {f.name: f for f in fits}
    left, right = [], []
    for level in ("S1", "S2", "S3", "S4"):
        a, b = by_name.get(f"left {level}"), by_name.get(f"right {level}")
        if a is not None and b is not None:
            left.append(a.center_lps)
            right.append(b.center_lps)
    if left:
        return sacral_axes(normal, left_points=np.array(left), right_points=np.array(right))
    return sacral_axes(normal)


def _si_joints(
    bones: np.ndarray, sacrum: np.ndarray, fine: Grid, *, gap_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """SI joint gap (2 left, 3 right) and surface flags (facing sacrum and ilium surfaces)."""
    sp = fine.spacing
    gap = np.zeros(bones.shape, np.uint8)
    flags = np.zeros(bones.shape, np.uint8)
    sl = bbox_slices(sacrum, pad=int(np.ceil((gap_mm + 2.0) / np.min(sp))) + 1)
    sub_sac = sacrum[sl]
    sub_bones = bones[sl]
    d_sac = distance_outside_mm(sub_sac, sp)
    for code, flag in ((_LIL, _FLAG_SIL), (_RIL, _FLAG_SIR)):
        il = sub_bones == code
        if not il.any():
            continue
        d_il = distance_outside_mm(il, sp)
        between = (d_sac <= gap_mm) & (d_il <= gap_mm) & ~sub_sac & ~il & (sub_bones == 0)
        gap[sl][between] = code
        faces = (sub_sac & (d_il <= gap_mm + 1.0)) | (il & (d_sac <= gap_mm + 1.0)) | between
        flags[sl][faces] |= flag
    return gap, flags


def _to_crop(
    codes: np.ndarray,
    flags: np.ndarray,
    solid: np.ndarray,
    fine: Grid,
    crop: Volume,
    *,
    region: Volume,
    outer: tuple[np.ndarray, np.ndarray, np.ndarray],
    outer_grid: Grid,
    bone_hu: float,
    refine: bool,
) -> dict[str, np.ndarray]:
    """Nearest-neighbour resampling of the fine label/flag images onto the crop grid.

    The fine grid covers ``region`` (a sub-block of the crop); the rest of the crop (the
    hip bones away from the sacrum) takes the coarse labels ``outer`` (labels, grown,
    inner; see :func:`_outer_labels`) of ``outer_grid``. With ``refine`` (a study finer
    than the coarse grid) a voxel takes the grown label where the study is brighter than
    ``bone_hu`` and the inner one elsewhere; otherwise simply the label.

    The crop is done in slabs of ``_SLAB`` slices along k, and the masks are written only
    where they hold voxels (:func:`~imaging.anatomy_grid.sparse_zeros`), so the working
    memory is a few slabs and the masks take memory about the size of what they hold.
    """
    off = np.rint(crop.world_to_index(region.origin[None])[0]).astype(int)
    rk, rj, ri = region.array.shape
    labels, grown, inner = outer
    outer_img = outer_grid.image(grown | (inner << 4) if refine else labels)
    # one resampling for codes (< 32), flags (3 bits) and solid
    packed = codes.astype(np.uint16) | (flags.astype(np.uint16) << 5)
    packed |= solid.astype(np.uint16) << 8
    fine_img = fine.image(packed)
    del packed
    shape = crop.array.shape
    names = (*MASK_NAMES[:5], *MASK_NAMES[6:])
    out = {name: sparse_zeros(shape, bool) for name in names}
    out["foramina"] = sparse_zeros(shape, np.uint8)
    for k0 in range(0, shape[0], _SLAB):
        k1 = min(k0 + _SLAB, shape[0])
        both = _nearest_onto(outer_img, crop, k_range=(k0, k1))
        if refine:
            c = np.where(crop.array[k0:k1] > bone_hu, both & 15, both >> 4).astype(np.uint8)
        else:
            c = both.astype(np.uint8)
        del both
        s = c > 0
        f = np.zeros(c.shape, np.uint8)
        a, b = max(k0, off[2]), min(k1, off[2] + rk)
        if a < b:  # the slab meets the fine grid's region
            sub = _nearest_onto(fine_img, region, k_range=(a - off[2], b - off[2]))
            box = (slice(a - k0, b - k0), slice(off[1], off[1] + rj), slice(off[0], off[0] + ri))
            c[box] = sub & 31
            f[box] = (sub >> 5) & 7
            s[box] = (sub >> 8) > 0
            del sub
        slab = slice(k0, k1)
        _put(out["bone"], slab, s | (c == _SAC) | (c == _LIL) | (c == _RIL) | (c == _OTHER))
        del s
        for name, code in (
            ("sacrum", _SAC),
            ("left_ilium", _LIL),
            ("right_ilium", _RIL),
            ("canal", _CANAL),
        ):
            _put(out[name], slab, c == code)
        is_foramen = c >= _FORAMEN0
        c -= np.uint8(_FORAMEN0 - 1)
        c[~is_foramen] = 0
        _put(out["foramina"], slab, c)
        for name, flag in (
            ("anterior_cortex", _FLAG_CORTEX),
            ("si_joint_left", _FLAG_SIL),
            ("si_joint_right", _FLAG_SIR),
        ):
            _put(out[name], slab, (f & flag) > 0)
    return {name: out[name] for name in MASK_NAMES}


#: Slices per slab when the masks are written onto the crop grid.
_SLAB = 16


def _put(out: np.ndarray, slab: slice, values: np.ndarray) -> None:
    """Write the non-zero bounding box of ``values`` into ``out[slab]`` (nothing if empty)."""
    nz = [np.flatnonzero(values.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if not len(nz[0]):
        return
    box = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)
    out[slab][box] = values[box]
