"""Automatic CT anatomy against the synthetic phantom's analytic truth.

Two grids: the default 1 mm grid, and an anisotropic oblique one (0.8 x 0.8 x 2.0 mm,
rotated (5, -3, 4) degrees). Truth comes from :mod:`imaging.phantom` (label map and
analytic landmarks), never from the segmentation.

The ilium Dice is computed within the crop the segmentation returns: "within the region
we segment as ilium" (the crop holds the sacrum and both whole hip bones in the field of
view, so this is the whole hip bone).
"""

from __future__ import annotations

import numpy as np
import pytest

from imaging.anatomy import FORAMEN_NAMES, AnatomyMasks, segment_anatomy
from imaging.labels import Label
from imaging.phantom import LESION_SITES, build_truth, make_phantom
from planning.anatomy import SacralAnatomy

GRIDS = {
    "default": {},
    "oblique": {"spacing_mm": (0.8, 0.8, 2.0), "rotation_deg": (5.0, -3.0, 4.0)},
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module", params=sorted(GRIDS))
def case(request):
    phantom = make_phantom(lesion="left_ala_s1", **GRIDS[request.param])
    progress: list[tuple[float, str]] = []
    anatomy = segment_anatomy(phantom.image, progress=lambda f, s: progress.append((f, s)))
    return request.param, phantom, anatomy, progress


def _truth_in_crop(phantom, anatomy: AnatomyMasks) -> np.ndarray:
    i0, j0, k0 = anatomy.crop_index
    k, j, i = anatomy.image.array.shape
    return phantom.labels.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i]


def test_crop_holds_the_whole_sacrum(case):
    _, phantom, anatomy, _ = case
    labels = _truth_in_crop(phantom, anatomy)
    assert np.count_nonzero(labels == Label.SACRUM) == np.count_nonzero(
        phantom.labels.array == Label.SACRUM
    )
    assert anatomy.image.same_grid(anatomy.mask("sacrum"))
    assert np.allclose(anatomy.image.direction, phantom.image.direction)
    assert np.allclose(anatomy.image.spacing, phantom.image.spacing)


def test_sacrum_dice_including_the_lesion(case):
    name, phantom, anatomy, _ = case
    truth = np.isin(phantom.labels.array, (Label.SACRUM, Label.LESION))
    ours = anatomy.paste("sacrum", phantom.image).array
    dice = _dice(ours, truth)
    print(f"\n[{name}] sacrum Dice {dice:.3f}")
    assert dice >= 0.9


@pytest.mark.parametrize(("mask", "code"), [("left_ilium", 2), ("right_ilium", 3)])
def test_ilium_dice_within_the_crop(case, mask, code):
    name, phantom, anatomy, _ = case
    dice = _dice(anatomy.masks[mask], _truth_in_crop(phantom, anatomy) == code)
    print(f"\n[{name}] {mask} Dice {dice:.3f}")
    assert dice >= 0.9


def test_all_foramina_within_3_mm(case):
    name, phantom, anatomy, _ = case
    truth = {f.name: f for f in phantom.truth.foramina}
    assert anatomy.missing_foramina == []
    assert sorted(f.name for f in anatomy.foramina) == sorted(FORAMEN_NAMES)
    for f in anatomy.foramina:
        t = truth[f.name]
        err = float(np.linalg.norm(f.center_lps - t.center_lps))
        angle = np.degrees(np.arccos(min(1.0, abs(float(f.axis @ t.axis)))))
        print(f"[{name}] {f.name}: centre {err:.2f} mm, axis {angle:.1f} deg, r {f.radius_mm:.1f}")
        assert err <= 3.0
        assert angle <= 10.0
        assert abs(f.radius_mm - t.radius_mm) <= 1.5
        assert np.count_nonzero(anatomy.masks["foramina"] == f.label) > 0


def test_s1_endplate_centre_and_normal(case):
    name, phantom, anatomy, _ = case
    truth = phantom.truth.s1_endplate
    err = float(np.linalg.norm(anatomy.endplate.center_lps - np.asarray(truth["center_lps"])))
    cos = float(anatomy.endplate.normal @ np.asarray(truth["normal"]))
    angle = np.degrees(np.arccos(min(1.0, cos)))
    print(f"\n[{name}] endplate centre {err:.2f} mm, normal {angle:.2f} deg")
    assert err <= 3.0
    assert angle <= 5.0


def test_denis_zone_of_every_lesion_site(case):
    _, phantom, anatomy, _ = case
    model = SacralAnatomy.from_masks(anatomy)
    for site in LESION_SITES:
        if site == "none":
            continue
        truth = build_truth(lesion=site, scale=phantom.truth.scale, options=phantom.truth.options)
        assert model.zone_of(truth.lesion.center_lps) == truth.lesion.denis_zone, site
        assert model.zone_of(truth.lesion.center_lps, inside_only=True) == truth.lesion.denis_zone


def test_sacral_frame_matches_the_truth(case):
    _, phantom, anatomy, _ = case
    frame = SacralAnatomy.from_masks(anatomy).frame
    truth = phantom.truth.sacral_frame
    for ours, theirs in zip(frame.axes, truth.rotation, strict=True):
        assert np.degrees(np.arccos(min(1.0, float(ours @ theirs)))) <= 5.0


def test_canal_anterior_cortex_and_si_joints(case):
    _, phantom, anatomy, _ = case
    labels = _truth_in_crop(phantom, anatomy)
    masks = anatomy.masks
    # the canal found lies in the truth canal
    canal = masks["canal"]
    assert np.count_nonzero(canal & (labels == Label.CANAL)) >= 0.8 * np.count_nonzero(canal)
    # the anterior cortex is on the front of the sacrum, in the sacral frame
    frame = SacralAnatomy.from_masks(anatomy).frame
    grid = anatomy.image

    def frame_y(mask: np.ndarray) -> np.ndarray:
        kji = np.argwhere(mask)[::7]
        return frame.to_frame(grid.index_to_world(kji[:, ::-1].astype(float)))[:, 1]

    assert masks["anterior_cortex"].any()
    assert np.all(masks["anterior_cortex"] <= masks["sacrum"])
    assert np.median(frame_y(masks["anterior_cortex"])) < np.median(frame_y(masks["sacrum"])) - 5
    # most of each truth SI joint space lies in our SI joint masks, on the right side
    joint = labels == Label.SI_JOINT
    x = grid.index_to_world(np.argwhere(joint)[:, ::-1].astype(float))[:, 0]
    left = np.zeros(joint.shape, bool)
    left[tuple(np.argwhere(joint)[x > phantom.truth.sacral_frame.origin[0]].T)] = True
    right = joint & ~left
    assert np.count_nonzero(masks["si_joint_left"] & left) >= 0.7 * np.count_nonzero(left)
    assert np.count_nonzero(masks["si_joint_right"] & right) >= 0.7 * np.count_nonzero(right)
    assert not (masks["si_joint_left"] & right).any()


def test_progress_reports_rise_to_one(case):
    _, _, anatomy, progress = case
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert set(anatomy.timings_s) <= {s for _, s in progress}
