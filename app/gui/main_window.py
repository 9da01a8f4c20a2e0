"""The workstation's main window: views in the centre, the workflow dock, menus, status bar.

The window binds the :class:`~app.gui.session.Session` to the view grid both ways (model
-> views on the session's signals; views -> model on the grid's signals) and routes every
failure to a dialog. It owns no planning state.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
)

from app.gui import autosave
from app.gui.errors import UserDeclinedError, report_error
from app.gui.panels.anatomy_panel import AnatomyPanel
from app.gui.panels.export_panel import ExportPanel, report_writer
from app.gui.panels.fluoro_panel import fluoro_dock
from app.gui.panels.fusion_panel import fusion_dock
from app.gui.panels.lesion_panel import LesionPanel
from app.gui.panels.plan_panel import BLOCK_COLORS, PlanPanel
from app.gui.panels.trajectory_panel import TrajectoryPanel
from app.gui.panels.why_panel import WhyPanel
from app.gui.series_browser import SeriesBrowser
from app.gui.session import Session, SessionError
from app.gui.theme import clearance_color, gui_presets
from app.gui.views import AblationDisplay, NeedleDisplay, ViewGrid
from imaging.atomic import atomic_path
from imaging.errors import SacroplanError
from imaging.phantom import LESION_SITES
from planning.plan import load_plan, save_plan

log = logging.getLogger("sacroplan.gui.window")

APP_TITLE = "sacroplan"
LAYOUTS = (
    ("1x1", "Single view", "Ctrl+1"),
    ("2x2", "Four views", "Ctrl+2"),
    ("1+3", "One large + three", "Ctrl+3"),
)
VIEW_MODES = (
    ("navigate", "Navigate", "N"),
    ("seed", "Lesion seed", "S"),
    ("landmark", "Move landmarks", "L"),
    ("brush", "Paint", "B"),
    ("erase", "Erase", "E"),
)
VOLUME_FILTER = "Images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm);;All files (*)"
PLAN_FILTER = "sacroplan plan (*.json)"
SAMPLE_SPACINGS = ("1.0", "1.5", "2.0")
BANNER_DESCRIPTION_CHARS = 28
STEP_NAMES = ("Anatomy", "Lesion", "Trajectories", "Plan", "Export", "Why?")
WHY_TAB = STEP_NAMES.index("Why?")


class MainWindow(QMainWindow):
    """The planning workstation window.

    Parameters
    ----------
    session : Session, optional
        The model (a new one by default).
    autosave_enabled : bool
        Autosave the session to the state folder (tests may switch it off).
    """

    closed = Signal()

    def __init__(self, session: Session | None = None, *, autosave_enabled: bool = True) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.session = session or Session(self)
        self._grid = ViewGrid()
        self._grid.setObjectName("viewGrid")
        self.setCentralWidget(self._grid)
        self.setAcceptDrops(True)
        self.resize(1600, 1000)
        self.teaching = False
        self.mode = "navigate"
        self._zones_on = False
        self._force_close = False
        self.autosaver = autosave.Autosaver(self.session, self)
        self.autosaver.enabled = autosave_enabled

        self._build_dock()
        self._build_status()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._connect()
        self._update_title()
        if autosave_enabled:
            try:
                autosave.mark_running()
            except OSError as exc:
                log.warning("cannot write the autosave marker: %s", exc)

    # == construction ============================================================================
    @property
    def grid(self) -> ViewGrid:
        """The view grid."""
        return self._grid

    def _build_dock(self) -> None:
        self.steps = QTabWidget()
        self.steps.setObjectName("workflowSteps")
        self.anatomy_panel = AnatomyPanel(self)
        self.lesion_panel = LesionPanel(self)
        self.trajectory_panel = TrajectoryPanel(self)
        self.plan_panel = PlanPanel(self)
        self.export_panel = ExportPanel(self)
        self.why_panel = WhyPanel(self)
        for panel, name in (
            (self.anatomy_panel, "Anatomy"),
            (self.lesion_panel, "Lesion"),
            (self.trajectory_panel, "Trajectories"),
            (self.plan_panel, "Plan"),
            (self.export_panel, "Export"),
            (self.why_panel, "Why?"),
        ):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(panel)
            self.steps.addTab(scroll, name)
        dock = QDockWidget("Workflow", self)
        dock.setObjectName("workflowDock")
        dock.setWidget(self.steps)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        dock.setMinimumWidth(600)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.dock = dock
        self.fluoro_dock = fluoro_dock(self)
        self.fluoro_panel = self.fluoro_dock.widget()
        self.fusion_dock = fusion_dock(self)
        self.fusion_panel = self.fusion_dock.widget()

    def _build_status(self) -> None:
        bar = self.statusBar()
        self.cursor_label = QLabel("")
        self.cursor_label.setObjectName("readout")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(260)
        self.progress.setVisible(False)
        self.progress_text = QLabel("")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running step (Esc)")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.session.runner.cancel)
        bar.addPermanentWidget(self.progress_text)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(self.cursor_label)

    def _action(
        self,
        text: str,
        slot: Callable[[], Any],
        shortcut: str | QKeySequence | None = None,
        *,
        tip: str = "",
        checkable: bool = False,
    ) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        act.setToolTip(tip or text)
        act.setStatusTip(tip or text)
        act.setCheckable(checkable)
        title = text.replace("…", "").replace("&", "")
        if checkable:
            act.toggled.connect(lambda on: self.run_guarded(title, lambda: slot(on)))  # type: ignore[call-arg]
        else:
            act.triggered.connect(lambda _c=False: self.run_guarded(title, slot))
        self.addAction(act)
        return act

    def _build_actions(self) -> None:
        a = self._action
        self.act_open_folder = a(
            "Open DICOM &folder…", self.open_folder_dialog, QKeySequence.StandardKey.Open
        )
        self.act_open_file = a(
            "Open &image file…",
            self.open_file_dialog,
            "Ctrl+Shift+O",
            tip="Open a NIfTI, NRRD, MetaImage or DICOM file",
        )
        self.act_sample = a(
            "Open &sample case…",
            self.open_sample_dialog,
            "Ctrl+Shift+S",
            tip="The built-in synthetic sacrum with a lesion",
        )
        self.act_load_plan = a("&Load plan…", self.load_plan_dialog, "Ctrl+L")
        self.act_save_plan = a("&Save plan", self.save_plan, QKeySequence.StandardKey.Save)
        self.act_save_as = a("Save plan &as…", self.save_plan_as, "Ctrl+Alt+S")
        self.act_report = a("&Report…", self.write_report_dialog, "Ctrl+R")
        self.act_screenshot = a("Save screens&hot…", self.screenshot_dialog, "F12")
        self.act_quit = a("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_undo = self.session.undo_stack.createUndoAction(self, "&Undo")
        self.act_undo.setShortcut(QKeySequence.StandardKey.Undo)
        self.act_redo = self.session.undo_stack.createRedoAction(self, "&Redo")
        self.act_redo.setShortcuts([QKeySequence.StandardKey.Redo, QKeySequence("Ctrl+Y")])
        self.addAction(self.act_undo)
        self.addAction(self.act_redo)
        self.act_cancel = a("Cancel running step", self.session.runner.cancel, "Esc")
        self.layout_group = QActionGroup(self)
        self.layout_actions: dict[str, QAction] = {}
        for name, label, key in LAYOUTS:
            act = a(label, lambda name=name: self.set_layout(name), key)
            act.setCheckable(True)
            self.layout_group.addAction(act)
            self.layout_actions[name] = act
        self.layout_actions["2x2"].setChecked(True)
        self.preset_actions: dict[str, QAction] = {}
        for p in gui_presets()["window_level"]:
            self.preset_actions[p["name"]] = a(
                p["label"], lambda name=p["name"]: self.apply_preset(name), p.get("shortcut")
            )
        self.mode_group = QActionGroup(self)
        self.mode_actions: dict[str, QAction] = {}
        for mode, label, key in VIEW_MODES:
            act = a(label, lambda mode=mode: self.set_view_mode(mode), key)
            act.setCheckable(True)
            self.mode_group.addAction(act)
            self.mode_actions[mode] = act
        self.mode_actions["navigate"].setChecked(True)
        self.act_teaching = a(
            "&Teaching mode",
            self.set_teaching,
            "Ctrl+T",
            checkable=True,
            tip="Hide patient identifiers (for teaching and demos)",
        )
        self.act_volume = a(
            "&Volume rendering",
            self._set_volume_rendering,
            "Ctrl+Shift+V",
            checkable=True,
            tip="Ray-cast the volume in the 3D view",
        )
        self.act_anatomy = a(
            "Find &anatomy",
            lambda: self.session.run_anatomy(),
            "Ctrl+Alt+1",
            tip="Step 1: automatic anatomy",
        )
        self.act_plan = a(
            "&Plan trajectories", self.run_plan, "Ctrl+Alt+3", tip="Step 3: search every approach"
        )
        self.step_actions = []
        for i, name in enumerate(STEP_NAMES):
            self.step_actions.append(
                a(
                    f"Step {i + 1}: {name}",
                    lambda i=i: self.steps.setCurrentIndex(i),
                    f"Alt+{i + 1}",
                )
            )
        self.act_about = a("&About sacroplan", self.about)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for act in (self.act_open_folder, self.act_open_file, self.act_sample):
            m.addAction(act)
        self.recent_menu = m.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        m.addSeparator()
        for act in (
            self.act_load_plan,
            self.act_save_plan,
            self.act_save_as,
            self.act_report,
            self.act_screenshot,
        ):
            m.addAction(act)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        m.addAction(self.act_undo)
        m.addAction(self.act_redo)
        m.addSeparator()
        for act in self.mode_actions.values():
            m.addAction(act)
        m = mb.addMenu("&View")
        for act in self.layout_actions.values():
            m.addAction(act)
        m.addSeparator()
        for act in self.preset_actions.values():
            m.addAction(act)
        m.addSeparator()
        m.addAction(self.act_teaching)
        m.addAction(self.act_volume)
        m.addSeparator()
        m.addAction(self.fluoro_dock.toggleViewAction())
        m.addAction(self.fusion_dock.toggleViewAction())
        m = mb.addMenu("&Workflow")
        m.addAction(self.act_anatomy)
        m.addAction(self.act_plan)
        m.addSeparator()
        for act in self.step_actions:
            m.addAction(act)
        m = mb.addMenu("&Help")
        m.addAction(self.act_about)

    def _build_toolbar(self) -> None:
        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.addAction(self.act_open_folder)
        tb.addAction(self.act_sample)
        tb.addAction(self.act_save_plan)
        tb.addSeparator()
        stack = self.session.undo_stack
        for text, slot, can, signal in (
            ("Undo", stack.undo, stack.canUndo, stack.canUndoChanged),
            ("Redo", stack.redo, stack.canRedo, stack.canRedoChanged),
        ):
            act = QAction(text, self)
            act.setToolTip(f"{text} the last edit (see the Edit menu for which)")
            act.triggered.connect(slot)
            act.setEnabled(can())
            signal.connect(act.setEnabled)
            tb.addAction(act)
        tb.addSeparator()
        for name, act in self.layout_actions.items():
            act.setIconText(name.replace("x", "\u00d7"))
            tb.addAction(act)
        tb.addSeparator()
        for act in self.preset_actions.values():
            btn_text = act.text().split(" (")[0]
            act.setIconText(btn_text)
            tb.addAction(act)
        tb.addSeparator()
        short = {"seed": "Seed", "landmark": "Landmarks"}
        for mode, act in self.mode_actions.items():
            if mode in short:
                act.setIconText(short[mode])
            tb.addAction(act)
        tb.addSeparator()
        self.act_teaching.setIconText("Teaching")
        tb.addAction(self.act_teaching)

    def _connect(self) -> None:
        s = self.session
        g = self._grid
        s.study_changed.connect(self._on_study)
        s.anatomy_changed.connect(self._on_anatomy)
        s.landmarks_changed.connect(self._on_landmarks)
        s.lesion_changed.connect(self._on_labels)
        s.plan_changed.connect(self._on_needles)
        s.selection_changed.connect(self._on_selection)
        s.error.connect(self._on_error)
        s.step_done.connect(self._on_step_done)
        s.message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        s.dirty_changed.connect(lambda _d: self._update_title())
        r = s.runner
        r.started.connect(self._task_started)
        r.progress.connect(self._task_progress)
        r.busy_changed.connect(self._task_busy)
        r.cancelled.connect(lambda name: self.statusBar().showMessage(f"{name}: cancelled", 5000))
        g.point_clicked.connect(self._on_click)
        g.crosshair_moved.connect(self._show_cursor)
        g.needle_dragged.connect(self._on_needle_drag)
        g.needle_drag_finished.connect(self._on_needle_drop)
        g.landmark_drag_finished.connect(self._on_landmark_drop)
        g.brush_stroke_finished.connect(self._on_brush)
        g.window_level_changed.connect(self._on_window_level)

    # == guarded calls =============================================================================
    def run_guarded(self, title: str, fn: Callable[[], Any]) -> Any:  # noqa: ANN401
        """Call ``fn()``; any exception becomes a dialog and a log entry, never a crash."""
        try:
            return fn()
        except Exception as exc:
            report_error(self, title, exc)
            return None

    def _view(self, what: str, fn: Callable[[], Any]) -> None:
        """A call into the views: a renderer failure is shown and the window stays usable."""
        try:
            fn()
        except Exception as exc:
            report_error(self, f"Display ({what})", exc)

    # == model -> views ===========================================================================
    def _on_study(self) -> None:
        image = self.session.image
        self._view("study", lambda: self._grid.set_volume(image))
        if image is not None:
            preset = "bone" if image.modality.upper() == "CT" else "mr_auto"
            self._view("preset", lambda: self._grid.apply_preset(preset))
        self._update_banner()
        self._update_title()
        self._on_anatomy()
        self._on_needles()

    def _on_anatomy(self) -> None:
        self._view("landmarks", lambda: self._grid.set_landmarks(self.session.landmarks()))
        self._on_labels()

    def _on_landmarks(self) -> None:
        self._view("landmarks", lambda: self._grid.set_landmarks(self.session.landmarks()))
        if self._zones_on:
            self._view("zones", lambda: self._grid.set_zone_map(self.session.zone_volume()))

    def _on_labels(self) -> None:
        # The zone tint goes on after the labels: a label layer added after the zone layer
        # is drawn under it in the slice views.
        if self._zones_on:
            self._view("zones", lambda: self._grid.set_zone_map(None))
        self._view("labels", lambda: self._grid.set_labels(self.session.label_volume()))
        if self._zones_on:
            self._view("zones", lambda: self._grid.set_zone_map(self.session.zone_volume()))

    def _on_error(self, title: str, exc: object) -> None:
        report_error(self, title, exc)  # type: ignore[arg-type]

    def _on_step_done(self, step: str) -> None:
        """Bring the result into view: the sacrum after the anatomy, the lesion after growth."""
        case = self.session.case
        if case is None:
            return
        point = None
        if step == "anatomy" and case.anatomy is not None:
            centres = [f.center_lps for n, f in case.anatomy.foramina.items() if "S1" in n]
            point = np.mean(centres, axis=0) if centres else case.anatomy.endplate_center
            self.steps.setCurrentIndex(1)
        elif step == "lesion" and case.metrics is not None:
            point = np.asarray(case.metrics.centroid_lps, float)
            self.steps.setCurrentIndex(1)
        elif step == "plan":
            self.steps.setCurrentIndex(WHY_TAB if self.teaching else 2)
        if point is not None:
            self._view("crosshair", lambda: self._grid.set_crosshair(point))
            self._show_cursor(point)

    def needle_displays(self) -> list[Any]:
        """What the views draw for the plan's needles (display index = session.needle_keys)."""
        s = self.session
        out = []
        blocks = s.block_keys()
        for key in s.needle_keys():
            c = s.candidate(key)
            assert c is not None
            cl = [v for v in (c.clearance_mm.foramina, c.clearance_mm.canal) if v is not None]
            color = clearance_color(min(cl) if cl else None, c.feasible)
            if key in blocks and c.feasible:  # the needles of a two-needle plan: own colours
                color = BLOCK_COLORS[blocks.index(key) % len(BLOCK_COLORS)]
            elif blocks and key != s.selected:  # the other approaches recede behind them
                color = (color[0] * 0.5, color[1] * 0.5, color[2] * 0.5)
            out.append(
                NeedleDisplay(
                    entry_lps=np.asarray(c.skin_entry_lps, float),
                    target_lps=np.asarray(c.target_lps, float),
                    diameter_mm=float(c.needle_od_mm),
                    color=color,
                    label=s.needle_label(key),
                    selected=key == s.selected,
                    editable=key == s.selected,
                    labelled=key in blocks,
                )
            )
        return out

    def ablation_displays(self) -> list[Any]:
        """RFA zones of the plan as ellipsoids along the chosen needle."""
        plan = self.session.plan
        if plan is None or plan.rfa is None or not plan.rfa.centres_lps or not plan.trajectories:
            return []
        t = plan.trajectories[0]
        axis = np.asarray(t.target_lps, float) - np.asarray(t.entry_lps, float)
        axis /= max(float(np.linalg.norm(axis)), 1e-9)
        r = plan.rfa
        # two radii across the electrode, the third along it (the views contract)
        radii = (r.zone_diameter_mm / 2, r.zone_diameter_mm / 2, r.zone_length_mm / 2)
        return [
            AblationDisplay(center_lps=np.asarray(c, float), axis=axis, radii_mm=radii)
            for c in r.centres_lps
        ]

    def _on_needles(self) -> None:
        self._view("needles", lambda: self._grid.set_needles(self.needle_displays()))
        self._view("ablation", lambda: self._grid.set_ablation_zones(self.ablation_displays()))

    def _on_selection(self, key: str) -> None:
        self._on_needles()
        keys = self.session.needle_keys()
        if key in keys:
            index = keys.index(key)
            self._view("focus", lambda: self._grid.focus_needle(index))

    def _update_banner(self) -> None:
        image = self.session.image
        if image is None or self.teaching:
            self._view("banner", lambda: self._grid.set_banner(None))
            return
        m = image.meta
        description = str(m.get("description") or "")
        if len(description) > BANNER_DESCRIPTION_CHARS:
            description = description[: BANNER_DESCRIPTION_CHARS - 1] + "\u2026"
        parts = [
            str(m.get("patient_name") or ""),
            f"ID {m['patient_id']}" if m.get("patient_id") else "",
            str(m.get("study_date") or ""),
            image.modality,
            description,
        ]
        text = "  |  ".join(p for p in parts if p)
        self._view("banner", lambda: self._grid.set_banner(text))

    def _update_title(self) -> None:
        s = self.session
        title = APP_TITLE
        if s.case is not None:
            name = s.case.source
            if self.teaching:
                name = "anonymous study"
            title = f"{name} - {APP_TITLE}"
        if s.dirty:
            title = "* " + title
        self.setWindowTitle(title)

    # == views -> model ===========================================================================
    def _on_click(self, lps: Any, view: str) -> None:  # noqa: ANN401
        self._show_cursor(lps)
        if self.mode == "seed":
            self.run_guarded(
                "Lesion",
                lambda: self.session.grow_lesion(lps, options=self.lesion_panel.options()),
            )
            self.set_view_mode("navigate")

    def _on_needle_drag(self, index: int, entry: Any, target: Any) -> None:  # noqa: ANN401
        try:
            self.session.preview_needle(index, entry, target)
        except Exception as exc:  # a live preview failing must not spam dialogs
            log.warning("needle preview failed: %s", exc)

    def _on_needle_drop(self, index: int, entry: Any, target: Any) -> None:  # noqa: ANN401
        self.run_guarded("Move needle", lambda: self.session.move_needle(index, entry, target))

    def _on_landmark_drop(self, ident: str, lps: Any) -> None:  # noqa: ANN401
        self.run_guarded("Move landmark", lambda: self.session.move_landmark(ident, lps))

    def _on_brush(self, centres: Any, radius_mm: float, erase: bool) -> None:  # noqa: ANN401
        target = self.anatomy_panel.brush_target()
        self.run_guarded(
            "Brush",
            lambda: self.session.paint_stroke(list(centres), radius_mm, erase=erase, target=target),
        )

    def _on_window_level(self, window: float, level: float) -> None:
        self.session.view_state["window_level"] = [float(window), float(level)]

    def _show_cursor(self, lps: Any) -> None:  # noqa: ANN401
        p = np.asarray(lps, float).reshape(3)
        text = f"L {p[0]:.1f}  P {p[1]:.1f}  S {p[2]:.1f} mm"
        image = self.session.image
        if image is not None:
            ijk = np.round(image.world_to_index(p[None, :])[0]).astype(int)
            if np.all(ijk >= 0) and np.all(ijk < np.asarray(image.size)):
                value = float(image.array[ijk[2], ijk[1], ijk[0]])
                if image.modality.upper() == "CT":
                    text += f"   value {value:.0f} HU"
                else:
                    text += f"   value {value:.4g}"
        self.cursor_label.setText(text)
        self.session.view_state["crosshair_lps"] = [round(float(v), 2) for v in p]

    # == view controls ============================================================================
    def set_layout(self, name: str) -> None:
        """Switch the grid layout (1x1, 2x2, 1+3)."""
        self._view("layout", lambda: self._grid.set_layout(name))
        if name in self.layout_actions:
            self.layout_actions[name].setChecked(True)
        self.session.view_state["layout"] = name

    def apply_preset(self, name: str) -> None:
        """A window/level preset."""
        self._view("preset", lambda: self._grid.apply_preset(name))
        self.session.view_state["preset"] = name

    def set_view_mode(self, mode: str) -> None:
        """Mouse mode of the slice views."""
        self.mode = mode
        self._view("mode", lambda: self._grid.set_mode(mode))
        if mode in self.mode_actions:
            self.mode_actions[mode].setChecked(True)
        self.anatomy_panel.show_mode(mode)
        if mode != "seed" and self.lesion_panel.seed_button.isChecked():
            self.lesion_panel.seed_button.blockSignals(True)
            self.lesion_panel.seed_button.setChecked(False)
            self.lesion_panel.seed_button.blockSignals(False)
        hints = {
            "seed": "Click inside the lesion in any slice view",
            "landmark": "Drag a landmark in a slice view",
            "brush": "Paint with the left button (radius in the Anatomy step)",
            "erase": "Erase with the left button",
        }
        if mode in hints:
            self.statusBar().showMessage(hints[mode], 6000)

    def set_labels_visible(self, labels: tuple[int, ...], on: bool) -> None:
        """Show or hide label overlays."""
        for label in labels:
            self._view("overlay", lambda label=label: self._grid.set_label_visible(int(label), on))

    def show_zones(self, on: bool) -> None:
        """Show or hide the Denis zone overlay."""
        self._zones_on = on
        zones = self.session.zone_volume() if on else None
        self._view("zones", lambda: self._grid.set_zone_map(zones))
        show = getattr(self._grid, "set_zones_visible", None)
        if callable(show):
            self._view("zones", lambda: show(on))

    def set_teaching(self, on: bool) -> None:
        """Teaching mode hides identifiers (banner, title, report) and shows the "why?" panel."""
        self.teaching = bool(on)
        self._update_banner()
        self._update_title()
        if self.teaching:
            self.steps.setCurrentIndex(WHY_TAB)

    def _set_volume_rendering(self, on: bool) -> None:
        self._view("volume rendering", lambda: self._grid.set_volume_rendering(on))

    def run_plan(self, on_done: Callable[[], None] | None = None) -> None:
        """Step 3 with the options shown in the panels."""
        s = self.session
        s.plan_options = dataclasses.replace(
            s.plan_options, with_rfa=self.trajectory_panel.rfa.isChecked()
        )
        s.run_plan(on_done=on_done)

    # == progress ================================================================================
    def _task_started(self, _name: str, label: str) -> None:
        self.progress_text.setText(label)
        self.progress.setValue(0)

    def _task_progress(self, fraction: float, text: str) -> None:
        self.progress.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        if text:
            self.progress_text.setText(text)

    def _task_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if not busy:
            self.progress_text.setText("")

    # == opening ==================================================================================
    def open_folder_dialog(self) -> None:
        """Ask for a DICOM folder, scan it, let the user pick a series."""
        folder = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if folder:
            self.open_path(folder)

    def open_file_dialog(self) -> None:
        """Ask for an image file (NIfTI, NRRD, MetaImage, DICOM)."""
        path, _ = QFileDialog.getOpenFileName(self, "Open image file", "", VOLUME_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> None:
        """Open a study: a plan file loads the plan; otherwise scan and browse the series."""
        p = Path(path)
        if not p.exists():
            raise SessionError(f"no such file or folder: {p}")
        if p.is_file() and p.suffix.lower() == ".json":
            self.load_plan(p)
            return
        self._confirm_discard_or_raise()

        def scan_task(progress: Callable[[float, str], None], _c: Callable[[], bool]) -> Any:  # noqa: ANN401
            from imaging.read import scan

            progress(0.1, f"scanning {p.name}")
            return scan(p)

        self.session._run("scan", scan_task, "Scanning the study", lambda r: self._scanned(p, r))  # noqa: SLF001

    def _scanned(self, path: Path, result: Any) -> None:  # noqa: ANN401
        series = result.series
        if not series:
            reasons = "; ".join(f"{Path(k.path).name}: {k.reason}" for k in result.skipped[:5])
            report_error(
                self,
                "Open",
                SacroplanError(
                    f"{path} holds no image series that can be loaded"
                    + (f" ({reasons})" if reasons else "")
                ),
            )
            return
        uid = series[0].uid
        if len(series) > 1 or result.skipped or series[0].warnings:
            browser = SeriesBrowser(result, str(path), self)
            if browser.exec() != QDialog.DialogCode.Accepted or browser.chosen() is None:
                return
            uid = browser.chosen().uid  # type: ignore[union-attr]
        self.session.open_path(
            path,
            series_uid=uid,
            on_done=lambda: autosave.add_recent(
                {"kind": "path", "path": str(path), "label": path.name}
            ),
        )

    def open_sample_dialog(self) -> None:
        """Ask which lesion site (and voxel size) and open the built-in sample."""
        self._confirm_discard_or_raise()
        dlg = QDialog(self)
        dlg.setWindowTitle("Open sample case")
        form = QFormLayout(dlg)
        site = QComboBox()
        site.addItems(list(LESION_SITES))
        form.addRow("Lesion site", site)
        spacing = QComboBox()
        spacing.addItems([f"{s} mm" for s in SAMPLE_SPACINGS])
        spacing.setCurrentIndex(1)
        form.addRow("Voxel size", spacing)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(dlg.accept)
        buttons.rejected.connect(dlg.reject)
        form.addRow(buttons)
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return
        mm = float(SAMPLE_SPACINGS[spacing.currentIndex()])
        self.open_sample(site.currentText(), spacing_mm=(mm, mm, mm))

    def open_sample(
        self,
        lesion: str,
        *,
        spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
        modality: str = "ct",
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Open the built-in sample (off the GUI thread)."""

        def done() -> None:
            autosave.add_recent(
                {
                    "kind": "sample",
                    "lesion": lesion,
                    "spacing_mm": list(spacing_mm),
                    "label": f"sample: {lesion}",
                }
            )
            if on_done is not None:
                on_done()

        self.session.open_sample(
            lesion=lesion, modality=modality, spacing_mm=spacing_mm, on_done=done
        )

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        items = autosave.recent_cases()
        if not items:
            act = self.recent_menu.addAction("(none)")
            act.setEnabled(False)
            return
        for item in items:
            act = self.recent_menu.addAction(str(item.get("label") or item.get("path")))
            act.triggered.connect(lambda _c=False, item=item: self._open_recent_guarded(item))

    def _open_recent_guarded(self, item: dict[str, Any]) -> None:
        self.run_guarded("Open", lambda: self._open_recent(item))

    def _open_recent(self, item: dict[str, Any]) -> None:
        if item.get("kind") == "sample":
            sp = item.get("spacing_mm") or [1.5, 1.5, 1.5]
            self._confirm_discard_or_raise()
            self.open_sample(str(item.get("lesion")), spacing_mm=tuple(float(v) for v in sp))
        else:
            self.open_path(str(item.get("path")))

    # == drag and drop ==========================================================================
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        """Accept folders and files dropped from a file manager."""
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        """Open the first dropped folder or file."""
        urls = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if not urls:
            return
        event.acceptProposedAction()
        path = urls[0].toLocalFile()
        self.run_guarded("Open", lambda: self.open_path(path))

    # == plans ===================================================================================
    def save_plan(self) -> None:
        """Save to the current plan file (ask for one the first time)."""
        if self.session.plan_path is None:
            self.save_plan_as()
        else:
            self.write_plan(self.session.plan_path)

    def save_plan_as(self) -> None:
        """Ask where to save the plan."""
        if self.session.plan is None:
            raise SessionError("there is no plan to save yet: run the trajectory search first")
        path, _ = QFileDialog.getSaveFileName(self, "Save plan", "plan.json", PLAN_FILTER)
        if path:
            if not path.lower().endswith(".json"):
                path += ".json"
            self.write_plan(Path(path))

    def write_plan(self, path: Path) -> None:
        """Write the plan file (atomic) and its mask side file."""
        s = self.session
        s.plan_path = Path(path)
        save_plan(s.plan_for_saving(), path)
        arrays = s.mask_arrays()
        if arrays:
            autosave.write_masks(masks_path(Path(path)), arrays)
        s.mark_saved()
        self.export_panel.refresh()
        self.statusBar().showMessage(f"Plan saved to {path}", 8000)

    def load_plan_dialog(self) -> None:
        """Ask for a plan file and load it."""
        path, _ = QFileDialog.getOpenFileName(self, "Load plan", "", PLAN_FILTER)
        if path:
            self.load_plan(Path(path))

    def load_plan(self, path: Path, *, on_done: Callable[[], None] | None = None) -> None:
        """Load a plan: reopen its study, redo the anatomy and lesion, restore the needles."""
        plan = load_plan(path)
        state = plan.view_state.get("session")
        if not isinstance(state, dict):
            raise SessionError(
                f"{path} holds a plan but not the workstation's session record (which study, "
                "which edits); open its study first, then plan it again"
            )
        self._confirm_discard_or_raise()
        arrays: dict[str, np.ndarray] = {}
        side = masks_path(Path(path))
        if side.is_file():
            try:
                with np.load(side, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as exc:
                log.warning("mask side file %s ignored: %s", side, exc)
        state = dict(state)
        state["plan_path"] = str(path)

        def done() -> None:
            self._restore_views()
            self.session.mark_saved()
            if on_done is not None:
                on_done()

        self.session.restore(state, masks=arrays, plan=plan, on_done=done)

    def restore_autosave(self, path: Path, *, on_done: Callable[[], None] | None = None) -> None:
        """Restore the session autosaved by a run that did not end normally."""
        state, plan, arrays = autosave.read_autosave(path)

        def done() -> None:
            self._restore_views()
            log.info("session restored from the autosave %s", path)
            self.statusBar().showMessage("The autosaved session was restored", 10000)
            if on_done is not None:
                on_done()

        self.session.restore(state, masks=arrays, plan=plan, on_done=done)

    def _restore_views(self) -> None:
        view = self.session.view_state
        if view.get("layout") in self.layout_actions:
            self.set_layout(str(view["layout"]))
        if isinstance(view.get("window_level"), list) and len(view["window_level"]) == 2:
            w, lv = (float(v) for v in view["window_level"])
            self._view("window", lambda: self._grid.set_window_level(w, lv))
        elif view.get("preset") in self.preset_actions:
            self.apply_preset(str(view["preset"]))
        cross = view.get("crosshair_lps")
        if isinstance(cross, list) and len(cross) == 3:
            self._view("crosshair", lambda: self._grid.set_crosshair(np.asarray(cross, float)))
        if self.session.selected:
            self._on_selection(self.session.selected)

    def write_report_dialog(self) -> None:
        """Write the report with ``app.report.write_report`` (when installed)."""
        writer = report_writer()
        if writer is None:
            raise SessionError("the report writer is not part of this version of sacroplan")
        if self.session.plan is None:
            raise SessionError("there is no plan to report yet: run the trajectory search first")
        path, _ = QFileDialog.getSaveFileName(
            self, "Write report", "report.html", "Report (*.html *.pdf)"
        )
        if not path:
            return
        # the radiographs are drawn on the worker thread (a second or two), then the report
        # is written here with the pictures the views show now
        from app.report import fluoro_figures_for

        plan, case = self.session.plan_for_saving(), self.session.case
        runner = self.session.runner
        if runner.busy:
            raise SessionError(f"wait for '{runner.name}' to finish (or cancel it) first")

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Any:
            progress(0.1, "simulated fluoroscopy for the report")
            return fluoro_figures_for(plan, case)

        runner.start(
            "report",
            task,
            label="Writing the report",
            on_done=lambda figures: self.run_guarded(
                "Report", lambda: self.write_report(Path(path), fluoro=figures)
            ),
            on_error=lambda exc: self.session.error.emit("Report", exc),
        )

    def write_report(self, path: Path, *, fluoro: Any = None) -> Path:  # noqa: ANN401
        """Write the report (HTML or PDF by suffix) with the pictures the views show now.

        ``fluoro``: the report's radiographs drawn already (:func:`app.report.fluoro_figures_for`);
        without it they are drawn here.
        """
        writer = report_writer()
        if writer is None:
            raise SessionError("the report writer is not part of this version of sacroplan")
        anonymous = self.export_panel.anonymous.isChecked() or self.teaching
        extra = {} if fluoro is None else {"fluoro": fluoro}
        out = writer(  # type: ignore[operator]
            self.session.plan_for_saving(),
            path,
            case=self.session.case,
            anonymous=anonymous,
            images=self.report_images(),
            **extra,
        )
        self.statusBar().showMessage(f"Report written to {path}", 8000)
        return Path(out)

    def report_images(self) -> dict[str, bytes]:
        """PNG pictures of the views and the clearance plot, by the report's keys."""
        out: dict[str, bytes] = {}
        grab = getattr(self._grid, "grab_views", None)
        if callable(grab):
            try:
                views = grab()
            except Exception as exc:  # the report still works without the pictures
                log.warning("could not grab the views for the report: %s", exc)
                views = {}
            for name, key in (
                ("axial", "axial"),
                ("sagittal", "sagittal"),
                ("3d", "view3d"),
                ("bullseye", "bullseye"),
            ):
                if name in views:
                    out[key] = _png_bytes(views[name])
        if self.session.selected and self.trajectory_panel.plot.curves:
            buf = io.BytesIO()
            self.trajectory_panel.plot.figure.savefig(buf, format="png", dpi=110)
            out["clearance"] = buf.getvalue()
        return out

    def screenshot_dialog(self) -> None:
        """Save a screenshot of the whole window."""
        path, _ = QFileDialog.getSaveFileName(
            self, "Save screenshot", "sacroplan.png", "PNG image (*.png)"
        )
        if path:
            self.save_window_screenshot(Path(path))

    def save_window_screenshot(self, path: Path) -> None:
        """Grab the window from the screen (VTK views included) into a PNG, atomically."""
        screen = self.screen()
        geo = self.frameGeometry()
        pixmap = screen.grabWindow(0, geo.x(), geo.y(), geo.width(), geo.height())
        with atomic_path(path) as tmp:
            if not pixmap.save(str(tmp), "PNG"):
                raise SacroplanError(f"cannot write the screenshot {path}")

    def about(self) -> None:
        """The about box."""
        from app import __version__

        QMessageBox.about(
            self,
            "About sacroplan",
            f"sacroplan {__version__}\nPlanning workstation for percutaneous sacroplasty "
            "(with or without radiofrequency ablation).\nA planning aid: every number must be "
            "checked by the physician.",
        )

    # == closing =================================================================================
    def _confirm_discard_or_raise(self) -> None:
        if not self._confirm_discard():
            raise UserDeclinedError()

    def _confirm_discard(self) -> bool:
        """True when there are no unsaved changes or the user lets them go (or saves)."""
        s = self.session
        if not s.dirty or s.case is None:
            return True
        box = QMessageBox(self)
        box.setObjectName("unsavedDialog")
        box.setWindowTitle("Unsaved changes")
        buttons = QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel
        if s.plan is not None:
            box.setText("The plan has changes that are not saved. Save them first?")
            buttons |= QMessageBox.StandardButton.Save
        else:
            box.setText(
                "The anatomy and lesion edits are not saved (a plan file is written after the "
                "trajectory search). Discard them?"
            )
        box.setStandardButtons(buttons)
        box.setDefaultButton(
            QMessageBox.StandardButton.Save
            if s.plan is not None
            else QMessageBox.StandardButton.Cancel
        )
        answer = box.exec()
        if answer == QMessageBox.StandardButton.Cancel:
            return False
        if answer == QMessageBox.StandardButton.Save:
            if s.plan is None:
                return True
            self.save_plan()
            return not s.dirty
        return True

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        """Prompt on unsaved changes; stop the worker; drop the autosave on a normal exit."""
        if not self._force_close and not self._confirm_discard():
            event.ignore()
            return
        runner = self.session.runner
        if runner.busy:
            runner.cancel()
            runner.wait(15000)
        if self.autosaver.enabled:
            autosave.mark_closed()
        self.autosaver.enabled = False
        self._finalize_views()
        self.closed.emit()
        event.accept()

    def close_without_prompt(self) -> None:
        """Close (tests, scripted runs): no unsaved-changes question."""
        self._force_close = True
        self.close()

    def _finalize_views(self) -> None:
        finalize = getattr(self._grid, "shutdown", None)
        if callable(finalize):
            self._view("close", finalize)


def _png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 image."""
    buf = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = buf.shape[:2]
    image = QImage(buf.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    data = QByteArray()
    device = QBuffer(data)
    device.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(device, "PNG")
    device.close()
    return bytes(data.data())


def masks_path(plan_path: Path) -> Path:
    """Side file holding the edited masks of a saved plan."""
    return plan_path.with_name(plan_path.stem + ".masks.npz")
