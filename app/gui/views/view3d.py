"""The 3D view: anatomy surfaces from the label map, needles, ablation zones, volume rendering.

Surfaces are extracted per label with ``vtkFlyingEdges3D`` on the label's bounding box
(in the label map's own voxel frame scaled by its spacing), smoothed lightly, decimated when
large, and placed in LPS millimetres by a rigid user matrix (rotation + origin), so normals and
lighting stay right on oblique studies.

Extraction runs on a worker thread (the VTK filters and numpy release the GIL, so the GUI keeps
its event loop); the finished surfaces are attached on the GUI thread. A newer label map
supersedes a build still running: its result is dropped.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QWidget
from vtkmodules.vtkCommonDataModel import vtkPiecewiseFunction, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkCommonTransforms import vtkTransform
from vtkmodules.vtkFiltersCore import (
    vtkFlyingEdges3D,
    vtkPolyDataNormals,
    vtkQuadricDecimation,
    vtkTubeFilter,
    vtkWindowedSincPolyDataFilter,
)
from vtkmodules.vtkFiltersSources import vtkLineSource, vtkSphereSource
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleTrackballCamera
from vtkmodules.vtkInteractionWidgets import vtkOrientationMarkerWidget
from vtkmodules.vtkRenderingAnnotation import vtkAnnotatedCubeActor
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkColorTransferFunction,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkVolume,
    vtkVolumeProperty,
)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper

from app.gui.views import overlays as ov
from app.gui.views.vtk_bridge import BACKGROUND, RenderCanvas, image_from_array
from imaging.labels import Label
from imaging.volume import Volume

if TYPE_CHECKING:
    from app.gui.views.grid import AblationDisplay, NeedleDisplay

MAX_TRIANGLES = 40_000
SURFACE_MAX_VOXELS = 3_000_000
MIN_RENDER_INTERVAL_MS = 120
VOLUME_RENDER_MAX_DIM = 192
SURFACE_OPACITY: dict[int, float] = {
    Label.SACRUM: 0.45,
    Label.LEFT_ILIUM: 0.30,
    Label.RIGHT_ILIUM: 0.30,
    Label.FORAMEN: 1.0,
    Label.CANAL: 0.9,
    Label.LESION: 1.0,
    Label.SI_JOINT: 0.5,
}


def rigid_matrix(volume: Volume) -> vtkMatrix4x4:
    """Matrix placing a volume's spacing-scaled voxel frame (origin 0) in LPS mm."""
    m = np.eye(4)
    m[:3, :3] = volume.direction
    m[:3, 3] = volume.origin
    out = vtkMatrix4x4()
    out.DeepCopy(m.ravel())
    return out


def _bbox(mask: np.ndarray, *, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) ``[k, j, i]`` index bounds of the True voxels, padded, hi exclusive."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo.append(max(int(hit[0]) - pad, 0))
        hi.append(min(int(hit[-1]) + pad + 1, mask.shape[axis]))
    return np.array(lo), np.array(hi)


