"""The simulated-fluoroscopy widget, for real: DRRs rendered in worker threads under Xvfb.

Run with ``QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/pytest tests/test_gui_fluoro.py``. The
overlay is checked in the pixels actually painted, against the engine's projection and against
the analytic answer (the isocentre lands on the principal point).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

if not os.environ.get("DISPLAY"):
    pytest.skip(
        "the fluoroscopy widget tests need an X display: run them under xvfb-run with"
        " QT_QPA_PLATFORM=xcb",
        allow_module_level=True,
    )

from PySide6.QtCore import QTimer  # noqa: E402

from app.gui.views.fluoro_view import CARM_LAYOUT, FluoroView  # noqa: E402
from imaging.drr import render_drr  # noqa: E402
from imaging.errors import SacroplanError  # noqa: E402
from planning.case import Case  # noqa: E402

NEEDLE_RGB = (51, 255, 77)  # first needle colour (0.2, 1.0, 0.3)


@pytest.fixture(scope="module")
def case() -> Case:
    return Case.sample(spacing_mm=(2.0, 2.5, 2.0))


@pytest.fixture
def view(qtbot, case):
    w = FluoroView()
    qtbot.addWidget(w)
    w.resize(700, 600)
    w.show()
    w.set_case(case)
    yield w
    w.shutdown()


def _needle(case: Case) -> tuple[np.ndarray, np.ndarray]:
    tip = np.asarray(case.default_seed(), dtype=float)
    return tip + np.array([55.0, 70.0, 12.0]), tip


def _wait(qtbot, view: FluoroView, timeout: float = 60.0) -> None:
    qtbot.waitUntil(view.is_idle, timeout=int(timeout * 1000))
    qtbot.wait(20)


def _is_needle(img, col: float, row: float) -> bool:
    c = img.pixelColor(round(col), round(row))
    return c.green() > 200 and c.red() < 120 and c.blue() < 140


def test_needle_overlay_lands_where_the_projection_says(qtbot, view, case) -> None:
    entry, tip = _needle(case)
    view.set_needles([(entry, tip, 2.8, "test")], interactive=False)
    _wait(qtbot, view)
    img = view.render_image("ap")
    g = view.geometry_of("ap")
    assert (img.width(), img.height()) == (g.detector_shape[1], g.detector_shape[0])
    # analytic: the tip is the isocentre, on the central ray -> the principal point
    c0, r0 = g.principal_point
    assert np.allclose(g.project_points(tip), (c0, r0))
    assert _is_needle(img, c0, r0)
    # along the needle, where the engine's projection puts it, the needle colour is painted
    for f in (0.25, 0.5, 0.75):
        col, row = g.project_points(tip + f * (entry - tip))
        assert _is_needle(img, col, row), (f, col, row)
    # and away from it (10 px off the line, perpendicular) it is not
    a, b = g.project_points(np.array([entry, tip]))
    n = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
    mid = 0.5 * (a + b)
    assert not _is_needle(img, *(mid + 10 * n))
    assert not _is_needle(img, *(mid - 10 * n))
    # the DRR under it is a real radiograph: body darker than the air above it
    gray = np.array([img.pixelColor(int(c0), r).lightness() for r in (5, int(r0) + 40)])
    assert gray[1] < gray[0]


def test_view_switching_and_bulls_eye(qtbot, view, case) -> None:
    entry, tip = _needle(case)
    view.set_needles([(entry, tip, 2.8, "left")], interactive=False)
    _wait(qtbot, view)
    assert {"ap", "lateral", "inlet", "outlet", "bulls_eye_1", "progression_1"} <= set(
        view.view_names()
    )
    ap = view.panel().drr.line_integral.copy()
    with qtbot.waitSignal(view.view_changed, timeout=2000) as sig:
        view.set_view("lateral")
    assert sig.args == ["lateral"]
    _wait(qtbot, view)
    assert view.current_view() == "lateral"
    assert view.panel().drr.geometry.detector_direction_lps == pytest.approx([1.0, 0.0, 0.0])
    assert not np.allclose(view.panel().drr.line_integral, ap)
    assert "90°" in view.panel().caption  # the C-arm angles in words

    view.set_view("bulls_eye_1")
    _wait(qtbot, view)
    g = view.geometry_of("bulls_eye_1")
    d = (entry - tip) / np.linalg.norm(entry - tip)
    assert g.detector_direction_lps == pytest.approx(d)
    img = view.render_image("bulls_eye_1")
    uv = g.project_points(np.array([entry, tip]))
    assert np.allclose(uv[0], uv[1], atol=1e-6)  # end-on: entry and tip on one pixel
    assert _is_needle(img, *uv[1])
    assert not _is_needle(img, uv[1][0] + 12, uv[1][1])
    with pytest.raises(SacroplanError, match="no fluoroscopy view"):
        view.set_view("bulls_eye_7")
    # the needle goes away: its views go, the view falls back to AP
    with qtbot.waitSignal(view.view_changed, timeout=2000) as sig:
        view.set_needles([], interactive=False)
    assert sig.args == ["ap"] and "bulls_eye_1" not in view.view_names()


def test_carm_layout_shows_the_four_standard_views(qtbot, view, case) -> None:
    entry, tip = _needle(case)
    view.set_needles([(entry, tip, 2.8, "left")], interactive=False)
    view.set_layout("2x2")
    _wait(qtbot, view)
    assert view.layout_name() == "2x2"
    dirs = {}
    for name in CARM_LAYOUT:
        panel = view.panel(name)
        assert panel.isVisible() and panel.drr is not None and panel.drr_full
        dirs[name] = panel.drr.geometry.detector_direction_lps
        img = panel.render_image()
        col, row = view.geometry_of(name).project_points(0.5 * (entry + tip))
        assert _is_needle(img, col, row), name
    assert len({tuple(np.round(v, 3)) for v in dirs.values()}) == 4
    with pytest.raises(SacroplanError):
        view.set_layout("3x3")


def test_contrast_and_screenshot(qtbot, view, tmp_path) -> None:
    _wait(qtbot, view)
    before = view.render_image("ap").pixelColor(256, 300).lightness()
    view._level.setValue(40)  # brighter level shift
    after = view.render_image("ap").pixelColor(256, 300).lightness()
    assert after != before
    view._invert.setChecked(True)
    inverted = view.render_image("ap").pixelColor(256, 300).lightness()
    assert inverted != after
    out = tmp_path / "fluoro.png"
    view.save_screenshot(str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drag_updates_arrive_without_blocking_the_event_loop(qtbot) -> None:
    case = Case.sample()  # 1 mm: a full DRR on the GUI thread would block it for ~0.4 s
    view = FluoroView()
    qtbot.addWidget(view)
    view.resize(700, 600)
    view.show()
    view.set_case(case)
    entry, tip = _needle(case)
    view.set_needles([(entry, tip, 2.8, "left")], interactive=False)
    view.set_view("bulls_eye_1")
    _wait(qtbot, view)
    panel = view.panel()
    renders_before = panel.renderer.renders

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    ticker = QTimer()
    ticker.timeout.connect(tick)
    ticker.start(10)
    step = [0]
    final = [entry]

    def drag() -> None:
        step[0] += 1
        e = entry + np.array([0.0, 0.0, 1.0]) * step[0]
        final[0] = e
        view.set_needles([(e, tip, 2.8, "left")], interactive=True)

    dragger = QTimer()
    dragger.timeout.connect(drag)
    last[0] = time.perf_counter()
    dragger.start(30)
    qtbot.wait(1500)
    dragger.stop()
    previews = panel.renderer.renders - renders_before
    drr_during = panel.drr
    qtbot.waitUntil(lambda: view.is_idle() and panel.drr_full, timeout=30000)
    ticker.stop()

    assert step[0] >= 20
    assert previews >= 2  # renders kept arriving during the drag
    assert drr_during is not panel.drr  # the full-resolution render replaced the preview
    longest = max(gaps[1:])
    # what one full-resolution frame would have cost on the GUI thread
    t0 = time.perf_counter()
    render_drr(view._volumes[0], panel.geometry_)
    blocking = time.perf_counter() - t0
    assert longest < 0.2, f"the event loop stalled {longest * 1e3:.0f} ms"
    assert longest < blocking, (longest, blocking)
    # after the drag: full resolution, at the last pose
    assert panel.drr.line_integral.shape == panel.geometry_.detector_shape
    d = (final[0] - tip) / np.linalg.norm(final[0] - tip)
    assert panel.drr.geometry.detector_direction_lps == pytest.approx(d)
    view.shutdown()


def test_an_mr_study_gives_a_clear_message(qtbot) -> None:
    view = FluoroView()
    qtbot.addWidget(view)
    with qtbot.waitSignal(view.failed, timeout=30000) as sig:
        view.set_case(Case.sample(modality="mr", spacing_mm=(3.0, 3.0, 3.0)))
    assert "needs a CT" in sig.args[0]
    assert "no radiograph" in view.panel().message
    view.shutdown()
