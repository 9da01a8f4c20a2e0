"""Benchmark: the whole planning run, stage by stage, on the sample and on a 512 x 512 x 300 CT.

Run from the repository root::

    python -m bench.bench_plan            # sample + 512 x 512 x 300 phantom
    python -m bench.bench_plan --quick    # the sample only

Stages, as ``sacroplan plan`` runs them: load (the sample is drawn; the large phantom is written
once as an uncompressed ``.mha`` and read back through the study reader), anatomy, lesion (grown
from the phantom's lesion centre), distance fields (the planner's field stack), candidates and
scoring (every approach's needles through the compiled kernel), suggestion (re-scoring the kept
candidates, cement, plan assembly). The large phantom covers the same 300 x 220 x 180 mm field of
view at 0.587 x 0.431 x 0.602 mm (512 x 512 x 300 voxels).

The planner builds its distance fields on a grid of about 1 mm: a finer study's masks are pooled
in whole blocks (``geometry.pooling``; 2 x 2 x 2 for the 512 x 512 x 300 CT).

Baselines measured in the same process:

- distance fields: ours (``geometry.distance``, exact, cropped) against scipy's
  ``distance_transform_edt`` (outside and inside, with ``sampling``) on the same six planner
  masks on the field grid;
- scoring: the kernel's own rate against ``map_coordinates`` and a surface method is in
  ``bench_scoring``; here the planner's search rate (skin search, scoring, entry rules) is shown;
- drag re-score: ``score_trajectory`` of one needle (target at most 5 ms).

Targets: end to end at most 15 s on the sample and 20 s on the 512 x 512 x 300 CT.
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
from scipy import ndimage

from bench._table import Row, format_table, machine_line, median_time
from geometry.distance import signed_distance_mm

GROUP = "plan"
#: Field of view of the phantom (mm) and the voxel counts (i, j, k) of the large study.
FOV_MM = np.array([300.0, 220.0, 180.0])
LARGE_SIZE = np.array([512, 512, 300])


def large_spacing() -> tuple[float, float, float]:
    """Voxel size (x, y, z) mm giving the phantom's field of view on 512 x 512 x 300 voxels."""
    from imaging.phantom import FOV_MAX_MM, FOV_MIN_MM

    extent = FOV_MAX_MM - FOV_MIN_MM
    return tuple(float(v) for v in extent / (LARGE_SIZE - 1))  # type: ignore[return-value]


def _large_case(folder: Path) -> tuple[object, np.ndarray, float]:
    """The 512 x 512 x 300 phantom written as .mha and opened as a study; its lesion centre."""
    import SimpleITK as sitk

    from imaging.phantom import make_phantom
    from planning.case import Case

    phantom = make_phantom(lesion="left_ala_s1", spacing_mm=large_spacing())
    path = folder / "phantom512.mha"
    sitk.WriteImage(phantom.image.to_sitk(), str(path), useCompression=False)
    t0 = time.perf_counter()
    case = Case.open(path)
    load_s = time.perf_counter() - t0
    return case, np.asarray(phantom.truth.lesion.center_lps), load_s


def run_plan(case: object, seed: np.ndarray) -> dict[str, float]:
    """Anatomy, lesion and plan on ``case``; seconds per stage."""
    from planning.planner import plan_case

    t0 = time.perf_counter()
    case.find_anatomy()
    t1 = time.perf_counter()
    case.grow_lesion(seed)
    t2 = time.perf_counter()
    plan = plan_case(case)
    t3 = time.perf_counter()
    tm = case.timings_s
    return {
        "anatomy": t1 - t0,
        "lesion": t2 - t1,
        "distance fields": tm["plan_fields"],
        "candidates + scoring": tm["plan_search"],
        "suggestion": tm["plan_suggestion"],
        "plan (all)": t3 - t2,
        "needles": float(sum(plan.evaluated.values())),
    }


