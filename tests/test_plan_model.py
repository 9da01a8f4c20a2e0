"""Plan model: typed margins, JSON round trip, refusal of bad files, atomic saves, events."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planning.plan as plan_module
from imaging.errors import PlanFileError, PlanningParameterError
from planning.carm import bulls_eye_view
from planning.cement import suggest_cement
from planning.margins import Margins, margin_range_mm
from planning.multi_needle import MultiNeedleOptions, MultiNeedlePlan, PlacedNeedle
from planning.plan import (
    CANDIDATE_KEYS,
    PLAN_KEYS,
    SCHEMA,
    Candidate,
    CaseRef,
    Clearance,
    Plan,
    PlanModel,
    Suggestion,
    Trajectory,
    load_plan,
    parse_plan_text,
    save_plan,
)
from planning.rfa import plan_rfa_for_track

# -- margins -----------------------------------------------------------------------------------


def test_margin_defaults_come_from_data() -> None:
    m = Margins()
    assert (m.foramen_mm, m.canal_mm, m.anterior_cortex_mm) == (2.0, 2.0, 5.0)
    assert m.allow_anterior_exit is False and m.si_joint_only_transiliac is True
    assert margin_range_mm("foramen_mm") == (0.0, 20.0)


def test_margins_are_range_checked_with_plain_messages() -> None:
    with pytest.raises(PlanningParameterError, match="foramen margin .* between 0 and 20"):
        Margins(foramen_mm=25.0)
    with pytest.raises(PlanningParameterError, match="canal margin"):
        Margins(canal_mm=-1.0)
    with pytest.raises(PlanningParameterError, match="finite"):
        Margins(anterior_cortex_mm=float("nan"))
    with pytest.raises(PlanningParameterError, match="true or false"):
        Margins(allow_anterior_exit=1)  # type: ignore[arg-type]


def test_margin_overrides_and_json() -> None:
    m = Margins().with_overrides(foramen_mm=3, allow_anterior_exit=True)
    assert m.foramen_mm == 3.0 and isinstance(m.foramen_mm, float) and m.allow_anterior_exit
    assert Margins.from_json(json.loads(json.dumps(m.to_json()))) == m
    with pytest.raises(PlanningParameterError, match="unknown margin"):
        Margins().with_overrides(vessel_mm=2.0)
    with pytest.raises(PlanningParameterError, match="lack"):
        Margins.from_json({"foramen_mm": 2.0})
    with pytest.raises(PlanningParameterError, match="unknown field"):
        Margins.from_json({**Margins().to_json(), "extra": 1})


# -- a full plan -------------------------------------------------------------------------------


def _candidate(approach: str, *, feasible: bool = True, score: float | None = 0.8) -> Candidate:
    entry, target = (41.0, 95.5, 212.0), (38.2, 30.1, 205.4)
    return Candidate(
        approach=approach,
        side="left",
        skin_entry_lps=entry,
        bone_entry_lps=(40.0, 62.25, 210.0),
        target_lps=target,
        needle="13G-100",
        needle_od_mm=2.41,
        skin_to_target_mm=65.8,
        in_bone_mm=31.2,
        clearance_mm=Clearance(
            foramina=6.1, by_foramen={"left S1": 6.1, "left S2": 9.4}, canal=14.0
        ),
        tip_to_anterior_cortex_mm=7.0,
        exits_anterior=False,
        si_joint_crossed=False,
        feasible=feasible,
        violations=() if feasible else ("0.8 mm from the SI-joint margin",),
        score=score,
        c_arm=bulls_eye_view(np.array(entry), np.array(target)),
    )


def _multi() -> MultiNeedlePlan:
    left = _candidate("posterior_short")
    right = dataclasses.replace(
        _candidate("interpedicular"),
        side="right",
        skin_entry_lps=(-20.0, 96.0, 210.0),
        target_lps=(-2.0, 30.5, 204.0),
    )
    return MultiNeedlePlan(
        kind="bilateral",
        needles=(
            PlacedNeedle("needle 1", left, 3.15, 2.9),
            PlacedNeedle("needle 2", right, 3.15, 2.6),
        ),
        cement_total_ml=6.3,
        lesion_ml=7.1,
        lesion_max_diameter_mm=27.5,
        coverage_single=0.55,
        coverage=0.74,
        filling_single=0.7,
        filling=0.93,
        attainable=0.8873,
        tip_gap_mm=40.2,
        path_gap_mm=36.5,
        options=MultiNeedleOptions(),
        reasons=("two bilateral needles reach 74 %", "the tips are 40 mm apart"),
    )


def _full_plan() -> Plan:
    lesion_pts = np.array([[38.0, 30.0 + d, 205.0] for d in np.linspace(-12, 12, 25)])
    return Plan(
        case=CaseRef(
            source_path="../../studies/case 7/CT",
            series_uid="1.2.826.0.1.3680043.8.498.1",
            patient_name="ANON^7",
            patient_id="P007",
            study_date="20240131",
        ),
        anatomy={
            "s1_endplate_centre_lps": [0.0, 20.0, 230.0],
            "e_x": np.array([1.0, 0.0, 0.0]),  # numpy values become plain numbers
            "foramina": {"left S1": [22.0, 25.0, 215.0]},
        },
        lesion={
            "volume_ml": 7.1,
            "max_diameter_mm": 27.5,
            "centroid_lps": [38.0, 30.0, 205.0],
            "denis_zone": 1,
            "zones_ml": {"1": 6.8, "2": 0.3, "3": 0.0},
            "flags": {"diameter_over_30mm": False, "foraminal_erosion": None},
            "seed_lps": [38.5, 31.0, 204.0],
            "mode": "ct_lytic",
            "most_medial_zone": 2,
        },
        margins=Margins().with_overrides(foramen_mm=3.0),
        needle="13G-100",
        evaluated={"posterior_short": 5400, "transiliac": 2100},
        candidates=(_candidate("posterior_short"), _candidate("transiliac", feasible=False)),
        best_by_approach={
            "posterior_short": {"candidate": 0},
            "transiliac": {"blocked_by": ["0.8 mm from the left S1 foramen (margin 2.0 mm)"]},
        },
        suggestion=Suggestion(
            approach="posterior_short",
            candidate=0,
            reasons=("posterior short-axis: 6.1 mm from left S1 foramen",),
        ),
        trajectories=(
            Trajectory(
                entry_lps=(41.0, 95.5, 212.0),
                target_lps=(38.2, 30.1, 205.4),
                needle="13G-100",
                approach="posterior_short",
                source="suggested",
            ),
            Trajectory(
                entry_lps=(60.0, 90.0, 180.0),
                target_lps=(40.0, 32.0, 200.0),
                needle="15G-138",
                approach=None,
                source="manual",
            ),
        ),
        cement=suggest_cement(
            7.1, with_rfa=True, lesion_max_diameter_mm=27.5, geometric_cap_ml=7.5
        ),
        rfa=plan_rfa_for_track(
            np.array([41.0, 95.5, 212.0]),
            np.array([38.0, 30.0, 205.0]),
            lesion_pts,
            device="17G-rfa-20",
            clearance_to_foramen_mm=6.1,
            clearance_to_canal_mm=14.0,
            intact_cortex_between=True,
        ),
        view_state={"layout": "2x2", "window": [400, 40], "camera": {"zoom": 1.5}},
        multi_needle=_multi(),
    )


def test_round_trip_save_load_equal(tmp_path: Path) -> None:
    path = tmp_path / "case7.sacroplan.json"
    written = save_plan(_full_plan(), path)
    loaded = load_plan(path)
    assert loaded == written
    assert loaded.anatomy["e_x"] == [1.0, 0.0, 0.0]
    assert loaded.candidates[0].c_arm == written.candidates[0].c_arm
    assert loaded.multi_needle == written.multi_needle == _multi()
    assert [n.candidate.side for n in loaded.multi_needle.needles] == ["left", "right"]
    # and again: a loaded plan saves to the same text
    again = save_plan(loaded, tmp_path / "again.json", stamp=False)
    assert (tmp_path / "again.json").read_text() == path.read_text()
    assert again == loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.json", "case7.sacroplan.json"]


def test_json_has_exactly_the_documented_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    save_plan(_full_plan(), path)
    data = json.loads(path.read_text())
    assert list(data) == [*PLAN_KEYS, "multi_needle"]
    assert data["multi_needle"]["schema"] == "sacroplan.multi_needle/1"
    assert data["schema"] == SCHEMA == "sacroplan.plan/1"
    cand = data["candidates"][0]
    assert list(cand) == list(CANDIDATE_KEYS)
    assert set(cand["clearance_mm"]) == {"foramina", "by_foramen", "canal", "exact"}
    assert set(cand["c_arm"]) == {"primary_deg", "secondary_deg", "text"}
    assert set(data["trajectories"][0]) == {
        "entry_lps",
        "target_lps",
        "needle",
        "approach",
        "source",
    }
    assert set(data["suggestion"]) == {"approach", "candidate", "reasons"}
    assert set(data["case"]) == {
        "source_path",
        "series_uid",
        "patient_name",
        "patient_id",
        "study_date",
        "modality",
        "grid",
    }


def test_new_plan_defaults() -> None:
    p = Plan()
    assert p.margins == Margins() and p.needle == "13G-100"
    assert p.candidates == () and p.lesion is None and p.cement is None and p.rfa is None
    assert parse_plan_text(json.dumps(p.to_json())) == p
    assert Plan.from_json(p.to_json()) == p
    with pytest.raises(PlanFileError, match="the data is not a sacroplan plan"):
        Plan.from_json({**p.to_json(), "schema": "sacroplan.plan/" + "9" * 5000})


# -- refusing bad files ------------------------------------------------------------------------


def _write(tmp_path: Path, content: str | bytes, name: str = "plan.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _good_text() -> str:
    return json.dumps(_full_plan().to_json(), indent=2)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is not a sacroplan plan file (it is not valid JSON: Expecting value"),
        ("{ not json", "is not a sacroplan plan file (it is not valid JSON:"),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00",
            "is not a sacroplan plan file (it is not valid JSON: not UTF-8",
        ),
        ('{"schema": "sacroplan.plan/1", "x": NaN}', "not valid JSON: NaN is not a number"),
        ('{"schema": "sacroplan.plan/1", "x": -Infinity}', "not valid JSON: -Infinity"),
        ('{"schema": "sacroplan.plan/1", "x": 1e999}', "not valid JSON: the number 1e999"),
        ("[" * 100000 + "]" * 100000, "not valid JSON: nested too deeply"),
        ("[1, 2, 3]", "is not a sacroplan plan (schema missing"),
        ('{"anatomy": {}}', "is not a sacroplan plan (schema missing"),
        ('{"schema": "slicer.markups/1"}', "is not a sacroplan plan (schema 'slicer.markups/1'"),
        ('{"schema": 1}', "is not a sacroplan plan (schema 1"),
        (
            '{"schema": "sacroplan.plan/2", "future": true}',
            "was written by a newer sacroplan (schema sacroplan.plan/2); update sacroplan to "
            "open it",
        ),
    ],
)
def test_bad_files_are_refused_with_a_plain_message(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(PlanFileError) as err:
        load_plan(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_truncated_file_is_not_valid_json(tmp_path: Path) -> None:
    text = _good_text()
    path = _write(tmp_path, text[: len(text) // 2])
    with pytest.raises(PlanFileError, match=r"is not a sacroplan plan file \(it is not valid JSON"):
        load_plan(path)


_DELETE = object()


def _mutated(path: str, value: object) -> str:
    """The good plan's JSON with the field at dotted ``path`` set to ``value`` (or deleted)."""
    data = json.loads(_good_text())
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    index = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[index]
    else:
        node[index] = value
    return json.dumps(data)


