"""The workstation application end to end: real window, real views, real planning, under Xvfb.

Run: QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/pytest
tests/test_gui_app.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("needs a display (run under xvfb-run)", allow_module_level=True)

import vtkmodules.qt  # noqa: E402

vtkmodules.qt.PyQtImpl = "PySide6"

from PySide6.QtCore import QObject, QTimer, Signal  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from app.gui import autosave  # noqa: E402
from app.gui.errors import install_excepthook  # noqa: E402
from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.session import Session  # noqa: E402
from app.gui.theme import apply_dark_theme  # noqa: E402
from planning.plan import load_plan  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACING = (2.0, 2.0, 2.0)
TASK_TIMEOUT_MS = 120_000
SHOTS = Path("/tmp/shots")


# -- helpers -----------------------------------------------------------------------------------
class DialogCatcher:
    """Closes the next modal dialogs as they appear and records their text."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.titles: list[str] = []
        self.answer = QMessageBox.StandardButton.Ok
        self.accept_browser = False
        self.browsers: list[int] = []
        self._timer = QTimer()
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def _poll(self) -> None:
        from app.gui.series_browser import SeriesBrowser

        w = QApplication.activeModalWidget()
        if isinstance(w, SeriesBrowser) and self.accept_browser:
            self.browsers.append(w.table.rowCount())
            w.accept()
            return
        if isinstance(w, QMessageBox):
            self.texts.append(w.text())
            self.titles.append(w.windowTitle())
            button = w.button(self.answer) or w.button(QMessageBox.StandardButton.Ok)
            if button is not None:
                button.click()
            else:
                w.reject()

    def stop(self) -> None:
        self._timer.stop()


@pytest.fixture
def dialogs(qtbot):
    catcher = DialogCatcher()
    yield catcher
    catcher.stop()


@pytest.fixture(autouse=True)
def _no_window_or_thread_left(qtbot):
    """No workstation window stays open and no worker thread runs after a test."""
    yield
    QApplication.processEvents()
    left = [
        w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow) and w.isVisible()
    ]
    assert not left, "a workstation window was left open"
    from PySide6.QtCore import QThread

    threads = [t for t in QApplication.instance().findChildren(QThread)]
    assert not [t for t in threads if t.isRunning()]


@pytest.fixture
def window(qtbot):
    apply_dark_theme(QApplication.instance())
    win = MainWindow()
    qtbot.addWidget(win, before_close_func=lambda w: w.close_without_prompt())
    win.resize(1600, 1000)
    win.show()
    qtbot.waitExposed(win)
    yield win
    if win.isVisible():
        win.close_without_prompt()
    assert not win.session.runner.busy


def wait_idle(qtbot, session: Session, timeout: int = TASK_TIMEOUT_MS) -> None:
    qtbot.waitUntil(lambda: not session.runner.busy, timeout=timeout)


def open_sample(qtbot, win: MainWindow, lesion: str = "left_ala_s1") -> None:
    win.open_sample(lesion, spacing_mm=SPACING)
    wait_idle(qtbot, win.session)
    assert win.session.case is not None


