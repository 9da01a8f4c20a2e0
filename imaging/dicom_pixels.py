"""Pixel data of a planned series into one voxel array, with rescale applied.

Uncompressed little-/big-endian pixels are read straight from the file at the offset the
scan recorded (no second header parse, no float64). Single-frame JPEG-LS, JPEG 2000, JPEG
and RLE images are read the same way and handed to pydicom's decoder for their
syntax with the fastest plugin installed (CharLS for JPEG-LS), so the values are exactly
``ds.pixel_array``'s. Everything else, and any frame that path refuses, goes through
``ds.pixel_array`` with every plugin (pylibjpeg, openjpeg, pyjpegls, RLE, deflate), with
SimpleITK's GDCM as a last resort for non-conformant JPEG streams. GDCM runs in a child process
(:mod:`imaging.dicom_gdcm`), so a crash or a hang on a damaged file costs only that file;
a decoder's panic (a ``BaseException`` from a Rust extension) is a decoding error too.

Output: CT in Hounsfield units as int16 when slope and intercept are integers and every
value fits, otherwise float32; other modalities float32. Resampled volumes (gantry tilt,
uneven spacing) are float32.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import Decoder, get_decoder
from scipy import ndimage

from imaging.dicom_gdcm import GdcmDecodeError, IsolatedGdcm
from imaging.dicom_geometry import SeriesPlan
from imaging.dicom_headers import (
    ImageRecord,
    NotLoadableError,
    PixelLayout,
    open_dicom,
    read_dataset,
    reraise_interrupts,
    sop_class_name,
)
from imaging.errors import StudyReadError

_INT16_MIN, _INT16_MAX = -32768, 32767
_local = threading.local()  # the GDCM child process of the series being read, if any


class _Int16Overflow(Exception):  # noqa: N818 - internal control flow
    """Some value does not fit int16: redo the series in float32."""


def read_series_array(plan: SeriesPlan) -> np.ndarray:
    """Decode and rescale a planned series.

    Parameters
    ----------
    plan : SeriesPlan
        From :func:`imaging.dicom_geometry.plan_all`.

    Returns
    -------
    (K, J, I) ndarray
        Voxel values indexed ``[k, j, i]`` on the plan's grid (``size`` reversed).

    Raises
    ------
    StudyReadError
        When a file cannot be read or decoded; the message names the file.
    """
    with _gdcm_for_series():
        if plan.resampling is not None:
            stack = _read_stack(plan.records, np.float32)
            return _resample(stack, plan)
        if _int16_candidate(plan.records):
            try:
                return _read_stack(plan.records, np.int16)
            except _Int16Overflow:
                pass
        return _read_stack(plan.records, np.float32)


def output_dtype(plan: SeriesPlan) -> np.dtype:
    """The data type :func:`read_series_array` returns for ``plan`` (int16 or float32).

    From the headers only; an int16 candidate whose values turn out not to fit is
    returned as float32 instead.
    """
    if plan.resampling is None and _int16_candidate(plan.records):
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def same_pixels(a: ImageRecord, b: ImageRecord) -> bool:
    """Whether two images decode to identical modality values (HU for CT).

    Used to recognise the same slice stored twice (for example once compressed and once
    not).

    Parameters
    ----------
    a, b : ImageRecord
        Two 2-D images of the same size.

    Returns
    -------
    bool
        True when every rescaled pixel value is equal; any decoding problem counts as
        "different".
    """
    try:
        va = _read_stack([a], np.float32)[0]
        vb = _read_stack([b], np.float32)[0]
    except BaseException as exc:  # a decoder's panic too
        reraise_interrupts(exc)
        return False
    return va.shape == vb.shape and bool(np.array_equal(va, vb))


def _is_integer(value: float) -> bool:
    return abs(value - round(value)) < 1e-9


def _int16_candidate(records: list[ImageRecord]) -> bool:
    return all(
        r.modality == "CT"
        and not r.modality_lut
        and _is_integer(r.slope)
        and _is_integer(r.intercept)
        for r in records
    )


def _read_stack(records: list[ImageRecord], dtype: type[np.generic]) -> np.ndarray:
    layout = records[0].layout
    out = np.empty((len(records), layout.rows, layout.columns), dtype=dtype)
    by_file: dict[str, list[int]] = defaultdict(list)
    for k, rec in enumerate(records):
        by_file[rec.path].append(k)
    for path, slots in by_file.items():
        first = records[slots[0]]
        if _fast_path(first):
            for k in slots:
                _read_native(records[k], out[k])
        else:
            frames = _decode_file(path, [records[k] for k in slots])
            for k in slots:
                raw, rescaled = frames[records[k].frame]
                _store(out[k], raw, records[k], rescaled=rescaled)
    return out


# ------------------------------------------------------------------------------------------------
# native pixels, straight from the file
def _fast_path(rec: ImageRecord) -> bool:
    layout = rec.layout
    return (
        layout.container == "plain"
        and layout.is_native
        and layout.value_offset is not None
        and not rec.modality_lut
    )


def _raw_dtype(layout: PixelLayout) -> np.dtype:
    kind = "i" if layout.pixel_representation == 1 else "u"
    return np.dtype(f"{kind}{layout.bits_allocated // 8}")


def _read_native(rec: ImageRecord, out: np.ndarray) -> None:
    layout = rec.layout
    raw_dtype = _raw_dtype(layout)
    offset = int(layout.value_offset) + rec.frame * layout.frame_bytes
    direct = (
        out.dtype == raw_dtype
        and not layout.big_endian
        and layout.bits_stored >= layout.bits_allocated
        and rec.slope == 1.0
        and rec.intercept == 0.0
    )
    buf = out if direct else np.empty((layout.rows, layout.columns), dtype=raw_dtype)
    try:
        with open(rec.path, "rb") as fh:
            fh.seek(offset)
            got = fh.readinto(memoryview(buf).cast("B"))
    except OSError as exc:
        raise StudyReadError(f"cannot read {rec.path}: {exc.strerror or exc}") from exc
    if got != layout.frame_bytes:
        raise StudyReadError(
            f"{rec.path}: the file ended while reading its pixel data (truncated since the "
            "scan?); scan the folder again"
        )
    if direct:
        return
    if layout.big_endian:
        buf.byteswap(inplace=True)
    _correct_unused_bits(buf, layout)
    _store(out, buf, rec, rescaled=False)


def _correct_unused_bits(buf: np.ndarray, layout: PixelLayout) -> None:
    """Ignore the bits above Bits Stored, as pydicom does (sign-extending signed data)."""
    shift = layout.bits_allocated - layout.bits_stored
    if shift <= 0:
        return
    if layout.pixel_representation == 1:
        np.left_shift(buf, shift, out=buf)
        np.right_shift(buf, shift, out=buf)
    else:
        np.bitwise_and(buf, (1 << layout.bits_stored) - 1, out=buf)


# ------------------------------------------------------------------------------------------------
# everything else: pydicom decoders, GDCM as a fallback
def _decode_file(path: str, records: list[ImageRecord]) -> dict[int, tuple[np.ndarray, bool]]:
    """Decode the frames ``records`` need from one file: ``frame -> (array, rescaled)``."""
    layout = records[0].layout
    needs_lut = any(r.modality_lut for r in records)
    if not needs_lut and _direct_candidate(layout):
        direct = _decode_direct(path, layout)
        if direct is not None:
            return {r.frame: (direct, False) for r in records}
    rescaled = needs_lut
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = _dataset_with_pixels(path, layout)
            arr = ds.pixel_array
            if needs_lut:
                from pydicom.pixels import apply_modality_lut

                arr = apply_modality_lut(arr, ds)
    except NotLoadableError as exc:
        raise StudyReadError(f"cannot read {path}: {exc}") from exc
    except BaseException as exc:  # decoders raise RuntimeError, ValueError, panics, ...
        reraise_interrupts(exc)
        arr = _gdcm_fallback(path, layout, exc)
        rescaled = True
    arr = np.asarray(arr)
    expected = (layout.rows, layout.columns)
    if layout.n_frames == 1:
        arr = arr.reshape((1, *arr.shape)) if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[1:] != expected or arr.shape[0] < layout.n_frames:
        raise StudyReadError(
            f"{path}: decoded pixel data has shape {arr.shape}, expected "
            f"{layout.n_frames} frame(s) of {expected[1]}x{expected[0]} - the file is damaged"
        )
    return {r.frame: (arr[r.frame], rescaled) for r in records}


def _direct_candidate(layout: PixelLayout) -> bool:
    """Whether one compressed frame can be decoded from its bytes on disk alone."""
    return (
        layout.encapsulated
        and layout.container == "plain"
        and layout.n_frames == 1
        and layout.value_offset is not None
        and layout.value_length is not None
        and layout.transfer_syntax in _PREFERRED_PLUGIN
    )


def _decode_direct(path: str, layout: PixelLayout) -> np.ndarray | None:
    """Decode a single-frame compressed image without parsing its header again.

    The encapsulated Pixel Data value is read at the offset the scan recorded and handed
    to pydicom's decoder for the transfer syntax with the scan's image description and
    the fastest plugin installed for that syntax (CharLS for JPEG-LS rather than
    libjpeg: about four times faster, the same lossless values). The decoder's own
    corrections (JPEG-LS/JPEG 2000 sign, unused bits) run as for ``ds.pixel_array``.

    Returns
    -------
    (J, I) ndarray or None
        The stored values (before rescale), or None when the decoding is refused or
        unexpected (a plugin refusing the stream, another shape): the caller then takes
        the general path, with every plugin and GDCM, exactly as for any other file.

    Raises
    ------
    StudyReadError
        When the file cannot be read or ends before the Pixel Data the scan found (it
        changed since the scan).
    """
    decoder, plugin = _direct_decoder(layout.transfer_syntax)
    if decoder is None:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(int(layout.value_offset))
            data = fh.read(int(layout.value_length))
    except OSError as exc:
        raise StudyReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) != layout.value_length:
        raise StudyReadError(
            f"{path}: the file ended while reading its pixel data (truncated since the "
            "scan?); scan the folder again"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _ = decoder.as_array(
                data,
                decoding_plugin=plugin,
                rows=layout.rows,
                columns=layout.columns,
                samples_per_pixel=1,
                number_of_frames=1,
                bits_allocated=layout.bits_allocated,
                bits_stored=layout.bits_stored,
                pixel_representation=layout.pixel_representation,
                photometric_interpretation=layout.photometric,
            )
    except BaseException as exc:  # any refusal: the general path decides
        reraise_interrupts(exc)
        return None
    if arr.shape != (layout.rows, layout.columns):
        return None
    return arr


# Transfer syntax -> decoding plugin to try first ("" = pydicom's own order).
_PREFERRED_PLUGIN = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "",  # JPEG 2000
    "1.2.840.10008.1.2.4.50": "",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51": "",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57": "",  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": "",  # JPEG lossless, process 14 SV1
    "1.2.840.10008.1.2.5": "",  # RLE lossless
}
_decoders: dict[str, tuple[Decoder | None, str]] = {}


def _direct_decoder(syntax: str) -> tuple[Decoder | None, str]:
    """pydicom's decoder for ``syntax`` and the plugin to ask (``(None, "")`` if none)."""
    if syntax not in _decoders:
        try:
            decoder: Decoder | None = get_decoder(syntax)
        except (NotImplementedError, ValueError):
            decoder = None
        if decoder is not None and not decoder.is_available:
            decoder = None
        plugin = _PREFERRED_PLUGIN.get(syntax, "")
        if decoder is None or plugin not in decoder.available_plugins:
            plugin = ""
        _decoders[syntax] = (decoder, plugin)
    return _decoders[syntax]


