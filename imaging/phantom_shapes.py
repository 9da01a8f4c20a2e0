"""Signed-distance primitives for the synthetic phantom (numba kernels and numpy twins).

Every function returns a signed distance in millimetres: positive outside the shape,
negative inside. Functions marked *exact* return the true Euclidean signed distance;
the others are smooth approximations used only to draw anatomy (their zero set is
exact, their magnitude is close to the distance near the surface).

The numba kernels work on one point given as scalars so the voxel renderer can inline
them; the numpy functions work on ``(N, 3)`` point arrays and are what the analytic
truth (:mod:`imaging.phantom`) uses.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# -- scalar kernels (numba) -------------------------------------------------------------------


@njit(cache=True)
def smin(a: float, b: float, k: float) -> float:
    """Smooth minimum (polynomial) of two distances with blend width ``k`` mm (union)."""
    if k <= 0.0:
        return min(a, b)
    h = max(k - abs(a - b), 0.0) / k
    return min(a, b) - h * h * k * 0.25


@njit(cache=True)
def smax(a: float, b: float, k: float) -> float:
    """Smooth maximum of two distances with blend width ``k`` mm (intersection)."""
    return -smin(-a, -b, k)


@njit(cache=True)
def clamp01(v: float) -> float:
    """``v`` clipped to ``[0, 1]``."""
    return min(max(v, 0.0), 1.0)


@njit(cache=True)
def interp1(x: float, xp: np.ndarray, fp: np.ndarray) -> float:
    """Piecewise-linear ``fp(x)`` for increasing ``xp``, constant beyond the ends (scalar)."""
    n = xp.shape[0]
    if x <= xp[0]:
        return fp[0]
    if x >= xp[n - 1]:
        return fp[n - 1]
    i = 1
    while xp[i] < x:
        i += 1
    w = (x - xp[i - 1]) / (xp[i] - xp[i - 1])
    return fp[i - 1] + w * (fp[i] - fp[i - 1])


@njit(cache=True)
def sd_ellipse(x: float, y: float, a: float, b: float) -> float:
    """Approximate signed distance to the ellipse ``(x/a)^2 + (y/b)^2 = 1`` (2-D)."""
    k0 = math.sqrt((x / a) ** 2 + (y / b) ** 2)
    k1 = math.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2)
    if k1 < 1e-12:
        return -min(a, b)
    return k0 * (k0 - 1.0) / k1


@njit(cache=True)
def sd_ellipsoid(x: float, y: float, z: float, a: float, b: float, c: float) -> float:
    """Approximate signed distance to an axis-aligned ellipsoid with semi-axes ``a, b, c``."""
    k0 = math.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
    k1 = math.sqrt((x / (a * a)) ** 2 + (y / (b * b)) ** 2 + (z / (c * c)) ** 2)
    if k1 < 1e-12:
        return -min(a, min(b, c))
    return k0 * (k0 - 1.0) / k1


@njit(cache=True)
def sd_round_cone(
    px: float,
    py: float,
    pz: float,
    ax: float,
    ay: float,
    az: float,
    bx: float,
    by: float,
    bz: float,
    ra: float,
    rb: float,
) -> float:
    """Exact signed distance to a tapered capsule (round cone).

    The shape is the convex hull of the sphere of radius ``ra`` at ``a`` and the sphere of
    radius ``rb`` at ``b`` (requires ``|ra - rb| < |b - a|``).
    """
    bax = bx - ax
    bay = by - ay
    baz = bz - az
    l2 = bax * bax + bay * bay + baz * baz
    if l2 < 1e-12:
        return math.sqrt((px - ax) ** 2 + (py - ay) ** 2 + (pz - az) ** 2) - max(ra, rb)
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pax = px - ax
    pay = py - ay
    paz = pz - az
    y = pax * bax + pay * bay + paz * baz
    z = y - l2
    cx = pax * l2 - bax * y
    cy = pay * l2 - bay * y
    cz = paz * l2 - baz * y
    x2 = cx * cx + cy * cy + cz * cz
    y2 = y * y * l2
    z2 = z * z * l2
    k = math.copysign(1.0, rr) * rr * rr * x2
    if math.copysign(1.0, z) * a2 * z2 > k:
        return math.sqrt(x2 + z2) * il2 - rb
    if math.copysign(1.0, y) * a2 * y2 < k:
        return math.sqrt(x2 + y2) * il2 - ra
    return (math.sqrt(x2 * a2 * il2) + y * rr) * il2 - ra


@njit(cache=True)
def sd_cylinder(
    px: float,
    py: float,
    pz: float,
    ax: float,
    ay: float,
    az: float,
    bx: float,
    by: float,
    bz: float,
    r: float,
) -> float:
    """Exact signed distance to the flat-capped circular cylinder from ``a`` to ``b``."""
    bax = bx - ax
    bay = by - ay
    baz = bz - az
    length = math.sqrt(bax * bax + bay * bay + baz * baz)
    ux = bax / length
    uy = bay / length
    uz = baz / length
    pax = px - ax
    pay = py - ay
    paz = pz - az
    h = pax * ux + pay * uy + paz * uz
    rx = pax - h * ux
    ry = pay - h * uy
    rz = paz - h * uz
    radial = math.sqrt(rx * rx + ry * ry + rz * rz)
    qx = radial - r
    qy = abs(h - 0.5 * length) - 0.5 * length
    outside = math.sqrt(max(qx, 0.0) ** 2 + max(qy, 0.0) ** 2)
    return min(max(qx, qy), 0.0) + outside


@njit(cache=True)
def hash01(i: int, j: int, k: int, seed: int) -> float:
    """Deterministic pseudo-random value in ``[0, 1)`` for an integer lattice point."""
    h = (i * 73856093) ^ (j * 19349663) ^ (k * 83492791) ^ (seed * 2654435761)
    h = h & 0xFFFFFFFF
    h = ((h >> 16) ^ h) * 0x45D9F3B
    h = h & 0xFFFFFFFF
    h = ((h >> 16) ^ h) * 0x45D9F3B
    h = h & 0xFFFFFFFF
    h = (h >> 16) ^ h
    return (h & 0xFFFFFF) / 16777216.0


@njit(cache=True)
def value_noise(x: float, y: float, z: float, cell: float, seed: int) -> float:
    """Smooth value noise in ``[-1, 1]`` on a lattice of ``cell`` mm (world-anchored)."""
    fx = x / cell
    fy = y / cell
    fz = z / cell
    i0 = math.floor(fx)
    j0 = math.floor(fy)
    k0 = math.floor(fz)
    tx = fx - i0
    ty = fy - j0
    tz = fz - k0
    tx = tx * tx * (3.0 - 2.0 * tx)
    ty = ty * ty * (3.0 - 2.0 * ty)
    tz = tz * tz * (3.0 - 2.0 * tz)
    i = int(i0)
    j = int(j0)
    k = int(k0)
    c000 = hash01(i, j, k, seed)
    c100 = hash01(i + 1, j, k, seed)
    c010 = hash01(i, j + 1, k, seed)
    c110 = hash01(i + 1, j + 1, k, seed)
    c001 = hash01(i, j, k + 1, seed)
    c101 = hash01(i + 1, j, k + 1, seed)
    c011 = hash01(i, j + 1, k + 1, seed)
    c111 = hash01(i + 1, j + 1, k + 1, seed)
    c00 = c000 + (c100 - c000) * tx
    c10 = c010 + (c110 - c010) * tx
    c01 = c001 + (c101 - c001) * tx
    c11 = c011 + (c111 - c011) * tx
    c0 = c00 + (c10 - c00) * ty
    c1 = c01 + (c11 - c01) * ty
    return 2.0 * (c0 + (c1 - c0) * tz) - 1.0


# -- exact distances on point arrays (numpy) ---------------------------------------------------


def cylinder_signed_distance(
    points: np.ndarray, start: np.ndarray, end: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Exact signed distance from points to a flat-capped circular cylinder.

    Parameters
    ----------
    points : (N, 3) or (3,) float ndarray, mm
        Query points (any frame, the same as ``start``/``end``).
    start, end : (3,) float ndarray, mm
        Centres of the two flat end caps.
    radius_mm : float
        Cylinder radius.

    Returns
    -------
    (N,) or scalar float ndarray, mm
        Positive outside, negative inside, zero on the surface.
    """
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    a = np.asarray(start, dtype=np.float64)
    b = np.asarray(end, dtype=np.float64)
    length = float(np.linalg.norm(b - a))
    axis = (b - a) / length
    pa = p - a
    h = pa @ axis
    radial = np.linalg.norm(pa - h[:, None] * axis, axis=1)
    qx = radial - radius_mm
    qy = np.abs(h - 0.5 * length) - 0.5 * length
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    d = np.minimum(np.maximum(qx, qy), 0.0) + outside
    return d if np.ndim(points) > 1 else d[0]


