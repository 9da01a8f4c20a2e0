"""The needle scoring kernel against exact geometry, on an anisotropic, oblique grid.

The phantom is made of analytic shapes in a tilted "sacral" frame: a box of bone with an anterior
face, the pelvic side in front of it, a foramen (a finite cylinder of radius 6 mm through the
bone), a second foramen, a canal (a capsule, radius 6 mm), an SI-joint gap and an ilium beside the
bone, and a spherical lesion. The grid is 0.7 x 0.8 x 1.5 mm and rotated against LPS. Exact answers
come from the shapes' closed-form distances, sampled every 5 micrometres along each needle, and from
clipping segments against boxes.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from geometry.distance import DistanceField, grid_points_mm, interpolation_bound_mm
from geometry.fieldstack import QUANTUM_MM, FieldStack, build_field_stack
from geometry.kernels import N_SCALARS, SC_EVALUATED, score_needles, score_one, warm_up

SPACING = np.array([0.7, 0.8, 1.5])
HALF = 52.0  # grid half-size (mm); every structure lies within this radius of the centre


def rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


GRID_DIRECTION = rotation((1.0, 2.0, 3.0), 25.0)
# the sacral frame: columns are its x (left), y (posterior) and z (head) axes in LPS
FRAME = rotation((0.3, -0.2, 1.0), 12.0) @ rotation((1.0, 0.0, 0.0), -15.0)
RADIUS = 1.2  # 13G needle


# -- exact shapes (points (..., 3) in LPS; local = frame coordinates) --------------------------
def local(p: np.ndarray) -> np.ndarray:
    return p @ FRAME


def box_sdf(q: np.ndarray, centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    d = np.abs(q - centre) - half
    outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
    return outside + np.minimum(np.max(d, axis=-1), 0.0)


def cylinder_sdf(
    q: np.ndarray, centre: np.ndarray, radius: float, half_length: float
) -> np.ndarray:
    """A finite cylinder along the frame's y axis (a foramen through the bone)."""
    r = np.hypot(q[..., 0] - centre[0], q[..., 2] - centre[2]) - radius
    h = np.abs(q[..., 1] - centre[1]) - half_length
    outside = np.hypot(np.maximum(r, 0.0), np.maximum(h, 0.0))
    return outside + np.minimum(np.maximum(r, h), 0.0)


