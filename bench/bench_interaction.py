"""Benchmark: what a radiologist feels while working -- drag re-score, frame times, GUI stalls.

Run from the repository root::

    python -m bench --only interaction          # or: python bench/bench_interaction.py [--quick]

Rows (each measured side by side with its baseline in this process, medians):

* **drag re-score**: :func:`planning.planner.score_trajectory` of one needle on the sample's
  distance fields (what the workstation does for every mouse move of a needle handle), versus a
  plain numpy re-score of the same needle: points every 0.5 mm sampled in every field with
  ``scipy.ndimage.map_coordinates`` (order 1; fields converted to float once, not timed).
  Target <= 5 ms.
* **slice / 3D frame**: :class:`app.gui.views.ViewGrid` on the sample (and a 512x512x300
  volume unless ``quick``) on software OpenGL (Mesa llvmpipe under Xvfb): an axial slice step
  (crosshair moved one slice, the axial view rendered), a needle-drag frame (needles moved, the
  axial view rendered) and a 3D frame (camera turned 5 degrees, the 3D view rendered with the
  label surfaces and needles). Target <= 33 ms (30 frames/s).
* **DRR frame**: the simulated-fluoroscopy frame at full resolution (512x512 detector, full
  volume) versus the drag preview :class:`app.gui.views.fluoro_view.FluoroView` uses
  (volume downsampled by 2, 256x256 detector, same field of view).
* **GUI stall**: the longest gap between ticks of a 10 ms QTimer on the GUI thread while each
  stage of the workstation runs in its worker thread (:class:`app.gui.workers.TaskRunner`):
  loading the sample written as a DICOM series (and a 512x512x300 CT series unless ``quick``),
  anatomy, lesion, plan (search and drag fields); versus the stage's duration (the stall it would
  cause on the GUI thread). Target <= 100 ms each. The note names the likely cause of the
  longest gap: where the worker was when a watchdog thread could not run for 40 ms or more,
  the longest full garbage collection, and numba compiles (a cold cache). And the longest gap
  while a needle is dragged in the fluoroscopy bull's-eye view (30 updates/s).

The GUI rows need an X display: without ``DISPLAY`` the module re-runs its GUI part under
``xvfb-run -a`` (``QT_QPA_PLATFORM=xcb``) in a child process, or, without ``xvfb-run``, leaves
the GUI rows out with a note. Screenshots of the fluoroscopy view (sample case, best needle,
C-arm 2x2 layout and the bull's-eye) and of the fusion view are saved to ``/tmp/shots/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy import ndimage

from bench._table import Row, median_time, side_by_side

GROUP = "interaction"
SHOTS = Path("/tmp/shots")
FRAME_TARGET_S = 1.0 / 30.0
STALL_TARGET_S = 0.100
STEP_MM = 0.5


# -- the sample case, planned -----------------------------------------------------------------
def planned_sample(progress=None, cancel=None):  # noqa: ANN001, ANN201 (bench helper)
    """The sample case with anatomy, lesion and plan (the long job of the stall row)."""
    from planning.case import Case
    from planning.planner import plan_case

    case = Case.sample()
    case.find_anatomy(progress=progress, cancel=cancel)
    case.grow_lesion(case.default_seed())
    plan = plan_case(case, progress=progress, cancel=cancel)
    return case, plan


def best_needle(plan) -> tuple[np.ndarray, np.ndarray, float, str]:  # noqa: ANN001
    """(entry, target, outer diameter, label) of the suggested (else first) candidate."""
    idx = 0
    if plan.suggestion is not None and plan.suggestion.candidate is not None:
        idx = plan.suggestion.candidate
    c = plan.candidates[idx]
    label = f"{c.approach} {c.side or ''}".strip()
    return (
        np.asarray(c.skin_entry_lps, dtype=float),
        np.asarray(c.target_lps, dtype=float),
        float(c.needle_od_mm),
        label,
    )


# -- headless rows ----------------------------------------------------------------------------
def _map_coordinates_rescore(stack, channels, entry: np.ndarray, tip: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Minimum of every channel along the needle, points every 0.5 mm, trilinear."""
    a = stack.index_from_world()
    d = tip - entry
    length = float(np.linalg.norm(d))
    t = np.arange(0.0, length + STEP_MM, STEP_MM).clip(max=length)
    pts = entry + t[:, None] * (d / length)
    coords = (pts @ a[:, :3].T + a[:, 3])[:, ::-1].T
    return np.array(
        [ndimage.map_coordinates(f, coords, order=1, mode="nearest").min() for f in channels]
    )


