"""The ``sacroplan`` command line.

``main(argv)`` is what the console script calls and what tests call in-process. Bad input
gives exit code 2 and one plain line on stderr; an unexpected failure gives exit code 3,
one line, and the traceback in the log file — never a traceback on the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from app import __version__
from app.logs import log_file_path, setup_logging
from imaging.errors import SacroplanError

log = logging.getLogger("sacroplan.cli")

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3

# Options whose value is an "X,Y,Z" point in LPS mm; their values may start with "-".
POINT_OPTIONS = ("--seed", "--entry", "--target")


class UserInputError(SacroplanError):
    """A command-line argument is malformed."""


# ------------------------------------------------------------------------------------------------
# argument helpers
def parse_triplet(text: str, *, what: str = "point", positive: bool = False) -> tuple[float, ...]:
    """Parse ``"X,Y,Z"`` into three floats (mm).

    Raises
    ------
    UserInputError
        When the text is not three comma-separated finite numbers (or not positive when
        ``positive``).
    """
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        raise UserInputError(f"{what} must be three numbers X,Y,Z in mm, got {text!r}")
    if positive and min(values) <= 0:
        raise UserInputError(f"{what} must be positive, got {text!r}")
    return values


def _join_point_values(argv: Sequence[str]) -> list[str]:
    """Turn ``--seed -41,2,3`` into ``--seed=-41,2,3`` so argparse accepts negative values."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in POINT_OPTIONS and i + 1 < len(argv):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so main() owns the exit code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{message} (see '{self.prog} --help')")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# commands
def _cmd_info(args: argparse.Namespace) -> int:
    from imaging.read import scan

    path = Path(args.path)
    if not path.exists():
        raise UserInputError(f"no such file or folder: {path}")
    result = scan(path)
    if args.json:
        _print_json(result.to_json())
        return EXIT_OK
    print(_format_scan(result))
    return EXIT_OK


