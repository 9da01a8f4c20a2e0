"""`sacroplan segment` end to end on the sample and on the real CT, against the phantom's truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_data

from app.cli import main
from imaging.phantom import build_truth


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_segment_sample_matches_truth_and_writes_labels(capsys, tmp_path: Path) -> None:
    labels = tmp_path / "labels.nii.gz"
    report = run_json(capsys, "segment", "--sample", "--out-labels", str(labels))
    truth = build_truth(lesion="left_ala_s1").lesion
    lesion = report["lesion"]
    assert lesion["volume_ml"] == pytest.approx(truth.volume_ml, rel=0.05)
    assert lesion["denis_zone"] == truth.denis_zone == 1
    assert lesion["flags"]["diameter_over_30mm"] is False
    assert lesion["flags"]["touches_foramen"] is False
    assert len(report["anatomy"]["foramina"]) == 8
    img = sitk.ReadImage(str(labels))
    arr = sitk.GetArrayFromImage(img)
    assert set(np.unique(arr)) == {0, 1, 2, 3, 4, 5, 6}
    voxel_ml = np.prod(img.GetSpacing()) / 1000.0
    assert (arr == 6).sum() * voxel_ml == pytest.approx(lesion["volume_ml"], rel=1e-6)


def test_segment_negative_seed_and_large_lesion_flags(capsys) -> None:
    truth = build_truth(lesion="large_foramen").lesion
    seed = ",".join(f"{v:.2f}" for v in truth.center_lps)
    report = run_json(capsys, "segment", "--sample", "--lesion", "large_foramen", "--seed", seed)
    lesion = report["lesion"]
    assert lesion["volume_ml"] == pytest.approx(truth.volume_ml, rel=0.10)
    assert lesion["flags"]["diameter_over_30mm"] is True
    assert lesion["flags"]["touches_foramen"] is True
    assert lesion["denis_zone"] == truth.denis_zone == 2


def test_segment_bad_seed_is_a_clear_error(capsys) -> None:
    code = main(["segment", "--sample", "--seed=-900,0,0"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "outside the study" in err and "Traceback" not in err


def test_segment_needs_a_seed_on_a_real_study(capsys) -> None:
    folder = shared_data("pelvis_ct_dicom")
    code = main(["segment", str(folder)])
    _, err = capsys.readouterr()
    assert code == 2 and "--seed" in err
