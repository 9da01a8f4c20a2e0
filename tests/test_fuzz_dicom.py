"""Hostile DICOM: mutated real and phantom files through scan, ``sacroplan info`` and loading.

hypothesis draws the mutations (flipped, truncated, deleted and inserted bytes; wrong VRs,
lengths, duplicated and dropped elements; absurd header values such as zero/negative/NaN
spacing, 1e9 rows, empty orientation, slope 0, huge or negative Number of Frames, 0- or
3-bit pixels). Each case runs in a child process (``bench.fuzz_dicom.Runner``) with a time
limit, so a decoder crash or a hang fails the case instead of the whole test run. Allowed
outcomes: a volume, a skipped file with a reason, or a SacroplanError with a message.

The runs are derandomized (the same cases every time); ``python -m bench.fuzz_dicom``
runs longer, random ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.fuzz_dicom import (  # noqa: E402
    ABSURD,
    BYTE_OPS,
    ELEMENT_OPS,
    FIELD_KEYWORDS,
    SHARED_DATA,
    VRS,
    Case,
    Runner,
    phantom_seeds,
    real_seeds,
)

CASE_TIMEOUT_S = 30.0

fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
byte_op = st.one_of(
    st.tuples(st.just("flip"), fractions, st.integers(1, 255), st.integers(1, 8)),
    st.tuples(st.just("truncate"), fractions),
    st.tuples(st.just("delete"), fractions, st.integers(1, 64)),
    st.tuples(st.just("insert"), fractions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("smear"), fractions, st.sampled_from((0x00, 0xFF)), st.integers(1, 256)),
)
field_op = st.one_of(
    st.sampled_from(FIELD_KEYWORDS).flatmap(
        lambda k: st.tuples(st.just("set"), st.just(k), st.integers(0, len(ABSURD[k]) - 1))
    ),
    st.tuples(st.just("delete"), st.sampled_from(FIELD_KEYWORDS)),
)
element_op = st.one_of(
    st.tuples(st.just("vr"), fractions, st.integers(0, len(VRS) - 1)),
    st.tuples(st.just("length"), fractions, st.sampled_from((0, 1, 3, 0xFFFF, 0xFFFFFFFF, -2, 2))),
    st.tuples(st.sampled_from(("duplicate", "drop")), fractions),
)
assert {op for op in BYTE_OPS} == {"flip", "truncate", "delete", "insert", "smear"}
assert set(ELEMENT_OPS) == {"vr", "length", "duplicate", "drop"}


def cases(kind: str, ops: st.SearchStrategy, n_seeds: int) -> st.SearchStrategy[Case]:
    """Cases of one kind: 1-3 mutations of that kind, sometimes one byte mutation after."""
    return st.builds(
        lambda seed, main, extra, siblings: Case(seed, kind, tuple(main) + tuple(extra), siblings),
        st.integers(0, n_seeds - 1),
        st.lists(ops, min_size=1, max_size=3),
        st.lists(byte_op, max_size=1),
        st.booleans(),
    )


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def phantom_runner(tmp_path_factory: pytest.TempPathFactory):
    seeds = phantom_seeds(tmp_path_factory.mktemp("fuzz-seeds"))
    runner = Runner(seeds, timeout_s=CASE_TIMEOUT_S)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def real_runner():
    if not SHARED_DATA.exists():
        pytest.skip(f"shared study data not available at {SHARED_DATA} (only in the dev/CI tree)")
    seeds = real_seeds()
    if not seeds:
        pytest.skip(f"none of the real seed files is present under {SHARED_DATA}")
    runner = Runner(seeds, timeout_s=CASE_TIMEOUT_S)
    yield runner
    runner.close()


def check(runner: Runner, case: Case) -> None:
    outcome = runner.run(case)
    assert outcome.status == "ok", (
        f"{outcome.status} for {case.describe(runner.seeds)}\n{outcome.detail}"
    )


N_PHANTOM_SEEDS = 8  # 4 CT + 3 MR slices + 1 sample slice (indices wrap around)


@fuzz_settings(450)
@given(case=cases("bytes", byte_op, N_PHANTOM_SEEDS))
def test_phantom_byte_mutations(phantom_runner: Runner, case: Case):
    check(phantom_runner, case)


@fuzz_settings(450)
@given(case=cases("fields", field_op, N_PHANTOM_SEEDS))
def test_phantom_absurd_header_values(phantom_runner: Runner, case: Case):
    check(phantom_runner, case)


@fuzz_settings(350)
@given(case=cases("elements", element_op, N_PHANTOM_SEEDS))
def test_phantom_wrong_vrs_lengths_duplicates(phantom_runner: Runner, case: Case):
    check(phantom_runner, case)


N_REAL_SEEDS = 24


@fuzz_settings(275)
@given(case=cases("bytes", byte_op, N_REAL_SEEDS))
def test_real_byte_mutations(real_runner: Runner, case: Case):
    check(real_runner, case)


@fuzz_settings(275)
@given(case=cases("fields", field_op, N_REAL_SEEDS))
def test_real_absurd_header_values(real_runner: Runner, case: Case):
    check(real_runner, case)


@fuzz_settings(200)
@given(case=cases("elements", element_op, N_REAL_SEEDS))
def test_real_wrong_vrs_lengths_duplicates(real_runner: Runner, case: Case):
    check(real_runner, case)


def test_every_absurd_value_on_a_phantom_slice(phantom_runner: Runner):
    """Each absurd value alone, beside untouched slices of its series (exhaustive)."""
    for keyword, values in ABSURD.items():
        for n in range(len(values)):
            check(phantom_runner, Case(0, "fields", (("set", keyword, n),), True))
        check(phantom_runner, Case(0, "fields", (("delete", keyword),), True))


def test_header_claiming_1e9_rows_is_refused_before_allocating(tmp_path: Path):
    """A refusal from the header, naming the problem; no MemoryError, no huge allocation."""
    import resource

    from bench.fuzz_dicom import apply_field_ops
    from imaging.read import scan

    seeds = phantom_seeds(tmp_path / "seeds")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for keyword, value_index in (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 0)):
        folder = tmp_path / keyword
        folder.mkdir()
        data = apply_field_ops(seeds[0].data, (("set", keyword, value_index),))
        (folder / "x.dcm").write_bytes(data)
        result = scan(folder)
        assert not result.series
        (skipped,) = result.skipped
        assert "1000000000" in skipped.reason.replace(",", "")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_the_runner_reports_a_crash_and_a_hang(phantom_runner: Runner, tmp_path: Path):
    """The harness itself: a child that dies or stalls is a failed case, not a dead test run."""
    import os
    import signal

    seeds = phantom_runner.seeds
    crash = Runner(seeds, timeout_s=2.0)
    try:
        assert crash.run(Case(0, "bytes", ())).status == "ok"
        os.kill(crash.proc.pid, signal.SIGSEGV)
        crash.proc.join(5)
        assert crash.run(Case(0, "bytes", ())).status == "crash"
        assert crash.run(Case(0, "bytes", ())).status == "ok"  # restarted
        os.kill(crash.proc.pid, signal.SIGSTOP)
        assert crash.run(Case(0, "bytes", ())).status == "hang"
        assert crash.run(Case(0, "bytes", ())).status == "ok"
    finally:
        crash.close()


# -- the last-resort decoder runs in a child process ----------------------------------------
def test_isolated_gdcm_decodes_like_the_reader(tmp_path: Path):
    import numpy as np

    from imaging.dicom_gdcm import IsolatedGdcm
    from imaging.read import load

    seeds = phantom_seeds(tmp_path / "seeds")
    path = tmp_path / "one.dcm"
    path.write_bytes(seeds[0].data)
    expected = load(path).array[0]
    with IsolatedGdcm() as gdcm:
        got = gdcm.decode(str(path))
        again = gdcm.decode(str(path))  # the same child serves the next file
    assert np.array_equal(got.reshape(expected.shape), expected)
    assert np.array_equal(again, got)


def test_isolated_gdcm_survives_a_hung_or_crashed_decoder(tmp_path: Path):
    import os
    import signal
    import threading

    from imaging.dicom_gdcm import GdcmDecodeError, IsolatedGdcm

    seeds = phantom_seeds(tmp_path / "seeds")
    path = tmp_path / "one.dcm"
    path.write_bytes(seeds[0].data)
    gdcm = IsolatedGdcm(timeout_s=1.0)
    try:
        gdcm.decode(str(path))
        os.kill(gdcm._proc.pid, signal.SIGSTOP)  # a decoder that never returns
        with pytest.raises(GdcmDecodeError, match="did not finish"):
            gdcm.decode(str(path))
        gdcm.timeout_s = 30.0
        gdcm.decode(str(path))  # a new child took over
        pid = gdcm._proc.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()  # dies mid-file
        with pytest.raises(GdcmDecodeError, match="crashed"):
            gdcm.decode(str(path))
        assert gdcm.decode(str(path)).size == 24 * 20  # and decodes again afterwards
    finally:
        gdcm.close()


def test_dicomdir_references_outside_its_folder_are_not_read(tmp_path: Path):
    """A forged DICOMDIR pointing at ../ files: listed as skipped, never read or loaded."""
    import warnings

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    from imaging.dicom_headers import DICOMDIR_SOP_CLASS
    from imaging.read import scan

    seeds = phantom_seeds(tmp_path / "seeds")
    (tmp_path / "outside.dcm").write_bytes(seeds[0].data)
    media = tmp_path / "cd"
    (media / "IMG").mkdir(parents=True)
    (media / "IMG" / "inside.dcm").write_bytes(seeds[1].data)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOMDIR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "outside.dcm" is not a valid CS value: forged
        for parts in (["IMG", "inside.dcm"], ["..", "outside.dcm"], ["/etc", "passwd"]):
            rec = Dataset()
            rec.DirectoryRecordType = "IMAGE"
            rec.ReferencedFileID = parts
            records.append(rec)
    ds.DirectoryRecordSequence = records
    pydicom.dcmwrite(media / "DICOMDIR", ds, implicit_vr=False, little_endian=True)
    result = scan(media / "DICOMDIR")
    (series,) = result.series
    assert series.n_images == 1 and series.source.paths == [str(media / "IMG" / "inside.dcm")]
    outside = [k for k in result.skipped if "outside its folder" in k.reason]
    assert len(outside) == 2


def test_pipes_and_devices_in_a_study_folder_do_not_hang_the_scan(tmp_path: Path):
    import os
    import time

    from imaging.read import scan

    seeds = phantom_seeds(tmp_path / "seeds")
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "slice.dcm").write_bytes(seeds[0].data)
    os.mkfifo(folder / "a-pipe")  # opening it for reading would wait for a writer forever
    t0 = time.monotonic()
    result = scan(folder)
    assert time.monotonic() - t0 < 30
    assert len(result.series) == 1
    (skipped,) = result.skipped
    assert skipped.path.endswith("a-pipe") and "not a regular file" in skipped.reason


def test_a_deflate_bomb_is_refused_while_streaming(tmp_path: Path, monkeypatch):
    """A Deflated Explicit VR file whose data set inflates past the limit: skipped, with why."""
    import io

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    import imaging.dicom_headers as headers
    from imaging.read import scan

    seeds = phantom_seeds(tmp_path / "seeds")
    ds = pydicom.dcmread(io.BytesIO(seeds[0].data))
    ds.add_new(0x00111010, "OB", b"\0" * (8 << 20))  # 8 MB of zeros: deflates to ~8 kB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    folder = tmp_path / "bomb"
    folder.mkdir()
    pydicom.dcmwrite(folder / "bomb.dcm", ds, enforce_file_format=True)
    assert (folder / "bomb.dcm").stat().st_size < 1 << 20
    monkeypatch.setattr(headers, "_GZIP_MAX_BYTES", 4 << 20)
    (skipped,) = scan(folder).skipped
    assert "decompression bomb" in skipped.reason and "4 MB" in skipped.reason
    monkeypatch.setattr(headers, "_GZIP_MAX_BYTES", 64 << 20)
    (series,) = scan(folder).series  # under the limit it reads as before
    assert series.size == (24, 20, 1)