def shot(win: MainWindow, name: str) -> None:
    """Screenshot of the real window (for people to look at; not in the repository)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    QApplication.processEvents()
    win.grid.render_all()
    QApplication.processEvents()
    win.save_window_screenshot(SHOTS / f"app_{name}.png")


# -- the workflow ----------------------------------------------------------------------------------
def test_workflow_plan_drag_undo_save_load(qtbot, window, dialogs, tmp_path, monkeypatch):
    s = window.session
    open_sample(qtbot, window)
    assert window.grid.crosshair().shape == (3,)
    shot(window, "1_open")

    # Step 1: anatomy through the panel's button.
    window.steps.setCurrentIndex(0)
    window.anatomy_panel.run_button.click()
    wait_idle(qtbot, s)
    assert s.case.anatomy is not None and len(s.case.anatomy.foramina) >= 6
    labels = s.label_volume()
    assert labels is not None and {1, 4, 5} <= set(np.unique(labels.array).tolist())
    assert "Foramina:" in window.anatomy_panel.summary.text()
    window.anatomy_panel.zones_check.setChecked(True)
    assert s.zone_volume() is not None
    shot(window, "2_anatomy")

    # Step 2: seed mode, then a click in a view (the grid's own signal) grows the lesion.
    window.steps.setCurrentIndex(1)
    window.lesion_panel.seed_button.click()
    assert window.mode == "seed"
    seed = s.case.default_seed()
    window.grid.point_clicked.emit(seed, "axial")
    wait_idle(qtbot, s)
    truth = s.case.sample_truth.lesion
    assert s.case.metrics is not None
    assert s.case.metrics.volume_ml == pytest.approx(truth.volume_ml, rel=0.35)
    assert s.case.metrics.denis_zone == truth.denis_zone
    assert "mL" in window.lesion_panel.readout.text()
    assert window.mode == "navigate"
    assert np.allclose(window.grid.crosshair(), s.case.metrics.centroid_lps, atol=0.01)
    shot(window, "3_lesion")
    grown = s.case.lesion
    window.act_undo.trigger()  # the seed/grow is one undo step
    assert s.case.lesion is None and "No lesion" in window.lesion_panel.readout.text()
    window.act_redo.trigger()
    assert s.case.lesion is grown

    # Step 3: plan through the panel; the suggestion is selected and shown.
    window.steps.setCurrentIndex(2)
    window.trajectory_panel.run_button.click()
    wait_idle(qtbot, s)
    plan = s.plan
    assert plan is not None and plan.suggestion is not None and plan.suggestion.approach
    assert s.selected == plan.suggestion.approach
    table = window.trajectory_panel.table
    assert table.rowCount() == len(plan.best_by_approach)
    assert window.trajectory_panel.plot.curves, "the clearance plot has curves"
    shot(window, "4_trajectories")

    # Click another feasible row: selection follows, the needle is focused in the views.
    keys = s.needle_keys()
    other = next((k for k in keys if k != s.selected), s.selected)
    row = window.trajectory_panel.row_of(other)
    table.selectRow(row)
    assert s.selected == other
    displays = window.needle_displays()
    assert [d.selected for d in displays].count(True) == 1
    assert displays[keys.index(other)].editable

    # Drag its tip handle (the grid's signals): live preview, then one undo step.
    cand = s.candidate(other)
    entry = np.array(cand.skin_entry_lps)
    tip = np.array(cand.target_lps)
    new_tip = tip + np.array([0.0, 0.0, 4.0])
    previews = []
    s.needle_preview.connect(lambda k, c: previews.append((k, c)))
    index = keys.index(other)
    window.grid.needle_dragged.emit(index, entry, tip + np.array([0.0, 0.0, 2.0]))
    window.grid.needle_dragged.emit(index, entry, new_tip)
    assert len(previews) == 2 and previews[-1][0] == other
    assert s.candidate(other).target_lps == cand.target_lps  # preview changes nothing
    depth_before = cand.skin_to_target_mm
    steps_before = s.undo_stack.count()
    window.grid.needle_drag_finished.emit(index, entry, new_tip)
    moved = s.candidate(other)
    assert np.allclose(moved.target_lps, new_tip, atol=0.01)
    assert moved.skin_to_target_mm != pytest.approx(depth_before, abs=0.05)
    assert s.undo_stack.count() == steps_before + 1
    assert other in s.plan.view_state["edited"]
    cell = table.item(window.trajectory_panel.row_of(other), 6).text()
    assert cell.startswith(f"{moved.skin_to_target_mm:.0f}/")
    assert s.dirty and window.windowTitle().startswith("*")

    # Undo restores the needle and the readout; redo puts the drag back.
    window.act_undo.trigger()
    assert s.candidate(other).target_lps == cand.target_lps
    assert (
        table.item(window.trajectory_panel.row_of(other), 6)
        .text()
        .startswith(f"{cand.skin_to_target_mm:.0f}/")
    )
    window.act_redo.trigger()
    assert np.allclose(s.candidate(other).target_lps, new_tip, atol=0.01)

    # Step 4: margins are re-scored (one undo step); the C-arm reads in words.
    window.steps.setCurrentIndex(3)
    assert "Detector" in window.plan_panel.carm.text()
    assert "mL" in window.plan_panel.cement.text()
    spin = window.plan_panel.margin_spins["foramen_mm"]
    spin.setValue(30.0 if spin.maximum() >= 30 else spin.maximum())
    assert s.plan.margins.foramen_mm == spin.value()
    assert not any(s.candidate(k).feasible for k in s.needle_keys())
    shot(window, "5_plan_margins")
    window.act_undo.trigger()
    assert s.plan.margins.foramen_mm == 2.0
    assert window.plan_panel.margin_spins["foramen_mm"].value() == 2.0

    # RFA: plan again with ablation; the zones are drawn along the chosen needle.
    window.steps.setCurrentIndex(2)
    window.trajectory_panel.rfa.setChecked(True)
    window.trajectory_panel.run_button.click()
    wait_idle(qtbot, s)
    assert s.plan.rfa is not None and s.plan.rfa.n_ablations >= 1
    zones = window.ablation_displays()
    assert len(zones) == len(s.plan.rfa.centres_lps) >= 1
    assert zones[0].radii_mm[2] == pytest.approx(s.plan.rfa.zone_length_mm / 2)
    assert "ablation" in window.plan_panel.rfa.text()
    window.steps.setCurrentIndex(3)
    shot(window, "5b_rfa")
    window.act_undo.trigger()  # back to the plan without RFA (one step)
    assert s.plan.rfa is None and not window.ablation_displays()
    window.trajectory_panel.rfa.setChecked(False)
    s.select(other)

    # Landmark drag = one undo step; the sacral frame follows and undo puts it back.
    lm = s.landmarks()
    name = next(k for k in lm if k.startswith("foramen:S1"))
    old = lm[name].copy()
    window.grid.landmark_drag_finished.emit(name, old + np.array([3.0, 0.0, 0.0]))
    assert np.allclose(s.landmarks()[name], old + [3.0, 0.0, 0.0])
    assert s.plan_stale
    window.act_undo.trigger()
    assert np.allclose(s.landmarks()[name], old)

    # Brush stroke on the sacrum = one undo step with the exact voxels back.
    before = s.case.anatomy.mask("sacrum").copy()
    window.anatomy_panel.target.setCurrentIndex(0)
    centre = s.case.anatomy.endplate_center
    notices = []
    s.anatomy_changed.connect(lambda: notices.append(1))
    stroke = [centre + [0, 0, -0.5 * i] for i in range(12)]
    window.grid.brush_stroke_finished.emit(stroke, 4.0, True)
    after = s.case.anatomy.mask("sacrum")
    assert (before != after).sum() > 0
    assert len(notices) == 1, "one stroke redraws the overlays once"
    window.act_undo.trigger()
    assert np.array_equal(s.case.anatomy.mask("sacrum"), before)

    # Teaching mode hides the identifiers; the 1+3 layout; back to 2x2.
    window.act_teaching.setChecked(True)
    banners = [v._banner.GetVisibility() for v in window.grid.slice_views.values()]  # noqa: SLF001
    assert not any(banners)
    assert "anonymous" in window.windowTitle()
    window.set_layout("1+3")
    shot(window, "6_teaching_1p3")
    window.act_teaching.setChecked(False)
    assert all(v._banner.GetVisibility() for v in window.grid.slice_views.values())  # noqa: SLF001
    window.set_layout("2x2")

    # Save, reload into a fresh window: study, lesion, needles, selection come back.
    out = tmp_path / "case.json"
    window.write_plan(out)
    assert not s.dirty
    saved = load_plan(out)
    assert saved.view_state["session"]["open"]["kind"] == "sample"
    assert (tmp_path / "case.masks.npz").is_file()

    # The report (when the report writer is installed) carries the views' pictures.
    assert window.export_panel.report_button.isEnabled()
    images = window.report_images()
    assert {"axial", "sagittal", "view3d", "clearance"} <= set(images)
    assert all(v.startswith(b"\x89PNG") for v in images.values())
    # "Report..." asks for a file, draws the radiographs on the worker thread, then writes it
    from PySide6.QtWidgets import QFileDialog

    report = tmp_path / "report.html"
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(report), ""))
    )
    window.export_panel.report_button.click()
    assert s.runner.busy and s.runner.name == "report"
    wait_idle(qtbot, s)
    qtbot.waitUntil(report.is_file, timeout=TASK_TIMEOUT_MS)
    text = report.read_text(encoding="utf-8")
    assert "<img" in text and "data:image/png" in text
    assert "Simulated fluoroscopy" in text and "data:image/png" in text.split("Simulated")[-1]
    window.close_without_prompt()

    win2 = MainWindow()
    qtbot.addWidget(win2)
    win2.show()
    win2.load_plan(out)
    wait_idle(qtbot, win2.session)
    s2 = win2.session
    assert s2.case is not None and s2.case.metrics is not None
    assert s2.case.metrics.volume_ml == pytest.approx(s.case.metrics.volume_ml, abs=1e-6)
    assert s2.selected == s.selected
    assert np.allclose(s2.candidate(other).target_lps, new_tip, atol=0.01)
    assert s2.fields is not None and not s2.dirty
    assert win2.trajectory_panel.table.rowCount() == table.rowCount()
    win2.close_without_prompt()
    assert not dialogs.texts, dialogs.texts


# -- failures ------------------------------------------------------------------------------------
class _Emitter(QObject):
    fire = Signal()


def test_exception_in_a_slot_shows_a_dialog_and_the_window_lives(qtbot, window, dialogs):
    restore = install_excepthook(lambda: window)
    try:
        emitter = _Emitter()

        def broken() -> None:
            raise ZeroDivisionError("a bug in a slot")

        emitter.fire.connect(broken)
        emitter.fire.emit()
        qtbot.waitUntil(lambda: bool(dialogs.texts), timeout=5000)
    finally:
        restore()
    assert "ZeroDivisionError" in dialogs.texts[-1]
    assert "log file" in dialogs.texts[-1]
    assert window.isVisible()
    window.set_layout("1x1")  # still usable
    assert window.layout_actions["1x1"].isChecked()

    # A failure inside the views (here: a renderer call on a slice view that does not exist) is a
    # dialog too.
    n = len(dialogs.texts)
    window._view("focus", lambda: window.grid.slice_views[99])  # noqa: SLF001
    qtbot.waitUntil(lambda: len(dialogs.texts) > n, timeout=5000)
    assert "Display" in dialogs.titles[-1]
    # Focusing a needle that does not exist is not an error: the views just clear the focus.
    n = len(dialogs.texts)
    window._view("focus", lambda: window.grid.focus_needle(99))  # noqa: SLF001
    assert len(dialogs.texts) == n
    window.set_layout("2x2")
    assert window.isVisible()


def test_failing_worker_shows_a_dialog_and_leaves_the_window_usable(qtbot, window, dialogs):
    s = window.session

    def task(progress, cancel):
        progress(0.5, "half way")
        raise RuntimeError("worker blew up")

    failures = []
    s.runner.failed.connect(lambda name, exc: failures.append(exc))
    s._run("broken", task, "Broken step", lambda _r: None)  # noqa: SLF001
    qtbot.waitUntil(lambda: bool(dialogs.texts), timeout=10000)
    wait_idle(qtbot, s)
    assert isinstance(failures[0], RuntimeError)
    assert "worker blew up" in dialogs.texts[-1]
    assert window.isVisible() and not window.progress.isVisible()
    open_sample(qtbot, window)  # the next task runs normally
    assert s.image is not None


def test_cancel_stops_a_step_and_keeps_the_state(qtbot, window, dialogs):
    s = window.session
    open_sample(qtbot, window)
    cancelled = []
    s.runner.cancelled.connect(cancelled.append)
    s.run_anatomy()
    assert window.cancel_button.isVisible()
    qtbot.waitUntil(lambda: window.progress.value() > 0, timeout=20000)
    window.cancel_button.click()
    wait_idle(qtbot, s)
    assert cancelled == ["anatomy"]
    assert s.case.anatomy is None and s.undo_stack.count() == 0
    assert not dialogs.texts
    s.run_anatomy()  # and it can run again
    wait_idle(qtbot, s)
    assert s.case.anatomy is not None


def test_bad_inputs_give_dialogs_not_crashes(qtbot, window, dialogs, tmp_path):
    s = window.session
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI at all")
    window.run_guarded("Open", lambda: window.open_path(broken))
    qtbot.waitUntil(lambda: bool(dialogs.texts), timeout=20000)
    wait_idle(qtbot, s)
    assert s.case is None
    assert "Traceback" not in dialogs.texts[-1]

    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"schema": "sacroplan.plan/1", "candidates": 5')
    n = len(dialogs.texts)
    window.run_guarded("Load plan", lambda: window.load_plan(bad_plan))
    qtbot.waitUntil(lambda: len(dialogs.texts) > n, timeout=5000)
    assert "not valid JSON" in dialogs.texts[-1]

    # Plan before anatomy, a seed outside the study: plain messages.
    open_sample(qtbot, window)
    n = len(dialogs.texts)
    window.trajectory_panel.run_button.click()
    qtbot.waitUntil(lambda: len(dialogs.texts) > n, timeout=5000)
    assert "anatomy first" in dialogs.texts[-1]
    window.set_view_mode("seed")
    window.grid.point_clicked.emit(np.array([5000.0, 0.0, 0.0]), "axial")
    qtbot.waitUntil(lambda: len(dialogs.texts) > n + 1, timeout=5000)
    assert "outside the study" in dialogs.texts[-1]
    # A seed in air (inside the study, outside bone) fails in the worker: a dialog too.
    window.set_view_mode("seed")
    corner = s.image.index_to_world(np.array([[2.0, 2.0, 2.0]]))[0]
    window.grid.point_clicked.emit(corner, "axial")
    qtbot.waitUntil(lambda: len(dialogs.texts) > n + 2, timeout=20000)
    wait_idle(qtbot, s)
    assert s.case.lesion is None
    assert window.isVisible()


def test_unsaved_changes_prompt_on_close(qtbot, window, dialogs):
    open_sample(qtbot, window)
    window.session.run_anatomy()
    wait_idle(qtbot, window.session)
    assert window.session.dirty
    dialogs.answer = QMessageBox.StandardButton.Cancel
    window.close()
    qtbot.wait(200)
    assert window.isVisible(), "Cancel keeps the window open"
    assert any("not saved" in t for t in dialogs.texts)
    assert "Discard" in dialogs.texts[-1]
    dialogs.answer = QMessageBox.StandardButton.Discard
    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)


def test_recent_cases_and_settings_are_written_atomically(qtbot, window):
    open_sample(qtbot, window, "s1_body")
    items = autosave.recent_cases()
    assert items[0]["kind"] == "sample" and items[0]["lesion"] == "s1_body"
    path = autosave.settings_path()
    assert json.loads(path.read_text())["recent"][0]["lesion"] == "s1_body"
    assert not list(path.parent.glob("*.tmp*"))
    path.write_text("{broken")
    assert autosave.recent_cases() == []  # a damaged settings file is ignored, not fatal


# -- autosave, kill, restore -----------------------------------------------------------------------
def test_autosave_survives_sigkill_and_is_restored(qtbot, dialogs, tmp_path):
    home = Path(os.environ["SACROPLAN_HOME"])
    env = dict(os.environ, SACROPLAN_HOME=str(home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "gui",
            "--sample",
            "--lesion",
            "right_ala_s1",
            "--spacing",
            "2,2,2",
            "--auto",
            "--no-restore",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    session_file = home / "autosave" / "session.json"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if session_file.is_file():
                data = json.loads(session_file.read_text())
                if data.get("plan") is not None:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.3)
        else:
            pytest.fail("the running workstation never autosaved a plan")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert (home / "autosave" / "running.json").is_file()
    crashed = autosave.crashed_autosave()
    assert crashed == session_file

    # A real restart restores it (and closes normally: the autosave is gone afterwards).
    home2 = tmp_path / "home2"
    shutil.copytree(home / "autosave", home2 / "autosave")
    png = tmp_path / "restored.png"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "gui", "--restore", "--screenshot", str(png)],
        cwd=REPO,
        env=dict(env, SACROPLAN_HOME=str(home2)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert png.stat().st_size > 50_000
    log_text = (home2 / "logs" / "sacroplan.log").read_text()
    assert "session restored from the autosave" in log_text
    assert not (home2 / "autosave" / "session.json").exists()

    # The same in this process, to look inside the restored session.
    win = MainWindow()
    qtbot.addWidget(win, before_close_func=lambda w: w.close_without_prompt())
    win.show()
    win.restore_autosave(crashed)
    wait_idle(qtbot, win.session)
    s = win.session
    assert s.case is not None and s.case.source == "sample:right_ala_s1"
    assert s.plan is not None and s.plan.suggestion is not None
    assert s.case.metrics is not None and s.case.metrics.denis_zone == 1
    assert s.selected == s.plan.suggestion.approach
    assert s.fields is not None
    win.close_without_prompt()
    assert autosave.crashed_autosave() is None, "a normal close removes the autosave"
    assert not dialogs.texts, dialogs.texts


# -- command line ----------------------------------------------------------------------------------
def test_gui_without_a_display_exits_2_with_a_message(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["SACROPLAN_HOME"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "gui", "--sample"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "no display" in r.stderr
    assert "Fatal" not in r.stderr and "Traceback" not in r.stderr


# -- opening a folder: drop, series browser --------------------------------------------------
def test_dropped_folder_opens_through_the_series_browser(qtbot, window, dialogs, tmp_path):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    from app.gui.series_browser import SeriesBrowser
    from imaging.sample import write_sample

    write_sample(tmp_path / "ct", lesion="s1_body", modality="ct", spacing_mm=(3.0, 3.0, 3.0))
    write_sample(tmp_path / "mr", lesion="s1_body", modality="mr", spacing_mm=(3.0, 3.0, 3.0))
    seen: list[list[str]] = []

    def pick_ct() -> None:
        w = QApplication.activeModalWidget()
        if isinstance(w, SeriesBrowser):
            table = w.table
            mods = [table.item(r, 3).text() for r in range(table.rowCount())]
            seen.append(mods)
            table.selectRow(
                next(r for r, m in enumerate(mods) if m == "CT" and table.item(r, 4).text() != "1")
            )
            w.accept()

    timer = QTimer()
    timer.timeout.connect(pick_ct)
    timer.start(50)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path))])
    event = QDropEvent(
        QPointF(10, 10),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
    )
    window.dropEvent(event)
    qtbot.waitUntil(lambda: bool(seen), timeout=30000)
    timer.stop()
    qtbot.waitUntil(lambda: window.session.case is not None, timeout=30000)
    wait_idle(qtbot, window.session)
    assert {"CT", "MR"} <= set(seen[0])
    image = window.session.image
    assert image.modality == "CT" and np.allclose(image.spacing, 3.0)
    assert autosave.recent_cases()[0]["path"] == str(tmp_path)
    assert not dialogs.texts, dialogs.texts


def test_gui_sample_screenshot_shows_the_plan(tmp_path):
    from PySide6.QtGui import QImage

    png = tmp_path / "shot.png"
    env = dict(os.environ, SACROPLAN_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "gui",
            "--sample",
            "--spacing",
            "2,2,2",
            "--screenshot",
            str(png),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    image = QImage(str(png))
    assert image.width() >= 1200 and image.height() >= 800
    # Not blank: many distinct colours (slices, overlays, 3D surfaces, needles, text).
    small = image.scaled(200, 125)
    colours = {small.pixel(x, y) for x in range(small.width()) for y in range(small.height())}
    assert len(colours) > 500


def test_nifti_file_opens_on_the_real_ct(qtbot, window, dialogs):
    from conftest import shared_data

    path = shared_data("pelvis_ct_nifti", "example_ct.nii.gz")
    dialogs.accept_browser = True  # shown when the reader has warnings about the file
    window.open_path(path)
    qtbot.waitUntil(lambda: window.session.case is not None, timeout=60000)
    wait_idle(qtbot, window.session)
    image = window.session.image
    assert image.modality == "CT" and np.allclose(image.spacing, 3.0, atol=0.01)
    inside = image.index_to_world(np.array([[60.0, 50.0, 56.0]]))[0]
    window.grid.crosshair_moved.emit(inside)
    assert "HU" in window.cursor_label.text()
    assert not dialogs.texts, dialogs.texts