def rescore_rows(case, plan, *, quick: bool) -> list[Row]:  # noqa: ANN001
    """One dragged needle re-scored: score_trajectory versus a map_coordinates re-score."""
    from planning.planner import build_fields, score_trajectory

    stack = build_fields(case)
    channels = [np.asarray(stack.channel_mm(c), dtype=np.float32) for c in range(stack.n_channels)]
    entry, tip, _d, _l = best_needle(plan)
    cand = plan.candidates[0]
    rng = np.random.default_rng(1)
    moves = [entry + rng.normal(0, 2.0, 3) for _ in range(16)]
    it = {"n": 0}

    def ours() -> None:
        it["n"] += 1
        score_trajectory(moves[it["n"] % 16], tip, cand.needle, fields=stack)

    def base() -> None:
        _map_coordinates_rescore(stack, channels, moves[it["n"] % 16], tip)

    reps = 30 if quick else 200
    t_ours, t_base = side_by_side(ours, base, repeats=reps, warmup=3)
    return [
        Row(
            GROUP,
            "drag re-score, one needle",
            t_ours,
            "s",
            "map_coordinates re-score",
            t_base,
            t_base / t_ours,
            "<= 5 ms",
            t_ours <= 0.005,
            f"score_trajectory with clearances, lengths and violations; baseline samples all"
            f" {stack.n_channels} fields only",
        )
    ]


def drr_rows(case, *, quick: bool) -> list[Row]:  # noqa: ANN001
    from imaging.drr import CArmGeometry, prepare_volume, render_drr

    full = prepare_volume(case.image)
    half = prepare_volume(case.image, downsample=2)
    iso = np.asarray(case.default_seed(), dtype=float)
    g = CArmGeometry.from_angles(150.0, -20.0, iso)
    g_half = CArmGeometry.from_angles(150.0, -20.0, iso, detector_shape=(256, 256), pixel_mm=1.2)
    reps = 2 if quick else 5
    t_half, t_full = side_by_side(
        lambda: render_drr(half, g_half), lambda: render_drr(full, g), repeats=reps
    )
    return [
        Row(
            GROUP,
            "DRR drag preview (vol/2, 256^2)",
            t_half,
            "s",
            "full DRR (512^2)",
            t_full,
            t_full / t_half,
            "<= 200 ms",
            t_half <= 0.2,
            f"sample CT {case.image.array.shape[::-1]} voxels; full-resolution DRR"
            f" {t_full * 1e3:.0f} ms after the drag ends",
        )
    ]


# -- GUI rows ---------------------------------------------------------------------------------
def _app():  # noqa: ANN202
    import vtkmodules.qt

    vtkmodules.qt.PyQtImpl = "PySide6"
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def _process(app, seconds: float) -> None:  # noqa: ANN001
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)


