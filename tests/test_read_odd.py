"""The odd/malformed DICOM corpus: every file and folder gives a volume or a clean outcome.

``../shared/data/odd_dicom/MANIFEST.tsv`` says what is odd about each file. Nothing may
raise anything but :class:`~imaging.errors.StudyReadError` (and subclasses).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from imaging.errors import StudyReadError
from imaging.read import ScanResult, load, load_series, scan
from imaging.volume import Volume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ODD = SHARED / "odd_dicom"
CATEGORIES = (
    "01_truncated",
    "02_missing_tags",
    "03_transfer_syntaxes",
    "04_multiframe",
    "05_nonsquare_pixels",
    "06_gantry_tilt_real_GE_head_CT",
    "06_gantry_tilt_synthetic_ct",
    "07_mixed_series_one_folder",
    "07b_dicomdir_multi_patient",
    "08_other_oddities",
)


@pytest.fixture(scope="module")
def odd() -> Path:
    if not ODD.exists():
        pytest.skip(f"odd DICOM corpus not available at {ODD} (only in the dev/CI tree)")
    return ODD


@pytest.fixture(scope="module")
def manifest(odd: Path) -> dict[str, str]:
    with open(odd / "MANIFEST.tsv", newline="") as fh:
        return {row["path"]: row["what is odd"] for row in csv.DictReader(fh, delimiter="\t")}


def outcome(path: Path) -> Volume | StudyReadError:
    """Load a file or folder; only a Volume or a StudyReadError may come back."""
    try:
        return load(path)
    except StudyReadError as exc:
        assert str(exc) and "\n" not in str(exc), f"{path}: message must be one line"
        return exc


def reasons(result: ScanResult) -> dict[str, str]:
    return {Path(k.path).name: k.reason for k in result.skipped}


def series_files(result: ScanResult) -> set[str]:
    return {p for s in result.series for p in s.source.paths} if result.series else set()


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_file_gives_a_volume_or_a_clean_error(odd: Path, category: str) -> None:
    files = [p for p in sorted((odd / category).rglob("*")) if p.is_file()]
    assert files
    for path in files:
        result = outcome(path)
        if isinstance(result, Volume):
            assert result.array.ndim == 3 and result.array.size > 0


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_folder_scan_accounts_for_every_file(odd: Path, category: str) -> None:
    folder = odd / category
    result = scan(folder)
    files = {str(p) for p in folder.rglob("*") if p.is_file()}
    used = series_files(result)
    skipped = {k.path for k in result.skipped}
    dropped = {r.path for s in result.series for r in s.source.dropped}
    assert files == used | skipped | dropped
    assert not used & skipped
    for info in result.series:
        try:
            vol = load_series(info)
        except StudyReadError:
            continue
        assert vol.size == tuple(info.size)
        np.testing.assert_allclose(vol.origin, info.origin, atol=1e-9)
        np.testing.assert_allclose(vol.spacing, info.spacing, atol=1e-9)
        np.testing.assert_allclose(vol.direction.ravel(), info.direction, atol=1e-12)


def test_manifest_lists_the_corpus(manifest: dict[str, str]) -> None:
    assert sum(1 for p in manifest if p.startswith("03_transfer_syntaxes/")) >= 30
    assert any("truncated" in v for v in manifest.values())


# ------------------------------------------------------------------------------------------------
def test_01_truncated_files_are_skipped_with_a_reason(odd: Path) -> None:
    result = scan(odd / "01_truncated")
    why = reasons(result)
    for name in (
        "MR_truncated.dcm",
        "ct_half_pixeldata.dcm",
        "ct_header_only_1000B.dcm",
        "emri_small_jpeg_2k_lossless_too_short.dcm",
    ):
        assert "truncated" in why[name], why[name]
    assert "empty file" in why["empty_0B.dcm"]
    assert "not a DICOM file" in why["not_dicom.dcm"]
    assert "RTPLAN" in why["rtplan_truncated.dcm"]
    # The two preamble-less copies of one slice are readable: one series, the twin dropped.
    (info,) = result.series
    assert info.n_images == 1 and any("no DICOM preamble" in w for w in info.warnings)
    assert any("duplicate image" in w for w in info.warnings)


def test_02_missing_tags(odd: Path) -> None:
    folder = odd / "02_missing_tags"
    with pytest.raises(StudyReadError, match="no Image Position"):
        load(folder / "series_without_positions")
    expectations = {
        "ct_no_IPP.dcm": "no Image Position",
        "ct_no_IOP.dcm": "no Image Orientation",
        "ct_no_PixelSpacing.dcm": "no Pixel Spacing",
        "ct_no_RescaleSlope_Intercept.dcm": "without Rescale Slope/Intercept",
        "ct_no_SeriesInstanceUID.dcm": "no Series Instance UID",
        "ct_no_SliceThickness.dcm": "without Slice Thickness",
    }
    for name, warning in expectations.items():
        vol = load(folder / name)
        assert vol.size == (512, 512, 1)
        assert any(warning in w for w in vol.meta["warnings"]), (name, vol.meta["warnings"])
    assert load(folder / "ct_no_RescaleSlope_Intercept.dcm").array.min() == 0
    assert load(folder / "ct_no_IPP.dcm").array.min() == -1024
    why = reasons(scan(folder))
    assert "not a DICOM file" in why["no_meta.dcm"]
    assert "Rows" in why["meta_missing_tsyntax.dcm"]


def test_03_transfer_syntaxes_decode_to_the_same_image(odd: Path) -> None:
    folder = odd / "03_transfer_syntaxes"
    same = folder / "dcm_qa_ts_same_MR_9_syntaxes"
    arrays = {p.name: load(p).array for p in sorted(same.glob("*.dcm"))}
    assert len(arrays) == 9
    reference = arrays["1.dcm"]
    assert reference.max() == 2362
    for name, arr in arrays.items():  # all nine syntaxes are lossless
        np.testing.assert_array_equal(arr, reference, err_msg=name)
    mr_small = load(odd / "07_mixed_series_one_folder" / "C_MR_small.dcm").array
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "zipMR.gz",
    ):
        np.testing.assert_array_equal(load(folder / "pydicom" / name).array, mr_small, name)
    emri = load(odd / "04_multiframe" / "emri_small.dcm").array
    for name in ("emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(load(folder / "pydicom-data" / name).array, emri, name)
    # The same 12-bit lossy JPEG, once with a non-conformant scan header that only GDCM
    # accepts; two lossy decoders may round the inverse DCT differently (by 1).
    lossy = load(folder / "pydicom" / "JPEG-lossy.dcm").array
    extended = load(folder / "pydicom" / "JPGExtended.dcm").array
    assert np.abs(lossy - extended).max() <= 1 and np.mean(lossy != extended) < 0.05
    assert load(folder / "pydicom" / "J2K_pixelrep_mismatch.dcm").array.min() == -2000
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        path = next(folder.rglob(name))
        assert isinstance(outcome(path), Volume | StudyReadError)
    for name in ("JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "image_dfl.dcm"):
        assert load(folder / "pydicom" / name).size[2] == 1
    for name in ("JLSL_16_15_1_1F.dcm", "693_J2KR.dcm", "JPEG-LL.dcm"):
        assert load(folder / "pydicom-data" / name).size[2] == 1
    why = reasons(scan(folder))
    assert "colour" in why["HTJ2KLossless_08_RGB.dcm"] and "colour" in why["HTJ2K_08_RGB.dcm"]
    assert "colour" in why["GDCMJ2K_TextGBR.dcm"]
    assert "ultrasound" in why["ExplVR_BigEnd.dcm"]
    assert "segmentation" in why["liver_deflate.dcm"]


def test_04_multiframe(odd: Path) -> None:
    folder = odd / "04_multiframe"
    ect = load(folder / "eCT_Supplemental.dcm")
    assert ect.size == (512, 512, 2) and ect.modality == "CT" and ect.array.dtype == np.int16
    np.testing.assert_allclose(ect.spacing, [0.388672, 0.388672, 10.0], atol=1e-6)
    raw = pydicom.dcmread(folder / "eCT_Supplemental.dcm").pixel_array
    ordered = raw[::-1] if ect.direction[2, 2] < 0 else raw  # frames sorted along the normal
    np.testing.assert_array_equal(ect.array, ordered.astype(np.int32) - 1024)
    emri = load(folder / "emri_small.dcm")
    assert emri.size == (64, 64, 10) and emri.modality == "MR" and emri.array.dtype == np.float32
    assert any("without per-frame positions" in w for w in emri.meta["warnings"])
    why = reasons(scan(folder))
    assert "SEG" in why["liver.dcm"] and "RTDOSE" in why["rtdose.dcm"]
    assert "colour" in why["SC_rgb_2frame.dcm"]
    assert "ultrasound" in why["OBXXXX1A_2frame.dcm"]


def test_05_non_square_pixels_are_honoured(odd: Path) -> None:
    folder = odd / "05_nonsquare_pixels"
    vol = load(folder / "ct_series_rowspacing0.7_colspacing0.977")
    # PixelSpacing is [row, column] = [y, x]
    np.testing.assert_allclose(vol.spacing, [0.9765625, 0.7, 2.0], atol=1e-6)
    assert vol.size == (512, 512, 6)
    scout = load(folder / "pcir_CT2N" / "6293.dcm")
    np.testing.assert_allclose(scout.spacing[:2], [0.596847, 0.545455], atol=1e-6)
    assert "ultrasound" in reasons(scan(folder))["color-pl_PixelAspectRatio_4_3.dcm"]


def test_06_real_gantry_tilt_is_corrected_and_named(odd: Path) -> None:
    info = scan(odd / "06_gantry_tilt_real_GE_head_CT").series[0]
    assert any("gantry tilt 18.5°" in w and "resampl" in w for w in info.warnings)
    assert any("uneven slice spacing" in w for w in info.warnings)
    vol = load_series(info)
    assert vol.array.dtype == np.float32 and vol.size == tuple(info.size)
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-9)
    # The grid is perpendicular to the tilted slices: k runs along their normal.
    ds = pydicom.dcmread(odd / "06_gantry_tilt_real_GE_head_CT" / "01.dcm")
    iop = np.array(ds.ImageOrientationPatient, float)
    np.testing.assert_allclose(vol.direction[:, 2], np.cross(iop[:3], iop[3:]), atol=1e-6)


def test_06_synthetic_tilt_is_an_oblique_stack(odd: Path) -> None:
    info = scan(odd / "06_gantry_tilt_synthetic_ct").series[0]
    assert any("gantry tilt 15.0°" in w for w in info.warnings)
    vol = load_series(info)
    assert vol.size == (512, 512, 8) and vol.array.dtype == np.int16
    assert vol.spacing[2] == pytest.approx(2.0 / np.cos(np.radians(15.0)), abs=1e-3)


def test_07_mixed_folder_is_split_into_its_series(odd: Path) -> None:
    folder = odd / "07_mixed_series_one_folder"
    result = scan(folder)
    sizes = sorted(s.n_images for s in result.series)
    assert sizes == [1, 1, 1, 4, 15, 20]
    main = next(s for s in result.series if s.n_images == 20)
    assert any("duplicate image A_duplicate_position.dcm dropped" in w for w in main.warnings)
    localizer = next(s for s in result.series if s.uid == main.uid + "#2")
    assert localizer.orientation == "coronal"
    tilted = next(s for s in result.series if s.n_images == 4)
    assert any("gantry tilt 18.5°" in w for w in tilted.warnings)
    why = reasons(result)
    assert "RTSTRUCT" in why["C_rtstruct.dcm"] and "not a DICOM" in why["README_not_dicom.txt"]
    with pytest.raises(StudyReadError, match=r"6 series.*--series"):
        load(folder)
    vol = load(folder, series_uid=main.uid)
    assert vol.size == (512, 512, 20)


def test_07b_dicomdir_multi_patient(odd: Path) -> None:
    folder = odd / "07b_dicomdir_multi_patient"
    walked = scan(folder)
    assert all(
        why == "DICOMDIR index" for name, why in reasons(walked).items() if "DICOMDIR" in name
    )
    assert len({s.study_uid for s in walked.series}) >= 3
    via_index = scan(folder / "DICOMDIR")
    files = [p for s in via_index.series for p in s.source.paths]
    assert len(files) == len(set(files)), "a file referenced by the DICOMDIR was counted twice"
    assert {s.uid for s in via_index.series} <= {s.uid for s in walked.series}
    assert len(via_index.series) == len(walked.series)
    for variant in ("bigEnd", "implicit", "nooffset", "reordered", "nopatient"):
        again = scan(folder / f"DICOMDIR-{variant}")
        assert {s.uid for s in again.series} == {s.uid for s in via_index.series}, variant
    empty = scan(folder / "DICOMDIR-empty.dcm")
    assert not empty.series and "lists no image files" in empty.skipped[0].reason
    projections = [k for k in walked.skipped if "/CR" in k.path]
    assert projections and all("projection radiograph" in k.reason for k in projections)
    with pytest.raises(StudyReadError, match="gap of 202.50 mm"):
        load(folder / "77654033" / "CT2")


def test_08_other_oddities(odd: Path) -> None:
    folder = odd / "08_other_oddities"
    path = folder / "ct_unusual_rescale_slope2.5.dcm"
    vol = load(path)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array[0], raw * 2.5 - 2048.0)
    lut = load(folder / "mlut_18.dcm")
    ds = pydicom.dcmread(folder / "mlut_18.dcm")
    np.testing.assert_array_equal(lut.array[0], apply_modality_lut(ds.pixel_array, ds))
    with pytest.raises(StudyReadError, match="cannot decode"):
        load(folder / "JPEG2000-embedded-sequence-delimiter.dcm")
    why = reasons(scan(folder))
    assert "truncated" in why["ct_pixeldata_length_mismatch.dcm"]
    assert "structured report" in why["test-SR.dcm"] and "ECG" in why["waveform_ecg.dcm"]
    assert "RTDOSE" in why["badVR.dcm"] and "colour" in why["OT-PAL-8-face.dcm"]
    for name in ("bad_sequence.dcm", "explicit_VR-UN.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"):
        assert load(folder / name).size[2] == 1
