"""Step 4, plan: the suggestion and why, needle, margins, cement, RFA and C-arm angles."""

from __future__ import annotations

import html

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
from planning.approaches import approach_registry
from planning.margins import Margins, margin_range_mm
from planning.needles import needle_catalogue

MARGIN_FIELDS = (
    ("foramen_mm", "Foramina"),
    ("canal_mm", "Canal"),
    ("anterior_cortex_mm", "Bone ahead of tip"),
)


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
        finally:
            self._loading = False
        self.choose_button.setEnabled(bool(s.selected))
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

    def _show_carm(self, cand: object) -> None:
        c_arm = getattr(cand, "c_arm", None)
        self.carm.setText("-" if c_arm is None else html.escape(c_arm.text))
