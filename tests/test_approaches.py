"""The approach registry: data-driven families, cone sampling and the cohort's zone rule."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.errors import ResourceDataError
from planning.approaches import (
    SacralAxes,
    admitted_for_zone,
    approach_registry,
    cone_directions,
    get_approach,
)


def test_five_families_under_stable_keys() -> None:
    assert list(approach_registry()) == [
        "posterior_short",
        "posterior_long",
        "transiliac",
        "interpedicular",
        "anterior_oblique",
    ]
    assert all(a.describe().startswith(a.label) for a in approach_registry().values())
    with pytest.raises(ResourceDataError, match="known: posterior_short"):
        get_approach("robotic")


@pytest.mark.parametrize(("half", "step"), [(30.0, 2.0), (15.0, 2.0), (20.0, 5.0)])
def test_cone_directions_stay_in_the_cone_and_cover_it(half: float, step: float) -> None:
    axis = np.array([0.3, -1.0, 0.2])
    dirs = cone_directions(axis, half, step_deg=step)
    unit = axis / np.linalg.norm(axis)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-12)
    angles = np.degrees(np.arccos(np.clip(dirs @ unit, -1, 1)))
    assert angles.max() <= half + 1e-9
    # every direction of the cone lies within about one step of a sample
    rng = np.random.default_rng(0)
    probe = cone_directions(axis, half, step_deg=0.5)[rng.integers(0, 5000, 300) % 1000]
    nearest = np.degrees(np.arccos(np.clip(probe @ dirs.T, -1, 1))).min(axis=1)
    assert nearest.max() <= step


def test_right_side_mirrors_left_and_frame_rotates_directions() -> None:
    a = get_approach("transiliac")
    np.testing.assert_allclose(a.axis_for_side("right"), -a.axis_for_side("left") * [1, -1, -1])
    # a sacral frame tilted 35 degrees about x: e_z leans anteriorly (-y)
    t = np.radians(35.0)
    axes = SacralAxes(
        np.zeros(3),
        np.array([1.0, 0, 0]),
        np.array([0, np.cos(t), np.sin(t)]),
        np.array([0, -np.sin(t), np.cos(t)]),
    )
    dirs = a.directions("left", axes)
    elevation = np.degrees(np.arcsin(np.abs(dirs @ axes.e_z)))
    assert elevation.max() <= a.max_elevation_deg + 1e-9
    assert np.all(dirs @ axes.e_x < 0)  # entering on the left, travelling to the right


def test_cohort_zone_rule() -> None:
    assert set(admitted_for_zone(1)) == {
        "posterior_short",
        "posterior_long",
        "transiliac",
        "anterior_oblique",
    }
    assert admitted_for_zone(3) == ("interpedicular",)
    assert set(admitted_for_zone(2)) == {"posterior_short", "posterior_long"}


def test_interpedicular_entry_admits_the_s1_pedicle_above_the_s1_foramen() -> None:
    from planning.approaches import EntryContext, entry_rules_ok, get_approach

    def context(entry: list[list[float]]) -> EntryContext:
        e = np.asarray(entry, float)
        return EntryContext(
            entry=e,
            target=np.zeros_like(e) + np.array([0.0, -1.0, -14.0]),
            side_sign=1.0,
            foramen_medial_x=lambda z: np.full(np.shape(z), 17.0),
            foramen_lateral_x=lambda z: np.full(np.shape(z), 30.0),
            s2_z=-52.0,
            s1_top_z=-20.5,
            s1_centre_x=23.5,
        )

    ok = entry_rules_ok(
        get_approach("interpedicular"),
        context(
            [
                [15.0, 30.0, -27.0],  # medial to the S1 foramen: admitted
                [22.0, 30.0, -10.0],  # S1 pedicle, above the foramen, inside its centre line
                [22.0, 30.0, -27.0],  # beside the S1 foramen at its own height: refused
                [27.0, 30.0, -10.0],  # above it but lateral to its centre line: refused
                [10.0, -20.0, -10.0],  # in front of the target: refused (dorsal rule)
            ]
        ),
    )
    assert ok.tolist() == [True, True, False, False, False]
