"""Pooling masks in blocks, and the planner's field grid over a fine study."""

from __future__ import annotations

import numpy as np
import pytest

from geometry.pooling import pool_labels, pool_mask
from imaging.volume import Volume
from planning.planner import field_factors, field_grid


def _reference(mask: np.ndarray, f: tuple[int, int, int], any_voxel: bool) -> np.ndarray:
    k, j, i = (n // b for n, b in zip(mask.shape, f, strict=True))
    blocks = mask[: k * f[0], : j * f[1], : i * f[2]].reshape(k, f[0], j, f[1], i, f[2])
    if any_voxel:
        return blocks.any(axis=(1, 3, 5))
    return blocks.sum(axis=(1, 3, 5)) * 2 >= f[0] * f[1] * f[2]


@pytest.mark.parametrize("factors", [(1, 1, 1), (2, 2, 2), (1, 2, 3)])
@pytest.mark.parametrize("any_voxel", [True, False])
def test_pooling_matches_block_reduction(factors, any_voxel) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(13, 17, 20)).astype(np.uint8)
    pooled = pool_labels(labels, factors, 3, any_voxel=any_voxel)
    for n in range(3):
        np.testing.assert_array_equal(pooled[n], _reference(labels == n + 1, factors, any_voxel))
    mask = labels == 2
    np.testing.assert_array_equal(
        pool_mask(mask, factors, any_voxel=any_voxel), _reference(mask, factors, any_voxel)
    )


def test_field_grid_centres_are_block_centres_on_an_oblique_grid() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    spacing = np.array([0.43, 0.587, 1.0])
    crop = Volume(np.zeros((9, 11, 13), np.int16), np.array([5.0, -3.0, 7.0]), spacing, direction)
    assert field_factors(spacing) == (1, 2, 2)  # (k, j, i)
    grid = field_grid(crop)
    assert grid.array.shape == (9, 5, 6)
    # block (k=2, j=1, i=3) holds voxels k=2, j=2..3, i=6..7
    centres = crop.index_to_world(np.array([[i, j, 2.0] for i in (6, 7) for j in (2, 3)]))
    np.testing.assert_allclose(
        grid.index_to_world(np.array([[3.0, 1.0, 2.0]]))[0], centres.mean(axis=0), atol=1e-9
    )
