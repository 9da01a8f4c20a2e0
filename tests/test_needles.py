"""Needle catalogue: data-driven, validated, with reach by working length."""

from __future__ import annotations

import pytest

from imaging.errors import PlanningParameterError, SacroplanError
from planning.needles import (
    Needle,
    default_needle,
    get_needle,
    needle_catalogue,
    reach_deficit_mm,
    reach_ok,
)


def test_catalogue_holds_the_cohort_needles_and_electrodes() -> None:
    ids = [n.id for n in needle_catalogue()]
    assert ids == ["15G-138", "13G-100", "17G-rfa-10", "17G-rfa-20", "17G-rfa-30"]
    coax = get_needle("15G-138")
    assert (coax.gauge, coax.length_mm, coax.kind) == (15, 138.0, "coaxial_biopsy")
    assert coax.outer_diameter_mm == pytest.approx(1.8, abs=0.05)
    assert coax.working_length_mm == pytest.approx(coax.length_mm - 15.0)
    bone = get_needle("13G-100")
    assert (bone.gauge, bone.length_mm, bone.kind) == (13, 100.0, "bone")
    assert bone.outer_diameter_mm == pytest.approx(2.4, abs=0.05)
    assert bone.working_length_mm == pytest.approx(85.0)
    assert bone.radius_mm == pytest.approx(bone.outer_diameter_mm / 2)
    for tip in (10, 20, 30):
        rf = get_needle(f"17G-rfa-{tip}")
        assert rf.kind == "rfa_electrode" and rf.gauge == 17
        assert rf.active_tip_mm == tip
        assert rf.outer_diameter_mm == pytest.approx(1.5, abs=0.05)
    assert coax.active_tip_mm is None and bone.active_tip_mm is None
    assert default_needle().id in ids


def test_unknown_needle_lists_the_valid_ids() -> None:
    with pytest.raises(PlanningParameterError) as err:
        get_needle("11G-150")
    msg = str(err.value)
    assert "11G-150" in msg and "15G-138" in msg and "17G-rfa-30" in msg
    assert isinstance(err.value, SacroplanError)


def test_reach_uses_working_length() -> None:
    assert reach_ok(85.0, "13G-100")
    assert not reach_ok(85.5, "13G-100")
    assert reach_deficit_mm(95.0, "13G-100") == pytest.approx(10.0)
    assert reach_deficit_mm(60.0, get_needle("15G-138")) == 0.0
    assert reach_ok(120.0, "15G-138") and not reach_ok(124.0, "15G-138")
    with pytest.raises(PlanningParameterError, match="skin-to-target"):
        reach_ok(float("nan"), "13G-100")


def test_needle_rows_are_validated() -> None:
    row = get_needle("13G-100").to_json()
    assert Needle.from_json(row) == get_needle("13G-100")
    with pytest.raises(PlanningParameterError, match="working_length_mm"):
        Needle.from_json({**row, "working_length_mm": 120.0})
    with pytest.raises(PlanningParameterError, match="kind"):
        Needle.from_json({**row, "kind": "drill"})
    with pytest.raises(PlanningParameterError, match="active_tip_mm"):
        Needle.from_json({**row, "active_tip_mm": 10.0})
    with pytest.raises(PlanningParameterError, match="lacks"):
        Needle.from_json({k: v for k, v in row.items() if k != "gauge"})
    with pytest.raises(PlanningParameterError, match="outer_diameter_mm"):
        Needle.from_json({**row, "outer_diameter_mm": True})
