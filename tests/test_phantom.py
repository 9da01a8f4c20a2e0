"""The synthetic sacrum phantom: label map, image and analytic truth agree, on any grid."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from imaging import phantom_anatomy as anat
from imaging.labels import Label
from imaging.phantom import (
    FORAMEN_CODES,
    LESION_SITES,
    Phantom,
    PhantomTruth,
    _draw,
    build_truth,
    denis_zone_of,
    exact_distance_to_canal,
    exact_distance_to_foramen,
    make_phantom,
)
from imaging.phantom_shapes import cylinder_signed_distance, round_cone_signed_distance

OBLIQUE = {"spacing_mm": (0.8, 0.8, 2.0), "rotation_deg": (5.0, -3.0, 4.0)}
SITES = [s for s in LESION_SITES if s != "none"]


@functools.cache
def phantom(lesion: str = "left_ala_s1", grid: str = "default", **kw) -> Phantom:
    extra = OBLIQUE if grid == "oblique" else {}
    return make_phantom(lesion=lesion, **extra, **kw)


def world_of(ph: Phantom, mask: np.ndarray) -> np.ndarray:
    """World positions (N, 3) of the voxel centres in ``mask``."""
    return ph.labels.index_to_world(np.argwhere(mask)[:, ::-1].astype(np.float64))


def truth_without_grid(truth: PhantomTruth) -> dict:
    data = truth.to_json()
    data.pop("grid")
    data.pop("options")
    return data


def assert_json_close(a, b, *, tol=1e-9):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_json_close(a[key], b[key], tol=tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_json_close(x, y, tol=tol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=tol)
    else:
        assert a == b


# -- exact primitives on hand-made cases ---------------------------------------------------------


def test_cylinder_distance_exact_values():
    a, b, r = np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 10.0]), 2.0
    pts = np.array(
        [
            [0.0, 0.0, 5.0],  # on the axis, mid-length: -radius
            [5.0, 0.0, 5.0],  # 3 mm outside the side
            [0.0, 0.0, 13.0],  # 3 mm beyond the cap
            [5.0, 0.0, 14.0],  # off the rim: sqrt(3^2 + 4^2)
            [1.5, 0.0, 9.0],  # inside, nearer the side (0.5) than the cap (1.0)
        ]
    )
    d = cylinder_signed_distance(pts, a, b, r)
    assert d == pytest.approx([-2.0, 3.0, 3.0, 5.0, -0.5])


def test_round_cone_distance_exact_values():
    a, b = np.array([0.0, 0.0, 0.0]), np.array([10.0, 0.0, 0.0])
    assert round_cone_signed_distance(a, a, b, 3.0, 3.0) == pytest.approx(-3.0)
    assert round_cone_signed_distance(np.array([5.0, 7.0, 0.0]), a, b, 3.0, 3.0) == (
        pytest.approx(4.0)
    )
    assert round_cone_signed_distance(np.array([-6.0, 0.0, 0.0]), a, b, 4.0, 2.0) == (
        pytest.approx(2.0)
    )
    # outside, the tapered capsule is the union of balls swept from a to b with linearly
    # changing radius, so its distance is the minimum over those balls
    rng = np.random.default_rng(3)
    p = rng.uniform(-15, 25, size=(300, 3))
    d = round_cone_signed_distance(p, a, b, 4.0, 2.0)
    s = np.linspace(0.0, 1.0, 20001)
    centres = a + s[:, None] * (b - a)
    radii = 4.0 + s * (2.0 - 4.0)
    outside = d > 0
    brute = np.min(
        np.linalg.norm(p[outside, None, :] - centres[None], axis=2) - radii[None], axis=1
    )
    assert brute == pytest.approx(d[outside], abs=1e-6)


# -- the volume ---------------------------------------------------------------------------------


def test_default_grid_dtype_and_geometry():
    ph = phantom()
    assert ph.image.modality == "CT" and ph.image.array.dtype == np.int16
    assert ph.labels.modality == "LABEL" and ph.labels.array.dtype == np.uint8
    assert ph.image.same_grid(ph.labels)
    assert ph.image.size == (301, 221, 181)
    assert np.allclose(ph.image.spacing, 1.0)
    assert np.allclose(ph.image.direction, np.eye(3))
    assert set(np.unique(ph.labels.array)) == {int(v) for v in Label}
    assert ph.truth.grid["size"] == [301, 221, 181]


def test_oblique_anisotropic_grid_is_as_asked():
    ph = phantom(grid="oblique")
    assert np.allclose(ph.image.spacing, (0.8, 0.8, 2.0))
    assert ph.image.orientation_label() == "oblique"
    assert ph.image.same_grid(ph.labels)


def test_truth_is_the_same_on_every_grid():
    a = truth_without_grid(phantom().truth)
    b = truth_without_grid(phantom(grid="oblique").truth)
    assert_json_close(a, b, tol=0.0)
    json.dumps(phantom().truth.to_json())


def test_truth_json_round_trip():
    truth = phantom(lesion="large_foramen").truth
    data = json.loads(json.dumps(truth.to_json()))
    again = PhantomTruth.from_json(data)
    assert_json_close(again.to_json(), truth.to_json(), tol=0.0)
    assert again.foramen("left S1").radius_mm == 6.5


def test_same_options_same_arrays_and_seed_changes_only_noise():
    a = make_phantom(lesion="s1_body", spacing_mm=(3.0, 3.0, 3.0), seed=4)
    b = make_phantom(lesion="s1_body", spacing_mm=(3.0, 3.0, 3.0), seed=4)
    c = make_phantom(lesion="s1_body", spacing_mm=(3.0, 3.0, 3.0), seed=5)
    assert np.array_equal(a.image.array, b.image.array)
    assert np.array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.image.array, c.image.array)
    assert np.array_equal(a.labels.array, c.labels.array)


def test_shape_culling_changes_nothing():
    truth = build_truth(lesion="large_foramen")
    rot = np.eye(3)
    a = np.radians(20.0)
    rot[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    origin = truth.sacral_frame.origin + np.array([-120.0, -110.0, -120.0])
    spacing = np.array([2.5, 2.5, 3.0])
    shape = (58, 84, 100)
    fast = _draw(truth, origin, spacing, rot, shape, "ct")
    slow = _draw(truth, origin, spacing, rot, shape, "ct", accelerate=False)
    assert np.array_equal(fast[0], slow[0])
    assert np.array_equal(fast[1], slow[1])


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="lesion site"):
        make_phantom(lesion="left_ala_s9")
    with pytest.raises(ValueError, match="modality"):
        make_phantom(modality="pet")
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        build_truth(scale=-1.0)
    with pytest.raises(ValueError, match="noise"):
        make_phantom(noise_hu=-1.0)


# -- anatomy measured on the label map ------------------------------------------------------------


@pytest.mark.parametrize("grid", ["default", "oblique"])
def test_sacrum_is_one_piece_and_the_si_joint_separates_the_ilia(grid):
    lab = phantom(grid=grid).labels.array
    sacrum = lab == Label.SACRUM
    _, n = ndi.label(sacrum, structure=ndi.generate_binary_structure(3, 1))
    assert n == 1
    grown = ndi.binary_dilation(sacrum, structure=ndi.generate_binary_structure(3, 1))
    assert not np.any(grown & np.isin(lab, (Label.LEFT_ILIUM, Label.RIGHT_ILIUM)))
    for ilium in (Label.LEFT_ILIUM, Label.RIGHT_ILIUM):
        # the SI-joint space touches both bones on each side
        near = ndi.binary_dilation(lab == ilium, iterations=2)
        assert np.count_nonzero(near & (lab == Label.SI_JOINT)) > 500
    # the joints lie lateral to the foramina (Denis zone 1)
    joint = world_of(phantom(grid=grid), lab == Label.SI_JOINT)
    assert np.all(denis_zone_of(joint, phantom(grid=grid).truth) == 1)


def test_si_joint_label_follows_the_model_rule():
    ph = phantom(grid="oblique")
    lab = ph.labels.array
    near = ndi.binary_dilation(lab == Label.SI_JOINT, iterations=2)
    pts = world_of(ph, near)
    model = (pts - ph.truth.sacral_frame.origin) / ph.truth.scale  # pelvic frame, model mm
    assert np.array_equal(anat.si_joint_points(model), lab[near] == Label.SI_JOINT)


def test_left_ilium_is_on_the_patient_left():
    ph = phantom()
    frame = ph.truth.sacral_frame
    left = frame.to_frame(world_of(ph, ph.labels.array == Label.LEFT_ILIUM))[:, 0]
    right = frame.to_frame(world_of(ph, ph.labels.array == Label.RIGHT_ILIUM))[:, 0]
    assert left.min() > 20.0 and right.max() < -20.0


@pytest.mark.parametrize("grid", ["default", "oblique"])
def test_sacral_height_and_width_from_the_label_map(grid):
    ph = phantom(grid=grid)
    frame = ph.truth.sacral_frame
    s = frame.to_frame(world_of(ph, ph.labels.array == Label.SACRUM))
    width = np.ptp(s[:, 0])
    midline = s[np.abs(s[:, 0]) < 3.0]
    top = midline[midline[:, 2] > -4.0]
    promontory = top[np.argmin(top[:, 1])]  # most anterior point of the S1 rim
    apex = midline[np.argmin(midline[:, 2])]
    height = float(np.linalg.norm(apex - promontory))
    assert 100.0 <= width <= 110.0
    assert 95.0 <= height <= 110.0
    assert height == pytest.approx(ph.truth.sacral_height_mm, abs=3.0)


def test_s1_endplate_is_tilted_forward_like_a_supine_adult():
    truth = phantom().truth
    n = truth.s1_endplate["normal"]
    tilt = math.degrees(math.acos(n[2]))
    assert 30.0 <= tilt <= 45.0
    assert n[1] < 0.0  # toward anterior (-y)
    assert abs(n[0]) < 1e-12
    assert truth.sacral_frame.e_z == pytest.approx(n)
    r = truth.sacral_frame.rotation
    assert r @ r.T == pytest.approx(np.eye(3))
    assert np.linalg.det(r) == pytest.approx(1.0)
    # the endplate centre sits on the S1 body's top: bone just below it, none just above
    ph = phantom()
    below = ph.labels.world_to_index(truth.s1_endplate["center_lps"] - 3.0 * n)
    above = ph.labels.world_to_index(truth.s1_endplate["center_lps"] + 3.0 * n)
    lab = ph.labels.array
    assert lab[tuple(np.rint(below[::-1]).astype(int))] == Label.SACRUM
    assert lab[tuple(np.rint(above[::-1]).astype(int))] == Label.BACKGROUND


def test_l5_sits_above_the_disc():
    ph = phantom()
    e = ph.truth.s1_endplate
    idx = ph.image.world_to_index(e["center_lps"] + 25.0 * e["normal"])
    hu = ph.image.array[tuple(np.rint(idx[::-1]).astype(int))]
    assert hu > 100  # L5 vertebral body (bone, label 0)
    disc = ph.image.world_to_index(e["center_lps"] + 5.0 * e["normal"])
    assert -50 < ph.image.array[tuple(np.rint(disc[::-1]).astype(int))] < 150


@pytest.mark.parametrize("grid", ["default", "oblique"])
def test_foramen_voxels_lie_in_their_cylinders(grid):
    ph = phantom(grid=grid)
    codes = ph.foramen_labels()
    assert codes.array.dtype == np.uint8 and codes.same_grid(ph.labels)
    assert np.array_equal(codes.array > 0, ph.labels.array == Label.FORAMEN)
    half_voxel = 0.5 * float(np.linalg.norm(ph.labels.spacing))
    for f in ph.truth.foramina:
        pts = world_of(ph, codes.array == FORAMEN_CODES[f.name])
        assert len(pts) > 100, f.name
        rel = pts - f.start_lps
        along = rel @ f.axis
        radial = np.linalg.norm(rel - along[:, None] * f.axis, axis=1)
        assert radial.max() <= f.radius_mm + half_voxel
        assert np.all(exact_distance_to_foramen(pts, f) <= 1e-9)
        assert along.min() >= -1e-9 and along.max() <= 2 * f.half_length_mm + 1e-9


def test_foramina_sizes_levels_and_course():
    truth = phantom().truth
    frame = truth.sacral_frame
    names = [f.name for f in truth.foramina]
    assert sorted(names) == sorted(FORAMEN_CODES)
    radii = {f.level: f.radius_mm for f in truth.foramina}
    assert radii == {"S1": 6.5, "S2": 6.0, "S3": 5.0, "S4": 4.0}
    left = [frame.to_frame(truth.foramen(f"left S{n}").center_lps) for n in (1, 2, 3, 4)]
    xs = [c[0] for c in left]
    zs = [c[2] for c in left]
    assert xs == sorted(xs, reverse=True)  # closer to the midline from S1 to S4
    assert zs == sorted(zs, reverse=True)  # S1 highest
    for f in truth.foramina:
        a = frame.to_frame(f.axis + frame.origin)
        assert a[1] > 0.7 and abs(a[0]) < 0.2  # antero-posterior, slightly oblique
        other = {"left": "right", "right": "left"}[f.side]
        mirror = truth.foramen(f"{other} {f.level}")
        assert frame.to_frame(mirror.center_lps)[0] == pytest.approx(
            -frame.to_frame(f.center_lps)[0]
        )
        # bone separates every channel from the canal
        e1 = np.cross(f.axis, frame.e_x)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(f.axis, e1)
        along = np.linspace(-f.half_length_mm, f.half_length_mm, 120)
        angle = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
        aa, tt = np.meshgrid(along, angle)
        rim = (
            f.center_lps
            + aa.reshape(-1, 1) * f.axis
            + f.radius_mm * (np.cos(tt).reshape(-1, 1) * e1 + np.sin(tt).reshape(-1, 1) * e2)
        )
        assert exact_distance_to_canal(rim, truth).min() > 2.0, f.name


def test_canal_label_is_the_exact_canal():
    ph = phantom()
    lab = ph.labels.array
    region = ndi.binary_dilation(lab == Label.CANAL, iterations=3)
    pts = world_of(ph, region)
    d = exact_distance_to_canal(pts, ph.truth)
    in_label = lab[region] == Label.CANAL
    assert np.all(d[in_label] <= 1e-9)
    assert np.all(in_label[d < -1e-9])


def test_denis_zone_of_points():
    truth = phantom().truth
    frame = truth.sacral_frame
    s1 = truth.foramen("left S1")
    r1 = truth.foramen("right S1")
    assert denis_zone_of(s1.center_lps, truth) == 2
    assert denis_zone_of(r1.center_lps, truth) == 2
    mid = frame.origin - 20.0 * frame.e_z
    assert denis_zone_of(mid, truth) == 3
    lateral = s1.center_lps + 15.0 * frame.e_x
    assert denis_zone_of(lateral, truth) == 1
    zones = denis_zone_of(np.stack([s1.center_lps, mid, lateral]), truth)
    assert zones.tolist() == [2, 3, 1]
    level = truth.denis_levels[0]
    just_in = frame.origin + (level.lateral_mm - 0.01) * frame.e_x + level.z_mm * frame.e_z
    just_out = frame.origin + (level.lateral_mm + 0.01) * frame.e_x + level.z_mm * frame.e_z
    assert denis_zone_of(just_in, truth) == 2 and denis_zone_of(just_out, truth) == 1


# -- the image -----------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", ["default", "oblique"])
def test_ct_numbers_per_structure(grid):
    ph = phantom(grid=grid)
    img = ph.image.array
    lab = ph.labels.array
    sacrum = lab == Label.SACRUM
    inner = ndi.binary_erosion(sacrum, iterations=3)
    assert 100 <= np.median(img[inner]) <= 300
    assert np.percentile(img[inner], 5) >= 100 and np.percentile(img[inner], 95) <= 300
    edge = sacrum & ~ndi.binary_erosion(sacrum)
    assert np.median(img[edge]) > 1000  # cortical shell
    lesion = ndi.binary_erosion(lab == Label.LESION)
    assert 30 <= np.median(img[lesion]) <= 60
    assert np.percentile(img[lesion], 1) > -30 and np.percentile(img[lesion], 99) < 100
    for ilium in (Label.LEFT_ILIUM, Label.RIGHT_ILIUM):
        assert np.percentile(img[lab == ilium], 90) > 1000
    assert np.median(img[ndi.binary_erosion(lab == Label.SI_JOINT)]) < 150
    assert np.median(img[ndi.binary_erosion(lab == Label.FORAMEN)]) < 50
    assert np.median(img[ndi.binary_erosion(lab == Label.CANAL)]) < 50
    assert np.median(img[:, :4, :4]) < -900  # air in front of the body, patient right
    soft = (lab == 0) & (img > -200) & (img < 150)
    assert np.count_nonzero(soft) > 0.3 * img.size


def test_mr_intensities_are_t1_like():
    ct = make_phantom(lesion="left_ala_s1", spacing_mm=(1.5, 1.5, 1.5), noise_hu=0.0)
    mr = make_phantom(lesion="left_ala_s1", spacing_mm=(1.5, 1.5, 1.5), noise_hu=0.0, modality="mr")
    assert mr.image.modality == "MR" and mr.image.array.dtype == np.float32
    assert np.array_equal(ct.labels.array, mr.labels.array)
    c, m, lab = ct.image.array, mr.image.array, ct.labels.array

    def med(mask):
        assert np.count_nonzero(mask) > 50
        return float(np.median(m[mask]))

    fat = med(c == -100)
    muscle = med(c == 50)
    marrow = med(ndi.binary_erosion(lab == Label.SACRUM, iterations=3))
    lesion = med(ndi.binary_erosion(lab == Label.LESION))
    cortex = med((lab == Label.SACRUM) & (c > 1300))
    csf = med((c == 8) & (lab == Label.CANAL))
    assert fat > 0.8 and 0.75 <= marrow <= 1.0
    assert 0.25 <= muscle <= 0.45
    assert lesion < marrow - 0.3 and lesion <= muscle
    assert cortex < 0.2 and csf < 0.2
    noisy = make_phantom(lesion="none", spacing_mm=(3.0, 3.0, 3.0), modality="mr")
    assert noisy.image.array.min() >= 0.0


# -- the lesion ----------------------------------------------------------------------------------

EXPECTED = {
    # site: (zone, diameter > 30, touches foramen, touches canal, side of x)
    "left_ala_s1": (1, False, False, False, 1),
    "right_ala_s1": (1, False, False, False, -1),
    "left_ala_s2": (1, False, False, False, 1),
    "right_ala_s2": (1, False, False, False, -1),
    "s1_body": (3, False, False, False, 0),
    "large_foramen": (2, True, True, False, 1),
}


@pytest.mark.parametrize("site", SITES)
def test_lesion_truth_per_site(site):
    truth = build_truth(lesion=site)
    lesion = truth.lesion
    zone, big, foramen, canal, side = EXPECTED[site]
    assert lesion.site == site
    assert lesion.denis_zone == zone == denis_zone_of(lesion.center_lps, truth)
    assert denis_zone_of(lesion.centroid_lps, truth) == zone
    assert lesion.flags == {
        "diameter_over_30mm": big,
        "touches_foramen": foramen,
        "touches_canal": canal,
    }
    assert lesion.max_diameter_mm == pytest.approx(2.0 * lesion.radii_mm.max())
    assert lesion.ellipsoid_volume_ml == pytest.approx(
        4.0 / 3.0 * math.pi * np.prod(lesion.radii_mm) / 1000.0
    )
    assert sum(lesion.volume_ml_by_zone.values()) == pytest.approx(lesion.volume_ml)
    assert (min(lesion.foramen_clearance_mm.values()) <= 0.0) == foramen
    assert (lesion.canal_clearance_mm <= 0.0) == canal
    x = truth.sacral_frame.to_frame(lesion.center_lps)[0]
    assert np.sign(round(x)) == side
    if site == "large_foramen":
        assert lesion.max_diameter_mm > 30.0
        assert lesion.volume_ml < lesion.ellipsoid_volume_ml
        assert {"left S1", "left S2"} <= {
            k for k, v in lesion.foramen_clearance_mm.items() if v < 0
        }
    else:
        assert lesion.max_diameter_mm <= 30.0
        assert lesion.volume_ml == lesion.ellipsoid_volume_ml
        assert min(lesion.foramen_clearance_mm.values()) > 1.5
        assert lesion.canal_clearance_mm > 3.0
        assert lesion.most_medial_zone == zone
    if site in ("left_ala_s1", "right_ala_s1", "s1_body"):
        assert 5.0 <= lesion.volume_ml <= 9.0


@pytest.mark.parametrize("site", SITES)
def test_lesion_voxels_match_the_analytic_volume(site):
    ph = phantom(lesion=site)
    lab = ph.labels.array
    ml = np.count_nonzero(lab == Label.LESION) * ph.labels.voxel_volume_mm3 / 1000.0
    assert ml == pytest.approx(ph.truth.lesion.volume_ml, rel=0.03)
    # entirely inside bone: every neighbour is sacrum, lesion or (eroded) foramen
    ring = ndi.binary_dilation(lab == Label.LESION) & (lab != Label.LESION)
    allowed = {int(Label.SACRUM), int(Label.FORAMEN)} if site == "large_foramen" else {1}
    assert set(np.unique(lab[ring]).tolist()) <= allowed
    pts = world_of(ph, lab == Label.LESION)
    assert np.all(ph.truth.lesion.contains(pts))


@pytest.mark.parametrize("site", ["left_ala_s1", "large_foramen"])
def test_lesion_volume_on_the_oblique_anisotropic_grid(site):
    ph = phantom(lesion=site, grid="oblique")
    lab = ph.labels.array
    ml = np.count_nonzero(lab == Label.LESION) * ph.labels.voxel_volume_mm3 / 1000.0
    assert ml == pytest.approx(ph.truth.lesion.volume_ml, rel=0.05)


def test_eroded_volume_by_independent_quadrature():
    lesion = build_truth(lesion="large_foramen").lesion
    truth = build_truth(lesion="large_foramen")
    rng = np.random.default_rng(0)
    unit = rng.uniform(-1.0, 1.0, size=(400000, 3))
    unit = unit[np.sum(unit**2, axis=1) < 1.0]
    pts = lesion.center_lps + (unit * lesion.radii_mm) @ lesion.axes
    keep = np.ones(len(pts), bool)
    for f in truth.foramina:
        keep &= exact_distance_to_foramen(pts, f) >= 0.0
    estimate = lesion.ellipsoid_volume_ml * keep.mean()
    assert estimate == pytest.approx(lesion.volume_ml, rel=0.01)


def test_clearances_are_exact_minima():
    truth = build_truth(lesion="left_ala_s1")
    lesion = truth.lesion
    rng = np.random.default_rng(1)
    u = rng.normal(size=(200000, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    surface = lesion.center_lps + (u * lesion.radii_mm) @ lesion.axes
    f = truth.foramen("left S1")
    sampled = exact_distance_to_foramen(surface, f).min()
    assert lesion.foramen_clearance_mm["left S1"] <= sampled + 1e-9
    assert sampled - lesion.foramen_clearance_mm["left S1"] < 0.05
    sampled = exact_distance_to_canal(surface, truth).min()
    assert lesion.canal_clearance_mm <= sampled + 1e-9
    assert sampled - lesion.canal_clearance_mm < 0.05


def test_scale_scales_every_length():
    a = build_truth(lesion="s1_body")
    b = build_truth(lesion="s1_body", scale=0.9)
    assert b.sacral_height_mm == pytest.approx(0.9 * a.sacral_height_mm)
    assert b.lesion.volume_ml == pytest.approx(0.729 * a.lesion.volume_ml)
    assert b.foramen("left S2").radius_mm == pytest.approx(0.9 * 6.0)
    assert b.lesion.denis_zone == a.lesion.denis_zone
    offset_a = a.foramen("left S3").center_lps - a.sacral_frame.origin
    offset_b = b.foramen("left S3").center_lps - b.sacral_frame.origin
    assert offset_b == pytest.approx(0.9 * offset_a)
    small = make_phantom(lesion="s1_body", scale=0.9, spacing_mm=(2.0, 2.0, 2.0))
    assert small.truth.lesion.volume_ml == pytest.approx(b.lesion.volume_ml)


def test_si_joint_truth_describes_the_label():
    ph = phantom()
    lab = ph.labels.array
    origin = ph.truth.sacral_frame.origin
    pts = world_of(ph, lab == Label.SI_JOINT)
    for joint in ph.truth.si_joints:
        sign = 1.0 if joint.side == "left" else -1.0
        mine = pts[(pts[:, 0] - origin[0]) * sign > 0]
        assert np.linalg.norm(mine.mean(axis=0) - joint.center_lps) < 8.0
        assert joint.normal[0] * sign > 0.7  # faces laterally
        assert joint.gap_mm == anat.SI_JOINT_GAP_MM
        assert joint.cranial_lps[2] > joint.caudal_lps[2]
