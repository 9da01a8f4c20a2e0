"""Hostile plan files and settings: a clear error, the file untouched, never a traceback.

Plans that are corrupt, truncated, hand-edited (wrong types, NaN, missing keys), of another
schema, huge (a 2 GB file, deeply nested JSON, giant numbers), binary, or that hold paths
meant to escape (``"source_path": "../../etc/passwd"``) go through
:func:`planning.plan.load_plan` and the commands that read a plan (``report``, ``export``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cli import main
from imaging.errors import PlanFileError
from planning.plan import MAX_PLAN_BYTES, PLAN_KEYS, Plan, load_plan, parse_plan_text, save_plan


@pytest.fixture(scope="module")
def real_plan_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A complete plan of the sample (anatomy, lesion, candidates, suggestion, cement)."""
    from planning.case import Case
    from planning.planner import plan_case

    case = Case.sample(spacing_mm=(2.0, 2.0, 2.0))
    case.find_anatomy()
    case.grow_lesion(case.default_seed())
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    save_plan(plan_case(case), path)
    return path.read_text(encoding="utf-8")


def fingerprint(path: Path) -> tuple[str, int, int]:
    st_ = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st_.st_size, st_.st_mtime_ns


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def assert_refused(path: Path, *, match: str | None = None) -> PlanFileError:
    """load_plan refuses with a one-line PlanFileError naming the file; the file is unchanged."""
    before = fingerprint(path)
    with pytest.raises(PlanFileError) as err:
        load_plan(path)
    text = str(err.value)
    assert text and "\n" not in text and "Traceback" not in text
    assert str(path) in text
    if match:
        assert match in text, text
    assert fingerprint(path) == before
    return err.value


def assert_cli_refuses(path: Path, tmp_path: Path) -> None:
    """``report`` and ``export`` exit 2 with one line and write nothing."""
    before = fingerprint(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    for argv in (
        ("report", str(path), "--out", str(out_dir / "r.html")),
        ("export", str(path), "--markups", str(out_dir / "m.mrk.json")),
        ("export", str(path), "--plan-out", str(path)),  # would overwrite the file itself
    ):
        code, _, err = run_cli(*argv)
        assert code == 2, (argv, err)
        assert err.startswith("sacroplan: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err and "internal error" not in err
    assert list(out_dir.iterdir()) == []
    assert fingerprint(path) == before


def test_the_real_plan_loads(real_plan_text: str, tmp_path: Path):
    path = tmp_path / "plan.json"
    path.write_text(real_plan_text, encoding="utf-8")
    plan = load_plan(path)
    assert plan.candidates and plan.lesion is not None


# -- corrupt, truncated, binary --------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.33, 0.5, 0.9, 0.999])
def test_truncated(real_plan_text: str, tmp_path: Path, fraction: float):
    data = real_plan_text.encode()
    path = tmp_path / "plan.json"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_refused(path, match="not")
    assert_cli_refuses(path, tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 4096,
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        b"\x1f\x8b\x08\x00" + os.urandom(512),
        "﻿{}".encode("utf-16"),
        b"\xff\xfe{\x00}\x00",
        b'{"schema": "sacroplan.plan/1", "x": "\xc3\x28"}',
        b"DICM" * 100,
    ],
    ids=["empty", "zeros", "png", "gzip", "utf16", "bom", "bad-utf8", "dicm"],
)
def test_binary(tmp_path: Path, content: bytes):
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    assert_refused(path, match="not a sacroplan plan")
    assert_cli_refuses(path, tmp_path)


def test_flipped_bytes_give_a_plan_or_a_clear_error(real_plan_text: str, tmp_path: Path):
    data = bytearray(real_plan_text.encode())
    path = tmp_path / "plan.json"
    step = max(1, len(data) // 150)
    for pos in range(0, len(data), step):
        mutated = bytearray(data)
        mutated[pos] ^= 0x5A
        path.write_bytes(bytes(mutated))
        with contextlib.suppress(PlanFileError):
            load_plan(path)


# -- hand-edited: wrong types, NaN, missing keys, other schema -------------------------------
WRONG_VALUES = [1, -1, 1.5, "x", "", [], [1, 2], {}, {"a": 1}, None, True]


@pytest.mark.parametrize("key", PLAN_KEYS)
def test_every_key_missing_or_of_the_wrong_type(real_plan_text: str, tmp_path: Path, key: str):
    data = json.loads(real_plan_text)
    path = tmp_path / "plan.json"
    missing = {k: v for k, v in data.items() if k != key}
    path.write_text(json.dumps(missing))
    err = assert_refused(path)
    assert key in str(err)
    for value in WRONG_VALUES:
        edited = dict(data, **{key: value})
        path.write_text(json.dumps(edited))
        try:
            plan = load_plan(path)
        except PlanFileError as exc:
            assert "\n" not in str(exc)
            continue
        assert isinstance(plan, Plan)  # e.g. null where null is allowed


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers(real_plan_text: str, tmp_path: Path, literal: str):
    data = json.loads(real_plan_text)
    text = json.dumps(data).replace(
        json.dumps(data["margins"]["foramen_mm"]), literal, 1
    )  # the first margin value
    path = tmp_path / "plan.json"
    path.write_text(text)
    assert_refused(path, match="not valid JSON")


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        ("sacroplan.plan/999", "newer sacroplan"),
        ("sacroplan.plan/0", "schema"),
        ("something.else/1", "schema"),
        (5, "schema"),
        (None, "schema missing"),
    ],
)
def test_wrong_schema(real_plan_text: str, tmp_path: Path, schema: object, match: str):
    data = json.loads(real_plan_text)
    data["schema"] = schema
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    assert_refused(path, match=match)


