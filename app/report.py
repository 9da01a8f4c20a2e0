"""The plan report: one document a radiologist can file, print or show, as PDF or HTML.

Sections: the planning-aid notice, the case (identifiers unless anonymous), the lesion with
its metrics and eligibility flags, the suggestion and its reasons, the needles (each needle
of a multi-needle plan with its clearances, cement share and the coverage), the needle, the C-arm
angles in words, the cement volume with its band, cap and predicted filling, the RFA plan,
the pictures (axial and sagittal slices through the needle tip with the anatomy outlines and
the chosen needle, a 3D view and the bull's-eye view), the simulated fluoroscopy (DRRs of the
AP, lateral and each needle's bull's-eye view with the plan projected on top:
:mod:`app.report_fluoro`), the best candidate of every approach
with its clearances and the reasons, the clearance along the needle depth, the evidence base
(Tian et al., AJNR 2022), and the software version and date.

One HTML body serves both outputs: the ``.html`` file is self-contained (pictures as
``data:`` URIs); the ``.pdf`` is laid out by Qt's own rich-text engine (``QTextDocument``)
and written by ``QPdfWriter``. Qt needs an application object: an existing one is used (the
workstation), otherwise one is made, on the ``offscreen`` platform when there is no display.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imaging.atomic import atomic_path, atomic_write_text
from imaging.errors import SacroplanError
from planning.plan import Candidate, Plan, clearance_text, software_version

if TYPE_CHECKING:
    from app.report_fluoro import FluoroFigures

log = logging.getLogger("sacroplan.report")

NOTICE = (
    "Planning aid — verify clinically. sacroplan suggests; the operator decides. Every "
    "distance is computed from the images and segmentations shown and must be checked on "
    "the patient's images and under imaging during the procedure."
)
CITATION = (
    "Tian QH, et al. Percutaneous sacroplasty with or without radiofrequency ablation for "
    "the treatment of painful sacral metastases. AJNR Am J Neuroradiol 2022;43:1222–1227."
)
#: Order and captions of the pictures.
IMAGE_CAPTIONS: dict[str, str] = {
    "axial": "Axial slice through the needle tip (radiological view: patient's right on the "
    "left). Outlines: sacrum yellow, ilia tan, foramina cyan, canal violet, lesion red; the "
    "needle in green at its real diameter (solid within 3 mm of the slice; a second needle in "
    "orange, numbered at its tip).",
    "sagittal": "Sagittal slice through the needle tip (anterior on the left, head up).",
    "view3d": "3D view from behind the patient: sacrum and ilia (translucent), foramina, canal, "
    "lesion and the needle(s).",
    "bullseye": "Bull's-eye view: looking down the needle (needle 1) from the skin entry, as the "
    "C-arm sees it when the needle projects as a dot.",
}
#: Section titles in order: the decisions first, then the pictures and the evidence.
SECTIONS: tuple[str, ...] = (
    "Case",
    "Lesion",
    "Suggestion",
    "Needles",
    "Needle",
    "C-arm angles",
    "Cement",
    "Radiofrequency ablation",
    "Images",
    "Simulated fluoroscopy",
    "Best candidate per approach",
    "Clearance along the needle",
    "Evidence base",
    "About this report",
)
#: Sections that start a new page in the PDF (others: a heading never ends a page, see
#: :func:`keep_together`).
_NEW_PAGE: tuple[str, ...] = ()
#: Paragraphs of at most this many lines are not split across two pages.
_KEEP_LINES = 6

_CSS = """
body { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 9.5pt; color: #111; }
h1 { font-size: 16pt; margin: 0 0 4px 0; }
h2 { font-size: 12pt; margin: 14px 0 4px 0; color: #17365d; border-bottom: 1px solid #17365d; }
table.grid { border-collapse: collapse; }
table.grid td, table.grid th { border: 1px solid #999; padding: 2px 4px; vertical-align: top; }
table.grid th { background: #dde5ef; text-align: left; }
table.tight { font-size: 8pt; }
td.k { color: #444; padding-right: 10px; }
.notice { background: #fff1c7; border: 1px solid #c58a00; padding: 6px; font-weight: bold; }
.warn { color: #9c2a00; }
.small { font-size: 8pt; color: #444; }
.ok { color: #11661a; }
"""


# -- text helpers ------------------------------------------------------------------------------
def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _mm(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f} mm"


def _pt(p: object) -> str:
    if p is None:
        return "–"
    return "(" + ", ".join(f"{float(v):.1f}" for v in p) + ") mm"  # type: ignore[union-attr]


def _approach_label(key: str | None) -> str:
    if key is None:
        return "manual"
    try:
        from planning.approaches import approach_registry

        return approach_registry()[key].label
    except (KeyError, SacroplanError):
        return key


def _needle_text(needle_id: str) -> tuple[str, Any]:
    from planning.needles import get_needle

    try:
        n = get_needle(needle_id)
    except SacroplanError:
        return needle_id, None
    return n.label, n


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td class='k'>{_e(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


# -- sections ----------------------------------------------------------------------------------
def _case_section(plan: Plan, *, anonymous: bool) -> str:
    c = plan.case
    rows: list[tuple[str, str]] = []
    if anonymous:
        rows.append(("Patient", "anonymised (identifiers left out of this report)"))
    else:
        rows += [
            ("Patient", _e(c.patient_name or "–")),
            ("Patient ID", _e(c.patient_id or "–")),
            ("Study date", _e(c.study_date or "–")),
            ("Series UID", _e(c.series_uid or "–")),
            ("Study", _e(c.source_path or "–")),
        ]
    rows.append(("Modality", _e(c.modality or "–")))
    if c.grid:
        g = c.grid
        size = " × ".join(str(v) for v in g["size"])
        spacing = " × ".join(f"{v:.3g}" for v in g["spacing_mm"])
        rows.append(("Voxels", f"{size} ({spacing} mm)"))
    if not anonymous:
        rows.append(("Plan created", _e(plan.created)))
    rows.append(("Plan modified", _e(plan.modified if not anonymous else plan.modified[:10])))
    return _kv(rows)


_FLAG_TEXT = {
    "diameter_over_30mm": "largest diameter over 30 mm (the cohort treated lesions ≤ 3 cm)",
    "touches_foramen": "the lesion touches a foramen",
    "touches_canal": "the lesion touches the spinal canal",
    "foraminal_erosion": "foraminal erosion (excluded from the cohort): leakage risk to the "
    "nerve root",
    "epidural_extension": "epidural extension (excluded from the cohort)",
}


def _lesion_section(plan: Plan) -> str:
    les = plan.lesion
    if les is None:
        return "<p>No lesion in this plan.</p>"
    zones = les.get("zones_ml") or {}
    zone_text = ", ".join(f"zone {k} {float(v):.2f} mL" for k, v in sorted(zones.items()))
    rows = [
        ("Volume", f"{les['volume_ml']:.2f} mL"),
        ("Largest diameter", _mm(les["max_diameter_mm"])),
        ("Denis zone (centroid)", _e(les.get("denis_zone") or "unknown")),
        ("Most medial zone touched", _e(les.get("most_medial_zone") or "–")),
        ("Volume per zone", _e(zone_text or "–")),
        ("Centroid", _pt(les.get("centroid_lps"))),
        ("Seed", _pt(les.get("seed_lps"))),
        ("Segmentation", _e(f"{les.get('mode') or '?'} mode" + _band(les.get("band")))),
    ]
    flags = les.get("flags") or {}
    raised: list[str] = []
    if isinstance(flags, dict):
        for key, value in flags.items():
            if key == "cortical_breach" and value:
                raised.append("cortical breach: " + ", ".join(str(v) for v in value))
            elif value is True:
                raised.append(_FLAG_TEXT.get(key, key.replace("_", " ")))
    elif isinstance(flags, list):
        raised = [str(f) for f in flags]
    flag_html = (
        "<br>".join(f"<span class='warn'>⚠ {_e(f)}</span>" for f in raised)
        if raised
        else "<span class='ok'>none (within the cohort's eligibility criteria)</span>"
    )
    rows.append(("Eligibility flags", flag_html))
    return _kv(rows)


def _band(band: object) -> str:
    if isinstance(band, list | tuple) and len(band) == 2:
        return f", value band {float(band[0]):.0f} to {float(band[1]):.0f}"
    return ""


def _candidates_section(plan: Plan) -> str:
    head = (
        "<tr><th>Approach (side)</th><th>Needle</th><th>Skin to tip / in bone</th>"
        "<th>Nearest foramen</th><th>Canal</th><th>Bone ahead of tip</th>"
        "<th>Status, score and reasons</th></tr>"
    )
    rows = []
    suggested = plan.suggestion.candidate if plan.suggestion else None
    for key, entry in plan.best_by_approach.items():
        label = _approach_label(key)
        if "candidate" in entry and entry["candidate"] is not None:
            i = entry["candidate"]
            c = plan.candidates[i]
            status = "suggested" if i == suggested else ("feasible" if c.feasible else "blocked")
            reasons = "; ".join(c.violations)
            rows.append(_candidate_row(label, c, status, reasons))
        else:
            reasons = "; ".join(entry.get("blocked_by", []))
            rows.append(
                f"<tr><td>{_e(label)}</td>"
                + "<td>–</td>" * 5
                + f"<td class='warn'>blocked: {_e(reasons)}</td></tr>"
            )
    if not rows:
        return "<p>No candidate trajectories in this plan.</p>"
    counts = ", ".join(f"{_approach_label(k)} {v}" for k, v in plan.evaluated.items())
    return (
        f"<table class='grid tight' width='100%'>{head}{''.join(rows)}</table>"
        f"<p class='small'>Trajectories evaluated: {_e(counts or '–')}. Clearances are from "
        "the needle's surface (its outer radius subtracted) to each structure's segmented "
        "surface, the smallest along the path; ≥ only where a value is the search's cap (not "
        "measured exactly: the structure is at least that far). "
        f"Margins: foramina ≥ {plan.margins.foramen_mm:g} mm, canal ≥ "
        f"{plan.margins.canal_mm:g} mm, tip ≥ {plan.margins.anterior_cortex_mm:g} mm inside "
        "the anterior cortex.</p>"
    )


def _candidate_row(label: str, c: Candidate, status: str, reasons: str) -> str:
    by = c.clearance_mm.by_foramen
    od, ex = c.needle_od_mm, c.clearance_mm.exact
    nearest = "–"
    if by:
        name = min(by, key=lambda k: by[k])
        nearest = f"{clearance_text(by[name], od, exact=ex)} ({name})"
    elif c.clearance_mm.foramina is not None:
        nearest = clearance_text(c.clearance_mm.foramina, od, exact=ex)
    _, needle = _needle_text(c.needle)
    short = c.needle if needle is None else f"{needle.gauge}G {needle.length_mm / 10:g} cm"
    cls = "ok" if status in ("suggested", "feasible") else "warn"
    parts = [status]
    if c.score is not None:
        parts.append(f"score {c.score:.2f}")
    parts.append("crosses the SI joint" if c.si_joint_crossed else "SI joint not crossed")
    text = ", ".join(parts) + (f": {reasons}" if reasons else "")
    exits = " (exits anteriorly)" if c.exits_anterior else ""
    return (
        f"<tr><td>{_e(label)} ({_e(c.side or '–')})</td><td>{_e(short)}</td>"
        f"<td>{c.skin_to_target_mm:.0f} / {c.in_bone_mm:.0f} mm</td>"
        f"<td>{_e(nearest)}</td><td>{_e(clearance_text(c.clearance_mm.canal, od, exact=ex))}</td>"
        f"<td>{_mm(c.tip_to_anterior_cortex_mm)}{exits}</td>"
        f"<td class='{cls}'>{_e(text)}</td></tr>"
    )


def _suggestion_section(plan: Plan) -> str:
    s = plan.suggestion
    if s is None or s.approach is None:
        return (
            "<p class='warn'>No approach is feasible with these margins; the table above says "
            "which constraint blocks each one.</p>"
        )
    items = "".join(f"<li>{_e(r)}</li>" for r in s.reasons)
    more = ""
    m = plan.multi_needle
    if m is not None and len(m.needles) > 1:
        more = (
            f"<p class='warn'>{len(m.needles)} needles are planned for this lesion (see "
            "Needles): they are the needles described below and drawn in the pictures.</p>"
        )
    return f"<p><b>{_e(_approach_label(s.approach))}</b></p><ul>{items}</ul>{more}"


def _chosen(plan: Plan) -> tuple[Any, Candidate | None]:
    t = plan.trajectories[0] if plan.trajectories else None
    if t is None:
        return None, None
    return t, _candidate_of(plan, t)


def _candidate_of(plan: Plan, t: Any) -> Candidate | None:
    """The evaluated candidate of a chosen trajectory (the plan's or a multi-needle one)."""
    placed = plan.multi_needle.needles if plan.multi_needle is not None else ()
    for c in (*plan.candidates, *(n.candidate for n in placed)):
        if c.skin_entry_lps == t.entry_lps and c.target_lps == t.target_lps:
            return c
    return None


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _needles_section(plan: Plan) -> str:
    m = plan.multi_needle
    if m is None:
        n = len(plan.trajectories)
        return (
            f"<p>{n} chosen needle{'s' if n != 1 else ''} (see below); the number of needles "
            "was not decided by sacroplan for this plan.</p>"
        )
    kind = {"single": "one needle", "bilateral": "two bilateral needles (one from each side)"}
    kind["tandem"] = "two tandem needles (both from one side)"
    relative = m.coverage / m.attainable if m.attainable > 0 else 0.0
    rows = [
        ("Decision", f"<b>{_e(kind.get(m.kind, m.kind))}</b>"),
        (
            "Cement",
            f"{m.cement_total_ml:.1f} mL in all"
            + (
                ", shared: " + ", ".join(f"{_e(n.label)} {n.cement_ml:.2f} mL" for n in m.needles)
                if len(m.needles) > 1
                else ""
            ),
        ),
        (
            "Lesion reached by the cement",
            f"{_pct(m.coverage)} of the {m.lesion_ml:.1f} mL lesion ({_pct(relative)} of what "
            f"{m.cement_total_ml:.1f} mL can fill at best); one needle: "
            f"{_pct(m.coverage_single)}",
        ),
        (
            "Filling degree (cement / lesion diameter)",
            f"{_pct(m.filling)} of its {m.lesion_max_diameter_mm:.0f} mm largest diameter; one "
            f"needle: {_pct(m.filling_single)}",
        ),
    ]
    if m.tip_gap_mm is not None:
        rows.append(
            (
                "Between the needles",
                f"tips {m.tip_gap_mm:.1f} mm apart, axes at least {_mm(m.path_gap_mm)} apart "
                f"along their whole length (limits {m.options.min_tip_gap_mm:g} and "
                f"{m.options.min_path_gap_mm:g} mm)",
            )
        )
    head = (
        "<tr><th width='9%'>Needle</th><th width='16%'>Approach (side)</th>"
        "<th width='9%'>Needle type</th><th width='10%'>Skin to tip / in bone</th>"
        "<th width='11%'>Nearest foramen</th><th width='8%'>Canal</th>"
        "<th width='10%'>Bone ahead of tip</th><th width='10%'>Cement</th>"
        "<th width='17%'>Lesion reached by its cement</th></tr>"
    )
    body = []
    for n in m.needles:
        c = n.candidate
        by = c.clearance_mm.by_foramen
        od, ex = c.needle_od_mm, c.clearance_mm.exact
        nearest = clearance_text(c.clearance_mm.foramina, od, exact=ex)
        if by:
            name = min(by, key=lambda k: by[k])
            nearest = f"{clearance_text(by[name], od, exact=ex)} ({name})"
        _, needle = _needle_text(c.needle)
        short = c.needle if needle is None else f"{needle.gauge}G {needle.length_mm / 10:g} cm"
        status = "" if c.feasible else " <span class='warn'>(blocked)</span>"
        body.append(
            f"<tr><td><b>{_e(n.label)}</b>{status}</td>"
            f"<td>{_e(_approach_label(c.approach))} ({_e(c.side or '–')})</td>"
            f"<td>{_e(short)}</td>"
            f"<td>{c.skin_to_target_mm:.0f} / {c.in_bone_mm:.0f} mm</td>"
            f"<td>{_e(nearest)}</td>"
            f"<td>{_e(clearance_text(c.clearance_mm.canal, od, exact=ex))}</td>"
            f"<td>{_mm(c.tip_to_anterior_cortex_mm)}</td>"
            f"<td>{n.cement_ml:.2f} mL</td><td>{n.reaches_ml:.1f} mL</td></tr>"
        )
    points = "".join(
        f"<tr><td><b>{_e(n.label)}</b></td><td>{_pt(n.candidate.skin_entry_lps)}</td>"
        f"<td>{_pt(n.candidate.target_lps)}</td>"
        f"<td>{_e(n.candidate.c_arm.text if n.candidate.c_arm is not None else '–')}</td></tr>"
        for n in m.needles
    )
    points = (
        "<tr><th>Needle</th><th>Skin entry (LPS)</th><th>Tip (LPS)</th>"
        f"<th>Bull's-eye view (C-arm)</th></tr>{points}"
    )
    reasons = "".join(f"<li>{_e(r)}</li>" for r in m.reasons)
    return (
        _kv(rows)
        + f"<table class='grid tight' width='100%'>{head}{''.join(body)}</table>"
        + f"<p></p><table class='grid tight' width='100%'>{points}</table>"
        + f"<ul>{reasons}</ul>"
        + "<p class='small'>Coverage and filling come from a geometric model of the cement "
        "spread (each needle's cement fills the nearest lesion and sacral bone around its tip), "
        "not from a simulation of cement flow; the cohort (Tian et al., AJNR 2022) averaged "
        "1.38 needles per lesion. Clearances are measured from each needle's surface to each "
        "structure's segmented surface, the smallest along the path; ≥ only where a value is "
        "the search's cap (not measured exactly).</p>"
    )


def _needle_section(plan: Plan) -> str:
    t, c = _chosen(plan)
    if t is None:
        return "<p>No trajectory chosen.</p>"
    import numpy as np

    label, needle = _needle_text(t.needle)
    length = float(np.linalg.norm(np.subtract(t.target_lps, t.entry_lps)))
    rows = [("Needle", _e(label))]
    if needle is not None:
        rows.append(
            (
                "Size",
                f"{needle.gauge}G, {needle.length_mm / 10:g} cm long, outer diameter "
                f"{needle.outer_diameter_mm:g} mm, working length "
                f"{needle.working_length_mm:.0f} mm",
            )
        )
    rows += [
        ("Approach", _e(f"{_approach_label(t.approach)} ({_source_text(plan, t, c)})")),
        ("Skin entry", _pt(t.entry_lps)),
        ("Bone entry", _pt(c.bone_entry_lps) if c is not None else "–"),
        ("Tip (target)", _pt(t.target_lps)),
        ("Skin to tip", _mm(length)),
    ]
    if len(plan.trajectories) > 1:
        rows.append(
            (
                "Further needles",
                f"{len(plan.trajectories) - 1} (all needles: see Needles above; this section "
                "describes needle 1)",
            )
        )
    return (
        _kv(rows) + "<p class='small'>Points are LPS millimetres (DICOM patient coordinates).</p>"
    )


def _source_text(plan: Plan, t: Any, c: Candidate | None) -> str:
    """Where the described needle came from: the suggestion, or needle 1 of a multi-needle plan.

    A multi-needle plan's needles all come from the multi-needle search; needle 1 is "the
    suggestion" only when it is the suggested candidate itself.
    """
    m = plan.multi_needle
    if m is None or len(m.needles) < 2:
        return t.source
    of = f"needle 1 of {len(m.needles)}"
    s = plan.suggestion
    if c is None or s is None or s.candidate is None or s.candidate >= len(plan.candidates):
        return of
    suggested = plan.candidates[s.candidate]
    same = c.skin_entry_lps == suggested.skin_entry_lps and c.target_lps == suggested.target_lps
    return f"suggested, {of}" if same else of


def _carm_section(plan: Plan) -> str:
    _, c = _chosen(plan)
    if c is None or c.c_arm is None:
        return "<p>No C-arm view (no chosen trajectory).</p>"
    v = c.c_arm
    lao = f"LAO {v.primary_deg:.0f}°" if v.primary_deg >= 0 else f"RAO {-v.primary_deg:.0f}°"
    cra = f"CRA {v.secondary_deg:.0f}°" if v.secondary_deg >= 0 else f"CAU {-v.secondary_deg:.0f}°"
    return _kv(
        [
            ("Bull's-eye view", f"<b>{_e(v.text)}</b>"),
            (
                "DICOM angles",
                f"primary {v.primary_deg:.1f}° ({lao}), secondary {v.secondary_deg:.1f}° ({cra})",
            ),
        ]
    )


def _cement_section(plan: Plan) -> str:
    cem = plan.cement
    if cem is None:
        return "<p>No cement suggestion in this plan.</p>"
    rows = [
        ("Suggested volume", f"<b>{cem.suggested_ml:.1f} mL</b>"),
        ("Band", f"{cem.band_ml[0]:.1f}–{cem.band_ml[1]:.1f} mL"),
        ("Geometric cap", "–" if cem.cap_ml is None else f"{cem.cap_ml:.1f} mL"),
        (
            "Predicted filling degree",
            "–" if cem.predicted_filling is None else f"{100 * cem.predicted_filling:.0f} %",
        ),
        ("Ratio to lesion volume", f"{cem.ratio:.2f}"),
    ]
    warn = "".join(f"<p class='warn'>⚠ {_e(w)}</p>" for w in cem.warnings)
    return _kv(rows) + f"<p class='small'>{_e(cem.basis)}</p>" + warn


def _rfa_section(plan: Plan) -> str:
    r = plan.rfa
    if r is None:
        return "<p>No ablation planned (PSP alone).</p>"
    safety = {"allowed": "ok", "warn": "warn", "advise_psp_alone": "warn"}.get(r.safety, "")
    rows = [
        ("Device", _e(r.device)),
        ("Ablation zone", f"{r.zone_length_mm:.0f} mm long × {r.zone_diameter_mm:.0f} mm wide"),
        (
            "Lesion along / across the track",
            f"{r.lesion_extent_mm:.0f} mm / {r.lesion_width_mm:.0f} mm",
        ),
        ("Overlapping ablations", f"{r.n_ablations} on {r.n_tracks} track(s)"),
        (
            "Zone edge to foramen / canal",
            f"{_mm(r.zone_edge_to_foramen_mm)} / {_mm(r.zone_edge_to_canal_mm)}",
        ),
        (
            "Thermal safety",
            f"<span class='{safety}'><b>{_e(r.safety.replace('_', ' '))}"
            f"</b>: {_e(r.safety_reason)}</span>",
        ),
    ]
    warn = "".join(f"<p class='warn'>⚠ {_e(w)}</p>" for w in r.warnings)
    return _kv(rows) + warn + f"<p class='small'>{_e(r.evidence)}</p>"


def _evidence_section() -> str:
    rows = (
        "<tr><th>Group</th><th>Patients</th><th>Lesion volume</th><th>Cement volume</th>"
        "<th>Filling degree</th><th>Leakage</th></tr>"
        "<tr><td>PSP + RFA</td><td>51</td><td>7.22 ± 1.74 mL</td>"
        "<td>6.42 ± 1.73 mL (3–8)</td><td>84.8 %</td><td>17 % of lesions</td></tr>"
        "<tr><td>PSP alone</td><td>75</td><td>6.69 ± 1.96 mL</td>"
        "<td>5.31 ± 1.52 mL (2–8)</td><td>76.2 %</td><td>19 % of lesions</td></tr>"
    )
    return (
        "<p>Reference cohort: 126 patients, 162 sacral metastases ≤ 3 cm, treated by "
        "percutaneous sacroplasty (PSP) with or without radiofrequency ablation (RFA). Lesions "
        "with neuroforaminal erosion or epidural tumour were excluded. Approaches used: "
        "posterior 60, interpedicular 39, anterior-oblique 32, transiliac 16. Filling degree = "
        "largest cement diameter / largest lesion diameter. RFA: 17G electrode, 1–3 cm active "
        "tip, 30 W, 70–90 °C, on average 1.89 overlapping ablations (7.5 min).</p>"
        f"<table class='grid'>{rows}</table>"
        f"<p class='small'>{_e(CITATION)} Cement volumes suggested here are the cohort-mean "
        "ratios applied to this lesion, not a model fitted to individual lesions.</p>"
    )


def _about_section(plan: Plan, notes: list[str]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("Report made", now),
        ("sacroplan version", _e(software_version())),
        ("Plan written by", _e(f"sacroplan {plan.software_version}")),
    ]
    note_html = "".join(f"<p class='warn'>Note: {_e(n)}</p>" for n in notes)
    return _kv(rows) + note_html + f"<p class='notice'>{_e(NOTICE)}</p>"


def _images_section(images: Mapping[str, bytes], src: Callable[[str], str]) -> str:
    cells = []
    for key, caption in IMAGE_CAPTIONS.items():
        if key in images:
            cells.append(
                f"<td width='50%' valign='top'><img src='{src(key)}' width='330'>"
                f"<br><span class='small'>{_e(caption)}</span></td>"
            )
    if not cells:
        return "<p class='warn'>No pictures (see the notes at the end).</p>"
    rows = "".join("<tr>" + "".join(cells[i : i + 2]) + "</tr>" for i in range(0, len(cells), 2))
    return f"<table width='100%' cellspacing='6'>{rows}</table>"


def _fluoro_section(
    images: Mapping[str, bytes], src: Callable[[str], str], fluoro: FluoroFigures | None
) -> str:
    from app.report_fluoro import FLUORO_PREFIX

    keys = [k for k in images if k.startswith(FLUORO_PREFIX)]
    if not keys:
        why = (
            fluoro.missing
            if fluoro is not None and fluoro.missing
            else "the study was not opened for it."
        )
        return f"<p>No simulated fluoroscopy: {_e(why)}</p>"
    captions = fluoro.captions if fluoro is not None else {}
    cells = [
        f"<td width='50%' valign='top'><img src='{src(k)}' width='330'><br><span "
        f"class='small'>{_e(captions.get(k, k[len(FLUORO_PREFIX) :].replace('_', ' ')))}"
        "</span></td>"
        for k in keys
    ]
    rows = "".join("<tr>" + "".join(cells[i : i + 2]) + "</tr>" for i in range(0, len(cells), 2))
    about = fluoro.about if fluoro is not None else ""
    about = f"<p class='small'>{_e(about)}</p>" if about else ""
    return f"<table width='100%' cellspacing='6'>{rows}</table>{about}"


def report_html(
    plan: Plan,
    *,
    images: Mapping[str, bytes] | None = None,
    anonymous: bool = False,
    notes: list[str] | None = None,
    src: Callable[[str], str] | None = None,
    fluoro: FluoroFigures | None = None,
) -> str:
    """The report as one HTML document.

    Parameters
    ----------
    plan : Plan
    images : mapping of str to bytes, optional
        PNG pictures by key (``axial``, ``sagittal``, ``view3d``, ``bullseye``,
        ``clearance``).
    anonymous : bool
        Leave out the patient's identifiers, the study path and UIDs.
    notes : list of str
        Plain notes shown at the end (what could not be drawn, and why).
    src : callable, optional
        How an image key becomes an ``<img src>``; default: a ``data:`` URI.
    fluoro : FluoroFigures, optional
        Captions of the simulated fluoroscopy pictures (``drr_*`` keys of ``images``) and
        how they were made, or why there are none.
    """
    images = dict(images or {})
    notes = list(notes or [])

    def data_uri(key: str) -> str:
        return "data:image/png;base64," + base64.b64encode(images[key]).decode("ascii")

    src = src or data_uri
    clearance = (
        f"<p><img src='{src('clearance')}' width='660'></p>"
        if "clearance" in images
        else "<p>No clearance plot (no chosen needle, or the anatomy could not be found).</p>"
    )
    body = {
        "Case": _case_section(plan, anonymous=anonymous),
        "Lesion": _lesion_section(plan),
        "Images": _images_section(images, src),
        "Simulated fluoroscopy": _fluoro_section(images, src, fluoro),
        "Best candidate per approach": _candidates_section(plan),
        "Suggestion": _suggestion_section(plan),
        "Needles": _needles_section(plan),
        "Needle": _needle_section(plan),
        "C-arm angles": _carm_section(plan),
        "Cement": _cement_section(plan),
        "Radiofrequency ablation": _rfa_section(plan),
        "Clearance along the needle": clearance,
        "Evidence base": _evidence_section(),
        "About this report": _about_section(plan, notes),
    }
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>sacroplan plan report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Percutaneous sacroplasty plan</h1>",
        f"<p class='notice'>{_e(NOTICE)}</p>",
    ]
    for title in SECTIONS:
        style = " style='page-break-before: always'" if title in _NEW_PAGE else ""
        parts.append(f"<h2{style}>{_e(title)}</h2>{body[title]}")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- images and files --------------------------------------------------------------------------
def _images_for(
    plan: Plan,
    *,
    case: Any,
    study_path: str | os.PathLike[str] | None,
    notes: list[str],
    standard: bool = True,
    fluoro: bool = True,
) -> tuple[dict[str, bytes], FluoroFigures | None]:
    """Open the plan's study (or use the workstation's case) and draw the pictures asked for.

    ``standard``: the slices, 3D, bull's-eye and clearance pictures; ``fluoro``: the
    simulated fluoroscopy (its pictures are returned with the others, ``drr_*`` keys).
    """
    from app.report_fluoro import FluoroFigures, render_fluoro_figures
    from app.report_images import render_report_images
    from planning.export import PlanStudy, StudyNotFoundError, open_plan_study

    try:
        if case is not None:
            study = _study_from_case(plan, case, PlanStudy)
        else:
            study = open_plan_study(plan, study=study_path)
    except StudyNotFoundError as exc:
        if standard:
            notes.append(f"the pictures are missing: {exc}")
        missing = FluoroFigures(missing=f"the study could not be opened ({exc}).")
        return {}, missing if fluoro else None
    notes.extend(study.notes)
    out: dict[str, bytes] = {}
    if standard:
        try:
            out = render_report_images(plan, study)
        except Exception as exc:  # drawing must never cost the user the report itself
            log.exception("report pictures failed")
            notes.append(f"the pictures could not be drawn ({type(exc).__name__}: {exc})")
    figures = None
    if fluoro:
        try:
            figures = render_fluoro_figures(plan, study)
        except Exception as exc:  # as above: the report is written without them
            log.exception("simulated fluoroscopy for the report failed")
            figures = FluoroFigures(
                missing=f"the radiographs could not be drawn ({type(exc).__name__}: {exc})."
            )
        out.update(figures.images)
    return out, figures


def fluoro_figures_for(plan: Plan, case: Any) -> FluoroFigures:
    """The report's simulated fluoroscopy for the workstation's open case (headless numpy and
    numba only: safe on a worker thread). A failure is described in the result, not raised."""
    from app.report_fluoro import FluoroFigures, render_fluoro_figures
    from planning.export import PlanStudy

    try:
        return render_fluoro_figures(plan, _study_from_case(plan, case, PlanStudy))
    except Exception as exc:  # the report is written without them
        log.exception("simulated fluoroscopy for the report failed")
        return FluoroFigures(
            missing=f"the radiographs could not be drawn ({type(exc).__name__}: {exc})."
        )


def _study_from_case(plan: Plan, case: Any, cls: Any) -> Any:
    import numpy as np

    from imaging.labels import Label
    from planning.plan import decode_mask

    mask = None
    if case.lesion is not None:
        mask = case.lesion.mask
    elif plan.lesion is not None and plan.lesion.get("mask") is not None:
        arr = decode_mask(plan.lesion["mask"])
        if arr.shape == case.image.array.shape:
            mask = case.image.with_array(arr.astype(np.uint8), modality="LABEL")
    labels = case.label_map()
    if mask is not None:
        arr = labels.array.copy()
        arr[mask.array > 0] = Label.LESION
        labels = labels.with_array(arr, modality="LABEL")
    return cls(case=case, lesion_mask=mask, labels=labels, notes=[])


def ensure_qt_gui() -> Any:
    """The running Qt application, or a new one (``offscreen`` when there is no display).

    A new one is a ``QApplication`` (a ``QGuiApplication`` that widgets can use too), so
    the workstation can still open its windows later in the same process.
    """
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        return app
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    return QApplication(["sacroplan-report"])


def build_document(html_text: str, images: Mapping[str, bytes]) -> Any:
    """A ``QTextDocument`` of the report with the pictures registered as resources."""
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QImage, QTextDocument

    ensure_qt_gui()
    doc = QTextDocument()
    for key, png in images.items():
        image = QImage.fromData(png, "PNG")
        doc.addResource(QTextDocument.ResourceType.ImageResource, QUrl(f"img:{key}"), image)
    doc.setHtml(html_text)
    return doc


def _print_layout(doc: Any, writer: Any) -> Any:
    """A copy of ``doc`` paginated as ``QTextDocument.print_`` lays it out on ``writer``.

    ``print_`` clones a document without a page size, lays the clone out on the printer with
    2 cm margins (in the screen's logical DPI, scaled to the device) and a page of the
    printer's size; the copy here is made the same way, so its page breaks are the PDF's.
    """
    from PySide6.QtCore import QSizeF
    from PySide6.QtGui import QGuiApplication

    screen = QGuiApplication.primaryScreen()
    dpi_x = round(screen.logicalDotsPerInchX()) if screen is not None else 100
    dpi_y = round(screen.logicalDotsPerInchY()) if screen is not None else 100
    probe = doc.clone()
    probe.documentLayout().setPaintDevice(writer)
    fmt = probe.rootFrame().frameFormat()
    fmt.setLeftMargin(int(2 / 2.54 * dpi_x))
    fmt.setRightMargin(int(2 / 2.54 * dpi_x))
    fmt.setTopMargin(int(2 / 2.54 * dpi_y))
    fmt.setBottomMargin(int(2 / 2.54 * dpi_y))
    probe.rootFrame().setFrameFormat(fmt)
    probe.setPageSize(QSizeF(writer.width(), writer.height()))
    return probe


def keep_together(doc: Any, writer: Any) -> int:
    """Page breaks so that no heading ends a page and no short paragraph is split.

    A section heading whose next line falls on the next page, and a top-level paragraph of at
    most :data:`_KEEP_LINES` lines that would be split, start a new page instead (Qt's rich
    text has no "keep with next"). Works on the layout ``print_`` makes for ``writer``.

    Returns
    -------
    int
        Page breaks added.
    """
    from PySide6.QtGui import QTextCursor, QTextFormat

    auto = QTextFormat.PageBreakFlag.PageBreak_Auto
    added = 0
    for _ in range(len(SECTIONS) + 8):  # each pass adds at most one break, then lays out again
        probe = _print_layout(doc, writer)
        layout = probe.documentLayout()
        page_h = float(writer.height())

        def page(y: float, page_h: float = page_h) -> int:
            return int(y // page_h)

        def line_tops(block: Any, layout: Any = layout) -> list[float]:
            top = layout.blockBoundingRect(block).top()
            lines = block.layout()
            return [top + lines.lineAt(i).y() for i in range(lines.lineCount())] or [top]

        move = None
        block = probe.firstBlock()
        while block.isValid() and move is None:
            fmt = block.blockFormat()
            top_level = block.textList() is None and probe.frameAt(block.position()) is (
                probe.rootFrame()
            )
            if fmt.pageBreakPolicy() == auto and page(line_tops(block)[0]) > 0:
                tops = line_tops(block)
                nxt = block.next()
                if fmt.headingLevel() > 0 and nxt.isValid():
                    if page(line_tops(nxt)[0]) > page(tops[-1]):
                        move = block.blockNumber()
                elif top_level and len(tops) <= _KEEP_LINES and page(tops[-1]) > page(tops[0]):
                    move = block.blockNumber()
            block = block.next()
        if move is None:
            break
        cursor = QTextCursor(doc.findBlockByNumber(move))
        fmt = cursor.blockFormat()
        fmt.setPageBreakPolicy(QTextFormat.PageBreakFlag.PageBreak_AlwaysBefore)
        cursor.setBlockFormat(fmt)
        added += 1
    return added


def write_pdf(html_text: str, images: Mapping[str, bytes], out_path: Path) -> None:
    """Lay out the report with Qt and write it as an A4 PDF (atomically)."""
    from PySide6.QtCore import QMarginsF
    from PySide6.QtGui import QPageLayout, QPageSize, QPdfWriter

    doc = build_document(html_text, images)
    with atomic_path(out_path) as tmp:
        writer = QPdfWriter(str(tmp))
        writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
        # what QTextDocument.print_ sets when no margins are set; it adds 2 cm of its own
        writer.setPageMargins(QMarginsF(2, 2, 2, 2), QPageLayout.Unit.Millimeter)
        writer.setResolution(150)
        writer.setTitle("sacroplan plan report")
        writer.setCreator(f"sacroplan {software_version()}")
        keep_together(doc, writer)
        doc.print_(writer)
        del writer  # finishes the file


def write_report(
    plan: Plan,
    out_path: str | os.PathLike[str],
    *,
    case: Any = None,
    anonymous: bool = False,
    images: Mapping[str, bytes] | None = None,
    study_path: str | os.PathLike[str] | None = None,
    draw_images: bool = True,
    fluoro: FluoroFigures | None = None,
) -> Path:
    """Write the plan report as PDF or HTML (chosen by the file's suffix).

    Parameters
    ----------
    plan : Plan
    out_path : path
        ``.pdf`` or ``.html``/``.htm``; its folder must exist.
    case : planning.case.Case, optional
        The workstation's open case (its image, anatomy and lesion are drawn); without it
        the plan's study is re-opened from ``study_path`` or the path the plan records.
    anonymous : bool
        Leave the patient's identifiers out.
    images : mapping of str to bytes, optional
        Pictures already rendered by the workstation (PNG bytes by key: ``axial``,
        ``sagittal``, ``view3d``, ``bullseye``, ``clearance``); missing keys are drawn here
        when the study is at hand.
    study_path : path, optional
        Where the study is now, when it has moved.
    draw_images : bool
        Draw the missing pictures from the study (False: only ``images`` are shown).
    fluoro : FluoroFigures, optional
        The simulated fluoroscopy already drawn (:func:`fluoro_figures_for`, e.g. on the
        workstation's worker thread): its pictures are used, none are drawn here.

    Returns
    -------
    Path

    Raises
    ------
    SacroplanError
        Unknown suffix, missing folder, or the file cannot be written; the plan names as
        its study something that is not it (a relative path, a file that is not a study, a
        study on another grid: :class:`~planning.export.StudyMismatchError`). A study that
        is no longer where the plan says is not an error: the report is written without
        pictures and says why.
    """
    out = Path(out_path)
    suffix = out.suffix.lower()
    if suffix not in (".pdf", ".html", ".htm"):
        raise SacroplanError(f"the report must be a .pdf or .html file, got {out.name!r}")
    if not out.parent.is_dir():
        raise SacroplanError(f"the folder of the report does not exist: {out.parent}")
    if out.is_dir():
        raise SacroplanError(f"{out} is a folder, not a file")
    from app.report_fluoro import FLUORO_PREFIX, FluoroFigures

    notes: list[str] = []
    pictures = dict(images or {})
    if fluoro is not None:
        pictures.update(fluoro.images)
    wanted = set(IMAGE_CAPTIONS) | {"clearance"}
    standard = not wanted <= set(pictures)
    fluoro_wanted = fluoro is None and not any(k.startswith(FLUORO_PREFIX) for k in pictures)
    if not draw_images and standard:
        notes.append("the study was not opened (no pictures asked for)")
    if not draw_images and fluoro_wanted:
        fluoro = FluoroFigures(missing="the study was not opened (no pictures asked for).")
    if draw_images and (standard or fluoro_wanted):
        drawn, figures = _images_for(
            plan,
            case=case,
            study_path=study_path,
            notes=notes,
            standard=standard,
            fluoro=fluoro_wanted,
        )
        for key, png in drawn.items():
            pictures.setdefault(key, png)
        fluoro = fluoro if figures is None else figures
    try:
        if suffix == ".pdf":
            text = report_html(
                plan,
                images=pictures,
                anonymous=anonymous,
                notes=notes,
                src=lambda k: f"img:{k}",
                fluoro=fluoro,
            )
            write_pdf(text, pictures, out)
        else:
            text = report_html(
                plan, images=pictures, anonymous=anonymous, notes=notes, fluoro=fluoro
            )
            atomic_write_text(out, text)
    except OSError as exc:
        raise SacroplanError(f"cannot write the report {out}: {exc.strerror or exc}") from exc
    return out
