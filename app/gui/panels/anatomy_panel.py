"""Step 1, anatomy: automatic segmentation, overlays, landmark dragging, paint/erase brush."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QPushButton,
    QWidget,
)

from app.gui.panels.common import Host, column, hint_label, readout_label, title_label
from app.gui.theme import gui_presets
from imaging.anatomy import FORAMEN_NAMES
from imaging.labels import Label

OVERLAYS = (
    ("Sacrum", (Label.SACRUM,)),
    ("Ilia", (Label.LEFT_ILIUM, Label.RIGHT_ILIUM)),
    ("Foramina", (Label.FORAMEN,)),
    ("Canal", (Label.CANAL,)),
    ("Lesion", (Label.LESION,)),
    ("SI joints", (Label.SI_JOINT,)),
)
BRUSH_TARGETS = (
    ("Sacrum", "sacrum"),
    ("Canal", "canal"),
    ("Left ilium", "left_ilium"),
    ("Right ilium", "right_ilium"),
    ("Lesion", "lesion"),
    *((f"Foramen {n}", n) for n in FORAMEN_NAMES),
)
MODES = (
    ("Navigate", "navigate", "N"),
    ("Move landmarks", "landmark", "L"),
    ("Paint", "brush", "B"),
    ("Erase", "erase", "E"),
)


class AnatomyPanel(QWidget):
    """Run the automatic anatomy and correct it by hand."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        s = host.session
        lay = column(self)
        lay.addWidget(title_label("1  Anatomy"))
        lay.addWidget(
            hint_label(
                "Find the sacrum, ilia, foramina (S1-S4, left/right), canal and the S1 "
                "endplate automatically, then correct landmarks or masks if needed."
            )
        )
        self.run_button = QPushButton("Find anatomy")
        self.run_button.setObjectName("primary")
        self.run_button.setToolTip("Automatic anatomy (runs in the background; Esc cancels)")
        self.run_button.clicked.connect(self._run)
        lay.addWidget(self.run_button)
        self.summary = readout_label()
        lay.addWidget(self.summary)

        box = QGroupBox("Overlays")
        grid = QGridLayout(box)
        self.overlay_checks: dict[str, QCheckBox] = {}
        for n, (name, labels) in enumerate(OVERLAYS):
            check = QCheckBox(name)
            check.setChecked(True)
            check.toggled.connect(
                lambda on, labels=labels: self._host.set_labels_visible(labels, on)
            )
            grid.addWidget(check, n // 2, n % 2)
            self.overlay_checks[name] = check
        self.zones_check = QCheckBox("Denis zones")
        self.zones_check.toggled.connect(lambda on: self._host.show_zones(on))
        grid.addWidget(self.zones_check, len(OVERLAYS) // 2, 0)
        lay.addWidget(box)

        box = QGroupBox("Correct by hand")
        form = QFormLayout(box)
        modes = QHBoxLayout()
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QPushButton] = {}
        for label, mode, key in MODES:
            b = QPushButton(label)
            b.setCheckable(True)
            b.setToolTip(f"{label} ({key})")
            b.clicked.connect(lambda _c=False, mode=mode: self._host.set_view_mode(mode))
            self.mode_group.addButton(b)
            modes.addWidget(b)
            self.mode_buttons[mode] = b
        self.mode_buttons["navigate"].setChecked(True)
        form.addRow(modes)
        self.target = QComboBox()
        for label, key in BRUSH_TARGETS:
            self.target.addItem(label, key)
        form.addRow("Brush paints", self.target)
        rng = gui_presets()["brush_radius_mm"]
        self.radius = QDoubleSpinBox()
        self.radius.setRange(float(rng["min"]), float(rng["max"]))
        self.radius.setValue(float(rng["default"]))
        self.radius.setSingleStep(0.5)
        self.radius.setSuffix(" mm")
        self.radius.valueChanged.connect(lambda r: self._host.grid.set_brush_radius(r))
        form.addRow("Brush radius", self.radius)
        lay.addWidget(box)
        lay.addStretch(1)

        s.anatomy_changed.connect(self.refresh)
        s.landmarks_changed.connect(self.refresh)
        s.study_changed.connect(self.refresh)
        s.runner.busy_changed.connect(lambda busy: self.run_button.setEnabled(not busy))
        self.refresh()

    def brush_target(self) -> str:
        """Mask (or foramen name, or ``"lesion"``) the brush edits."""
        return str(self.target.currentData())

    def show_mode(self, mode: str) -> None:
        """Reflect the views' mode in the buttons."""
        b = self.mode_buttons.get(mode)
        if b is not None:
            b.setChecked(True)
        else:
            checked = self.mode_group.checkedButton()
            if checked is not None:
                self.mode_group.setExclusive(False)
                checked.setChecked(False)
                self.mode_group.setExclusive(True)

    def _run(self) -> None:
        self._host.run_guarded("Anatomy", lambda: self._host.session.run_anatomy())

    def refresh(self) -> None:
        """Show what the anatomy found."""
        case = self._host.session.case
        if case is None:
            self.summary.setText("No study open.")
            return
        if case.anatomy is None:
            self.summary.setText("Not run yet.")
            return
        a = case.anatomy
        names = ", ".join(a.foramina) or "none"
        lines = [f"Foramina: {names}"]
        if case.masks is not None:
            voxel_ml = case.masks.image.voxel_volume_mm3 / 1000.0
            sacrum_ml = float(a.mask("sacrum").sum()) * voxel_ml
            lines.insert(0, f"Sacrum: {sacrum_ml:.0f} mL")
            if case.masks.missing_foramina:
                lines.append(f"Not found: {', '.join(case.masks.missing_foramina)}")
        c = a.endplate_center
        lines.append(f"S1 endplate centre: ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm")
        edited = [n for n, f in a.foramina.items() if f.source == "user"]
        if edited:
            lines.append(f"Moved by hand: {', '.join(edited)}")
        notes = case.notes[-3:]
        lines.extend(f"<span style='color:#f0b44c'>Note: {n}</span>" for n in notes)
        self.summary.setText("<br>".join(lines))
