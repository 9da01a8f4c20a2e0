"""Anatomy of the synthetic sacrum phantom: dimensions, frames, shapes and the voxel renderer.

Everything here lives in *model* millimetres (the adult anatomy at ``scale = 1``) in two
frames that share one origin, the centre of the S1 superior endplate:

* the **pelvic frame** has the LPS axes (+x patient left, +y posterior, +z head); a world
  point is ``endplate_centre_lps + scale * q`` for a pelvic-frame point ``q``;
* the **sacral frame** is the pelvic frame tilted about x by the sacral slope: its e_z is
  the S1 endplate normal (tilted anteriorly from +z), e_y points posterior and cranial.

The sacrum is built around its body centreline, which leaves the endplate centre along -e_z,
runs straight for 30 mm and then bends anteriorly on a circular arc (the sacral kyphosis).
Points near it are addressed by *curved coordinates* ``(x, u, t)``: ``t`` is the arc length
below the endplate, ``u`` the offset along the local dorsal normal, ``x`` the sacral-frame x.
Each part of the sacrum is a table of widths/depths against ``t``, blended smoothly.

Soft tissue, ilia and the lumbar vertebrae are drawing-only shapes (smooth approximate
distances). The structures with analytic truth -- the foramina (straight circular
cylinders), the canal (tapered capsules) and the lesion (an ellipsoid) -- come in as arrays
built by :mod:`imaging.phantom`, the same arrays the truth is made of.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from imaging.phantom_shapes import (
    clamp01,
    interp1,
    sd_cylinder,
    sd_ellipse,
    sd_ellipsoid,
    sd_round_cone,
    smax,
    smin,
    value_noise,
)

# -- frames ---------------------------------------------------------------------------------
#: Sacral slope: angle between the S1 endplate and the axial plane (adult supine ~35-40 deg).
SACRAL_SLOPE_DEG = 38.0
_SIN_SS = math.sin(math.radians(SACRAL_SLOPE_DEG))
_COS_SS = math.cos(math.radians(SACRAL_SLOPE_DEG))
#: Sacral-frame axes expressed in the pelvic (LPS-aligned) frame: rows e_x, e_y, e_z.
SACRAL_AXES = np.array([[1.0, 0.0, 0.0], [0.0, _COS_SS, _SIN_SS], [0.0, -_SIN_SS, _COS_SS]])

# -- sacrum: body centreline and vertebral bodies ----------------------------------------------
#: The body centreline runs straight (along -e_z) for the first STRAIGHT_T_MM below the
#: endplate, then bends anteriorly on an arc of CURVE_RADIUS_MM (sacral kyphosis, ~55 deg).
STRAIGHT_T_MM = 30.0
CURVE_RADIUS_MM = 85.0
#: Arc length from the S1 endplate centre to the apex (gives a ~102 mm promontory-apex chord).
APEX_T_MM = 112.0
#: Levels (arc length, mm) at which the body and dorsal tables below are given.
_BODY_T = np.array([0.0, 14.0, 27.0, 50.0, 70.0, 88.0, 100.0, APEX_T_MM])
#: Half-width of the fused bodies (S1 endplate ~50 mm wide, narrowing to the apex).
_BODY_HALF_WIDTH = np.array([25.0, 22.5, 19.5, 15.5, 12.0, 9.0, 6.5, 4.0])
#: Half-depth of the bodies (S1 ~31 mm deep antero-posteriorly).
_BODY_HALF_DEPTH = np.array([15.5, 14.5, 13.5, 10.5, 8.5, 6.5, 5.0, 3.5])
#: Dorsal surface offset at the midline (laminae over the canal), mm along the dorsal normal.
_DORSAL_U = np.array([36.0, 35.0, 34.0, 28.0, 22.0, 15.0, 10.0, 6.0])
#: Fused intervertebral discs S1/2 ... S4/5: thin dense plates across the bodies (CT lines).
_FUSED_DISC_T = np.array([27.0, 50.0, 70.0, 88.0])
_FUSED_DISC_HALF_MM = 0.8
#: Rounding of the S1 endplate rim.
_ENDPLATE_ROUND_MM = 2.5

# -- sacrum: alae and lateral masses -----------------------------------------------------------
_LAT_T = np.array([0.0, 6.0, 14.0, 27.0, 40.0, 52.0, 64.0, 78.0, 92.0, 102.0, APEX_T_MM])
#: Half-width of the sacrum (alae ~106 mm wide at S1, tapering to the apex).
_LAT_HALF_WIDTH = np.array([45.0, 51.0, 53.0, 52.0, 49.0, 44.0, 37.0, 28.0, 18.0, 11.0, 6.0])
#: The lateral (auricular) border leans: wider anteriorly, narrower dorsally (per mm of u).
_LAT_WIDTH_PER_U = 0.3
_LAT_WIDTH_REF_U_MM = 10.0
#: Anterior (pelvic) surface: behind the body front by this much at the midline ...
_ANTERIOR_INSET_MM = 1.5
#: ... and receding dorsally beside the bodies (u += k (|x| - x0)^2): alae sweep backwards.
_ANTERIOR_SWEEP_PER_MM2 = 0.01
_ANTERIOR_SWEEP_FROM_MM = 12.0
#: Dorsal surface falls off laterally (u -= k x^2): convex back of the sacrum.
_DORSAL_FALL_PER_MM2 = 0.003
#: Sacral groove between the median and the lateral crests (posterior foramina open in it).
_DORSAL_GROOVE_MM = 4.0
_DORSAL_GROOVE_X_MM = 18.0
_DORSAL_GROOVE_WIDTH_MM = 7.0
#: Superior surface of the alae (arc length t at the body side, then sloping down laterally).
_ALA_TOP_T_MM = -1.0
_ALA_TOP_SLOPE = 0.06
_LAT_ROUND_MM = 6.0
#: Blend radius between the bodies and the lateral masses.
_BODY_LAT_BLEND_MM = 4.0

# -- cortex ------------------------------------------------------------------------------------
#: Cortical shell thickness of sacrum and ilia (adult ~1-2 mm) and of the lumbar vertebrae.
CORTEX_MM = 1.6
VERTEBRA_CORTEX_MM = 1.2

# -- foramina (anterior/posterior sacral foramina as one straight channel per level) -----------
#: (level, arc length t of the centre, lateral offset |x|, radius): S1 13 mm wide ... S4 8 mm,
#: closer to the midline from S1 to S4.
FORAMEN_LEVELS = (
    ("S1", 27.0, 23.5, 6.5),
    ("S2", 50.0, 21.0, 6.0),
    ("S3", 69.0, 18.5, 5.0),
    ("S4", 86.0, 16.0, 4.0),
)
#: Obliquity: the channel's dorsal end is medial to its pelvic end by this angle.
FORAMEN_OBLIQUITY_DEG = 8.0
#: The flat end caps lie this far beyond the point where the whole channel has left the bone.
FORAMEN_CAP_OVERHANG_MM = 0.5

# -- canal ---------------------------------------------------------------------------------------
#: Sacral canal levels (arc length t), circle radius and paramedian offset of the two circles
#: whose union is the canal cross-section (oval, ~21 mm wide x 14 mm deep at S1).
_CANAL_T = (0.0, 27.0, 50.0, 70.0, 86.0)
_CANAL_RADIUS = (7.0, 6.5, 5.5, 4.5, 3.5)
_CANAL_OFFSET = (4.0, 3.5, 3.0, 2.0, 1.0)
#: The canal is carved this deep into the back of the bodies.
_CANAL_BODY_OVERLAP_MM = 1.0
#: The lumbar canal (L4, L5): circle radius and paramedian offset (~27 x 17 mm oval).
_LUMBAR_CANAL_RADIUS_MM = 8.5
_LUMBAR_CANAL_OFFSET_MM = 5.5
#: The thecal sac (CSF) ends at upper S2; below it the canal holds epidural fat.
THECAL_SAC_END_T_MM = 45.0

# -- lumbar vertebrae (drawn for context: L5 above the S1 endplate, the bottom of L4) ---------
#: Height of the L5-S1 disc at its centre, and the lordotic angle between L5 and S1 endplates.
L5S1_DISC_MM = 11.0
L5S1_LORDOSIS_DEG = 12.0
L4L5_DISC_MM = 10.0
L4L5_LORDOSIS_DEG = 8.0
_VERT_BODY_HEIGHT_MM = 26.0
_VERT_BODY_HALF_WIDTH_MM = 25.0
_VERT_BODY_HALF_DEPTH_MM = 18.0
#: Minimum gap kept between the lumbar vertebrae and the sacrum (disc / facet joint).
_VERT_SACRUM_GAP_MM = 2.0

# -- ilia and SI joints ------------------------------------------------------------------------
#: Width of the sacroiliac joint space (cartilage + fluid) between sacrum and ilium.
SI_JOINT_GAP_MM = 3.0

# -- tissues -------------------------------------------------------------------------------------
AIR, FAT, SKIN, MUSCLE, BOWEL, GAS, FLUID, DISC = 0, 1, 2, 3, 4, 5, 6, 7
CANCELLOUS, CORTEX, LESION, FORAMEN, JOINT, VESSEL, EPIDURAL_FAT = 8, 9, 10, 11, 12, 13, 14
FUSED_DISC = 15
N_TISSUES = 16
#: Mean CT numbers (HU) per tissue.
CT_VALUES = np.array(
    [-1000, -100, 30, 50, 35, -950, 8, 80, 200, 1500, 45, -40, 40, 40, -90, 520], dtype=np.float64
)
#: T1-weighted MR intensities (arbitrary units, 0..1): fat and fatty marrow bright, cortex,
#: air and fluid dark, muscle intermediate, metastasis hypointense to marrow.
MR_VALUES = np.array(
    [0.0, 0.95, 0.55, 0.35, 0.40, 0.02, 0.12, 0.30, 0.85, 0.05, 0.30, 0.75, 0.20, 0.25, 0.92, 0.55],
    dtype=np.float64,
)
#: Texture amplitude of cancellous bone (HU / MR units) and of bowel contents.
CT_BONE_TEXTURE = 40.0
MR_BONE_TEXTURE = 0.05
_BONE_TEXTURE_CELL_MM = 2.2
_BOWEL_TEXTURE_CELL_MM = 4.0


# == frames ===================================================================================


def sacral_to_pelvic(points: np.ndarray) -> np.ndarray:
    """Sacral-frame points to pelvic-frame points, ``(N, 3)`` model mm."""
    return np.asarray(points, dtype=np.float64) @ SACRAL_AXES


def curved_to_sacral(x: np.ndarray, u: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Curved coordinates ``(x, u, t)`` to sacral-frame points ``(..., 3)``, model mm."""
    x, u, t = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, u, t)))
    phi = np.maximum(t - STRAIGHT_T_MM, 0.0) / CURVE_RADIUS_MM
    rho = CURVE_RADIUS_MM + u
    arc = t > STRAIGHT_T_MM
    sy = np.where(arc, -CURVE_RADIUS_MM + rho * np.cos(phi), u)
    sz = np.where(arc, -STRAIGHT_T_MM - rho * np.sin(phi), -t)
    return np.stack([x, sy, sz], axis=-1)


