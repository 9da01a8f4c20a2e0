"""The fluoroscopy and fusion docks inside the real workstation window, under Xvfb.

Run: QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/pytest
tests/test_gui_docks.py -q

The sample is opened and planned through the window's own session; the fluoroscopy dock must
show a real radiograph with the planned needle where the C-arm projection puts it, follow
needle drags and the source-detector distance; the fusion dock must find the known offset of
the sample MR, undo a nudge, and map the lesion grown on the MR onto the CT.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip("needs a display (run under xvfb-run)", allow_module_level=True)

import vtkmodules.qt  # noqa: E402

vtkmodules.qt.PyQtImpl = "PySide6"

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.gui.main_window import MainWindow  # noqa: E402
from app.gui.panels.fluoro_panel import FluoroPanel  # noqa: E402
from app.gui.panels.fusion_panel import SAMPLE_MR_OFFSET, FusionPanel  # noqa: E402
from imaging.fusion import RigidTransform  # noqa: E402

SPACING = (2.0, 2.0, 2.0)
TIMEOUT_MS = 180_000


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def window(qtbot):
    win = MainWindow(autosave_enabled=False)
    win.resize(1800, 1000)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close_without_prompt()  # no unsaved-changes question (the plan is not saved)
    win.deleteLater()
    QApplication.processEvents()


@pytest.fixture
def no_dialogs():
    """Errors go to the log instead of a modal dialog; the list of new error messages."""
    from app.gui.errors import last_messages, set_interactive

    before = len(last_messages())
    new: list[str] = []

    class Errors(list):
        def __bool__(self) -> bool:
            new[:] = last_messages()[before:]
            return bool(new)

        def __repr__(self) -> str:
            return repr(last_messages()[before:])

    set_interactive(False)
    yield Errors()
    set_interactive(True)


def wait_idle(qtbot, win: MainWindow) -> None:
    qtbot.waitUntil(lambda: not win.session.runner.busy, timeout=TIMEOUT_MS)


def planned_sample(qtbot, win: MainWindow, *, modality: str = "ct", plan: bool = True) -> None:
    s = win.session
    win.open_sample("left_ala_s1", spacing_mm=SPACING, modality=modality)
    wait_idle(qtbot, win)
    assert s.case is not None
    if not plan:
        return
    s.run_anatomy()
    wait_idle(qtbot, win)
    s.grow_lesion(s.case.default_seed())
    wait_idle(qtbot, win)
    win.run_plan()
    wait_idle(qtbot, win)
    assert s.plan is not None and s.selected, "the sample gets a suggested needle"


def needle_pixels(img) -> np.ndarray:
    """Mask of the first needle's colour (0.2, 1.0, 0.3) in a rendered panel."""
    arr = _rgb(img)
    r, g, b = (arr[..., i].astype(int) for i in range(3))
    return (g > 200) & (r < 120) & (b < 140)


def _rgb(img) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = img.convertToFormat(QImage.Format.Format_RGB888)
    h, w, stride = img.height(), img.width(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=stride * h).reshape(h, stride)
    return buf[:, : 3 * w].reshape(h, w, 3).copy()


def wait_fluoro(qtbot, panel: FluoroPanel) -> None:
    qtbot.waitUntil(panel.is_idle, timeout=TIMEOUT_MS)
    qtbot.wait(30)


