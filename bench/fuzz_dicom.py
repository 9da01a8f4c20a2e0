"""Hostile DICOM: mutate real and phantom files and feed them through scan, ``info`` and loading.

Every case is a small folder holding one mutated file (sometimes beside untouched slices of
the same series). A case passes when each entry point ends in an allowed outcome: a volume,
a skipped file with a reason, or a :class:`~imaging.errors.SacroplanError` with a message.
Anything else fails the case: another exception, ``sacroplan info`` exiting with an internal
error, a decoder that kills the process (the cases run in a child process that is restarted
after a crash), a case that takes longer than its time limit, or a memory error (headers
that claim huge images must be refused before anything is allocated).

The same machinery backs ``tests/test_fuzz_dicom.py`` (hypothesis drives the cases there).

Usage::

    python -m bench.fuzz_dicom [--cases N] [--seed S] [--timeout SECONDS] [--no-real]

prints the outcome counts by mutation kind and every failing case with how to reproduce it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Real files used as seeds (relative to ../shared/data); the small, varied ones.
REAL_SEEDS: tuple[str, ...] = (
    "pelvis_ct_dicom/CT0001.dcm",
    "pelvis_ct_dicom/CT0050.dcm",
    "odd_dicom/01_truncated/ct_no_preamble.dcm",
    "odd_dicom/02_missing_tags/ExplVR_BigEndNoMeta.dcm",
    "odd_dicom/02_missing_tags/no_meta.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/MR_small_RLE.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/MR_small_jp2klossless.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/MR_small_jpeg_ls_lossless.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/MR_small_bigendian.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/MR_small_implicit.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/JPEG-lossy.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/JPGExtended.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/image_dfl.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom/zipMR.gz",
    "odd_dicom/03_transfer_syntaxes/pydicom-data/JPEG-LL.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom-data/emri_small_RLE.dcm",
    "odd_dicom/03_transfer_syntaxes/pydicom-data/693_J2KR.dcm",
    "odd_dicom/04_multiframe/emri_small.dcm",
    "odd_dicom/08_other_oddities/CT_small.dcm",
    "odd_dicom/08_other_oddities/JPEG2000-embedded-sequence-delimiter.dcm",
    "odd_dicom/08_other_oddities/liver_nonbyte_aligned.dcm",
    "odd_dicom/07b_dicomdir_multi_patient/TINY_ALPHA/DICOMDIR",
)
# One slice of the scanner CT (512 x 512, the size of a real study).
REAL_FOLDER_SEEDS: tuple[str, ...] = ("abdomen_ct_dicom_scanner/dicom", "pelvis_ct_dicom")

# Absurd values per keyword: (VR, value); ``None`` as value deletes the element.
ABSURD: dict[str, tuple[tuple[str, Any], ...]] = {
    "Rows": (("UL", 1_000_000_000), ("US", 0), ("US", 65535), ("IS", "-5"), ("US", 1)),
    "Columns": (("UL", 1_000_000_000), ("US", 0), ("US", 65535), ("IS", "-5"), ("US", 1)),
    "NumberOfFrames": (
        ("IS", "1000000000"),
        ("IS", "-3"),
        ("IS", "0"),
        ("IS", "2"),
        ("IS", "65536"),
        ("LO", "abc"),
        ("IS", "1e9"),
    ),
    "BitsAllocated": (("US", 0), ("US", 3), ("US", 1), ("US", 64), ("US", 12), ("US", 8)),
    "BitsStored": (("US", 0), ("US", 40), ("US", 1), ("US", 12)),
    "HighBit": (("US", 99), ("US", 0)),
    "PixelRepresentation": (("US", 2), ("US", 65535), ("US", 1), ("US", 0)),
    "SamplesPerPixel": (("US", 0), ("US", 3), ("US", 65535)),
    "PhotometricInterpretation": (("CS", ""), ("CS", "RGB"), ("CS", "PALETTE COLOR"), ("CS", "X")),
    "PixelSpacing": (
        ("DS", "0\\0"),
        ("DS", "-1\\-1"),
        ("DS", "nan\\nan"),
        ("DS", "inf\\1"),
        ("DS", "1e308\\1e308"),
        ("DS", "1e-300\\1e-300"),
        ("DS", "1"),
        ("DS", ""),
        ("LO", "a\\b"),
    ),
    "SliceThickness": (("DS", "0"), ("DS", "-1"), ("DS", "nan"), ("DS", "1e308")),
    "SpacingBetweenSlices": (("DS", "0"), ("DS", "-2.5"), ("DS", "nan"), ("DS", "1e308")),
    "ImageOrientationPatient": (
        ("DS", ""),
        ("DS", "0\\0\\0\\0\\0\\0"),
        ("DS", "1\\0\\0\\1\\0\\0"),
        ("DS", "nan\\0\\0\\0\\1\\0"),
        ("DS", "1\\0\\0"),
        ("DS", "1e308\\0\\0\\0\\1e308\\0"),
        ("DS", "1e-300\\0\\0\\0\\1e-300\\0"),
    ),
    "ImagePositionPatient": (
        ("DS", ""),
        ("DS", "nan\\nan\\nan"),
        ("DS", "1e308\\1e308\\1e308"),
        ("DS", "-1e308\\0\\1e308"),
        ("DS", "1\\2"),
    ),
    "RescaleSlope": (
        ("DS", "0"),
        ("DS", "-1"),
        ("DS", "nan"),
        ("DS", "inf"),
        ("DS", "1e308"),
        ("DS", "1e-308"),
        ("LO", "abc"),
    ),
    "RescaleIntercept": (("DS", "nan"), ("DS", "1e308"), ("DS", "-1e308"), ("DS", "0.5")),
    "GantryDetectorTilt": (("DS", "90"), ("DS", "nan"), ("DS", "1e308")),
    "SOPClassUID": (("UI", ""), ("UI", "1.2.3.4"), ("UI", "1.2.840.10008.5.1.4.1.1.88.11")),
    "Modality": (("CS", ""), ("CS", "SR"), ("CS", "CT\\MR"), ("CS", "X" * 64)),
    "SeriesInstanceUID": (("UI", ""), ("UI", "1.2." + "9" * 80), ("UI", "../../etc")),
    "StudyInstanceUID": (("UI", ""),),
    "GridFrameOffsetVector": (("DS", "0\\nan"), ("DS", "0\\0\\0"), ("DS", "1e308\\-1e308")),
    "PixelData": (("OB", b""), ("OB", b"\x00" * 7), ("OW", b"\x01\x02" * 33)),
    "TransferSyntaxUID": (
        ("UI", "1.2.840.10008.1.2.4.90"),
        ("UI", "1.2.840.10008.1.2.4.50"),
        ("UI", "1.2.840.10008.1.2.5"),
        ("UI", "1.2.840.10008.1.2"),
        ("UI", "1.2.840.10008.1.2.2"),
        ("UI", "1.2.840.10008.1.2.1.99"),
        ("UI", "1.2.3"),
        ("UI", ""),
    ),
}
FIELD_KEYWORDS: tuple[str, ...] = tuple(ABSURD)
VRS: tuple[bytes, ...] = (b"US", b"UL", b"SS", b"FD", b"FL", b"DS", b"IS", b"SQ", b"UN", b"OB")
BYTE_OPS: tuple[str, ...] = ("flip", "truncate", "delete", "insert", "smear")
ELEMENT_OPS: tuple[str, ...] = ("vr", "length", "duplicate", "drop")
KINDS: tuple[str, ...] = ("bytes", "fields", "elements")


# ------------------------------------------------------------------------------------------------
# seeds
@dataclass
class Seed:
    """One file to mutate, with the untouched files of its series (context)."""

    name: str
    data: bytes
    siblings: list[tuple[str, bytes]] = field(default_factory=list)
    file_name: str = "case.dcm"


def phantom_seeds(workdir: Path) -> list[Seed]:
    """Small phantom series written by the project's own writers (oblique, anisotropic)."""
    from imaging.dicom_write import write_series
    from imaging.sample import write_sample
    from imaging.volume import Volume

    seeds: list[Seed] = []
    rng = np.random.default_rng(7)
    theta = np.radians(20.0)
    direction = np.array(
        [[np.cos(theta), 0.0, np.sin(theta)], [0.0, 1.0, 0.0], [-np.sin(theta), 0.0, np.cos(theta)]]
    )
    ct = Volume(
        array=rng.integers(-1024, 1500, size=(4, 20, 24)).astype(np.int16),
        origin=np.array([-12.0, 30.0, 100.0]),
        spacing=np.array([0.8, 1.1, 2.5]),
        direction=direction,
        modality="CT",
    )
    mr = Volume(
        array=rng.uniform(0.0, 900.0, size=(3, 16, 12)).astype(np.float32),
        origin=np.zeros(3),
        spacing=np.array([1.0, 1.0, 3.0]),
        direction=np.eye(3),
        modality="MR",
    )
    for label, volume, kw in (
        ("phantom-ct", ct, {"modality": "CT", "rescale_intercept": -1024.0}),
        ("phantom-mr", mr, {"modality": "MR", "rescale_slope": 0.5}),
    ):
        out = workdir / label
        files = write_series(volume, out, **kw)
        data = [(p.name, p.read_bytes()) for p in files]
        for n, (name, raw) in enumerate(data):
            seeds.append(
                Seed(f"{label}/{name}", raw, [d for m, d in enumerate(data) if m != n], name)
            )
    sample = write_sample(workdir / "sample", spacing_mm=(6.0, 6.0, 6.0))
    files = sorted(Path(sample["dicom"]).glob("*.dcm"))
    middle = files[len(files) // 2 - 1 : len(files) // 2 + 2]
    data = [(p.name, p.read_bytes()) for p in middle]
    seeds.append(Seed(f"sample/{middle[1].name}", data[1][1], [data[0], data[2]], middle[1].name))
    return seeds


def real_seeds(shared: Path = SHARED_DATA) -> list[Seed]:
    """Seeds from ``../shared/data`` (empty when the data is not there)."""
    seeds: list[Seed] = []
    for rel in REAL_SEEDS:
        path = shared / rel
        if path.is_file():
            seeds.append(Seed(rel, path.read_bytes(), [], path.name))
    for rel in REAL_FOLDER_SEEDS:
        folder = shared / rel
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if len(files) < 3:
            continue
        mid = len(files) // 2
        trio = [(p.name, p.read_bytes()) for p in files[mid - 1 : mid + 2]]
        seeds.append(Seed(f"{rel}/{trio[1][0]}", trio[1][1], [trio[0], trio[2]], trio[1][0]))
    return seeds


# ------------------------------------------------------------------------------------------------
# cases
@dataclass(frozen=True)
class Case:
    """A seed and the mutations applied to it, in order; plain data (picklable, printable).

    Byte positions are fractions of the file length (0..1) so one case fits every seed.
    """

    seed: int
    kind: str
    ops: tuple[tuple[Any, ...], ...]
    with_siblings: bool = False

    def describe(self, seeds: list[Seed]) -> str:
        sib = " (+ siblings)" if self.with_siblings else ""
        return f"{seeds[self.seed % len(seeds)].name}{sib}: {self.kind} {list(self.ops)}"


def random_case(rng: random.Random, n_seeds: int) -> Case:
    """A random case (the bench's generator; the test uses hypothesis strategies instead)."""
    kind = rng.choice(KINDS)
    n = rng.randint(1, 3)
    if kind == "bytes":
        ops = tuple(random_byte_op(rng) for _ in range(n))
    elif kind == "fields":
        ops = tuple(random_field_op(rng) for _ in range(n))
    else:
        ops = tuple(random_element_op(rng) for _ in range(n))
    if rng.random() < 0.3:
        ops = (*ops, random_byte_op(rng))
    return Case(rng.randrange(n_seeds), kind, ops, rng.random() < 0.3)


def random_byte_op(rng: random.Random) -> tuple[Any, ...]:
    op = rng.choice(BYTE_OPS)
    at = rng.random()
    if op == "flip":
        return ("flip", at, rng.randint(1, 255), rng.randint(1, 8))
    if op == "truncate":
        return ("truncate", at)
    if op == "delete":
        return ("delete", at, rng.randint(1, 64))
    if op == "insert":
        return ("insert", at, bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))))
    return ("smear", at, rng.choice((0x00, 0xFF)), rng.randint(1, 256))