def test_plan_without_the_multi_needle_block(tmp_path: Path) -> None:
    """Files written before the block existed load; a plan without one writes no block."""
    data = json.loads(_good_text())
    del data["multi_needle"]
    old = load_plan(_write(tmp_path, json.dumps(data)))
    assert old.multi_needle is None
    assert old == dataclasses.replace(parse_plan_text(_good_text()), multi_needle=None)
    path = tmp_path / "single.json"
    save_plan(old, path)
    assert "multi_needle" not in json.loads(path.read_text())
    # null reads as no block; the schema number is unchanged (an optional block is minor)
    data["multi_needle"] = None
    assert parse_plan_text(json.dumps(data)).multi_needle is None
    assert data["schema"] == SCHEMA
    # another unknown top-level field is still refused
    data["multi_needles"] = {}
    with pytest.raises(PlanFileError, match="'multi_needles' is not a known field"):
        parse_plan_text(json.dumps(data))


_MARGINS_TOO_WIDE = {**Margins().to_json(), "foramen_mm": 99}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("margins", _DELETE, "'margins' is missing"),
        ("candidates", _DELETE, "'candidates' is missing"),
        (
            "candidates.1.clearance_mm.canal",
            _DELETE,
            "candidates[1].clearance_mm.canal' is missing",
        ),
        ("candidates.0.clearance_mm.canal", "far", "clearance_mm.canal' must be a number"),
        ("candidates.0.target_lps", [1, 2], "candidates[0].target_lps' must be a point"),
        ("candidates.0.feasible", "yes", "candidates[0].feasible' must be true or false"),
        ("candidates.0.extra", 1, "candidates[0].extra' is not a known field"),
        ("candidates.0.c_arm.primary_deg", 720, "candidates[0].c_arm' is not valid"),
        ("margins", _MARGINS_TOO_WIDE, "'margins' is not valid: foramen margin"),
        ("trajectories.0.source", "robot", "source' must be 'suggested' or 'manual'"),
        (
            "best_by_approach.posterior_short.candidate",
            5,
            "posterior_short.candidate' points to candidate 5",
        ),
        ("best_by_approach.transiliac", 3, "best_by_approach.transiliac' must be an object"),
        ("suggestion.candidate", -1, "suggestion.candidate' must be at least 0"),
        ("lesion.denis_zone", 4, "lesion.denis_zone' must be 1, 2, 3 or null"),
        ("lesion.seed_lps", _DELETE, "lesion.seed_lps' is missing"),
        ("created", "yesterday", "'created' must be an ISO 8601"),
        ("anatomy", [1, 2], "'anatomy' must be an object"),
        ("cement.suggested_ml", "5", "'cement' is not valid"),
        ("rfa.safety", "maybe", "'rfa' is not valid"),
        ("evaluated.transiliac", -3, "evaluated.transiliac' must be at least 0"),
        ("case.patient_id", 7, "case.patient_id' must be a string"),
        ("multi_needle", [], "'multi_needle' is not valid: the field 'multi_needle' must be"),
        ("multi_needle.kind", "tandem", "is not valid: the field 'multi_needle.kind' is"),
        ("multi_needle.coverage", 1.2, "the field 'multi_needle.coverage' must be 0-1"),
        ("multi_needle.needles", [], "the field 'multi_needle.needles' must be a non-empty"),
        ("multi_needle.needles.1.cement_ml", "3", "multi_needle.needles[1].cement_ml"),
        (
            "multi_needle.needles.0.candidate.target_lps",
            _DELETE,
            "multi_needle.needles[0].candidate.target_lps",
        ),
        ("multi_needle.options.min_tip_gap_mm", -1, "'multi_needle.options' is not valid"),
        ("multi_needle.schema", "sacroplan.multi_needle/2", "'multi_needle.schema' must be"),
    ],
)
def test_missing_or_ill_typed_fields_are_named(
    tmp_path: Path, path: str, value: object, message: str
) -> None:
    file = _write(tmp_path, _mutated(path, value))
    with pytest.raises(PlanFileError) as err:
        load_plan(file)
    text = str(err.value)
    assert text.startswith(f"{file} is not a valid sacroplan plan: the field '")
    assert message in text


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(
        [
            "margins",
            "candidates",
            "candidates.0",
            "candidates.0.clearance_mm",
            "candidates.0.c_arm",
            "lesion",
            "lesion.flags",
            "suggestion",
            "trajectories.1",
            "cement",
            "rfa",
            "rfa.centres_lps",
            "best_by_approach",
            "view_state",
            "multi_needle",
            "multi_needle.needles",
            "multi_needle.needles.1",
            "multi_needle.needles.0.candidate",
            "multi_needle.options",
            "multi_needle.tip_gap_mm",
            "multi_needle.reasons",
        ]
    ),
    value=_JSON,
)
def test_any_json_in_any_field_loads_or_gives_a_plan_error(key: str, value: object) -> None:
    try:
        parse_plan_text(_mutated(key, value))
    except PlanFileError as exc:
        assert "the field '" in str(exc)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_a_plan_error(data: bytes) -> None:
    with pytest.raises(PlanFileError):
        parse_plan_text(data.decode("latin-1"))