def _dataset_with_pixels(path: str, layout: PixelLayout) -> Dataset:
    """The data set with its Pixel Data taken from where the scan found it.

    Using the scan's own element boundaries (not pydicom's search for the sequence
    delimiter) also decodes files whose compressed data happens to contain the
    delimiter's byte pattern.
    """
    with open_dicom(path) as (stream, _):
        if layout.value_offset is None or layout.value_length is None:
            return read_dataset(stream, stop_before_pixels=False)
        ds = read_dataset(stream, stop_before_pixels=True)
        stream.seek(layout.value_offset)
        data = stream.read(layout.value_length)
    vr = "OB" if layout.encapsulated or layout.bits_allocated <= 8 else "OW"
    ds.add_new(0x7FE00010, vr, data)
    return ds


@contextmanager
def _gdcm_for_series() -> Iterator[None]:
    """Share one GDCM child process among the files of one series (started on first use)."""
    if getattr(_local, "gdcm", None) is not None:
        yield
        return
    _local.gdcm = IsolatedGdcm()
    try:
        yield
    finally:
        child, _local.gdcm = _local.gdcm, None
        child.close()


def _gdcm_fallback(path: str, layout: PixelLayout, error: BaseException) -> np.ndarray:
    """Decode one file with SimpleITK/GDCM (values come back already rescaled).

    GDCM runs in a child process (:mod:`imaging.dicom_gdcm`): the files that reach it are
    the damaged ones, and a crash or a hang there must only cost this file.
    """
    reason = _first_line(error)
    if layout.container != "plain" or layout.n_frames != 1:
        raise _decode_error(path, layout, reason) from error
    try:
        shared = getattr(_local, "gdcm", None)
        if shared is not None:
            array = shared.decode(os.fspath(path))
        else:
            with IsolatedGdcm() as gdcm:
                array = gdcm.decode(os.fspath(path))
    except GdcmDecodeError as exc:
        raise _decode_error(path, layout, f"{reason} (GDCM: {exc})") from error
    if array.size == 0 or array.size % (layout.rows * layout.columns):
        raise _decode_error(path, layout, reason) from error
    return array.reshape(-1, layout.rows, layout.columns)


