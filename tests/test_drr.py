"""Simulated fluoroscopy: projection geometry against hand-derived answers, line integrals
against analytic chords, and grid independence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from geometry.carm_geometry import (
    angles_from_detector_direction,
    detector_axes,
    detector_direction_from_angles,
    progression_direction,
)
from imaging.drr import (
    AttenuationModel,
    CArmGeometry,
    DrrError,
    bulls_eye_geometry,
    prepare_volume,
    progression_geometry,
    render_drr,
)
from imaging.labels import Label
from imaging.phantom import make_phantom
from imaging.volume import Volume
from planning.anatomy import ForamenLandmark, SacralAnatomy
from planning.carm import CArmView, dicom_angles_deg
from planning.fluoro import anterior_s1_cortex_points, overlays, plan_views, render_views

SID, SOD, PITCH = 1100.0, 750.0, 0.6
MODEL = AttenuationModel(mu_water_per_mm=0.02, bone_slope=1.0)


def _spheres_ct(
    spheres: list[tuple[np.ndarray, float, float]],
    *,
    center: np.ndarray,
    half_mm: float,
    spacing: tuple[float, float, float] = (0.5, 0.5, 0.5),
    direction: np.ndarray | None = None,
) -> Volume:
    """Air with anti-aliased spheres ``(centre_lps, radius_mm, hu)`` on a cube grid."""
    direction = np.eye(3) if direction is None else direction
    sp = np.asarray(spacing)
    n = np.ceil(2 * half_mm / sp).astype(int) + 1
    origin = center - direction @ (sp * (n - 1) / 2)
    kk, jj, ii = np.meshgrid(*(np.arange(m) for m in n[::-1]), indexing="ij")
    ijk = np.stack([ii, jj, kk], axis=-1).astype(np.float64)
    world = ijk @ (direction * sp).T + origin
    hu = np.full(kk.shape, -1000.0, dtype=np.float32)
    for c, r, value in spheres:
        sd = np.linalg.norm(world - c, axis=-1) - r
        frac = np.clip(0.5 - sd / float(np.min(sp)), 0.0, 1.0)
        hu += (value + 1000.0) * frac.astype(np.float32)
    return Volume(hu, origin, sp, direction, modality="CT")


def _expected_pixel(
    point: np.ndarray, iso: np.ndarray, primary_deg: float, secondary_deg: float, shape: tuple
) -> np.ndarray:
    """Where ``point`` lands, from DESIGN 5.8 and similar triangles (no project code)."""
    a, b = math.radians(primary_deg), math.radians(secondary_deg)
    d = np.array([math.cos(b) * math.sin(a), -math.cos(b) * math.cos(a), math.sin(b)])
    up = np.array([0.0, 0.0, 1.0]) - d[2] * d
    up /= np.linalg.norm(up)
    right = np.cross(up, d)
    source = iso - SOD * d
    det_centre = source + SID * d
    on_detector = source + (point - source) * SID / float((point - source) @ d)
    offset = on_detector - det_centre
    rows, cols = shape
    return np.array([(cols - 1) / 2 + offset @ right / PITCH, (rows - 1) / 2 - offset @ up / PITCH])


def _blob_centroids(image: np.ndarray, threshold: float) -> np.ndarray:
    lab, n = ndimage.label(image > threshold)
    com = ndimage.center_of_mass(image, lab, range(1, n + 1))
    return np.array([(c, r) for r, c in com])  # (col, row)


# -- geometry -----------------------------------------------------------------------------------
def test_angles_follow_the_planning_convention() -> None:
    for primary, secondary in [(180.0, 0.0), (90.0, 0.0), (-35.0, 20.0), (150.0, -25.0)]:
        d = detector_direction_from_angles(primary, secondary)
        view = CArmView(primary, secondary, "")
        np.testing.assert_allclose(d, view.detector_direction_lps, atol=1e-12)
        assert angles_from_detector_direction(d) == pytest.approx(dicom_angles_deg(d))
    # straight posterior (detector above a prone patient's back) is LAO 180
    np.testing.assert_allclose(detector_direction_from_angles(180, 0), [0, 1, 0], atol=1e-12)
    right, up = detector_axes(np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(up, [0, 0, 1])
    np.testing.assert_allclose(right, [-1, 0, 0])  # patient's right on the image's right


def test_marker_lands_on_the_hand_computed_pixel_ap() -> None:
    iso = np.array([5.0, -10.0, 100.0])
    g = CArmGeometry.from_angles(
        180.0, 0.0, iso, sid_mm=SID, sod_mm=SOD, detector_shape=(256, 256), pixel_mm=PITCH
    )
    # detector posterior (+y), source 750 mm anterior; magnification at depth t is 1100 / t
    marker = iso + np.array([10.0, 0.0, 20.0])  # in the isocentre plane: depth 750
    c0 = r0 = 127.5
    np.testing.assert_allclose(
        g.project_points(marker), [c0 - 10 * 1100 / 750 / 0.6, r0 - 20 * 1100 / 750 / 0.6]
    )
    deeper = iso + np.array([-8.0, 50.0, -6.0])  # 50 mm nearer the detector: depth 800
    np.testing.assert_allclose(
        g.project_points(deeper), [c0 + 8 * 1100 / 800 / 0.6, r0 + 6 * 1100 / 800 / 0.6]
    )
    # and in the rendered image
    ct = _spheres_ct(
        [(marker, 1.5, 3000.0), (deeper, 1.5, 3000.0)], center=iso + [0, 25, 0], half_mm=35
    )
    drr = render_drr(prepare_volume(ct, attenuation=MODEL), g)
    found = _blob_centroids(drr.line_integral, 0.02)
    assert len(found) == 2
    for p in (marker, deeper):
        want = _expected_pixel(p, iso, 180.0, 0.0, (256, 256))
        assert np.min(np.linalg.norm(found - want, axis=1)) < 0.2


@pytest.mark.parametrize("angles", [(35.0, 20.0), (-120.0, -30.0), (90.0, 0.0)])
def test_marker_lands_on_the_predicted_pixel_oblique(angles: tuple[float, float]) -> None:
    iso = np.array([-20.0, 15.0, 140.0])
    marker = iso + np.array([12.0, -9.0, 15.0])
    g = CArmGeometry.from_angles(
        *angles, iso, sid_mm=SID, sod_mm=SOD, detector_shape=(200, 240), pixel_mm=PITCH
    )
    want = _expected_pixel(marker, iso, *angles, (200, 240))
    np.testing.assert_allclose(g.project_points(marker), want, atol=1e-9)
    np.testing.assert_allclose(g.project_points(iso), [119.5, 99.5], atol=1e-9)
    ct = _spheres_ct([(marker, 1.5, 3000.0)], center=iso, half_mm=40, spacing=(0.5, 0.6, 0.7))
    drr = render_drr(prepare_volume(ct, attenuation=MODEL), g)
    found = _blob_centroids(drr.line_integral, 0.02)
    assert len(found) == 1
    assert np.linalg.norm(found[0] - want) < 0.25


def test_sphere_line_integrals_match_analytic_chords() -> None:
    centre = np.array([3.0, -4.0, 50.0])
    radius, hu = 15.0, 1000.0
    mu = 0.02 * (1.0 + hu / 1000.0)  # the model with bone slope 1
    ct = _spheres_ct([(centre, radius, hu)], center=centre, half_mm=20)
    g = CArmGeometry.from_angles(
        160.0, 10.0, centre, sid_mm=SID, sod_mm=SOD, detector_shape=(64, 128), pixel_mm=PITCH
    )
    drr = render_drr(prepare_volume(ct, attenuation=MODEL), g, step_mm=0.25)
    assert drr.line_integral[31:33, 63:65].mean() == pytest.approx(2 * radius * mu, rel=0.005)
    row = 31
    for col in range(0, 128, 7):
        pix = g.pixel_to_world(np.array(col), np.array(row))
        u = (pix - g.source_lps) / np.linalg.norm(pix - g.source_lps)
        rho = np.linalg.norm(np.cross(centre - g.source_lps, u))
        chord = 2 * math.sqrt(max(radius**2 - rho**2, 0.0))
        tol = 0.01 * 2 * radius * mu if rho < 0.9 * radius else 0.05 * 2 * radius * mu
        assert drr.line_integral[row, col] == pytest.approx(chord * mu, abs=tol)
    np.testing.assert_allclose(drr.intensity, np.exp(-drr.line_integral), rtol=1e-6)


@pytest.mark.parametrize("sod", [600.0, 800.0])
def test_magnification_is_sid_over_sod(sod: float) -> None:
    iso = np.zeros(3)
    g = CArmGeometry.from_angles(
        180.0, 0.0, iso, sid_mm=1200.0, sod_mm=sod, detector_shape=(128, 256), pixel_mm=0.5
    )
    assert g.magnification == pytest.approx(1200.0 / sod)
    a, b = iso + [-15.0, 0.0, 0.0], iso + [15.0, 0.0, 0.0]
    sep_mm = np.linalg.norm(g.project_points(a) - g.project_points(b)) * 0.5
    assert sep_mm == pytest.approx(30.0 * 1200.0 / sod)
    ct = _spheres_ct([(a, 1.5, 3000.0), (b, 1.5, 3000.0)], center=iso, half_mm=30)
    found = _blob_centroids(render_drr(prepare_volume(ct), g).line_integral, 0.02)
    assert len(found) == 2
    assert abs(found[0, 0] - found[1, 0]) * 0.5 == pytest.approx(30.0 * 1200.0 / sod, abs=0.15)


def test_ap_and_lateral_orientation() -> None:
    iso = np.array([0.0, 0.0, 100.0])
    left, posterior, head = iso + [20.0, 0, 0], iso + [0, 20.0, 0], iso + [0, 0, 20.0]
    ct = _spheres_ct([(p, 2.0, 3000.0) for p in (left, posterior, head)], center=iso, half_mm=30)
    vol = prepare_volume(ct)
    kw = {"detector_shape": (128, 128), "pixel_mm": 0.6}
    ap = render_drr(vol, CArmGeometry.from_angles(180.0, 0.0, iso, **kw))
    lat = render_drr(vol, CArmGeometry.from_angles(90.0, 0.0, iso, **kw))  # detector on the left
    c0 = 63.5

    def blob_at(drr, point):
        uv = drr.geometry.project_points(point)
        found = _blob_centroids(drr.line_integral, 0.05)
        return found[np.argmin(np.linalg.norm(found - uv, axis=1))]

    # AP seen from behind: the patient's left on the image's left, head up, posterior on axis
    assert blob_at(ap, left)[0] < c0 - 20 and abs(blob_at(ap, left)[1] - c0) < 1
    assert blob_at(ap, head)[1] < c0 - 20
    assert np.linalg.norm(blob_at(ap, posterior) - c0) < 1
    # lateral from the left: posterior on the image's right, left marker on axis
    assert blob_at(lat, posterior)[0] > c0 + 20
    assert np.linalg.norm(blob_at(lat, left) - c0) < 1
    assert blob_at(lat, head)[1] < c0 - 20
    assert len(_blob_centroids(ap.line_integral, 0.05)) == 3


def test_bulls_eye_and_progression_views() -> None:
    entry, tip = np.array([60.0, 110.0, 160.0]), np.array([40.0, 40.0, 145.0])
    be = bulls_eye_geometry(entry, tip, detector_shape=(128, 128))
    np.testing.assert_allclose(be.project_points(entry), be.project_points(tip), atol=1e-9)
    np.testing.assert_allclose(be.project_points(tip), be.principal_point, atol=1e-9)
    np.testing.assert_allclose(
        be.detector_direction_lps, -(tip - entry) / np.linalg.norm(tip - entry)
    )
    pr = progression_geometry(entry, tip, detector_shape=(256, 256), pixel_mm=0.6)
    assert abs(pr.detector_direction_lps @ (tip - entry)) < 1e-9
    length_px = np.linalg.norm(pr.project_points(entry) - pr.project_points(tip))
    assert length_px * 0.6 == pytest.approx(np.linalg.norm(tip - entry) * pr.magnification)
    # a left-right needle gets a posterior progression view, not a degenerate lateral one
    d = progression_direction(np.array([1.0, 0.05, 0.0]))
    assert d[1] > 0.99


# -- grids --------------------------------------------------------------------------------------
def test_oblique_anisotropic_volume_matches_its_axis_aligned_resampling() -> None:
    ph = make_phantom(
        modality="ct", spacing_mm=(2.0, 1.6, 2.6), rotation_deg=(8.0, -6.0, 12.0), noise_hu=0.0
    )
    oblique = ph.image
    assert oblique.orientation_label() == "oblique"
    corners = oblique.bounds_world()
    ref = sitk.Image(
        *(int(v) for v in np.ceil((corners.max(0) - corners.min(0)) / 1.5) + 1), sitk.sitkFloat32
    )
    ref.SetOrigin(tuple(corners.min(0)))
    ref.SetSpacing((1.5, 1.5, 1.5))
    img = sitk.Cast(oblique.to_sitk(), sitk.sitkFloat32)
    aligned = Volume.from_sitk(
        sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1000.0), modality="CT"
    )
    iso = ph.truth.lesion.center_lps
    for angles in [(180.0, 0.0), (130.0, -25.0)]:
        g = CArmGeometry.from_angles(*angles, iso, detector_shape=(96, 96), pixel_mm=2.4)
        a = render_drr(prepare_volume(oblique), g).line_integral
        b = render_drr(prepare_volume(aligned), g).line_integral
        body = (a > 0.5) & (b > 0.5)
        assert body.mean() > 0.5
        rel = np.abs(a - b)[body] / b[body]
        assert np.median(rel) < 0.006
        assert np.percentile(rel, 95) < 0.03
        # the oblique grid's own DRR is not mirrored or shifted: the lesion plane lines up
        assert np.corrcoef(a[body], b[body])[0, 1] > 0.99


def test_sample_ct_bone_is_dark_and_downsampling_stays_close() -> None:
    ph = make_phantom(modality="ct", spacing_mm=(2.0, 2.0, 2.0))
    iso = ph.truth.lesion.center_lps
    g = CArmGeometry.from_angles(180.0, 0.0, iso, detector_shape=(128, 128), pixel_mm=2.0)
    full = render_drr(prepare_volume(ph.image), g)
    half = render_drr(prepare_volume(ph.image, downsample=2), g)
    inside = full.line_integral > 0.5
    rel = np.abs(full.line_integral - half.line_integral)[inside] / full.line_integral[inside]
    assert np.median(rel) < 0.03
    # through the sacrum (the S1 body) vs through soft tissue beside the pelvis
    bone_px = np.round(g.project_points(ph.truth.s1_endplate["center_lps"] - [0, 0, 15])).astype(
        int
    )
    soft = ph.truth.s1_endplate["center_lps"] + [135.0, 0.0, -80.0]
    soft_px = np.round(g.project_points(soft)).astype(int)
    img = full.display_uint8()
    assert full.intensity[bone_px[1], bone_px[0]] < full.intensity[soft_px[1], soft_px[0]]
    assert img[bone_px[1], bone_px[0]] < img[soft_px[1], soft_px[0]]  # bone dark
    inv = full.display_uint8(invert=True)
    assert inv[bone_px[1], bone_px[0]] > inv[soft_px[1], soft_px[0]]
    assert (ph.labels.array == Label.SACRUM).any()


def test_bad_inputs_raise_drr_errors() -> None:
    mr = make_phantom(modality="mr", spacing_mm=(4.0, 4.0, 4.0)).image
    with pytest.raises(DrrError, match="CT"):
        prepare_volume(mr)
    ct = _spheres_ct(
        [(np.zeros(3), 50.0, 0.0)], center=np.zeros(3), half_mm=100, spacing=(4.0, 4.0, 4.0)
    )
    with pytest.raises(DrrError, match="inside"):
        render_drr(prepare_volume(ct), CArmGeometry.from_angles(0, 0, np.zeros(3), sod_mm=50.0))
    with pytest.raises(DrrError):
        CArmGeometry(np.zeros(3), [0, 1, 0], sid_mm=500.0, sod_mm=700.0)
    with pytest.raises(DrrError):
        bulls_eye_geometry(np.ones(3), np.ones(3))
    with pytest.raises(DrrError):
        prepare_volume(ct, downsample=0)


# -- plan views (planning.fluoro) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_anatomy():
    ph = make_phantom(modality="ct", spacing_mm=(2.0, 2.0, 2.0))
    t = ph.truth
    marks = [ForamenLandmark(f.name, f.center_lps, f.axis, f.radius_mm, "user") for f in t.foramina]
    sacrum = np.isin(ph.labels.array, [Label.SACRUM, Label.LESION])
    anatomy = SacralAnatomy(
        foramina=marks,
        endplate_center=t.s1_endplate["center_lps"],
        endplate_normal=t.s1_endplate["normal"],
        masks={"sacrum": sacrum},
        grid=ph.labels,
    )
    return ph, anatomy


def test_plan_views_and_overlays_line_up_with_the_drr(phantom_anatomy) -> None:
    ph, anatomy = phantom_anatomy
    lesion = ph.truth.lesion.center_lps
    entry = lesion + np.array([15.0, 70.0, 10.0])
    views = plan_views(
        anatomy,
        isocenter_lps=lesion,
        needles=[(entry, lesion)],
        detector_shape=(160, 160),
        pixel_mm=1.5,
    )
    assert list(views) == [
        "ap",
        "true_ap",
        "lateral",
        "inlet",
        "outlet",
        "bulls_eye_1",
        "progression_1",
    ]
    assert views["ap"].carm.primary_deg == pytest.approx(180.0)
    np.testing.assert_allclose(views["ap"].geometry.detector_direction_lps, [0, 1, 0], atol=1e-12)
    assert views["inlet"].carm.secondary_deg < -10.0  # detector toward the feet
    assert views["outlet"].carm.secondary_deg > 10.0  # toward the head
    # the inlet runs along the anterior S1 cortex: its points lie on one line of sight
    cortex = anterior_s1_cortex_points(anatomy)
    uv = views["inlet"].geometry.project_points(cortex)
    assert np.ptp(uv[:, 1]) < 0.25 * np.ptp(views["lateral"].geometry.project_points(cortex)[:, 1])
    be, pr = views["bulls_eye_1"].geometry, views["progression_1"].geometry
    np.testing.assert_allclose(be.project_points(entry), be.project_points(lesion), atol=1e-9)
    assert abs(pr.detector_direction_lps @ (lesion - entry)) < 1e-9
    assert pr.detector_direction_lps[1] >= 0.0  # detector above the prone patient

    drrs = render_views(prepare_volume(ph.image), views)
    outlet = drrs["outlet"]
    assert outlet.line_integral.shape == (160, 160)
    marks = overlays(
        outlet.geometry,
        needles=[(entry, lesion)],
        anatomy=anatomy,
        lesion_mask=ph.labels.with_array(ph.labels.array == Label.LESION),
    )
    assert marks["needle_1"].shape == (2, 2)
    hull = marks["lesion"]
    centre_px = outlet.geometry.project_points(lesion)
    assert hull.min(0)[0] < centre_px[0] < hull.max(0)[0]
    assert hull.min(0)[1] < centre_px[1] < hull.max(0)[1]
    # the S1 foramina are holes in the bone: darker in line integral inside their rings
    for side in ("left", "right"):
        ring = marks[f"foramen {side} S1"]
        c = ring.mean(axis=0)
        r = np.mean(np.linalg.norm(ring - c, axis=1))
        rr, cc = np.mgrid[0:160, 0:160]
        dist = np.hypot(cc - c[0], rr - c[1])
        inside = outlet.line_integral[dist < 0.6 * r].mean()
        around = outlet.line_integral[(dist > 1.3 * r) & (dist < 2.0 * r)].mean()
        assert inside < around