def _format_scan(result: Any) -> str:
    lines: list[str] = []
    if not result.series:
        lines.append("No loadable image series found.")
    for n, s in enumerate(result.series, 1):
        size = "x".join(str(v) for v in s.size)
        spacing = " x ".join(f"{v:.3g}" for v in s.spacing)
        origin = ", ".join(f"{v:.2f}" for v in s.origin)
        lines.append(f"[{n}] {s.modality} {s.description or '(no description)'}")
        lines.append(f"    patient    {s.patient_name or '-'} ({s.patient_id or '-'})")
        lines.append(f"    study      {s.study_date or '-'} {s.study_description or ''}".rstrip())
        lines.append(f"    series     {s.uid}")
        lines.append(f"    images     {s.n_images}  voxels {size}  spacing {spacing} mm")
        lines.append(f"    origin     ({origin}) mm LPS, {s.orientation}")
        lines.extend(f"    warning    {w}" for w in s.warnings)
    if result.skipped:
        lines.append(f"Skipped {len(result.skipped)} file(s):")
        lines.extend(f"    {k.path}: {k.reason}" for k in result.skipped)
    return "\n".join(lines)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from imaging.sample import write_sample

    spacing = parse_triplet(args.spacing, what="--spacing", positive=True)
    written = write_sample(
        Path(args.out), lesion=args.lesion, modality=args.modality, spacing_mm=spacing
    )
    if args.json:
        _print_json({k: str(v) for k, v in written.items()})
    else:
        print(f"Sample phantom ({args.modality.upper()}, lesion {args.lesion}) written:")
        for key, path in written.items():
            print(f"    {key:<8} {path}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    """Generate the sample, read it back through the user's reader, and summarise it."""
    from imaging.read import load, scan
    from imaging.sample import write_sample

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sacroplan-sample-") as tmp:
        t0 = time.perf_counter()
        written = write_sample(Path(tmp), lesion=args.lesion, modality=args.modality)
        timings["generate_and_write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = scan(written["dicom"])
        volume = load(written["dicom"])
        timings["read_s"] = time.perf_counter() - t0
        truth = json.loads(Path(written["truth"]).read_text())
    case, plan = _demo_case(volume, truth)
    summary = {
        "sample": {"lesion": args.lesion, "modality": args.modality},
        "series": [s.to_json() for s in result.series],
        "volume": volume.summary(),
        "truth": {
            "lesion": truth.get("lesion"),
            "s1_endplate": truth.get("s1_endplate"),
            "n_foramina": len(truth.get("foramina", [])),
        },
        "segment": case.segment_json(),
        "plan": plan,
        "timings_s": {
            **{k: round(v, 3) for k, v in timings.items()},
            **{f"{k}_s": round(v, 3) for k, v in case.timings_s.items()},
        },
    }
    if args.json:
        _print_json(summary)
        return EXIT_OK
    print(_format_demo(summary, volume))
    print()
    print(_format_segment(summary["segment"]))
    if plan is not None:
        print()
        print(_format_plan(plan))
    return EXIT_OK


def _demo_case(volume: Any, truth: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Segment (and, on CT, plan) the sample read back from disk, seeded at its lesion."""
    from imaging.phantom import PhantomTruth
    from planning.case import Case
    from planning.planner import plan_case

    case = Case(image=volume, source="built-in sample", sample_truth=PhantomTruth.from_json(truth))
    seed = case.default_seed()
    if seed is None:
        return case, None
    _find_anatomy(case)
    case.grow_lesion(seed)
    if volume.modality.upper() != "CT":
        return case, None
    return case, plan_case(case).to_json()


def _format_demo(summary: dict[str, Any], volume: Any) -> str:
    v = summary["volume"]
    lesion = summary["truth"]["lesion"] or {}
    arr = volume.array
    lines = [
        f"sacroplan {__version__} - built-in sample (synthetic sacrum phantom)",
        f"  study      {volume.meta.get('description') or 'sample'}, modality {v['modality']}",
        f"  voxels     {' x '.join(map(str, v['size']))} ({v['orientation']}, {v['dtype']})",
        f"  spacing    {' x '.join(f'{s:.3g}' for s in v['spacing'])} mm",
        f"  origin     ({', '.join(f'{o:.1f}' for o in v['origin'])}) mm LPS",
        f"  values     {float(arr.min()):.0f} .. {float(arr.max()):.0f}",
    ]
    if lesion:
        lines.append(
            f"  lesion     {lesion.get('site')}: {lesion.get('volume_ml', 0):.2f} mL, "
            f"{lesion.get('max_diameter_mm', 0):.1f} mm, Denis zone {lesion.get('denis_zone')}"
        )
    lines.append(f"  foramina   {summary['truth']['n_foramina']} (S1-S4, both sides)")
    t = summary["timings_s"]
    lines.append(
        f"  timings    generate+write {t['generate_and_write_s']:.2f} s, read {t['read_s']:.2f} s"
    )
    if lesion:
        lines.append(
            f"  truth      lesion {lesion.get('volume_ml', 0):.2f} mL, "
            f"zone {lesion.get('denis_zone')}"
        )
    return "\n".join(lines)


def _open_case(args: argparse.Namespace) -> Any:
    from planning.case import Case

    if args.sample:
        if args.path:
            raise UserInputError("give either a study PATH or --sample, not both")
        spacing = parse_triplet(args.spacing, what="--spacing", positive=True)
        return Case.sample(lesion=args.lesion, modality=args.modality, spacing_mm=spacing)
    if not args.path:
        raise UserInputError("give a study PATH (folder, DICOMDIR or file) or --sample")
    if not Path(args.path).exists():
        raise UserInputError(f"no such file or folder: {args.path}")
    return Case.open(args.path, series_uid=args.series)


def _seed(args: argparse.Namespace, case: Any) -> Any:
    if args.seed is not None:
        return parse_triplet(args.seed, what="--seed")
    seed = case.default_seed()
    if seed is None:
        raise UserInputError("give --seed X,Y,Z: a point inside the lesion, in LPS mm")
    return seed


def _cmd_segment(args: argparse.Namespace) -> int:
    from imaging.atomic import atomic_path
    from imaging.lesion import GrowOptions

    case = _open_case(args)
    seed = _seed(args, case)
    _find_anatomy(case)
    band = parse_band(args.band) if args.band else None
    case.grow_lesion(seed, options=GrowOptions(mode=args.mode, band_hu=band))
    if args.out_labels:
        import SimpleITK as sitk

        out = Path(args.out_labels)
        if not out.parent.exists():
            raise UserInputError(f"the folder of --out-labels does not exist: {out.parent}")
        with atomic_path(out) as tmp:
            sitk.WriteImage(case.label_map().to_sitk(), str(tmp), useCompression=True)
    report = case.segment_json()
    if args.json:
        _print_json(report)
    else:
        print(_format_segment(report))
    return EXIT_OK


def _find_anatomy(case: Any) -> None:
    """Automatic anatomy; on an MR a failure is a note (the lesion is still measured)."""
    from imaging.errors import SegmentationError

    if case.image.modality.upper() == "CT":
        case.find_anatomy()
        return
    try:
        case.find_anatomy()
    except SegmentationError as exc:
        case.notes.append(
            f"{exc}; without it there are no Denis zones or clearances (place the foramen and "
            "endplate landmarks in the workstation)"
        )


def parse_band(text: str) -> tuple[float, float]:
    """Parse ``"LO,HI"`` (HU, or MR units) into a band."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UserInputError(f"--band must be two numbers LO,HI, got {text!r}") from None
    return lo, hi


def _format_segment(report: dict[str, Any]) -> str:
    lines = [f"Study: {report['source']} ({report['modality']})"]
    les = report["lesion"]
    if les:
        flags = [k for k, v in les["flags"].items() if v is True]
        lines.append(
            f"Lesion: {les['volume_ml']:.2f} mL, largest diameter {les['max_diameter_mm']:.1f} mm,"
            f" Denis zone {les['denis_zone'] if les['denis_zone'] is not None else '?'}"
            f" ({les['mode']} mode, band {les['band'][0]:g}..{les['band'][1]:g})"
        )
        if les.get("zones_ml"):
            z = les["zones_ml"]
            lines.append(
                f"        by zone: 1 {z['1']:.2f} mL, 2 {z['2']:.2f} mL, 3 {z['3']:.2f} mL"
            )
        lines.append(f"        centroid ({', '.join(f'{v:.1f}' for v in les['centroid_lps'])}) mm")
        lines.append(f"        flags: {', '.join(flags) if flags else 'none'}")
        lines.extend(f"        warning: {w}" for w in les.get("warnings", []))
    anat = report["anatomy"]
    if anat:
        names = ", ".join(f["name"] for f in anat["foramina"]) or "none"
        lines.append(f"Anatomy: sacrum {anat.get('sacrum_volume_ml', 0):.1f} mL; foramina {names}")
        ep = anat["s1_endplate"]
        lines.append(
            f"         S1 endplate centre ({', '.join(f'{v:.1f}' for v in ep['center_lps'])}) mm"
        )
    lines.extend(f"Note: {n}" for n in report["notes"])
    t = report["timings_s"]
    lines.append("Timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    return "\n".join(lines)


def _cmd_fuse(args: argparse.Namespace) -> int:
    """Register an MR to the CT of the same patient; optionally map the MR lesion onto the CT."""
    import numpy as np

    from imaging.atomic import atomic_path, atomic_write_text
    from imaging.fusion import map_mask_to_ct, moved_grid, register_mr_to_ct
    from imaging.lesion import GrowOptions, grow_lesion
    from planning.case import Case

    for what, path in (("CT", args.ct), ("MR", args.mr)):
        if not Path(path).exists():
            raise UserInputError(f"no such file or folder for the {what}: {path}")
    for opt in (args.out_transform, args.out_labels):
        if opt and not Path(opt).parent.exists():
            raise UserInputError(f"the folder of {opt} does not exist")
    if args.out_transform and not args.out_transform.endswith((".json", ".tfm")):
        raise UserInputError("--out-transform must end in .json or .tfm (ITK transform)")
    if args.out_labels and not args.seed:
        raise UserInputError("--out-labels needs --seed: a point inside the lesion on the MR")
    ct_case = Case.open(args.ct, series_uid=args.ct_series)
    mr_case = Case.open(args.mr, series_uid=args.mr_series)
    ct, mr = ct_case.image, mr_case.image
    if ct.modality.upper() != "CT":
        raise UserInputError(
            f"the first study must be the CT; {args.ct} is {ct.modality} (give CT then MR)"
        )
    if mr.modality.upper() == "CT":
        raise UserInputError(f"the second study must be the MR; {args.mr} is a CT")
    result = register_mr_to_ct(ct, mr)
    t = result.transform
    out: dict[str, Any] = {
        "ct": str(args.ct),
        "mr": str(args.mr),
        "registration": result.to_json(),
        "transform_note": "CT -> MR: x_mr = R x_ct + t (LPS mm); map_mr_to_ct is its inverse",
    }
    if args.seed:
        seed = np.asarray(parse_triplet(args.seed, what="--seed"), dtype=float)
        if not bool(np.all(mr.contains_world(seed[None, :]))):
            raise UserInputError(f"the --seed {args.seed} lies outside the MR volume")
        # MR muscle has a lesion's signal: the growth stays in the bone the CT's anatomy finds
        # around the seed, moved onto the MR (as the workstation's fusion dock does)
        ct_case.find_anatomy()
        seed_ct = t.map_mr_to_ct(seed[None, :])[0]
        bone = moved_grid(ct_case._bone_for_seed(seed_ct), t)  # noqa: SLF001
        mask = grow_lesion(mr, seed, options=GrowOptions(mode="mr"), bone_mask=bone).mask
        mapped = map_mask_to_ct(mask, ct, t)
        kji = np.argwhere(mapped.mask.array > 0)
        centroid = mapped.mask.index_to_world(kji[:, ::-1].astype(float)).mean(axis=0)
        out["lesion"] = {
            "seed_mr_lps": [float(v) for v in seed],
            "volume_ml_mr": round(mapped.volume_ml_mr, 3),
            "volume_ml_ct": round(mapped.volume_ml_ct, 3),
            "centroid_ct_lps": [round(float(v), 2) for v in centroid],
        }
        if args.out_labels:
            import SimpleITK as sitk

            with atomic_path(Path(args.out_labels)) as tmp:
                sitk.WriteImage(mapped.mask.to_sitk(), str(tmp), useCompression=True)
    if args.out_transform:
        target = Path(args.out_transform)
        if target.suffix == ".json":
            atomic_write_text(target, json.dumps(t.to_json(), indent=2) + "\n")
        else:
            import SimpleITK as sitk

            with atomic_path(target) as tmp:
                sitk.WriteTransform(t.to_sitk(), str(tmp))
    if args.json:
        _print_json(out)
        return EXIT_OK
    r = out["registration"]
    lines = [
        f"MR {args.mr} registered to CT {args.ct} (rigid, mutual information): "
        f"rotation {r['rotation_deg']:.2f} deg, translation "
        f"({', '.join(f'{v:.2f}' for v in t.translation_mm)}) mm (CT -> MR), "
        f"metric {r['initial_metric']:.3f} -> {r['metric']:.3f} from the {r['initial_pose']} "
        f"start, {r['iterations']} iterations, {r['seconds']:.1f} s",
    ]
    if "lesion" in out:
        les = out["lesion"]
        c = ", ".join(f"{v:.1f}" for v in les["centroid_ct_lps"])
        lines.append(
            f"Lesion on the MR: {les['volume_ml_mr']:.2f} mL; on the CT: {les['volume_ml_ct']:.2f} "
            f"mL, centroid ({c}) mm LPS"
        )
    print("\n".join(lines))
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    from planning.margins import Margins
    from planning.plan import save_plan
    from planning.planner import PlanOptions, plan_case

    case = _open_case(args)
    seed = _seed(args, case)
    margins = Margins()
    if args.margin_mm is not None:
        margins = margins.with_overrides(foramen_mm=args.margin_mm, canal_mm=args.margin_mm)
    case.find_anatomy()
    case.grow_lesion(seed)
    options = PlanOptions(needle_id=args.needle, margins=margins, with_rfa=args.rfa)
    plan = plan_case(case, options=options)
    # In auto mode a second needle is looked for only for lesions larger than the cohort's
    # 3 cm (the search for pairs costs as much again as the plan itself).
    large = case.metrics is not None and case.metrics.diameter_over_30mm
    wanted = args.needles == "2" or (args.needles == "auto" and large)
    if wanted and plan.suggestion is not None and plan.suggestion.approach:
        from planning.multi_needle import plan_multi_needle, with_multi_needle
        from planning.planner import PlanningError

        try:
            multi = plan_multi_needle(
                case, plan=plan, options=options, needles=2 if args.needles == "2" else None
            )
        except PlanningError as exc:  # the single-needle plan still stands
            sys.stderr.write(f"sacroplan: note: one needle planned ({exc})\n")
        else:
            plan = with_multi_needle(plan, multi)
    if args.out:
        out = Path(args.out)
        if not out.parent.exists():
            raise UserInputError(f"the folder of --out does not exist: {out.parent}")
        plan = save_plan(plan, out)
    data = plan.to_json()
    data["timings_s"] = {k: round(v, 3) for k, v in case.timings_s.items()}
    if args.json:
        _print_json(data)
    else:
        print(_format_plan(data))
    return EXIT_OK


def _format_plan(d: dict[str, Any]) -> str:
    from planning.plan import clearance_text

    les = d["lesion"]
    lines = [
        f"Lesion: {les['volume_ml']:.2f} mL, {les['max_diameter_mm']:.1f} mm, "
        f"Denis zone {les['denis_zone']}",
        "Needles evaluated: " + ", ".join(f"{k} {v}" for k, v in d["evaluated"].items()),
        "Best per approach:",
    ]
    for key, entry in d["best_by_approach"].items():
        if "candidate" in entry:
            c = d["candidates"][entry["candidate"]]
            cl = c["clearance_mm"]
            od, ex = c["needle_od_mm"], cl.get("exact", False)
            foramina = clearance_text(cl["foramina"], od, exact=ex)
            lines.append(
                f"  {key:<17} {c['side']:<6} foramina {foramina}, "
                f"canal {clearance_text(cl['canal'], od, exact=ex)},"
                f" bone ahead {c['tip_to_anterior_cortex_mm']} mm, {c['skin_to_target_mm']} mm"
                f" ({c['needle']})"
            )
        else:
            lines.append(f"  {key:<17} blocked: {'; '.join(entry['blocked_by'])}")
    sug = d["suggestion"]
    if sug:
        c = d["candidates"][sug["candidate"]]
        lines.append(f"Suggestion: {sug['approach']} ({c['side']}), needle {c['needle']}")
        lines.extend(f"  - {r}" for r in sug["reasons"])
        lines.append(f"  C-arm: {c['c_arm']['text']}")
    else:
        lines.append("Suggestion: none - no approach is feasible with these margins")
    if d.get("multi_needle"):
        lines.extend(_format_needles(d["multi_needle"]))
    cem = d["cement"]
    if cem:
        lines.append(
            f"Cement: {cem['suggested_ml']:.1f} mL (band {cem['band_ml'][0]:.1f}-"
            f"{cem['band_ml'][1]:.1f} mL, cap {cem['cap_ml']:.1f} mL), predicted filling "
            f"{100 * cem['predicted_filling']:.0f} %"
        )
    if d.get("rfa"):
        r = d["rfa"]
        lines.append(f"RFA: {r.get('n_ablations')} ablation(s), safety {r.get('safety')}")
    return "\n".join(lines)


def _format_needles(m: dict[str, Any]) -> list[str]:
    """The multi-needle decision: each needle's approach, side, clearances, cement and reach."""
    from planning.plan import clearance_text

    n = len(m["needles"])
    kind = {"single": "one needle", "bilateral": "bilateral", "tandem": "tandem"}[m["kind"]]
    lines = [
        f"Needles: {n} ({kind}) - cement {m['cement_total_ml']:.1f} mL reaches "
        f"{100 * m['coverage']:.0f} % of the {m['lesion_ml']:.1f} mL lesion "
        f"({100 * m['coverage'] / m['attainable'] if m['attainable'] else 0:.0f} % of what it "
        f"can fill), filling degree {100 * m['filling']:.0f} % (one needle: "
        f"{100 * m['coverage_single']:.0f} %, filling {100 * m['filling_single']:.0f} %)"
    ]
    for placed in m["needles"]:
        c = placed["candidate"]
        cl, od = c["clearance_mm"], c["needle_od_mm"]
        ex = cl.get("exact", False)
        ahead = c["tip_to_anterior_cortex_mm"]
        lines.append(
            f"  {placed['label']}: {c['approach']} ({c['side']}), {c['needle']}, foramina "
            f"{clearance_text(cl['foramina'], od, exact=ex)}, "
            f"canal {clearance_text(cl['canal'], od, exact=ex)}, "
            f"bone ahead {'-' if ahead is None else f'{ahead:.1f} mm'}, "
            f"{c['skin_to_target_mm']:.0f} mm skin to tip; cement {placed['cement_ml']:.2f} mL, "
            f"reaches {placed['reaches_ml']:.1f} mL of the lesion"
        )
    if m["tip_gap_mm"] is not None:
        lines.append(
            f"  tips {m['tip_gap_mm']:.1f} mm apart, needles at least {m['path_gap_mm']:.1f} mm "
            "apart along their paths"
        )
    lines.extend(f"  - {r}" for r in m["reasons"])
    return lines


def _load_plan_arg(path: str) -> Any:
    from planning.plan import load_plan

    return load_plan(Path(path))


def _cmd_report(args: argparse.Namespace) -> int:
    from app.report import write_report

    plan = _load_plan_arg(args.plan)
    out = write_report(
        plan,
        Path(args.out),
        anonymous=args.anonymous,
        study_path=args.study,
        draw_images=not args.no_images,
    )
    if args.json:
        _print_json({"report": str(out)})
    else:
        print(f"Report written: {out}")
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from planning.export import open_plan_study, write_label_map, write_markups
    from planning.plan import save_plan

    if not (args.markups or args.seg or args.labels or args.plan_out):
        raise UserInputError(
            "say what to export: --markups OUT.mrk.json, --seg OUT.dcm, --labels OUT.nii.gz "
            "and/or --plan-out OUT.json"
        )
    plan = _load_plan_arg(args.plan)
    written: dict[str, Any] = {}
    for option, value in (("--seg", args.seg), ("--labels", args.labels)):
        if value and not Path(value).parent.is_dir():
            raise UserInputError(f"the folder of {option} does not exist: {Path(value).parent}")
    if args.markups:
        written["markups"] = [str(p) for p in write_markups(plan, args.markups)]
    if args.seg or args.labels:
        if plan.lesion is None:
            raise UserInputError("the plan holds no lesion to export (--seg, --labels)")
        study = open_plan_study(plan, study=args.study, anatomy=bool(args.labels))
        if study.lesion_mask is None:
            raise UserInputError("the plan holds no lesion to export")
        if args.seg:
            written["seg"] = str(_write_seg(plan, study, Path(args.seg)))
        if args.labels:
            written["labels"] = str(write_label_map(study.labels, args.labels))
        written["notes"] = list(study.notes)
    if args.plan_out:
        out = Path(args.plan_out)
        if not out.parent.is_dir():
            raise UserInputError(f"the folder of --plan-out does not exist: {out.parent}")
        save_plan(plan, out, stamp=False)
        written["plan"] = str(out)
    if args.json:
        _print_json(written)
    else:
        for key, value in written.items():
            if key == "notes":
                for note in value:
                    print(f"Note: {note}")
            else:
                print(f"{key:<8} {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_OK


def _write_seg(plan: Any, study: Any, out: Path) -> Path:
    from imaging.seg import read_source_series, write_lesion_seg

    paths = study.image.meta.get("source_paths") or []
    source = read_source_series(list(paths))
    return write_lesion_seg(study.lesion_mask, source, out, software_version=plan.software_version)


def _cmd_anonymize(args: argparse.Namespace) -> int:
    from imaging.anonymize import anonymize_folder

    result = anonymize_folder(Path(args.in_dir), Path(args.out_dir))
    if args.json:
        _print_json(result.to_json())
        return EXIT_OK
    print(
        f"Anonymised {len(result.written)} image(s) into {args.out_dir} "
        f"({result.uids_remapped} UIDs replaced, private elements removed)"
    )
    for path, reason in result.skipped:
        print(f"    skipped  {path}: {reason}")
    for warning in result.warnings:
        print(f"    warning  {warning}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# parser
def _lesion_sites() -> tuple[str, ...]:
    from imaging.phantom import LESION_SITES

    return tuple(LESION_SITES)


def _add_case_options(p: argparse.ArgumentParser, sites: tuple[str, ...]) -> None:
    p.add_argument("path", nargs="?", help="study folder, DICOMDIR or file")
    p.add_argument("--sample", action="store_true", help="use the built-in synthetic sample")
    p.add_argument("--series", help="series UID (or a unique prefix) when the study has several")
    p.add_argument("--seed", help="a point inside the lesion, X,Y,Z in LPS mm")
    p.add_argument("--lesion", default="left_ala_s1", choices=sites, help="sample lesion site")
    p.add_argument("--modality", default="ct", choices=("ct", "mr"), help="sample modality")
    p.add_argument("--spacing", default="1,1,1", help="sample voxel size X,Y,Z in mm")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sacroplan`` with every sub-command."""
    parser = _Parser(
        prog="sacroplan",
        description="Planning workstation for percutaneous sacroplasty (planning aid only).",
        epilog="'sacroplan --sample [--lesion SITE] [--screenshot FILE.png]' opens the "
        "workstation on the built-in sample and plans it (without a display: the plan in "
        "text); 'sacroplan gui --help' lists the workstation's options.",
    )
    parser.add_argument("--version", action="version", version=f"sacroplan {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("info", help="list the image series in a folder or file")
    p.add_argument("path", help="DICOM folder, DICOMDIR, DICOM file, or NIfTI/NRRD/MHA file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    sites = _lesion_sites()
    p = sub.add_parser("phantom", help="write the synthetic sample as DICOM with its truth")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--lesion", default="left_ala_s1", choices=sites)
    p.add_argument("--modality", default="ct", choices=("ct", "mr"))
    p.add_argument("--spacing", default="1,1,1", help="voxel size X,Y,Z in mm")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("segment", help="find the anatomy and grow the lesion from a seed point")
    _add_case_options(p, sites)
    p.add_argument("--mode", default="auto", choices=("auto", "lytic", "sclerotic", "mr"))
    p.add_argument("--band", help="fixed value band LO,HI (HU on CT) instead of the adaptive one")
    p.add_argument("--out-labels", help="write the label image (.nii.gz) on the study grid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("plan", help="plan needle trajectories for the lesion at a seed point")
    _add_case_options(p, sites)
    p.add_argument("--needle", help="needle id (default: the shortest that reaches)")
    p.add_argument("--rfa", action="store_true", help="plan radiofrequency ablation too")
    p.add_argument("--margin-mm", type=float, help="foramen and canal margin, mm (default 2)")
    p.add_argument(
        "--needles",
        default="auto",
        choices=("auto", "1", "2"),
        help="needles for the lesion: auto (for a lesion over 3 cm, a second one when one "
        "cannot fill it), 1 or 2",
    )
    p.add_argument("--out", help="save the plan (JSON)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser(
        "fuse", help="register an MR to the CT of the same patient (and map its lesion)"
    )
    p.add_argument("ct", help="the CT study (folder, DICOMDIR or file)")
    p.add_argument("mr", help="the MR study of the same patient")
    p.add_argument("--ct-series", help="series UID in the CT folder")
    p.add_argument("--mr-series", help="series UID in the MR folder")
    p.add_argument("--seed", help="a point in the lesion on the MR (LPS mm): segment and map it")
    p.add_argument("--out-transform", help="write the CT -> MR transform (.json or ITK .tfm)")
    p.add_argument("--out-labels", help="write the lesion mapped onto the CT grid (.nii.gz)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_fuse)

    p = sub.add_parser("demo", help="generate the sample, read it back and summarise it")
    p.add_argument("--lesion", default="left_ala_s1", choices=sites)
    p.add_argument("--modality", default="ct", choices=("ct", "mr"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("report", help="write the plan report (PDF or HTML)")
    p.add_argument("plan", help="plan file (.json) written by 'sacroplan plan --out'")
    p.add_argument("--out", required=True, help="report file: .pdf or .html")
    p.add_argument("--anonymous", action="store_true", help="leave the patient identifiers out")
    p.add_argument("--study", help="the study folder, when it is no longer where the plan says")
    p.add_argument("--no-images", action="store_true", help="do not open the study: no pictures")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("export", help="export the plan: Slicer markups, DICOM SEG, label map")
    p.add_argument("plan", help="plan file (.json)")
    p.add_argument("--markups", help="chosen trajectories as 3D Slicer line markups (.mrk.json)")
    p.add_argument("--seg", help="the lesion as DICOM SEG referencing the study (.dcm)")
    p.add_argument("--labels", help="lesion and anatomy label map on the study grid (.nii.gz)")
    p.add_argument("--plan-out", help="a copy of the plan JSON")
    p.add_argument("--study", help="the study folder, when it is no longer where the plan says")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("anonymize", help="anonymised copy of a DICOM study (PS3.15 basic profile)")
    p.add_argument("in_dir", help="folder with the study (only read)")
    p.add_argument("out_dir", help="new or empty folder for the anonymised copy")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_anonymize)

    from app.gui.main import add_gui_arguments, run_parsed

    p = sub.add_parser("gui", help="open the planning workstation")
    add_gui_arguments(p, sites)
    p.set_defaults(func=run_parsed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sacroplan`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    # The main command, ``sacroplan --sample [--lesion SITE] [--screenshot FILE]``, is the
    # workstation run through the whole workflow (``sacroplan gui --auto``).
    workstation = ("--sample", "--lesion", "--screenshot", "--teaching", "--layout")
    if argv and argv[0].split("=", 1)[0] in workstation:
        argv = ["gui", "--auto", "--main-command", *argv]
    parser = build_parser()
    try:
        args = parser.parse_args(_join_point_values(argv))
        func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return EXIT_OK
        return func(args)
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except SacroplanError as exc:
        sys.stderr.write(f"sacroplan: error: {exc}\n")
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and closed early
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("sacroplan: interrupted\n")
        return 130
    except Exception as exc:  # last resort: one line here, the traceback in the log
        log.exception("unexpected failure running %s", argv)
        sys.stderr.write(
            f"sacroplan: internal error: {type(exc).__name__}: {exc} "
            f"(details in {log_file_path()})\n"
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