@pytest.mark.parametrize(
    "content",
    ["[]", '"a string"', "42", "null", "true", '{"foo": 1}', '{"schema": {}}'],
)
def test_json_that_is_not_a_plan(tmp_path: Path, content: str):
    path = tmp_path / "plan.json"
    path.write_text(content)
    assert_refused(path, match="not a sacroplan plan")
    assert_cli_refuses(path, tmp_path)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_field_replaced_by_any_json_value(real_plan_text: str, data: st.DataObject):
    """Hand edits anywhere in the tree: a Plan or a PlanFileError, nothing else."""
    doc = json.loads(real_plan_text)
    paths = _paths(doc)[1:]
    where = data.draw(st.sampled_from(paths))
    new = data.draw(json_values)
    edited = copy.deepcopy(doc)
    node = edited
    for key in where[:-1]:
        node = node[key]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[where[-1]]
    else:
        node[where[-1]] = new
    try:
        plan = parse_plan_text(json.dumps(edited), name="edited.json")
    except PlanFileError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # what loads must save again and load back equal (no junk slips through)
    again = parse_plan_text(json.dumps(plan.to_json()), name="again.json")
    assert again.to_json() == plan.to_json()


# -- huge ------------------------------------------------------------------------------------
def test_a_2_gb_file_is_refused_without_reading_it(tmp_path: Path):
    path = tmp_path / "plan.json"
    with open(path, "wb") as fh:
        fh.write(b'{"schema": "sacroplan.plan/1"')
        fh.truncate(2 * 1024**3)  # sparse: claims 2 GB, costs nothing on disk
    err = assert_refused(path, match="MB")
    assert f"{MAX_PLAN_BYTES / 1e6:.0f} MB" in str(err)
    assert_cli_refuses(path, tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "[" * 200_000 + "]" * 200_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"schema": "sacroplan.plan/1", "anatomy": ' + "[" * 50_000 + "]" * 50_000 + "}",
        '{"schema": "sacroplan.plan/1", "created": ' + "9" * 100_000 + "}",
        '{"schema": "sacroplan.plan/1", "created": 1' + "0" * 400 + ".5}",
        '{"schema": "sacroplan.plan/1", "k": "' + "x" * 5_000_000 + '"}',
    ],
    ids=["nested-list", "nested-object", "nested-anatomy", "giant-int", "giant-float", "long"],
)
def test_deep_nesting_and_giant_values(tmp_path: Path, content: str):
    path = tmp_path / "plan.json"
    path.write_text(content)
    assert_refused(path)