def curve_frame(t: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit dorsal normal and caudal tangent of the body centreline at arc length ``t``.

    Returns
    -------
    normal, tangent : (3,) float ndarray, sacral frame
    """
    phi = max(t - STRAIGHT_T_MM, 0.0) / CURVE_RADIUS_MM
    normal = np.array([0.0, math.cos(phi), -math.sin(phi)])
    tangent = np.array([0.0, -math.sin(phi), -math.cos(phi)])
    return normal, tangent


def _vertebra_frames() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origins (inferior endplate centres) and axes (rows) of L5 and L4, sacral frame."""

    def rot_x(angle_deg: float) -> np.ndarray:
        a = math.radians(angle_deg)
        # rotates e_z towards e_y (more upright: lordosis)
        return np.array(
            [[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]]
        )

    axes5 = rot_x(L5S1_LORDOSIS_DEG)  # rows: L5 axes in the sacral frame
    origin5 = np.array([0.0, -1.0, L5S1_DISC_MM])
    axes4 = rot_x(L5S1_LORDOSIS_DEG + L4L5_LORDOSIS_DEG)
    top5 = origin5 + axes5[2] * _VERT_BODY_HEIGHT_MM
    origin4 = top5 + axes4[2] * L4L5_DISC_MM
    return origin5, axes5, origin4, axes4


L5_ORIGIN, L5_AXES, L4_ORIGIN, L4_AXES = _vertebra_frames()


def canal_round_cones() -> np.ndarray:
    """The spinal canal from the top of L4 down to S4 as tapered capsules.

    Two paramedian chains (x = +-offset) of straight tapered capsules; the canal is their
    union. Nodes in the sacrum follow the body centreline; nodes in L4/L5 sit behind the
    vertebral bodies.

    Returns
    -------
    (M, 8) float ndarray
        Rows ``[ax, ay, az, bx, by, bz, ra, rb]``, sacral frame, model mm.
    """
    nodes = []  # (y_sacral, z_sacral, radius, offset) from the top down
    r_lumbar, off_lumbar = _LUMBAR_CANAL_RADIUS_MM, _LUMBAR_CANAL_OFFSET_MM
    vert_canal = _VERT_BODY_HALF_DEPTH_MM + r_lumbar - _CANAL_BODY_OVERLAP_MM
    for origin, axes in ((L4_ORIGIN, L4_AXES), (L5_ORIGIN, L5_AXES)):
        for h in (_VERT_BODY_HEIGHT_MM, 0.0):
            p = origin + axes[1] * vert_canal + axes[2] * h
            nodes.append((p[1], p[2], r_lumbar, off_lumbar))
    for t, r, off in zip(_CANAL_T, _CANAL_RADIUS, _CANAL_OFFSET, strict=True):
        b = float(np.interp(t, _BODY_T, _BODY_HALF_DEPTH))
        u = b + r - _CANAL_BODY_OVERLAP_MM
        p = curved_to_sacral(0.0, u, t)
        nodes.append((p[1], p[2], r, off))
    rows = []
    for side in (-1.0, 1.0):
        for (y0, z0, r0, o0), (y1, z1, r1, o1) in zip(nodes[:-1], nodes[1:], strict=True):
            rows.append([side * o0, y0, z0, side * o1, y1, z1, r0, r1])
    return np.array(rows, dtype=np.float64)


def foramen_axis_guesses() -> list[tuple[str, str, np.ndarray, np.ndarray, float]]:
    """Reference point, unit axis and radius of each foramen before its caps are placed.

    Returns
    -------
    list of (name, side, point, axis, radius_mm)
        ``point`` and ``axis`` in the sacral frame (model mm); ``axis`` points dorsally.
    """
    out = []
    alpha = math.radians(FORAMEN_OBLIQUITY_DEG)
    for level, t, x_abs, radius in FORAMEN_LEVELS:
        normal, _ = curve_frame(t)
        b = float(np.interp(t, _BODY_T, _BODY_HALF_DEPTH))
        sweep = max(x_abs - _ANTERIOR_SWEEP_FROM_MM, 0.0)
        u_front = -(b - _ANTERIOR_INSET_MM) + _ANTERIOR_SWEEP_PER_MM2 * sweep**2
        u_back = float(np.interp(t, _BODY_T, _DORSAL_U)) - _DORSAL_FALL_PER_MM2 * x_abs**2
        u_mid = 0.5 * (u_front + u_back)
        for side, sign in (("left", 1.0), ("right", -1.0)):
            point = curved_to_sacral(sign * x_abs, u_mid, t)
            axis = math.cos(alpha) * normal - sign * math.sin(alpha) * np.array([1.0, 0.0, 0.0])
            out.append((f"{side} {level}", side, point, axis / np.linalg.norm(axis), radius))
    return out


# == drawing primitives built once (module constants frozen into the kernels) ================


def _crest_and_processes() -> np.ndarray:
    """Median sacral crest and S1 superior articular processes as tapered capsules.

    Rows ``[ax, ay, az, bx, by, bz, ra, rb]`` in the sacral frame.
    """
    rows = []
    crest = [(2.0, 4.5), (20.0, 4.5), (40.0, 4.0), (60.0, 3.5), (80.0, 2.5)]  # (t, radius)
    for (t0, r0), (t1, r1) in zip(crest[:-1], crest[1:], strict=True):
        u0 = float(np.interp(t0, _BODY_T, _DORSAL_U)) + 1.0
        u1 = float(np.interp(t1, _BODY_T, _DORSAL_U)) + 1.0
        a = curved_to_sacral(0.0, u0, t0)
        b = curved_to_sacral(0.0, u1, t1)
        rows.append([*a, *b, r0, r1])
    for sign in (-1.0, 1.0):  # superior articular processes of S1 (facets for L5)
        a = curved_to_sacral(sign * 19.0, 26.0, 6.0)
        b = curved_to_sacral(sign * 20.0, 23.0, -11.0)
        rows.append([*a, *b, 7.0, 5.5])
    return np.array(rows, dtype=np.float64)


_SACRAL_EXTRAS = _crest_and_processes()


def _vertebra_parts() -> np.ndarray:
    """Posterior elements of a lumbar vertebra as tapered capsules in its own frame.

    Rows ``[ax, ay, az, bx, by, bz, ra, rb]``; the body is drawn separately.
    """
    parts = []
    for s in (-1.0, 1.0):
        parts += [
            [s * 13.0, 12.0, 17.0, s * 15.0, 28.0, 17.0, 6.5, 5.5],  # pedicle
            [s * 15.0, 29.0, 19.0, s * 2.0, 41.0, 16.0, 5.0, 4.5],  # lamina (upper)
            [s * 15.0, 29.0, 9.0, s * 2.0, 41.0, 8.0, 5.0, 4.5],  # lamina (lower)
            [s * 15.0, 22.0, 19.0, s * 44.0, 19.0, 21.0, 7.0, 5.5],  # transverse process
            [s * 18.0, 29.0, 20.0, s * 19.0, 30.0, 32.0, 5.5, 4.5],  # superior articular
            [s * 14.0, 36.0, 11.0, s * 15.5, 38.0, -7.0, 5.0, 4.0],  # inferior articular
        ]
    parts += [
        [0.0, 40.0, 16.0, 0.0, 62.0, 7.0, 5.5, 4.5],  # spinous process (upper edge)
        [0.0, 40.0, 8.0, 0.0, 60.0, 1.0, 4.5, 4.0],  # spinous process (lower edge)
    ]
    return np.array(parts, dtype=np.float64)


_VERT_PARTS = _vertebra_parts()


# == scalar shape kernels =====================================================================


@njit(cache=True)
def _curved(sy: float, sz: float) -> tuple[float, float, float]:
    """Arc length t, dorsal offset u and metric factor (dt -> mm) of a sacral-frame (y, z)."""
    if sz >= -STRAIGHT_T_MM:
        return -sz, sy, 1.0
    yy = sy + CURVE_RADIUS_MM
    zz = sz + STRAIGHT_T_MM
    rho = math.sqrt(yy * yy + zz * zz)
    t = STRAIGHT_T_MM + CURVE_RADIUS_MM * math.atan2(-zz, yy)
    return t, rho - CURVE_RADIUS_MM, rho / CURVE_RADIUS_MM


@njit(cache=True)
def _uncurved(u: float, t: float) -> tuple[float, float]:
    """Sacral-frame (y, z) of curved coordinates ``(u, t)`` (inverse of :func:`_curved`)."""
    if t <= STRAIGHT_T_MM:
        return u, -t
    phi = (t - STRAIGHT_T_MM) / CURVE_RADIUS_MM
    rho = CURVE_RADIUS_MM + u
    return -CURVE_RADIUS_MM + rho * math.cos(phi), -STRAIGHT_T_MM - rho * math.sin(phi)


@njit(cache=True)
def lateral_half_width(t: float, u: float) -> float:
    """Half-width of the sacrum (lateral border) at arc length ``t`` and offset ``u``."""
    return interp1(t, _LAT_T, _LAT_HALF_WIDTH) - _LAT_WIDTH_PER_U * (u - _LAT_WIDTH_REF_U_MM)


@njit(cache=True)
def sacral_envelope(sx: float, sy: float, sz: float) -> float:
    """Approximate signed distance to the sacrum's outer surface (no canal, no foramina).

    Parameters are a sacral-frame point in model mm.
    """
    t, u, metric = _curved(sy, sz)
    ax = abs(sx)
    a_body = interp1(t, _BODY_T, _BODY_HALF_WIDTH)
    b_body = interp1(t, _BODY_T, _BODY_HALF_DEPTH)
    d_body = sd_ellipse(sx, u, a_body, b_body)
    d_body = smax(d_body, -t * metric, _ENDPLATE_ROUND_MM)
    # lateral masses and alae: a rounded box in (x, u, t) with curved faces
    half_w = lateral_half_width(t, u)
    sweep = max(ax - _ANTERIOR_SWEEP_FROM_MM, 0.0)
    u_front = -(b_body - _ANTERIOR_INSET_MM) + _ANTERIOR_SWEEP_PER_MM2 * sweep * sweep
    u_back = interp1(t, _BODY_T, _DORSAL_U) - _DORSAL_FALL_PER_MM2 * ax * ax
    g = (ax - _DORSAL_GROOVE_X_MM) / _DORSAL_GROOVE_WIDTH_MM
    u_back -= _DORSAL_GROOVE_MM * math.exp(-g * g)
    t_top = _ALA_TOP_T_MM + _ALA_TOP_SLOPE * max(ax - 25.0, 0.0)
    qx = ax - half_w + _LAT_ROUND_MM
    if u_front - u > u - u_back:  # nearer the pelvic surface: correct for its slope
        qu = (u_front - u) / math.sqrt(1.0 + (2.0 * _ANTERIOR_SWEEP_PER_MM2 * sweep) ** 2)
    else:
        qu = (u - u_back) / math.sqrt(1.0 + (2.0 * _DORSAL_FALL_PER_MM2 * ax + 0.35) ** 2)
    qu += _LAT_ROUND_MM
    qt = (t_top - t) * metric + _LAT_ROUND_MM
    outside = math.sqrt(max(qx, 0.0) ** 2 + max(qu, 0.0) ** 2 + max(qt, 0.0) ** 2)
    d_lat = outside + min(max(qx, max(qu, qt)), 0.0) - _LAT_ROUND_MM
    d = smin(d_body, d_lat, _BODY_LAT_BLEND_MM)
    d = smax(d, (t - APEX_T_MM) * metric, 3.0)
    for n in range(_SACRAL_EXTRAS.shape[0]):
        r = _SACRAL_EXTRAS[n]
        d = smin(d, sd_round_cone(sx, sy, sz, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]), 3.0)
    return d


