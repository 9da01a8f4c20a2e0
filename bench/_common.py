"""A synthetic sacrum-like anatomy and needle sets for the benchmarks (not product code).

Grid: 200 x 200 x 150 voxels at 0.7 mm (140 x 140 x 105 mm), axis-aligned LPS. Structures (masks of
analytic shapes): a sacral plate curved in the sagittal plane (the bone, with the lesion counted in
it), eight foramina (cylinders through it, anterior-posterior), a canal (a tube in the posterior
plate down to S2), the SI-joint gaps and the ilia beside the plate, the pelvic side (the space in
front of the plate) and a lesion in the left ala (LPS: +x is the patient's left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geometry.distance import DistanceField, grid_points_mm
from geometry.fieldstack import FieldStack, build_field_stack

SHAPE = (150, 200, 200)  # [k, j, i]
SPACING = np.array([0.7, 0.7, 0.7])
DIRECTION = np.eye(3)
ORIGIN = -0.5 * SPACING * (np.array(SHAPE[::-1]) - 1)
HALF_THICKNESS = 16.0
LESION_CENTRE = np.array([30.0, 0.0, 15.0])
LESION_RADIUS = 11.0


def plate_centre_y(z: np.ndarray) -> np.ndarray:
    """AP position (mm) of the sacral plate's mid-surface at height ``z`` (curved backwards)."""
    return 0.006 * z * z


@dataclass
class Anatomy:
    masks: dict[str, np.ndarray]
    fields: dict[str, DistanceField]
    foramina: dict[str, DistanceField]
    seconds_edt: float


def build_masks() -> dict[str, np.ndarray]:
    p = grid_points_mm(SHAPE, ORIGIN, SPACING, DIRECTION).astype(np.float32)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    yc = plate_centre_y(z)
    plate = (x / 52.0) ** 4 + ((y - yc) / HALF_THICKNESS) ** 2 + (z / 50.0) ** 2 <= 1.0
    foramina = {}
    for level in range(4):
        for side, sign in (("left", 1.0), ("right", -1.0)):
            cx = sign * (24.0 - 2.5 * level)
            cz = 30.0 - 17.0 * level
            r = 5.5 - 0.5 * level
            foramina[f"{side} S{level + 1}"] = ((x - cx) ** 2 + (z - cz) ** 2 <= r * r) & (
                np.abs(y - yc) <= HALF_THICKNESS + 2.0
            )
    canal = (x**2 + (y - yc - 7.0) ** 2 <= 6.5**2) & (z >= -15.0)
    lesion = np.sum((p - LESION_CENTRE.astype(np.float32)) ** 2, axis=-1) <= LESION_RADIUS**2
    holes = canal | np.logical_or.reduce(list(foramina.values()))
    sacrum = (plate & ~holes) | lesion
    band = (z > -5.0) & (z < 48.0) & (np.abs(y - yc) < 22.0)
    si = band & (np.abs(x) >= 51.0) & (np.abs(x) <= 53.5) & ~plate
    ilium = band & (np.abs(x) > 53.5) & (np.abs(x) < 68.0)
    pelvic = (y < yc - HALF_THICKNESS - 1.0) & (np.abs(x) < 50.0) & ~plate
    masks = {
        "sacrum": sacrum,
        "canal": canal,
        "si_joint": si,
        "ilium": ilium,
        "pelvic_side": pelvic,
        "lesion": lesion,
    }
    masks.update({f"foramen {k}": v for k, v in foramina.items()})
    return masks


def build_anatomy(*, crop_margin_mm: float = 30.0) -> Anatomy:
    import time

    masks = build_masks()
    t0 = time.perf_counter()
    fields = {
        name: DistanceField.from_mask(
            m, origin=ORIGIN, spacing=SPACING, direction=DIRECTION, crop_margin_mm=crop_margin_mm
        )
        for name, m in masks.items()
    }
    seconds = time.perf_counter() - t0
    foramina = {k[len("foramen ") :]: v for k, v in fields.items() if k.startswith("foramen ")}
    return Anatomy(masks=masks, fields=fields, foramina=foramina, seconds_edt=seconds)


def stack(anatomy: Anatomy, *, foramina_union: bool = True, minimal: bool = False) -> FieldStack:
    f = anatomy.fields
    if minimal:
        return build_field_stack(sacrum=f["sacrum"], foramina=anatomy.foramina, foramina_union=True)
    return build_field_stack(
        sacrum=f["sacrum"],
        foramina=anatomy.foramina,
        canal=f["canal"],
        pelvic_side=f["pelvic_side"],
        si_joint=f["si_joint"],
        ilium=f["ilium"],
        lesion=f["lesion"],
        foramina_union=foramina_union,
    )


def needles(
    anatomy: Anatomy, n: int, *, seed: int = 0, length_mm: tuple[float, float] = (60.0, 120.0)
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` needles with tips in the bone and entries 60-120 mm away, mostly from behind."""
    rng = np.random.default_rng(seed)
    bone = np.argwhere(anatomy.masks["sacrum"])
    pick = bone[rng.integers(0, len(bone), n)]
    ijk = pick[:, ::-1] + rng.uniform(-0.5, 0.5, (n, 3))
    tips = ijk * SPACING + ORIGIN
    # directions from tip to entry: posterior cone (80 %) or lateral, transiliac-like (20 %)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    axis = np.zeros((n, 3))
    lateral = rng.random(n) < 0.2
    axis[~lateral, 1] = 1.0
    axis[lateral, 0] = np.sign(tips[lateral, 0] + 1e-9)
    d = axis + 0.6 * d
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lengths = rng.uniform(*length_mm, n)
    entries = tips + d * lengths[:, None]
    return entries, tips


def lesion_needles(
    anatomy: Anatomy, n: int, *, seed: int = 0, length_mm: tuple[float, float] = (60.0, 120.0)
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidate trajectories as a planner makes them: tips in the lesion, entries behind."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    tips = LESION_CENTRE + u * (LESION_RADIUS * rng.random((n, 1)) ** (1 / 3))
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    axis = np.zeros((n, 3))
    lateral = rng.random(n) < 0.2
    axis[~lateral, 1] = 1.0
    axis[lateral, 0] = 1.0
    d = axis + 0.6 * d
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lengths = rng.uniform(*length_mm, n)
    return tips + d * lengths[:, None], tips
