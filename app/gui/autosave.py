"""Autosave of the working session, crash detection, and the settings file (recent cases).

Everything lives in the state folder (``$SACROPLAN_HOME`` or ``~/.sacroplan``, see
:func:`app.logs.state_dir`):

``autosave/session.json``
    The session record (:meth:`Session.to_state`) and the plan, written (atomically) a
    moment after every change.
``autosave/masks.npz``
    The edited mask arrays, so that brush strokes survive too.
``autosave/running.json``
    Written when the workstation starts and removed when it closes normally. Found at the
    next start with a process id that is no longer running, it means the last session
    ended in a crash or a kill: the window offers to restore the autosave.
``settings.json``
    Recent cases and small preferences.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QTimer

from app.logs import state_dir
from imaging.atomic import atomic_write_bytes, atomic_write_text
from imaging.errors import SacroplanError
from planning.plan import Plan, parse_plan_text

log = logging.getLogger("sacroplan.gui.autosave")

AUTOSAVE_DELAY_MS = 800
MAX_RECENT = 10
MAX_SETTINGS_BYTES = 1_000_000


def autosave_dir() -> Path:
    """Folder of the autosave files."""
    return state_dir() / "autosave"


def settings_path() -> Path:
    """The settings file."""
    return state_dir() / "settings.json"


# == settings =================================================================================
def load_settings() -> dict[str, Any]:
    """The settings (an empty dict when the file is missing, unreadable or not ours)."""
    path = settings_path()
    try:
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            log.warning("settings file %s is too large; ignored", path)
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("settings file %s ignored: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(settings: dict[str, Any]) -> None:
    """Write the settings atomically (a failure is logged, never raised)."""
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
    except OSError as exc:
        log.warning("cannot write settings %s: %s", path, exc)


def recent_cases() -> list[dict[str, Any]]:
    """Recent cases, newest first: ``{"kind": "path"|"sample", "path"|"lesion", "label"}``."""
    items = load_settings().get("recent", [])
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict) and i.get("kind") in ("path", "sample")][
        :MAX_RECENT
    ]


def add_recent(entry: dict[str, Any]) -> None:
    """Put a case at the top of the recent list."""
    settings = load_settings()
    key = (entry.get("kind"), entry.get("path"), entry.get("lesion"))
    items = [i for i in recent_cases() if (i.get("kind"), i.get("path"), i.get("lesion")) != key]
    settings["recent"] = [entry, *items][:MAX_RECENT]
    save_settings(settings)


# == crash marker ================================================================================
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_running() -> None:
    """Record that this process owns the autosave."""
    folder = autosave_dir()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "running.json", json.dumps({"pid": os.getpid()}) + "\n")


def mark_closed(*, keep_autosave: bool = False) -> None:
    """A normal exit: drop the marker (and the autosave unless asked to keep it)."""
    folder = autosave_dir()
    names = ["running.json"] if keep_autosave else ["running.json", "session.json", "masks.npz"]
    for name in names:
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", folder / name, exc)


def crashed_autosave() -> Path | None:
    """The autosave left by a session that did not close normally, or None.

    A marker whose process is still running belongs to another open window: not a crash.
    """
    folder = autosave_dir()
    session = folder / "session.json"
    if not session.is_file():
        return None
    marker = folder / "running.json"
    try:
        pid = int(json.loads(marker.read_text(encoding="utf-8")).get("pid", 0))
    except FileNotFoundError:
        pid = 0
    except (OSError, ValueError, AttributeError, TypeError):
        pid = 0
    if pid and pid != os.getpid() and _pid_alive(pid):
        return None
    return session


def read_autosave(path: Path) -> tuple[dict[str, Any], Plan | None, dict[str, np.ndarray]]:
    """Read an autosave: the session record, its plan (or None) and the mask arrays.

    Raises
    ------
    SacroplanError
        The autosave is damaged (the message says so; the file is left in place).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise SacroplanError(
            f"the autosave {path} is damaged and cannot be restored: {exc}"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("session"), dict):
        raise SacroplanError(f"the autosave {path} is not a sacroplan session")
    plan = None
    if data.get("plan") is not None:
        plan = parse_plan_text(json.dumps(data["plan"]), name="the autosaved plan")
    arrays: dict[str, np.ndarray] = {}
    npz = path.with_name("masks.npz")
    if npz.is_file():
        try:
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            log.warning("autosaved masks %s ignored: %s", npz, exc)
    return data["session"], plan, arrays


def write_masks(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write mask arrays as a compressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class Autosaver(QObject):
    """Saves the session a moment after each change (debounced), atomically.

    Parameters
    ----------
    session : Session
    """

    def __init__(self, session: Any, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._session = session
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_DELAY_MS)
        self._timer.timeout.connect(self.save_now)
        self._masks_version = -1
        self.enabled = True
        self.saves = 0
        session.changed.connect(self.schedule)
        session.anatomy_changed.connect(self._masks_dirty)
        session.lesion_changed.connect(self._masks_dirty)

    def _masks_dirty(self) -> None:
        self._masks_version = -1

    def schedule(self) -> None:
        """Save soon (restarts the delay)."""
        if self.enabled:
            self._timer.start()

    def save_now(self) -> bool:
        """Write the autosave now; False when there is nothing to save or writing failed."""
        self._timer.stop()
        s = self._session
        if s.case is None or not self.enabled:
            return False
        folder = autosave_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self._masks_version < 0:
                write_masks(folder / "masks.npz", s.mask_arrays())
                self._masks_version = 1
            plan = s.plan_for_saving().to_json() if s.plan is not None else None
            record = {"session": s.to_state(), "plan": plan}
            atomic_write_text(folder / "session.json", json.dumps(record) + "\n")
        except (OSError, SacroplanError) as exc:
            log.warning("autosave failed: %s", exc)
            return False
        self.saves += 1
        return True