def round_cone_signed_distance(
    points: np.ndarray, a: np.ndarray, b: np.ndarray, radius_a_mm: float, radius_b_mm: float
) -> np.ndarray:
    """Exact signed distance from points to a tapered capsule (round cone).

    Parameters
    ----------
    points : (N, 3) or (3,) float ndarray, mm
    a, b : (3,) float ndarray, mm
        Centres of the end spheres.
    radius_a_mm, radius_b_mm : float
        Radii of the end spheres (``|ra - rb| < |b - a|``).

    Returns
    -------
    (N,) or scalar float ndarray, mm
        Positive outside, negative inside.
    """
    p = np.atleast_2d(np.asarray(points, dtype=np.float64))
    a = np.asarray(a, dtype=np.float64)
    ba = np.asarray(b, dtype=np.float64) - a
    l2 = float(ba @ ba)
    rr = radius_a_mm - radius_b_mm
    a2 = l2 - rr * rr
    pa = p - a
    y = pa @ ba
    z = y - l2
    x2 = np.sum((pa * l2 - y[:, None] * ba) ** 2, axis=1)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    d_b = np.sqrt(x2 + z2) / l2 - radius_b_mm
    d_a = np.sqrt(x2 + y2) / l2 - radius_a_mm
    d_side = (np.sqrt(x2 * a2 / l2) + y * rr) / l2 - radius_a_mm
    d = np.where(np.sign(z) * a2 * z2 > k, d_b, np.where(np.sign(y) * a2 * y2 < k, d_a, d_side))
    return d if np.ndim(points) > 1 else d[0]