# -- fluoroscopy --------------------------------------------------------------------------------
def test_fluoro_dock_shows_the_drr_with_the_planned_needle(qtbot, window, no_dialogs):
    planned_sample(qtbot, window)
    panel: FluoroPanel = window.fluoro_panel
    assert window.fluoro_dock.isHidden(), "the dock starts hidden (nothing computed)"
    act = window.fluoro_dock.toggleViewAction()
    assert act in window.menuBar().actions()[2].menu().actions(), "View > Fluoroscopy"
    act.trigger()
    assert window.fluoro_dock.isVisible()
    wait_fluoro(qtbot, panel)
    assert panel.stack.currentWidget() is panel.view

    s = window.session
    cand = s.candidate(s.selected)
    entry, tip = np.asarray(cand.skin_entry_lps), np.asarray(cand.target_lps)
    (e, t, dia, _label) = panel.needles()[panel.selected_needle_number() - 1]
    assert np.allclose(e, entry) and np.allclose(t, tip)
    assert dia == pytest.approx(cand.needle_od_mm)

    for key in ("ap", "bulls_eye_{n}"):
        panel.show_view(key)
        wait_fluoro(qtbot, panel)
        name = panel.view.current_view()
        assert name == key.format(n=panel.selected_needle_number())
        panel_widget = panel.view.panel(name)
        assert panel_widget.drr is not None and panel_widget.drr_full
        li = panel_widget.drr.line_integral
        assert float(np.std(li)) > 0.1 and float(li.max()) > 1.0, "a real radiograph"
        img = panel.view.render_image(name)
        gray = _rgb(img).mean(axis=2)
        assert gray.std() > 20, "not blank"
        mask = needle_pixels(img)
        assert mask.sum() > 20, f"needle overlay drawn in {name}"
        g = panel.view.geometry_of(name)
        col, row = g.project_points(tip)
        r0, c0 = round(row), round(col)
        assert mask[r0 - 3 : r0 + 4, c0 - 3 : c0 + 4].any(), "the tip where the projection says"
        if name == "ap":
            mid_col, mid_row = g.project_points(0.5 * (entry + tip))
            assert mask[
                round(mid_row) - 2 : round(mid_row) + 3, round(mid_col) - 2 : round(mid_col) + 3
            ].any()  # noqa: E501
        else:  # bull's-eye: the needle is seen end on, a dot at the principal point
            assert np.allclose((col, row), g.principal_point, atol=1e-6)
            ys, xs = np.nonzero(mask)
            left = xs <= col + 5  # the label is written to the right of the tip
            dist = np.hypot(xs[left] - col, ys[left] - row)
            assert dist.max() < 12, "end on: a dot, not a line"


def test_fluoro_dock_follows_drags_selection_and_distance(qtbot, window, no_dialogs):
    planned_sample(qtbot, window)
    panel: FluoroPanel = window.fluoro_panel
    window.fluoro_dock.show()
    wait_fluoro(qtbot, panel)
    s = window.session
    keys = s.needle_keys()
    index = keys.index(s.selected)
    cand = s.candidate(s.selected)
    entry, tip = np.asarray(cand.skin_entry_lps), np.asarray(cand.target_lps)

    # a live drag of the tip (the grid's signal): the dock draws the moved needle
    for step in range(1, 6):
        window.grid.needle_dragged.emit(index, entry, tip + np.array([step, 0.0, 0.0]))
        qtbot.wait(10)
    moved = tip + np.array([5.0, 0.0, 0.0])
    number = panel.selected_needle_number()
    assert np.allclose(panel.needles()[number - 1][1], moved)
    # drawn in the view after the coalescing delay
    qtbot.waitUntil(
        lambda: np.allclose(panel.view._needles[number - 1][1], moved),  # noqa: SLF001
        timeout=5000,
    )
    wait_fluoro(qtbot, panel)
    # released: the plan changes (one undo step) and the dock keeps the new needle
    window.grid.needle_drag_finished.emit(index, entry, moved)
    wait_fluoro(qtbot, panel)
    assert np.allclose(panel.needles()[panel.selected_needle_number() - 1][1], moved)
    window.act_undo.trigger()
    wait_fluoro(qtbot, panel)
    assert np.allclose(panel.needles()[panel.selected_needle_number() - 1][1], tip)

    # another selection: its needle is the one drawn and the bull's-eye follows it
    other = next(k for k in keys if k != s.selected)
    s.select(other)
    panel.show_view("bulls_eye_{n}")
    wait_fluoro(qtbot, panel)
    oc = s.candidate(other)
    drawn = panel.needles()[panel.selected_needle_number() - 1]
    assert np.allclose(drawn[1], oc.target_lps)
    g = panel.view.geometry_of(panel.view.current_view())
    axis = np.asarray(oc.target_lps) - np.asarray(oc.skin_entry_lps)
    assert abs(np.dot(g.detector_direction_lps, axis / np.linalg.norm(axis))) > 0.999

    # the source-detector distance is configurable: magnification follows
    panel.show_view("ap")
    wait_fluoro(qtbot, panel)
    before = panel.view.geometry_of("ap")
    panel.sid.setValue(1200.0)
    panel.sod.setValue(800.0)
    wait_fluoro(qtbot, panel)
    after = panel.view.geometry_of("ap")
    assert (after.sid_mm, after.sod_mm) == (1200.0, 800.0)
    assert after.magnification == pytest.approx(1.5) and before.magnification != pytest.approx(1.5)
    assert panel.view.panel("ap").drr.geometry.sid_mm == 1200.0
    panel.sod.setValue(1300.0)  # not shorter than the SID: refused with a note, no change
    assert "shorter" in panel.distance_note.text()
    assert panel.view.geometry_of("ap").sod_mm == 800.0


