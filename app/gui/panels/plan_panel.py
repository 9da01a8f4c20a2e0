"""Step 4, plan: the suggestion and why, the needles, margins, cement, RFA and C-arm angles."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QWidget,
)

from app.gui.panels.common import Host, column, readout_label, title_label
from app.gui.session import NEEDLE_MODES, block_key, block_number
from planning.approaches import approach_registry
from planning.margins import Margins, margin_range_mm
from planning.multi_needle import MultiNeedlePlan
from planning.needles import needle_catalogue
from planning.plan import clearance_text

MARGIN_FIELDS = (
    ("foramen_mm", "Foramina"),
    ("canal_mm", "Canal"),
    ("anterior_cortex_mm", "Bone ahead of tip"),
)
# needle 1, needle 2, ... of a two-needle plan in the views (clear of green/amber/red)
BLOCK_COLORS = ((0.30, 0.80, 1.00), (1.00, 0.45, 0.90), (0.75, 0.60, 1.00))
NEEDLE_MODE_LABELS = {"auto": "auto (over 3 cm)", "1": "1", "2": "2"}


class PlanPanel(QWidget):
    """What to do, with which needle, how much cement, whether to ablate."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        s = host.session
        lay = column(self)
        lay.addWidget(title_label("4  Plan"))
        self.suggestion = readout_label()
        lay.addWidget(self.suggestion)
        row = QHBoxLayout()
        self.choose_button = QPushButton("Use the selected needle")
        self.choose_button.setToolTip("Make the selected row the plan's trajectory")
        self.choose_button.clicked.connect(self._choose)
        row.addWidget(self.choose_button)
        row.addStretch(1)
        lay.addLayout(row)

        box = QGroupBox("Needles")
        form = QFormLayout(box)
        self.needles_mode = QComboBox()
        for mode in NEEDLE_MODES:
            self.needles_mode.addItem(NEEDLE_MODE_LABELS[mode], mode)
        self.needles_mode.setToolTip(
            "How many needles: 'auto' plans a second needle for a lesion over 3 cm when one "
            "cannot fill it; 1 or 2 asks for that many (re-plans only the needles)"
        )
        self.needles_mode.activated.connect(self._needles_chosen)
        form.addRow("Needles", self.needles_mode)
        self.block = readout_label()
        self.block.setTextInteractionFlags(
            self.block.textInteractionFlags() | Qt.TextInteractionFlag.LinksAccessibleByMouse
        )
        self.block.setOpenExternalLinks(False)
        self.block.linkActivated.connect(self._select_block_needle)
        form.addRow(self.block)
        lay.addWidget(box)

        box = QGroupBox("Needle and margins")
        form = QFormLayout(box)
        self.needle = QComboBox()
        self.needle.addItem("automatic (shortest that reaches)", None)
        for n in needle_catalogue():
            if n.kind != "rfa_electrode":
                self.needle.addItem(n.label, n.id)
        self.needle.activated.connect(self._needle_chosen)
        form.addRow("Needle", self.needle)
        self.margin_spins: dict[str, QDoubleSpinBox] = {}
        for name, label in MARGIN_FIELDS:
            spin = QDoubleSpinBox()
            lo, hi = margin_range_mm(name)
            spin.setRange(lo, hi)
            spin.setSingleStep(0.5)
            spin.setSuffix(" mm")
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(self._margins_edited)
            form.addRow(label, spin)
            self.margin_spins[name] = spin
        self.anterior_exit = QCheckBox("allow leaving the sacrum anteriorly")
        self.anterior_exit.toggled.connect(self._margins_edited)
        form.addRow(self.anterior_exit)
        lay.addWidget(box)

        box = QGroupBox("Cement")
        cl = column(box)
        self.cement = readout_label()
        cl.addWidget(self.cement)
        lay.addWidget(box)
        box = QGroupBox("Radiofrequency ablation")
        cl = column(box)
        self.rfa = readout_label()
        cl.addWidget(self.rfa)
        lay.addWidget(box)
        box = QGroupBox("C-arm (bull's-eye along the needle)")
        cl = column(box)
        self.carm = readout_label()
        cl.addWidget(self.carm)
        lay.addWidget(box)
        lay.addStretch(1)

        self._loading = False
        s.plan_changed.connect(self.refresh)
        s.selection_changed.connect(lambda _k: self.refresh())
        s.needle_preview.connect(lambda _k, c: self._show_carm(c))
        self.refresh()

    # -- edits -----------------------------------------------------------------------------------
    def margins(self) -> Margins:
        """The margins shown in the panel."""
        base = self._host.session.plan.margins if self._host.session.plan else Margins()
        return base.with_overrides(
            **{n: self.margin_spins[n].value() for n, _ in MARGIN_FIELDS},
            allow_anterior_exit=self.anterior_exit.isChecked(),
        )

    def _margins_edited(self) -> None:
        if self._loading:
            return
        self._host.run_guarded("Margins", lambda: self._host.session.set_margins(self.margins()))

    def _needle_chosen(self) -> None:
        needle_id = self.needle.currentData()
        s = self._host.session
        if needle_id is None:
            import dataclasses

            s.plan_options = dataclasses.replace(s.plan_options, needle_id=None)
            return
        self._host.run_guarded("Needle", lambda: s.set_needle(str(needle_id)))

    def _needles_chosen(self) -> None:
        mode = str(self.needles_mode.currentData())
        s = self._host.session
        if mode == s.needles_mode and s.plan is not None:
            return
        self._host.run_guarded("Needles", lambda: s.set_needles_mode(mode))

    def _select_block_needle(self, key: str) -> None:
        s = self._host.session
        self._host.run_guarded("Select", lambda: s.select(key))

    def _choose(self) -> None:
        s = self._host.session
        self._host.run_guarded("Plan", lambda: s.choose_trajectory(s.selected))

    # -- display ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Show the plan."""
        s = self._host.session
        plan = s.plan
        self._loading = True
        try:
            margins = plan.margins if plan is not None else s.plan_options.margins
            for name, _ in MARGIN_FIELDS:
                self.margin_spins[name].setValue(float(getattr(margins, name)))
            self.anterior_exit.setChecked(bool(margins.allow_anterior_exit))
            idx = self.needle.findData(s.plan_options.needle_id)
            self.needle.setCurrentIndex(max(idx, 0))
            self.needles_mode.setCurrentIndex(max(self.needles_mode.findData(s.needles_mode), 0))
        finally:
            self._loading = False
        self.choose_button.setEnabled(bool(s.selected) and block_number(s.selected) is None)
        self.block.setText(self.block_text())
        if plan is None:
            self.suggestion.setText("Plan the trajectories first (step 3).")
            self.cement.setText("-")
            self.rfa.setText("-")
            self.carm.setText("-")
            return
        registry = approach_registry()
        sug = plan.suggestion
        lines = []
        if sug is None or sug.approach is None:
            lines.append("<b>No approach is feasible with these margins.</b>")
        else:
            label = registry[sug.approach].label if sug.approach in registry else sug.approach
            lines.append(f"<b>Suggested: {html.escape(label)}</b>")
        if sug is not None:
            lines.extend(f"&bull; {html.escape(r)}" for r in sug.reasons)
        if plan.trajectories:
            t = plan.trajectories[0]
            lines.append(
                f"<b>Chosen trajectory:</b> {html.escape(str(t.approach))} with {t.needle} "
                f"({t.source})"
                if len(plan.trajectories) == 1
                else f"<b>Chosen trajectories:</b> {len(plan.trajectories)} needles (below)"
            )
        self.suggestion.setText("<br>".join(lines))
        c = plan.cement
        if c is None:
            self.cement.setText("-")
        else:
            text = [
                f"<b>{c.suggested_ml:.1f} mL</b> (band {c.band_ml[0]:.1f}-{c.band_ml[1]:.1f} mL, "
                f"anatomical cap {c.cap_ml:.1f} mL)",
                f"predicted filling {100 * c.predicted_filling:.0f} %, ratio {c.ratio:.2f}",
            ]
            text.extend(f"<span style='color:#f0b44c'>{html.escape(w)}</span>" for w in c.warnings)
            text.append(f"<span style='color:#8a95a1'>{html.escape(c.basis)}</span>")
            self.cement.setText("<br>".join(text))
        r = plan.rfa
        if r is None:
            self.rfa.setText("Not planned (tick 'with RFA' in step 3 and plan again).")
        else:
            color = {"allowed": "#4cd964", "warn": "#f0b44c"}.get(r.safety, "#f06b5a")
            text = [
                f"<b>{r.n_ablations} ablation(s)</b> x {r.n_tracks} track(s), {r.device}: zone "
                f"{r.zone_length_mm:.0f} x {r.zone_diameter_mm:.0f} mm",
                f"<span style='color:{color}'>{r.safety}: {html.escape(r.safety_reason)}</span>",
            ]
            text.extend(f"<span style='color:#f0b44c'>{html.escape(w)}</span>" for w in r.warnings)
            self.rfa.setText("<br>".join(text))
        self._show_carm(s.candidate(s.selected) if s.selected else None)

    def block_text(self) -> str:
        """The plan's needles (its multi-needle block) as rich text."""
        s = self._host.session
        plan = s.plan
        if plan is None:
            return "-"
        multi = plan.multi_needle
        if multi is None:
            if s.needles_mode == "auto":
                return (
                    "One needle: a second one is looked for when the lesion is over 3 cm "
                    "(choose 2 to ask for it)."
                )
            return "One needle."
        return format_block(multi, selected=s.selected)

    def _show_carm(self, cand: object) -> None:
        c_arm = getattr(cand, "c_arm", None)
        self.carm.setText("-" if c_arm is None else html.escape(c_arm.text))


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgb)


