"""Exports: Slicer markups (schema-valid, round trip), the lesion mask in the plan, DICOM SEG
(reads back voxel for voxel on the source grid), NIfTI label maps, and the export command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging.dicom_write import write_series
from imaging.errors import PlanFileError
from imaging.labels import Label
from imaging.phantom import make_phantom
from imaging.read import load
from imaging.seg import SegExportError, read_source_series, seg_mask_on_grid, write_lesion_seg
from imaging.volume import Volume
from planning.export import (
    ExportError,
    StudyMismatchError,
    StudyNotFoundError,
    markups_line_json,
    open_plan_study,
    read_markups,
    write_label_map,
    write_markups,
)
from planning.multi_needle import (
    MultiNeedleOptions,
    MultiNeedlePlan,
    PlacedNeedle,
    with_multi_needle,
)
from planning.plan import (
    Candidate,
    CaseRef,
    Clearance,
    Plan,
    Trajectory,
    decode_mask,
    encode_mask,
    grid_json,
    load_plan,
    parse_plan_text,
    save_plan,
)

SCHEMA = Path(__file__).parent / "data" / "markups-schema-v1.0.3.json"
ENTRY = (31.25, 98.5, 201.0)
TIP = (41.5, 40.125, 145.375)


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _plan_with(*trajectories: Trajectory) -> Plan:
    return Plan(trajectories=tuple(trajectories))


def _traj(entry=ENTRY, tip=TIP, source="suggested", approach="posterior_short") -> Trajectory:
    return Trajectory(
        entry_lps=entry, target_lps=tip, needle="13G-100", approach=approach, source=source
    )


# -- markups -----------------------------------------------------------------------------------
def test_markups_validate_against_slicers_schema_and_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "needle.mrk.json"
    paths = write_markups(_plan_with(_traj()), out)
    assert paths == [out]
    doc = json.loads(out.read_text())
    errors = list(_validator().iter_errors(doc))
    assert errors == [], [e.message for e in errors]
    (markup,) = doc["markups"]
    assert markup["type"] == "Line"
    assert markup["coordinateSystem"] == "LPS"
    assert [cp["positionStatus"] for cp in markup["controlPoints"]] == ["defined", "defined"]
    length = markup["measurements"][0]["value"]
    assert length == pytest.approx(np.linalg.norm(np.subtract(TIP, ENTRY)), abs=1e-9)
    (line,) = read_markups(out)
    assert line.start_lps == ENTRY and line.end_lps == TIP


def _candidate(side: str, entry: tuple, tip: tuple, approach: str) -> Candidate:
    return Candidate(
        approach=approach,
        side=side,
        skin_entry_lps=entry,
        bone_entry_lps=None,
        target_lps=tip,
        needle="13G-100",
        needle_od_mm=2.41,
        skin_to_target_mm=float(np.linalg.norm(np.subtract(tip, entry))),
        in_bone_mm=25.0,
        clearance_mm=Clearance(foramina=4.2, by_foramen={f"{side} S1": 4.2}, canal=9.0),
        tip_to_anterior_cortex_mm=8.0,
        exits_anterior=False,
        si_joint_crossed=False,
        feasible=True,
    )


def _two_needle_plan() -> Plan:
    """A plan whose multi-needle decision is two bilateral needles (numbers made up)."""
    left = _candidate("left", ENTRY, TIP, "posterior_short")
    right = _candidate("right", (-30.0, 90.0, 180.0), (-20.0, 40.0, 150.0), "interpedicular")
    multi = MultiNeedlePlan(
        kind="bilateral",
        needles=(
            PlacedNeedle("needle 1", left, 2.75, 2.5),
            PlacedNeedle("needle 2", right, 2.75, 2.1),
        ),
        cement_total_ml=5.5,
        lesion_ml=7.4,
        lesion_max_diameter_mm=33.0,
        coverage_single=0.6,
        coverage=0.62,
        filling_single=0.7,
        filling=0.95,
        attainable=0.74,
        tip_gap_mm=63.3,
        path_gap_mm=58.0,
        options=MultiNeedleOptions(),
        reasons=("one needle is not enough", "the tips are 63 mm apart"),
    )
    plan = Plan(candidates=(left,), trajectories=(_traj(),))
    return with_multi_needle(plan, multi)


def test_markups_one_line_per_needle_in_one_file(tmp_path: Path) -> None:
    plan = _two_needle_plan()
    out = tmp_path / "plan.mrk.json"
    assert write_markups(plan, out) == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.mrk.json"]
    doc = json.loads(out.read_text())
    errors = list(_validator().iter_errors(doc))
    assert errors == [], [e.message for e in errors]
    assert len(doc["markups"]) == len(plan.multi_needle.needles) == 2
    assert [m["name"] for m in doc["markups"]] == [
        "needle 1 posterior_short left",
        "needle 2 interpedicular right",
    ]
    lines = read_markups(out)
    for line, placed in zip(lines, plan.multi_needle.needles, strict=True):
        assert line.start_lps == placed.candidate.skin_entry_lps
        assert line.end_lps == placed.candidate.target_lps
        assert "2.75 mL of cement" in line.description
    # chosen trajectories without a multi-needle decision: one file, one line each
    second = _traj(entry=(-30.0, 90.0, 180.0), tip=(-20.0, 40.0, 150.0), source="manual")
    out2 = tmp_path / "manual.mrk.json"
    write_markups(_plan_with(_traj(), second), out2)
    doc2 = json.loads(out2.read_text())
    assert not list(_validator().iter_errors(doc2))
    assert [m["name"].split(" posterior")[0] for m in doc2["markups"]] == ["needle 1", "needle 2"]
    assert read_markups(out2)[1].start_lps == (-30.0, 90.0, 180.0)


def test_export_command_keeps_the_multi_needle_block(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from app.cli import main

    plan_path = tmp_path / "plan.json"
    save_plan(_two_needle_plan(), plan_path)
    args = ["export", str(plan_path), "--markups", str(tmp_path / "n.mrk.json")]
    assert main([*args, "--plan-out", str(tmp_path / "copy.json"), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["markups"] == [str(tmp_path / "n.mrk.json")]
    assert len(read_markups(tmp_path / "n.mrk.json")) == 2
    copy = json.loads((tmp_path / "copy.json").read_text())
    original = json.loads(plan_path.read_text())
    assert copy["multi_needle"] == original["multi_needle"]
    assert load_plan(tmp_path / "copy.json").multi_needle == load_plan(plan_path).multi_needle


def test_markups_in_ras_read_back_as_lps(tmp_path: Path) -> None:
    doc = markups_line_json(ENTRY, TIP, name="n")
    m = doc["markups"][0]
    m["coordinateSystem"] = "RAS"
    for cp in m["controlPoints"]:
        x, y, z = cp["position"]
        cp["position"] = [-x, -y, z]
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps(doc))
    assert not list(_validator().iter_errors(doc))
    (line,) = read_markups(path)
    assert np.allclose(line.start_lps, ENTRY) and np.allclose(line.end_lps, TIP)


def test_markups_need_a_trajectory_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no chosen trajectory"):
        write_markups(Plan(), tmp_path / "x.mrk.json")
    with pytest.raises(ExportError, match="does not exist"):
        write_markups(_plan_with(_traj()), tmp_path / "nope" / "x.mrk.json")
    with pytest.raises(ExportError, match="finite"):
        markups_line_json((0, 0, float("nan")), TIP, name="bad")


# -- the lesion mask in the plan ---------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_run_length_code_round_trips(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((7, 9, 11)) > 0.6
    mask[0, 0, 0] = True  # a run at the very start
    mask[-1, -1, -1] = True  # and at the very end
    code = encode_mask(mask)
    assert code["shape"] == [7, 9, 11]
    assert np.array_equal(decode_mask(code), mask)
    assert np.array_equal(decode_mask(encode_mask(np.zeros((2, 3, 4), bool))), np.zeros((2, 3, 4)))


def _plan_with_lesion_mask(tmp_path: Path, mask: np.ndarray) -> Path:
    lesion = {
        "volume_ml": 1.0,
        "max_diameter_mm": 10.0,
        "centroid_lps": [0.0, 0.0, 0.0],
        "denis_zone": 1,
        "zones_ml": None,
        "flags": {},
        "seed_lps": [0.0, 0.0, 0.0],
        "mode": "lytic",
        "band": [-30.0, 250.0],
        "mask": encode_mask(mask),
    }
    path = tmp_path / "p.json"
    save_plan(Plan(lesion=lesion), path)
    return path


def test_plan_keeps_the_lesion_mask_and_refuses_a_broken_one(tmp_path: Path) -> None:
    mask = np.zeros((4, 5, 6), bool)
    mask[1:3, 2:4, 1:5] = True
    path = _plan_with_lesion_mask(tmp_path, mask)
    assert np.array_equal(decode_mask(load_plan(path).lesion["mask"]), mask)
    data = json.loads(path.read_text())
    for runs, problem in (([5, 2, 1, 2], "ordered runs"), ([118, 5], "inside the grid")):
        data["lesion"]["mask"]["runs"] = runs
        with pytest.raises(PlanFileError, match=problem):
            parse_plan_text(json.dumps(data))
    data["lesion"]["mask"]["runs"] = [0, 0]
    with pytest.raises(PlanFileError, match="at least 1"):
        parse_plan_text(json.dumps(data))


def test_old_plans_without_grid_or_modality_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    save_plan(Plan(), path)
    data = json.loads(path.read_text())
    del data["case"]["grid"], data["case"]["modality"]
    plan = parse_plan_text(json.dumps(data))
    assert plan.case.grid is None and plan.case.modality is None
    data["case"]["grid"] = {"size": [1, 2], "spacing_mm": [1, 1, 1], "origin_lps": [0, 0, 0]}
    with pytest.raises(PlanFileError, match="case.grid"):
        parse_plan_text(json.dumps(data))


# -- DICOM SEG ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oblique_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Volume]:
    """The phantom on an anisotropic, oblique grid written as a DICOM series, and its lesion."""
    phantom = make_phantom(
        lesion="left_ala_s1", spacing_mm=(1.4, 1.1, 2.0), rotation_deg=(6.0, -9.0, 14.0)
    )
    folder = tmp_path_factory.mktemp("oblique")
    files = write_series(phantom.image, folder, modality="CT", file_names="shuffled")
    lesion = phantom.labels.with_array(
        (phantom.labels.array == Label.LESION).astype(np.uint8), modality="LABEL"
    )
    return files, lesion


def test_seg_reads_back_voxel_for_voxel_on_the_source_grid(
    oblique_series: tuple[list[Path], Volume], tmp_path: Path
) -> None:
    import highdicom as hd

    files, lesion = oblique_series
    study = load(files[0].parent)
    assert study.same_grid(lesion)  # the series reads back on the phantom's own grid
    mask = study.with_array(lesion.array, modality="LABEL")
    source = read_source_series(study.meta["source_paths"])
    out = write_lesion_seg(mask, source, tmp_path / "lesion.dcm", software_version="test")

    # pydicom only, from the SEG's own plane positions
    back = seg_mask_on_grid(out, study)
    assert back.sum() == lesion.array.sum() > 100
    assert np.array_equal(back, lesion.array > 0)

    # highdicom, per referenced source image
    seg = hd.seg.segread(out)
    assert seg.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.PatientID == source[0].PatientID
    assert seg.get_segment_description(1).segment_label == "Lesion"
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        if series.SeriesInstanceUID == source[0].SeriesInstanceUID
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in source}
    normal = study.direction[:, 2]
    for ds in source:
        k = int(
            round(
                float((np.asarray(ds.ImagePositionPatient) - study.origin) @ normal)
                / study.spacing[2]
            )
        )
        expected = lesion.array[k] > 0
        if not expected.any():
            continue
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID], segment_numbers=[1]
        )
        assert np.array_equal(pixels[0, :, :, 0] > 0, expected)


def test_seg_refuses_a_non_dicom_study_and_an_empty_mask(
    oblique_series: tuple[list[Path], Volume], tmp_path: Path
) -> None:
    files, lesion = oblique_series
    with pytest.raises(SegExportError, match="not a DICOM series"):
        read_source_series([])
    source = read_source_series(files[:3])
    empty = lesion.with_array(np.zeros_like(lesion.array))
    with pytest.raises(SegExportError, match="empty"):
        write_lesion_seg(empty, source, tmp_path / "x.dcm")


# -- label maps --------------------------------------------------------------------------------
def test_label_map_nifti_has_the_study_grid_in_an_independent_reader(
    oblique_series: tuple[list[Path], Volume], tmp_path: Path
) -> None:
    nib = pytest.importorskip("nibabel")
    _, lesion = oblique_series
    labels = lesion.with_array(lesion.array * np.uint8(Label.LESION))
    out = write_label_map(labels, tmp_path / "labels.nii.gz")
    img = nib.load(str(out))
    data = np.asarray(img.dataobj)  # [i, j, k]
    assert np.array_equal(np.transpose(data, (2, 1, 0)), labels.array)
    # the same voxel lands on the same physical point (nibabel speaks RAS)
    k, j, i = np.argwhere(labels.array == Label.LESION)[0]
    ras = img.affine @ np.array([i, j, k, 1.0])
    lps = np.array([-ras[0], -ras[1], ras[2]])
    assert np.allclose(lps, labels.index_to_world(np.array([i, j, k], float)), atol=1e-3)


# -- the plan's study --------------------------------------------------------------------------
def _sample_plan(spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> tuple[Plan, Volume]:
    phantom = make_phantom(lesion="left_ala_s1", spacing_mm=spacing)
    image = phantom.image
    mask = phantom.labels.array == Label.LESION
    lesion = {
        "volume_ml": float(mask.sum() * image.voxel_volume_mm3 / 1000),
        "max_diameter_mm": 20.0,
        "centroid_lps": [0.0, 0.0, 0.0],
        "denis_zone": 1,
        "zones_ml": None,
        "flags": {},
        "seed_lps": list(phantom.truth.lesion.center_lps),
        "mode": "lytic",
        "mask": encode_mask(mask),
    }
    case = CaseRef(
        source_path="sample:left_ala_s1",
        modality="CT",
        grid=grid_json(image.size, image.spacing, image.origin, image.direction),
    )
    return Plan(case=case, lesion=lesion), phantom.labels


def test_plan_study_restores_the_recorded_lesion_and_checks_the_grid(tmp_path: Path) -> None:
    plan, labels = _sample_plan()
    study = open_plan_study(plan, anatomy=False)
    assert study.image.same_grid(labels)
    assert np.array_equal(study.lesion_mask.array > 0, labels.array == Label.LESION)
    assert np.array_equal(study.labels.array == Label.LESION, labels.array == Label.LESION)

    other = dataclasses.replace(plan.case, grid={**plan.case.grid, "origin_lps": [0.0, 0.0, 0.0]})
    with pytest.raises(StudyMismatchError, match="not the one this plan was made on"):
        open_plan_study(dataclasses.replace(plan, case=other), anatomy=False)
    gone = dataclasses.replace(plan.case, source_path=str(tmp_path / "moved"))
    with pytest.raises(StudyNotFoundError, match="not at"):
        open_plan_study(dataclasses.replace(plan, case=gone), anatomy=False)
    for bad, problem in (
        ("../study", "relative path"),
        ("/", "whole file system"),
        ("/dev/null", "not a file or folder"),
    ):
        odd = dataclasses.replace(plan.case, source_path=bad)
        with pytest.raises(StudyMismatchError, match=problem):
            open_plan_study(dataclasses.replace(plan, case=odd), anatomy=False)


def test_plan_study_regrows_the_lesion_from_the_seed_when_no_mask(tmp_path: Path) -> None:
    plan, labels = _sample_plan()
    lesion = {k: v for k, v in plan.lesion.items() if k != "mask"}
    study = open_plan_study(dataclasses.replace(plan, lesion=lesion), anatomy=False)
    grown = study.lesion_mask.array > 0
    truth = labels.array == Label.LESION
    dice = 2 * (grown & truth).sum() / (grown.sum() + truth.sum())
    assert dice > 0.8


# -- the command -------------------------------------------------------------------------------
def test_export_command_writes_markups_seg_labels_and_plan(
    oblique_series: tuple[list[Path], Volume], tmp_path: Path
) -> None:
    from app.cli import main

    files, lesion = oblique_series
    study = load(files[0].parent)
    mask = lesion.array > 0
    plan = Plan(
        case=CaseRef(
            source_path=str(files[0].parent),
            series_uid=study.meta["series_uid"],
            modality="CT",
            grid=grid_json(study.size, study.spacing, study.origin, study.direction),
        ),
        lesion={
            "volume_ml": float(mask.sum() * study.voxel_volume_mm3 / 1000),
            "max_diameter_mm": 20.0,
            "centroid_lps": None,
            "denis_zone": None,
            "zones_ml": None,
            "flags": {},
            "seed_lps": None,
            "mode": "lytic",
            "mask": encode_mask(mask),
        },
        trajectories=(_traj(),),
    )
    plan_path = tmp_path / "plan.json"
    save_plan(plan, plan_path)
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "export",
        str(plan_path),
        "--markups",
        str(out / "n.mrk.json"),
        "--seg",
        str(out / "lesion.dcm"),
        "--labels",
        str(out / "labels.nii.gz"),
        "--plan-out",
        str(out / "copy.json"),
    ]
    assert main(args) == 0
    assert read_markups(out / "n.mrk.json")[0].end_lps == TIP
    assert np.array_equal(seg_mask_on_grid(out / "lesion.dcm", study), mask)
    assert pydicom.dcmread(out / "lesion.dcm").Modality == "SEG"
    back = load(out / "labels.nii.gz")
    assert back.same_grid(study)
    assert np.array_equal(back.array == Label.LESION, mask)
    assert load_plan(out / "copy.json") == load_plan(plan_path)


def test_export_command_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from app.cli import main

    plan_path = tmp_path / "plan.json"
    save_plan(Plan(case=CaseRef(source_path="sample:left_ala_s1")), plan_path)
    assert main(["export", str(plan_path)]) == 2
    assert "say what to export" in capsys.readouterr().err
    assert main(["export", str(plan_path), "--markups", str(tmp_path / "m.mrk.json")]) == 2
    assert "no chosen trajectory" in capsys.readouterr().err
    assert main(["export", str(plan_path), "--seg", str(tmp_path / "s.dcm")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lesion" in err
