"""One 2D slice view: a VTK reslice of the study on a patient-aligned (or needle) plane.

The renderer's world is the view's *plane coordinates* ``(a, b)`` in millimetres (see
:mod:`app.gui.views.planes`): the image, the overlays, the needles and the landmarks are all
drawn in that 2-D frame, and the camera looks down ``-z`` at it with a parallel projection.
Changing slice only moves the reslice matrices; nothing is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QWidget
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingCore import vtkImageReslice
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkActor2D,
    vtkImageActor,
    vtkPolyDataMapper,
    vtkPolyDataMapper2D,
    vtkRenderer,
    vtkTextActor,
)

from app.gui.views import overlays as ov
from app.gui.views.planes import (
    PlaneAxes,
    PlaneGrid,
    orientation_letters,
    plane_grid,
    reslice_matrix,
    slice_step_mm,
    to_plane,
    to_world,
    volume_center,
)
from app.gui.views.vtk_bridge import (
    BACKGROUND,
    KEY_DOWN,
    KEY_UP,
    RenderCanvas,
    image_from_array,
    image_to_numpy,
    rgba_image,
    set_polydata,
)
from imaging.volume import Volume

if TYPE_CHECKING:
    from app.gui.views.grid import NeedleDisplay

HANDLE_PX = 7.0
HIT_PX = 10.0
CLICK_SLOP_PX = 4.0
# The zone tint lies under the label outlines; both are translucent and write depth, so they
# are also drawn in that order (see ``_stack_overlays``) whatever order they were given in.
Z_ZONES = 0.3
Z_OVERLAY = 0.5
Z_GLYPH = 1.0
CROSS_COLORS = ((0.35, 0.9, 0.35), (0.4, 0.6, 1.0), (1.0, 0.35, 0.35))
CROSS_DEFAULT = (0.2, 0.75, 1.0)


@dataclass
class _Overlay:
    """A label-like volume resliced onto the view and coloured in numpy."""

    volume: Volume
    reslice: vtkImageReslice
    matrix: vtkMatrix4x4
    actor: vtkImageActor
    buffer: np.ndarray
    image: vtkImageData
    source: vtkImageData
    keep: np.ndarray


@dataclass
class _NeedleGlyph:
    band: vtkPolyData
    near: vtkPolyData
    axis: vtkPolyData
    handles: vtkPolyData
    actors: list[vtkActor]
    text: vtkTextActor


@dataclass
class _LandmarkGlyph:
    poly: vtkPolyData
    actor: vtkActor
    text: vtkTextActor


@dataclass
class _Drag:
    kind: str  # "crosshair" | "click" | "needle" | "landmark" | "brush" | "wl" | "pan"
    start_xy: tuple[float, float]
    last_xy: tuple[float, float]
    moved: bool = False
    index: int = -1
    end: str = ""
    key: str = ""
    depth_mm: float = 0.0
    points: list[np.ndarray] = field(default_factory=list)
    erase: bool = False


def _poly_actor(
    renderer: vtkRenderer, color: tuple[float, float, float], *, opacity: float = 1.0
) -> tuple[vtkPolyData, vtkActor]:
    poly = vtkPolyData()
    mapper = vtkPolyDataMapper()
    mapper.SetInputData(poly)
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.GetProperty().LightingOff()
    actor.PickableOff()
    renderer.AddActor(actor)
    return poly, actor


def _text(
    renderer: vtkRenderer,
    *,
    size: int = 13,
    color: tuple[float, float, float] = (0.85, 0.88, 0.92),
    bold: bool = False,
) -> vtkTextActor:
    t = vtkTextActor()
    p = t.GetTextProperty()
    p.SetFontSize(size)
    p.SetColor(*color)
    p.SetBold(bold)
    p.SetShadow(True)
    p.SetFontFamilyToArial()
    renderer.AddViewProp(t)
    return t


def _at_normalized(t: vtkTextActor, x: float, y: float, *, h: str, v: str) -> None:
    t.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    t.GetPositionCoordinate().SetValue(x, y)
    p = t.GetTextProperty()
    {"left": p.SetJustificationToLeft, "right": p.SetJustificationToRight}.get(
        h, p.SetJustificationToCentered
    )()
    {"top": p.SetVerticalJustificationToTop, "bottom": p.SetVerticalJustificationToBottom}.get(
        v, p.SetVerticalJustificationToCentered
    )()


def _polyline_cells(pts_count: int, *, closed: bool = True) -> list[int]:
    cell = list(range(pts_count))
    return cell + [0] if closed else cell


class SliceView(RenderCanvas):
    """A slice view of the study on planes of fixed orientation.

    Signals carry LPS millimetre points as (3,) float ndarrays; the grid links them.
    """

    clicked = Signal(object)
    crosshair_requested = Signal(object)
    needle_dragged = Signal(int, object, object)
    needle_drag_finished = Signal(int, object, object)
    landmark_dragged = Signal(str, object)
    landmark_drag_finished = Signal(str, object)
    brush_stroke_finished = Signal(object, float, bool)
    window_level_requested = Signal(float, float)
    focused = Signal(str)

    def __init__(self, name: str, axes: PlaneAxes, parent: QWidget | None = None) -> None:
        super().__init__(parent, handler=self)
        self.name = name
        self.axes = axes
        self.title = name.capitalize()
        self.center = np.zeros(3)
        self.depth_mm = 0.0
        self.grid: PlaneGrid | None = None
        self.volume: Volume | None = None
        self.mode = "navigate"
        self.brush_radius_mm = 5.0
        self.crosshair_lps = np.zeros(3)
        self._window, self._level = 2000.0, 500.0
        self._value_range = (0.0, 1.0)
        self._drag: _Drag | None = None
        self._needles: list[NeedleDisplay] = []
        self._needle_glyphs: list[_NeedleGlyph] = []
        self._landmarks: dict[str, np.ndarray] = {}
        self._landmark_glyphs: dict[str, _LandmarkGlyph] = {}
        self._label_shown: set[int] = set(ov.LABEL_COLORS)
        self.label_style = "outline"
        self._labels: _Overlay | None = None
        self._zones: _Overlay | None = None
        self._zones_visible = True
        self._render_pending = False
        self._user_camera = False

        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*BACKGROUND)
        self.GetRenderWindow().AddRenderer(self.renderer)
        self._Iren.SetInteractorStyle(None)
        self._label_volume: Volume | None = None
        self._zone_volume: Volume | None = None
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        self._build_fixed_actors()
        self.on_resize = self._on_resized

    # -- construction ---------------------------------------------------------------------------
    def _build_fixed_actors(self) -> None:
        r = self.renderer
        self._image_data = None
        self._reslice = vtkImageReslice()
        self._reslice.SetInterpolationModeToLinear()
        self._reslice.SetOutputDimensionality(2)
        self._reslice_matrix = vtkMatrix4x4()
        self._reslice.SetResliceAxes(self._reslice_matrix)
        self.image_actor = vtkImageActor()
        self.image_actor.GetMapper().SetInputConnection(self._reslice.GetOutputPort())
        self.image_actor.VisibilityOff()
        r.AddActor(self.image_actor)

        self._cross_h, a = _poly_actor(r, (0.2, 0.75, 1.0), opacity=0.8)
        self._cross_v, b = _poly_actor(r, (0.2, 0.75, 1.0), opacity=0.8)
        self._cross_actors = [a, b]
        self._brush, self._brush_actor = _poly_actor(r, (1.0, 1.0, 1.0), opacity=0.9)
        self._stroke, self._stroke_actor = _poly_actor(r, (1.0, 0.55, 0.1), opacity=0.6)
        for actor in (self._brush_actor, self._stroke_actor):
            actor.SetPosition(0, 0, Z_GLYPH + 0.2)
            actor.VisibilityOff()

        self._letters = {
            k: _text(r, size=15, bold=True) for k in ("left", "right", "top", "bottom")
        }
        _at_normalized(self._letters["left"], 0.01, 0.5, h="left", v="center")
        _at_normalized(self._letters["right"], 0.99, 0.5, h="right", v="center")
        _at_normalized(self._letters["top"], 0.5, 0.955, h="center", v="top")
        _at_normalized(self._letters["bottom"], 0.5, 0.01, h="center", v="bottom")
        self._banner = _text(r, size=12, color=(0.95, 0.85, 0.55))
        _at_normalized(self._banner, 0.01, 0.99, h="left", v="top")
        self._banner.VisibilityOff()
        self._name_text = _text(r, size=13, color=(0.55, 0.8, 1.0), bold=True)
        _at_normalized(self._name_text, 0.99, 0.99, h="right", v="top")
        self._readout = _text(r, size=12)
        _at_normalized(self._readout, 0.01, 0.01, h="left", v="bottom")
        self._scale_text = _text(r, size=11)
        self._scale_text.GetTextProperty().SetJustificationToCentered()
        self._scale_poly = vtkPolyData()
        m2 = vtkPolyDataMapper2D()
        m2.SetInputData(self._scale_poly)
        self._scale_actor = vtkActor2D()
        self._scale_actor.SetMapper(m2)
        self._scale_actor.GetProperty().SetColor(0.85, 0.88, 0.92)
        self._scale_actor.GetProperty().SetLineWidth(2)
        r.AddViewProp(self._scale_actor)
        self._update_letters()

    def _update_letters(self) -> None:
        letters = orientation_letters(self.axes)
        for key, actor in self._letters.items():
            actor.SetInput(letters[key])
        self._name_text.SetInput(self.title)

    # -- volume -------------------------------------------------------------------------------
    def set_volume(self, volume: Volume, center: np.ndarray | None = None) -> None:
        """Show ``volume``; planes pass through ``center`` (default: the grid centre)."""
        self.volume = volume
        self.center = volume_center(volume) if center is None else np.asarray(center, float)
        self.depth_mm = 0.0
        self.grid = plane_grid(volume, self.axes, self.center)
        arr = volume.array
        if arr.dtype == np.float64 or arr.dtype.kind == "b":
            arr = arr.astype(np.float32)
        self._volume_array = np.ascontiguousarray(arr)
        self._image_data = image_from_array(self._volume_array)
        self._reslice.SetInputData(self._image_data)
        self._configure_reslice(self._reslice)
        lo = float(np.min(arr[:: max(1, arr.shape[0] // 16)]))
        self._value_range = (lo, float(np.max(arr[:: max(1, arr.shape[0] // 16)])))
        self._reslice.SetBackgroundLevel(lo)
        self.image_actor.VisibilityOn()
        for o in (self._labels, self._zones):
            if o is not None:
                self._configure_reslice(o.reslice)
                self._resize_overlay(o)
        if self._labels is None and self._label_volume is not None:
            self._labels = self._make_overlay(self._label_volume, Z_OVERLAY)
        if self._zones is None and self._zone_volume is not None:
            self._zones = self._make_overlay(self._zone_volume, Z_ZONES)
        self._stack_overlays()
        self._update_matrices()
        self._refresh_glyphs()
        self.reset_camera()

    def _configure_reslice(self, reslice: vtkImageReslice) -> None:
        assert self.grid is not None
        g = self.grid
        reslice.SetOutputOrigin(g.origin_ab[0], g.origin_ab[1], 0.0)
        reslice.SetOutputSpacing(g.pixel_mm, g.pixel_mm, 1.0)
        reslice.SetOutputExtent(0, g.shape[0] - 1, 0, g.shape[1] - 1, 0, 0)

    def set_axes(self, axes: PlaneAxes, center: np.ndarray, *, depth_mm: float = 0.0) -> None:
        """Re-orient the view (needle views): new axes through ``center``."""
        self.axes = axes
        self.center = np.asarray(center, dtype=np.float64)
        self.depth_mm = depth_mm
        self._update_letters()
        if self.volume is None:
            return
        self.grid = plane_grid(self.volume, axes, self.center)
        self._configure_reslice(self._reslice)
        for o in (self._labels, self._zones):
            if o is not None:
                self._configure_reslice(o.reslice)
                self._resize_overlay(o)
        self._update_matrices()
        self._refresh_glyphs()

    def _update_matrices(self) -> None:
        if self.volume is None:
            return
        self._reslice_matrix.DeepCopy(
            reslice_matrix(self.volume, self.axes, self.center, self.depth_mm).ravel()
        )
        self._reslice_matrix.Modified()
        self._reslice.Modified()
        for o in (self._labels, self._zones):
            if o is not None:
                o.matrix.DeepCopy(
                    reslice_matrix(o.volume, self.axes, self.center, self.depth_mm).ravel()
                )
                o.matrix.Modified()
                o.reslice.Modified()
        self._recolor_overlays()
        self._update_readout()

    # -- overlays -----------------------------------------------------------------------------
    def _make_overlay(self, volume: Volume, z: float) -> _Overlay:
        keep = np.ascontiguousarray(volume.array.astype(np.uint8, copy=False))
        img = image_from_array(keep)
        reslice = vtkImageReslice()
        reslice.SetInterpolationModeToNearestNeighbor()
        reslice.SetOutputDimensionality(2)
        reslice.SetBackgroundLevel(0)
        matrix = vtkMatrix4x4()
        reslice.SetResliceAxes(matrix)
        reslice.SetInputData(img)
        self._configure_reslice(reslice)
        actor = vtkImageActor()
        actor.InterpolateOff()
        actor.SetPosition(0, 0, z)
        self.renderer.AddActor(actor)
        o = _Overlay(volume, reslice, matrix, actor, np.zeros((1, 1, 4), np.uint8), img, img, keep)
        self._resize_overlay(o)
        return o

    def _resize_overlay(self, o: _Overlay) -> None:
        assert self.grid is not None
        image, buf = rgba_image(self.grid.shape)
        image.SetOrigin(self.grid.origin_ab[0], self.grid.origin_ab[1], 0.0)
        image.SetSpacing(self.grid.pixel_mm, self.grid.pixel_mm, 1.0)
        o.image, o.buffer = image, buf
        o.actor.GetMapper().SetInputData(image)

    def _stack_overlays(self) -> None:
        """Draw order: zones first, then labels (a later-added actor renders later)."""
        for o in (self._zones, self._labels):
            if o is not None:
                self.renderer.RemoveActor(o.actor)
                self.renderer.AddActor(o.actor)

    def _drop_overlay(self, o: _Overlay | None) -> None:
        if o is not None:
            self.renderer.RemoveActor(o.actor)

    def set_labels(self, labels: Volume | None) -> None:
        """Label map (any grid) to colour over the image."""
        self._drop_overlay(self._labels)
        self._labels = None
        self._label_volume = labels
        if labels is not None and self.volume is not None:
            self._labels = self._make_overlay(labels, Z_OVERLAY)
        self._stack_overlays()
        self._update_matrices()

    def set_zone_map(self, zones: Volume | None) -> None:
        """Denis zone map (1/2/3, any grid) to tint over the image."""
        self._drop_overlay(self._zones)
        self._zones = None
        self._zone_volume = zones
        if zones is not None and self.volume is not None:
            self._zones = self._make_overlay(zones, Z_ZONES)
        self._stack_overlays()
        self._update_matrices()

    def set_label_visible(self, label: int, visible: bool) -> None:
        """Show or hide one label value's colour."""
        if visible:
            self._label_shown.add(int(label))
        else:
            self._label_shown.discard(int(label))
        self._recolor_overlays()

    def set_zones_visible(self, visible: bool) -> None:
        """Show or hide the Denis zone tint."""
        self._zones_visible = visible
        self._recolor_overlays()

    def set_label_style(self, style: str) -> None:
        """``"outline"`` (border opaque, inside faint) or ``"fill"`` (40 % fill)."""
        if style not in ("outline", "fill"):
            raise ValueError(f"label style must be 'outline' or 'fill', got {style!r}")
        self.label_style = style
        self._recolor_overlays()

    def _recolor_overlays(self) -> None:
        for o, colors, shown, style, alpha in (
            (self._labels, ov.LABEL_COLORS, self._label_shown, self.label_style, ov.FILL_ALPHA),
            (
                self._zones,
                ov.ZONE_COLORS,
                set(ov.ZONE_COLORS) if self._zones_visible else set(),
                "fill",
                ov.ZONE_ALPHA,
            ),
        ):
            if o is None:
                continue
            o.reslice.Update()
            lab = image_to_numpy(o.reslice.GetOutput())
            ov.label_rgba(lab, colors, shown=shown, style=style, fill_alpha=alpha, out=o.buffer)
            o.image.GetPointData().GetScalars().Modified()
            o.image.Modified()

    def resliced_labels(self) -> np.ndarray | None:
        """(B, A) label values on the current plane (for readouts and tests)."""
        if self._labels is None:
            return None
        self._labels.reslice.Update()
        return image_to_numpy(self._labels.reslice.GetOutput()).copy()

    def resliced_image(self) -> np.ndarray:
        """(B, A) study values on the current plane, rows along ``b`` (upwards)."""
        self._reslice.Update()
        return image_to_numpy(self._reslice.GetOutput()).copy()

    # -- window / level -----------------------------------------------------------------------
    def set_window_level(self, window: float, level: float) -> None:
        """Grey mapping of the study: ``level +- window / 2`` spans black to white."""
        self._window, self._level = max(float(window), 1e-3), float(level)
        prop = self.image_actor.GetProperty()
        prop.SetColorWindow(self._window)
        prop.SetColorLevel(self._level)
        self._update_readout()

    def window_level(self) -> tuple[float, float]:
        """Current (window, level)."""
        return self._window, self._level

    # -- crosshair and slice ------------------------------------------------------------------
    def set_crosshair(self, lps: np.ndarray) -> None:
        """Put the plane through ``lps`` and the crosshair lines on it."""
        self.crosshair_lps = np.asarray(lps, dtype=np.float64).copy()
        depth = float((self.crosshair_lps - self.center) @ self.axes.n)
        if abs(depth - self.depth_mm) > 1e-9:
            self.depth_mm = depth
            self._update_matrices()
            self._refresh_glyphs()
        self._update_crosshair()

    def _update_crosshair(self) -> None:
        if self.grid is None:
            return
        a, b, _ = to_plane(self.crosshair_lps, self.axes, self.center)[0]
        a0, a1, b0, b1 = self.grid.extent_ab
        pad = 0.5 * self.grid.pixel_mm
        z = Z_GLYPH
        set_polydata(self._cross_h, np.array([[a0 - pad, b, z], [a1 + pad, b, z]]), lines=[[0, 1]])
        set_polydata(self._cross_v, np.array([[a, b0 - pad, z], [a, b1 + pad, z]]), lines=[[0, 1]])
        # Each line is another view's plane: coloured as that view (sagittal green across x,
        # coronal blue across y, axial red across z) when it is patient-aligned.
        for actor, across in zip(self._cross_actors, (self.axes.v, self.axes.u), strict=True):
            axis = int(np.argmax(np.abs(across)))
            aligned = abs(across[axis]) > 0.999
            actor.GetProperty().SetColor(*(CROSS_COLORS[axis] if aligned else CROSS_DEFAULT))

    def set_crosshair_visible(self, visible: bool) -> None:
        """Show or hide the crosshair lines."""
        for a in self._cross_actors:
            a.SetVisibility(visible)

    def slice_step_mm(self) -> float:
        """Distance between neighbouring slices along this view's normal, mm."""
        return 1.0 if self.volume is None else slice_step_mm(self.volume, self.axes.n)

    def slice_direction(self) -> np.ndarray:
        """Unit normal pointing the way positive steps go: towards +x (left), +y (posterior)
        or +z (head), whichever the normal is closest to."""
        n = self.axes.n
        return n if n[int(np.argmax(np.abs(n)))] > 0 else -n

    def step_slice(self, steps: int) -> None:
        """Move the plane by ``steps`` slices (positive: towards the patient's left, back or
        head for sagittal, coronal and axial views)."""
        if self.volume is None:
            return
        new = self.crosshair_lps + steps * self.slice_step_mm() * self.slice_direction()
        self.crosshair_requested.emit(new)

    def _update_readout(self) -> None:
        if self.volume is None:
            self._readout.SetInput("")
            return
        n = self.axes.n
        axis = int(np.argmax(np.abs(n)))
        if abs(n[axis]) > 0.999:
            pos = f"{'xyz'[axis]} {self.crosshair_lps[axis]:+.1f} mm"
        else:
            pos = f"depth {self.depth_mm:+.1f} mm"
        self._readout.SetInput(f"{pos}   W {self._window:.0f} L {self._level:.0f}")

    # -- camera -------------------------------------------------------------------------------
    def reset_camera(self) -> None:
        """Fit the whole plane grid in the view."""
        if self.grid is None:
            return
        a0, a1, b0, b1 = self.grid.extent_ab
        cam = self.renderer.GetActiveCamera()
        ca, cb = (a0 + a1) / 2, (b0 + b1) / 2
        cam.SetFocalPoint(ca, cb, 0.0)
        cam.SetPosition(ca, cb, 1000.0)
        cam.SetViewUp(0.0, 1.0, 0.0)
        w, h = max(self.width(), 1), max(self.height(), 1)
        half_h = (b1 - b0 + self.grid.pixel_mm) / 2
        half_w = (a1 - a0 + self.grid.pixel_mm) / 2
        cam.SetParallelScale(1.04 * max(half_h, half_w * h / w))
        self.renderer.ResetCameraClippingRange(a0, a1, b0, b1, -10, 10)
        cam.SetClippingRange(900.0, 1100.0)
        self._user_camera = False
        self._update_screen_overlays()

    def mm_per_pixel(self) -> float:
        """Millimetres per device pixel at the current zoom."""
        h = self.GetRenderWindow().GetSize()[1] or max(self.height(), 1)
        return 2.0 * self.renderer.GetActiveCamera().GetParallelScale() / max(h, 1)

    def zoom(self, factor: float) -> None:
        """Zoom in by ``factor`` (> 1 magnifies)."""
        cam = self.renderer.GetActiveCamera()
        cam.SetParallelScale(cam.GetParallelScale() / factor)
        self._user_camera = True
        self._update_screen_overlays()

    def pan_pixels(self, dx: float, dy: float) -> None:
        """Move the image by (dx, dy) device pixels (y up)."""
        mm = self.mm_per_pixel()
        cam = self.renderer.GetActiveCamera()
        fx, fy, _ = cam.GetFocalPoint()
        fx, fy = fx - dx * mm, fy - dy * mm
        cam.SetFocalPoint(fx, fy, 0.0)
        cam.SetPosition(fx, fy, 1000.0)
        self._user_camera = True

    # -- coordinates --------------------------------------------------------------------------
    def display_to_plane(self, x: float, y: float) -> np.ndarray:
        """VTK display position (device px, origin bottom-left) -> plane ``(a, b)`` mm."""
        r = self.renderer
        r.SetDisplayPoint(x, y, 0.0)
        r.DisplayToWorld()
        w = r.GetWorldPoint()
        return np.array([w[0] / w[3], w[1] / w[3]])

    def plane_to_display(self, ab: np.ndarray) -> np.ndarray:
        """Plane ``(a, b)`` mm -> VTK display position (device px)."""
        r = self.renderer
        r.SetWorldPoint(float(ab[0]), float(ab[1]), 0.0, 1.0)
        r.WorldToDisplay()
        d = r.GetDisplayPoint()
        return np.array([d[0], d[1]])

    def display_to_world(self, x: float, y: float) -> np.ndarray:
        """VTK display position -> (3,) LPS mm on the current plane."""
        return to_world(self.display_to_plane(x, y), self.axes, self.center, self.depth_mm)[0]

    def widget_to_world(self, pos: QPointF) -> np.ndarray:
        """Qt widget position -> (3,) LPS mm on the current plane."""
        return self.display_to_world(*self.display_xy(pos.x(), pos.y()))

    def world_to_display(self, lps: np.ndarray) -> np.ndarray:
        """(3,) LPS mm -> display position of its projection on the plane."""
        return self.plane_to_display(to_plane(lps, self.axes, self.center)[0, :2])

    # -- needles ------------------------------------------------------------------------------
    def set_needles(self, needles: list[NeedleDisplay]) -> None:
        """Show needles as bands of their real diameter (reusing glyphs when possible)."""
        while len(self._needle_glyphs) > len(needles):
            g = self._needle_glyphs.pop()
            for a in g.actors:
                self.renderer.RemoveActor(a)
            self.renderer.RemoveViewProp(g.text)
        while len(self._needle_glyphs) < len(needles):
            self._needle_glyphs.append(self._new_needle_glyph())
        self._needles = list(needles)
        for i in range(len(needles)):
            self._update_needle_glyph(i)

    def _new_needle_glyph(self) -> _NeedleGlyph:
        r = self.renderer
        band, a1 = _poly_actor(r, (1, 1, 1), opacity=0.3)
        near, a2 = _poly_actor(r, (1, 1, 1), opacity=0.95)
        axis, a3 = _poly_actor(r, (1, 1, 1), opacity=0.9)
        handles, a4 = _poly_actor(r, (1, 1, 1), opacity=1.0)
        for k, a in enumerate((a1, a2, a3, a4)):
            a.SetPosition(0, 0, Z_GLYPH + 0.01 * k)
        a4.GetProperty().SetLineWidth(2)
        text = _text(r, size=12)
        text.GetPositionCoordinate().SetCoordinateSystemToWorld()
        return _NeedleGlyph(band, near, axis, handles, [a1, a2, a3, a4], text)

    def update_needle(self, index: int, entry: np.ndarray, target: np.ndarray) -> None:
        """Move one needle's glyph (live drags; no new actors)."""
        from dataclasses import replace

        if 0 <= index < len(self._needles):
            self._needles[index] = replace(
                self._needles[index], entry_lps=np.asarray(entry), target_lps=np.asarray(target)
            )
            self._update_needle_glyph(index)

    def _update_needle_glyph(self, i: int) -> None:
        nd, g = self._needles[i], self._needle_glyphs[i]
        pts = to_plane(np.stack([nd.entry_lps, nd.target_lps]), self.axes, self.center)
        pa, pb = pts[0, :2], pts[1, :2]
        h0, h1 = pts[0, 2] - self.depth_mm, pts[1, 2] - self.depth_mm
        band = ov.needle_band(pa, pb, nd.diameter_mm)
        set_polydata(g.band, band, polys=[list(range(len(band)))])
        half = nd.diameter_mm / 2 + 0.5 * self.slice_step_mm()
        inter = ov.near_plane_interval(h0, h1, half)
        if inter is None:
            set_polydata(g.near, np.zeros((0, 2)))
        else:
            qa, qb = pa + (pb - pa) * inter[0], pa + (pb - pa) * inter[1]
            near = ov.needle_band(qa, qb, nd.diameter_mm)
            set_polydata(g.near, near, polys=[list(range(len(near)))])
        set_polydata(g.axis, np.stack([pa, pb]), lines=[[0, 1]])
        if nd.editable:
            r = HANDLE_PX * self.mm_per_pixel()
            c0, c1 = ov.circle(pa, r, n=20), ov.circle(pb, r, n=20)
            set_polydata(
                g.handles,
                np.concatenate([c0, c1]),
                lines=[_polyline_cells(20), [k + 20 for k in _polyline_cells(20)]],
            )
        else:
            set_polydata(g.handles, np.zeros((0, 2)))
        col = tuple(float(c) for c in nd.color)
        bright = tuple(min(1.0, 0.35 + c) for c in col) if nd.selected else col
        for actor, c in zip(g.actors, (col, bright, bright, (1.0, 1.0, 1.0)), strict=True):
            actor.GetProperty().SetColor(*c)
        g.actors[0].GetProperty().SetOpacity(0.45 if nd.selected else 0.28)
        g.actors[2].GetProperty().SetLineWidth(2.0 if nd.selected else 1.0)
        g.text.SetInput(nd.label if nd.selected or nd.labelled else "")
        # The name sits beside the entry handle, on the side facing the middle of the view.
        off = (HANDLE_PX + 4) * self.mm_per_pixel()
        width = self.GetRenderWindow().GetSize()[0] or self.width()
        on_right = self.plane_to_display(pa)[0] > 0.6 * width
        tp = g.text.GetTextProperty()
        tp.SetJustificationToRight() if on_right else tp.SetJustificationToLeft()
        dx = -off if on_right else off
        g.text.GetPositionCoordinate().SetValue(float(pa[0] + dx), float(pa[1] + off), Z_GLYPH)
        g.text.GetTextProperty().SetColor(*bright)

    def _refresh_glyphs(self) -> None:
        for i in range(len(self._needles)):
            self._update_needle_glyph(i)
        self._update_landmarks()
        self._update_crosshair()

    # -- landmarks ----------------------------------------------------------------------------
    def set_landmarks(self, landmarks: dict[str, np.ndarray]) -> None:
        """Landmarks (id -> LPS mm), drawn near their slice with a short name."""
        for key in list(self._landmark_glyphs):
            if key not in landmarks:
                g = self._landmark_glyphs.pop(key)
                self.renderer.RemoveActor(g.actor)
                self.renderer.RemoveViewProp(g.text)
        for key in landmarks:
            if key not in self._landmark_glyphs:
                poly, actor = _poly_actor(self.renderer, (0.3, 1.0, 0.4))
                actor.SetPosition(0, 0, Z_GLYPH + 0.1)
                actor.GetProperty().SetLineWidth(2)
                text = _text(self.renderer, size=12, color=(0.4, 1.0, 0.5))
                text.GetPositionCoordinate().SetCoordinateSystemToWorld()
                text.SetInput(ov.landmark_text(key))
                self._landmark_glyphs[key] = _LandmarkGlyph(poly, actor, text)
        self._landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in landmarks.items()}
        self._update_landmarks()

    def _landmark_visible_mm(self) -> float:
        return max(6.0, 1.5 * self.slice_step_mm())

    def _update_landmarks(self) -> None:
        r = 3.0
        for key, g in self._landmark_glyphs.items():
            p = to_plane(self._landmarks[key], self.axes, self.center)[0]
            visible = bool(abs(p[2] - self.depth_mm) <= self._landmark_visible_mm())
            g.actor.SetVisibility(visible)
            g.text.SetVisibility(visible)
            if not visible:
                continue
            c = ov.circle(p[:2], r, n=16)
            cross = np.array(
                [[p[0] - r, p[1]], [p[0] + r, p[1]], [p[0], p[1] - r], [p[0], p[1] + r]]
            )
            set_polydata(
                g.poly,
                np.concatenate([c, cross]),
                lines=[_polyline_cells(16), [16, 17], [18, 19]],
            )
            g.text.GetPositionCoordinate().SetValue(float(p[0] + r + 1), float(p[1] + r), Z_GLYPH)

    # -- modes and brush ----------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """Interaction mode of the left button (see :meth:`ViewGrid.set_mode`)."""
        self.mode = mode
        brush = mode in ("brush", "erase")
        self._brush_actor.SetVisibility(brush and self.underMouse())
        if brush:
            self._brush_actor.GetProperty().SetColor(
                *((1.0, 0.35, 0.35) if mode == "erase" else (1.0, 1.0, 1.0))
            )
        self.setCursor(
            Qt.CursorShape.CrossCursor if mode != "navigate" else Qt.CursorShape.ArrowCursor
        )

    def _show_brush_at(self, ab: np.ndarray) -> None:
        c = ov.circle(ab, self.brush_radius_mm, n=40)
        set_polydata(self._brush, c, lines=[_polyline_cells(40)])
        self._brush_actor.VisibilityOn()

    def _update_stroke(self, points: list[np.ndarray]) -> None:
        pts, cells = [], []
        for p in points:
            ab = to_plane(p, self.axes, self.center)[0, :2]
            c = ov.circle(ab, self.brush_radius_mm, n=24)
            base = len(pts) * 24
            pts.append(c)
            cells.append(list(range(base, base + 24)))
        set_polydata(self._stroke, np.concatenate(pts) if pts else np.zeros((0, 2)), polys=cells)
        self._stroke_actor.SetVisibility(bool(points))

    # -- banner -------------------------------------------------------------------------------
    def set_banner(self, text: str | None) -> None:
        """Patient/study banner in the top-left corner; ``None`` hides it."""
        self._banner.SetInput(text or "")
        self._banner.SetVisibility(bool(text))

    # -- rendering ----------------------------------------------------------------------------
    def _on_resized(self) -> None:
        if self.grid is not None and not self._user_camera:
            self.reset_camera()
        else:
            self._update_screen_overlays()

    def _update_screen_overlays(self) -> None:
        """Things sized in screen pixels: scale bar and handle circles."""
        w, h = self.GetRenderWindow().GetSize()
        if w <= 1 or h <= 1:
            w, h = max(self.width(), 2), max(self.height(), 2)
        mm = self.mm_per_pixel()
        length = ov.nice_length_mm(0.25 * w * mm)
        px = length / mm
        x1, y = w - 12.0, 14.0
        x0 = x1 - px
        set_polydata(
            self._scale_poly,
            np.array([[x0, y], [x1, y], [x0, y + 5], [x1, y + 5]]),
            lines=[[0, 1], [0, 2], [1, 3]],
        )
        self._scale_text.GetPositionCoordinate().SetCoordinateSystemToDisplay()
        self._scale_text.SetPosition((x0 + x1) / 2, y + 5)
        self._scale_text.SetInput(f"{length:g} mm")
        for i, nd in enumerate(self._needles):
            if nd.editable:
                self._update_needle_glyph(i)

    def render_now(self) -> None:
        """Render synchronously."""
        self._render_pending = False
        if self.closed or not self.isVisible():
            return
        self.GetRenderWindow().Render()

    def request_render(self) -> None:
        """Render soon (several requests in one event-loop turn render once)."""
        if not self._render_pending:
            self._render_pending = True
            QTimer.singleShot(0, self._deferred_render)

    def _deferred_render(self) -> None:
        if self._render_pending:
            self.render_now()

    # -- mouse and keys -----------------------------------------------------------------------
    def _hit(self, x: float, y: float) -> tuple[str, int, str] | None:
        best: tuple[float, tuple[str, int, str]] | None = None
        for i, nd in enumerate(self._needles):
            if not nd.editable:
                continue
            for end, p in (("target", nd.target_lps), ("entry", nd.entry_lps)):
                d = float(np.hypot(*(self.world_to_display(p) - (x, y))))
                if d <= HIT_PX and (best is None or d < best[0]):
                    best = (d, ("needle", i, end))
        if self.mode == "landmark":
            for key, p in self._landmarks.items():
                if not self._landmark_glyphs[key].actor.GetVisibility():
                    continue
                d = float(np.hypot(*(self.world_to_display(p) - (x, y))))
                if d <= HIT_PX and (best is None or d < best[0]):
                    best = (d, ("landmark", -1, key))
        return None if best is None else best[1]

    def on_press(self, ev: QMouseEvent) -> None:
        """Start a click, drag, stroke, window/level or pan."""
        if self.volume is None:
            return
        self.focused.emit(self.name)
        x, y = self.display_xy(ev.position().x(), ev.position().y())
        button, mods = ev.button(), ev.modifiers()
        ctrl = bool(mods & Qt.KeyboardModifier.ControlModifier)
        shift = bool(mods & Qt.KeyboardModifier.ShiftModifier)
        if button == Qt.MouseButton.RightButton or (button == Qt.MouseButton.LeftButton and ctrl):
            self._drag = _Drag("wl", (x, y), (x, y))
            return
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and shift):
            self._drag = _Drag("pan", (x, y), (x, y))
            return
        if button != Qt.MouseButton.LeftButton:
            return
        hit = self._hit(x, y)
        if hit is not None and hit[0] == "needle":
            nd = self._needles[hit[1]]
            p = nd.target_lps if hit[2] == "target" else nd.entry_lps
            depth = float(to_plane(p, self.axes, self.center)[0, 2])
            self._drag = _Drag("needle", (x, y), (x, y), index=hit[1], end=hit[2], depth_mm=depth)
        elif hit is not None:
            depth = float(to_plane(self._landmarks[hit[2]], self.axes, self.center)[0, 2])
            self._drag = _Drag("landmark", (x, y), (x, y), key=hit[2], depth_mm=depth)
        elif self.mode in ("brush", "erase"):
            p = self.display_to_world(x, y)
            self._drag = _Drag("brush", (x, y), (x, y), points=[p], erase=self.mode == "erase")
            self._update_stroke(self._drag.points)
            self.request_render()
        elif self.mode == "navigate":
            self._drag = _Drag("crosshair", (x, y), (x, y))
            self.crosshair_requested.emit(self.display_to_world(x, y))
        else:
            self._drag = _Drag("click", (x, y), (x, y))

    def on_move(self, ev: QMouseEvent) -> None:
        """Continue the current gesture; move the brush circle."""
        x, y = self.display_xy(ev.position().x(), ev.position().y())
        if self.mode in ("brush", "erase") and self.volume is not None:
            self._show_brush_at(self.display_to_plane(x, y))
            self.request_render()
        d = self._drag
        if d is None:
            return
        dx, dy = x - d.last_xy[0], y - d.last_xy[1]
        d.last_xy = (x, y)
        if np.hypot(x - d.start_xy[0], y - d.start_xy[1]) > CLICK_SLOP_PX:
            d.moved = True
        if d.kind == "wl":
            span = max(self._value_range[1] - self._value_range[0], 1.0)
            k = span / 600.0
            self.window_level_requested.emit(
                max(1.0, self._window + dx * k * 2), self._level - dy * k
            )
        elif d.kind == "pan":
            self.pan_pixels(dx, dy)
            self.request_render()
        elif d.kind == "crosshair":
            self.crosshair_requested.emit(self.display_to_world(x, y))
        elif d.kind == "needle":
            entry, target = self._dragged_needle(d, x, y)
            self.update_needle(d.index, entry, target)
            self.needle_dragged.emit(d.index, entry, target)
            self.request_render()
        elif d.kind == "landmark":
            p = self._point_at_depth(x, y, d.depth_mm)
            self._landmarks[d.key] = p
            self._update_landmarks()
            self.landmark_dragged.emit(d.key, p.copy())
            self.request_render()
        elif d.kind == "brush":
            p = self.display_to_world(x, y)
            if np.linalg.norm(p - d.points[-1]) >= 0.3 * self.brush_radius_mm:
                d.points.append(p)
                self._update_stroke(d.points)

    def _point_at_depth(self, x: float, y: float, depth_mm: float) -> np.ndarray:
        ab = self.display_to_plane(x, y)
        return to_world(ab, self.axes, self.center, depth_mm)[0]

    def _dragged_needle(self, d: _Drag, x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
        nd = self._needles[d.index]
        p = self._point_at_depth(x, y, d.depth_mm)
        if d.end == "target":
            return np.asarray(nd.entry_lps, float).copy(), p
        return p, np.asarray(nd.target_lps, float).copy()

    def on_release(self, ev: QMouseEvent) -> None:
        """Finish the gesture: emit the click, the drag end or the stroke."""
        d, self._drag = self._drag, None
        if d is None:
            return
        x, y = self.display_xy(ev.position().x(), ev.position().y())
        if d.kind in ("click", "crosshair") and not d.moved:
            self.clicked.emit(self.display_to_world(*d.start_xy))
        elif d.kind == "needle":
            if d.moved:
                entry, target = self._dragged_needle(d, x, y)
                self.update_needle(d.index, entry, target)
                self.needle_drag_finished.emit(d.index, entry, target)
        elif d.kind == "landmark":
            if d.moved:
                p = self._point_at_depth(x, y, d.depth_mm)
                self.landmark_drag_finished.emit(d.key, p)
        elif d.kind == "brush":
            p = self.display_to_world(x, y)
            if np.linalg.norm(p - d.points[-1]) > 1e-6:
                d.points.append(p)
            self._update_stroke([])
            self.brush_stroke_finished.emit(
                [q.copy() for q in d.points], float(self.brush_radius_mm), d.erase
            )
            self.request_render()

    def on_wheel(self, ev: QWheelEvent) -> None:
        """Wheel: next/previous slice; Ctrl+wheel: zoom."""
        steps = ev.angleDelta().y() / 120.0
        if steps == 0:
            return
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom(1.15**steps)
            self.request_render()
        else:
            self.step_slice(int(np.sign(steps)) * max(1, int(abs(steps))))

    def on_key(self, ev: QKeyEvent) -> bool:
        """Up/Down/PageUp/PageDown: slice; R: reset view. Returns whether handled."""
        key = ev.key()
        if key in KEY_UP:
            self.step_slice(1)
        elif key in KEY_DOWN:
            self.step_slice(-1)
        elif key == Qt.Key.Key_R:
            self.reset_camera()
            self.request_render()
        else:
            return False
        return True

    def leaveEvent(self, ev: object) -> None:  # noqa: N802 (Qt)
        super().leaveEvent(ev)
        if self._brush_actor.GetVisibility():
            self._brush_actor.VisibilityOff()
            self.request_render()

    def shutdown(self) -> None:
        """Release the render window (call before the widget goes away)."""
        self._render_pending = False
        self.renderer.RemoveAllViewProps()
        self.release()