def test_fluoro_dock_stays_idle_while_hidden(qtbot, window, no_dialogs):
    planned_sample(qtbot, window)
    panel: FluoroPanel = window.fluoro_panel
    assert panel.view._volumes is None and panel.view._prep_image is None  # noqa: SLF001
    window.fluoro_dock.show()
    wait_fluoro(qtbot, panel)
    assert panel.view._prep_image is window.session.image  # noqa: SLF001


def test_mr_study_gets_a_message_not_a_crash(qtbot, window, no_dialogs):
    planned_sample(qtbot, window, modality="mr", plan=False)
    panel: FluoroPanel = window.fluoro_panel
    window.fluoro_dock.show()
    qtbot.waitUntil(lambda: "needs a CT" in panel.message.text(), timeout=5000)
    assert panel.stack.currentWidget() is panel.message
    assert "needs a CT" in panel.message.text() and "MR" in panel.message.text()
    assert panel.view._prep_image is None, "no radiograph attempted"  # noqa: SLF001
    fusion: FusionPanel = window.fusion_panel
    window.fusion_dock.show()
    assert not fusion.sample_button.isEnabled() and not fusion.segment_button.isEnabled()
    assert "CT" in fusion.info.text()
    fusion.sample_button.click()  # disabled: nothing happens
    assert not no_dialogs and window.isVisible()