class _GapMeter:
    """A 10 ms QTimer on the GUI thread; records the gaps between its ticks."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> float:
        self._timer.stop()
        return max(self.gaps) if self.gaps else float("nan")


class _StallProbe:
    """Where the GUI thread stalls while a worker runs: gaps per stage and their causes.

    A 10 ms QTimer on the GUI thread records the gaps between its ticks under the current stage
    name. A watchdog thread wakes every 2 ms; when it wakes 40 ms late or more, something held
    the interpreter lock (or, on a busy machine, no core was free), and it records where the
    worker is (its innermost project frames). Full garbage collections are timed through
    :data:`gc.callbacks` and numba compiles counted through numba's event API.
    """

    def __init__(self) -> None:
        import gc
        import threading

        from PySide6.QtCore import QTimer

        self.stage = "idle"
        self.worker_id: int | None = None
        self.gaps: dict[str, list[float]] = {}
        self.causes: dict[str, list[tuple[float, str]]] = {}
        self.gc_max: dict[str, float] = {}
        self.compiles: dict[str, int] = {}
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._gc_t0 = 0.0
        self._gc = gc
        gc.callbacks.append(self._on_gc)
        self._numba_listener = None
        try:
            from numba.core import event

            probe = self

            class _Compiles(event.Listener):
                def on_start(self, _event) -> None:  # noqa: ANN001
                    probe.compiles[probe.stage] = probe.compiles.get(probe.stage, 0) + 1

                def on_end(self, _event) -> None:  # noqa: ANN001
                    pass

            self._numba_listener = _Compiles()
            event.register("numba:compile", self._numba_listener)
        except (ImportError, AttributeError):
            pass

    def _on_gc(self, phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_t0 = now
        elif info.get("generation") == 2:
            self.gc_max[self.stage] = max(self.gc_max.get(self.stage, 0.0), now - self._gc_t0)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.setdefault(self.stage, []).append(now - self._last)
        self._last = now

    def _watchdog(self) -> None:
        root = str(Path(__file__).resolve().parents[1]) + os.sep
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.002)
            now = time.perf_counter()
            gap, last = now - last, now
            if gap < 0.04 or self.worker_id is None:
                continue
            frame = sys._current_frames().get(self.worker_id)
            where = []
            while frame is not None and len(where) < 2:
                name = frame.f_code.co_filename
                if name.startswith(root) and os.sep + ".venv" + os.sep not in name:
                    rel = os.path.relpath(name, root)
                    where.append(f"{rel}:{frame.f_lineno} {frame.f_code.co_name}")
                frame = frame.f_back
            self.causes.setdefault(self.stage, []).append((gap, " < ".join(where) or "?"))

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start()
        self._watch.start()

    def stop(self) -> None:
        self._timer.stop()
        self._stop.set()
        self._watch.join()
        self._gc.callbacks.remove(self._on_gc)
        if self._numba_listener is not None:
            from numba.core import event

            event.unregister("numba:compile", self._numba_listener)

    def longest(self, stage: str) -> float:
        return max(self.gaps.get(stage, [float("nan")]))

    def note(self, stage: str) -> str:
        """The longest gap's likely cause, the longest full collection, numba compiles."""
        parts = []
        causes = sorted(self.causes.get(stage, []), reverse=True)
        if causes:
            gap, where = causes[0]
            parts.append(f"watchdog thread held off {gap * 1e3:.0f} ms, worker at {where}")
        if stage in self.gc_max:
            parts.append(f"longest full GC {self.gc_max[stage] * 1e3:.0f} ms")
        if self.compiles.get(stage):
            parts.append(f"{self.compiles[stage]} numba compiles (cold cache)")
        return "; ".join(parts)


def _run_task(app, runner, probe: _StallProbe, stage: str, fn):  # noqa: ANN001, ANN202
    """Run ``fn()`` as a TaskRunner task (as the workstation does); its result or exception."""
    import threading

    out: dict[str, object] = {}

    def task(_progress, _cancel):  # noqa: ANN001, ANN202
        probe.worker_id = threading.get_ident()
        probe.stage = stage
        try:
            return fn()
        finally:
            probe.stage = "idle"

    runner.finished.connect(lambda _n, r: out.update(value=r))
    runner.failed.connect(lambda _n, e: out.update(error=e))
    runner.start(stage, task)
    t0 = time.perf_counter()
    while not out:
        app.processEvents()
        time.sleep(0.001)
    seconds = time.perf_counter() - t0
    runner.finished.disconnect()
    runner.failed.disconnect()
    _process(app, 0.05)
    if "error" in out:
        raise RuntimeError(f"{stage} failed in the worker: {out['error']!r}")
    return out["value"], seconds


