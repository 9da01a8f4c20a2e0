"""DICOM headers into per-image records, without decoding any pixel data.

One :class:`ImageRecord` describes one 2-D image: a single-frame file, or one frame of a
multi-frame file. It carries what grouping, geometry planning and pixel reading need,
read with ``stop_before_pixels`` plus a look at the Pixel Data element's header (offset,
length, encapsulation) so truncated files are caught during the scan, not during loading.

Files that are not loadable images raise :class:`NotLoadableError` with a plain reason.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import UID

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_TS = ("1.2.840.10008.1.2.1.99",)
NATIVE_TS = {
    "1.2.840.10008.1.2": (True, True),  # implicit VR little endian
    "1.2.840.10008.1.2.1": (False, True),  # explicit VR little endian
    "1.2.840.10008.1.2.2": (False, False),  # explicit VR big endian
}
_GZIP_MAX_BYTES = 512 << 20  # a gzip-compressed DICOM file may expand to 512 MiB
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_SEQ_END = (0xFFFE, 0xE0DD)
#: Largest image (Rows x Columns) and frame count a file may claim; CT and MR stay far below.
MAX_FRAME_PIXELS = 16384 * 16384
MAX_FRAMES = 5000
#: Plausible ranges of header numbers; values outside count as missing (or damage).
PLAUSIBLE_SPACING_MM = (1e-3, 1e3)
MAX_COORDINATE_MM = 1e7
MAX_COSINE = 10.0
MAX_RESCALE_SLOPE = 1e6
MAX_RESCALE_INTERCEPT = 1e7
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV"}

# Objects that are never anatomical image volumes (SOP class root -> what it is). A root
# matches itself and its sub-classes ("root.x"), never a sibling ("1.1.1" is not "1.1.128").
_NON_IMAGE_SOP_ROOTS: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.481", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.66.4", "segmentation object"),
    ("1.2.840.10008.5.1.4.1.1.66", "registration or raw-data object"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.6", "ultrasound image"),
    ("1.2.840.10008.5.1.4.1.1.3.1", "ultrasound image"),
    ("1.2.840.10008.5.1.4.1.1.1", "projection radiograph"),
    ("1.2.840.10008.5.1.4.1.1.12", "X-ray angiography or fluoroscopy image"),
    ("1.2.840.10008.5.1.4.1.1.77", "visible-light photograph"),
    ("1.2.840.10008.5.1.4.1.1.30", "parametric map"),
)
_NON_IMAGE_MODALITIES: dict[str, str] = {
    "SR": "structured report",
    "KO": "key object selection",
    "PR": "presentation state",
    "RTSTRUCT": "radiotherapy structure set",
    "RTPLAN": "radiotherapy plan",
    "RTDOSE": "radiotherapy dose grid",
    "RTRECORD": "radiotherapy record",
    "RTIMAGE": "radiotherapy portal image",
    "SEG": "segmentation object",
    "REG": "registration object",
    "ECG": "ECG waveform",
    "HD": "waveform",
    "AU": "audio",
    "DOC": "document",
    "US": "ultrasound image",
    "IVUS": "ultrasound image",
    "CR": "projection radiograph",
    "DX": "projection radiograph",
    "MG": "mammogram",
    "XA": "X-ray angiography image",
    "RF": "fluoroscopy image",
    "IO": "intra-oral radiograph",
    "PX": "panoramic radiograph",
    "XC": "photograph",
    "ES": "endoscopy image",
    "SM": "microscopy image",
    "OP": "ophthalmic photograph",
}


class NotLoadableError(Exception):
    """The file is not a loadable image; ``str(exc)`` is the reason, in plain words."""


def reraise_interrupts(exc: BaseException) -> None:
    """Re-raise ``exc`` when it must stop the program (Ctrl-C, exit); return otherwise.

    Some decoders (Rust extensions) report a damaged stream with a *panic*, an exception
    that derives from ``BaseException`` rather than ``Exception``. Handlers around them
    catch ``BaseException`` and call this first, so a panic becomes an ordinary "cannot
    decode" error while an interrupt still stops the program.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


