"""Benchmark: simulated fluoroscopy (DRR), numba kernel vs a straightforward numpy version.

Run from the repository root::

    python -m bench.bench_drr              # or: python bench/bench_drr.py
    python -m bench.bench_drr --repeats 5 --spacing 1.0

Side by side in one process, on the built-in sample CT (the phantom at 1 mm: 301 x 221 x 181
voxels) and a 512 x 512 detector (0.6 mm pixels, SID 1100 mm, SOD 750 mm, isocentre on the
lesion), for the AP (LAO 180), lateral (LAO 90) and an oblique (LAO 150, CAU 25) view:

0. ours: ``imaging.drr.render_drr`` (numba ``prange`` over detector rows, rays clipped to the
   box of the non-air voxels, float32 trilinear sampling at one voxel per step) at full
   resolution and on the volume downsampled by 2 (for dragging), 2 threads and 1 thread;
a. numpy: the same rays, clipping and step, marched all together one step at a time with
   vectorised trilinear sampling (fancy indexing), in chunks of rows.

The preparation (HU to attenuation, crop; done once per study) is timed separately. Times
are wall-clock medians after a warm-up; the machine may be shared, so the load average is
printed too. The numpy result is compared with ours (max absolute difference of the line
integrals).
"""

from __future__ import annotations

import argparse
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

from imaging.drr import AttenuationVolume, CArmGeometry, prepare_volume, render_drr
from imaging.phantom import make_phantom

VIEWS = {
    "AP (LAO 180)": (180.0, 0.0),
    "lateral (LAO 90)": (90.0, 0.0),
    "LAO 150 CAU 25": (150.0, -25.0),
}


def timed(fn: Callable[[], object], *, repeats: int) -> tuple[float, float]:
    """Median and best wall time of ``fn`` over ``repeats`` runs."""
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), min(walls)


def _trilinear_np(mu: np.ndarray, p: np.ndarray) -> np.ndarray:
    nk, nj, ni = mu.shape
    x = np.clip(p[:, 0], 0.0, ni - 1.0)
    y = np.clip(p[:, 1], 0.0, nj - 1.0)
    z = np.clip(p[:, 2], 0.0, nk - 1.0)
    i0 = np.minimum(x.astype(np.int64), ni - 2)
    j0 = np.minimum(y.astype(np.int64), nj - 2)
    k0 = np.minimum(z.astype(np.int64), nk - 2)
    fx, fy, fz = (
        (x - i0).astype(np.float32),
        (y - j0).astype(np.float32),
        (z - k0).astype(np.float32),
    )
    c00 = mu[k0, j0, i0] + fx * (mu[k0, j0, i0 + 1] - mu[k0, j0, i0])
    c01 = mu[k0, j0 + 1, i0] + fx * (mu[k0, j0 + 1, i0 + 1] - mu[k0, j0 + 1, i0])
    c10 = mu[k0 + 1, j0, i0] + fx * (mu[k0 + 1, j0, i0 + 1] - mu[k0 + 1, j0, i0])
    c11 = mu[k0 + 1, j0 + 1, i0] + fx * (mu[k0 + 1, j0 + 1, i0 + 1] - mu[k0 + 1, j0 + 1, i0])
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


def numpy_drr(vol: AttenuationVolume, geometry: CArmGeometry, step_mm: float) -> np.ndarray:
    """The same DRR with numpy only: all rays of a chunk of rows advance together."""
    a, b = vol.world_to_index_affine()
    src = a @ geometry.source_lps + b
    rows, cols = geometry.detector_shape
    lo = -0.5
    hi = np.array(vol.mu.shape[::-1], dtype=np.float64) - 0.5
    out = np.zeros((rows, cols), dtype=np.float32)
    cc = np.arange(cols, dtype=np.float64)
    for r0 in range(0, rows, 64):
        rr, c2 = np.meshgrid(np.arange(r0, min(rows, r0 + 64), dtype=np.float64), cc, indexing="ij")
        pix = geometry.pixel_to_world(c2, rr).reshape(-1, 3) @ a.T + b
        d = pix - src
        with np.errstate(divide="ignore", invalid="ignore"):
            ta = (lo - src) / d
            tb = (hi - src) / d
        lo_t = np.where(
            np.abs(d) < 1e-12,
            np.where((src >= lo) & (src <= hi), -np.inf, np.inf),
            np.minimum(ta, tb),
        )
        hi_t = np.where(
            np.abs(d) < 1e-12,
            np.where((src >= lo) & (src <= hi), np.inf, -np.inf),
            np.maximum(ta, tb),
        )
        t0 = np.maximum(lo_t.max(axis=1), 0.0)
        t1 = np.minimum(hi_t.min(axis=1), 1.0)
        hit = t1 > t0
        length = np.linalg.norm(d * vol.spacing, axis=1)
        chord = np.where(hit, (t1 - t0) * length, 0.0)
        n = np.maximum(1, np.ceil(chord / step_mm)).astype(np.int64)
        dt = np.where(hit, (t1 - t0) / n, 0.0)
        acc = np.zeros(len(d), dtype=np.float32)
        idx = np.flatnonzero(hit)
        for s in range(int(n[idx].max()) if idx.size else 0):
            idx = idx[n[idx] > s]
            t = t0[idx] + (s + 0.5) * dt[idx]
            acc[idx] += _trilinear_np(vol.mu, src + t[:, None] * d[idx])
        out[r0 : r0 + 64] = (acc * np.where(hit, chord / n, 0.0)).reshape(-1, cols)
    return out


