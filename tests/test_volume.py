"""The Volume type: index <-> world on anisotropic, oblique grids, checked against SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.volume import Volume, orientation_from_normal


def rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


@pytest.fixture
def oblique() -> Volume:
    rng = np.random.default_rng(1)
    return Volume(
        array=rng.integers(-1000, 2000, size=(7, 9, 11)).astype(np.int16),
        origin=np.array([-120.5, 33.25, 410.0]),
        spacing=np.array([0.7, 0.9, 2.5]),
        direction=rotation([1.0, 2.0, 0.5], 17.0),
        modality="CT",
    )


def test_index_to_world_matches_simpleitk(oblique: Volume) -> None:
    img = oblique.to_sitk()
    rng = np.random.default_rng(2)
    ijk = rng.uniform(-2, 12, size=(50, 3))
    ours = oblique.index_to_world(ijk)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(oblique.world_to_index(ours), ijk, atol=1e-9)


def test_array_axes_are_k_j_i(oblique: Volume) -> None:
    img = oblique.to_sitk()
    assert img.GetSize() == oblique.size == (11, 9, 7)
    assert img.GetPixel(3, 5, 2) == oblique.array[2, 5, 3]
    back = Volume.from_sitk(img, modality="CT")
    assert back.same_grid(oblique)
    np.testing.assert_array_equal(back.array, oblique.array)


def test_affine_and_voxel_volume(oblique: Volume) -> None:
    p = oblique.affine @ np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(p[:3], oblique.index_to_world([1.0, 2.0, 3.0]))
    assert oblique.voxel_volume_mm3 == pytest.approx(0.7 * 0.9 * 2.5)


def test_contains_world_uses_half_voxel_margin(oblique: Volume) -> None:
    inside = oblique.index_to_world([[0, 0, 0], [10.4, 8.4, 6.4]])
    outside = oblique.index_to_world([[-0.6, 0, 0], [0, 0, 6.6]])
    assert oblique.contains_world(inside).all()
    assert not oblique.contains_world(outside).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": [1.0, 0.0, 1.0]}, "spacing"),
        ({"spacing": [1.0, np.nan, 1.0]}, "spacing"),
        ({"direction": np.ones((3, 3))}, "orthonormal"),
        ({"origin": [0, np.inf, 0]}, "origin"),
        ({"array": np.zeros((4, 4))}, "3-D"),
    ],
)
def test_invalid_geometry_is_refused(kwargs: dict, message: str) -> None:
    base = {
        "array": np.zeros((2, 3, 4)),
        "origin": [0, 0, 0],
        "spacing": [1, 1, 1],
        "direction": np.eye(3),
    }
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Volume(**base)


def test_orientation_names() -> None:
    assert orientation_from_normal([0, 0, 1]) == "axial"
    assert orientation_from_normal([0, 0, -1]) == "axial"
    assert orientation_from_normal([1, 0, 0]) == "sagittal"
    assert orientation_from_normal([0, 1, 0]) == "coronal"
    assert orientation_from_normal(rotation([1, 0, 0], 5.0) @ [0, 0, 1]) == "oblique"