def random_field_op(rng: random.Random) -> tuple[Any, ...]:
    keyword = rng.choice(FIELD_KEYWORDS)
    if rng.random() < 0.15:
        return ("delete", keyword)
    return ("set", keyword, rng.randrange(len(ABSURD[keyword])))


def random_element_op(rng: random.Random) -> tuple[Any, ...]:
    op = rng.choice(ELEMENT_OPS)
    at = rng.random()
    if op == "vr":
        return ("vr", at, rng.randrange(len(VRS)))
    if op == "length":
        return ("length", at, rng.choice((0, 1, 3, 0xFFFF, 0xFFFFFFFF, -2, 2)))
    return (op, at)


def _pos(data: bytes | bytearray, at: float) -> int:
    return min(len(data), max(0, int(at * len(data))))


def apply_byte_op(data: bytes, op: tuple[Any, ...]) -> bytes:
    buf = bytearray(data)
    name, at = op[0], op[1]
    i = _pos(buf, at)
    if name == "flip":
        xor, count = op[2], op[3]
        for n in range(count):
            j = (i + n * 977) % max(1, len(buf))
            if buf:
                buf[j] ^= xor
    elif name == "truncate":
        del buf[i:]
    elif name == "delete":
        del buf[i : i + op[2]]
    elif name == "insert":
        buf[i:i] = op[2]
    elif name == "smear":
        buf[i : i + op[3]] = bytes([op[2]]) * len(buf[i : i + op[3]])
    return bytes(buf)