def _block_mean(mask: np.ndarray, step: int) -> np.ndarray:
    """Fraction of True voxels in each ``step``-cube block (the grid shrinks by ``step``)."""
    shape = [int(np.ceil(n / step)) * step for n in mask.shape]
    padded = np.zeros(shape, dtype=np.float32)
    padded[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    k, j, i = (n // step for n in shape)
    return padded.reshape(k, step, j, step, i, step).mean(axis=(1, 3, 5))


def label_surface(labels: Volume, value: int, *, smooth: bool = True) -> vtkPolyData | None:
    """Surface of one label in the label map's spacing-scaled voxel frame (see module doc).

    Large labels are first averaged over blocks of voxels (to about ``SURFACE_MAX_VOXELS``
    voxels) and contoured at one half, which keeps thin parts and costs far less than
    decimating a full-resolution surface.

    Returns None when the label is absent.
    """
    mask = labels.array == value
    if not mask.any():
        return None
    lo, hi = _bbox(mask, pad=2)
    crop = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    step = max(1, int(np.ceil((crop.size / SURFACE_MAX_VOXELS) ** (1 / 3))))
    field = _block_mean(crop, step) if step > 1 else crop.astype(np.float32)
    spacing = labels.spacing * step
    img = image_from_array(field, spacing=tuple(float(v) for v in spacing))
    # Block b's centre is voxel lo + b * step + (step - 1) / 2.
    start = lo[::-1] + (step - 1) / 2.0
    img.SetOrigin(*(float(start[a] * labels.spacing[a]) for a in range(3)))
    fe = vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.5)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    out = fe.GetOutput()
    if out.GetNumberOfPolys() == 0:
        return None
    if smooth:
        sm = vtkWindowedSincPolyDataFilter()
        sm.SetInputData(out)
        sm.SetNumberOfIterations(12)
        sm.SetPassBand(0.08)
        sm.NonManifoldSmoothingOn()
        sm.NormalizeCoordinatesOn()
        sm.Update()
        out = sm.GetOutput()
    n = out.GetNumberOfPolys()
    if n > MAX_TRIANGLES:
        dec = vtkQuadricDecimation()
        dec.SetInputData(out)
        dec.SetTargetReduction(1.0 - MAX_TRIANGLES / n)
        dec.Update()
        out = dec.GetOutput()
    normals = vtkPolyDataNormals()
    normals.SetInputData(out)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    surf = vtkPolyData()
    surf.DeepCopy(normals.GetOutput())
    return surf


@dataclass
class _SurfaceJob:
    generation: int
    labels: Volume
    previous: Volume | None  # same-grid map the current surfaces were built from


@dataclass
class _SurfaceResult:
    generation: int
    full: bool  # replaces every surface (else only the labels in ``surfaces``)
    surfaces: dict[int, vtkPolyData | None]
    labels: Volume


class _SurfaceRelay(QObject):
    """Carries finished surface builds from the worker thread to the GUI thread."""

    done = Signal(object)


class View3D(RenderCanvas):
    """Anatomy surfaces, needles and ablation zones in LPS mm, with a trackball camera.

    ``surfaces_changed`` is emitted on the GUI thread when label surfaces were attached.
    """

    surfaces_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, handler=None)
        self.name = "3d"
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(*BACKGROUND)
        self.renderer.SetBackground2(0.12, 0.13, 0.16)
        self.renderer.GradientBackgroundOn()
        self.GetRenderWindow().AddRenderer(self.renderer)
        self._style = vtkInteractorStyleTrackballCamera()
        self._Iren.SetInteractorStyle(self._style)
        self._key_handler = self
        self._surfaces: dict[int, vtkActor] = {}
        self._label_visible: dict[int, bool] = {}
        self._needle_actors: list[tuple[vtkLineSource, vtkTubeFilter, vtkActor]] = []
        self._ablation_actors: list[vtkActor] = []
        self._volume: Volume | None = None
        self._labels: Volume | None = None
        self._shown_labels: Volume | None = None  # the map the shown surfaces come from
        self._generation = 0
        self._applied = 0
        self._pending: Future | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._relay = _SurfaceRelay()
        self._relay.done.connect(self._apply_surfaces, Qt.ConnectionType.QueuedConnection)
        self._volume_actor: vtkVolume | None = None
        self._volume_keep: np.ndarray | None = None
        self._render_pending = False
        self._last_render = 0.0
        self._cursor_src = vtkSphereSource()
        self._cursor_src.SetRadius(2.0)
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(self._cursor_src.GetOutputPort())
        self._cursor = vtkActor()
        self._cursor.SetMapper(mapper)
        self._cursor.GetProperty().SetColor(0.2, 0.75, 1.0)
        self._cursor.VisibilityOff()
        self.renderer.AddActor(self._cursor)
        self._marker = self._orientation_marker()

    def on_key(self, ev: QKeyEvent) -> bool:
        """R: reset the camera. Returns whether the key was handled."""
        if ev.key() == Qt.Key.Key_R:
            self.reset_camera()
            self.request_render()
            return True
        return False

    def _orientation_marker(self) -> vtkOrientationMarkerWidget:
        cube = vtkAnnotatedCubeActor()
        # Cube faces along +x, -x, +y, -y, +z, -z of the LPS world.
        for setter, text in (
            (cube.SetXPlusFaceText, "L"),
            (cube.SetXMinusFaceText, "R"),
            (cube.SetYPlusFaceText, "P"),
            (cube.SetYMinusFaceText, "A"),
            (cube.SetZPlusFaceText, "H"),
            (cube.SetZMinusFaceText, "F"),
        ):
            setter(text)
        cube.GetCubeProperty().SetColor(0.25, 0.3, 0.38)
        cube.GetTextEdgesProperty().SetColor(0.8, 0.8, 0.8)
        for prop in (
            cube.GetXPlusFaceProperty(),
            cube.GetXMinusFaceProperty(),
            cube.GetYPlusFaceProperty(),
            cube.GetYMinusFaceProperty(),
            cube.GetZPlusFaceProperty(),
            cube.GetZMinusFaceProperty(),
        ):
            prop.SetColor(0.9, 0.9, 0.9)
        w = vtkOrientationMarkerWidget()
        w.SetOrientationMarker(cube)
        w.SetInteractor(self._Iren)
        w.SetViewport(0.0, 0.0, 0.17, 0.17)
        w.SetEnabled(1)
        w.InteractiveOff()
        return w

    # -- content ------------------------------------------------------------------------------
    def set_volume(self, volume: Volume) -> None:
        """The study (for volume rendering and the camera)."""
        self._volume = volume
        if self._volume_actor is not None:
            self.renderer.RemoveVolume(self._volume_actor)
            self._volume_actor = None
            self.set_volume_rendering(True)
        self.reset_camera()

    def set_labels(self, labels: Volume | None) -> None:
        """One surface actor per label present in ``labels``, built off the GUI thread.

        Returns at once; the surfaces appear when built (:meth:`surfaces_pending` says whether
        a build is running, :meth:`finish_surfaces` waits for it). The label array is copied,
        so the caller may edit its own array afterwards. When the new map is on the same grid
        as the previous one, only the labels whose voxels changed are rebuilt (a brush stroke
        on the lesion re-extracts the lesion only).
        """
        self._generation += 1
        gen = self._generation
        if labels is None:
            self._labels = None
            self._shown_labels = None
            self._pending = None
            self._clear_surfaces()
            return
        prev = self._shown_labels
        snapshot = labels.with_array(np.array(labels.array, copy=True))
        self._labels = snapshot
        incremental = prev is not None and prev.same_grid(snapshot)
        job = _SurfaceJob(gen, snapshot, prev if incremental else None)
        self._pending = self._executor().submit(self._build_surfaces, job)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surfaces")
        return self._pool

    def _build_surfaces(self, job: _SurfaceJob) -> _SurfaceResult | None:
        """Worker thread: extract the surfaces a job needs (None once superseded)."""
        values = [int(v) for v in ov.LABEL_COLORS if v != Label.SI_JOINT]
        if job.previous is not None:
            diff = job.previous.array != job.labels.array
            changed = set(np.unique(job.previous.array[diff]).tolist())
            changed |= set(np.unique(job.labels.array[diff]).tolist())
            values = [v for v in values if v in changed]
        surfaces: dict[int, vtkPolyData | None] = {}
        for value in values:
            if job.generation != self._generation:
                return None
            surfaces[value] = label_surface(job.labels, value)
        result = _SurfaceResult(job.generation, job.previous is None, surfaces, job.labels)
        try:
            self._relay.done.emit(result)
        except RuntimeError:  # the view was deleted meanwhile
            return None
        return result

    def _apply_surfaces(self, result: object) -> None:
        """GUI thread: swap in the surfaces of the newest build."""
        if not isinstance(result, _SurfaceResult) or self.closed:
            return
        if result.generation != self._generation or result.generation <= self._applied:
            return
        self._applied = result.generation
        self._shown_labels = result.labels
        self._pending = None
        if result.full:
            self._clear_surfaces()
        matrix = rigid_matrix(result.labels)
        for value, surf in result.surfaces.items():
            old = self._surfaces.pop(value, None)
            if old is not None:
                self.renderer.RemoveActor(old)
            if surf is not None:
                self._surfaces[value] = self._surface_actor(surf, value, matrix)
        self.request_render()
        self.surfaces_changed.emit()

    def _clear_surfaces(self) -> None:
        for actor in self._surfaces.values():
            self.renderer.RemoveActor(actor)
        self._surfaces.clear()

    def surfaces_pending(self) -> bool:
        """Whether a surface build for the current label map is still running."""
        return self._pending is not None and self._applied < self._generation

    def finish_surfaces(self, timeout_s: float = 30.0) -> bool:
        """Wait (blocking) for the running surface build and attach it now.

        For synchronous uses (a screenshot); interactive code should instead listen to
        ``surfaces_changed``. Returns whether the surfaces are up to date.
        """
        future = self._pending
        if future is None or not self.surfaces_pending():
            return True
        try:
            result = future.result(timeout=timeout_s)
        except FutureTimeout:
            return False
        self._apply_surfaces(result)
        return not self.surfaces_pending()

    def _surface_actor(self, surf: vtkPolyData, value: int, matrix: vtkMatrix4x4) -> vtkActor:
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(surf)
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.SetUserMatrix(matrix)
        prop = actor.GetProperty()
        prop.SetColor(*ov.LABEL_COLORS[value])
        prop.SetOpacity(SURFACE_OPACITY.get(value, 1.0))
        prop.SetSpecular(0.2)
        prop.SetSpecularPower(20)
        actor.SetVisibility(self._label_visible.get(value, True))
        self.renderer.AddActor(actor)
        return actor

    def surface_labels(self) -> list[int]:
        """Label values that have a surface."""
        return sorted(self._surfaces)

    def set_label_visible(self, label: int, visible: bool) -> None:
        """Show or hide one label's surface."""
        self._label_visible[int(label)] = visible
        if int(label) in self._surfaces:
            self._surfaces[int(label)].SetVisibility(visible)

    def set_needles(self, needles: list[NeedleDisplay]) -> None:
        """Needles as tubes of their real diameter."""
        while len(self._needle_actors) > len(needles):
            self.renderer.RemoveActor(self._needle_actors.pop()[2])
        while len(self._needle_actors) < len(needles):
            line = vtkLineSource()
            tube = vtkTubeFilter()
            tube.SetInputConnection(line.GetOutputPort())
            tube.SetNumberOfSides(20)
            tube.CappingOn()
            mapper = vtkPolyDataMapper()
            mapper.SetInputConnection(tube.GetOutputPort())
            actor = vtkActor()
            actor.SetMapper(mapper)
            self.renderer.AddActor(actor)
            self._needle_actors.append((line, tube, actor))
        for (line, tube, actor), nd in zip(self._needle_actors, needles, strict=True):
            line.SetPoint1(*(float(v) for v in nd.entry_lps))
            line.SetPoint2(*(float(v) for v in nd.target_lps))
            tube.SetRadius(nd.diameter_mm / 2.0)
            prop = actor.GetProperty()
            prop.SetColor(*nd.color)
            prop.SetOpacity(1.0 if nd.selected else 0.75)
            prop.SetSpecular(0.6 if nd.selected else 0.2)
            prop.SetAmbient(0.25 if nd.selected else 0.05)

    def update_needle(self, index: int, entry: np.ndarray, target: np.ndarray) -> None:
        """Move one needle (live drags)."""
        if 0 <= index < len(self._needle_actors):
            line = self._needle_actors[index][0]
            line.SetPoint1(*(float(v) for v in entry))
            line.SetPoint2(*(float(v) for v in target))

    def set_ablation_zones(self, zones: list[AblationDisplay]) -> None:
        """Ablation zones as translucent ellipsoids (third radius along ``axis``)."""
        for actor in self._ablation_actors:
            self.renderer.RemoveActor(actor)
        self._ablation_actors = []
        for z in zones:
            src = vtkSphereSource()
            src.SetRadius(1.0)
            src.SetThetaResolution(32)
            src.SetPhiResolution(24)
            axis = np.asarray(z.axis, dtype=np.float64)
            axis = axis / max(np.linalg.norm(axis), 1e-9)
            helper = np.eye(3)[int(np.argmin(np.abs(axis)))]
            e1 = np.cross(axis, helper)
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(axis, e1)
            m = np.eye(4)
            m[:3, :3] = np.stack([e1, e2, axis], axis=1) * np.asarray(z.radii_mm)[np.newaxis, :]
            m[:3, 3] = np.asarray(z.center_lps, dtype=np.float64)
            t = vtkTransform()
            t.SetMatrix(m.ravel())
            mapper = vtkPolyDataMapper()
            mapper.SetInputConnection(src.GetOutputPort())
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.SetUserTransform(t)
            actor.GetProperty().SetColor(1.0, 0.55, 0.1)
            actor.GetProperty().SetOpacity(0.35)
            self.renderer.AddActor(actor)
            self._ablation_actors.append(actor)

    def set_crosshair(self, lps: np.ndarray) -> None:
        """Mark the crosshair centre with a small sphere."""
        self._cursor_src.SetCenter(*(float(v) for v in lps))
        self._cursor.SetVisibility(self._volume is not None)

    # -- volume rendering ---------------------------------------------------------------------
    def set_volume_rendering(self, on: bool) -> None:
        """CPU ray-cast rendering of the study (bone-like transfer function on CT)."""
        if not on:
            if self._volume_actor is not None:
                self._volume_actor.VisibilityOff()
            return
        if self._volume is None:
            return
        if self._volume_actor is None:
            self._volume_actor = self._build_volume_actor(self._volume)
            self.renderer.AddVolume(self._volume_actor)
        self._volume_actor.VisibilityOn()

    def _build_volume_actor(self, volume: Volume) -> vtkVolume:
        arr = volume.array
        step = [max(1, int(np.ceil(s / VOLUME_RENDER_MAX_DIM))) for s in arr.shape]
        sub = np.ascontiguousarray(arr[:: step[0], :: step[1], :: step[2]].astype(np.float32))
        self._volume_keep = sub
        spacing = tuple(float(volume.spacing[a] * step[2 - a]) for a in range(3))
        img = image_from_array(sub, spacing=spacing)
        mapper = vtkFixedPointVolumeRayCastMapper()
        mapper.SetInputData(img)
        color = vtkColorTransferFunction()
        opacity = vtkPiecewiseFunction()
        if volume.modality.upper() == "CT":
            points = ((-1000, 0.0), (150, 0.0), (300, 0.08), (700, 0.35), (1500, 0.6))
            colors = ((150, (0.55, 0.3, 0.2)), (400, (0.95, 0.85, 0.7)), (1500, (1.0, 1.0, 0.95)))
        else:
            lo, hi = np.percentile(sub[::2, ::2, ::2], [60, 99.5])
            points = ((lo, 0.0), (hi, 0.4))
            colors = ((lo, (0.6, 0.5, 0.45)), (hi, (1.0, 1.0, 1.0)))
        for v, a in points:
            opacity.AddPoint(float(v), a)
        for v, c in colors:
            color.AddRGBPoint(float(v), *c)
        prop = vtkVolumeProperty()
        prop.SetColor(color)
        prop.SetScalarOpacity(opacity)
        prop.ShadeOn()
        prop.SetInterpolationTypeToLinear()
        actor = vtkVolume()
        actor.SetMapper(mapper)
        actor.SetProperty(prop)
        actor.SetUserMatrix(rigid_matrix(volume))
        return actor

    # -- camera and rendering -----------------------------------------------------------------
    def reset_camera(self) -> None:
        """A posterior oblique view of the whole study (the side the needles come from)."""
        if self._volume is None:
            return
        corners = self._volume.bounds_world()
        center = corners.mean(axis=0)
        radius = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0))) / 2
        cam = self.renderer.GetActiveCamera()
        direction = np.array([-0.35, 1.0, 0.45])
        direction /= np.linalg.norm(direction)
        cam.SetFocalPoint(*center)
        cam.SetPosition(*(center + direction * radius * 2.1))
        cam.SetViewUp(0.0, 0.0, 1.0)
        cam.SetViewAngle(30.0)
        self.renderer.ResetCameraClippingRange()

    def render_now(self) -> None:
        """Render synchronously."""
        self._render_pending = False
        self._last_render = time.perf_counter()
        if not self.closed and self.isVisible():
            self.renderer.ResetCameraClippingRange()
            self.GetRenderWindow().Render()

    def request_render(self) -> None:
        """Render soon, at most every ``MIN_RENDER_INTERVAL_MS`` (live drags stay smooth in
        the slice views while the heavier 3D scene catches up)."""
        if not self._render_pending:
            self._render_pending = True
            since_ms = (time.perf_counter() - self._last_render) * 1000.0
            wait = max(0, int(MIN_RENDER_INTERVAL_MS - since_ms))
            QTimer.singleShot(wait, self._deferred_render)

    def _deferred_render(self) -> None:
        if self._render_pending:
            self.render_now()

    def shutdown(self) -> None:
        """Release the render window (a surface build still running is abandoned)."""
        self._generation += 1
        self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._render_pending = False
        self._marker.SetEnabled(0)
        self._marker.SetInteractor(None)
        self.renderer.RemoveAllViewProps()
        self.release()
