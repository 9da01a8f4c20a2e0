"""The one planning session the whole window observes (views never own planning state).

:class:`Session` is a thin Qt adapter around the headless objects: the
:class:`planning.case.Case` (study, anatomy masks and landmarks, lesion), the current
:class:`planning.plan.Plan` (candidates, suggestion, margins, cement, RFA, chosen
trajectory) and the distance fields used to re-score a dragged needle. Long steps run in a
:class:`~app.gui.workers.TaskRunner`; every edit is a command on :attr:`Session.undo_stack`
(one drag = one step). Signals tell the views and panels what changed.

Needles shown in the views are the best candidate of every feasible approach, in the
approach registry's order, then the needles of a two-needle block (the plan's
``multi_needle``: keys ``"needle:1"``, ``"needle:2"``): display index ``i`` is
:attr:`Session.needle_keys` ``[i]``. After the trajectory search the session decides, as
``sacroplan plan`` does, whether the lesion needs a second needle (``needles_mode``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoStack

from app.gui.undo import (
    BrushCommand,
    LandmarkCommand,
    PlanCommand,
    StateCommand,
)
from app.gui.workers import TaskRunner
from geometry.fieldstack import QUANTUM_MM, FieldStack
from imaging.anatomy import FORAMEN_NAMES
from imaging.errors import LesionSegmentationError, SacroplanError
from imaging.lesion import GrowOptions
from imaging.volume import Volume
from planning.anatomy import SacralAnatomy
from planning.approaches import approach_registry
from planning.case import Case
from planning.margins import Margins
from planning.multi_needle import (
    MultiNeedlePlan,
    cement_cloud,
    filling_degree,
    lesion_coverage,
    plan_multi_needle,
    segment_distance_mm,
    spread_region_of,
    with_multi_needle,
)
from planning.needles import get_needle
from planning.plan import Candidate, Plan, Trajectory, clearance_text
from planning.planner import (
    PlanOptions,
    build_fields,
    plan_case,
    score_trajectory,
)

log = logging.getLogger("sacroplan.gui.session")

SESSION_SCHEMA = "sacroplan.session/1"
STATE_KEYS = ("masks", "anatomy", "lesion", "metrics", "plan", "fields")
ENDPLATE_ID = "endplate"
BLOCK_PREFIX = "needle:"
NEEDLE_MODES = ("auto", "1", "2")


def block_key(number: int) -> str:
    """Display key of needle ``number`` (1-based) of a multi-needle block: ``"needle:1"``."""
    return f"{BLOCK_PREFIX}{number}"


def block_number(key: str) -> int | None:
    """``"needle:2"`` -> 2 (None for an approach key)."""
    if not key.startswith(BLOCK_PREFIX):
        return None
    tail = key[len(BLOCK_PREFIX) :]
    return int(tail) if tail.isdigit() else None


class SessionError(SacroplanError):
    """An action that does not fit the session's current state (plain message)."""


def landmark_id(foramen_name: str) -> str:
    """``"left S1"`` -> ``"foramen:S1:left"`` (the id the views use)."""
    side, level = foramen_name.split()
    return f"foramen:{level}:{side}"


def foramen_name(landmark: str) -> str | None:
    """``"foramen:S1:left"`` -> ``"left S1"`` (None for any other id)."""
    parts = landmark.split(":")
    if len(parts) == 3 and parts[0] == "foramen":
        return f"{parts[2]} {parts[1]}"
    return None


