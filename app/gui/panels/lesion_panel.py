"""Step 2, lesion: a seed click in any view, growth, band adjustment, the measurements."""

from __future__ import annotations

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

from app.gui.panels.common import Host, column, hint_label, readout_label, title_label
from imaging.lesion import GrowOptions

FLAG_TEXT = {
    "diameter_over_30mm": "largest diameter over 30 mm (outside the cohort's criteria)",
    "foraminal_erosion": "touches a foramen with its cortex breached (foraminal erosion)",
    "epidural_extension": "extends into the canal (epidural)",
    "touches_foramen": "touches a foramen",
    "touches_canal": "touches the canal",
}


class LesionPanel(QWidget):
    """Seed, grow, adjust, measure."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        s = host.session
        lay = column(self)
        lay.addWidget(title_label("2  Lesion"))
        lay.addWidget(
            hint_label(
                "Press 'Click a seed', then click inside the lesion in any view. The lesion "
                "grows in a value band from the seed; adjust the band and grow again."
            )
        )
        row = QHBoxLayout()
        self.seed_button = QPushButton("Click a seed")
        self.seed_button.setObjectName("primary")
        self.seed_button.setCheckable(True)
        self.seed_button.setToolTip("Seed mode (S): the next click in a view grows the lesion")
        self.seed_button.toggled.connect(
            lambda on: self._host.set_view_mode("seed" if on else "navigate")
        )
        row.addWidget(self.seed_button)
        self.regrow_button = QPushButton("Grow again")
        self.regrow_button.setToolTip("Grow from the same seed with the settings below")
        self.regrow_button.clicked.connect(self._regrow)
        row.addWidget(self.regrow_button)
        lay.addLayout(row)

        box = QGroupBox("Growth")
        form = QFormLayout(box)
        self.mode = QComboBox()
        for m in ("auto", "lytic", "sclerotic", "mr"):
            self.mode.addItem(m)
        form.addRow("Kind", self.mode)
        self.fixed = QCheckBox("Fixed band")
        self.fixed.setToolTip("Off: the band adapts to the lesion and the bone around it")
        form.addRow(self.fixed)
        band = QHBoxLayout()
        self.lo = QDoubleSpinBox()
        self.hi = QDoubleSpinBox()
        for w, v in ((self.lo, -30.0), (self.hi, 250.0)):
            w.setRange(-2000.0, 5000.0)
            w.setDecimals(0)
            w.setSingleStep(10.0)
            w.setValue(v)
            band.addWidget(w)
        form.addRow("Band (HU)", band)
        self.fixed.toggled.connect(self.lo.setEnabled)
        self.fixed.toggled.connect(self.hi.setEnabled)
        self.lo.setEnabled(False)
        self.hi.setEnabled(False)
        lay.addWidget(box)

        self.readout = readout_label()
        lay.addWidget(self.readout)
        lay.addStretch(1)

        s.lesion_changed.connect(self.refresh)
        s.anatomy_changed.connect(self.refresh)
        s.study_changed.connect(self.refresh)
        self.refresh()

    def options(self) -> GrowOptions:
        """The growth settings chosen in the panel."""
        band = (self.lo.value(), self.hi.value()) if self.fixed.isChecked() else None
        return GrowOptions(mode=self.mode.currentText(), band_hu=band)  # type: ignore[arg-type]

    def _regrow(self) -> None:
        case = self._host.session.case

        def go() -> None:
            from app.gui.session import SessionError

            if case is None or case.lesion is None:
                raise SessionError("click a seed inside the lesion first")
            self._host.session.grow_lesion(case.lesion.seed_lps, options=self.options())

        self._host.run_guarded("Lesion", go)

    def refresh(self) -> None:
        """Show the lesion's measurements."""
        s = self._host.session
        case = s.case
        if case is None or case.lesion is None or case.metrics is None:
            self.readout.setText("No lesion yet.")
            self.regrow_button.setEnabled(False)
            return
        self.regrow_button.setEnabled(True)
        m = case.metrics
        les = case.lesion
        zone = "?" if m.denis_zone is None else str(m.denis_zone)
        lines = [
            f"<b>Volume</b> {m.volume_ml:.2f} mL",
            f"<b>Largest diameter</b> {m.max_diameter_mm:.1f} mm",
            f"<b>Denis zone</b> {zone}"
            + ("" if m.most_medial_zone is None else f" (most medial {m.most_medial_zone})"),
        ]
        if m.zones_ml:
            lines.append("by zone: " + ", ".join(f"{k}: {v:.2f} mL" for k, v in m.zones_ml.items()))
        c = m.centroid_lps
        lines.append(f"centroid ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm")
        lines.append(f"{les.mode_used}, band {les.band[0]:.0f}..{les.band[1]:.0f}")
        flags = m.to_json()["flags"]
        warn = [FLAG_TEXT[k] for k in FLAG_TEXT if flags.get(k) is True]
        if flags.get("cortical_breach"):
            warn.append("cortex breached: " + ", ".join(flags["cortical_breach"]))
        warn.extend(les.warnings)
        lines.extend(f"<span style='color:#f0b44c'>&#9888; {w}</span>" for w in warn)
        self.readout.setText("<br>".join(lines))
        self.seed_button.setChecked(False)
