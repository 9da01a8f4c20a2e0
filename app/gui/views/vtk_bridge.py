"""The VTK side shared by the views: the Qt render widget and numpy <-> VTK copies."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import vtkmodules.qt

vtkmodules.qt.PyQtImpl = "PySide6"

import vtkmodules.vtkInteractionStyle  # noqa: E402, F401  (registers the interactor styles)
import vtkmodules.vtkRenderingFreeType  # noqa: E402, F401  (text)
import vtkmodules.vtkRenderingOpenGL2  # noqa: E402, F401  (the render window)
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: E402, F401  (volume mappers)
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QKeyEvent, QMouseEvent, QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QWidget  # noqa: E402
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor  # noqa: E402
from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy  # noqa: E402
from vtkmodules.vtkCommonCore import vtkPoints  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData  # noqa: E402
from vtkmodules.vtkIOImage import vtkPNGWriter  # noqa: E402, F401
from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter  # noqa: E402

BACKGROUND = (0.04, 0.045, 0.055)


class RenderCanvas(QVTKRenderWindowInteractor):
    """A VTK render widget whose mouse, wheel and key events go to a Python handler.

    With ``handler=None`` the events go to VTK's own interactor style (the 3D view).
    """

    def __init__(self, parent: QWidget | None = None, handler: object | None = None) -> None:
        super().__init__(parent)
        self._handler = handler
        self._key_handler: object | None = None
        self.setMinimumSize(120, 120)
        self.on_resize: Callable[[], None] | None = None
        self.closed = False

    def paintEvent(self, ev: object) -> None:  # noqa: N802 (Qt)
        if not self.closed:
            super().paintEvent(ev)

    def release(self) -> None:
        """Finalize the render window once; later paint events draw nothing."""
        if not self.closed:
            self.closed = True
            self.Finalize()

    def closeEvent(self, ev: object) -> None:  # noqa: N802 (Qt)
        self.release()

    # Device pixels of the render window, origin bottom-left (VTK display coordinates).
    def display_xy(self, x: float, y: float) -> tuple[float, float]:
        """Qt widget position (logical px, origin top-left) -> VTK display position."""
        scale = self.devicePixelRatioF()
        return x * scale, (self.height() - y - 1) * scale

    def mousePressEvent(self, ev: QMouseEvent) -> None:  # noqa: N802 (Qt)
        if self._handler is None:
            super().mousePressEvent(ev)
        else:
            self.setFocus()
            self._handler.on_press(ev)

    def mouseReleaseEvent(self, ev: QMouseEvent) -> None:  # noqa: N802 (Qt)
        if self._handler is None:
            super().mouseReleaseEvent(ev)
        else:
            self._handler.on_release(ev)

    def mouseMoveEvent(self, ev: QMouseEvent) -> None:  # noqa: N802 (Qt)
        if self._handler is None:
            super().mouseMoveEvent(ev)
        else:
            self._handler.on_move(ev)

    def mouseDoubleClickEvent(self, ev: QMouseEvent) -> None:  # noqa: N802 (Qt)
        if self._handler is None:
            super().mousePressEvent(ev)

    def wheelEvent(self, ev: QWheelEvent) -> None:  # noqa: N802 (Qt)
        if self._handler is None:
            super().wheelEvent(ev)
        else:
            self._handler.on_wheel(ev)

    def keyPressEvent(self, ev: QKeyEvent) -> None:  # noqa: N802 (Qt)
        # Keys go to the view's handler only, never to VTK's interactor style (whose letter
        # keys switch to wireframe, stereo, ...); unhandled keys reach the window's shortcuts.
        handler = self._handler if self._handler is not None else self._key_handler
        if handler is None or not handler.on_key(ev):
            ev.ignore()

    def keyReleaseEvent(self, ev: QKeyEvent) -> None:  # noqa: N802 (Qt)
        ev.ignore()

    def resizeEvent(self, ev: object) -> None:  # noqa: N802 (Qt)
        if self.closed:
            return
        super().resizeEvent(ev)
        if self.on_resize is not None:
            self.on_resize()


def image_from_array(
    array: np.ndarray, *, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> vtkImageData:
    """A vtkImageData sharing a ``[k, j, i]`` array (index space unless ``spacing`` given).

    Returns the image; the caller keeps ``array`` alive as long as the image.
    """
    arr = np.ascontiguousarray(array)
    img = vtkImageData()
    k, j, i = arr.shape
    img.SetDimensions(i, j, k)
    img.SetSpacing(*spacing)
    img.SetOrigin(0.0, 0.0, 0.0)
    vtk_arr = numpy_to_vtk(arr.reshape(-1), deep=False)
    vtk_arr._numpy_ref = arr  # keep the buffer alive with the VTK array
    img.GetPointData().SetScalars(vtk_arr)
    return img


def rgba_image(shape_ab: tuple[int, int]) -> tuple[vtkImageData, np.ndarray]:
    """A 2-D RGBA vtkImageData and the (B, A, 4) uint8 numpy buffer it shares."""
    na, nb = shape_ab
    buf = np.zeros((nb, na, 4), dtype=np.uint8)
    img = vtkImageData()
    img.SetDimensions(na, nb, 1)
    vtk_arr = numpy_to_vtk(buf.reshape(-1, 4), deep=False)
    vtk_arr._numpy_ref = buf
    img.GetPointData().SetScalars(vtk_arr)
    return img, buf


def image_to_numpy(img: vtkImageData) -> np.ndarray:
    """2-D scalars of a one-slice image as a (rows, cols[, comps]) array (a view)."""
    dims = img.GetDimensions()
    arr = vtk_to_numpy(img.GetPointData().GetScalars())
    comps = img.GetNumberOfScalarComponents()
    shape = (dims[1], dims[0]) if comps == 1 else (dims[1], dims[0], comps)
    return arr.reshape(shape)


def set_polydata(
    poly: vtkPolyData,
    points: np.ndarray,
    *,
    polys: list[list[int]] | None = None,
    lines: list[list[int]] | None = None,
) -> None:
    """Replace the points and cells of ``poly`` in place (its mappers and actors stay)."""
    pts = vtkPoints()
    p = np.zeros((len(points), 3))
    if len(points):
        p[:, : np.shape(points)[1]] = points
    pts.SetData(numpy_to_vtk(p, deep=True))
    poly.SetPoints(pts)
    for cells, setter in ((polys, poly.SetPolys), (lines, poly.SetLines)):
        ca = vtkCellArray()
        for cell in cells or []:
            ca.InsertNextCell(len(cell), cell)
        setter(ca)
    poly.Modified()


def grab_rgb(render_window: object) -> np.ndarray:
    """The render window's current image as an (H, W, 3) uint8 array, top row first."""
    w2i = vtkWindowToImageFilter()
    w2i.SetInput(render_window)
    w2i.SetInputBufferTypeToRGB()
    w2i.ReadFrontBufferOff()
    w2i.Update()
    out = w2i.GetOutput()
    arr = image_to_numpy(out)
    return np.ascontiguousarray(arr[::-1, :, :3])


KEY_UP = (Qt.Key.Key_Up, Qt.Key.Key_PageUp)
KEY_DOWN = (Qt.Key.Key_Down, Qt.Key.Key_PageDown)