def stall_rows(app, *, quick: bool):  # noqa: ANN001, ANN201
    """Longest event-loop gap per stage with each stage in a worker thread (TaskRunner).

    The stages are the workstation's: loading the sample written as a DICOM series (and, unless
    ``quick``, a 512x512x300 CT series), anatomy, lesion, and plan (the trajectory search and the
    distance fields for dragging). The baseline is the stage's duration: the stall it would
    cause on the GUI thread.
    """
    import tempfile

    # the workstation imports these at start-up; importing them in the worker would hold the
    # interpreter lock for a while and count against the GUI thread
    import SimpleITK  # noqa: F401

    from app.gui.workers import TaskRunner
    from imaging.dicom_write import write_series
    from planning.case import Case
    from planning.planner import build_fields, plan_case

    sample = Case.sample()
    seed = sample.default_seed()
    tmp = tempfile.TemporaryDirectory(prefix="sacroplan-stall-")
    folders = {"sample": Path(tmp.name) / "sample"}
    write_series(sample.image, folders["sample"], series_description="sample")
    if not quick:
        from bench.bench_load import ct_volume

        folders["512x512x300"] = Path(tmp.name) / "big"
        write_series(ct_volume(300), folders["512x512x300"], series_description="big")

    runner = TaskRunner()
    probe = _StallProbe()
    probe.start()
    stages: list[tuple[str, str, float]] = []  # (stage key, row label, seconds)
    try:
        for name, folder in reversed(folders.items()):
            key = f"load {name}"
            case, seconds = _run_task(app, runner, probe, key, lambda f=folder: Case.open(f))
            stages.append((key, f"loading the {name} (DICOM)", seconds))
        case.sample_truth = sample.sample_truth  # same grid: the later rows use its seed
        _, seconds = _run_task(app, runner, probe, "anatomy", case.find_anatomy)
        stages.append(("anatomy", "anatomy", seconds))
        _, seconds = _run_task(app, runner, probe, "lesion", lambda: case.grow_lesion(seed))
        stages.append(("lesion", "lesion", seconds))

        def plan_and_fields():  # noqa: ANN202 (what the workstation's plan task does)
            plan = plan_case(case)
            build_fields(case)
            return plan

        plan, seconds = _run_task(app, runner, probe, "plan", plan_and_fields)
        stages.append(("plan", "plan + drag fields", seconds))
    finally:
        probe.stop()
        tmp.cleanup()
    load = os.getloadavg()[0]
    rows = []
    for key, label, seconds in stages:
        stall = probe.longest(key)
        note = probe.note(key)
        rows.append(
            Row(
                GROUP,
                f"GUI stall, {label} in worker",
                stall,
                "s",
                "same stage on the GUI thread",
                seconds,
                seconds / stall if stall > 0 else None,
                "<= 100 ms",
                stall <= STALL_TARGET_S,
                f"{note}; load average {load:.1f}" if note else f"load average {load:.1f}",
            )
        )
    return case, plan, rows


def grid_rows(app, case, plan, *, quick: bool) -> list[Row]:  # noqa: ANN001
    """ViewGrid frame times on software OpenGL: slice step, needle drag, 3D turn."""
    from imaging.volume import Volume

    entry, tip, dia, label = best_needle(plan)
    studies: list[tuple[str, Volume, Volume | None]] = [
        (f"sample {'x'.join(map(str, case.image.array.shape[::-1]))}", case.image, case.label_map())
    ]
    if not quick:
        rng = np.random.default_rng(0)
        big = np.full((300, 512, 512), -1000, dtype=np.int16)
        zz, yy, xx = np.ogrid[0:300, 0:512, 0:512]
        body = ((xx - 256) / 230.0) ** 2 + ((yy - 256) / 170.0) ** 2 < 1.0
        big[:, body[0]] = 40
        big += rng.integers(-20, 20, size=big.shape, dtype=np.int16)
        vol = Volume(
            array=big,
            origin=np.array([-180.0, -180.0, 0.0]),
            spacing=np.array([0.7, 0.7, 1.0]),
            direction=np.eye(3),
            modality="CT",
        )
        studies.append(("512x512x300", vol, None))
    rows = []
    for name, image, labels in studies:
        rows += _grid_study_rows(app, name, image, labels, (entry, tip, dia, label), quick=quick)
    return rows