def apply_field_ops(data: bytes, ops: tuple[tuple[Any, ...], ...]) -> bytes:
    """Set or delete header fields with pydicom (any VR, any value); the file as bytes."""
    import warnings

    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(_ungzip(data)), force=True)
        except Exception:
            return data
        for op in ops:
            keyword = op[1]
            tag = tag_for_keyword(keyword)
            if tag is None:
                continue
            target = ds.file_meta if keyword == "TransferSyntaxUID" else ds
            if target is None:
                continue
            if op[0] == "delete":
                if tag in target:
                    del target[tag]
                continue
            vr, value = ABSURD[keyword][op[2] % len(ABSURD[keyword])]
            target[tag] = DataElement(tag, vr, value)
        if any(op[1] == "TransferSyntaxUID" for op in ops):
            return _write_with_meta(ds) or data
        out = io.BytesIO()
        try:
            implicit, little = ds.original_encoding
            pydicom.dcmwrite(
                out,
                ds,
                implicit_vr=bool(implicit) if implicit is not None else False,
                little_endian=bool(little) if little is not None else True,
                force_encoding=True,
            )
        except Exception:
            try:
                out = io.BytesIO()
                pydicom.dcmwrite(
                    out, ds, implicit_vr=False, little_endian=True, force_encoding=True
                )
            except Exception:
                return data
    return out.getvalue()


