"""C-arm angles: the bull's-eye view of a needle and the per-patient standard views.

Convention (DESIGN 5.8)
-----------------------
Directions are LPS unit vectors (+x patient left, +y posterior, +z head). A view is
described by **d, the unit direction from the isocentre toward the detector**. For a
needle from ``entry`` to ``tip`` the bull's-eye view puts the detector on the entry side,
so ``d = -n`` with ``n = unit(tip - entry)``; the central ray then runs along the needle
and the needle is seen end-on.

Two descriptions of the same ``d`` are given:

1. **DICOM patient-relative angles** (the numbers in :class:`CArmView`), as in the DICOM
   Positioner Primary/Secondary Angle attributes: primary ``alpha = atan2(d_x, -d_y)``,
   LAO positive, RAO negative, 0 with the detector in front of the patient's chest or
   abdomen; secondary ``beta = asin(d_z)``, CRA positive (detector toward the head), CAU
   negative. They are tied to the patient, not to the room: with the patient **prone**
   and the detector above the back the primary angle is near +-180 deg (e.g. LAO 173).
   Vendors display this differently, so the text also says it in words.
2. **Table tilts in words for the patient's position** (``text`` and
   :meth:`CArmView.table_tilts_deg`). For a prone patient "straight up" is posterior
   (+y: the detector above the back, 0 deg); for a supine one it is anterior (-y). The
   roll toward the patient's left is ``atan2(d_x, d_up)`` in the axial plane and the tilt
   toward the head is ``asin(d_z)`` (= the DICOM secondary angle). A posterior needle
   aimed straight forward reads "detector straight above the patient's back" (DICOM LAO
   180, 0); a needle whose tip lies toward the feet from its entry (the detector moves to
   the entry side) reads "detector ... toward the head" (CRA); a posterior long-axis needle
   entering low and aimed up the sacrum reads "toward the feet" (CAU).

Standard views (:func:`standard_views`) are computed per patient from the sacral
landmarks, with the detector on the side that is up for the patient's position:
true AP parallel to the L5-S1 disc, lateral along e_x, inlet tangent to the anterior S1
cortex, outlet parallel to the S1 endplate (perpendicular to the S1 body's axis).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from imaging.errors import PlanningParameterError, ResourceDataError
from planning.needles import read_resource_json, require_number

PatientPosition = Literal["prone", "supine"]
STANDARD_VIEW_NAMES: tuple[str, ...] = ("true_ap", "lateral", "inlet", "outlet")
_VIEW_TITLES = {
    "true_ap": "True AP (along the L5-S1 disc)",
    "lateral": "Lateral",
    "inlet": "Inlet (tangent to the anterior S1 cortex)",
    "outlet": "Outlet (parallel to the S1 endplate)",
}


@functools.cache
def _carm_data() -> tuple[float, dict[str, tuple[float, float, str]]]:
    data = read_resource_json("carm.json")
    try:
        tol = float(data["straight_tolerance_deg"])
        ranges = {
            name: (float(v["range"][0]), float(v["range"][1]), str(v["toward"]))
            for name, v in data["typical_ranges_deg"].items()
        }
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ResourceDataError(f"resources/carm.json is malformed ({exc!r})") from exc
    return tol, ranges


@dataclass(frozen=True)
class CArmView:
    """One C-arm view.

    Attributes
    ----------
    primary_deg : float
        DICOM Positioner Primary Angle, degrees in (-180, 180]: LAO positive, RAO negative,
        0 = detector in front of the patient (anterior).
    secondary_deg : float
        DICOM Positioner Secondary Angle, degrees in [-90, 90]: CRA positive (detector
        toward the head), CAU negative.
    text : str
        The view in plain words for the patient's position, with the DICOM angles.
    """

    primary_deg: float
    secondary_deg: float
    text: str

    @property
    def detector_direction_lps(self) -> np.ndarray:
        """(3,) float ndarray, LPS unit vector from the isocentre toward the detector."""
        a, b = math.radians(self.primary_deg), math.radians(self.secondary_deg)
        return np.array([math.cos(b) * math.sin(a), -math.cos(b) * math.cos(a), math.sin(b)])

    def table_tilts_deg(
        self, *, patient_position: PatientPosition = "prone"
    ) -> tuple[float, float]:
        """Detector tilts from straight up for a patient lying ``patient_position``.

        Returns
        -------
        toward_left_deg : float
            Roll about the patient's long axis toward the patient's left (+) or right (-),
            from straight up (posterior for prone, anterior for supine); beyond +-90 deg the
            detector is below the table top.
        toward_head_deg : float
            Tilt toward the patient's head (+) or feet (-); equals ``secondary_deg``.
        """
        return _tilts(self.detector_direction_lps, patient_position)

    def to_json(self) -> dict[str, Any]:
        """``{"primary_deg", "secondary_deg", "text"}``."""
        return {
            "primary_deg": self.primary_deg,
            "secondary_deg": self.secondary_deg,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: object) -> CArmView:
        """The view from :meth:`to_json` output.

        Raises
        ------
        PlanningParameterError
            Not an object or a field missing or ill-typed.
        """
        if not isinstance(data, dict) or set(data) != {"primary_deg", "secondary_deg", "text"}:
            raise PlanningParameterError(
                "c_arm must be an object with primary_deg, secondary_deg and text"
            )
        if not isinstance(data["text"], str):
            raise PlanningParameterError("c_arm.text must be a string")
        return cls(
            primary_deg=require_number(
                data["primary_deg"], "c_arm.primary_deg", low=-180, high=180
            ),
            secondary_deg=require_number(
                data["secondary_deg"], "c_arm.secondary_deg", low=-90, high=90
            ),
            text=data["text"],
        )


def _unit(v: object, what: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise PlanningParameterError(f"{what} must be three finite numbers (LPS), got {v!r}")
    norm = float(np.linalg.norm(arr))
    if norm < 1e-9:
        raise PlanningParameterError(f"{what} has no direction (zero length)")
    return arr / norm


def _check_position(patient_position: str) -> None:
    if patient_position not in ("prone", "supine"):
        raise PlanningParameterError(
            f"patient position must be 'prone' or 'supine', got {patient_position!r}"
        )


def _up_sign(patient_position: str) -> float:
    """+1 when posterior (+y) is up (prone), -1 when anterior is up (supine)."""
    return 1.0 if patient_position == "prone" else -1.0


def _tilts(d: np.ndarray, patient_position: str) -> tuple[float, float]:
    _check_position(patient_position)
    up = _up_sign(patient_position) * d[1]
    left = math.degrees(math.atan2(d[0], up))
    head = math.degrees(math.asin(max(-1.0, min(1.0, float(d[2])))))
    return left, head


def dicom_angles_deg(detector_direction_lps: np.ndarray) -> tuple[float, float]:
    """DICOM primary and secondary angles of a detector direction.

    Parameters
    ----------
    detector_direction_lps : (3,) float ndarray
        Direction from the isocentre toward the detector, LPS (normalised here).

    Returns
    -------
    primary_deg : float
        ``atan2(d_x, -d_y)`` in (-180, 180]; LAO +, RAO -.
    secondary_deg : float
        ``asin(d_z)``; CRA +, CAU -.
    """
    d = _unit(detector_direction_lps, "detector direction")
    primary = math.degrees(math.atan2(d[0], -d[1]))
    if primary <= -180.0:
        primary += 360.0
    secondary = math.degrees(math.asin(max(-1.0, min(1.0, float(d[2])))))
    return primary + 0.0, secondary + 0.0  # + 0.0 turns -0.0 into 0.0


def _describe(d: np.ndarray, patient_position: str, primary: float, secondary: float) -> str:
    tol, _ = _carm_data()
    left, head = _tilts(d, patient_position)
    surface = "back" if patient_position == "prone" else "front"
    below = abs(left) > 90.0 + tol
    if below:  # measure the roll from straight down instead
        left = math.degrees(math.atan2(d[0], -_up_sign(patient_position) * d[1]))
    parts = []
    if abs(head) >= tol:
        parts.append(f"{abs(head):.0f}° toward the {'head' if head > 0 else 'feet'}")
    if abs(left) >= tol:
        parts.append(f"{abs(left):.0f}° toward the patient's {'left' if left > 0 else 'right'}")
    if below:
        tilt_words = f", {', '.join(parts)} from straight down" if parts else ", straight down"
        lead = (
            f"Detector below the table top{tilt_words}: this view needs the tube above the patient"
        )
    elif parts:
        lead = "Detector " + ", ".join(parts)
    else:
        lead = f"Detector straight above the patient's {surface}"
    side = "LAO" if primary >= 0 else "RAO"
    tilt = "CRA" if secondary >= 0 else "CAU"
    return (
        f"{lead} (patient {patient_position}; 0° = detector straight above the {surface}). "
        f"DICOM angles: {side} {abs(primary):.0f}°, {tilt} {abs(secondary):.0f}°."
    )


def view_for_detector_direction(
    detector_direction_lps: np.ndarray, *, patient_position: PatientPosition = "prone"
) -> CArmView:
    """The C-arm view whose detector lies along ``detector_direction_lps``.

    Parameters
    ----------
    detector_direction_lps : (3,) float ndarray
        Direction from the isocentre toward the detector, LPS (any length > 0).
    patient_position : {"prone", "supine"}
        How the patient lies; only the words of ``text`` depend on it.

    Raises
    ------
    PlanningParameterError
        A zero or non-finite direction, or an unknown position.
    """
    _check_position(patient_position)
    d = _unit(detector_direction_lps, "detector direction")
    primary, secondary = dicom_angles_deg(d)
    return CArmView(primary, secondary, _describe(d, patient_position, primary, secondary))


def bulls_eye_view(
    entry_lps: np.ndarray, tip_lps: np.ndarray, *, patient_position: PatientPosition = "prone"
) -> CArmView:
    """The bull's-eye view of a needle: central ray along it, detector on the entry side.

    Parameters
    ----------
    entry_lps, tip_lps : (3,) float ndarray, mm, LPS
        Skin entry and needle tip.
    patient_position : {"prone", "supine"}
        How the patient lies (PSP is done prone).

    Returns
    -------
    CArmView
        ``d = -unit(tip - entry)`` expressed as DICOM angles and in words.

    Raises
    ------
    PlanningParameterError
        Entry and tip coincide or are not finite points.
    """
    entry = np.asarray(entry_lps, dtype=np.float64)
    tip = np.asarray(tip_lps, dtype=np.float64)
    if entry.shape != (3,) or tip.shape != (3,):
        raise PlanningParameterError("entry and tip must each be three numbers (LPS, mm)")
    n = _unit(tip - entry, "needle direction (tip - entry)")
    return view_for_detector_direction(-n, patient_position=patient_position)


def _in_sagittal(v: np.ndarray, e_x: np.ndarray, what: str) -> np.ndarray:
    w = v - float(v @ e_x) * e_x
    return _unit(w, f"{what} projected into the midsagittal plane")


def _toward_up(v: np.ndarray, patient_position: str) -> np.ndarray:
    return v if _up_sign(patient_position) * v[1] >= 0 else -v


def _cortex_tangent(points: np.ndarray, e_x: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2 or not np.all(np.isfinite(pts)):
        raise PlanningParameterError(
            "anterior S1 cortex points must be at least two finite (N, 3) LPS points"
        )
    flat = pts - np.outer(pts @ e_x, e_x)
    centred = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    if s[0] < 1e-6:
        raise PlanningParameterError("anterior S1 cortex points do not span a line")
    return vt[0]


def standard_views(
    *,
    s1_endplate_normal: np.ndarray,
    e_x: np.ndarray,
    anterior_s1_cortex_tangent: np.ndarray | None = None,
    anterior_s1_cortex_points: np.ndarray | None = None,
    l5s1_disc_normal: np.ndarray | None = None,
    patient_position: PatientPosition = "prone",
    lateral_side: Literal["left", "right"] = "left",
) -> dict[str, CArmView]:
    """Per-patient standard views of the sacrum.

    Parameters
    ----------
    s1_endplate_normal : (3,) float ndarray, LPS
        Normal of the S1 superior endplate (e_z of the sacral frame; sign free).
    e_x : (3,) float ndarray, LPS
        Left-right axis of the sacral frame (through the paired foramen centres).
    anterior_s1_cortex_tangent : (3,) float ndarray, LPS, optional
        Direction of the anterior S1 cortex in the midsagittal plane (sign free).
    anterior_s1_cortex_points : (N, 3) float ndarray, mm, LPS, optional
        Points on the anterior S1 cortex near the midline; a line is fitted through them
        (after dropping their e_x component) when no tangent is given.
    l5s1_disc_normal : (3,) float ndarray, LPS, optional
        Normal of the L5-S1 disc's mid-plane; the S1 endplate normal stands in when absent
        (the text then says so).
    patient_position : {"prone", "supine"}
        Puts the detector on the side that is up (posterior when prone).
    lateral_side : {"left", "right"}
        Side of the detector for the lateral view.

    Returns
    -------
    dict of str to CArmView
        ``"true_ap"`` (central ray parallel to the L5-S1 disc and perpendicular to e_x),
        ``"lateral"`` (along e_x), ``"inlet"`` (along the anterior S1 cortex tangent;
        typically 20-27° toward the feet), ``"outlet"`` (parallel to the S1 endplate,
        perpendicular to e_x; typically 43-63° toward the head). Each text names the
        view and, for inlet and outlet, the typical range.

    Raises
    ------
    PlanningParameterError
        A direction is zero or not finite, or neither cortex tangent nor points are given.
    """
    _check_position(patient_position)
    if lateral_side not in ("left", "right"):
        raise PlanningParameterError(
            f"lateral side must be 'left' or 'right', got {lateral_side!r}"
        )
    ex = _unit(e_x, "e_x")
    endplate = _unit(s1_endplate_normal, "S1 endplate normal")
    if anterior_s1_cortex_tangent is not None:
        tangent = _unit(anterior_s1_cortex_tangent, "anterior S1 cortex tangent")
    elif anterior_s1_cortex_points is not None:
        tangent = _cortex_tangent(anterior_s1_cortex_points, ex)
    else:
        raise PlanningParameterError(
            "the inlet view needs the anterior S1 cortex (a tangent direction or points)"
        )
    disc_given = l5s1_disc_normal is not None
    disc = _unit(l5s1_disc_normal, "L5-S1 disc normal") if disc_given else endplate

    directions = {
        "true_ap": _unit(np.cross(disc, ex), "true AP direction (disc normal parallel to e_x?)"),
        "lateral": ex if lateral_side == "left" else -ex,
        "inlet": _in_sagittal(tangent, ex, "anterior S1 cortex tangent"),
        "outlet": _unit(np.cross(endplate, ex), "outlet direction (endplate normal along e_x?)"),
    }
    _, ranges = _carm_data()
    views: dict[str, CArmView] = {}
    for name in STANDARD_VIEW_NAMES:
        d = directions[name]
        if name != "lateral":
            d = _toward_up(d, patient_position)
        view = view_for_detector_direction(d, patient_position=patient_position)
        title = _VIEW_TITLES[name]
        if name == "true_ap" and not disc_given:
            title = "True AP (parallel to the S1 endplate; no L5-S1 disc given)"
        note = ""
        if name in ranges:
            lo, hi, toward = ranges[name]
            if patient_position == "supine":  # detector in front: the same line, head/feet swap
                toward = {"feet": "head", "head": "feet"}.get(toward, toward)
            note = (
                f" Typical range {lo:.0f}-{hi:.0f}° toward the {toward}; the angle above is"
                " this patient's own."
            )
        text = f"{title}: {view.text[0].lower()}{view.text[1:]}{note}"
        views[name] = CArmView(view.primary_deg, view.secondary_deg, text)
    return views
