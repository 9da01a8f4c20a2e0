"""Ray marching: the bit-packed box variant stops where the dense one would."""

from __future__ import annotations

import numpy as np

from geometry.rays import distance_to_packed_mm, exit_distance_mm


def test_packed_box_mask_matches_the_dense_march_on_an_oblique_grid() -> None:
    rng = np.random.default_rng(4)
    shape = (40, 50, 60)  # (K, J, I)
    mask = np.zeros(shape, bool)
    lo, hi = np.array([10, 12, 9]), np.array([31, 40, 45])
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mask[box] = rng.random(tuple(hi - lo)) < 0.02
    # an oblique, anisotropic grid: world -> index affine
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    index_to_world = np.eye(4)
    index_to_world[:3, :3] = rot @ np.diag([0.8, 1.1, 1.7])
    index_to_world[:3, 3] = [-20.0, 5.0, 30.0]
    world_to_index = np.linalg.inv(index_to_world)[:3]
    centre = (index_to_world @ np.array([30.0, 25.0, 20.0, 1.0]))[:3]
    starts = centre + rng.normal(scale=8.0, size=(500, 3))
    dirs = rng.normal(size=(500, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    packed = np.packbits(mask[box], axis=2)
    offset = np.array([*lo, hi[2] - lo[2]])
    got = distance_to_packed_mm(packed, offset, np.array(shape), world_to_index, starts, dirs)
    want = exit_distance_mm(~mask, world_to_index, starts, dirs)
    assert np.isfinite(want).sum() > 400
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.allclose(got[np.isfinite(got)], want[np.isfinite(want)])
    assert (got < want.max()).any()  # some rays do stop on the mask, not only the grid edge
