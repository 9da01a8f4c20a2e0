"""CT-MR fusion in the workstation: the registered MR over the CT, registration and manual nudge.

:class:`FusionView` shows a slice of the CT (its own voxel grid: axial, coronal or sagittal) with
the MR as a colour overlay (opacity slider) or side by side. The MR slice is resampled for each
redraw straight from the MR volume through the current CT -> MR transform
(:class:`imaging.fusion.RigidTransform`), trilinear with ``scipy.ndimage.map_coordinates``, so a
nudge redraws at once without resampling the whole MR. "Register" runs
:func:`imaging.fusion.register_mr_to_ct` in a worker thread with progress and cancel. Nudges
(buttons: +-1 mm / +-1 deg per LPS axis; keys: arrows move in the screen plane, PageUp/PageDown
through it, Ctrl+Left/Right rotates about the axis through the screen) are composed with
:func:`imaging.fusion.nudge` about the CT lesion or volume centre. A lesion mask segmented on the
MR (:meth:`FusionView.set_mr_lesion`) is outlined on both images and mapped onto the CT grid
(:func:`imaging.fusion.map_mask_to_ct`, in a worker thread after the transform settles) with its
volume reported on both series.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from PySide6.QtCore import QObject, QRectF, QRunnable, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QPainter
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from scipy import ndimage

from imaging.atomic import atomic_path
from imaging.errors import OperationCancelledError, SacroplanError
from imaging.fusion import MappedMask, RigidTransform, map_mask_to_ct, nudge, register_mr_to_ct
from imaging.volume import Volume

log = logging.getLogger("sacroplan.gui.fusion")

ORIENTATIONS = ("axial", "coronal", "sagittal")
MODES = ("overlay", "side by side")
#: CT window for the fusion display (HU): wide enough for bone and soft tissue.
CT_WINDOW = (1500.0, 250.0)
#: Milliseconds after the last nudge before the lesion is mapped onto the CT again.
MAP_DELAY_MS = 300
_AXES = ("x", "y", "z")
_AXIS_OF = {"axial": 2, "coronal": 1, "sagittal": 0}  # CT index axis (i, j, k) through the screen
_LESION_RGB = (255, 60, 60)


def _slice_indices(ct: Volume, orientation: str, index: int) -> np.ndarray:
    """CT voxel indices ``(rows, cols, 3)`` in ``(i, j, k)`` order of one displayed slice.

    Axial: rows j (anterior up), cols i (patient right on the left). Coronal: rows k flipped
    (head up), cols i. Sagittal: rows k flipped, cols j (anterior on the left).
    """
    ni, nj, nk = ct.size
    if orientation == "axial":
        jj, ii = np.mgrid[0:nj, 0:ni]
        kk = np.full_like(ii, index)
    elif orientation == "coronal":
        kk, ii = np.mgrid[nk - 1 : -1 : -1, 0:ni]
        jj = np.full_like(ii, index)
    else:
        kk, jj = np.mgrid[nk - 1 : -1 : -1, 0:nj]
        ii = np.full_like(jj, index)
    return np.stack([ii, jj, kk], axis=-1).astype(np.float64)


def _pixel_mm(ct: Volume, orientation: str) -> tuple[float, float]:
    """``(row, col)`` pixel size (mm) of a displayed slice."""
    sx, sy, sz = (float(v) for v in ct.spacing)
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[orientation]


def sample_through(
    moving: Volume, ct: Volume, transform: RigidTransform, ijk: np.ndarray, *, order: int = 1
) -> np.ndarray:
    """Values of ``moving`` (MR world frame) at CT voxel indices ``ijk`` through ``transform``.

    Parameters
    ----------
    moving : Volume
        The MR (or a mask on the MR grid).
    ct : Volume
        The CT whose indices are given.
    transform : RigidTransform
        CT -> MR map.
    ijk : (..., 3) float ndarray
        CT voxel indices ``(i, j, k)``.
    order : int
        Interpolation order (1 trilinear, 0 nearest).

    Returns
    -------
    (...) float32 ndarray
        0 outside the MR.
    """
    flat = ijk.reshape(-1, 3)
    world_mr = transform.map_ct_to_mr(ct.index_to_world(flat))
    idx = moving.world_to_index(world_mr)
    coords = idx[:, ::-1].T  # (k, j, i)
    out = ndimage.map_coordinates(
        np.asarray(moving.array, dtype=np.float32), coords, order=order, mode="constant", cval=0.0
    )
    return out.reshape(ijk.shape[:-1]).astype(np.float32, copy=False)


# -- background work -------------------------------------------------------------------------
class _TaskSignals(QObject):
    progress = Signal(int, float, str)
    done = Signal(int, object)


class _Task(QRunnable):
    def __init__(self, seq: int, fn: object, signals: _TaskSignals) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._seq, self._fn, self._signals = seq, fn, signals

    def run(self) -> None:
        try:
            result = self._fn()  # type: ignore[operator]
        except Exception as exc:  # delivered to the GUI thread as a result
            if not isinstance(exc, SacroplanError):
                log.exception("fusion task failed")
            result = exc
        self._signals.done.emit(self._seq, result)


# -- drawing ---------------------------------------------------------------------------------
class _SliceCanvas(QWidget):
    """An RGB slice image drawn with its physical aspect ratio."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 200)
        self.image: QImage | None = None
        self.pixel_mm = (1.0, 1.0)
        self.caption = ""

    def set_rgb(self, rgb: np.ndarray, pixel_mm: tuple[float, float], caption: str) -> None:
        """Show an ``(rows, cols, 3)`` uint8 image."""
        rgb = np.ascontiguousarray(rgb)
        h, w, _ = rgb.shape
        self.image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        self.pixel_mm = pixel_mm
        self.caption = caption
        self.update()

    def paintEvent(self, _event: object) -> None:  # noqa: N802 (Qt)
        painter = QPainter(self)
        painter.fillRect(self.rect(), Qt.GlobalColor.black)
        if self.image is not None:
            h_mm = self.image.height() * self.pixel_mm[0]
            w_mm = self.image.width() * self.pixel_mm[1]
            scale = min(self.width() / w_mm, self.height() / h_mm)
            w, h = w_mm * scale, h_mm * scale
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(
                QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h), self.image
            )
        if self.caption:
            painter.setPen(QColor(255, 255, 255))
            painter.drawText(
                QRectF(self.rect()).adjusted(6, 4, -6, -4), Qt.TextFlag.TextWordWrap, self.caption
            )
        painter.end()


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _overlay_colors(v: np.ndarray) -> np.ndarray:
    """Hot colour map of values 0..1: black-red-yellow-white."""
    r = np.clip(3.0 * v, 0, 1)
    g = np.clip(3.0 * v - 1.0, 0, 1)
    b = np.clip(3.0 * v - 2.0, 0, 1)
    return np.stack([r, g, b], axis=-1)