def _grid_study_rows(app, name, image, labels, needle_spec, *, quick: bool) -> list[Row]:  # noqa: ANN001
    from app.gui.views import NeedleDisplay, ViewGrid

    entry, tip, dia, label = needle_spec
    rows = []
    grid = ViewGrid()
    grid.resize(1400, 1000)
    grid.set_layout("2x2")
    grid.show()
    grid.set_volume(image)
    if labels is not None:
        grid.set_labels(labels)
    centre = image.index_to_world((np.array(image.size, dtype=float) - 1) / 2.0)
    shift = centre - 0.5 * (entry + tip) if labels is None else np.zeros(3)
    needle = NeedleDisplay(entry + shift, tip + shift, dia, (0.2, 1.0, 0.3), label, True, True)
    grid.set_needles([needle])
    grid.set_crosshair(tip + shift)
    _process(app, 0.3)
    grid.render_all()
    axial = grid.slice_views["axial"]
    step = float(image.spacing[2])
    pos = {"z": 0}

    def slice_frame() -> None:
        pos["z"] = (pos["z"] + 1) % 20
        grid.set_crosshair(tip + shift + np.array([0.0, 0.0, step * (pos["z"] - 10)]))
        axial.render_now()

    def drag_frame() -> None:
        pos["z"] = (pos["z"] + 1) % 20
        e = entry + shift + np.array([pos["z"] * 0.5, 0.0, 0.0])
        grid.set_needles([NeedleDisplay(e, tip + shift, dia, (0.2, 1.0, 0.3), label, True)])
        axial.render_now()

    cam = grid.view3d.renderer.GetActiveCamera()

    def frame_3d() -> None:
        cam.Azimuth(5.0)
        grid.view3d.render_now()

    reps = 10 if quick else 15
    for what, fn in (
        ("slice step", slice_frame),
        ("needle drag", drag_frame),
        ("3D turn", frame_3d),
    ):
        t = median_time(fn, repeats=reps, warmup=2)
        rows.append(
            Row(
                GROUP,
                f"{what} frame, {name}",
                t,
                "s",
                target="<= 33 ms",
                ok=t <= FRAME_TARGET_S,
                note="software OpenGL (Mesa) under Xvfb" if what == "3D turn" else "",
            )
        )
    if labels is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        grid.save_screenshot(str(SHOTS / "grid_sample.png"))
    grid.shutdown()
    grid.close()
    grid.deleteLater()
    _process(app, 0.05)
    return rows


def fluoro_rows(app, case, plan, *, quick: bool) -> list[Row]:  # noqa: ANN001
    """Event-loop gaps while a needle is dragged in the bull's-eye view; screenshots."""
    from PySide6.QtCore import QTimer

    from app.gui.views.fluoro_view import FluoroView

    entry, tip, dia, label = best_needle(plan)
    view = FluoroView()
    view.resize(1000, 900)
    view.show()
    view.set_case(case)
    view.set_needles([(entry, tip, dia, label)], interactive=False)

    def settle() -> None:
        t0 = time.perf_counter()
        while not view.is_idle() and time.perf_counter() - t0 < 120:
            app.processEvents()
            time.sleep(0.005)
        _process(app, 0.05)

    settle()
    SHOTS.mkdir(parents=True, exist_ok=True)
    view.save_screenshot(str(SHOTS / "fluoro_ap.png"))
    view.set_layout("2x2")
    settle()
    view.save_screenshot(str(SHOTS / "fluoro_carm_2x2.png"))
    view.set_layout("1x1")
    view.set_view("bulls_eye_1")
    settle()
    view.save_screenshot(str(SHOTS / "fluoro_bulls_eye.png"))
    view.set_view("progression_1")
    settle()
    view.save_screenshot(str(SHOTS / "fluoro_progression.png"))
    view.set_view("bulls_eye_1")
    settle()

    panel = view.panel()
    before = panel.renderer.renders
    meter = _GapMeter()
    n = {"i": 0}

    def drag() -> None:
        n["i"] += 1
        e = entry + np.array([0.0, 0.0, 0.5 * n["i"]])
        view.set_needles([(e, tip, dia, label)], interactive=True)

    timer = QTimer()
    timer.timeout.connect(drag)
    meter.start()
    timer.start(33)
    _process(app, 1.0 if quick else 2.0)
    timer.stop()
    stall = meter.stop()
    previews = panel.renderer.renders - before
    settle()
    view.shutdown()
    view.close()
    return [
        Row(
            GROUP,
            "GUI stall, bull's-eye DRR drag",
            stall,
            "s",
            "",
            None,
            None,
            "<= 100 ms",
            stall <= STALL_TARGET_S,
            f"{n['i']} needle updates, {previews} preview DRRs shown (latest request wins);"
            f" load average {os.getloadavg()[0]:.1f}",
        )
    ]