@njit(cache=True)
def _vertebra(lx: float, ly: float, lz: float) -> float:
    """Approximate signed distance to a lumbar vertebra (body + posterior elements)."""
    waist = 1.5 * math.sin(math.pi * min(max(lz / _VERT_BODY_HEIGHT_MM, 0.0), 1.0))
    d = sd_ellipse(lx, ly, _VERT_BODY_HALF_WIDTH_MM - waist, _VERT_BODY_HALF_DEPTH_MM - waist)
    d = smax(d, abs(lz - 0.5 * _VERT_BODY_HEIGHT_MM) - 0.5 * _VERT_BODY_HEIGHT_MM, 2.0)
    if ly > 0.0 or abs(lx) > 20.0:  # posterior elements never reach the front of the body
        for n in range(_VERT_PARTS.shape[0]):
            r = _VERT_PARTS[n]
            dp = sd_round_cone(lx, ly, lz, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
            d = smin(d, dp, 2.5)
    return d


@njit(cache=True)
def _to_frame(
    sx: float, sy: float, sz: float, origin: np.ndarray, axes: np.ndarray
) -> tuple[float, float, float]:
    dx = sx - origin[0]
    dy = sy - origin[1]
    dz = sz - origin[2]
    return (
        axes[0, 0] * dx + axes[0, 1] * dy + axes[0, 2] * dz,
        axes[1, 0] * dx + axes[1, 1] * dy + axes[1, 2] * dz,
        axes[2, 0] * dx + axes[2, 1] * dy + axes[2, 2] * dz,
    )


@njit(cache=True)
def lumbar_spine(sx: float, sy: float, sz: float) -> float:
    """Approximate signed distance to L5 and L4 (sacral-frame point, model mm)."""
    if sz < -25.0 or sy < -40.0:
        return 1e3
    lx, ly, lz = _to_frame(sx, sy, sz, L5_ORIGIN, L5_AXES)
    d = _vertebra(lx, ly, lz)
    lx, ly, lz = _to_frame(sx, sy, sz, L4_ORIGIN, L4_AXES)
    return min(d, _vertebra(lx, ly, lz))


@njit(cache=True)
def canal_distance(sx: float, sy: float, sz: float, canal: np.ndarray) -> float:
    """Signed distance to the union of canal capsules (exact outside the canal)."""
    d = 1e9
    for n in range(canal.shape[0]):
        r = canal[n]
        d = min(d, sd_round_cone(sx, sy, sz, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]))
    return d


