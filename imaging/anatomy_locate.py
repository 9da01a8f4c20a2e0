"""Coarse localisation of the sacrum, the hip bones and the S1 endplate (about 3 mm grid).

The steps, each a small function on an axis-aligned coarse grid (``i`` = +x patient left,
``j`` = +y posterior, ``k`` = +z head):

1. the body's left-right centre and antero-posterior middle;
2. the *posterior pelvic ring*: axial slices where one bony arch crosses the midline and
   reaches far to both sides -- the levels of the sacroiliac joints;
3. the hip bones: a threshold ladder finds the lowest CT number at which big lateral
   bones come apart from the midline ones (the ilia have dense cortex, the sacral lateral
   masses of older patients often do not); each femur comes off its hip bone the same
   way, and the femoral head is the largest ball of bone that the hip's dense bone (the
   acetabular lining) does not enter;
4. every bone voxel lateral to the first dense hip voxel met when walking out from the
   midline belongs to that hip (the SI joint is where the ilium's dense auricular cortex
   begins);
5. the S1 superior endplate: the lowest "bright endplate under a dark disc" line in the
   anterior column of the midsagittal slab, above the ring;
6. the sacrum: the remaining bone below the endplate plane connected to a midline seed
   at the lower SI-joint levels, without the arch of the last lumbar vertebra that hangs
   below that plane behind the canal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from imaging.anatomy_grid import Grid, close_mm, fill_holes
from imaging.errors import SegmentationError

#: Coarse label codes.
BACKGROUND, SACRUM, LEFT_HIP, RIGHT_HIP, OTHER_BONE = 0, 1, 2, 3, 4
_FEMUR = 5


@dataclass(frozen=True)
class LocateParams:
    """Thresholds and sizes of the coarse localisation (CT numbers in HU, lengths in mm)."""

    bone_hu: float = 150.0
    body_hu: float = -400.0
    solid_close_mm: float = 9.0
    ring_close_mm: float = 6.0
    ring_hu: tuple[float, ...] = (150.0, 120.0, 100.0)
    ring_reach_mm: float = 60.0
    midline_band_mm: float = 15.0
    hip_ladder_hu: tuple[float, ...] = (200.0, 250.0, 300.0, 350.0, 400.0, 500.0, 650.0)
    hip_min_ml: float = 15.0
    hip_piece_min_ml: float = 0.3
    hip_lateral_mm: float = 40.0
    hip_extend_hu: float = 150.0
    femur_min_ml: float = 3.0
    femur_drop_mm: float = 30.0
    hip_reach_mm: float = 25.0
    femur_below_mm: float = 50.0
    femur_lateral_mm: float = 55.0
    femur_min_radius_mm: float = 18.0
    femur_head_mm: tuple[float, float] = (15.0, 35.0)
    femur_shell_mm: float = 8.0
    arch_behind_mm: float = 18.0
    arch_half_width_mm: float = 30.0
    arch_depth_mm: float = 25.0
    arch_above_mm: float = 6.0
    arch_sacral_mm: float = 9.0


@dataclass
class CoarseAnatomy:
    """Result of the coarse localisation.

    Attributes
    ----------
    grid : Grid
        The coarse axis-aligned grid.
    labels : (K, J, I) uint8 ndarray
        0 background, 1 sacrum, 2 left hip bone, 3 right hip bone, 4 other bone.
    solid : (K, J, I) bool ndarray
        Bone with marrow filled (closing + hole filling).
    midline_x_mm : float
        LPS x of the midsagittal plane (mm).
    endplate_point : (3,) float ndarray, mm, LPS
        A point on the S1 superior endplate (its antero-posterior centre at the midline).
    endplate_normal : (3,) float ndarray
        Unit normal of the endplate, toward the head (in the midsagittal plane).
    dense_hu : float
        CT number at which the hip bones separate from the midline bones.
    femoral_heads : list of (centre, radius)
        The femoral heads found: centre ``(3,)`` mm LPS and radius (mm) of the ball each
        acetabulum holds.
    """

    grid: Grid
    labels: np.ndarray
    solid: np.ndarray
    midline_x_mm: float
    endplate_point: np.ndarray
    endplate_normal: np.ndarray
    dense_hu: float
    femoral_heads: list[tuple[np.ndarray, float]] = field(default_factory=list)


def locate_pelvis(image: np.ndarray, grid: Grid, *, params: LocateParams) -> CoarseAnatomy:
    """Find the sacrum, the hip bones and the S1 endplate on a coarse axis-aligned grid.

    Parameters
    ----------
    image : (K, J, I) float ndarray, HU
        The CT resampled on ``grid`` (about 3 mm voxels).
    grid : Grid
    params : LocateParams

    Returns
    -------
    CoarseAnatomy

    Raises
    ------
    SegmentationError
        When no posterior pelvic ring (sacrum between two ilia) is in the study.
    """
    sp = grid.spacing
    bone = image > params.bone_hu
    x0, y_mid = _body_reference(image, grid, body_hu=params.body_hu, bone=bone)
    ring, k_lo, k_hi = _find_ring(image, grid, x0=x0, y_mid=y_mid, params=params)
    solid = fill_holes(close_mm(bone, params.solid_close_mm, sp))
    dx = grid.axis_mm("x") - x0
    z_lo = grid.axis_mm("z")[k_lo] - 150.0
    z_hi = grid.axis_mm("z")[k_hi] + 80.0
    core, grown, hip_cores, dense_hu = _hip_dense(
        image, grid, dx=dx, z_range=(z_lo, z_hi), params=params
    )
    lateral = _lateral_of_dense(grown, solid, i_mid=int(np.argmin(np.abs(dx))))
    near_label, near_mm = _nearest_dense(grown, sp)
    seed = _sacral_seed(ring, dx, k_lo=k_lo, k_hi=k_hi, band_mm=params.midline_band_mm)
    point, normal = _endplate_plane(
        image, solid, grid, x0=x0, y_mid=y_mid, k_lo=k_lo, k_hi=k_hi, seed=seed
    )
    sacrum = _sacrum_region(solid & ~lateral, grid, seed=seed, point=point, normal=normal)
    sacrum = _without_lumbar_arch(
        sacrum, image, solid & ~lateral, grid, point=point, normal=normal, x0=x0, params=params
    )
    labels = np.zeros(image.shape, np.uint8)
    rest = solid & ~sacrum
    hip = np.where(rest & (near_mm <= params.hip_reach_mm), near_label, 0)
    hip[lateral & (near_label > 0)] = near_label[lateral & (near_label > 0)]
    labels[hip == 2] = LEFT_HIP
    labels[hip == 3] = RIGHT_HIP
    labels[rest & (labels == 0)] = OTHER_BONE
    labels[sacrum] = SACRUM
    femur, heads = _femoral_heads(
        solid, hip_cores, grid, x0=x0, endplate_z=float(point[2]), params=params
    )
    labels[femur & (labels != SACRUM)] = OTHER_BONE
    return CoarseAnatomy(
        grid=grid,
        labels=labels,
        solid=solid,
        midline_x_mm=float(x0),
        endplate_point=point,
        endplate_normal=normal,
        dense_hu=float(dense_hu),
        femoral_heads=heads,
    )


# -- 1. body reference ------------------------------------------------------------------------


def _body_reference(
    image: np.ndarray, grid: Grid, *, body_hu: float, bone: np.ndarray
) -> tuple[float, float]:
    """LPS x of the body's left-right centre and y of its antero-posterior middle (mm)."""
    body = image > body_hu
    if body.sum() < 0.05 * body.size:
        body = bone
    if not body.any():
        raise SegmentationError(
            "no sacrum found: the image holds no body or bone; check the series or place "
            "the landmarks by hand"
        )
    wx = body.sum(axis=(0, 1)).astype(np.float64)
    wy = body.sum(axis=(0, 2)).astype(np.float64)
    x0 = float(np.average(grid.axis_mm("x"), weights=wx))
    y_mid = float(np.average(grid.axis_mm("y"), weights=wy))
    return x0, y_mid