def _write_with_meta(ds: Any) -> bytes | None:
    """Write file meta (whatever its Transfer Syntax says) and the data set as it was read."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = ds.file_meta
    implicit, little = ds.original_encoding
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    try:
        write_file_meta_info(fp, meta, enforce_standard=False)
        ds.file_meta = type(meta)()
        fp.is_implicit_VR = bool(implicit) if implicit is not None else False
        fp.is_little_endian = bool(little) if little is not None else True
        write_dataset(fp, ds)
    except Exception:
        return None
    finally:
        ds.file_meta = meta
    return fp.getvalue()


def _ungzip(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        import gzip

        with contextlib.suppress(OSError, EOFError):
            return gzip.decompress(data)
    return data


def element_table(data: bytes) -> list[tuple[int, int, bool]]:
    """``(header offset, value offset, explicit VR)`` of every top-level data element."""
    import warnings

    import pydicom

    out: list[tuple[int, int, bool]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception:
            return out
        implicit = ds.original_encoding[0]
        for tag in list(ds.keys()):
            try:
                raw = ds.get_item(tag)
            except Exception:
                continue
            tell = getattr(raw, "value_tell", None)
            if tell is None:
                continue
            explicit = not implicit
            long_form = explicit and str(getattr(raw, "VR", "")) in {
                "OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV",
            }  # fmt: skip
            head = tell - (12 if long_form else 8)
            if 0 <= head < len(data):
                out.append((head, tell, explicit))
    return out


def apply_element_op(data: bytes, table: list[tuple[int, int, bool]], op: tuple[Any, ...]) -> bytes:
    if not table:
        return data
    head, value, explicit = table[min(len(table) - 1, int(op[1] * len(table)))]
    buf = bytearray(data)
    name = op[0]
    if name == "vr" and explicit:
        buf[head + 4 : head + 6] = VRS[op[2] % len(VRS)]
    elif name == "length":
        new = op[2]
        size = value - head - 4 if not explicit else (2 if value - head == 8 else 4)
        off = value - size
        old = int.from_bytes(buf[off:value], "little")
        length = old + new if new in (-2, 2) else new
        length = max(0, length) % (1 << (8 * size))
        buf[off:value] = length.to_bytes(size, "little")
    elif name in ("duplicate", "drop"):
        nxt = [h for h, _, _ in table if h > head]
        end = min(nxt) if nxt else len(buf)
        chunk = bytes(buf[head:end])
        if name == "duplicate":
            buf[end:end] = chunk
        else:
            del buf[head:end]
    return bytes(buf)


def materialize(case: Case, seeds: list[Seed], folder: Path) -> Path:
    """Write the case's files into ``folder`` (created empty); return the mutated file."""
    seed = seeds[case.seed % len(seeds)]
    data = seed.data
    ops = list(case.ops)
    if case.kind == "fields":
        field_ops = tuple(op for op in ops if op[0] in ("set", "delete") and len(op) <= 3)
        field_ops = tuple(op for op in field_ops if isinstance(op[1], str))
        data = apply_field_ops(data, field_ops)
        ops = [op for op in ops if op not in field_ops]
    elif case.kind == "elements":
        table = element_table(data)
        for op in [op for op in ops if op[0] in ELEMENT_OPS]:
            data = apply_element_op(data, table, op)
        ops = [op for op in ops if op[0] not in ELEMENT_OPS]
    for op in ops:
        if op[0] in BYTE_OPS:
            data = apply_byte_op(data, op)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if case.with_siblings:
        for name, raw in seed.siblings:
            (folder / name).write_bytes(raw)
    target = folder / seed.file_name
    target.write_bytes(data)
    return target


