"""NIfTI, NRRD and MetaImage files: reoriented to LPS exactly like SimpleITK's DICOMOrient."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.errors import StudyReadError
from imaging.read import load, scan


def make_image(array: np.ndarray, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((12.5, -40.0, 88.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def signed_permutations() -> list[np.ndarray]:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for col, (row, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            mats.append(m)
    return mats


def small_rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(np.eye(3) + 0.15 * rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(q))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_reorientation_matches_dicomorient(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 2000, size=(5, 6, 7)).astype(np.int16)
    for n, base in enumerate(signed_permutations()[:: 3 if suffix != ".nii.gz" else 1]):
        direction = small_rotation(n) @ base
        path = tmp_path / f"im{n}{suffix}"
        sitk.WriteImage(make_image(array, direction), str(path))
        expected = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
        info = scan(path).series[0]
        vol = load(path)
        np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(vol.origin, expected.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(vol.spacing, expected.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(vol.direction.ravel(), expected.GetDirection(), atol=1e-6)
        assert info.size == vol.size
        np.testing.assert_allclose(info.origin, vol.origin, atol=1e-9)
        np.testing.assert_allclose(info.direction, vol.direction.ravel(), atol=1e-12)
        assert vol.modality == "CT" and vol.array.dtype == np.int16


def test_modality_guesses(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ct = rng.integers(-1024, 1500, size=(4, 5, 6)).astype(np.float64)
    sitk.WriteImage(make_image(ct, np.eye(3)), str(tmp_path / "ct.nii.gz"))
    vol = load(tmp_path / "ct.nii.gz")
    assert vol.modality == "CT" and vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, ct)

    mr = rng.uniform(0, 900, size=(4, 5, 6)).astype(np.float32)
    sitk.WriteImage(make_image(mr, np.eye(3)), str(tmp_path / "mr.nrrd"))
    vol = load(tmp_path / "mr.nrrd")
    assert vol.modality == "OT" and vol.array.dtype == np.float32

    labels = rng.integers(0, 6, size=(4, 5, 6)).astype(np.uint8)
    sitk.WriteImage(make_image(labels, np.eye(3)), str(tmp_path / "labels.mha"))
    vol = load(tmp_path / "labels.mha")
    assert vol.modality == "LABEL" and vol.array.dtype == np.uint8


def test_2d_image_is_one_slice(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(3, 4) - 900)
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "slice.nrrd"))
    vol = load(tmp_path / "slice.nrrd")
    assert vol.size == (4, 3, 1)
    np.testing.assert_allclose(vol.spacing[:2], [0.5, 0.25])


def test_unsupported_volume_files_are_skipped(tmp_path: Path) -> None:
    four_d = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False)
    sitk.WriteImage(four_d, str(tmp_path / "four.nii.gz"))
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    (tmp_path / "broken.nii").write_bytes(b"\0" * 50)
    result = scan(tmp_path)
    assert not result.series
    why = {Path(k.path).name: k.reason for k in result.skipped}
    assert "4-D image" in why["four.nii.gz"]
    assert "colour/vector" in why["rgb.mha"]
    assert "unreadable" in why["broken.nii"]
    with pytest.raises(StudyReadError, match="4-D image"):
        load(tmp_path / "four.nii.gz")
