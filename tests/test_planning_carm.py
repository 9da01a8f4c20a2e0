"""C-arm angles: DICOM patient-relative numbers and prone-table words, on known directions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imaging.errors import PlanningParameterError
from planning.carm import (
    CArmView,
    bulls_eye_view,
    dicom_angles_deg,
    standard_views,
    view_for_detector_direction,
)

ORIGIN = np.zeros(3)


def _needle(direction: np.ndarray, *, length_mm: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """Entry and tip of a needle travelling along ``direction`` (LPS) and ending at the origin."""
    n = np.asarray(direction, dtype=float)
    n = n / np.linalg.norm(n)
    return ORIGIN - length_mm * n, ORIGIN


def _detector(left_deg: float, head_deg: float, *, up: float = 1.0) -> np.ndarray:
    """Detector direction from prone (up=+1) or supine (up=-1) table tilts."""
    a, b = math.radians(left_deg), math.radians(head_deg)
    return np.array([math.cos(b) * math.sin(a), up * math.cos(b) * math.cos(a), math.sin(b)])


def test_straight_posterior_needle_prone_is_straight_up() -> None:
    entry, tip = _needle([0, -1, 0])  # posterior skin -> anterior target
    view = bulls_eye_view(entry, tip)
    assert view.table_tilts_deg() == pytest.approx((0.0, 0.0))
    # DICOM angles are patient-relative: 0 means detector in front of the patient, so a
    # detector above a prone patient's back is 180 degrees.
    assert view.primary_deg == pytest.approx(180.0)
    assert view.secondary_deg == pytest.approx(0.0)
    assert "straight above the patient's back" in view.text
    assert "LAO 180°" in view.text and "CRA 0°" in view.text


def test_straight_anterior_view_supine_is_dicom_zero() -> None:
    entry, tip = _needle([0, 1, 0])  # anterior entry, detector in front
    view = bulls_eye_view(entry, tip, patient_position="supine")
    assert (view.primary_deg, view.secondary_deg) == pytest.approx((0.0, 0.0))
    assert view.table_tilts_deg(patient_position="supine") == pytest.approx((0.0, 0.0))
    assert "straight above the patient's front" in view.text


@pytest.mark.parametrize("tilt", [5.0, 20.0, 35.0])
def test_tip_toward_feet_puts_detector_toward_head(tilt: float) -> None:
    t = math.radians(tilt)
    entry, tip = _needle([0, -math.cos(t), -math.sin(t)])  # needle travels caudally
    view = bulls_eye_view(entry, tip)
    assert view.secondary_deg == pytest.approx(tilt)  # CRA +
    assert view.table_tilts_deg() == pytest.approx((0.0, tilt))
    assert f"{tilt:.0f}° toward the head" in view.text and f"CRA {tilt:.0f}°" in view.text


@pytest.mark.parametrize("tilt", [5.0, 20.0, 35.0])
def test_tip_toward_head_puts_detector_toward_feet(tilt: float) -> None:
    # e.g. a posterior long-axis needle entering low and aimed up the sacrum
    t = math.radians(tilt)
    entry, tip = _needle([0, -math.cos(t), math.sin(t)])
    view = bulls_eye_view(entry, tip)
    assert view.secondary_deg == pytest.approx(-tilt)  # CAU
    assert f"{tilt:.0f}° toward the feet" in view.text and f"CAU {tilt:.0f}°" in view.text


@pytest.mark.parametrize("roll", [7.0, 30.0, 60.0])
def test_entry_left_of_midline_puts_detector_toward_patients_left(roll: float) -> None:
    r = math.radians(roll)
    # entry posterior and to the patient's left (+x), needle travels anterior and to the right
    entry, tip = _needle([-math.sin(r), -math.cos(r), 0.0])
    view = bulls_eye_view(entry, tip)
    assert view.table_tilts_deg() == pytest.approx((roll, 0.0))
    assert view.primary_deg == pytest.approx(180.0 - roll)  # LAO side
    assert f"{roll:.0f}° toward the patient's left" in view.text and "LAO" in view.text
    mirrored = bulls_eye_view(entry * [-1, 1, 1], tip)
    assert mirrored.table_tilts_deg() == pytest.approx((-roll, 0.0))
    assert mirrored.primary_deg == pytest.approx(-(180.0 - roll))  # RAO side
    assert f"{roll:.0f}° toward the patient's right" in mirrored.text and "RAO" in mirrored.text


def test_design_example_in_words() -> None:
    d = _detector(7.0, -26.0)
    view = view_for_detector_direction(d)
    assert "Detector 26° toward the feet, 7° toward the patient's left" in view.text
    assert view.table_tilts_deg() == pytest.approx((7.0, -26.0))
    # the same view from the needle that it shows end-on
    needle_view = bulls_eye_view(ORIGIN + 90 * d, ORIGIN)
    assert needle_view.text == view.text
    assert needle_view.secondary_deg == pytest.approx(view.secondary_deg)


def test_transiliac_needle_gives_a_horizontal_lateral_view() -> None:
    entry = np.array([-120.0, 5.0, 0.0])  # lateral buttock on the patient's right
    view = bulls_eye_view(entry, ORIGIN)
    left, head = view.table_tilts_deg()
    assert left == pytest.approx(-87.6, abs=0.1) and head == pytest.approx(0.0)
    assert view.primary_deg == pytest.approx(-92.4, abs=0.1)
    assert "toward the patient's right" in view.text


def test_dicom_angles_match_the_design_formula_and_invert() -> None:
    rng = np.random.default_rng(7)
    for d in rng.normal(size=(200, 3)):
        d = d / np.linalg.norm(d)
        a, b = dicom_angles_deg(d)
        assert a == pytest.approx(math.degrees(math.atan2(d[0], -d[1])))
        assert b == pytest.approx(math.degrees(math.asin(d[2])))
        assert -180 < a <= 180 and -90 <= b <= 90
        view = view_for_detector_direction(d)
        np.testing.assert_allclose(view.detector_direction_lps, d, atol=1e-12)


def test_below_the_table_is_said_plainly() -> None:
    view = view_for_detector_direction([0.1, -1.0, 0.0], patient_position="prone")
    assert "below the table top" in view.text


def test_bad_inputs_raise_plain_errors() -> None:
    with pytest.raises(PlanningParameterError, match="zero length"):
        bulls_eye_view(ORIGIN, ORIGIN)
    with pytest.raises(PlanningParameterError, match="prone"):
        bulls_eye_view([0, 50, 0], ORIGIN, patient_position="sitting")  # type: ignore[arg-type]
    with pytest.raises(PlanningParameterError, match="finite"):
        view_for_detector_direction([np.nan, 1, 0])


def test_view_json_round_trip() -> None:
    view = bulls_eye_view([10.0, 90.0, 30.0], ORIGIN)
    data = view.to_json()
    assert set(data) == {"primary_deg", "secondary_deg", "text"}
    assert CArmView.from_json(data) == view
    with pytest.raises(PlanningParameterError):
        CArmView.from_json({**data, "primary_deg": 400})


def _sagittal(angle_from_posterior_deg: float, *, toward_head: bool) -> np.ndarray:
    """A direction in the midsagittal plane, ``angle`` from +y toward the head or feet."""
    t = math.radians(angle_from_posterior_deg)
    return np.array([0.0, math.cos(t), math.sin(t) if toward_head else -math.sin(t)])


def _anatomy(slope_deg: float = 50.0, disc_deg: float = 35.0, inlet_deg: float = 24.0) -> dict:
    # The S1 endplate faces up and forward: its normal is slope_deg from +z toward anterior.
    s = math.radians(slope_deg)
    q = math.radians(disc_deg)
    return {
        "s1_endplate_normal": np.array([0.0, -math.sin(s), math.cos(s)]),
        "l5s1_disc_normal": np.array([0.0, -math.sin(q), math.cos(q)]),
        "anterior_s1_cortex_tangent": _sagittal(inlet_deg, toward_head=False),
        "e_x": np.array([1.0, 0.0, 0.0]),
    }


def test_standard_views_on_a_known_sacrum_prone() -> None:
    views = standard_views(**_anatomy())
    assert set(views) == {"true_ap", "lateral", "inlet", "outlet"}
    assert views["true_ap"].table_tilts_deg() == pytest.approx((0.0, 35.0))
    assert views["outlet"].table_tilts_deg() == pytest.approx((0.0, 50.0))
    assert views["inlet"].table_tilts_deg() == pytest.approx((0.0, -24.0))
    assert views["lateral"].primary_deg == pytest.approx(90.0)
    assert views["inlet"].secondary_deg == pytest.approx(-24.0)  # CAU, as the literature says
    assert views["outlet"].secondary_deg == pytest.approx(50.0)  # CRA
    assert views["inlet"].text.startswith("Inlet")
    assert "24° toward the feet" in views["inlet"].text and "20-27°" in views["inlet"].text
    assert "50° toward the head" in views["outlet"].text and "43-63°" in views["outlet"].text
    right = standard_views(**_anatomy(), lateral_side="right")["lateral"]
    assert right.primary_deg == pytest.approx(-90.0)


def test_standard_views_supine_put_the_detector_in_front() -> None:
    views = standard_views(**_anatomy(), patient_position="supine")
    for name in ("true_ap", "inlet", "outlet"):
        assert views[name].detector_direction_lps[1] < 0  # anterior
    assert views["inlet"].table_tilts_deg(patient_position="supine") == pytest.approx((0.0, 24.0))


def test_standard_views_follow_a_rotated_patient() -> None:
    # Rotate the anatomy 15 degrees about the long axis: the sacrum's posterior direction
    # now leans toward the patient's right (-x), and so do the sagittal views.
    t = math.radians(15.0)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    anat = {k: rot @ v for k, v in _anatomy().items()}
    views = standard_views(**anat)
    for name in ("true_ap", "inlet", "outlet"):
        d = views[name].detector_direction_lps
        assert d @ anat["e_x"] == pytest.approx(0.0, abs=1e-12)
    assert views["outlet"].secondary_deg == pytest.approx(50.0)
    assert views["outlet"].table_tilts_deg()[0] == pytest.approx(-15.0)
    assert views["lateral"].primary_deg == pytest.approx(105.0)


def test_inlet_from_cortex_points() -> None:
    tangent = _sagittal(22.0, toward_head=False)
    rng = np.random.default_rng(3)
    pts = np.outer(np.linspace(-12, 12, 25), tangent) + [0, -40, 20]
    pts[:, 0] += rng.uniform(-3, 3, size=len(pts))  # spread across the midline is ignored
    anat = _anatomy()
    del anat["anterior_s1_cortex_tangent"]
    views = standard_views(**anat, anterior_s1_cortex_points=pts)
    assert views["inlet"].secondary_deg == pytest.approx(-22.0)
    with pytest.raises(PlanningParameterError, match="anterior S1 cortex"):
        standard_views(**anat)


def test_true_ap_falls_back_to_the_endplate() -> None:
    anat = _anatomy()
    del anat["l5s1_disc_normal"]
    views = standard_views(**anat)
    assert views["true_ap"].secondary_deg == pytest.approx(50.0)
    assert "no L5-S1 disc given" in views["true_ap"].text
