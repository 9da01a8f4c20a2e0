"""The fusion dock: an MR of the same patient registered onto the study's CT.

The dock holds a :class:`~app.gui.views.fusion_view.FusionView` (the CT with the MR over it or
beside it, registration in a worker thread with progress, nudge buttons and keys) and adds
what the workstation needs around it: loading the MR (a DICOM folder or an image file, off the
GUI thread), the sample's MR (the phantom MR of the same case moved by a known rigid offset,
:data:`SAMPLE_MR_OFFSET`, so the registration can be checked against the truth), undo/redo of
every registration and nudge, the nudge step, and "Segment lesion on MR": the lesion grown on
the MR (in the CT's bone moved onto the MR) and mapped onto the CT grid, with its volume on
both series.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.panels.common import hint_label
from app.gui.views.fusion_view import FusionView
from imaging.errors import SacroplanError
from imaging.fusion import MappedMask, RigidTransform, moved_grid
from imaging.lesion import GrowOptions, grow_lesion
from imaging.volume import Volume

if TYPE_CHECKING:
    from app.gui.session import Session

#: Rigid offset of the sample's MR: rotation about LPS x, y, z (degrees) about the lesion
#: centre, then a translation (mm). The registration should find it (CT -> MR map).
SAMPLE_MR_OFFSET = ((3.0, -2.0, 4.0), (8.0, -6.0, 5.0))
#: Voxel size of the sample's MR (mm): thicker slices, as a clinical T1 series.
SAMPLE_MR_SPACING = (1.5, 1.5, 3.0)
MR_FILTER = "Images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm);;All files (*)"


class FusionPanelError(SacroplanError):
    """A fusion action that does not fit the current state (plain message)."""


class _TransformCommand(QUndoCommand):
    """One registration or nudge: the CT -> MR transform before and after."""

    def __init__(
        self, panel: FusionPanel, before: RigidTransform, after: RigidTransform, text: str
    ) -> None:
        super().__init__(text)
        self._panel, self._before, self._after = panel, before, after
        self._first = True

    def redo(self) -> None:
        if self._first:  # the view applied it already
            self._first = False
            return
        self._panel._apply_transform(self._after)  # noqa: SLF001

    def undo(self) -> None:
        self._panel._apply_transform(self._before)  # noqa: SLF001


class FusionPanel(QWidget):
    """Load an MR, register it to the CT, nudge it, segment the lesion on it.

    Parameters
    ----------
    session : Session
        The workstation's session (its study is the CT).
    crosshair : callable, optional
        Returns the views' crosshair (LPS mm): the seed of "Segment lesion on MR" when the CT
        has no lesion yet.
    parent : QWidget, optional
    """

    def __init__(
        self,
        session: Session,
        *,
        crosshair: Callable[[], np.ndarray] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("fusionPanel")
        self.session = session
        self._crosshair = crosshair
        self.view = FusionView()
        self.view.setObjectName("fusionView")
        self.undo_stack = QUndoStack(self)
        self.mr: Volume | None = None
        self.mr_lesion: Volume | None = None
        self.sample_offset: RigidTransform | None = None
        self._ct: Volume | None = None
        self._current = RigidTransform.identity()
        self._seen_result: object | None = None

        self.load_folder_button = QPushButton("Load MR folder…")
        self.load_folder_button.setToolTip("Load an MR series of the same patient (DICOM folder)")
        self.load_folder_button.clicked.connect(lambda: self._guard(self.load_mr_dialog))
        self.load_file_button = QPushButton("Load MR file…")
        self.load_file_button.setToolTip("Load an MR image file (NIfTI, NRRD, MetaImage, DICOM)")
        self.load_file_button.clicked.connect(lambda: self._guard(self.load_mr_file_dialog))
        self.sample_button = QPushButton("Sample MR")
        self.sample_button.setToolTip(
            "The sample case's MR, moved by a known rigid offset (to check the registration)"
        )
        self.sample_button.clicked.connect(lambda: self._guard(self.load_sample_mr))
        self.segment_button = QPushButton("Segment lesion on MR")
        self.segment_button.setToolTip(
            "Grow the lesion on the MR from the CT lesion centre (or the crosshair) and map it "
            "onto the CT"
        )
        self.segment_button.clicked.connect(lambda: self._guard(self.segment_lesion_on_mr))
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("Undo the last registration or nudge")
        self.undo_button.clicked.connect(self.undo_stack.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.undo_stack.redo)
        self.undo_stack.indexChanged.connect(self._on_undo_index)
        self.undo_stack.cleanChanged.connect(self._on_undo_index)
        self.undo_button.setEnabled(False)
        self.redo_button.setEnabled(False)
        self.step_mm = QDoubleSpinBox()
        self.step_mm.setRange(0.1, 10.0)
        self.step_mm.setSingleStep(0.5)
        self.step_mm.setValue(1.0)
        self.step_mm.setSuffix(" mm")
        self.step_deg = QDoubleSpinBox()
        self.step_deg.setRange(0.1, 10.0)
        self.step_deg.setSingleStep(0.5)
        self.step_deg.setValue(1.0)
        self.step_deg.setSuffix("°")
        for spin in (self.step_mm, self.step_deg):
            spin.valueChanged.connect(
                lambda _v: self.view.set_nudge_step(self.step_mm.value(), self.step_deg.value())
            )
        self.info = QLabel("")
        self.info.setObjectName("panelText")
        self.info.setWordWrap(True)

        load = QHBoxLayout()
        for b in (self.load_folder_button, self.load_file_button, self.sample_button):
            load.addWidget(b)
        load.addStretch(1)
        edit = QHBoxLayout()
        edit.addWidget(self.undo_button)
        edit.addWidget(self.redo_button)
        edit.addWidget(QLabel("Nudge step"))
        edit.addWidget(self.step_mm)
        edit.addWidget(self.step_deg)
        edit.addStretch(1)
        edit.addWidget(self.segment_button)
        root = QVBoxLayout(self)
        root.setContentsMargins(4, 4, 4, 4)
        root.setSpacing(4)
        root.addLayout(load)
        root.addWidget(self.view, 1)
        root.addLayout(edit)
        root.addWidget(self.info)
        root.addWidget(
            hint_label(
                "Register aligns the MR to the CT by mutual information. Nudge with the "
                "buttons or the arrow keys (PageUp/PageDown through the slice, Ctrl+Left/Right "
                "rotates); every registration and nudge can be undone here."
            )
        )

        self.view.registered.connect(self._on_registered)
        self.view.mapped_lesion.connect(self._on_mapped)
        self.view.failed.connect(lambda text: self.info.setText(text))
        session.study_changed.connect(self._on_study)
        session.lesion_changed.connect(self._update_info)
        self._on_study()

    # == public ================================================================================
    def load_mr_dialog(self) -> None:
        """Ask for an MR DICOM folder and load it."""
        folder = QFileDialog.getExistingDirectory(self, "Load MR for fusion")
        if folder:
            self.load_mr(folder)

    def load_mr_file_dialog(self) -> None:
        """Ask for an MR image file and load it."""
        path, _ = QFileDialog.getOpenFileName(self, "Load MR for fusion", "", MR_FILTER)
        if path:
            self.load_mr(path)

    def load_mr(self, path: str | Path, *, on_done: Callable[[], None] | None = None) -> None:
        """Read an MR series (folder or file) off the GUI thread and show it over the CT."""
        self._need_ct()
        p = Path(path)
        if not p.exists():
            raise FusionPanelError(f"no such file or folder: {p}")

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Volume:
            from imaging.read import load

            progress(0.1, f"reading {p.name}")
            return load(p)

        def done(volume: Volume) -> None:
            self.set_mr(volume, offset=None)
            if on_done is not None:
                on_done()

        self._start("mr", task, "Loading the MR", done)

    def load_sample_mr(self, *, on_done: Callable[[], None] | None = None) -> None:
        """The sample case's MR under the known offset :data:`SAMPLE_MR_OFFSET`."""
        self._need_ct()
        info = self.session.open_info
        case = self.session.case
        if info.get("kind") != "sample" or case is None or case.sample_truth is None:
            raise FusionPanelError(
                "the sample MR belongs to the sample case: open the sample (File > Open sample "
                "case), or load the patient's own MR"
            )
        lesion = str(info.get("lesion", "left_ala_s1"))
        truth = case.sample_truth
        centre = (
            np.asarray(truth.lesion.center_lps, float)
            if truth.lesion is not None
            else self._ct_centre()
        )
        offset = RigidTransform.from_euler(*SAMPLE_MR_OFFSET, center_lps=centre)

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Volume:
            from imaging.phantom import make_phantom

            progress(0.1, "building the sample MR")
            mr = make_phantom(
                lesion=lesion, modality="mr", spacing_mm=SAMPLE_MR_SPACING, seed=7
            ).image
            mr.meta.setdefault("description", f"sacroplan sample MR ({lesion}), moved")
            return moved_grid(mr, offset)

        def done(volume: Volume) -> None:
            self.set_mr(volume, offset=offset)
            if on_done is not None:
                on_done()

        self._start("sample MR", task, "Building the sample MR", done)

    def set_mr(self, volume: Volume, *, offset: RigidTransform | None = None) -> None:
        """Show ``volume`` as the MR (identity transform, history cleared).

        ``offset`` is the known CT -> MR transform when there is one (the sample).
        """
        self.mr = volume
        self.mr_lesion = None
        self.sample_offset = offset
        self.undo_stack.clear()
        self._on_undo_index()
        self._current = RigidTransform.identity()
        self._seen_result = self.view.last_result
        self.view.set_mr_lesion(None)
        self.view.set_transform(self._current)
        self.view.set_mr(volume)
        self._update_info()

    def register(self) -> None:
        """Start the registration (the view's Register button does the same)."""
        self.view.register()

    def transform(self) -> RigidTransform:
        """The current CT -> MR transform."""
        return self.view.transform()

    def offset_error(self) -> tuple[float, float] | None:
        """``(mm, degrees)`` between the current transform and the known sample offset.

        The distance is the largest displacement over the CT lesion region (its centre and
        +-30 mm along each axis); None when there is no known offset.
        """
        if self.sample_offset is None:
            return None
        t, truth = self.transform(), self.sample_offset
        centre = self._seed_ct()
        pts = centre + np.vstack([np.zeros(3), 30.0 * np.eye(3), -30.0 * np.eye(3)])
        mm = float(np.max(np.linalg.norm(t.map_ct_to_mr(pts) - truth.map_ct_to_mr(pts), axis=1)))
        deg = t.compose(truth.inverse()).rotation_angle_deg
        return mm, deg

    def segment_lesion_on_mr(self, *, on_done: Callable[[], None] | None = None) -> None:
        """Grow the lesion on the MR off the GUI thread; the view maps it onto the CT.

        The seed is the CT lesion centre (else the sample's lesion, else the crosshair) moved
        onto the MR through the current transform; growth stays in the CT's sacrum moved onto
        the MR when the anatomy has been found (MR muscle has a lesion's signal).
        """
        self._need_ct()
        if self.mr is None:
            raise FusionPanelError("load an MR first (or the sample MR)")
        transform = self.transform()
        seed_ct = self._seed_ct()
        seed_mr = transform.map_ct_to_mr(seed_ct)
        case = self.session.case
        bone_ct = None
        if case is not None and case.masks is not None:
            bone_ct = case._bone_for_seed(seed_ct)  # noqa: SLF001 (the CT lesion's own bone)
        mr = self.mr
        if not bool(np.all(mr.contains_world(seed_mr[None, :]))):
            raise FusionPanelError(
                "the lesion seed falls outside the MR: register the MR first, or move the "
                "crosshair onto the lesion"
            )

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Volume:
            progress(0.2, "growing the lesion on the MR")
            bone = None if bone_ct is None else moved_grid(bone_ct, transform)
            return grow_lesion(mr, seed_mr, options=GrowOptions(mode="mr"), bone_mask=bone).mask

        def done(mask: Volume) -> None:
            self.mr_lesion = mask
            self.info.setText("Mapping the MR lesion onto the CT…")
            self.view.set_mr_lesion(mask)
            if on_done is not None:
                on_done()

        self._start("MR lesion", task, "Segmenting the lesion on the MR", done)

    def mapped(self) -> MappedMask | None:
        """The MR lesion on the CT grid (None before one is mapped)."""
        return self.view.mapped()

    def is_idle(self) -> bool:
        """True when no load, registration or mapping is running or scheduled."""
        runner = self.session.runner
        mine = runner.busy and runner.name in ("mr", "sample MR", "MR lesion")
        return self.view.is_idle() and not mine

    def shutdown(self) -> None:
        """Stop the registration and wait for the worker (before the window goes)."""
        self.view.shutdown()

    # == internals =============================================================================
    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except SacroplanError as exc:
            self.session.error.emit("Fusion", exc)

    def _start(
        self, name: str, task: Callable[..., Any], title: str, done: Callable[[Any], None]
    ) -> None:
        runner = self.session.runner
        if runner.busy:
            raise FusionPanelError(f"wait for '{runner.name}' to finish (or cancel it) first")
        runner.start(
            name,
            task,
            label=title,
            on_done=done,
            on_error=lambda exc: self.session.error.emit(title, exc),
        )

    def _need_ct(self) -> Volume:
        if self._ct is None:
            raise FusionPanelError(
                "fusion puts an MR onto the patient's CT: open the CT study first"
            )
        return self._ct

    def _ct_centre(self) -> np.ndarray:
        ct = self._need_ct()
        return ct.index_to_world((np.array(ct.size, dtype=float) - 1) / 2.0)

    def _seed_ct(self) -> np.ndarray:
        case = self.session.case
        if case is not None and case.metrics is not None:
            return np.asarray(case.metrics.centroid_lps, float)
        if case is not None and case.default_seed() is not None:
            return np.asarray(case.default_seed(), float)
        if self._crosshair is not None:
            return np.asarray(self._crosshair(), float).reshape(3)
        return self._ct_centre()

    def _on_study(self) -> None:
        image = self.session.image
        ct = image if image is not None and str(image.modality).upper() == "CT" else None
        self._ct = ct
        enabled = ct is not None
        for b in (
            self.load_folder_button,
            self.load_file_button,
            self.sample_button,
            self.segment_button,
        ):
            b.setEnabled(enabled)
        self.sample_button.setEnabled(enabled and self.session.open_info.get("kind") == "sample")
        self.mr = None
        self.mr_lesion = None
        self.sample_offset = None
        self.undo_stack.clear()
        self._on_undo_index()
        if ct is not None:
            self.view.set_ct(ct)
        self._update_info()

    def _on_registered(self, transform: RigidTransform) -> None:
        before = self._current
        self._current = transform
        registration = self.view.last_result is not self._seen_result
        self._seen_result = self.view.last_result
        text = "registration" if registration else "nudge"
        self.undo_stack.push(_TransformCommand(self, before, transform, text))
        self._update_info()

    def _on_undo_index(self, *_args: object) -> None:
        if not shiboken6.isValid(self.undo_button):  # the window is being destroyed
            return
        stack = self.undo_stack
        self.undo_button.setEnabled(stack.canUndo())
        self.redo_button.setEnabled(stack.canRedo())
        text = stack.undoText()
        self.undo_button.setToolTip(f"Undo the {text}" if text else "Nothing to undo")

    def _apply_transform(self, transform: RigidTransform) -> None:
        self._current = transform
        self.view.set_transform(transform)
        self._update_info()

    def _on_mapped(self, mapped: MappedMask) -> None:
        self._update_info()

    def _update_info(self) -> None:
        image = self.session.image
        if image is None:
            self.info.setText("Open the patient's CT, then load an MR to fuse onto it.")
            return
        if self._ct is None:
            self.info.setText(
                f"This study is {image.modality}: fusion puts an MR onto the patient's CT. "
                "Open the CT study first."
            )
            return
        if self.mr is None:
            self.info.setText("Load the patient's MR (or the sample MR), then Register.")
            return
        t = self.transform()
        parts = [
            f"{self.mr.modality} series {' x '.join(str(int(v)) for v in self.mr.size)} voxels; "
            f"transform: rotation {t.rotation_angle_deg:.2f}°, shift "
            f"{np.linalg.norm(t.translation_mm):.1f} mm"
        ]
        err = self.offset_error()
        if err is not None:
            parts.append(f"from the known sample offset: {err[0]:.2f} mm, {err[1]:.2f}°")
        m = self.mapped()
        if m is not None:
            text = f"MR lesion {m.volume_ml_mr:.2f} mL on the MR, {m.volume_ml_ct:.2f} mL on the CT"
            case = self.session.case
            if case is not None and case.metrics is not None:
                text += f" (grown on the CT: {case.metrics.volume_ml:.2f} mL)"
            parts.append(text)
        self.info.setText("; ".join(parts))


def fusion_dock(window: QMainWindow) -> QDockWidget:
    """Add the (hidden) fusion dock to the workstation window; View > Fusion shows it.

    ``window`` needs ``session`` and ``grid`` (the view grid, for its crosshair) and a
    ``closed`` signal (the worker is stopped then).
    """
    grid = getattr(window, "grid", None)
    panel = FusionPanel(
        window.session,  # type: ignore[attr-defined]
        crosshair=None if grid is None else grid.crosshair,
    )
    dock = QDockWidget("CT–MR fusion", window)
    dock.setObjectName("fusionDock")
    dock.setWidget(panel)
    dock.setAllowedAreas(Qt.DockWidgetArea.AllDockWidgetAreas)
    window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
    dock.hide()
    act = dock.toggleViewAction()
    act.setText("CT–MR &fusion")
    act.setShortcut(QKeySequence("Ctrl+Shift+M"))
    act.setStatusTip("Show the MR of the same patient registered onto the CT")
    window.closed.connect(panel.shutdown)  # type: ignore[attr-defined]
    return dock
