"""The fluoroscopy dock: simulated C-arm views (DRR) of the study with the plan projected on top.

The dock holds a :class:`~app.gui.views.fluoro_view.FluoroView` bound to the session: the
study's CT (its anatomy and lesion once found), the selected needle (or the plan's chosen
trajectory) and, for a multi-needle plan, every needle of the block. Buttons pick the C-arm
view (AP, lateral, inlet, outlet, and the bull's-eye and progression views of the selected
needle); spin boxes set the source-to-detector and source-to-isocentre distances.

Work is lazy and off the GUI thread: while the dock is hidden, changes only mark it stale
and it catches up when shown; live needle drags (the session's ``needle_preview``) are
coalesced to one update per :data:`DRAG_COALESCE_MS`, and the view renders every DRR in a
worker thread (a fast half-resolution preview while dragging). An MR study gets a message
instead: a radiograph needs the attenuation of a CT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QDockWidget,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from app.gui.panels.common import hint_label
from app.gui.panels.plan_panel import BLOCK_COLORS
from app.gui.views.fluoro_view import FluoroView
from imaging.drr import DEFAULT_SID_MM, DEFAULT_SOD_MM
from imaging.errors import SacroplanError
from planning.needles import get_needle

if TYPE_CHECKING:
    from app.gui.session import Session
    from planning.plan import Candidate

#: Live needle previews closer together than this (ms) are drawn once, with the latest pose.
DRAG_COALESCE_MS = 40
#: Buttons of the C-arm views: (label, view key; "{n}" is the selected needle's number).
VIEW_BUTTONS = (
    ("AP", "ap"),
    ("Lateral", "lateral"),
    ("Inlet", "inlet"),
    ("Outlet", "outlet"),
    ("Bull's-eye", "bulls_eye_{n}"),
    ("Progression", "progression_{n}"),
)
MR_MESSAGE = (
    "Simulated fluoroscopy (DRR) needs a CT: this study is {modality}. Open the patient's CT "
    "(the MR can be fused onto it in the Fusion dock)."
)
NO_STUDY_MESSAGE = "Open a CT study (or the sample case) to see simulated fluoroscopy."

Needle = tuple[np.ndarray, np.ndarray, float, str]


class FluoroPanel(QWidget):
    """Simulated fluoroscopy of the session's study with the planned needles on top.

    Parameters
    ----------
    session : Session
        The workstation's session (study, anatomy, lesion, plan, selection).
    parent : QWidget, optional
    """

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("fluoroPanel")
        self.session = session
        self.view = FluoroView()
        self.view.setObjectName("fluoroView")
        self.message = QLabel(NO_STUDY_MESSAGE)
        self.message.setObjectName("fluoroMessage")
        self.message.setWordWrap(True)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.message)
        self.stack.addWidget(self.view)
        self._stale_case = True
        self._stale_needles = True
        self._shown_image: object | None = None
        self._preview: dict[str, Candidate] = {}
        self._view_key = "ap"
        self._selected_number = 1
        self._drag_timer = QTimer(self)
        self._drag_timer.setSingleShot(True)
        self._drag_timer.setInterval(DRAG_COALESCE_MS)
        self._drag_timer.timeout.connect(lambda: self._push_needles(interactive=True))

        self.view_buttons: dict[str, QPushButton] = {}
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        buttons = QHBoxLayout()
        buttons.setSpacing(2)
        for label, key in VIEW_BUTTONS:
            b = QPushButton(label)
            b.setCheckable(True)
            b.setToolTip(
                f"{label} view" + (" of the selected needle" if "{n}" in key else " (C-arm)")
            )
            b.clicked.connect(lambda _c=False, key=key: self.show_view(key))
            self._group.addButton(b)
            buttons.addWidget(b)
            self.view_buttons[key] = b
        self.view_buttons["ap"].setChecked(True)
        self.all_needles = QCheckBox("All approaches")
        self.all_needles.setToolTip("Draw the best needle of every feasible approach")
        self.all_needles.toggled.connect(lambda _on: self._mark_needles())
        buttons.addStretch(1)
        buttons.addWidget(self.all_needles)

        self.sid = QDoubleSpinBox()
        self.sid.setRange(600.0, 1500.0)
        self.sid.setSingleStep(10.0)
        self.sid.setDecimals(0)
        self.sid.setSuffix(" mm")
        self.sid.setValue(DEFAULT_SID_MM)
        self.sid.setToolTip("Source-to-detector distance (mobile C-arms: 1000-1200 mm)")
        self.sod = QDoubleSpinBox()
        self.sod.setRange(300.0, 1400.0)
        self.sod.setSingleStep(10.0)
        self.sod.setDecimals(0)
        self.sod.setSuffix(" mm")
        self.sod.setValue(DEFAULT_SOD_MM)
        self.sod.setToolTip("Source-to-isocentre distance (the isocentre is the lesion)")
        for spin in (self.sid, self.sod):
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(lambda _v: self._distances_changed())
        self.distance_note = QLabel("")
        self.distance_note.setObjectName("hint")
        geometry = QHBoxLayout()
        geometry.addWidget(QLabel("Source-detector"))
        geometry.addWidget(self.sid)
        geometry.addWidget(QLabel("Source-isocentre"))
        geometry.addWidget(self.sod)
        geometry.addWidget(self.distance_note, 1)

        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        root.setSpacing(4)
        root.addLayout(buttons)
        root.addLayout(geometry)
        root.addWidget(self.stack, 1)
        root.addWidget(
            hint_label(
                "Bone is dark as on the fluoroscopy monitor. Needles in colour, foramina "
                "dashed yellow, lesion red; the views follow the selected needle and its drags."
            )
        )

        s = session
        s.study_changed.connect(self._mark_case)
        s.anatomy_changed.connect(self._mark_case)
        s.lesion_changed.connect(self._mark_case)
        s.plan_changed.connect(self._mark_needles)
        s.selection_changed.connect(lambda _key: self._mark_needles())
        s.needle_preview.connect(self._on_preview)
        self.view.view_changed.connect(self._on_view_changed)

    # == public ================================================================================
    def show_view(self, key: str) -> None:
        """Show a C-arm view: ``"ap"``, ``"lateral"``, ``"inlet"``, ``"outlet"``, or
        ``"bulls_eye_{n}"`` / ``"progression_{n}"`` (``{n}``: the selected needle)."""
        self._view_key = key
        if key in self.view_buttons:
            self.view_buttons[key].setChecked(True)
        self._apply_view()

    def needles(self) -> list[Needle]:
        """Needles drawn now: ``(entry_lps, target_lps, diameter_mm, label)`` (mm, LPS)."""
        return self._needles_with(self._preview)

    def selected_needle_number(self) -> int:
        """1-based number of the selected needle among :meth:`needles` (1 when none)."""
        return self._selected_number

    def is_idle(self) -> bool:
        """True when nothing is stale, waiting or rendering (the DRRs shown are current)."""
        if self.stack.currentWidget() is not self.view:
            return not self._stale_case
        return (
            not self._stale_case
            and not self._stale_needles
            and not self._drag_timer.isActive()
            and self.view.is_idle()
        )

    def shutdown(self) -> None:
        """Stop timers and wait for running renders (before the window goes)."""
        self._drag_timer.stop()
        self.view.shutdown()

    # == session -> view ======================================================================
    def _active(self) -> bool:
        return self.isVisible()

    def _mark_case(self) -> None:
        self._stale_case = True
        self._stale_needles = True
        if self._active():
            QTimer.singleShot(0, self._catch_up)

    def _mark_needles(self) -> None:
        self._stale_needles = True
        self._preview = {}
        if self._active():
            QTimer.singleShot(0, self._catch_up)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt)
        """Catch up with what changed while the dock was hidden."""
        super().showEvent(event)
        QTimer.singleShot(0, self._catch_up)

    def _catch_up(self) -> None:
        if not self._active():
            return
        if self._stale_case:
            self._stale_case = False
            self._push_case()
        if self._stale_needles and self.stack.currentWidget() is self.view:
            self._stale_needles = False
            self._push_needles(interactive=False)

    def _push_case(self) -> None:
        case = self.session.case
        if case is None:
            self.message.setText(NO_STUDY_MESSAGE)
            self.stack.setCurrentWidget(self.message)
            return
        modality = str(case.image.modality or "").upper()
        if modality != "CT":
            self.message.setText(MR_MESSAGE.format(modality=modality or "not a CT"))
            self.stack.setCurrentWidget(self.message)
            return
        self.stack.setCurrentWidget(self.view)
        self.view.set_case(case)
        self._stale_needles = True

    def _on_preview(self, key: str, cand: Candidate) -> None:
        """A needle is being dragged: redraw with its live pose (coalesced)."""
        self._preview[key] = cand
        live = self._active() and self.stack.currentWidget() is self.view
        if live and not self._drag_timer.isActive():
            self._drag_timer.start()

    def _push_needles(self, *, interactive: bool) -> None:
        if self.session.case is None or self.stack.currentWidget() is not self.view:
            return
        needles = self.needles()
        self.view.set_needles(needles, interactive=interactive, colors=self._colors)
        self._apply_view()

    def _needles_with(self, preview: dict[str, Any]) -> list[Needle]:
        s = self.session
        out: list[Needle] = []
        self._selected_number = 1
        # a two-needle block's needles keep the slice views' colours; others the dock's palette
        self._colors: list[tuple[float, float, float] | None] = []
        if s.plan is None:
            return out
        keys = s.needle_keys()
        block = s.block_keys()
        chosen = s.selected
        if not chosen and s.plan.suggestion is not None:
            chosen = s.plan.suggestion.approach or ""
        shown = keys if self.all_needles.isChecked() else [k for k in keys if k == chosen]
        for key in shown:
            c = preview.get(key) or s.candidate(key)
            if c is None:
                continue
            if key == chosen:
                self._selected_number = len(out) + 1
            self._colors.append(
                BLOCK_COLORS[block.index(key) % len(BLOCK_COLORS)] if key in block else None
            )
            out.append(
                (
                    np.asarray(c.skin_entry_lps, float),
                    np.asarray(c.target_lps, float),
                    float(c.needle_od_mm),
                    s.needle_label(key),
                )
            )
        if not shown and s.plan.trajectories:
            t = s.plan.trajectories[0]
            self._colors.append(None)
            out.append(
                (
                    np.asarray(t.entry_lps, float),
                    np.asarray(t.target_lps, float),
                    _needle_od(t.needle),
                    str(t.approach or "chosen").replace("_", " "),
                )
            )
        multi = getattr(s.plan, "multi_needle", None)
        placed = list(getattr(multi, "needles", ()) or ())
        if len(placed) > 1:  # a bilateral or tandem block: every needle of it
            for n, item in enumerate(placed, start=1):
                if n <= len(block) and block[n - 1] in shown:
                    continue  # drawn above (with its live pose while dragged)
                c = getattr(item, "candidate", None)
                if c is None:
                    continue
                e = np.asarray(c.skin_entry_lps, float)
                t = np.asarray(c.target_lps, float)
                if any(np.allclose(e, o[0]) and np.allclose(t, o[1]) for o in out):
                    continue  # the selected needle is one of the block
                label = str(getattr(item, "label", "") or f"needle {n}")
                side = getattr(c, "side", None)
                self._colors.append(BLOCK_COLORS[(n - 1) % len(BLOCK_COLORS)])
                out.append(
                    (
                        e,
                        t,
                        float(getattr(c, "needle_od_mm", 2.8)),
                        f"{label} {side or ''}".strip(),
                    )
                )
        return out

    def _apply_view(self) -> None:
        if self.stack.currentWidget() is not self.view:
            return
        key = self._view_key.format(n=self.selected_needle_number())
        if key not in self.view.view_names():
            if "{n}" in self._view_key:
                self.distance_note.setText("No needle planned yet: plan the trajectories first")
            return
        self.distance_note.setText("")
        if self.view.current_view() != key:
            self.view.set_view(key)

    def _on_view_changed(self, key: str) -> None:
        generic = key
        for prefix in ("bulls_eye_", "progression_"):
            if key.startswith(prefix):
                generic = prefix + "{n}"
        if generic in self.view_buttons:
            self._view_key = generic
            self.view_buttons[generic].setChecked(True)

    def _distances_changed(self) -> None:
        sid, sod = float(self.sid.value()), float(self.sod.value())
        if not sod < sid:
            self.distance_note.setText(
                "The source-isocentre distance must be shorter than the source-detector one"
            )
            return
        self.distance_note.setText(f"magnification {sid / sod:.2f} at the isocentre")
        self.view.set_carm_distances(sid, sod)


def _needle_od(needle_id: str) -> float:
    """Outer diameter (mm) of a needle id, 2.8 mm (an 11 G needle) when unknown."""
    try:
        return float(get_needle(needle_id).outer_diameter_mm)
    except SacroplanError:
        return 2.8


def fluoro_dock(window: QMainWindow) -> QDockWidget:
    """Add the (hidden) fluoroscopy dock to the workstation window; View > Fluoroscopy shows it.

    ``window`` needs ``session`` and a ``closed`` signal (renders are waited for then).
    """
    panel = FluoroPanel(window.session)  # type: ignore[attr-defined]
    dock = QDockWidget("Fluoroscopy", window)
    dock.setObjectName("fluoroDock")
    dock.setWidget(panel)
    dock.setAllowedAreas(Qt.DockWidgetArea.AllDockWidgetAreas)
    window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
    dock.hide()
    act = dock.toggleViewAction()
    act.setText("&Fluoroscopy")
    act.setShortcut(QKeySequence("Ctrl+Shift+F"))
    act.setStatusTip("Simulated C-arm views (DRR) with the planned needles")
    window.closed.connect(panel.shutdown)  # type: ignore[attr-defined]
    return dock
