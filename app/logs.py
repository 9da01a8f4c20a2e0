"""Logging to a rotating file in the user's state folder (never to the terminal by default).

The command line and the workstation share one log: ``<state>/logs/sacroplan.log``, where
``<state>`` is ``$SACROPLAN_HOME`` or ``~/.sacroplan``. It rotates at 2 MB and keeps three
old files (``sacroplan.log.1`` .. ``.3``). Every ``sacroplan.*`` logger writes there;
unexpected errors are logged with their traceback (the terminal or the dialog shows one
line and the log file's path).

:func:`enable_fault_log` additionally makes a hard crash inside a compiled extension
(a segmentation fault) leave the Python stack of every thread in ``logs/faults.log``.
"""

from __future__ import annotations

import faulthandler
import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

__all__ = [
    "BACKUP_COUNT",
    "MAX_LOG_BYTES",
    "enable_fault_log",
    "log_dir",
    "log_file_path",
    "setup_logging",
    "state_dir",
]

_HANDLER_NAME = "sacroplan-file"
#: Size at which the log rotates (bytes), and how many old logs are kept.
MAX_LOG_BYTES = 2_000_000
BACKUP_COUNT = 3
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_fault_file: IO[str] | None = None


def state_dir() -> Path:
    """Folder for logs, autosaves and settings (``$SACROPLAN_HOME`` or ``~/.sacroplan``)."""
    root = os.environ.get("SACROPLAN_HOME") or str(Path.home() / ".sacroplan")
    return Path(root)


def log_dir() -> Path:
    """Folder of the log files."""
    return state_dir() / "logs"


def log_file_path() -> Path:
    """Path of the current log file."""
    return log_dir() / "sacroplan.log"


def _our_handler(logger: logging.Logger) -> logging.Handler | None:
    return next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)


def setup_logging(*, level: int = logging.INFO) -> Path | None:
    """Attach one rotating file handler to the ``sacroplan`` logger (idempotent).

    Called again after ``$SACROPLAN_HOME`` changed, it moves the handler to the new
    folder. If the state folder cannot be created (read-only home), logging stays silent
    rather than failing the command.

    Parameters
    ----------
    level : int
        Lowest level written (``logging.INFO`` by default).

    Returns
    -------
    Path or None
        The log file written to, or None when no log file could be opened.
    """
    logger = logging.getLogger("sacroplan")
    logger.setLevel(level)
    logger.propagate = False
    path = log_file_path()
    current = _our_handler(logger)
    if current is not None:
        if getattr(current, "baseFilename", None) == os.path.abspath(path):
            return path
        if isinstance(current, logging.NullHandler) and not _can_write(path):
            return None
        logger.removeHandler(current)
        current.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = RotatingFileHandler(
            path, maxBytes=MAX_LOG_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
        opened: Path | None = path
    except OSError:
        handler = logging.NullHandler()
        opened = None
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    return opened


def _can_write(path: Path) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK)


def enable_fault_log() -> Path | None:
    """Write the Python stacks to ``logs/faults.log`` if the process dies of a fatal signal.

    For the workstation, which runs compiled decoders and renderers for hours: a crash in
    C code cannot be caught, but it leaves a trace. Returns the file, or None when it
    cannot be opened.
    """
    global _fault_file
    path = log_dir() / "faults.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process
    except OSError:
        return None
    if _fault_file is not None:
        _fault_file.close()
    _fault_file = handle
    faulthandler.enable(file=handle, all_threads=True)
    return path