@njit(cache=True)
def foramina_distance(sx: float, sy: float, sz: float, foramina: np.ndarray) -> float:
    """Signed distance to the union of foramen cylinders (exact outside them)."""
    d = 1e9
    for n in range(foramina.shape[0]):
        f = foramina[n]
        d = min(d, sd_cylinder(sx, sy, sz, f[0], f[1], f[2], f[3], f[4], f[5], f[6]))
    return d


@njit(cache=True, parallel=True)
def sacral_envelope_points(points: np.ndarray) -> np.ndarray:
    """:func:`sacral_envelope` on ``(N, 3)`` sacral-frame points (model mm)."""
    out = np.empty(points.shape[0])
    for n in prange(points.shape[0]):
        out[n] = sacral_envelope(points[n, 0], points[n, 1], points[n, 2])
    return out


# == ilia =====================================================================================
# Each iliac wing is a curved plate whose mid-surface, in every axial plane, is a circular arc
# from a posterior end (at the front of the SI joint, or at the greater sciatic notch lower
# down) to an anterior end (ASIS / AIIS / acetabular roof), bulging posterolaterally. The
# tables give the two ends (|x|, y) per pelvic-frame height z; the crest caps the plate.
_IL_Z = np.array([-130.0, -100.0, -82.0, -68.0, -55.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0])
_IL_POST_X = np.array([66.0, 68.0, 66.0, 58.0, 53.0, 54.0, 55.0, 54.0, 50.0, 50.0, 52.0])
_IL_POST_Y = np.array([-25.0, -18.0, -8.0, 6.0, 16.0, 12.0, 6.0, 10.0, 38.0, 48.0, 48.0])
_IL_ANT_X = np.array([90.0, 93.0, 95.0, 98.0, 101.0, 106.0, 113.0, 119.0, 120.0, 120.0, 116.0])
_IL_ANT_Y = np.array([-40.0, -45.0, -50.0, -54.0, -56.0, -58.0, -57.0, -56.0, -52.0, -48.0, -44.0])
#: Posterolateral bulge (sagitta) of the wing's arc.
_IL_BULGE_MM = 11.0
#: Height of the iliac crest along the wing (fraction 0 = posterior end, 1 = ASIS).
_IL_CREST_S = np.array([0.0, 0.1, 0.35, 0.6, 0.85, 1.0])
_IL_CREST_Z = np.array([16.0, 32.0, 50.0, 47.0, 30.0, 14.0])
#: Plate thickness: thin iliac fossa, thick posterior part, crest rim and acetabular roof.
_IL_THIN_MM = 3.5
_IL_POSTERIOR_EXTRA_MM = 10.0
_IL_CREST_EXTRA_MM = 7.0
_IL_BODY_EXTRA_MM = 26.0
#: Iliac tuberosity: the thick posterior ilium lateral and dorsal to the sacral lateral mass,
#: given in the sacrum's curved coordinates (lateral from the sacral border, u, t).
_IL_TUB_X_IN_MM = -4.0  # overlaps the sacrum: the SI-joint carve shapes the contact
_IL_TUB_X_OUT_MM = 14.0  # lateral thickness at the front of the joint ...
_IL_TUB_X_OUT_PER_U = 0.3  # ... growing dorsally
_IL_TUB_WRAP_MM = 4.0  # dorsally the tuberosity wraps medially behind the lateral mass
_IL_TUB_U_RANGE = (-6.0, 40.0)
_IL_TUB_T_RANGE = (-10.0, 60.0)
_IL_TUB_TOP_DROP_MM = 13.0
_IL_TUB_ROUND_MM = 9.0
#: No part of an ilium comes closer to the midline than this.
_ILIUM_MIN_ABS_X = 20.0


