"""Canal, foramina, S1 endplate and anterior cortex on the fine axis-aligned grid.

Channels are what a ~12 mm ball cannot enter: the sacrum (with its channels open) is closed
with that ball and the original subtracted. The midline channel is the canal; elongated
lateral channels on each side, ordered by their distance below the S1 endplate, are the
S1-S4 foramina.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from imaging.anatomy_grid import Grid, bbox_slices, close_mm, dilate_mm, fill_holes, open_mm

#: Typical distance (mm) of the S1..S4 foramen centres below the S1 endplate centre in an
#: adult sacrum about 105 mm long (curved length), used to name foramina when some are missing.
_LEVEL_DEPTH_MM = (27.0, 50.0, 69.0, 86.0)
_REFERENCE_LENGTH_MM = 105.0
LEVELS = ("S1", "S2", "S3", "S4")


@dataclass(frozen=True)
class ChannelParams:
    """Sizes of the channel search (mm) and plausibility limits of a foramen."""

    hull_close_mm: float = 12.0
    open_mm: float = 1.6
    canal_half_width_mm: float = 12.0
    canal_min_ml: float = 0.5
    foramen_min_ml: float = 0.12
    foramen_max_ml: float = 12.0
    foramen_lateral_mm: tuple[float, float] = (7.0, 48.0)
    foramen_min_elongation: float = 1.25
    foramen_min_spacing_mm: float = 9.0
    foramen_min_ap_cos: float = 0.6


@dataclass
class ChannelFit:
    """One foramen found on the fine grid (world units)."""

    name: str
    level: str
    side: str
    center_lps: np.ndarray
    axis: np.ndarray
    radius_mm: float
    length_mm: float
    volume_ml: float
    mask: np.ndarray  # (K, J, I) bool on the fine grid


def find_channels(
    sacrum_open: np.ndarray,
    grid: Grid,
    *,
    midline_x_mm: float,
    exclude: np.ndarray,
    params: ChannelParams,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Canal mask and foramen candidate masks inside the sacrum.

    Parameters
    ----------
    sacrum_open : (K, J, I) bool ndarray
        The sacrum with its canal and foramina open (not filled).
    grid : Grid
    midline_x_mm : float
        LPS x of the midsagittal plane.
    exclude : (K, J, I) bool ndarray
        Voxels that cannot be channels (other bones).
    params : ChannelParams

    Returns
    -------
    canal : (K, J, I) bool ndarray
    candidates : list of (K, J, I) bool ndarray
        Lateral channels, not yet validated.
    """
    sp = grid.spacing
    sl = bbox_slices(sacrum_open, pad=2)
    hull = np.zeros(sacrum_open.shape, bool)
    hull[sl] = fill_holes(close_mm(sacrum_open[sl], params.hull_close_mm, sp))
    chan = hull & ~sacrum_open & ~exclude
    chan[sl] = open_mm(chan[sl], params.open_mm, sp)
    lab, n = ndi.label(chan)
    if n == 0:
        return np.zeros(chan.shape, bool), []
    vox_ml = grid.voxel_volume_mm3() / 1000.0
    dx = np.abs(grid.axis_mm("x") - midline_x_mm)
    near_mid = dx <= 4.0
    sizes = np.bincount(lab.ravel()) * vox_ml
    mids = [c for c in np.unique(lab[:, :, near_mid]) if c > 0 and sizes[c] >= params.canal_min_ml]
    canal = np.zeros(chan.shape, bool)
    lateral_pieces = np.zeros(chan.shape, bool)
    central = dx <= params.canal_half_width_mm
    if mids:
        main = max(mids, key=lambda c: sizes[c])
        comp = lab == main
        canal = comp & central[None, None, :]
        canal = _largest(canal)
        lateral_pieces = comp & ~central[None, None, :]
    candidates = []
    objs = ndi.find_objects(lab)
    for c in range(1, n + 1):
        if mids and c == max(mids, key=lambda m: sizes[m]):
            continue
        if sizes[c] < params.foramen_min_ml:
            continue
        m = np.zeros(chan.shape, bool)
        sl = objs[c - 1]
        m[sl] = lab[sl] == c
        candidates.append(m)
    if lateral_pieces.any():
        plab, pn = ndi.label(open_mm(lateral_pieces, params.open_mm, sp))
        for c in range(1, pn + 1):
            m = plab == c
            if m.sum() * vox_ml >= params.foramen_min_ml:
                candidates.append(m)
    return canal, candidates


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == np.argmax(sizes)


