"""CT-MR fusion: rigid registration of an MR series to the CT of the same patient.

The transform (:class:`RigidTransform`) is stored the way a resampler uses it,
**CT -> MR**: ``x_mr = R @ x_ct + t`` (LPS mm in both frames) gives, for a point of the CT,
the MR world point showing the same anatomy. :meth:`RigidTransform.map_mr_to_ct` is its
inverse, to bring MR points (a lesion outline, a landmark) onto the CT.

Registration (:func:`register_mr_to_ct`) uses SimpleITK: Mattes mutual information (fixed
image the CT, clipped to -1000..1500 HU; moving image the MR), a versor rigid transform
about the CT body's centre, a regular-step gradient descent with scales from physical
shifts, and three resolution levels (about 8, 4 and ``finest_mm`` mm voxels, Gaussian
smoothing 4, 2, 0 mm) with a capped random sample of voxels per level (a fixed seed: the
same inputs give the same answer). The starting pose comes from the image geometry: both
series are in LPS already, so the identity is tried, and so is the translation that
aligns the centres of mass of the two bodies; the one with the better metric starts the
optimisation (``initial="identity"`` / ``"centre_of_mass"`` force one).

The result carries the final and initial metric values (Mattes MI, more negative is
better) as a quality measure, the optimiser's stop condition and iteration count. Long
runs report progress and can be cancelled (``progress(fraction, message)``,
``cancel() -> bool``, as elsewhere in sacroplan).

:func:`nudge` composes a small user correction (rotation about a centre, translation) with
the current transform; :func:`resample_mr_to_ct` puts the MR on the CT grid (overlay, side
by side); :func:`map_mask_to_ct` brings a lesion mask drawn on the MR onto the CT grid and
reports its volume on both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from imaging.errors import OperationCancelledError, SacroplanError
from imaging.volume import Volume

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
InitialPose = Literal["auto", "identity", "centre_of_mass"]

_CT_CLIP_HU = (-1000.0, 1500.0)
_CT_BODY_HU = -500.0
_MAX_SAMPLES = 30000
_SEED = 20240611


class FusionError(SacroplanError):
    """CT-MR fusion failed (images that do not overlap, bad options, no convergence)."""


# -- the transform ----------------------------------------------------------------------------
def _rotation_matrix_deg(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about LPS x, then y, then z (degrees): ``Rz @ Ry @ Rx``."""
    ax, ay, az = (math.radians(float(a)) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _vec3(v: object, what: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise FusionError(f"{what} must be three finite numbers, got {v!r}")
    return arr


@dataclass(frozen=True)
class RigidTransform:
    """A rigid map from CT world points to MR world points: ``x_mr = R @ x_ct + t``.

    Attributes
    ----------
    rotation : (3, 3) float ndarray
        Proper rotation matrix (LPS).
    translation_mm : (3,) float ndarray
        Translation, mm LPS.
    """

    rotation: np.ndarray
    translation_mm: np.ndarray

    def __post_init__(self) -> None:
        r = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise FusionError("a rigid transform needs a proper rotation matrix")
        object.__setattr__(self, "rotation", r)
        object.__setattr__(self, "translation_mm", _vec3(self.translation_mm, "translation"))

    @classmethod
    def identity(cls) -> RigidTransform:
        """The transform of two series already in register."""
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_euler(
        cls,
        rotation_deg: tuple[float, float, float],
        translation_mm: tuple[float, float, float],
        *,
        center_lps: np.ndarray | None = None,
    ) -> RigidTransform:
        """Rotation about LPS x, y, z (degrees, applied in that order) about ``center_lps``
        (default the origin), then a translation (mm)."""
        r = _rotation_matrix_deg(_vec3(rotation_deg, "rotation"))
        c = np.zeros(3) if center_lps is None else _vec3(center_lps, "rotation centre")
        return cls(r, c - r @ c + _vec3(translation_mm, "translation"))

    def map_ct_to_mr(self, points_lps: np.ndarray) -> np.ndarray:
        """MR world points (mm) of CT world points; ``(N, 3)`` or ``(3,)``."""
        p = np.asarray(points_lps, dtype=np.float64)
        return p @ self.rotation.T + self.translation_mm

    def map_mr_to_ct(self, points_lps: np.ndarray) -> np.ndarray:
        """CT world points (mm) of MR world points; ``(N, 3)`` or ``(3,)``."""
        p = np.asarray(points_lps, dtype=np.float64)
        return (p - self.translation_mm) @ self.rotation

    def inverse(self) -> RigidTransform:
        """The MR -> CT map as a :class:`RigidTransform`."""
        return RigidTransform(self.rotation.T, -self.rotation.T @ self.translation_mm)

    def compose(self, other: RigidTransform) -> RigidTransform:
        """``self`` after ``other``: ``x -> self(other(x))``."""
        return RigidTransform(
            self.rotation @ other.rotation,
            self.rotation @ other.translation_mm + self.translation_mm,
        )

    @property
    def rotation_angle_deg(self) -> float:
        """Angle of the rotation (degrees, 0..180)."""
        c = (float(np.trace(self.rotation)) - 1.0) / 2.0
        return math.degrees(math.acos(max(-1.0, min(1.0, c))))

    def to_sitk(self) -> sitk.Euler3DTransform:
        """The same map as a SimpleITK transform (fixed = CT, moving = MR)."""
        tx = sitk.Euler3DTransform()
        tx.SetMatrix(tuple(float(v) for v in self.rotation.reshape(-1)))
        tx.SetTranslation(tuple(float(v) for v in self.translation_mm))
        return tx

    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> RigidTransform:
        """The map of a SimpleITK rigid transform (any centre)."""
        origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
        cols = [np.array(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
        r = np.stack(cols, axis=1)
        u, _, vt = np.linalg.svd(r)
        return cls(u @ vt, origin)

    def to_json(self) -> dict[str, Any]:
        """``{"rotation": 3x3 rows, "translation_mm": [x, y, z], "frame": ...}``."""
        return {
            "frame": "CT->MR, LPS mm: x_mr = rotation @ x_ct + translation_mm",
            "rotation": [[float(v) for v in row] for row in self.rotation],
            "translation_mm": [float(v) for v in self.translation_mm],
        }

    @classmethod
    def from_json(cls, data: object) -> RigidTransform:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        FusionError
            Missing fields or not a rigid transform.
        """
        if not isinstance(data, dict) or "rotation" not in data or "translation_mm" not in data:
            raise FusionError("a fusion transform needs 'rotation' and 'translation_mm'")
        try:
            r = np.asarray(data["rotation"], dtype=np.float64).reshape(3, 3)
        except (TypeError, ValueError) as exc:
            raise FusionError(f"fusion transform rotation is not a 3x3 matrix ({exc})") from exc
        return cls(r, _vec3(data["translation_mm"], "translation"))


def nudge(
    transform: RigidTransform,
    *,
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    center_lps: np.ndarray | None = None,
) -> RigidTransform:
    """Move the fused MR by a small user correction, in CT world coordinates.

    The MR as shown on the CT is moved by ``U``: a rotation about LPS x, y, z (degrees,
    in that order) about ``center_lps`` (e.g. the lesion; default the origin) followed by
    ``translation_mm``. Anatomy that sat at CT point ``p`` is afterwards shown at
    ``U(p)``, so the new CT -> MR map is ``transform o U^-1``.

    Returns
    -------
    RigidTransform
    """
    user = RigidTransform.from_euler(rotation_deg, translation_mm, center_lps=center_lps)
    return transform.compose(user.inverse())


# -- registration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_mr_to_ct`.

    Attributes
    ----------
    transform : RigidTransform
        CT -> MR map.
    metric : float
        Final Mattes mutual information at the finest level (more negative is better).
    initial_metric : float
        The same metric at the starting pose.
    initial_pose : str
        ``"identity"`` or ``"centre_of_mass"``.
    iterations : int
        Optimiser iterations over all levels.
    stop_condition : str
        The optimiser's reason for stopping at the last level.
    seconds : float
        Wall time.
    """

    transform: RigidTransform
    metric: float
    initial_metric: float
    initial_pose: str
    iterations: int
    stop_condition: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "transform": self.transform.to_json(),
            "rotation_deg": self.transform.rotation_angle_deg,
            "metric": self.metric,
            "initial_metric": self.initial_metric,
            "initial_pose": self.initial_pose,
            "iterations": self.iterations,
            "stop_condition": self.stop_condition,
            "seconds": self.seconds,
        }


def _ct_image(ct: Volume) -> sitk.Image:
    arr = np.clip(np.asarray(ct.array, dtype=np.float32), *_CT_CLIP_HU)
    return ct.with_array(arr).to_sitk()


def _mr_image(mr: Volume) -> sitk.Image:
    return mr.with_array(np.asarray(mr.array, dtype=np.float32)).to_sitk()


def _centre_of_mass(vol: Volume, mask: np.ndarray) -> np.ndarray:
    kji = np.argwhere(mask)
    if len(kji) == 0:
        raise FusionError("no body found in one of the series: is it empty?")
    return vol.index_to_world(kji[:, ::-1].mean(axis=0))


def _mr_body(mr: Volume) -> np.ndarray:
    arr = np.asarray(mr.array, dtype=np.float32)
    img = sitk.GetImageFromArray(arr)
    thr = sitk.OtsuThreshold(img, 0, 1)
    return sitk.GetArrayFromImage(thr).astype(bool)


def _shrink_factors(spacing: np.ndarray, finest_mm: float) -> list[int]:
    s = float(np.min(spacing))
    targets = (max(8.0, 4.0 * finest_mm), max(4.0, 2.0 * finest_mm), finest_mm)
    return [max(1, round(t / s)) for t in targets]


def register_mr_to_ct(
    ct: Volume,
    mr: Volume,
    *,
    initial: InitialPose = "auto",
    initial_transform: RigidTransform | None = None,
    finest_mm: float = 2.0,
    iterations: int = 200,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> RegistrationResult:
    """Rigidly register an MR series to the CT of the same patient (mutual information).

    Parameters
    ----------
    ct : Volume
        CT in HU (the fixed image); any grid.
    mr : Volume
        MR (the moving image); any grid, e.g. anisotropic 1.2 x 1.2 x 3 mm.
    initial : {"auto", "identity", "centre_of_mass"}
        Starting pose when ``initial_transform`` is not given: the series' own LPS
        geometry, the translation aligning the body centres of mass, or whichever of the
        two has the better metric.
    initial_transform : RigidTransform, optional
        Start from this CT -> MR map (e.g. after a manual nudge).
    finest_mm : float
        Voxel size of the finest level (mm); smaller is slower and rarely more exact.
    iterations : int
        Maximum optimiser iterations per level.
    progress : callable, optional
        ``progress(fraction, message)`` with fraction in 0..1.
    cancel : callable, optional
        Polled every iteration; returning True stops the registration.

    Returns
    -------
    RegistrationResult

    Raises
    ------
    FusionError
        Bad options, or the series do not overlap enough to be registered.
    OperationCancelledError
        ``cancel()`` returned True.
    """
    t_start = time.perf_counter()
    if initial not in ("auto", "identity", "centre_of_mass"):
        raise FusionError(f"initial pose must be auto, identity or centre_of_mass, got {initial!r}")
    if not (0.2 <= float(finest_mm) <= 20.0) or not (1 <= int(iterations) <= 10000):
        raise FusionError("finest level must be 0.2-20 mm and iterations 1-10000")
    fixed = _ct_image(ct)
    moving = _mr_image(mr)
    body_ct = np.asarray(ct.array) > _CT_BODY_HU
    center = _centre_of_mass(ct, body_ct)

    candidates: dict[str, RigidTransform] = {}
    if initial_transform is not None:
        candidates["given"] = initial_transform
    else:
        if initial in ("auto", "identity"):
            candidates["identity"] = RigidTransform.identity()
        if initial in ("auto", "centre_of_mass"):
            shift = _centre_of_mass(mr, _mr_body(mr)) - center
            candidates["centre_of_mass"] = RigidTransform(np.eye(3), shift)

    factors = _shrink_factors(ct.spacing, float(finest_mm))
    n_vox = [float(np.prod(ct.size)) / f**3 for f in factors]
    percentages = [min(1.0, _MAX_SAMPLES / n) for n in n_vox]

    def method() -> sitk.ImageRegistrationMethod:
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentagePerLevel(percentages, _SEED)
        reg.SetInterpolator(sitk.sitkLinear)
        # gradients at the sample points only, not filtered over the whole images (faster)
        reg.MetricUseFixedImageGradientFilterOff()
        reg.MetricUseMovingImageGradientFilterOff()
        return reg

    def start_transform(t: RigidTransform) -> sitk.VersorRigid3DTransform:
        vr = sitk.VersorRigid3DTransform()
        vr.SetCenter(tuple(float(v) for v in center))
        vr.SetMatrix(tuple(float(v) for v in t.rotation.reshape(-1)))
        # x_mr = R (x - c) + c + t' = R x + t  =>  t' = t - c + R c
        vr.SetTranslation(tuple(float(v) for v in t.translation_mm - center + t.rotation @ center))
        return vr

    metrics = {}
    for name, cand in candidates.items():
        reg = method()
        reg.SetMetricSamplingPercentage(percentages[-1], _SEED)
        reg.SetInitialTransform(start_transform(cand), inPlace=False)
        try:
            metrics[name] = float(reg.MetricEvaluate(fixed, moving))
        except RuntimeError:
            metrics[name] = math.inf  # too little overlap to evaluate
    best = min(metrics, key=lambda k: metrics[k])
    if not math.isfinite(metrics[best]):
        raise FusionError(
            "the CT and MR do not overlap at the starting pose: check that both series"
            " belong to the same patient and region, or move the MR by hand first"
        )

    reg = method()
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=int(iterations),
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(factors)
    reg.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    tx = start_transform(candidates[best])
    reg.SetInitialTransform(tx, inPlace=True)
    state = {"iterations": 0, "cancelled": False}
    n_levels = len(factors)

    def on_iteration() -> None:
        state["iterations"] += 1
        if state["cancelled"] or (cancel is not None and cancel()):
            state["cancelled"] = True
            reg.StopRegistration()  # ends the current level; the next ones stop at once
            return
        if progress is not None:
            level = reg.GetCurrentLevel()
            frac = (level + min(1.0, reg.GetOptimizerIteration() / float(iterations))) / n_levels
            progress(min(0.99, frac), f"registering MR to CT, level {level + 1}/{n_levels}")

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    if progress is not None:
        progress(0.0, "registering MR to CT")
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:
        if state["cancelled"]:
            raise OperationCancelledError("CT-MR registration cancelled") from exc
        raise FusionError(
            "CT-MR registration failed (too little overlap between the series?): "
            f"{str(exc).splitlines()[-1] if str(exc) else exc!r}"
        ) from exc
    if state["cancelled"]:
        raise OperationCancelledError("CT-MR registration cancelled")
    result = RigidTransform.from_sitk(tx)
    final = method()
    final.SetMetricSamplingPercentage(percentages[-1], _SEED)
    final.SetInitialTransform(result.to_sitk(), inPlace=False)
    metric = float(final.MetricEvaluate(fixed, moving))
    if progress is not None:
        progress(1.0, "registration done")
    return RegistrationResult(
        transform=result,
        metric=metric,
        initial_metric=metrics[best],
        initial_pose=best,
        iterations=int(state["iterations"]),
        stop_condition=reg.GetOptimizerStopConditionDescription(),
        seconds=time.perf_counter() - t_start,
    )


# -- resampling -------------------------------------------------------------------------------
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def resample_mr_to_ct(
    mr: Volume,
    ct: Volume,
    transform: RigidTransform,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
    default_value: float = 0.0,
) -> Volume:
    """The MR resampled onto the CT grid through the CT -> MR ``transform``.

    Parameters
    ----------
    mr, ct : Volume
        Moving MR and the CT whose grid the result takes.
    transform : RigidTransform
        CT -> MR map (from :func:`register_mr_to_ct`, possibly nudged).
    interpolation : {"linear", "nearest"}
    default_value : float
        Value outside the MR's field of view.

    Returns
    -------
    Volume
        float32 MR intensities on the CT grid (modality ``"MR"``), for an overlay or a
        side-by-side view.
    """
    if interpolation not in _INTERPOLATORS:
        raise FusionError(f"interpolation must be linear or nearest, got {interpolation!r}")
    out = sitk.Resample(
        _mr_image(mr),
        ct.to_sitk(),
        transform.to_sitk(),
        _INTERPOLATORS[interpolation],
        float(default_value),
        sitk.sitkFloat32,
    )
    return Volume(
        array=sitk.GetArrayFromImage(out),
        origin=ct.origin,
        spacing=ct.spacing,
        direction=ct.direction,
        modality="MR",
        meta={"description": "MR fused onto the CT grid"},
    )


@dataclass(frozen=True)
class MappedMask:
    """A mask drawn on the MR, mapped onto the CT grid.

    Attributes
    ----------
    mask : Volume
        uint8 0/1 on the CT grid (modality ``"LABEL"``).
    volume_ml_mr : float
        Volume of the mask on the MR grid, mL.
    volume_ml_ct : float
        Volume of the mapped mask on the CT grid, mL.
    """

    mask: Volume
    volume_ml_mr: float
    volume_ml_ct: float


def moved_grid(volume: Volume, transform: RigidTransform) -> Volume:
    """The same voxels on a grid moved rigidly: anatomy at CT point p lands at ``T(p)``.

    Parameters
    ----------
    volume : Volume
        An image or mask in the CT world frame (LPS mm).
    transform : RigidTransform
        CT -> MR map.

    Returns
    -------
    Volume
        Same array (shared), origin ``T(origin)``, direction ``R @ direction``: the volume in
        the MR world frame.
    """
    return Volume(
        array=volume.array,
        origin=transform.map_ct_to_mr(np.asarray(volume.origin, float)),
        spacing=volume.spacing,
        direction=transform.rotation @ np.asarray(volume.direction, float),
        modality=volume.modality,
        meta=dict(volume.meta),
    )


def map_mask_to_ct(
    mask_mr: Volume,
    ct: Volume,
    transform: RigidTransform,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
    threshold: float = 0.5,
    label: int | None = None,
) -> MappedMask:
    """Bring a lesion mask segmented on the MR onto the CT grid.

    Parameters
    ----------
    mask_mr : Volume
        Mask or label map on the MR grid (non-zero = inside, or ``== label``).
    ct : Volume
        The CT whose grid the result takes.
    transform : RigidTransform
        CT -> MR map.
    interpolation : {"linear", "nearest"}
        Linear interpolation of the 0/1 mask then ``>= threshold`` (smooth edges across
        different voxel sizes), or nearest neighbour.
    threshold : float
        Cut of the linearly interpolated mask (0 < threshold <= 1).
    label : int, optional
        Take only voxels equal to this value.

    Returns
    -------
    MappedMask
        The CT-grid mask and the volumes on both grids (mL).

    Raises
    ------
    FusionError
        An empty mask or a threshold outside (0, 1].
    """
    if not (0.0 < float(threshold) <= 1.0):
        raise FusionError(f"mask threshold must be in (0, 1], got {threshold}")
    arr = np.asarray(mask_mr.array)
    inside = arr == label if label is not None else arr != 0
    count = int(np.count_nonzero(inside))
    if count == 0:
        raise FusionError("the MR mask is empty: segment or paint the lesion on the MR first")
    src = mask_mr.with_array(inside.astype(np.float32))
    moved = resample_mr_to_ct(src, ct, transform, interpolation=interpolation)
    out = (moved.array >= float(threshold) - 1e-6).astype(np.uint8)
    ml_mr = count * mask_mr.voxel_volume_mm3 / 1000.0
    ml_ct = int(np.count_nonzero(out)) * ct.voxel_volume_mm3 / 1000.0
    return MappedMask(
        mask=ct.with_array(out, modality="LABEL"), volume_ml_mr=ml_mr, volume_ml_ct=ml_ct
    )
