"""How the workstation shows and logs failures: a plain dialog, a log entry, a usable window.

Three layers (STYLE.md practice 11): domain errors (:class:`SacroplanError`) are shown with
their own message; anything else is logged with its traceback and shown as an unexpected
error naming the log file; :func:`install_excepthook` routes exceptions that escape a slot
or a callback to the same dialog instead of ending the program.
"""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

from app.logs import log_file_path
from imaging.errors import SacroplanError

log = logging.getLogger("sacroplan.gui")

F = TypeVar("F", bound=Callable[..., Any])

_showing = False
_interactive = True
_last_messages: list[str] = []


class UserDeclinedError(SacroplanError):
    """The user chose not to go on (e.g. kept unsaved changes): the action stops quietly."""


def plain_message(exc: BaseException) -> str:
    """The message a user sees for ``exc`` (no traceback)."""
    if isinstance(exc, SacroplanError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory for this step; close other programs or use a smaller study"
    return (
        f"an unexpected error happened ({type(exc).__name__}: {exc}). Your work is kept; "
        f"details are in the log file {log_file_path()}"
    )


def report_error(parent: QWidget | None, title: str, exc: BaseException) -> None:
    """Log ``exc`` and show it in a modal dialog (never raises, never nests dialogs)."""
    global _showing
    if isinstance(exc, UserDeclinedError):
        return
    try:
        if isinstance(exc, SacroplanError):
            log.warning("%s: %s", title, exc)
        else:
            log.error(
                "%s: %s",
                title,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        message = plain_message(exc)
        _last_messages.append(f"{title}: {message}")
        del _last_messages[:-20]
        if not _interactive:
            sys.stderr.write(f"sacroplan: {title}: {message}\n")
            return
        if _showing or QApplication.instance() is None:
            return
        _showing = True
        try:
            box = QMessageBox(parent)
            box.setObjectName("errorDialog")
            box.setIcon(
                QMessageBox.Icon.Warning
                if isinstance(exc, SacroplanError)
                else QMessageBox.Icon.Critical
            )
            box.setWindowTitle(title)
            box.setText(message[:1].upper() + message[1:] if message else title)
            box.setStandardButtons(QMessageBox.StandardButton.Ok)
            box.exec()
        finally:
            _showing = False
    except Exception:  # the error path itself must never take the window down
        log.exception("could not show an error dialog")


def set_interactive(on: bool) -> None:
    """Off for scripted runs (screenshots): errors go to stderr and the log, no dialog."""
    global _interactive
    _interactive = bool(on)


def last_messages() -> list[str]:
    """The most recent error messages shown (newest last)."""
    return list(_last_messages)


def guarded(title: str) -> Callable[[F], F]:
    """Decorate a slot so that an exception in it becomes a dialog, not a crash."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                parent = args[0] if args and isinstance(args[0], QWidget) else None
                report_error(parent, title, exc)
                return None

        return inner  # type: ignore[return-value]

    return wrap


def install_excepthook(parent_of: Callable[[], QWidget | None]) -> Callable[[], None]:
    """Route uncaught exceptions (e.g. in slots) to a dialog and the log.

    Parameters
    ----------
    parent_of : callable
        Returns the window the dialog belongs to (or None).

    Returns
    -------
    callable
        Restores the previous hook.
    """
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        if exc.__traceback__ is None and tb is not None:
            exc = exc.with_traceback(tb)
        # Show it once control is back in the event loop (not inside a half-finished slot).
        QTimer.singleShot(0, lambda: report_error(parent_of(), "Unexpected error", exc))

    sys.excepthook = hook

    def restore() -> None:
        sys.excepthook = previous

    return restore
