"""Benchmark: scoring straight needle trajectories against the anatomy's distance fields.

Run from the repository root::

    python -m bench.bench_scoring            # or: python bench/bench_scoring.py
    python -m bench.bench_scoring --needles 200000 --repeats 3

Side by side in one process, on a synthetic sacrum-like anatomy (``bench/_common.py``: a
200 x 200 x 150 crop at 0.7 mm, seven structures) and needles 60-120 mm long:

0. ours: ``geometry.kernels.score_needles`` (numba, trilinear, 0.5 mm steps, distance-bound
   skipping), 2 threads and 1 thread, plus variants (no skipping; no clearance cap; a two-channel
   stack for the DESIGN section 7 comparison);
a. the same fields sampled with ``scipy.ndimage.map_coordinates`` (order 1), vectorised in chunks,
   computing the same per-structure minima and inside lengths;
b. a surface method like Slicer's PercutaneousApproachAnalysis: VTK surfaces (vtkFlyingEdges3D),
   ``vtkOBBTree.IntersectWithLine`` for obstruction and ``vtkImplicitPolyDataDistance`` per sample
   for clearance and in-bone sign, on a few hundred needles, extrapolated as a rate.

Times are wall-clock medians after a warm-up (the best run is in the notes). The machine may be
shared: the load average is printed, and rates are also given per CPU-second of this process
(insensitive to other processes; two threads on two free cores give about 1.85 times that).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba
import numpy as np
from scipy import ndimage

from bench import _common as anatomy_mod
from geometry.distance import signed_distance_mm
from geometry.fieldstack import FieldStack
from geometry.kernels import score_needles, warm_up

STEP_MM = 0.5
RADIUS_MM = 1.2  # 13G


def timed(fn: Callable[[], object], *, repeats: int) -> tuple[float, float, float]:
    """Median and best wall time, and median process CPU time, of ``fn`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), min(walls), statistics.median(cpus)


# -- (a) scipy.ndimage.map_coordinates ------------------------------------------------------------
def score_map_coordinates(
    stack: FieldStack, entries: np.ndarray, tips: np.ndarray, *, chunk: int = 2000
) -> dict[str, np.ndarray]:
    """Per-channel minima (clearance channels) and inside lengths (regions), like the kernel."""
    a = stack.index_from_world()
    channels = [stack.channel_mm(c) for c in range(stack.n_channels)]
    n = len(entries)
    mins = np.full((n, stack.n_channels), np.nan)
    inside = np.full((n, stack.n_channels), np.nan)
    for lo in range(0, n, chunk):
        e = entries[lo : lo + chunk]
        d = tips[lo : lo + chunk] - e
        length = np.linalg.norm(d, axis=1)
        u = d / length[:, None]
        s = int(np.ceil(length.max() / STEP_MM)) + 1
        t = np.minimum(np.arange(s)[None, :] * STEP_MM, length[:, None])
        pts = e[:, None, :] + t[..., None] * u[:, None, :]
        ijk = pts @ a[:, :3].T + a[:, 3]
        coords = ijk[..., ::-1].reshape(-1, 3).T
        dt = np.diff(t, axis=1)
        for c, field in enumerate(channels):
            v = ndimage.map_coordinates(field, coords, order=1, mode="nearest").reshape(len(e), s)
            if stack.track[c] & 1:
                mins[lo : lo + chunk, c] = v.min(axis=1)
            if stack.track[c] & 2:
                va, vb = v[:, :-1], v[:, 1:]
                ia, ib = va < 0, vb < 0
                with np.errstate(invalid="ignore", divide="ignore"):
                    frac = np.where(
                        ia & ib,
                        1.0,
                        np.where(ia & ~ib, va / (va - vb), np.where(~ia & ib, vb / (vb - va), 0.0)),
                    )
                inside[lo : lo + chunk, c] = np.sum(frac * dt, axis=1)
    return {"min": mins, "inside": inside}


# -- (b) VTK surfaces, PercutaneousApproachAnalysis style ----------------------------------------
def vtk_surface_method(masks: dict[str, np.ndarray], names: list[str]):
    """Build VTK surfaces; return a function scoring needles the PAA way, and the build time."""
    import vtk
    from vtkmodules.util.numpy_support import numpy_to_vtk

    t0 = time.perf_counter()

    def surface(mask: np.ndarray):
        img = vtk.vtkImageData()
        k, j, i = mask.shape
        img.SetDimensions(i, j, k)
        img.SetSpacing(*anatomy_mod.SPACING)
        img.SetOrigin(*anatomy_mod.ORIGIN)
        img.GetPointData().SetScalars(numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True))
        fe = vtk.vtkFlyingEdges3D()
        fe.SetInputData(img)
        fe.SetValue(0, 0.5)
        fe.ComputeNormalsOn()
        fe.Update()
        return fe.GetOutput()

    surfaces = {name: surface(masks[name]) for name in names + ["sacrum"]}
    obstacles = vtk.vtkAppendPolyData()
    for name in names:
        obstacles.AddInputData(surfaces[name])
    obstacles.Update()
    obb = vtk.vtkOBBTree()
    obb.SetDataSet(obstacles.GetOutput())
    obb.BuildLocator()
    implicit = {}
    for name, poly in surfaces.items():
        f = vtk.vtkImplicitPolyDataDistance()
        f.SetInput(poly)
        implicit[name] = f
    build_s = time.perf_counter() - t0

    def score(entries: np.ndarray, tips: np.ndarray) -> dict[str, np.ndarray]:
        hits = vtk.vtkPoints()
        n = len(entries)
        blocked = np.zeros(n, dtype=bool)
        mins = np.full((n, len(names)), np.inf)
        in_bone = np.zeros(n)
        for k in range(n):
            p0, p1 = entries[k], tips[k]
            hits.Reset()
            obb.IntersectWithLine(p0.tolist(), p1.tolist(), hits, None)
            blocked[k] = hits.GetNumberOfPoints() > 0
            length = float(np.linalg.norm(p1 - p0))
            s = int(math.ceil(length / STEP_MM)) + 1
            prev_inside = None
            for m in range(s):
                t = min(m * STEP_MM, length)
                p = (p0 + (p1 - p0) * (t / length)).tolist()
                for c, name in enumerate(names):
                    mins[k, c] = min(mins[k, c], implicit[name].EvaluateFunction(p))
                inside = implicit["sacrum"].EvaluateFunction(p) < 0
                if inside and prev_inside is not None:
                    in_bone[k] += STEP_MM
                prev_inside = inside
        return {"blocked": blocked, "min": mins, "in_bone": in_bone}

    return score, build_s, sum(p.GetNumberOfCells() for p in surfaces.values())


# -- the benchmark ---------------------------------------------------------------------------------


def memory_bandwidth_gbs(*, mb: int = 256, repeats: int = 3) -> float:
    """This machine's streaming bandwidth (GB/s): bytes read + written by a large numpy copy."""
    a = np.ones(mb * 1024 * 1024 // 8)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def collect(*, quick: bool = False) -> list:
    """Scoring rows for ``python -m bench``: needles/s against map_coordinates and VTK surfaces,
    2-thread against 1-thread scaling, and samples/s against the memory bandwidth."""
    from bench._table import Row

    n = 50_000 if quick else 200_000
    n_mc = 5_000 if quick else 20_000
    n_vtk = 20 if quick else 100
    repeats = 1 if quick else 3
    anatomy = anatomy_mod.build_anatomy()
    full = anatomy_mod.stack(anatomy)
    warm_up()
    entries, tips = anatomy_mod.needles(anatomy, n, seed=1)
    score_needles(entries[:2000], tips[:2000], full, radius_mm=RADIUS_MM)
    threads = numba.config.NUMBA_NUM_THREADS
    rates = {}
    for t in sorted({1, min(2, threads)}):
        numba.set_num_threads(t)
        wall, _, _ = timed(
            lambda: score_needles(entries, tips, full, radius_mm=RADIUS_MM), repeats=repeats
        )
        rates[t] = n / wall
    numba.set_num_threads(threads)
    ours = rates[max(rates)]
    result = score_needles(entries, tips, full, radius_mm=RADIUS_MM)
    lattice = float(result.samples_lattice.sum()) / n
    score_map_coordinates(full, entries[:500], tips[:500])
    wall, _, _ = timed(lambda: score_map_coordinates(full, entries[:n_mc], tips[:n_mc]), repeats=1)
    mc = n_mc / wall
    names = ["foramina_union", "canal", "pelvic_side", "si_joint"]
    masks = dict(anatomy.masks)
    masks["foramina_union"] = np.logical_or.reduce(
        [m for k, m in anatomy.masks.items() if k.startswith("foramen ")]
    )
    score_vtk, _, _ = vtk_surface_method(masks, names)
    score_vtk(entries[:5], tips[:5])
    wall, _, _ = timed(lambda: score_vtk(entries[:n_vtk], tips[:n_vtk]), repeats=1)
    vtk_rate = n_vtk / wall
    bw = memory_bandwidth_gbs()
    bytes_per_sample = full.values.shape[3] * full.values.itemsize * 8  # 8 trilinear corners
    fraction = ours * lattice * bytes_per_sample / (bw * 1e9)
    what = f"{n:,} needles, {full.n_channels} channels"
    group = "trajectory scoring"
    return [
        Row(group, what, ours, "needles/s", "", None, None, ">= 500k needles/s", ours >= 5e5),
        Row(
            group,
            what,
            ours,
            "needles/s",
            "scipy map_coordinates",
            mc,
            ours / mc,
            "ours >= 10x map_coordinates",
            ours >= 10 * mc,
        ),
        Row(group, what, ours, "needles/s", "VTK surfaces (PAA-style)", vtk_rate, ours / vtk_rate),
        Row(
            group,
            "2 threads vs 1 thread",
            rates[max(rates)],
            "needles/s",
            "1 thread",
            rates[1],
            rates[max(rates)] / rates[1],
        ),
        Row(
            group,
            "lattice samples/s as a share of memory bandwidth",
            fraction,
            "",
            note=f"{ours * lattice:,.0f} samples/s x {bytes_per_sample} B (8 corners) vs "
            f"{bw:.1f} GB/s measured copy bandwidth; skipping evaluates "
            f"{float(result.samples_evaluated.sum()) / (lattice * n):.2f} of the samples",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--needles", type=int, default=500_000, help="needles for our kernel")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--scipy-needles", type=int, default=20_000)
    parser.add_argument("--vtk-needles", type=int, default=200)
    parser.add_argument("--skip-vtk", action="store_true", help="leave out the VTK baseline")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    print(f"numba {numba.__version__}, threading layer will be reported after the first run")

    t0 = time.perf_counter()
    anatomy = anatomy_mod.build_anatomy()
    print(
        f"anatomy: grid {anatomy_mod.SHAPE[::-1]} (i, j, k) at {anatomy_mod.SPACING[0]} mm, "
        f"{len(anatomy.fields)} distance fields in {anatomy.seconds_edt:.2f} s "
        f"(masks + fields {time.perf_counter() - t0:.1f} s)"
    )
    sacrum = anatomy.masks["sacrum"]
    w0 = time.perf_counter()
    signed_distance_mm(sacrum, anatomy_mod.SPACING, crop_margin_mm=None)
    ours_edt = time.perf_counter() - w0
    try:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(sacrum.astype(np.uint8))
        img.SetSpacing(tuple(anatomy_mod.SPACING))
        w0 = time.perf_counter()
        sitk.SignedMaurerDistanceMap(
            img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        maurer = f"{time.perf_counter() - w0:.2f} s"
    except ImportError:
        maurer = "n/a"
    print(
        f"distance transform of the sacrum mask (6.0 M voxels): ours {ours_edt:.2f} s, "
        f"SimpleITK SignedMaurerDistanceMap {maurer}"
    )

    full = anatomy_mod.stack(anatomy)
    minimal = anatomy_mod.stack(anatomy, minimal=True)
    stored = full.values.shape[3]
    print(
        f"field stack: {full.n_channels} channels {full.channel_names}, stored as {stored} x "
        f"{full.values.dtype} = {stored * full.values.itemsize} B/voxel, "
        f"{full.nbytes / 1e6:.0f} MB; two-channel stack {minimal.nbytes / 1e6:.0f} MB"
    )

    warm_up()
    sets = {
        "uniform": anatomy_mod.needles(anatomy, args.needles, seed=1),
        "lesion": anatomy_mod.lesion_needles(anatomy, args.needles, seed=2),
    }
    print(f"threading layer: {numba.threading_layer()}")
    rows: list[tuple[str, str, float, float, str]] = []

    def ours(label: str, stack: FieldStack, threads: int, which: str, **kw) -> float:
        entries, tips = sets[which]
        numba.set_num_threads(threads)
        score_needles(entries[:5000], tips[:5000], stack, radius_mm=RADIUS_MM, **kw)
        result = score_needles(entries, tips, stack, radius_mm=RADIUS_MM, **kw)
        wall, best, cpu = timed(
            lambda: score_needles(entries, tips, stack, radius_mm=RADIUS_MM, **kw),
            repeats=args.repeats,
        )
        lattice = float(result.samples_lattice.sum())
        evaluated = float(result.samples_evaluated.sum())
        rate = len(entries) / wall
        note = (
            f"{evaluated / lattice:.2f} of samples evaluated; best {len(entries) / best:,.0f}/s; "
            f"{len(entries) / cpu:,.0f} per CPU-second"
        )
        rows.append((label, which, rate, rate * lattice / len(entries), note))
        return rate

    for which in ("uniform", "lesion"):
        ours("ours, 2 threads", full, 2, which)
        ours("ours, 1 thread", full, 1, which)
    ours("ours, 2 threads, no skipping", full, 2, "uniform", skip=False)
    ours("ours, 2 threads, no clearance cap", full, 2, "uniform", clearance_cap_mm=math.inf)
    ours_minimal = ours("ours, 2 channels (sacrum + foramina)", minimal, 2, "uniform")
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    reference = {
        which: next(r[2] for r in rows if r[0] == "ours, 2 threads" and r[1] == which)
        for which in sets
    }

    # (a) map_coordinates on the same fields
    entries, tips = sets["uniform"]
    ns = min(args.scipy_needles, len(entries))
    score_map_coordinates(full, entries[:2000], tips[:2000])
    wall, _, _ = timed(lambda: score_map_coordinates(full, entries[:ns], tips[:ns]), repeats=3)
    lattice = float(np.sum(np.ceil(np.linalg.norm(tips[:ns] - entries[:ns], axis=1) / STEP_MM) + 1))
    mc_rate = ns / wall
    rows.append(
        (
            "(a) scipy map_coordinates",
            "uniform",
            mc_rate,
            lattice / wall,
            f"{ns:,} needles, all {full.n_channels} channels",
        )
    )
    wall, _, _ = timed(lambda: score_map_coordinates(minimal, entries[:ns], tips[:ns]), repeats=3)
    rows.append(
        (
            "(a) map_coordinates, 2 channels",
            "uniform",
            ns / wall,
            lattice / wall,
            f"ours with 2 channels is {ours_minimal * wall / ns:,.0f}x faster",
        )
    )
    # agreement of the raw minima and lengths with ours (same fields, same lattice)
    ours_res = score_needles(
        entries[:ns], tips[:ns], full, radius_mm=RADIUS_MM, clearance_cap_mm=math.inf
    )
    mc = score_map_coordinates(full, entries[:ns], tips[:ns])
    cols = [c for c in range(full.n_channels) if full.track[c] & 1]
    raw_min = np.stack([ours_res.raw[:, 5 * c] for c in cols], axis=1)
    bone = full.sacrum
    agree_min = float(np.max(np.abs(raw_min - mc["min"][:, cols])))
    agree_len = float(np.max(np.abs(ours_res.in_bone_length_mm - mc["inside"][:, bone])))

    # (b) VTK surfaces
    vtk_rate = None
    if not args.skip_vtk:
        names = ["foramina_union", "canal", "pelvic_side", "si_joint"]
        masks = dict(anatomy.masks)
        masks["foramina_union"] = np.logical_or.reduce(
            [m for k, m in anatomy.masks.items() if k.startswith("foramen ")]
        )
        score_vtk, build_s, n_cells = vtk_surface_method(masks, names)
        nv = min(args.vtk_needles, len(entries))
        score_vtk(entries[:5], tips[:5])
        wall, _, _ = timed(lambda: score_vtk(entries[:nv], tips[:nv]), repeats=1)
        lattice = float(
            np.sum(np.ceil(np.linalg.norm(tips[:nv] - entries[:nv], axis=1) / STEP_MM) + 1)
        )
        vtk_rate = nv / wall
        rows.append(
            (
                "(b) VTK surfaces (PAA-style)",
                "uniform",
                vtk_rate,
                lattice / wall,
                f"{nv} needles; surfaces {n_cells:,} triangles built in {build_s:.1f} s",
            )
        )

    print()
    print(
        f"{'method':40s} {'needles':8s} {'needles/s':>12s} {'samples/s':>13s} {'ours/x':>8s}  notes"
    )
    for label, which, rate, samples, note in rows:
        ratio = reference[which] / rate
        print(f"{label:40s} {which:8s} {rate:12,.0f} {samples:13,.0f} {ratio:8.1f}  {note}")
    print()
    print(
        "samples/s counts the 0.5 mm lattice samples a plain walk takes (skipping evaluates fewer)."
    )
    print(
        f"agreement with (a) on the same fields: raw minima within {agree_min:.1e} mm, "
        f"in-bone length within {agree_len:.1e} mm"
    )
    ours2 = reference["uniform"]
    checks = [
        (">= 500k needles/s (ours, 2 threads)", f"{ours2:,.0f} needles/s", ours2 >= 5e5),
        (">= 10x map_coordinates", f"{ours2 / mc_rate:,.1f}x", ours2 >= 10 * mc_rate),
    ]
    if vtk_rate is not None:
        checks.append(
            (">= 1000x VTK surfaces", f"{ours2 / vtk_rate:,.0f}x", ours2 >= 1e3 * vtk_rate)
        )
    print()
    print("targets (uniform needles):")
    for what, value, flag in checks:
        print(f"  {what:38s} {value:>18s} -> {_ok(flag)}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


def _ok(flag: bool) -> str:
    return "holds" if flag else "MISSED"


if __name__ == "__main__":
    raise SystemExit(main())