def capsule_sdf(q: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((q - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(q - (a + t[..., None] * ab), axis=-1) - radius


BONE = (np.zeros(3), np.array([30.0, 12.0, 30.0]))
PELVIC = (np.array([0.0, -18.0, 0.0]), np.array([30.0, 6.0, 30.0]))  # in front (-y) of the bone
SI_GAP = (np.array([32.0, 0.0, 0.0]), np.array([2.0, 12.0, 25.0]))
ILIUM = (np.array([37.0, 0.0, 0.0]), np.array([3.0, 12.0, 25.0]))
FORAMEN_LEFT = (np.array([15.0, 0.0, 8.0]), 6.0, 14.0)
FORAMEN_RIGHT = (np.array([-16.0, 0.0, -10.0]), 5.0, 14.0)
CANAL = (np.array([0.0, 7.0, -24.0]), np.array([0.0, 7.0, 24.0]), 6.0)
LESION = (np.array([-12.0, -2.0, 12.0]), 8.0)


SHAPES = {
    "sacrum": lambda q: box_sdf(q, *BONE),
    "pelvic_side": lambda q: box_sdf(q, *PELVIC),
    "si_joint": lambda q: box_sdf(q, *SI_GAP),
    "ilium": lambda q: box_sdf(q, *ILIUM),
    "left S1": lambda q: cylinder_sdf(q, *FORAMEN_LEFT),
    "right S1": lambda q: cylinder_sdf(q, *FORAMEN_RIGHT),
    "canal": lambda q: capsule_sdf(q, *CANAL),
    "lesion": lambda q: np.linalg.norm(q - LESION[0], axis=-1) - LESION[1],
}


def grid() -> tuple[tuple[int, int, int], np.ndarray]:
    n = np.ceil(2 * HALF / SPACING).astype(int) + 1
    shape = (int(n[2]), int(n[1]), int(n[0]))
    origin = -GRID_DIRECTION @ (SPACING * (n - 1) / 2)
    return shape, origin


@pytest.fixture(scope="module")
def phantom() -> dict:
    return build_phantom()


def build_phantom() -> dict:
    """Field stacks of the phantom: analytic fields (two layouts) and fields from masks."""
    shape, origin = grid()
    q = local(grid_points_mm(shape, origin, SPACING, GRID_DIRECTION))
    fields = {
        name: DistanceField(fn(q).astype(np.float32), origin, SPACING, GRID_DIRECTION)
        for name, fn in SHAPES.items()
    }
    masks = {name: fn(q) <= 0 for name, fn in SHAPES.items()}

    def stack(source: dict, *, union: bool = False) -> FieldStack:
        return build_field_stack(
            sacrum=source["sacrum"],
            foramina={"left S1": source["left S1"], "right S1": source["right S1"]},
            canal=source["canal"],
            pelvic_side=source["pelvic_side"],
            si_joint=source["si_joint"],
            ilium=source["ilium"],
            lesion=source["lesion"],
            foramina_union=union,
        )

    mask_fields = {
        name: DistanceField.from_mask(
            m, origin=origin, spacing=SPACING, direction=GRID_DIRECTION, crop_margin_mm=25.0
        )
        for name, m in masks.items()
    }
    return {
        "origin": origin,
        "shape": shape,
        "analytic": stack(fields),
        "analytic_union": stack(fields, union=True),
        "from_masks": stack(mask_fields),
    }


def random_needles(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tips mostly in the bone, entries 20-80 mm away, everything within the grid."""
    rng = np.random.default_rng(seed)
    out_e, out_t = [], []
    while sum(len(e) for e in out_e) < n:
        tips_local = rng.uniform(-1, 1, (4 * n, 3)) * np.array([34.0, 18.0, 34.0])
        d = rng.normal(size=(4 * n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        length = rng.uniform(20.0, 80.0, 4 * n)
        entries_local = tips_local + d * length[:, None]
        ok = (np.linalg.norm(entries_local, axis=1) < HALF - 4) & (
            np.linalg.norm(tips_local, axis=1) < HALF - 4
        )
        out_e.append(entries_local[ok] @ FRAME.T)
        out_t.append(tips_local[ok] @ FRAME.T)
    return np.concatenate(out_e)[:n], np.concatenate(out_t)[:n]


def exact_min(entries: np.ndarray, tips: np.ndarray, shape: str, *, step: float = 0.005):
    """Exact minimum of a shape's signed distance along each segment (to within step / 2)."""
    fn = SHAPES[shape]
    out = np.empty(len(entries))
    for k, (e, t) in enumerate(zip(entries, tips, strict=True)):
        length = np.linalg.norm(t - e)
        s = np.linspace(0.0, 1.0, int(length / step) + 2)
        out[k] = fn(local(e + s[:, None] * (t - e))).min()
    return out


def clip_box(entries: np.ndarray, tips: np.ndarray, box: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (mm from the entry) where each segment enters and leaves a box (NaN: misses)."""
    centre, half = box
    p = local(entries) - centre
    d = local(tips) - local(entries)
    length = np.linalg.norm(d, axis=1)
    u = d / length[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - p) / u
        t2 = (half - p) / u
    t_in = np.max(np.minimum(t1, t2), axis=1)
    t_out = np.min(np.maximum(t1, t2), axis=1)
    hit = t_out > t_in
    return np.where(hit, t_in, np.nan), np.where(hit, t_out, np.nan)


# -- the kernel against exact geometry -------------------------------------------------------------
@pytest.mark.parametrize("structure", ["left S1", "right S1", "canal"])
def test_clearance_is_conservative_and_close(phantom: dict, structure: str) -> None:
    entries, tips = random_needles(300, seed=1)
    scores = score_needles(
        entries, tips, phantom["analytic"], radius_mm=RADIUS, clearance_cap_mm=math.inf
    )
    if structure == "canal":
        got = scores.canal_clearance_mm
    else:
        got = scores.foramen_clearance_mm[:, scores.foramen_names.index(structure)]
    exact = exact_min(entries, tips, structure) - RADIUS
    over = got - exact
    # never larger than the truth (the bound is rigorous; 1e-3 covers float32 rounding)
    assert np.max(over) <= 1e-3
    # within 0.5 mm of it wherever the needle's axis stays >= 1.2 mm from the structure
    clear = exact + RADIUS >= 1.2
    assert clear.sum() > 100
    assert np.max(-over[clear]) <= 0.5
    # and much closer at the distances margins are set at (axis >= 3 mm)
    assert np.max(-over[exact + RADIUS >= 3.0]) <= 0.25


def test_nearest_foramen_is_named(phantom: dict) -> None:
    entries, tips = random_needles(300, seed=2)
    stack = phantom["analytic"]
    scores = score_needles(entries, tips, stack, radius_mm=RADIUS, clearance_cap_mm=math.inf)
    left = exact_min(entries, tips, "left S1")
    right = exact_min(entries, tips, "right S1")
    clear_cut = np.abs(left - right) > 1.0
    expected = np.where(left < right, 0, 1)
    assert np.array_equal(scores.nearest_foramen[clear_cut], expected[clear_cut])
    # the union layout reports the same nearest foramen and clearance
    union = score_needles(
        entries, tips, phantom["analytic_union"], radius_mm=RADIUS, clearance_cap_mm=math.inf
    )
    assert np.array_equal(union.nearest_foramen[clear_cut], expected[clear_cut])
    # interpolating the union's minimum gives at most the minimum of the interpolations, equal
    # away from the medial surface between the foramina
    u, sep = union.nearest_foramen_clearance_mm, scores.nearest_foramen_clearance_mm
    assert np.all(u <= sep + 1e-5)
    apart = np.abs(left - right) > 5.0
    np.testing.assert_allclose(u[apart], sep[apart], atol=1e-5)


def test_in_bone_length_cortices_and_anterior_exit(phantom: dict) -> None:
    entries, tips = random_needles(400, seed=3)
    scores = score_needles(entries, tips, phantom["analytic"], radius_mm=RADIUS)
    length = np.linalg.norm(tips - entries, axis=1)
    t_in, t_out = clip_box(entries, tips, BONE)
    chord = np.where(np.isnan(t_in), 0.0, np.clip(t_out, 0, length) - np.clip(t_in, 0, length))
    chord = np.maximum(chord, 0.0)
    crossings = ((t_in > 0) & (t_in < length)).astype(int) + ((t_out > 0) & (t_out < length))
    # leave out needles within 0.1 mm of a face at either end, or with chords under a step
    margin = 0.1
    bone_end = np.abs(SHAPES["sacrum"](local(np.stack([entries, tips]))))
    clean = (bone_end.min(axis=0) > margin) & (np.isnan(t_in) | (t_out - t_in > 1.0))
    assert clean.sum() > 300
    err = np.abs(scores.in_bone_length_mm - chord)[clean]
    assert np.max(err) <= 1.0
    assert np.mean(err) <= 0.1
    assert np.array_equal(scores.cortices_crossed[clean], crossings[clean])
    # anterior exit: the axis reaches the pelvic side
    p_in, p_out = clip_box(entries, tips, PELVIC)
    reaches = ~np.isnan(p_in) & (p_out > 0) & (p_in < length)
    depth = np.where(
        reaches, np.minimum(np.clip(p_out, 0, length) - np.clip(p_in, 0, length), 100), 0
    )
    sure = ~reaches | (depth > 0.5)
    assert np.array_equal(scores.exits_anterior[sure], reaches[sure])


def test_bone_ahead_of_the_tip(phantom: dict) -> None:
    entries, tips = random_needles(400, seed=4)
    scores = score_needles(entries, tips, phantom["analytic"], radius_mm=RADIUS)
    depth = -SHAPES["sacrum"](local(tips))
    inside = depth > 0.1
    u = (tips - entries) / np.linalg.norm(tips - entries, axis=1)[:, None]
    _, t_out = clip_box(tips, tips + 200.0 * u, BONE)
    exact = np.where(inside, t_out, 0.0)
    # leave out rays leaving within 2 mm of an edge of the box, or grazing the face (< 12 deg)
    gap = BONE[1] - np.abs(local(tips + t_out[:, None] * u) - BONE[0])
    face = np.argmin(gap, axis=1)
    near_edge = np.sort(gap, axis=1)[:, 1] < 2.0
    grazing = np.abs(local(u)[np.arange(len(u)), face]) < 0.2
    clean = inside & ~near_edge & ~grazing
    assert clean.sum() > 150
    np.testing.assert_array_less(np.abs(scores.bone_ahead_mm - exact)[clean], 0.5)
    assert np.all(scores.bone_ahead_mm[depth < -0.1] == 0.0)
    np.testing.assert_allclose(scores.tip_bone_depth_mm[inside], depth[inside], atol=1.0)
    # where the ray leaves through the anterior face the exit is flagged anterior
    exit_local = local(tips + t_out[:, None] * u)
    anterior_face = np.abs(exit_local[:, 1] + BONE[1][1]) < 1e-6
    far_from_edges = np.all(np.abs(exit_local[:, [0, 2]]) < 27.0, axis=1)
    sure = inside & far_from_edges
    assert np.array_equal(scores.bone_ahead_exits_anterior[sure], anterior_face[sure])
    to_cortex = scores.tip_to_anterior_cortex_mm
    np.testing.assert_array_equal(
        to_cortex[sure & anterior_face], scores.bone_ahead_mm[sure & anterior_face]
    )
    assert np.all(np.isnan(to_cortex[sure & ~anterior_face]))


def test_si_joint_lesion_and_lengths(phantom: dict) -> None:
    entries, tips = random_needles(400, seed=5)
    centroid = LESION[0] @ FRAME.T
    scores = score_needles(
        entries, tips, phantom["analytic"], radius_mm=RADIUS, lesion_centroid=centroid
    )
    length = np.linalg.norm(tips - entries, axis=1)
    np.testing.assert_allclose(scores.length_mm, length, rtol=1e-6)
    assert np.all(scores.outside_grid_length_mm == 0.0)
    # SI joint: the axis enters the gap, or passes from the ilium into the bone
    si = exact_min(entries, tips, "si_joint", step=0.05)
    ilium = exact_min(entries, tips, "ilium", step=0.05)
    bone = exact_min(entries, tips, "sacrum", step=0.05)
    crossing = (si <= 0) | ((ilium <= 0) & (bone <= 0))
    sure = (np.abs(si) > 0.3) & (np.abs(ilium) > 0.3) & (np.abs(bone) > 0.3)
    assert np.array_equal(scores.crosses_si_joint[sure], crossing[sure])
    # the lesion
    lesion_tip = SHAPES["lesion"](local(tips))
    sure = np.abs(lesion_tip) > 0.2
    assert np.array_equal(scores.tip_in_lesion[sure], (lesion_tip < 0)[sure])
    np.testing.assert_allclose(
        scores.tip_to_lesion_centroid_mm, np.linalg.norm(tips - centroid, axis=1), atol=1e-9
    )


def test_skipping_changes_nothing_but_the_work(phantom: dict) -> None:
    entries, tips = random_needles(500, seed=6)
    stack = phantom["analytic"]
    for cap in (math.inf, 15.0):
        fast = score_needles(entries, tips, stack, radius_mm=RADIUS, clearance_cap_mm=cap)
        slow = score_needles(
            entries, tips, stack, radius_mm=RADIUS, clearance_cap_mm=cap, skip=False
        )
        keep = np.ones(fast.raw.shape[1], dtype=bool)
        keep[fast.raw.shape[1] - N_SCALARS + SC_EVALUATED] = False
        np.testing.assert_array_equal(fast.raw[:, keep], slow.raw[:, keep])
        assert fast.samples_evaluated.sum() < slow.samples_evaluated.sum()


def test_bit_identical_for_one_and_two_threads(phantom: dict) -> None:
    entries, tips = random_needles(2000, seed=7)
    stack = phantom["analytic"]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = score_needles(entries, tips, stack, radius_mm=RADIUS, parallel=True)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = score_needles(entries, tips, stack, radius_mm=RADIUS, parallel=True)
    finally:
        numba.set_num_threads(before)
    serial = score_needles(entries, tips, stack, radius_mm=RADIUS, parallel=False)
    assert one.raw.tobytes() == two.raw.tobytes()
    assert serial.raw.tobytes() == two.raw.tobytes()


def test_score_one_matches_the_batch(phantom: dict) -> None:
    entries, tips = random_needles(5, seed=8)
    stack = phantom["analytic"]
    batch = score_needles(entries, tips, stack, radius_mm=RADIUS)
    for k in range(5):
        one = score_one(entries[k], tips[k], stack, radius_mm=RADIUS)
        assert len(one) == 1
        assert one.raw.tobytes() == batch.raw[k : k + 1].tobytes()
        row = one.row(0)
        assert set(row["foramen_clearance_mm"]) == {"left S1", "right S1"}
        assert row["radius_mm"] == RADIUS


def test_clearance_cap_reports_a_lower_bound(phantom: dict) -> None:
    entries, tips = random_needles(300, seed=9)
    stack = phantom["analytic"]
    exact = score_needles(entries, tips, stack, radius_mm=RADIUS, clearance_cap_mm=math.inf)
    capped = score_needles(entries, tips, stack, radius_mm=RADIUS, clearance_cap_mm=8.0)
    assert np.all(capped.canal_clearance_mm <= exact.canal_clearance_mm + 1e-9)
    near = exact.canal_clearance_mm + RADIUS < 7.0
    np.testing.assert_array_equal(capped.canal_clearance_mm[near], exact.canal_clearance_mm[near])
    far = exact.canal_clearance_mm + RADIUS > 9.0
    assert np.all(np.isnan(capped.canal_at_mm[far]))


def test_needles_outside_the_grid_and_degenerate_needles(phantom: dict) -> None:
    stack = phantom["analytic"]
    far = np.array([[500.0, 0.0, 0.0]])
    s = score_one(far[0], far[0] + [50.0, 0, 0], stack, radius_mm=RADIUS)
    assert s.outside_grid_length_mm[0] == pytest.approx(50.0)
    assert not s.tip_in_bone[0]
    assert s.bone_ahead_mm[0] == 0.0
    point = score_one(np.zeros(3), np.zeros(3), stack, radius_mm=RADIUS)
    assert point.length_mm[0] == 0.0
    assert point.in_bone_length_mm[0] == 0.0
    assert math.isnan(point.bone_ahead_mm[0])


@pytest.mark.parametrize(
    ("kwargs", "entries", "tips"),
    [
        ({"radius_mm": -1.0}, np.zeros((1, 3)), np.ones((1, 3))),
        ({"radius_mm": 1.0, "step_mm": 0.0}, np.zeros((1, 3)), np.ones((1, 3))),
        ({"radius_mm": 1.0}, np.zeros((2, 3)), np.ones((1, 3))),
        ({"radius_mm": 1.0}, np.zeros((1, 2)), np.ones((1, 2))),
        ({"radius_mm": 1.0}, np.full((1, 3), np.nan), np.ones((1, 3))),
        ({"radius_mm": 1.0, "clearance_cap_mm": 0.0}, np.zeros((1, 3)), np.ones((1, 3))),
    ],
)
def test_bad_input_is_refused(phantom: dict, kwargs: dict, entries, tips) -> None:
    with pytest.raises(ValueError):
        score_needles(entries, tips, phantom["analytic"], **kwargs)


def test_field_stack_layout_and_quantisation(phantom: dict) -> None:
    stack = phantom["analytic"]
    assert stack.values.dtype == np.int16
    assert stack.values.shape[3] == 8  # 8 channels stored, 8 used (2 foramina + 6)
    assert stack.n_channels == 8
    assert stack.nbytes == stack.values.nbytes
    union = phantom["analytic_union"]
    assert union.values.shape[3] == 8 and union.n_channels == 7
    assert union.foramen_nearest is not None
    # stored values are lower bounds within one quantum
    shape, origin = grid()
    q = local(grid_points_mm(shape, origin, SPACING, GRID_DIRECTION))
    exact = SHAPES["canal"](q).astype(np.float32)
    stored = stack.channel_mm(stack.canal)
    assert np.all(stored <= exact)
    assert np.all(exact - stored < QUANTUM_MM + 1e-5)
    with pytest.raises(ValueError):
        build_field_stack(
            sacrum=DistanceField(exact, origin, SPACING, GRID_DIRECTION),
            canal=DistanceField(exact[:-1], origin, SPACING, GRID_DIRECTION),
        )


# -- the whole pipeline: masks -> distance fields -> kernel ---------------------------------------
def test_mask_pipeline_against_exact_geometry(phantom: dict) -> None:
    """From voxel masks the error also holds the masks' own uncertainty (half a voxel step)."""
    entries, tips = random_needles(300, seed=10)
    stack = phantom["from_masks"]
    scores = score_needles(entries, tips, stack, radius_mm=RADIUS)
    half_step = 0.5 * SPACING.max()
    half_diagonal = 0.5 * float(np.linalg.norm(SPACING))
    for structure in ("left S1", "canal"):
        exact = exact_min(entries, tips, structure, step=0.02) - RADIUS
        if structure == "canal":
            got = scores.canal_clearance_mm
        else:
            got = scores.foramen_clearance_mm[:, 0]
        over = got - exact
        # conservative up to the masks' own uncertainty
        assert np.max(over[exact < 15.0]) <= half_step + 0.02
        # the kernel's 0.5 mm holds on the half-way surface, which lies within half a cell
        # diagonal of the true one
        relevant = (exact + RADIUS >= 1.2 + half_diagonal) & (exact < 15.0)
        assert relevant.sum() > 100
        assert np.max(-over[relevant]) <= 0.5 + half_diagonal
    length = np.linalg.norm(tips - entries, axis=1)
    t_in, t_out = clip_box(entries, tips, BONE)
    chord = np.where(np.isnan(t_in), 0.0, np.clip(t_out, 0, length) - np.clip(t_in, 0, length))
    err = np.abs(scores.in_bone_length_mm - np.maximum(chord, 0))
    # each crossing moves by the surface error over the sine of the angle to the face
    assert np.percentile(err, 95) <= 1.0
    assert np.mean(err) <= 0.3


def test_warm_up_runs() -> None:
    warm_up()


def test_bound_constant_reported(phantom: dict) -> None:
    scores = score_one(np.zeros(3), np.ones(3), phantom["analytic"], radius_mm=RADIUS)
    assert scores.bound_mm == pytest.approx(interpolation_bound_mm(SPACING, step_mm=0.5))
