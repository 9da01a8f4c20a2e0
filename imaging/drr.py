"""Simulated fluoroscopy: digitally reconstructed radiographs (DRR) from a CT volume.

Geometry (a cone-beam C-arm, :class:`CArmGeometry`)
---------------------------------------------------
The view is set by ``d``, the LPS unit direction from the isocentre toward the detector
(DESIGN section 5.8 and :mod:`geometry.carm_geometry`: DICOM primary angle
``atan2(d_x, -d_y)``, LAO +; secondary ``asin(d_z)``, CRA +; a detector straight above a
prone patient's back is LAO 180). The X-ray source (focal spot) is at
``S = isocentre - SOD * d`` and the flat detector is perpendicular to ``d`` with its centre
at ``S + SID * d``; the magnification of the isocentre plane is ``SID / SOD``. The image is
shown as seen from the detector looking toward the source, head up
(:func:`geometry.carm_geometry.detector_axes`): column index grows along ``right``, row
index along ``-up``; pixel centres are integer ``(col, row)`` and the central ray hits
``((cols - 1) / 2, (rows - 1) / 2)``.

:meth:`CArmGeometry.projection_matrix` is the 3x4 pinhole matrix ``P = K [R | -R S]``
(``R`` rows ``right, -up, d``; ``K = [[SID/p_col, 0, c0], [0, SID/p_row, r0], [0, 0, 1]]``):
``(col * w, row * w, w) = P @ (x, y, z, 1)`` with ``w`` the depth from the source along
``d`` in mm. :meth:`CArmGeometry.project_points` applies it, so the planned needle, the
foramina and the lesion can be drawn on the image.

Attenuation (:class:`AttenuationModel`)
---------------------------------------
Linear attenuation at the fluoroscopy beam's effective energy (~65 keV): air (-1000 HU)
0, water ``mu_water`` (0.0200 /mm, NIST water at 65 keV), soft tissue linear in HU, and
above 0 HU a steeper line (``bone_slope`` 1.15) because bone's photoelectric attenuation
rises faster than water's at the lower energy of fluoroscopy than at CT's (cortical bone,
~1700 HU, comes out near 0.059 /mm, its NIST value at 60-65 keV).

Rendering
---------
Each detector pixel's ray from the source is clipped to the volume's box (voxel centres
+- half a voxel; the edge voxels' values hold out to the box) after the volume has been
cropped to the bounding box of everything above -900 HU,
then marched at ``step_mm`` (midpoint rule over the clipped chord, trilinear sampling of
a float32 attenuation volume) in a numba ``prange`` kernel over detector rows. The result
holds the raw line integral ``L = integral of mu dl`` (dimensionless) and the transmitted
intensity ``I = exp(-L)`` (air 1, bone and metal dark: **as on a fluoroscopy monitor, bone
is dark**; :meth:`Drr.display_uint8` can invert it to show bone white). Speed: the
attenuation volume is prepared once per study (:func:`prepare_volume`) and reused for every
angle; ``downsample=2`` (block means, 8x fewer voxels, steps twice as long) is for
interactive dragging. See ``bench/bench_drr.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

from geometry.carm_geometry import (
    angles_from_detector_direction,
    detector_axes,
    detector_direction_from_angles,
    progression_direction,
)
from imaging.errors import SacroplanError
from imaging.volume import Volume

#: Default source-to-detector (image) distance, mm (typical mobile C-arm 100-120 cm).
DEFAULT_SID_MM = 1100.0
#: Default source-to-isocentre distance, mm.
DEFAULT_SOD_MM = 750.0
#: Default detector: 512 x 512 pixels of 0.6 mm (a 30.7 cm flat panel).
DEFAULT_DETECTOR_SHAPE = (512, 512)
DEFAULT_PIXEL_MM = 0.6
#: Voxels below this HU count as air when cropping to the body (noise in air is dropped).
CROP_BELOW_HU = -900.0


class DrrError(SacroplanError):
    """A simulated radiograph could not be made (bad geometry or a volume that is not CT)."""


# -- attenuation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttenuationModel:
    """Hounsfield units to linear attenuation (per mm) at the fluoroscopy beam energy.

    ``mu = mu_water * (1 + HU / 1000)`` for HU <= 0 (air 0, clipped at 0) and
    ``mu = mu_water * (1 + bone_slope * HU / 1000)`` above 0 HU.

    Attributes
    ----------
    mu_water_per_mm : float
        Water's linear attenuation coefficient, 1/mm (0.0200 at ~65 keV).
    bone_slope : float
        Slope of the line above 0 HU relative to water's (1.0 = plain linear scaling).
    """

    mu_water_per_mm: float = 0.0200
    bone_slope: float = 1.15

    def __post_init__(self) -> None:
        if not (0.0 < self.mu_water_per_mm < 1.0) or not (0.0 < self.bone_slope < 10.0):
            raise DrrError(
                "attenuation model: water attenuation must be in (0, 1) /mm and the bone slope"
                f" in (0, 10), got {self.mu_water_per_mm} and {self.bone_slope}"
            )

    def mu_per_mm(self, hu: np.ndarray) -> np.ndarray:
        """Linear attenuation (float32, 1/mm) of Hounsfield units ``hu`` (any shape)."""
        h = np.asarray(hu, dtype=np.float32) * np.float32(0.001)
        slope = np.where(h > 0, np.float32(self.bone_slope), np.float32(1.0))
        mu = np.float32(self.mu_water_per_mm) * (np.float32(1.0) + slope * h)
        return np.maximum(mu, np.float32(0.0)).astype(np.float32, copy=False)


# -- geometry ---------------------------------------------------------------------------------
def _point3(v: object, what: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise DrrError(f"{what} must be three finite numbers (LPS, mm), got {v!r}")
    return arr


@dataclass(frozen=True)
class CArmGeometry:
    """A cone-beam C-arm pose and detector.

    Parameters
    ----------
    isocenter_lps : (3,) float ndarray, mm, LPS
        Point on the central ray at ``sod_mm`` from the source (e.g. the lesion).
    detector_direction_lps : (3,) float ndarray
        Direction from the isocentre toward the detector (normalised here).
    sid_mm : float
        Source-to-detector distance, mm.
    sod_mm : float
        Source-to-isocentre distance, mm (``0 < sod_mm < sid_mm``).
    detector_shape : (int, int)
        Detector ``(rows, cols)`` in pixels.
    pixel_mm : float or (float, float)
        Pixel pitch on the detector, mm: one value, or ``(row, col)``.
    up_hint_lps : (3,) float ndarray, optional
        Direction shown up in the image (default the patient's head).
    """

    isocenter_lps: np.ndarray
    detector_direction_lps: np.ndarray
    sid_mm: float = DEFAULT_SID_MM
    sod_mm: float = DEFAULT_SOD_MM
    detector_shape: tuple[int, int] = DEFAULT_DETECTOR_SHAPE
    pixel_mm: tuple[float, float] = (DEFAULT_PIXEL_MM, DEFAULT_PIXEL_MM)
    up_hint_lps: np.ndarray | None = None
    right_lps: np.ndarray = field(init=False, repr=False)
    up_lps: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        iso = _point3(self.isocenter_lps, "the isocentre")
        d = _point3(self.detector_direction_lps, "the detector direction")
        if np.linalg.norm(d) < 1e-9:
            raise DrrError("the detector direction has no length")
        d = d / np.linalg.norm(d)
        sid, sod = float(self.sid_mm), float(self.sod_mm)
        if not (math.isfinite(sid) and math.isfinite(sod) and 0.0 < sod < sid):
            raise DrrError(
                f"C-arm distances: need 0 < source-isocentre ({sod} mm) < source-detector"
                f" ({sid} mm)"
            )
        rows, cols = (int(v) for v in self.detector_shape)
        if rows < 1 or cols < 1 or rows > 8192 or cols > 8192:
            raise DrrError(f"detector size must be 1..8192 pixels a side, got {rows} x {cols}")
        pitch = np.broadcast_to(np.asarray(self.pixel_mm, dtype=np.float64), (2,))
        if not np.all(np.isfinite(pitch)) or np.any(pitch <= 0.0):
            raise DrrError(f"detector pixel pitch must be positive (mm), got {self.pixel_mm}")
        hint = None if self.up_hint_lps is None else _point3(self.up_hint_lps, "the up hint")
        right, up = detector_axes(d, up_hint_lps=hint)
        object.__setattr__(self, "isocenter_lps", iso)
        object.__setattr__(self, "detector_direction_lps", d)
        object.__setattr__(self, "sid_mm", sid)
        object.__setattr__(self, "sod_mm", sod)
        object.__setattr__(self, "detector_shape", (rows, cols))
        object.__setattr__(self, "pixel_mm", (float(pitch[0]), float(pitch[1])))
        object.__setattr__(self, "up_hint_lps", hint)
        object.__setattr__(self, "right_lps", right)
        object.__setattr__(self, "up_lps", up)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_angles(
        cls,
        primary_deg: float,
        secondary_deg: float,
        isocenter_lps: np.ndarray,
        **options: object,
    ) -> CArmGeometry:
        """The pose for DICOM primary (LAO +) and secondary (CRA +) angles in degrees.

        ``options`` are the other :class:`CArmGeometry` fields (``sid_mm``, ``sod_mm``,
        ``detector_shape``, ``pixel_mm``, ``up_hint_lps``).
        """
        d = detector_direction_from_angles(primary_deg, secondary_deg)
        return cls(isocenter_lps, d, **options)  # type: ignore[arg-type]

    # -- derived --------------------------------------------------------------------------------
    @property
    def source_lps(self) -> np.ndarray:
        """(3,) focal spot position, mm LPS."""
        return self.isocenter_lps - self.sod_mm * self.detector_direction_lps

    @property
    def detector_center_lps(self) -> np.ndarray:
        """(3,) point where the central ray meets the detector, mm LPS."""
        return self.source_lps + self.sid_mm * self.detector_direction_lps

    @property
    def magnification(self) -> float:
        """Magnification of the isocentre plane, ``SID / SOD``."""
        return self.sid_mm / self.sod_mm

    @property
    def angles_deg(self) -> tuple[float, float]:
        """DICOM (primary, secondary) angles of the view, degrees."""
        return angles_from_detector_direction(self.detector_direction_lps)

    @property
    def principal_point(self) -> tuple[float, float]:
        """``(col, row)`` pixel coordinates of the central ray on the detector."""
        rows, cols = self.detector_shape
        return (cols - 1) / 2.0, (rows - 1) / 2.0

    def projection_matrix(self) -> np.ndarray:
        """(3, 4) matrix mapping homogeneous LPS mm to homogeneous ``(col, row, 1)`` pixels.

        The third component of ``P @ (x, y, z, 1)`` is the depth of the point from the
        source along the central ray (mm).
        """
        c0, r0 = self.principal_point
        p_row, p_col = self.pixel_mm
        k = np.array(
            [[self.sid_mm / p_col, 0.0, c0], [0.0, self.sid_mm / p_row, r0], [0.0, 0.0, 1.0]]
        )
        rot = np.stack([self.right_lps, -self.up_lps, self.detector_direction_lps])
        ext = np.hstack([rot, (-rot @ self.source_lps)[:, np.newaxis]])
        return k @ ext

    def project_points(self, points_lps: np.ndarray) -> np.ndarray:
        """Detector pixel coordinates of world points.

        Parameters
        ----------
        points_lps : (N, 3) or (3,) float ndarray, mm, LPS

        Returns
        -------
        (N, 2) or (2,) float ndarray
            ``(col, row)`` pixel coordinates (pixel centres at integers; may fall outside
            the detector). Points at or behind the source plane give NaN.
        """
        pts = np.asarray(points_lps, dtype=np.float64)
        flat = np.atleast_2d(pts)
        if flat.shape[1] != 3:
            raise DrrError(f"points must be (N, 3) LPS mm, got shape {pts.shape}")
        h = np.hstack([flat, np.ones((len(flat), 1))]) @ self.projection_matrix().T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = h[:, :2] / h[:, 2:3]
        uv[h[:, 2] <= 1e-9] = np.nan
        return uv if pts.ndim > 1 else uv[0]

    def pixel_to_world(self, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """World positions (mm, LPS) of detector pixel coordinates; shape ``cols.shape + (3,)``."""
        c0, r0 = self.principal_point
        p_row, p_col = self.pixel_mm
        c = np.asarray(cols, dtype=np.float64)[..., np.newaxis]
        r = np.asarray(rows, dtype=np.float64)[..., np.newaxis]
        return (
            self.detector_center_lps
            + (c - c0) * p_col * self.right_lps
            - (r - r0) * p_row * self.up_lps
        )


def view_geometry(
    detector_direction_lps: np.ndarray, isocenter_lps: np.ndarray, **options: object
) -> CArmGeometry:
    """A :class:`CArmGeometry` for a detector direction (``options`` as its fields)."""
    return CArmGeometry(isocenter_lps, detector_direction_lps, **options)  # type: ignore[arg-type]


def _needle(
    entry_lps: np.ndarray, tip_lps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entry, tip = _point3(entry_lps, "the needle entry"), _point3(tip_lps, "the needle tip")
    length = float(np.linalg.norm(tip - entry))
    if length < 1e-6:
        raise DrrError("the needle entry and tip coincide: no direction to look along")
    return entry, tip, (tip - entry) / length


def bulls_eye_geometry(
    entry_lps: np.ndarray, tip_lps: np.ndarray, **options: object
) -> CArmGeometry:
    """Bull's-eye view of a needle: central ray along it, detector on the entry side.

    Parameters
    ----------
    entry_lps, tip_lps : (3,) float ndarray, mm, LPS
        Skin entry and tip; the isocentre is the tip, ``d = -unit(tip - entry)``.
    **options
        Other :class:`CArmGeometry` fields.
    """
    _, tip, n = _needle(entry_lps, tip_lps)
    return CArmGeometry(tip, -n, **options)  # type: ignore[arg-type]


def progression_geometry(
    entry_lps: np.ndarray,
    tip_lps: np.ndarray,
    *,
    preferred_direction_lps: np.ndarray | None = None,
    **options: object,
) -> CArmGeometry:
    """Progression view of a needle: central ray perpendicular to it, through its middle.

    Parameters
    ----------
    entry_lps, tip_lps : (3,) float ndarray, mm, LPS
        Skin entry and tip.
    preferred_direction_lps : (3,) float ndarray, optional
        Detector direction to come closest to (default lateral, or posterior for a needle
        running left-right; see :func:`geometry.carm_geometry.progression_direction`).
    **options
        Other :class:`CArmGeometry` fields.
    """
    entry, tip, n = _needle(entry_lps, tip_lps)
    try:
        d = progression_direction(n, preferred_lps=preferred_direction_lps)
    except ValueError as exc:
        raise DrrError(f"progression view: {exc}") from exc
    return CArmGeometry(0.5 * (entry + tip), d, **options)  # type: ignore[arg-type]


# -- the attenuation volume -------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AttenuationVolume:
    """A CT converted to linear attenuation, cropped to its non-air box, ready to project.

    Attributes
    ----------
    mu : (K, J, I) float32 ndarray, 1/mm, C-contiguous
    origin, spacing, direction
        Grid of ``mu`` as in :class:`imaging.volume.Volume`.
    """

    mu: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    def world_to_index_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(A, b)`` with continuous ``(i, j, k) = A @ x + b`` for LPS ``x``."""
        a = self.direction.T / self.spacing[:, np.newaxis]
        return a, -a @ self.origin


def prepare_volume(
    volume: Volume,
    *,
    attenuation: AttenuationModel | None = None,
    downsample: int = 1,
) -> AttenuationVolume:
    """Convert a CT to a cropped float32 attenuation volume for :func:`render_drr`.

    Parameters
    ----------
    volume : Volume
        CT in Hounsfield units, any grid (anisotropic, oblique).
    attenuation : AttenuationModel, optional
        HU to 1/mm conversion (default :class:`AttenuationModel()`).
    downsample : int
        Block size for averaging (1 = full resolution; 2 for interactive dragging).

    Returns
    -------
    AttenuationVolume

    Raises
    ------
    DrrError
        The volume is not a CT, or the downsampling factor is not 1..8.
    """
    if volume.modality.upper() not in ("CT", "OT"):
        raise DrrError(
            f"a simulated radiograph needs a CT in Hounsfield units, got a {volume.modality}"
            " series; open the patient's CT"
        )
    if not (isinstance(downsample, int | np.integer) and 1 <= int(downsample) <= 8):
        raise DrrError(f"downsample must be an integer 1..8, got {downsample!r}")
    f = int(downsample)
    model = attenuation or AttenuationModel()
    mu = model.mu_per_mm(volume.array)
    origin = volume.origin.copy()
    spacing = volume.spacing.copy()
    direction = volume.direction.copy()
    dense = np.asarray(volume.array) > CROP_BELOW_HU
    if not dense.any():
        mu = np.zeros((2, 2, 2), dtype=np.float32)
    else:
        lo, hi = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(dense.any(axis=other))
            lo.append(max(int(nz[0]) - f, 0))
            hi.append(min(int(nz[-1]) + f + 1, mu.shape[axis]))
        mu = mu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        origin = volume.index_to_world(np.array([lo[2], lo[1], lo[0]], dtype=np.float64))
    if f > 1:
        pad = [(0, (-n) % f) for n in mu.shape]
        mu = np.pad(mu, pad)
        k, j, i = (n // f for n in mu.shape)
        mu = mu.reshape(k, f, j, f, i, f).mean(axis=(1, 3, 5), dtype=np.float32)
        origin = origin + direction @ (spacing * (f - 1) / 2.0)
        spacing = spacing * f
    mu = np.ascontiguousarray(mu, dtype=np.float32)
    if min(mu.shape) < 2:
        mu = np.pad(mu, [(0, max(0, 2 - n)) for n in mu.shape])
    return AttenuationVolume(mu=mu, origin=origin, spacing=spacing, direction=direction)


# -- the kernel -------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, inline="always")
def _trilinear(mu: np.ndarray, x: float, y: float, z: float) -> float:
    nk, nj, ni = mu.shape
    x = min(max(x, 0.0), ni - 1.0)
    y = min(max(y, 0.0), nj - 1.0)
    z = min(max(z, 0.0), nk - 1.0)
    i0 = min(int(x), ni - 2)
    j0 = min(int(y), nj - 2)
    k0 = min(int(z), nk - 2)
    fx = np.float32(x - i0)
    fy = np.float32(y - j0)
    fz = np.float32(z - k0)
    c00 = mu[k0, j0, i0] + fx * (mu[k0, j0, i0 + 1] - mu[k0, j0, i0])
    c01 = mu[k0, j0 + 1, i0] + fx * (mu[k0, j0 + 1, i0 + 1] - mu[k0, j0 + 1, i0])
    c10 = mu[k0 + 1, j0, i0] + fx * (mu[k0 + 1, j0, i0 + 1] - mu[k0 + 1, j0, i0])
    c11 = mu[k0 + 1, j0 + 1, i0] + fx * (mu[k0 + 1, j0 + 1, i0 + 1] - mu[k0 + 1, j0 + 1, i0])
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


@numba.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _drr_kernel(
    mu: np.ndarray,
    src: np.ndarray,
    pix0: np.ndarray,
    dcol: np.ndarray,
    drow: np.ndarray,
    spacing: np.ndarray,
    step_mm: float,
    out: np.ndarray,
) -> None:
    """Line integrals of ``mu`` from ``src`` to every pixel (all positions in index space)."""
    rows, cols = out.shape
    nk, nj, ni = mu.shape
    hi0, hi1, hi2 = ni - 0.5, nj - 0.5, nk - 0.5
    for r in numba.prange(rows):
        for c in range(cols):
            dx = pix0[0] + c * dcol[0] + r * drow[0] - src[0]
            dy = pix0[1] + c * dcol[1] + r * drow[1] - src[1]
            dz = pix0[2] + c * dcol[2] + r * drow[2] - src[2]
            t0 = 0.0
            t1 = 1.0
            hit = True
            for a in range(3):
                if a == 0:
                    s, dd, hi = src[0], dx, hi0
                elif a == 1:
                    s, dd, hi = src[1], dy, hi1
                else:
                    s, dd, hi = src[2], dz, hi2
                if abs(dd) < 1e-12:
                    if s < -0.5 or s > hi:
                        hit = False
                else:
                    ta = (-0.5 - s) / dd
                    tb = (hi - s) / dd
                    if ta > tb:
                        ta, tb = tb, ta
                    t0 = max(t0, ta)
                    t1 = min(t1, tb)
            if not hit or t1 <= t0:
                out[r, c] = 0.0
                continue
            length = math.sqrt(
                (dx * spacing[0]) ** 2 + (dy * spacing[1]) ** 2 + (dz * spacing[2]) ** 2
            )
            chord = (t1 - t0) * length
            n = max(1, int(math.ceil(chord / step_mm)))
            dt = (t1 - t0) / n
            t = t0 + 0.5 * dt
            x = src[0] + t * dx
            y = src[1] + t * dy
            z = src[2] + t * dz
            sx, sy, sz = dt * dx, dt * dy, dt * dz
            acc = np.float32(0.0)
            for _ in range(n):
                acc += _trilinear(mu, x, y, z)
                x += sx
                y += sy
                z += sz
            out[r, c] = acc * (chord / n)


# -- rendering --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Drr:
    """A simulated radiograph.

    Attributes
    ----------
    line_integral : (rows, cols) float32 ndarray
        ``integral of mu dl`` along each pixel's ray (dimensionless; 0 for air).
    geometry : CArmGeometry
        The pose that made it (use its :meth:`~CArmGeometry.project_points` for overlays).
    """

    line_integral: np.ndarray
    geometry: CArmGeometry

    @property
    def intensity(self) -> np.ndarray:
        """(rows, cols) float32 transmitted intensity ``exp(-L)``: air 1, bone dark."""
        return np.exp(-self.line_integral).astype(np.float32)

    def display_uint8(
        self, *, invert: bool = False, percentiles: tuple[float, float] = (1, 99.5)
    ) -> np.ndarray:
        """An 8-bit image for the screen or a report.

        The line integral is windowed between the given percentiles of the pixels the
        body covers and mapped so that bone is dark and air bright (fluoroscopy look), or
        bone bright with ``invert=True`` (radiograph look).

        Returns
        -------
        (rows, cols) uint8 ndarray
        """
        li = self.line_integral
        body = li[li > 0.05]
        if body.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(body, percentiles))
            lo = min(lo, 0.0) if body.size < li.size else lo
            hi = max(hi, lo + 1e-3)
        scaled = np.clip((li - lo) / (hi - lo), 0.0, 1.0)
        if not invert:
            scaled = 1.0 - scaled
        return (scaled * 255.0 + 0.5).astype(np.uint8)


def default_step_mm(volume: AttenuationVolume) -> float:
    """The marching step of :func:`render_drr` when none is given: the smallest voxel size."""
    return float(np.min(volume.spacing))


def render_drr(
    volume: AttenuationVolume | Volume,
    geometry: CArmGeometry,
    *,
    step_mm: float | None = None,
) -> Drr:
    """Project an attenuation volume onto the detector of ``geometry``.

    Parameters
    ----------
    volume : AttenuationVolume or Volume
        From :func:`prepare_volume` (prepare once, render many); a CT :class:`Volume` is
        prepared here with the default model.
    geometry : CArmGeometry
        Source, detector and view.
    step_mm : float, optional
        Sampling step along each ray, mm (default: the smallest voxel size).

    Returns
    -------
    Drr

    Raises
    ------
    DrrError
        A non-positive step, or the source inside the volume's box.
    """
    vol = prepare_volume(volume) if isinstance(volume, Volume) else volume
    step = default_step_mm(vol) if step_mm is None else float(step_mm)
    if not (math.isfinite(step) and step > 0.0):
        raise DrrError(f"the ray step must be a positive length (mm), got {step_mm}")
    a, b = vol.world_to_index_affine()
    src = a @ geometry.source_lps + b
    size = np.array(vol.mu.shape[::-1], dtype=np.float64)
    if np.all(src >= -0.5) and np.all(src <= size - 0.5):
        raise DrrError(
            "the X-ray source lies inside the CT volume: increase the source-to-isocentre distance"
        )
    rows, cols = geometry.detector_shape
    pix0 = a @ geometry.pixel_to_world(np.array(0.0), np.array(0.0)) + b
    dcol = a @ (geometry.pixel_mm[1] * geometry.right_lps)
    drow = a @ (-geometry.pixel_mm[0] * geometry.up_lps)
    out = np.empty((rows, cols), dtype=np.float32)
    _drr_kernel(vol.mu, src, pix0, dcol, drow, vol.spacing, step, out)
    return Drr(line_integral=out, geometry=geometry)
