"""Two-needle plans in the workstation, under Xvfb.

Run: QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/pytest
tests/test_gui_multi.py -q

The sample's large lesion (``large_foramen``, 33 mm across) is planned through the window's
own session: the trajectory search is followed by the multi-needle step, which gives two
needles. Each must keep every margin (checked against the margins and against the sample's
exact anatomy), both are drawn in every view with their own label and colour, the Plan panel
lists them, a plan file keeps them, a drag re-scores a block needle and undo restores it, and
the "Needles" control re-plans only the needles as one undo step.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("needs a display (run under xvfb-run)", allow_module_level=True)

import vtkmodules.qt  # noqa: E402

vtkmodules.qt.PyQtImpl = "PySide6"

from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.panels.plan_panel import BLOCK_COLORS  # noqa: E402
from app.gui.session import multi_needle_step  # noqa: E402
from imaging.phantom import exact_distance_to_canal, exact_distance_to_foramen  # noqa: E402
from planning.approaches import approach_registry  # noqa: E402
from planning.needles import get_needle  # noqa: E402
from planning.plan import load_plan  # noqa: E402
from planning.planner import score_trajectory  # noqa: E402

SPACING = (2.0, 2.0, 2.0)  # large_foramen gets two needles at 2 mm (and at 1.5 mm)
TIMEOUT_MS = 240_000


@pytest.fixture
def window(qtbot):
    win = MainWindow(autosave_enabled=False)
    win.resize(1800, 1000)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close_without_prompt()
    win.deleteLater()
    QApplication.processEvents()


@pytest.fixture
def no_dialogs():
    """Errors go to the log instead of a modal dialog; truthy when new errors were shown."""
    from app.gui.errors import last_messages, set_interactive

    before = len(last_messages())

    class Errors:
        def __bool__(self) -> bool:
            return len(last_messages()) > before

        def __repr__(self) -> str:
            return repr(last_messages()[before:])

    set_interactive(False)
    yield Errors()
    set_interactive(True)


def wait_idle(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: not win.session.runner.busy, timeout=TIMEOUT_MS)


def plan_large(qtbot, win: MainWindow) -> None:
    s = win.session
    win.open_sample("large_foramen", spacing_mm=SPACING)
    wait_idle(qtbot, win)
    s.run_anatomy()
    wait_idle(qtbot, win)
    s.grow_lesion(s.case.default_seed())
    wait_idle(qtbot, win)
    assert s.case.metrics.diameter_over_30mm
    win.run_plan()
    wait_idle(qtbot, win)
    assert s.plan is not None


def exact_clearances(entry, tip, radius_mm: float, truth) -> tuple[float, float]:
    """Needle-surface clearance to the nearest exact foramen cylinder and to the canal."""
    entry, tip = np.asarray(entry, float), np.asarray(tip, float)
    t = np.linspace(0.0, 1.0, int(np.linalg.norm(tip - entry) / 0.1) + 2)[:, None]
    points = entry + t * (tip - entry)
    foramen = min(float(exact_distance_to_foramen(points, f).min()) for f in truth.foramina)
    canal = float(exact_distance_to_canal(points, truth).min())
    return foramen - radius_mm, canal - radius_mm


def drawn(view) -> list:
    """The needle displays a slice view or the grid holds now."""
    return list(view._needles)  # noqa: SLF001 (the views keep what they were given)


def shows(displays: list, cand) -> list:
    """Displays drawn at the candidate's entry and tip."""
    return [
        d
        for d in displays
        if np.allclose(d.entry_lps, cand.skin_entry_lps, atol=1e-6)
        and np.allclose(d.target_lps, cand.target_lps, atol=1e-6)
    ]


