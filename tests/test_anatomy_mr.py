"""Automatic anatomy on T1-weighted MR phantoms (through a synthetic CT), against the
phantom's analytic truth; and clear refusals on images that are not T1-weighted."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.anatomy_mr import pseudo_ct_from_t1, segment_anatomy_mr
from imaging.errors import SegmentationError
from imaging.labels import Label
from imaging.phantom import make_phantom

GRIDS = {
    "anisotropic": {"spacing_mm": (1.2, 1.2, 2.0)},
    "oblique": {"spacing_mm": (1.0, 1.0, 2.0), "rotation_deg": (5.0, -3.0, 4.0)},
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module", params=sorted(GRIDS))
def case(request):
    phantom = make_phantom(lesion="left_ala_s1", modality="mr", **GRIDS[request.param])
    stages: list[str] = []
    anatomy = segment_anatomy_mr(phantom.image, progress=lambda f, s: stages.append(s))
    return request.param, phantom, anatomy, stages


def test_foramina_within_3_mm(case):
    name, phantom, anatomy, _ = case
    truth = {f.name: f for f in phantom.truth.foramina}
    found = {f.name: f for f in anatomy.foramina}
    errors = {
        n: float(np.linalg.norm(f.center_lps - truth[n].center_lps)) for n, f in found.items()
    }
    print(f"\n[{name}] foramen centre errors (mm): {errors}")
    assert len(found) == 8, anatomy.missing_foramina
    assert max(errors.values()) <= 3.0


def test_sacrum_dice_and_the_lesion_is_bone(case):
    name, phantom, anatomy, _ = case
    labels = phantom.labels.array
    truth = np.isin(labels, (Label.SACRUM, Label.LESION))
    ours = anatomy.paste("sacrum", phantom.image).array > 0
    dice = _dice(ours, truth)
    inside = np.count_nonzero(ours & (labels == Label.LESION)) / np.count_nonzero(
        labels == Label.LESION
    )
    print(f"\n[{name}] sacrum Dice {dice:.3f}, lesion inside the sacrum {inside:.3f}")
    assert dice >= 0.9
    assert inside >= 0.95


@pytest.mark.parametrize(("mask", "code"), [("left_ilium", 2), ("right_ilium", 3)])
def test_ilium_dice_within_the_crop(case, mask, code):
    name, phantom, anatomy, _ = case
    i0, j0, k0 = anatomy.crop_index
    k, j, i = anatomy.image.array.shape
    truth = phantom.labels.array[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] == code
    dice = _dice(anatomy.masks[mask], truth)
    print(f"\n[{name}] {mask} Dice {dice:.3f}")
    assert dice >= 0.85


def test_result_is_on_the_mr_grid_with_a_note(case):
    _, phantom, anatomy, stages = case
    assert anatomy.image.modality == "MR"
    assert np.allclose(anatomy.image.spacing, phantom.image.spacing)
    assert np.allclose(anatomy.image.direction, phantom.image.direction)
    assert any("synthesised from the T1-weighted MR" in n for n in anatomy.notes)
    assert stages[0] == "synthesising a CT from the MR"


def test_pseudo_ct_gives_bone_density_to_marrow_cortex_and_lesion():
    phantom = make_phantom(lesion="right_ala_s2", modality="mr", spacing_mm=(1.5, 1.5, 2.0))
    ct = pseudo_ct_from_t1(phantom.image)
    labels = phantom.labels.array
    assert ct.modality == "CT" and ct.same_grid(phantom.image)
    assert np.median(ct.array[labels == Label.SACRUM]) > 150.0
    assert np.mean(ct.array[labels == Label.LESION] > 150.0) > 0.95
    assert np.median(ct.array[labels == Label.CANAL]) < 25.0
    assert np.median(ct.array[labels == 0]) < 100.0


def test_inverted_contrast_is_refused_clearly():
    """A STIR-like image (fat and marrow dark, fluid bright) holds no T1 marrow."""
    phantom = make_phantom(lesion="none", modality="mr", spacing_mm=(2.0, 2.0, 3.0))
    image = phantom.image
    body = image.array > 0.1
    stir = np.where(body, 1.0 - image.array, 0.0).astype(np.float32)
    with pytest.raises(SegmentationError, match="place the foramen and endplate landmarks"):
        segment_anatomy_mr(image.with_array(stir))


def test_noise_is_refused_clearly():
    phantom = make_phantom(lesion="none", modality="mr", spacing_mm=(2.0, 2.0, 3.0))
    rng = np.random.default_rng(7)
    noise = rng.random(phantom.image.array.shape, dtype=np.float32)
    with pytest.raises(SegmentationError, match="place the foramen and endplate landmarks"):
        segment_anatomy_mr(phantom.image.with_array(noise))


def test_a_ct_is_refused():
    phantom = make_phantom(lesion="none", modality="ct", spacing_mm=(3.0, 3.0, 3.0))
    with pytest.raises(SegmentationError, match="not an MR"):
        segment_anatomy_mr(phantom.image)


def test_lower_sacral_canal_is_found_on_thick_slices():
    """Below the thecal sac the canal holds epidural fat, as bright as marrow on T1: it must
    stay canal (the planner keeps its margin from it), down to the canal's lower end."""
    from imaging.phantom import exact_distance_to_canal

    phantom = make_phantom(lesion="s1_body", modality="mr", spacing_mm=(1.1, 0.9, 2.5))
    anatomy = segment_anatomy_mr(phantom.image)
    ours = anatomy.paste("canal", phantom.image).array > 0
    image = phantom.image
    kji = np.argwhere(phantom.labels.array == Label.CANAL)
    points = image.index_to_world(kji[:, ::-1].astype(np.float64))
    deep = exact_distance_to_canal(points, phantom.truth) < -1.0
    sac_end = float(phantom.truth.canal.thecal_sac_end_lps[2])
    lower = deep & (points[:, 2] < sac_end - 3.0)
    assert lower.sum() > 500
    found = ours[kji[lower, 0], kji[lower, 1], kji[lower, 2]]
    print(f"\nlower sacral canal found: {found.mean():.3f}")
    assert found.mean() >= 0.9


def test_a_thin_spinous_process_is_bone_not_canal():
    """A spinous process thinner than a marrow core is cut by the guard into pieces smaller
    than a fat pocket: together they are bone, and the canal behind them stays the canal."""
    from imaging.phantom import exact_distance_to_canal

    phantom = make_phantom(
        lesion="right_ala_s1",
        modality="mr",
        spacing_mm=(1.0, 1.0, 2.0),
        rotation_deg=(-5.0, 5.0, 5.0),
        scale=0.94,
        seed=5,
    )
    anatomy = segment_anatomy_mr(phantom.image)
    image = phantom.image
    kji = np.argwhere(anatomy.paste("canal", image).array > 0)
    points = image.index_to_world(kji[:, ::-1].astype(np.float64))
    beyond = exact_distance_to_canal(points, phantom.truth) > 1.5
    on_sacrum = phantom.labels.array[tuple(kji[beyond].T)] == Label.SACRUM
    print(f"\ncanal voxels over 1.5 mm outside the canal: {beyond.sum()} of {len(kji)}")
    assert beyond.sum() < 0.02 * len(kji)
    assert on_sacrum.sum() < 100
