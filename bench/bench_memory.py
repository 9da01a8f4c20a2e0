"""Peak memory of loading and planning a 512 x 512 x 300 CT, stage by stage (not a test).

The synthetic phantom is drawn on a 512 x 512 x 300 grid and written as a DICOM series with
:func:`imaging.dicom_write.write_series` (in a first child process). Then each stage a user
runs is measured in a *fresh* child process, so that one stage's peak cannot hide another's:
the child imports numpy, SimpleITK, pydicom and sacroplan, runs the stages before the measured
one, resets the kernel's peak counter (``/proc/self/clear_refs``) and runs the stage:

* ``load`` - ``imaging.read.scan`` + ``load_series`` of the series;
* ``anatomy`` - ``Case.find_anatomy``; ``lesion`` - ``Case.grow_lesion`` (from the phantom's
  lesion centre);
* ``plan`` - ``planning.planner.plan_case``.

Reported per stage, divided by the volume's bytes (int16):

* the peak resident memory during the stage above the process after its imports: everything
  the study needs at that moment (the volume, what earlier stages keep, the stage's working
  memory). The aim is at most 3.5, the ``WORKING_SET_FACTOR`` the memory budget in
  :mod:`imaging.read` assumes;
* the stage's own rise: its peak above the memory held just before it;
* what is held after it.

Run from the repository root::

    .venv/bin/python -m bench.bench_memory [--size 512,512,300] [--quick] [--keep DIR]

``python -m bench`` calls :func:`collect` (``--quick``: a 256 x 256 x 150 study).
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
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._table import Row, format_table, machine_line

ROOT = Path(__file__).resolve().parents[1]
GROUP = "memory"
AIM = 3.5
STAGES = ("load", "anatomy", "lesion", "plan")
FULL_SIZE = (512, 512, 300)
QUICK_SIZE = (256, 256, 150)


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


def _foreign(filename: str) -> bool:
    """Frames not worth naming at the peak: this benchmark and installed packages."""
    return "site-packages" in filename or filename.endswith("bench_memory.py")


class _PeakWatcher:
    """Samples the resident memory every 20 ms and remembers where the main thread was at
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
                while frame is not None and len(where) < 3:
                    code = frame.f_code
                    if str(ROOT) in code.co_filename and not _foreign(code.co_filename):
                        rel = Path(code.co_filename).relative_to(ROOT)
                        where.append(f"{rel}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                with self._lock:
                    self._best, self._where = rss, " < ".join(where)
            time.sleep(0.02)

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


def measure(folder: Path, stage: str) -> dict:
    """Child 2..5: run the stages before ``stage``, then ``stage`` itself, measured (kB)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np  # noqa: F401
    import pydicom  # noqa: F401
    import SimpleITK  # noqa: F401

    from imaging.read import load_series, scan
    from planning.case import Case
    from planning.planner import plan_case

    seed = json.loads((folder / "seed.json").read_text())
    state: dict = {}

    def load() -> None:
        (info,) = scan(folder / "dicom").series
        state["case"] = Case(image=load_series(info), source=str(folder))

    steps = {
        "load": load,
        "anatomy": lambda: state["case"].find_anatomy(),
        "lesion": lambda: state["case"].grow_lesion(seed),
        "plan": lambda: state.setdefault("plan", plan_case(state["case"])),
    }
    base_kb = _status_kb("VmRSS")
    for name in STAGES[: STAGES.index(stage)]:
        steps[name]()
    resettable = _reset_peak()
    watcher = _PeakWatcher()
    before_kb = _status_kb("VmRSS")
    t0 = time.perf_counter()
    steps[stage]()
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM")
    volume = state["case"].image.array
    return {
        "stage": stage,
        "base_kb": base_kb,
        "before_kb": before_kb,
        "peak_kb": peak_kb,
        "after_kb": _status_kb("VmRSS"),
        "seconds": seconds,
        "where": watcher.take(),
        "volume_bytes": int(volume.nbytes),
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "resettable": resettable,
    }


def run(size: tuple[int, int, int], *, keep: str | None = None) -> list[dict]:
    """Write the phantom (unless ``keep`` holds it already) and measure every stage."""
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="sacroplan-mem-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("SACROPLAN_HOME", str(folder / "home"))
    text = ",".join(str(v) for v in size)
    me = [sys.executable, "-m", "bench.bench_memory", "--size", text, "--folder", str(folder)]
    results = []
    try:
        if not (folder / "dicom").is_dir():
            subprocess.run([*me, "--child", "prepare"], check=True, cwd=ROOT, env=env)
        for stage in STAGES:
            out = subprocess.run(
                [*me, "--child", "measure", "--stage", stage], check=True, cwd=ROOT, env=env,
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def _ratios(r: dict) -> tuple[float, float, float]:
    """(peak above imports, the stage's own rise, held after) / volume bytes."""
    vb = r["volume_bytes"] / 1024.0  # kB
    return (
        (r["peak_kb"] - r["base_kb"]) / vb,
        (r["peak_kb"] - r["before_kb"]) / vb,
        (r["after_kb"] - r["base_kb"]) / vb,
    )


def rows_of(results: list[dict]) -> list[Row]:
    """Table rows: per stage, peak RSS above imports / volume bytes (target <= 3.5x)."""
    rows = []
    for r in results:
        total, rise, held = _ratios(r)
        k, j, i = r["shape"]
        note = (
            f"volume {r['volume_bytes'] / 2**20:.0f} MB; stage's own rise {rise:.2f}x, "
            f"held after {held:.2f}x, {r['seconds']:.1f} s"
            + (f"; at the peak: {r['where']}" if r["where"] else "")
            + ("" if r["resettable"] else "; peak not resettable: includes earlier stages")
        )
        rows.append(
            Row(
                GROUP,
                f"{i}x{j}x{k} CT {r['stage']}: peak RSS above imports / volume bytes",
                total,
                "x",
                target=f"<= {AIM}x",
                ok=total <= AIM,
                note=note,
            )
        )
    return rows


def collect(*, quick: bool = False) -> list[Row]:
    """Measure every stage in its own child process; ``quick``: a 256 x 256 x 150 study."""
    rows = rows_of(run(QUICK_SIZE if quick else FULL_SIZE))
    if quick:  # the anatomy's fine grid (1-1.5 mm) does not shrink with a coarse study
        rows = [replace(r, target="", ok=None, note=r.note + QUICK_NOTE) for r in rows]
    return rows


QUICK_NOTE = (
    "; quick run on a small study: the anatomy works on a 1-1.5 mm grid whatever the study's "
    "size, so the ratio is not comparable with the aim (run without --quick)"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="peak memory of loading and planning a CT")
    parser.add_argument("--size", help="voxels X,Y,Z (default 512,512,300)")
    parser.add_argument("--quick", action="store_true", help="a 256 x 256 x 150 study")
    parser.add_argument("--keep", help="write the series here and keep it (reused if there)")
    parser.add_argument("--child", choices=("prepare", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = args.size or ",".join(str(v) for v in (QUICK_SIZE if args.quick else FULL_SIZE))
    size = tuple(int(v) for v in text.split(","))
    if args.child == "prepare":
        prepare(Path(args.folder), size)  # type: ignore[arg-type]
        return 0
    if args.child == "measure":
        print(json.dumps(measure(Path(args.folder), args.stage)))
        return 0

    t0 = time.perf_counter()
    results = run(size, keep=args.keep)  # type: ignore[arg-type]
    r0 = results[0]
    mb = r0["volume_bytes"] / 2**20
    print(f"machine: {machine_line()}")
    seconds = time.perf_counter() - t0
    print(f"volume {r0['shape'][::-1]} {r0['dtype']}: {mb:.0f} MB; {seconds:.0f} s")
    head = ("stage", "peak MB", "÷ volume", "own rise", "held after", "s")
    print("{:<8} {:>8} {:>9} {:>9} {:>11} {:>6}".format(*head))
    worst = 0.0
    for r in results:
        total, rise, held = _ratios(r)
        worst = max(worst, total)
        peak = (r["peak_kb"] - r["base_kb"]) / 1024
        print(
            f"{r['stage']:<8} {peak:8.0f} {total:9.2f} {rise:9.2f} {held:11.2f} {r['seconds']:6.1f}"
        )
        if r["where"]:
            print(f"    at the peak: {r['where']}")
    verdict = "within" if worst <= AIM else "ABOVE"
    print(f"largest peak above imports: {worst:.2f} x the volume's bytes ({verdict} the {AIM} aim)")
    print()
    print(format_table(rows_of(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