def test_two_needles_planned_drawn_listed_saved_and_dragged(qtbot, window, no_dialogs, tmp_path):
    plan_large(qtbot, window)
    s = window.session
    multi = s.plan.multi_needle
    assert multi is not None and len(multi.needles) == 2, multi and multi.reasons
    assert multi.kind in ("bilateral", "tandem")
    assert s.block_keys() == ["needle:1", "needle:2"]
    assert s.needle_keys()[-2:] == ["needle:1", "needle:2"]

    # Every needle meets every margin: the candidate's numbers against the margins, and the
    # sample's exact anatomy (analytic foramina and canal) against the same margins.
    margins = s.plan.margins
    truth = s.case.sample_truth
    for placed in multi.needles:
        c = placed.candidate
        assert c.feasible and not c.violations, (placed.label, c.violations)
        assert c.clearance_mm.foramina >= margins.foramen_mm
        assert c.clearance_mm.canal is None or c.clearance_mm.canal >= margins.canal_mm
        assert c.tip_to_anterior_cortex_mm >= margins.anterior_cortex_mm
        assert not c.exits_anterior
        assert c.skin_to_target_mm <= get_needle(c.needle).working_length_mm
        foramen, canal = exact_clearances(c.skin_entry_lps, c.target_lps, c.needle_od_mm / 2, truth)
        assert foramen >= margins.foramen_mm, (placed.label, foramen)
        assert canal >= margins.canal_mm, (placed.label, canal)
        assert truth.lesion.contains(np.asarray(c.target_lps)[None, :])[0]
        assert placed.cement_ml == pytest.approx(multi.cement_total_ml / 2)
    a, b = (p.candidate for p in multi.needles)
    tip_gap = float(np.linalg.norm(np.subtract(a.target_lps, b.target_lps)))
    assert tip_gap == pytest.approx(multi.tip_gap_mm, abs=0.01)
    assert tip_gap >= multi.options.min_tip_gap_mm
    assert multi.path_gap_mm >= multi.options.min_path_gap_mm
    assert (a.side == b.side) == (multi.kind == "tandem")
    # the plan's chosen trajectories are the two needles
    assert [
        np.allclose(t.target_lps, p.candidate.target_lps)
        for t, p in zip(s.plan.trajectories, multi.needles, strict=True)
    ] == [True, True]

    # Both are drawn, at their entry and tip, with their real diameter, own label and colour,
    # in every slice view and in the 3D view.
    for name, view in {**window.grid.slice_views, "3d": window.grid.view3d}.items():
        if name == "3d":
            actors = view._needle_actors  # noqa: SLF001
            ends = [(np.array(line.GetPoint1()), np.array(line.GetPoint2())) for line, *_ in actors]
            for p in multi.needles:
                c = p.candidate
                assert any(
                    np.allclose(e, c.skin_entry_lps) and np.allclose(t, c.target_lps)
                    for e, t in ends
                ), (name, p.label)
            continue
        for number, p in enumerate(multi.needles, start=1):
            found = shows(drawn(view), p.candidate)
            assert found, (name, p.label)
            d = found[-1]
            assert d.label == f"needle {number} {p.candidate.side}"
            assert d.diameter_mm == pytest.approx(p.candidate.needle_od_mm)
            assert d.color == BLOCK_COLORS[number - 1]

    # The Plan panel lists both needles with their approach, side and cement.
    window.steps.setCurrentIndex(3)
    text = window.plan_panel.block.text()
    registry = approach_registry()
    assert f"2 needles ({multi.kind})" in text
    for p in multi.needles:
        c = p.candidate
        assert f">{p.label}</a>: {registry[c.approach].label} ({c.side})" in text
        assert f"cement {p.cement_ml:.2f} mL" in text
    assert f"Tips {multi.tip_gap_mm:.1f} mm apart" in text
    assert "Chosen trajectories:</b> 2 needles" in window.plan_panel.suggestion.text()

    # Save and load: the block comes back, with both needles drawn again.
    out = tmp_path / "two.json"
    window.write_plan(out)
    saved = load_plan(out)
    assert saved.multi_needle is not None and len(saved.multi_needle.needles) == 2
    assert saved.view_state["session"]["plan_options"]["needles"] == "auto"
    window.load_plan(out)
    wait_idle(qtbot, window)
    s = window.session
    back = s.plan.multi_needle
    assert back is not None and len(back.needles) == 2 and back.kind == multi.kind
    for p, q in zip(back.needles, multi.needles, strict=True):
        assert np.allclose(p.candidate.target_lps, q.candidate.target_lps, atol=1e-3)
        assert np.allclose(p.candidate.skin_entry_lps, q.candidate.skin_entry_lps, atol=1e-3)
        assert shows(drawn(window.grid.slice_views["axial"]), p.candidate)
    assert s.fields is not None and not s.dirty

    # Select needle 2 and drag its tip: re-scored exactly, the block re-measured; undo restores.
    s.select("needle:2")
    assert s.selected == "needle:2"
    displays = window.needle_displays()
    index = s.needle_keys().index("needle:2")
    assert displays[index].editable and displays[index].selected
    before = s.plan
    old = back.needles[1].candidate
    entry, tip = np.array(old.skin_entry_lps), np.array(old.target_lps)
    new_tip = tip + np.array([0.0, 0.0, 4.0])
    steps = s.undo_stack.count()
    window.grid.needle_dragged.emit(index, entry, new_tip)  # live preview: nothing changes
    assert s.plan is before
    fluoro = [n for n in window.fluoro_panel.needles() if n[3].startswith("needle 2")]
    assert len(fluoro) == 1 and np.allclose(fluoro[0][1], new_tip), "the live pose, once"
    window.grid.needle_drag_finished.emit(index, entry, new_tip)
    assert s.undo_stack.count() == steps + 1
    moved = s.plan.multi_needle.needles[1].candidate
    assert np.allclose(moved.target_lps, new_tip, atol=0.01)
    exact = score_trajectory(
        entry,
        new_tip,
        old.needle,
        fields=s.fields,
        margins=s.plan.margins,
        approach=old.approach,
        lesion_centroid=np.asarray(s.case.metrics.centroid_lps, float),
        side=old.side,
    )
    assert moved.clearance_mm.foramina == pytest.approx(exact.clearance_mm.foramina, abs=1e-6)
    assert moved.skin_to_target_mm == pytest.approx(exact.skin_to_target_mm, abs=1e-6)
    assert moved.feasible == exact.feasible
    moved_block = s.plan.multi_needle
    assert moved_block.tip_gap_mm == pytest.approx(
        float(np.linalg.norm(np.subtract(new_tip, back.needles[0].candidate.target_lps))),
        abs=0.01,
    )
    assert "needle 2 moved by hand" in moved_block.reasons[0]
    assert np.allclose(s.plan.trajectories[1].target_lps, new_tip, atol=0.01)
    assert s.plan.trajectories[1].source == "manual"
    assert shows(drawn(window.grid.slice_views["axial"]), moved)
    assert "needle 2 moved by hand" in window.plan_panel.block.text()

    window.act_undo.trigger()
    assert s.plan is before
    restored = s.plan.multi_needle.needles[1].candidate
    assert restored.target_lps == old.target_lps
    assert shows(drawn(window.grid.slice_views["axial"]), old)
    assert not shows(drawn(window.grid.slice_views["axial"]), moved)
    assert not no_dialogs, no_dialogs