# -- the widget ------------------------------------------------------------------------------
class FusionView(QWidget):
    """The CT with the registered MR over it or beside it; register, nudge, map the lesion.

    Signals
    -------
    registered(object)
        A new CT -> MR :class:`~imaging.fusion.RigidTransform` (after a registration or a nudge).
    mapped_lesion(object)
        The MR lesion mapped onto the CT grid: a :class:`~imaging.fusion.MappedMask`.
    failed(str)
        Registration or lesion mapping failed: a message for the user.
    """

    registered = Signal(object)
    mapped_lesion = Signal(object)
    failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._ct: Volume | None = None
        self._mr: Volume | None = None
        self._mr_lesion: Volume | None = None
        self._mapped: MappedMask | None = None
        self._transform = RigidTransform.identity()
        self._mr_range = (0.0, 1.0)
        self._orientation = "axial"
        self._index = 0
        self._mode = "overlay"
        self._stop = threading.Event()
        self._reg_seq = 0
        self._map_seq = 0
        self.last_result: object | None = None
        self._signals = _TaskSignals()
        self._signals.progress.connect(self._on_progress)
        self._signals.done.connect(self._on_done)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._map_timer = QTimer(self)
        self._map_timer.setSingleShot(True)
        self._map_timer.setInterval(MAP_DELAY_MS)
        self._map_timer.timeout.connect(self._start_mapping)
        self._overlay_slice: np.ndarray | None = None
        self._step = (1.0, 1.0)  # nudge step: mm, degrees

        # controls
        self._orient = QComboBox()
        self._orient.addItems(list(ORIENTATIONS))
        self._orient.currentTextChanged.connect(self.set_orientation)
        self._mode_combo = QComboBox()
        self._mode_combo.addItems(list(MODES))
        self._mode_combo.currentTextChanged.connect(self.set_mode)
        self._opacity = QSlider(Qt.Orientation.Horizontal)
        self._opacity.setRange(0, 100)
        self._opacity.setValue(50)
        self._opacity.setMaximumWidth(140)
        self._opacity.valueChanged.connect(lambda _v: self._redraw())
        self._slider = QSlider(Qt.Orientation.Horizontal)
        self._slider.valueChanged.connect(self._on_slider)
        self._register_btn = QPushButton("Register")
        self._register_btn.clicked.connect(self.register)
        self._cancel_btn = QPushButton("Cancel")
        self._cancel_btn.setEnabled(False)
        self._cancel_btn.clicked.connect(self.cancel)
        self._progress = QProgressBar()
        self._progress.setRange(0, 100)
        self._progress.setMaximumWidth(160)
        self._status = QLabel("Open a CT and an MR of the same patient.")
        self._lesion_label = QLabel("")
        top = QHBoxLayout()
        top.addWidget(QLabel("Slice"))
        top.addWidget(self._orient)
        top.addWidget(self._slider, 1)
        top.addWidget(self._mode_combo)
        top.addWidget(QLabel("MR opacity"))
        top.addWidget(self._opacity)
        reg = QHBoxLayout()
        reg.addWidget(self._register_btn)
        reg.addWidget(self._cancel_btn)
        reg.addWidget(self._progress)
        reg.addWidget(self._status, 1)
        nudges = QGridLayout()
        nudges.setSpacing(2)
        nudges.addWidget(QLabel("Nudge MR"), 0, 0)
        self.nudge_buttons: dict[str, QPushButton] = {}
        for row, axis in enumerate(_AXES, start=1):
            nudges.addWidget(QLabel(f"{axis.upper()} (LPS)"), row, 0)
            for col, (text, mm, deg) in enumerate(
                (("-1 mm", -1.0, 0.0), ("+1 mm", 1.0, 0.0), ("-1°", 0.0, -1.0), ("+1°", 0.0, 1.0)),
                start=1,
            ):
                b = QPushButton(text)
                b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                b.setMinimumWidth(64)
                b.setMaximumWidth(80)
                b.clicked.connect(
                    lambda _c=False, a=row - 1, m=mm, d=deg: self._nudge_axis(
                        a, m * self._step[0], d * self._step[1]
                    )
                )
                b.setProperty("nudge_sign", (mm + deg) > 0)
                b.setProperty("nudge_unit", "mm" if mm else "deg")
                nudges.addWidget(b, row, col)
                self.nudge_buttons[f"{axis}{text}"] = b
        self._left = _SliceCanvas()
        self._right = _SliceCanvas()
        images = QHBoxLayout()
        images.setSpacing(2)
        images.addWidget(self._left, 1)
        images.addWidget(self._right, 1)
        self._right.hide()
        side = QVBoxLayout()
        side.addLayout(nudges)
        side.addWidget(self._lesion_label)
        side.addStretch(1)
        middle = QHBoxLayout()
        middle.addLayout(images, 1)
        middle.addLayout(side)
        root = QVBoxLayout(self)
        root.setContentsMargins(2, 2, 2, 2)
        root.addLayout(top)
        root.addLayout(middle, 1)
        root.addLayout(reg)
        self._update_buttons()

    # -- public API ----------------------------------------------------------------------------
    def set_ct(self, volume: Volume) -> None:
        """The CT (fixed image, HU); the view shows its middle axial slice."""
        self._ct = volume
        self._mapped = None
        self._orientation_changed(reset=True)
        self._schedule_mapping()
        self._update_buttons()

    def set_mr(self, volume: Volume) -> None:
        """The MR (moving image); shown through the current transform (identity at first)."""
        self._mr = volume
        arr = np.asarray(volume.array)
        step = max(1, round((arr.size / 2e6) ** (1 / 3)))
        lo, hi = np.percentile(arr[::step, ::step, ::step], (1.0, 99.5))
        self._mr_range = (float(lo), float(max(hi, lo + 1e-6)))
        self._redraw()
        self._update_buttons()

    def set_mr_lesion(self, mask: Volume | None) -> None:
        """A lesion mask on the MR grid (non-zero inside): outlined and mapped onto the CT."""
        self._mr_lesion = mask
        self._mapped = None
        self._lesion_label.setText("")
        self._redraw()
        self._schedule_mapping()

    def set_transform(self, transform: RigidTransform) -> None:
        """Use this CT -> MR transform (e.g. from a saved plan)."""
        self._transform = transform
        self._redraw()
        self._schedule_mapping()

    def transform(self) -> RigidTransform:
        """The current CT -> MR transform."""
        return self._transform

    def set_orientation(self, orientation: str) -> None:
        """``"axial"``, ``"coronal"`` or ``"sagittal"`` (slices of the CT grid)."""
        if orientation not in ORIENTATIONS:
            raise SacroplanError(f"orientation must be one of {', '.join(ORIENTATIONS)}")
        self._orientation = orientation
        if self._orient.currentText() != orientation:
            self._orient.setCurrentText(orientation)
        self._orientation_changed(reset=True)

    def set_mode(self, mode: str) -> None:
        """``"overlay"`` (MR in colour over the CT) or ``"side by side"``."""
        if mode not in MODES:
            raise SacroplanError(f"fusion display must be one of {', '.join(MODES)}")
        self._mode = mode
        if self._mode_combo.currentText() != mode:
            self._mode_combo.setCurrentText(mode)
        self._right.setVisible(mode == "side by side")
        self._redraw()

    def set_opacity(self, percent: int) -> None:
        """MR overlay opacity, 0..100 %."""
        self._opacity.setValue(int(percent))

    def set_slice(self, index: int) -> None:
        """Show CT slice ``index`` of the current orientation."""
        self._slider.setValue(int(index))

    def slice_index(self) -> int:
        """The CT slice index shown."""
        return self._index

    def overlay_slice(self) -> np.ndarray | None:
        """The MR values on the shown CT slice through the current transform (rows, cols)."""
        return self._overlay_slice

    def slice_pixel_mm(self) -> tuple[float, float]:
        """``(row, col)`` pixel size of the shown slice, mm."""
        return _pixel_mm(self._ct, self._orientation) if self._ct is not None else (1.0, 1.0)

    def nudge_by(
        self,
        *,
        translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
        rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        """Move the MR as shown on the CT (LPS mm / degrees about LPS x, y, z at the centre)."""
        self._transform = nudge(
            self._transform,
            rotation_deg=rotation_deg,
            translation_mm=translation_mm,
            center_lps=self._nudge_center(),
        )
        self._redraw()
        self.registered.emit(self._transform)
        self._schedule_mapping()

    def set_nudge_step(self, mm: float, deg: float) -> None:
        """Step of the nudge buttons: ``mm`` millimetres and ``deg`` degrees."""
        if not (mm > 0 and deg > 0):
            raise SacroplanError("nudge steps must be positive (mm and degrees)")
        self._step = (float(mm), float(deg))
        for b in self.nudge_buttons.values():
            sign = "+" if b.property("nudge_sign") else "-"
            if b.property("nudge_unit") == "mm":
                b.setText(f"{sign}{mm:g} mm")
            else:
                b.setText(f"{sign}{deg:g}°")

    def nudge_step(self) -> tuple[float, float]:
        """``(mm, degrees)`` of one nudge button press."""
        return self._step

    def register(self) -> None:
        """Start the mutual-information registration in a worker thread."""
        if self._ct is None or self._mr is None:
            self._status.setText("Open both a CT and an MR before registering.")
            return
        if self.is_registering():
            return
        ct, mr, start = self._ct, self._mr, self._transform
        self._stop.clear()
        self._reg_seq += 1
        seq = self._reg_seq
        is_identity = np.allclose(start.rotation, np.eye(3)) and not start.translation_mm.any()
        initial = None if is_identity else start

        def run() -> object:
            return register_mr_to_ct(
                ct,
                mr,
                initial_transform=initial,
                progress=lambda f, m: self._signals.progress.emit(seq, f, m),
                cancel=self._stop.is_set,
            )

        self._registering = True
        self._status.setText("Registering MR to CT...")
        self._progress.setValue(0)
        self._update_buttons()
        self._pool.start(_Task(seq, run, self._signals))

    def cancel(self) -> None:
        """Ask a running registration to stop."""
        self._stop.set()
        self._status.setText("Cancelling...")

    def is_registering(self) -> bool:
        """True while a registration runs."""
        return getattr(self, "_registering", False)

    def is_idle(self) -> bool:
        """True when no registration or lesion mapping is running or scheduled."""
        return (
            not self.is_registering()
            and not self._map_timer.isActive()
            and self._pool.activeThreadCount() == 0
        )

    def mapped(self) -> MappedMask | None:
        """The last MR lesion mapped onto the CT (None before one is ready)."""
        return self._mapped

    def save_screenshot(self, path: str) -> None:
        """Save the widget as shown (PNG), written atomically."""
        self.repaint()
        with atomic_path(path) as tmp:
            if not self.grab().save(str(tmp), "PNG"):
                raise SacroplanError(f"could not write the screenshot {path}")

    def shutdown(self) -> None:
        """Stop a registration and wait for the worker (call before the widget goes)."""
        self._stop.set()
        self._map_timer.stop()
        self._pool.waitForDone(60000)

    # -- keys -----------------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt)
        """Arrows nudge 1 mm in the screen plane, PageUp/Down through it; Ctrl+Left/Right
        rotates 1 degree about the axis through the screen."""
        key = event.key()
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        # screen right / screen down / out of the screen, as LPS axis and sign
        right, down, through = {
            "axial": ((0, 1.0), (1, 1.0), (2, 1.0)),
            "coronal": ((0, 1.0), (2, -1.0), (1, 1.0)),
            "sagittal": ((1, 1.0), (2, -1.0), (0, 1.0)),
        }[self._orientation]
        moves = {
            Qt.Key.Key_Right: (right, 1.0),
            Qt.Key.Key_Left: (right, -1.0),
            Qt.Key.Key_Down: (down, 1.0),
            Qt.Key.Key_Up: (down, -1.0),
            Qt.Key.Key_PageUp: (through, 1.0),
            Qt.Key.Key_PageDown: (through, -1.0),
        }
        if key not in moves:
            super().keyPressEvent(event)
            return
        (axis, sign), amount = moves[key]
        if ctrl and key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            self._nudge_axis(through[0], 0.0, amount)
        else:
            self._nudge_axis(axis, sign * amount, 0.0)

    # -- internals ------------------------------------------------------------------------------
    def _nudge_axis(self, axis: int, mm: float, deg: float) -> None:
        t = [0.0, 0.0, 0.0]
        r = [0.0, 0.0, 0.0]
        t[axis], r[axis] = mm, deg
        self.nudge_by(translation_mm=tuple(t), rotation_deg=tuple(r))  # type: ignore[arg-type]

    def _nudge_center(self) -> np.ndarray:
        if self._mapped is not None:
            kji = np.argwhere(self._mapped.mask.array != 0)
            if len(kji):
                return self._mapped.mask.index_to_world(kji[:, ::-1].mean(axis=0))
        if self._ct is None:
            return np.zeros(3)
        return self._ct.index_to_world((np.array(self._ct.size, dtype=float) - 1) / 2.0)

    def _orientation_changed(self, *, reset: bool) -> None:
        if self._ct is None:
            return
        n = self._ct.size[_AXIS_OF[self._orientation]]
        self._slider.blockSignals(True)
        self._slider.setRange(0, n - 1)
        if reset:
            self._index = n // 2
        self._index = min(self._index, n - 1)
        self._slider.setValue(self._index)
        self._slider.blockSignals(False)
        self._redraw()

    def _on_slider(self, value: int) -> None:
        self._index = int(value)
        self._redraw()

    def _redraw(self) -> None:
        ct = self._ct
        if ct is None:
            return
        ijk = _slice_indices(ct, self._orientation, self._index)
        ii, jj, kk = (ijk[..., n].astype(int) for n in range(3))
        hu = np.asarray(ct.array)[kk, jj, ii].astype(np.float32)
        w, lvl = CT_WINDOW
        gray = np.clip((hu - (lvl - w / 2)) / w, 0.0, 1.0)
        ct_rgb = np.repeat(gray[..., None], 3, axis=-1)
        pix = _pixel_mm(ct, self._orientation)
        axis_name = "xyz"[_AXIS_OF[self._orientation]]
        where = ct.index_to_world(ijk[0, 0])[_AXIS_OF[self._orientation]]
        caption = f"CT {self._orientation} {self._index + 1}/{self._slider.maximum() + 1}"
        caption += f" ({axis_name} = {where:.1f} mm)"
        lesion = None
        if self._mr_lesion is not None:
            lesion = sample_through(self._mr_lesion, ct, self._transform, ijk, order=0) > 0.5
        if self._mr is None:
            self._overlay_slice = None
            self._left.set_rgb(self._with_outline(ct_rgb, lesion), pix, caption)
            return
        mr = sample_through(self._mr, ct, self._transform, ijk)
        self._overlay_slice = mr
        lo, hi = self._mr_range
        v = np.clip((mr - lo) / (hi - lo), 0.0, 1.0)
        if self._mode == "overlay":
            alpha = (self._opacity.value() / 100.0) * np.clip(v * 1.5, 0.0, 1.0)[..., None]
            rgb = ct_rgb * (1.0 - alpha) + _overlay_colors(v) * alpha
            self._left.set_rgb(
                self._with_outline(rgb, lesion),
                pix,
                caption + f", MR overlay {self._opacity.value()} %",
            )
        else:
            self._left.set_rgb(self._with_outline(ct_rgb, lesion), pix, caption)
            mr_rgb = np.repeat(v[..., None], 3, axis=-1)
            self._right.set_rgb(self._with_outline(mr_rgb, lesion), pix, "MR on the CT grid")

    @staticmethod
    def _with_outline(rgb: np.ndarray, lesion: np.ndarray | None) -> np.ndarray:
        out = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if lesion is not None and lesion.any():
            out[_outline(lesion)] = _LESION_RGB
        return out

    def _schedule_mapping(self) -> None:
        if self._ct is not None and self._mr_lesion is not None:
            self._map_timer.start()

    def _start_mapping(self) -> None:
        if self._ct is None or self._mr_lesion is None:
            return
        ct, mask, transform = self._ct, self._mr_lesion, self._transform
        self._map_seq += 1
        seq = -self._map_seq  # negative sequence numbers: lesion mapping
        self._pool.start(_Task(seq, lambda: map_mask_to_ct(mask, ct, transform), self._signals))

    def _on_progress(self, seq: int, fraction: float, message: str) -> None:
        if seq == self._reg_seq and self.is_registering():
            self._progress.setValue(round(100 * fraction))
            self._status.setText(message)

    def _on_done(self, seq: int, result: object) -> None:
        if seq < 0:
            if -seq != self._map_seq:
                return  # an older mapping
            if isinstance(result, Exception):
                self._lesion_label.setText(f"Lesion not mapped: {result}")
                self.failed.emit(f"The MR lesion could not be mapped onto the CT: {result}")
                return
            self._mapped = result  # type: ignore[assignment]
            m = self._mapped
            self._lesion_label.setText(
                f"MR lesion: {m.volume_ml_mr:.2f} mL on the MR,\n{m.volume_ml_ct:.2f} mL on the CT"
            )
            self.mapped_lesion.emit(m)
            return
        if seq != self._reg_seq:
            return
        self._registering = False
        self._update_buttons()
        if isinstance(result, OperationCancelledError):
            self._status.setText("Registration cancelled; the previous alignment is kept.")
            return
        if isinstance(result, Exception):
            self._status.setText(f"Registration failed: {result}")
            self.failed.emit(f"Registration failed: {result}")
            return
        self.last_result = result
        self._transform = result.transform  # type: ignore[attr-defined]
        self._progress.setValue(100)
        self._status.setText(
            f"Registered in {result.seconds:.1f} s: rotation"  # type: ignore[attr-defined]
            f" {self._transform.rotation_angle_deg:.1f}°, shift"
            f" {np.linalg.norm(self._transform.translation_mm):.1f} mm; mutual information"
            f" {result.initial_metric:.3f} -> {result.metric:.3f}"  # type: ignore[attr-defined]
        )
        self._redraw()
        self.registered.emit(self._transform)
        self._schedule_mapping()

    def _update_buttons(self) -> None:
        ready = self._ct is not None and self._mr is not None
        busy = self.is_registering()
        self._register_btn.setEnabled(ready and not busy)
        self._cancel_btn.setEnabled(busy)
        for b in self.nudge_buttons.values():
            b.setEnabled(ready and not busy)