def ellipsoid_surface_points(
    center: np.ndarray, axes: np.ndarray, radii: np.ndarray, *, n_theta: int, n_phi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on an ellipsoid surface on a regular (polar angle, azimuth) parameter grid.

    Parameters
    ----------
    center : (3,) float ndarray, mm
    axes : (3, 3) float ndarray
        Rows are the unit directions of the three semi-axes.
    radii : (3,) float ndarray, mm
    n_theta, n_phi : int
        Samples of the polar angle in ``[0, pi]`` and the azimuth in ``[0, 2 pi)``.

    Returns
    -------
    points : (n_theta * n_phi, 3) float ndarray, mm
    theta, phi : (n_theta * n_phi,) float ndarray, rad
    """
    theta = np.linspace(0.0, np.pi, n_theta)
    phi = np.linspace(0.0, 2.0 * np.pi, n_phi, endpoint=False)
    tt, pp = np.meshgrid(theta, phi, indexing="ij")
    tt = tt.ravel()
    pp = pp.ravel()
    return ellipsoid_point(center, axes, radii, tt, pp), tt, pp


def ellipsoid_point(
    center: np.ndarray, axes: np.ndarray, radii: np.ndarray, theta: np.ndarray, phi: np.ndarray
) -> np.ndarray:
    """Surface point(s) of an ellipsoid at polar angle ``theta`` and azimuth ``phi`` (rad)."""
    theta = np.asarray(theta, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    local = np.stack(
        [
            radii[0] * np.sin(theta) * np.cos(phi),
            radii[1] * np.sin(theta) * np.sin(phi),
            radii[2] * np.cos(theta),
        ],
        axis=-1,
    )
    return center + local @ np.asarray(axes, dtype=np.float64)
