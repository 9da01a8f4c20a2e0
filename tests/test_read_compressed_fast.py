"""Compressed series decoded straight from the file give exactly pydicom's pixel values.

Single-frame compressed images skip the second header parse and use the fastest decoding
plugin installed for their transfer syntax (CharLS for JPEG-LS). Every syntax that path
takes is checked here against ``ds.pixel_array`` frame by frame, for signed 16-bit,
unsigned 12-bit and signed 12-bit stored values, and through the whole reader against the
same series stored uncompressed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared_data
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from imaging import dicom_pixels
from imaging.dicom_headers import NotLoadableError, read_records
from imaging.dicom_write import write_series
from imaging.errors import StudyReadError
from imaging.phantom import make_phantom
from imaging.read import load, load_series, scan

LOSSLESS = {"JPEG-LS": JPEGLSLossless, "JPEG 2000 lossless": JPEG2000Lossless, "RLE": RLELossless}
LOSSY = {"JPEG-LS near-lossless": JPEGLSNearLossless, "JPEG 2000": JPEG2000}
COMPRESS_OPTIONS = {JPEGLSNearLossless: {"jls_error": 3}, JPEG2000: {"j2k_cr": [20]}}


@pytest.fixture(scope="module")
def plain_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom CT (anisotropic voxels) as an uncompressed series, HU stored as int16."""
    image = make_phantom(spacing_mm=(3.0, 3.5, 5.0)).image
    folder = tmp_path_factory.mktemp("plain")
    write_series(image, folder, file_names="shuffled")
    return folder


def _variant(ds: pydicom.Dataset, kind: str) -> None:
    """Re-store the pixels of ``ds`` as ``kind``: signed16, unsigned12 or signed12."""
    hu = ds.pixel_array.astype(np.int32)
    if kind == "signed16":
        return
    if kind == "unsigned12":
        stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        ds.PixelRepresentation, ds.RescaleIntercept = 0, -1024
    elif kind == "signed12":
        stored = np.clip(hu, -2048, 2047).astype(np.int16)
        ds.PixelRepresentation = 1
    else:
        raise ValueError(kind)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = stored.tobytes()


def compressed_copy(plain: Path, out: Path, syntax: str, kind: str) -> Path:
    """A new series: the files of ``plain`` re-stored as ``kind`` and compressed to ``syntax``."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    for f in sorted(plain.iterdir()):
        ds = pydicom.dcmread(f)
        _variant(ds, kind)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.compress(syntax, **COMPRESS_OPTIONS.get(syntax, {}))
        ds.save_as(out / f.name, enforce_file_format=True)
    return out


def _pydicom_hu(folder: Path) -> np.ndarray:
    """Reference: pydicom's pixel_array of every file, rescaled, in slice order."""
    slices = [pydicom.dcmread(f) for f in folder.iterdir()]
    normal = np.cross(
        np.array(slices[0].ImageOrientationPatient[:3], float),
        np.array(slices[0].ImageOrientationPatient[3:], float),
    )
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    return np.stack(
        [
            ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for ds in slices
        ]
    )


ALL = {**LOSSLESS, **LOSSY}
KINDS = ("signed16", "unsigned12", "signed12")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(ALL))
def test_direct_decoding_is_bit_identical_to_pixel_array(
    plain_series: Path, tmp_path: Path, name: str, kind: str
) -> None:
    folder = compressed_copy(plain_series, tmp_path / "c", ALL[name], kind)
    files = sorted(folder.iterdir())
    for f in files[::4]:
        (record,) = read_records(f)
        assert dicom_pixels._direct_candidate(record.layout)
        fast = dicom_pixels._decode_direct(str(f), record.layout)
        assert fast is not None, f"{name}: the direct path refused {f.name}"
        reference = pydicom.dcmread(f).pixel_array
        assert fast.shape == reference.shape
        assert np.array_equal(fast, reference), f"{name} {kind}: values differ in {f.name}"
        assert fast.dtype.kind == reference.dtype.kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(ALL))
