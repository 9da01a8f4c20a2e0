"""The lesion as a DICOM Segmentation (SEG) object referencing its source CT/MR series.

The SEG is built with highdicom (binary segmentation, one segment "Lesion", semi-automatic
region growing) from the source series' own datasets, so it carries their patient, study
and frame of reference and references every source image. Each SEG frame lies on one source
slice: the mask (on the study grid, LPS mm) is sampled at the centres of that slice's
pixels, so a mask on the grid the series was read into comes out voxel for voxel.
:func:`seg_mask_on_grid` reads a SEG back onto a grid from its own plane positions (pydicom
only), independently of how it was written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from imaging.atomic import atomic_path
from imaging.errors import SacroplanError
from imaging.volume import Volume

__all__ = ["SegExportError", "read_source_series", "seg_mask_on_grid", "write_lesion_seg"]


class SegExportError(SacroplanError):
    """A DICOM SEG cannot be made (no DICOM source, unsupported source, empty mask)."""


def read_source_series(paths: list[str | os.PathLike[str]]) -> list[Dataset]:
    """Read the source images of a series (headers and pixels) for a SEG.

    Raises
    ------
    SegExportError
        No file, a file is not DICOM, or the series is multi-frame.
    """
    if not paths:
        raise SegExportError(
            "the study is not a DICOM series (a NIfTI/NRRD file or the built-in sample): a "
            "DICOM SEG must reference DICOM images; export the lesion as a label map instead"
        )
    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise SegExportError(f"cannot read the source image {p}: {exc}") from exc
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise SegExportError(
                f"{p} is a multi-frame image: a lesion SEG is made for single-frame series only"
            )
        out.append(ds)
    return out


def _slice_geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origin, row direction, column direction (LPS) and (row, column) spacing of a slice."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    spacing = np.asarray(ds.PixelSpacing, dtype=float)
    return ipp, iop[:3], iop[3:], spacing


def _sample_on_slice(mask: Volume, inside: np.ndarray, ds: Dataset) -> np.ndarray:
    """The mask at the centres of ``ds``'s pixels (nearest voxel), ``(rows, columns)`` bool."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    out = np.zeros((rows, cols), dtype=bool)
    origin, along_row, along_col, (dr, dc) = _slice_geometry(ds)
    # A slice plane that misses the mask's voxels by more than half a voxel holds nothing.
    normal = np.cross(along_row, along_col)
    depth = (inside - origin) @ normal
    tol = 0.5 * float(np.max(mask.spacing)) + 1e-3
    near = inside[np.abs(depth) <= tol]
    if near.size == 0:
        return out
    # Restrict to the pixels spanned by the nearby lesion voxels.
    c = (near - origin) @ along_row / dc
    r = (near - origin) @ along_col / dr
    pad_c = int(np.ceil(np.max(mask.spacing) / dc)) + 1
    pad_r = int(np.ceil(np.max(mask.spacing) / dr)) + 1
    c0, c1 = max(int(np.floor(c.min())) - pad_c, 0), min(int(np.ceil(c.max())) + pad_c + 1, cols)
    r0, r1 = max(int(np.floor(r.min())) - pad_r, 0), min(int(np.ceil(r.max())) + pad_r + 1, rows)
    if c0 >= c1 or r0 >= r1:
        return out
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    world = origin + np.outer(cc.ravel() * dc, along_row) + np.outer(rr.ravel() * dr, along_col)
    ijk = np.round(mask.world_to_index(world)).astype(np.int64)
    size = np.asarray(mask.size)
    ok = np.all((ijk >= 0) & (ijk < size), axis=1)
    hit = np.zeros(len(world), dtype=bool)
    sel = ijk[ok]
    hit[ok] = mask.array[sel[:, 2], sel[:, 1], sel[:, 0]] > 0
    out[r0:r1, c0:c1] = hit.reshape(rr.shape)
    return out


def write_lesion_seg(
    mask: Volume,
    source: list[Dataset],
    out_path: str | os.PathLike[str],
    *,
    software_version: str = "unknown",
    segment_label: str = "Lesion",
    series_description: str = "sacroplan lesion",
) -> Path:
    """Write the lesion mask as a binary DICOM SEG referencing ``source``.

    Parameters
    ----------
    mask : Volume
        Lesion mask (nonzero = lesion) on the study grid, LPS mm.
    source : list of Dataset
        The source series' single-frame images (from :func:`read_source_series`).
    out_path : path
        The ``.dcm`` file to write (atomically).
    software_version : str
        sacroplan version recorded in the SEG.
    segment_label, series_description : str
        Names shown by viewers.

    Returns
    -------
    Path

    Raises
    ------
    SegExportError
        No source image, the images are not all in one frame of reference, the mask
        touches no source slice, or the file cannot be written.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source:
        raise SegExportError("a DICOM SEG needs the source DICOM images of the study")
    frames = {str(getattr(ds, "FrameOfReferenceUID", "")) for ds in source}
    if len(frames) != 1 or "" in frames:
        raise SegExportError(
            "the source images do not share one frame of reference: a SEG cannot reference them"
        )
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if kji.size == 0:
        raise SegExportError("the lesion mask is empty: there is nothing to export as a SEG")
    inside = mask.index_to_world(kji[:, ::-1].astype(np.float64))
    pixels = np.stack([_sample_on_slice(mask, inside, ds) for ds in source]).astype(np.uint8)
    if not pixels.any():
        raise SegExportError(
            "the lesion does not fall on any slice of the source series: is this the series "
            "the plan was made on?"
        )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="sacroplan lesion region growing",
            version=software_version,
            family=codes.cid7162.NeighborhoodAnalysis,
        ),
        anatomic_regions=[codes.SCT.Sacrum],
    )
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=max(int(getattr(source[0], "SeriesNumber", 0) or 0), 0) + 900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sacroplan",
        manufacturer_model_name="sacroplan",
        software_versions=software_version,
        device_serial_number="none",
        series_description=series_description,
    )
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            seg.save_as(str(tmp))
    except OSError as exc:
        raise SegExportError(f"cannot write the SEG {out}: {exc.strerror or exc}") from exc
    return out


def seg_mask_on_grid(seg_path: str | os.PathLike[str], grid: Volume) -> np.ndarray:
    """Read a binary SEG's first segment onto ``grid`` from its own plane positions.

    Every SEG pixel that is set marks the grid voxel nearest to its centre (pydicom only;
    no highdicom), so a SEG written on the grid's slices reads back voxel for voxel.

    Returns
    -------
    (K, J, I) bool ndarray
        On ``grid``'s array shape.
    """
    ds = pydicom.dcmread(str(seg_path))
    frames = np.asarray(ds.pixel_array)
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    out = np.zeros(grid.array.shape, dtype=bool)
    size = np.asarray(grid.size)
    for f, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ident = group if "SegmentIdentificationSequence" in group else shared
        seg_number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if seg_number != 1:
            continue
        ipp = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        rc = np.argwhere(frames[f] > 0)
        world = ipp + np.outer(rc[:, 1] * dc, iop[:3]) + np.outer(rc[:, 0] * dr, iop[3:])
        ijk = np.round(grid.world_to_index(world)).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < size), axis=1)
        sel = ijk[ok]
        out[sel[:, 2], sel[:, 1], sel[:, 0]] = True
    return out
