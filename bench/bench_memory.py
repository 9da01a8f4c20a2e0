"""Peak memory of loading and planning a 512 x 512 x 300 CT (not a test).

The synthetic phantom is drawn on a 512 x 512 x 300 grid and written as a DICOM series
with :func:`imaging.dicom_write.write_series` (in a first child process). A second, fresh
child process then runs the stages a user runs and reports the peak resident memory of
each (``VmHWM`` of ``/proc/self/status``, reset between stages through
``/proc/self/clear_refs``):

* ``imports`` - Python with numpy, SimpleITK, pydicom, numba and sacroplan imported;
* ``scan`` / ``load`` - ``imaging.read.scan`` + ``load_series`` of the series;
* ``anatomy`` - ``Case.find_anatomy``; ``lesion`` - ``Case.grow_lesion``;
* ``plan`` - ``planning.planner.plan_case``.

For each stage it prints the peak, the peak above the imports baseline, and that excess
divided by the volume's bytes (the aim: at most 3.5, the ``WORKING_SET_FACTOR`` the
memory budget in :mod:`imaging.read` assumes).

Run from the repository root::

    .venv/bin/python -m bench.bench_memory [--size 512,512,300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIM = 3.5


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _PeakWatcher:
    """Samples the resident memory every 50 ms and remembers where the main thread was at
    the highest sample (the innermost sacroplan frames), to point at the allocation."""

    def __init__(self) -> None:
        import threading

        self._main = threading.main_thread().ident
        self._best = 0
        self._where = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = _status_kb("VmRSS")
            if rss > self._best:
                frame = sys._current_frames().get(self._main)
                where = []
                while frame is not None and len(where) < 4:
                    code = frame.f_code
                    if str(ROOT) in code.co_filename:
                        rel = Path(code.co_filename).relative_to(ROOT)
                        where.append(f"{rel}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                with self._lock:
                    self._best, self._where = rss, " < ".join(where)
            time.sleep(0.05)

    def take(self) -> str:
        with self._lock:
            where, self._best, self._where = self._where, 0, ""
        return where


def prepare(out: Path, size: tuple[int, int, int]) -> None:
    """Child 1: draw the phantom on the requested grid and write it as DICOM."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from imaging.dicom_write import write_series
    from imaging.phantom import make_phantom
    from imaging.volume import Volume

    nx, ny, nz = size
    base = make_phantom(spacing_mm=(1.0, 1.0, 1.0)).image  # to learn the field of view
    fov = np.array(base.size) * base.spacing
    spacing = tuple(float(v) for v in fov / np.array(size))
    phantom = make_phantom(spacing_mm=spacing)
    image = phantom.image
    array = np.full((nz, ny, nx), -1000, dtype=np.int16)
    k, j, i = (min(a, b) for a, b in zip(image.array.shape, array.shape, strict=True))
    array[:k, :j, :i] = image.array[:k, :j, :i]
    volume = Volume(array, image.origin, image.spacing, image.direction, modality="CT")
    write_series(volume, out / "dicom", modality="CT", series_description="memory bench")
    seed = phantom.truth.lesion.center_lps if phantom.truth.lesion is not None else None
    (out / "seed.json").write_text(
        json.dumps([float(v) for v in seed] if seed is not None else None)
    )


def measure(folder: Path) -> dict:
    """Child 2: run the stages and report the peak RSS of each (kB)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np  # noqa: F401
    import pydicom  # noqa: F401
    import SimpleITK  # noqa: F401

    from imaging.read import load_series, scan
    from planning.case import Case
    from planning.planner import plan_case

    stages: list[dict] = []
    resettable = _reset_peak()
    watcher = _PeakWatcher()

    def record(name: str, t0: float) -> None:
        stages.append(
            {
                "stage": name,
                "peak_kb": _status_kb("VmHWM"),
                "rss_kb": _status_kb("VmRSS"),
                "seconds": time.perf_counter() - t0,
                "where": watcher.take(),
            }
        )
        _reset_peak()

    record("imports", time.perf_counter())
    t0 = time.perf_counter()
    result = scan(folder / "dicom")
    (info,) = result.series
    volume = load_series(info)
    record("scan+load", t0)
    case = Case(image=volume, source=str(folder))
    t0 = time.perf_counter()
    case.find_anatomy()
    record("anatomy", t0)
    seed = json.loads((folder / "seed.json").read_text())
    t0 = time.perf_counter()
    case.grow_lesion(seed)
    record("lesion", t0)
    t0 = time.perf_counter()
    plan_case(case)
    record("plan", t0)
    return {
        "volume_bytes": int(volume.array.nbytes),
        "shape": list(volume.array.shape),
        "dtype": str(volume.array.dtype),
        "resettable": resettable,
        "stages": stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak memory of loading and planning a CT")
    parser.add_argument("--size", default="512,512,300", help="voxels X,Y,Z")
    parser.add_argument("--keep", help="write the series here and keep it")
    parser.add_argument("--child", choices=("prepare", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    if args.child == "prepare":
        prepare(Path(args.folder), size)  # type: ignore[arg-type]
        return 0
    if args.child == "measure":
        print(json.dumps(measure(Path(args.folder))))
        return 0

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sacroplan-mem-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("SACROPLAN_HOME", str(folder / "home"))
    me = [sys.executable, "-m", "bench.bench_memory", "--size", args.size, "--folder", str(folder)]
    try:
        if not (folder / "dicom").is_dir():
            t0 = time.perf_counter()
            subprocess.run([*me, "--child", "prepare"], check=True, cwd=ROOT, env=env)
            print(f"phantom {args.size} written in {time.perf_counter() - t0:.0f} s")
        out = subprocess.run(
            [*me, "--child", "measure"], check=True, cwd=ROOT, env=env, capture_output=True,
            text=True,
        )  # fmt: skip
        report = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    mb = report["volume_bytes"] / 2**20
    print(f"volume {report['shape'][::-1]} {report['dtype']}: {mb:.0f} MB")
    if not report["resettable"]:
        print("(peak RSS cannot be reset on this system: each peak includes the stages before)")
    base = report["stages"][0]["peak_kb"]
    print(f"{'stage':<10} {'peak MB':>8} {'above imports MB':>17} {'÷ volume':>9} {'s':>6}")
    worst = 0.0
    for st in report["stages"]:
        peak = st["peak_kb"] / 1024
        excess = max(0.0, (st["peak_kb"] - base) / 1024)
        ratio = excess / mb if st["stage"] != "imports" else 0.0
        worst = max(worst, ratio)
        print(f"{st['stage']:<10} {peak:8.0f} {excess:17.0f} {ratio:9.2f} {st['seconds']:6.1f}")
        if st.get("where"):
            print(f"    at the peak: {st['where']}")
    verdict = "within" if worst <= AIM else "ABOVE"
    print(f"largest peak above imports: {worst:.2f} x the volume's bytes ({verdict} the {AIM} aim)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