def collect(*, quick: bool = False) -> list:
    """DRR rows for ``python -m bench``: a 512² AP DRR of the sample, ours against numpy."""
    from bench._table import Row

    repeats = 1 if quick else 3
    phantom = make_phantom(modality="ct", spacing_mm=(1.0, 1.0, 1.0))
    iso = phantom.truth.lesion.center_lps
    vol = prepare_volume(phantom.image)
    vol2 = prepare_volume(phantom.image, downsample=2)
    g = CArmGeometry.from_angles(180.0, 0.0, iso)
    render_drr(vol2, g)  # compile / load the kernel
    ours, _ = timed(lambda: render_drr(vol, g), repeats=repeats)
    down, _ = timed(lambda: render_drr(vol2, g), repeats=repeats)
    t_np, _ = timed(lambda: numpy_drr(vol, g, float(np.min(vol.spacing))), repeats=1)
    group = "fluoroscopy (DRR)"
    return [
        Row(
            group,
            "512x512 AP DRR of the sample CT",
            ours,
            "s",
            "numpy ray march",
            t_np,
            t_np / ours,
            "well under 1 s",
            ours < 1.0,
        ),
        Row(
            group,
            "512x512 AP DRR, volume downsampled x2 (drag)",
            down,
            "s",
            "full resolution",
            ours,
            ours / down,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size, mm")
    parser.add_argument("--no-numpy", action="store_true", help="skip the slow numpy baseline")
    args = parser.parse_args(argv)

    print(f"load average {os.getloadavg()}, numba threads {numba.get_num_threads()}")
    phantom = make_phantom(modality="ct", spacing_mm=(args.spacing,) * 3)
    ct = phantom.image
    iso = phantom.truth.lesion.center_lps
    t_prep, _ = timed(lambda: prepare_volume(ct), repeats=3)
    vol = prepare_volume(ct)
    vol2 = prepare_volume(ct, downsample=2)
    step = float(np.min(vol.spacing))
    print(
        f"sample CT {ct.size} voxels at {args.spacing} mm; cropped attenuation volume"
        f" {vol.mu.shape[::-1]}; preparation {t_prep * 1000:.0f} ms (once per study)"
    )
    render_drr(vol2, CArmGeometry.from_angles(180, 0, iso))  # compile / load the kernel
    threads = numba.get_num_threads()
    for name, (primary, secondary) in VIEWS.items():
        g = CArmGeometry.from_angles(primary, secondary, iso)
        ours, best = timed(lambda g=g: render_drr(vol, g), repeats=args.repeats)
        down, _ = timed(lambda g=g: render_drr(vol2, g), repeats=args.repeats)
        numba.set_num_threads(1)
        one, _ = timed(lambda g=g: render_drr(vol, g), repeats=args.repeats)
        numba.set_num_threads(threads)
        line = (
            f"{name:18s} 512x512: ours {ours * 1000:6.0f} ms (best {best * 1000:.0f},"
            f" 1 thread {one * 1000:.0f}); downsampled x2 {down * 1000:5.0f} ms"
        )
        if not args.no_numpy:
            t_np, _ = timed(lambda g=g: numpy_drr(vol, g, step), repeats=1)
            diff = np.abs(numpy_drr(vol, g, step) - render_drr(vol, g).line_integral).max()
            line += (
                f"; numpy {t_np * 1000:6.0f} ms = {t_np / ours:5.1f}x ours (max |diff| {diff:.1e})"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
