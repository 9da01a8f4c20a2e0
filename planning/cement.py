"""Cement volume suggestion (DESIGN 5.6) and the geometric cap on it.

The suggestion is ``r x lesion volume`` with ``r`` the ratio of the reference cohort's mean
cement volume to its mean lesion volume (Tian et al., AJNR 2022;43:1222-1227): 0.79 for
PSP alone (5.31 / 6.69 mL) and 0.89 for PSP+RFA (6.42 / 7.22 mL). It is a ratio of group
means, not a model fitted to individual lesions. A band of about one cohort SD (+-1.7 mL)
goes around it; both are limited to the 2-8 mL the cohort injected and to what the anatomy
holds (:func:`geometric_cement_cap`). Every number comes from ``resources/cement.json``.

Predicted filling degree (the cohort's measure: largest cement diameter / largest lesion
diameter) models the cement as a **sphere** of the suggested volume, so it is
``min(1, (6 V / pi)^(1/3) / lesion max diameter)``. On the cohort's mean lesions this gives
about the cohort's 76 % and 85 % when the lesions' largest diameters are ~28 and ~27 mm.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from imaging.errors import PlanningParameterError, ResourceDataError
from planning.needles import read_resource_json, require_number

_ML_PER_MM3 = 1e-3


@dataclass(frozen=True)
class _Cohort:
    key: str
    label: str
    n_patients: int
    n_lesions: int
    lesion_ml_mean: float
    lesion_ml_sd: float
    cement_ml_mean: float
    cement_ml_sd: float
    filling_degree_mean: float
    ratio: float


@dataclass(frozen=True)
class _CementRules:
    source: str
    cohorts: dict[str, _Cohort]
    band_half_width_ml: float
    clip_ml: tuple[float, float]
    cohort_max_lesion_diameter_mm: float
    shell_mm: float
    keep_out_mm: float


@functools.cache
def _rules() -> _CementRules:
    data = read_resource_json("cement.json")
    try:
        cohorts = {
            key: _Cohort(
                key=key,
                label=str(c["label"]),
                n_patients=int(c["n_patients"]),
                n_lesions=int(c["n_lesions"]),
                lesion_ml_mean=float(c["lesion_ml_mean"]),
                lesion_ml_sd=float(c["lesion_ml_sd"]),
                cement_ml_mean=float(c["cement_ml_mean"]),
                cement_ml_sd=float(c["cement_ml_sd"]),
                filling_degree_mean=float(c["filling_degree_mean"]),
                ratio=float(c["ratio"]),
            )
            for key, c in data["cohorts"].items()
        }
        lo, hi = (float(v) for v in data["clip_ml"])
        rules = _CementRules(
            source=str(data["source"]),
            cohorts=cohorts,
            band_half_width_ml=float(data["band_half_width_ml"]),
            clip_ml=(lo, hi),
            cohort_max_lesion_diameter_mm=float(data["cohort_max_lesion_diameter_mm"]),
            shell_mm=float(data["geometric_cap"]["shell_mm"]),
            keep_out_mm=float(data["geometric_cap"]["keep_out_mm"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResourceDataError(f"resources/cement.json is malformed ({exc!r})") from exc
    if set(cohorts) != {"psp_alone", "psp_rfa"} or not 0 < lo < hi:
        raise ResourceDataError(
            "resources/cement.json needs cohorts psp_alone and psp_rfa and clip_ml [low, high]"
        )
    return rules


def cement_ratio(*, with_rfa: bool) -> float:
    """Cement-to-lesion volume ratio for PSP alone or PSP+RFA (from ``resources/cement.json``)."""
    return _rules().cohorts["psp_rfa" if with_rfa else "psp_alone"].ratio


def sphere_diameter_mm(volume_ml: float) -> float:
    """Diameter (mm) of a sphere of ``volume_ml`` millilitres."""
    return (6.0 * volume_ml / _ML_PER_MM3 / math.pi) ** (1.0 / 3.0)


@dataclass(frozen=True)
class CementSuggestion:
    """A suggested cement volume with its band, cap, predicted filling and evidence.

    Attributes
    ----------
    suggested_ml : float
        Volume to prepare for, mL (ratio x lesion volume, clipped, capped).
    band_ml : (float, float)
        Plausible range, mL (suggestion +- band half-width, clipped and capped).
    cap_ml : float or None
        Geometric cap that was applied, mL (``None`` when none was given).
    predicted_filling : float or None
        Predicted largest cement diameter / largest lesion diameter (sphere model, <= 1);
        ``None`` without a lesion diameter.
    ratio : float
        The cohort ratio that was used.
    basis : str
        The evidence in one plain paragraph.
    warnings : tuple of str
        Plain-language cautions (extrapolation, clipping, capping).
    """

    suggested_ml: float
    band_ml: tuple[float, float]
    cap_ml: float | None
    predicted_filling: float | None
    ratio: float
    basis: str
    warnings: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line such as ``"Cement 5.3 mL (band 3.6-7.0 mL), predicted filling 77 %"``."""
        lo, hi = self.band_ml
        out = f"Cement {self.suggested_ml:.1f} mL (band {lo:.1f}-{hi:.1f} mL)"
        if self.cap_ml is not None:
            out += f", geometric cap {self.cap_ml:.1f} mL"
        if self.predicted_filling is not None:
            out += f", predicted filling {100 * self.predicted_filling:.0f} %"
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (lists for tuples)."""
        return {
            "suggested_ml": self.suggested_ml,
            "band_ml": list(self.band_ml),
            "cap_ml": self.cap_ml,
            "predicted_filling": self.predicted_filling,
            "ratio": self.ratio,
            "basis": self.basis,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: object) -> CementSuggestion:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        PlanningParameterError
            A field is missing or ill-typed (the message names it).
        """
        keys = {
            "suggested_ml",
            "band_ml",
            "cap_ml",
            "predicted_filling",
            "ratio",
            "basis",
            "warnings",
        }
        if not isinstance(data, dict) or set(data) != keys:
            raise PlanningParameterError(f"cement must be an object with {', '.join(sorted(keys))}")
        band = data["band_ml"]
        if not isinstance(band, list) or len(band) != 2:
            raise PlanningParameterError("cement.band_ml must be [low, high]")
        if not isinstance(data["basis"], str):
            raise PlanningParameterError("cement.basis must be a string")
        warnings = data["warnings"]
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise PlanningParameterError("cement.warnings must be a list of strings")
        cap, fill = data["cap_ml"], data["predicted_filling"]
        return cls(
            suggested_ml=require_number(data["suggested_ml"], "cement.suggested_ml", low=0),
            band_ml=(
                require_number(band[0], "cement.band_ml[0]", low=0),
                require_number(band[1], "cement.band_ml[1]", low=0),
            ),
            cap_ml=None if cap is None else require_number(cap, "cement.cap_ml", low=0),
            predicted_filling=(
                None if fill is None else require_number(fill, "cement.predicted_filling", low=0)
            ),
            ratio=require_number(data["ratio"], "cement.ratio", low=0),
            basis=data["basis"],
            warnings=tuple(warnings),
        )


