"""Lesion growing on the one real sacrum CT (3 mm), with lesions implanted in the left ala.

The scan (``shared/data/pelvis_ct_nifti``) has no lesion, so an ellipsoid is blended into
the left ala (patient left = +x in LPS) with partial-volume edges; the analytic ellipsoid
is the truth. This patient's alar marrow is fatty and patchy: ~10 HU on average, with fat
(−100 HU) and trabecular islands (200–300 HU) a few millimetres apart, so a third of it
has the density of a soft-tissue lesion.

* A **sclerotic** implant (600 ± 30 HU) stands out and must be measured within 10 %.
* **Lytic** implants of soft tissue (30–60 HU, 10 HU noise, 2–10 mL) share their density
  with much of that marrow; they are told apart by being one tissue throughout, and must
  be measured within 10 % through the whole case (automatic anatomy, default auto mode),
  in Denis zone 1, with a warning that the marrow competes.
* A noisy lytic implant (20 HU noise) is harder still to tell from the marrow: whatever
  the volume, the grower must say that the marrow competes and the outline needs checking.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_data
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from imaging.lesion import grow_lesion, lesion_metrics
from imaging.volume import Volume
from planning.case import Case

RADII = np.array([10.0, 8.0, 9.0])  # mm: 3.02 mL
SACRUM_LABELS = (25, 26)  # TotalSegmentator: sacrum, S1 vertebra


@functools.lru_cache(maxsize=1)
def real_ct() -> tuple[Volume, Volume]:
    folder = shared_data("pelvis_ct_nifti")
    image = sitk.DICOMOrient(sitk.ReadImage(str(folder / "example_ct.nii.gz")), "LPS")
    labels = sitk.DICOMOrient(
        sitk.ReadImage(str(folder / "labels" / "totalseg_fast_total_multilabel.nii.gz")), "LPS"
    )
    ct = Volume.from_sitk(image, modality="CT")
    lab = Volume.from_sitk(labels, modality="LABEL")
    sacrum = lab.with_array(np.isin(lab.array, SACRUM_LABELS).astype(np.uint8))
    return ct, sacrum


def left_ala_center(sacrum: Volume) -> np.ndarray:
    """Centroid of the sacrum well inside it (6 mm) and more than 20 mm left of the midline."""
    inner = ndi.binary_erosion(sacrum.array > 0, iterations=2)
    kk, jj, ii = np.nonzero(inner)
    points = sacrum.index_to_world(np.stack([ii, jj, kk], axis=1).astype(float))
    midline_x = float(points[:, 0].mean())
    return points[points[:, 0] > midline_x + 20.0].mean(axis=0)


def implant(
    ct: Volume,
    center: np.ndarray,
    value_hu: float,
    sd_hu: float,
    radii: np.ndarray = RADII,
    *,
    rng_seed: int = 3,
) -> tuple[Volume, float]:
    """Blend an ellipsoid of ``value_hu`` ± ``sd_hu`` noise into ``ct``; return it and its mL.

    Each voxel takes the ellipsoid's share of its volume (4³ sub-samples) of lesion and the
    rest of what was there: the partial volume of a real edge.
    """
    radii = np.asarray(radii, dtype=float)
    axes = Rotation.from_euler("z", 15.0, degrees=True).as_matrix()
    kk, jj, ii = np.indices(ct.array.shape)
    base = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float)
    offsets = (np.arange(4) + 0.5) / 4 - 0.5
    near = np.linalg.norm(ct.index_to_world(base) - center, axis=1) < radii.max() + 6.0
    frac = np.zeros(len(base))
    for a in offsets:
        for b in offsets:
            for c in offsets:
                q = (ct.index_to_world(base[near] + [a, b, c]) - center) @ axes
                frac[near] += ((q / radii) ** 2).sum(axis=1) <= 1.0
    frac = (frac / 64.0).reshape(ct.array.shape)
    noise = np.random.default_rng(rng_seed).normal(value_hu, sd_hu, ct.array.shape)
    out = frac * noise + (1.0 - frac) * ct.array
    volume_ml = 4.0 / 3.0 * np.pi * float(np.prod(radii)) / 1000.0
    return ct.with_array(np.rint(out).astype(np.int16)), volume_ml


def test_implant_site_is_in_the_left_ala():
    ct, sacrum = real_ct()
    center = left_ala_center(sacrum)
    assert center[0] > 20.0  # patient left
    i, j, k = np.rint(sacrum.world_to_index(center)).astype(int)
    assert sacrum.array[k, j, i] == 1


@pytest.mark.parametrize("with_bone_mask", [False, True], ids=["seed only", "bone mask"])
def test_sclerotic_implant_in_the_left_ala(with_bone_mask):
    ct, sacrum = real_ct()
    center = left_ala_center(sacrum)
    image, truth_ml = implant(ct, center, 600.0, 30.0)
    result = grow_lesion(image, center, bone_mask=sacrum if with_bone_mask else None)
    assert result.mode_used == "sclerotic"
    assert result.volume_ml == pytest.approx(truth_ml, rel=0.10)
    assert result.warnings == ()
    m = lesion_metrics(result.mask)
    assert np.linalg.norm(m.centroid_lps - center) < 2.0
    assert abs(m.max_diameter_mm - 2 * RADII.max()) <= 3.0  # one voxel


@pytest.mark.parametrize(
    ("radii", "value_hu"),
    [
        ((10.0, 8.0, 9.0), 45.0),
        ((13.0, 10.0, 11.0), 60.0),
        ((15.0, 12.0, 13.0), 30.0),
    ],
    ids=["3.0 mL 45 HU", "6.0 mL 60 HU", "9.8 mL 30 HU"],
)
def test_lytic_implant_in_fatty_marrow_through_the_case(radii, value_hu):
    ct, sacrum = real_ct()
    center = left_ala_center(sacrum)
    image, truth_ml = implant(ct, center, value_hu, 10.0, np.array(radii))
    case = Case(image=image, source="implant")
    case.find_anatomy()
    metrics = case.grow_lesion(center)
    assert case.lesion is not None and case.lesion.mode_used == "lytic"
    assert metrics.volume_ml == pytest.approx(truth_ml, rel=0.10)
    assert metrics.denis_zone == 1
    assert np.linalg.norm(metrics.centroid_lps - center) < 3.0  # one voxel
    # the marrow competes with the lesion: the radiologist is told to check the outline
    assert any("density" in w for w in case.lesion.warnings)


@pytest.mark.parametrize("with_bone_mask", [False, True], ids=["seed only", "bone mask"])
def test_noisy_lytic_implant_is_flagged(with_bone_mask):
    ct, sacrum = real_ct()
    center = left_ala_center(sacrum)
    image, _ = implant(ct, center, 45.0, 20.0)
    result = grow_lesion(image, center, bone_mask=sacrum if with_bone_mask else None)
    assert result.mode_used == "lytic"
    assert any("density" in w and "check the outline" in w for w in result.warnings)
