"""Time :func:`imaging.anatomy.segment_anatomy` on study-sized volumes (not a test).

Builds (1) the real pelvis CT of ``../shared/data`` resampled to 512 x 512 x 300 voxels
(skipped when the shared data are absent) and (2) the synthetic phantom at
0.7 x 0.7 x 1.0 mm, runs the automatic anatomy on each and prints the seconds per stage.

Run from the repository root::

    .venv/bin/python bench/bench_anatomy.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imaging.anatomy import segment_anatomy  # noqa: E402
from imaging.volume import Volume  # noqa: E402

REAL_CT = ROOT.parent / "shared" / "data" / "pelvis_ct_nifti" / "example_ct.nii.gz"


def real_ct_512() -> Volume | None:
    """The shared pelvis CT resampled to 512 x 512 x 300 voxels (None when absent)."""
    if not REAL_CT.exists():
        return None
    from imaging.read import load

    ct = load(REAL_CT)
    img = ct.to_sitk()
    size = np.array([512, 512, 300])
    extent = np.array(img.GetSize()) * np.array(img.GetSpacing())
    spacing = extent / size
    out = sitk.Resample(
        img,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        tuple(float(v) for v in spacing),
        img.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    return Volume.from_sitk(out, modality="CT")


def phantom_fine() -> Volume:
    """The synthetic phantom CT at 0.7 x 0.7 x 1.0 mm."""
    from imaging.phantom import make_phantom

    return make_phantom(spacing_mm=(0.7, 0.7, 1.0)).image


def run(name: str, ct: Volume) -> None:
    """Segment once and print the timing of each stage."""
    size = "x".join(str(v) for v in ct.size)
    spacing = ", ".join(f"{v:.2f}" for v in ct.spacing)
    print(f"\n{name}: {size} voxels, spacing ({spacing}) mm")
    t0 = time.perf_counter()
    anatomy = segment_anatomy(ct)
    total = time.perf_counter() - t0
    for stage, seconds in anatomy.timings_s.items():
        print(f"  {stage:<40s} {seconds:6.2f} s")
    print(f"  {'total':<40s} {total:6.2f} s")
    crop = "x".join(str(v) for v in anatomy.image.size)
    print(f"  crop {crop}, foramina found {len(anatomy.foramina)}/8")


def main() -> int:
    """Build the volumes and time them."""
    t = time.perf_counter()
    ct = real_ct_512()
    if ct is None:
        print(f"real CT not found at {REAL_CT}; skipping it")
    else:
        print(f"(resampled the real CT in {time.perf_counter() - t:.1f} s)")
        run("real pelvis CT resampled", ct)
    t = time.perf_counter()
    ph = phantom_fine()
    print(f"\n(built the phantom in {time.perf_counter() - t:.1f} s)")
    run("phantom", ph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