@dataclass(frozen=True)
class PixelLayout:
    """Where and how a file stores its pixels.

    ``value_offset``/``value_length`` locate the Pixel Data value in the stream that
    :func:`open_dicom` yields (``None`` for deflated files); only for ``container ==
    "plain"`` is that also the offset in the file on disk.
    """

    transfer_syntax: str
    rows: int
    columns: int
    n_frames: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    encapsulated: bool
    container: str  # "plain", "no-preamble", "gzip" or "deflated"
    value_offset: int | None
    value_length: int | None

    @property
    def is_native(self) -> bool:
        """Uncompressed pixels stored in the file (readable by offset)."""
        return not self.encapsulated and self.transfer_syntax in NATIVE_TS

    @property
    def big_endian(self) -> bool:
        return self.transfer_syntax == "1.2.840.10008.1.2.2"

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.bits_allocated // 8

    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest stored value the bit depth allows."""
        bits = max(1, min(self.bits_stored, self.bits_allocated))
        if self.pixel_representation == 1:
            return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return 0, 2**bits - 1


@dataclass(eq=False)
class ImageRecord:
    """One 2-D image (a file, or one frame of a multi-frame file), from its header.

    Geometry is in LPS mm. ``pixel_spacing`` is DICOM's ``(row spacing, column spacing)``
    = ``(y, x)``. ``orientation`` is ImageOrientationPatient: row direction then column
    direction (6 numbers).
    """

    path: str
    frame: int
    layout: PixelLayout
    sop_uid: str = ""
    sop_class: str = ""
    series_uid: str | None = None
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    image_type: tuple[str, ...] = ()
    acquisition_number: str = ""
    echo_number: str = ""
    temporal_index: str = ""
    stack_id: str = ""
    trigger_time: str = ""
    position: np.ndarray | None = None
    orientation: np.ndarray | None = None
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    gantry_tilt_deg: float | None = None
    slope: float = 1.0
    intercept: float = 0.0
    has_rescale: bool = True
    modality_lut: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Short label for messages: the file name, plus the frame for multi-frame files."""
        base = os.path.basename(self.path)
        return f"{base} frame {self.frame + 1}" if self.layout.n_frames > 1 else base


