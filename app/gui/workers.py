"""Long work off the GUI thread: one task at a time in a QThread, with progress and cancel.

A task is a plain function ``fn(progress, cancel) -> result`` (``progress(fraction, text)``,
``cancel() -> bool``) from the headless packages. :class:`TaskRunner` runs it in a worker
thread and reports back through Qt signals, which are delivered on the GUI thread:
``progress(fraction, text)``, ``finished(name, result)``, ``failed(name, exc)`` and
``cancelled(name)``. An exception in the task never reaches the event loop: it arrives as
``failed`` with the exception object (and is logged with its traceback).

While a task runs, the objects that existed when it started are frozen out of Python's cyclic
garbage collector (:func:`gc.freeze`) and thawed when the last running task ends. A full
collection holds the interpreter lock for its whole duration, whichever thread triggers it, and
scanning the half million objects of the loaded workstation (Qt, VTK, numba's type system) takes
100-250 ms on this class of machine: the GUI would stall that long every time the worker's
allocations (numba compiling a kernel, building label surfaces) trigger one. Frozen, a full
collection scans only what was created since the task started.

Compiling a numba kernel in the worker stalls the GUI far longer (hundreds of milliseconds: it
allocates hundreds of thousands of objects, so full collections keep coming). The kernels are
cached on disk, so this happens on the first run after installing or changing them. When the
first task starts and the planning kernels have nothing in the cache, a child process compiles
them (by planning a coarse sample: :func:`warm_kernels_main`); a planning task waits for it
(without holding the interpreter lock) and then loads the kernels from the cache.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from imaging.errors import OperationCancelledError, SacroplanError

log = logging.getLogger("sacroplan.gui.workers")

TaskFn = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]

_running = {"tasks": 0}  # over every TaskRunner: the heap stays frozen while any task runs
_running_lock = threading.Lock()


def _task_started() -> None:
    """Freeze the objects alive now out of the garbage collector's scans (first task only)."""
    with _running_lock:
        if _running["tasks"] == 0:
            gc.freeze()
        _running["tasks"] += 1


def _task_ended() -> None:
    """Give the frozen objects back to the collector when the last running task ends."""
    with _running_lock:
        _running["tasks"] = max(0, _running["tasks"] - 1)
        if _running["tasks"] == 0:
            gc.unfreeze()


#: Modules whose numba kernels the planning task calls.
KERNEL_MODULES = (
    "geometry.kernels",
    "geometry.rays",
    "geometry.fieldstack",
    "geometry.pooling",
    "geometry.distance",
)
#: Tasks (by name) that wait for the kernels compiled in the child process.
KERNEL_TASKS = frozenset({"plan", "restore"})
_KERNEL_WAIT_S = 600.0
_ROOT = Path(__file__).resolve().parents[2]


def kernels_cold() -> bool:
    """Whether a planning kernel has nothing in numba's on-disk cache.

    True on the first run after installing or changing a kernel's source (numba then
    compiles it on first call). False when every kernel has a cached entry, and when the
    cache cannot be inspected (the kernels then compile on first call, as without this check).
    """
    try:
        from numba.core.registry import CPUDispatcher

        for name in KERNEL_MODULES:
            for obj in vars(importlib.import_module(name)).values():
                if not isinstance(obj, CPUDispatcher):
                    continue
                if obj.targetoptions.get("inline") == "always":
                    continue  # compiled into its callers, never on its own
                if not obj._cache._cache_file._load_index():  # noqa: SLF001 (numba's cache index)
                    return True
    except Exception:  # numba's cache layout differs: compile on first call
        log.debug("cannot inspect the numba cache", exc_info=True)
        return False
    return False


class _KernelWarmup:
    """The child process that compiles the planning kernels into numba's on-disk cache."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._checked = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the child when the cache is cold (checked once per process)."""
        with self._lock:
            if self._checked:
                return
            self._checked = True
            if not kernels_cold():
                return
            code = (
                f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
                "from app.gui.workers import warm_kernels_main; warm_kernels_main()"
            )
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-c", code],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
                )
                log.info("compiling the planning kernels in process %d", self._proc.pid)
            except OSError:
                log.warning("cannot start the kernel compiler process", exc_info=True)

    def wait(self, stop: threading.Event) -> None:
        """Block (not holding the interpreter lock) until the child ends, or ``stop`` is set."""
        proc = self._proc
        deadline = time.monotonic() + _KERNEL_WAIT_S
        while proc is not None and not stop.is_set() and time.monotonic() < deadline:
            try:
                proc.wait(timeout=0.1)
                return
            except subprocess.TimeoutExpired:
                continue


_warmup = _KernelWarmup()


def warm_kernels_main() -> None:
    """Compile the planning kernels into numba's cache: plan a coarse sample (child process)."""
    from planning.case import Case
    from planning.planner import build_fields, plan_case

    case = Case.sample(spacing_mm=(3.0, 3.0, 3.0))
    case.find_anatomy()
    case.grow_lesion(case.default_seed())
    plan_case(case)
    build_fields(case)


class _Worker(QObject):
    """Runs one task function in its thread and emits the outcome."""

    progress = Signal(float, str)
    done = Signal(object)
    error = Signal(object)
    cancelled = Signal()

    def __init__(self, fn: TaskFn, stop: threading.Event, *, needs_kernels: bool) -> None:
        super().__init__()
        self._fn = fn
        self._stop = stop
        self._needs_kernels = needs_kernels

    @Slot()
    def run(self) -> None:
        """Call the task; route its result, cancellation or exception to the signals."""
        try:
            self._run()
        finally:
            _task_ended()

    def _run(self) -> None:
        try:
            if self._needs_kernels:
                _warmup.wait(self._stop)
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
        needs_kernels: bool | None = None,
    ) -> bool:
        """Start ``fn`` in a worker thread; False (and nothing started) when one is running.

        ``on_done(result)`` / ``on_error(exc)`` are called on the GUI thread after the
        ``finished`` / ``failed`` signals. ``needs_kernels`` (default: ``name`` is in
        :data:`KERNEL_TASKS`) makes the task first wait for the planning kernels being
        compiled in a child process, if they are.
        """
        if self.busy:
            return False
        _warmup.start()
        if needs_kernels is None:
            needs_kernels = name in KERNEL_TASKS
        self._stop = threading.Event()
        self._name = name
        self._callbacks = (on_done, on_error)
        thread = QThread()
        thread.setObjectName(f"sacroplan-{name}")
        worker = _Worker(fn, self._stop, needs_kernels=needs_kernels)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self.progress)
        worker.done.connect(self._on_done)
        worker.error.connect(self._on_error)
        worker.cancelled.connect(self._on_cancelled)
        self._thread, self._worker = thread, worker
        _task_started()
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