def format_block(multi: MultiNeedlePlan, *, selected: str = "") -> str:
    """A multi-needle block in rich text: how many needles, each one, the gaps, the reasons.

    Each needle's name links to its display key (``"needle:1"``) so a click selects it.
    """
    n = len(multi.needles)
    kind = "" if multi.kind == "single" else f" ({multi.kind})"
    rel = 100 * multi.coverage / multi.attainable if multi.attainable else 0.0
    lines = [
        f"<b>{n} needle{'s' if n > 1 else ''}{kind}</b>: cement "
        f"{multi.cement_total_ml:.1f} mL reaches {100 * multi.coverage:.0f} % of the "
        f"{multi.lesion_ml:.1f} mL lesion ({rel:.0f} % of what it can fill), filling degree "
        f"{100 * multi.filling:.0f} % (one needle: {100 * multi.coverage_single:.0f} %, "
        f"filling {100 * multi.filling_single:.0f} %)"
    ]
    registry = approach_registry()
    for number, placed in enumerate(multi.needles, start=1):
        c = placed.candidate
        od, exact = c.needle_od_mm, c.clearance_mm.exact
        ahead = c.tip_to_anterior_cortex_mm
        name = registry[c.approach].label if c.approach in registry else c.approach
        key = block_key(number)
        label = html.escape(placed.label)
        if n > 1:
            color = _hex(BLOCK_COLORS[(number - 1) % len(BLOCK_COLORS)])
            weight = "bold" if key == selected else "normal"
            label = f"<a href='{key}' style='color:{color}; font-weight:{weight}'>{label}</a>"
        state = (
            ""
            if c.feasible
            else (
                " <span style='color:#f06b5a'>not feasible: "
                + html.escape("; ".join(c.violations))
                + "</span>"
            )
        )
        lines.append(
            f"&bull; {label}: {html.escape(name)} ({c.side}), {c.needle}, foramina "
            f"{html.escape(clearance_text(c.clearance_mm.foramina, od, exact=exact))}, canal "
            f"{html.escape(clearance_text(c.clearance_mm.canal, od, exact=exact))}, bone ahead "
            f"{'-' if ahead is None else f'{ahead:.1f} mm'}, {c.skin_to_target_mm:.0f} mm skin "
            f"to tip; cement {placed.cement_ml:.2f} mL, reaches {placed.reaches_ml:.1f} mL of "
            f"the lesion{state}"
        )
    if multi.tip_gap_mm is not None and multi.path_gap_mm is not None:
        lines.append(
            f"Tips {multi.tip_gap_mm:.1f} mm apart, needles at least {multi.path_gap_mm:.1f} mm "
            "apart along their paths"
        )
    listed = tuple(f"{p.label}:" for p in multi.needles)  # each needle is shown above
    lines.extend(
        f"<span style='color:#8a95a1'>&ndash; {html.escape(r)}</span>"
        for r in multi.reasons
        if not r.startswith(listed)
    )
    return "<br>".join(lines)
