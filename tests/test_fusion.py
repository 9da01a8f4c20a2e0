"""CT-MR fusion: rigid registration of the phantom's MR to its CT under known transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from imaging.errors import OperationCancelledError
from imaging.fusion import (
    FusionError,
    RigidTransform,
    map_mask_to_ct,
    nudge,
    register_mr_to_ct,
    resample_mr_to_ct,
)
from imaging.labels import Label
from imaging.phantom import make_phantom
from imaging.volume import Volume

CT_SPACING = (2.5, 2.5, 2.5)


def _known_transform(
    angle_deg: float, axis: tuple[float, float, float], shift_mm: float, center: np.ndarray
) -> RigidTransform:
    """CT -> MR map: rotation by ``angle_deg`` about ``axis`` through ``center``, then a
    translation of length ``shift_mm`` along a fixed oblique direction."""
    r = Rotation.from_rotvec(np.radians(angle_deg) * np.asarray(axis) / np.linalg.norm(axis))
    rot = r.as_matrix()
    direction = np.array([0.6, -0.64, 0.48])
    shift = shift_mm * direction / np.linalg.norm(direction)
    return RigidTransform(rot, center - rot @ center + shift)


def _moved(volume: Volume, transform: RigidTransform) -> Volume:
    """The same voxels on a grid moved by ``transform``: anatomy that is at CT point p
    appears at MR world point ``transform(p)``."""
    return Volume(
        array=volume.array,
        origin=transform.map_ct_to_mr(volume.origin),
        spacing=volume.spacing,
        direction=transform.rotation @ volume.direction,
        modality=volume.modality,
    )


def _max_error_mm(found: RigidTransform, truth: RigidTransform, points: np.ndarray) -> float:
    return float(
        np.max(np.linalg.norm(found.map_ct_to_mr(points) - truth.map_ct_to_mr(points), axis=1))
    )


@pytest.fixture(scope="module")
def ct():
    return make_phantom(modality="ct", spacing_mm=CT_SPACING)


@pytest.fixture(scope="module")
def sacrum_points(ct) -> np.ndarray:
    kji = np.argwhere(ct.labels.array == Label.SACRUM)
    return ct.labels.index_to_world(kji[:, ::-1].astype(np.float64))


def test_known_transform_is_recovered_within_1mm_and_1deg(ct, sacrum_points) -> None:
    mr = make_phantom(modality="mr", spacing_mm=CT_SPACING, seed=3)
    truth = _known_transform(6.0, (0.3, -1.0, 0.5), 8.0, ct.truth.s1_endplate["center_lps"])
    assert truth.rotation_angle_deg == pytest.approx(6.0)
    moved = _moved(mr.image, truth)
    # the starting pose is far off: the test can fail
    assert _max_error_mm(RigidTransform.identity(), truth, sacrum_points) > 8.0

    fractions: list[float] = []
    result = register_mr_to_ct(ct.image, moved, progress=lambda f, _m: fractions.append(f))

    assert _max_error_mm(result.transform, truth, sacrum_points) < 1.0
    residual = result.transform.compose(truth.inverse())
    assert residual.rotation_angle_deg < 1.0
    assert result.metric < result.initial_metric  # mutual information improved
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert result.iterations > 0


def test_anisotropic_oblique_mr_grid_within_2mm(ct, sacrum_points) -> None:
    mr = make_phantom(
        modality="mr", spacing_mm=(1.2, 1.2, 3.0), rotation_deg=(4.0, 0.0, -3.0), seed=5
    )
    truth = _known_transform(5.0, (1.0, 0.2, -0.4), 7.0, ct.truth.lesion.center_lps)
    result = register_mr_to_ct(ct.image, _moved(mr.image, truth))
    assert _max_error_mm(result.transform, truth, sacrum_points) < 2.0
    assert result.transform.compose(truth.inverse()).rotation_angle_deg < 1.0


def test_mr_lesion_mask_maps_onto_ct_with_its_volume(ct) -> None:
    mr = make_phantom(modality="mr", spacing_mm=(1.5, 1.5, 3.0), seed=2)
    truth = _known_transform(6.0, (0.0, 0.0, 1.0), 8.0, ct.truth.lesion.center_lps)
    lesion_mr = _moved(mr.labels, truth)
    mapped = map_mask_to_ct(lesion_mr, ct.image, truth, label=int(Label.LESION))

    on_ct = ct.labels.array == Label.LESION
    got = mapped.mask.array.astype(bool)
    assert mapped.mask.same_grid(ct.image)
    dice = 2 * np.count_nonzero(got & on_ct) / (np.count_nonzero(got) + np.count_nonzero(on_ct))
    assert dice > 0.85
    expected_ml = float(np.count_nonzero(mr.labels.array == Label.LESION)) * 1.5 * 1.5 * 3.0 / 1e3
    assert mapped.volume_ml_mr == pytest.approx(expected_ml)
    assert mapped.volume_ml_ct == pytest.approx(mapped.volume_ml_mr, rel=0.12)
    assert mapped.volume_ml_ct == pytest.approx(ct.truth.lesion.volume_ml, rel=0.15)

    # a wrong transform misses the lesion: the check above can fail
    off = map_mask_to_ct(lesion_mr, ct.image, RigidTransform.identity(), label=int(Label.LESION))
    assert np.count_nonzero(off.mask.array.astype(bool) & on_ct) < 0.5 * np.count_nonzero(on_ct)


def test_resampled_mr_matches_mr_drawn_on_the_ct_grid(ct) -> None:
    mr = make_phantom(modality="mr", spacing_mm=(2.0, 2.0, 2.0), noise_hu=0.0)
    truth = _known_transform(6.0, (0.3, -1.0, 0.5), 8.0, ct.truth.s1_endplate["center_lps"])
    fused = resample_mr_to_ct(_moved(mr.image, truth), ct.image, truth)
    reference = make_phantom(modality="mr", spacing_mm=CT_SPACING, noise_hu=0.0).image
    assert fused.same_grid(ct.image) and fused.modality == "MR"
    r = np.corrcoef(fused.array.ravel(), reference.array.ravel())[0, 1]
    assert r > 0.93
    wrong = resample_mr_to_ct(_moved(mr.image, truth), ct.image, RigidTransform.identity())
    assert np.corrcoef(wrong.array.ravel(), reference.array.ravel())[0, 1] < r - 0.1


def test_nudge_composes_a_user_move_in_ct_space() -> None:
    base = RigidTransform.from_euler((2.0, -1.0, 3.0), (4.0, -2.0, 1.0))
    p_mr = np.array([[10.0, 20.0, 30.0], [-40.0, 5.0, 120.0]])
    # a pure translation moves every MR point shown on the CT by that translation
    moved = nudge(base, translation_mm=(1.0, -2.0, 0.5))
    np.testing.assert_allclose(
        moved.map_mr_to_ct(p_mr), base.map_mr_to_ct(p_mr) + [1.0, -2.0, 0.5], atol=1e-9
    )
    # a rotation about a centre keeps the MR anatomy shown at that centre in place
    centre = base.map_mr_to_ct(p_mr[0])
    turned = nudge(base, rotation_deg=(0.0, 0.0, 5.0), center_lps=centre)
    np.testing.assert_allclose(turned.map_mr_to_ct(p_mr[0]), centre, atol=1e-9)
    shown = turned.map_mr_to_ct(p_mr[1]) - centre
    before = base.map_mr_to_ct(p_mr[1]) - centre
    angle = math.degrees(math.atan2(shown[1], shown[0]) - math.atan2(before[1], before[0]))
    assert angle == pytest.approx(5.0, abs=1e-6)
    assert turned.compose(base.inverse()).rotation_angle_deg == pytest.approx(5.0)


def test_transform_round_trips_and_matches_simpleitk() -> None:
    t = RigidTransform.from_euler((3.0, -7.0, 11.0), (5.0, 6.0, -7.0), center_lps=[1, 2, 3])
    back = RigidTransform.from_json(t.to_json())
    np.testing.assert_allclose(back.rotation, t.rotation)
    np.testing.assert_allclose(back.translation_mm, t.translation_mm)
    pts = np.array([[0.0, 0.0, 0.0], [100.0, -50.0, 25.0]])
    stx = t.to_sitk()
    np.testing.assert_allclose([stx.TransformPoint(tuple(p)) for p in pts], t.map_ct_to_mr(pts))
    vr = sitk.VersorRigid3DTransform()
    vr.SetCenter((10.0, 20.0, 30.0))
    vr.SetRotation((0.0, 0.0, 1.0), 0.3)
    vr.SetTranslation((1.0, 2.0, 3.0))
    from_vr = RigidTransform.from_sitk(vr)
    np.testing.assert_allclose(
        [vr.TransformPoint(tuple(p)) for p in pts], from_vr.map_ct_to_mr(pts), atol=1e-9
    )
    np.testing.assert_allclose(t.inverse().map_ct_to_mr(t.map_ct_to_mr(pts)), pts, atol=1e-9)
    with pytest.raises(FusionError):
        RigidTransform.from_json(
            {"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]], "translation_mm": [0, 0, 0]}
        )


def test_cancel_stops_the_registration(ct) -> None:
    mr = make_phantom(modality="mr", spacing_mm=CT_SPACING)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(OperationCancelledError):
        register_mr_to_ct(ct.image, mr.image, cancel=cancel)
    assert calls["n"] == 4


def test_bad_inputs_give_clear_errors(ct) -> None:
    mr = make_phantom(modality="mr", spacing_mm=(4.0, 4.0, 4.0)).image
    far = Volume(mr.array, mr.origin + [3000.0, 0.0, 0.0], mr.spacing, mr.direction, "MR")
    with pytest.raises(FusionError, match="overlap"):
        register_mr_to_ct(ct.image, far, initial="identity")
    with pytest.raises(FusionError, match="empty"):
        map_mask_to_ct(
            mr.with_array(np.zeros(mr.array.shape, np.uint8)), ct.image, RigidTransform.identity()
        )
    with pytest.raises(FusionError):
        register_mr_to_ct(ct.image, mr, initial="moments")  # type: ignore[arg-type]
