"""Simulated fluoroscopy in the workstation: DRRs of the C-arm views with the plan drawn on top.

:class:`FluoroView` shows a digitally reconstructed radiograph (:mod:`imaging.drr`) of the case's
CT for one C-arm view (AP, lateral, inlet, outlet and each needle's bull's-eye and progression
views, from :mod:`planning.fluoro`), or the four standard views together ("C-arm" 2x2 layout).
The planned needles (a band of their real diameter at their depth's magnification), the foramina
and the lesion outline are projected with the view's :class:`~imaging.drr.CArmGeometry` and drawn
with QPainter; the C-arm angles in words are shown in a caption.

Speed: the CT is turned into an attenuation volume once per case, at full resolution and
downsampled by 2, in a worker thread. Every DRR is computed in a worker thread as well
(one shared single-thread pool, so the numba kernel owns both cores), with the
latest-request-wins pattern: each panel has at most one render in flight and one pending
request, which a newer request replaces. While the needles are being dragged (calls to
:meth:`FluoroView.set_needles` in quick succession, or ``interactive=True``) the bull's-eye and
progression views are rendered from the downsampled volume on a detector of half the pixels;
the standard views do not move with a needle, so only their overlay is redrawn. When no update
came for :data:`IDLE_MS` the panels are rendered again at full resolution.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from scipy.spatial import ConvexHull, QhullError

from geometry.carm_geometry import progression_direction
from imaging.atomic import atomic_path
from imaging.drr import (
    DEFAULT_SID_MM,
    DEFAULT_SOD_MM,
    AttenuationVolume,
    CArmGeometry,
    Drr,
    prepare_volume,
    render_drr,
)
from imaging.errors import SacroplanError
from planning.carm import CArmView, bulls_eye_view, view_for_detector_direction
from planning.fluoro import FluoroView as PlanFluoroView
from planning.fluoro import overlays, plan_views

log = logging.getLogger("sacroplan.gui.fluoro")

#: Views of the "C-arm" 2x2 layout, in reading order.
CARM_LAYOUT = ("ap", "lateral", "inlet", "outlet")
LAYOUTS = ("1x1", "2x2")
#: Milliseconds without a needle update after which the panels are rendered at full resolution.
IDLE_MS = 250
#: Needle updates closer together than this (s) count as a drag.
DRAG_GAP_S = 0.4
_FAST_DOWNSAMPLE = 2
_LESION_POINTS = 4000
_NEEDLE_COLORS = ((0.2, 1.0, 0.3), (1.0, 0.8, 0.1), (0.3, 0.8, 1.0), (1.0, 0.4, 0.9))
_FORAMEN_COLOR = QColor(255, 220, 40)
_LESION_COLOR = QColor(255, 70, 70)
_TITLES = {
    "ap": "AP",
    "true_ap": "True AP",
    "lateral": "Lateral",
    "inlet": "Inlet",
    "outlet": "Outlet",
}
# Fallback standard views without anatomy (prone; detector directions, LPS): the inlet tilts
# the detector ~24 deg toward the feet, the outlet ~50 deg toward the head (resources/carm.json).
_FALLBACK_DIRECTIONS = {
    "ap": (0.0, 1.0, 0.0),
    "lateral": (1.0, 0.0, 0.0),
    "inlet": (0.0, math.cos(math.radians(24.0)), -math.sin(math.radians(24.0))),
    "outlet": (0.0, math.cos(math.radians(50.0)), math.sin(math.radians(50.0))),
}

NeedleTuple = tuple[np.ndarray, np.ndarray, float, str]


def view_title(name: str) -> str:
    """Human name of a view key (``"bulls_eye_2"`` -> ``"Bull's-eye 2"``)."""
    if name in _TITLES:
        return _TITLES[name]
    if name.startswith("bulls_eye_"):
        return f"Bull's-eye {name.rsplit('_', 1)[1]}"
    if name.startswith("progression_"):
        return f"Progression {name.rsplit('_', 1)[1]}"
    return name


def _pose_key(g: CArmGeometry) -> tuple[float, ...]:
    return tuple(np.round(np.concatenate([g.isocenter_lps, g.detector_direction_lps]), 6))


def _coarse(g: CArmGeometry, factor: int) -> CArmGeometry:
    """The same pose and field of view on a detector with ``factor`` times fewer pixels a side."""
    rows, cols = g.detector_shape
    return CArmGeometry(
        g.isocenter_lps,
        g.detector_direction_lps,
        sid_mm=g.sid_mm,
        sod_mm=g.sod_mm,
        detector_shape=(max(1, rows // factor), max(1, cols // factor)),
        pixel_mm=(
            g.pixel_mm[0] * rows / max(1, rows // factor),
            g.pixel_mm[1] * cols / max(1, cols // factor),
        ),
        up_hint_lps=g.up_hint_lps,
    )


# -- rendering off the GUI thread --------------------------------------------------------------
_POOL: QThreadPool | None = None


def drr_pool() -> QThreadPool:
    """The single-thread pool every DRR is computed in (the kernel itself uses all cores)."""
    global _POOL
    if _POOL is None:
        _POOL = QThreadPool()
        _POOL.setMaxThreadCount(1)
        _POOL.setExpiryTimeout(-1)
    return _POOL


class _JobSignals(QObject):
    done = Signal(int, object)


class _Job(QRunnable):
    def __init__(self, seq: int, fn: object, signals: _JobSignals) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._seq, self._fn, self._signals = seq, fn, signals

    def run(self) -> None:
        try:
            result = self._fn()  # type: ignore[operator]
        except Exception as exc:  # reported to the GUI thread, never raised in the pool
            log.exception("fluoroscopy job failed")
            result = exc
        self._signals.done.emit(self._seq, result)


class LatestRenderer(QObject):
    """Runs DRR requests one at a time; a new request replaces the pending one.

    ``rendered(drr, full)`` is emitted on the GUI thread for each finished render newer than
    the last one shown; ``failed(message)`` when a render raised.
    """

    rendered = Signal(object, bool)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._signals = _JobSignals()
        self._signals.done.connect(self._on_done)
        self._seq = 0
        self._shown = -1
        self._busy = False
        self._pending: tuple[int, AttenuationVolume, CArmGeometry, bool] | None = None
        self._full_of: dict[int, bool] = {}
        self.renders = 0

    @property
    def idle(self) -> bool:
        """True when nothing is running or waiting."""
        return not self._busy and self._pending is None

    def request(self, volume: AttenuationVolume, geometry: CArmGeometry, *, full: bool) -> None:
        """Ask for a DRR of ``volume`` seen through ``geometry`` (replaces a pending request)."""
        self._seq += 1
        self._pending = (self._seq, volume, geometry, full)
        if not self._busy:
            self._start()

    def _start(self) -> None:
        assert self._pending is not None
        seq, volume, geometry, full = self._pending
        self._pending = None
        self._busy = True
        self._full_of[seq] = full
        drr_pool().start(_Job(seq, lambda: render_drr(volume, geometry), self._signals))

    def _on_done(self, seq: int, result: object) -> None:
        self._busy = False
        full = self._full_of.pop(seq, True)
        if self._pending is not None:
            self._start()
        if isinstance(result, Exception):
            self.failed.emit(str(result))
        elif seq > self._shown:
            self._shown = seq
            self.renders += 1
            self.rendered.emit(result, full)


# -- one panel -----------------------------------------------------------------------------------
@dataclass
class _Overlay:
    needles: list[tuple[np.ndarray, float, QColor, str]]  # (2,2) px, width px, colour, label
    foramina: list[np.ndarray]
    lesion: np.ndarray | None


class DrrPanel(QWidget):
    """One DRR with its overlay and caption, drawn with QPainter (aspect kept, black borders)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 160)
        self.view_name = ""
        self.caption = ""
        self.geometry_: CArmGeometry | None = None
        self.drr: Drr | None = None
        self.drr_full = False
        self.overlay = _Overlay([], [], None)
        self._image: QImage | None = None
        self._range: tuple[float, float] = (0.0, 1.0)
        self._contrast = (100, 0, False)
        self.message = "no CT"
        self.renderer = LatestRenderer(self)
        self.requested_key: tuple[tuple[float, ...], bool] | None = None

    # -- content ------------------------------------------------------------------------------
    def set_drr(self, drr: Drr, full: bool) -> None:
        """Show a new radiograph (its auto range is computed once here)."""
        self.drr = drr
        self.drr_full = full
        li = drr.line_integral
        body = li[li > 0.05]
        if body.size:
            lo, hi = (float(v) for v in np.percentile(body, (1.0, 99.5)))
            lo = min(lo, 0.0) if body.size < li.size else lo
        else:
            lo, hi = 0.0, 1.0
        self._range = (lo, max(hi, lo + 1e-3))
        self._rebuild_image()

    def set_contrast(self, window_pct: int, level_pct: int, invert: bool) -> None:
        """Window width (% of the auto range), level shift (% of it) and bone-white flag."""
        self._contrast = (window_pct, level_pct, invert)
        self._rebuild_image()

    def _rebuild_image(self) -> None:
        if self.drr is None:
            self._image = None
            self.update()
            return
        lo, hi = self._range
        w_pct, l_pct, invert = self._contrast
        span = hi - lo
        center = 0.5 * (lo + hi) + span * l_pct / 100.0
        width = max(span * w_pct / 100.0, 1e-6)
        scaled = np.clip((self.drr.line_integral - (center - width / 2)) / width, 0.0, 1.0)
        if not invert:
            scaled = 1.0 - scaled  # fluoroscopy look: bone dark
        gray = np.ascontiguousarray((scaled * 255.0 + 0.5).astype(np.uint8))
        h, w = gray.shape
        self._image = QImage(gray.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
        self.update()

    # -- painting -----------------------------------------------------------------------------
    def detector_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the full-resolution detector of this panel's view."""
        if self.geometry_ is None:
            return (512, 512)
        return self.geometry_.detector_shape

    def paint_into(self, painter: QPainter, target: QRectF, *, caption: bool = True) -> None:
        """Draw the radiograph, overlay and caption into ``target`` (aspect kept)."""
        painter.save()
        painter.fillRect(target, Qt.GlobalColor.black)
        rows, cols = self.detector_shape()
        scale = min(target.width() / cols, target.height() / rows)
        x0 = target.x() + (target.width() - cols * scale) / 2
        y0 = target.y() + (target.height() - rows * scale) / 2
        image_rect = QRectF(x0, y0, cols * scale, rows * scale)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self._image is not None:
            painter.drawImage(image_rect, self._image)
        else:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(image_rect, Qt.AlignmentFlag.AlignCenter, self.message)
        # overlay in full-resolution detector pixels: pixel centre (c, r) at (c + 0.5, r + 0.5)
        painter.save()
        painter.translate(x0, y0)
        painter.scale(scale, scale)
        painter.translate(0.5, 0.5)
        painter.setClipRect(QRectF(-0.5, -0.5, cols, rows))
        self._paint_overlay(painter, scale)
        painter.restore()
        painter.setFont(QFont("Sans", 8))
        for uv, _w, color, label in self.overlay.needles:
            u, v = uv[0]
            if label and 0 <= u < cols and 0 <= v < rows:
                painter.setPen(color)
                painter.drawText(QPointF(x0 + (u + 0.5) * scale + 6, y0 + (v + 0.5) * scale), label)
        if caption and self.caption:
            self._paint_caption(painter, target)
        painter.restore()

    def _paint_overlay(self, painter: QPainter, scale: float) -> None:
        ov = self.overlay
        if ov.lesion is not None and len(ov.lesion) >= 3:
            pen = QPen(_LESION_COLOR, 2.0 / scale)
            painter.setPen(pen)
            painter.setBrush(QColor(255, 70, 70, 50))
            painter.drawPolygon(QPolygonF([QPointF(*p) for p in ov.lesion]))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(_FORAMEN_COLOR, 1.5 / scale, Qt.PenStyle.DashLine))
        for ring in ov.foramina:
            painter.drawPolygon(QPolygonF([QPointF(*p) for p in ring]))
        for uv, width_px, color, _label in ov.needles:
            pen = QPen(color, max(width_px, 1.5 / scale))
            pen.setCapStyle(Qt.PenCapStyle.RoundCap)
            painter.setPen(pen)
            a, b = QPointF(*uv[0]), QPointF(*uv[1])
            if (a - b).manhattanLength() < 0.5:
                painter.setBrush(color)
                r = max(width_px, 1.5 / scale) / 2.0
                painter.drawEllipse(b, r, r)
                painter.setBrush(Qt.BrushStyle.NoBrush)
            else:
                painter.drawLine(a, b)

    def _paint_caption(self, painter: QPainter, target: QRectF) -> None:
        painter.setFont(QFont("Sans", 9))
        text = self.caption + ("" if self.drr_full or self.drr is None else "  (preview)")
        rect = target.adjusted(6, 4, -6, -4)
        bound = painter.boundingRect(rect, Qt.TextFlag.TextWordWrap, text)
        painter.fillRect(bound.adjusted(-3, -2, 3, 2), QColor(0, 0, 0, 150))
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(rect, Qt.TextFlag.TextWordWrap, text)

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt)
        painter = QPainter(self)
        self.paint_into(painter, QRectF(self.rect()))
        painter.end()

    def render_image(self) -> QImage:
        """The panel at detector resolution (one detector pixel per image pixel), no caption."""
        rows, cols = self.detector_shape()
        img = QImage(cols, rows, QImage.Format.Format_RGB32)
        img.fill(Qt.GlobalColor.black)
        painter = QPainter(img)
        self.paint_into(painter, QRectF(0, 0, cols, rows), caption=False)
        painter.end()
        return img


