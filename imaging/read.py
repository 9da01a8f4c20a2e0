"""The front door for images: find the series in a folder or file, and load one as a Volume.

``scan`` reads headers only (DICOM with ``stop_before_pixels``; NIfTI/NRRD/MetaImage
through SimpleITK) and reports every loadable series with the exact grid ``load_series``
will return, plus every file it skipped and why. ``load`` = scan + pick one series.

Accepted inputs: a folder (walked recursively), a DICOMDIR, a single DICOM file (also
without preamble or gzip-compressed), or a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/
``.mha``/``.mhd`` file. Volume files are reoriented to LPS index order like
``SimpleITK.DICOMOrient(image, "LPS")``.

Errors a user can cause raise :class:`~imaging.errors.StudyReadError` (or its
subclass :class:`~imaging.errors.SeriesGeometryError`) with a one-line message naming
the file or series, what is wrong and what to do; nothing else escapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from imaging.dicom import SeriesPlan, dicomdir_files, load_plan, scan_files
from imaging.dicom_geometry import Refusal
from imaging.dicom_headers import DICOMDIR_SOP_CLASS, reraise_interrupts
from imaging.dicom_pixels import output_dtype
from imaging.errors import MemoryBudgetError, SacroplanError, SeriesGeometryError, StudyReadError
from imaging.volume import Volume, orientation_from_normal

__all__ = [
    "MEMORY_BUDGET_ENV",
    "WORKING_SET_FACTOR",
    "ScanResult",
    "SeriesInfo",
    "SkippedFile",
    "VolumeFileSource",
    "check_memory_budget",
    "load",
    "load_series",
    "memory_budget_mb",
    "memory_needed_mb",
    "scan",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_LABEL_MAX_VALUES = 255

#: Environment variable holding the memory budget in MB (loading + planning one study).
MEMORY_BUDGET_ENV = "SACROPLAN_MEMORY_BUDGET_MB"
#: Peak memory of loading and planning a study as a multiple of its voxel array's bytes
#: (``bench/bench_memory.py`` measures it on a 512 x 512 x 300 CT).
WORKING_SET_FACTOR = 3.5
_DEFAULT_BUDGET_FRACTION = 0.5  # of the physical memory, when no budget is configured
_FALLBACK_BUDGET_MB = 4096.0  # when the physical memory cannot be read
_MB = 1024.0 * 1024.0


@dataclass(eq=False)
class SeriesInfo:
    """One loadable series, described from headers only.

    ``size``, ``spacing``, ``origin`` and ``direction`` are exactly what
    :func:`load_series` returns: ``size``/``spacing`` in ``(x, y, z)`` = ``(i, j, k)``
    order (voxels, mm), ``origin`` the LPS position (mm) of voxel ``(0, 0, 0)``,
    ``direction`` 9 numbers row-major (as ``SimpleITK.Image.GetDirection``) whose columns
    are the LPS unit vectors of the ``i``, ``j``, ``k`` axes.
    """

    uid: str
    modality: str
    description: str
    n_images: int
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    orientation: str
    warnings: list[str] = field(default_factory=list)
    patient_name: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_description: str = ""
    series_number: int | None = None
    source: Any = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (everything except ``source``)."""
        return {
            "uid": self.uid,
            "modality": self.modality,
            "description": self.description,
            "n_images": self.n_images,
            "size": [int(v) for v in self.size],
            "spacing": [float(v) for v in self.spacing],
            "origin": [float(v) for v in self.origin],
            "direction": [float(v) for v in self.direction],
            "orientation": self.orientation,
            "warnings": list(self.warnings),
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "study_date": self.study_date,
            "study_description": self.study_description,
            "series_number": self.series_number,
        }


@dataclass
class SkippedFile:
    """A file that is not part of any loadable series, and why.

    ``kind`` is ``"file"`` when the file itself is not a loadable image, ``"series"``
    when it belongs to a series whose slices cannot form one volume.
    """

    path: str
    reason: str
    kind: str = "file"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ScanResult:
    """Every loadable series found, and every file left out with its reason."""

    series: list[SeriesInfo]
    skipped: list[SkippedFile]

    def to_json(self) -> dict[str, Any]:
        return {
            "series": [s.to_json() for s in self.series],
            "skipped": [k.to_json() for k in self.skipped],
        }