class Session(QObject):
    """The evented planning session.

    Signals
    -------
    study_changed : a new study was opened (or closed)
    anatomy_changed : the anatomy was replaced or its masks changed
    landmarks_changed : a landmark moved (masks unchanged)
    lesion_changed : the lesion mask or its metrics changed
    plan_changed : the plan (candidates, suggestion, margins, cement, RFA) changed
    selection_changed(str) : selected approach key ('' = none)
    needle_preview(str, object) : live re-score of a needle being dragged (approach, Candidate)
    dirty_changed(bool) : unsaved changes appeared / were saved
    changed : any change worth autosaving
    step_done(str) : a background step finished ("open", "anatomy", "lesion", "plan",
        "needles", "restore")
    error(str, object) : a step failed (title, exception)
    message(str) : a short status line
    """

    study_changed = Signal()
    anatomy_changed = Signal()
    landmarks_changed = Signal()
    lesion_changed = Signal()
    plan_changed = Signal()
    selection_changed = Signal(str)
    needle_preview = Signal(str, object)
    dirty_changed = Signal(bool)
    changed = Signal()
    error = Signal(str, object)
    message = Signal(str)
    step_done = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.case: Case | None = None
        self.plan: Plan | None = None
        self.fields: FieldStack | None = None
        self.open_info: dict[str, Any] = {}
        self.grow_options = GrowOptions()
        self.plan_options = PlanOptions()
        self.needles_mode = "auto"  # NEEDLE_MODES: how many needles the plan gets
        self.selected: str = ""
        self.view_state: dict[str, Any] = {}
        self.plan_path: Path | None = None
        self.plan_stale = False
        self.runner = TaskRunner(self)
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._on_clean_changed)
        self.undo_stack.indexChanged.connect(self._on_index_changed)
        self._labels: Volume | None = None
        self._zones: Volume | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._quiet = False  # True while a brush stroke edits the masks voxel by voxel

    def _on_clean_changed(self, clean: bool) -> None:
        self.dirty_changed.emit(not clean)

    def _on_index_changed(self, _index: int) -> None:
        self.changed.emit()

    # == state =================================================================================
    @property
    def image(self) -> Volume | None:
        """The study volume (None before one is opened)."""
        return None if self.case is None else self.case.image

    @property
    def dirty(self) -> bool:
        """Unsaved edits since the last save (or open)."""
        return not self.undo_stack.isClean()

    def snapshot(self) -> dict[str, Any]:
        """The replaceable parts of the state (see :class:`~app.gui.undo.StateCommand`)."""
        c = self.case
        return {
            "masks": None if c is None else c.masks,
            "anatomy": None if c is None else c.anatomy,
            "lesion": None if c is None else c.lesion,
            "metrics": None if c is None else c.metrics,
            "plan": self.plan,
            "fields": self.fields,
        }

    def apply_snapshot(self, state: dict[str, Any]) -> None:
        """Put a snapshot back (undo/redo of a whole step) and notify."""
        c = self.case
        if c is None:
            return
        old = self.snapshot()
        c.masks, c.lesion, c.metrics = state["masks"], state["lesion"], state["metrics"]
        self._set_anatomy(state["anatomy"])
        self.plan, self.fields = state["plan"], state["fields"]
        self._sync_options()
        if old["masks"] is not state["masks"] or old["anatomy"] is not state["anatomy"]:
            self._labels = self._zones = None
            self.anatomy_changed.emit()
        if old["lesion"] is not state["lesion"] or old["metrics"] is not state["metrics"]:
            self._labels = None
            self.lesion_changed.emit()
        if old["plan"] is not state["plan"]:
            self.plan_stale = False
            self._keep_selection()
            self.plan_changed.emit()

    def _sync_options(self) -> None:
        """The next search uses the margins and the number of needles of the plan shown
        (after undo/redo too)."""
        if self.plan is not None and self.plan.margins != self.plan_options.margins:
            self.plan_options = dataclasses.replace(self.plan_options, margins=self.plan.margins)
        mode = None if self.plan is None else self.plan.view_state.get("needles")
        if mode in NEEDLE_MODES:
            self.needles_mode = str(mode)

    def _set_anatomy(self, anatomy: SacralAnatomy | None) -> None:
        if self.case is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.case.anatomy = anatomy
        if anatomy is not None:
            self._unsubscribe = anatomy.subscribe(self._on_anatomy_edit)

    def _on_anatomy_edit(self, what: str, _anatomy: SacralAnatomy) -> None:
        if self._quiet:
            return
        self._zones = None
        if self.plan is not None:
            self.plan_stale = True
        if what == "landmarks":  # the masks (label map) are unchanged
            self.landmarks_changed.emit()
            return
        self._labels = None
        self.anatomy_changed.emit()

    # == derived images for the views ===========================================================
    def label_volume(self) -> Volume | None:
        """Label map on the study grid (imaging.labels codes), None without anatomy/lesion."""
        c = self.case
        if c is None or (c.masks is None and c.lesion is None):
            return None
        if self._labels is None:
            self._labels = c.label_map()
        return self._labels

    def zone_volume(self) -> Volume | None:
        """Denis zones (1/2/3, 0 outside the sacrum) on the study grid, or None."""
        c = self.case
        if c is None or c.masks is None or c.anatomy is None or not c.anatomy.foramina:
            return None
        if self._zones is None:
            zones = c.anatomy.zone_map
            if zones is None:
                return None
            self._zones = c.masks.paste(zones.array, c.image)
        return self._zones

    def landmarks(self) -> dict[str, np.ndarray]:
        """Landmark id -> LPS point (mm) of the current anatomy."""
        c = self.case
        if c is None or c.anatomy is None:
            return {}
        out = {landmark_id(n): f.center_lps.copy() for n, f in c.anatomy.foramina.items()}
        out[ENDPLATE_ID] = c.anatomy.endplate_center
        return out

    def needle_keys(self) -> list[str]:
        """Approach keys with a best candidate, then the block's needles, in display order."""
        if self.plan is None:
            return []
        order = list(approach_registry()) + list(self.plan.best_by_approach)
        seen: list[str] = []
        for key in order:
            entry = self.plan.best_by_approach.get(key)
            if key not in seen and entry is not None and "candidate" in entry:
                seen.append(key)
        return seen + self.block_keys()

    def block(self) -> MultiNeedlePlan | None:
        """The plan's multi-needle block when it has two needles or more (else None)."""
        multi = None if self.plan is None else self.plan.multi_needle
        return multi if multi is not None and len(multi.needles) > 1 else None

    def block_keys(self) -> list[str]:
        """Display keys of the block's needles (``"needle:1"``, ...; [] without a block)."""
        multi = self.block()
        return [] if multi is None else [block_key(n + 1) for n in range(len(multi.needles))]

    def needle_label(self, key: str) -> str:
        """What the views write next to needle ``key``: ``"needle 1 left"``, ``"transiliac L"``."""
        number = block_number(key)
        multi = self.block()
        if number is not None and multi is not None and 1 <= number <= len(multi.needles):
            placed = multi.needles[number - 1]
            return f"{placed.label} {placed.candidate.side or ''}".strip()
        cand = self.candidate(key)
        side = "" if cand is None else cand.side or ""
        return f"{key.replace('_', ' ')} {side}".strip()

    def approach_of(self, key: str) -> str:
        """The approach key of display key ``key`` (a block needle's own approach)."""
        if block_number(key) is None:
            return key
        cand = self.candidate(key)
        return key if cand is None else cand.approach

    def approach_keys(self) -> list[str]:
        """Every approach of the plan (feasible or blocked) in registry order."""
        if self.plan is None:
            return []
        keys = [k for k in approach_registry() if k in self.plan.best_by_approach]
        return keys + [k for k in self.plan.best_by_approach if k not in keys]

    def candidate(self, key: str) -> Candidate | None:
        """The best candidate of approach ``key``, or block needle ``key`` (None when blocked
        or unknown)."""
        if self.plan is None:
            return None
        number = block_number(key)
        if number is not None:
            multi = self.block()
            if multi is None or not 1 <= number <= len(multi.needles):
                return None
            return multi.needles[number - 1].candidate
        entry = self.plan.best_by_approach.get(key, {})
        idx = entry.get("candidate")
        return None if idx is None else self.plan.candidates[idx]

    def blocked_by(self, key: str) -> list[str]:
        """Why approach ``key`` has no feasible needle ([] when it has one)."""
        if self.plan is None:
            return []
        return list(self.plan.best_by_approach.get(key, {}).get("blocked_by", []))

    # == opening =================================================================================
    def open_sample(
        self,
        *,
        lesion: str = "left_ala_s1",
        modality: str = "ct",
        spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Build the built-in sample off the GUI thread and make it the study."""
        info = {
            "kind": "sample",
            "lesion": lesion,
            "modality": modality,
            "spacing_mm": [float(v) for v in spacing_mm],
        }

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Case:
            progress(0.1, f"building the sample ({lesion})")
            return Case.sample(lesion=lesion, modality=modality, spacing_mm=tuple(spacing_mm))

        return self._start_open(task, info, "Opening the sample", on_done)

    def open_path(
        self,
        path: str | Path,
        *,
        series_uid: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Load a study (folder, DICOMDIR, DICOM, NIfTI, NRRD) off the GUI thread."""
        info = {"kind": "path", "path": str(path), "series_uid": series_uid}

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Case:
            progress(0.05, f"reading {Path(path).name}")
            if not Path(path).exists():
                raise SessionError(f"no such file or folder: {path}")
            return Case.open(path, series_uid=series_uid)

        return self._start_open(task, info, "Opening the study", on_done)

    def _start_open(
        self,
        task: Callable[..., Case],
        info: dict[str, Any],
        title: str,
        on_done: Callable[[], None] | None,
    ) -> bool:
        def done(case: Case) -> None:
            self.set_case(case, info)
            self.step_done.emit("open")
            if on_done is not None:
                on_done()

        return self._run("open", task, title, done)

    def set_case(self, case: Case, info: dict[str, Any]) -> None:
        """Make ``case`` the study (clears the plan and the undo history)."""
        self.case = case
        self.open_info = dict(info)
        self._set_anatomy(case.anatomy)
        self.plan = None
        self.fields = None
        self.selected = ""
        self.plan_path = None
        self.plan_stale = False
        self.view_state = {}
        self._labels = self._zones = None
        self.undo_stack.clear()
        self.study_changed.emit()
        self.anatomy_changed.emit()
        self.lesion_changed.emit()
        self.plan_changed.emit()
        self.selection_changed.emit("")
        self.changed.emit()
        self.message.emit(f"Opened {case.source}")

    def close_study(self) -> None:
        """Forget the study and everything derived from it."""
        self.case = None
        self.plan = None
        self.fields = None
        self.selected = ""
        self.open_info = {}
        self._labels = self._zones = None
        self.undo_stack.clear()
        self.study_changed.emit()
        self.plan_changed.emit()

    # == steps ==================================================================================
    def run_anatomy(self, *, on_done: Callable[[], None] | None = None) -> bool:
        """Automatic anatomy off the GUI thread; one undo step."""
        case = self._need_case()
        work = _work_copy(case)

        def task(progress: Callable[[float, str], None], cancel: Callable[[], bool]) -> Case:
            work.find_anatomy(progress=progress, cancel=cancel)
            if work.lesion is not None:
                work.metrics = work.measure_lesion()
            return work

        def done(result: Case) -> None:
            after = self.snapshot()
            after.update(masks=result.masks, anatomy=result.anatomy, metrics=result.metrics)
            case.notes[:] = result.notes
            self._push_state("Find anatomy", after)
            self.message.emit("Anatomy found")
            self.step_done.emit("anatomy")
            if on_done is not None:
                on_done()

        return self._run("anatomy", task, "Finding the anatomy", done)

    def grow_lesion(
        self,
        seed_lps: np.ndarray,
        *,
        options: GrowOptions | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Grow the lesion from a seed (LPS mm) off the GUI thread; one undo step."""
        case = self._need_case()
        seed = np.asarray(seed_lps, dtype=np.float64).reshape(3)
        if not _inside(case.image, seed):
            raise LesionSegmentationError(
                "the seed point is outside the study; click inside the lesion"
            )
        opts = options or self.grow_options
        work = _work_copy(case)

        def task(progress: Callable[[float, str], None], _cancel: Callable[[], bool]) -> Case:
            progress(0.2, "growing the lesion")
            work.grow_lesion(seed, options=opts)
            return work

        def done(result: Case) -> None:
            self.grow_options = opts
            after = self.snapshot()
            after.update(lesion=result.lesion, metrics=result.metrics)
            case.notes[:] = result.notes
            self._push_state("Grow lesion", after)
            if self.plan is not None:
                self.plan_stale = True
            m = result.metrics
            if m is not None:
                self.message.emit(f"Lesion {m.volume_ml:.2f} mL, {m.max_diameter_mm:.1f} mm")
            self.step_done.emit("lesion")
            if on_done is not None:
                on_done()

        return self._run("lesion", task, "Growing the lesion", done)

    def run_plan(self, *, on_done: Callable[[], None] | None = None) -> bool:
        """Trajectory search (and the distance fields for dragging) off the GUI thread."""
        case = self._need_case()
        if case.anatomy is None or case.masks is None:
            raise SessionError("find the anatomy first (step 1), then grow the lesion")
        if case.lesion is None:
            raise SessionError("grow the lesion first: click a seed point inside it (step 2)")
        work = _work_copy(case)
        options = self.plan_options
        mode = self.needles_mode
        view_state = dict(self.view_state)

        def task(
            progress: Callable[[float, str], None], cancel: Callable[[], bool]
        ) -> tuple[Plan, FieldStack, str]:
            plan = plan_case(
                work, options=options, progress=lambda f, t: progress(0.75 * f, t), cancel=cancel
            )
            progress(0.8, "distance fields for editing")
            fields = build_fields(work)
            plan = dataclasses.replace(plan, view_state={**view_state, "needles": mode})
            if cancel():
                return plan, fields, ""
            progress(0.9, "second needle")
            plan, note = multi_needle_step(work, plan, options, fields, mode)
            return plan, fields, note

        def done(result: tuple[Plan, FieldStack, str]) -> None:
            plan, fields, note = result
            after = self.snapshot()
            after.update(plan=plan, fields=fields)
            self._push_state("Plan trajectories", after)
            self._select_planned()
            registry = approach_registry()
            key = plan.suggestion.approach if plan.suggestion else None
            text = (
                f"Suggested: {registry[key].label if key in registry else key}"
                if key
                else "No approach is feasible with these margins"
            )
            self.message.emit(f"{text}; {note}" if note else text)
            self.step_done.emit("plan")
            if on_done is not None:
                on_done()

        return self._run("plan", task, "Planning trajectories", done)

    def set_needles_mode(self, mode: str, *, on_done: Callable[[], None] | None = None) -> bool:
        """How many needles: ``"auto"`` (a second one for a lesion over 3 cm when one cannot
        fill it), ``"1"`` or ``"2"``; re-runs only the multi-needle step on the current plan
        (off the GUI thread, one undo step). Without a plan it is kept for the next search.
        """
        if mode not in NEEDLE_MODES:
            raise SessionError(f"the number of needles must be auto, 1 or 2, got {mode!r}")
        if self.plan is None:
            self.needles_mode = mode
            self.changed.emit()
            return False
        case = self._need_case()
        if case.anatomy is None or case.masks is None or case.lesion is None:
            raise SessionError("find the anatomy and grow the lesion, then plan again")
        base, fields, options = self.plan, self.fields, self.plan_options
        work = _work_copy(case)

        def task(
            progress: Callable[[float, str], None], _cancel: Callable[[], bool]
        ) -> tuple[Plan, FieldStack, str]:
            stack = fields if fields is not None else build_fields(work)
            progress(0.2, "second needle")
            plan, note = multi_needle_step(work, base, options, stack, mode)
            plan = dataclasses.replace(plan, view_state={**plan.view_state, "needles": mode})
            return plan, stack, note

        def done(result: tuple[Plan, FieldStack, str]) -> None:
            plan, stack, note = result
            after = self.snapshot()
            after.update(plan=plan, fields=stack)
            self._push_state(f"Needles: {mode}", after)
            self._select_planned()
            self.message.emit(note or _needles_note(plan))
            self.step_done.emit("needles")
            if on_done is not None:
                on_done()

        return self._run("needles", task, "Planning the needles", done)

    def _run(self, name: str, task: Callable[..., Any], title: str, done: Callable) -> bool:
        if self.runner.busy:
            raise SessionError(f"wait for '{self.runner.name}' to finish (or cancel it) first")

        def failed(exc: object) -> None:
            self.error.emit(title, exc)

        return self.runner.start(name, task, label=title, on_done=done, on_error=failed)

    def _push_state(self, text: str, after: dict[str, Any]) -> None:
        self.undo_stack.push(StateCommand(self, self.snapshot(), after, text))

    def _need_case(self) -> Case:
        if self.case is None:
            raise SessionError("open a study first (File > Open DICOM folder, or the sample)")
        return self.case

    # == selection and needles ==================================================================
    def select(self, key: str) -> None:
        """Select approach ``key`` ('' clears); its needle becomes the chosen trajectory."""
        key = key if self.candidate(key) is not None else ""
        if key == self.selected:
            return
        self.selected = key
        self.selection_changed.emit(key)

    def _select_planned(self) -> None:
        """Select the first needle of a two-needle plan, else the suggested approach."""
        plan = self.plan
        if self.block_keys():
            self.select(self.block_keys()[0])
        elif plan is not None and plan.suggestion is not None and plan.suggestion.approach:
            self.select(plan.suggestion.approach)

    def _keep_selection(self) -> None:
        if self.selected and self.candidate(self.selected) is None:
            self.selected = ""
            self.selection_changed.emit("")

    def rescore(
        self,
        key: str,
        entry_lps: np.ndarray,
        target_lps: np.ndarray,
        *,
        needle: str | None = None,
        margins: Margins | None = None,
    ) -> Candidate:
        """Score a needle of approach ``key`` at new points (no state change; ~ms)."""
        if self.fields is None or self.case is None or self.plan is None:
            raise SessionError("plan the trajectories first (step 3)")
        old = self.candidate(key)
        approach = self.approach_of(key)
        metrics = self.case.metrics
        centroid = None if metrics is None else np.asarray(metrics.centroid_lps, float)
        cand = score_trajectory(
            np.asarray(entry_lps, float),
            np.asarray(target_lps, float),
            needle or (old.needle if old is not None else self.plan.needle),
            fields=self.fields,
            margins=margins or self.plan.margins,
            approach=approach if approach in approach_registry() else None,
            lesion_centroid=centroid,
            side=None if old is None else old.side,
            bone_entry_lps=None,
        )
        if old is not None:
            cand = dataclasses.replace(cand, bone_entry_lps=None, score=old.score)
        return cand

    def preview_needle(self, index: int, entry_lps: np.ndarray, target_lps: np.ndarray) -> None:
        """Live re-score while a handle is dragged: emits :attr:`needle_preview`."""
        keys = self.needle_keys()
        if not 0 <= index < len(keys):
            return
        cand = self.rescore(keys[index], entry_lps, target_lps)
        self.needle_preview.emit(keys[index], cand)

    def move_needle(self, index: int, entry_lps: np.ndarray, target_lps: np.ndarray) -> None:
        """Commit a dragged needle (one undo step)."""
        keys = self.needle_keys()
        if not 0 <= index < len(keys):
            return
        key = keys[index]
        cand = self.rescore(key, entry_lps, target_lps)
        self.set_candidate(key, cand, text=f"Move {self.needle_label(key)}", manual=True)

    def set_candidate(self, key: str, cand: Candidate, *, text: str, manual: bool) -> None:
        """Replace the best candidate of ``key`` (or a block needle) in a new plan (one undo
        step)."""
        assert self.plan is not None
        number = block_number(key)
        if number is not None:
            plan = self._plan_with_block_needle(self.plan, number, cand, manual=manual)
            self.push_plan(plan, text)
            return
        idx = self.plan.best_by_approach[key]["candidate"]
        cands = list(self.plan.candidates)
        cands[idx] = cand
        view = dict(self.plan.view_state)
        edited = sorted(set(view.get("edited", [])) | ({key} if manual else set()))
        view["edited"] = edited
        plan = dataclasses.replace(self.plan, candidates=tuple(cands), view_state=view)
        if key == self.selected or (plan.suggestion and plan.suggestion.approach == key):
            plan = dataclasses.replace(plan, trajectories=(_trajectory(cand, key, manual),))
        self.push_plan(plan, text)

    def _plan_with_block_needle(
        self, plan: Plan, number: int, cand: Candidate, *, manual: bool
    ) -> Plan:
        """``plan`` with needle ``number`` of its block replaced and the block re-measured."""
        multi = plan.multi_needle
        if multi is None or not 1 <= number <= len(multi.needles):
            raise SessionError(f"the plan has no needle {number}")
        assert self.case is not None
        multi = rescore_block(self.case, multi, number, cand, manual=manual)
        trajectories = list(plan.trajectories)
        if len(trajectories) == len(multi.needles):
            trajectories[number - 1] = dataclasses.replace(
                _trajectory(cand, cand.approach, manual),
                source="manual" if manual else trajectories[number - 1].source,
            )
        view = dict(plan.view_state)
        if manual:
            view["edited"] = sorted(set(view.get("edited", [])) | {block_key(number)})
        return dataclasses.replace(
            plan, multi_needle=multi, trajectories=tuple(trajectories), view_state=view
        )

    def push_plan(self, plan: Plan, text: str) -> None:
        """Make ``plan`` the current plan as one undo step."""
        if self.plan is None:
            raise SessionError("plan the trajectories first (step 3)")
        self.undo_stack.push(PlanCommand(self, self.plan, plan, text))

    def set_plan(self, plan: Plan | None) -> None:
        """Used by undo commands: replace the plan and notify."""
        self.plan = plan
        self._sync_options()
        self._keep_selection()
        self.plan_changed.emit()

    def choose_trajectory(self, key: str) -> None:
        """Make the best needle of ``key`` the plan's chosen trajectory (one undo step)."""
        cand = self.candidate(key)
        if block_number(key) is not None:
            raise SessionError(
                f"{self.needle_label(key)} belongs to the plan's needles already: both needles "
                "of the block are its trajectories (Needles: 1 goes back to one needle)"
            )
        if cand is None or self.plan is None:
            raise SessionError(f"{key} has no feasible needle to choose")
        manual = key in self.plan.view_state.get("edited", [])
        plan = dataclasses.replace(self.plan, trajectories=(_trajectory(cand, key, manual),))
        self.push_plan(plan, f"Choose {key}")

    def set_margins(self, margins: Margins) -> None:
        """New margins: every shown needle is re-scored against them (one undo step)."""
        if self.plan is None:
            self.plan_options = dataclasses.replace(self.plan_options, margins=margins)
            self.changed.emit()
            return
        if margins == self.plan.margins:
            return
        cands = list(self.plan.candidates)
        block: list[tuple[int, Candidate]] = []
        for key in self.needle_keys():
            c = self.candidate(key)
            assert c is not None
            new = self.rescore(
                key, np.array(c.skin_entry_lps), np.array(c.target_lps), margins=margins
            )
            number = block_number(key)
            if number is None:
                cands[self.plan.best_by_approach[key]["candidate"]] = new
            else:
                block.append((number, new))
        self.plan_options = dataclasses.replace(self.plan_options, margins=margins)
        plan = dataclasses.replace(self.plan, margins=margins, candidates=tuple(cands))
        for number, new in block:
            plan = self._plan_with_block_needle(plan, number, new, manual=False)
        self.push_plan(plan, "Change margins")

    def set_needle(self, needle_id: str) -> None:
        """Use another needle for the selected trajectory (re-scored; one undo step)."""
        get_needle(needle_id)  # validates the id
        self.plan_options = dataclasses.replace(self.plan_options, needle_id=needle_id)
        key = self.selected
        if self.plan is None or not key:
            self.changed.emit()
            return
        c = self.candidate(key)
        assert c is not None
        new = self.rescore(
            key, np.array(c.skin_entry_lps), np.array(c.target_lps), needle=needle_id
        )
        self.set_candidate(key, new, text=f"Needle {needle_id}", manual=False)

    # == anatomy edits ==========================================================================
    def move_landmark(self, ident: str, lps: np.ndarray) -> None:
        """Move a landmark (one undo step)."""
        case = self._need_case()
        if case.anatomy is None:
            raise SessionError("find the anatomy first: there are no landmarks to move")
        old = self.landmarks().get(ident)
        if old is None:
            raise SessionError(f"there is no landmark {ident!r}")
        self.undo_stack.push(LandmarkCommand(self, ident, old, np.asarray(lps, float)))

    def place_landmark(self, ident: str, lps: np.ndarray) -> None:
        """Used by undo commands: put a landmark at ``lps``."""
        assert self.case is not None and self.case.anatomy is not None
        name = foramen_name(ident)
        if name is not None:
            self.case.anatomy.move_foramen(name, lps)
        elif ident == ENDPLATE_ID:
            self.case.anatomy.set_endplate(center_lps=lps)
        else:
            raise SessionError(f"there is no landmark {ident!r}")

    def paint_stroke(
        self, centres: list[np.ndarray], radius_mm: float, *, erase: bool, target: str
    ) -> int:
        """Paint or erase a brush stroke in one mask (one undo step); voxels changed.

        ``target`` is an anatomy mask name (``"sacrum"``, ``"canal"``, ...), a foramen name
        (``"left S1"``: painted into the foramina mask), or ``"lesion"``.
        """
        case = self._need_case()
        pts = [np.asarray(c, float).reshape(3) for c in centres]
        if not pts:
            return 0
        if target == "lesion":
            if case.lesion is None:
                raise SessionError("grow the lesion first, then correct it with the brush")
            mask = case.lesion.mask.array
            grid = case.lesion.mask
            before = mask.copy()
            for p in pts:
                _paint_ball(mask, grid, p, radius_mm, 0 if erase else 1)
        else:
            if case.anatomy is None or case.masks is None:
                raise SessionError("find the anatomy first, then correct it with the brush")
            name, value = _brush_target(target)
            mask = case.anatomy.mask(name)
            before = mask.copy()
            self._quiet = True  # one notification for the whole stroke (by the command)
            try:
                for p in pts:
                    if erase and name == "foramina":
                        current = _ball_values(mask, case.masks.image, p, radius_mm)
                        if not np.any(current == value):
                            continue
                    case.anatomy.paint(name, p, radius_mm, 0 if erase else value)
            finally:
                self._quiet = False
        changed = np.nonzero(before != mask)
        if len(changed[0]) == 0:
            return 0
        old_values = before[changed]
        new_values = mask[changed]
        mask[changed] = old_values  # the command applies it
        self.undo_stack.push(
            BrushCommand(
                self, target, changed, old_values, new_values, "Erase" if erase else "Paint"
            )
        )
        return int(len(changed[0]))

    def brush_array(self, target: str) -> np.ndarray:
        """The live mask array a brush command edits."""
        assert self.case is not None
        if target == "lesion":
            assert self.case.lesion is not None
            return self.case.lesion.mask.array
        assert self.case.anatomy is not None
        return self.case.anatomy.mask(_brush_target(target)[0])

    def masks_edited(self, target: str) -> None:
        """Used by brush commands: re-derive what depends on the edited mask and notify."""
        assert self.case is not None
        self._labels = None
        if target == "lesion":
            if self.case.lesion is not None:
                self.case.metrics = self.case.measure_lesion()
            self.lesion_changed.emit()
        else:
            self._zones = None
            if self.case.anatomy is not None:
                # Recompute what derives from the masks (the zone map); one notification.
                self._quiet = True
                try:
                    self.case.anatomy.set_endplate()
                finally:
                    self._quiet = False
            self.anatomy_changed.emit()
        if self.plan is not None:
            self.plan_stale = True

    # == persistence ============================================================================
    def to_state(self) -> dict[str, Any]:
        """JSON-ready session record (how to reopen the study, edits, plan, views)."""
        c = self.case
        return {
            "schema": SESSION_SCHEMA,
            "open": dict(self.open_info),
            "grow": {
                "mode": self.grow_options.mode,
                "band": None
                if self.grow_options.band_hu is None
                else list(self.grow_options.band_hu),
            },
            "seed_lps": None
            if c is None or c.lesion is None
            else [float(v) for v in c.lesion.seed_lps],
            "anatomy": None if c is None or c.anatomy is None else c.anatomy.to_json(),
            "plan_options": {
                "needle_id": self.plan_options.needle_id,
                "margins": self.plan_options.margins.to_json(),
                "with_rfa": self.plan_options.with_rfa,
                "needles": self.needles_mode,
            },
            "selected": self.selected,
            "plan_path": None if self.plan_path is None else str(self.plan_path),
            "view": dict(self.view_state),
        }

    def mask_arrays(self) -> dict[str, np.ndarray]:
        """Mask arrays needed to restore the exact edits (anatomy crop masks and the lesion)."""
        c = self.case
        out: dict[str, np.ndarray] = {}
        if c is None:
            return out
        if c.anatomy is not None and c.masks is not None:
            for name in c.anatomy.mask_names:
                out[f"anatomy/{name}"] = c.anatomy.mask(name)
        if c.lesion is not None:
            out["lesion"] = c.lesion.mask.array
        return out

    def plan_for_saving(self) -> Plan:
        """The current plan with the session record in its view state."""
        if self.plan is None:
            raise SessionError("there is no plan to save yet: run the trajectory search first")
        view = dict(self.plan.view_state)
        view.update(self.view_state)
        view["session"] = self.to_state()
        return dataclasses.replace(self.plan, view_state=view)

    def mark_saved(self) -> None:
        """The current state is on disk."""
        self.undo_stack.setClean()

    def restore(
        self,
        state: dict[str, Any],
        *,
        masks: dict[str, np.ndarray] | None = None,
        plan: Plan | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> bool:
        """Rebuild a session from :meth:`to_state` (and mask arrays, a plan) off the GUI thread.

        Reopens the study, redoes the anatomy (then applies the saved landmarks and masks),
        the lesion (saved mask, or regrown from the seed) and the distance fields.
        """
        if not isinstance(state, dict) or state.get("schema") != SESSION_SCHEMA:
            raise SessionError("this is not a sacroplan session record; it cannot be restored")
        info = dict(state.get("open") or {})
        if info.get("kind") not in ("sample", "path"):
            raise SessionError("the session does not say which study it belongs to")
        arrays = masks or {}

        def task(
            progress: Callable[[float, str], None], cancel: Callable[[], bool]
        ) -> tuple[Case, FieldStack | None]:
            progress(0.02, "reopening the study")
            if info["kind"] == "sample":
                case = Case.sample(
                    lesion=str(info.get("lesion", "left_ala_s1")),
                    modality=str(info.get("modality", "ct")),
                    spacing_mm=tuple(float(v) for v in info.get("spacing_mm", (1, 1, 1))),
                )
            else:
                path = str(info["path"])
                if not Path(path).exists():
                    raise SessionError(
                        f"the study of this plan is no longer at {path}; open it from its new "
                        "place, then load the plan again"
                    )
                case = Case.open(path, series_uid=info.get("series_uid"))
            if state.get("anatomy"):
                progress(0.2, "anatomy")
                case.find_anatomy(progress=lambda f, t: progress(0.2 + 0.5 * f, t), cancel=cancel)
                _apply_anatomy(case, state["anatomy"], arrays)
            seed = state.get("seed_lps")
            if seed is not None:
                progress(0.75, "lesion")
                grow = state.get("grow") or {}
                band = grow.get("band")
                opts = GrowOptions(
                    mode=grow.get("mode", "auto"), band_hu=None if band is None else tuple(band)
                )
                case.grow_lesion(np.asarray(seed, float), options=opts)
                saved = arrays.get("lesion")
                arr = None if case.lesion is None else case.lesion.mask.array
                if saved is not None and arr is not None and saved.shape == arr.shape:
                    arr[...] = saved
                    case.metrics = case.measure_lesion()
            fields = None
            if plan is not None and case.masks is not None and case.lesion is not None:
                progress(0.85, "distance fields")
                fields = build_fields(case)
            return case, fields

        def done(result: tuple[Case, FieldStack | None]) -> None:
            case, fields = result
            self.set_case(case, info)
            grow = state.get("grow") or {}
            band = grow.get("band")
            self.grow_options = GrowOptions(
                mode=grow.get("mode", "auto"), band_hu=None if band is None else tuple(band)
            )
            po = state.get("plan_options") or {}
            try:
                self.plan_options = PlanOptions(
                    needle_id=po.get("needle_id"),
                    margins=Margins.from_json(po["margins"]) if "margins" in po else Margins(),
                    with_rfa=bool(po.get("with_rfa", False)),
                )
            except (SacroplanError, KeyError, TypeError):
                self.plan_options = PlanOptions()
            mode = str(po.get("needles", "auto"))
            self.needles_mode = mode if mode in NEEDLE_MODES else "auto"
            self.view_state = dict(state.get("view") or {})
            if plan is not None:
                self.plan = plan
                self.fields = fields
                self._sync_options()
                self.plan_changed.emit()
                self.select(str(state.get("selected") or ""))
            pp = state.get("plan_path")
            self.plan_path = Path(pp) if pp else None
            self.changed.emit()
            self.message.emit("Session restored")
            self.step_done.emit("restore")
            if on_done is not None:
                on_done()

        return self._run("restore", task, "Restoring the session", done)


# == helpers ====================================================================================
def _work_copy(case: Case) -> Case:
    """A shallow copy a worker may fill in without touching the shown case."""
    return dataclasses.replace(case, notes=list(case.notes), timings_s=dict(case.timings_s))


def _trajectory(cand: Candidate, key: str, manual: bool) -> Trajectory:
    return Trajectory(
        entry_lps=cand.skin_entry_lps,
        target_lps=cand.target_lps,
        needle=cand.needle,
        approach=key,
        source="manual" if manual else "suggested",
    )


def without_block(plan: Plan) -> Plan:
    """``plan`` without its multi-needle block: one chosen trajectory, the suggested one."""
    if plan.multi_needle is None:
        return plan
    view = dict(plan.view_state)
    if "edited" in view:
        view["edited"] = [k for k in view["edited"] if block_number(str(k)) is None]
    trajectories = plan.trajectories
    sug = plan.suggestion
    if len(plan.multi_needle.needles) > 1:
        trajectories = ()
        if sug is not None and sug.approach:
            idx = plan.best_by_approach.get(sug.approach, {}).get("candidate", sug.candidate)
            manual = sug.approach in view.get("edited", [])
            trajectories = (_trajectory(plan.candidates[idx], sug.approach, manual),)
    return dataclasses.replace(plan, multi_needle=None, trajectories=trajectories, view_state=view)


def multi_needle_step(
    case: Case, plan: Plan, options: PlanOptions, fields: FieldStack, mode: str
) -> tuple[Plan, str]:
    """The multi-needle decision of ``sacroplan plan`` on a single-needle plan.

    ``mode`` ``"auto"`` looks for a second needle only for a lesion over 3 cm (the cohort's
    threshold; the pair search costs as much again as the plan), ``"1"`` or ``"2"`` ask for
    that many. A :class:`~planning.planner.PlanningError` leaves the single-needle plan.

    Returns
    -------
    (Plan, str)
        The plan (with its ``multi_needle`` block when one was planned) and a status note
        ('' when there is nothing to say).
    """
    base = without_block(plan)
    large = case.metrics is not None and bool(case.metrics.diameter_over_30mm)
    if mode == "auto" and not large:
        return base, ""
    if base.suggestion is None or not base.suggestion.approach:
        return base, "one needle: no approach is feasible with these margins"
    try:
        multi = plan_multi_needle(
            case,
            plan=base,
            options=options,
            fields=fields,
            needles=None if mode == "auto" else int(mode),
        )
    except SacroplanError as exc:  # PlanningError and the like: the single-needle plan stands
        return base, f"one needle planned ({exc})"
    return with_multi_needle(base, multi), _needles_note(with_multi_needle(base, multi))


def _needles_note(plan: Plan) -> str:
    multi = plan.multi_needle
    if multi is None:
        return "One needle (a second one is looked for only for lesions over 3 cm)"
    n = len(multi.needles)
    kind = "" if multi.kind == "single" else f" ({multi.kind})"
    return (
        f"{n} needle{'s' if n > 1 else ''}{kind}: cement reaches {100 * multi.coverage:.0f} % "
        "of the lesion"
    )


def needle_words(cand: Candidate, label: str) -> str:
    """One needle in plain words: approach, side, needle, clearances, bone ahead, depth."""
    od, exact = cand.needle_od_mm, cand.clearance_mm.exact
    registry = approach_registry()
    name = registry[cand.approach].label if cand.approach in registry else cand.approach
    parts = [
        f"{label}: {name} ({cand.side}), {cand.needle}",
        f"{clearance_text(cand.clearance_mm.foramina, od, exact=exact)} from the nearest foramen",
        f"{clearance_text(cand.clearance_mm.canal, od, exact=exact)} from the canal",
    ]
    if cand.tip_to_anterior_cortex_mm is not None:
        parts.append(f"{cand.tip_to_anterior_cortex_mm:.1f} mm of bone ahead of the tip")
    parts.append(f"{cand.skin_to_target_mm:.0f} mm skin to tip")
    if cand.violations:
        parts.append("NOT FEASIBLE: " + "; ".join(cand.violations))
    return ", ".join(parts)


def rescore_block(
    case: Case, multi: MultiNeedlePlan, number: int, cand: Candidate, *, manual: bool
) -> MultiNeedlePlan:
    """The block with needle ``number`` (1-based) replaced by ``cand`` and re-measured.

    The cement of each needle stays as planned; its cloud, the lesion coverage, the filling
    degree, each needle's reach and the gaps between the needles are computed again with the
    planner's cement-spread model (:mod:`planning.multi_needle`).
    """
    placed = list(multi.needles)
    placed[number - 1] = dataclasses.replace(placed[number - 1], candidate=cand)
    opts = multi.options
    region = spread_region_of(case, margin_mm=opts.region_margin_mm)
    clouds = []
    for p in placed:
        tip = np.asarray(p.candidate.target_lps, float)
        entry = np.asarray(p.candidate.skin_entry_lps, float)
        clouds.append(
            cement_cloud(region, tip, tip - entry, p.cement_ml, elongation=opts.elongation)
        )
    placed = [
        dataclasses.replace(
            p, reaches_ml=float(np.count_nonzero(c & region.in_lesion)) * region.voxel_ml
        )
        for p, c in zip(placed, clouds, strict=True)
    ]
    coverage = lesion_coverage(region, clouds)
    filling = filling_degree(region, clouds)
    tip_gap = path_gap = None
    for a in range(len(placed)):
        for b in range(a + 1, len(placed)):
            ca, cb = placed[a].candidate, placed[b].candidate
            ta, tb = np.asarray(ca.target_lps, float), np.asarray(cb.target_lps, float)
            ea, eb = np.asarray(ca.skin_entry_lps, float), np.asarray(cb.skin_entry_lps, float)
            gap = float(np.linalg.norm(ta - tb))
            path = segment_distance_mm(ea, ta, eb, tb)
            tip_gap = gap if tip_gap is None else min(tip_gap, gap)
            path_gap = path if path_gap is None else min(path_gap, path)
    label = placed[number - 1].label
    why = f"{label} moved by hand" if manual else f"{label} re-scored"
    reasons = [
        f"{why}: the {len(placed)} needles with {multi.cement_total_ml:.1f} mL of cement now "
        f"reach {100 * coverage:.0f} % of the {multi.lesion_ml:.1f} mL lesion "
        f"({100 * coverage / multi.attainable if multi.attainable else 0:.0f} % of what the "
        f"cement can fill) and spread over {100 * filling:.0f} % of its largest diameter"
    ]
    if tip_gap is not None and path_gap is not None:
        line = (
            f"the tips are {tip_gap:.0f} mm apart and the needles at least {path_gap:.1f} mm "
            f"apart along their whole length (limits {opts.min_tip_gap_mm:.0f} and "
            f"{opts.min_path_gap_mm:.0f} mm)"
        )
        if tip_gap < opts.min_tip_gap_mm or path_gap < opts.min_path_gap_mm:
            line += ": TOO CLOSE, move a needle away"
        reasons.append(line)
    reasons.extend(needle_words(p.candidate, p.label) for p in placed)
    return dataclasses.replace(
        multi,
        needles=tuple(placed),
        coverage=min(1.0, coverage),
        filling=min(1.0, filling),
        tip_gap_mm=tip_gap,
        path_gap_mm=path_gap,
        reasons=tuple(reasons),
    )


def _inside(volume: Volume, lps: np.ndarray) -> bool:
    ijk = volume.world_to_index(np.asarray(lps, float).reshape(1, 3))[0]
    size = np.asarray(volume.size, float)
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= size - 0.5))


def _brush_target(target: str) -> tuple[str, int | bool]:
    """Mask name and paint value of a brush target."""
    if target in FORAMEN_NAMES:
        return "foramina", FORAMEN_NAMES.index(target) + 1
    return target, True


def _ball_mask(grid: Volume, center: np.ndarray, radius_mm: float) -> tuple[tuple, np.ndarray]:
    """The block around a ball and the ball's voxels in it (mm honoured, any direction)."""
    r = float(radius_mm)
    corners = center + np.array(
        [[a, b, c] for a in (-r, r) for b in (-r, r) for c in (-r, r)], dtype=np.float64
    )
    ijk = grid.world_to_index(corners)
    size = np.asarray(grid.size)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return (), np.zeros(0, bool)
    kk, jj, ii = np.meshgrid(
        *(np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1], strict=True)), indexing="ij"
    )
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    inside = np.sum((grid.index_to_world(idx) - center) ** 2, axis=1) <= r * r + 1e-9
    block = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return block, inside.reshape(kk.shape)


