"""How the cost grows with the study's size and with the number of candidate needles (not a test).

Run from the repository root (a few minutes; not part of ``python -m bench``)::

    python -m bench.bench_scaling
    python -m bench.bench_scaling --sizes 256x256x100,512x512x300 --needles 10000,100000

1. Study size: the phantom's field of view (300 x 220 x 180 mm) drawn on grids of
   256 x 256 x 100 up to 512 x 512 x 600 voxels, written as .mha and opened through the study
   reader; then anatomy, lesion and plan. Printed per stage in seconds, with the voxel count, so
   the growth (linear in voxels for loading and anatomy; near constant for the plan, whose
   distance fields are pooled to about 1 mm) can be read off.
2. Candidate needles: the scoring kernel on ``bench/_common.py``'s anatomy for 10k to 1M needles,
   needles per second at each count (constant once the threads are busy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._table import machine_line

DEFAULT_SIZES = "256x256x100,512x512x100,512x512x300,512x512x600"
DEFAULT_NEEDLES = "10000,100000,1000000"


def study_row(size: tuple[int, int, int], folder: Path) -> dict[str, float]:
    """Seconds per stage for the phantom on a grid of ``size`` (i, j, k) voxels."""
    import SimpleITK as sitk

    from imaging.phantom import FOV_MAX_MM, FOV_MIN_MM, make_phantom
    from planning.case import Case
    from planning.planner import plan_case

    spacing = tuple(float(v) for v in (FOV_MAX_MM - FOV_MIN_MM) / (np.asarray(size) - 1))
    phantom = make_phantom(lesion="left_ala_s1", spacing_mm=spacing)
    path = folder / f"phantom_{'x'.join(map(str, size))}.mha"
    sitk.WriteImage(phantom.image.to_sitk(), str(path), useCompression=False)
    seed = np.asarray(phantom.truth.lesion.center_lps)
    del phantom
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    case = Case.open(path)
    out["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    case.find_anatomy()
    out["anatomy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    case.grow_lesion(seed)
    out["lesion"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan_case(case)
    out["plan"] = time.perf_counter() - t0
    out["total"] = sum(out.values())
    return out


def needle_rates(counts: list[int]) -> list[tuple[int, float]]:
    """Needles per second of the scoring kernel at each count."""
    from bench import _common
    from geometry.kernels import score_needles, warm_up

    anatomy = _common.build_anatomy()
    stack = _common.stack(anatomy)
    warm_up()
    out = []
    for n in counts:
        entries, tips = _common.needles(anatomy, n, seed=3)
        score_needles(entries[:1000], tips[:1000], stack, radius_mm=1.2)
        t0 = time.perf_counter()
        score_needles(entries, tips, stack, radius_mm=1.2)
        out.append((n, n / (time.perf_counter() - t0)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="IxJxK,... grids")
    parser.add_argument("--needles", default=DEFAULT_NEEDLES, help="N,... needle counts")
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    print("\n| study (voxels) | Mvoxels | load s | anatomy s | lesion s | plan s | total s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="sacroplan-scaling-") as tmp:
        for size in sizes:
            r = study_row(size, Path(tmp))
            mvox = np.prod(size) / 1e6
            print(
                f"| {'x'.join(map(str, size))} | {mvox:.1f} | {r['load']:.2f} | "
                f"{r['anatomy']:.2f} | {r['lesion']:.2f} | {r['plan']:.2f} | {r['total']:.2f} |",
                flush=True,
            )
    counts = [int(v) for v in args.needles.split(",") if v]
    print("\n| candidate needles | needles/s | seconds |")
    print("|---|---|---|")
    for n, rate in needle_rates(counts):
        print(f"| {n:,} | {rate:,.0f} | {n / rate:.3f} |", flush=True)
    print(f"\n{machine_line()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
