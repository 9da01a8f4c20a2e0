"""Signed distance fields in mm: exactness against brute force, analytic shapes, crops, bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geometry.distance import (
    EMPTY_DISTANCE_MM,
    DistanceField,
    conservative_distance_mm,
    grid_points_mm,
    index_from_world_matrix,
    interpolation_bound_mm,
    signed_distance_mm,
    union_field,
)

ANISO = np.array([0.7, 0.8, 1.5])


def rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def brute_force(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance from every voxel centre to the union of the inside voxels' boxes."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in mask.shape), indexing="ij")
    p = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    inside = mask.reshape(-1)

    def to_boxes(points: np.ndarray, sites: np.ndarray) -> np.ndarray:
        gap = np.maximum(np.abs(points[:, None, :] - sites[None, :, :]) - 0.5, 0.0) * spacing
        return np.sqrt((gap**2).sum(axis=-1)).min(axis=1)

    out = np.where(inside, -to_boxes(p, p[~inside]), to_boxes(p, p[inside]))
    return out.reshape(mask.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transform_is_exact_distance_to_the_half_way_surface(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((6, 9, 11)) < 0.1
    d = signed_distance_mm(mask, ANISO, crop_margin_mm=None)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, brute_force(mask, ANISO), atol=1e-5)


def test_face_neighbours_sit_half_a_step_from_the_surface_on_every_axis() -> None:
    mask = np.zeros((7, 7, 7), dtype=bool)
    mask[3, 3, 3] = True
    d = signed_distance_mm(mask, ANISO, crop_margin_mm=None)
    # the voxel's own box: inside depth = half the smallest spacing
    assert d[3, 3, 3] == pytest.approx(-0.35, abs=1e-6)
    # one step away along i, j, k: half a step of that axis
    assert d[3, 3, 4] == pytest.approx(0.35, abs=1e-6)
    assert d[3, 4, 3] == pytest.approx(0.40, abs=1e-6)
    assert d[4, 3, 3] == pytest.approx(0.75, abs=1e-6)
    # two slices away along k: 1.5 steps of 1.5 mm (spacing honoured, not voxels)
    assert d[5, 3, 3] == pytest.approx(2.25, abs=1e-6)
    # diagonal neighbour: to the box corner
    assert d[4, 4, 4] == pytest.approx(math.sqrt(0.35**2 + 0.4**2 + 0.75**2), abs=1e-6)


def test_sphere_on_an_anisotropic_grid() -> None:
    shape = (40, 70, 80)
    origin = np.array([-28.0, -28.0, -30.0])
    p = grid_points_mm(shape, origin, ANISO, np.eye(3))
    r = np.linalg.norm(p - np.array([0.3, -0.2, 0.4]), axis=-1)
    radius = 12.0
    d = signed_distance_mm(r <= radius, ANISO, crop_margin_mm=None)
    exact = r - radius
    near = np.abs(exact) < 8.0
    err = d[near] - exact[near]
    outside = exact[near] > 0
    # the voxel staircase lies within half a cell diagonal of the true surface ...
    assert np.max(np.abs(err)) <= 0.5 * np.linalg.norm(ANISO) + 0.02
    # ... never more than half the largest step inside it (clearance overstatement) ...
    assert np.max(err[outside]) <= 0.5 * ANISO.max() + 0.02
    # ... and protrudes on average: outside distances are understated (conservative)
    assert float(np.mean(err[outside])) < 0.0


def test_cylinder_on_an_oblique_grid() -> None:
    direction = rotation((1.0, 2.0, 3.0), 25.0)
    shape = (30, 60, 70)
    centre_ijk = (np.array(shape[::-1]) - 1) / 2
    origin = -direction @ (ANISO * centre_ijk)
    p = grid_points_mm(shape, origin, ANISO, direction)
    axis = np.array([0.2, 1.0, -0.1])
    axis /= np.linalg.norm(axis)
    radial = np.linalg.norm(p - (p @ axis)[..., None] * axis, axis=-1)
    exact = radial - 6.0
    d = signed_distance_mm(exact <= 0, ANISO, crop_margin_mm=None)
    k, j, i = (slice(3, -3),) * 3  # away from the grid edge, which is not a surface
    near = np.abs(exact[k, j, i]) < 6.0
    err = d[k, j, i][near] - exact[k, j, i][near]
    outside = exact[k, j, i][near] > 0
    assert np.max(np.abs(err)) <= 0.5 * np.linalg.norm(ANISO) + 0.02
    assert np.max(err[outside]) <= 0.5 * ANISO.max() + 0.02
    assert float(np.mean(err[outside])) < 0.0


def test_crop_gives_exact_values_near_and_lipschitz_lower_bounds_far() -> None:
    rng = np.random.default_rng(5)
    mask = np.zeros((30, 40, 50), dtype=bool)
    mask[12:16, 18:25, 20:27] = rng.random((4, 7, 7)) < 0.7
    exact = signed_distance_mm(mask, ANISO, crop_margin_mm=None)
    cropped = signed_distance_mm(mask, ANISO, crop_margin_mm=4.0)
    assert np.all(cropped <= exact + 1e-5)
    near = exact < 4.0
    np.testing.assert_allclose(cropped[near], exact[near], atol=1e-5)
    # 1-Lipschitz along every axis (what the kernel's skipping relies on)
    for axis, step in zip((2, 1, 0), ANISO, strict=True):
        assert np.max(np.abs(np.diff(cropped, axis=axis))) <= step + 1e-4


def test_empty_and_full_masks() -> None:
    empty = signed_distance_mm(np.zeros((4, 5, 6), dtype=bool), ANISO)
    assert np.all(empty == np.float32(EMPTY_DISTANCE_MM))
    full = signed_distance_mm(np.ones((4, 5, 6), dtype=bool), ANISO)
    assert np.all(full == np.float32(-EMPTY_DISTANCE_MM))


@pytest.mark.parametrize(
    ("mask", "spacing", "margin"),
    [
        (np.zeros((4, 4)), (1, 1, 1), 5.0),
        (np.zeros((4, 4, 4)), (1, 0, 1), 5.0),
        (np.zeros((4, 4, 4)), (1, 1, 1), -1.0),
    ],
)
def test_bad_input_is_refused(mask: np.ndarray, spacing: tuple, margin: float) -> None:
    with pytest.raises(ValueError):
        signed_distance_mm(mask, spacing, crop_margin_mm=margin)


def test_distance_field_from_mask_carries_its_grid() -> None:
    direction = rotation((0.0, 0.0, 1.0), 30.0)
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[2, 3, 3] = True
    field = DistanceField.from_mask(
        mask,
        origin=np.array([1.0, 2.0, 3.0]),
        spacing=ANISO,
        direction=direction,
        crop_margin_mm=10.0,
    )
    assert field.values.dtype == np.float32
    assert field.exact_within_mm == 10.0
    a = field.index_from_world()
    world = np.array([1.0, 2.0, 3.0]) + direction @ (ANISO * np.array([3.0, 3.0, 2.0]))
    np.testing.assert_allclose(a[:, :3] @ world + a[:, 3], [3.0, 3.0, 2.0], atol=1e-12)
    assert field.interpolation_bound_mm(0.5) == pytest.approx(interpolation_bound_mm(ANISO))


def test_index_from_world_inverts_the_volume_convention() -> None:
    direction = rotation((1.0, -1.0, 0.5), 40.0)
    origin = np.array([-5.0, 7.0, 2.0])
    a = index_from_world_matrix(origin, ANISO, direction)
    ijk = np.array([[0.0, 0.0, 0.0], [3.5, -1.0, 2.25]])
    world = ijk * ANISO @ direction.T + origin
    np.testing.assert_allclose(world @ a[:, :3].T + a[:, 3], ijk, atol=1e-12)


def test_sampling_bound_constants_and_correction() -> None:
    c = interpolation_bound_mm(ANISO, step_mm=0.5)
    assert c == pytest.approx(math.sqrt(0.25**2 + (0.49 + 0.64 + 2.25) / 4))
    m = np.array([-1.0, 0.5, c, 1.2, 3.0, 10.0, np.nan])
    lower = conservative_distance_mm(m, ANISO, step_mm=0.5)
    assert np.all(lower[:-1] <= m[:-1])
    assert np.isnan(lower[-1])
    assert lower[4] == pytest.approx(math.sqrt(9.0 - c * c))
    assert lower[0] == pytest.approx(-1.0 - 0.25 - 0.5 * np.linalg.norm(ANISO))
    # the correction shrinks with distance: 0.16 mm at 3 mm, < 0.05 mm at 10 mm
    assert 3.0 - lower[4] < 0.17
    assert 10.0 - lower[5] < 0.05


def test_union_field_is_the_minimum_and_names_the_nearest() -> None:
    shape = (10, 12, 14)
    p = grid_points_mm(shape, np.zeros(3), ANISO, np.eye(3))
    centres = [np.array([2.0, 3.0, 4.0]), np.array([8.0, 6.0, 9.0])]
    fields = [
        DistanceField(np.linalg.norm(p - c, axis=-1) - 1.0, np.zeros(3), ANISO, np.eye(3))
        for c in centres
    ]
    union, nearest = union_field(fields)
    np.testing.assert_array_equal(union.values, np.minimum(fields[0].values, fields[1].values))
    assert nearest.dtype == np.int8
    assert nearest[0, 0, 0] == 0
    assert nearest[-1, -1, -1] == 1
    other = DistanceField(fields[0].values, np.ones(3), ANISO, np.eye(3))
    with pytest.raises(ValueError):
        union_field([fields[0], other])
