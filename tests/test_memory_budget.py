"""The memory budget: a study larger than it is refused from its headers, before any pixel read.

A refused study raises :class:`~imaging.errors.MemoryBudgetError` (no downsampling): the
message names the series, its size, the estimate, the budget and the setting to change.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.cli import main
from imaging.dicom_write import write_series
from imaging.errors import MemoryBudgetError, SacroplanError
from imaging.read import (
    MEMORY_BUDGET_ENV,
    WORKING_SET_FACTOR,
    check_memory_budget,
    load,
    load_series,
    memory_budget_mb,
    memory_needed_mb,
    scan,
)
from imaging.volume import Volume

SHAPE = (12, 30, 40)  # [k, j, i]


@pytest.fixture
def series(tmp_path: Path) -> Path:
    theta = np.radians(15.0)
    direction = np.array(
        [[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0, 0, 1.0]]
    )
    rng = np.random.default_rng(0)
    volume = Volume(
        array=rng.integers(-1000, 1000, size=SHAPE).astype(np.int16),
        origin=np.array([10.0, -20.0, 30.0]),
        spacing=np.array([0.7, 0.9, 2.0]),
        direction=direction,
        modality="CT",
    )
    out = tmp_path / "ct"
    write_series(volume, out, modality="CT")
    return out


def test_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "750")
    assert memory_budget_mb() == 750.0
    monkeypatch.delenv(MEMORY_BUDGET_ENV)
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert memory_budget_mb() == pytest.approx(total_mb / 2)


@pytest.mark.parametrize("text", ["abc", "0", "-5", "nan", "inf"])
def test_a_bad_budget_setting_is_named(monkeypatch: pytest.MonkeyPatch, series: Path, text: str):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, text)
    with pytest.raises(MemoryBudgetError, match=MEMORY_BUDGET_ENV):
        memory_budget_mb()
    with pytest.raises(MemoryBudgetError, match="positive number of megabytes"):
        load(series)


def test_estimate_is_voxels_times_bytes_times_the_working_factor(series: Path):
    (info,) = scan(series).series
    voxels = SHAPE[0] * SHAPE[1] * SHAPE[2]
    assert memory_needed_mb(info) == pytest.approx(WORKING_SET_FACTOR * voxels * 2 / 2**20)
    volume = load_series(info)
    assert volume.array.dtype == np.int16  # the estimate's 2 bytes per voxel are what loads


def test_series_over_budget_is_refused_before_its_pixels_are_read(
    monkeypatch: pytest.MonkeyPatch, series: Path
):
    (info,) = scan(series).series
    needed = memory_needed_mb(info)
    # damage every file after the scan: reading any pixel would now fail differently
    for path in series.iterdir():
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 100])
    monkeypatch.setenv(MEMORY_BUDGET_ENV, str(needed / 2))
    with pytest.raises(MemoryBudgetError) as err:
        load_series(info)
    text = str(err.value)
    assert info.uid in text and "40x30x12 voxels" in text
    assert MEMORY_BUDGET_ENV in text and "memory budget" in text
    assert "\n" not in text
    # an explicit budget overrides the environment
    with pytest.raises(SacroplanError) as err2:
        load_series(info, budget_mb=needed * 2)
    assert not isinstance(err2.value, MemoryBudgetError)  # it got past the budget to the damage


def test_budget_boundary(series: Path):
    (info,) = scan(series).series
    needed = memory_needed_mb(info)
    check_memory_budget(info, budget_mb=needed)  # exactly enough
    with pytest.raises(MemoryBudgetError):
        check_memory_budget(info, budget_mb=needed * 0.999)


def test_scan_lists_the_series_with_a_warning(monkeypatch: pytest.MonkeyPatch, series: Path):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "0.01")
    (info,) = scan(series).series
    assert any("memory budget" in w and "cannot be loaded" in w for w in info.warnings)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_refuses_with_one_line(monkeypatch: pytest.MonkeyPatch, series: Path):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "0.01")
    code, out, err = run_cli("info", str(series))
    assert code == 0 and "memory budget" in out
    code, out, err = run_cli("segment", str(series), "--seed", "0,0,0")
    assert code == 2, err
    assert err.startswith("sacroplan: error: series ") and "memory budget" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _nifti_claiming(path: Path, dims: tuple[int, int, int]) -> None:
    """A real NIfTI file whose header is then edited to claim ``dims`` voxels."""
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.int16))
    sitk.WriteImage(image, str(path))
    data = bytearray(path.read_bytes())
    # nifti-1 header: dim[8] (int16) at byte 40; dim[0] = number of dimensions
    struct.pack_into("<8h", data, 40, 3, *dims, 1, 1, 1, 1)
    path.write_bytes(bytes(data))


def test_volume_file_claiming_a_huge_grid_is_refused_from_its_header(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "2000")
    path = tmp_path / "huge.nii"
    _nifti_claiming(path, (30000, 30000, 30000))
    result = scan(path)
    assert not result.series
    (skipped,) = result.skipped
    assert "memory budget" in skipped.reason and "30000x30000x30000" in skipped.reason
    with pytest.raises(SacroplanError, match="memory budget"):
        load(path)
