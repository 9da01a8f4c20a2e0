"""The bounded-memory ways of building the planner's field stack give exactly what the plain
whole-grid computations give, on small anisotropic oblique grids: the stack builder (fields added
as float32 or as int16 codes made beforehand) against ``build_field_stack``, distance fields of a
box of the grid against the whole grid's, box-limited pooling against whole-mask pooling, and
the plan's stack (a box of the field grid) against the whole stack."""

from __future__ import annotations

import numpy as np
import pytest

from geometry.distance import DistanceField, signed_distance_mm, sub_grid_origin
from geometry.fieldstack import FieldStackBuilder, QuantizedField, build_field_stack
from geometry.pooling import pool_labels, pool_mask
from planning.planner import _pool_labels_box, _pool_union

SPACING = np.array([0.7, 1.1, 1.6])  # x, y, z (mm)
ORIGIN = np.array([-31.0, 12.5, 40.25])


def _direction() -> np.ndarray:
    a, b = np.radians(23.0), np.radians(-11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _ellipsoid(
    shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    kk, jj, ii = np.indices(shape)
    terms = (((x - c) / r) ** 2 for x, c, r in zip((kk, jj, ii), centre, radii, strict=True))
    return sum(terms) <= 1.0


def _masks(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    k, j, i = shape
    return {
        "sacrum": _ellipsoid(shape, (k / 2, j / 2, i / 2), (k / 3, j / 4, i / 3)),
        "left S1": _ellipsoid(shape, (k / 2, j / 2, i / 4), (2.5, 2.0, 1.5)),
        "right S1": _ellipsoid(shape, (k / 2, j / 2, 3 * i / 4), (2.5, 2.0, 1.5)),
        "canal": _ellipsoid(shape, (k / 2, 0.7 * j, i / 2), (k / 2.5, 2.5, 2.0)),
        "ilium": _ellipsoid(shape, (k / 2, j / 2, 2.0), (k / 3, j / 3, 3.0)),
        "lesion": _ellipsoid(shape, (k / 2, j / 2, 0.4 * i), (3.0, 2.5, 2.5)),
    }


def _fields(shape: tuple[int, int, int]) -> dict[str, DistanceField]:
    geo = {"origin": ORIGIN, "spacing": SPACING, "direction": _direction()}
    return {
        name: DistanceField.from_mask(mask, crop_margin_mm=6.0, **geo)
        for name, mask in _masks(shape).items()
    }


@pytest.mark.parametrize("as_codes", [False, True])
def test_builder_gives_the_same_stack_as_build_field_stack(as_codes: bool) -> None:
    shape = (17, 23, 29)
    f = _fields(shape)
    expected = build_field_stack(
        sacrum=f["sacrum"],
        foramina={"left S1": f["left S1"], "right S1": f["right S1"]},
        canal=f["canal"],
        ilium=f["ilium"],
        lesion=f["lesion"],
    )

    def given(field: DistanceField) -> DistanceField | QuantizedField:
        return QuantizedField.of(field) if as_codes else field

    builder = FieldStackBuilder(shape, ORIGIN, SPACING, _direction(), n_channels=6)
    builder.add("sacrum", given(f["sacrum"]))
    builder.add_foramen("left S1", given(f["left S1"]))
    builder.add_foramen("right S1", f["right S1"])  # mixed: float32 and codes
    builder.add("canal", given(f["canal"]))
    builder.add("ilium", given(f["ilium"]))
    builder.add("lesion", given(f["lesion"]))
    got = builder.build()
    assert got.values.dtype == np.int16 and got.values.shape == expected.values.shape
    np.testing.assert_array_equal(got.values, expected.values)
    np.testing.assert_array_equal(got.track, expected.track)
    assert got.channel_names == expected.channel_names
    assert got.foramen_names == expected.foramen_names
    assert got.foramen_channels == expected.foramen_channels
    assert (got.canal, got.sacrum, got.ilium, got.lesion) == (
        expected.canal,
        expected.sacrum,
        expected.ilium,
        expected.lesion,
    )
    assert got.pelvic_side == expected.pelvic_side == -1
    assert got.exact_within_mm == expected.exact_within_mm == 6.0
    np.testing.assert_allclose(got.origin, expected.origin)


def test_builder_refuses_a_field_of_another_grid() -> None:
    shape = (9, 10, 11)
    field = _fields(shape)["sacrum"]
    builder = FieldStackBuilder(shape, ORIGIN + 1.0, SPACING, _direction(), n_channels=1)
    with pytest.raises(ValueError, match="not on the stack's grid"):
        builder.add("sacrum", QuantizedField.of(field))


@pytest.mark.parametrize("margin", [None, 0.0, 2.5, 6.0, 40.0])
def test_distance_of_a_box_equals_the_whole_grid_there(margin: float | None) -> None:
    shape = (21, 26, 31)
    masks = _masks(shape)
    rng = np.random.default_rng(4)
    for name in ("sacrum", "left S1", "canal", "ilium"):
        whole = signed_distance_mm(masks[name], SPACING, crop_margin_mm=margin)
        for _ in range(5):
            lo = [int(rng.integers(0, n - 1)) for n in shape]
            hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape, strict=True)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            part = signed_distance_mm(masks[name], SPACING, crop_margin_mm=margin, region=box)
            np.testing.assert_array_equal(part, whole[box])


def test_distance_field_of_a_box_lies_on_the_box_grid() -> None:
    shape = (12, 14, 16)
    mask = _masks(shape)["sacrum"]
    box = (slice(2, 9), slice(3, 14), slice(5, 12))
    geo = {"origin": ORIGIN, "spacing": SPACING, "direction": _direction()}
    whole = DistanceField.from_mask(mask, crop_margin_mm=5.0, **geo)
    part = DistanceField.from_mask(mask, crop_margin_mm=5.0, region=box, **geo)
    np.testing.assert_array_equal(part.values, whole.values[box])
    # the box's first voxel, through the whole grid's geometry
    expected = ORIGIN + _direction() @ (SPACING * np.array([5.0, 3.0, 2.0]))
    np.testing.assert_allclose(part.origin, expected, atol=1e-12)
    np.testing.assert_allclose(sub_grid_origin(ORIGIN, SPACING, _direction(), box), expected)
    with pytest.raises(ValueError, match="no voxel"):
        signed_distance_mm(mask, SPACING, region=(slice(3, 3), slice(0, 2), slice(0, 2)))


@pytest.mark.parametrize("factors", [(1, 1, 1), (2, 2, 2), (1, 3, 2)])
@pytest.mark.parametrize("any_voxel", [True, False])
def test_pooling_over_boxes_in_slabs_equals_whole_pooling(
    factors: tuple[int, int, int], any_voxel: bool
) -> None:
    shape = (41, 37, 45)
    rng = np.random.default_rng(7)
    a = np.zeros(shape, bool)
    a[5:30, 4:20, 10:33] = rng.random((25, 16, 23)) > 0.4
    b = np.zeros(shape, np.uint8)  # nonzero = inside, like a lesion mask
    b[33:40, 30:36, 1:9] = 1
    grid_shape = tuple(n // f for n, f in zip(shape, factors, strict=True))
    got = _pool_union([a, b], factors, grid_shape, any_voxel=any_voxel)
    np.testing.assert_array_equal(got, pool_mask(a | (b > 0), factors, any_voxel=any_voxel))
    empty = _pool_union([np.zeros(shape, bool)], factors, grid_shape, any_voxel=any_voxel)
    assert empty.shape == grid_shape and not empty.any()

    labels = np.zeros(shape, np.uint8)
    labels[10:14, 8:12, 5:9] = 1
    labels[20:26, 15:19, 30:40] = 3
    box, pooled = _pool_labels_box(labels, factors, grid_shape, 3, any_voxel=any_voxel)
    whole = pool_labels(labels, factors, 3, any_voxel=any_voxel)
    for n in range(3):
        full = np.zeros(grid_shape, bool)
        full[box] = pooled[n]
        np.testing.assert_array_equal(full, whole[n])


def test_the_plans_stack_box_gives_the_search_the_whole_stacks_scores() -> None:
    """On an anisotropic sample: the search's needles (all approaches) scored on the stack of
    the box they read (:func:`planning.planner._reads_box`) and on the whole stack."""
    import dataclasses

    from geometry.kernels import score_needles
    from planning.approaches import approach_registry
    from planning.case import Case
    from planning.planner import (
        _approach_paths,
        _reads_box,
        body_mask,
        build_fields,
        field_grid,
        lesion_targets,
    )

    case = Case.sample(lesion="right_ala_s2", spacing_mm=(0.8, 0.7, 1.4))
    case.find_anatomy()
    case.grow_lesion(case.default_seed())
    assert case.metrics is not None and case.masks is not None
    body, targets = body_mask(case.image), lesion_targets(case)
    zone = case.metrics.denis_zone
    paths = [_approach_paths(case, a, body, targets, zone) for a in approach_registry().values()]
    grid = field_grid(case.masks.image)
    box = _reads_box(case, grid, paths)
    assert all(b.stop - b.start >= 2 for b in box)
    whole, part = build_fields(case), build_fields(case, box=box)
    assert part.values.nbytes < whole.values.nbytes  # the box leaves part of the grid out
    np.testing.assert_array_equal(part.values, whole.values[box])
    centroid = np.asarray(case.metrics.centroid_lps)
    entries = np.vstack([p[0] for p in paths])
    tips = np.vstack([p[1] for p in paths])
    a = score_needles(entries, tips, whole, radius_mm=1.2, lesion_centroid=centroid)
    b = score_needles(entries, tips, part, radius_mm=1.2, lesion_centroid=centroid)
    for f in dataclasses.fields(a):
        if f.name in ("outside_grid_length_mm", "samples_evaluated", "samples_lattice"):
            continue  # the grid's own extent, and how the walk skipped
        x, y = np.asarray(getattr(a, f.name)), np.asarray(getattr(b, f.name))
        np.testing.assert_array_equal(y, x, err_msg=f.name)  # bit for bit (NaN where NaN)
