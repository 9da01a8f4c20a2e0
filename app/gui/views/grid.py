"""The grid of linked views: axial, sagittal, coronal, 3D, and the two needle views.

:class:`ViewGrid` is the one object the rest of the workstation talks to. It holds no planning
state: the caller pushes what to show (volume, labels, needles, ...) and listens to the signals
for what the user did (all points LPS mm as (3,) float ndarrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QGridLayout, QWidget

from app.gui.views.needle_views import NeedleView
from app.gui.views.planes import STANDARD_AXES, volume_center
from app.gui.views.slice_view import SliceView
from app.gui.views.view3d import View3D
from app.gui.views.vtk_bridge import grab_rgb
from imaging.atomic import atomic_path
from imaging.volume import Volume

PRESETS: dict[str, tuple[float, float]] = {"bone": (2000.0, 500.0), "soft": (400.0, 40.0)}
LAYOUTS = ("1x1", "2x2", "1+3", "2x3")
VIEW_NAMES = ("axial", "sagittal", "coronal", "3d", "along", "bullseye")
STANDARD_ORDER = ("axial", "sagittal", "coronal", "3d")
MODES = ("navigate", "seed", "brush", "erase", "landmark")
_SLICE_COLORS = {
    "axial": (1.0, 0.35, 0.35),
    "sagittal": (0.35, 0.9, 0.35),
    "coronal": (0.4, 0.6, 1.0),
}


@dataclass(frozen=True)
class NeedleDisplay:
    """How one needle is drawn.

    Attributes
    ----------
    entry_lps, target_lps : (3,) float ndarray, mm, LPS
        Skin entry and tip.
    diameter_mm : float
        Real outer diameter: drawn as a cylinder (3D) or a band (slices) of this width.
    color : (float, float, float)
        RGB 0..1.
    label : str
        Name shown next to the selected needle.
    selected, editable : bool
        Highlighted; entry and target handles draggable in the slice views.
    labelled : bool
        Name shown even when not selected (the needles of a multi-needle plan).
    """

    entry_lps: np.ndarray
    target_lps: np.ndarray
    diameter_mm: float
    color: tuple[float, float, float]
    label: str = ""
    selected: bool = False
    editable: bool = False
    labelled: bool = False


@dataclass(frozen=True)
class AblationDisplay:
    """An ablation zone: an ellipsoid, radii ``(r1, r2, r_axis)`` mm, the last along ``axis``."""

    center_lps: np.ndarray
    axis: np.ndarray
    radii_mm: tuple[float, float, float] = field(default=(10.0, 10.0, 15.0))


def mr_auto_window(volume: Volume) -> tuple[float, float]:
    """Window/level spanning the 1st..99.5th percentile of a study's values."""
    arr = volume.array
    step = max(1, int(round((arr.size / 2e6) ** (1 / 3))))
    sample = arr[::step, ::step, ::step]
    lo, hi = np.percentile(sample, [1.0, 99.5])
    return max(float(hi - lo), 1.0), float(hi + lo) / 2