def _field_baseline(case: object) -> tuple[float, float]:
    """Seconds for the planner's masks: our cropped exact EDT against scipy's EDT."""
    from geometry.pooling import pool_mask
    from planning.planner import _crop_of, canal_with_lumbar, field_factors, field_grid

    m = case.masks
    crop = m.image
    grid = field_grid(crop)
    factors = field_factors(crop.spacing)
    lesion = _crop_of(case.lesion.mask.array > 0, m.crop_index, crop.array.shape)
    masks = [
        pool_mask(mk, factors, any_voxel=True)
        for mk in (
            m.masks["sacrum"] | lesion,
            canal_with_lumbar(m.masks["canal"], crop),
            m.masks["foramina"] > 0,
            m.masks["si_joint_left"] | m.masks["si_joint_right"],
            m.masks["left_ilium"] | m.masks["right_ilium"],
            lesion,
        )
    ]
    sampling = grid.spacing[::-1]

    def ours() -> None:
        for mk in masks:
            signed_distance_mm(mk, grid.spacing, crop_margin_mm=25.0)

    def scipy_edt() -> None:
        for mk in masks:
            ndimage.distance_transform_edt(~mk, sampling=sampling)
            ndimage.distance_transform_edt(mk, sampling=sampling)

    return median_time(ours, repeats=1), median_time(scipy_edt, repeats=1, warmup=0)


def _drag_ms(case: object) -> float:
    """Median milliseconds of one ``score_trajectory`` call (a dragged handle)."""
    from planning.planner import build_fields, score_trajectory

    fields = build_fields(case)
    tip = np.asarray(case.metrics.centroid_lps, float)
    rng = np.random.default_rng(0)
    offsets = rng.normal(size=(64, 3)) * 5.0 + np.array([0.0, 90.0, 10.0])
    k = iter(range(10**9))

    def one() -> None:
        i = next(k) % len(offsets)
        score_trajectory(
            tip + offsets[i], tip, "13G-100", fields=fields, approach="posterior_short"
        )

    return 1e3 * median_time(one, repeats=50, warmup=3)


def _rows_for(name: str, stages: dict[str, float], load_s: float, target_s: float) -> list[Row]:
    rows = [Row(GROUP, f"{name}: load", load_s, "s")]
    for stage in ("anatomy", "lesion", "distance fields", "candidates + scoring", "suggestion"):
        rows.append(Row(GROUP, f"{name}: {stage}", stages[stage], "s"))
    total = load_s + stages["anatomy"] + stages["lesion"] + stages["plan (all)"]
    rows.append(
        Row(
            GROUP,
            f"{name}: end to end",
            total,
            "s",
            target=f"<= {target_s:.0f} s",
            ok=total <= target_s,
        )
    )
    rate = stages["needles"] / max(stages["candidates + scoring"], 1e-9)
    rows.append(
        Row(
            GROUP,
            f"{name}: needles searched per second",
            rate,
            "needles/s",
            note=f"{stages['needles']:.0f} needles incl. skin search and entry rules",
        )
    )
    return rows


def collect(*, quick: bool = False) -> list[Row]:
    """Rows of the table (see the module docstring)."""
    from geometry.kernels import warm_up
    from planning.case import Case

    warm_up()
    rows: list[Row] = []
    t0 = time.perf_counter()
    sample = Case.sample(lesion="left_ala_s1")
    load_s = time.perf_counter() - t0
    stages = run_plan(sample, sample.default_seed())
    rows += _rows_for("sample 301x221x181", stages, load_s, 15.0)
    drag = _drag_ms(sample)
    rows.append(
        Row(GROUP, "drag re-score (score_trajectory)", drag, "ms", target="<= 5 ms", ok=drag <= 5.0)
    )
    ours, scipy_s = _field_baseline(sample)
    rows.append(
        Row(
            GROUP,
            "sample: planner fields (6 masks)",
            ours,
            "s",
            "scipy EDT",
            scipy_s,
            scipy_s / ours,
        )
    )
    if quick:
        return rows
    with tempfile.TemporaryDirectory() as tmp:
        case, seed, load_s = _large_case(Path(tmp))
        stages = run_plan(case, seed)
    rows += _rows_for("CT 512x512x300", stages, load_s, 20.0)
    ours, scipy_s = _field_baseline(case)
    rows.append(
        Row(GROUP, "512: planner fields (6 masks)", ours, "s", "scipy EDT", scipy_s, scipy_s / ours)
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the sample only")
    args = parser.parse_args(argv)
    print(machine_line(), flush=True)
    print(format_table(collect(quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