# -- fusion --------------------------------------------------------------------------------------
def test_fusion_dock_recovers_the_sample_offset_and_maps_the_lesion(qtbot, window, no_dialogs):
    s = window.session
    window.open_sample("left_ala_s1", spacing_mm=SPACING)
    wait_idle(qtbot, window)
    s.run_anatomy()
    wait_idle(qtbot, window)
    s.grow_lesion(s.case.default_seed())
    wait_idle(qtbot, window)
    fusion: FusionPanel = window.fusion_panel
    act = window.fusion_dock.toggleViewAction()
    assert act in window.menuBar().actions()[2].menu().actions(), "View > CT-MR fusion"
    act.trigger()
    fusion.sample_button.click()
    wait_idle(qtbot, window)
    assert fusion.mr is not None and fusion.sample_offset is not None
    truth = RigidTransform.from_euler(
        *SAMPLE_MR_OFFSET, center_lps=s.case.sample_truth.lesion.center_lps
    )
    assert np.allclose(fusion.sample_offset.rotation, truth.rotation)
    mm0, deg0 = fusion.offset_error()
    assert mm0 > 5.0 and deg0 > 4.0, "the sample MR starts out of register"

    with qtbot.waitSignal(fusion.view.registered, timeout=TIMEOUT_MS):
        qtbot.mouseClick(fusion.view._register_btn, Qt.MouseButton.LeftButton)  # noqa: SLF001
    mm, deg = fusion.offset_error()
    assert mm < 1.0 and deg < 1.0, (mm, deg)
    registered = fusion.transform()
    assert "from the known sample offset" in fusion.info.text()

    # a nudge moves the MR; undo puts the registered transform back exactly, redo again
    fusion.step_mm.setValue(2.0)
    qtbot.mouseClick(fusion.view.nudge_buttons["x+1 mm"], Qt.MouseButton.LeftButton)
    nudged = fusion.transform()
    moved = nudged.map_mr_to_ct(registered.map_ct_to_mr(np.zeros(3)))
    assert np.allclose(moved, [2.0, 0.0, 0.0], atol=1e-6), "shown 2 mm to the patient's left"
    assert fusion.undo_stack.count() == 2 and fusion.undo_button.isEnabled()
    fusion.undo_button.click()
    assert np.allclose(fusion.transform().translation_mm, registered.translation_mm)
    fusion.redo_button.click()
    assert np.allclose(fusion.transform().translation_mm, nudged.translation_mm)
    fusion.undo_button.click()

    # the lesion grown on the MR, mapped onto the CT, with its volume on both
    with qtbot.waitSignal(fusion.view.mapped_lesion, timeout=TIMEOUT_MS):
        fusion.segment_button.click()
    mapped = fusion.mapped()
    true_ml = s.case.sample_truth.lesion.volume_ml
    assert mapped.volume_ml_mr == pytest.approx(true_ml, rel=0.3)
    assert mapped.volume_ml_ct == pytest.approx(true_ml, rel=0.3)
    assert mapped.mask.same_grid(s.case.image)
    ct_lesion = s.case.lesion.mask.array != 0
    on_ct = mapped.mask.array != 0
    dice = 2 * np.count_nonzero(ct_lesion & on_ct) / (ct_lesion.sum() + on_ct.sum())
    assert dice > 0.7, dice
    assert "on the MR" in fusion.info.text() and "on the CT" in fusion.info.text()
    assert not no_dialogs
    QApplication.processEvents()


def test_fluoro_dock_draws_every_needle_of_a_two_needle_block(qtbot, window, no_dialogs):
    from planning.multi_needle import plan_multi_needle, with_multi_needle

    planned_sample(qtbot, window)
    s = window.session
    multi = plan_multi_needle(s.case, plan=s.plan, fields=s.fields, needles=2)
    assert len(multi.needles) == 2, multi.reasons
    s.push_plan(with_multi_needle(s.plan, multi), "Two needles")
    panel: FluoroPanel = window.fluoro_panel
    window.fluoro_dock.show()
    wait_fluoro(qtbot, panel)
    drawn = panel.needles()
    for placed in multi.needles:
        c = placed.candidate
        assert any(
            np.allclose(d[0], c.skin_entry_lps) and np.allclose(d[1], c.target_lps) for d in drawn
        ), placed.label
    assert len(drawn) >= 2
    names = panel.view.view_names()
    assert {f"bulls_eye_{n}" for n in range(1, len(drawn) + 1)} <= set(names)
    # every needle is painted in the AP view, each in its own colour, where it projects
    img = panel.view.render_image("ap")
    rgb = _rgb(img).astype(int)
    g = panel.view.geometry_of("ap")
    colours = []
    for e, t, _d, _label in drawn:
        col, row = g.project_points(0.5 * (np.asarray(e) + np.asarray(t)))
        patch = rgb[round(row) - 1 : round(row) + 2, round(col) - 1 : round(col) + 2].reshape(-1, 3)
        sat = patch.max(axis=1) - patch.min(axis=1)
        assert sat.max() > 100, "a coloured needle, not the grey radiograph"
        colours.append(tuple(patch[np.argmax(sat)] // 40))
    assert len(set(colours)) == len(drawn), colours