def _basis(cohort: _Cohort, rules: _CementRules) -> str:
    lo, hi = rules.clip_ml
    return (
        f"Cement = {cohort.ratio:.2f} × lesion volume: the ratio of the group means in "
        f"{rules.source} ({cohort.label}, {cohort.n_patients} patients, {cohort.n_lesions} "
        f"lesions: lesion {cohort.lesion_ml_mean:.2f}±{cohort.lesion_ml_sd:.2f} mL, cement "
        f"{cohort.cement_ml_mean:.2f}±{cohort.cement_ml_sd:.2f} mL, mean filling "
        f"{100 * cohort.filling_degree_mean:.0f} %). It comes from cohort means, not from a "
        f"model fitted to individual lesions. The band is ±{rules.band_half_width_ml:.1f} mL "
        f"(about one cohort SD), limited to the {lo:g}-{hi:g} mL the cohort injected and to "
        "what fits the anatomy. Injection still stops when cement reaches the posterior wall, "
        "a foramen edge or the SI-joint margin."
    )


def suggest_cement(
    lesion_volume_ml: float,
    *,
    with_rfa: bool,
    lesion_max_diameter_mm: float | None = None,
    geometric_cap_ml: float | None = None,
) -> CementSuggestion:
    """Suggest a cement volume for one lesion.

    Parameters
    ----------
    lesion_volume_ml : float
        Segmented lesion volume, mL (> 0).
    with_rfa : bool
        Whether RFA precedes the cement (ratio 0.89 instead of 0.79).
    lesion_max_diameter_mm : float, optional
        Largest lesion diameter, mm; needed for the predicted filling degree and the
        >30 mm warning.
    geometric_cap_ml : float, optional
        What fits the anatomy, mL (see :func:`geometric_cement_cap`).

    Returns
    -------
    CementSuggestion

    Raises
    ------
    PlanningParameterError
        A volume, diameter or cap that is not a positive finite number.
    """
    if not isinstance(with_rfa, bool):
        raise PlanningParameterError(f"with_rfa must be true or false, got {with_rfa!r}")
    rules = _rules()
    cohort = rules.cohorts["psp_rfa" if with_rfa else "psp_alone"]
    volume = require_number(lesion_volume_ml, "lesion volume (mL)", low=0.0)
    if volume <= 0.0:
        raise PlanningParameterError("lesion volume must be above 0 mL; segment the lesion first")
    diameter = (
        None
        if lesion_max_diameter_mm is None
        else require_number(lesion_max_diameter_mm, "lesion largest diameter (mm)", low=0.0)
    )
    cap = (
        None
        if geometric_cap_ml is None
        else require_number(geometric_cap_ml, "geometric cement cap (mL)", low=0.0)
    )
    lo, hi = rules.clip_ml
    half = rules.band_half_width_ml
    warnings: list[str] = []

    raw = cohort.ratio * volume
    suggested = min(max(raw, lo), hi)
    band = (min(max(raw - half, lo), hi), min(max(raw + half, lo), hi))
    if raw < lo:
        warnings.append(
            f"{cohort.ratio:.2f} × {volume:.1f} mL = {raw:.1f} mL is below the cohort's least "
            f"injection; raised to {lo:g} mL. Check that the lesion segmentation is complete."
        )
    elif raw > hi:
        warnings.append(
            f"{cohort.ratio:.2f} × {volume:.1f} mL = {raw:.1f} mL is above the cohort's largest "
            f"injection; limited to {hi:g} mL, beyond which there is no cohort evidence."
        )
    spread = 2.0 * cohort.lesion_ml_sd
    if not cohort.lesion_ml_mean - spread <= volume <= cohort.lesion_ml_mean + spread:
        warnings.append(
            f"The lesion ({volume:.1f} mL) lies outside most of the cohort's lesions "
            f"({cohort.lesion_ml_mean:.2f}±{cohort.lesion_ml_sd:.2f} mL); the ratio is "
            "extrapolated."
        )
    if diameter is not None and diameter > rules.cohort_max_lesion_diameter_mm:
        warnings.append(
            f"The lesion's largest diameter ({diameter:.0f} mm) exceeds the cohort's "
            f"{rules.cohort_max_lesion_diameter_mm:.0f} mm limit; the suggestion is extrapolated."
        )
    if cap is not None:
        if cap < suggested:
            warnings.append(
                f"Limited by the anatomy to {cap:.1f} mL (lesion plus a thin shell, kept "
                f"{rules.keep_out_mm:g} mm from foramina, canal, posterior wall and SI joint)."
            )
        if cap < lo:
            warnings.append(
                f"Less than {lo:g} mL fits safely; reconsider the target or the margins."
            )
        suggested = min(suggested, cap)
        band = (min(band[0], cap), min(band[1], cap))
    filling = None
    if diameter is not None and diameter > 0.0:
        filling = min(1.0, sphere_diameter_mm(suggested) / diameter) if suggested > 0 else 0.0
    return CementSuggestion(
        suggested_ml=suggested,
        band_ml=band,
        cap_ml=cap,
        predicted_filling=filling,
        ratio=cohort.ratio,
        basis=_basis(cohort, rules),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True)