def test_needles_control_replans_only_the_needles_as_one_step(qtbot, window, no_dialogs):
    plan_large(qtbot, window)
    s = window.session
    assert len(s.plan.multi_needle.needles) == 2
    two = s.plan
    candidates = two.candidates
    panel = window.plan_panel
    combo = panel.needles_mode
    steps = s.undo_stack.count()

    combo.setCurrentIndex(combo.findData("1"))
    combo.activated.emit(combo.currentIndex())
    assert s.runner.busy and s.runner.name == "needles"
    wait_idle(qtbot, window)
    assert s.needles_mode == "1"
    assert s.undo_stack.count() == steps + 1
    one = s.plan.multi_needle
    assert one is not None and one.kind == "single" and len(one.needles) == 1
    assert "one needle was asked for" in one.reasons[0]
    assert s.plan.candidates is candidates, "the trajectory search was not run again"
    assert s.block_keys() == [] and len(s.plan.trajectories) == 1
    assert s.plan.trajectories[0].approach == s.plan.suggestion.approach
    assert not [d for d in window.needle_displays() if d.label.startswith("needle ")]
    assert "1 needle</b>" in panel.block.text()
    assert combo.currentData() == "1"

    window.act_undo.trigger()
    assert s.plan is two and len(s.block_keys()) == 2
    assert len([d for d in window.needle_displays() if d.label.startswith("needle ")]) == 2
    assert "2 needles" in panel.block.text()
    assert s.needles_mode == "auto" and combo.currentData() == "auto", "undo restores the mode"

    window.act_redo.trigger()
    assert s.needles_mode == "1" and s.block_keys() == []
    # The mode is part of the session record (saved with the plan).
    assert s.to_state()["plan_options"]["needles"] == "1"

    # Without a feasible suggestion the step leaves the single-needle plan and says why.
    bare = dataclasses.replace(two, suggestion=None)
    plan, note = multi_needle_step(s.case, bare, s.plan_options, s.fields, "2")
    assert plan.multi_needle is None and "no approach is feasible" in note
    assert not no_dialogs, no_dialogs