def fusion_shot(app) -> None:  # noqa: ANN001
    """Register the phantom MR (moved by a known transform) in the fusion view; screenshot."""
    from app.gui.views.fusion_view import FusionView
    from imaging.fusion import RigidTransform
    from imaging.labels import Label
    from imaging.phantom import make_phantom
    from imaging.volume import Volume

    ct = make_phantom(modality="ct", spacing_mm=(2.0, 2.0, 2.0))
    mr = make_phantom(modality="mr", spacing_mm=(1.5, 1.5, 3.0), seed=3)
    truth = RigidTransform.from_euler(
        (2.0, 0.0, 4.0), (6.0, -4.0, 3.0), center_lps=ct.truth.lesion.center_lps
    )

    def moved(v: Volume) -> Volume:
        return Volume(
            array=v.array,
            origin=truth.map_ct_to_mr(v.origin),
            spacing=v.spacing,
            direction=truth.rotation @ v.direction,
            modality=v.modality,
        )

    view = FusionView()
    view.resize(1200, 760)
    view.show()
    view.set_ct(ct.image)
    view.set_mr(moved(mr.image))
    lesion = mr.labels.with_array((mr.labels.array == Label.LESION).astype(np.uint8))
    view.set_mr_lesion(moved(lesion))
    view.set_slice(int(round(ct.image.world_to_index(ct.truth.lesion.center_lps)[2])))
    _process(app, 0.1)
    SHOTS.mkdir(parents=True, exist_ok=True)
    view.save_screenshot(str(SHOTS / "fusion_before.png"))
    view.register()
    t0 = time.perf_counter()
    while (view.is_registering() or not view.is_idle()) and time.perf_counter() - t0 < 180:
        app.processEvents()
        time.sleep(0.01)
    _process(app, 0.6)
    view.save_screenshot(str(SHOTS / "fusion_overlay.png"))
    view.set_mode("side by side")
    _process(app, 0.1)
    view.save_screenshot(str(SHOTS / "fusion_side_by_side.png"))
    view.shutdown()
    view.close()


def gui_rows(*, quick: bool) -> list[Row]:
    """Every row that needs Qt and a display (call with DISPLAY set)."""
    app = _app()
    case, plan, rows = stall_rows(app, quick=quick)
    rows += rescore_rows(case, plan, quick=quick)
    rows += grid_rows(app, case, plan, quick=quick)
    rows += fluoro_rows(app, case, plan, quick=quick)
    rows += drr_rows(case, quick=quick)
    fusion_shot(app)
    return rows


def _child_rows(*, quick: bool) -> list[Row]:
    """Run :func:`gui_rows` under ``xvfb-run`` in a child process; its rows come back as JSON."""
    cmd = [
        shutil.which("xvfb-run") or "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1920x1080x24",
        sys.executable,
        str(Path(__file__).resolve()),
        "--json",
    ]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(
            f"the GUI benchmark under xvfb-run failed ({out.returncode}):\n{out.stderr[-3000:]}"
        )
    return [Row(**d) for d in json.loads(lines[-1])]


def collect(*, quick: bool) -> list[Row]:
    """All interaction rows (see the module docstring)."""
    if os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM", "xcb") != "offscreen":
        return gui_rows(quick=quick)
    if shutil.which("xvfb-run"):
        return _child_rows(quick=quick)
    case, plan = planned_sample()
    rows = rescore_rows(case, plan, quick=quick) + drr_rows(case, quick=quick)
    rows.append(
        Row(
            GROUP,
            "GUI rows",
            float("nan"),
            "s",
            note="not measured: no DISPLAY and no xvfb-run (install Xvfb to measure frame times"
            " and stalls)",
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (child mode)")
    args = parser.parse_args(argv)
    rows = collect(quick=args.quick)
    if args.json:
        print(json.dumps([asdict(r) for r in rows]), flush=True)
    else:
        from bench._table import format_table

        print(format_table(rows))
    sys.stdout.flush()
    os._exit(0)  # skip Qt/VTK teardown order issues at interpreter exit


if __name__ == "__main__":
    sys.exit(main())