# -- 2. posterior pelvic ring -----------------------------------------------------------------


def _disk(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    n = np.floor(radius_mm / spacing[:2]).astype(int)
    yy, xx = np.mgrid[-n[1] : n[1] + 1, -n[0] : n[0] + 1]
    return (xx * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 <= radius_mm**2 + 1e-9


def _find_ring(
    image: np.ndarray, grid: Grid, *, x0: float, y_mid: float, params: LocateParams
) -> tuple[np.ndarray, int, int]:
    """The posterior pelvic ring, relaxing the bone threshold when thin joints break it."""
    error: SegmentationError | None = None
    for hu in params.ring_hu:
        try:
            return _ring_slices(image > hu, grid, x0=x0, y_mid=y_mid, params=params)
        except SegmentationError as exc:
            error = exc
    assert error is not None
    raise error


def _ring_slices(
    bone: np.ndarray, grid: Grid, *, x0: float, y_mid: float, params: LocateParams
) -> tuple[np.ndarray, int, int]:
    """Axial slices where one posterior bony arch crosses the midline and reaches both sides.

    Returns the ring voxels (bone of that arch) and the lowest and highest such slice.
    """
    dx = grid.axis_mm("x") - x0
    posterior = grid.axis_mm("y") >= y_mid - 10.0
    mid_cols = np.abs(dx) < params.midline_band_mm
    disk = _disk(params.ring_close_mm, grid.spacing)
    pad = disk.shape[0] // 2 + 1, disk.shape[1] // 2 + 1
    ring = np.zeros(bone.shape, bool)
    for k in range(bone.shape[0]):
        sl = bone[k] & posterior[:, None]
        if not sl[:, mid_cols].any():
            continue
        closed = ndi.binary_closing(np.pad(sl, [(pad[0], pad[0]), (pad[1], pad[1])]), disk)
        closed = closed[pad[0] : -pad[0], pad[1] : -pad[1]]
        lab, _ = ndi.label(closed)
        for comp in np.unique(lab[:, mid_cols]):
            if comp == 0:
                continue
            cols = np.nonzero((lab == comp).any(axis=0))[0]
            if dx[cols].min() < -params.ring_reach_mm and dx[cols].max() > params.ring_reach_mm:
                ring[k] |= (lab == comp) & sl
    ks = np.nonzero(ring.any(axis=(1, 2)))[0]
    if len(ks) == 0:
        raise SegmentationError(
            "no sacrum found: no bony pelvic ring (sacrum between both ilia) is in the study; "
            "it may not include the pelvis -- check the series or place the landmarks by hand"
        )
    # keep the longest run of consecutive ring slices
    runs = np.split(ks, np.nonzero(np.diff(ks) > 2)[0] + 1)
    run = max(runs, key=len)
    keep = np.zeros(bone.shape[0], bool)
    keep[run[0] : run[-1] + 1] = True
    ring &= keep[:, None, None]
    return ring, int(run[0]), int(run[-1])


# -- 3. hip bones -----------------------------------------------------------------------------


def _hip_dense(
    image: np.ndarray,
    grid: Grid,
    *,
    dx: np.ndarray,
    z_range: tuple[float, float],
    params: LocateParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Dense bone of each hip bone: 2 left, 3 right, 5 femur; 0 elsewhere.

    The lowest threshold of the ladder at which big lateral components exist on both sides
    without touching the midline defines the hip bones; their dense voxels are then grown
    into moderately bright bone (``hip_extend_hu``) in competition with the midline bones.
    """
    z = grid.axis_mm("z")
    in_z = (z >= z_range[0]) & (z <= z_range[1])
    vox_ml = grid.voxel_volume_mm3() / 1000.0
    dxg = np.broadcast_to(dx[None, None, :], image.shape)
    for hu in params.hip_ladder_hu:
        mask = (image > hu) & in_z[:, None, None]
        lab, n = ndi.label(mask)
        sides = _lateral_components(lab, n, dxg, vox_ml=vox_ml, params=params)
        big_left = any(s == 2 and v >= params.hip_min_ml for s, v in sides.values())
        big_right = any(s == 3 and v >= params.hip_min_ml for s, v in sides.values())
        if big_left and big_right:
            break
    else:
        raise SegmentationError(
            "no hip bones found beside the sacrum: the study may not include the pelvis -- "
            "check the series or place the landmarks by hand"
        )
    dense = np.zeros(image.shape, np.uint8)
    for comp, (side, vol) in sides.items():
        if vol >= params.hip_min_ml:
            dense[lab == comp] = side
    dense, hip_cores = _split_femurs(image, dense, grid, start_hu=hu, params=params)
    # grow into bright bone, competing with the midline components at this threshold
    markers = dense.astype(np.int32)
    midline = np.unique(lab[(np.abs(dxg) < params.midline_band_mm) & (lab > 0)])
    markers[np.isin(lab, midline) & (markers == 0)] = 9
    grow_mask = ((image > params.hip_extend_hu) & in_z[:, None, None]) | (markers > 0)
    grown = watershed(np.zeros(image.shape, np.float32), markers, mask=grow_mask)
    grown = np.where(np.isin(grown, (2, 3, _FEMUR)), grown, 0).astype(np.uint8)
    return dense, grown, hip_cores, float(hu)


def _lateral_components(
    lab: np.ndarray, n: int, dxg: np.ndarray, *, vox_ml: float, params: LocateParams
) -> dict[int, tuple[int, float]]:
    """Components lying clearly on one side: ``{label: (side code, volume mL)}``."""
    out: dict[int, tuple[int, float]] = {}
    if n == 0:
        return out
    sizes = np.bincount(lab.ravel())
    objs = ndi.find_objects(lab)
    for comp in range(1, n + 1):
        vol = sizes[comp] * vox_ml
        if vol < params.hip_piece_min_ml:
            continue
        sl = objs[comp - 1]
        xs = dxg[sl][lab[sl] == comp]
        if np.mean(np.abs(xs) < params.midline_band_mm) > 0.05:
            continue
        mean = float(xs.mean())
        if abs(mean) < params.hip_lateral_mm:
            continue
        out[comp] = (2 if mean > 0 else 3, vol)
    return out


def _split_femurs(
    image: np.ndarray, dense: np.ndarray, grid: Grid, *, start_hu: float, params: LocateParams
) -> tuple[np.ndarray, np.ndarray]:
    """Relabel the femur (5) where a side's dense bone splits into a hip above, femur below.

    Returns the relabelled dense map and the *hip cores*: per side (2/3) the pure hip piece
    at the lowest CT number where the femur comes off (the acetabulum's dense lining is
    part of it); zeros for a side where no femur comes off.
    """
    vox_ml = grid.voxel_volume_mm3() / 1000.0
    out = dense.copy()
    hip_cores = np.zeros(dense.shape, np.uint8)
    for side in (2, 3):
        cores = np.zeros(dense.shape, np.uint8)
        found = False
        for hu in (h for h in params.hip_ladder_hu + (800.0, 1000.0) if h >= start_hu):
            lab, _ = ndi.label((image > hu) & (dense == side))
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            big = [
                c for c in np.argsort(sizes)[::-1][:2] if sizes[c] * vox_ml >= params.femur_min_ml
            ]
            if len(big) < 2:
                continue
            zc = [ndi.center_of_mass(lab == c)[0] * grid.spacing[2] for c in big]
            if abs(zc[0] - zc[1]) < params.femur_drop_mm:
                continue
            hip, femur = (big[0], big[1]) if zc[0] > zc[1] else (big[1], big[0])
            cores[lab == hip] = side
            cores[lab == femur] = _FEMUR
            hip_cores[lab == hip] = side
            found = True
            break
        if not found:
            continue
        # the rest of this side's dense bone goes to the nearer of its hip and femur pieces
        _, idx = ndi.distance_transform_edt(cores == 0, return_indices=True)
        nearest = cores[tuple(idx)]
        out[dense == side] = nearest[dense == side]
    return out, hip_cores


def _lateral_of_dense(dense: np.ndarray, solid: np.ndarray, *, i_mid: int) -> np.ndarray:
    """Solid bone at or beyond the first dense hip voxel met walking out from the midline."""
    hit = np.zeros(dense.shape, bool)
    any_dense = dense > 0
    hit[:, :, i_mid:] = np.maximum.accumulate(any_dense[:, :, i_mid:], axis=2)
    hit[:, :, :i_mid] = np.maximum.accumulate(any_dense[:, :, :i_mid][:, :, ::-1], axis=2)[
        :, :, ::-1
    ]
    return hit & solid


def _nearest_dense(dense: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label of the nearest dense hip/femur voxel and its distance (mm) for every voxel."""
    if not dense.any():
        return np.zeros(dense.shape, np.uint8), np.full(dense.shape, np.inf)
    dist, idx = ndi.distance_transform_edt(
        dense == 0, sampling=tuple(spacing[::-1]), return_indices=True
    )
    near = dense[tuple(idx)]
    near = np.where(near == _FEMUR, OTHER_BONE, near).astype(np.uint8)
    return near, dist


def _femoral_heads(
    solid: np.ndarray,
    hip_cores: np.ndarray,
    grid: Grid,
    *,
    x0: float,
    endplate_z: float,
    params: LocateParams,
) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    """Balls of the femoral heads, far below the S1 endplate and lateral.

    The femoral head is a ball of cancellous bone cradled in the acetabulum's dense
    lining. Where the hip's dense bone came apart from the femur (``hip_cores``), the head
    is the largest ball of solid bone that this dense hip bone does not enter: it touches
    the acetabular lining above and the soft tissue around the exposed part of the head.
    Elsewhere the thickest point of the solid bone is taken, and its ball shrunk by
    ``femur_shell_mm`` (the acetabular roof thickens the bone above the head): a rough
    guess that only keeps the hip label off the head.

    Returns the bone inside the balls and the heads found from the acetabular lining
    (centre mm LPS, radius mm; plausible radii ``femur_head_mm``).
    """
    out = np.zeros(solid.shape, bool)
    heads: list[tuple[np.ndarray, float]] = []
    x = grid.axis_mm("x") - x0
    z = grid.axis_mm("z")
    low = z < endplate_z - params.femur_below_mm
    if not low.any():
        return out, heads
    kk, jj, ii = np.indices(solid.shape, sparse=True)
    sampling = tuple(grid.spacing[::-1])
    plain: np.ndarray | None = None
    for side, sel in ((2, x > params.femur_lateral_mm), (3, x < -params.femur_lateral_mm)):
        region = low[:, None, None] & sel[None, None, :]
        core = hip_cores == side
        if core.any():
            edt = ndi.distance_transform_edt(solid & ~core, sampling=sampling)
            shell, lo, hi = 0.0, params.femur_head_mm[0], params.femur_head_mm[1]
        else:
            if plain is None:
                plain = ndi.distance_transform_edt(solid, sampling=sampling)
            edt, shell, lo, hi = plain, params.femur_shell_mm, params.femur_min_radius_mm, np.inf
        e = np.where(region, edt, 0.0)
        radius = float(e.max())
        if not lo <= radius <= hi:
            continue
        k, j, i = np.unravel_index(int(np.argmax(e)), e.shape)
        d2 = (
            ((kk - k) * grid.spacing[2]) ** 2
            + ((jj - j) * grid.spacing[1]) ** 2
            + ((ii - i) * grid.spacing[0]) ** 2
        )
        out |= solid & (d2 <= (radius - shell) ** 2)
        if core.any():
            heads.append((grid.index_to_world(np.array([k, j, i], float)), radius))
    return out, heads


# -- 5. S1 endplate ---------------------------------------------------------------------------


def _sacral_seed(
    ring: np.ndarray, dx: np.ndarray, *, k_lo: int, k_hi: int, band_mm: float
) -> np.ndarray:
    """Midline ring voxels in the lower third of the ring slices (certainly sacrum)."""
    k_top = k_lo + max(1, (k_hi - k_lo) // 3)
    seed = np.zeros(ring.shape, bool)
    cols = np.abs(dx) < band_mm
    seed[k_lo : k_top + 1, :, cols] = ring[k_lo : k_top + 1, :, cols]
    if not seed.any():
        seed[k_lo : k_hi + 1, :, cols] = ring[k_lo : k_hi + 1, :, cols]
    if not seed.any():
        raise SegmentationError(
            "no sacrum found at the midline between the hip bones; check the series or place "
            "the landmarks by hand"
        )
    return seed


def _endplate_plane(
    image: np.ndarray,
    solid: np.ndarray,
    grid: Grid,
    *,
    x0: float,
    y_mid: float,
    k_lo: int,
    k_hi: int,
    seed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Point and normal (LPS) of the S1 superior endplate, searched in the midsagittal slab.

    Candidate lines in the (y, z) plane are scored by a bright band just below (endplate
    and subchondral bone) and a bright band beyond a dark band above (disc, then the L5
    endplate). Among the clearly scoring clusters the lowest one wins (the L4-L5 disc
    above scores as well).
    """
    sp = grid.spacing
    xs = grid.axis_mm("x")
    cols = np.abs(xs - x0) <= 7.5
    slab = ndi.gaussian_filter(image[:, :, cols].mean(axis=2), 0.5)  # (K, J)
    solid2 = solid[:, :, cols].any(axis=2)
    ys = grid.axis_mm("y")
    zs = grid.axis_mm("z")
    seed_z = zs[np.nonzero(seed.any(axis=(1, 2)))[0]]
    span = zs[k_hi] - zs[k_lo]
    z_min = max(zs[k_lo] + 0.25 * span, float(seed_z.min()))
    z_max = zs[k_hi] + 25.0
    step = min(1.5, float(sp[2]))
    centres = []
    for zc in np.arange(z_min, z_max + 1e-6, step):
        kc = int(round((zc - zs[0]) / sp[2]))
        if not 0 <= kc < solid2.shape[0]:
            continue
        row = np.nonzero(solid2[kc] & (ys >= y_mid - 10.0))[0]
        if len(row) == 0:
            continue
        y_front = ys[row[0]]
        for yc in np.arange(y_front + 3.0, y_front + 30.0, step):
            jc = int(round((yc - ys[0]) / sp[1]))
            if 0 <= jc < solid2.shape[1] and solid2[kc, jc]:
                centres.append((yc, zc))
    if not centres:
        raise SegmentationError(
            "the S1 endplate could not be found above the sacrum; place it by hand"
        )
    yz = np.array(centres)
    cands = []
    for th in np.radians(np.arange(-10.0, 71.0, 5.0)):
        score = _endplate_scores(slab, (ys[0], zs[0]), sp, yz, th, step)
        cands.append(np.column_stack([score, np.full(len(yz), th), yz]))
    arr = np.concatenate(cands)
    arr = arr[np.isfinite(arr[:, 0])]
    if len(arr) == 0:
        raise SegmentationError(
            "the S1 endplate could not be found above the sacrum; place it by hand"
        )
    best = arr[:, 0].max()
    good = arr[arr[:, 0] >= 0.6 * best] if best > 0 else arr[arr[:, 0] >= best]
    lowest_z = good[:, 3].min()
    cluster = good[good[:, 3] <= lowest_z + 10.0]
    pick = cluster[np.argmax(cluster[:, 0])]
    th, yc, zc = pick[1], pick[2], pick[3]
    normal = np.array([0.0, -np.sin(th), np.cos(th)])
    return np.array([x0, yc, zc]), normal


def _endplate_scores(
    slab: np.ndarray,
    origin_yz: tuple[float, float],
    sp: np.ndarray,
    yz: np.ndarray,
    th: float,
    step: float,
) -> np.ndarray:
    """Endplate-under-disc contrast (HU) of lines through ``yz`` ``(N, 2)`` at tilt ``th``."""
    n = np.array([-np.sin(th), np.cos(th)])  # (y, z): up and forward
    t = np.array([np.cos(th), np.sin(th)])
    s_along = np.arange(-12.0, 12.01, step)

    def band(d0: float, d1: float) -> np.ndarray:
        ds = np.arange(d0, d1 + 1e-6, step)
        offs = (s_along[:, None, None] * t + ds[None, :, None] * n).reshape(-1, 2)
        pts = yz[:, None, :] + offs[None, :, :]
        kk = (pts[..., 1] - origin_yz[1]) / sp[2]
        jj = (pts[..., 0] - origin_yz[0]) / sp[1]
        vals = ndi.map_coordinates(slab, [kk.ravel(), jj.ravel()], order=1, mode="nearest")
        return vals.reshape(len(yz), -1).mean(axis=1)

    below = band(-4.0, 0.0)
    best = np.full(len(yz), -np.inf)
    for gap in (6.0, 9.0, 12.0):
        disc = band(2.0, gap - 1.0)
        score = below + band(gap, gap + 4.0) - 2.0 * disc
        # a disc holds soft tissue: air or the edge of the field of view is no disc
        score[(disc < -150.0) | (disc > 300.0)] = -np.inf
        best = np.maximum(best, score)
    return best


# -- 6. sacrum --------------------------------------------------------------------------------


def _without_lumbar_arch(
    sacrum: np.ndarray,
    image: np.ndarray,
    candidates: np.ndarray,
    grid: Grid,
    *,
    point: np.ndarray,
    normal: np.ndarray,
    x0: float,
    params: LocateParams,
) -> np.ndarray:
    """The sacrum without the arch of the last lumbar vertebra.

    The laminae, spinous and inferior articular processes of L5 hang below the plane of
    the S1 endplate behind the canal, touching the sacrum at the facet joints. Behind the
    S1 body (``arch_behind_mm`` behind the endplate centre), within ``arch_half_width_mm``
    of the midline and less than ``arch_depth_mm`` below the plane, the bone that the
    vertebra above (``arch_above_mm`` above the plane) reaches through brighter bone than
    the sacrum (everything else of it, and what lies deeper than ``arch_sacral_mm``) is
    the vertebra's. Flooding runs in bone above ``bone_hu`` only, so it stops at the
    interlaminar gap and crosses a facet joint only where no darker gap shows.
    """
    kk, jj, ii = np.indices(sacrum.shape, sparse=True)
    o, s = grid.origin, grid.spacing
    x = o[0] + ii * s[0]
    y = o[1] + jj * s[1]
    z = o[2] + kk * s[2]
    height = (x - point[0]) * normal[0] + (y - point[1]) * normal[1] + (z - point[2]) * normal[2]
    zone = (
        (y - point[1] >= params.arch_behind_mm)
        & (np.abs(x - x0) <= params.arch_half_width_mm)
        & (height > -params.arch_depth_mm)
    )
    markers = np.zeros(sacrum.shape, np.int32)
    markers[sacrum & (~zone | (height < -params.arch_sacral_mm))] = 1
    markers[candidates & ~sacrum & (height > params.arch_above_mm)] = 2
    mask = ((image > params.bone_hu) & (sacrum | candidates)) | (markers > 0)
    flooded = watershed(-ndi.gaussian_filter(image, 0.5), markers, mask=mask)
    return sacrum & ~(zone & (flooded == 2))


def _sacrum_region(
    candidates: np.ndarray, grid: Grid, *, seed: np.ndarray, point: np.ndarray, normal: np.ndarray
) -> np.ndarray:
    """Bone below the endplate plane (+2 mm) connected to the midline seed."""
    kk, jj, ii = np.indices(candidates.shape, sparse=True)
    o, s = grid.origin, grid.spacing
    height = (
        (o[0] + ii * s[0] - point[0]) * normal[0]
        + (o[1] + jj * s[1] - point[1]) * normal[1]
        + (o[2] + kk * s[2] - point[2]) * normal[2]
    )
    below = candidates & (height < 2.0)
    lab, _ = ndi.label(below)
    hits = lab[seed & below]
    if hits.size == 0 or not hits.any():
        raise SegmentationError(
            "no sacrum found below the S1 endplate; check the series or place the landmarks by hand"
        )
    comp = np.bincount(hits[hits > 0]).argmax()
    return lab == comp
