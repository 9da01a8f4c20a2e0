"""Marching straight rays through a binary mask (finding where a needle line meets the skin)."""

from __future__ import annotations

import math

import numba
import numpy as np


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
        px = a[0, 0] * starts[n, 0] + a[0, 1] * starts[n, 1] + a[0, 2] * starts[n, 2] + a[0, 3]
        py = a[1, 0] * starts[n, 0] + a[1, 1] * starts[n, 1] + a[1, 2] * starts[n, 2] + a[1, 3]
        pz = a[2, 0] * starts[n, 0] + a[2, 1] * starts[n, 1] + a[2, 2] * starts[n, 2] + a[2, 3]
        qx = a[0, 0] * dirs[n, 0] + a[0, 1] * dirs[n, 1] + a[0, 2] * dirs[n, 2]
        qy = a[1, 0] * dirs[n, 0] + a[1, 1] * dirs[n, 1] + a[1, 2] * dirs[n, 2]
        qz = a[2, 0] * dirs[n, 0] + a[2, 1] * dirs[n, 1] + a[2, 2] * dirs[n, 2]
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