def fit_foramina(
    candidates: list[np.ndarray],
    grid: Grid,
    *,
    midline_x_mm: float,
    endplate_center: np.ndarray,
    sacral_length_mm: float,
    posterior_axis: np.ndarray,
    params: ChannelParams,
) -> list[ChannelFit]:
    """Validate lateral channels as foramina, fit their axes and name them by level.

    A foramen is elongated (PCA) roughly along the antero-posterior axis of the sacrum,
    lies 7-48 mm from the midline;
    per side the candidates are named S1..S4 by their distance below the endplate
    (by order when four are found, by the nearest typical depth otherwise).
    """
    vox_ml = grid.voxel_volume_mm3() / 1000.0
    fits: dict[str, list[tuple[float, ChannelFit]]] = {"left": [], "right": []}
    for m in candidates:
        kji = np.argwhere(m)
        vol = len(kji) * vox_ml
        if not params.foramen_min_ml <= vol <= params.foramen_max_ml:
            continue
        pts = grid.index_to_world(kji)
        center = pts.mean(axis=0)
        dxm = center[0] - midline_x_mm
        if not params.foramen_lateral_mm[0] <= abs(dxm) <= params.foramen_lateral_mm[1]:
            continue
        axis, elong, length = _principal_axis(pts - center, float(np.min(grid.spacing)))
        if elong < params.foramen_min_elongation:
            continue
        if abs(axis @ posterior_axis) < params.foramen_min_ap_cos:
            continue
        if axis @ posterior_axis < 0:
            axis = -axis
        radius = _disk_radius(pts - center, axis)
        depth = float(np.linalg.norm(center - endplate_center))
        side = "left" if dxm > 0 else "right"
        fit = ChannelFit(
            name="",
            level="",
            side=side,
            center_lps=center,
            axis=axis,
            radius_mm=radius,
            length_mm=length,
            volume_ml=vol,
            mask=m,
        )
        fits[side].append((depth, fit))
    out = []
    scale = max(sacral_length_mm, 40.0) / _REFERENCE_LENGTH_MM
    expected = np.array(_LEVEL_DEPTH_MM) * scale
    for side, items in fits.items():
        items = _thin_out(sorted(items, key=lambda t: t[0]), params.foramen_min_spacing_mm)
        levels = _assign_levels([d for d, _ in items], expected)
        for (_, fit), level in zip(items, levels, strict=True):
            if level is None:
                continue
            fit.level = level
            fit.name = f"{side} {level}"
            out.append(fit)
    return out


def _principal_axis(centered: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, float, float]:
    """Unit major axis, elongation (sqrt eigenvalue ratio) and extent (mm) of a point cloud."""
    if len(centered) < 4:
        return np.array([0.0, 1.0, 0.0]), 1.0, voxel_mm
    cov = centered.T @ centered / len(centered)
    w, v = np.linalg.eigh(cov)
    axis = v[:, -1]
    elong = float(np.sqrt(max(w[-1], 1e-9) / max(w[-2], 1e-9)))
    proj = centered @ axis
    length = float(proj.max() - proj.min() + voxel_mm)
    return axis, elong, length


def _disk_radius(centered: np.ndarray, axis: np.ndarray) -> float:
    """Radius (mm) of the uniform disk with the same mean squared distance from the axis."""
    radial = centered - np.outer(centered @ axis, axis)
    return float(np.sqrt(2.0 * np.mean(np.sum(radial**2, axis=1))))


def grow_channel(
    mask: np.ndarray,
    image: np.ndarray,
    grid: Grid,
    *,
    allowed: np.ndarray,
    reach_mm: float = 2.0,
    below_hu: float = 300.0,
) -> np.ndarray:
    """Give a channel back the wall voxels the search shaved off.

    Adds voxels within ``reach_mm`` of the channel that are darker than ``below_hu``
    (mostly channel content) and ``allowed``.
    """
    if not mask.any():
        return mask
    sl = bbox_slices(mask, pad=int(np.ceil(reach_mm / np.min(grid.spacing))) + 1)
    near = dilate_mm(mask[sl], reach_mm, grid.spacing)
    grown = mask.copy()
    grown[sl] |= near & (image[sl] < below_hu) & allowed[sl]
    return grown


def _thin_out(
    items: list[tuple[float, ChannelFit]], min_spacing_mm: float
) -> list[tuple[float, ChannelFit]]:
    """Drop the smaller of two candidates closer than ``min_spacing_mm`` (same side)."""
    kept: list[tuple[float, ChannelFit]] = []
    for depth, fit in items:
        clash = [
            i
            for i, (_, k) in enumerate(kept)
            if np.linalg.norm(k.center_lps - fit.center_lps) < min_spacing_mm
        ]
        if not clash:
            kept.append((depth, fit))
            continue
        i = clash[0]
        if fit.volume_ml > kept[i][1].volume_ml:
            kept[i] = (depth, fit)
    return sorted(kept, key=lambda t: t[0])


