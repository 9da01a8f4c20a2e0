"""The memory-saving helpers of the anatomy and lesion stages give exactly what the plain
whole-array computations give (checked against brute force on oblique, anisotropic grids), and
the sparse masks take memory only where they are written."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.anatomy import _nearest_onto, _put
from imaging.anatomy_grid import Grid, label_masks, release_free_memory, sparse_zeros
from imaging.lesion import _RADIAL_MIN_NOISE_HU, _ball_mask, _pair_noise
from imaging.lesion_util import mask_on_grid
from imaging.volume import Volume


def _oblique(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Volume:
    a, b = np.radians(17.0), np.radians(-9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Volume(
        np.zeros(shape, np.int16),
        np.array([-20.0, 13.5, 40.25]),
        np.array(spacing),
        rz @ rx,
        modality="CT",
    )


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def test_sparse_zeros_is_a_plain_writeable_zero_array() -> None:
    a = sparse_zeros((7, 9, 11), np.uint8)
    assert a.shape == (7, 9, 11) and a.dtype == np.uint8 and a.flags.writeable
    assert not a.any()
    a[2:4, 1, 3:5] = 7
    assert int(a.sum()) == 4 * 7
    assert (a.copy() == a).all()
    tiny = sparse_zeros((2, 2), bool)  # below a page: ordinary zeros
    assert tiny.shape == (2, 2) and not tiny.any()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_sparse_zeros_takes_memory_only_where_written() -> None:
    release_free_memory()
    before = _rss_mb()
    a = sparse_zeros((200, 1000, 1000), bool)  # 200 MB of address space
    a[:, 500, 100:600] = True  # one row in every slice: 0.1 MB written, one page per slice
    assert int(np.count_nonzero(a)) == 200 * 500  # reading the rest costs nothing
    assert _rss_mb() - before < 25.0
    del a


def test_label_masks_match_equality_per_code() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((20, 30, 40), np.uint8)
    for code in (1, 2, 5):
        k, j, i = rng.integers(0, 15, 3)
        labels[k : k + 4, j : j + 6, i : i + 3] = code
    labels[0, 0, 0] = 2  # a far voxel stretches code 2's box
    out = label_masks(labels, {"a": 1, "b": 2, "missing": 3, "e": 5})
    for name, code in (("a", 1), ("b", 2), ("missing", 3), ("e", 5)):
        assert out[name].dtype == bool
        np.testing.assert_array_equal(out[name], labels == code)
    assert label_masks(labels, {}) == {}


def test_put_writes_the_bounding_box_of_a_slab() -> None:
    out = np.zeros((10, 8, 9), bool)
    values = np.zeros((4, 8, 9), bool)
    values[1, 2, 3] = values[3, 5, 7] = True
    _put(out, slice(4, 8), values)
    expected = np.zeros_like(out)
    expected[4:8] = values
    np.testing.assert_array_equal(out, expected)
    _put(out, slice(0, 4), np.zeros((4, 8, 9), bool))  # empty: nothing written
    np.testing.assert_array_equal(out, expected)


def test_nearest_onto_slabs_equal_the_whole_resampling() -> None:
    grid = Grid(origin=np.array([-40.0, -10.0, 20.0]), spacing=np.array([3.0, 3.0, 3.0]),
                shape=(14, 12, 16))  # fmt: skip
    rng = np.random.default_rng(0)
    image = grid.image(rng.integers(0, 9, grid.shape).astype(np.uint8))
    onto = _oblique((23, 17, 19), (1.3, 0.9, 1.7))
    whole = _nearest_onto(image, onto)
    assert whole.shape == onto.array.shape and whole.any()
    slabs = [_nearest_onto(image, onto, k_range=(k, min(k + 5, 23))) for k in range(0, 23, 5)]
    np.testing.assert_array_equal(np.concatenate(slabs), whole)


@pytest.mark.parametrize("centre", [(5, 6, 7), (0, 0, 0), (11, 19, 2)])
def test_ball_mask_equals_brute_force(centre: tuple[int, int, int]) -> None:
    shape, spacing_xyz, r = (12, 20, 15), np.array([0.7, 1.1, 2.5]), 3.1
    got = _ball_mask(shape, centre, spacing_xyz, r)
    kk, jj, ii = np.indices(shape)
    sp = spacing_xyz[::-1]
    d2 = ((kk - centre[0]) * sp[0]) ** 2 + ((jj - centre[1]) * sp[1]) ** 2
    d2 = d2 + ((ii - centre[2]) * sp[2]) ** 2
    steps = np.abs(kk - centre[0]) + np.abs(jj - centre[1]) + np.abs(ii - centre[2])
    np.testing.assert_array_equal(got, (d2 <= r * r) | (steps <= 1))


def test_pair_noise_equals_whole_array_formula() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(40.0, 30.0, (16, 18, 20)).astype(np.int16)
    where = np.zeros(raw.shape, bool)
    where[4:9, 5:12, 6:10] = True
    where[10, 3, 2] = True
    x = raw.astype(np.float64)
    diffs = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = where[tuple(lo)] & where[tuple(hi)]
        diffs.append((x[tuple(hi)] - x[tuple(lo)])[both])
    d = np.concatenate(diffs)
    expected = 1.4826 * float(np.median(np.abs(d))) / np.sqrt(2.0)
    assert _pair_noise(raw, where) == pytest.approx(max(expected, _RADIAL_MIN_NOISE_HU), abs=1e-9)
    assert _pair_noise(raw, np.zeros(raw.shape, bool)) == _RADIAL_MIN_NOISE_HU


def test_mask_on_grid_block_equals_whole_resampling() -> None:
    src = _oblique((30, 40, 36), (0.8, 0.6, 1.5))
    rng = np.random.default_rng(2)
    arr = (rng.random(src.array.shape) > 0.6).astype(np.uint8)
    mask = src.with_array(arr, modality="LABEL")
    ref = Volume(
        np.zeros((9, 11, 13), np.int16),
        src.index_to_world(np.array([10.3, 12.7, 8.2])),
        np.array([1.1, 0.7, 1.3]),
        np.eye(3),
        modality="CT",
    )
    whole = sitk.Resample(
        mask.to_sitk(), ref.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
        sitk.sitkUInt8,
    )  # fmt: skip
    expected = sitk.GetArrayFromImage(whole) > 0
    got = mask_on_grid(mask, ref)
    assert got.shape == ref.array.shape and expected.any()
    np.testing.assert_array_equal(got, expected)
    # a reference partly off the mask's grid: voxels outside are False
    off = Volume(ref.array, src.index_to_world(np.array([-3.0, -4.0, -2.0])), ref.spacing,
                 ref.direction, modality="CT")  # fmt: skip
    whole = sitk.Resample(mask.to_sitk(), off.to_sitk(), sitk.Transform(),
                          sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)  # fmt: skip
    np.testing.assert_array_equal(mask_on_grid(mask, off), sitk.GetArrayFromImage(whole) > 0)


def test_covering_points_in_chunks_equal_the_whole_triangle_array(monkeypatch) -> None:
    from skimage.measure import marching_cubes

    import planning.scoring_exact as se

    kk, jj, ii = np.indices((30, 36, 40))
    solid = ((kk - 15) / 11.0) ** 2 + ((jj - 17) / 14.0) ** 2 + ((ii - 20) / 9.0) ** 2 < 1
    verts, faces, _n, _v = marching_cubes(solid.astype(np.float32), 0.5)
    world = verts.astype(np.float64)[:, ::-1] * np.array([0.7, 1.3, 0.45])  # anisotropic
    tris = world[faces]
    expected = se.surface_points(tris, 0.4)
    longest = float(np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=2).max())
    monkeypatch.setattr(se, "_TRIANGLE_CHUNK", 700)  # many chunks, split inside each group
    points, got_longest = se._covering_points(world, faces, 0.4)
    np.testing.assert_array_equal(points, expected)
    assert got_longest == longest
    empty, zero = se._covering_points(world, faces[:0], 0.4)
    assert empty.shape == (0, 3) and zero == 0.0
