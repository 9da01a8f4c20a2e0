"""Timing of lesion growing, metrics and painting (prints a table; no asserts).

Run: ``.venv/bin/python bench/bench_lesion.py [--phantom]``

Volumes: a 1 mm 160^3 CT with a bone ball (cortex 1200 HU, marrow 200 HU) in muscle and a
4.5 mL soft-tissue ellipsoid, noise 12 HU; the search box is 64 mm (a 129^3 ROI). With
``--phantom``, also every lesion site of the synthetic sacrum phantom (CT and MR, 1 mm).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.lesion import GrowOptions, grow_lesion, lesion_metrics, paint  # noqa: E402
from imaging.volume import Volume  # noqa: E402

CENTER = np.array([0.0, 0.0, 0.0])
RADII = np.array([12.0, 9.0, 10.0])


def best_of(fn: Callable[[], object], *, repeat: int = 5) -> float:
    """Best wall time of ``repeat`` runs after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def ball_ct(*, mr: bool = False) -> tuple[Volume, Volume]:
    shape = (160, 160, 160)
    origin = CENTER - (np.array(shape[::-1]) - 1) / 2.0
    vol = Volume(np.zeros(shape, np.int16), origin, np.ones(3), np.eye(3), "MR" if mr else "CT")
    kk, jj, ii = np.indices(shape)
    p = vol.index_to_world(np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(float)) - CENTER
    r = np.linalg.norm(p, axis=1)
    q = p @ Rotation.from_euler("xyz", (20, 10, -35), degrees=True).as_matrix()
    lesion = ((q / RADII) ** 2).sum(axis=1) <= 1.0
    if mr:
        img = np.where(r < 50, 0.83, 0.4)
        img[(r >= 47) & (r < 50)] = 0.05
        img[lesion] = 0.3
        img = img + np.random.default_rng(0).normal(0, 0.02, img.shape)
        image = vol.with_array(img.reshape(shape).astype(np.float32))
    else:
        img = np.where(r < 50, 200.0, 45.0)
        img[(r >= 47) & (r < 50)] = 1200.0
        img[lesion] = 40.0
        img = img + np.random.default_rng(0).normal(0, 12, img.shape)
        image = vol.with_array(np.rint(img).reshape(shape).astype(np.int16))
    bone = vol.with_array((r < 50).reshape(shape).astype(np.uint8), modality="LABEL")
    return image, bone


def rows_synthetic() -> list[tuple[str, float, str]]:
    rows = []
    image, bone = ball_ct()
    opts = GrowOptions(roi_radius_mm=64.0)
    roi = sitk.GetImageFromArray(image.array[16:145, 16:145, 16:145].astype(np.float32))
    seed = [(64, 64, 64)]
    rows.append(
        (
            "ConnectedThreshold alone, 129^3",
            best_of(lambda: sitk.ConnectedThreshold(roi, seedList=seed, lower=-30, upper=120)),
            "",
        )
    )
    res = grow_lesion(image, CENTER, options=opts)
    truth = 4 / 3 * np.pi * float(np.prod(RADII)) / 1000
    info = f"{res.volume_ml:.2f} mL (truth {truth:.2f}), band {res.band[1]:.0f} HU"
    rows.append(
        (
            "grow_lesion CT lytic, seed only",
            best_of(lambda: grow_lesion(image, CENTER, options=opts)),
            info,
        )
    )
    rows.append(
        (
            "grow_lesion CT lytic, bone mask",
            best_of(lambda: grow_lesion(image, CENTER, options=opts, bone_mask=bone)),
            "",
        )
    )
    mr, _ = ball_ct(mr=True)
    res_mr = grow_lesion(mr, CENTER, options=opts)
    rows.append(
        (
            "grow_lesion MR (T1 hypointense)",
            best_of(lambda: grow_lesion(mr, CENTER, options=opts)),
            f"{res_mr.volume_ml:.2f} mL",
        )
    )
    rows.append(
        (
            "lesion_metrics (bone mask, Feret)",
            best_of(lambda: lesion_metrics(res.mask, bone_mask=bone)),
            "",
        )
    )
    rows.append(("paint, 5 mm brush", best_of(lambda: paint(res.mask, CENTER, 5.0, value=1)), ""))
    return rows


def rows_phantom() -> list[tuple[str, float, str]]:
    from imaging.labels import Label
    from imaging.phantom import LESION_SITES, make_phantom

    rows = []
    for modality in ("ct", "mr"):
        for site in (s for s in LESION_SITES if s != "none"):
            ph = make_phantom(lesion=site, modality=modality)
            bone = ph.labels.with_array(
                np.isin(ph.labels.array, (Label.SACRUM, Label.LESION)).astype(np.uint8)
            )
            seed = ph.truth.lesion.center_lps
            ms = best_of(lambda: grow_lesion(ph.image, seed, bone_mask=bone), repeat=3)  # noqa: B023
            res = grow_lesion(ph.image, seed, bone_mask=bone)
            err = 100 * (res.volume_ml / ph.truth.lesion.volume_ml - 1)
            rows.append((f"phantom {modality} {site}", ms, f"volume error {err:+.1f} %"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom", action="store_true", help="also time the sacrum phantom")
    args = parser.parse_args(argv)
    rows = rows_synthetic()
    if args.phantom:
        rows += rows_phantom()
    width = max(len(r[0]) for r in rows)
    for name, ms, info in rows:
        print(f"{name:<{width}}  {ms:8.1f} ms  {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
