"""Simulated fluoroscopy for a plan: the per-patient C-arm views and what to draw on them.

This ties the C-arm angles of :mod:`planning.carm` (per-patient standard views, a needle's
bull's-eye) to the DRR engine of :mod:`imaging.drr`:

* :func:`plan_views` -- the AP, lateral, inlet and outlet views of the patient's sacrum
  (from the sacral anatomy; the inlet needs the anterior S1 cortex, found on the sacrum
  mask by :func:`anterior_s1_cortex_points`) and, for each needle, its bull's-eye and
  progression views, each as a :class:`FluoroView` (C-arm angles in words and a
  :class:`~imaging.drr.CArmGeometry`);
* :func:`overlays` -- the needles, foramina and lesion outline projected onto a view's
  detector, in pixel coordinates ``(col, row)``;
* :func:`render_views` -- the DRRs of a CT for those views (prepare the CT once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from geometry.carm_geometry import progression_direction
from imaging.drr import AttenuationVolume, CArmGeometry, Drr, render_drr
from imaging.errors import PlanningParameterError
from imaging.volume import Volume
from planning.anatomy import SacralAnatomy
from planning.carm import (
    STANDARD_VIEW_NAMES,
    CArmView,
    PatientPosition,
    bulls_eye_view,
    standard_views,
    view_for_detector_direction,
)

Needle = tuple[np.ndarray, np.ndarray]
_CORTEX_HALF_WIDTH_MM = 8.0
_CORTEX_DEPTH_MM = (3.0, 25.0)  # below the endplate, along -e_z
_CORTEX_BIN_MM = 2.0
_UP_SIGN = {"prone": 1.0, "supine": -1.0}  # sign of LPS y that points up


@dataclass(frozen=True)
class FluoroView:
    """One simulated C-arm view.

    Attributes
    ----------
    name : str
        ``"ap"``, ``"true_ap"``, ``"lateral"``, ``"inlet"``, ``"outlet"``, ``"bulls_eye_<n>"`` or
        ``"progression_<n>"`` (n = needle number from 1).
    carm : CArmView
        DICOM angles and the view in words.
    geometry : CArmGeometry
        Source, detector and isocentre for the DRR and the overlays.
    """

    name: str
    carm: CArmView
    geometry: CArmGeometry


def anterior_s1_cortex_points(anatomy: SacralAnatomy) -> np.ndarray | None:
    """Points on the anterior cortex of the S1 body near the midline.

    For 2 mm bands of height 3-25 mm below the S1 endplate (along the sacral frame's
    ``-e_z``), within 8 mm of the midsagittal plane, the most anterior sacrum voxel.

    Returns
    -------
    (N, 3) float ndarray, mm, LPS, or None
        None without a sacrum mask or with fewer than three bands found.
    """
    if anatomy.grid is None or "sacrum" not in anatomy.mask_names:
        return None
    kji = np.argwhere(anatomy.mask("sacrum"))
    if len(kji) == 0:
        return None
    world = anatomy.grid.index_to_world(kji[:, ::-1].astype(np.float64))
    f = anatomy.frame.to_frame(world)
    mid_x = float(anatomy.frame.to_frame(anatomy.midsagittal_plane[0])[0])
    depth = -f[:, 2]
    keep = (np.abs(f[:, 0] - mid_x) <= _CORTEX_HALF_WIDTH_MM) & (
        (depth >= _CORTEX_DEPTH_MM[0]) & (depth <= _CORTEX_DEPTH_MM[1])
    )
    if not keep.any():
        return None
    f, world = f[keep], world[keep]
    bins = np.floor(-f[:, 2] / _CORTEX_BIN_MM).astype(int)
    points = []
    for b in np.unique(bins):
        sel = np.flatnonzero(bins == b)
        points.append(world[sel[np.argmin(f[sel, 1])]])  # most anterior: smallest e_y
    return np.array(points) if len(points) >= 3 else None


def plan_views(
    anatomy: SacralAnatomy,
    *,
    isocenter_lps: np.ndarray,
    needles: list[Needle] | tuple[Needle, ...] = (),
    patient_position: PatientPosition = "prone",
    lateral_side: Literal["left", "right"] = "left",
    **geometry_options: object,
) -> dict[str, FluoroView]:
    """The per-patient standard views and each needle's bull's-eye and progression views.

    Parameters
    ----------
    anatomy : SacralAnatomy
        Endplate, sacral frame and (for the inlet view) the sacrum mask.
    isocenter_lps : (3,) float ndarray, mm, LPS
        Isocentre of the standard views (e.g. the lesion centre).
    needles : sequence of (entry_lps, tip_lps)
        Planned needles; the bull's-eye isocentre is the tip, the progression one the
        needle's middle.
    patient_position : {"prone", "supine"}
        Puts the detector on the side that is up.
    lateral_side : {"left", "right"}
        Detector side of the lateral view.
    **geometry_options
        :class:`~imaging.drr.CArmGeometry` fields (``sid_mm``, ``sod_mm``,
        ``detector_shape``, ``pixel_mm``).

    Returns
    -------
    dict of str to FluoroView
        ``"ap"`` (straight AP in the table frame: detector straight above the back when
        prone), the per-patient ``"true_ap"``, ``"lateral"``, ``"inlet"`` (left out when
        the anterior S1 cortex cannot be found) and ``"outlet"`` of
        :func:`planning.carm.standard_views`, then ``"bulls_eye_1"``, ``"progression_1"``,
        ... (the progression detector comes closest to the lateral side asked for, turned
        to the side that is up).

    Raises
    ------
    PlanningParameterError
        Bad points or options.
    """
    iso = np.asarray(isocenter_lps, dtype=np.float64)
    frame = anatomy.frame
    cortex = anterior_s1_cortex_points(anatomy)
    normal = anatomy.endplate_normal
    if patient_position not in _UP_SIGN:
        raise PlanningParameterError(
            f"patient position must be 'prone' or 'supine', got {patient_position!r}"
        )
    views: dict[str, FluoroView] = {}
    straight = view_for_detector_direction(
        np.array([0.0, _UP_SIGN[patient_position], 0.0]), patient_position=patient_position
    )
    straight = CArmView(
        straight.primary_deg, straight.secondary_deg, f"Straight AP (table frame): {straight.text}"
    )
    views["ap"] = FluoroView("ap", straight, _geometry(straight, iso, geometry_options))
    if cortex is not None:
        carm = standard_views(
            s1_endplate_normal=normal,
            e_x=frame.e_x,
            anterior_s1_cortex_points=cortex,
            patient_position=patient_position,
            lateral_side=lateral_side,
        )
    else:  # no mask: the inlet cannot be placed; the endplate stands in for its tangent
        carm = standard_views(
            s1_endplate_normal=normal,
            e_x=frame.e_x,
            anterior_s1_cortex_tangent=normal,
            patient_position=patient_position,
            lateral_side=lateral_side,
        )
        carm.pop("inlet")
    for name in STANDARD_VIEW_NAMES:
        if name in carm:
            views[name] = FluoroView(name, carm[name], _geometry(carm[name], iso, geometry_options))
    for n, (entry, tip) in enumerate(needles, start=1):
        e = np.asarray(entry, dtype=np.float64)
        t = np.asarray(tip, dtype=np.float64)
        be = bulls_eye_view(e, t, patient_position=patient_position)
        views[f"bulls_eye_{n}"] = FluoroView(
            f"bulls_eye_{n}", be, _geometry(be, t, geometry_options)
        )
        side = frame.e_x if lateral_side == "left" else -frame.e_x
        try:
            d = progression_direction(t - e, preferred_lps=side)
        except ValueError:
            d = progression_direction(t - e)
        if _UP_SIGN[patient_position] * d[1] < 0.0:  # same line of sight, detector kept up
            d = -d
        pv = view_for_detector_direction(d, patient_position=patient_position)
        pv = CArmView(pv.primary_deg, pv.secondary_deg, f"Progression of needle {n}: {pv.text}")
        views[f"progression_{n}"] = FluoroView(
            f"progression_{n}", pv, _geometry(pv, 0.5 * (e + t), geometry_options)
        )
    return views


def _geometry(view: CArmView, iso: np.ndarray, options: dict[str, object]) -> CArmGeometry:
    try:
        return CArmGeometry(iso, view.detector_direction_lps, **options)  # type: ignore[arg-type]
    except TypeError as exc:
        raise PlanningParameterError(f"unknown C-arm geometry option ({exc})") from exc


def overlays(
    geometry: CArmGeometry,
    *,
    needles: list[Needle] | tuple[Needle, ...] = (),
    anatomy: SacralAnatomy | None = None,
    lesion_mask: Volume | None = None,
    circle_points: int = 24,
) -> dict[str, np.ndarray]:
    """Plan objects projected onto a view's detector.

    Parameters
    ----------
    geometry : CArmGeometry
        The view.
    needles : sequence of (entry_lps, tip_lps)
        Drawn as ``"needle_<n>"``: (2, 2) pixel coordinates of entry and tip.
    anatomy : SacralAnatomy, optional
        Each foramen as ``"foramen <name>"``: the outline (``circle_points``, 2) of its
        opening circle (centre, radius, perpendicular to its axis or to the view).
    lesion_mask : Volume, optional
        The lesion mask; drawn as ``"lesion"``: the convex outline (M, 2) of its
        projected voxel centres.

    Returns
    -------
    dict of str to (N, 2) float ndarray
        Pixel coordinates ``(col, row)``.
    """
    out: dict[str, np.ndarray] = {}
    for n, (entry, tip) in enumerate(needles, start=1):
        out[f"needle_{n}"] = geometry.project_points(np.array([entry, tip], dtype=np.float64))
    if anatomy is not None:
        phi = np.linspace(0.0, 2.0 * np.pi, circle_points, endpoint=False)
        for name, f in anatomy.foramina.items():
            axis = geometry.detector_direction_lps if f.axis is None else np.asarray(f.axis)
            a = np.cross(axis, [1.0, 0.0, 0.0])
            if np.linalg.norm(a) < 1e-6:
                a = np.cross(axis, [0.0, 1.0, 0.0])
            a /= np.linalg.norm(a)
            b = np.cross(axis, a)
            b /= np.linalg.norm(b)
            ring = f.center_lps + f.radius_mm * (
                np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b
            )
            out[f"foramen {name}"] = geometry.project_points(ring)
    if lesion_mask is not None:
        kji = np.argwhere(np.asarray(lesion_mask.array) != 0)
        if len(kji):
            uv = geometry.project_points(lesion_mask.index_to_world(kji[:, ::-1].astype(float)))
            try:
                hull = ConvexHull(uv)
                out["lesion"] = uv[hull.vertices]
            except QhullError:
                out["lesion"] = uv[:1]
    return out


def render_views(
    volume: AttenuationVolume, views: dict[str, FluoroView], *, step_mm: float | None = None
) -> dict[str, Drr]:
    """DRRs of a prepared CT (:func:`imaging.drr.prepare_volume`) for every view."""
    return {name: render_drr(volume, v.geometry, step_mm=step_mm) for name, v in views.items()}
