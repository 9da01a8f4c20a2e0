"""Anonymised copies of DICOM studies for teaching (DICOM PS3.15 Basic Application Level
Confidentiality Profile).

The de-identification itself is done by **dicom-anonymizer** (Kitware Medical): it applies
the action codes of PS3.15 Table E.1-1 (D replace, Z empty, X remove, U replace UID, and the
combined codes) tag by tag from tables generated from the standard itself, versioned by
DICOM edition, and removes private elements. It was preferred over dicognito, which is
also maintained but aims at realistic-looking substitute identities and keeps its own list
of identifying attributes rather than the profile's table; a teaching copy should follow the
published profile.

What this module adds around it:

* one UID mapping per run, so study, series, frame of reference and referenced-instance UIDs
  stay consistent across every file of the study, and empty UIDs stay empty instead of
  collapsing into one; for the X/Z/U* references to other images (Referenced Image, Source
  Image sequences) the U* choice is taken, so a reference still points at the right image;
* the profile applied inside every sequence item as well as at the top level;
* dates and times: removed or replaced with the placeholder ``00010101`` as the profile
  codes say (the same for every file, so no real date survives), and
  ``LongitudinalTemporalInformationModified`` set to ``REMOVED``;
* ``PatientIdentityRemoved = YES`` and the de-identification method (code 113100, Basic
  Application Confidentiality Profile) recorded;
* images flagged ``BurnedInAnnotation = YES`` are warned about: the header is cleaned, the
  pixels are not, so the text written into them must be checked by eye;
* the input is only read; the output files are written atomically under new names that
  carry nothing from the originals; pixel data and geometry elements are copied untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from imaging.atomic import atomic_path
from imaging.errors import SacroplanError

__all__ = ["AnonymizeError", "AnonymizeResult", "anonymize_dataset", "anonymize_folder"]

#: DICOM editions of the profile tables, newest first (the first one installed is used).
_TABLE_EDITIONS = ("dicomfields_2026c", "dicomfields_2024b", "dicomfields_2023")
_BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")


class AnonymizeError(SacroplanError):
    """A study cannot be anonymised (no DICOM files, output inside the input, ...)."""


@dataclass
class AnonymizeResult:
    """What :func:`anonymize_folder` did.

    Attributes
    ----------
    written : list of Path
        Output files, one per input DICOM image.
    skipped : list of (str, str)
        Input files left out and why (not DICOM, DICOMDIR index).
    warnings : list of str
        Things to check by hand (burned-in annotation).
    uids_remapped : int
        Distinct UIDs given new values.
    """

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    uids_remapped: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "written": [str(p) for p in self.written],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "warnings": list(self.warnings),
            "uids_remapped": self.uids_remapped,
        }


class _UidMap:
    """Old UID -> new UID, the same for every file of one run; empty values stay empty."""

    def __init__(self) -> None:
        # "" -> "" keeps empty UIDs empty (dicom-anonymizer's own lookup honours it too).
        self.mapping: dict[str, str] = {"": ""}

    @property
    def count(self) -> int:
        """Distinct non-empty UIDs replaced so far."""
        return len(self.mapping) - 1

    def new(self, old: str) -> str:
        old = str(old).strip()
        if not old:
            return old
        if old not in self.mapping:
            self.mapping[old] = generate_uid()
        return self.mapping[old]

    def action(self) -> Callable[[Dataset, Any], None]:
        def replace_uid(dataset: Dataset, tag: Any) -> None:
            element = dataset.get(tag)
            if element is None or element.VR != "UI" or element.value is None:
                return
            if isinstance(element.value, str):
                element.value = self.new(element.value)
            else:
                element.value = [self.new(v) for v in element.value]

        return replace_uid


def _profile_rules(uids: _UidMap) -> tuple[dict[Any, Any], Callable[[], dict[Any, Any]]]:
    """The profile's actions with UID replacement routed through ``uids``."""
    from dicomanonymizer import simpledicomanonymizer as sda
    from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

    for edition in _TABLE_EDITIONS:
        try:
            tables = dicom_anonymization_database_selector(edition)
            break
        except ValueError:
            continue
    else:  # pragma: no cover - every release ships at least one edition
        raise AnonymizeError("the installed dicom-anonymizer has no PS3.15 profile tables")

    def base() -> dict[Any, Any]:
        return sda.initialize_actions(edition)

    replace_uid = uids.action()
    extra: dict[Any, Any] = {tag: replace_uid for tag in tables["U_TAGS"]}
    # X/Z/U* (references to other images): keep the sequence, so that the items' instance
    # UIDs are replaced (U) through the run's mapping and still point at the right images.
    extra.update({tag: _keep_sequence for tag in tables["X_Z_U_STAR_TAGS"]})
    return extra, base


