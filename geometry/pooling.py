"""Pooling voxel masks in whole blocks (numba): a fine study's masks onto a coarser field grid.

A block of ``(fk, fj, fi)`` voxels becomes one voxel whose centre is the mean of the block's
centres. Structures to keep clear of are pooled with *any* (a block is inside when any voxel of
it is: the structure grows, clearances err on the safe side); bone and lesion with *half* (inside
when at least half the block is: the surface stays where it was, to within the half-way
convention of :mod:`geometry.distance`). Voxels beyond the last whole block are dropped.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, parallel=True, nogil=True)
def _pool_counts(labels: np.ndarray, fk: int, fj: int, fi: int, n: int) -> np.ndarray:
    nk, nj, ni = labels.shape[0] // fk, labels.shape[1] // fj, labels.shape[2] // fi
    counts = np.zeros((n, nk, nj, ni), dtype=np.uint8)  # blocks of at most 255 voxels
    for k in numba.prange(nk):
        for dk in range(fk):
            for j in range(nj):
                for dj in range(fj):
                    row = labels[k * fk + dk, j * fj + dj]
                    for i in range(ni):
                        for di in range(fi):
                            v = row[i * fi + di]
                            if 0 < v <= n:
                                counts[v - 1, k, j, i] += 1
    return counts


def pool_labels(
    labels: np.ndarray, factors: tuple[int, int, int], n_labels: int, *, any_voxel: bool
) -> np.ndarray:
    """Pool a label map (values ``1..n_labels``, 0 outside) into one mask per label.

    Parameters
    ----------
    labels : (K, J, I) integer or bool ndarray
    factors : (fk, fj, fi) tuple of int
        Block size along each array axis.
    n_labels : int
    any_voxel : bool
        True: a block is inside a label when any of its voxels is; False: when at least half
        of them are.

    Returns
    -------
    (n_labels, K // fk, J // fj, I // fi) bool ndarray
    """
    fk, fj, fi = (int(f) for f in factors)
    if fk * fj * fi > 255:
        raise ValueError(f"pooling blocks hold at most 255 voxels, got {factors}")
    arr = np.ascontiguousarray(labels)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    counts = _pool_counts(arr, fk, fj, fi, int(n_labels))
    if any_voxel:
        return counts > 0
    return counts.astype(np.int32) * 2 >= fk * fj * fi


def pool_mask(mask: np.ndarray, factors: tuple[int, int, int], *, any_voxel: bool) -> np.ndarray:
    """One mask pooled in blocks of ``factors`` (see :func:`pool_labels`)."""
    if tuple(factors) == (1, 1, 1):
        return np.asarray(mask, dtype=bool)
    return pool_labels(np.asarray(mask, dtype=bool), factors, 1, any_voxel=any_voxel)[0]
