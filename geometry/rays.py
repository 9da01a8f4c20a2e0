"""Marching straight rays through a binary mask (finding where a needle line meets the skin)."""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _ray_in_index(
    a: np.ndarray, starts: np.ndarray, dirs: np.ndarray, n: int
) -> tuple[float, float, float, float, float, float]:
    """Ray ``n``'s start ``(px, py, pz)`` and direction ``(qx, qy, qz)`` in continuous
    ``(i, j, k)`` through the (3, 4) affine ``a``."""
    s, d = starts[n], dirs[n]
    return (
        a[0, 0] * s[0] + a[0, 1] * s[1] + a[0, 2] * s[2] + a[0, 3],
        a[1, 0] * s[0] + a[1, 1] * s[1] + a[1, 2] * s[2] + a[1, 3],
        a[2, 0] * s[0] + a[2, 1] * s[1] + a[2, 2] * s[2] + a[2, 3],
        a[0, 0] * d[0] + a[0, 1] * d[1] + a[0, 2] * d[2],
        a[1, 0] * d[0] + a[1, 1] * d[1] + a[1, 2] * d[2],
        a[2, 0] * d[0] + a[2, 1] * d[1] + a[2, 2] * d[2],
    )


@numba.njit(parallel=True, cache=True, nogil=True)
def _march(
    inside: np.ndarray,
    a: np.ndarray,
    starts: np.ndarray,
    dirs: np.ndarray,
    step_mm: float,
    max_mm: float,
    out: np.ndarray,
) -> None:
    nk, nj, ni = inside.shape
    n_steps = int(max_mm / step_mm) + 1
    for n in numba.prange(starts.shape[0]):
        px, py, pz, qx, qy, qz = _ray_in_index(a, starts, dirs, n)
        result = math.nan
        for s in range(n_steps):
            t = s * step_mm
            i = int(math.floor(px + t * qx + 0.5))
            j = int(math.floor(py + t * qy + 0.5))
            k = int(math.floor(pz + t * qz + 0.5))
            if i < 0 or j < 0 or k < 0 or i >= ni or j >= nj or k >= nk or inside[k, j, i] == 0:
                result = t
                break
        out[n] = result


def exit_distance_mm(
    inside: np.ndarray,
    world_to_index: np.ndarray,
    starts: np.ndarray,
    directions: np.ndarray,
    *,
    step_mm: float = 0.5,
    max_mm: float = 400.0,
) -> np.ndarray:
    """Distance along each ray to the first sample outside ``inside`` (or off the grid).

    Parameters
    ----------
    inside : (K, J, I) bool or uint8 ndarray
        The region the rays start in (e.g. the body).
    world_to_index : (3, 4) float ndarray
        Affine from LPS mm to continuous ``(i, j, k)``.
    starts : (N, 3) float ndarray, mm, LPS
    directions : (N, 3) float ndarray
        Unit vectors, LPS.
    step_mm, max_mm : float, keyword-only
        Sampling step and longest march.

    Returns
    -------
    (N,) float ndarray, mm
        Distance to the exit (a multiple of ``step_mm``, so at most one step beyond the true
        boundary); NaN when the ray is still inside after ``max_mm``.
    """
    out = np.empty(len(starts), dtype=np.float64)
    inside = np.ascontiguousarray(inside)
    # a bool mask is read as bytes in place: no copy of a whole-body mask on every call
    if inside.dtype == np.bool_:
        inside = inside.view(np.uint8)
    else:
        inside = inside.astype(np.uint8, copy=False)
    _march(
        inside,
        np.ascontiguousarray(world_to_index, dtype=np.float64),
        np.ascontiguousarray(starts, dtype=np.float64),
        np.ascontiguousarray(directions, dtype=np.float64),
        float(step_mm),
        float(max_mm),
        out,
    )
    return out


@numba.njit(parallel=True, cache=True, nogil=True)
def _march_to_packed(
    bone: np.ndarray,
    offset: np.ndarray,
    shape: np.ndarray,
    a: np.ndarray,
    starts: np.ndarray,
    dirs: np.ndarray,
    step_mm: float,
    max_mm: float,
    out: np.ndarray,
) -> None:
    nk, nj, ni = shape[0], shape[1], shape[2]
    bk, bj = bone.shape[0], bone.shape[1]
    k0, j0, i0, bi = offset[0], offset[1], offset[2], offset[3]
    n_steps = int(max_mm / step_mm) + 1
    for n in numba.prange(starts.shape[0]):
        px, py, pz, qx, qy, qz = _ray_in_index(a, starts, dirs, n)
        result = math.nan
        for s in range(n_steps):
            t = s * step_mm
            i = int(math.floor(px + t * qx + 0.5))
            j = int(math.floor(py + t * qy + 0.5))
            k = int(math.floor(pz + t * qz + 0.5))
            if i < 0 or j < 0 or k < 0 or i >= ni or j >= nj or k >= nk:
                result = t
                break
            bi_, bj_, bk_ = i - i0, j - j0, k - k0
            if (
                0 <= bi_ < bi
                and 0 <= bj_ < bj
                and 0 <= bk_ < bk
                and (bone[bk_, bj_, bi_ >> 3] >> (7 - (bi_ & 7))) & 1
            ):
                result = t
                break
        out[n] = result


def distance_to_packed_mm(
    packed: np.ndarray,
    offset: np.ndarray,
    shape: np.ndarray,
    world_to_index: np.ndarray,
    starts: np.ndarray,
    directions: np.ndarray,
    *,
    step_mm: float = 0.5,
    max_mm: float = 400.0,
) -> np.ndarray:
    """Distance along each ray to the first voxel of a bit-packed box mask (or off the grid).

    The same samples as :func:`exit_distance_mm` run through "not in the mask", for a mask
    kept only as the box around it (e.g. the bone of a whole study).

    Parameters
    ----------
    packed : (K, J, ceil(I / 8)) uint8 ndarray
        The box's voxels as bits along i (``np.packbits`` order).
    offset : (4,) int ndarray
        The box's first voxel ``(k, j, i)`` on the grid, and its width ``I``.
    shape : (3,) int ndarray
        The whole grid's shape ``(K, J, I)``; outside the box is "not in the mask".
    world_to_index : (3, 4) float ndarray
        Affine from LPS mm to continuous ``(i, j, k)``.
    starts : (N, 3) float ndarray, mm, LPS
    directions : (N, 3) float ndarray
        Unit vectors, LPS.
    step_mm, max_mm : float, keyword-only
        Sampling step and longest march.

    Returns
    -------
    (N,) float ndarray, mm
        Distance to the first mask voxel or the grid's edge; NaN when neither is met within
        ``max_mm``.
    """
    out = np.empty(len(starts), dtype=np.float64)
    _march_to_packed(
        np.ascontiguousarray(packed, dtype=np.uint8),
        np.ascontiguousarray(offset, dtype=np.int64),
        np.ascontiguousarray(shape, dtype=np.int64),
        np.ascontiguousarray(world_to_index, dtype=np.float64),
        np.ascontiguousarray(starts, dtype=np.float64),
        np.ascontiguousarray(directions, dtype=np.float64),
        float(step_mm),
        float(max_mm),
        out,
    )
    return out