def test_loaded_volume_matches_pydicom(
    plain_series: Path, tmp_path: Path, name: str, kind: str
) -> None:
    folder = compressed_copy(plain_series, tmp_path / "c", ALL[name], kind)
    volume = load(folder)
    expected = _pydicom_hu(folder)
    assert volume.array.dtype == np.int16
    assert np.array_equal(volume.array.astype(np.float64), expected)


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_series_equals_the_uncompressed_one(
    plain_series: Path, tmp_path: Path, name: str
) -> None:
    folder = compressed_copy(plain_series, tmp_path / "c", LOSSLESS[name], "signed16")
    plain, packed = load(plain_series), load(folder)
    assert np.array_equal(packed.array, plain.array)
    np.testing.assert_allclose(packed.origin, plain.origin, atol=1e-6)
    np.testing.assert_allclose(packed.spacing, plain.spacing, atol=1e-6)
    np.testing.assert_allclose(packed.direction, plain.direction, atol=1e-9)


def test_jpeg_ls_uses_charls_when_installed() -> None:
    pytest.importorskip("jpeg_ls")
    decoder, plugin = dicom_pixels._direct_decoder(JPEGLSLossless)
    assert decoder is not None
    assert plugin == "pyjpegls"


def test_damaged_stream_falls_back_and_is_reported(plain_series: Path, tmp_path: Path) -> None:
    """A codestream CharLS refuses takes the general path (every plugin, then GDCM)."""
    folder = compressed_copy(plain_series, tmp_path / "c", JPEGLSLossless, "signed16")
    victim = sorted(folder.iterdir())[3]
    (record,) = read_records(victim)
    layout = record.layout
    data = bytearray(victim.read_bytes())
    # keep the item headers and the JPEG-LS markers, scramble the entropy-coded middle
    start = layout.value_offset + layout.value_length // 3
    stop = layout.value_offset + 2 * layout.value_length // 3
    data[start:stop] = bytes([0xFF]) * (stop - start)
    victim.write_bytes(bytes(data))
    assert dicom_pixels._decode_direct(str(victim), layout) is None
    try:  # what the other plugins make of it decides, as for any file
        reference = pydicom.dcmread(victim).pixel_array
    except Exception:
        reference = None
    if reference is None:
        with pytest.raises(StudyReadError, match=victim.name):
            load(folder)
        return
    volume = load(folder)
    assert any(np.array_equal(s, reference) for s in volume.array)


def test_file_cut_short_after_the_scan_is_an_error(plain_series: Path, tmp_path: Path) -> None:
    """A file cut short after the scan is reported, not decoded from what is left."""
    folder = compressed_copy(plain_series, tmp_path / "c", JPEGLSLossless, "signed16")
    (info,) = scan(folder).series
    victim = sorted(folder.iterdir())[5]
    (record,) = read_records(victim)
    victim.write_bytes(victim.read_bytes()[: record.layout.value_offset + 40])
    with pytest.raises(StudyReadError, match="truncated since the scan"):
        load_series(info)


def test_real_compressed_files_decode_as_pixel_array() -> None:
    """Every odd real file the direct path accepts gives pydicom's values.

    JPEG-LS, JPEG 2000 (with a pixel representation mismatch, lossy too), JPEG lossless
    and baseline/extended, RLE, from several vendors and toolkits; the files the direct
    path refuses (a sequence delimiter inside the codestream, ...) are left to the
    general path, which ``test_read_odd`` covers.
    """
    root = shared_data("odd_dicom")
    checked = 0
    for f in sorted(p for p in root.rglob("*.dcm") if p.is_file()):
        try:
            records = read_records(f)
        except NotLoadableError:
            continue
        layout = records[0].layout
        if not dicom_pixels._direct_candidate(layout):
            continue
        fast = dicom_pixels._decode_direct(str(f), layout)
        if fast is None:
            continue
        reference = pydicom.dcmread(f, force=True).pixel_array
        assert np.array_equal(fast, reference), f"{f.relative_to(root)}: values differ"
        checked += 1
    assert checked >= 20
