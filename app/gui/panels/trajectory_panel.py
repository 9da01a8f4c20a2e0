"""Step 3, trajectories: run the search, the best needle per approach, clearance by depth."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.gui.panels.common import Host, column, fmt_mm, hint_label, title_label
from app.gui.session import sample_fields
from app.gui.theme import clearance_color
from planning.approaches import approach_registry
from planning.needles import get_needle
from planning.plan import Candidate

COLUMNS = ("", "Approach", "Side", "Foramen", "Canal", "Bone ahead", "Reach", "Why")
REASON_COLUMN = len(COLUMNS) - 1
PLOT_STEP_MM = 1.0


class ClearancePlot(FigureCanvasQTAgg):
    """Clearance from the needle surface to each structure along the depth (mm)."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(4, 2.0), dpi=90, facecolor="#1e2126")
        super().__init__(self.figure)
        self.ax = self.figure.add_subplot(111)
        self.figure.subplots_adjust(left=0.11, right=0.98, top=0.95, bottom=0.2)
        self.setMinimumHeight(170)
        self.curves: dict[str, np.ndarray] = {}
        self.show_needle(None, None, None)

    def _style(self) -> None:
        ax = self.ax
        ax.set_facecolor("#14171a")
        for spine in ax.spines.values():
            spine.set_color("#5a6470")
        ax.tick_params(colors="#aab4bf", labelsize=7)
        ax.set_xlabel("depth from skin (mm)", color="#aab4bf", fontsize=8)
        ax.set_ylabel("clearance (mm)", color="#aab4bf", fontsize=8)

    def show_needle(self, cand: Candidate | None, fields: object, margins: object) -> None:
        """Plot the clearance curves of ``cand`` against ``fields`` (or a blank plot)."""
        ax = self.ax
        ax.clear()
        self._style()
        self.curves = {}
        if cand is None or fields is None:
            ax.text(
                0.5,
                0.5,
                "select a needle",
                color="#6b7480",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
            )
            self.draw_idle()
            return
        entry = np.asarray(cand.skin_entry_lps, float)
        tip = np.asarray(cand.target_lps, float)
        length = float(np.linalg.norm(tip - entry))
        depth = np.arange(0.0, length + 1e-6, PLOT_STEP_MM)
        if len(depth) < 2:
            depth = np.array([0.0, length])
        pts = entry + np.outer(depth / max(length, 1e-9), tip - entry)
        values = sample_fields(fields, pts)  # type: ignore[arg-type]
        radius = cand.needle_od_mm / 2.0
        fs = fields  # type: ignore[assignment]
        if fs.foramen_channels:  # type: ignore[attr-defined]
            fora = values[:, list(fs.foramen_channels)].min(axis=1)  # type: ignore[attr-defined]
            self.curves["foramina"] = fora - radius
        if fs.canal >= 0:  # type: ignore[attr-defined]
            self.curves["canal"] = values[:, fs.canal] - radius  # type: ignore[attr-defined]
        colors = {"foramina": "#4fc3f7", "canal": "#f06292"}
        for name, curve in self.curves.items():
            ax.plot(depth, np.clip(curve, -5, 40), color=colors[name], lw=1.4, label=name)
        m = margins
        if m is not None:
            ax.axhline(
                m.foramen_mm,
                color="#f0b44c",
                lw=0.8,
                ls="--",  # type: ignore[attr-defined]
                label="margin",
            )
        ax.axhline(0.0, color="#e05a4f", lw=0.8)
        ax.set_xlim(0, max(length, 1.0))
        ax.legend(
            fontsize=7,
            facecolor="#23272d",
            edgecolor="#3a414b",
            labelcolor="#d8dde3",
            loc="upper right",
        )
        self.draw_idle()


