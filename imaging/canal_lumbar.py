"""The lumbar spinal canal above the sacrum, followed slice by slice in CT or T1 MR.

The anatomy segmentation finds the canal only inside the sacrum (where closing the sacrum mask
encloses it). A needle passing behind S1 or beside L5 must keep its margin from the canal above
it too, and the lumbar lordosis bends that canal away from the sacral canal's direction. This
module follows it in the image: starting from the top slice of the sacral canal, each slice
above keeps the fluid-density channel (the thecal sac; CSF, between epidural fat and bone) that
overlaps the canal of the slice below, allowed to move by about one voxel per slice. Where the
channel cannot be seen (a slice of noise, a gap), the canal of the slice below is carried up
unchanged, so the result never loses the canal.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from imaging.volume import Volume

#: CT band of the canal contents (HU): CSF (~0-15 HU), with the bounds half-way to epidural
#: fat (~-100 HU) and nearly to muscle (~50 HU).
CANAL_HU = (-41.0, 40.0)
#: Voxels next to the CSF within this band (not fat, not cortex) are taken in too: the canal's
#: rim, blurred with the bone around it (a canal grown by a voxel errs on the safe side).
#: On the phantom this leaves no canal voxel more than 0.5 mm deep outside the mask.
RIM_HU = (-41.0, 400.0)
#: How far the canal may drift sideways from one slice to the next (mm; at least one slice
#: thickness and two in-plane voxels: on a 3 mm CT the lumbar canal moves ~1 voxel per slice).
DRIFT_MM = 2.5
#: Smoothing of the CT before the band is applied (Gaussian sigma, mm).
SMOOTH_MM = 0.4
#: A slice whose channel is smaller than this fraction of the slice below (or larger than
#: ``MAX_GROWTH`` times the sacral canal's top) is not trusted; the slice below is carried up.
MIN_KEEP = 0.4
MAX_GROWTH = 1.8
#: The canal's outline over this many mm below its top slice starts the search.
SEED_MM = 8.0
#: Fluid at least twice this thick (mm, the radius of an opening disc) is a channel, not a
#: dark cortex (on T1 MR cortex and CSF are alike dark).
THICK_MM = 2.0
#: In-plane margin around the canal searched for the channel (mm).
SEARCH_MM = 30.0


#: T1-weighted MR: bands of the canal contents and of its rim as fractions of the fat level
#: (the crop's 98th intensity percentile). CSF is dark (~0.1), like cortex, which the
#: opening and the rim rule leave at the canal's edge (errs on the safe side); epidural fat
#: and marrow are bright (0.85-1), muscle ~0.35-0.4.
MR_CANAL_BAND = (-np.inf, 0.25)
MR_RIM_BAND = (-np.inf, 0.5)


#: Modalities that are no image of the body (masks, segmentations): nothing to follow.
NOT_IMAGES = ("LABEL", "SEG", "RTSTRUCT")


def _bands(
    image: Volume, canal: np.ndarray
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """Canal and rim intensity bands for the image's modality: CT numbers for a CT, fractions
    of the fat level for anything else (None: a mask, not an image)."""
    modality = image.modality.upper()
    if modality == "CT":
        return CANAL_HU, RIM_HU
    if modality in NOT_IMAGES:
        return None
    # any other series is read as a T1-weighted MR, as the anatomy reads it (an MR saved
    # without its modality, e.g. as NIfTI, comes as "OT")
    values = np.asarray(image.array)[:: max(1, image.array.shape[0] // 32)]
    fat = float(np.percentile(values, 98.0))
    if not fat > 0:
        return None
    return (
        (MR_CANAL_BAND[0], MR_CANAL_BAND[1] * fat),
        (MR_RIM_BAND[0], MR_RIM_BAND[1] * fat),
    )


def _head_axis(grid: Volume) -> tuple[int, int]:
    """Array axis (0..2 of [k, j, i]) closest to LPS +z, and +1/-1 for its headward sense."""
    zc = grid.direction[2, :]  # LPS z component of the i, j, k axes
    ax_ijk = int(np.argmax(np.abs(zc)))
    return 2 - ax_ijk, 1 if zc[ax_ijk] > 0 else -1


def follow_lumbar_canal(
    image: Volume, sacral_canal: np.ndarray, *, length_mm: float = 60.0
) -> np.ndarray:
    """The sacral canal continued cranially along the lumbar canal seen in a CT.

    Parameters
    ----------
    image : Volume
        CT (HU), or T1-weighted MR, on the grid of ``sacral_canal``.
    sacral_canal : (K, J, I) bool ndarray
        The canal inside the sacrum.
    length_mm : float
        How far above the sacral canal's top slice to follow the canal.

    Returns
    -------
    (K, J, I) bool ndarray
        ``sacral_canal`` plus the lumbar canal above it. Unchanged when the image is neither
        CT nor MR, or the canal is empty.
    """
    canal = np.asarray(sacral_canal, dtype=bool)
    bands = _bands(image, canal)
    if not canal.any() or bands is None:
        return canal
    canal_band, rim_band = bands
    axis, sense = _head_axis(image)
    vol = np.moveaxis(np.asarray(image.array), axis, 0)
    mask = np.moveaxis(canal, axis, 0)
    if sense < 0:
        vol, mask = vol[::-1], mask[::-1]
    spacing_kji = np.asarray(image.spacing, float)[::-1]
    in_plane = np.delete(spacing_kji, axis)
    through = float(spacing_kji[axis])
    layers = np.nonzero(mask.any(axis=(1, 2)))[0]
    top = int(layers.max())
    n_up = min(int(np.ceil(length_mm / through)), vol.shape[0] - 1 - top)
    if n_up <= 0:
        return canal
    # the sacrum's top is oblique, so the canal's top slices inside it are only part of the
    # canal: start from the fullest slice of the last few millimetres and follow from there
    lo = max(top - int(np.ceil(SEED_MM / through)), int(layers.min()))
    areas = mask[lo : top + 1].sum(axis=(1, 2))
    start = lo + int(np.argmax(areas))
    # where the thecal sac is seen (CSF in the canal), start from the slice holding most of
    # it within twice that reach: the top slices of the canal found in the sacrum can stray
    # into a bony channel behind it (on T1 a thin spinous process looks like fat-filled
    # canal), while the sac's fluid is the canal for sure
    lo_f = max(top - int(np.ceil(2.0 * SEED_MM / through)), int(layers.min()))
    sigma_seed = SMOOTH_MM / np.array([through, *in_plane])
    seen = ndi.gaussian_filter(vol[lo_f : top + 1].astype(np.float32), sigma_seed)
    sac = mask[lo_f : top + 1] & (seen >= canal_band[0]) & (seen <= canal_band[1])
    sac_areas = sac.sum(axis=(1, 2))
    if sac_areas.max() >= 0.5 * areas.max():
        start = lo_f + int(np.argmax(sac_areas))
    seed = mask[start]
    rows, cols = np.nonzero(mask[start : top + 1].any(axis=0))
    pad = np.ceil(SEARCH_MM / in_plane).astype(int)
    r0, r1 = max(rows.min() - pad[0], 0), min(rows.max() + pad[0] + 1, seed.shape[0])
    c0, c1 = max(cols.min() - pad[1], 0), min(cols.max() + pad[1] + 1, seed.shape[1])
    stop = top + 1 + n_up
    slab = vol[start + 1 : stop, r0:r1, c0:c1].astype(np.float32)
    t_reach = np.ceil(THICK_MM / in_plane).astype(int)
    ty, tx = np.mgrid[-t_reach[0] : t_reach[0] + 1, -t_reach[1] : t_reach[1] + 1]
    thick_disk = (ty * in_plane[0]) ** 2 + (tx * in_plane[1]) ** 2 <= THICK_MM**2
    sigma = SMOOTH_MM / np.array([through, *in_plane])
    smooth = ndi.gaussian_filter(slab, sigma)
    fluid = (smooth >= canal_band[0]) & (smooth <= canal_band[1])
    if image.modality.upper() != "CT":
        # on T1 the cortex is as dark as CSF: only thick dark tissue is fluid, so that no
        # ring of cortex is filled in as canal
        fluid = ndi.binary_opening(fluid, structure=thick_disk[None, :, :])
    rim_ok = (smooth >= rim_band[0]) & (smooth <= rim_band[1])
    drift = max(DRIFT_MM, through, 2.0 * float(np.max(in_plane)))
    reach = np.ceil(drift / in_plane).astype(int)
    yy, xx = np.mgrid[-reach[0] : reach[0] + 1, -reach[1] : reach[1] + 1]
    disk = (yy * in_plane[0]) ** 2 + (xx * in_plane[1]) ** 2 <= drift**2
    cross = ndi.generate_binary_structure(2, 1)
    out = mask.copy()
    prev = seed[r0:r1, c0:c1]
    cap = MAX_GROWTH * max(int(areas.max()), int(seed.sum()), 1)
    for n in range(stop - start - 1):
        below = out[start + 1 + n, r0:r1, c0:c1]
        near = ndi.binary_dilation(prev, structure=disk)
        # an opening drops the thin rims where fat blurs into bone at CSF-like values
        core = ndi.binary_opening(fluid[n] & near, structure=cross)
        layer = ndi.binary_fill_holes(core | below)
        labels, count = ndi.label(layer)
        if count:
            keep = np.unique(labels[(prev | below) & (labels > 0)])
            layer = np.isin(labels, keep[keep > 0])
        area = int(layer.sum())
        if area < MIN_KEEP * prev.sum() or area > cap:
            layer = prev | below
        rim = ndi.binary_dilation(layer, structure=cross) & rim_ok[n]
        out[start + 1 + n, r0:r1, c0:c1] = layer | rim
        prev = layer
    if sense < 0:
        out = out[::-1]
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))
