"""Lesion growing and metrics on the synthetic sacrum phantom, against its analytic truth.

Every lesion site, CT and MR, on the default 1 mm grid and on an anisotropic oblique grid.
Foramen, canal and bone masks come from the phantom's own label map and the Denis zones
from its truth, so these tests do not depend on the anatomy module.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from imaging.errors import LesionSegmentationError
from imaging.labels import Label
from imaging.lesion import GrowOptions, grow_lesion, lesion_metrics
from imaging.lesion_util import bbox_crop, grid_like
from imaging.phantom import LESION_SITES, Phantom, denis_zone_of, make_phantom
from imaging.volume import Volume

SITES = [s for s in LESION_SITES if s != "none"]
GRIDS = {
    "default": {},
    "oblique": {"spacing_mm": (0.8, 0.8, 2.0), "rotation_deg": (5.0, -3.0, 4.0)},
}


@functools.lru_cache(maxsize=4)
def phantom(site: str, modality: str, grid: str) -> Phantom:
    return make_phantom(lesion=site, modality=modality, **GRIDS[grid])


def label_mask(ph: Phantom, *codes: int) -> Volume:
    return ph.labels.with_array(np.isin(ph.labels.array, codes).astype(np.uint8))


def seed_point(ph: Phantom) -> np.ndarray:
    """The lesion centre, or the lesion voxel nearest to it when a foramen has eaten it."""
    lesion = ph.labels.array == Label.LESION
    center = ph.truth.lesion.center_lps
    i, j, k = np.rint(ph.labels.world_to_index(center)).astype(int)
    if lesion[k, j, i]:
        return center
    kk, jj, ii = np.nonzero(lesion)
    points = ph.labels.index_to_world(np.stack([ii, jj, kk], axis=1).astype(float))
    return points[np.argmin(np.linalg.norm(points - center, axis=1))]


def zone_map(ph: Phantom) -> Volume:
    """Denis zones from the truth's foraminal lines, on a crop of the label grid."""
    solid = np.isin(ph.labels.array, (Label.SACRUM, Label.LESION))
    crop = bbox_crop(ph.labels.array == Label.LESION, pad=4)
    local = grid_like(ph.labels, crop, np.zeros(crop.shape, np.uint8))
    kk, jj, ii = np.nonzero(solid[crop.slices])
    points = local.index_to_world(np.stack([ii, jj, kk], axis=1).astype(float))
    zones = local.array.copy()
    zones[kk, jj, ii] = np.asarray(denis_zone_of(points, ph.truth), dtype=np.uint8)
    return local.with_array(zones)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("modality", ["ct", "mr"])
@pytest.mark.parametrize("site", SITES)
def test_every_site_against_truth(site, modality, grid):
    ph = phantom(site, modality, grid)
    truth = ph.truth.lesion
    bone = label_mask(ph, Label.SACRUM, Label.LESION)
    result = grow_lesion(ph.image, seed_point(ph), bone_mask=bone)
    assert result.mode_used == ("lytic" if modality == "ct" else "mr")
    assert result.volume_ml == pytest.approx(truth.volume_ml, rel=0.05)
    assert dice(result.mask.array > 0, ph.labels.array == Label.LESION) >= 0.90
    assert result.stability < 1.5, result.warnings

    m = lesion_metrics(
        result.mask,
        zone_map=zone_map(ph),
        foramen_mask=label_mask(ph, Label.FORAMEN),
        canal_mask=label_mask(ph, Label.CANAL),
        bone_mask=bone,
    )
    assert m.diameter_over_30mm == truth.diameter_over_30mm
    assert m.touches_foramen == truth.touches_foramen
    assert m.touches_canal == truth.touches_canal
    assert m.denis_zone == truth.denis_zone
    assert abs(m.max_diameter_mm - truth.max_diameter_mm) <= 1.5 * float(ph.image.spacing.max())
    assert np.linalg.norm(m.centroid_lps - truth.centroid_lps) < 1.0
    for zone, ml in truth.volume_ml_by_zone.items():
        assert m.zones_ml[str(zone)] == pytest.approx(ml, abs=0.05 * truth.volume_ml)
    if truth.touches_foramen:
        assert "foraminal" in m.cortical_breach and m.foraminal_erosion is True


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_without_a_bone_mask(modality):
    """The seed alone is enough on the phantom (CT finds the cortical shell by itself)."""
    ph = phantom("left_ala_s1", modality, "default")
    result = grow_lesion(ph.image, seed_point(ph))
    assert result.volume_ml == pytest.approx(ph.truth.lesion.volume_ml, rel=0.05)
    assert dice(result.mask.array > 0, ph.labels.array == Label.LESION) >= 0.90


def test_seed_in_the_canal_is_not_in_bone():
    ph = phantom("left_ala_s1", "ct", "default")
    canal = np.argwhere(ph.labels.array == Label.CANAL)
    k, j, i = canal[len(canal) // 2]
    point = ph.labels.index_to_world(np.array([i, j, k], dtype=float))
    bone = label_mask(ph, Label.SACRUM, Label.LESION)
    with pytest.raises(LesionSegmentationError, match="not inside bone"):
        grow_lesion(ph.image, point, bone_mask=bone, options=GrowOptions())