def _assign_levels(depths: list[float], expected: np.ndarray) -> list[str | None]:
    """Level names for candidates ordered by depth below the endplate."""
    if not depths:
        return []
    if len(depths) == len(LEVELS):
        return list(LEVELS)
    out: list[str | None] = [None] * len(depths)
    used: set[int] = set()
    pairs = sorted(
        ((abs(d - e), i, li) for i, d in enumerate(depths) for li, e in enumerate(expected)),
    )
    for _, i, li in pairs:
        if out[i] is not None or li in used:
            continue
        # keep the order: a deeper candidate cannot take a higher level than a shallower one
        if any(out[j] is not None and LEVELS.index(out[j]) >= li for j in range(i)):
            continue
        if any(out[j] is not None and LEVELS.index(out[j]) <= li for j in range(i + 1, len(out))):
            continue
        out[i] = LEVELS[li]
        used.add(li)
    return out


# -- endplate and anterior cortex -------------------------------------------------------------


def surface_normals(
    mask: np.ndarray, grid: Grid, *, sigma_mm: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels of a mask and their unit outward normals.

    Returns
    -------
    kji : (N, 3) int ndarray
        Array indices of the voxels of ``mask`` with a 6-neighbour outside it.
    normals : (N, 3) float ndarray
        Unit outward normals (LPS) from the gradient of the Gaussian-smoothed mask.
    """
    surf = surface_voxels(mask)
    kji = np.argwhere(surf)
    smooth = ndi.gaussian_filter(mask.astype(np.float32), sigma_mm / grid.spacing[::-1])
    g = np.empty((len(kji), 3))
    for a in range(3):  # a = x, y, z; the array axis is 2 - a
        g[:, a] = -np.gradient(smooth, grid.spacing[a], axis=2 - a)[surf]
    return kji, g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it."""
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def fit_endplate(
    filled: np.ndarray,
    grid: Grid,
    *,
    point: np.ndarray,
    normal: np.ndarray,
    midline_x_mm: float,
    canal: np.ndarray,
    ap_half_mm: float = 20.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Refine the S1 superior endplate: centre (LPS mm), unit normal (toward the head), support.

    The upward-facing surface of the S1 body near the coarse plane (within 20 mm of the
    midline, in front of the canal) is fitted with a plane, twice.
    """
    kji, nrm = surface_normals(filled, grid)
    pts = grid.index_to_world(kji)
    body = np.abs(pts[:, 0] - midline_x_mm) <= 20.0
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    c = np.asarray(point, dtype=np.float64)
    canal_pts = grid.index_to_world(np.argwhere(canal)) if canal.any() else None
    sel = np.zeros(len(pts), bool)
    for cos_min, band_mm in ((np.cos(np.radians(40.0)), 12.0), (np.cos(np.radians(25.0)), 4.0)):
        ap = np.cross(n, np.array([1.0, 0.0, 0.0]))  # in the midsagittal plane, posterior
        ap = ap / np.linalg.norm(ap)
        front = np.ones(len(pts), bool)
        if canal_pts is not None:
            near = canal_pts[np.abs((canal_pts - c) @ n) < 15.0]
            if len(near):
                canal_front = float(((near - c) @ ap).min())
                front = (pts - c) @ ap < canal_front - 1.0
        near_ap = np.abs((pts - c) @ ap) <= ap_half_mm
        sel = body & front & near_ap & (nrm @ n > cos_min) & (np.abs((pts - c) @ n) < band_mm)
        if sel.sum() < 10:
            break
        c, n = _plane_fit(pts[sel], n)
    return c, n, int(sel.sum())


def _plane_fit(points: np.ndarray, hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares plane through points: centroid and unit normal oriented like ``hint``."""
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    n = vt[-1]
    if n @ hint < 0:
        n = -n
    return c, n / np.linalg.norm(n)


def anterior_surface(
    filled: np.ndarray, grid: Grid, *, posterior_axis: np.ndarray, min_cos: float = 0.5
) -> np.ndarray:
    """Surface voxels of the sacrum whose outward normal faces anteriorly (``-posterior_axis``).

    Parameters
    ----------
    filled : (K, J, I) bool ndarray
        The sacrum with its canal and foramina filled (their walls are not its surface).
    grid : Grid
    posterior_axis : (3,) float ndarray
        The sacral frame's ``e_y``.
    min_cos : float
        Cosine of the largest angle between the outward normal and ``-posterior_axis``.
    """
    kji, nrm = surface_normals(filled, grid)
    out = np.zeros(filled.shape, bool)
    keep = kji[nrm @ -np.asarray(posterior_axis, dtype=np.float64) > min_cos]
    out[tuple(keep.T)] = True
    return out