# -- paths inside a plan ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "source",
    ["../../etc/passwd", "/etc/passwd", "..", "/", "/dev/zero", "sample:../../etc"],
)
def test_paths_in_a_plan_are_never_followed_when_it_loads(
    real_plan_text: str, tmp_path: Path, source: str
):
    data = json.loads(real_plan_text)
    data["case"]["source_path"] = source
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    plan = load_plan(path)  # informational: loading a plan opens nothing
    assert plan.case.source_path == source


@pytest.mark.parametrize("source", ["../../etc/passwd", "/etc/passwd", "/dev/zero", ".."])
def test_report_on_a_plan_pointing_elsewhere(
    real_plan_text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
):
    """The study path is only read: a report without images or a clear refusal; the only
    file written is the one the user named."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    data = json.loads(real_plan_text)
    data["case"]["source_path"] = source
    path = work / "plan.json"
    path.write_text(json.dumps(data))
    before = fingerprint(path)
    out = work / "report.html"
    code, _, err = run_cli("report", str(path), "--out", str(out))
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err
    if code == 2:
        assert err.count("\n") == 1 and not out.exists()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted({Path("a/b/plan.json"), *([Path("a/b/report.html")] * (code == 0))})
    assert fingerprint(path) == before


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 100_000])
def test_unusable_path_strings_are_refused(real_plan_text: str, tmp_path: Path, bad: str):
    data = json.loads(real_plan_text)
    data["case"]["source_path"] = bad
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    assert_refused(path, match="case.source_path")


def test_output_names_with_dotdot_stay_where_the_user_said(real_plan_text: str, tmp_path: Path):
    """Output file names come from the command line only, never from the plan's content."""
    data = json.loads(real_plan_text)
    for traj in data["trajectories"]:
        traj["name"] = "../../escaped"
    data["view_state"] = {"export_name": "../../escaped", "report": "/tmp/escaped"}
    path = tmp_path / "in" / "plan.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    try:
        load_plan(path)
    except PlanFileError:
        return  # refused outright is fine too
    out_dir = tmp_path / "in" / "out"
    out_dir.mkdir()
    code, _, err = run_cli("export", str(path), "--markups", str(out_dir / "m.mrk.json"))
    assert code in (0, 2), err
    escaped = [p for p in tmp_path.rglob("*escaped*")]
    assert escaped == []


# -- not a file ------------------------------------------------------------------------------
def test_folder_missing_file_and_special_files(tmp_path: Path):
    with pytest.raises(PlanFileError, match="is a folder"):
        load_plan(tmp_path)
    with pytest.raises(PlanFileError, match="cannot open"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(PlanFileError):
        load_plan("/dev/null")


# -- the settings file -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b'{"recent": 5}',
        b'{"recent": [5, "x", {"kind": "evil"}]}',
        b"[" * 100_000,
        b'{"recent": NaN}',
    ],
)
def test_hostile_settings_file(content: bytes):
    pytest.importorskip("PySide6")
    from app.gui import autosave

    path = autosave.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    before = fingerprint(path)
    settings_ = autosave.load_settings()
    assert isinstance(settings_, dict)
    recent = autosave.recent_cases()
    assert isinstance(recent, list)
    assert all(isinstance(r, dict) and r.get("kind") in ("path", "sample") for r in recent)
    assert fingerprint(path) == before


def test_huge_settings_file_is_ignored_without_reading_it():
    pytest.importorskip("PySide6")
    from app.gui import autosave

    path = autosave.settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(2 * 1024**3)
    assert autosave.load_settings() == {}
    assert path.stat().st_size == 2 * 1024**3