def test_huge_file_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:  # sparse: no real disk use
        fh.truncate(plan_module.MAX_PLAN_BYTES + 1)

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a huge file must not be parsed")

    monkeypatch.setattr(plan_module, "parse_plan_text", no_parse)
    with pytest.raises(PlanFileError, match="MB, more than the 50 MB a plan file may be"):
        load_plan(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PlanFileError, match="cannot open the plan"):
        load_plan(tmp_path / "nope.json")
    with pytest.raises(PlanFileError, match="is a folder"):
        load_plan(tmp_path)


def test_paths_inside_a_plan_are_never_used(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    plan = dataclasses.replace(
        _full_plan(),
        case=CaseRef(source_path="../../../../etc/passwd"),
        view_state={"export_to": "/tmp/evil.json", "last_dir": "../../.."},
    )
    path = work / "p.json"
    save_plan(plan, path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    loaded = load_plan(path)
    assert loaded.case.source_path == "../../../../etc/passwd"
    save_plan(loaded, path)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# -- saving never damages an existing file -----------------------------------------------------


def test_failed_saves_leave_the_old_file_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "plan.json"
    save_plan(_full_plan(), path)
    old = path.read_bytes()

    bad = dataclasses.replace(_full_plan(), view_state={"zoom": float("nan")})
    with pytest.raises(PlanFileError, match="the field 'view_state.zoom' holds a non-finite"):
        save_plan(bad, path)
    odd = dataclasses.replace(_full_plan(), anatomy={"mask": object()})
    with pytest.raises(PlanFileError, match="'anatomy.mask' holds a value JSON cannot store"):
        save_plan(odd, path)

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(PlanFileError, match="No space left on device; any earlier file"):
        save_plan(_full_plan(), path)
    monkeypatch.undo()

    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    with pytest.raises(PlanFileError, match="does not exist"):
        save_plan(_full_plan(), tmp_path / "missing" / "plan.json")
    with pytest.raises(PlanFileError, match="is a folder"):
        save_plan(_full_plan(), tmp_path)


def test_save_stamps_modified_but_keeps_created(tmp_path: Path) -> None:
    plan = dataclasses.replace(
        Plan(), created="2020-01-01T00:00:00Z", modified="2020-01-01T00:00:00Z"
    )
    written = save_plan(plan, tmp_path / "p.json")
    assert written.created == "2020-01-01T00:00:00Z"
    assert written.modified > "2020"
    assert save_plan(plan, tmp_path / "q.json", stamp=False).modified == plan.modified


# -- events ------------------------------------------------------------------------------------


def test_plan_model_notifies_subscribers() -> None:
    model = PlanModel()
    seen: list[tuple[str, Plan]] = []
    unsubscribe = model.subscribe(lambda what, plan: seen.append((what, plan)))
    updated = model.update(needle="15G-138", view_state={"layout": "1x3"})
    assert model.plan is updated and updated.needle == "15G-138"
    assert seen == [("needle,view_state", updated)]
    other = Plan()
    model.set_plan(other)
    assert seen[-1] == ("plan", other)
    model.notify("view_state")
    assert seen[-1] == ("view_state", other)
    unsubscribe()
    unsubscribe()  # harmless twice
    model.update(needle="13G-100")
    assert len(seen) == 3
    with pytest.raises(PlanningParameterError, match="no field"):
        model.update(colour="red")


def test_clearance_exactness_round_trips_and_old_files_load(tmp_path: Path) -> None:
    """Plans saved before clearances were marked exact still load (not exact: the kernel's cap
    applies, so a clearance at the cap prints as "at least")."""
    from planning.plan import Clearance, clearance_text

    exact = Clearance(foramina=25.0, by_foramen={"left S1": 25.0}, canal=30.0, exact=True)
    assert Clearance.from_json(exact.to_json()) == exact
    old = {"foramina": 25.0, "by_foramen": {"left S1": 25.0}, "canal": 30.0}
    assert Clearance.from_json(old).exact is False
    assert clearance_text(30.0, 2.4).startswith("\u2265")
    assert clearance_text(30.0, 2.4, exact=True) == "30.0 mm"
    path = tmp_path / "bad.json"
    save_plan(_full_plan(), path)
    data = json.loads(path.read_text())
    data["candidates"][0]["clearance_mm"]["exact"] = "yes"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanFileError, match="exact"):
        load_plan(path)
