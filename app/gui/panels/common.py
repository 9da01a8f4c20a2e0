"""Small widgets and helpers shared by the workflow steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from app.gui.session import Session


class Host(Protocol):
    """What a step needs from the main window."""

    session: Session

    @property
    def grid(self) -> Any:  # noqa: ANN401
        """The ViewGrid."""

    def set_view_mode(self, mode: str) -> None:
        """Switch the views' mouse mode (navigate, seed, brush, erase, landmark)."""

    def run_guarded(self, title: str, fn: Callable[[], Any]) -> Any:  # noqa: ANN401
        """Call ``fn()`` and show any error in a dialog."""

    def set_labels_visible(self, labels: tuple[int, ...], on: bool) -> None:
        """Show or hide label overlays."""

    def show_zones(self, on: bool) -> None:
        """Show or hide the Denis zones."""

    def save_plan_as(self) -> None:
        """Ask where to save the plan and save it."""

    def load_plan_dialog(self) -> None:
        """Ask for a plan file and load it."""

    def write_report_dialog(self) -> None:
        """Ask where to write the report and write it."""


def title_label(text: str) -> QLabel:
    """A step's heading."""
    label = QLabel(text)
    label.setObjectName("stepTitle")
    return label


def hint_label(text: str) -> QLabel:
    """A dim, wrapped explanation."""
    label = QLabel(text)
    label.setObjectName("hint")
    label.setWordWrap(True)
    return label


def readout_label() -> QLabel:
    """A wrapped, selectable label for numbers."""
    label = QLabel("")
    label.setObjectName("panelText")
    label.setWordWrap(True)
    label.setTextFormat(label.textFormat().RichText)
    label.setTextInteractionFlags(label.textInteractionFlags().TextSelectableByMouse)
    return label


def column(parent: QWidget) -> QVBoxLayout:
    """A top-aligned vertical layout on ``parent``."""
    lay = QVBoxLayout(parent)
    lay.setContentsMargins(8, 8, 8, 8)
    lay.setSpacing(6)
    return lay


def fmt_mm(value: float | None, digits: int = 1) -> str:
    """``"12.3"`` or ``"-"``."""
    return "-" if value is None else f"{value:.{digits}f}"
