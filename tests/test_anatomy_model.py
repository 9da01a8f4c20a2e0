"""Exact small cases for the sacral anatomy model: frame, Denis zones, brush, landmark edits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imaging.anatomy import FORAMEN_NAMES, AnatomyMasks, Endplate, sacral_axes, segment_anatomy
from imaging.errors import OperationCancelledError, SacroplanError, SegmentationError
from imaging.volume import Volume
from planning.anatomy import AnatomyEditError, SacralAnatomy


def _rotation_z(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _oblique_grid(shape=(8, 10, 12)) -> Volume:
    """A small anisotropic, oblique grid (k, j, i) = shape."""
    return Volume(
        array=np.zeros(shape, np.int16),
        origin=np.array([-3.0, 7.0, 11.0]),
        spacing=np.array([0.8, 1.0, 2.0]),
        direction=_rotation_z(30.0),
        modality="CT",
    )


def _simple_landmarks() -> SacralAnatomy:
    """Endplate at the origin facing +z; S1 at x = +-20 (r 5), S2 at x = +-16 (r 4)."""
    return SacralAnatomy.from_landmarks(
        foramina={
            "left S1": [20.0, 0.0, -30.0],
            "right S1": [-20.0, 0.0, -30.0],
            "left S2": [16.0, 0.0, -50.0],
            "right S2": [-16.0, 0.0, -50.0],
        },
        endplate_center=[0.0, 0.0, 0.0],
        endplate_normal=[0.0, 0.0, 1.0],
        radius_mm={"left S1": 5.0, "right S1": 5.0, "left S2": 4.0, "right S2": 4.0},
    )


def _brute_force_ball(grid: Volume, center: np.ndarray, radius: float) -> np.ndarray:
    """Voxels whose centres are within ``radius`` of ``center`` (every voxel checked)."""
    k, j, i = np.indices(grid.array.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
    d = np.linalg.norm(grid.index_to_world(ijk) - center, axis=1)
    return (d <= radius).reshape(grid.array.shape)


# -- frame ------------------------------------------------------------------------------------


def test_sacral_axes_without_pairs_follow_lps_x():
    a = np.radians(38.0)
    normal = np.array([0.0, -np.sin(a), np.cos(a)])
    axes = sacral_axes(normal)
    np.testing.assert_allclose(axes[0], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(axes[1], [0.0, np.cos(a), np.sin(a)], atol=1e-12)
    np.testing.assert_allclose(axes[2], normal, atol=1e-12)


def test_sacral_axes_fit_through_foramen_pairs():
    left = np.array([[20.0, 2.0, -30.0], [16.0, 1.6, -50.0]])
    right = np.array([[-20.0, -2.0, -30.0], [-16.0, -1.6, -50.0]])
    axes = sacral_axes([0.0, 0.0, 1.0], left_points=left, right_points=right)
    expected = np.array([40.0, 4.0, 0.0]) / np.linalg.norm([40.0, 4.0, 0.0])
    np.testing.assert_allclose(axes[0], expected, atol=1e-12)
    np.testing.assert_allclose(axes[2], [0.0, 0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(np.cross(axes[0], axes[1]), axes[2], atol=1e-12)


def test_frame_and_midsagittal_plane_from_landmarks():
    model = _simple_landmarks()
    np.testing.assert_allclose(model.frame.origin, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(model.frame.axes, np.eye(3), atol=1e-12)
    point, normal = model.midsagittal_plane
    np.testing.assert_allclose(point, [0.0, 0.0, -40.0])
    np.testing.assert_allclose(normal, [1.0, 0.0, 0.0])


# -- Denis zones ------------------------------------------------------------------------------


def test_denis_levels_are_the_foramen_walls():
    levels = {d.level: d for d in _simple_landmarks().denis_levels}
    assert levels["S1"].z_mm == pytest.approx(-30.0)
    assert levels["S1"].medial_mm == pytest.approx(15.0)
    assert levels["S1"].lateral_mm == pytest.approx(25.0)
    assert levels["S2"].medial_mm == pytest.approx(12.0)
    assert levels["S2"].lateral_mm == pytest.approx(20.0)


@pytest.mark.parametrize(
    ("point", "zone"),
    [
        ([10.0, 0.0, -30.0], 3),
        ([-14.9, 5.0, -30.0], 3),
        ([20.0, 0.0, -30.0], 2),
        ([-25.0, 0.0, -30.0], 2),
        ([26.0, 0.0, -30.0], 1),
        ([13.4, 0.0, -40.0], 3),  # interpolated: medial 13.5, lateral 22.5
        ([13.6, 0.0, -40.0], 2),
        ([22.6, 0.0, -40.0], 1),
        ([14.9, 0.0, 10.0], 3),  # above S1 the S1 lines hold
        ([11.9, 0.0, -80.0], 3),  # below S2 the S2 lines hold
        ([12.1, 0.0, -80.0], 2),
    ],
)
def test_zone_of_points(point, zone):
    assert _simple_landmarks().zone_of(np.array(point)) == zone


def test_zone_of_many_points_returns_an_array():
    zones = _simple_landmarks().zone_of(np.array([[0.0, 0.0, -30.0], [30.0, 0.0, -30.0]]))
    assert zones.tolist() == [3, 1]


def test_zones_need_foramina():
    model = SacralAnatomy.from_landmarks(
        foramina={}, endplate_center=[0, 0, 0], endplate_normal=[0, 0, 1]
    )
    with pytest.raises(AnatomyEditError, match="foramina"):
        model.zone_of(np.zeros(3))


# -- landmark edits ---------------------------------------------------------------------------


def test_move_add_remove_foramen_recompute_and_notify():
    model = _simple_landmarks()
    events = []
    unsubscribe = model.subscribe(lambda what, m: events.append((what, m is model)))
    model.move_foramen("left S1", [22.0, 0.0, -30.0])
    assert events == [("landmarks", True)]
    assert model.foramina["left S1"].source == "user"
    s1 = {d.level: d for d in model.denis_levels}["S1"]
    # midsagittal x is the mean of the pair midpoints: (1 + 0) / 2 = 0.5
    assert model.midsagittal_plane[0][0] == pytest.approx(0.5)
    assert s1.medial_mm == pytest.approx(0.5 * ((21.5 - 5.0) + (20.5 - 5.0)))
    model.remove_foramen("left S2")
    assert "left S2" not in model.foramina
    assert {d.level for d in model.denis_levels} == {"S1", "S2"}  # right S2 alone still counts
    model.add_foramen("left S3", [12.0, 0.0, -70.0], radius_mm=3.0)
    levels = {d.level: d for d in model.denis_levels}
    # only the S1 pair is left: the midsagittal plane is its midpoint, x = 1
    assert levels["S3"].lateral_mm == pytest.approx(12.0 - 1.0 + 3.0)
    unsubscribe()
    model.remove_foramen("left S3")
    assert len(events) == 3


def test_set_endplate_moves_the_frame():
    model = _simple_landmarks()
    a = np.radians(30.0)
    model.set_endplate(center_lps=[1.0, 2.0, 3.0], normal=[0.0, -np.sin(a), np.cos(a)])
    np.testing.assert_allclose(model.frame.origin, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(model.frame.e_z, [0.0, -np.sin(a), np.cos(a)], atol=1e-12)
    p = model.frame.to_lps(np.array([[0.0, 0.0, 10.0]]))[0]
    np.testing.assert_allclose(p, [1.0, 2.0 - 10 * np.sin(a), 3.0 + 10 * np.cos(a)], atol=1e-12)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.move_foramen("left S4", [0, 0, 0]),
        lambda m: m.remove_foramen("left S4"),
        lambda m: m.add_foramen("middle S1", [0, 0, 0]),
        lambda m: m.add_foramen("left S1", [0, 0, np.nan]),
        lambda m: m.add_foramen("left S1", [0, 0, 0], radius_mm=-1.0),
        lambda m: m.set_endplate(normal=[0, 0, 0]),
        lambda m: m.paint("sacrum", [0, 0, 0], 1.0, True),
    ],
)
def test_bad_edits_raise_plain_errors(edit):
    with pytest.raises(AnatomyEditError) as info:
        edit(_simple_landmarks())
    assert isinstance(info.value, SacroplanError)


def test_foramen_names_are_normalised():
    model = _simple_landmarks()
    model.move_foramen("  Left   s1 ", [21.0, 0.0, -30.0])
    assert model.foramina["left S1"].center_lps[0] == 21.0


# -- brush ------------------------------------------------------------------------------------


def _masked_model(grid: Volume) -> SacralAnatomy:
    masks = {
        "sacrum": np.zeros(grid.array.shape, bool),
        "foramina": np.zeros(grid.array.shape, np.uint8),
    }
    model = _simple_landmarks()
    return SacralAnatomy(
        foramina=list(model.foramina.values()),
        endplate_center=model.endplate_center,
        endplate_normal=model.endplate_normal,
        masks=masks,
        grid=grid,
    )


def test_brush_paints_exactly_the_voxels_within_the_radius():
    grid = _oblique_grid()
    model = _masked_model(grid)
    events = []
    model.subscribe(lambda what, m: events.append(what))
    center = grid.index_to_world(np.array([5.0, 4.0, 3.0])) + np.array([0.3, -0.2, 0.4])
    expected = _brute_force_ball(grid, center, 2.6)
    changed = model.paint("sacrum", center, 2.6, True)
    assert changed == int(expected.sum()) > 5
    np.testing.assert_array_equal(model.mask("sacrum"), expected)
    assert events == ["masks"]
    assert model.paint("sacrum", center, 2.6, True) == 0  # nothing left to change
    assert events == ["masks"]
    assert model.paint("sacrum", center, 2.6, False) == int(expected.sum())
    assert not model.mask("sacrum").any()


def test_brush_at_the_grid_border_and_outside():
    grid = _oblique_grid()
    model = _masked_model(grid)
    corner = grid.index_to_world(np.array([0.0, 0.0, 0.0]))
    expected = _brute_force_ball(grid, corner, 3.0)
    assert model.paint("sacrum", corner, 3.0, True) == int(expected.sum())
    np.testing.assert_array_equal(model.mask("sacrum"), expected)
    far = corner - np.array([500.0, 500.0, 500.0])
    assert model.paint("sacrum", far, 3.0, True) == 0


def test_brush_on_the_foramen_label_map_and_zone_map_update():
    grid = _oblique_grid()
    model = _masked_model(grid)
    center = grid.index_to_world(np.array([6.0, 5.0, 4.0]))
    model.paint("foramina", center, 1.5, 3)
    assert set(np.unique(model.mask("foramina"))) == {0, 3}
    assert model.zone_map is not None and not model.zone_map.array.any()
    model.paint("sacrum", center, 2.0, True)
    zone_map = model.zone_map.array
    painted = model.mask("sacrum")
    assert (zone_map[painted] > 0).all() and (zone_map[~painted] == 0).all()
    kji = np.argwhere(painted)
    pts = grid.index_to_world(kji[:, ::-1].astype(float))
    np.testing.assert_array_equal(zone_map[painted], model.zone_of(pts))
    assert model.zone_of(pts, inside_only=True).min() > 0


def test_refit_foramen_from_painted_voxels():
    grid = Volume(
        array=np.zeros((30, 30, 30), np.int16),
        origin=np.zeros(3),
        spacing=np.array([0.5, 0.5, 0.5]),
        direction=np.eye(3),
        modality="CT",
    )
    model = _masked_model(grid)
    events = []
    model.subscribe(lambda what, m: events.append(what))
    # a row of balls along y: a channel along the posterior axis centred at (7, 7.5, 7)
    for y in np.arange(3.0, 12.01, 0.5):
        model.paint("foramina", [7.0, y, 7.0], 2.0, 1)
    painted = np.argwhere(model.mask("foramina") == 1)
    expected = grid.index_to_world(painted[:, ::-1].astype(float)).mean(axis=0)
    f = model.refit_foramen("left S1")
    np.testing.assert_allclose(f.center_lps, expected)
    np.testing.assert_allclose(f.axis, [0.0, 1.0, 0.0], atol=1e-6)
    assert 1.5 < f.radius_mm < 2.2
    assert f.source == "user" and events[-1] == "landmarks"
    with pytest.raises(AnatomyEditError, match="paint it first"):
        model.refit_foramen("right S4")


# -- serialisation and pasting ----------------------------------------------------------------


def test_json_round_trip_keeps_landmarks_and_references_masks():
    model = _simple_landmarks()
    model.set_canal_points([[0.0, 20.0, -10.0], [0.0, 22.0, -40.0]])
    data = json.loads(json.dumps(model.to_json(masks_ref="anatomy_masks.nii.gz")))
    assert data["masks"] == {"ref": "anatomy_masks.nii.gz", "names": []}
    again = SacralAnatomy.from_json(data)
    assert again.foramina.keys() == model.foramina.keys()
    for name, f in model.foramina.items():
        np.testing.assert_allclose(again.foramina[name].center_lps, f.center_lps)
        assert again.foramina[name].radius_mm == f.radius_mm
    np.testing.assert_allclose(again.canal_points, model.canal_points)
    assert [d.to_json() for d in again.denis_levels] == [d.to_json() for d in model.denis_levels]
    with pytest.raises(AnatomyEditError):
        SacralAnatomy.from_json({"schema": "something else"})


def test_paste_puts_the_crop_back_at_its_index():
    full = _oblique_grid(shape=(8, 10, 12))
    crop = Volume(
        array=full.array[2:6, 3:7, 4:9],
        origin=full.index_to_world(np.array([4.0, 3.0, 2.0])),
        spacing=full.spacing,
        direction=full.direction,
        modality="CT",
    )
    mask = np.zeros(crop.array.shape, bool)
    mask[1, 2, 3] = True
    masks = {name: np.zeros(crop.array.shape, bool) for name in ("sacrum", "canal")}
    masks["sacrum"] = mask
    anatomy = AnatomyMasks(
        image=crop,
        masks=masks,
        foramina=[],
        endplate=Endplate(np.zeros(3), np.array([0.0, 0.0, 1.0])),
        midline_x_mm=0.0,
        crop_index=(4, 3, 2),
        full_shape=full.array.shape,
    )
    pasted = anatomy.paste("sacrum", full)
    assert pasted.same_grid(full)
    assert np.argwhere(pasted.array).tolist() == [[3, 5, 7]]
    # the same voxel in world space
    np.testing.assert_allclose(
        full.index_to_world(np.array([7.0, 5.0, 3.0])),
        crop.index_to_world(np.array([3.0, 2.0, 1.0])),
    )
    assert anatomy.mask("sacrum").same_grid(crop)


# -- the segmentation front door --------------------------------------------------------------


def test_segmentation_refuses_mr():
    mr = Volume(np.zeros((40, 40, 40), np.float32), np.zeros(3), np.ones(3) * 3, np.eye(3), "MR")
    with pytest.raises(SegmentationError, match="CT"):
        segment_anatomy(mr)


def test_segmentation_without_a_pelvis_says_so():
    """A soft-tissue cylinder with a midline bony rod: no pelvic ring, no sacrum."""
    shape = (60, 60, 60)
    k, j, i = np.indices(shape)
    arr = np.full(shape, -1000, np.int16)
    arr[(i - 30) ** 2 + (j - 30) ** 2 < 25**2] = 40
    arr[(i - 30) ** 2 + (j - 40) ** 2 < 5**2] = 700
    ct = Volume(arr, np.zeros(3), np.full(3, 3.0), np.eye(3), "CT")
    with pytest.raises(SegmentationError, match="no sacrum found"):
        segment_anatomy(ct)


def test_segmentation_can_be_cancelled_before_work():
    ct = Volume(np.zeros((40, 40, 40), np.int16), np.zeros(3), np.full(3, 3.0), np.eye(3), "CT")
    with pytest.raises(OperationCancelledError):
        segment_anatomy(ct, cancel=lambda: True)


def test_foramen_names_order():
    assert FORAMEN_NAMES[:2] == ("left S1", "right S1")
    assert len(FORAMEN_NAMES) == 8