@dataclass(frozen=True)
class VolumeFileSource:
    """How to load a NIfTI/NRRD/MetaImage series: the file and its reorientation to LPS.

    New axis ``a`` (``i``, ``j``, ``k``) is old axis ``permutation[a]``, reversed when
    ``flips[a]``.
    """

    path: str
    modality: str
    dtype: str
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]


# ------------------------------------------------------------------------------------------------
# scan
def scan(path: str | os.PathLike[str]) -> ScanResult:
    """Find every loadable series under ``path``, from headers only.

    Parameters
    ----------
    path : path-like
        A folder (walked recursively), a DICOMDIR, a DICOM file or a NIfTI/NRRD/MetaImage
        file.

    Returns
    -------
    ScanResult
        ``series`` with the exact grid each will load on (LPS mm), and ``skipped``
        files with a plain reason (not DICOM, no pixels, colour, truncated, refused
        geometry, ...).

    Raises
    ------
    StudyReadError
        When ``path`` does not exist or cannot be listed.
    """
    root = Path(path)
    try:
        if root.is_dir():
            return _scan_folder(root)
        if root.is_file():
            return _scan_file(root)
        exists = root.exists()
    except SacroplanError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a name with a NUL character
        raise StudyReadError(
            f"cannot read {root}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    if exists:
        raise StudyReadError(f"{root} is not a file or folder (a device, pipe or socket)")
    raise StudyReadError(f"no such file or folder: {root}")


def _scan_folder(root: Path) -> ScanResult:
    dicom_candidates: list[Path] = []
    volume_files: list[Path] = []
    skipped: list[SkippedFile] = []

    def on_error(exc: OSError) -> None:
        skipped.append(SkippedFile(str(exc.filename or root), f"cannot list: {exc.strerror}"))

    for folder, dirs, files in os.walk(root, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            p = Path(folder) / name
            (volume_files if _is_volume_file(p) else dicom_candidates).append(p)
    return _combine(dicom_candidates, volume_files, skipped, root=root)


def _scan_file(path: Path) -> ScanResult:
    if _is_volume_file(path):
        return _combine([], [path], [], root=path.parent)
    if _is_dicomdir(path):
        try:
            files, missing = dicomdir_files(path)
        except StudyReadError as exc:
            folder = _scan_folder(path.parent)
            note = f"DICOMDIR index unreadable ({exc}); its folder was scanned instead"
            folder.skipped.insert(0, SkippedFile(str(path), note))
            return folder
        skipped = [SkippedFile(r.paths[0], r.reason) for r in missing]
        if not files and not missing:
            skipped.append(SkippedFile(str(path), "DICOMDIR index that lists no image files"))
        return _combine(files, [], skipped, root=path.parent)
    return _combine([path], [], [], root=path.parent)


def _combine(
    dicom_files: list[Path], volume_files: list[Path], skipped: list[SkippedFile], *, root: Path
) -> ScanResult:
    plans, refusals = scan_files(dicom_files)
    series = [_info_from_plan(p) for p in plans]
    budget = _budget_or_none()
    skipped = skipped + _skipped_from(refusals)
    if series and volume_files:
        # A DICOM study folder with a derived NIfTI/NRRD beside it: the study comes first.
        reason = "image volume file beside DICOM series: not scanned; open the file itself"
        skipped.extend(SkippedFile(str(p), reason) for p in volume_files)
        volume_files = []
    for path in volume_files:
        try:
            series.append(_scan_volume_file(path, uid=_volume_uid(path, root), budget_mb=budget))
        except (StudyReadError, MemoryBudgetError) as exc:
            skipped.append(SkippedFile(str(path), str(exc)))
    if budget is not None:
        for info in series:
            needed = memory_needed_mb(info)
            if needed > budget:
                info.warnings.append(_over_budget_text(info, needed, budget, "cannot be loaded"))
    return ScanResult(series=series, skipped=skipped)


def _skipped_from(refusals: list[Refusal]) -> list[SkippedFile]:
    return [SkippedFile(p, r.reason, r.kind) for r in refusals for p in r.paths]


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return False
    return head[128:132] == b"DICM" and DICOMDIR_SOP_CLASS.encode() in head


def _info_from_plan(plan: SeriesPlan) -> SeriesInfo:
    rec = plan.first
    direction = np.asarray(plan.direction, dtype=np.float64)
    return SeriesInfo(
        uid=plan.uid,
        modality=plan.modality,
        description=rec.series_description,
        n_images=len(plan.records),
        size=tuple(int(v) for v in plan.size),
        spacing=tuple(float(v) for v in plan.spacing),
        origin=tuple(float(v) for v in plan.origin),
        direction=tuple(float(v) for v in direction.reshape(-1)),
        orientation=orientation_from_normal(direction[:, 2]),
        warnings=list(plan.warnings),
        patient_name=rec.patient_name,
        patient_id=rec.patient_id,
        study_uid=rec.study_uid,
        study_date=rec.study_date,
        study_description=rec.study_description,
        series_number=rec.series_number,
        source=plan,
    )


# ------------------------------------------------------------------------------------------------
# load
def load_series(info: SeriesInfo, *, budget_mb: float | None = None) -> Volume:
    """Load one scanned series, after checking it fits the memory budget.

    Parameters
    ----------
    info : SeriesInfo
        From :func:`scan`.
    budget_mb : float, optional
        Memory budget (MB) for loading and planning this series; default
        :func:`memory_budget_mb`. A series needing more is refused, never downsampled.

    Returns
    -------
    Volume
        Array ``[k, j, i]`` with ``info``'s size, spacing, origin and direction (LPS mm).
        CT in Hounsfield units (int16 when lossless, else float32), MR float32.
        ``meta`` holds patient, study and series identifiers, warnings and source paths.

    Raises
    ------
    MemoryBudgetError
        When the series needs more memory than the budget (checked from the headers,
        before anything is read).
    StudyReadError
        When the files cannot be read or decoded (the message names the file).
    """
    source = info.source
    check_memory_budget(info, budget_mb=budget_mb)
    try:
        if isinstance(source, SeriesPlan):
            return load_plan(source)
        if isinstance(source, VolumeFileSource):
            return _load_volume_file(source, info)
    except SacroplanError:
        raise
    except MemoryError as exc:
        raise StudyReadError(
            f"not enough memory to load series {info.uid} ({_size_text(info)}); close other "
            "programs or load a smaller series"
        ) from exc
    except BaseException as exc:  # decoders may panic with a BaseException
        reraise_interrupts(exc)
        raise StudyReadError(
            f"cannot load series {info.uid} ({info.description or info.modality}): {exc}"
        ) from exc
    raise StudyReadError(f"series {info.uid} has nothing to load from; scan the study again")


def load(
    path: str | os.PathLike[str], *, series_uid: str | None = None, budget_mb: float | None = None
) -> Volume:
    """Scan ``path`` and load its single series, or the one ``series_uid`` names.

    Parameters
    ----------
    path : path-like
        Folder, DICOMDIR, DICOM file or NIfTI/NRRD/MetaImage file.
    series_uid : str, optional
        The series to load: its full UID (as :func:`scan` reports it) or a prefix that
        matches only it.
    budget_mb : float, optional
        Memory budget (MB), as for :func:`load_series`.

    Returns
    -------
    Volume

    Raises
    ------
    StudyReadError
        No loadable series, several series and no ``series_uid``, or no series matches.
        The message lists the series found (uid, modality, description, images).
    SeriesGeometryError
        The chosen series exists but its slices cannot form one volume.
    MemoryBudgetError
        The series needs more memory than the budget.
    """
    result = scan(path)
    if series_uid is not None:
        return load_series(_pick(result, str(series_uid).strip(), path), budget_mb=budget_mb)
    if len(result.series) == 1:
        return load_series(result.series[0], budget_mb=budget_mb)
    if not result.series:
        raise _nothing_loadable(result, path)
    raise StudyReadError(
        f"{path} holds {len(result.series)} series: {_listing(result.series)}; "
        "pass --series with a UID (or a unique start of one) to choose"
    )


def _pick(result: ScanResult, wanted: str, path: str | os.PathLike[str]) -> SeriesInfo:
    exact = [s for s in result.series if s.uid == wanted]
    if exact:
        return exact[0]
    matches = [s for s in result.series if wanted and s.uid.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise StudyReadError(
            f"--series {wanted!r} matches {len(matches)} series in {path}: "
            f"{_listing(matches)}; give more of the UID"
        )
    refused = [k for k in result.skipped if wanted and k.kind == "series" and wanted in k.reason]
    if refused:
        raise SeriesGeometryError(refused[0].reason)
    found = _listing(result.series) if result.series else "no loadable series"
    raise StudyReadError(f"no series {wanted!r} in {path}; found: {found}")


def _listing(series: list[SeriesInfo]) -> str:
    return "; ".join(
        f"{s.uid} ({s.modality}, {s.description or 'no description'}, {s.n_images} images)"
        for s in series
    )


def _nothing_loadable(result: ScanResult, path: str | os.PathLike[str]) -> StudyReadError:
    skipped = result.skipped
    if not skipped:
        return StudyReadError(f"no image files in {path}; choose a folder or file with a study")
    series_refusals = [k for k in skipped if k.kind == "series"]
    if len({k.reason for k in series_refusals}) == 1:
        k = series_refusals[0]
        return SeriesGeometryError(f"cannot load {path}: {k.reason}")
    if len(skipped) == 1 or len({k.reason for k in skipped}) == 1:
        who = skipped[0].path if len(skipped) == 1 else f"{len(skipped)} files in {path}"
        return StudyReadError(f"cannot load {who}: {skipped[0].reason}")
    examples = "; ".join(f"{os.path.basename(k.path)}: {k.reason}" for k in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return StudyReadError(f"no loadable image series in {path}: {examples}{more}")


def _size_text(info: SeriesInfo) -> str:
    return "x".join(str(v) for v in info.size) + " voxels"


# ------------------------------------------------------------------------------------------------
# memory budget
def memory_budget_mb() -> float:
    """The memory budget for loading and planning one study, in MB.

    ``$SACROPLAN_MEMORY_BUDGET_MB`` when set; otherwise half the physical memory (4096 MB
    when that cannot be read).

    Raises
    ------
    MemoryBudgetError
        When the environment variable is set but is not a positive number.
    """
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise MemoryBudgetError(
                f"{MEMORY_BUDGET_ENV} must be a positive number of megabytes, got {text!r}; "
                "fix or unset it"
            )
        return value
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _FALLBACK_BUDGET_MB
    return _DEFAULT_BUDGET_FRACTION * total / _MB if total > 0 else _FALLBACK_BUDGET_MB


def _budget_or_none() -> float | None:
    try:
        return memory_budget_mb()
    except MemoryBudgetError:
        return None  # reported when a series is loaded


def _bytes_per_voxel(info: SeriesInfo) -> int:
    source = info.source
    if isinstance(source, SeriesPlan):
        return output_dtype(source).itemsize
    if isinstance(source, VolumeFileSource):
        return max(np.dtype(source.dtype).itemsize, 1)
    return 4


def memory_needed_mb(info: SeriesInfo) -> float:
    """Estimated peak memory (MB) of loading and planning a scanned series.

    The voxel array's bytes (``size`` times the loaded data type, int16 or float32)
    times :data:`WORKING_SET_FACTOR`; a resampled DICOM series also holds its acquired
    slices while it is interpolated.
    """
    voxels = float(np.prod([float(v) for v in info.size]))
    volume = voxels * _bytes_per_voxel(info)
    extra = 0.0
    source = info.source
    if isinstance(source, SeriesPlan) and source.resampling is not None:
        layout = source.first.layout
        extra = 4.0 * len(source.records) * layout.rows * layout.columns
    return (WORKING_SET_FACTOR * volume + extra) / _MB


def check_memory_budget(info: SeriesInfo, *, budget_mb: float | None = None) -> None:
    """Refuse a series that needs more memory than the budget (from its headers only).

    Raises
    ------
    MemoryBudgetError
        With the series, its size, the estimate and the budget, and what to do.
    """
    budget = memory_budget_mb() if budget_mb is None else float(budget_mb)
    needed = memory_needed_mb(info)
    if needed > budget:
        raise MemoryBudgetError(_over_budget_text(info, needed, budget, "is refused"))


def _over_budget_text(info: SeriesInfo, needed: float, budget: float, verdict: str) -> str:
    return (
        f"series {info.uid} ({_size_text(info)}) needs about {needed:,.0f} MB to load and "
        f"plan, more than the memory budget of {budget:,.0f} MB, so it {verdict}; load a "
        f"smaller series or raise the budget ({MEMORY_BUDGET_ENV})"
    )


# ------------------------------------------------------------------------------------------------
# NIfTI / NRRD / MetaImage
def _volume_uid(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _scan_volume_file(path: Path, *, uid: str, budget_mb: float | None = None) -> SeriesInfo:
    image = _read_image(path, budget_mb=budget_mb)
    array = sitk.GetArrayViewFromImage(image)
    modality, dtype, notes = _guess_modality(array, path.name)
    size, spacing, origin, direction = _image_geometry(image)
    permutation, flips = lps_reorientation(direction)
    new_size, new_spacing, new_origin, new_direction = reoriented_geometry(
        size, spacing, origin, direction, permutation, flips
    )
    if permutation != (0, 1, 2) or any(flips):
        notes.append("axes reordered/flipped to LPS order (as DICOMOrient 'LPS')")
    source = VolumeFileSource(str(path), modality, dtype, permutation, flips)
    return SeriesInfo(
        uid=uid,
        modality=modality,
        description=path.name,
        n_images=int(new_size[2]),
        size=tuple(int(v) for v in new_size),
        spacing=tuple(float(v) for v in new_spacing),
        origin=tuple(float(v) for v in new_origin),
        direction=tuple(float(v) for v in new_direction.reshape(-1)),
        orientation=orientation_from_normal(new_direction[:, 2]),
        warnings=notes,
        source=source,
    )


def _read_image(path: Path, *, budget_mb: float | None = None) -> sitk.Image:
    """Read a 2-D or 3-D scalar image file; a 2-D image becomes one slice.

    With ``budget_mb``, a file whose header describes more voxels than the budget allows
    is refused before its pixels are read.
    """
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
        if comps != 1:
            raise StudyReadError(f"{path.name}: {comps}-component (colour/vector) image")
        if dim not in (2, 3):
            size = "x".join(str(v) for v in reader.GetSize())
            raise StudyReadError(f"{path.name}: {dim}-D image ({size}); only 3-D volumes load")
        if budget_mb is not None:
            _check_file_budget(path, reader, budget_mb)
        image = reader.Execute()
    except SacroplanError:
        raise
    except (RuntimeError, OSError) as exc:
        raise StudyReadError(f"{path.name}: unreadable image file ({_first_line(exc)})") from exc
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise StudyReadError(f"{path.name}: its direction matrix is not orthonormal (sheared)")
    return image


def _check_file_budget(path: Path, reader: sitk.ImageFileReader, budget_mb: float) -> None:
    voxels = float(np.prod([float(v) for v in reader.GetSize()]))
    stored = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    itemsize = 8 if "64" in stored else 1 if "8" in stored else 2 if "16" in stored else 4
    needed = voxels * max(itemsize, 2) * WORKING_SET_FACTOR / _MB
    if needed > budget_mb:
        size = "x".join(str(v) for v in reader.GetSize())
        raise MemoryBudgetError(
            f"{path.name} ({size} voxels) needs about {needed:,.0f} MB to load and plan, more "
            f"than the memory budget of {budget_mb:,.0f} MB, so it is refused; load a smaller "
            f"image or raise the budget ({MEMORY_BUDGET_ENV})"
        )


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text[:200]


def _image_geometry(
    image: sitk.Image,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array(image.GetSize(), dtype=int),
        np.array(image.GetSpacing(), dtype=float),
        np.array(image.GetOrigin(), dtype=float),
        np.array(image.GetDirection(), dtype=float).reshape(3, 3),
    )


def _guess_modality(array: np.ndarray, name: str) -> tuple[str, str, list[str]]:
    """Modality and output dtype of a volume file from its values.

    CT when integer-valued with a minimum below -500 HU; a label map when integer-valued,
    non-negative and with at most 255 distinct values; otherwise "OT".
    """
    if array.size == 0:
        raise StudyReadError(f"{name}: empty image")
    if array.dtype.kind == "b":
        return "LABEL", "uint8", [f"{name}: binary mask loaded as a label map"]
    lo, hi = float(np.min(array)), float(np.max(array))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise StudyReadError(f"{name}: the image holds NaN or infinite values")
    integral = array.dtype.kind in "iu" or _integer_valued(array)
    if integral and lo < -500:
        dtype = "int16" if lo >= -32768 and hi <= 32767 else "float32"
        return "CT", dtype, [f"{name}: modality guessed as CT (integer values from {lo:g})"]
    if integral and lo >= 0 and hi <= 65535 and _distinct_at_most(array, _LABEL_MAX_VALUES):
        dtype = "uint8" if hi <= 255 else "uint16"
        return "LABEL", dtype, [f"{name}: integer values with few levels, loaded as a label map"]
    dtype = "float32" if array.dtype.kind == "f" else str(array.dtype)
    return "OT", dtype, [f"{name}: modality unknown (not CT-like), loaded as OT"]


_CHUNK = 1 << 22


def _chunks(array: np.ndarray) -> list[np.ndarray]:
    flat = array.reshape(-1)
    return [flat[n : n + _CHUNK] for n in range(0, flat.size, _CHUNK)]


def _integer_valued(array: np.ndarray) -> bool:
    return all(bool(np.all(np.abs(c - np.round(c)) < 1e-3)) for c in _chunks(array))


def _distinct_at_most(array: np.ndarray, limit: int) -> bool:
    """Whether a non-negative integer-valued array holds at most ``limit`` distinct values."""
    sample = np.unique(array.reshape(-1)[:: max(1, array.size // 100_000)])
    if sample.size > limit:
        return False
    counts = np.zeros(int(np.max(array)) + 1, dtype=np.int64)
    for chunk in _chunks(array):
        counts += np.bincount(np.rint(chunk).astype(np.intp), minlength=counts.size)
    return int(np.count_nonzero(counts)) <= limit


def lps_reorientation(
    direction: np.ndarray,
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Axis permutation and flips that bring an image to LPS index order.

    Same rule as ITK's ``DICOMOrientImageFilter`` with ``"LPS"``: each index axis is
    assigned to the world axis its direction column is most aligned with, then reversed
    when it points the negative way.

    Parameters
    ----------
    direction : (3, 3) float ndarray
        Columns are the LPS directions of the current ``i``, ``j``, ``k`` axes.

    Returns
    -------
    permutation : tuple of 3 int
        New axis ``a`` is old axis ``permutation[a]``.
    flips : tuple of 3 bool
        Whether new axis ``a`` runs opposite to the old one.
    """
    d = np.asarray(direction, dtype=float)
    dominant = [int(np.argmax(np.abs(d[:, a]))) for a in range(3)]
    if sorted(dominant) != [0, 1, 2]:
        return (0, 1, 2), (False, False, False)
    permutation = tuple(dominant.index(w) for w in range(3))
    flips = tuple(bool(d[w, permutation[w]] < 0) for w in range(3))
    return permutation, flips  # type: ignore[return-value]


def reoriented_geometry(
    size: np.ndarray,
    spacing: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
    permutation: tuple[int, int, int],
    flips: tuple[bool, bool, bool],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grid of an image after :func:`lps_reorientation` (size, spacing, origin, direction)."""
    perm = list(permutation)
    new_size = np.asarray(size)[perm]
    new_spacing = np.asarray(spacing, dtype=float)[perm]
    new_direction = np.asarray(direction, dtype=float)[:, perm].copy()
    new_origin = np.asarray(origin, dtype=float).copy()
    for a in range(3):
        if flips[a]:
            new_origin = new_origin + new_direction[:, a] * new_spacing[a] * (new_size[a] - 1)
            new_direction[:, a] *= -1
    return new_size, new_spacing, new_origin, new_direction


def reorient_array(
    array: np.ndarray, permutation: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> np.ndarray:
    """Apply :func:`lps_reorientation` to a ``[k, j, i]`` array (returns a view when possible)."""
    # numpy axis of index axis a is 2 - a
    axes = [2 - permutation[2 - n] for n in range(3)]
    out = np.transpose(array, axes)
    for a in range(3):
        if flips[a]:
            out = np.flip(out, axis=2 - a)
    return out


def _load_volume_file(source: VolumeFileSource, info: SeriesInfo) -> Volume:
    path = Path(source.path)
    image = _read_image(path)
    size, spacing, origin, direction = _image_geometry(image)
    new_size, new_spacing, new_origin, new_direction = reoriented_geometry(
        size, spacing, origin, direction, source.permutation, source.flips
    )
    # One copy, made from a view while ``image`` is alive (peak: image + volume, not more)
    view = reorient_array(sitk.GetArrayViewFromImage(image), source.permutation, source.flips)
    array = np.array(view, dtype=source.dtype, order="C", copy=True)
    del view, image
    if tuple(int(v) for v in new_size) != tuple(info.size):
        raise StudyReadError(f"{path.name} changed since it was scanned; scan it again")
    meta = {
        "patient_name": "",
        "patient_id": "",
        "study_uid": "",
        "study_date": "",
        "study_description": "",
        "series_uid": info.uid,
        "series_number": None,
        "description": info.description,
        "modality": source.modality,
        "n_images": info.n_images,
        "warnings": list(info.warnings),
        "source_paths": [str(path)],
        "resampled": False,
    }
    return Volume(
        array=array,
        origin=new_origin,
        spacing=new_spacing,
        direction=new_direction,
        modality=source.modality,
        meta=meta,
    )
