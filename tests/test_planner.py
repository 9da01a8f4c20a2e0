"""The trajectory planner on the sample, checked against the phantom's exact geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from imaging.phantom import exact_distance_to_canal, exact_distance_to_foramen
from planning.approaches import admitted_for_zone
from planning.case import Case
from planning.plan import load_plan
from planning.planner import build_fields, canal_with_lumbar, plan_case, score_trajectory


def exact_clearances(entry, tip, radius_mm, truth) -> tuple[dict[str, float], float]:
    """Needle-surface clearance to every foramen cylinder and the canal, by dense sampling."""
    entry, tip = np.asarray(entry, float), np.asarray(tip, float)
    t = np.linspace(0.0, 1.0, int(np.linalg.norm(tip - entry) / 0.05) + 2)[:, None]
    points = entry + t * (tip - entry)
    by = {
        f.name: float(exact_distance_to_foramen(points, f).min()) - radius_mm
        for f in truth.foramina
    }
    canal = float(exact_distance_to_canal(points, truth).min()) - radius_mm
    return by, canal


@pytest.fixture(scope="module")
def planned() -> tuple[Case, dict]:
    case = Case.sample(lesion="left_ala_s1")
    case.find_anatomy()
    case.grow_lesion(case.default_seed())
    plan = plan_case(case)
    return case, plan.to_json()


def test_every_candidate_foramen_clearance_agrees_with_exact_geometry(planned) -> None:
    case, plan = planned
    truth = case.sample_truth
    assert plan["candidates"]
    for c in plan["candidates"]:
        by, _ = exact_clearances(c["skin_entry_lps"], c["target_lps"], c["needle_od_mm"] / 2, truth)
        reported = c["clearance_mm"]["foramina"]
        exact_min = min(by.values())
        assert reported <= exact_min + 0.5, (c["approach"], reported, exact_min)
        if exact_min < 15.0:
            assert abs(reported - exact_min) <= 1.0, (c["approach"], reported, by)


def test_every_candidate_canal_clearance_agrees_with_exact_geometry(planned) -> None:
    case, plan = planned
    for c in plan["candidates"]:
        _, canal = exact_clearances(
            c["skin_entry_lps"], c["target_lps"], c["needle_od_mm"] / 2, case.sample_truth
        )
        assert c["clearance_mm"]["canal"] <= canal + 0.5
        if canal < 15.0:
            assert abs(c["clearance_mm"]["canal"] - canal) <= 1.0


def test_suggestion_respects_every_margin_and_the_cohort_rule(planned) -> None:
    case, plan = planned
    truth = case.sample_truth
    sug = plan["suggestion"]
    assert sug is not None
    c = plan["candidates"][sug["candidate"]]
    assert c["feasible"] and not c["violations"]
    by, canal = exact_clearances(c["skin_entry_lps"], c["target_lps"], c["needle_od_mm"] / 2, truth)
    margins = plan["margins"]
    assert min(by.values()) >= margins["foramen_mm"]
    assert canal >= margins["canal_mm"]
    assert c["tip_to_anterior_cortex_mm"] >= margins["anterior_cortex_mm"]
    assert not c["exits_anterior"]
    assert not c["si_joint_crossed"] or c["approach"] == "transiliac"
    assert c["skin_to_target_mm"] <= {"13G-100": 85.0, "15G-138": 123.0}[c["needle"]]
    assert sug["approach"] in admitted_for_zone(truth.lesion.denis_zone)
    assert truth.lesion.contains(np.asarray(c["target_lps"])[None, :])[0]
    assert sug["reasons"] and "mm" in sug["reasons"][0]
    assert set(plan["best_by_approach"]) == {
        "posterior_short",
        "posterior_long",
        "transiliac",
        "interpedicular",
        "anterior_oblique",
    }


def test_hand_placed_needle_through_a_foramen_is_refused(planned) -> None:
    case, _ = planned
    fields = build_fields(case)
    f = case.sample_truth.foramen("left S2")
    centre, axis = np.asarray(f.center_lps), np.asarray(f.axis)
    entry = centre + 60.0 * axis * np.sign(axis[1])  # from behind, down the channel
    c = score_trajectory(entry, centre, "13G-100", fields=fields, approach="posterior_short")
    assert c.clearance_mm.foramina is not None and c.clearance_mm.foramina < 0
    assert not c.feasible
    assert any("foramen" in v for v in c.violations)


def test_plan_cli_saves_a_plan_that_loads(tmp_path: Path, capsys) -> None:
    out = tmp_path / "plan.json"
    code = main(["plan", "--sample", "--lesion", "s1_body", "--out", str(out), "--json"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(printed)
    assert data["schema"] == "sacroplan.plan/1"
    assert data["lesion"]["denis_zone"] == 3
    plan = load_plan(out)
    assert plan.suggestion is not None
    assert plan.suggestion.approach == data["suggestion"]["approach"]


def test_body_lesion_gets_the_interpedicular_approach(capsys) -> None:
    code = main(["plan", "--sample", "--lesion", "s1_body", "--json"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(printed)["suggestion"]["approach"] in admitted_for_zone(3)


def test_lumbar_canal_is_followed_above_the_sacrum(planned) -> None:
    """Against the phantom's analytic canal: every voxel deeper than 0.5 mm inside the canal
    above the sacral segmentation is in the planner's canal, and none lies far outside it."""
    case, _ = planned
    m = case.masks
    sacral = m.masks["canal"]
    canal = canal_with_lumbar(sacral, m.image)
    shape = canal.shape
    kji = np.argwhere(np.ones(shape, bool))
    points = m.image.index_to_world(kji[:, ::-1].astype(np.float64))
    exact = exact_distance_to_canal(points, case.sample_truth).reshape(shape)
    height = points[:, 2].reshape(shape)
    top = float(height[sacral].max())
    above = (height > top) & (height < top + 35.0)
    inside = above & (exact < -0.5)
    assert inside.sum() > 5000  # the lumbar canal is in the crop
    assert not (inside & ~canal).any()
    found = canal & above
    assert np.percentile(exact[found], 99) < 1.0
    assert exact[found].max() < 2.5
    assert canal[sacral].all()
