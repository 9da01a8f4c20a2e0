"""C-arm angle geometry: DICOM positioner angles <-> view directions, detector axes.

Pure maths shared by the simulated fluoroscopy (:mod:`imaging.drr`) and the C-arm view
descriptions (:mod:`planning.carm`); the conventions are those of DESIGN section 5.8.

A view is described by **d, the LPS unit direction from the isocentre toward the
detector** (the X-ray source lies on the other side, at ``isocentre - SOD * d``).

* DICOM Positioner Primary Angle ``alpha = atan2(d_x, -d_y)``: LAO positive, RAO negative,
  0 with the detector in front of the patient (anterior); a detector straight above a prone
  patient's back (``d = +y``) is LAO 180.
* DICOM Positioner Secondary Angle ``beta = asin(d_z)``: CRA positive (detector toward the
  head), CAU negative.

So ``d = (cos(beta) sin(alpha), -cos(beta) cos(alpha), sin(beta))``.

Detector axes (:func:`detector_axes`): the image is shown **as seen from the detector
looking toward the source** (the operator's view standing at the detector), with the
patient's head toward the top of the image: ``up`` is the patient's +z projected onto the
detector plane (+y, posterior, when the beam runs along z), and ``right = up x d``, so
``(right, up, d)`` is right-handed. For a prone patient with the detector above the back
(``d = +y``) the patient's right (-x) is on the right of the image.
"""

from __future__ import annotations

import math

import numpy as np

_PARALLEL_TOL = 1e-6


def _unit3(v: object) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"a direction must be three finite numbers (LPS), got {v!r}")
    norm = float(np.linalg.norm(arr))
    if norm < 1e-12:
        raise ValueError("a direction must not be the zero vector")
    return arr / norm


def detector_direction_from_angles(primary_deg: float, secondary_deg: float) -> np.ndarray:
    """LPS unit direction from the isocentre toward the detector for DICOM C-arm angles.

    Parameters
    ----------
    primary_deg : float
        DICOM Positioner Primary Angle in degrees (LAO +, RAO -; 0 = detector anterior,
        180 = detector posterior).
    secondary_deg : float
        DICOM Positioner Secondary Angle in degrees (CRA +, CAU -).

    Returns
    -------
    (3,) float ndarray
        ``(cos b sin a, -cos b cos a, sin b)``, unit length, LPS.
    """
    a, b = math.radians(float(primary_deg)), math.radians(float(secondary_deg))
    return np.array([math.cos(b) * math.sin(a), -math.cos(b) * math.cos(a), math.sin(b)])


def angles_from_detector_direction(detector_direction_lps: np.ndarray) -> tuple[float, float]:
    """DICOM primary and secondary angles (degrees) of a detector direction.

    Parameters
    ----------
    detector_direction_lps : (3,) float ndarray
        Direction from the isocentre toward the detector, LPS (normalised here).

    Returns
    -------
    primary_deg : float
        ``atan2(d_x, -d_y)`` in (-180, 180]; LAO +, RAO -.
    secondary_deg : float
        ``asin(d_z)`` in [-90, 90]; CRA +, CAU -.

    Raises
    ------
    ValueError
        A zero or non-finite direction.
    """
    d = _unit3(detector_direction_lps)
    primary = math.degrees(math.atan2(d[0], -d[1]))
    if primary <= -180.0:
        primary += 360.0
    secondary = math.degrees(math.asin(max(-1.0, min(1.0, float(d[2])))))
    return primary + 0.0, secondary + 0.0


def detector_axes(
    detector_direction_lps: np.ndarray, *, up_hint_lps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane detector axes ``(right, up)`` for a view direction.

    Parameters
    ----------
    detector_direction_lps : (3,) float ndarray
        Direction from the isocentre toward the detector, LPS.
    up_hint_lps : (3,) float ndarray, optional
        Direction that should point up in the image; default the patient's head (+z),
        or posterior (+y) when the beam runs along z.

    Returns
    -------
    right, up : (3,) float ndarray
        Orthonormal LPS vectors perpendicular to ``d`` with ``right = up x d``: image
        columns grow along ``right``, image rows grow along ``-up`` (row 0 at the top).

    Raises
    ------
    ValueError
        A zero or non-finite direction or hint.
    """
    d = _unit3(detector_direction_lps)
    hints = [np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0])]
    if up_hint_lps is not None:
        hints.insert(0, _unit3(up_hint_lps))
    for hint in hints:
        up = hint - float(hint @ d) * d
        norm = float(np.linalg.norm(up))
        if norm > _PARALLEL_TOL:
            up = up / norm
            right = np.cross(up, d)
            return right / np.linalg.norm(right), up
    raise ValueError("cannot choose detector axes for this direction")  # pragma: no cover


def progression_direction(
    needle_direction_lps: np.ndarray, *, preferred_lps: np.ndarray | None = None
) -> np.ndarray:
    """Detector direction of a needle's progression view (central ray perpendicular to it).

    Parameters
    ----------
    needle_direction_lps : (3,) float ndarray
        Needle direction (entry to tip), LPS.
    preferred_lps : (3,) float ndarray, optional
        Detector direction to come closest to. Default: lateral on the patient's left
        (+x) or, for a needle nearly along x, straight posterior (+y).

    Returns
    -------
    (3,) float ndarray
        Unit LPS vector perpendicular to the needle: the component of the preferred
        direction perpendicular to the needle.

    Raises
    ------
    ValueError
        A zero needle direction, or a preferred direction parallel to the needle.
    """
    n = _unit3(needle_direction_lps)
    if preferred_lps is None:
        lateral = np.array([1.0, 0.0, 0.0])
        preferred = lateral if abs(float(lateral @ n)) < 0.9 else np.array([0.0, 1.0, 0.0])
    else:
        preferred = _unit3(preferred_lps)
    w = preferred - float(preferred @ n) * n
    norm = float(np.linalg.norm(w))
    if norm <= _PARALLEL_TOL:
        raise ValueError("the preferred progression direction is parallel to the needle")
    return w / norm