class ViewGrid(QWidget):
    """Linked slice views, a 3D view and needle views in a switchable layout.

    Views: ``"axial"``, ``"sagittal"``, ``"coronal"`` (patient-aligned planes through the
    crosshair, whatever the study's direction), ``"3d"``, ``"along"`` and ``"bullseye"`` (the
    focused needle; shown by the ``"2x3"`` layout or as the main view).

    Mouse and keys in the slice views: left click/drag moves the crosshair (navigate mode),
    clicks a point (seed mode), paints (brush/erase) or drags landmarks (landmark mode); needle
    handles drag in any mode; right-drag or Ctrl+left-drag = window/level; middle-drag or
    Shift+left-drag = pan; wheel, Up/Down, PageUp/PageDown = next/previous slice; Ctrl+wheel =
    zoom; R = reset the view. 3D view: left-drag rotates, right-drag zooms, middle-drag pans,
    R resets.
    """

    point_clicked = Signal(object, str)
    crosshair_moved = Signal(object)
    needle_dragged = Signal(int, object, object)
    needle_drag_finished = Signal(int, object, object)
    landmark_dragged = Signal(str, object)
    landmark_drag_finished = Signal(str, object)
    brush_stroke_finished = Signal(object, float, bool)
    window_level_changed = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setStyleSheet("background-color: #0b0c0e;")
        self.slice_views: dict[str, SliceView] = {
            name: SliceView(name, axes, self) for name, axes in STANDARD_AXES.items()
        }
        self.needle_views: dict[str, NeedleView] = {
            "along": NeedleView("along", self),
            "bullseye": NeedleView("bullseye", self),
        }
        self.view3d = View3D(self)
        self.views: dict[str, QWidget] = {
            **self.slice_views,
            "3d": self.view3d,
            **self.needle_views,
        }
        for name, view in self._all_slice_views().items():
            color = _SLICE_COLORS.get(name)
            if color is not None:
                view._name_text.GetTextProperty().SetColor(*color)
            view.clicked.connect(lambda p, n=name: self._on_clicked(p, n))
            view.crosshair_requested.connect(self._on_crosshair_requested)
            view.needle_dragged.connect(self._on_needle_dragged)
            view.needle_drag_finished.connect(self._on_needle_drag_finished)
            view.landmark_dragged.connect(self._on_landmark_dragged)
            view.landmark_drag_finished.connect(self.landmark_drag_finished)
            view.brush_stroke_finished.connect(self.brush_stroke_finished)
            view.window_level_requested.connect(self._on_wl_requested)
        self._layout = QGridLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self.volume: Volume | None = None
        self._crosshair = np.zeros(3)
        self._needles: list[NeedleDisplay] = []
        self._landmarks: dict[str, np.ndarray] = {}
        self._focused_needle: int | None = None
        self._window_level = PRESETS["bone"]
        self.layout_name = ""
        self.main_view = "axial"
        self.mode = "navigate"
        self.set_layout("2x2")

    def _all_slice_views(self) -> dict[str, SliceView]:
        return {**self.slice_views, **self.needle_views}

    # -- data ---------------------------------------------------------------------------------
    def set_volume(self, volume: Volume) -> None:
        """Show a study: every view resets, the crosshair goes to the study's centre."""
        self.volume = volume
        center = volume_center(volume)
        for view in self.slice_views.values():
            view.set_volume(volume, center)
        for view in self.needle_views.values():
            view.set_volume(volume, center)
        self.view3d.set_volume(volume)
        self._focused_needle = None
        if volume.modality.upper() == "CT":
            self.apply_preset("bone")
        else:
            self.apply_preset("mr_auto")
        self.set_crosshair(center)
        self.request_render()

    def set_labels(self, labels: Volume | None) -> None:
        """Label map (imaging.labels codes) as slice overlays and 3D surfaces.

        The slice overlays change at once; the 3D surfaces are built on a worker thread and
        appear when ready (``view3d.surfaces_changed``; :meth:`render_all` waits for them).
        """
        for view in self._all_slice_views().values():
            view.set_labels(labels)
        self.view3d.set_labels(labels)
        self.request_render()

    def set_label_visible(self, label: int, visible: bool) -> None:
        """Show or hide one label in every view."""
        for view in self._all_slice_views().values():
            view.set_label_visible(label, visible)
        self.view3d.set_label_visible(label, visible)
        self.request_render()

    def set_label_style(self, style: str) -> None:
        """Slice overlays as ``"outline"`` or ``"fill"`` (40 %)."""
        for view in self._all_slice_views().values():
            view.set_label_style(style)
        self.request_render()

    def set_zone_map(self, zones: Volume | None) -> None:
        """Denis zones (1/2/3) tinted over the slices; ``None`` removes them."""
        for view in self._all_slice_views().values():
            view.set_zone_map(zones)
        self.request_render()

    def set_zones_visible(self, visible: bool) -> None:
        """Toggle the Denis zone tint."""
        for view in self._all_slice_views().values():
            view.set_zones_visible(visible)
        self.request_render()

    def set_landmarks(self, landmarks: dict[str, np.ndarray]) -> None:
        """Landmarks (id -> LPS mm) with their short names, draggable in ``"landmark"`` mode."""
        self._landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in landmarks.items()}
        for view in self._all_slice_views().values():
            view.set_landmarks(self._landmarks)
        self.request_render()

    def set_needles(self, needles: list[NeedleDisplay]) -> None:
        """Needles in every view (cylinders in 3D, bands in the slices)."""
        self._needles = list(needles)
        for view in self._all_slice_views().values():
            view.set_needles(self._needles)
        self.view3d.set_needles(self._needles)
        if self._focused_needle is not None and self._focused_needle < len(needles):
            self._follow_needle(self._focused_needle, refit=False)
        self.request_render()

    def set_ablation_zones(self, zones: list[AblationDisplay]) -> None:
        """Ablation ellipsoids in the 3D view."""
        self.view3d.set_ablation_zones(list(zones))
        self.request_render()

    # -- crosshair and display ----------------------------------------------------------------
    def set_crosshair(self, lps: np.ndarray) -> None:
        """Move the three slice planes (and the 3D marker) through ``lps``."""
        self._crosshair = np.asarray(lps, dtype=np.float64).reshape(3).copy()
        for view in self._all_slice_views().values():
            view.set_crosshair(self._crosshair)
        self.view3d.set_crosshair(self._crosshair)
        self.request_render()

    def crosshair(self) -> np.ndarray:
        """(3,) LPS mm crosshair centre (a copy)."""
        return self._crosshair.copy()

    def set_window_level(self, window: float, level: float) -> None:
        """Grey mapping of every slice view."""
        self._window_level = (float(window), float(level))
        for view in self._all_slice_views().values():
            view.set_window_level(window, level)
        self.request_render()

    def window_level(self) -> tuple[float, float]:
        """Current (window, level)."""
        return self._window_level

    def apply_preset(self, name: str) -> None:
        """``"bone"`` (W2000/L500), ``"soft"`` (W400/L40) or ``"mr_auto"`` (percentiles)."""
        if name == "mr_auto":
            if self.volume is None:
                return
            self.set_window_level(*mr_auto_window(self.volume))
        elif name in PRESETS:
            self.set_window_level(*PRESETS[name])
        else:
            raise ValueError(f"unknown window preset {name!r}: use bone, soft or mr_auto")

    def set_layout(self, layout: str, *, main: str = "axial") -> None:
        """``"1x1"`` (main only), ``"2x2"``, ``"1+3"`` (main large, three small) or ``"2x3"``
        (the four standard views and the two needle views)."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
        if main not in VIEW_NAMES:
            raise ValueError(f"unknown view {main!r}: use one of {', '.join(VIEW_NAMES)}")
        while self._layout.count():
            self._layout.takeAt(0)
        for r in range(4):
            self._layout.setRowStretch(r, 0)
            self._layout.setColumnStretch(r, 0)
        order = [main] + [n for n in STANDARD_ORDER if n != main]
        if layout == "1x1":
            placed = {main: (0, 0, 1, 1)}
        elif layout == "2x2":
            placed = {n: (i // 2, i % 2, 1, 1) for i, n in enumerate(order[:4])}
        elif layout == "1+3":
            placed = {order[0]: (0, 0, 3, 1)}
            placed.update({n: (i, 1, 1, 1) for i, n in enumerate(order[1:4])})
            self._layout.setColumnStretch(0, 3)
            self._layout.setColumnStretch(1, 1)
        else:
            names = list(STANDARD_ORDER[:3]) + ["along", "3d", "bullseye"]
            placed = {n: (i // 3, i % 3, 1, 1) for i, n in enumerate(names)}
        for name, view in self.views.items():
            if name in placed:
                self._layout.addWidget(view, *placed[name])
                view.show()
            else:
                view.hide()
        if layout != "1+3":
            rows = 1 + max(p[0] + p[2] - 1 for p in placed.values())
            cols = 1 + max(p[1] + p[3] - 1 for p in placed.values())
            for r in range(rows):
                self._layout.setRowStretch(r, 1)
            for c in range(cols):
                self._layout.setColumnStretch(c, 1)
        self.layout_name = layout
        self.main_view = main
        self.request_render()

    def visible_views(self) -> list[str]:
        """Names of the views the current layout shows."""
        return [n for n, v in self.views.items() if not v.isHidden()]

    def set_mode(self, mode: str) -> None:
        """Left-button mode of the slice views: ``"navigate"`` (move the crosshair),
        ``"seed"`` (click a point), ``"brush"``/``"erase"`` (paint strokes),
        ``"landmark"`` (drag landmarks)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        self.mode = mode
        for view in self._all_slice_views().values():
            view.set_mode(mode)
        self.request_render()

    def set_brush_radius(self, radius_mm: float) -> None:
        """Brush radius, mm (drawn as a circle of that size)."""
        for view in self._all_slice_views().values():
            view.brush_radius_mm = float(radius_mm)

    def set_banner(self, text: str | None) -> None:
        """Patient/study banner in the slice views; ``None`` hides it (teaching mode)."""
        for view in self.slice_views.values():
            view.set_banner(text)
        self.request_render()

    def set_volume_rendering(self, on: bool) -> None:
        """CPU ray-cast volume rendering in the 3D view."""
        self.view3d.set_volume_rendering(on)
        self.view3d.request_render()

    def focus_needle(self, index: int) -> None:
        """Centre the slice planes on needle ``index``'s tip; the needle views follow it.

        An index with no needle only clears the focus (the needle views stop following).
        """
        if not 0 <= index < len(self._needles):
            self._focused_needle = None
            return
        self._focused_needle = index
        self._follow_needle(index)
        self.set_crosshair(np.asarray(self._needles[index].target_lps, dtype=np.float64))

    def _follow_needle(self, index: int, *, refit: bool = True) -> None:
        nd = self._needles[index]
        for view in self.needle_views.values():
            view.follow(nd.entry_lps, nd.target_lps, refit=refit)

    def reset_views(self) -> None:
        """Fit every view."""
        for view in self._all_slice_views().values():
            view.reset_camera()
        self.view3d.reset_camera()
        self.request_render()

    # -- rendering ----------------------------------------------------------------------------
    def request_render(self) -> None:
        """Render the visible views soon (coalesced)."""
        for view in self.views.values():
            view.request_render()

    def render_all(self) -> None:
        """Render every visible view now, with the 3D surfaces of the current label map
        (waits for a surface build still running)."""
        self.view3d.finish_surfaces()
        for view in self.views.values():
            view.render_now()

    def grab_views(self) -> dict[str, np.ndarray]:
        """Each visible view's image, (H, W, 3) uint8, from VTK's own buffer."""
        self.render_all()
        return {n: grab_rgb(v.GetRenderWindow()) for n, v in self.views.items() if not v.isHidden()}

    def save_screenshot(self, path: str) -> None:
        """Write a PNG of the grid as shown, composited from the views' VTK buffers."""
        ratio = self.devicePixelRatioF()
        w, h = round(self.width() * ratio), round(self.height() * ratio)
        canvas = np.full((max(h, 1), max(w, 1), 3), 11, dtype=np.uint8)
        for name, rgb in self.grab_views().items():
            g = self.views[name].geometry()
            x0, y0 = round(g.x() * ratio), round(g.y() * ratio)
            hh = min(rgb.shape[0], canvas.shape[0] - y0)
            ww = min(rgb.shape[1], canvas.shape[1] - x0)
            if hh > 0 and ww > 0:
                canvas[y0 : y0 + hh, x0 : x0 + ww] = rgb[:hh, :ww]
        buf = np.ascontiguousarray(canvas)
        img = QImage(buf.data, buf.shape[1], buf.shape[0], 3 * buf.shape[1], QImage.Format_RGB888)
        with atomic_path(path) as tmp:
            if not img.save(str(tmp), "PNG"):
                raise OSError(f"could not write the screenshot to {path}")

    def shutdown(self) -> None:
        """Release every render window (call when the window closes)."""
        for view in self.views.values():
            view.shutdown()

    # -- signals from the views ---------------------------------------------------------------
    def _on_clicked(self, lps: np.ndarray, name: str) -> None:
        self.point_clicked.emit(np.asarray(lps, dtype=np.float64), name)

    def _on_crosshair_requested(self, lps: np.ndarray) -> None:
        self.set_crosshair(lps)
        self.crosshair_moved.emit(self.crosshair())

    def _on_needle_dragged(self, index: int, entry: np.ndarray, target: np.ndarray) -> None:
        self._move_needle(index, entry, target)
        self.needle_dragged.emit(index, entry.copy(), target.copy())

    def _on_needle_drag_finished(self, index: int, entry: np.ndarray, target: np.ndarray) -> None:
        self._move_needle(index, entry, target)
        self.needle_drag_finished.emit(index, entry.copy(), target.copy())

    def _move_needle(self, index: int, entry: np.ndarray, target: np.ndarray) -> None:
        from dataclasses import replace

        if not 0 <= index < len(self._needles):
            return
        self._needles[index] = replace(self._needles[index], entry_lps=entry, target_lps=target)
        for view in self._all_slice_views().values():
            view.update_needle(index, entry, target)
        if index == self._focused_needle:
            self._follow_needle(index, refit=False)
        self.view3d.update_needle(index, entry, target)
        self.request_render()

    def _on_landmark_dragged(self, key: str, lps: np.ndarray) -> None:
        self._landmarks[key] = np.asarray(lps, dtype=np.float64)
        for view in self._all_slice_views().values():
            view.set_landmarks(self._landmarks)
        self.landmark_dragged.emit(key, lps)

    def _on_wl_requested(self, window: float, level: float) -> None:
        self.set_window_level(window, level)
        self.window_level_changed.emit(float(window), float(level))