@njit(cache=True)
def _wing_arc(ax: float, y: float, z: float) -> tuple[float, float, float, float]:
    """Polar description of a point against the wing's mid-surface arc at height ``z``.

    Returns ``(distance to the arc, signed lateral offset from the circle, fraction along
    the arc 0..1 (unclipped), arc length)``, all in model mm except the fraction.
    """
    px = interp1(z, _IL_Z, _IL_POST_X)
    py = interp1(z, _IL_Z, _IL_POST_Y)
    qx = interp1(z, _IL_Z, _IL_ANT_X)
    qy = interp1(z, _IL_Z, _IL_ANT_Y)
    half = 0.5 * math.hypot(qx - px, qy - py)
    ux = (qx - px) / (2.0 * half)
    uy = (qy - py) / (2.0 * half)
    nx = -uy  # bulge direction: posterolateral
    ny = ux
    b = _IL_BULGE_MM
    rho = (half * half + b * b) / (2.0 * b)
    cx = 0.5 * (px + qx) - nx * (rho - b)
    cy = 0.5 * (py + qy) - ny * (rho - b)
    vx = ax - cx
    vy = y - cy
    r = math.hypot(vx, vy)
    ang = math.atan2(vx * ux + vy * uy, vx * nx + vy * ny)
    half_ang = math.asin(min(half / rho, 1.0))
    frac = (ang + half_ang) / (2.0 * half_ang)
    if abs(ang) <= half_ang:
        dist = abs(r - rho)
    else:
        ex = px if ang < 0.0 else qx
        ey = py if ang < 0.0 else qy
        dist = math.hypot(ax - ex, y - ey)
    return dist, r - rho, frac, 2.0 * half_ang * rho


@njit(cache=True)
def _wing_thickness(frac: float, z: float, z_crest: float) -> float:
    """Plate thickness (mm): thin fossa, thicker near the joint (first ~12 % of the arc),
    a rim under the crest, and the thick body above the acetabulum below z = -52 mm."""
    th = _IL_THIN_MM + _IL_POSTERIOR_EXTRA_MM * math.exp(-max(frac, 0.0) / 0.12)
    th += _IL_CREST_EXTRA_MM * math.exp(-max(z_crest - z, 0.0) / 6.0)
    low = clamp01((-52.0 - z) / 30.0) * clamp01((frac - 0.15) / 0.3)
    return th + _IL_BODY_EXTRA_MM * low


@njit(cache=True)
def _wing(ax: float, y: float, z: float) -> tuple[float, float, float, float, float]:
    """Iliac wing plate distance plus what the wing muscles need.

    Returns ``(plate distance, lateral offset, fraction along the arc, arc length, half
    thickness)``, model mm.
    """
    dist, off, frac, arclen = _wing_arc(ax, y, z)
    z_crest = interp1(frac, _IL_CREST_S, _IL_CREST_Z)
    half = 0.5 * _wing_thickness(frac, z, z_crest)
    return smax(dist - half, z - z_crest, 3.0), off, frac, arclen, half


@njit(cache=True)
def _tuberosity(ax: float, t: float, u: float, metric: float) -> float:
    """Approximate signed distance to the iliac tuberosity (curved coordinates).

    A rounded block beside the sacral lateral mass, thicker and wrapping medially dorsally.
    """
    xr = ax - lateral_half_width(t, u)
    u0, u1 = _IL_TUB_U_RANGE
    t1 = _IL_TUB_T_RANGE[1]
    # in front the block starts at the ala top; dorsally it rises above it (PSIS region)
    t0 = _IL_TUB_T_RANGE[0] + _IL_TUB_TOP_DROP_MM * (1.0 - clamp01((u - 12.0) / 16.0))
    x_in = _IL_TUB_X_IN_MM - _IL_TUB_WRAP_MM * clamp01((u - 22.0) / 15.0)
    x_out = _IL_TUB_X_OUT_MM + _IL_TUB_X_OUT_PER_U * (u - u0)
    rc = _IL_TUB_ROUND_MM
    qx = max(x_in - xr, xr - x_out) / 1.25 + rc
    qu = abs(u - 0.5 * (u0 + u1)) - 0.5 * (u1 - u0) + rc
    qt = (abs(t - 0.5 * (t0 + t1)) - 0.5 * (t1 - t0)) * metric + rc
    outside = math.sqrt(max(qx, 0.0) ** 2 + max(qu, 0.0) ** 2 + max(qt, 0.0) ** 2)
    return outside + min(max(qx, max(qu, qt)), 0.0) - rc


@njit(cache=True)
def ilium_raw(x: float, y: float, z: float, t: float, u: float, metric: float) -> float:
    """Approximate signed distance to one ilium before the SI-joint carve.

    ``x, y, z``: pelvic-frame point; ``t, u, metric``: its sacral curved coordinates.
    """
    ax = abs(x)
    d_plate = _wing(ax, y, z)[0]
    return smin(d_plate, _tuberosity(ax, t, u, metric), 8.0)


# == soft tissue ==============================================================================
#: Body outline (skin surface): superellipse per height, flattened dorsally (supine on a table).
_BODY_Z = np.array([-140.0, -90.0, -40.0, 0.0, 40.0, 80.0])
_BODY_HALF_WIDTH_TAB = np.array([142.0, 142.0, 138.0, 134.0, 130.0, 128.0])
_BODY_FRONT_Y = np.array([-108.0, -112.0, -118.0, -122.0, -124.0, -124.0])
_BODY_BACK_Y = 84.0
#: The outline is an ellipse reaching this far back, flattened by the table at the back.
_BODY_ELLIPSE_BACK_Y = 150.0
_BODY_BACK_ROUND_MM = 60.0
SKIN_MM = 2.5

#: Soft-tissue primitives drawn in order: rows ``[kind, tissue, a(3), b(3), ra, rb]`` in the
#: pelvic frame; kind 0 = tapered capsule from a to b, kind 1 = axis-aligned ellipsoid with
#: centre a and semi-axes b, kind 2 = like 0 but bowel with gas pockets.
_SOFT_ROWS: list[list[float]] = []


def _add_chain(kind: int, tissue: int, points: list[tuple[float, ...]], mirror: bool) -> None:
    for sign in (-1.0, 1.0) if mirror else (1.0,):
        for p, q in zip(points[:-1], points[1:], strict=True):
            _SOFT_ROWS.append(
                [kind, tissue, sign * p[0], p[1], p[2], sign * q[0], q[1], q[2], p[3], q[3]]
            )


# muscles (x, y, z, radius), mirrored to both sides
_add_chain(
    0,
    MUSCLE,
    [
        (38, -8, 80, 17),
        (44, -18, 30, 20),
        (52, -32, -20, 21),
        (64, -46, -70, 20),
        (74, -52, -130, 18),
    ],
    True,
)  # psoas / iliopsoas
_add_chain(
    0,
    MUSCLE,
    [(30, 62, 80, 24), (28, 62, 35, 22), (24, 60, -10, 16), (16, 60, -50, 9), (8, 52, -80, 3)],
    True,
)  # erector spinae / multifidus
_add_chain(0, MUSCLE, [(26, 5, -58, 9), (60, 15, -75, 14), (110, 5, -95, 11)], True)  # piriformis
_SOFT_ROWS.append([1, MUSCLE, 82.0, 52.0, -75.0, 58.0, 30.0, 70.0, 0.0, 0.0])  # gluteus maximus
_SOFT_ROWS.append([1, MUSCLE, -82.0, 52.0, -75.0, 58.0, 30.0, 70.0, 0.0, 0.0])
# pelvic organs
_SOFT_ROWS.append([1, FLUID, 0.0, -72.0, -118.0, 42.0, 32.0, 26.0, 0.0, 0.0])  # bladder
_add_chain(
    2,
    BOWEL,
    [
        (0, -2, -130, 15),
        (0, -8, -100, 17),
        (6, 0, -70, 16),
        (-20, -20, -45, 16),
        (-40, -60, -30, 15),
    ],
    False,
)  # rectum / sigmoid
for _loop in (
    [(-60, -80, 50, 14), (-20, -95, 40, 15), (25, -90, 55, 14), (60, -75, 40, 15)],
    [(-70, -60, 10, 14), (-30, -85, 0, 15), (15, -80, 15, 14), (55, -60, 0, 14)],
    [(-55, -75, -35, 13), (-15, -90, -50, 14), (30, -80, -40, 14), (65, -55, -30, 13)],
    [(40, -35, 35, 12), (10, -50, 20, 13), (-25, -45, 30, 12)],
    [(-50, -90, -75, 13), (-10, -95, -85, 13), (35, -90, -75, 13)],
):
    _add_chain(2, BOWEL, list(_loop), False)
