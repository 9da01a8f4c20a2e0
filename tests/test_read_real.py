"""The reader on the real scans in ``../shared/data`` (skipped when that folder is absent)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.read import load, scan

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared study data not available at {path} (only in the dev/CI tree)")
    return path


def test_pelvis_dicom_scans_as_one_ct_series() -> None:
    result = scan(shared("pelvis_ct_dicom"))
    assert len(result.series) == 1
    info = result.series[0]
    assert info.modality == "CT" and info.n_images == 112 and info.orientation == "axial"
    assert list(info.size) == [122, 101, 112]
    np.testing.assert_allclose(info.spacing, [3, 3, 3], atol=1e-6)
    np.testing.assert_allclose(info.origin, [-185.04, -311.32, 94.30], atol=0.01)
    assert not info.warnings
    assert {Path(k.path).name for k in result.skipped} == {"LICENSE-Apache-2.0.txt", "README.md"}


def test_pelvis_dicom_matches_the_nifti_voxel_for_voxel() -> None:
    t0 = time.perf_counter()
    dicom = load(shared("pelvis_ct_dicom"))
    assert time.perf_counter() - t0 < 5.0
    assert dicom.array.dtype == np.int16 and dicom.modality == "CT"
    image = sitk.DICOMOrient(
        sitk.ReadImage(str(shared("pelvis_ct_nifti", "example_ct.nii.gz"))), "LPS"
    )
    expected = np.clip(sitk.GetArrayFromImage(image), -1024, 3071)
    np.testing.assert_array_equal(dicom.array, expected)
    np.testing.assert_allclose(dicom.origin, image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(dicom.spacing, image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(dicom.direction.ravel(), image.GetDirection(), atol=1e-6)
    assert dicom.meta["patient_name"] == "TOTALSEG^EXAMPLE_CT"
    assert len(dicom.meta["source_paths"]) == 112


def test_pelvis_nifti_loads_like_dicomorient() -> None:
    path = shared("pelvis_ct_nifti", "example_ct.nii.gz")
    nifti = load(path)
    image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    assert nifti.modality == "CT" and nifti.array.dtype == np.int16
    np.testing.assert_array_equal(nifti.array, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(nifti.origin, image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(nifti.direction.ravel(), image.GetDirection(), atol=1e-9)
    dicom = load(shared("pelvis_ct_dicom"))
    assert nifti.same_grid(dicom, tol_mm=1e-3)


def test_pelvis_nifti_folder_lists_the_ct_and_its_label_maps() -> None:
    result = scan(shared("pelvis_ct_nifti"))
    kinds = {s.uid: s.modality for s in result.series}
    assert kinds["example_ct.nii.gz"] == "CT"
    assert kinds["labels/totalseg_fast_total_multilabel.nii.gz"] == "LABEL"
    labels = load(shared("pelvis_ct_nifti"), series_uid="labels/totalseg_fast")
    assert labels.modality == "LABEL" and labels.array.dtype == np.uint8
    assert {25, 26} <= set(np.unique(labels.array).tolist())


def test_abdomen_scanner_series() -> None:
    vol = load(shared("abdomen_ct_dicom_scanner", "dicom"))
    assert vol.size == (512, 512, 20) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    assert vol.array.dtype == np.int16
    assert vol.array.min() == -1024 and vol.array.max() == 1839
    # slices ordered by position along the normal, not by file name
    assert vol.origin[2] == pytest.approx(-804.5)
    assert any("no Series Instance UID" in w for w in vol.meta["warnings"])


def test_abdomen_folder_prefers_the_dicom_series_over_the_nifti_beside_it() -> None:
    result = scan(shared("abdomen_ct_dicom_scanner"))
    assert len(result.series) == 1 and result.series[0].n_images == 20
    nifti = [k for k in result.skipped if k.path.endswith(".nii.gz")]
    assert nifti and "beside DICOM" in nifti[0].reason
    assert load(shared("abdomen_ct_dicom_scanner")).size == (512, 512, 20)
