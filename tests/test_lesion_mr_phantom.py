"""Lesion measurement on T1-weighted MR phantoms with the automatic MR anatomy: every lesion
site through :class:`planning.case.Case`, and ``sacroplan segment`` on an oblique grid.

Truth comes from :mod:`imaging.phantom` (analytic lesion volume, zone and flags; the label
map for Dice), never from the segmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from app.cli import main
from imaging.labels import Label
from imaging.lesion import GrowOptions
from imaging.phantom import LESION_SITES, make_phantom
from planning.case import Case

SITES = [s for s in LESION_SITES if s != "none"]
SPACING = (1.2, 1.2, 2.0)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module", params=SITES)
def measured(request):
    phantom = make_phantom(lesion=request.param, modality="mr", spacing_mm=SPACING)
    case = Case(image=phantom.image, source=f"phantom:{request.param}")
    case.find_anatomy()
    metrics = case.grow_lesion(phantom.truth.lesion.center_lps, options=GrowOptions(mode="mr"))
    return request.param, phantom, case, metrics


def test_volume_within_5_percent_and_dice(measured):
    site, phantom, case, metrics = measured
    truth = phantom.truth.lesion
    ours = case.lesion.mask.array > 0
    dice = _dice(ours, phantom.labels.array == Label.LESION)
    print(f"\n[{site}] {metrics.volume_ml:.2f} mL (truth {truth.volume_ml:.2f}), Dice {dice:.3f}")
    assert metrics.volume_ml == pytest.approx(truth.volume_ml, rel=0.05)
    assert dice >= 0.90


#: The S2 ala lesions lie 2.1 mm from the S2 foramen: on 2 mm MR slices the voxels between
#: them mix lesion, cortex and marrow to a lesion-like value, so the grown outline reaches
#: the foramen over a few mm² and exposes a few faces outside the sacrum mask: both stay under
#: the areas that count as touching and as a breach.


def test_zone_and_flags(measured):
    site, phantom, _, metrics = measured
    truth = phantom.truth.lesion
    assert metrics.denis_zone == truth.denis_zone
    assert metrics.diameter_over_30mm is truth.diameter_over_30mm
    assert metrics.touches_canal is truth.touches_canal
    assert metrics.touches_foramen is truth.touches_foramen


def test_cortical_breach_only_where_the_lesion_reaches_a_foramen(measured):
    """The phantom lesions lie inside the bone; only the large one opens into foramina."""
    _, phantom, _, metrics = measured
    breach = set(metrics.cortical_breach or ())
    if phantom.truth.lesion.touches_foramen:
        assert "foraminal" in breach
    else:
        assert breach == set(), breach


def test_cli_segment_on_an_oblique_anisotropic_mr(tmp_path: Path, capsys) -> None:
    phantom = make_phantom(
        lesion="s1_body",
        modality="mr",
        spacing_mm=(1.0, 1.3, 2.5),
        rotation_deg=(6.0, -4.0, 10.0),
        scale=1.05,
    )
    path = tmp_path / "mr.nii.gz"
    sitk.WriteImage(phantom.image.to_sitk(), str(path))
    truth = phantom.truth.lesion
    seed = ",".join(f"{v:.2f}" for v in truth.center_lps)
    code = main(["segment", str(path), "--seed", seed, "--mode", "mr", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    lesion = report["lesion"]
    print(f"\n[cli oblique] {lesion['volume_ml']} mL (truth {truth.volume_ml:.2f})")
    assert lesion["volume_ml"] == pytest.approx(truth.volume_ml, rel=0.05)
    assert lesion["denis_zone"] == truth.denis_zone
    assert lesion["flags"]["diameter_over_30mm"] is truth.diameter_over_30mm
    assert lesion["flags"]["touches_foramen"] is truth.touches_foramen
    assert report["anatomy"] is not None
    assert len(report["anatomy"]["foramina"]) >= 4
