"""Benchmark: signed distance fields of the sacral risk structures against scipy and SimpleITK.

Run from the repository root::

    python -m bench.bench_fields            # 3 repeats
    python -m bench.bench_fields --quick    # 1 repeat

The masks are the automatic anatomy of the built-in phantom at 0.7 x 0.7 x 1.0 mm (sacrum,
canal, the union of the foramina), on the anatomy's crop around the sacrum. Each is turned into a
signed distance field in mm, side by side in this process, by

- ours: ``geometry.distance.signed_distance_mm`` (numba, separable exact EDT, 30 mm margin:
  what the planner builds);
- scipy: ``ndimage.distance_transform_edt`` outside and inside with ``sampling`` (exact, the
  textbook way);
- SimpleITK: ``SignedMaurerDistanceMap`` with image spacing (2 threads).

Reported: median seconds per structure set, our speed-up over scipy (target at least 5x), and the
extra bytes per voxel at peak (fresh child process, peak RSS rise over the crop's voxel count).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from bench._table import Row, child_peak_rise, format_table, machine_line, side_by_side
from geometry.distance import signed_distance_mm

GROUP = "distance fields"
CACHE = Path("/tmp/sacroplan-bench-fields.npz")


def anatomy_masks() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Sacrum, canal and foramina masks on the anatomy crop, and the spacing (x, y, z) mm."""
    if CACHE.exists():
        data = np.load(CACHE)
        return {k: data[k] for k in ("sacrum", "canal", "foramina")}, data["spacing"]
    from imaging.anatomy import segment_anatomy
    from imaging.phantom import make_phantom

    masks = segment_anatomy(make_phantom(spacing_mm=(0.7, 0.7, 1.0)).image)
    out = {
        "sacrum": masks.masks["sacrum"] > 0,
        "canal": masks.masks["canal"] > 0,
        "foramina": masks.masks["foramina"] > 0,
    }
    spacing = np.asarray(masks.image.spacing, float)
    np.savez_compressed(CACHE, spacing=spacing, **out)
    return out, spacing


def ours(masks: dict[str, np.ndarray], spacing: np.ndarray) -> list[np.ndarray]:
    return [signed_distance_mm(m, spacing, crop_margin_mm=30.0) for m in masks.values()]


def scipy_edt(masks: dict[str, np.ndarray], spacing: np.ndarray) -> list[np.ndarray]:
    sampling = spacing[::-1]
    return [
        (
            ndimage.distance_transform_edt(~m, sampling=sampling)
            - ndimage.distance_transform_edt(m, sampling=sampling)
        ).astype(np.float32)
        for m in masks.values()
    ]


def sitk_maurer(masks: dict[str, np.ndarray], spacing: np.ndarray) -> list[np.ndarray]:
    out = []
    for m in masks.values():
        img = sitk.GetImageFromArray(m.astype(np.uint8))
        img.SetSpacing(tuple(float(v) for v in spacing))
        d = sitk.SignedMaurerDistanceMap(
            img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        out.append(sitk.GetArrayViewFromImage(d))
    return out


def collect(*, quick: bool = False) -> list[Row]:
    """Measure the distance fields; return the table rows."""
    repeats = 1 if quick else 3
    masks, spacing = anatomy_masks()
    shape = next(iter(masks.values())).shape
    what = f"sacrum+canal+foramina, crop {shape[2]}x{shape[1]}x{shape[0]}"
    t_ours, t_scipy = side_by_side(
        lambda: ours(masks, spacing), lambda: scipy_edt(masks, spacing), repeats=repeats
    )
    _, t_sitk = side_by_side(
        lambda: ours(masks, spacing), lambda: sitk_maurer(masks, spacing), repeats=repeats
    )
    rows = [
        Row(
            GROUP,
            what,
            t_ours,
            "s",
            "scipy distance_transform_edt",
            t_scipy,
            t_scipy / t_ours,
            "ours >= 5x scipy",
            t_scipy / t_ours >= 5.0,
        ),
        Row(GROUP, what, t_ours, "s", "SimpleITK SignedMaurerDistanceMap", t_sitk, t_sitk / t_ours),
    ]
    n_vox = int(np.prod(shape))
    setup = "from bench import bench_fields as b\nmasks, spacing = b.anatomy_masks()"
    for name, fn in (("ours", "ours"), ("scipy", "scipy_edt")):
        rise = child_peak_rise(setup, f"out = b.{fn}(masks, spacing)")
        # the outputs themselves are 4 bytes/voxel each; the rest is working memory
        rows.append(Row(GROUP, f"extra bytes per voxel at peak, {name}", rise / n_vox, "B"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    args = parser.parse_args(argv)
    print(f"machine: {machine_line()}")
    print(format_table(collect(quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
