"""The command line, called in-process as a user would call it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from app import __version__
from app.cli import _join_point_values, main, parse_triplet


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"sacroplan {__version__}"


def test_point_options_accept_negative_values() -> None:
    joined = _join_point_values(["segment", "--seed", "-41.0,-104.3,211.3", "--json"])
    assert joined == ["segment", "--seed=-41.0,-104.3,211.3", "--json"]
    assert parse_triplet("-41.0,-104.3,211.3") == (-41.0, -104.3, 211.3)


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "1,2,3,4", "1,nan,2", ""])
def test_bad_points_are_user_errors(text: str) -> None:
    from app.cli import UserInputError

    with pytest.raises(UserInputError, match="three numbers"):
        parse_triplet(text)


def test_unknown_command_and_missing_path_exit_2(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err and "Traceback" not in err
    code, _, err = run(capsys, "info", str(tmp_path / "nowhere"))
    assert code == 2
    assert err.count("\n") == 1 and "no such file or folder" in err


def test_bad_spacing_exit_2(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "phantom", "--out", str(tmp_path), "--spacing", "1,0,1")
    assert code == 2 and "--spacing must be positive" in err


def test_info_on_real_pelvis_series(capsys) -> None:
    folder = shared_data("pelvis_ct_dicom")
    code, out, err = run(capsys, "info", str(folder), "--json")
    assert code == 0, err
    data = json.loads(out)
    assert len(data["series"]) == 1
    s = data["series"][0]
    assert s["modality"] == "CT"
    assert s["n_images"] == 112
    assert s["size"] == [122, 101, 112]
    np.testing.assert_allclose(s["spacing"], [3, 3, 3], atol=1e-6)
    np.testing.assert_allclose(s["origin"], [-185.04, -311.32, 94.30], atol=0.01)
    np.testing.assert_allclose(s["direction"], np.eye(3).ravel(), atol=1e-6)
    # Only the folder's licence and readme are left out, each with a reason.
    skipped = {Path(k["path"]).name: k["reason"] for k in data["skipped"]}
    assert set(skipped) <= {"LICENSE-Apache-2.0.txt", "README.md"}
    assert all("not a DICOM file" in r for r in skipped.values())


def test_info_human_readable(capsys) -> None:
    folder = shared_data("pelvis_ct_dicom")
    code, out, _ = run(capsys, "info", str(folder))
    assert code == 0
    assert "122x101x112" in out and "spacing 3 x 3 x 3 mm" in out


def test_phantom_writes_series_truth_and_labels(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "sample"
    code, out, err = run(
        capsys, "phantom", "--out", str(out_dir), "--lesion", "s1_body", "--spacing", "1.5,1.5,2"
    )
    assert code == 0, err
    truth = json.loads((out_dir / "truth.json").read_text())
    assert truth["lesion"]["site"] == "s1_body"
    assert (out_dir / "labels.nii.gz").stat().st_size > 0
    code, out, err = run(capsys, "info", str(out_dir / "dicom"), "--json")
    assert code == 0, err
    series = json.loads(out)["series"]
    assert len(series) == 1
    np.testing.assert_allclose(series[0]["spacing"], [1.5, 1.5, 2.0], atol=1e-3)


def test_demo_summarises_the_sample(capsys) -> None:
    code, out, err = run(capsys, "demo", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["volume"]["modality"] == "CT"
    assert data["truth"]["n_foramina"] == 8
    assert data["truth"]["lesion"]["volume_ml"] > 0


def test_every_odd_dicom_folder_gives_a_clean_outcome(capsys) -> None:
    root = shared_data("odd_dicom")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "LICENSES")
    for folder in folders:
        for path in [folder, *sorted(folder.rglob("*"))[:80]]:
            code, out, err = run(capsys, "info", str(path), "--json")
            assert code in (0, 2), f"{path}: exit {code}: {err}"
            assert "Traceback" not in err + out, path
            if code == 0:
                json.loads(out)