# vessels: common, internal and external iliac arteries and veins
_add_chain(
    0,
    VESSEL,
    [
        (14, -38, 80, 7),
        (30, -34, 20, 6),
        (48, -40, -30, 5.5),
        (62, -62, -80, 5),
        (70, -75, -130, 5),
    ],
    True,
)
_add_chain(0, VESSEL, [(30, -34, 20, 5), (38, -8, -20, 4.5), (40, 0, -60, 4)], True)
_add_chain(
    0,
    VESSEL,
    [
        (22, -22, 80, 9),
        (36, -22, 20, 8),
        (54, -30, -30, 7),
        (68, -52, -80, 7),
        (76, -62, -130, 6.5),
    ],
    True,
)


def _soft_table() -> tuple[np.ndarray, np.ndarray]:
    rows = np.array(_SOFT_ROWS, dtype=np.float64)
    boxes = np.empty((rows.shape[0], 6))
    for n, r in enumerate(rows):
        a, b = r[2:5], r[5:8]
        if r[0] == 1:
            lo, hi = a - b, a + b
        else:
            rad = max(r[8], r[9])
            lo, hi = np.minimum(a, b) - rad, np.maximum(a, b) + rad
        boxes[n, :3] = lo - 3.0
        boxes[n, 3:] = hi + 3.0
    return rows, boxes


_SOFT, _SOFT_BOX = _soft_table()
N_SOFT = _SOFT.shape[0]


@njit(cache=True)
def _body_outline(x: float, y: float, z: float) -> float:
    """Approximate signed distance to the skin surface (pelvic frame).

    An ellipse per height, its back cut flat by the table plane with rounded corners.
    """
    a = interp1(z, _BODY_Z, _BODY_HALF_WIDTH_TAB)
    front = interp1(z, _BODY_Z, _BODY_FRONT_Y)
    b = _BODY_ELLIPSE_BACK_Y - front
    d = sd_ellipse(x, y - 0.5 * (front + _BODY_ELLIPSE_BACK_Y), a, 0.5 * b)
    return smax(d, y - _BODY_BACK_Y, _BODY_BACK_ROUND_MM)


@njit(cache=True)
def _wing_muscles(off: float, frac: float, arclen: float, half: float, z: float) -> float:
    """Iliacus (+ obturator internus) and gluteus medius/minimus as bands on the wing.

    Arguments come from :func:`_wing`; returns the distance to the union of both bands.
    """
    z_crest = interp1(frac, _IL_CREST_S, _IL_CREST_Z)
    s = frac * arclen
    along_in = max(0.12 * arclen - s, s - 0.97 * arclen)
    inner = max(max(-(half + 16.0) - off, off + half), along_in)
    inner = max(inner, z - (z_crest - 5.0))
    along_out = max(-s, s - 0.92 * arclen)
    outer = max(max(half - off, off - (half + 26.0)), along_out)
    outer = max(outer, z - (z_crest - 2.0))
    return min(inner, outer)


# == voxel renderer ===========================================================================
# The renderer evaluates every shape at each voxel's model-space position. To keep that fast,
# a coarse grid of cells (model space) first records which shapes can reach each cell; the
# test is conservative (cell half-diagonal x a Lipschitz allowance + blend width), so the
# result is the same as evaluating everything everywhere (``accelerate=False``).
CELL_MM = 6.0
_CELL_LIPSCHITZ = 1.6
_CELL_SLACK_MM = 2.0
_F_BODY, _F_WING, _F_ILIUM, _F_ENV = 1, 2, 4, 8
_F_SPINE, _F_CANAL, _F_FORAMINA, _F_LESION = 16, 32, 64, 128
#: Flag value meaning 'every shape may reach this cell' (no culling).
ALL_SHAPES = 255


@njit(cache=True)
def _paint(v: float, value: float, d: float, inv_h: float) -> float:
    f = clamp01(0.5 - d * inv_h)
    return v + f * (value - v)


