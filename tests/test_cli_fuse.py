"""``sacroplan fuse CT MR``: registration and the MR lesion mapped onto the CT, from files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from app.cli import main
from imaging.fusion import RigidTransform
from imaging.labels import Label
from imaging.phantom import make_phantom
from imaging.volume import Volume


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A CT and an MR of the same phantom, the MR's anatomy moved by a known rigid transform."""
    folder = tmp_path_factory.mktemp("fuse")
    ct = make_phantom(modality="ct", lesion="left_ala_s1", spacing_mm=(1.5, 1.5, 2.0), scale=0.97)
    mr = make_phantom(
        modality="mr", lesion="left_ala_s1", spacing_mm=(1.2, 1.2, 3.0), scale=0.97, seed=3
    )
    centre = np.asarray(ct.truth.lesion.center_lps, float)
    axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
    rot = Rotation.from_rotvec(np.radians(6.0) * axis).as_matrix()
    truth = RigidTransform(rot, centre - rot @ centre + np.array([7.0, -5.0, 4.0]))
    v = mr.image
    moved = Volume(
        array=v.array,
        origin=truth.map_ct_to_mr(v.origin),
        spacing=v.spacing,
        direction=truth.rotation @ v.direction,
        modality="MR",
    )
    sitk.WriteImage(ct.image.to_sitk(), str(folder / "ct.nii.gz"))
    sitk.WriteImage(moved.to_sitk(), str(folder / "mr.nii.gz"))
    return folder, ct, truth


def test_fuse_recovers_the_transform_and_maps_the_lesion(pair, capsys) -> None:
    folder, ct, truth = pair
    centre = np.asarray(ct.truth.lesion.center_lps, float)
    seed = truth.map_ct_to_mr(centre[None, :])[0]
    tfm = folder / "t.tfm"
    labels = folder / "lesion_on_ct.nii.gz"
    argv = ["fuse", str(folder / "ct.nii.gz"), str(folder / "mr.nii.gz"), "--json"]
    argv += ["--seed", ",".join(f"{x:.2f}" for x in seed)]
    argv += ["--out-transform", str(tfm), "--out-labels", str(labels)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    found = RigidTransform.from_json(data["registration"]["transform"])
    kji = np.argwhere(ct.labels.array == Label.SACRUM)
    points = ct.labels.index_to_world(kji[:, ::-1].astype(float))
    error = np.linalg.norm(found.map_ct_to_mr(points) - truth.map_ct_to_mr(points), axis=1)
    assert error.max() < 1.0
    assert found.compose(truth.inverse()).rotation_angle_deg < 1.0
    # the written ITK transform is the same map
    written = RigidTransform.from_sitk(sitk.ReadTransform(str(tfm)))
    some = points[:50]
    assert np.allclose(written.map_ct_to_mr(some), found.map_ct_to_mr(some), atol=1e-6)
    # the MR lesion, mapped onto the CT: the analytic volume and centre
    lesion = data["lesion"]
    truth_ml = ct.truth.lesion.volume_ml
    assert abs(lesion["volume_ml_ct"] / truth_ml - 1.0) < 0.10
    assert abs(lesion["volume_ml_mr"] / truth_ml - 1.0) < 0.10
    assert np.linalg.norm(np.subtract(lesion["centroid_ct_lps"], centre)) < 2.0
    mapped = sitk.ReadImage(str(labels))
    assert mapped.GetSize() == ct.image.to_sitk().GetSize()
    assert np.allclose(mapped.GetOrigin(), ct.image.to_sitk().GetOrigin())


def test_fuse_prints_a_summary_and_refuses_swapped_or_missing_studies(pair, capsys) -> None:
    folder, _ct, _truth = pair
    ct, mr = str(folder / "ct.nii.gz"), str(folder / "mr.nii.gz")
    assert main(["fuse", ct, mr]) == 0
    text = capsys.readouterr().out
    assert "registered to CT" in text and "rotation" in text
    assert main(["fuse", mr, ct]) == 2
    assert "the first study must be the CT" in capsys.readouterr().err
    assert main(["fuse", ct, str(folder / "nothing.nii.gz")]) == 2
    assert "no such file or folder for the MR" in capsys.readouterr().err
    assert main(["fuse", ct, mr, "--out-labels", str(folder / "x.nii.gz")]) == 2
    assert "--out-labels needs --seed" in capsys.readouterr().err
    assert main(["fuse", ct, mr, "--seed", "0,0,5000"]) == 2
    assert "outside the MR volume" in capsys.readouterr().err
