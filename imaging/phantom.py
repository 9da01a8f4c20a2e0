"""The built-in synthetic adult sacrum phantom: the demo sample and the ground truth of tests.

:func:`make_phantom` draws a supine adult pelvis at the S1-S5 level -- skin, fat, muscles,
pelvic organs, L4/L5, the sacrum with its foramina and canal, both ilia with the SI joints
-- as a CT (HU, int16) or T1-like MR (float32) volume, a label map on the same grid
(:class:`imaging.labels.Label` codes), and a :class:`PhantomTruth` that does not depend on
the grid: the lesion ellipsoid, the foramina (exact straight circular cylinders), the canal
(exact tapered capsules), the S1 endplate, the sacral frame, the Denis-zone lines and the SI
joints, all in LPS millimetres.

Every voxel is evaluated at its **world** position (:meth:`Volume.index_to_world`), so the
anatomy and the truth are the same on any grid: anisotropic spacing, oblique directions.
Labels take the shape containing the voxel centre; the image is anti-aliased (each boundary
is blended over about one voxel from its signed distance).

Geometry in brief (adult, ``scale = 1``): sacral slope 38 deg (S1 endplate normal tilted
anteriorly from +z); sacrum 104-106 mm wide at the alae, 102 mm from promontory to apex
(centreline straight for 30 mm, then an 85 mm-radius kyphotic arc, ~55 deg); S1 body 50 mm
wide x 31 mm deep x 27 mm tall; ala depth ~43 mm; foramina S1-S4 with radii 6.5, 6.0, 5.0
and 4.0 mm, 23.5 -> 16 mm from the midline, tilted 8 deg (dorsal end medial); canal an oval
~21 x 14 mm at S1 tapering to S4 (L4/L5: ~27 x 17 mm); SI joint space 3 mm; L5-S1 disc
11 mm. See :mod:`imaging.phantom_anatomy` for every dimension.

Lesion sites (:data:`LESION_SITES`), each a soft-tissue-density ellipsoid in the sacrum:
``left_ala_s1``/``right_ala_s1`` (zone 1, 6.1 mL, 26 mm), ``left_ala_s2``/``right_ala_s2``
(zone 1, 3.4 mL, 22 mm), ``s1_body`` (zone 3, 5.8 mL, 25 mm, 4 mm from the canal) and
``large_foramen`` (32 mm, centred in zone 2, eroding the left S1 and S2 foramina: 7.5 mL
once the foramina are taken out); ``none`` has no lesion.

Label notes: L4/L5 and the discs are drawn in the image but are background (0) in the label
map. The foramen label is the part of each cylinder inside the sacral envelope; the canal
label is the whole canal (also within L4/L5); the foramina and the canal are separate shapes
(the channels linking them medially are not modelled). The SI-joint label is the space
carved out of the ilium next to the sacrum.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging import phantom_anatomy as anat
from imaging.labels import Label
from imaging.phantom_shapes import (
    cylinder_signed_distance,
    ellipsoid_point,
    ellipsoid_surface_points,
    round_cone_signed_distance,
)
from imaging.volume import Volume

LESION_SITES = (
    "left_ala_s1",
    "right_ala_s1",
    "left_ala_s2",
    "right_ala_s2",
    "s1_body",
    "large_foramen",
    "none",
)

#: World (LPS) position of the S1 endplate centre; deliberately not the origin.
ENDPLATE_CENTRE_LPS = np.array([1.5, 20.0, 150.0])
#: Field of view in the pelvic frame (model mm): both ilia, sacrum, L5, skin all round.
FOV_MIN_MM = np.array([-150.0, -128.0, -125.0])
FOV_MAX_MM = np.array([150.0, 92.0, 55.0])
DEFAULT_NOISE_HU = 12.0
#: MR noise per HU of ``noise_hu`` (12 HU -> 0.02 in MR units).
_MR_NOISE_PER_HU = 0.02 / 12.0

# Lesion sites: centre in the sacrum's curved coordinates (x, u, t) and semi-axes along
# (x, local dorsal normal, local caudal tangent), model mm. Positive x = patient left.
_LESIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "left_ala_s1": ((40.0, 13.0, 16.0), (9.0, 13.0, 12.5)),
    "left_ala_s2": ((35.5, 10.5, 45.0), (7.0, 11.0, 10.5)),
    "s1_body": ((0.0, -1.0, 14.0), (12.5, 10.5, 10.5)),
    "large_foramen": ((25.0, 7.0, 38.5), (16.0, 11.5, 11.0)),
}
for _site in ("ala_s1", "ala_s2"):
    (_x, _u, _t), _radii = _LESIONS[f"left_{_site}"]
    _LESIONS[f"right_{_site}"] = ((-_x, _u, _t), _radii)

#: Codes of :meth:`Phantom.foramen_labels`: left S1 = 1, right S1 = 2, left S2 = 3, ...
FORAMEN_CODES = {
    f"{side} {level}": 2 * n + (1 if side == "left" else 2)
    for n, (level, *_rest) in enumerate(anat.FORAMEN_LEVELS)
    for side in ("left", "right")
}


def _vec(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _listify(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_listify(v) for v in value]
    if isinstance(value, np.floating | np.integer | np.bool_):
        return value.item()
    return value


# == truth records =============================================================================


@dataclass(frozen=True)
class ForamenTruth:
    """One sacral foramen: an exact straight flat-capped circular cylinder (LPS mm).

    ``start_lps`` is the pelvic (anterior) cap centre, ``end_lps`` the dorsal one; ``axis``
    points from start to end. The caps sit where the whole channel cross-section has left
    the bone, plus 0.5 mm, so the cylinder may protrude a few mm from the bone at its rim;
    the label map marks only its part inside the sacral envelope.
    """

    name: str
    level: str
    side: str
    code: int
    start_lps: np.ndarray
    end_lps: np.ndarray
    radius_mm: float

    @property
    def center_lps(self) -> np.ndarray:
        """(3,) midpoint of the channel, mm LPS."""
        return 0.5 * (self.start_lps + self.end_lps)

    @property
    def axis(self) -> np.ndarray:
        """(3,) unit vector from the pelvic to the dorsal opening."""
        d = self.end_lps - self.start_lps
        return d / np.linalg.norm(d)

    @property
    def half_length_mm(self) -> float:
        """Half the cap-to-cap length."""
        return 0.5 * float(np.linalg.norm(self.end_lps - self.start_lps))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description (derived centre/axis/half-length included)."""
        return _listify(
            {
                "name": self.name,
                "level": self.level,
                "side": self.side,
                "code": self.code,
                "start_lps": self.start_lps,
                "end_lps": self.end_lps,
                "radius_mm": self.radius_mm,
                "center_lps": self.center_lps,
                "axis": self.axis,
                "half_length_mm": self.half_length_mm,
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForamenTruth:
        """Inverse of :meth:`to_json`."""
        return cls(
            name=data["name"],
            level=data["level"],
            side=data["side"],
            code=int(data["code"]),
            start_lps=_vec(data["start_lps"]),
            end_lps=_vec(data["end_lps"]),
            radius_mm=float(data["radius_mm"]),
        )


@dataclass(frozen=True)
class CanalSegment:
    """A tapered capsule (round cone): hull of two spheres, LPS mm."""

    a_lps: np.ndarray
    b_lps: np.ndarray
    radius_a_mm: float
    radius_b_mm: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return _listify(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CanalSegment:
        """Inverse of :meth:`to_json`."""
        return cls(
            _vec(data["a_lps"]),
            _vec(data["b_lps"]),
            float(data["radius_a_mm"]),
            float(data["radius_b_mm"]),
        )


@dataclass(frozen=True)
class CanalTruth:
    """The spinal canal from L4 to S4 as a union of tapered capsules (LPS mm).

    Two paramedian chains (left and right of the midline) whose overlapping circles give an
    oval cross-section, ~21 mm wide and ~14 mm deep at S1, tapering caudally. The distance
    to the union (minimum over segments) is exact outside the canal; inside it is a bound.
    ``thecal_sac_end_lps`` marks where CSF gives way to epidural fat (upper S2).
    """

    segments: tuple[CanalSegment, ...]
    thecal_sac_end_lps: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "segments": [s.to_json() for s in self.segments],
            "thecal_sac_end_lps": _listify(self.thecal_sac_end_lps),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CanalTruth:
        """Inverse of :meth:`to_json`."""
        return cls(
            tuple(CanalSegment.from_json(s) for s in data["segments"]),
            _vec(data["thecal_sac_end_lps"]),
        )


@dataclass(frozen=True)
class LesionTruth:
    """The lytic metastasis: an exact ellipsoid (minus any foramen it erodes), LPS mm.

    ``axes`` rows are the unit directions of ``radii_mm``. ``volume_ml`` is analytic:
    4/3 pi abc, minus (``large_foramen`` only) the parts of the ellipsoid inside foramen
    cylinders, which stay foramen (computed by exact chord integration over each cylinder's
    cross-section, error < 0.01 mL). ``max_diameter_mm`` is 2 x the largest semi-axis (its
    end points lie outside every foramen). ``denis_zone`` is that of ``center_lps`` (the
    ellipsoid centre; ``centroid_lps`` is the eroded lesion's centroid, in the same zone).
    Clearances are exact signed distances between the ellipsoid surface and each structure
    (negative = overlap depth). ``volume_ml_by_zone`` comes from quadrature (< 1 %).
    """

    site: str
    center_lps: np.ndarray
    radii_mm: np.ndarray
    axes: np.ndarray
    volume_ml: float
    ellipsoid_volume_ml: float
    max_diameter_mm: float
    denis_zone: int
    diameter_over_30mm: bool
    touches_foramen: bool
    touches_canal: bool
    centroid_lps: np.ndarray
    foramen_clearance_mm: dict[str, float]
    canal_clearance_mm: float
    volume_ml_by_zone: dict[int, float]
    most_medial_zone: int

    @property
    def flags(self) -> dict[str, bool]:
        """The eligibility flags by name."""
        return {
            "diameter_over_30mm": self.diameter_over_30mm,
            "touches_foramen": self.touches_foramen,
            "touches_canal": self.touches_canal,
        }

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether LPS points lie inside the ellipsoid (foramen erosion not applied)."""
        p = np.atleast_2d(_vec(points))
        local = (p - self.center_lps) @ self.axes.T / self.radii_mm
        return np.sum(local**2, axis=1) < 1.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        data = _listify(self.__dict__)
        data["volume_ml_by_zone"] = {str(k): v for k, v in self.volume_ml_by_zone.items()}
        data["flags"] = self.flags
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LesionTruth:
        """Inverse of :meth:`to_json`."""
        return cls(
            site=data["site"],
            center_lps=_vec(data["center_lps"]),
            radii_mm=_vec(data["radii_mm"]),
            axes=_vec(data["axes"]),
            volume_ml=float(data["volume_ml"]),
            ellipsoid_volume_ml=float(data["ellipsoid_volume_ml"]),
            max_diameter_mm=float(data["max_diameter_mm"]),
            denis_zone=int(data["denis_zone"]),
            diameter_over_30mm=bool(data["diameter_over_30mm"]),
            touches_foramen=bool(data["touches_foramen"]),
            touches_canal=bool(data["touches_canal"]),
            centroid_lps=_vec(data["centroid_lps"]),
            foramen_clearance_mm={k: float(v) for k, v in data["foramen_clearance_mm"].items()},
            canal_clearance_mm=float(data["canal_clearance_mm"]),
            volume_ml_by_zone={int(k): float(v) for k, v in data["volume_ml_by_zone"].items()},
            most_medial_zone=int(data["most_medial_zone"]),
        )


@dataclass(frozen=True)
class SacralFrame:
    """Origin at the S1 endplate centre; e_z endplate normal (head), e_x patient left."""

    origin: np.ndarray
    e_x: np.ndarray
    e_y: np.ndarray
    e_z: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rows e_x, e_y, e_z: ``frame = rotation @ (lps - origin)``."""
        return np.stack([self.e_x, self.e_y, self.e_z])

    def to_frame(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points ``(N, 3)`` to sacral-frame coordinates (mm)."""
        return (_vec(points_lps) - self.origin) @ self.rotation.T

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return _listify(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SacralFrame:
        """Inverse of :meth:`to_json`."""
        return cls(*(_vec(data[k]) for k in ("origin", "e_x", "e_y", "e_z")))


@dataclass(frozen=True)
class DenisLevel:
    """Foraminal border lines of one level in the sacral frame (mm).

    ``z_mm`` is the sacral-frame z of the level's foramen centres; ``medial_mm`` and
    ``lateral_mm`` are the distances from the midsagittal plane of the foramen's medial
    and lateral walls along e_x through its centre.
    """

    level: str
    z_mm: float
    medial_mm: float
    lateral_mm: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return _listify(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DenisLevel:
        """Inverse of :meth:`to_json`."""
        return cls(
            data["level"], float(data["z_mm"]), float(data["medial_mm"]), float(data["lateral_mm"])
        )


@dataclass(frozen=True)
class SIJointTruth:
    """One sacroiliac joint space (numerical description of the analytic shapes).

    The joint is where the ilium faces the sacrum across ``gap_mm``. Sampled (0.5 mm, in
    model space, so the same on every grid) on the sacrum's lateral surface: ``normal`` is
    the unit normal of the best-fit plane of the contact surface (pointing laterally);
    ``center_lps`` the centroid of the contact, moved half a gap out (mid-joint);
    ``cranial_lps``/``caudal_lps`` its highest and lowest mid-joint points along e_z.
    """

    side: str
    gap_mm: float
    center_lps: np.ndarray
    normal: np.ndarray
    cranial_lps: np.ndarray
    caudal_lps: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return _listify(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SIJointTruth:
        """Inverse of :meth:`to_json`."""
        return cls(
            data["side"],
            float(data["gap_mm"]),
            _vec(data["center_lps"]),
            _vec(data["normal"]),
            _vec(data["cranial_lps"]),
            _vec(data["caudal_lps"]),
        )


@dataclass(frozen=True)
class PhantomTruth:
    """Analytic truth of a phantom, independent of its grid (all points LPS mm).

    ``s1_endplate`` holds ``center_lps``, ``normal`` (unit, toward the head) and
    ``sacral_slope_deg`` (angle of the normal from +z). ``promontory_lps`` is the anterior
    midline rim of the S1 endplate, ``apex_lps`` the caudal end of the body centreline;
    ``sacral_height_mm`` their distance and ``sacral_width_mm`` the width across the alae.
    ``grid`` and ``options`` record how the volume was made.
    """

    lesion: LesionTruth | None
    foramina: tuple[ForamenTruth, ...]
    canal: CanalTruth
    s1_endplate: dict[str, Any]
    sacral_frame: SacralFrame
    denis_levels: tuple[DenisLevel, ...]
    si_joints: tuple[SIJointTruth, ...]
    promontory_lps: np.ndarray
    apex_lps: np.ndarray
    sacral_height_mm: float
    sacral_width_mm: float
    scale: float
    grid: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def foramen(self, name: str) -> ForamenTruth:
        """The foramen called ``name`` (e.g. ``"left S1"``)."""
        for f in self.foramina:
            if f.name == name:
                return f
        raise KeyError(f"no foramen named {name!r}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists and numbers only)."""
        return {
            "lesion": None if self.lesion is None else self.lesion.to_json(),
            "foramina": [f.to_json() for f in self.foramina],
            "canal": self.canal.to_json(),
            "s1_endplate": _listify(self.s1_endplate),
            "sacral_frame": self.sacral_frame.to_json(),
            "denis_levels": [d.to_json() for d in self.denis_levels],
            "si_joints": [s.to_json() for s in self.si_joints],
            "promontory_lps": _listify(self.promontory_lps),
            "apex_lps": _listify(self.apex_lps),
            "sacral_height_mm": self.sacral_height_mm,
            "sacral_width_mm": self.sacral_width_mm,
            "scale": self.scale,
            "grid": _listify(self.grid),
            "options": _listify(self.options),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhantomTruth:
        """Inverse of :meth:`to_json`."""
        endplate = data["s1_endplate"]
        return cls(
            lesion=None if data["lesion"] is None else LesionTruth.from_json(data["lesion"]),
            foramina=tuple(ForamenTruth.from_json(f) for f in data["foramina"]),
            canal=CanalTruth.from_json(data["canal"]),
            s1_endplate={
                "center_lps": _vec(endplate["center_lps"]),
                "normal": _vec(endplate["normal"]),
                "sacral_slope_deg": float(endplate["sacral_slope_deg"]),
            },
            sacral_frame=SacralFrame.from_json(data["sacral_frame"]),
            denis_levels=tuple(DenisLevel.from_json(d) for d in data["denis_levels"]),
            si_joints=tuple(SIJointTruth.from_json(s) for s in data["si_joints"]),
            promontory_lps=_vec(data["promontory_lps"]),
            apex_lps=_vec(data["apex_lps"]),
            sacral_height_mm=float(data["sacral_height_mm"]),
            sacral_width_mm=float(data["sacral_width_mm"]),
            scale=float(data["scale"]),
            grid=dict(data.get("grid", {})),
            options=dict(data.get("options", {})),
        )


@dataclass(frozen=True)
class Phantom:
    """A synthetic study: image, label map and analytic truth."""

    image: Volume
    labels: Volume
    truth: PhantomTruth

    def foramen_labels(self) -> Volume:
        """One code per foramen on the label grid (uint8; 0 elsewhere).

        Codes: left S1 = 1, right S1 = 2, left S2 = 3, right S2 = 4, left S3 = 5,
        right S3 = 6, left S4 = 7, right S4 = 8 (:data:`FORAMEN_CODES`). Each
        :attr:`Label.FORAMEN` voxel gets the code of the cylinder holding its centre.
        """
        lab = self.labels.array
        out = np.zeros(lab.shape, dtype=np.uint8)
        kji = np.argwhere(lab == Label.FORAMEN)
        if kji.size:
            world = self.labels.index_to_world(kji[:, ::-1].astype(np.float64))
            dists = np.stack([exact_distance_to_foramen(world, f) for f in self.truth.foramina])
            codes = np.array([f.code for f in self.truth.foramina], dtype=np.uint8)
            out[tuple(kji.T)] = codes[np.argmin(dists, axis=0)]
        return self.labels.with_array(out, modality="LABEL")


# == exact distances and zones =================================================================


def exact_distance_to_foramen(points: np.ndarray, foramen: ForamenTruth) -> np.ndarray:
    """Exact signed distance from LPS points to a foramen cylinder.

    Parameters
    ----------
    points : (N, 3) or (3,) float ndarray, mm, LPS
    foramen : ForamenTruth

    Returns
    -------
    (N,) float ndarray or float, mm
        Positive outside the channel, negative inside.
    """
    return cylinder_signed_distance(points, foramen.start_lps, foramen.end_lps, foramen.radius_mm)


def exact_distance_to_canal(points: np.ndarray, truth: PhantomTruth) -> np.ndarray:
    """Signed distance from LPS points to the spinal canal (exact outside it).

    Parameters
    ----------
    points : (N, 3) or (3,) float ndarray, mm, LPS
    truth : PhantomTruth

    Returns
    -------
    (N,) float ndarray or float, mm
        Positive outside (exact Euclidean distance to the canal surface); negative inside
        (minus the depth in the deepest capsule, a lower bound of the true depth).
    """
    d = np.stack(
        [
            round_cone_signed_distance(points, s.a_lps, s.b_lps, s.radius_a_mm, s.radius_b_mm)
            for s in truth.canal.segments
        ]
    )
    return np.min(d, axis=0)


def denis_zone_of(point_lps: np.ndarray, truth: PhantomTruth) -> Any:
    """Denis zone (1, 2 or 3) of LPS point(s) from the foraminal lines of the truth.

    In the sacral frame, each level S1-S4 has a medial and a lateral line (the foramen's
    walls along e_x through its centre, :class:`DenisLevel`); between levels they are
    interpolated linearly in sacral z, above S1 and below S4 the end levels hold. Zone 3
    if ``|x|`` is inside the medial line, 2 up to the lateral line, else 1.

    Parameters
    ----------
    point_lps : (3,) or (N, 3) float ndarray, mm, LPS
    truth : PhantomTruth

    Returns
    -------
    int or (N,) int ndarray
    """
    s = np.atleast_2d(truth.sacral_frame.to_frame(point_lps))
    levels = sorted(truth.denis_levels, key=lambda d: d.z_mm)
    zs = np.array([d.z_mm for d in levels])
    medial = np.interp(s[:, 2], zs, [d.medial_mm for d in levels])
    lateral = np.interp(s[:, 2], zs, [d.lateral_mm for d in levels])
    ax = np.abs(s[:, 0])
    zone = np.where(ax < medial, 3, np.where(ax <= lateral, 2, 1))
    return int(zone[0]) if np.ndim(point_lps) == 1 else zone


# == building the truth ========================================================================


@functools.cache
def _foramina_model() -> tuple[tuple[str, str, str, np.ndarray, np.ndarray, float], ...]:
    """Foramen cylinders in the sacral frame (model mm) with caps clear of the bone.

    Returns ``(name, level, side, start, end, radius)`` per foramen, left before right.
    """
    out = []
    steps = np.arange(0.0, 60.0, 0.1)
    ring = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
    for name, side, point, axis, radius in anat.foramen_axis_guesses():
        helper = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
        e1 = helper / np.linalg.norm(helper)
        e2 = np.cross(axis, e1)
        disc = np.concatenate(
            [
                np.zeros((1, 3)),
                radius * (np.cos(ring)[:, None] * e1 + np.sin(ring)[:, None] * e2),
                0.5 * radius * (np.cos(ring)[:, None] * e1 + np.sin(ring)[:, None] * e2),
            ]
        )
        caps = []
        for direction in (-1.0, 1.0):
            pts = point + direction * steps[:, None, None] * axis + disc[None, :, :]
            env = anat.sacral_envelope_points(pts.reshape(-1, 3)).reshape(len(steps), -1)
            clear = np.all(env > 0.0, axis=1)
            first = int(np.argmax(clear))  # first step where the whole cross-section is out
            caps.append(point + direction * (steps[first] + anat.FORAMEN_CAP_OVERHANG_MM) * axis)
        level = name.split()[1]
        out.append((name, level, side, caps[0], caps[1], radius))
    return tuple(out)


def _lesion_axes_model(site: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (sacral frame), axes (rows, sacral frame) and radii of a lesion site."""
    (x, u, t), radii = _LESIONS[site]
    center = anat.curved_to_sacral(x, u, t)
    normal, tangent = anat.curve_frame(t)
    axes = np.stack([np.array([1.0, 0.0, 0.0]), normal, tangent])
    return center, axes, _vec(radii)


def _ellipsoid_line_chords(
    center: np.ndarray,
    axes: np.ndarray,
    radii: np.ndarray,
    origins: np.ndarray,
    direction: np.ndarray,
    s_range: tuple[float, float],
) -> np.ndarray:
    """Length of each line ``origins + s * direction``, s in ``s_range``, inside an ellipsoid."""
    m = axes / radii[:, None]  # maps offsets to unit-ball coordinates
    o = (origins - center) @ m.T
    d = m @ direction
    a = float(d @ d)
    b = 2.0 * (o @ d)
    c = np.sum(o * o, axis=1) - 1.0
    disc = b * b - 4.0 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    s0 = np.maximum((-b - root) / (2.0 * a), s_range[0])
    s1 = np.minimum((-b + root) / (2.0 * a), s_range[1])
    return np.where(disc > 0.0, np.maximum(s1 - s0, 0.0), 0.0)


def _ellipsoid_cylinder_overlap_mm3(
    center: np.ndarray, axes: np.ndarray, radii: np.ndarray, foramen: ForamenTruth
) -> float:
    """Volume of ellipsoid and cylinder intersection by chord integration over the disc."""
    n_r, n_psi = 160, 256
    nodes, weights = np.polynomial.legendre.leggauss(n_r)
    rad = 0.5 * foramen.radius_mm * (nodes + 1.0)
    w_r = 0.5 * foramen.radius_mm * weights * rad  # includes the polar Jacobian
    psi = np.linspace(0.0, 2.0 * np.pi, n_psi, endpoint=False)
    axis = foramen.axis
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    rr, pp = np.meshgrid(rad, psi, indexing="ij")
    offs = rr[..., None] * (np.cos(pp)[..., None] * e1 + np.sin(pp)[..., None] * e2)
    origins = foramen.start_lps + offs.reshape(-1, 3)
    length = 2.0 * foramen.half_length_mm
    chords = _ellipsoid_line_chords(center, axes, radii, origins, axis, (0.0, length))
    chords = chords.reshape(n_r, n_psi)
    return float(np.sum(chords.mean(axis=1) * 2.0 * np.pi * w_r))


def _min_surface_distance(
    center: np.ndarray, axes: np.ndarray, radii: np.ndarray, distance: Any
) -> float:
    """Minimum of ``distance(points)`` over an ellipsoid surface.

    A 1-degree grid of (polar angle, azimuth) finds the basin; six zooms of a 41 x 41
    grid around the best sample pin it down to well below a micrometre.
    """
    pts, theta, phi = ellipsoid_surface_points(center, axes, radii, n_theta=181, n_phi=360)
    d = distance(pts)
    best = int(np.argmin(d))
    t0, p0, value = float(theta[best]), float(phi[best]), float(d[best])
    half = math.radians(2.0)
    offsets = np.linspace(-1.0, 1.0, 41)
    for _ in range(6):
        tt, pp = np.meshgrid(t0 + half * offsets, p0 + half * offsets, indexing="ij")
        tt = np.clip(tt, 0.0, math.pi)
        cand = distance(ellipsoid_point(center, axes, radii, tt.ravel(), pp.ravel()))
        n = int(np.argmin(cand))
        if cand[n] <= value:
            t0, p0, value = float(tt.ravel()[n]), float(pp.ravel()[n]), float(cand[n])
        half *= 0.1
    return value


def _zone_volumes(
    lesion_center: np.ndarray,
    axes: np.ndarray,
    radii: np.ndarray,
    truth: PhantomTruth,
    volume_ml: float,
    eroded: set[str],
) -> tuple[dict[int, float], np.ndarray]:
    """Lesion volume per Denis zone (scaled to ``volume_ml``) and the lesion centroid."""
    n = 60
    g = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    xx, yy, zz = np.meshgrid(g, g, g, indexing="ij")
    unit = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    unit = unit[np.sum(unit**2, axis=1) < 1.0]
    pts = lesion_center + (unit * radii) @ axes
    for f in truth.foramina:
        if f.name in eroded:
            pts = pts[exact_distance_to_foramen(pts, f) >= 0.0]
    zones = denis_zone_of(pts, truth)
    counts = {z: int(np.sum(zones == z)) for z in (1, 2, 3)}
    total = max(sum(counts.values()), 1)
    return {z: volume_ml * c / total for z, c in counts.items()}, pts.mean(axis=0)


@functools.cache
def _si_joints_model() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]:
    """Per side (left, right): mid-joint centre, normal, cranial and caudal points (model mm).

    Sampled on the sacrum's lateral surface at 0.5 mm in curved coordinates.
    """
    out = []
    ts = np.arange(-15.0, 80.0, 0.5)
    us = np.arange(-25.0, 55.0, 0.5)
    for sign in (1.0, -1.0):
        surface, in_joint = anat.si_joint_surface(ts, us, sign)
        pts = anat.sacral_to_pelvic(surface[in_joint])  # on the sacrum, model mm
        _, _, vt = np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)
        normal = vt[2] * np.sign(vt[2][0] * sign)
        mid_gap = pts + 0.5 * anat.SI_JOINT_GAP_MM * normal
        sz = surface[in_joint][:, 2]
        out.append((mid_gap.mean(axis=0), normal, mid_gap[np.argmax(sz)], mid_gap[np.argmin(sz)]))
    return tuple(out)


def _si_joints(to_world: Any, scale: float) -> tuple[SIJointTruth, ...]:
    """Both SI joints in LPS (see :class:`SIJointTruth`)."""
    return tuple(
        SIJointTruth(
            side=side,
            gap_mm=anat.SI_JOINT_GAP_MM * scale,
            center_lps=to_world(center),
            normal=normal.copy(),
            cranial_lps=to_world(cranial),
            caudal_lps=to_world(caudal),
        )
        for side, (center, normal, cranial, caudal) in zip(
            ("left", "right"), _si_joints_model(), strict=True
        )
    )


def _rotation_matrix(rotation_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles about the LPS x, y and z axes (degrees)."""
    ax, ay, az = (math.radians(float(a)) for a in rotation_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def build_truth(
    *, lesion: str = "left_ala_s1", scale: float = 1.0, options: dict[str, Any] | None = None
) -> PhantomTruth:
    """The analytic truth of a phantom (no voxels): see :class:`PhantomTruth`.

    Parameters
    ----------
    lesion : str
        One of :data:`LESION_SITES`.
    scale : float
        Size factor applied to every anatomical length (1 = adult model).
    options : dict, optional
        Recorded as ``truth.options``.

    Raises
    ------
    ValueError
        If ``lesion`` is not a known site or ``scale`` is not positive.
    """
    if lesion not in LESION_SITES:
        raise ValueError(f"unknown lesion site {lesion!r}; choose one of {', '.join(LESION_SITES)}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"phantom scale must be a positive number, got {scale}")
    rot = anat.SACRAL_AXES  # rows: sacral axes in LPS

    def to_world(p_pelvic: np.ndarray) -> np.ndarray:
        return ENDPLATE_CENTRE_LPS + scale * _vec(p_pelvic)

    def s2w(p_sacral: np.ndarray) -> np.ndarray:
        return to_world(anat.sacral_to_pelvic(_vec(p_sacral)))

    frame = SacralFrame(origin=ENDPLATE_CENTRE_LPS.copy(), e_x=rot[0], e_y=rot[1], e_z=rot[2])
    foramina = tuple(
        ForamenTruth(
            name=name,
            level=level,
            side=side,
            code=FORAMEN_CODES[name],
            start_lps=s2w(a),
            end_lps=s2w(b),
            radius_mm=radius * scale,
        )
        for name, level, side, a, b, radius in _foramina_model()
    )
    canal_rows = anat.canal_round_cones()
    canal = CanalTruth(
        segments=tuple(
            CanalSegment(s2w(r[0:3]), s2w(r[3:6]), r[6] * scale, r[7] * scale) for r in canal_rows
        ),
        thecal_sac_end_lps=s2w(anat.curved_to_sacral(0.0, 0.0, anat.THECAL_SAC_END_T_MM)),
    )
    denis = []
    for level, *_ in anat.FORAMEN_LEVELS:
        f = next(f for f in foramina if f.level == level and f.side == "left")
        c = frame.to_frame(f.center_lps[None])[0]
        a_x = float(f.axis @ frame.e_x)
        half = f.radius_mm / math.sqrt(1.0 - a_x * a_x)
        denis.append(DenisLevel(level, float(c[2]), abs(c[0]) - half, abs(c[0]) + half))
    b0 = float(np.interp(0.0, anat._BODY_T, anat._BODY_HALF_DEPTH))
    promontory = s2w(anat.curved_to_sacral(0.0, -b0, 0.0))
    apex = s2w(anat.curved_to_sacral(0.0, 0.0, anat.APEX_T_MM))
    truth = PhantomTruth(
        lesion=None,
        foramina=foramina,
        canal=canal,
        s1_endplate={
            "center_lps": ENDPLATE_CENTRE_LPS.copy(),
            "normal": rot[2].copy(),
            "sacral_slope_deg": anat.SACRAL_SLOPE_DEG,
        },
        sacral_frame=frame,
        denis_levels=tuple(denis),
        si_joints=_si_joints(to_world, scale),
        promontory_lps=promontory,
        apex_lps=apex,
        sacral_height_mm=float(np.linalg.norm(apex - promontory)),
        sacral_width_mm=2.0 * float(np.max(anat._LAT_HALF_WIDTH)) * scale,
        scale=scale,
        grid={},
        options=dict(options or {}),
    )
    if lesion == "none":
        return truth
    return _with_lesion(truth, lesion, s2w, scale)


def _with_lesion(truth: PhantomTruth, site: str, s2w: Any, scale: float) -> PhantomTruth:
    c_model, axes_sacral, radii_model = _lesion_axes_model(site)
    center = s2w(c_model)
    axes = anat.sacral_to_pelvic(axes_sacral)  # directions: pelvic frame = LPS axes
    radii = radii_model * scale
    ellipsoid_mm3 = 4.0 / 3.0 * math.pi * float(np.prod(radii))
    clear_f: dict[str, float] = {}
    overlap = 0.0
    for f in truth.foramina:
        clear_f[f.name] = _min_surface_distance(
            center, axes, radii, lambda p, f=f: exact_distance_to_foramen(p, f)
        )
        if clear_f[f.name] < 0.0:
            overlap += _ellipsoid_cylinder_overlap_mm3(center, axes, radii, f)
    clear_c = _min_surface_distance(
        center, axes, radii, lambda p: exact_distance_to_canal(p, truth)
    )
    volume_ml = (ellipsoid_mm3 - overlap) / 1000.0
    eroded = {name for name, c in clear_f.items() if c < 0.0}
    by_zone, centroid = _zone_volumes(center, axes, radii, truth, volume_ml, eroded)
    zones_touched = [z for z, v in by_zone.items() if v > 0.0]
    lesion = LesionTruth(
        site=site,
        center_lps=center,
        radii_mm=radii,
        axes=axes,
        volume_ml=volume_ml,
        ellipsoid_volume_ml=ellipsoid_mm3 / 1000.0,
        max_diameter_mm=2.0 * float(np.max(radii)),
        denis_zone=denis_zone_of(center, truth),
        diameter_over_30mm=2.0 * float(np.max(radii)) > 30.0,
        touches_foramen=min(clear_f.values()) <= 0.0,
        touches_canal=clear_c <= 0.0,
        centroid_lps=centroid,
        foramen_clearance_mm=clear_f,
        canal_clearance_mm=clear_c,
        volume_ml_by_zone=by_zone,
        most_medial_zone=max(zones_touched),
    )
    return PhantomTruth(**{**truth.__dict__, "lesion": lesion})


# == the volume ================================================================================


def _draw(
    truth: PhantomTruth,
    origin: np.ndarray,
    spacing: np.ndarray,
    direction: np.ndarray,
    shape: tuple[int, int, int],
    modality: str,
    *,
    accelerate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free image and label map of ``truth``'s anatomy on a grid.

    Parameters
    ----------
    truth : PhantomTruth
        Gives the scale and the foramina, canal and lesion shapes.
    origin, spacing, direction
        The grid, as in :class:`Volume` (LPS mm).
    shape : (K, J, I) tuple of int
    modality : {"ct", "mr"}
    accelerate : bool
        Skip shapes that cannot reach a voxel (same result, much faster).

    Returns
    -------
    labels : (K, J, I) uint8 ndarray
    image : (K, J, I) float32 ndarray
    """
    scale = truth.scale
    rows = anat.SACRAL_AXES

    def w2s(p: np.ndarray) -> np.ndarray:
        return ((p - ENDPLATE_CENTRE_LPS) / scale) @ rows.T

    foramina = np.array(
        [[*w2s(f.start_lps), *w2s(f.end_lps), f.radius_mm / scale] for f in truth.foramina]
    )
    canal = np.array(
        [
            [*w2s(s.a_lps), *w2s(s.b_lps), s.radius_a_mm / scale, s.radius_b_mm / scale]
            for s in truth.canal.segments
        ]
    )
    lesion_row = np.zeros(16)
    if truth.lesion is not None:
        lt = truth.lesion
        lesion_row[0] = 1.0
        lesion_row[1:4] = w2s(lt.center_lps)
        lesion_row[4:7] = lt.radii_mm / scale
        lesion_row[7:16] = (lt.axes @ rows.T).reshape(-1)
    values = anat.CT_VALUES if modality == "ct" else anat.MR_VALUES
    texture = anat.CT_BONE_TEXTURE if modality == "ct" else anat.MR_BONE_TEXTURE
    model_origin = (_vec(origin) - ENDPLATE_CENTRE_LPS) / scale
    index_to_model = _vec(direction) * _vec(spacing)[None, :] / scale
    pv_width = float(np.mean(spacing)) / scale
    size = np.array(shape[::-1], dtype=float)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    corners = model_origin + (corners * (size - 1)) @ index_to_model.T
    cells_lo = np.floor(corners.min(axis=0) / anat.CELL_MM) * anat.CELL_MM - anat.CELL_MM
    dims = np.ceil((corners.max(axis=0) - cells_lo) / anat.CELL_MM).astype(int) + 1
    if accelerate:
        flags, count, index = anat.build_cells(
            cells_lo,
            (int(dims[0]), int(dims[1]), int(dims[2])),
            pv_width,
            foramina,
            canal,
            lesion_row,
        )
    else:  # one cell holding everything
        cells_lo = corners.min(axis=0) - 1.0
        n_soft = anat.N_SOFT
        flags = np.full((1, 1, 1), anat.ALL_SHAPES, dtype=np.int32)
        count = np.full((1, 1, 1), n_soft, dtype=np.int32)
        index = np.arange(n_soft, dtype=np.int16).reshape(1, 1, 1, n_soft)
    labels = np.empty(shape, dtype=np.uint8)
    image = np.empty(shape, dtype=np.float32)
    anat.render(
        model_origin,
        index_to_model,
        shape,
        pv_width,
        foramina,
        canal,
        lesion_row,
        values,
        texture,
        cells_lo,
        flags,
        count,
        index,
        labels,
        image,
    )
    return labels, image


def make_phantom(
    *,
    lesion: str = "left_ala_s1",
    modality: str = "ct",
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    noise_hu: float = DEFAULT_NOISE_HU,
    seed: int = 0,
) -> Phantom:
    """Draw the synthetic sacrum phantom.

    Parameters
    ----------
    lesion : str
        Lesion site, one of :data:`LESION_SITES` (``"none"`` for no lesion).
    modality : str
        ``"ct"`` (int16 HU) or ``"mr"`` (T1-like, float32, 0..1).
    spacing_mm : (3,) float
        Voxel size along the grid's i, j, k axes (mm).
    rotation_deg : (3,) float
        Extra rotation of the grid axes about LPS x, y, z (degrees, applied x then y then
        z). The anatomy stays put in the world; only the sampling grid turns.
    scale : float
        Size factor of the whole anatomy (and of the field of view).
    noise_hu : float
        Standard deviation of white Gaussian noise in HU (MR: ``noise_hu / 600``).
    seed : int
        Seed of the noise; the same options and seed give identical arrays.

    Returns
    -------
    Phantom
        The field of view (300 x 220 x 180 mm at ``scale = 1``; 301 x 221 x 181 voxels at
        1 mm) is centred on the pelvis and covers both ilia, L5 and the sacrum with skin.

    Raises
    ------
    ValueError
        For an unknown lesion site or modality, a non-positive spacing or scale, a
        rotation without three angles or a negative noise level.
    """
    modality = modality.lower()
    if modality not in ("ct", "mr"):
        raise ValueError(f"phantom modality must be 'ct' or 'mr', got {modality!r}")
    spacing = _vec(spacing_mm).reshape(3)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0.0):
        raise ValueError(f"phantom voxel spacing must be positive, got {spacing_mm}")
    if len(tuple(rotation_deg)) != 3:
        raise ValueError(f"phantom rotation needs three angles (deg), got {rotation_deg}")
    if not (noise_hu >= 0.0 and math.isfinite(noise_hu)):
        raise ValueError(f"phantom noise must be zero or positive, got {noise_hu}")
    options = {
        "lesion": lesion,
        "modality": modality,
        "spacing_mm": [float(v) for v in spacing],
        "rotation_deg": [float(v) for v in rotation_deg],
        "scale": float(scale),
        "noise_hu": float(noise_hu),
        "seed": int(seed),
    }
    truth = build_truth(lesion=lesion, scale=scale, options=options)

    direction = _rotation_matrix(rotation_deg)
    extent = (FOV_MAX_MM - FOV_MIN_MM) * scale
    size = np.maximum(np.round(extent / spacing).astype(int) + 1, 1)
    center = ENDPLATE_CENTRE_LPS + scale * 0.5 * (FOV_MIN_MM + FOV_MAX_MM)
    origin = center - direction @ (spacing * (size - 1) / 2.0)
    shape = (int(size[2]), int(size[1]), int(size[0]))
    labels, image = _draw(truth, origin, spacing, direction, shape, modality)
    rng = np.random.default_rng(seed)
    if modality == "ct":
        if noise_hu > 0.0:
            image += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_hu)
        np.clip(image, -1024.0, 3071.0, out=image)
        pixels = np.rint(image).astype(np.int16)
        dicom_modality = "CT"
    else:
        if noise_hu > 0.0:
            sigma = np.float32(noise_hu * _MR_NOISE_PER_HU)
            image += rng.standard_normal(shape, dtype=np.float32) * sigma
        np.abs(image, out=image)
        pixels = image
        dicom_modality = "MR"
    grid_info = {
        "size": [int(v) for v in size],
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in direction.reshape(-1)],
    }
    truth = PhantomTruth(**{**truth.__dict__, "grid": grid_info})
    meta = {
        "description": f"sacroplan synthetic sacrum phantom ({lesion} lesion)",
        "phantom_options": options,
        "synthetic": True,
    }
    image_vol = Volume(pixels, origin, spacing, direction, modality=dicom_modality, meta=meta)
    label_vol = Volume(labels, origin, spacing, direction, modality="LABEL", meta=dict(meta))
    return Phantom(image=image_vol, labels=label_vol, truth=truth)
