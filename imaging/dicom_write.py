"""Write a Volume as a DICOM series: one single-frame CT or MR Image Storage file per slice.

Used by ``sacroplan phantom`` (the built-in sample) and by the reader's round-trip tests.
Geometry is written exactly: ImageOrientationPatient from the direction's ``i`` and
``j`` columns, ImagePositionPatient per slice, PixelSpacing as ``[row, column]`` =
``[y, x]`` spacing, SliceThickness and SpacingBetweenSlices from the ``k`` spacing.
Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from imaging.volume import Volume

__all__ = ["write_series"]

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}
_FILE_NAMES = ("ordered", "shuffled", "uid")


def write_series(
    volume: Volume,
    out_dir: str | os.PathLike[str],
    *,
    modality: str = "CT",
    patient_name: str = "SACROPLAN^PHANTOM",
    patient_id: str = "PHANTOM",
    series_description: str = "sacroplan volume",
    study_uid: str | None = None,
    series_uid: str | None = None,
    file_names: str = "ordered",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` as a single-frame DICOM series.

    Parameters
    ----------
    volume : Volume
        Array ``[k, j, i]`` in modality units (HU for CT) on an LPS grid (mm). A
        left-handed direction (det < 0) is written with the ``k`` axis reversed, so the
        slices still progress along the IOP normal (row x column).
    out_dir : path-like
        Folder to write into (created if missing).
    modality : {"CT", "MR"}
        SOP class: CT Image Storage or MR Image Storage.
    patient_name, patient_id, series_description : str
        Header values.
    study_uid, series_uid : str, optional
        UIDs to use; new ones are generated when omitted.
    file_names : {"ordered", "shuffled", "uid"}
        ``IM00001.dcm`` in slice order; the same names shuffled (seeded) so that file
        order says nothing about slice order; or ``<SOPInstanceUID>.dcm``.
    rescale_slope, rescale_intercept : float
        Stored value = round((value - intercept) / slope), as int16 (or uint16 when the
        values are non-negative and exceed int16). The defaults keep CT values in HU.
    seed : int
        Seed of the ``"shuffled"`` naming.

    Returns
    -------
    list of Path
        The files written, in slice order (``k`` ascending along the IOP normal).

    Raises
    ------
    ValueError
        Unknown modality or naming, zero slope, or values that do not fit 16 bits with
        the given slope/intercept.
    """
    modality = modality.upper()
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be CT or MR, got {modality!r}")
    if file_names not in _FILE_NAMES:
        raise ValueError(f"file_names must be one of {_FILE_NAMES}, got {file_names!r}")
    if rescale_slope == 0:
        raise ValueError("rescale_slope must not be 0")
    array, origin, spacing, direction = _right_handed(volume)
    dtype = _storage_dtype(array, rescale_slope, rescale_intercept)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_slices = array.shape[0]
    uids = _Uids(study_uid, series_uid, n_slices)
    names = _file_names(file_names, uids.instances, seed)
    base = _base_dataset(
        modality=modality,
        patient_name=patient_name,
        patient_id=patient_id,
        series_description=series_description,
        uids=uids,
        direction=direction,
        spacing=spacing,
        shape=array.shape[1:],
        signed=dtype == np.int16,
        slope=rescale_slope,
        intercept=rescale_intercept,
    )
    written: list[Path] = []
    for k in range(n_slices):
        position = origin + direction[:, 2] * spacing[2] * k
        ds = _slice_dataset(base, k, position, float(position @ direction[:, 2]), uids)
        stored = _stored_slice(array[k], rescale_slope, rescale_intercept, dtype)
        ds.PixelData = stored.tobytes()
        target = out / names[k]
        _save_atomically(ds, target)
        written.append(target)
    return written


def _save_atomically(ds: Dataset, target: Path) -> None:
    """Write to a temporary file beside ``target``, then rename it onto ``target``."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


class _Uids:
    def __init__(self, study: str | None, series: str | None, n: int) -> None:
        self.study = study or generate_uid()
        self.series = series or generate_uid()
        self.frame_of_reference = generate_uid()
        self.instances = [generate_uid() for _ in range(n)]


def _right_handed(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    array = np.asarray(volume.array)
    origin = np.asarray(volume.origin, dtype=float)
    spacing = np.asarray(volume.spacing, dtype=float)
    direction = np.asarray(volume.direction, dtype=float).copy()
    if np.linalg.det(direction) < 0:
        origin = origin + direction[:, 2] * spacing[2] * (array.shape[0] - 1)
        direction[:, 2] *= -1
        array = array[::-1]
    return array, origin, spacing, direction


def _stored_slice(values: np.ndarray, slope: float, intercept: float, dtype: type) -> np.ndarray:
    """Stored values of one slice: round((value - intercept) / slope)."""
    if values.dtype.kind in "iu" and slope == 1 and float(intercept).is_integer():
        return np.ascontiguousarray(values.astype(np.int32) - int(intercept), dtype=dtype)
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    return np.ascontiguousarray(stored, dtype=dtype)


def _storage_dtype(array: np.ndarray, slope: float, intercept: float) -> type:
    """int16 when the stored values fit, uint16 when non-negative and larger."""
    if array.size == 0:
        return np.int16
    lo_v, hi_v = float(np.min(array)), float(np.max(array))
    if not (np.isfinite(lo_v) and np.isfinite(hi_v)):
        raise ValueError("the volume holds NaN or infinite values; they cannot be stored")
    ends = sorted(round((v - intercept) / slope) for v in (lo_v, hi_v))
    lo, hi = ends
    if lo >= -32768 and hi <= 32767:
        return np.int16
    if lo >= 0 and hi <= 65535:
        return np.uint16
    raise ValueError(
        f"values {lo_v:g}..{hi_v:g} (after slope {slope:g} / intercept {intercept:g}) do not "
        "fit 16 bits; choose another rescale_slope/rescale_intercept"
    )


def _file_names(kind: str, instance_uids: list[str], seed: int) -> list[str]:
    n = len(instance_uids)
    width = max(5, len(str(n)))
    ordered = [f"IM{k + 1:0{width}d}.dcm" for k in range(n)]
    if kind == "ordered":
        return ordered
    if kind == "uid":
        return [f"{uid}.dcm" for uid in instance_uids]
    perm = np.random.default_rng(seed).permutation(n)
    return [ordered[int(p)] for p in perm]


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _base_dataset(
    *,
    modality: str,
    patient_name: str,
    patient_id: str,
    series_description: str,
    uids: _Uids,
    direction: np.ndarray,
    spacing: np.ndarray,
    shape: tuple[int, int],
    signed: bool,
    slope: float,
    intercept: float,
) -> Dataset:
    now = _dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SOPClassUID = _SOP_CLASSES[modality]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "sacroplan"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.StudyDescription = "sacroplan"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    ds.SliceThickness = _ds(spacing[2])
    ds.SpacingBetweenSlices = _ds(spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU" if modality == "CT" else "US"
    if modality == "CT":
        ds.KVP = ""
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    else:
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
    return ds


def _slice_dataset(
    base: Dataset, k: int, position: np.ndarray, location: float, uids: _Uids
) -> Dataset:
    ds = base.copy()
    ds.SOPInstanceUID = uids.instances[k]
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(location)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds
