"""Round trips through the DICOM writer and reader, and every way a series can go wrong.

Volumes are anisotropic and oblique, file names shuffled; each broken variant either
loads with exact geometry (and a warning that names the problem) or is refused/split
with a message that names it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from imaging.dicom_write import write_series
from imaging.errors import SeriesGeometryError, StudyReadError
from imaging.read import load, load_series, scan
from imaging.volume import Volume


def rotation(axis, angle_deg: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def structured_ct(shape=(12, 20, 24), seed: int = 0) -> np.ndarray:
    """Random-ish int16 HU with structure: air, soft tissue, a bright 'bone' block."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-60, 80, size=shape).astype(np.int16)
    arr[:, :3, :] = -1000
    k, j, i = shape
    arr[k // 4 : 3 * k // 4, j // 3 : 2 * j // 3, i // 4 : i // 2] += 1200
    return arr


@pytest.fixture
def oblique_ct() -> Volume:
    return Volume(
        array=structured_ct(),
        origin=np.array([-120.5, 33.25, 410.0]),
        spacing=np.array([0.7, 0.9, 2.5]),
        direction=rotation([1.0, 2.0, 0.5], 5.0),
        modality="CT",
    )


def assert_same_grid(loaded: Volume, expected: Volume, tol_mm: float = 1e-3) -> None:
    assert loaded.array.shape == expected.array.shape
    np.testing.assert_allclose(loaded.origin, expected.origin, atol=tol_mm)
    np.testing.assert_allclose(loaded.spacing, expected.spacing, atol=tol_mm)
    np.testing.assert_allclose(loaded.direction, expected.direction, atol=1e-6)


def edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


# ------------------------------------------------------------------------------------------------
# clean round trips
def test_oblique_anisotropic_shuffled_round_trip(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path, file_names="shuffled", seed=3)
    assert [f.name for f in files] != sorted(f.name for f in files), "names must be shuffled"
    result = scan(tmp_path)
    assert len(result.series) == 1 and not result.skipped
    info = result.series[0]
    vol = load_series(info)
    assert_same_grid(vol, oblique_ct)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, oblique_ct.array)
    # the scan reports exactly what load returns
    assert info.size == vol.size
    np.testing.assert_allclose(info.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(info.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(np.reshape(info.direction, (3, 3)), vol.direction, atol=1e-12)
    assert info.orientation == "oblique" and info.modality == "CT" and info.n_images == 12
    assert vol.meta["patient_id"] == "PHANTOM" and len(vol.meta["source_paths"]) == 12


def test_to_json_fields(tmp_path: Path, oblique_ct: Volume) -> None:
    write_series(oblique_ct, tmp_path, series_description="round trip")
    data = scan(tmp_path).to_json()
    series = data["series"][0]
    for key in ("uid", "modality", "description", "n_images", "size", "spacing", "origin"):
        assert key in series
    assert series["description"] == "round trip" and len(series["direction"]) == 9
    assert series["patient_name"] == "SACROPLAN^PHANTOM" and data["skipped"] == []


def test_left_handed_direction_is_written_along_the_normal(
    tmp_path: Path, oblique_ct: Volume
) -> None:
    direction = oblique_ct.direction.copy()
    direction[:, 2] *= -1
    lefty = Volume(oblique_ct.array, oblique_ct.origin, oblique_ct.spacing, direction, "CT")
    write_series(lefty, tmp_path, file_names="uid")
    vol = load(tmp_path)
    assert np.linalg.det(vol.direction) > 0
    np.testing.assert_array_equal(vol.array, oblique_ct.array[::-1])
    ijk = np.array([[3.0, 4.0, 5.0], [10.0, 2.0, 0.0]])
    back = vol.world_to_index(lefty.index_to_world(ijk))
    np.testing.assert_allclose(back, ijk * [1, 1, -1] + [0, 0, 11], atol=1e-6)


def test_mr_float_with_slope_comes_back_scaled(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4000, size=(6, 10, 12)).astype(np.float32) * 0.5
    mr = Volume(values, [10.0, -20.0, 30.0], [1.1, 0.8, 3.0], rotation([0, 1, 0], 90), "MR")
    write_series(mr, tmp_path, modality="MR", rescale_slope=0.5, file_names="shuffled")
    stored = pydicom.dcmread(sorted(tmp_path.iterdir())[0])
    assert float(stored.RescaleSlope) == 0.5 and stored.Modality == "MR"
    vol = load(tmp_path)
    assert vol.modality == "MR" and vol.array.dtype == np.float32
    assert_same_grid(vol, mr)
    np.testing.assert_array_equal(vol.array, values)
    assert vol.orientation_label() == "sagittal"


def test_rle_compressed_series(tmp_path: Path, oblique_ct: Volume) -> None:
    for path in write_series(oblique_ct, tmp_path, file_names="shuffled"):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    assert pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID == RLELossless
    vol = load(tmp_path)
    assert_same_grid(vol, oblique_ct)
    np.testing.assert_array_equal(vol.array, oblique_ct.array)


def test_ct_with_non_integer_slope_is_float(tmp_path: Path, oblique_ct: Volume) -> None:
    write_series(oblique_ct, tmp_path, rescale_slope=0.5, rescale_intercept=-1024.0)
    vol = load(tmp_path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, oblique_ct.array.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# broken series
def linear_ct(shape=(10, 16, 18)) -> tuple[Volume, callable]:
    """An axial CT whose value is a linear function of the world position (mm)."""

    def field(points: np.ndarray) -> np.ndarray:
        return 2.0 * points[..., 0] + 3.0 * points[..., 1] + 5.0 * points[..., 2]

    vol = Volume(np.zeros(shape, np.int16), [-10.0, -20.0, 50.0], [0.8, 0.6, 2.0], np.eye(3), "CT")
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    world = vol.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(*shape, 3)
    return vol.with_array(np.rint(field(world)).astype(np.int16)), field


def test_missing_slice_is_named_and_interpolated(tmp_path: Path) -> None:
    vol, field = linear_ct()
    files = write_series(vol, tmp_path, file_names="shuffled")
    files[4].unlink()  # z = 50 + 4 * 2 = 58 mm
    info = scan(tmp_path).series[0]
    assert any("missing slice" in w and "56.00" in w and "60.00" in w for w in info.warnings)
    loaded = load(tmp_path)
    assert_same_grid(loaded, vol)
    np.testing.assert_array_equal(loaded.array[[0, 3, 5, 9]], vol.array[[0, 3, 5, 9]])
    np.testing.assert_allclose(loaded.array[4], vol.array[4], atol=1.0)


def test_uneven_spacing_is_resampled_to_the_smallest_step(tmp_path: Path) -> None:
    vol, field = linear_ct(shape=(6, 8, 9))
    files = write_series(vol, tmp_path)
    z = [50.0, 51.0, 52.5, 54.0, 55.0, 57.0]
    for path, zk in zip(files, z, strict=True):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [-10.0, -20.0, zk]
        ds.PixelData = np.rint(field(_slice_world(vol, zk))).astype(np.int16).tobytes()
        ds.save_as(path)
    info = scan(tmp_path).series[0]
    assert any("uneven slice spacing" in w and "1.00 to 2.00 mm" in w for w in info.warnings)
    assert info.size[2] == 8 and info.spacing[2] == pytest.approx(1.0)
    loaded = load(tmp_path)
    assert loaded.size == info.size
    k, j, i = np.meshgrid(*[np.arange(n) for n in loaded.array.shape], indexing="ij")
    world = loaded.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*k.shape, 3)
    np.testing.assert_allclose(loaded.array, field(world), atol=1.0)


def _slice_world(vol: Volume, z: float, shift_y: float = 0.0) -> np.ndarray:
    _, nj, ni = vol.array.shape
    j, i = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    x = vol.origin[0] + i * vol.spacing[0]
    y = vol.origin[1] + shift_y + j * vol.spacing[1]
    return np.stack([x, y, np.full_like(x, z, dtype=float)], axis=-1)


def test_gantry_tilt_is_corrected_with_the_angle_named(tmp_path: Path) -> None:
    vol, field = linear_ct()
    tilt = 12.0
    files = write_series(vol, tmp_path, file_names="shuffled")
    for path in files:
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        shift = (z - 50.0) * math.tan(math.radians(tilt))
        ds.ImagePositionPatient = [x, y + shift, z]
        ds.GantryDetectorTilt = tilt
        ds.PixelData = np.rint(field(_slice_world(vol, z, shift))).astype(np.int16).tobytes()
        ds.save_as(path)
    info = scan(tmp_path).series[0]
    assert any("gantry tilt 12.0°" in w and "resampl" in w for w in info.warnings)
    loaded = load(tmp_path)
    np.testing.assert_allclose(loaded.direction, np.eye(3), atol=1e-9)
    assert loaded.spacing[2] == pytest.approx(2.0) and loaded.size[2] == 10
    assert loaded.size[1] > vol.size[1]  # the grid grows to hold every sheared slice
    k, j, i = np.meshgrid(*[np.arange(n) for n in loaded.array.shape], indexing="ij")
    world = loaded.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*k.shape, 3)
    inside = loaded.array != -1024
    assert inside.mean() > 0.6
    np.testing.assert_allclose(loaded.array[inside], field(world)[inside], atol=1.5)


def test_identical_duplicate_is_dropped_with_a_warning(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path)
    copy = tmp_path / "copy.dcm"
    shutil.copy(files[5], copy)
    edit(copy, SOPInstanceUID=generate_uid())
    info = scan(tmp_path).series[0]
    assert info.n_images == 12
    assert any("duplicate image" in w and "dropped" in w for w in info.warnings)
    np.testing.assert_array_equal(load(tmp_path).array, oblique_ct.array)


def test_different_images_at_one_position_are_refused(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path)
    other = tmp_path / "other.dcm"
    shutil.copy(files[5], other)
    ds = pydicom.dcmread(other)
    ds.SOPInstanceUID = generate_uid()
    ds.PixelData = (oblique_ct.array[5] + 7).tobytes()
    ds.save_as(other)
    result = scan(tmp_path)
    assert not result.series
    assert all("same position" in k.reason for k in result.skipped)
    with pytest.raises(SeriesGeometryError, match="same position"):
        load(tmp_path)


def test_two_studies_in_one_folder_are_two_series(tmp_path: Path, oblique_ct: Volume) -> None:
    write_series(oblique_ct, tmp_path / "a", series_uid="1.2.3.4.100", study_uid="1.2.3.1")
    write_series(oblique_ct, tmp_path / "b", series_uid="1.2.3.4.200", study_uid="1.2.3.2")
    with pytest.raises(StudyReadError, match=r"2 series.*--series") as err:
        load(tmp_path)
    assert "1.2.3.4.100 (CT" in str(err.value) and "1.2.3.4.200 (CT" in str(err.value)
    vol = load(tmp_path, series_uid="1.2.3.4.2")  # a unique prefix
    assert vol.meta["series_uid"] == "1.2.3.4.200" and vol.meta["study_uid"] == "1.2.3.2"
    with pytest.raises(StudyReadError, match="matches 2 series"):
        load(tmp_path, series_uid="1.2.3.4")
    with pytest.raises(StudyReadError, match="no series '9.9'"):
        load(tmp_path, series_uid="9.9")


def test_one_series_uid_in_two_studies_is_split(tmp_path: Path, oblique_ct: Volume) -> None:
    write_series(oblique_ct, tmp_path / "a", series_uid="1.2.3.4.5", study_uid="1.2.3.1")
    write_series(oblique_ct, tmp_path / "b", series_uid="1.2.3.4.5", study_uid="1.2.3.2")
    result = scan(tmp_path)
    assert sorted(s.uid for s in result.series) == ["1.2.3.4.5", "1.2.3.4.5#2"]
    split = next(s for s in result.series if s.uid.endswith("#2"))
    assert any("split off" in w and "study" in w for w in split.warnings)
    np.testing.assert_array_equal(load(tmp_path, series_uid="1.2.3.4.5#2").array, oblique_ct.array)


def test_other_orientation_with_the_same_uid_is_split(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path)
    edit(files[0], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])  # a coronal "localizer"
    result = scan(tmp_path)
    main, split = sorted(result.series, key=lambda s: s.uid)
    assert main.n_images == 11 and split.n_images == 1 and split.orientation == "coronal"
    assert any("split off" in w for w in main.warnings)
    assert any("coronal orientation" in w for w in split.warnings)


def test_truncated_and_text_files_are_skipped(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path)
    data = files[3].read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 100])
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    result = scan(tmp_path)
    reasons = {Path(k.path).name: k.reason for k in result.skipped}
    assert "truncated" in reasons["cut.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty file" in reasons["empty.dcm"]
    np.testing.assert_array_equal(load(tmp_path).array, oblique_ct.array)


def test_series_without_positions_is_refused(tmp_path: Path, oblique_ct: Volume) -> None:
    for path in write_series(oblique_ct, tmp_path):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    with pytest.raises(SeriesGeometryError, match="no Image Position"):
        load(tmp_path)


def test_single_file_and_missing_path(tmp_path: Path, oblique_ct: Volume) -> None:
    files = write_series(oblique_ct, tmp_path)
    one = load(files[7])
    assert one.size == (24, 20, 1)
    np.testing.assert_allclose(one.origin, oblique_ct.index_to_world([0, 0, 7]), atol=1e-6)
    with pytest.raises(StudyReadError, match="no such file or folder"):
        scan(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(StudyReadError, match="not a DICOM file"):
        load(tmp_path / "junk")


def test_big_endian_and_implicit_copies(tmp_path: Path, oblique_ct: Volume) -> None:
    """Files re-encoded in other native syntaxes load to the same voxels."""
    files = write_series(oblique_ct, tmp_path / "le")
    (tmp_path / "mixed").mkdir()
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        implicit = n % 2 == 0
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.2"
        if not implicit:  # pydicom writes OW bytes as given: swap them ourselves
            ds.PixelData = pixels.astype(">i2").tobytes()
        pydicom.dcmwrite(tmp_path / "mixed" / path.name, ds, enforce_file_format=True)
    big = pydicom.dcmread(tmp_path / "mixed" / files[1].name)
    assert big.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    np.testing.assert_array_equal(big.pixel_array, oblique_ct.array[1])
    vol = load(tmp_path / "mixed")
    np.testing.assert_array_equal(vol.array, oblique_ct.array)
