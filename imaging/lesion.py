"""Lesion segmentation from a seed point, hand edits, and (re-exported) lesion metrics.

The radiologist clicks inside the lesion; :func:`grow_lesion` grows a face-connected region
of similar value from a 3 mm ball around that seed, on a cropped (``roi_radius_mm``),
lightly smoothed region of interest (ROI):

* **CT lytic** (soft tissue replacing marrow): from −30 HU (fat and air excluded) up to an
  *adaptive* limit half-way between the lesion and the marrow around it (at most 250 HU);
* **CT sclerotic**: the mirror image — from half-way between the marrow and the lesion
  (at least 300 HU) up to 1000 HU (cortex is brighter);
* **MR**: half-way towards whichever tissue around the lesion is brighter and darker
  (T1-hypointense marrow replacement or an enhancing lesion alike); on a side with no such
  tissue the band reaches ``mr_k_sigma`` standard deviations of the lesion's noise;
* **auto**: MR for non-CT series; on CT, lytic when the median of the smoothed image in the
  seed ball is at most 250 HU, sclerotic above.

How a region is grown (each step is a small private function below):

1. **Band** — grow in a narrow band around the seed's value, then repeat a few times:
   measure the lesion's level (median of the region's core) and the most frequent value of
   each competing tissue in a thin shell just outside the region, and move each limit to
   the midpoint. A half-way threshold puts the edge where a blurred step edge truly is. A
   new band whose region changes the lesion's level (it swallowed a neighbour) is refused.
2. **Confinement** — with a bone mask, growth starts inside it without its outermost voxel
   layer (surface voxels mix bone with the soft tissue outside and can look like lesion);
   the surface voxels the region touches, and up to ``breach_margin_mm`` of tissue beyond a
   real gap in the cortex, are then allowed. Without a bone mask, CT lytic growth is
   confined the same way to the cavity of a closed ≥300 HU shell if the seed lies in one.
3. **Edge** — smoothing is for connectivity only: voxels from one voxel outside to two
   inside the edge are re-decided on their own, unsmoothed value; voxels on a ramp between
   a darker and a brighter tissue (partial-volume layers) are dropped.
4. **Clean** — thin leaks are cut by an opening reconstructed into the region, cavities
   inside bone are filled, and what is not connected to the seed is dropped.
5. **Checks** — a region above ``max_volume_ml`` or reaching the ROI's edge is a leak (an
   error); a region whose volume changes a lot when the band moves by a quarter of the
   minimum contrast is reported as unstable (a warning, with ``stability``).

**Lytic lesion in marrow of its own density** — fatty, osteoporotic marrow mixes fat,
haematopoietic marrow and trabeculae (−100…300 HU within a few millimetres), and a good
share of it has a soft-tissue lesion's density, so no band separates them. When at least
``_MIXED_MARROW_FRACTION`` of the bone around the lesion is lesion-like, the lesion is
outlined instead by what sets it apart — it is one tissue, all its voxels near its level —
along rays from the seed: the edge in each direction is where the share of lesion-like
voxels drops half-way from the lesion's to the marrow's, and the lesion is the compact,
star-shaped region inside (:func:`_mixed_marrow_outline`). Such an outline always carries
a warning naming that share; above ``_RADIAL_UNRELIABLE`` it says the outline and volume
are not reliable.

An explicit ``band_hu`` switches step 1 off (:func:`rethreshold`). Editing: :func:`paint`, a
spherical brush in mm on any mask.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from imaging.anatomy_grid import release_free_memory, sparse_zeros
from imaging.errors import LesionSegmentationError
from imaging.lesion_metrics import LesionMetrics, lesion_metrics, max_feret_diameter_mm
from imaging.lesion_util import (
    Crop,
    bbox_crop,
    closing,
    crop_around,
    dilate,
    fill_holes,
    mask_on_grid,
    radius_vox,
    sub_volume,
)
from imaging.volume import Volume

__all__ = [
    "GrowMode",
    "GrowOptions",
    "LesionMetrics",
    "LesionResult",
    "grow_lesion",
    "lesion_metrics",
    "max_feret_diameter_mm",
    "paint",
    "rethreshold",
]

_log = logging.getLogger(__name__)

GrowMode = Literal["auto", "lytic", "sclerotic", "mr"]
_MODES = ("auto", "lytic", "sclerotic", "mr")

#: Outer limits of the CT bands, HU (DESIGN §5.2: lytic soft tissue above −30 HU; sclerotic
#: ~440–650 HU; cortex typically > 1000 HU). The adaptive limit always stays inside them.
LYTIC_BAND_HU = (-30.0, 250.0)
SCLEROTIC_BAND_HU = (300.0, 1000.0)

_SEED_BALL_MM = 3.0  # the seed's neighbourhood for its value and spread
_CT_MIN_CONTRAST_HU = 40.0  # less than this between lesion and bone: no adaptation
_MR_MIN_CONTRAST_FRACTION = 0.08  # of the ROI's 2nd–98th percentile range
_CT_SEED_K = 2.5  # first CT band: seed level +- this many standard deviations
_BONE_SHELL_HU = 300.0  # auto bone envelope (no bone mask): closed shell above this
_ENVELOPE_CLOSING_MM = 2.0
_SHELL_INNER_MM = 1.0
_SHELL_WIDTH_MM = 2.0
_SIDE_FRACTION = 0.05  # a side of the shell counts when it holds this fraction of its voxels
_ITERATIONS = 4
_BORDER_LEAK_VOXELS = 10
# lytic lesion in marrow of the same density, outlined along rays (_mixed_marrow_outline)
_MIXED_MARROW_FRACTION = 0.1  # of the marrow around the lesion at the lesion's density
_RADIAL_SEED_MM = 5.5  # first estimate of the lesion's level and noise: this ball
_RADIAL_K = 2.5  # lesion-like: within this many noise standard deviations of its level
_RADIAL_MIN_NOISE_HU = 10.0  # CT noise floor: a lesion is never taken as smoother
_RADIAL_DIRECTIONS = 400  # ~10 degrees apart
_EDGE_MEDIAN_DIRECTIONS = 15  # an edge radius is the median over this many directions
_RADIAL_CONE_DEG = 20.0  # each ray's profile is averaged over a cone of this width
_RADIAL_STEP_MM = 0.75
_RADIAL_MAX_MM = 45.0  # longest ray (a lesion of up to 90 mm)
_RADIAL_INSIDE_MM = 4.0  # the first inside level is read within this radius
_OUTSIDE_MM = (4.5, 12.0)  # the outside level is read this far beyond the edge
_RADIAL_ITERATIONS = 3
_RADIAL_CORE_FRACTION = 0.6  # the inside level is then read within this part of the edge
_RADIAL_UNRELIABLE = 0.3  # marrow at the lesion's density above which no edge is trusted
_RADIAL_MAX_OPEN = 0.1  # fraction of directions without an edge to trust the outline
_UNSTABLE_RATIO = 1.5
_OPEN_STRUCT = ndi.generate_binary_structure(3, 2)  # 18-neighbour ball: cuts 2-voxel sheets
_NEVER = np.float32(-3.0e38)  # value given to voxels where growth is not allowed


@dataclass(frozen=True)
class GrowOptions:
    """Settings of :func:`grow_lesion` (all user-adjustable).

    Parameters
    ----------
    mode : {"auto", "lytic", "sclerotic", "mr"}
        Which kind of lesion to grow (see the module description).
    band_hu : (float, float) or None
        Fixed value band ``(lower, upper)`` — HU for CT, image units for MR. ``None`` (the
        default) adapts the band to the lesion and the bone around it.
    mr_k_sigma : float
        MR only: half-width of the band, in standard deviations of the lesion's noise, on a
        side with no competing tissue (at least 8 % of the ROI's value range). Also the
        half-width of the first MR band around the seed.
    max_volume_ml : float
        A region larger than this is a leak, not a lesion (mL).
    roi_radius_mm : float
        Half-width of the box around the seed that growth is confined to (mm).
    breach_margin_mm : float
        How far the lesion may extend outside the bone mask through a cortical breach (mm).
    smoothing_voxels : float
        Gaussian smoothing of the ROI before thresholding, sigma in voxels along each axis
        (0 switches smoothing off).
    """

    mode: GrowMode = "auto"
    band_hu: tuple[float, float] | None = None
    mr_k_sigma: float = 2.5
    max_volume_ml: float = 150.0
    roi_radius_mm: float = 60.0
    breach_margin_mm: float = 3.0
    smoothing_voxels: float = 0.7

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise LesionSegmentationError(
                f"unknown lesion mode {self.mode!r}: choose one of {', '.join(_MODES)}"
            )
        if self.band_hu is not None:
            lo, hi = (float(v) for v in self.band_hu)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise LesionSegmentationError(
                    f"the band {lo:g}…{hi:g} is not valid: its lower limit must be below its "
                    "upper limit"
                )
            object.__setattr__(self, "band_hu", (lo, hi))
        checks = (
            (self.mr_k_sigma > 0, "mr_k_sigma must be positive"),
            (self.max_volume_ml > 0, "the volume cap must be positive"),
            (self.roi_radius_mm > 0, "the search radius must be positive"),
            (self.breach_margin_mm >= 0, "the breach margin cannot be negative"),
            (self.smoothing_voxels >= 0, "the smoothing cannot be negative"),
        )
        for ok, message in checks:
            if not ok:
                raise LesionSegmentationError(message)


@dataclass(frozen=True, eq=False)
class LesionResult:
    """The outcome of :func:`grow_lesion`.

    Attributes
    ----------
    mask : Volume
        uint8 lesion mask (1 = lesion) on the image's grid.
    mode_used : {"lytic", "sclerotic", "mr"}
    band : (float, float)
        The value band the final region was grown in (HU for CT).
    seed_value : float
        Median of the smoothed image in a 3 mm ball around the seed.
    seed_lps : (3,) float ndarray, mm, LPS
    warnings : tuple of str
        Things the radiologist should check (weak contrast, unstable outline, unconfined
        growth).
    stability : float
        Volume grown in the band widened by a quarter of the minimum contrast (10 HU on CT)
        divided by the volume grown in the band narrowed by as much: about 1.0–1.2 at a real
        edge, far more when the outline follows texture (warned above 1.5). 1.0 for a lesion
        outlined along rays in marrow of its own density (``mask.meta["outline"] ==
        "radial"``; ``band`` is then the lesion's level ± 2.5 noise standard deviations).
    """

    mask: Volume
    mode_used: str
    band: tuple[float, float]
    seed_value: float
    seed_lps: np.ndarray
    warnings: tuple[str, ...] = field(default_factory=tuple)
    stability: float = 1.0

    @property
    def volume_ml(self) -> float:
        """Lesion volume in mL (voxel count times voxel volume)."""
        return float(np.count_nonzero(self.mask.array)) * self.mask.voxel_volume_mm3 / 1000.0


# -- public API --------------------------------------------------------------------------------
def grow_lesion(
    image: Volume,
    seed_lps: np.ndarray | tuple[float, float, float],
    *,
    options: GrowOptions = GrowOptions(),  # noqa: B008 (frozen, immutable default)
    bone_mask: Volume | None = None,
) -> LesionResult:
    """Segment the lesion around a seed point by region growing.

    Parameters
    ----------
    image : Volume
        CT in HU (``modality == "CT"``) or MR (any other modality is treated as MR).
    seed_lps : (3,) float array-like, mm, LPS
        A point inside the lesion.
    options : GrowOptions
        Mode, band, caps and margins.
    bone_mask : Volume, optional
        Solid bone (cortex and marrow, e.g. the sacrum mask, non-zero inside), on any grid.
        Growth stays inside it, plus ``options.breach_margin_mm`` through a cortical breach;
        the seed must lie in it. Strongly advised for MR, where muscle next to the bone has
        a lesion's signal.

    Returns
    -------
    LesionResult
        The mask on ``image``'s grid, the mode and band used, warnings and stability.

    Raises
    ------
    LesionSegmentationError
        The seed is outside the study or outside bone; its value is not in the band; the
        mode does not fit the modality; the region leaked (volume cap or search box).
    """
    try:
        return _grow_lesion(image, seed_lps, options=options, bone_mask=bone_mask)
    finally:  # the stage's working memory goes back to the system, not only to the allocator
        release_free_memory()


def _grow_lesion(
    image: Volume,
    seed_lps: np.ndarray | tuple[float, float, float],
    *,
    options: GrowOptions,
    bone_mask: Volume | None,
) -> LesionResult:
    seed = np.asarray(seed_lps, dtype=np.float64).reshape(-1)
    if seed.shape != (3,) or not np.all(np.isfinite(seed)):
        raise LesionSegmentationError("the seed must be one point (x, y, z) in mm")
    where = f"({seed[0]:.1f}, {seed[1]:.1f}, {seed[2]:.1f}) mm"
    if not image.contains_world(seed):
        raise LesionSegmentationError(
            f"the seed {where} is outside the study; click inside the image"
        )
    is_ct = image.modality.upper() == "CT"
    if options.mode in ("lytic", "sclerotic") and not is_ct:
        raise LesionSegmentationError(
            f"{options.mode} mode needs a CT in Hounsfield units but this series is "
            f"{image.modality}: use MR or auto mode"
        )

    crop = crop_around(image, seed, radius_mm=options.roi_radius_mm)
    roi = sub_volume(image, crop)
    spacing = roi.spacing
    values = _smooth(roi.array, options.smoothing_voxels)
    seed_kji = _seed_index(roi, seed)
    seed_ball = _ball_mask(values.shape, seed_kji, spacing, _SEED_BALL_MM)
    seed_value = float(np.median(values[seed_ball]))
    seed_sd = float(np.std(values[seed_ball]))

    warnings: list[str] = []
    mode = _choose_mode(options.mode, is_ct=is_ct, seed_value=seed_value)
    unit = "HU" if is_ct else ""
    bone = None
    if bone_mask is not None:  # on the ROI's grid
        same = bone_mask.same_grid(image)
        bone = bone_mask.array[crop.slices] > 0 if same else mask_on_grid(bone_mask, roi)
    envelope = _bone_envelope(roi, values, seed_kji, bone=bone, mode=mode)
    if envelope is None and mode == "lytic":
        warnings.append(
            "no closed bone shell was found around the seed, so growth was not confined to "
            "bone: check that the outline does not spill into muscle"
        )

    outer = _outer_band(mode)
    lo, hi = options.band_hu if options.band_hu is not None else outer
    if not lo <= seed_value <= hi:
        raise LesionSegmentationError(_not_in_band_message(seed_value, (lo, hi), mode, unit))

    grower = _Grower(values, _inner(envelope, seed_kji), seed_ball, spacing=spacing, raw=roi.array)
    c_min = _min_contrast(mode, values)
    if options.band_hu is not None:
        band = options.band_hu
        region = grower.grow(band)
    else:
        band, region, more = _adaptive_grow(
            grower, spacing, mode, seed_value, seed_sd, outer, options, unit, c_min
        )
        if mode == "lytic":  # marrow of the lesion's own density: outline along rays
            radial = _mixed_marrow_outline(roi.array, seed_ball, seed_kji, spacing, envelope)
            if radial is not None:
                return _radial_result(image, crop, radial, seed, seed_value, warnings, options)
        warnings.extend(more)
    if region is None or not region.any():
        raise LesionSegmentationError(_not_in_band_message(seed_value, band, mode, unit))
    stability = _stability(grower, band, 0.25 * c_min)
    if stability > _UNSTABLE_RATIO:
        step = _fmt_value(0.25 * c_min, unit)
        warnings.append(
            f"the outline is not stable: moving the band by {step} changes the volume "
            f"{stability:.1f}-fold, so this is probably not the lesion's edge: check the "
            "outline, re-threshold or paint"
        )
    allowed = grower.allowed
    if envelope is not None:
        region, allowed = _through_breach(grower, region, band, envelope, options.breach_margin_mm)
    # the edge is refined inside bone (and its surface next to the region); outside it,
    # only what grew through a breach stays
    if allowed is not None:
        allowed = allowed | region
    if options.smoothing_voxels > 0:
        region = _refine_edge(region, roi.array, band, allowed)
    region = _clean(_drop_ramps(region, roi.array, band), seed_ball, allowed=allowed)
    _check_leak(region, crop, image, roi.voxel_volume_mm3, options)

    mask = image.with_array(_on_study_grid(region, crop, image.array.shape), modality="LABEL")
    return LesionResult(
        mask=replace(mask, meta={"source": "grow_lesion", "mode": mode, "band": list(band)}),
        mode_used=mode,
        band=(float(band[0]), float(band[1])),
        seed_value=seed_value,
        seed_lps=seed,
        warnings=tuple(warnings),
        stability=stability,
    )


def rethreshold(
    image: Volume,
    seed_lps: np.ndarray | tuple[float, float, float],
    band: tuple[float, float],
    *,
    options: GrowOptions = GrowOptions(),  # noqa: B008
    bone_mask: Volume | None = None,
) -> LesionResult:
    """Regrow the lesion from the same seed in a fixed band chosen by the user.

    Parameters
    ----------
    image, seed_lps, options, bone_mask
        As for :func:`grow_lesion`.
    band : (float, float)
        ``(lower, upper)`` value band, HU for CT.

    Raises
    ------
    LesionSegmentationError
        As for :func:`grow_lesion`, and when the band is empty or reversed.
    """
    fixed = (float(band[0]), float(band[1]))
    return grow_lesion(
        image, seed_lps, options=replace(options, band_hu=fixed), bone_mask=bone_mask
    )


def paint(
    mask: Volume,
    center_lps: np.ndarray | tuple[float, float, float],
    radius_mm: float,
    *,
    value: int = 1,
) -> Volume:
    """Set every voxel whose centre lies within a ball to ``value`` (paint, or erase with 0).

    Parameters
    ----------
    mask : Volume
        Any label or mask volume; it is not modified.
    center_lps : (3,) float array-like, mm, LPS
        Brush centre.
    radius_mm : float
        Brush radius in mm (physical, whatever the voxel size). The voxel holding the centre
        is always painted when the centre is inside the grid.
    value : int
        Label value to write (0 erases).

    Returns
    -------
    Volume
        A new volume on the same grid.
    """
    center = np.asarray(center_lps, dtype=np.float64).reshape(3)
    out = np.array(mask.array, copy=True)
    crop = crop_around(mask, center, radius_mm=max(float(radius_mm), 0.0))
    if any(s == 0 for s in crop.shape):
        return mask.with_array(out)
    kk, jj, ii = np.meshgrid(
        *(np.arange(a, b) for a, b in zip(crop.lo, crop.hi, strict=True)), indexing="ij"
    )
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    dist = np.linalg.norm(mask.index_to_world(ijk) - center, axis=1).reshape(kk.shape)
    brush = dist <= radius_mm
    if mask.contains_world(center):
        i, j, k = np.rint(mask.world_to_index(center)).astype(int)
        brush[k - crop.lo[0], j - crop.lo[1], i - crop.lo[2]] = True
    out[crop.slices][brush] = value
    return mask.with_array(out)


# -- growth ------------------------------------------------------------------------------------
class _Grower:
    """Face-connected region growing from the in-band voxels of the seed ball.

    ``allowed`` (bool, ROI shape, or None for everywhere) is where the region may grow.
    """

    def __init__(
        self,
        values: np.ndarray,
        allowed: np.ndarray | None,
        seed_ball: np.ndarray,
        *,
        spacing: np.ndarray,
        raw: np.ndarray | None = None,
    ):
        self.values = values
        self.raw = raw
        self.spacing = spacing
        self.allowed = allowed
        self._seed_ball = seed_ball
        self._seed_kji = np.argwhere(seed_ball)
        self._seed_values = values[seed_ball]
        self._image: sitk.Image | None = self._image_for(allowed)

    def _image_for(self, allowed: np.ndarray | None) -> sitk.Image:
        grow = self.values.astype(np.float32, copy=True)
        if allowed is not None:
            grow[~allowed] = _NEVER  # below any band
        return sitk.GetImageFromArray(grow)

    def grow(
        self,
        band: tuple[float, float],
        *,
        allowed: np.ndarray | None = None,
        clean: bool = False,
    ) -> np.ndarray | None:
        """The region connected to the seed ball within ``band`` (None: no seed in band).

        With ``clean``, thin leaks are cut and holes filled (:func:`_clean`).
        """
        lo, hi = float(band[0]), float(band[1])
        if allowed is None:
            if self._image is None:
                self._image = self._image_for(self.allowed)
            image = self._image
        else:  # the cached image is dropped first: two ROI-sized images would be held
            self._image = None
            image = self._image_for(allowed)
        ok = (self._seed_values >= lo) & (self._seed_values <= hi)
        mask = self.allowed if allowed is None else allowed
        if mask is not None:
            ok &= mask[tuple(self._seed_kji.T)]
        if not ok.any():
            return None
        seeds = [(int(i), int(j), int(k)) for k, j, i in self._seed_kji[ok]]
        out = sitk.ConnectedThreshold(image, seedList=seeds, lower=lo, upper=hi)
        region = sitk.GetArrayFromImage(out).view(bool)
        if not clean:
            return region
        return _clean(region, self._seed_ball, allowed=mask)


def _adaptive_grow(
    grower: _Grower,
    spacing: np.ndarray,
    mode: str,
    seed_value: float,
    seed_sd: float,
    outer: tuple[float, float],
    options: GrowOptions,
    unit: str,
    c_min: float,
) -> tuple[tuple[float, float], np.ndarray | None, list[str]]:
    """Grow, measure lesion and surrounding levels, move the limits to the midpoints, repeat.

    A new band is kept only while the region's core level stays at the lesion's level: a
    region whose level drifts has swallowed a neighbouring tissue, and the previous band is
    kept.
    """
    values = grower.values
    k = options.mr_k_sigma if mode == "mr" else _CT_SEED_K
    half = max(k * seed_sd, 0.25 * c_min)
    band = (max(outer[0], seed_value - half), min(outer[1], seed_value + half))
    region = grower.grow(band, clean=True)
    cap_vox = options.max_volume_ml * 1000.0 / float(np.prod(spacing))
    contrast_found = drifted = False
    for _ in range(_ITERATIONS):
        if region is None or not region.any() or region.sum() > cap_vox:
            break
        level, spread = _core_stats(values, region)
        noise = spread if grower.raw is None else _core_stats(grower.raw, region)[1]
        shell = _shell_values(values, region, spacing, grower)
        new_band, found = _band_from_levels(
            level,
            spread,
            shell,
            mode=mode,
            outer=outer,
            c_min=c_min,
            k=options.mr_k_sigma,
            noise=noise,
        )
        contrast_found = contrast_found or found
        _log.debug(
            "band %s: %d voxels, level %.4g, spread %.3g, shell %d -> %s",
            band,
            int(region.sum()),
            level,
            spread,
            len(shell),
            new_band,
        )
        if np.allclose(new_band, band, atol=0.01 * c_min):
            break
        new_region = grower.grow(new_band, clean=True)
        if new_region is None:
            break
        new_level, _ = _core_stats(values, new_region)
        if abs(new_level - level) > max(3.0 * spread, 0.5 * c_min):
            _log.debug("rejected %s: level drifts to %.4g", new_band, new_level)
            drifted = True
            break
        band, region = new_band, new_region
    warnings = []
    if not contrast_found or drifted:
        warnings.append(
            "the lesion has little contrast with the bone around it "
            f"(band {_fmt_band(band, unit)}): check its outline, re-threshold or paint"
        )
    return band, region, warnings


@dataclass(frozen=True, eq=False)
class _RadialOutline:
    """A lesion outlined along rays from the seed (:func:`_mixed_marrow_outline`)."""

    region: np.ndarray  # bool, ROI grid
    level: float  # lesion level, HU (median around the seed)
    noise: float  # lesion noise, HU (from neighbour differences, at least the floor)
    marrow_like: float  # fraction of the bone beyond the edge at the lesion's density
    open_fraction: float  # fraction of directions in which no edge was found


def _mixed_marrow_outline(
    raw: np.ndarray,
    seed_ball: np.ndarray,
    seed_kji: tuple[int, int, int],
    spacing_xyz: np.ndarray,
    envelope: np.ndarray | None,
) -> _RadialOutline | None:
    """Outline a lytic lesion in marrow that shares its density, or None when it does not.

    Fatty marrow (fat, haematopoietic marrow and trabeculae mixed, −100…300 HU within a few
    millimetres) holds many voxels at a soft-tissue lesion's density, and a region grown
    in any value band runs into them. What sets the lesion apart is that it is one tissue:
    *all* its voxels lie near its level, where only a fraction of the marrow's do. So the
    image becomes a lesion-likeness indicator (within ``_RADIAL_K`` noise standard
    deviations of the lesion's level, and in bone) whose profiles are read along rays from
    the seed, each averaged over a cone of neighbouring rays. Along every direction the
    edge is where the profile crosses half-way between its level inside the lesion and its
    level in the marrow just beyond (:func:`_profile_edges`), as for a blurred step. (A
    partial-volume voxel against marrow far from the lesion's level looks unlike the
    lesion even when mostly lesion, so in widely spread marrow the edge can fall a little
    inside.) The lesion is the star-shaped region
    inside those edges: seen from a seed near its centre, a lytic metastasis is a compact
    blob, and at a few millimetres per voxel only its coarse shape can be resolved anyway.

    The lesion's level is the median of the raw values within ``_RADIAL_SEED_MM`` of the
    seed; its noise comes from differences of neighbouring voxels there
    (:func:`_pair_noise`), which a partial-volume voxel barely affects.

    Returns None (the band threshold is the better outline) when less than
    ``_MIXED_MARROW_FRACTION`` of the bone around the lesion is lesion-like, or when the
    seed's surroundings are not at a lytic lesion's density.
    """
    spacing = np.asarray(spacing_xyz, dtype=np.float64)[::-1]  # along (k, j, i), mm
    start = _ball_mask(raw.shape, seed_kji, spacing_xyz, _RADIAL_SEED_MM) | seed_ball
    if envelope is not None:
        start &= envelope
    level = float(np.median(raw[start]))
    noise = _pair_noise(raw, start)
    if not LYTIC_BAND_HU[0] <= level <= LYTIC_BAND_HU[1]:
        return None
    directions = _directions()
    radii = np.arange(0.0, _RADIAL_MAX_MM, _RADIAL_STEP_MM)
    points = (
        (
            np.asarray(seed_kji, dtype=np.float64)[None, None, :]
            + directions[:, None, :] * radii[None, :, None] / spacing
        )
        .reshape(-1, 3)
        .T
    )
    like = raw.astype(np.float32)
    like -= np.float32(level)
    np.abs(like, out=like)
    like = like <= _RADIAL_K * noise
    if envelope is not None:
        like &= envelope
    profiles = _cone_weights() @ ndi.map_coordinates(
        like.astype(np.float32), points, order=1, mode="constant", cval=0.0
    ).reshape(len(directions), len(radii))
    edges = _profile_edges(profiles, radii)
    edges = np.median(edges[_direction_neighbours()], axis=1)
    marrow_like = _marrow_like_fraction(envelope, points, radii, edges, profiles)
    _log.debug(
        "rays: lesion %.0f ± %.0f, edge radius %s mm, marrow at the lesion's density %.2f",
        level,
        noise,
        np.percentile(edges, [5, 50, 95]).round(1),
        marrow_like,
    )
    if marrow_like < _MIXED_MARROW_FRACTION:
        return None
    region = _star_region(raw.shape, seed_kji, spacing, directions, edges)
    if envelope is not None:
        region &= envelope
    region = _seed_component(region, start, envelope)
    if not region.any():
        return None
    return _RadialOutline(
        region=region,
        level=level,
        noise=noise,
        marrow_like=marrow_like,
        open_fraction=float(np.mean(edges >= radii[-1] - _RADIAL_STEP_MM)),
    )


def _marrow_like_fraction(
    allowed: np.ndarray | None,
    points: np.ndarray,
    radii: np.ndarray,
    edges: np.ndarray,
    like_profiles: np.ndarray,
) -> float:
    """Fraction of the bone beyond the lesion's edge (``_OUTSIDE_MM``) that is lesion-like.

    ``like_profiles`` are the cone-averaged lesion-likeness profiles (zero outside bone);
    they are divided by the cone-averaged bone profiles over the same samples.
    """
    beyond = (radii[None, :] > edges[:, None] + _OUTSIDE_MM[0]) & (
        radii[None, :] < edges[:, None] + _OUTSIDE_MM[1]
    )
    if allowed is None:
        bone = np.ones_like(like_profiles)
    else:
        bone = ndi.map_coordinates(
            allowed.astype(np.float32), points, order=1, mode="constant", cval=0.0
        ).reshape(like_profiles.shape)
        bone = _cone_weights() @ bone
    total = float((bone * beyond).sum())
    return float((like_profiles * beyond).sum()) / total if total > 0 else 0.0


def _pair_noise(raw: np.ndarray, where: np.ndarray) -> float:
    """Noise standard deviation from differences of face-neighbour pairs inside ``where``, HU.

    A difference of two voxels of one tissue carries twice the noise variance and none of
    the level, so a voxel of partial volume at the lesion's edge pulls it far less than it
    pulls the spread of the values themselves. Robust (1.4826 MAD of the differences, which
    are centred on zero), at least the CT noise floor.
    """
    nz = [np.flatnonzero(where.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if not len(nz[0]):
        return _RADIAL_MIN_NOISE_HU
    box = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)  # only where ``where`` is
    x = raw[box].astype(np.float64)
    where = where[box]
    diffs = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = where[tuple(lo)] & where[tuple(hi)]
        diffs.append((x[tuple(hi)] - x[tuple(lo)])[both])
    d = np.concatenate(diffs)
    if len(d) < 6:
        return _RADIAL_MIN_NOISE_HU
    return max(1.4826 * float(np.median(np.abs(d))) / math.sqrt(2.0), _RADIAL_MIN_NOISE_HU)


@functools.cache
def _directions() -> np.ndarray:
    """``_RADIAL_DIRECTIONS`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(_RADIAL_DIRECTIONS) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / _RADIAL_DIRECTIONS)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack(
        [np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1
    )


@functools.cache
def _direction_neighbours() -> np.ndarray:
    """Indices of the ``_EDGE_MEDIAN_DIRECTIONS`` nearest directions of each direction.

    The median edge over them removes spikes: a ray that slips between two marrow patches
    of the lesion's density has no edge where its neighbours have one.
    """
    d = _directions()
    _, nearest = cKDTree(d).query(d, k=_EDGE_MEDIAN_DIRECTIONS)
    return nearest


@functools.cache
def _cone_weights() -> np.ndarray:
    """Gaussian weights (``_RADIAL_CONE_DEG``) that average each ray with its neighbours."""
    d = _directions()
    angle = np.arccos(np.clip(d @ d.T, -1.0, 1.0))
    w = np.exp(-0.5 * (angle / np.radians(_RADIAL_CONE_DEG)) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _seed_component(
    region: np.ndarray, seeds: np.ndarray, allowed: np.ndarray | None
) -> np.ndarray:
    """The face-connected parts of ``region`` holding a seed, cavities in ``allowed`` filled."""
    labels, _ = ndi.label(region, structure=ndi.generate_binary_structure(3, 1))
    keep = np.unique(labels[seeds & region])
    keep = keep[keep > 0]
    if not keep.size:
        return np.zeros_like(region)
    filled = fill_holes(np.isin(labels, keep))
    return filled if allowed is None else filled & allowed


def _profile_edges(profiles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Edge radius per direction (mm): where its profile crosses half-way from inside to outside.

    The level inside is that of all profiles within ``_RADIAL_CORE_FRACTION`` of their
    edge (first: within ``_RADIAL_INSIDE_MM`` of the seed); the level outside is read per
    direction from ``_OUTSIDE_MM`` beyond the current edge; edges and levels are refined
    together a few times.
    """
    n = len(profiles)
    rows = np.arange(n)
    inside = float(profiles[:, radii < _RADIAL_INSIDE_MM].mean())
    outside = np.full(n, float(np.median(profiles[:, -len(radii) // 4 :])))
    edges = np.full(n, radii[-1])
    for _ in range(_RADIAL_ITERATIONS + 1):
        half = 0.5 * (inside + outside)
        below = profiles < half[:, None]
        below[:, radii < _SEED_BALL_MM] = False
        idx = np.where(below.any(axis=1), below.argmax(axis=1), len(radii) - 1)
        prev = np.maximum(idx - 1, 0)
        a, b = profiles[rows, prev], profiles[rows, idx]
        t = np.clip((a - half) / np.maximum(a - b, 1e-6), 0.0, 1.0)
        edges = radii[prev] + t * (radii[idx] - radii[prev])
        beyond = (radii[None, :] > edges[:, None] + _OUTSIDE_MM[0]) & (
            radii[None, :] < edges[:, None] + _OUTSIDE_MM[1]
        )
        counts = beyond.sum(axis=1)
        outside = np.where(
            counts > 0, (profiles * beyond).sum(axis=1) / np.maximum(counts, 1), outside
        )
        within = radii[None, :] <= _RADIAL_CORE_FRACTION * edges[:, None]
        inside = float((profiles * within).sum() / max(int(within.sum()), 1))
    return edges


def _star_region(
    shape: tuple[int, ...],
    seed_kji: tuple[int, int, int],
    spacing: np.ndarray,
    directions: np.ndarray,
    edges: np.ndarray,
) -> np.ndarray:
    """Voxels inside the edge radius of their direction from the seed.

    The edge radius at a voxel's direction is interpolated (inverse distance) from the
    three nearest directions.
    """
    reach = float(edges.max()) + float(spacing.max())
    box = [
        (max(0, c - int(np.ceil(reach / s))), min(n, c + int(np.ceil(reach / s)) + 1))
        for c, s, n in zip(seed_kji, spacing, shape, strict=True)
    ]
    grids = np.meshgrid(*(np.arange(a, b) for a, b in box), indexing="ij")
    offsets = np.stack(
        [(g - c) * s for g, c, s in zip(grids, seed_kji, spacing, strict=True)], axis=-1
    ).reshape(-1, 3)
    rho = np.linalg.norm(offsets, axis=1)
    unit = offsets / np.maximum(rho, 1e-9)[:, None]
    dist, nearest = cKDTree(directions).query(unit, k=3)
    weight = 1.0 / np.maximum(dist, 1e-6)
    edge = (edges[nearest] * weight).sum(axis=1) / weight.sum(axis=1)
    crop = tuple(slice(a, b) for a, b in box)
    region = np.zeros(shape, dtype=bool)
    region[crop] = (rho <= edge).reshape(grids[0].shape)
    return region


def _radial_result(
    image: Volume,
    crop: Crop,
    outline: _RadialOutline,
    seed: np.ndarray,
    seed_value: float,
    warnings: list[str],
    options: GrowOptions,
) -> LesionResult:
    """The :class:`LesionResult` of a lesion outlined in mixed marrow, with its warnings."""
    _check_leak(outline.region, crop, image, image.voxel_volume_mm3, options)
    lo = outline.level - _RADIAL_K * outline.noise
    hi = outline.level + _RADIAL_K * outline.noise
    band = (float(max(lo, LYTIC_BAND_HU[0])), float(min(hi, LYTIC_BAND_HU[1])))
    share = f"{100 * outline.marrow_like:.0f} %"
    warnings = list(warnings)
    if outline.marrow_like >= _RADIAL_UNRELIABLE or outline.open_fraction > _RADIAL_MAX_OPEN:
        warnings.append(
            f"the lesion ({outline.level:.0f} ± {outline.noise:.0f} HU) can hardly be told "
            f"from the marrow around it ({share} of it has the lesion's density): its outline "
            "and volume are not reliable; check the outline, re-threshold or paint"
        )
    else:
        warnings.append(
            f"{share} of the marrow around the lesion ({outline.level:.0f} ± "
            f"{outline.noise:.0f} HU) has the lesion's density, so its edge was found where "
            "the share of lesion-like voxels drops, along rays from the seed: check the outline"
        )
    full = _on_study_grid(outline.region, crop, image.array.shape)
    mask = image.with_array(full, modality="LABEL")
    meta = {"source": "grow_lesion", "mode": "lytic", "band": list(band), "outline": "radial"}
    return LesionResult(
        mask=replace(mask, meta=meta),
        mode_used="lytic",
        band=band,
        seed_value=seed_value,
        seed_lps=seed,
        warnings=tuple(warnings),
        stability=1.0,
    )


def _min_contrast(mode: str, values: np.ndarray) -> float:
    """Smallest lesion-to-neighbour difference treated as an edge (HU, or MR units)."""
    if mode != "mr":
        return _CT_MIN_CONTRAST_HU
    p2, p98 = np.percentile(values, [2, 98])
    return _MR_MIN_CONTRAST_FRACTION * max(float(p98 - p2), 1e-6)


def _stability(grower: _Grower, band: tuple[float, float], step: float) -> float:
    """Volume ratio of the (cleaned) regions grown in ``band`` widened and narrowed by ``step``."""
    lo, hi = band
    if hi - lo <= 2 * step:
        return 1.0
    narrow = grower.grow((lo + step, hi - step), clean=True)
    wide = grower.grow((lo - step, hi + step), clean=True)
    if narrow is None or wide is None:
        return 1.0
    return float(wide.sum()) / max(float(narrow.sum()), 1.0)


def _core_stats(values: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """Median and standard deviation of the region away from its edge (its face-eroded core).

    Edge voxels mix lesion and neighbour (partial volume); leaving them out keeps the lesion
    level from creeping towards the neighbour as the region grows.
    """
    crop = bbox_crop(region, pad=1)
    sub = region[crop.slices]
    core = ndi.binary_erosion(sub, structure=ndi.generate_binary_structure(3, 1))
    inner = values[crop.slices][core] if core.sum() >= 0.2 * sub.sum() else values[region]
    return float(np.median(inner)), float(np.std(inner))


def _band_from_levels(
    level: float,
    spread: float,
    shell: np.ndarray,
    *,
    mode: str,
    outer: tuple[float, float],
    c_min: float,
    k: float,
    noise: float,
) -> tuple[tuple[float, float], bool]:
    """The band halfway between the lesion level and its competing neighbours.

    ``shell`` holds values just outside the current region. Those clearly brighter (darker)
    than the lesion are the competing tissue on that side, and the limit on that side moves
    to the midpoint between the lesion's level and their most frequent value. For CT,
    neighbours beyond what could move a limit inside the mode's outer band (cortex for a
    lytic lesion, fat for a sclerotic one) are left out: the outer band already excludes
    them. On MR, a side with no competitor reaches ``k`` times the lesion's unsmoothed
    ``noise`` (standard deviation), at least ``c_min``.
    """
    delta = max(2.0 * spread, 0.5 * c_min)
    n = max(len(shell), 1)
    top = 2.0 * outer[1] - level if mode != "mr" else np.inf
    bottom = 2.0 * outer[0] - level if mode != "mr" else -np.inf
    above = shell[(shell > level + delta) & (shell < top)]
    below = shell[(shell < level - delta) & (shell > bottom)]
    bin_width = c_min / 8.0
    hi_comp = _mode(above, bin_width) if len(above) >= _SIDE_FRACTION * n else None
    lo_comp = _mode(below, bin_width) if len(below) >= _SIDE_FRACTION * n else None
    if hi_comp is not None and hi_comp - level < c_min:
        hi_comp = None
    if lo_comp is not None and level - lo_comp < c_min:
        lo_comp = None
    if mode == "mr":
        far = max(k * noise, c_min)
        lo = 0.5 * (level + lo_comp) if lo_comp is not None else level - far
        hi = 0.5 * (level + hi_comp) if hi_comp is not None else level + far
    else:
        lo = 0.5 * (level + lo_comp) if lo_comp is not None else outer[0]
        hi = 0.5 * (level + hi_comp) if hi_comp is not None else outer[1]
    lo, hi = max(lo, outer[0]), min(hi, outer[1])
    return (float(lo), float(hi)), (hi_comp is not None) or (lo_comp is not None)


def _mode(values: np.ndarray, bin_width: float) -> float:
    """The most frequent value (peak of a lightly smoothed histogram), robust to the tails.

    Partial-volume voxels spread between two tissues and pull a mean or median towards the
    other tissue; the histogram peak stays on the tissue itself.
    """
    if len(values) < 20:
        return float(np.median(values))
    lo, hi = float(values.min()), float(values.max())
    bins = max(1, int(np.ceil((hi - lo) / bin_width)))
    counts, edges = np.histogram(values, bins=bins, range=(lo, lo + bins * bin_width))
    smooth = ndi.gaussian_filter1d(counts.astype(np.float64), sigma=1.0, mode="constant")
    peak = int(np.argmax(smooth))
    return float(0.5 * (edges[peak] + edges[peak + 1]))


def _shell_values(
    values: np.ndarray, region: np.ndarray, spacing: np.ndarray, grower: _Grower
) -> np.ndarray:
    """Smoothed values in a thin shell just outside ``region`` (where growth is allowed).

    The shell starts one voxel (at least 1 mm) out and is 2 mm (at least one voxel) thick.
    """
    r_in = [max(1, round(_SHELL_INNER_MM / s)) for s in spacing]
    r_out = [a + max(1, round(_SHELL_WIDTH_MM / s)) for a, s in zip(r_in, spacing, strict=True)]
    crop = bbox_crop(region, pad=max(r_out) + 1)
    sub = np.ascontiguousarray(region[crop.slices], dtype=np.uint8)
    img = sitk.GetImageFromArray(sub)
    inner = sitk.GetArrayViewFromImage(sitk.BinaryDilate(img, r_in, sitk.sitkBall)) > 0
    outer = sitk.GetArrayViewFromImage(sitk.BinaryDilate(img, r_out, sitk.sitkBall)) > 0
    shell = outer & ~inner
    if grower.allowed is not None:
        shell &= grower.allowed[crop.slices]
    return values[crop.slices][shell]


def _refine_edge(
    region: np.ndarray,
    raw: np.ndarray,
    band: tuple[float, float],
    allowed: np.ndarray | None,
) -> np.ndarray:
    """Decide the voxels near the region's edge on the unsmoothed image.

    Smoothing is for connectivity (noise cannot open a path) but it rounds small lesions:
    the half-way surface of a blurred ellipsoid lies inside the true one, and a thin dark or
    bright structure (a foramen wall) can look lesion-like once blurred. Voxels from one
    voxel outside to two voxels inside the edge are re-classified by their own (unsmoothed)
    value in ``band``.
    """
    crop = bbox_crop(region, pad=2)
    sub = region[crop.slices]
    x = raw[crop.slices]
    cross = ndi.generate_binary_structure(3, 1)
    inner = ndi.binary_erosion(sub, structure=cross, iterations=2)
    edge = ndi.binary_dilation(sub, structure=cross) & ~inner
    lesion_like = (x >= band[0]) & (x <= band[1])
    if allowed is not None:
        lesion_like &= allowed[crop.slices]
    out = region.copy()
    out[crop.slices] = (sub & ~edge) | (edge & lesion_like)
    return out


def _drop_ramps(region: np.ndarray, raw: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Remove voxels that sit on a ramp between a darker and a brighter tissue.

    A voxel whose two neighbours along one axis lie below and above the band (or above and
    below) is a partial-volume mixture of those tissues — the layer between dark cortex and
    bright marrow on T1, between fat and bone on CT — not lesion, even when its value is in
    the band. A lesion voxel always has a lesion-valued neighbour towards at least one side.
    """
    crop = bbox_crop(region, pad=1)
    x = raw[crop.slices]
    sub = region[crop.slices].copy()
    below = x < band[0]
    above = x > band[1]
    ramp = np.zeros_like(sub)
    for axis in range(3):
        lo_prev = np.roll(below, 1, axis=axis)
        lo_next = np.roll(below, -1, axis=axis)
        hi_prev = np.roll(above, 1, axis=axis)
        hi_next = np.roll(above, -1, axis=axis)
        ramp |= (lo_prev & hi_next) | (hi_prev & lo_next)
    sub &= ~ramp
    out = region.copy()
    out[crop.slices] = sub
    return out


def _clean(
    region: np.ndarray, seed_ball: np.ndarray, *, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Cut thin leaks, fill holes, keep what grew from the seed.

    Leaks along thin paths (a partial-volume layer inside the cortex, a crack) are cut by an
    opening with the 18-neighbour ball; the part that survives around the seed is dilated
    once (6-neighbour cross) back into the region, which restores the lesion's own edge.
    Cavities are filled afterwards (a leak around a closed shell is cut before it could be
    filled), except cavities reaching outside ``allowed``: a pocket of cortex or of a
    foramen wall hugged by the lesion is not lesion.
    """
    crop = bbox_crop(region, pad=2)
    sub = region[crop.slices]
    seeds = seed_ball[crop.slices]
    cross = ndi.generate_binary_structure(3, 1)
    opened = ndi.binary_opening(sub, structure=_OPEN_STRUCT)
    labels, _ = ndi.label(opened, structure=cross)
    keep = np.unique(labels[seeds & opened])
    keep = keep[keep > 0]
    if keep.size:
        sub = sub & ndi.binary_dilation(np.isin(labels, keep), structure=cross)
    filled = fill_holes(sub)
    if allowed is not None:
        cavities, _ = ndi.label(filled & ~sub, structure=cross)
        outside = np.unique(cavities[(cavities > 0) & ~allowed[crop.slices]])
        filled &= ~np.isin(cavities, outside)
    sub = filled
    labels, n = ndi.label(sub, structure=cross)
    if n > 1:
        keep = np.unique(labels[seeds & sub])
        sub = np.isin(labels, keep[keep > 0])
    out = np.zeros(region.shape, dtype=bool)
    out[crop.slices] = sub
    return out


def _check_leak(
    region: np.ndarray, crop: Crop, image: Volume, voxel_mm3: float, options: GrowOptions
) -> None:
    volume_ml = float(region.sum()) * voxel_mm3 / 1000.0
    if volume_ml > options.max_volume_ml:
        raise LesionSegmentationError(
            f"the region leaked outside the lesion (reached {volume_ml:.0f} mL, more than the "
            f"{options.max_volume_ml:g} mL cap): narrow the band or use paint/erase"
        )
    shape = image.array.shape
    touching = 0
    for axis in range(3):
        if crop.lo[axis] > 0:
            touching += int(np.take(region, 0, axis=axis).sum())
        if crop.hi[axis] < shape[axis]:
            touching += int(np.take(region, -1, axis=axis).sum())
    if touching > _BORDER_LEAK_VOXELS:
        raise LesionSegmentationError(
            "the region leaked outside the lesion (it reached the edge of the "
            f"{options.roi_radius_mm:g} mm search box around the seed): narrow the band or "
            "use paint/erase"
        )


# -- preparation -------------------------------------------------------------------------------
def _on_study_grid(region: np.ndarray, crop: Crop, shape: tuple[int, ...]) -> np.ndarray:
    """The ROI region as a uint8 mask on the study grid (memory taken only around it)."""
    full = sparse_zeros(shape, np.uint8)
    nz = [np.flatnonzero(region.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if len(nz[0]):
        box = tuple(slice(int(n[0]), int(n[-1]) + 1) for n in nz)
        at = tuple(slice(o + b.start, o + b.stop) for o, b in zip(crop.lo, box, strict=True))
        full[at] = region[box]
    return full


def _smooth(array: np.ndarray, sigma_voxels: float) -> np.ndarray:
    values = np.asarray(array, dtype=np.float32)
    if sigma_voxels <= 0:
        return values.copy()
    return ndi.gaussian_filter(values, sigma=sigma_voxels, truncate=3.0, mode="nearest")


def _seed_index(roi: Volume, seed: np.ndarray) -> tuple[int, int, int]:
    i, j, k = np.rint(roi.world_to_index(seed)).astype(int)
    shape = roi.array.shape
    return (
        int(np.clip(k, 0, shape[0] - 1)),
        int(np.clip(j, 0, shape[1] - 1)),
        int(np.clip(i, 0, shape[2] - 1)),
    )


def _ball_mask(
    shape: tuple[int, ...], center_kji: tuple[int, int, int], spacing: np.ndarray, r_mm: float
) -> np.ndarray:
    """Voxels within ``r_mm`` of a voxel centre, always with its six face neighbours."""
    sp = np.asarray(spacing, dtype=np.float64)[::-1]
    # only the ball's bounding box is evaluated (the ROI can hold tens of millions of voxels)
    reach = np.maximum(np.floor(r_mm / sp).astype(int), 1)
    lo = [max(int(c) - int(r), 0) for c, r in zip(center_kji, reach, strict=True)]
    hi = [min(int(c) + int(r) + 1, n) for c, r, n in zip(center_kji, reach, shape, strict=True)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_kji, sp, strict=True))
    steps = sum(np.abs(g - c) for g, c in zip(grids, center_kji, strict=True))
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = (d2 <= r_mm**2) | (steps <= 1)
    return out


def _choose_mode(requested: str, *, is_ct: bool, seed_value: float) -> str:
    if requested != "auto":
        return requested
    if not is_ct:
        return "mr"
    return "lytic" if seed_value <= LYTIC_BAND_HU[1] else "sclerotic"


def _outer_band(mode: str) -> tuple[float, float]:
    if mode == "lytic":
        return LYTIC_BAND_HU
    if mode == "sclerotic":
        return SCLEROTIC_BAND_HU
    return (-math.inf, math.inf)


def _bone_envelope(
    roi: Volume,
    values: np.ndarray,
    seed_kji: tuple[int, int, int],
    *,
    bone: np.ndarray | None,
    mode: str,
) -> np.ndarray | None:
    """Solid bone around the seed in the ROI (closed by 2 mm, cavities filled), or None.

    With ``bone`` (the bone mask on the ROI grid), that; without it, for lytic CT, the cavity
    of a closed shell of bone above 300 HU when the seed lies in one. Raises
    ``LesionSegmentationError`` when a bone mask is given and the seed is not in it.
    """
    spacing = roi.spacing
    if bone is not None:
        envelope = _enclosing(bone, seed_kji, spacing)
        if envelope is None:
            raise LesionSegmentationError(
                "the seed is not inside bone: click inside the lesion in the sacrum"
            )
        return envelope
    if mode != "lytic":
        return None
    return _enclosing(values > _BONE_SHELL_HU, seed_kji, spacing)


def _enclosing(
    solid: np.ndarray, seed_kji: tuple[int, int, int], spacing: np.ndarray
) -> np.ndarray | None:
    """``solid`` with its cavities filled, if that holds the seed.

    Failing that, the same after a 2 mm closing (small gaps in a shell closed); else None.
    """
    envelope = fill_holes(solid)
    if envelope[seed_kji]:
        return envelope
    envelope = fill_holes(closing(solid, spacing, _ENVELOPE_CLOSING_MM))
    return envelope if envelope[seed_kji] else None


def _inner(envelope: np.ndarray | None, seed_kji: tuple[int, int, int]) -> np.ndarray | None:
    """The envelope without its outermost voxel layer (kept whole if that loses the seed).

    Voxels on the bone surface mix bone with the soft tissue outside, and that mixture can
    have a lesion's value (muscle next to marrow on T1, thin cortex next to muscle on CT):
    growth along that layer would run round the whole bone. Growth therefore starts inside
    it; the layer is only allowed near the region (:func:`_through_breach`).
    """
    if envelope is None:
        return None
    inner = ndi.binary_erosion(envelope, structure=ndi.generate_binary_structure(3, 1))
    return inner if inner[seed_kji] else envelope


def _through_breach(
    grower: _Grower,
    region: np.ndarray,
    band: tuple[float, float],
    envelope: np.ndarray,
    margin_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Regrow with the bone surface next to the region allowed, and a breach beyond it.

    Growth started inside the bone without its outermost voxel layer (:func:`_inner`). Now
    the region may take the surface voxels it touches (a lesion reaching the cortex or a
    foramen wall) and, through them, tissue outside the bone up to ``margin_mm`` from the
    bone and from the region — an extra-osseous part joins only through a real gap.

    Returns the region and where it may now lie inside the bone (``grower.allowed`` plus
    the surface voxels next to the region).
    """
    inside = grower.allowed if grower.allowed is not None else envelope
    spacing = np.asarray(grower.spacing)
    pad = max(radius_vox(spacing, margin_mm)) + 2
    crop = bbox_crop(region, pad=pad)
    sub = region[crop.slices]
    env = envelope[crop.slices]
    cross = ndi.generate_binary_structure(3, 1)
    surface = inside.copy()
    surface[crop.slices] |= ndi.binary_dilation(sub, structure=cross) & env
    allowed = surface.copy()
    if margin_mm > 0:
        outside = dilate(sub, spacing, margin_mm) & dilate(env, spacing, margin_mm) & ~env
        allowed[crop.slices] |= outside
    grown = grower.grow(band, allowed=allowed)
    return (region if grown is None else grown), surface


def _fmt_value(value: float, unit: str) -> str:
    return f"{value:.0f} {unit}" if unit else f"{value:.3g}"


def _fmt_band(band: tuple[float, float], unit: str) -> str:
    if unit:
        return f"{band[0]:.0f}…{band[1]:.0f} {unit}"
    return f"{band[0]:.3g}…{band[1]:.3g}"


def _not_in_band_message(value: float, band: tuple[float, float], mode: str, unit: str) -> str:
    hint = {
        "lytic": "try sclerotic mode or move the seed",
        "sclerotic": "try lytic mode or move the seed",
        "mr": "move the seed into the lesion or set a band",
    }[mode]
    if mode == "lytic" and value < band[0]:
        hint = "it looks like fat or air: move the seed into the lesion"
    if mode == "sclerotic" and value > band[1]:
        hint = "it looks like cortical bone or metal: move the seed into the lesion"
    return (
        f"the seed's value {_fmt_value(value, unit)} is not in the {mode} band "
        f"{_fmt_band(band, unit)}: {hint}"
    )
