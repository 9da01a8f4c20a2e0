"""DICOM studies: scan files into series plans, and load a planned series as a Volume.

The work is split in three steps, each in its own module:

* :mod:`imaging.dicom_headers` - one header read per file (``stop_before_pixels``) into
  per-image records; non-images and damaged files are rejected with a reason;
* :mod:`imaging.dicom_geometry` - grouping by series, splitting mixed series, ordering
  slices along their normal and planning the grid (regular stack or resampling);
* :mod:`imaging.dicom_pixels` - decoding the pixels into the planned grid.

The scan computes the plan once; loading follows it, so a scan reports exactly the
size, spacing, origin and direction that loading returns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from imaging.dicom_geometry import Refusal, SeriesPlan, plan_all
from imaging.dicom_headers import (
    ImageRecord,
    NotLoadableError,
    dicomdir_references,
    read_records,
    reraise_interrupts,
)
from imaging.dicom_pixels import read_series_array, same_pixels
from imaging.errors import StudyReadError
from imaging.volume import Volume

__all__ = [
    "SeriesPlan",
    "dicomdir_files",
    "load_plan",
    "plan_meta",
    "scan_files",
]


def scan_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[SeriesPlan], list[Refusal]]:
    """Read the headers of ``paths`` and plan every series they hold.

    Parameters
    ----------
    paths : iterable of path-like
        Candidate files (DICOM or not, any order).

    Returns
    -------
    plans : list of SeriesPlan
        Loadable series.
    skipped : list of Refusal
        Files that are not loadable images and series that cannot form a volume, each
        with a reason.
    """
    records: list[ImageRecord] = []
    skipped: list[Refusal] = []
    for path in paths:
        try:
            records.extend(read_records(path))
        except NotLoadableError as exc:
            skipped.append(Refusal([os.fspath(path)], str(exc), kind="file"))
        except BaseException as exc:  # a header no reader should choke on, but did
            reraise_interrupts(exc)
            reason = f"unreadable file ({_short(exc)})"
            skipped.append(Refusal([os.fspath(path)], reason, kind="file"))
    plans, refusals = plan_all(records, same_pixels=same_pixels)
    return plans, skipped + refusals


def dicomdir_files(path: str | os.PathLike[str]) -> tuple[list[Path], list[Refusal]]:
    """Files a DICOMDIR references, and the references that are missing.

    Raises
    ------
    StudyReadError
        When the DICOMDIR cannot be read.
    """
    try:
        refs = dicomdir_references(path)
    except NotLoadableError as exc:
        raise StudyReadError(f"cannot read the DICOMDIR {path}: {exc}") from exc
    root = Path(path).parent.resolve()
    inside = [p for p in refs if _within(p, root)]
    outside = [
        Refusal(
            [os.fspath(p)],
            "listed in the DICOMDIR but outside its folder: not read (a damaged or forged index)",
            kind="file",
        )
        for p in refs
        if p not in inside
    ]
    present = [p for p in inside if p.is_file()]
    missing = [
        Refusal([os.fspath(p)], "listed in the DICOMDIR but missing on disk", kind="file")
        for p in inside
        if not p.is_file()
    ]
    return present, outside + missing


def _within(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, ValueError, RuntimeError):  # unresolvable (loops, bad names)
        return False


def load_plan(plan: SeriesPlan) -> Volume:
    """Decode a planned series into a :class:`~imaging.volume.Volume`.

    Parameters
    ----------
    plan : SeriesPlan
        From :func:`scan_files`.

    Returns
    -------
    Volume
        Array ``[k, j, i]`` on the planned grid (LPS mm), CT in HU, with ``meta``
        describing patient, study, series, warnings and source files.

    Raises
    ------
    StudyReadError
        When a file of the series cannot be read or decoded.
    """
    array = read_series_array(plan)
    expected = tuple(reversed(plan.size))
    if array.shape != expected:
        raise StudyReadError(
            f"series {plan.uid}: decoded {array.shape[::-1]} voxels but the headers describe "
            f"{plan.size}; scan the folder again"
        )
    return Volume(
        array=array,
        origin=np.asarray(plan.origin, dtype=np.float64),
        spacing=np.asarray(plan.spacing, dtype=np.float64),
        direction=np.asarray(plan.direction, dtype=np.float64),
        modality=plan.modality,
        meta=plan_meta(plan),
    )


def plan_meta(plan: SeriesPlan) -> dict:
    """Patient, study and series description of a plan (``Volume.meta``)."""
    rec = plan.first
    return {
        "patient_name": rec.patient_name,
        "patient_id": rec.patient_id,
        "study_uid": rec.study_uid,
        "study_date": rec.study_date,
        "study_description": rec.study_description,
        "series_uid": plan.uid,
        "series_number": rec.series_number,
        "frame_of_reference_uid": rec.frame_of_reference_uid,
        "description": rec.series_description,
        "modality": plan.modality,
        "n_images": len(plan.records),
        "warnings": list(plan.warnings),
        "source_paths": plan.paths,
        "resampled": plan.resampling is not None,
    }


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