# ------------------------------------------------------------------------------------------------
# opening files
@contextmanager
def open_dicom(path: str | os.PathLike[str]) -> Iterator[tuple[IO[bytes], str]]:
    """Open a file as a DICOM byte stream, repairing what is cheap to repair.

    Yields ``(stream, container)`` where ``container`` is ``"plain"`` (a real file whose
    offsets are file offsets), ``"no-preamble"`` (the 128-byte preamble was missing and is
    supplied in memory) or ``"gzip"`` (a gzip-compressed DICOM file, inflated in memory).

    Raises
    ------
    NotLoadableError
        When the file is empty, unreadable or clearly not DICOM.
    """
    path = os.fspath(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            # a pipe or a device would block or never end: never opened
            raise NotLoadableError("not a regular file (a device, pipe or socket)")
        size = info.st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise NotLoadableError(f"cannot read the file ({exc.strerror or exc})") from exc
    if size == 0:
        raise NotLoadableError("empty file (0 bytes)")
    if head[:2] == b"\x1f\x8b":
        data = _gunzip_dicom(path)
        yield io.BytesIO(data), "gzip"
        return
    if head[128:132] == b"DICM":
        with open(path, "rb") as fh:
            yield fh, "plain"
        return
    if head[:4] == b"DICM":
        with open(path, "rb") as fh:
            data = b"\0" * 128 + fh.read()
        yield io.BytesIO(data), "no-preamble"
        return
    if _looks_like_raw_dataset(head):
        with open(path, "rb") as fh:
            yield fh, "plain"
        return
    raise NotLoadableError("not a DICOM file")


def _gunzip_dicom(path: str) -> bytes:
    try:
        with gzip.open(path, "rb") as gz:
            head = gz.read(132)
            if not (head[128:132] == b"DICM" or _looks_like_raw_dataset(head)):
                raise NotLoadableError("gzip-compressed file that does not contain DICOM")
            data = head + gz.read(_GZIP_MAX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise NotLoadableError(f"damaged gzip file ({exc})") from exc
    if len(data) > _GZIP_MAX_BYTES:
        raise NotLoadableError(
            f"gzip-compressed file that expands to more than {_GZIP_MAX_BYTES // 2**20} MB: "
            "decompress it yourself if it really is one DICOM image"
        )
    if data[128:132] != b"DICM":
        data = b"\0" * 128 + b"DICM" + data if data[:4] != b"DICM" else b"\0" * 128 + data
    return data


def _looks_like_raw_dataset(head: bytes) -> bool:
    """Whether a file without preamble starts like a DICOM data set (group 0002 or 0008)."""
    if len(head) < 8:
        return False
    group_le, elem_le = struct.unpack("<HH", head[:4])
    group_be, elem_be = struct.unpack(">HH", head[:4])
    return (group_le in (0x0002, 0x0008) and elem_le < 0x0100) or (
        group_be in (0x0002, 0x0008) and elem_be < 0x0100
    )


def read_dataset(stream: IO[bytes], *, stop_before_pixels: bool = True) -> Dataset:
    """``pydicom.dcmread`` with ``force=True``, warnings silenced, errors as NotLoadableError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(stream, force=True, stop_before_pixels=stop_before_pixels)
    except BaseException as exc:  # pydicom raises many types on damaged input
        reraise_interrupts(exc)
        raise NotLoadableError(f"unreadable DICOM header ({_short(exc)})") from exc


def is_dicomdir(ds: Dataset) -> bool:
    """Whether a data set is a DICOMDIR (a media index, not an image)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds


def dicomdir_references(path: str | os.PathLike[str]) -> list[Path]:
    """Files a DICOMDIR lists, resolved against its folder (case-insensitively).

    Raises
    ------
    NotLoadableError
        When the DICOMDIR cannot be read.
    """
    path = Path(path)
    with open_dicom(path) as (stream, _):
        ds = read_dataset(stream, stop_before_pixels=False)
    if not is_dicomdir(ds):
        raise NotLoadableError("not a DICOMDIR")
    found: list[Path] = []
    seen: set[str] = set()
    for record in ds.get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else [str(p) for p in ref]
        if not parts or any(not p or "\x00" in p for p in parts):
            continue
        try:
            target = _resolve_case_insensitive(path.parent, parts)
        except (OSError, ValueError):  # a name no file system accepts
            continue
        key = str(target)
        if key not in seen:
            seen.add(key)
            found.append(target)
    return found


def _resolve_case_insensitive(root: Path, parts: list[str]) -> Path:
    current = root
    for part in parts:
        candidate = current / part
        if not candidate.exists() and current.is_dir():
            matches = [p for p in current.iterdir() if p.name.lower() == part.lower()]
            candidate = matches[0] if matches else candidate
        current = candidate
    return current


# ------------------------------------------------------------------------------------------------
# records
def read_records(path: str | os.PathLike[str]) -> list[ImageRecord]:
    """Read one file's header into one record per 2-D image.

    Parameters
    ----------
    path : path-like
        A DICOM file (with or without preamble, optionally gzip-compressed).

    Returns
    -------
    list of ImageRecord
        One per frame, in frame order.

    Raises
    ------
    NotLoadableError
        The file is not a loadable greyscale image; the message says why.
    """
    path = os.fspath(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_records(path)


def _read_records(path: str) -> list[ImageRecord]:
    with open_dicom(path) as (stream, container):
        _check_deflated_size(stream)
        ds = read_dataset(stream)
        if is_dicomdir(ds):
            raise NotLoadableError("DICOMDIR index")
        if len(ds) == 0:
            raise NotLoadableError("not a DICOM file (no readable data elements)")
        _reject_non_image(ds)
        transfer_syntax = _transfer_syntax(ds)
        if transfer_syntax in DEFLATED_TS:
            pixel = _inspect_deflated(path)
            container = "deflated"
        else:
            implicit, little = _encoding(ds, transfer_syntax)
            pixel = _inspect_pixel_element(stream, implicit=implicit, little=little)
            if not pixel.present and _header_truncated(ds, stream):
                raise NotLoadableError(
                    "truncated file: it ends inside its header, before any pixel data"
                )
    layout = _layout(ds, transfer_syntax, container, pixel)
    _check_pixel_length(layout, pixel)
    return _frame_records(path, ds, layout)


def _check_deflated_size(stream: IO[bytes]) -> None:
    """Refuse a deflated data set that would inflate beyond 512 MiB (a zip bomb).

    pydicom inflates a Deflated Explicit VR Little Endian data set in one piece; this
    streams it first, keeping nothing, and only when the file meta says it is deflated.
    """
    start = stream.tell()
    limit = _GZIP_MAX_BYTES
    try:
        stream.seek(0)
        head = stream.read(4096)  # the file meta group of nearly every file
        offset, syntax = _file_meta_end(head)
        if offset + 12 > len(head) == 4096:  # a long file meta group: read up to 64 KiB
            head += stream.read((1 << 16) - len(head))
            offset, syntax = _file_meta_end(head)
        if syntax not in DEFLATED_TS:
            return
        stream.seek(offset)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while chunk := stream.read(1 << 16):
            total += len(inflater.decompress(chunk, limit + 1 - total))
            if total > limit or inflater.unconsumed_tail:
                raise NotLoadableError(
                    f"deflated DICOM data that inflates to more than {limit // 2**20} MB "
                    "(damaged, or a decompression bomb)"
                )
            if inflater.eof:
                return
    except zlib.error:
        return  # damaged deflate data: reading it reports the damage
    finally:
        stream.seek(start)


def _file_meta_end(head: bytes) -> tuple[int, str]:
    """Offset after the file meta group (0002) and its Transfer Syntax UID, from raw bytes."""
    if head[128:132] != b"DICM":
        return 0, ""
    pos, syntax = 132, ""
    while pos + 8 <= len(head):
        group, elem = struct.unpack("<HH", head[pos : pos + 4])
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            (length,) = struct.unpack("<L", head[pos + 8 : pos + 12])
            value = pos + 12
        else:
            (length,) = struct.unpack("<H", head[pos + 6 : pos + 8])
            value = pos + 8
        if elem == 0x0010:
            syntax = head[value : value + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value + length
    return pos, syntax


def _header_truncated(ds: Dataset, stream: IO[bytes]) -> bool:
    """Whether the last element read claims more bytes than the file holds."""
    stream.seek(0, os.SEEK_END)
    end = stream.tell()
    try:
        last = ds.get_item(next(reversed(ds.keys())))
    except (StopIteration, KeyError):
        return False
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if tell is None or length is None or length == _UNDEFINED:
        return False
    return tell + length > end


@dataclass(frozen=True)
class _PixelElement:
    present: bool
    encapsulated: bool
    value_offset: int | None
    value_length: int | None
    other: str = ""  # name of another pixel element (float pixel data) when present
    items: int | None = None  # items of encapsulated pixel data (offset table included)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- header values read straight from the raw bytes ------------------------------------------------
# pydicom converts a value on first access (tag lookup, value classes, validation); for the few
# dozen values a record needs that is most of the time a scan takes. ``_get`` decodes the
# common, unambiguous encodings itself and returns plain values that the helpers below turn
# into exactly what they make of pydicom's (``_text``, ``_number``, ``_numbers``, ``_int_or``);
# anything else (an odd VR, a character set, big-endian binary, a value it does not recognise)
# goes through ``Dataset.get``.
_SLOW = object()
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
# (bounded digits: every number these match is finite as a float)
_DS_ITEM = re.compile(
    rb" *[+-]?(?:[0-9]{1,24}(?:\.[0-9]{0,24})?|\.[0-9]{1,24})(?:[eE][+-]?[0-9]{1,2})? *"
)
_IS_ITEM = re.compile(rb" *[+-]?[0-9]{1,12} *")
_ASCII_VRS = frozenset({"CS", "UI", "DA", "TM", "AS"})
_CHARSET_VRS = frozenset({"LO", "SH", "PN"})
#: Specific Character Sets that decode printable ASCII bytes as themselves.
_PLAIN_CHARSETS = frozenset(
    {b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 101", b"ISO_IR 109", b"ISO_IR 110", b"ISO_IR 192"}
)
_CHARSET_TAG = 0x00080005
_FAST_TAGS: dict[str, tuple[int, str]] = {}


def _fast_tag(keyword: str) -> tuple[int, str] | None:
    entry = _FAST_TAGS.get(keyword)
    if entry is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            return None
        entry = _FAST_TAGS[keyword] = (tag, dictionary_VR(tag))
    return entry


def _get(ds: Any, keyword: str) -> Any:
    """``ds.get(keyword)``, as a plain value where the raw bytes are unambiguous.

    US: ``int``; DS and IS: the stripped text (a list of them when multi-valued); CS, UI,
    DA, TM, AS: the text without trailing padding (a list when a CS is multi-valued); LO,
    SH, PN: the text without trailing padding when the data set's character set reads
    printable ASCII as itself. Otherwise whatever ``ds.get`` returns.
    """
    fast = _fast_get(ds, keyword) if isinstance(ds, Dataset) else _SLOW
    return ds.get(keyword) if fast is _SLOW else fast


def _fast_get(ds: Dataset, keyword: str) -> Any:
    entry = _fast_tag(keyword)
    if entry is None:
        return _SLOW
    tag, vr = entry
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if not isinstance(elem, RawDataElement) or elem.VR not in (None, vr) or elem.value is None:
        return _SLOW
    value = elem.value
    if vr == "US":
        if len(value) == 2 and elem.is_little_endian:
            return int.from_bytes(value, "little")
        return _SLOW
    value = value.rstrip(b"\0 ")
    if not _PRINTABLE.fullmatch(value):
        return _SLOW
    if vr in ("DS", "IS"):
        item = _DS_ITEM if vr == "DS" else _IS_ITEM
        items = value.split(b"\\")
        if not value or not all(item.fullmatch(v) for v in items):
            return "" if not value else _SLOW
        texts = [v.strip(b" ").decode("ascii") for v in items]
        return texts[0] if len(texts) == 1 else texts
    if b"\\" in value:
        return value.decode("ascii").split("\\") if vr == "CS" else _SLOW
    if vr in _ASCII_VRS:
        return value.decode("ascii")
    if vr in _CHARSET_VRS and isinstance(ds, FileDataset) and _plain_charset(ds):
        return value.decode("ascii")
    return _SLOW


def _plain_charset(ds: Dataset) -> bool:
    elem = ds.get_item(_CHARSET_TAG)
    if elem is None:
        return True
    value = getattr(elem, "value", None)
    if isinstance(elem, RawDataElement) and isinstance(value, bytes):
        return value.strip(b"\0 ") in _PLAIN_CHARSETS
    return isinstance(value, str) and value.strip().encode("ascii", "replace") in _PLAIN_CHARSETS


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = _get(ds, keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _numbers(value: Any, count: int, *, limit: float = MAX_COORDINATE_MM) -> np.ndarray | None:
    """``count`` finite numbers no larger than ``limit`` in magnitude, else None."""
    if value is None:
        return None
    try:
        items = list(value) if not isinstance(value, str | bytes) else [value]
        arr = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if arr.shape != (count,) or not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > limit):
        return None
    return arr


def _int_or(value: Any, default: int | None) -> int | None:
    try:
        return int(float(str(value)))
    except (TypeError, ValueError):
        return default


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts:
        return ts
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"


def _encoding(ds: Dataset, transfer_syntax: str) -> tuple[bool, bool]:
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = NATIVE_TS.get(transfer_syntax, (False, True))
    return bool(implicit), bool(little)


def _sop_class(ds: Dataset) -> str:
    sop = _text(ds, "SOPClassUID")
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop


def _describe_sop(sop: str) -> str:
    try:
        name = UID(sop).name
    except Exception:
        name = sop
    return name if name and name != sop else sop


def _reject_non_image(ds: Dataset) -> None:
    sop = _sop_class(ds)
    modality = _text(ds, "Modality").upper()
    what = _NON_IMAGE_MODALITIES.get(modality)
    if what is None:
        what = next(
            (w for root, w in _NON_IMAGE_SOP_ROOTS if sop == root or sop.startswith(root + ".")),
            None,
        )
    if what is None:
        return
    label = modality or _describe_sop(sop)
    raise NotLoadableError(f"{label}: {what}, not a cross-sectional greyscale image")


def _inspect_pixel_element(stream: IO[bytes], *, implicit: bool, little: bool) -> _PixelElement:
    """Read the element header where ``stop_before_pixels`` left the stream."""
    start = stream.tell()
    stream.seek(0, os.SEEK_END)
    end = stream.tell()
    stream.seek(start)
    head = stream.read(12)
    if len(head) < 8:
        return _PixelElement(False, False, None, None)
    fmt = "<" if little else ">"
    group, elem = struct.unpack(fmt + "HH", head[:4])
    if group != 0x7FE0:
        return _PixelElement(False, False, None, None)
    if elem != 0x0010:
        return _PixelElement(False, False, None, None, other="float pixel data")
    if implicit:
        (length,) = struct.unpack(fmt + "L", head[4:8])
        value_offset = start + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            raise NotLoadableError("file ends inside the Pixel Data element (truncated)")
        (length,) = struct.unpack(fmt + "L", head[8:12])
        value_offset = start + 12
    else:
        (length,) = struct.unpack(fmt + "H", head[6:8])
        value_offset = start + 8
    if length == _UNDEFINED:
        delimiter, items = _walk_fragments(stream, value_offset, end, fmt)
        return _PixelElement(True, True, value_offset, delimiter - value_offset, items=items)
    if value_offset + length > end:
        missing = value_offset + length - end
        raise NotLoadableError(
            f"truncated file: the pixel data stops {missing} bytes short of the "
            f"{length} bytes the header announces"
        )
    return _PixelElement(True, False, value_offset, length)


def _walk_fragments(stream: IO[bytes], offset: int, end: int, fmt: str) -> tuple[int, int]:
    """Follow the items of encapsulated pixel data; return the delimiter's offset and the
    number of items (the offset table included)."""
    pos = offset
    items = 0
    while True:
        stream.seek(pos)
        head = stream.read(8)
        if len(head) < 8:
            raise NotLoadableError(
                f"truncated file: the compressed pixel data ends after {items} fragment(s) "
                "without its closing delimiter"
            )
        group, elem, length = struct.unpack(fmt + "HHL", head)
        if (group, elem) == _SEQ_END:
            return pos, items
        if (group, elem) != _ITEM or length == _UNDEFINED:
            raise NotLoadableError(f"damaged compressed pixel data (unexpected tag at byte {pos})")
        pos += 8 + length
        items += 1
        if pos > end:
            raise NotLoadableError(
                f"truncated file: compressed pixel data fragment {items} runs "
                f"{pos - end} bytes past the end of the file"
            )


def _inspect_deflated(path: str) -> _PixelElement:
    with open_dicom(path) as (stream, _):
        ds = read_dataset(stream, stop_before_pixels=False)
    if "PixelData" not in ds:
        return _PixelElement(False, False, None, None)
    element = ds["PixelData"]
    encapsulated = bool(getattr(element, "is_undefined_length", False))
    return _PixelElement(True, encapsulated, None, len(ds.PixelData))


def _layout(ds: Dataset, transfer_syntax: str, container: str, pixel: _PixelElement) -> PixelLayout:
    if not pixel.present:
        if pixel.other:
            raise NotLoadableError(f"{pixel.other} (floating-point images are not supported)")
        sop = _sop_class(ds)
        what = _describe_sop(sop) if sop else (_text(ds, "Modality") or "DICOM object")
        raise NotLoadableError(f"{what} without pixel data")
    rows = _int_or(_get(ds, "Rows"), None)
    cols = _int_or(_get(ds, "Columns"), None)
    bits = _int_or(_get(ds, "BitsAllocated"), None)
    if not rows or not cols or not bits:
        raise NotLoadableError(
            "image header lacks Rows, Columns or Bits Allocated (incomplete header)"
        )
    samples = _int_or(_get(ds, "SamplesPerPixel"), 1)
    photometric = _text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2"
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotLoadableError(
            f"colour image ({photometric}, {samples} sample(s) per pixel): "
            "sacroplan needs greyscale CT or MR"
        )
    if bits not in (8, 16, 32):
        raise NotLoadableError(f"{bits}-bit pixels are not supported (only 8, 16 or 32 bits)")
    if not transfer_syntax:
        if pixel.encapsulated:
            raise NotLoadableError("compressed pixel data but no Transfer Syntax UID to decode it")
        transfer_syntax = "1.2.840.10008.1.2.1"
    n_frames = _int_or(_get(ds, "NumberOfFrames"), None)
    if "NumberOfFrames" in ds and n_frames is None:
        raise NotLoadableError(f"invalid Number of Frames {_text(ds, 'NumberOfFrames')!r}")
    n_frames = max(1, n_frames or 1)
    _check_frames(rows, cols, n_frames, pixel)
    return PixelLayout(
        transfer_syntax=transfer_syntax,
        rows=rows,
        columns=cols,
        n_frames=n_frames,
        bits_allocated=bits,
        bits_stored=_int_or(_get(ds, "BitsStored"), bits) or bits,
        pixel_representation=_int_or(_get(ds, "PixelRepresentation"), 0) or 0,
        photometric=photometric,
        encapsulated=pixel.encapsulated,
        container=container,
        value_offset=pixel.value_offset,
        value_length=pixel.value_length,
    )


def _check_frames(rows: int, cols: int, n_frames: int, pixel: _PixelElement) -> None:
    """Refuse frame sizes and counts no CT or MR has, before anything is allocated."""
    if rows < 0 or cols < 0:
        raise NotLoadableError(f"invalid image size in the header: {cols} x {rows} pixels")
    if rows * cols > MAX_FRAME_PIXELS:
        raise NotLoadableError(
            f"the header claims {cols} x {rows} pixels per image, more than any CT or MR image "
            f"(at most {MAX_FRAME_PIXELS:,} pixels); the file is damaged"
        )
    if n_frames > MAX_FRAMES:
        raise NotLoadableError(
            f"the header claims {n_frames:,} frames; at most {MAX_FRAMES:,} images per file "
            "can be loaded (the file is damaged, or not a CT or MR volume)"
        )
    if pixel.encapsulated and pixel.items is not None and n_frames > max(1, pixel.items):
        raise NotLoadableError(
            f"Number of Frames says {n_frames} but the compressed pixel data holds only "
            f"{max(0, pixel.items - 1)} fragment(s): damaged or truncated file"
        )


def _check_pixel_length(layout: PixelLayout, pixel: _PixelElement) -> None:
    if layout.encapsulated or pixel.value_length is None:
        if not layout.encapsulated and layout.transfer_syntax not in NATIVE_TS:
            raise NotLoadableError(
                "compressed transfer syntax but the pixel data is not encapsulated"
            )
        return
    if layout.transfer_syntax not in NATIVE_TS and layout.container != "deflated":
        raise NotLoadableError(
            f"pixel data is stored uncompressed but the transfer syntax "
            f"{_describe_sop(layout.transfer_syntax)} says it is compressed"
        )
    expected = layout.frame_bytes * layout.n_frames
    if pixel.value_length < expected:
        raise NotLoadableError(
            f"pixel data holds {pixel.value_length} bytes but Rows x Columns x frames x bytes "
            f"needs {expected} (damaged or truncated file)"
        )


# ------------------------------------------------------------------------------------------------
# per-frame geometry
def _frame_records(path: str, ds: Dataset, layout: PixelLayout) -> list[ImageRecord]:
    base = _base_record(path, ds, layout)
    if layout.n_frames == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        base.position = _numbers(_get(ds, "ImagePositionPatient"), 3)
        base.orientation = _numbers(_get(ds, "ImageOrientationPatient"), 6, limit=MAX_COSINE)
        return [base]
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    if per_frame is not None or shared is not None:
        return _enhanced_records(base, ds, per_frame, shared)
    return _legacy_multiframe_records(base, ds)


def _base_record(path: str, ds: Dataset, layout: PixelLayout) -> ImageRecord:
    slope, slope_notes = _rescale(ds, "Slope")
    intercept, intercept_notes = _rescale(ds, "Intercept")
    series_uid: str | None = _text(ds, "SeriesInstanceUID") if "SeriesInstanceUID" in ds else None
    spacing = _numbers(_get(ds, "PixelSpacing"), 2)
    record = ImageRecord(
        path=path,
        frame=0,
        layout=layout,
        sop_uid=_text(ds, "SOPInstanceUID"),
        sop_class=_sop_class(ds),
        series_uid=series_uid,
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        modality=_text(ds, "Modality").upper() or "OT",
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int_or(_get(ds, "SeriesNumber"), None),
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        image_type=tuple(_text(ds, "ImageType").upper().split("\\")),
        acquisition_number=_text(ds, "AcquisitionNumber"),
        echo_number=_text(ds, "EchoNumbers"),
        temporal_index=_text(ds, "TemporalPositionIdentifier"),
        trigger_time=_text(ds, "TriggerTime"),
        pixel_spacing=_spacing_pair(spacing),
        slice_thickness=_positive(_get(ds, "SliceThickness")),
        spacing_between_slices=_positive(_get(ds, "SpacingBetweenSlices")),
        gantry_tilt_deg=_number(_get(ds, "GantryDetectorTilt")),
        slope=slope if slope not in (None, 0.0) else 1.0,
        intercept=intercept if intercept is not None else 0.0,
        has_rescale=slope is not None or intercept is not None,
        modality_lut="ModalityLUTSequence" in ds and slope is None,
    )
    name = os.path.basename(path)
    record.notes.extend(f"{name}: {note}" for note in slope_notes + intercept_notes)
    if layout.container == "no-preamble":
        record.notes.append(f"{os.path.basename(path)} has no DICOM preamble; read anyway")
    elif layout.container == "gzip":
        record.notes.append(f"{os.path.basename(path)} is gzip-compressed; read anyway")
    return record


def _spacing_pair(values: np.ndarray | None) -> tuple[float, float] | None:
    lo, hi = PLAUSIBLE_SPACING_MM
    if values is None or np.any(values < lo) or np.any(values > hi):
        return None
    return float(values[0]), float(values[1])


def _positive(value: Any) -> float | None:
    """A spacing or thickness (mm) within :data:`PLAUSIBLE_SPACING_MM`, else None."""
    out = _number(value)
    lo, hi = PLAUSIBLE_SPACING_MM
    return out if out is not None and lo <= out <= hi else None


def _rescale(ds: Any, name: str) -> tuple[float | None, list[str]]:
    """Rescale Slope or Intercept: the value (None when absent or unusable) and notes.

    Raises
    ------
    NotLoadableError
        When the value is a number too large (or a slope too small) for any real image.
    """
    keyword = f"Rescale{name}"
    try:
        present = keyword in ds and _text(ds, keyword) != ""
    except Exception:
        present = False
    value = _number(_get(ds, keyword)) if present else None
    notes: list[str] = []
    if present and value is None:
        default = "1" if name == "Slope" else "0"
        notes.append(f"Rescale {name} {_text(ds, keyword)[:20]!r} is not a number: {default} used")
    if value is None:
        return None, notes
    limit = MAX_RESCALE_SLOPE if name == "Slope" else MAX_RESCALE_INTERCEPT
    if abs(value) > limit or (name == "Slope" and 0 < abs(value) < 1 / MAX_RESCALE_SLOPE):
        raise NotLoadableError(
            f"implausible Rescale {name} {value:g} (the file is damaged); re-export the series"
        )
    if name == "Slope" and value == 0:
        notes.append("Rescale Slope 0 is not allowed: 1 used")
    return value, notes


def _group_item(item: Any, sequence: str) -> Any:
    if item is None:
        return None
    try:
        seq = item.get(sequence)
        return seq[0] if seq else None
    except Exception:
        return None


def _enhanced_records(
    base: ImageRecord, ds: Dataset, per_frame: Any, shared: Any
) -> list[ImageRecord]:
    shared_item = shared[0] if shared else None
    n = base.layout.n_frames
    if per_frame is not None and len(per_frame) != n:
        base.notes.append(
            f"{os.path.basename(base.path)}: {len(per_frame)} per-frame descriptions for {n} frames"
        )
    records: list[ImageRecord] = []
    for f in range(n):
        frame_item = per_frame[f] if per_frame is not None and f < len(per_frame) else None

        def lookup(sequence: str, _fi: Any = frame_item) -> Any:
            return _group_item(_fi, sequence) or _group_item(shared_item, sequence)

        rec = _copy_record(base, f)
        plane_pos = lookup("PlanePositionSequence")
        plane_ori = lookup("PlaneOrientationSequence")
        measures = lookup("PixelMeasuresSequence")
        transform = lookup("PixelValueTransformationSequence")
        content = _group_item(frame_item, "FrameContentSequence")
        rec.position = _numbers(_get(plane_pos, "ImagePositionPatient"), 3) if plane_pos else None
        rec.orientation = (
            _numbers(_get(plane_ori, "ImageOrientationPatient"), 6, limit=MAX_COSINE)
            if plane_ori
            else None
        )
        if rec.orientation is None:
            rec.orientation = _numbers(_get(ds, "ImageOrientationPatient"), 6, limit=MAX_COSINE)
        if measures is not None:
            spacing = _spacing_pair(_numbers(_get(measures, "PixelSpacing"), 2))
            rec.pixel_spacing = spacing or rec.pixel_spacing
            rec.slice_thickness = _positive(_get(measures, "SliceThickness")) or rec.slice_thickness
            rec.spacing_between_slices = (
                _positive(_get(measures, "SpacingBetweenSlices")) or rec.spacing_between_slices
            )
        if transform is not None:
            slope, _ = _rescale(transform, "Slope")
            intercept, _ = _rescale(transform, "Intercept")
            rec.slope = slope if slope not in (None, 0.0) else rec.slope
            rec.intercept = intercept if intercept is not None else rec.intercept
            rec.has_rescale = rec.has_rescale or slope is not None or intercept is not None
        if content is not None:
            rec.stack_id = _text(content, "StackID")
            rec.temporal_index = _text(content, "TemporalPositionIndex") or rec.temporal_index
        records.append(rec)
    if any(r.position is None for r in records):
        return _legacy_multiframe_records(base, ds, records=records)
    return records


def _copy_record(base: ImageRecord, frame: int) -> ImageRecord:
    rec = ImageRecord(**{k: getattr(base, k) for k in base.__dataclass_fields__})
    rec.frame = frame
    rec.notes = list(base.notes)
    return rec


def _legacy_multiframe_records(
    base: ImageRecord, ds: Dataset, *, records: list[ImageRecord] | None = None
) -> list[ImageRecord]:
    """Frames without per-frame positions: stack them in file order along the normal."""
    n = base.layout.n_frames
    records = records or [_copy_record(base, f) for f in range(n)]
    origin = _numbers(_get(ds, "ImagePositionPatient"), 3)
    iop = records[0].orientation
    if iop is None:
        iop = _numbers(_get(ds, "ImageOrientationPatient"), 6, limit=MAX_COSINE)
    offsets = _numbers(_get(ds, "GridFrameOffsetVector"), n) if n > 1 else np.zeros(1)
    name = os.path.basename(base.path)
    notes: list[str] = []
    if iop is None:
        iop = np.array([1.0, 0, 0, 0, 1.0, 0])
        notes.append(f"{name}: no image orientation, axial slices assumed")
    if origin is None:
        origin = np.zeros(3)
        notes.append(f"{name}: no image position, origin (0, 0, 0) assumed")
    if offsets is None:
        step, source = _frame_step(base)
        offsets = np.arange(n) * step
        notes.append(
            f"{name}: multi-frame image without per-frame positions - {n} frames stacked "
            f"in file order, {step:g} mm apart ({source}); geometry is approximate"
        )
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    normal = normal / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
    for rec, offset in zip(records, offsets, strict=True):
        rec.position = origin + float(offset) * normal
        rec.orientation = iop
        rec.notes.extend(notes)
    return records


def _frame_step(base: ImageRecord) -> tuple[float, str]:
    if base.spacing_between_slices:
        return base.spacing_between_slices, "Spacing Between Slices"
    if base.slice_thickness:
        return base.slice_thickness, "Slice Thickness"
    return 1.0, "no spacing in the header, 1 mm assumed"


def read_pixel_bytes(record: ImageRecord) -> bytes | None:
    """The raw (still encoded) pixel bytes of one record, to compare duplicates.

    Returns ``None`` when they cannot be isolated cheaply (one frame of compressed
    multi-frame data, or a deflated file).
    """
    layout = record.layout
    if layout.value_offset is None or layout.value_length is None:
        return None
    if layout.n_frames > 1 and layout.encapsulated:
        return None
    offset, length = layout.value_offset, layout.value_length
    if layout.n_frames > 1:
        offset, length = offset + record.frame * layout.frame_bytes, layout.frame_bytes
    try:
        with open_dicom(record.path) as (stream, _):
            stream.seek(offset)
            return stream.read(length)
    except (OSError, NotLoadableError):
        return None


def sop_class_name(sop: str) -> str:
    """Readable name of a SOP class UID (the UID itself when unknown)."""
    return _describe_sop(sop)
