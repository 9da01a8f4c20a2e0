"""The workstation's dark theme and presets, read from ``resources/``."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

STYLE_SHEET = "gui_dark.qss"
PRESETS = "gui_presets.json"


def resource_text(name: str) -> str:
    """Text of a file in the ``resources`` package."""
    return resources.files("resources").joinpath(name).read_text(encoding="utf-8")


def gui_presets() -> dict[str, Any]:
    """The workstation presets (window/level list, brush radius range)."""
    return json.loads(resource_text(PRESETS))


def apply_dark_theme(app: QApplication) -> None:
    """Fusion style, a dark palette (for widgets the sheet does not reach) and the sheet."""
    app.setStyle("Fusion")
    pal = QPalette()
    base, window, text = QColor("#14171a"), QColor("#1e2126"), QColor("#d8dde3")
    pal.setColor(QPalette.ColorRole.Window, window)
    pal.setColor(QPalette.ColorRole.WindowText, text)
    pal.setColor(QPalette.ColorRole.Base, base)
    pal.setColor(QPalette.ColorRole.AlternateBase, QColor("#1a1e22"))
    pal.setColor(QPalette.ColorRole.Text, text)
    pal.setColor(QPalette.ColorRole.Button, QColor("#2a3038"))
    pal.setColor(QPalette.ColorRole.ButtonText, text)
    pal.setColor(QPalette.ColorRole.Highlight, QColor("#2f5d8a"))
    pal.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    pal.setColor(QPalette.ColorRole.ToolTipBase, QColor("#2a3038"))
    pal.setColor(QPalette.ColorRole.ToolTipText, text)
    pal.setColor(QPalette.ColorRole.PlaceholderText, QColor("#6b7480"))
    app.setPalette(pal)
    app.setStyleSheet(resource_text(STYLE_SHEET))


# Clearance colours (needle displays and the table): safe, close, violating.
GREEN = (0.30, 0.85, 0.40)
AMBER = (1.00, 0.72, 0.20)
RED = (0.95, 0.30, 0.25)


def clearance_color(min_clearance_mm: float | None, feasible: bool) -> tuple[float, float, float]:
    """Green when feasible with >= 5 mm to spare, amber when feasible but closer, red when not."""
    if not feasible:
        return RED
    if min_clearance_mm is None or min_clearance_mm >= 5.0:
        return GREEN
    return AMBER