def _decode_error(path: str, layout: PixelLayout, reason: str) -> StudyReadError:
    syntax = sop_class_name(layout.transfer_syntax)
    return StudyReadError(
        f"cannot decode the pixel data of {path} ({syntax}): {reason}. The file is damaged "
        "or uses a compression no installed decoder accepts; re-export it uncompressed"
    )


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = " / ".join(lines[:3]) or type(error).__name__
    return text if len(text) <= 240 else text[:239] + "…"


# ------------------------------------------------------------------------------------------------
# rescale into the output slice
def _store(out: np.ndarray, raw: np.ndarray, rec: ImageRecord, *, rescaled: bool) -> None:
    """Write modality values (HU for CT) of one frame into ``out``."""
    if out.dtype == np.float32:
        if rescaled:
            out[...] = raw
        else:
            np.multiply(raw, np.float32(rec.slope), out=out, dtype=np.float32, casting="unsafe")
            out += np.float32(rec.intercept)
        return
    if rescaled:
        values = np.asarray(raw)
        if values.dtype.kind == "f" and not np.all(values == np.round(values)):
            raise _Int16Overflow
        _put_int16(out, values.astype(np.int64, copy=False))
        return
    slope, intercept = int(round(rec.slope)), int(round(rec.intercept))
    if slope == 1 and intercept == 0 and raw.dtype == np.int16:
        out[...] = raw
        return
    lo, hi = rec.layout.stored_range()
    fits = raw.dtype.itemsize <= 2 and lo >= _INT16_MIN and hi <= _INT16_MAX
    if slope == 1 and fits and lo + intercept >= _INT16_MIN and hi + intercept <= _INT16_MAX:
        np.add(raw.astype(np.int16, copy=False), np.int16(intercept), out=out)
        return
    values = raw.astype(np.int32)
    if slope != 1:
        values *= slope
    if intercept:
        values += intercept
    _put_int16(out, values)


