"""Logging to a rotating file in the user's state folder (never to the terminal by default)."""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

_HANDLER_NAME = "sacroplan-file"


def state_dir() -> Path:
    """Folder for logs, autosaves and settings (``$SACROPLAN_HOME`` or ``~/.sacroplan``)."""
    root = os.environ.get("SACROPLAN_HOME") or str(Path.home() / ".sacroplan")
    return Path(root)


def log_file_path() -> Path:
    """Path of the current log file."""
    return state_dir() / "logs" / "sacroplan.log"


def setup_logging(*, level: int = logging.INFO) -> None:
    """Attach one rotating file handler to the ``sacroplan`` logger (idempotent).

    If the state folder cannot be created (read-only home), logging stays silent rather
    than failing the command.
    """
    logger = logging.getLogger("sacroplan")
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    logger.setLevel(level)
    logger.propagate = False
    try:
        path = log_file_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = RotatingFileHandler(
            path, maxBytes=2_000_000, backupCount=3, encoding="utf-8"
        )
    except OSError:
        handler = logging.NullHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
