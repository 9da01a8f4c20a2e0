"""Cement volume suggestion, geometric cap and RFA planning against the cohort's figures."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import pytest

from imaging.errors import PlanningParameterError
from planning.cement import (
    CementSuggestion,
    cement_ratio,
    geometric_cement_cap,
    geometric_cement_cap_ml,
    sphere_diameter_mm,
    suggest_cement,
)
from planning.rfa import (
    RfaPlan,
    ablations_along_track,
    get_rfa_device,
    lesion_extent_along_track,
    plan_rfa,
    plan_rfa_for_track,
    rfa_devices,
    rfa_evidence,
    tracks_across,
)

# -- cement -----------------------------------------------------------------------------------


def _cement_data() -> dict:
    return json.loads(resources.files("resources").joinpath("cement.json").read_text())


def test_ratios_are_the_ratios_of_the_cohort_means() -> None:
    cohorts = _cement_data()["cohorts"]
    for key, with_rfa, expected in (("psp_alone", False, 0.79), ("psp_rfa", True, 0.89)):
        c = cohorts[key]
        assert cement_ratio(with_rfa=with_rfa) == expected
        assert c["cement_ml_mean"] / c["lesion_ml_mean"] == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize(
    ("volume", "with_rfa", "cement"), [(6.69, False, 5.31), (7.22, True, 6.42)]
)
def test_cohort_mean_lesion_gets_about_the_cohort_mean_cement(
    volume: float, with_rfa: bool, cement: float
) -> None:
    s = suggest_cement(volume, with_rfa=with_rfa)
    assert s.suggested_ml == pytest.approx(cement, abs=0.05)
    assert s.band_ml[0] == pytest.approx(s.suggested_ml - 1.7)
    assert s.band_ml[1] == pytest.approx(min(8.0, s.suggested_ml + 1.7))
    assert s.cap_ml is None and s.predicted_filling is None and s.warnings == ()
    assert "Tian et al., AJNR 2022;43:1222-1227" in s.basis
    assert "not from a model fitted to individual lesions" in s.basis
    assert f"{volume:.2f}" in s.basis and f"{cement:.2f}" in s.basis


def test_filling_degree_uses_a_sphere_of_the_cement_volume() -> None:
    assert sphere_diameter_mm(4.0 / 3.0 * math.pi * 1e-3 * 10**3) == pytest.approx(20.0)
    s = suggest_cement(6.69, with_rfa=False, lesion_max_diameter_mm=28.4)
    assert s.predicted_filling == pytest.approx(sphere_diameter_mm(s.suggested_ml) / 28.4)
    assert s.predicted_filling == pytest.approx(0.76, abs=0.01)  # cohort: 76.2 %
    s = suggest_cement(7.22, with_rfa=True, lesion_max_diameter_mm=27.2)
    assert s.predicted_filling == pytest.approx(0.85, abs=0.01)  # cohort: 84.8 %
    assert suggest_cement(6.0, with_rfa=True, lesion_max_diameter_mm=10.0).predicted_filling == 1.0


def test_small_and_large_lesions_are_clipped_to_the_cohort_range() -> None:
    small = suggest_cement(1.5, with_rfa=False)
    assert small.suggested_ml == 2.0 and small.band_ml == (2.0, pytest.approx(0.79 * 1.5 + 1.7))
    assert any("raised to 2 mL" in w for w in small.warnings)
    big = suggest_cement(12.0, with_rfa=True, lesion_max_diameter_mm=34.0)
    assert big.suggested_ml == 8.0 and big.band_ml == (8.0, 8.0)
    assert any("limited to 8 mL" in w for w in big.warnings)
    assert any("30 mm" in w for w in big.warnings)
    assert any("extrapolated" in w for w in big.warnings)


def test_geometry_caps_the_suggestion_and_the_band() -> None:
    s = suggest_cement(7.22, with_rfa=True, geometric_cap_ml=4.0)
    assert s.suggested_ml == 4.0 and s.band_ml[1] == 4.0 and s.cap_ml == 4.0
    assert any("Limited by the anatomy to 4.0 mL" in w for w in s.warnings)
    roomy = suggest_cement(7.22, with_rfa=True, geometric_cap_ml=20.0)
    assert roomy.suggested_ml == pytest.approx(0.89 * 7.22) and roomy.warnings == ()
    tight = suggest_cement(7.22, with_rfa=True, geometric_cap_ml=1.0)
    assert tight.suggested_ml == 1.0 and any("Less than 2 mL" in w for w in tight.warnings)


def test_cement_inputs_are_checked() -> None:
    with pytest.raises(PlanningParameterError, match="above 0 mL"):
        suggest_cement(0.0, with_rfa=False)
    with pytest.raises(PlanningParameterError, match="finite"):
        suggest_cement(float("inf"), with_rfa=False)
    with pytest.raises(PlanningParameterError, match="with_rfa"):
        suggest_cement(5.0, with_rfa="yes")  # type: ignore[arg-type]
    with pytest.raises(PlanningParameterError, match="cap"):
        suggest_cement(5.0, with_rfa=False, geometric_cap_ml=-1.0)


def test_cement_suggestion_json_round_trip() -> None:
    s = suggest_cement(9.5, with_rfa=True, lesion_max_diameter_mm=31.0, geometric_cap_ml=7.0)
    assert CementSuggestion.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert "Cement 7.0 mL" in s.summary and "predicted filling" in s.summary


# -- geometric cap on tiny exact grids ------------------------------------------------------------


SPACING_XYZ = np.array([0.8, 1.0, 1.5])  # anisotropic on purpose


def _grid(shape: tuple[int, int, int] = (16, 24, 30)) -> np.ndarray:
    """(K, J, I, 3) physical positions (x, y, z) in mm of the voxel centres."""
    k, j, i = np.indices(shape)
    return np.stack([i * SPACING_XYZ[0], j * SPACING_XYZ[1], k * SPACING_XYZ[2]], axis=-1)


def _brute_shell(lesion: np.ndarray, pos: np.ndarray, shell_mm: float) -> np.ndarray:
    les_pts = pos[lesion]
    d = np.linalg.norm(pos.reshape(-1, 1, 3) - les_pts[None, :, :], axis=-1).min(axis=1)
    return (d.reshape(lesion.shape) <= shell_mm) & ~lesion


def test_cap_counts_lesion_plus_shell_minus_keep_out_exactly() -> None:
    pos = _grid()
    centre = np.array([12.0, 12.0, 12.0])
    lesion = np.linalg.norm(pos - centre, axis=-1) <= 5.0
    # A "foramen" occupying x >= 15.5 mm: signed distance is 15.5 - x (positive outside).
    foramen = 15.5 - pos[..., 0]
    cap = geometric_cement_cap(
        lesion, SPACING_XYZ, keep_out_distance_mm={"foramina": foramen}, shell_mm=2.0
    )
    voxel_ml = float(np.prod(SPACING_XYZ)) / 1000.0
    shell = _brute_shell(lesion, pos, 2.0)
    region = lesion | shell
    allowed = region & (foramen >= 3.0)
    assert cap.lesion_ml == pytest.approx(lesion.sum() * voxel_ml)
    assert cap.shell_ml == pytest.approx(shell.sum() * voxel_ml)
    assert cap.cap_ml == pytest.approx(allowed.sum() * voxel_ml)
    assert cap.excluded_ml["foramina"] == pytest.approx((region & (foramen < 3.0)).sum() * voxel_ml)
    assert 0 < cap.cap_ml < cap.lesion_ml + cap.shell_ml
    assert geometric_cement_cap_ml(
        lesion, SPACING_XYZ, keep_out_distance_mm={"foramina": foramen}, shell_mm=2.0
    ) == pytest.approx(cap.cap_ml)


def test_cap_with_bone_mask_and_several_structures() -> None:
    pos = _grid()
    lesion = np.linalg.norm(pos - [12.0, 12.0, 12.0], axis=-1) <= 4.0
    bone = pos[..., 1] <= 14.0  # bone only where y <= 14 mm
    far = np.full(lesion.shape, 50.0)
    canal = pos[..., 2] - 5.0  # the canal lies below z = 5 mm (positive above)
    cap = geometric_cement_cap(
        lesion,
        SPACING_XYZ,
        keep_out_distance_mm={"canal": canal, "si_joint": far},
        bone_mask=bone,
    )
    shell = _brute_shell(lesion, pos, 2.0) & bone
    region = lesion | shell
    voxel_ml = float(np.prod(SPACING_XYZ)) / 1000.0
    assert cap.shell_ml == pytest.approx(shell.sum() * voxel_ml)
    assert cap.cap_ml == pytest.approx((region & (canal >= 3.0)).sum() * voxel_ml)
    assert cap.excluded_ml["si_joint"] == 0.0 and cap.excluded_ml["canal"] > 0.0
    # one combined field gives the same cap
    combined = np.minimum(canal, far)
    assert geometric_cement_cap_ml(
        lesion, SPACING_XYZ, keep_out_distance_mm=combined, bone_mask=bone
    ) == pytest.approx(cap.cap_ml)


def test_cap_treats_nan_as_too_close_and_checks_grids() -> None:
    pos = _grid()
    lesion = np.linalg.norm(pos - [12.0, 12.0, 12.0], axis=-1) <= 3.0
    field = np.full(lesion.shape, np.nan)
    assert geometric_cement_cap_ml(lesion, SPACING_XYZ, keep_out_distance_mm=field) == 0.0
    with pytest.raises(PlanningParameterError, match="same grid"):
        geometric_cement_cap(lesion, SPACING_XYZ, keep_out_distance_mm=field[:-1])
    with pytest.raises(PlanningParameterError, match="empty"):
        geometric_cement_cap(np.zeros_like(lesion), SPACING_XYZ, keep_out_distance_mm=field)
    with pytest.raises(PlanningParameterError, match="spacing"):
        geometric_cement_cap(lesion, [1.0, 0.0, 1.0], keep_out_distance_mm=field)


# -- RFA ---------------------------------------------------------------------------------------


def test_device_table_follows_the_zone_rule() -> None:
    devices = rfa_devices()
    assert [d.active_tip_mm for d in devices] == [10.0, 20.0, 30.0]
    for d in devices:
        assert d.zone_length_mm == pytest.approx(d.active_tip_mm + 2 * 2.5)
        assert 0 < d.zone_diameter_mm <= d.zone_length_mm
    data = json.loads(resources.files("resources").joinpath("rfa_devices.json").read_text())
    assert "edit this table for your device" in data["source"]
    with pytest.raises(PlanningParameterError, match="17G-rfa-20"):
        get_rfa_device("cryo-probe")


@pytest.mark.parametrize(
    ("extent", "length", "n"),
    [(10, 25, 1), (24, 25, 1), (25, 25, 1), (28, 25, 2), (37.5, 25, 2), (38, 25, 3),
     (50, 25, 3), (24, 15, 3), (24, 35, 1)],
)  # fmt: skip
def test_overlapping_ablations_follow_the_design_formula(
    extent: float, length: float, n: int
) -> None:
    assert ablations_along_track(extent, length) == n
    assert n == max(1, math.ceil((extent - length) / (0.5 * length)) + 1)


def test_cohort_sanity_about_two_ablations_for_a_typical_lesion() -> None:
    # The cohort's PSP+RFA lesions: 7.22 mL (a 24 mm sphere), largest diameter ~27 mm;
    # 1.89 +- 0.75 overlapping ablations with 1-3 cm tips.
    assert sphere_diameter_mm(7.22) == pytest.approx(24.0, abs=0.1)
    two_cm = [ablations_along_track(e, 25.0) for e in (24, 26, 28, 30)]
    assert two_cm == [1, 2, 2, 2]
    counts = [
        plan_rfa(
            e,
            e,
            device=d,
            clearance_to_foramen_mm=20,
            clearance_to_canal_mm=20,
            intact_cortex_between=True,
        ).n_ablations
        for e in (24, 26, 28, 30)
        for d in rfa_devices()
    ]
    assert abs(np.mean(counts) - 1.89) <= 0.75


def test_centres_cover_the_extent_symmetrically() -> None:
    p = plan_rfa(
        40.0,
        12.0,
        device="17G-rfa-20",
        clearance_to_foramen_mm=None,
        clearance_to_canal_mm=None,
        intact_cortex_between=True,
    )
    assert p.n_ablations == 3 and p.n_tracks == 1
    c = np.array(p.centres_back_from_tip_mm)
    np.testing.assert_allclose(np.diff(c), 12.5)  # half a zone length
    assert c[0] - 12.5 <= 0.0 and c[-1] + 12.5 >= 40.0
    assert c[0] + c[-1] == pytest.approx(40.0)  # symmetric about the lesion's middle
    assert p.centres_lps is None
    single = plan_rfa(
        14.0,
        8.0,
        device="17G-rfa-30",
        clearance_to_foramen_mm=None,
        clearance_to_canal_mm=None,
        intact_cortex_between=True,
    )
    assert single.centres_back_from_tip_mm == (7.0,)


def test_wide_lesions_need_more_tracks() -> None:
    assert tracks_across(14.0, 15.0) == 1
    assert tracks_across(15.0, 15.0) == 1
    assert tracks_across(24.0, 15.0) == 2
    assert tracks_across(31.0, 15.0) == 3
    p = plan_rfa(
        20.0,
        24.0,
        device="17G-rfa-20",
        clearance_to_foramen_mm=None,
        clearance_to_canal_mm=None,
        intact_cortex_between=True,
    )
    assert p.n_tracks == 2 and any("2 parallel tracks" in w for w in p.warnings)


# Zone edge = needle-surface clearance + electrode radius (0.735 mm) - zone radius (7.5 mm).
@pytest.mark.parametrize(
    ("foramen", "canal", "intact", "safety"),
    [
        (20.0, 30.0, True, "allowed"),  # edge 13.2 mm
        (16.0, 30.0, True, "warn"),  # edge 9.2 mm
        (12.0, 30.0, True, "warn"),  # edge 5.2 mm
        (30.0, 10.0, True, "advise_psp_alone"),  # canal edge 3.2 mm
        (8.0, 30.0, True, "advise_psp_alone"),  # edge 1.2 mm
        (40.0, 40.0, False, "advise_psp_alone"),  # no intact cortex
        (None, None, True, "warn"),  # nothing measured
    ],
)
def test_thermal_safety_levels(
    foramen: float | None, canal: float | None, intact: bool, safety: str
) -> None:
    p = plan_rfa(
        20.0,
        12.0,
        device="17G-rfa-20",
        clearance_to_foramen_mm=foramen,
        clearance_to_canal_mm=canal,
        intact_cortex_between=intact,
    )
    assert p.safety == safety
    gap = 7.5 - 1.47 / 2
    if foramen is not None:
        assert p.zone_edge_to_foramen_mm == pytest.approx(foramen - gap)
        assert p.zone_edge_to_canal_mm == pytest.approx(canal - gap)
    else:
        assert p.zone_edge_to_foramen_mm is None and p.zone_edge_to_canal_mm is None
    assert p.safety_reason
    assert "1.89" in p.evidence and "30 W" in p.evidence and "85 °C" in p.evidence


def test_thermal_safety_wording() -> None:
    kw = {"device": "17G-rfa-20", "clearance_to_canal_mm": None, "intact_cortex_between": True}
    warn = plan_rfa(20.0, 10.0, clearance_to_foramen_mm=12.0, **kw)
    assert warn.safety == "warn" and "thermocouple" in warn.safety_reason
    assert "nearest foramen" in warn.safety_reason
    close = plan_rfa(20.0, 10.0, clearance_to_foramen_mm=7.0, **kw)
    assert close.safety == "advise_psp_alone" and "PSP alone" in close.safety_reason
    # the clearance of a thicker introducer puts the axis further away
    thick = plan_rfa(20.0, 10.0, clearance_to_foramen_mm=12.0, needle_od_mm=2.41, **kw)
    assert thick.zone_edge_to_foramen_mm == pytest.approx(12.0 + 1.205 - 7.5)


def test_rfa_inputs_are_checked() -> None:
    kw = {"clearance_to_foramen_mm": None, "clearance_to_canal_mm": None}
    with pytest.raises(PlanningParameterError, match="extent"):
        plan_rfa(-1.0, 5.0, device="17G-rfa-10", intact_cortex_between=True, **kw)
    with pytest.raises(PlanningParameterError, match="intact_cortex_between"):
        plan_rfa(10.0, 5.0, device="17G-rfa-10", intact_cortex_between=1, **kw)  # type: ignore[arg-type]
    with pytest.raises(PlanningParameterError, match="unknown RFA device"):
        plan_rfa(10.0, 5.0, device="nope", intact_cortex_between=True, **kw)


def test_rfa_along_a_track_from_lesion_points() -> None:
    # A box lesion 30 mm along an oblique track, 12 mm x 8 mm across it.
    u = np.array([0.3, -0.9, -0.2])
    u /= np.linalg.norm(u)
    a = np.cross(u, [0.0, 0.0, 1.0])
    a /= np.linalg.norm(a)
    b = np.cross(u, a)
    entry = np.array([20.0, 80.0, 10.0])
    s, p, q = np.meshgrid(
        np.linspace(50, 80, 31), np.linspace(-6, 6, 13), np.linspace(-4, 4, 9), indexing="ij"
    )
    pts = entry + s.reshape(-1, 1) * u + p.reshape(-1, 1) * a + q.reshape(-1, 1) * b
    tip = entry + 70.0 * u
    extent, width, near, deep = lesion_extent_along_track(entry, tip, pts)
    assert (extent, near, deep) == pytest.approx((30.0, 50.0, 80.0))
    assert width == pytest.approx(math.hypot(12.0, 8.0), rel=2e-3)
    plan = plan_rfa_for_track(
        entry,
        tip,
        pts,
        device="17G-rfa-20",
        clearance_to_foramen_mm=25.0,
        clearance_to_canal_mm=None,
        intact_cortex_between=True,
    )
    assert plan.n_ablations == 2 and plan.lesion_extent_mm == pytest.approx(30.0)
    assert plan.centres_lps is not None and len(plan.centres_lps) == 2
    for centre, back in zip(plan.centres_lps, plan.centres_back_from_tip_mm, strict=True):
        np.testing.assert_allclose(centre, tip - back * u, atol=1e-9)
    # Two 25 mm zones 12.5 mm apart span 37.5 mm, centred on the 30 mm lesion: centres 8.75
    # and 21.25 mm back from the deep end, which lies 10 mm beyond the tip. Deepest first.
    assert plan.centres_back_from_tip_mm == pytest.approx((8.75 - 10.0, 21.25 - 10.0))
    assert RfaPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(PlanningParameterError, match="coincide"):
        lesion_extent_along_track(entry, entry, pts)


def test_evidence_quotes_the_cohort() -> None:
    text = rfa_evidence()
    for fact in ("1.89", "7.5 min", "30 W", "70-90 °C", "85 °C", "10 min", "2 impedance"):
        assert fact in text