@njit(cache=True)
def _soft_distance(n: int, x: float, y: float, z: float) -> float:
    r = _SOFT[n]
    if r[0] == 1.0:
        return sd_ellipsoid(x - r[2], y - r[3], z - r[4], r[5], r[6], r[7])
    return sd_round_cone(x, y, z, r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


@njit(cache=True)
def _to_sacral(x: float, y: float, z: float) -> tuple[float, float]:
    return _COS_SS * y + _SIN_SS * z, -_SIN_SS * y + _COS_SS * z


@njit(cache=True)
def _discs(sx: float, sy: float, sz: float, t: float, metric: float) -> float:
    """Approximate signed distance to the L5-S1 and L4-L5 discs."""
    lx, ly, lz = _to_frame(sx, sy, sz, L5_ORIGIN, L5_AXES)
    d = smax(sd_ellipse(lx, ly, 25.5, 18.5), abs(lz + 6.0) - 7.0, 1.5)
    d = max(d, t * metric - 0.5)  # stops at the S1 endplate
    lx, ly, lz = _to_frame(sx, sy, sz, L4_ORIGIN, L4_AXES)
    return min(d, smax(sd_ellipse(lx, ly, 25.5, 18.5), abs(lz + 5.0) - 6.0, 1.5))


@njit(cache=True)
def _lesion_distance(sx: float, sy: float, sz: float, lesion: np.ndarray) -> tuple[float, bool]:
    """Approximate distance to the lesion ellipsoid and the exact inside test."""
    lx = sx - lesion[1]
    ly = sy - lesion[2]
    lz = sz - lesion[3]
    ex = lesion[7] * lx + lesion[8] * ly + lesion[9] * lz
    ey = lesion[10] * lx + lesion[11] * ly + lesion[12] * lz
    ez = lesion[13] * lx + lesion[14] * ly + lesion[15] * lz
    inside = (ex / lesion[4]) ** 2 + (ey / lesion[5]) ** 2 + (ez / lesion[6]) ** 2 < 1.0
    return sd_ellipsoid(ex, ey, ez, lesion[4], lesion[5], lesion[6]), inside


@njit(cache=True)
def _fused_disc(x: float, t: float, u: float, metric: float, d_bone: float) -> float:
    """Approximate distance to the nearest fused-disc plate inside the sacral bodies."""
    d = 1e3
    for n in range(_FUSED_DISC_T.shape[0]):
        d = min(d, abs(t - _FUSED_DISC_T[n]) * metric - _FUSED_DISC_HALF_MM)
    a_body = interp1(t, _BODY_T, _BODY_HALF_WIDTH)
    b_body = interp1(t, _BODY_T, _BODY_HALF_DEPTH)
    d = max(d, sd_ellipse(x, u, a_body - 2.0, b_body - 2.0))
    return max(d, d_bone + CORTEX_MM)


@njit(cache=True, parallel=True)
def build_cells(
    lo: np.ndarray,
    dims: tuple[int, int, int],
    pv_width: float,
    foramina: np.ndarray,
    canal: np.ndarray,
    lesion: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which shapes may reach each cell of a model-space grid of :data:`CELL_MM` cells.

    Returns ``flags (nz, ny, nx) int32``, ``soft_count (nz, ny, nx) int32`` and
    ``soft_index (nz, ny, nx, N_soft) int16`` (the soft-tissue rows to draw, in order).
    """
    nx, ny, nz = dims
    n_soft = _SOFT.shape[0]
    flags = np.zeros((nz, ny, nx), dtype=np.int32)
    count = np.zeros((nz, ny, nx), dtype=np.int32)
    index = np.zeros((nz, ny, nx, n_soft), dtype=np.int16)
    reach = _CELL_LIPSCHITZ * CELL_MM * math.sqrt(3.0) * 0.5 + pv_width + _CELL_SLACK_MM
    lesion_on = lesion[0] > 0.5
    for kz in prange(nz):
        for ky in range(ny):
            for kx in range(nx):
                x = lo[0] + (kx + 0.5) * CELL_MM
                y = lo[1] + (ky + 0.5) * CELL_MM
                z = lo[2] + (kz + 0.5) * CELL_MM
                if _body_outline(x, y, z) > reach:
                    continue
                f = _F_BODY
                c = 0
                for n in range(n_soft):
                    if _soft_distance(n, x, y, z) < reach:
                        index[kz, ky, kx, c] = n
                        c += 1
                count[kz, ky, kx] = c
                ax = abs(x)
                sy, sz = _to_sacral(x, y, z)
                t, u, metric = _curved(sy, sz)
                if ax > _ILIUM_MIN_ABS_X - reach:
                    d_plate, off, frac, arclen, half = _wing(ax, y, z)
                    d_mus = _wing_muscles(off, frac, arclen, half, z)
                    if min(d_plate, d_mus) < reach:
                        f |= _F_WING
                    if min(d_plate, _tuberosity(ax, t, u, metric)) < reach:
                        f |= _F_ILIUM
                d_env = sacral_envelope(x, sy, sz)
                if d_env < reach + SI_JOINT_GAP_MM + _VERT_SACRUM_GAP_MM:
                    f |= _F_ENV
                if min(lumbar_spine(x, sy, sz), _discs(x, sy, sz, t, metric)) < reach:
                    f |= _F_SPINE
                if canal_distance(x, sy, sz, canal) < reach:
                    f |= _F_CANAL
                if foramina_distance(x, sy, sz, foramina) < reach:
                    f |= _F_FORAMINA
                if lesion_on and _lesion_distance(x, sy, sz, lesion)[0] < reach:
                    f |= _F_LESION
                flags[kz, ky, kx] = f
    return flags, count, index


@njit(cache=True, parallel=True)
def render(
    origin: np.ndarray,
    index_to_model: np.ndarray,
    shape: tuple[int, int, int],
    pv_width: float,
    foramina: np.ndarray,
    canal: np.ndarray,
    lesion: np.ndarray,
    values: np.ndarray,
    texture: float,
    cells_lo: np.ndarray,
    cell_flags: np.ndarray,
    cell_count: np.ndarray,
    cell_index: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
) -> None:
    """Draw the phantom into ``labels`` and ``image`` (both ``(K, J, I)``).

    Parameters
    ----------
    origin : (3,) float ndarray
        Pelvic-frame model position of voxel ``(0, 0, 0)``.
    index_to_model : (3, 3) float ndarray
        Columns: model-mm step per unit of ``i``, ``j``, ``k``.
    shape : tuple of int
        ``(K, J, I)``.
    pv_width : float
        Partial-volume ramp width in model mm (about one voxel).
    foramina : (F, 7) float ndarray
        Cylinders ``[a(3), b(3), radius]``, sacral frame.
    canal : (M, 8) float ndarray
        Tapered capsules ``[a(3), b(3), ra, rb]``, sacral frame.
    lesion : (16,) float ndarray
        ``[present, centre(3), radii(3), axes(9, rows)]``, sacral frame.
    values : (N_TISSUES,) float ndarray
        Intensity of each tissue.
    texture : float
        Amplitude of the cancellous-bone texture.
    cells_lo, cell_flags, cell_count, cell_index
        Model-space acceleration grid from :func:`build_cells` (must cover every voxel).
    labels : (K, J, I) uint8 ndarray
        Output label map (``imaging.labels.Label`` codes).
    image : (K, J, I) float32 ndarray
        Output intensities without noise.
    """
    nk, nj, ni = shape
    inv_h = 1.0 / pv_width
    ncz, ncy, ncx = cell_flags.shape
    for k in prange(nk):
        for j in range(nj):
            for i in range(ni):
                x = origin[0] + index_to_model[0, 0] * i + index_to_model[0, 1] * j
                x += index_to_model[0, 2] * k
                y = origin[1] + index_to_model[1, 0] * i + index_to_model[1, 1] * j
                y += index_to_model[1, 2] * k
                z = origin[2] + index_to_model[2, 0] * i + index_to_model[2, 1] * j
                z += index_to_model[2, 2] * k
                cx = min(max(int((x - cells_lo[0]) / CELL_MM), 0), ncx - 1)
                cy = min(max(int((y - cells_lo[1]) / CELL_MM), 0), ncy - 1)
                cz = min(max(int((z - cells_lo[2]) / CELL_MM), 0), ncz - 1)
                lab, val = _voxel(
                    x,
                    y,
                    z,
                    inv_h,
                    cell_flags[cz, cy, cx],
                    cell_index[cz, cy, cx],
                    cell_count[cz, cy, cx],
                    foramina,
                    canal,
                    lesion,
                    values,
                    texture,
                )
                labels[k, j, i] = lab
                image[k, j, i] = val


@njit(cache=True)
def _voxel(
    x: float,
    y: float,
    z: float,
    inv_h: float,
    flags: int,
    soft_index: np.ndarray,
    soft_count: int,
    foramina: np.ndarray,
    canal: np.ndarray,
    lesion: np.ndarray,
    values: np.ndarray,
    texture: float,
) -> tuple[int, float]:
    """Label and intensity of one pelvic-frame model point."""
    v = values[AIR]
    if not flags & _F_BODY:
        return 0, v
    d_body = _body_outline(x, y, z)
    if d_body * inv_h > 0.5:
        return 0, v
    v = _paint(v, values[SKIN], d_body, inv_h)
    v = _paint(v, values[FAT], d_body + SKIN_MM, inv_h)
    # muscles and organs
    for m in range(soft_count):
        n = soft_index[m]
        d = _soft_distance(n, x, y, z)
        if d * inv_h >= 0.5:
            continue
        if _SOFT[n, 0] == 2.0:
            gas = clamp01((value_noise(x, y, z, _BOWEL_TEXTURE_CELL_MM, 11) - 0.55) * 4.0)
            inner = values[BOWEL] + gas * (values[GAS] - values[BOWEL])
            v = _paint(v, values[BOWEL], d, inv_h)
            v = _paint(v, inner, d + 2.0, inv_h)
        else:
            v = _paint(v, values[int(_SOFT[n, 1])], d, inv_h)
    ax = abs(x)
    d_plate = 1e3
    if flags & _F_WING:
        d_plate, off, frac, arclen, half = _wing(ax, y, z)
        v = _paint(v, values[MUSCLE], _wing_muscles(off, frac, arclen, half, z), inv_h)
    # keep the skin on top of everything drawn inside the body
    v = _paint(v, values[SKIN], max(d_body + SKIN_MM, -d_body - SKIN_MM - 0.6), inv_h)
    label = 0
    if flags < _F_ILIUM:
        return label, v
    sy, sz = _to_sacral(x, y, z)
    t, u, metric = _curved(sy, sz)
    d_env = 1e3
    if flags & _F_ENV:
        d_env = sacral_envelope(x, sy, sz)
    d_canal = 1e3
    if flags & _F_CANAL:
        d_canal = canal_distance(x, sy, sz, canal)
    # lumbar discs and vertebrae (not labelled)
    if flags & _F_SPINE:
        v = _paint(v, values[DISC], _discs(x, sy, sz, t, metric), inv_h)
        d_vert = max(lumbar_spine(x, sy, sz), -d_canal)
        d_vert = max(d_vert, _VERT_SACRUM_GAP_MM - d_env)
        if d_vert * inv_h < 0.5:
            v = _paint(v, values[CORTEX], d_vert, inv_h)
            tex = texture * value_noise(x, y, z, _BONE_TEXTURE_CELL_MM, 3)
            v = _paint(v, values[CANCELLOUS] + tex, d_vert + VERTEBRA_CORTEX_MM, inv_h)
    # ilia and SI joints: the ilium is carved back to SI_JOINT_GAP_MM from the sacrum
    if flags & _F_ILIUM and ax > _ILIUM_MIN_ABS_X:
        if not flags & _F_WING:
            d_plate = _wing(ax, y, z)[0]
        d_il = smin(d_plate, _tuberosity(ax, t, u, metric), 8.0)
        if d_il * inv_h < 0.5:
            d_joint = max(d_il, d_env - SI_JOINT_GAP_MM)
            v = _paint(v, values[JOINT], d_joint, inv_h)
            d_bone = max(d_il, SI_JOINT_GAP_MM - d_env)
            v = _paint(v, values[CORTEX], d_bone, inv_h)
            tex = texture * value_noise(x, y, z, _BONE_TEXTURE_CELL_MM, 5)
            v = _paint(v, values[CANCELLOUS] + tex, d_bone + CORTEX_MM, inv_h)
            if d_bone < 0.0:
                label = 2 if x > 0.0 else 3
            elif d_joint < 0.0 and d_env >= 0.0:
                label = 7
    # sacrum: envelope minus canal minus foramina
    d_for = 1e3
    if flags & _F_FORAMINA:
        d_for = foramina_distance(x, sy, sz, foramina)
    if flags & _F_ENV:
        d_bone = max(d_env, max(-d_canal, -d_for))
        if d_bone * inv_h < 0.5:
            v = _paint(v, values[CORTEX], d_bone, inv_h)
            tex = texture * value_noise(x, y, z, _BONE_TEXTURE_CELL_MM, 7)
            v = _paint(v, values[CANCELLOUS] + tex, d_bone + CORTEX_MM, inv_h)
            if t > _FUSED_DISC_T[0] - 3.0 and abs(x) < 30.0:
                v = _paint(v, values[FUSED_DISC], _fused_disc(x, t, u, metric, d_bone), inv_h)
            if d_bone < 0.0:
                label = 1
    # canal contents: CSF in the thecal sac, epidural fat below it
    if d_canal * inv_h < 0.5:
        content = values[FLUID] if t < THECAL_SAC_END_T_MM else values[EPIDURAL_FAT]
        v = _paint(v, content, d_canal, inv_h)
        if d_canal < 0.0:
            label = 5
    # foramina contents (fat around the nerve root) inside the sacral envelope
    d_for_in = max(d_for, d_env)
    if d_for_in * inv_h < 0.5:
        v = _paint(v, values[FORAMEN], d_for_in, inv_h)
        if d_for_in < 0.0:
            label = 4
    if flags & _F_LESION:
        d_les, inside = _lesion_distance(x, sy, sz, lesion)
        d_les = max(d_les, -d_for)
        if d_les * inv_h < 0.5:
            v = _paint(v, values[LESION], d_les, inv_h)
            if inside and d_for >= 0.0:
                label = 6
    return label, v


@njit(cache=True)
def _si_gap_label(x: float, y: float, z: float) -> bool:
    """The renderer's SI-joint rule at one pelvic-frame point (model mm)."""
    if abs(x) <= _ILIUM_MIN_ABS_X:
        return False
    sy, sz = _to_sacral(x, y, z)
    d_env = sacral_envelope(x, sy, sz)
    if d_env < 0.0 or d_env >= SI_JOINT_GAP_MM:
        return False
    t, u, metric = _curved(sy, sz)
    return ilium_raw(x, y, z, t, u, metric) < 0.0


@njit(cache=True, parallel=True)
def si_joint_points(points: np.ndarray) -> np.ndarray:
    """Whether pelvic-frame points ``(N, 3)`` (model mm) lie in an SI-joint space.

    Same rule as the renderer's label: inside the uncarved ilium, outside the sacral
    envelope and closer to it than :data:`SI_JOINT_GAP_MM`.
    """
    out = np.zeros(points.shape[0], dtype=np.bool_)
    for n in prange(points.shape[0]):
        out[n] = _si_gap_label(points[n, 0], points[n, 1], points[n, 2])
    return out


@njit(cache=True, parallel=True)
def si_joint_surface(ts: np.ndarray, us: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample one SI joint on the sacrum's lateral surface.

    For each curved-coordinate pair ``(t, u)`` the lateral surface of the sacral envelope is
    found along e_x (bisection, 1e-4 mm); the sample belongs to the joint when the point
    half a gap further out is in the joint space.

    Returns
    -------
    surface : (len(ts) * len(us), 3) float ndarray
        Sacral-frame surface points (model mm).
    in_joint : (len(ts) * len(us),) bool ndarray
    """
    nt = ts.shape[0]
    nu = us.shape[0]
    surface = np.zeros((nt * nu, 3))
    in_joint = np.zeros(nt * nu, dtype=np.bool_)
    for a in prange(nt):
        for b in range(nu):
            n = a * nu + b
            sy, sz = _uncurved(us[b], ts[a])
            w = lateral_half_width(ts[a], us[b])
            lo = w - 12.0
            hi = w + 8.0
            if (
                sacral_envelope(sign * lo, sy, sz) >= 0.0
                or sacral_envelope(sign * hi, sy, sz) < 0.0
            ):
                continue
            while hi - lo > 1e-4:
                mid = 0.5 * (lo + hi)
                if sacral_envelope(sign * mid, sy, sz) < 0.0:
                    lo = mid
                else:
                    hi = mid
            xs = sign * 0.5 * (lo + hi)
            surface[n, 0] = xs
            surface[n, 1] = sy
            surface[n, 2] = sz
            gx = sign * (abs(xs) + 0.5 * SI_JOINT_GAP_MM)
            py = _COS_SS * sy - _SIN_SS * sz
            pz = _SIN_SS * sy + _COS_SS * sz
            in_joint[n] = _si_gap_label(gx, py, pz)
    return surface, in_joint