def _paint_ball(
    mask: np.ndarray, grid: Volume, center: np.ndarray, radius_mm: float, value: int
) -> None:
    block, inside = _ball_mask(grid, center, radius_mm)
    if block:
        mask[block][inside] = value


def _ball_values(
    mask: np.ndarray, grid: Volume, center: np.ndarray, radius_mm: float
) -> np.ndarray:
    block, inside = _ball_mask(grid, center, radius_mm)
    return mask[block][inside] if block else np.zeros(0, mask.dtype)


def _apply_anatomy(case: Case, data: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Put saved landmarks and (when their shapes fit) saved masks on a fresh anatomy."""
    assert case.masks is not None
    masks = case.masks.masks
    for key, arr in arrays.items():
        if key.startswith("anatomy/"):
            name = key.split("/", 1)[1]
            if name in masks and masks[name].shape == arr.shape:
                masks[name][...] = arr.astype(masks[name].dtype)
    case.anatomy = SacralAnatomy.from_json(data, masks=masks, grid=case.masks.image)


def sample_fields(fields: FieldStack, points_lps: np.ndarray) -> np.ndarray:
    """Trilinear samples of every channel of a field stack at points.

    Parameters
    ----------
    fields : FieldStack
    points_lps : (N, 3) float ndarray, mm, LPS

    Returns
    -------
    (N, C) float ndarray, mm (signed distance; large outside the stack's grid)
    """
    m = fields.index_from_world()
    pts = np.asarray(points_lps, float).reshape(-1, 3)
    ijk = pts @ m[:, :3].T + m[:, 3]
    k, j, i = fields.shape
    hi = np.array([i - 1, j - 1, k - 1], float)
    outside = np.any((ijk < 0) | (ijk > hi), axis=1)
    ijk = np.clip(ijk, 0, hi)
    base = np.minimum(np.floor(ijk).astype(int), (hi - 1).astype(int))
    frac = ijk - base
    n = fields.n_channels
    out = np.zeros((len(pts), n))
    for dk in (0, 1):
        for dj in (0, 1):
            for di in (0, 1):
                w = (
                    (frac[:, 0] if di else 1 - frac[:, 0])
                    * (frac[:, 1] if dj else 1 - frac[:, 1])
                    * (frac[:, 2] if dk else 1 - frac[:, 2])
                )
                v = fields.values[base[:, 2] + dk, base[:, 1] + dj, base[:, 0] + di, :n]
                out += w[:, None] * v.astype(np.float64)
    out *= QUANTUM_MM
    out[outside] = np.nan
    return out
