"""The main command ``sacroplan --sample``, the "why?" panel and teaching mode.

The window tests need a display: run under
QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/pytest tests/test_gui_cli.py
The no-display test runs anywhere (it removes the display from the child's environment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.cli import main

REPO = Path(__file__).resolve().parents[1]
HAS_DISPLAY = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
needs_display = pytest.mark.skipif(not HAS_DISPLAY, reason="needs a display (run under xvfb-run)")
FIVE = ("transiliac", "interpedicular", "anterior_oblique", "posterior_short", "posterior_long")


def _env_without_display(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    }
    env["SACROPLAN_HOME"] = str(home)
    return env


# -- the command line ------------------------------------------------------------------------------
def test_help_still_lists_the_commands_and_names_the_main_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("info", "plan", "segment", "report", "gui"):
        assert command in out
    assert "sacroplan --sample" in out


def test_main_command_without_a_display_prints_the_plan_in_text(tmp_path, capsys):
    png = tmp_path / "shot.png"
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "--sample", "--screenshot", str(png)],
        cwd=REPO,
        env=_env_without_display(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Fatal" not in r.stderr
    first = r.stderr.splitlines()[0]
    assert "no display" in first and "xvfb-run -a" in first and "desktop session" in first
    assert f"{png} was not written" in r.stderr
    assert not png.exists()
    # Exactly what `sacroplan plan --sample` prints.
    assert main(["plan", "--sample"]) == 0
    expected = capsys.readouterr().out
    assert r.stdout == expected
    assert "Suggestion:" in r.stdout and "Denis zone 1" in r.stdout


def test_main_command_for_a_study_without_a_display_says_what_to_run(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "--teaching", str(tmp_path)],
        cwd=REPO,
        env=_env_without_display(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "no display" in r.stderr and "--seed" in r.stderr
    assert "Traceback" not in r.stderr


@needs_display
def test_main_command_screenshot_shows_views_and_the_needle(tmp_path):
    from app.gui.theme import GREEN

    png = tmp_path / "shot.png"
    env = dict(os.environ, SACROPLAN_HOME=str(tmp_path / "home"), QT_QPA_PLATFORM="xcb")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
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
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    import matplotlib.image

    rgb = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    h, w = rgb.shape[:2]
    assert w >= 1200 and h >= 800
    # The views fill the window left of the workflow dock (at least 600 px wide), 2x2 below
    # the menu and tool bars.
    grid_w, top, bottom = w - 600, 70, h - 40
    half_w, half_h = grid_w // 2, (bottom - top) // 2
    needle = np.array([round(255 * c) for c in GREEN])
    for name, (col, row) in {
        "axial": (0, 0),
        "sagittal": (1, 0),
        "coronal": (0, 1),
        "3d": (1, 1),
    }.items():
        x0, y0 = col * half_w, top + row * half_h
        dy, dx = half_h // 10, half_w // 10
        box = rgb[y0 + dy : y0 + half_h - dy, x0 + dx : x0 + half_w - dx]
        gray = box.mean(axis=2)
        colours = len(np.unique(box.reshape(-1, 3) // 8, axis=0))
        assert gray.std() > 15 and colours > 100, f"the {name} view looks blank"
        near = (np.abs(box - needle).max(axis=2) < 12).sum()
        if name == "3d":  # shaded cylinders: green-dominant pixels instead of the exact colour
            r_, g_, b_ = box[..., 0], box[..., 1], box[..., 2]
            near = ((g_ > 120) & (g_ - r_ > 70) & (g_ - b_ > 50)).sum()
        assert near >= 10, f"no needle colour in the {name} view ({near} pixels)"


# -- the "why?" panel and teaching mode (in-process windows) ---------------------------------------
@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    if not HAS_DISPLAY:
        pytest.skip("needs a display (run under xvfb-run)")
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path / "home"))
    import vtkmodules.qt

    vtkmodules.qt.PyQtImpl = "PySide6"
    from PySide6.QtWidgets import QApplication

    from app.gui.main_window import MainWindow
    from app.gui.theme import apply_dark_theme

    apply_dark_theme(QApplication.instance())
    win = MainWindow(autosave_enabled=False)
    qtbot.addWidget(win, before_close_func=lambda w: w.close_without_prompt())
    win.resize(1600, 1000)
    win.show()
    qtbot.waitExposed(win)
    yield win
    if win.isVisible():
        win.close_without_prompt()


def _wait(qtbot, win) -> None:
    qtbot.waitUntil(lambda: not win.session.runner.busy, timeout=180_000)


def test_why_panel_explains_zone_approaches_and_suggestion(qtbot, window):
    from app.gui.main import auto_workflow
    from app.gui.panels.why_panel import SHOW_ROW
    from planning.approaches import approach_registry
    from planning.plan import clearance_is_lower_bound, clearance_text

    window.open_sample("left_ala_s1", spacing_mm=(2.0, 2.0, 2.0))
    _wait(qtbot, window)
    done = []
    auto_workflow(window, on_done=lambda: done.append(1))
    qtbot.waitUntil(lambda: bool(done), timeout=300_000)
    _wait(qtbot, window)
    s = window.session
    plan = s.plan
    assert plan is not None and plan.suggestion is not None
    why = window.why_panel
    registry = approach_registry()

    zone = _plain(why.zone.text())
    assert "Denis zone 1, the ala" in zone and "lateral to the sacral foramina" in zone
    assert f"{plan.lesion['volume_ml']:.1f} mL" in zone

    # Five columns in the teaching order, one per approach.
    assert why.keys() == list(FIVE)
    table = why.table
    assert table.columnCount() == 5
    words = _plain(why.approaches.text())
    for col, key in enumerate(FIVE):
        assert registry[key].label in words
        cand = s.candidate(key)
        verdict = table.item(0, col).text()
        if cand is None:
            assert "blocked" in verdict
            reason = s.blocked_by(key)[0]
            assert table.item(1, col).text() and reason.startswith(table.item(1, col).text())
            assert reason in words
            assert not table.cellWidget(SHOW_ROW, col).isEnabled()
            continue
        assert ("suggested" if key == plan.suggestion.approach else "feasible") in verdict
        od = cand.needle_od_mm
        canal = table.item(3, col).text()
        assert canal == clearance_text(cand.clearance_mm.canal, od, exact=cand.clearance_mm.exact)
        capped = clearance_is_lower_bound(
            cand.clearance_mm.canal, od, exact=cand.clearance_mm.exact
        )
        assert canal.startswith("\u2265") == capped
        assert table.item(2, col).text() == clearance_text(
            cand.clearance_mm.foramina, od, exact=cand.clearance_mm.exact
        )
        assert table.item(4, col).text() == f"{cand.tip_to_anterior_cortex_mm:.1f} mm"
        assert table.item(5, col).text().startswith(f"{cand.skin_to_target_mm:.0f}/")
        assert "head" in table.item(7, col).text() or "feet" in table.item(7, col).text()
    blocked = [k for k in FIVE if s.candidate(k) is None]
    assert blocked, "the sample has at least one blocked approach (anterior-oblique)"

    suggestion = _plain(why.suggestion.text())
    assert registry[plan.suggestion.approach].label in suggestion
    for reason in plan.suggestion.reasons:
        assert reason in suggestion

    # A column click (or a Show button) shows that approach's needle in every view.
    assert s.selected == plan.suggestion.approach
    other = next(k for k in FIVE if s.candidate(k) is not None and k != s.selected)
    table.selectColumn(FIVE.index(other))
    assert s.selected == other
    displays = window.needle_displays()
    assert displays[s.needle_keys().index(other)].selected
    why.show_buttons[plan.suggestion.approach].click()
    assert s.selected == plan.suggestion.approach
    table.selectColumn(FIVE.index(blocked[0]))  # nothing to show: the selection stays
    assert s.selected == plan.suggestion.approach


def test_teaching_mode_hides_the_patient_and_opens_the_why_panel(qtbot, window, tmp_path):
    from app.gui.main_window import WHY_TAB
    from app.gui.panels.export_panel import report_writer
    from imaging.sample import write_sample

    written = write_sample(tmp_path / "study", lesion="left_ala_s1", spacing_mm=(2.0, 2.0, 2.0))
    folder = written["dicom"]
    truth = json.loads(Path(written["truth"]).read_text(encoding="utf-8"))
    window.open_path(folder)
    qtbot.waitUntil(lambda: window.session.case is not None, timeout=60_000)
    _wait(qtbot, window)
    s = window.session
    banners = [v._banner for v in window.grid.slice_views.values()]  # noqa: SLF001
    assert all(b.GetVisibility() and "SACROPLAN" in b.GetInput() for b in banners)
    assert folder.name in window.windowTitle()

    s.run_anatomy()
    _wait(qtbot, window)
    s.grow_lesion(np.asarray(truth["lesion"]["center_lps"], float))
    _wait(qtbot, window)
    window.run_plan()
    _wait(qtbot, window)
    assert s.plan is not None
    if report_writer() is not None:
        named = window.write_report(tmp_path / "named.html").read_text(encoding="utf-8")
        assert "SACROPLAN" in named

    window.act_teaching.setChecked(True)
    assert window.steps.currentIndex() == WHY_TAB
    assert not any(b.GetVisibility() for b in banners)
    title = window.windowTitle()
    assert "anonymous" in title and folder.name not in title and "SACROPLAN" not in title
    assert "zone 1" in _plain(window.why_panel.zone.text())
    if report_writer() is not None:
        anonymous = window.write_report(tmp_path / "teaching.html").read_text(encoding="utf-8")
        assert "SACROPLAN" not in anonymous and "PHANTOM" not in anonymous
    # Planning again in teaching mode lands on the why? panel, not the table.
    window.steps.setCurrentIndex(0)
    window.run_plan()
    _wait(qtbot, window)
    assert window.steps.currentIndex() == WHY_TAB
    window.act_teaching.setChecked(False)
    assert all(b.GetVisibility() for b in banners)
    assert folder.name in window.windowTitle()


def _plain(text: str) -> str:
    """Rich text as a person reads it."""
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(text)
    return doc.toPlainText()