# ------------------------------------------------------------------------------------------------
# running one case
@dataclass
class Outcome:
    """What one case gave: ``status`` "ok" or a failure kind, and details."""

    status: str
    detail: str = ""
    volumes: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0


def run_case_in_process(folder: Path, mutated: Path) -> Outcome:
    """Scan, ``sacroplan info`` and load the case; classify what happened."""
    from app import cli
    from imaging.errors import SacroplanError
    from imaging.read import load, load_series, scan

    out = Outcome("ok")
    t0 = time.perf_counter()
    alone = [p for p in folder.iterdir()] == [mutated]
    try:
        # the folder (scan + load every series), then the file alone when it has siblings
        for target in (folder,) if alone else (folder, mutated):
            try:
                result = scan(target)
            except SacroplanError as exc:
                _check_message(exc)
                out.errors += 1
                continue
            for skipped in result.skipped:
                if not skipped.reason.strip():
                    raise AssertionError(f"skipped {skipped.path} without a reason")
            out.skipped += len(result.skipped)
            for info in result.series:
                try:
                    volume = load_series(info)
                except SacroplanError as exc:
                    _check_message(exc)
                    out.errors += 1
                    continue
                _check_volume(volume, info)
                out.volumes += 1
            if len(result.series) != 1:  # the messages of "nothing" / "which one?"
                try:
                    load(target)
                except SacroplanError as exc:
                    _check_message(exc)
        args = ["info", str(folder)] if alone else ["info", "--json", str(folder)]
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = cli.main(args)
        err = stderr.getvalue()
        if code not in (0, 2) or "Traceback" in err:
            raise AssertionError(f"sacroplan {' '.join(args[:-1])}: exit {code}: {err}")
    except MemoryError:
        out.status, out.detail = "memory", traceback.format_exc(limit=-8)
    except AssertionError as exc:
        out.status, out.detail = "bad outcome", str(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a decoder's panic (BaseException) escaping is a failure too
        out.status, out.detail = "exception", traceback.format_exc(limit=-8)
    out.seconds = time.perf_counter() - t0
    return out


def _check_message(exc: BaseException) -> None:
    text = str(exc)
    if not text.strip():
        raise AssertionError(f"{type(exc).__name__} without a message")
    if "not enough memory" in text:
        raise AssertionError(f"memory ran out instead of a refusal from the header: {text}")


def _check_volume(volume: Any, info: Any) -> None:
    shape = tuple(reversed(info.size))
    if volume.array.shape != shape:
        raise AssertionError(f"volume shape {volume.array.shape} != scanned {shape}")
    for name in ("spacing", "origin", "direction"):
        value = np.asarray(getattr(volume, name), dtype=float)
        if not np.all(np.isfinite(value)):
            raise AssertionError(f"volume {name} is not finite: {value}")
    if np.any(np.asarray(volume.spacing) <= 0):
        raise AssertionError(f"volume spacing not positive: {volume.spacing}")
    if volume.array.dtype.kind == "f" and not np.all(np.isfinite(volume.array)):
        raise AssertionError("volume holds NaN or infinite values")


def _worker(conn: Any, seeds_dir: str, memory_cap_mb: int) -> None:
    """Child process: run cases sent as ``(case, folder)``; reply with the Outcome."""
    import pickle
    import resource

    if memory_cap_mb:
        cap = memory_cap_mb * 1024 * 1024
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    with open(Path(seeds_dir) / "seeds.pkl", "rb") as fh:
        seeds = pickle.load(fh)
    # warm up the imports so the first case's time is its own
    from app import cli  # noqa: F401
    from imaging import read  # noqa: F401

    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        case, folder = msg
        try:
            mutated = materialize(case, seeds, Path(folder))
            outcome = run_case_in_process(Path(folder), mutated)
        except Exception:
            outcome = Outcome("harness", traceback.format_exc(limit=-4))
        conn.send(outcome)


class Runner:
    """Runs cases in a child process; a crash or a hang fails the case, and the child restarts.

    Parameters
    ----------
    seeds : list of Seed
    timeout_s : float
        Time limit of one case (scan + info + load), wall clock.
    memory_cap_mb : int
        Data-segment limit of the child (0: none); an allocation beyond it is a MemoryError
        in the child, reported as a failure.
    """

    def __init__(self, seeds: list[Seed], *, timeout_s: float = 20.0, memory_cap_mb: int = 3000):
        import pickle

        self.seeds = seeds
        self.timeout_s = timeout_s
        self.memory_cap_mb = memory_cap_mb
        self.tmp = Path(tempfile.mkdtemp(prefix="sacroplan-fuzz-"))
        with open(self.tmp / "seeds.pkl", "wb") as fh:
            pickle.dump(seeds, fh)
        self.ctx = mp.get_context("spawn")
        self.proc: Any = None
        self.conn: Any = None
        self.restarts = 0
        self.count = 0

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        env_home = os.environ.setdefault("SACROPLAN_HOME", str(self.tmp / "home"))
        del env_home
        self.proc = self.ctx.Process(
            target=_worker, args=(child, str(self.tmp), self.memory_cap_mb), daemon=True
        )
        self.proc.start()
        child.close()
        self.conn = parent
        if not self.conn.poll(120):
            raise RuntimeError("the fuzz worker did not start")
        self.conn.recv()

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def run(self, case: Case) -> Outcome:
        """Run one case in the child; a dead or stuck child becomes a failed Outcome."""
        if self.proc is None:
            self._start()
        self.count += 1
        folder = self.tmp / "cases" / f"c{self.count % 4}"
        t0 = time.perf_counter()
        try:
            self.conn.send((case, str(folder)))
            if self.conn.poll(self.timeout_s):
                return self.conn.recv()
            status, detail = "hang", f"no answer within {self.timeout_s:g} s"
        except (EOFError, OSError, BrokenPipeError):
            status, detail = "crash", ""
        code = self.proc.exitcode if self.proc is not None else None
        if status == "crash" or (code is not None and code != 0):
            status = "crash"
            detail = f"the process died (exit code {code})"
        self._stop()
        self.restarts += 1
        return Outcome(status, detail, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self._stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# the bench
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--no-real", action="store_true", help="phantom seeds only")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="sacroplan-fuzz-seeds-"))
    os.environ.setdefault("SACROPLAN_HOME", str(work / "home"))
    try:
        seeds = phantom_seeds(work)
        if not args.no_real:
            real = real_seeds()
            if not real:
                print(f"real seeds: none ({SHARED_DATA} not found); phantom seeds only")
            seeds += real
        print(f"seeds: {len(seeds)} files; cases: {args.cases}; seed {args.seed}")
        rng = random.Random(args.seed)
        runner = Runner(seeds, timeout_s=args.timeout)
        by_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
        failures: list[tuple[Case, Outcome]] = []
        slowest: list[tuple[float, Case]] = []
        t0 = time.perf_counter()
        try:
            for n in range(args.cases):
                case = random_case(rng, len(seeds))
                outcome = runner.run(case)
                counts = by_kind[case.kind]
                counts["cases"] += 1
                counts["volume"] += bool(outcome.volumes)
                counts["skipped"] += bool(outcome.skipped)
                counts["error"] += bool(outcome.errors)
                counts[outcome.status] += 1
                slowest.append((outcome.seconds, case))
                if outcome.status != "ok":
                    failures.append((case, outcome))
                    print(f"FAIL {outcome.status}: {case.describe(seeds)}\n    {outcome.detail}")
                if (n + 1) % 500 == 0:
                    print(f"  {n + 1} cases, {time.perf_counter() - t0:.0f} s")
        finally:
            runner.close()
        elapsed = time.perf_counter() - t0
        print(
            f"\n{args.cases} cases in {elapsed:.1f} s ({1000 * elapsed / max(1, args.cases):.1f}"
            f" ms/case), worker restarts {runner.restarts}"
        )
        for kind, c in by_kind.items():
            line = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
            print(f"  {kind:<9} {line}")
        slowest.sort(key=lambda t: -t[0])
        print("slowest cases:")
        for seconds, case in slowest[:5]:
            print(f"  {seconds:.2f} s  {case.describe(seeds)}")
        print(f"failures: {len(failures)}")
        return 1 if failures else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