def _keep_sequence(dataset: Dataset, tag: Any) -> None:
    """The U* choice of an X/Z/U* code: the items are de-identified one by one instead."""


def anonymize_dataset(ds: Dataset, *, uids: _UidMap | None = None) -> list[str]:
    """Apply the basic profile to one dataset in place (top level and every sequence item).

    Parameters
    ----------
    ds : Dataset
        Read with pydicom (with its ``file_meta``).
    uids : optional
        The run's UID mapping (a new one when omitted).

    Returns
    -------
    list of str
        Warnings (burned-in annotation).
    """
    from dicomanonymizer import simpledicomanonymizer as sda

    uids = uids or _UidMap()
    warnings: list[str] = []
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        warnings.append(
            "flagged with burned-in annotation: identifying text may be written into the pixels, "
            "which are copied unchanged; check the images by eye before sharing them"
        )
    extra, base = _profile_rules(uids)
    # dicom-anonymizer keeps its UID lookup in a module global; route it through this run's
    # mapping so UIDs it replaces inside sequences stay consistent with the rest.
    saved = sda.dictionary
    sda.dictionary = uids.mapping
    try:
        sda.anonymize_dataset(ds, extra, True, base)
        _anonymize_items(ds, extra, base)
    finally:
        sda.dictionary = saved
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        sop = str(ds.get("SOPInstanceUID", "") or "")
        meta.MediaStorageSOPInstanceUID = sop or uids.new(meta.MediaStorageSOPInstanceUID)
    ds.PatientIdentityRemoved = "YES"
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    try:
        version = metadata.version("dicom-anonymizer")
    except metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    ds.DeidentificationMethod = f"PS3.15 Basic Profile, dicom-anonymizer {version}"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    return warnings


def _anonymize_items(
    ds: Dataset, extra: dict[Any, Any], base: Callable[[], dict[Any, Any]]
) -> None:
    from dicomanonymizer import simpledicomanonymizer as sda

    for element in list(ds):
        if element.VR != "SQ" or element.value is None:
            continue
        for item in element.value:
            sda.anonymize_dataset(item, extra, True, base)
            _anonymize_items(item, extra, base)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def anonymize_folder(
    in_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> AnonymizeResult:
    """Write an anonymised copy of every DICOM image under ``in_dir`` into ``out_dir``.

    Parameters
    ----------
    in_dir : path
        Folder with the study (searched recursively; never modified).
    out_dir : path
        New or empty folder, not inside ``in_dir``. Files are named ``IM00001.dcm``... in
        the order the input files sort.

    Returns
    -------
    AnonymizeResult

    Raises
    ------
    AnonymizeError
        ``in_dir`` is not a folder, ``out_dir`` is inside it or not empty, no DICOM image
        was found, or a file cannot be written.
    """
    src, dst = Path(in_dir), Path(out_dir)
    if not src.is_dir():
        raise AnonymizeError(f"{src} is not a folder: give the folder that holds the study")
    if _inside(dst, src):
        raise AnonymizeError(
            f"the output folder {dst} is inside the input {src}: choose a folder outside it"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise AnonymizeError(f"the output folder {dst} exists and is not empty: choose a new one")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    result = AnonymizeResult()
    uids = _UidMap()
    datasets: list[tuple[Path, Dataset]] = []
    for path in files:
        if path.name.upper() == "DICOMDIR":
            result.skipped.append((str(path), "DICOMDIR index (a new one is not written)"))
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            result.skipped.append((str(path), f"not a readable DICOM file ({exc})"))
            continue
        if "PixelData" not in ds:
            result.skipped.append((str(path), "no image pixels (not part of an image series)"))
            continue
        datasets.append((path, ds))
    if not datasets:
        raise AnonymizeError(f"no DICOM images found in {src}")
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnonymizeError(f"cannot create the output folder {dst}: {exc.strerror}") from exc
    for n, (path, ds) in enumerate(datasets, 1):
        for w in anonymize_dataset(ds, uids=uids):
            result.warnings.append(f"{path.name}: {w}")
        target = dst / f"IM{n:05d}.dcm"
        try:
            with atomic_path(target) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except (OSError, ValueError) as exc:
            raise AnonymizeError(f"cannot write {target}: {exc}") from exc
        result.written.append(target)
    result.uids_remapped = uids.count
    return result
