"""The series browser: what a folder holds (from ``imaging.read.scan``), pick one to open."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from imaging.read import ScanResult, SeriesInfo

COLUMNS = ("Patient", "Study", "Series", "Modality", "Images", "Voxels", "Spacing (mm)", "Warnings")


class SeriesBrowser(QDialog):
    """Lists the series of a scan; :meth:`chosen` is the one the user picked."""

    def __init__(self, result: ScanResult, source: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Series browser")
        self.setObjectName("seriesBrowser")
        self.resize(980, 420)
        self._series: list[SeriesInfo] = list(result.series)
        lay = QVBoxLayout(self)
        n = len(self._series)
        lay.addWidget(
            QLabel(
                f"{source}: {n} loadable series"
                + (f", {len(result.skipped)} file(s) skipped" if result.skipped else "")
            )
        )
        self.table = QTableWidget(n, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        for row, s in enumerate(self._series):
            cells = (
                f"{s.patient_name or '-'} ({s.patient_id or '-'})",
                f"{s.study_date or '-'} {s.study_description}".strip(),
                f"{s.series_number if s.series_number is not None else ''} "
                f"{s.description or '(no description)'}".strip(),
                s.modality,
                str(s.n_images),
                " x ".join(str(v) for v in s.size),
                " x ".join(f"{v:.3g}" for v in s.spacing),
                "; ".join(s.warnings) or "-",
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                if col == len(cells) - 1 and s.warnings:
                    item.setForeground(Qt.GlobalColor.yellow)
                self.table.setItem(row, col, item)
        if n:
            self.table.selectRow(0)
        self.table.doubleClicked.connect(lambda _i: self.accept())
        lay.addWidget(self.table, 3)
        if result.skipped:
            lay.addWidget(QLabel("Skipped files:"))
            skipped = QPlainTextEdit()
            skipped.setReadOnly(True)
            skipped.setPlainText("\n".join(f"{k.path}: {k.reason}" for k in result.skipped))
            lay.addWidget(skipped, 1)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.Open).setEnabled(n > 0)
        lay.addWidget(buttons)

    def chosen(self) -> SeriesInfo | None:
        """The selected series (None when there is none)."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        return self._series[rows[0].row()]