class CementCap:
    """The volume cement may fill while keeping its distance from the danger zones.

    Attributes
    ----------
    cap_ml : float
        Lesion plus shell, minus every voxel closer than the keep-out distance to a
        structure, mL.
    lesion_ml : float
        Lesion volume, mL.
    shell_ml : float
        Volume of the shell around the lesion (within ``shell_mm``, restricted to bone when
        a bone mask is given), mL.
    excluded_ml : dict of str to float
        Volume of lesion plus shell that each structure's keep-out zone removes, mL (zones
        may overlap, so these need not add up).
    """

    cap_ml: float
    lesion_ml: float
    shell_ml: float
    excluded_ml: dict[str, float]


def _spacing_zyx(spacing_xyz: object) -> np.ndarray:
    sp = np.asarray(spacing_xyz, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise PlanningParameterError(
            f"spacing must be three positive numbers (x, y, z) in mm: {sp}"
        )
    return sp[::-1]


def cement_margin_voxels(spacing_xyz: np.ndarray, *, shell_mm: float | None = None) -> np.ndarray:
    """How far (voxels, ``[k, j, i]``) :func:`cement_box` reaches beyond the lesion's voxels.

    Parameters
    ----------
    spacing_xyz : (3,) float ndarray, mm
        Voxel spacing in ``(x, y, z)`` order.
    shell_mm : float, optional, keyword-only
        Shell thickness, mm (default from ``resources/cement.json``).

    Returns
    -------
    (3,) int ndarray

    Raises
    ------
    PlanningParameterError
        The spacing or shell is not valid.
    """
    shell = _rules().shell_mm if shell_mm is None else require_number(shell_mm, "shell (mm)", low=0)
    return np.ceil(shell / _spacing_zyx(spacing_xyz)).astype(int) + 1


def cement_box(
    lesion_mask: np.ndarray, spacing_xyz: np.ndarray, *, shell_mm: float | None = None
) -> tuple[slice, slice, slice]:
    """The part of the grid :func:`geometric_cement_cap` reads: the lesion's bounding box grown
    by the shell (plus one voxel), clipped to the grid.

    Callers holding large keep-out fields can pass only this box of them (with the lesion and
    bone masks cut the same way): the cap is the same.

    Parameters
    ----------
    lesion_mask : (K, J, I) bool ndarray
        Lesion voxels, indexed ``[k, j, i]``; not empty.
    spacing_xyz : (3,) float ndarray, mm
        Voxel spacing in ``(x, y, z)`` order.
    shell_mm : float, optional, keyword-only
        Shell thickness, mm (default from ``resources/cement.json``).

    Returns
    -------
    tuple of 3 slices
        ``[k, j, i]`` slices of the box.

    Raises
    ------
    PlanningParameterError
        The lesion is empty, or the spacing or shell is not valid.
    """
    lesion = np.asarray(lesion_mask, dtype=bool)
    if lesion.ndim != 3 or not lesion.any():
        raise PlanningParameterError("the lesion mask is empty; segment the lesion first")
    pad = cement_margin_voxels(spacing_xyz, shell_mm=shell_mm)
    idx = np.nonzero(lesion)
    lo = np.maximum(np.array([a.min() for a in idx]) - pad, 0)
    hi = np.minimum(np.array([a.max() for a in idx]) + pad + 1, lesion.shape)
    k, j, i = (slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    return (k, j, i)


def geometric_cement_cap(
    lesion_mask: np.ndarray,
    spacing_xyz: np.ndarray,
    *,
    keep_out_distance_mm: Mapping[str, np.ndarray] | np.ndarray,
    bone_mask: np.ndarray | None = None,
    shell_mm: float | None = None,
    keep_out_mm: float | None = None,
) -> CementCap:
    """What fits in the lesion plus a thin cancellous shell, away from the danger zones.

    The paper's stop rule (cement reaching the posterior wall, a foramen edge or the
    SI-joint margin) made geometric: count the voxels of the lesion and of a shell
    ``shell_mm`` thick around it (inside bone when ``bone_mask`` is given), and drop those
    closer than ``keep_out_mm`` to any structure.

    Parameters
    ----------
    lesion_mask : (K, J, I) bool ndarray
        Lesion voxels, indexed ``[k, j, i]``.
    spacing_xyz : (3,) float ndarray, mm
        Voxel spacing in ``(x, y, z)`` = ``(i, j, k)`` order.
    keep_out_distance_mm : mapping of str to (K, J, I) float ndarray, or (K, J, I) ndarray
        Distance to each structure's surface in mm on the same grid, signed or not (positive
        outside, negative or zero inside), e.g. ``{"foramina": ..., "canal": ...,
        "posterior_wall": ..., "si_joint": ...}``; a single array is one combined field.
        NaN counts as too close.
    bone_mask : (K, J, I) bool ndarray, optional
        Bone voxels; the shell is kept inside them (cancellous bone, not soft tissue).
    shell_mm : float, optional
        Shell thickness, mm (default 2 mm from ``resources/cement.json``).
    keep_out_mm : float, optional
        Least distance to every structure, mm (default 3 mm from ``resources/cement.json``).

    Returns
    -------
    CementCap

    Raises
    ------
    PlanningParameterError
        Shapes differ, the lesion is empty, or a distance or spacing is not valid.
    """
    rules = _rules()
    shell = rules.shell_mm if shell_mm is None else require_number(shell_mm, "shell (mm)", low=0)
    keep = (
        rules.keep_out_mm
        if keep_out_mm is None
        else require_number(keep_out_mm, "keep-out distance (mm)", low=0)
    )
    lesion = np.asarray(lesion_mask, dtype=bool)
    if lesion.ndim != 3:
        raise PlanningParameterError(f"lesion mask must be 3-D [k, j, i], got shape {lesion.shape}")
    if not lesion.any():
        raise PlanningParameterError("the lesion mask is empty; segment the lesion first")
    sp = _spacing_zyx(spacing_xyz)
    fields = (
        {"keep-out": keep_out_distance_mm}
        if isinstance(keep_out_distance_mm, np.ndarray)
        else dict(keep_out_distance_mm)
    )
    for name, field in fields.items():
        if np.shape(field) != lesion.shape:
            raise PlanningParameterError(
                f"distance field {name!r} has shape {np.shape(field)}, the lesion mask "
                f"{lesion.shape}; both must be on the same grid"
            )
    if bone_mask is not None and np.shape(bone_mask) != lesion.shape:
        raise PlanningParameterError("bone mask and lesion mask must be on the same grid")

    box = cement_box(lesion, spacing_xyz, shell_mm=shell)
    les = lesion[box]
    dist = ndimage.distance_transform_edt(~les, sampling=sp)
    shell_region = (dist > 0) & (dist <= shell)
    if bone_mask is not None:
        shell_region &= np.asarray(bone_mask, dtype=bool)[box]
    region = les | shell_region

    voxel_ml = float(np.prod(sp)) * _ML_PER_MM3
    allowed = region.copy()
    excluded: dict[str, float] = {}
    for name, field in fields.items():
        near = ~(np.asarray(field)[box] >= keep)
        excluded[name] = float(np.count_nonzero(region & near)) * voxel_ml
        allowed &= ~near
    return CementCap(
        cap_ml=float(np.count_nonzero(allowed)) * voxel_ml,
        lesion_ml=float(np.count_nonzero(les)) * voxel_ml,
        shell_ml=float(np.count_nonzero(shell_region)) * voxel_ml,
        excluded_ml=excluded,
    )


def geometric_cement_cap_ml(
    lesion_mask: np.ndarray,
    spacing_xyz: np.ndarray,
    *,
    keep_out_distance_mm: Mapping[str, np.ndarray] | np.ndarray,
    bone_mask: np.ndarray | None = None,
    shell_mm: float | None = None,
    keep_out_mm: float | None = None,
) -> float:
    """:func:`geometric_cement_cap`'s ``cap_ml`` alone (same parameters), mL."""
    return geometric_cement_cap(
        lesion_mask,
        spacing_xyz,
        keep_out_distance_mm=keep_out_distance_mm,
        bone_mask=bone_mask,
        shell_mm=shell_mm,
        keep_out_mm=keep_out_mm,
    ).cap_ml
