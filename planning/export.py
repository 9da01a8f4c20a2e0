"""Exports of a plan for other tools: 3D Slicer markups, label maps, and the plan's study.

* :func:`write_markups` writes the chosen needles as one 3D Slicer markups file
  (``.mrk.json``, schema ``markups-schema-v1.0.3``) holding one **line** per needle
  (``"needle 1 ..."``, ``"needle 2 ..."``; Slicer makes a node of each): two control points,
  the skin entry and the needle tip, in LPS millimetres with ``positionStatus``
  ``"defined"`` so that Slicer shows them in its slice views as well as in 3D. A
  multi-needle plan's lines say each needle's cement share. :func:`read_markups` reads such
  files back (LPS or RAS).
* :func:`open_plan_study` re-opens the study a plan was made on (or rebuilds the built-in
  sample), checks that it is the same grid, finds the anatomy again and restores the
  lesion mask recorded in the plan (or regrows it from the recorded seed): the report and
  the label-map and DICOM SEG exports draw on it.
* :func:`write_label_map` writes the lesion and anatomy labels as NIfTI on the study grid
  (codes of :class:`imaging.labels.Label`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imaging.atomic import atomic_path, atomic_write_text
from imaging.errors import LesionSegmentationError, SacroplanError, SegmentationError
from imaging.labels import Label
from imaging.volume import Volume
from planning.case import Case
from planning.needles import get_needle
from planning.plan import Plan, decode_mask

MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
#: Slicer's orientation of an LPS file's control points (identity in RAS).
_LPS_ORIENTATION = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
#: Colour of exported needles (suggested / placed by hand), RGB 0..1.
_COLOURS = {"suggested": [0.2, 0.85, 0.3], "manual": [1.0, 0.75, 0.1]}
SAMPLE_PREFIX = "sample:"


class ExportError(SacroplanError):
    """A plan cannot be exported as asked (no trajectory, no study, unwritable target)."""


class StudyNotFoundError(ExportError):
    """The study a plan was made on is no longer where the plan says (or it says nowhere)."""


class StudyMismatchError(ExportError):
    """What the plan names as its study is not usable: a relative path, something that is
    not a study, or a study on another grid."""


# -- Slicer markups --------------------------------------------------------------------------
@dataclass(frozen=True)
class MarkupsLine:
    """One line read from a markups file: its name and its two points in LPS mm."""

    name: str
    start_lps: tuple[float, float, float]
    end_lps: tuple[float, float, float]
    description: str = ""


def trajectory_name(index: int, approach: str | None, side: str | None = None) -> str:
    """Node name of a trajectory in Slicer (``"needle 1 posterior_short left"``)."""
    parts = [f"needle {index + 1}", approach or "manual"]
    if side:
        parts.append(side)
    return " ".join(parts)


def markups_line_json(
    start_lps: np.ndarray | tuple[float, float, float],
    end_lps: np.ndarray | tuple[float, float, float],
    *,
    name: str,
    description: str = "",
    color: tuple[float, float, float] | list[float] = (0.2, 0.85, 0.3),
    labels: tuple[str, str] = ("entry", "tip"),
) -> dict[str, Any]:
    """A Slicer markups document holding one line from ``start_lps`` to ``end_lps``.

    Parameters
    ----------
    start_lps, end_lps : (3,) float, mm, LPS
        The line's two control points (skin entry, needle tip).
    name : str
        Node name shown in Slicer.
    description : str
        Shown in Slicer's control point table.
    color : (3,) float
        RGB in 0..1.
    labels : (str, str)
        Labels of the two control points.

    Returns
    -------
    dict
        JSON-ready document conforming to ``markups-schema-v1.0.3``.

    Raises
    ------
    ExportError
        A point is not three finite numbers.
    """
    points = []
    for n, (p, label) in enumerate(zip((start_lps, end_lps), labels, strict=True)):
        xyz = [float(v) for v in np.asarray(p, dtype=float).reshape(-1)]
        if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
            raise ExportError(f"the {label} point of {name!r} is not three finite numbers")
        points.append(
            {
                "id": str(n + 1),
                "label": label,
                "description": description,
                "associatedNodeID": "",
                "position": xyz,
                "orientation": list(_LPS_ORIENTATION),
                "selected": True,
                "locked": True,
                "visibility": True,
                "positionStatus": "defined",
            }
        )
    length = float(np.linalg.norm(np.subtract(points[1]["position"], points[0]["position"])))
    return {
        "@schema": MARKUPS_SCHEMA_URL,
        "markups": [
            {
                "type": "Line",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": True,
                "fixedNumberOfControlPoints": True,
                "labelFormat": "%N-%d",
                "name": name,
                "controlPoints": points,
                "measurements": [
                    {
                        "name": "length",
                        "enabled": True,
                        "value": length,
                        "units": "mm",
                        "printFormat": "%-#4.4g%s",
                    }
                ],
                "display": {
                    "visibility": True,
                    "opacity": 1.0,
                    "color": [float(c) for c in color],
                    "selectedColor": [float(c) for c in color],
                    "propertiesLabelVisibility": True,
                    "pointLabelsVisibility": True,
                    "textScale": 3.0,
                    "glyphType": "Sphere3D",
                    "glyphScale": 1.0,
                    "sliceProjection": True,
                    "lineThickness": 0.2,
                },
            }
        ],
    }


def plan_markups(plan: Plan) -> dict[str, Any]:
    """One markups document holding a line per chosen needle of ``plan``, in order.

    The chosen needles are the plan's trajectories (both needles of a two-needle plan, see
    :func:`planning.multi_needle.with_multi_needle`); a line is named ``"needle N"`` followed
    by the approach and side.

    Raises
    ------
    ExportError
        The plan has no chosen trajectory.
    """
    if not plan.trajectories:
        raise ExportError(
            "the plan has no chosen trajectory to export (no approach was feasible, or none "
            "was chosen): choose or place a needle first"
        )
    sides = _sides_of(plan)
    shares = _cement_shares(plan)
    lines: list[dict[str, Any]] = []
    for n, t in enumerate(plan.trajectories):
        needle = _needle_label(t.needle)
        length = float(np.linalg.norm(np.subtract(t.target_lps, t.entry_lps)))
        description = (
            f"{t.approach or 'manual'}, {needle}, {length:.1f} mm skin to tip ({t.source})"
        )
        share = shares.get((t.entry_lps, t.target_lps))
        if share is not None:
            description += f", {share:.2f} mL of cement"
        doc = markups_line_json(
            t.entry_lps,
            t.target_lps,
            name=trajectory_name(n, t.approach, sides.get((t.entry_lps, t.target_lps))),
            description=description,
            color=_COLOURS.get(t.source, _COLOURS["manual"]),
        )
        lines.extend(doc["markups"])
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": lines}


def write_markups(plan: Plan, out_path: str | os.PathLike[str]) -> list[Path]:
    """Write the plan's chosen needles as one Slicer markups file, a line per needle.

    Returns
    -------
    list of Path
        The file written (one).

    Raises
    ------
    ExportError
        No chosen trajectory, or the folder does not exist or cannot be written.
    """
    doc = plan_markups(plan)
    path = Path(out_path)
    _check_folder(path, "--markups")
    try:
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return [path]


def read_markups(path: str | os.PathLike[str]) -> list[MarkupsLine]:
    """Read the lines of a Slicer markups file, points converted to LPS mm.

    Raises
    ------
    ExportError
        Not a markups JSON file, or a line without two defined control points.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        markups = data["markups"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{p} is not a readable Slicer markups file ({exc})") from exc
    lines: list[MarkupsLine] = []
    for m in markups:
        if m.get("type") != "Line":
            continue
        flip = np.array([-1.0, -1.0, 1.0]) if m.get("coordinateSystem") == "RAS" else np.ones(3)
        pts = [
            tuple(float(v) for v in np.asarray(cp["position"], dtype=float) * flip)
            for cp in m.get("controlPoints", [])
            if cp.get("positionStatus", "defined") == "defined"
        ]
        if len(pts) != 2:
            raise ExportError(f"{p}: the line {m.get('name')!r} has no two defined points")
        desc = m["controlPoints"][0].get("description", "")
        lines.append(MarkupsLine(m.get("name", ""), pts[0], pts[1], desc))  # type: ignore[arg-type]
    return lines


def _sides_of(plan: Plan) -> dict[tuple[Any, Any], str | None]:
    out = {(c.skin_entry_lps, c.target_lps): c.side for c in plan.candidates}
    if plan.multi_needle is not None:
        for n in plan.multi_needle.needles:
            out[(n.candidate.skin_entry_lps, n.candidate.target_lps)] = n.candidate.side
    return out


def _cement_shares(plan: Plan) -> dict[tuple[Any, Any], float]:
    """Cement per needle (mL) of a multi-needle plan, by (entry, tip)."""
    if plan.multi_needle is None or len(plan.multi_needle.needles) < 2:
        return {}
    return {
        (n.candidate.skin_entry_lps, n.candidate.target_lps): n.cement_ml
        for n in plan.multi_needle.needles
    }


def _needle_label(needle_id: str) -> str:
    try:
        return get_needle(needle_id).label
    except SacroplanError:
        return needle_id


def _check_folder(path: Path, option: str) -> None:
    if not path.parent.is_dir():
        raise ExportError(f"the folder of {option} does not exist: {path.parent}")
    if path.is_dir():
        raise ExportError(f"{option} {path} is a folder, not a file")


# -- the plan's study --------------------------------------------------------------------------
@dataclass
class PlanStudy:
    """The study of a plan, re-opened, with its anatomy and the plan's lesion.

    Attributes
    ----------
    case : Case
        The re-opened case (anatomy found again; lesion restored).
    lesion_mask : Volume or None
        uint8 lesion mask on the study grid (1 = lesion).
    labels : Volume
        Label map on the study grid (:class:`imaging.labels.Label` codes, lesion included).
    notes : list of str
        What could not be restored exactly (plain sentences).
    """

    case: Case
    lesion_mask: Volume | None
    labels: Volume
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> Volume:
        """The study volume."""
        return self.case.image


def open_plan_study(
    plan: Plan, *, study: str | os.PathLike[str] | None = None, anatomy: bool = True
) -> PlanStudy:
    """Re-open the study ``plan`` was made on and restore its lesion.

    Parameters
    ----------
    plan : Plan
    study : path, optional
        Where the study is now (default: ``plan.case.source_path``). The built-in sample
        (``"sample:<site>"``) is generated again.
    anatomy : bool
        Find the anatomy again (needed for the overlays and the anatomy labels).

    Returns
    -------
    PlanStudy

    Raises
    ------
    StudyNotFoundError
        No study recorded or given, or the recorded path does not exist any more.
    StudyMismatchError
        The recorded path is relative, a file system root or not a regular file or folder,
        or the study read there is not on the grid the plan records.
    StudyReadError
        The study cannot be read (nothing loadable there).
    """
    ref = plan.case
    source = str(study) if study is not None else ref.source_path
    if not source:
        raise StudyNotFoundError(
            "the plan does not say which study it was made on: give the study folder"
        )
    if study is None and source.startswith(SAMPLE_PREFIX):
        case = _sample_case(plan, source[len(SAMPLE_PREFIX) :])
    else:
        path = Path(source)
        if study is None:
            _check_recorded_path(path)
        if not path.exists():
            raise StudyNotFoundError(
                f"the study of this plan is not at {source} any more: give its folder"
            )
        case = Case.open(source, series_uid=ref.series_uid)
    _check_grid(plan, case.image, source)
    notes: list[str] = []
    if anatomy:
        try:
            case.find_anatomy()
        except SegmentationError as exc:
            notes.append(f"anatomy not found again ({exc}): no anatomy overlays or labels")
    mask = _lesion_mask(plan, case, notes)
    labels = case.label_map()
    if mask is not None:
        arr = labels.array.copy()
        arr[mask.array > 0] = Label.LESION
        labels = labels.with_array(arr, modality="LABEL")
    return PlanStudy(case=case, lesion_mask=mask, labels=labels, notes=notes)


def _check_recorded_path(path: Path) -> None:
    """Refuse a study path from a plan that cannot safely be read as the plan's study."""
    if not path.is_absolute():
        raise StudyMismatchError(
            f"the plan names its study by a relative path ({path}), which says nothing about "
            "where it is now: give the study folder"
        )
    if path == Path(path.anchor):
        raise StudyMismatchError(
            f"the plan names the whole file system ({path}) as its study: give the study folder"
        )
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise StudyMismatchError(
            f"the plan names {path} as its study, which is not a file or folder: give the "
            "study folder"
        )


def _sample_case(plan: Plan, site: str) -> Case:
    from imaging.phantom import LESION_SITES

    if site not in LESION_SITES:
        raise StudyMismatchError(f"the plan names an unknown built-in sample {site!r}")
    grid = plan.case.grid
    spacing = tuple(grid["spacing_mm"]) if grid else (1.0, 1.0, 1.0)
    modality = (plan.case.modality or "CT").lower()
    return Case.sample(lesion=site, modality=modality, spacing_mm=spacing)  # type: ignore[arg-type]


def _check_grid(plan: Plan, image: Volume, source: str) -> None:
    grid = plan.case.grid
    if grid is None:
        return
    same = (
        list(image.size) == list(grid["size"])
        and np.allclose(image.spacing, grid["spacing_mm"], atol=1e-3)
        and np.allclose(image.origin, grid["origin_lps"], atol=1e-2)
        and np.allclose(image.direction.reshape(-1), grid["direction"], atol=1e-4)
    )
    if not same:
        raise StudyMismatchError(
            f"the study at {source} is not the one this plan was made on (its voxel grid "
            "differs): give the right study folder"
        )


def _lesion_mask(plan: Plan, case: Case, notes: list[str]) -> Volume | None:
    lesion = plan.lesion
    if lesion is None:
        return None
    image = case.image
    if lesion.get("mask") is not None:
        arr = decode_mask(lesion["mask"])
        if arr.shape != image.array.shape:
            raise StudyMismatchError(
                "the lesion recorded in the plan does not fit the study grid: give the study "
                "the plan was made on"
            )
        return image.with_array(arr.astype(np.uint8), modality="LABEL")
    seed = lesion.get("seed_lps")
    if seed is None:
        notes.append("the plan records no lesion mask or seed: the lesion is not shown")
        return None
    from imaging.lesion import GrowOptions

    band = lesion.get("band")
    mode = lesion.get("mode") or "auto"
    try:
        options = GrowOptions(mode=mode, band_hu=None if band is None else tuple(band))
        case.grow_lesion(np.asarray(seed, dtype=float), options=options)
    except LesionSegmentationError as exc:
        notes.append(f"the lesion could not be grown again from the plan's seed ({exc})")
        return None
    assert case.metrics is not None and case.lesion is not None
    planned = float(lesion.get("volume_ml", 0.0))
    if abs(case.metrics.volume_ml - planned) > max(0.05 * planned, 0.05):
        notes.append(
            f"the lesion was grown again from the plan's seed and measures "
            f"{case.metrics.volume_ml:.2f} mL, not the planned {planned:.2f} mL (edited by hand?)"
        )
    return case.lesion.mask


# -- label maps --------------------------------------------------------------------------------
def write_label_map(labels: Volume, out_path: str | os.PathLike[str]) -> Path:
    """Write a label map (NIfTI ``.nii``/``.nii.gz``, or any SimpleITK format) atomically.

    Parameters
    ----------
    labels : Volume
        Integer labels on the study grid (LPS; the NIfTI writer stores RAS as the format
        requires, so other tools see the same physical positions).
    out_path : path

    Raises
    ------
    ExportError
        The folder does not exist or the file cannot be written.
    """
    import SimpleITK as sitk

    out = Path(out_path)
    _check_folder(out, "--labels")
    image = labels.with_array(np.asarray(labels.array, dtype=np.uint8)).to_sitk()
    try:
        with atomic_path(out) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except (OSError, RuntimeError) as exc:
        raise ExportError(f"cannot write the label map {out}: {exc}") from exc
    return out


# -- clearance along a needle ------------------------------------------------------------------
@dataclass(frozen=True)
class ClearanceProfile:
    """Needle-surface clearances sampled along a trajectory, from the skin to the tip.

    Attributes
    ----------
    depth_mm : (N,) float ndarray
        Distance from the skin entry along the needle, mm.
    foramina_mm, canal_mm : (N,) float ndarray or None
        Clearance of the needle surface to the nearest foramen / the canal, mm (negative =
        the needle cuts into it); None when the structure was not found.
    in_bone : (N,) bool ndarray
        Whether the axis point lies inside the sacrum (lesion included).
    """

    depth_mm: np.ndarray
    foramina_mm: np.ndarray | None
    canal_mm: np.ndarray | None
    in_bone: np.ndarray


def clearance_profile(
    study: PlanStudy,
    entry_lps: np.ndarray | tuple[float, float, float],
    tip_lps: np.ndarray | tuple[float, float, float],
    *,
    needle_od_mm: float,
    step_mm: float = 0.5,
) -> ClearanceProfile | None:
    """Clearances along the needle, measured on the re-found anatomy as the planner does
    (signed distance fields in mm, the lumbar canal above the sacral one, trilinear
    sampling every ``step_mm``; beyond 40 mm the values are lower bounds).

    Returns None when the anatomy was not found.
    """
    from scipy import ndimage as ndi

    from geometry.distance import signed_distance_mm

    masks = study.case.masks
    if masks is None:
        return None
    crop = masks.image
    entry = np.asarray(entry_lps, dtype=float)
    tip = np.asarray(tip_lps, dtype=float)
    length = float(np.linalg.norm(tip - entry))
    n = max(int(np.ceil(length / step_mm)) + 1, 2)
    depth = np.linspace(0.0, length, n)
    points = entry + np.outer(depth / max(length, 1e-9), tip - entry)
    kji = crop.world_to_index(points)[:, ::-1].T
    radius = 0.5 * float(needle_od_mm)

    def sample(mask: np.ndarray) -> np.ndarray | None:
        if not mask.any():
            return None
        field_mm = signed_distance_mm(mask, crop.spacing, crop_margin_mm=40.0)
        return ndi.map_coordinates(field_mm, kji, order=1, mode="nearest")

    lesion = np.zeros(crop.array.shape, dtype=bool)
    if study.lesion_mask is not None:
        i0, j0, k0 = masks.crop_index
        k, j, i = crop.array.shape
        lesion = study.lesion_mask.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] > 0
    from planning.planner import canal_with_lumbar

    foramina = sample(masks.masks["foramina"] > 0)
    # as the planner measures it: the sacral canal with the lumbar canal above it
    canal = sample(canal_with_lumbar(masks.masks["canal"], crop))
    bone = sample(masks.masks["sacrum"] | lesion)
    return ClearanceProfile(
        depth_mm=depth,
        foramina_mm=None if foramina is None else foramina - radius,
        canal_mm=None if canal is None else canal - radius,
        in_bone=np.zeros(n, dtype=bool) if bone is None else bone < 0,
    )
