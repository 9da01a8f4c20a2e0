"""Anonymised teaching copies: PS3.15 basic profile, consistent UIDs, no dates or private
elements, the input untouched, the output loading with the same geometry and voxels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_data
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging.anonymize import AnonymizeError, anonymize_folder
from imaging.dicom_write import write_series
from imaging.phantom import make_phantom
from imaging.read import load

#: Elements that identify a patient, a place, a person or a device and must leave no value.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "RequestingPhysician",
    "PerformingPhysicianName",
    "OperatorsName",
    "StationName",
    "DeviceSerialNumber",
    "AccessionNumber",
    "StudyID",
    "PerformedProcedureStepID",
    "RequestAttributesSequence",
)
PLACEHOLDERS = ("", "ANONYMIZED", "ANONYMOUS", "00010101")  # 00010101: the date placeholder
#: UIDs that name a kind of object, not an instance: never replaced.
CLASS_UID_KEYWORDS = (
    "SOPClassUID",
    "ReferencedSOPClassUID",
    "MediaStorageSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
)


def _walk(ds: Dataset):
    """Every element, nested sequences included."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ" and elem.value is not None:
            for item in elem.value:
                yield from _walk(item)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _instance_uids(paths: list[Path]) -> set[str]:
    uids: set[str] = set()
    for p in paths:
        ds = pydicom.dcmread(p)
        elems = list(_walk(ds)) + list(ds.file_meta)
        for e in elems:
            if e.VR == "UI" and e.keyword not in CLASS_UID_KEYWORDS and e.value:
                values = [e.value] if isinstance(e.value, str) else list(e.value)
                uids.update(str(v) for v in values)
    return uids


def _dates(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        for e in _walk(pydicom.dcmread(p)):
            if e.VR in ("DA", "DT") and e.value:
                out.add(str(e.value)[:8])
    return out


def test_real_scanner_study_keeps_nothing_identifying(tmp_path: Path) -> None:
    src = shared_data("abdomen_ct_dicom_scanner", "dicom")
    inputs = sorted(p for p in src.iterdir() if p.is_file())
    before = _digest(src)
    real_dates = _dates(inputs) - {"00010101"}
    real_uids = _instance_uids(inputs)
    assert real_dates and real_uids  # the study does carry dates and UIDs to remove
    assert any(e.tag.is_private for e in _walk(pydicom.dcmread(inputs[0])))

    out = tmp_path / "anon"
    result = anonymize_folder(src, out)
    assert len(result.written) == len(inputs) == 20
    assert _digest(src) == before  # the input is never modified

    blobs = [p.read_bytes() for p in result.written]
    for path, blob in zip(result.written, blobs, strict=True):
        ds = pydicom.dcmread(path)
        assert not [e.tag for e in _walk(ds) if e.tag.is_private]
        for keyword in IDENTIFYING:
            if keyword in ds:
                value = ds[keyword].value
                assert (
                    value is None
                    or str(value) in PLACEHOLDERS
                    or (ds[keyword].VR == "SQ" and len(value) == 0)
                ), (keyword, value)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        # no real date, no original instance UID, anywhere in the file
        for date in real_dates:
            assert date.encode() not in blob
        for uid in real_uids:
            assert uid.encode() not in blob
        assert b"Petersgraben" not in blob and b"PETCT2" not in blob
    assert _dates(result.written) <= {"00010101"}

    # UIDs remapped consistently: one frame of reference, one new value per old one
    frames = {pydicom.dcmread(p).FrameOfReferenceUID for p in result.written}
    assert len(frames) == 1
    media = [pydicom.dcmread(p).file_meta.MediaStorageSOPInstanceUID for p in result.written]
    assert len(set(media)) == len(media)

    # the same volume: geometry and voxels
    original, copy = load(src), load(out)
    assert copy.same_grid(original, tol_mm=0.0)
    assert copy.array.dtype == original.array.dtype
    assert np.array_equal(copy.array, original.array)


@pytest.fixture()
def phantom_series(tmp_path: Path) -> list[Path]:
    phantom = make_phantom(
        lesion="left_ala_s1", spacing_mm=(3.0, 3.0, 4.0), rotation_deg=(0, 10, 5)
    )
    files = write_series(
        phantom.image, tmp_path / "in", patient_name="DOE^JANE", patient_id="12345"
    )
    # file 2 references file 1, as derived images do
    first = pydicom.dcmread(files[0])
    ds = pydicom.dcmread(files[1])
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([ref])
    ds.StudyDate = "20240229"
    ds.PatientBirthDate = "19500101"
    ds.BurnedInAnnotation = "YES"
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "DOE^JANE at ward 5")
    ds.save_as(files[1])
    return files


def test_uids_stay_consistent_across_the_series(phantom_series: list[Path], tmp_path: Path) -> None:
    src = phantom_series[0].parent
    old = [pydicom.dcmread(p) for p in phantom_series]
    result = anonymize_folder(src, tmp_path / "out")
    new = [pydicom.dcmread(p) for p in result.written]  # same order: files sort the same way
    assert len({d.StudyInstanceUID for d in new}) == 1
    assert len({d.SeriesInstanceUID for d in new}) == 1
    assert new[0].StudyInstanceUID != old[0].StudyInstanceUID
    assert len({d.SOPInstanceUID for d in new}) == len(new)
    for d in new:
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert str(d.PatientName) in PLACEHOLDERS and str(d.PatientID) in PLACEHOLDERS
        assert not [e for e in _walk(d) if e.tag.is_private]
    # the reference from image 2 to image 1 follows image 1's new UID
    ref = new[1].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert ref == new[0].SOPInstanceUID
    assert b"DOE^JANE" not in b"".join(p.read_bytes() for p in result.written)
    assert b"20240229" not in result.written[1].read_bytes()
    # the burned-in annotation flag is reported
    assert len(result.warnings) == 1 and "burned-in annotation" in result.warnings[0]
    original, copy = load(src), load(tmp_path / "out")
    assert copy.same_grid(original, tol_mm=0.0) and np.array_equal(copy.array, original.array)


def test_two_runs_give_unrelated_uids(phantom_series: list[Path], tmp_path: Path) -> None:
    src = phantom_series[0].parent
    a = anonymize_folder(src, tmp_path / "a")
    b = anonymize_folder(src, tmp_path / "b")
    uid_a = pydicom.dcmread(a.written[0]).StudyInstanceUID
    uid_b = pydicom.dcmread(b.written[0]).StudyInstanceUID
    assert uid_a != uid_b


def test_refuses_unsafe_folders(phantom_series: list[Path], tmp_path: Path) -> None:
    src = phantom_series[0].parent
    with pytest.raises(AnonymizeError, match="inside the input"):
        anonymize_folder(src, src / "anon")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep me")
    with pytest.raises(AnonymizeError, match="not empty"):
        anonymize_folder(src, busy)
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(AnonymizeError, match="no DICOM images"):
        anonymize_folder(empty, tmp_path / "o")
    with pytest.raises(AnonymizeError, match="not a folder"):
        anonymize_folder(tmp_path / "missing", tmp_path / "o2")


def test_anonymize_command(phantom_series: list[Path], tmp_path: Path, capsys) -> None:
    from app.cli import main

    src = phantom_series[0].parent
    assert main(["anonymize", str(src), str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert f"Anonymised {len(phantom_series)} image(s)" in text and "burned-in" in text
    assert main(["anonymize", str(src), str(src / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sacroplan: error:") and err.count("\n") == 1
