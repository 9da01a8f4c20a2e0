"""Long work off the GUI thread: one task at a time in a QThread, with progress and cancel.

A task is a plain function ``fn(progress, cancel) -> result`` (``progress(fraction, text)``,
``cancel() -> bool``) from the headless packages. :class:`TaskRunner` runs it in a worker
thread and reports back through Qt signals, which are delivered on the GUI thread:
``progress(fraction, text)``, ``finished(name, result)``, ``failed(name, exc)`` and
``cancelled(name)``. An exception in the task never reaches the event loop: it arrives as
``failed`` with the exception object (and is logged with its traceback).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from imaging.errors import OperationCancelledError, SacroplanError

log = logging.getLogger("sacroplan.gui.workers")

TaskFn = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]


class _Worker(QObject):
    """Runs one task function in its thread and emits the outcome."""

    progress = Signal(float, str)
    done = Signal(object)
    error = Signal(object)
    cancelled = Signal()

    def __init__(self, fn: TaskFn, stop: threading.Event) -> None:
        super().__init__()
        self._fn = fn
        self._stop = stop

    @Slot()
    def run(self) -> None:
        """Call the task; route its result, cancellation or exception to the signals."""
        try:
            result = self._fn(self._report, self._stop.is_set)
        except OperationCancelledError:
            self.cancelled.emit()
            return
        except SacroplanError as exc:
            self.error.emit(exc)
            return
        except BaseException as exc:  # a bug in the task: logged, shown, never fatal
            log.exception("task failed")
            self.error.emit(exc)
            return
        if self._stop.is_set():
            self.cancelled.emit()
        else:
            self.done.emit(result)

    def _report(self, fraction: float, text: str) -> None:
        if self._stop.is_set():
            raise OperationCancelledError("cancelled")
        self.progress.emit(float(fraction), str(text))


class TaskRunner(QObject):
    """Runs named tasks one at a time off the GUI thread.

    Signals
    -------
    started(name, label)
    progress(fraction, text)
        ``fraction`` in 0..1.
    finished(name, result)
    failed(name, exception)
    cancelled(name)
    busy_changed(bool)
    """

    started = Signal(str, str)
    progress = Signal(float, str)
    finished = Signal(str, object)
    failed = Signal(str, object)
    cancelled = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self._stop = threading.Event()
        self._name = ""
        self._callbacks: tuple[Callable[[Any], None] | None, Callable[[Any], None] | None] = (
            None,
            None,
        )

    @property
    def busy(self) -> bool:
        """Whether a task is running."""
        return self._thread is not None

    @property
    def name(self) -> str:
        """Name of the running task ('' when idle)."""
        return self._name

    def start(
        self,
        name: str,
        fn: TaskFn,
        *,
        label: str = "",
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[Any], None] | None = None,
    ) -> bool:
        """Start ``fn`` in a worker thread; False (and nothing started) when one is running.

        ``on_done(result)`` / ``on_error(exc)`` are called on the GUI thread after the
        ``finished`` / ``failed`` signals.
        """
        if self.busy:
            return False
        self._stop = threading.Event()
        self._name = name
        self._callbacks = (on_done, on_error)
        thread = QThread()
        thread.setObjectName(f"sacroplan-{name}")
        worker = _Worker(fn, self._stop)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self.progress)
        worker.done.connect(self._on_done)
        worker.error.connect(self._on_error)
        worker.cancelled.connect(self._on_cancelled)
        self._thread, self._worker = thread, worker
        self.busy_changed.emit(True)
        self.started.emit(name, label or name)
        thread.start()
        return True

    def cancel(self) -> None:
        """Ask the running task to stop at its next progress report."""
        self._stop.set()

    def wait(self, timeout_ms: int = 30000) -> bool:
        """Block until the worker thread ends (used at shutdown)."""
        if self._thread is None:
            return True
        return bool(self._thread.wait(timeout_ms))

    def _finish(self) -> tuple[str, Any, Any]:
        name = self._name
        thread, worker = self._thread, self._worker
        self._thread = self._worker = None
        self._name = ""
        if thread is not None:
            thread.quit()
            thread.wait(10000)
            thread.deleteLater()
        if worker is not None:
            worker.deleteLater()
        on_done, on_error = self._callbacks
        self._callbacks = (None, None)
        self.busy_changed.emit(False)
        return name, on_done, on_error

    @Slot(object)
    def _on_done(self, result: object) -> None:
        name, on_done, _ = self._finish()
        self.finished.emit(name, result)
        if on_done is not None:
            on_done(result)

    @Slot(object)
    def _on_error(self, exc: object) -> None:
        name, _, on_error = self._finish()
        self.failed.emit(name, exc)
        if on_error is not None:
            on_error(exc)

    @Slot()
    def _on_cancelled(self) -> None:
        name, _, _ = self._finish()
        self.cancelled.emit(name)