# -- the widget ----------------------------------------------------------------------------------
class _PrepSignals(QObject):
    done = Signal(int, object)


class FluoroView(QWidget):
    """Simulated fluoroscopy of the case with the plan projected on top.

    Signals
    -------
    view_changed(str)
        The view shown in the single layout changed (its key, e.g. ``"lateral"``).
    failed(str)
        No radiograph could be made (e.g. the study is an MR): a message for the user.
    """

    view_changed = Signal(str)
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._case: object | None = None
        self._volumes: tuple[AttenuationVolume, AttenuationVolume] | None = None
        self._views: dict[str, PlanFluoroView] = {}
        self._needles: list[NeedleTuple] = []
        self._needle_colors: list[tuple[float, float, float] | None] = []
        self._lesion_points: np.ndarray | None = None
        self._iso = np.zeros(3)
        self._current = "ap"
        self._layout = "1x1"
        self._case_seq = 0
        self._prep_seq = 0
        self._prep_image: object | None = None  # the image whose volumes are ready or coming
        self._std: dict[str, PlanFluoroView] = {}
        self._std_for = -1
        self._geometry_options: dict[str, float] = {}
        self._last_needle_update = -math.inf
        self._dragging = False
        self._prep_signals = _PrepSignals()
        self._prep_signals.done.connect(self._on_prepared)
        self._idle = QTimer(self)
        self._idle.setSingleShot(True)
        self._idle.setInterval(IDLE_MS)
        self._idle.timeout.connect(self._on_idle)

        self._combo = QComboBox()
        self._combo.currentIndexChanged.connect(self._on_combo)
        self._layout_combo = QComboBox()
        self._layout_combo.addItem("Single view", "1x1")
        self._layout_combo.addItem("C-arm 2x2", "2x2")
        self._layout_combo.currentIndexChanged.connect(
            lambda _i: self.set_layout(self._layout_combo.currentData())
        )
        self._window = QSlider(Qt.Orientation.Horizontal)
        self._window.setRange(10, 300)
        self._window.setValue(100)
        self._window.setToolTip("Contrast: window width, % of the automatic range")
        self._level = QSlider(Qt.Orientation.Horizontal)
        self._level.setRange(-60, 60)
        self._level.setValue(0)
        self._level.setToolTip("Brightness: level shift, % of the automatic range")
        self._invert = QCheckBox("Bone white")
        for w in (self._window, self._level):
            w.setMaximumWidth(120)
            w.valueChanged.connect(self._on_contrast)
        self._invert.toggled.connect(self._on_contrast)
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(QLabel("View"))
        bar.addWidget(self._combo, 1)
        bar.addWidget(self._layout_combo)
        bar.addWidget(QLabel("Window"))
        bar.addWidget(self._window)
        bar.addWidget(QLabel("Level"))
        bar.addWidget(self._level)
        bar.addWidget(self._invert)

        self._single = DrrPanel()
        self._quad = {name: DrrPanel() for name in CARM_LAYOUT}
        self._panels = [self._single, *self._quad.values()]
        for p in self._panels:
            p.renderer.rendered.connect(lambda drr, full, p=p: self._on_rendered(p, drr, full))
            p.renderer.failed.connect(lambda msg, p=p: self._on_failed(p, msg))
        self._quad_widget = QWidget()
        grid = QGridLayout(self._quad_widget)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        for n, name in enumerate(CARM_LAYOUT):
            grid.addWidget(self._quad[name], n // 2, n % 2)
        self._status = QLabel("")
        self._status.setStyleSheet("color: #bbb;")
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(2)
        root.addLayout(bar)
        root.addWidget(self._single, 1)
        root.addWidget(self._quad_widget, 1)
        root.addWidget(self._status)
        self._quad_widget.hide()

    # -- public API ------------------------------------------------------------------------------
    def set_case(self, case: object) -> None:
        """Show a case (:class:`planning.case.Case`: its CT, and anatomy and lesion when found).

        The attenuation volumes are prepared in a worker thread; the panels fill in when done.
        The same case again (its anatomy or lesion changed) keeps the prepared volumes: only
        the views and overlays are rebuilt.
        """
        image = case.image  # type: ignore[attr-defined]
        same_image = self._prep_image is image
        self._case = case
        self._case_seq += 1
        if same_image:
            self._iso = self._isocenter(case)
            self._lesion_points = self._lesion_cloud(case)
            self._rebuild_views()
            return
        self._volumes = None
        for p in self._panels:
            p.drr = None
            p._image = None
            p.requested_key = None
            p.message = "preparing the radiograph..."
            p.update()
        self._iso = self._isocenter(case)
        self._lesion_points = self._lesion_cloud(case)
        self._rebuild_views()
        self._prep_seq += 1
        self._prep_image = image
        seq = self._prep_seq

        def prepare() -> tuple[AttenuationVolume, AttenuationVolume]:
            return (prepare_volume(image), prepare_volume(image, downsample=_FAST_DOWNSAMPLE))

        drr_pool().start(_Job(seq, prepare, self._prep_signals))  # type: ignore[arg-type]

    def set_needles(
        self,
        needles: list[NeedleTuple],
        *,
        interactive: bool | None = None,
        colors: list[tuple[float, float, float] | None] | None = None,
    ) -> None:
        """Needles to draw: ``(entry_lps, target_lps, diameter_mm, label)`` each (mm, LPS),
        or :class:`~app.gui.views.grid.NeedleDisplay` objects.

        ``colors`` gives a needle its colour (RGB 0..1, as in the slice views); None, or a
        None entry, takes the next colour of the dock's own palette.

        ``interactive=True`` marks a live drag (preview renders); None guesses it from the
        rate of calls. Full-resolution renders follow :data:`IDLE_MS` after the last call.
        """
        now = time.perf_counter()
        if interactive is None:
            interactive = (now - self._last_needle_update) < DRAG_GAP_S
        self._last_needle_update = now
        parsed = []
        for n in needles:
            if hasattr(n, "entry_lps"):  # a NeedleDisplay of the view grid
                n = (n.entry_lps, n.target_lps, n.diameter_mm, n.label)  # type: ignore[union-attr]
            e, t, d, lab = n
            parsed.append(
                (
                    np.asarray(e, dtype=np.float64),
                    np.asarray(t, dtype=np.float64),
                    float(d),
                    str(lab),
                )
            )
        self._needles = parsed
        self._needle_colors = list(colors or [])
        self._dragging = bool(interactive)
        self._rebuild_views()
        if self._dragging:
            self._idle.start()

    def set_carm_distances(self, sid_mm: float, sod_mm: float | None = None) -> None:
        """Source-to-detector (and source-to-isocentre) distance of every view, mm.

        Raises
        ------
        SacroplanError
            Not ``0 < sod_mm < sid_mm`` (the isocentre must lie between source and detector).
        """
        sid = float(sid_mm)
        sod = float(sod_mm) if sod_mm is not None else self.carm_distances()[1]
        if not (math.isfinite(sid) and math.isfinite(sod) and 0.0 < sod < sid):
            raise SacroplanError(
                f"the source-isocentre distance ({sod:.0f} mm) must be shorter than the"
                f" source-detector distance ({sid:.0f} mm)"
            )
        self._geometry_options = {"sid_mm": sid, "sod_mm": sod}
        self._std_for = -1
        for p in self._panels:
            p.requested_key = None
        self._rebuild_views()

    def carm_distances(self) -> tuple[float, float]:
        """``(sid_mm, sod_mm)`` used for every view."""
        return (
            float(self._geometry_options.get("sid_mm", DEFAULT_SID_MM)),
            float(self._geometry_options.get("sod_mm", DEFAULT_SOD_MM)),
        )

    def set_view(self, name: str) -> None:
        """Show view ``name`` in the single layout (``"ap"``, ``"lateral"``, ``"inlet"``,
        ``"outlet"``, ``"true_ap"``, ``"bulls_eye_<n>"``, ``"progression_<n>"``)."""
        idx = self._combo.findData(name)
        if idx < 0:
            raise SacroplanError(
                f"no fluoroscopy view {name!r}; available: {', '.join(self.view_names())}"
            )
        self._combo.setCurrentIndex(idx)

    def current_view(self) -> str:
        """Key of the view in the single layout."""
        return self._current

    def view_names(self) -> list[str]:
        """Keys of the views available for the case and needles."""
        return list(self._views)

    def set_layout(self, layout: str) -> None:
        """``"1x1"`` (the chosen view) or ``"2x2"`` (AP, lateral, inlet, outlet together)."""
        if layout not in LAYOUTS:
            raise SacroplanError(f"fluoroscopy layout must be one of {', '.join(LAYOUTS)}")
        self._layout = layout
        idx = self._layout_combo.findData(layout)
        if self._layout_combo.currentIndex() != idx:
            self._layout_combo.blockSignals(True)
            self._layout_combo.setCurrentIndex(idx)
            self._layout_combo.blockSignals(False)
        self._single.setVisible(layout == "1x1")
        self._quad_widget.setVisible(layout == "2x2")
        self._refresh(full=not self._dragging)

    def layout_name(self) -> str:
        """The current layout, ``"1x1"`` or ``"2x2"``."""
        return self._layout

    def is_idle(self) -> bool:
        """True when the volumes are ready and no render is running or waiting."""
        return self._volumes is not None and all(p.renderer.idle for p in self._panels)

    def panel(self, name: str | None = None) -> DrrPanel:
        """The panel showing ``name`` (default: the single-layout panel)."""
        if name is None or (self._layout == "1x1" and name == self._current):
            return self._single
        for key, p in self._quad.items():
            if p.view_name == name or key == name:
                return p
        return self._single

    def geometry_of(self, name: str) -> CArmGeometry:
        """The full-resolution C-arm geometry of view ``name``."""
        return self._views[name].geometry

    def carm_of(self, name: str) -> CArmView:
        """The C-arm angles (and words) of view ``name``."""
        return self._views[name].carm

    def render_image(self, name: str | None = None) -> QImage:
        """The shown radiograph of ``name`` with its overlay at detector resolution."""
        return self.panel(name).render_image()

    def save_screenshot(self, path: str) -> None:
        """Save the widget as shown (PNG), written atomically."""
        self.repaint()
        pix = self.grab()
        with atomic_path(path) as tmp:
            if not pix.save(str(tmp), "PNG"):
                raise SacroplanError(f"could not write the screenshot {path}")

    def shutdown(self) -> None:
        """Wait for running renders (call before the widget is destroyed)."""
        self._idle.stop()
        drr_pool().waitForDone(30000)

    # -- model -------------------------------------------------------------------------------
    @staticmethod
    def _isocenter(case: object) -> np.ndarray:
        lesion = getattr(case, "lesion", None)
        if lesion is not None:
            kji = np.argwhere(np.asarray(lesion.mask.array) != 0)
            if len(kji):
                return lesion.mask.index_to_world(kji[:, ::-1].mean(axis=0))
        seed = case.default_seed() if hasattr(case, "default_seed") else None  # type: ignore[attr-defined]
        if seed is not None:
            return np.asarray(seed, dtype=np.float64)
        anatomy = getattr(case, "anatomy", None)
        if anatomy is not None:
            return np.asarray(anatomy.frame.origin, dtype=np.float64)
        img = case.image  # type: ignore[attr-defined]
        return img.index_to_world((np.array(img.array.shape[::-1]) - 1) / 2.0)

    @staticmethod
    def _lesion_cloud(case: object) -> np.ndarray | None:
        lesion = getattr(case, "lesion", None)
        if lesion is None:
            return None
        kji = np.argwhere(np.asarray(lesion.mask.array) != 0)
        if not len(kji):
            return None
        if len(kji) > _LESION_POINTS:
            kji = kji[np.linspace(0, len(kji) - 1, _LESION_POINTS).astype(int)]
        return lesion.mask.index_to_world(kji[:, ::-1].astype(np.float64))

    def _standard_views(self) -> dict[str, PlanFluoroView]:
        anatomy = getattr(self._case, "anatomy", None)
        if anatomy is not None:
            try:
                return plan_views(anatomy, isocenter_lps=self._iso, **self._geometry_options)
            except SacroplanError as exc:
                log.warning("standard views from the anatomy failed (%s): fallback angles", exc)
        out = {}
        for name, d in _FALLBACK_DIRECTIONS.items():
            carm = view_for_detector_direction(np.array(d))
            geometry = CArmGeometry(
                self._iso, carm.detector_direction_lps, **self._geometry_options
            )
            out[name] = PlanFluoroView(name, carm, geometry)
        return out

    def _needle_views(self) -> dict[str, PlanFluoroView]:
        out: dict[str, PlanFluoroView] = {}
        anatomy = getattr(self._case, "anatomy", None)
        side = anatomy.frame.e_x if anatomy is not None else np.array([1.0, 0.0, 0.0])
        for n, (e, t, _d, _lab) in enumerate(self._needles, start=1):
            if np.linalg.norm(t - e) < 1e-6:
                continue
            be = bulls_eye_view(e, t)
            be = CArmView(be.primary_deg, be.secondary_deg, f"Bull's-eye of needle {n}: {be.text}")
            out[f"bulls_eye_{n}"] = PlanFluoroView(
                f"bulls_eye_{n}",
                be,
                CArmGeometry(t, be.detector_direction_lps, **self._geometry_options),
            )
            try:
                d = progression_direction(t - e, preferred_lps=side)
            except ValueError:
                d = progression_direction(t - e)
            if d[1] < 0.0:  # prone: keep the detector above the back
                d = -d
            pv = view_for_detector_direction(d)
            pv = CArmView(pv.primary_deg, pv.secondary_deg, f"Progression of needle {n}: {pv.text}")
            out[f"progression_{n}"] = PlanFluoroView(
                f"progression_{n}",
                pv,
                CArmGeometry(0.5 * (e + t), d, **self._geometry_options),
            )
        return out

    def _rebuild_views(self) -> None:
        if self._case is None:
            return
        if self._std_for != self._case_seq:
            self._std = self._standard_views()
            self._std_for = self._case_seq
        self._views = {**self._std, **self._needle_views()}
        # the combo
        self._combo.blockSignals(True)
        keys = [self._combo.itemData(i) for i in range(self._combo.count())]
        if keys != list(self._views):
            self._combo.clear()
            for name in self._views:
                self._combo.addItem(view_title(name), name)
        fell_back = self._current not in self._views
        if fell_back:  # e.g. the needle of the bull's-eye view was removed
            self._current = "ap"
        self._combo.setCurrentIndex(self._combo.findData(self._current))
        self._combo.blockSignals(False)
        self._refresh(full=not self._dragging)
        if fell_back:
            self.view_changed.emit(self._current)

    def _assign(self) -> list[DrrPanel]:
        """Bind the visible panels to their views; return the visible panels."""
        if self._layout == "1x1":
            self._single.view_name = self._current
            return [self._single]
        for key, p in self._quad.items():
            fallback = "true_ap" if "true_ap" in self._views else "ap"
            p.view_name = key if key in self._views else fallback
        return list(self._quad.values())

    def _refresh(self, *, full: bool) -> None:
        if self._case is None or not self._views:
            return
        for p in self._assign():
            view = self._views.get(p.view_name)
            if view is None:
                continue
            p.geometry_ = view.geometry
            p.caption = f"{view_title(p.view_name)} — {view.carm.text}"
            p.overlay = self._overlay_for(view.geometry)
            p.update()
            if self._volumes is None:
                continue
            key = (_pose_key(view.geometry), full)
            same_pose = p.requested_key is not None and p.requested_key[0] == key[0]
            if same_pose and (p.requested_key[1] or not full):
                continue  # already rendered (or rendering) at this pose and at least this quality
            p.requested_key = key
            if full:
                p.renderer.request(self._volumes[0], view.geometry, full=True)
            else:
                p.renderer.request(
                    self._volumes[1], _coarse(view.geometry, _FAST_DOWNSAMPLE), full=False
                )
        self._update_status()

    def _overlay_for(self, g: CArmGeometry) -> _Overlay:
        needles = []
        p = g.projection_matrix()
        pitch = min(g.pixel_mm)
        for n, (e, t, dia, label) in enumerate(self._needles):
            uv = g.project_points(np.array([e, t]))
            if not np.all(np.isfinite(uv)):
                continue
            depth = float((p @ np.append(t, 1.0))[2])
            width = dia * g.sid_mm / max(depth, 1e-6) / pitch
            given = self._needle_colors[n] if n < len(self._needle_colors) else None
            rgb = given or _NEEDLE_COLORS[n % len(_NEEDLE_COLORS)]
            color = QColor.fromRgbF(*rgb)
            needles.append((uv, width, color, label or f"needle {n + 1}"))
        foramina: list[np.ndarray] = []
        anatomy = getattr(self._case, "anatomy", None)
        if anatomy is not None:
            rings = overlays(g, anatomy=anatomy)
            foramina = [
                v for k, v in rings.items() if k.startswith("foramen") and np.all(np.isfinite(v))
            ]
        lesion = None
        if self._lesion_points is not None:
            uv = g.project_points(self._lesion_points)
            uv = uv[np.all(np.isfinite(uv), axis=1)]
            if len(uv) >= 3:
                try:
                    lesion = uv[ConvexHull(uv).vertices]
                except QhullError:
                    lesion = None
        return _Overlay(needles, foramina, lesion)

    # -- events --------------------------------------------------------------------------------
    def _on_prepared(self, seq: int, result: object) -> None:
        if seq != self._prep_seq:
            return  # a newer case was opened meanwhile
        if isinstance(result, Exception):
            for p in self._panels:
                p.message = f"no radiograph: {result}"
                p.update()
            self.failed.emit(str(result))
            return
        self._volumes = result  # type: ignore[assignment]
        self._refresh(full=not self._dragging)

    def _on_rendered(self, panel: DrrPanel, drr: Drr, full: bool) -> None:
        panel.set_drr(drr, full)
        panel.set_contrast(self._window.value(), self._level.value(), self._invert.isChecked())
        self._update_status()

    def _on_failed(self, panel: DrrPanel, message: str) -> None:
        panel.message = f"no radiograph: {message}"
        panel.requested_key = None
        panel.update()
        self.failed.emit(message)

    def _on_idle(self) -> None:
        self._dragging = False
        self._refresh(full=True)

    def _on_combo(self, _index: int) -> None:
        name = self._combo.currentData()
        if not name or name == self._current:
            return
        self._current = name
        self._refresh(full=not self._dragging)
        self.view_changed.emit(name)

    def _on_contrast(self, *_args: object) -> None:
        for p in self._panels:
            p.set_contrast(self._window.value(), self._level.value(), self._invert.isChecked())

    def _update_status(self) -> None:
        if self._volumes is None:
            self._status.setText("Preparing the CT for simulated fluoroscopy...")
            return
        g = self._views[self._current].geometry if self._current in self._views else None
        if g is not None:
            self._status.setText(
                f"SID {g.sid_mm:.0f} mm, SOD {g.sod_mm:.0f} mm, detector {g.detector_shape[1]}"
                f" x {g.detector_shape[0]} px of {g.pixel_mm[1]:.2f} mm; isocentre"
                f" ({self._iso[0]:.0f}, {self._iso[1]:.0f}, {self._iso[2]:.0f}) mm LPS"
            )
