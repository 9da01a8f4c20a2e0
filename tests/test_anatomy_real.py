"""Automatic CT anatomy on the one real pelvis CT against TotalSegmentator's labels.

The CT (``../shared/data/pelvis_ct_nifti``) is 3 mm isotropic with thin, fatty bone; the
reference labels are TotalSegmentator predictions (model output, not manual truth):
25 sacrum + 26 S1 vertebra = the whole sacrum; 77 hip_left and 78 hip_right. After LPS
orientation hip_left (77) lies at +x, the patient's left -- checked below rather than
assumed. The hip labels hold the whole hip bone (ilium, ischium, pubis, acetabulum) and
so do our ilium masks: every Dice here is taken on the full study grid, with the crop
pasted back, the way the label export writes it.

At 3 mm the lateral sacral masses are fat-density and the SI joints invisible, so the
sacrum/ilium split follows the brightest ridge (the subchondral cortex) and the one-voxel
rim is decided by partial volume; the femoral heads (TotalSegmentator's femur) are taken
out of the hip bones as the ball the acetabular lining cradles.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data

from imaging.anatomy import segment_anatomy
from imaging.labels import Label
from imaging.read import load
from planning.anatomy import SacralAnatomy

SACRUM_LABELS = (25, 26)
HIP_LEFT, HIP_RIGHT = 77, 78
STRUCTURES = ("sacrum", "left_ilium", "right_ilium")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module")
def real():
    folder = shared_data("pelvis_ct_nifti")
    ct = load(folder / "example_ct.nii.gz")
    labels = load(folder / "labels" / "totalseg_fast_total_multilabel.nii.gz")
    assert labels.same_grid(ct)
    return ct, labels, segment_anatomy(ct)


def _references(labels) -> dict[str, np.ndarray]:
    return {
        "sacrum": np.isin(labels.array, SACRUM_LABELS),
        "left_ilium": labels.array == HIP_LEFT,
        "right_ilium": labels.array == HIP_RIGHT,
    }


def test_hip_left_label_is_patient_left(real):
    ct, labels, _ = real
    for code, sign in ((HIP_LEFT, 1.0), (HIP_RIGHT, -1.0)):
        kji = np.argwhere(labels.array == code)
        x = ct.index_to_world(kji[:, ::-1].astype(float))[:, 0]
        assert np.sign(np.median(x) - ct.index_to_world(np.array(ct.size) / 2.0)[0]) == sign


def test_crop_holds_both_whole_hip_bones(real):
    ct, labels, anatomy = real
    i0, j0, k0 = anatomy.crop_index
    k, j, i = anatomy.image.array.shape
    inside = np.zeros(ct.array.shape, bool)
    inside[k0 : k0 + k, j0 : j0 + j, i0 : i0 + i] = True
    for code in (*SACRUM_LABELS, HIP_LEFT, HIP_RIGHT):
        ref = labels.array == code
        assert np.count_nonzero(ref & inside) >= 0.99 * np.count_nonzero(ref), code


@pytest.mark.parametrize("name", STRUCTURES)
def test_dice_on_the_full_grid(real, name):
    ct, labels, anatomy = real
    dice = _dice(anatomy.paste(name, ct).array, _references(labels)[name])
    print(f"\nreal CT {name} Dice {dice:.3f} (full study grid)")
    assert dice >= 0.85


def test_dice_of_the_exported_label_map(real):
    """Labels 1/2/3 of the label map pasted on the study grid, as the CLI writes them."""
    ct, labels, anatomy = real
    exported = anatomy.paste(anatomy.label_map().array, ct).array
    codes = {
        "sacrum": Label.SACRUM,
        "left_ilium": Label.LEFT_ILIUM,
        "right_ilium": Label.RIGHT_ILIUM,
    }
    refs = _references(labels)
    dices = {name: _dice(exported == codes[name], refs[name]) for name in STRUCTURES}
    print(f"\nreal CT exported label map Dice: {dices}")
    assert min(dices.values()) >= 0.85, dices


def test_femoral_heads_are_not_hip_bone(real):
    ct, labels, anatomy = real
    hips = anatomy.paste("left_ilium", ct).array | anatomy.paste("right_ilium", ct).array
    femur = np.isin(labels.array, (75, 76))
    share = np.count_nonzero(hips & femur) / np.count_nonzero(femur)
    print(f"\nreal CT: {share:.1%} of TotalSegmentator's femur voxels labelled hip bone")
    assert share < 0.1


def test_foramina_and_landmarks_are_reported(real):
    ct, labels, anatomy = real
    names = [f.name for f in anatomy.foramina]
    print(f"\nreal CT: {len(names)} of 8 foramina found: {', '.join(names) or 'none'}")
    assert len(names) + len(anatomy.missing_foramina) == 8
    # the endplate lies at the top of the TotalSegmentator S1 vertebra
    kji = np.argwhere(labels.array == 26)
    s1 = ct.index_to_world(kji[:, ::-1].astype(float))
    height = (s1 - anatomy.endplate.center_lps) @ anatomy.endplate.normal
    print(f"S1 vertebra above the endplate plane: {np.mean(height > 3.0):.0%} of its voxels")
    assert np.mean(height > 3.0) < 0.25
    model = SacralAnatomy.from_masks(anatomy)
    np.testing.assert_allclose(model.frame.e_z, anatomy.endplate.normal, atol=1e-9)