def _put_int16(out: np.ndarray, values: np.ndarray) -> None:
    if values.size and (values.min() < _INT16_MIN or values.max() > _INT16_MAX):
        raise _Int16Overflow
    out[...] = values


# ------------------------------------------------------------------------------------------------
# resampling onto the planned regular grid
def _resample(stack: np.ndarray, plan: SeriesPlan) -> np.ndarray:
    """Interpolate the acquired slices onto the plan's orthogonal grid (linear)."""
    res = plan.resampling
    assert res is not None
    nx, ny, nz = plan.size
    out = np.empty((nz, ny, nx), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}

    def shifted(s: int) -> np.ndarray:
        if s not in cache:
            if len(cache) > 4:
                cache.clear()
            cache[s] = _translate(stack[s], res.shift_ij[s], (ny, nx), res.fill)
        return cache[s]

    for k in range(nz):
        w = float(res.weight[k])
        a = shifted(int(res.lower[k]))
        if w <= 1e-6:
            out[k] = a
            continue
        b = shifted(int(res.upper[k]))
        if w >= 1 - 1e-6:
            out[k] = b
            continue
        np.multiply(a, np.float32(1.0 - w), out=out[k])
        out[k] += np.float32(w) * b
    return out


def _translate(
    image: np.ndarray, shift_ij: np.ndarray, shape: tuple[int, int], fill: float
) -> np.ndarray:
    """Sample ``image`` at ``(j + shift_j, i + shift_i)`` for every target pixel ``(j, i)``."""
    di, dj = float(shift_ij[0]), float(shift_ij[1])
    if abs(di) < 1e-9 and abs(dj) < 1e-9 and image.shape == shape:
        return image
    return ndimage.affine_transform(
        image,
        np.array([1.0, 1.0]),
        offset=(dj, di),
        output_shape=shape,
        order=1,
        mode="constant",
        cval=fill,
        prefilter=False,
    )