class TrajectoryPanel(QWidget):
    """Search, compare the approaches, pick and inspect a needle."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        s = host.session
        lay = column(self)
        lay.addWidget(title_label("3  Trajectories"))
        lay.addWidget(
            hint_label(
                "Search every approach for the lesion. Click a row to show its needle in all "
                "views; drag its entry or tip handle in a slice view to change it."
            )
        )
        row = QHBoxLayout()
        self.run_button = QPushButton("Plan trajectories")
        self.run_button.setObjectName("primary")
        self.run_button.clicked.connect(self._run)
        row.addWidget(self.run_button)
        self.rfa = QCheckBox("with RFA")
        self.rfa.setToolTip("Plan radiofrequency ablation along the chosen needle too")
        row.addWidget(self.rfa)
        row.addStretch(1)
        lay.addLayout(row)
        self.stale = QLabel("")
        self.stale.setObjectName("stale")
        self.stale.setWordWrap(True)
        lay.addWidget(self.stale)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        header.setSectionResizeMode(REASON_COLUMN, QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setToolTip(
            "Clearances in mm from the needle surface; 'Bone ahead' = bone left in front of the "
            "tip; 'Reach' = skin to tip / the needle's working length (mm)"
        )
        self.table.itemSelectionChanged.connect(self._on_row)
        lay.addWidget(self.table)
        self.blocked = QLabel("")
        self.blocked.setObjectName("hint")
        self.blocked.setWordWrap(True)
        lay.addWidget(self.blocked)
        self.detail = QLabel("")
        self.detail.setObjectName("panelText")
        self.detail.setWordWrap(True)
        lay.addWidget(self.detail)
        self.plot = ClearancePlot()
        lay.addWidget(self.plot)
        lay.addStretch(1)

        self._keys: list[str] = []
        self._updating = False
        s.plan_changed.connect(self.refresh)
        s.selection_changed.connect(self._show_selection)
        s.needle_preview.connect(self._preview)
        s.anatomy_changed.connect(self._show_stale)
        s.landmarks_changed.connect(self._show_stale)
        s.lesion_changed.connect(self._show_stale)
        s.runner.busy_changed.connect(lambda busy: self.run_button.setEnabled(not busy))
        self.refresh()

    def _run(self) -> None:
        import dataclasses

        s = self._host.session
        s.plan_options = dataclasses.replace(s.plan_options, with_rfa=self.rfa.isChecked())
        self._host.run_guarded("Trajectories", lambda: s.run_plan())

    def _show_stale(self) -> None:
        s = self._host.session
        self.stale.setText(
            "The anatomy or the lesion changed since this search: run it again."
            if s.plan is not None and s.plan_stale
            else ""
        )

    def refresh(self) -> None:
        """Rebuild the table from the plan."""
        s = self._host.session
        self._show_stale()
        self._updating = True
        try:
            self.table.setRowCount(0)
            self._keys = s.approach_keys()
            registry = approach_registry()
            for row, key in enumerate(self._keys):
                self.table.insertRow(row)
                label = registry[key].label if key in registry else key
                cand = s.candidate(key)
                self._fill_row(row, label, cand, s.blocked_by(key))
        finally:
            self._updating = False
        self._fit_table()
        blocked = [
            f"<b>{registry[k].label if k in registry else k}</b>: {'; '.join(s.blocked_by(k))}"
            for k in self._keys
            if s.candidate(k) is None
        ]
        self.blocked.setText("<br>".join(blocked))
        self._show_selection(s.selected)

    def _fit_table(self) -> None:
        """Show every row without an empty area below them."""
        rows = max(self.table.rowCount(), 3)
        height = self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
        height += sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        height += max(0, rows - self.table.rowCount()) * 26
        self.table.setFixedHeight(height + 2)

    def _fill_row(self, row: int, label: str, cand: Candidate | None, blocked: list[str]) -> None:
        if cand is None:
            cells = ["\u2717", label, "", "", "", "", "", "; ".join(blocked)]
            color = clearance_color(None, False)
        else:
            cl = cand.clearance_mm
            needle = get_needle(cand.needle)
            cells = [
                "\u2713" if cand.feasible else "\u2717",
                label,
                cand.side or "",
                fmt_mm(cl.foramina),
                fmt_mm(cl.canal),
                fmt_mm(cand.tip_to_anterior_cortex_mm),
                f"{cand.skin_to_target_mm:.0f}/{needle.working_length_mm:.0f}",
                "; ".join(cand.violations) or ("feasible" if cand.feasible else ""),
            ]
            color = clearance_color(_min_clearance(cand), cand.feasible)
        for col, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if col == 0:
                item.setForeground(QColor.fromRgbF(*color))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            if col == len(cells) - 1:
                item.setToolTip(text)
            self.table.setItem(row, col, item)

    def row_of(self, key: str) -> int:
        """Table row of approach ``key`` (-1 when absent)."""
        return self._keys.index(key) if key in self._keys else -1

    def _on_row(self) -> None:
        if self._updating:
            return
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        key = self._keys[rows[0].row()]
        s = self._host.session
        if s.candidate(key) is None:
            self.detail.setText("<b>Blocked:</b> " + "; ".join(s.blocked_by(key)))
            self.plot.show_needle(None, None, None)
            return
        self._host.run_guarded("Select", lambda: s.select(key))

    def _show_selection(self, key: str) -> None:
        s = self._host.session
        row = self.row_of(key)
        self._updating = True
        try:
            if row >= 0:
                self.table.selectRow(row)
            else:
                self.table.clearSelection()
        finally:
            self._updating = False
        self._show_candidate(key, s.candidate(key) if key else None)

    def _preview(self, key: str, cand: Candidate) -> None:
        row = self.row_of(key)
        if row >= 0:
            registry = approach_registry()
            self._fill_row(row, registry[key].label if key in registry else key, cand, [])
        if key == self._host.session.selected:
            self._show_candidate(key, cand)

    def _show_candidate(self, key: str, cand: Candidate | None) -> None:
        s = self._host.session
        if cand is None:
            self.detail.setText("")
            self.plot.show_needle(None, None, None)
            return
        cl = cand.clearance_mm
        registry = approach_registry()
        label = registry[key].label if key in registry else s.needle_label(key)
        lines = [
            f"<b>{label}</b> ({cand.side}), {cand.needle}: {cand.skin_to_target_mm:.1f} mm skin "
            f"to tip, {cand.in_bone_mm:.1f} mm in bone",
            "foramina: "
            + ", ".join(
                f"{n} {v:.1f}" for n, v in sorted(cl.by_foramen.items(), key=lambda kv: kv[1])[:3]
            )
            + " mm",
            f"canal {fmt_mm(cl.canal)} mm, bone ahead of the tip "
            f"{fmt_mm(cand.tip_to_anterior_cortex_mm)} mm"
            + (", exits anteriorly" if cand.exits_anterior else "")
            + (", crosses the SI joint" if cand.si_joint_crossed else ""),
        ]
        lines.extend(f"<span style='color:#f06b5a'>{v}</span>" for v in cand.violations)
        self.detail.setText("<br>".join(lines))
        self.plot.show_needle(cand, s.fields, s.plan.margins if s.plan else None)


def _min_clearance(cand: Candidate) -> float | None:
    values = [v for v in (cand.clearance_mm.foramina, cand.clearance_mm.canal) if v is not None]
    return min(values) if values else None
