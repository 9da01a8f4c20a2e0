"""Undo commands: every edit of the session is one of these on its QUndoStack.

Each command stores what it needs to go both ways (the state before and after), so that
one drag, one brush stroke or one step of the workflow is one undo step. ``redo`` is also
what applies the edit the first time (``QUndoStack.push`` calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtGui import QUndoCommand

if TYPE_CHECKING:
    from app.gui.session import Session
    from planning.plan import Plan


class StateCommand(QUndoCommand):
    """A workflow step that replaced parts of the state (anatomy, lesion, plan, fields)."""

    def __init__(
        self, session: Session, before: dict[str, Any], after: dict[str, Any], text: str
    ) -> None:
        super().__init__(text)
        self._session = session
        self._before = before
        self._after = after

    def redo(self) -> None:
        """Apply the new state."""
        self._session.apply_snapshot(self._after)

    def undo(self) -> None:
        """Put the old state back."""
        self._session.apply_snapshot(self._before)


class PlanCommand(QUndoCommand):
    """A change of the plan only (needle moved, margins, needle choice, chosen trajectory)."""

    def __init__(self, session: Session, before: Plan, after: Plan, text: str) -> None:
        super().__init__(text)
        self._session = session
        self._before = before
        self._after = after

    def redo(self) -> None:
        """Apply the new plan."""
        self._session.set_plan(self._after)

    def undo(self) -> None:
        """Put the old plan back."""
        self._session.set_plan(self._before)


class LandmarkCommand(QUndoCommand):
    """A landmark moved (one drag)."""

    def __init__(self, session: Session, ident: str, old: np.ndarray, new: np.ndarray) -> None:
        super().__init__(f"Move landmark {ident}")
        self._session = session
        self._ident = ident
        self._old = np.array(old, dtype=np.float64)
        self._new = np.array(new, dtype=np.float64)

    def redo(self) -> None:
        """Put the landmark at its new place."""
        self._session.place_landmark(self._ident, self._new)

    def undo(self) -> None:
        """Put the landmark back."""
        self._session.place_landmark(self._ident, self._old)


class BrushCommand(QUndoCommand):
    """One brush stroke: the voxels it changed, their values before and after."""

    def __init__(
        self,
        session: Session,
        target: str,
        index: tuple[np.ndarray, ...],
        old_values: np.ndarray,
        new_values: np.ndarray,
        verb: str,
    ) -> None:
        super().__init__(f"{verb} {target} ({len(index[0])} voxels)")
        self._session = session
        self._target = target
        self._index = index
        self._old = old_values
        self._new = new_values

    def redo(self) -> None:
        """Write the stroke's values."""
        self._session.brush_array(self._target)[self._index] = self._new
        self._session.masks_edited(self._target)

    def undo(self) -> None:
        """Write the values from before the stroke."""
        self._session.brush_array(self._target)[self._index] = self._old
        self._session.masks_edited(self._target)
