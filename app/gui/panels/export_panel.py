"""Step 5, export: save and load the plan, the report when the report writer is installed."""

from __future__ import annotations

import importlib

from PySide6.QtWidgets import QCheckBox, QPushButton, QWidget

from app.gui.panels.common import Host, column, hint_label, readout_label, title_label


def report_writer() -> object | None:
    """``app.report.write_report`` when that module exists, else None."""
    try:
        module = importlib.import_module("app.report")
    except ImportError:
        return None
    return getattr(module, "write_report", None)


class ExportPanel(QWidget):
    """Save, load, report."""

    def __init__(self, host: Host) -> None:
        super().__init__()
        self._host = host
        lay = column(self)
        lay.addWidget(title_label("5  Export"))
        lay.addWidget(
            hint_label(
                "A plan file (JSON) keeps the study reference, the landmarks, the lesion, the "
                "needles, the margins and the views; loading it reopens all of that."
            )
        )
        self.save_button = QPushButton("Save plan…")
        self.save_button.clicked.connect(host.save_plan_as)
        lay.addWidget(self.save_button)
        self.load_button = QPushButton("Load plan…")
        self.load_button.clicked.connect(host.load_plan_dialog)
        lay.addWidget(self.load_button)
        self.report_button = QPushButton("Report…")
        self.report_button.clicked.connect(host.write_report_dialog)
        lay.addWidget(self.report_button)
        self.anonymous = QCheckBox("anonymous report (no patient identifiers)")
        lay.addWidget(self.anonymous)
        self.status = readout_label()
        lay.addWidget(self.status)
        lay.addStretch(1)
        host.session.plan_changed.connect(self.refresh)
        host.session.dirty_changed.connect(lambda _d: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        """Enable what can be done now."""
        s = self._host.session
        has_plan = s.plan is not None
        self.save_button.setEnabled(has_plan)
        writer = report_writer()
        self.report_button.setEnabled(has_plan and writer is not None)
        self.report_button.setToolTip(
            "Write an HTML/PDF report of the plan"
            if writer is not None
            else "The report writer (app.report) is not installed in this version"
        )
        where = "not saved yet" if s.plan_path is None else str(s.plan_path)
        self.status.setText(
            f"Plan file: {where}" + (" (unsaved changes)" if s.dirty and has_plan else "")
        )
