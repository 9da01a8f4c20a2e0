"""Radiofrequency ablation planning (DESIGN 5.7): zones, overlaps, tracks and thermal safety.

One ablation is modelled as a prolate ellipsoid along the electrode, ``zone_length_mm``
long (about the active tip + 2 x 2.5 mm) and ``zone_diameter_mm`` wide, from the device
table ``resources/rfa_devices.json`` (typical manufacturer values; edit it for your device).

* Overlapping ablations along one track (pull-back technique, deepest first):
  ``N = ceil((extent - L) / ((1 - overlap) L)) + 1``, at least 1, with ``overlap = 0.5``
  from the data file, i.e. DESIGN's ``ceil((extent - L) / (0.5 L)) + 1``.
* Parallel tracks when the lesion is wider than one zone, by the same rule across with
  ``overlap_fraction_across_tracks`` (0 in the shipped table: ``ceil(width / diameter)``).
* Thermal safety from the distance between the **zone's edge** and the foramina and canal:
  >= 10 mm allowed; 5-10 mm warn (thermocouple or thermal protection); < 5 mm, or no intact
  cortex between zone and nerves, advise PSP alone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np

from imaging.errors import PlanningParameterError, ResourceDataError
from planning.needles import get_needle, read_resource_json, require_number

Safety = Literal["allowed", "warn", "advise_psp_alone"]
SAFETY_LEVELS: tuple[str, ...] = ("allowed", "warn", "advise_psp_alone")


@dataclass(frozen=True)
class RfaDevice:
    """One RF electrode and the ablation zone it makes.

    Attributes
    ----------
    id : str
        Stable id (``"17G-rfa-20"``).
    label : str
        Plain name.
    needle_id : str
        The electrode's row in the needle catalogue (gauge, length, outer diameter).
    active_tip_mm : float
        Active tip length, mm.
    zone_length_mm : float
        Ablation zone length along the electrode, mm.
    zone_diameter_mm : float
        Ablation zone diameter across the electrode, mm.
    """

    id: str
    label: str
    needle_id: str
    active_tip_mm: float
    zone_length_mm: float
    zone_diameter_mm: float


@dataclass(frozen=True)
class _RfaRules:
    source: str
    overlap_along: float
    overlap_across: float
    allowed_min_mm: float
    warn_min_mm: float
    evidence: str
    devices: dict[str, RfaDevice]


def _evidence(cohort: dict[str, Any]) -> str:
    t_lo, t_hi = cohort["tip_temperature_c"]
    return (
        f"In the reference cohort ({cohort['source']}; PSP+RFA, {cohort['n_patients']} "
        f"patients, {cohort['n_lesions']} lesions, {cohort['electrode']}) lesions needed on "
        f"average {cohort['mean_overlapping_ablations']:.2f} overlapping ablations taking "
        f"{cohort['mean_ablation_time_min']:.1f} min in all, at {cohort['power_w']} W with "
        f"{t_lo}-{t_hi} °C at the tip; an ablation counted as complete at "
        f"{cohort['complete_temperature_c']} °C held for at least {cohort['complete_minutes']} "
        f"min or after {cohort['complete_impedance_rolloffs']} impedance roll-offs. RFA was "
        "stopped at once if neurological symptoms appeared."
    )


@functools.cache
def _rules() -> _RfaRules:
    data = read_resource_json("rfa_devices.json")
    try:
        margin = float(data["zone_end_margin_mm"])
        devices: dict[str, RfaDevice] = {}
        for row in data["devices"]:
            tip = float(row["active_tip_mm"])
            dev = RfaDevice(
                id=str(row["id"]),
                label=str(row["label"]),
                needle_id=str(row["needle_id"]),
                active_tip_mm=tip,
                zone_length_mm=float(row.get("zone_length_mm", tip + 2.0 * margin)),
                zone_diameter_mm=float(row["zone_diameter_mm"]),
            )
            if dev.id in devices:
                raise ResourceDataError(f"resources/rfa_devices.json: device {dev.id!r} repeats")
            if not (0 < dev.active_tip_mm <= dev.zone_length_mm and dev.zone_diameter_mm > 0):
                raise ResourceDataError(
                    f"resources/rfa_devices.json: device {dev.id!r} needs 0 < active tip <= "
                    "zone length and a positive zone diameter"
                )
            devices[dev.id] = dev
        rules = _RfaRules(
            source=str(data["source"]),
            overlap_along=float(data["overlap_fraction_along_track"]),
            overlap_across=float(data["overlap_fraction_across_tracks"]),
            allowed_min_mm=float(data["safety_mm"]["allowed_min"]),
            warn_min_mm=float(data["safety_mm"]["warn_min"]),
            evidence=_evidence(data["cohort"]),
            devices=devices,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResourceDataError(f"resources/rfa_devices.json is malformed ({exc!r})") from exc
    if not devices or not (0 <= rules.overlap_along < 1 and 0 <= rules.overlap_across < 1):
        raise ResourceDataError(
            "resources/rfa_devices.json needs at least one device and overlap fractions in [0, 1)"
        )
    if not 0 <= rules.warn_min_mm <= rules.allowed_min_mm:
        raise ResourceDataError("resources/rfa_devices.json: need 0 <= warn_min <= allowed_min")
    return rules


def rfa_devices() -> tuple[RfaDevice, ...]:
    """All devices of ``resources/rfa_devices.json``, in file order."""
    return tuple(_rules().devices.values())


def get_rfa_device(device_id: str) -> RfaDevice:
    """Look a device up by id.

    Raises
    ------
    PlanningParameterError
        No device has this id; the message lists the valid ids.
    """
    devices = _rules().devices
    try:
        return devices[device_id]
    except (KeyError, TypeError):
        raise PlanningParameterError(
            f"unknown RFA device {device_id!r}; the table has: {', '.join(devices)}"
        ) from None


def rfa_evidence() -> str:
    """The cohort's RFA figures as one plain paragraph."""
    return _rules().evidence


def _count(extent_mm: float, size_mm: float, overlap: float) -> int:
    if extent_mm <= size_mm:
        return 1
    return math.ceil((extent_mm - size_mm) / ((1.0 - overlap) * size_mm) - 1e-9) + 1


def ablations_along_track(extent_mm: float, zone_length_mm: float) -> int:
    """Overlapping ablations needed to cover ``extent_mm`` along one track (at least 1)."""
    return _count(extent_mm, zone_length_mm, _rules().overlap_along)


def tracks_across(width_mm: float, zone_diameter_mm: float) -> int:
    """Parallel tracks needed to cover a lesion ``width_mm`` wide (at least 1)."""
    return _count(width_mm, zone_diameter_mm, _rules().overlap_across)


def _centres_from_deep_end(extent_mm: float, length_mm: float, n: int) -> list[float]:
    """Zone centres measured back from the lesion's deep end, spread symmetrically."""
    step = (1.0 - _rules().overlap_along) * length_mm
    span = length_mm + (n - 1) * step
    first = length_mm / 2.0 - (span - extent_mm) / 2.0
    return [first + i * step for i in range(n)]


@dataclass(frozen=True)
class RfaPlan:
    """An RFA plan for one lesion and one electrode.

    Attributes
    ----------
    device : str
        Device id.
    zone_length_mm, zone_diameter_mm : float
        One ablation zone's size, mm.
    lesion_extent_mm : float
        Lesion extent along the track, mm.
    lesion_width_mm : float
        Lesion width across the track, mm.
    n_ablations : int
        Overlapping ablations along each track.
    n_tracks : int
        Parallel tracks (needles) to cover the lesion's width.
    centres_back_from_tip_mm : tuple of float
        Where to put the middle of the active tip for each ablation, deepest first, in mm
        back from the needle tip toward the entry (negative = beyond the tip). Without a
        known tip the tip is taken at the lesion's deep end.
    centres_lps : tuple of (float, float, float), or None
        The same centres as LPS points (mm) when entry and tip are known.
    zone_edge_to_foramen_mm, zone_edge_to_canal_mm : float or None
        Distance from the zone's edge to the nearest foramen / the canal, mm (``None`` =
        not given).
    safety : {"allowed", "warn", "advise_psp_alone"}
        Thermal-safety verdict.
    safety_reason : str
        Why, in plain words.
    evidence : str
        The cohort's RFA figures.
    warnings : tuple of str
        Other cautions (several tracks, many ablations).
    """

    device: str
    zone_length_mm: float
    zone_diameter_mm: float
    lesion_extent_mm: float
    lesion_width_mm: float
    n_ablations: int
    n_tracks: int
    centres_back_from_tip_mm: tuple[float, ...]
    centres_lps: tuple[tuple[float, float, float], ...] | None
    zone_edge_to_foramen_mm: float | None
    zone_edge_to_canal_mm: float | None
    safety: Safety
    safety_reason: str
    evidence: str
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (lists for tuples)."""
        return {
            "device": self.device,
            "zone_length_mm": self.zone_length_mm,
            "zone_diameter_mm": self.zone_diameter_mm,
            "lesion_extent_mm": self.lesion_extent_mm,
            "lesion_width_mm": self.lesion_width_mm,
            "n_ablations": self.n_ablations,
            "n_tracks": self.n_tracks,
            "centres_back_from_tip_mm": list(self.centres_back_from_tip_mm),
            "centres_lps": None
            if self.centres_lps is None
            else [list(p) for p in self.centres_lps],
            "zone_edge_to_foramen_mm": self.zone_edge_to_foramen_mm,
            "zone_edge_to_canal_mm": self.zone_edge_to_canal_mm,
            "safety": self.safety,
            "safety_reason": self.safety_reason,
            "evidence": self.evidence,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: object) -> RfaPlan:
        """Inverse of :meth:`to_json`.

        Raises
        ------
        PlanningParameterError
            A field is missing or ill-typed (the message names it).
        """
        keys = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != keys:
            raise PlanningParameterError(f"rfa must be an object with {', '.join(sorted(keys))}")
        for key in ("device", "safety_reason", "evidence"):
            if not isinstance(data[key], str):
                raise PlanningParameterError(f"rfa.{key} must be a string")
        if data["safety"] not in SAFETY_LEVELS:
            raise PlanningParameterError(f"rfa.safety must be one of {', '.join(SAFETY_LEVELS)}")
        for key in ("n_ablations", "n_tracks"):
            v = data[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanningParameterError(f"rfa.{key} must be a whole number >= 1")
        centres = data["centres_back_from_tip_mm"]
        if not isinstance(centres, list):
            raise PlanningParameterError("rfa.centres_back_from_tip_mm must be a list")
        pts = data["centres_lps"]
        if pts is not None and (
            not isinstance(pts, list) or not all(isinstance(p, list) and len(p) == 3 for p in pts)
        ):
            raise PlanningParameterError("rfa.centres_lps must be a list of [x, y, z] or null")
        warnings = data["warnings"]
        if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
            raise PlanningParameterError("rfa.warnings must be a list of strings")

        def num(key: str) -> float:
            return require_number(data[key], f"rfa.{key}")

        def opt(key: str) -> float | None:
            return None if data[key] is None else num(key)

        return cls(
            device=data["device"],
            zone_length_mm=num("zone_length_mm"),
            zone_diameter_mm=num("zone_diameter_mm"),
            lesion_extent_mm=num("lesion_extent_mm"),
            lesion_width_mm=num("lesion_width_mm"),
            n_ablations=data["n_ablations"],
            n_tracks=data["n_tracks"],
            centres_back_from_tip_mm=tuple(
                require_number(c, "rfa.centres_back_from_tip_mm[]") for c in centres
            ),
            centres_lps=None
            if pts is None
            else tuple(
                cast(
                    tuple[float, float, float],
                    tuple(require_number(v, "rfa.centres_lps[]") for v in p),
                )
                for p in pts
            ),
            zone_edge_to_foramen_mm=opt("zone_edge_to_foramen_mm"),
            zone_edge_to_canal_mm=opt("zone_edge_to_canal_mm"),
            safety=data["safety"],
            safety_reason=data["safety_reason"],
            evidence=data["evidence"],
            warnings=tuple(warnings),
        )


def _safety(
    edges: dict[str, float | None], *, intact_cortex_between: bool, rules: _RfaRules
) -> tuple[Safety, str]:
    known = {name: d for name, d in edges.items() if d is not None}
    if not intact_cortex_between:
        return (
            "advise_psp_alone",
            "No intact cortex separates the ablation zone from the sacral nerves or canal; "
            "heat would reach them unshielded. Advise PSP alone.",
        )
    if not known:
        return (
            "warn",
            "No foramen or canal distance was given: measure the zone's distance to the sacral "
            "nerves and canal before ablating.",
        )
    name, edge = min(known.items(), key=lambda kv: kv[1])
    if edge < rules.warn_min_mm:
        return (
            "advise_psp_alone",
            f"The ablation zone's edge would be {edge:.1f} mm from the {name} (under "
            f"{rules.warn_min_mm:g} mm). Advise PSP alone.",
        )
    if edge < rules.allowed_min_mm:
        return (
            "warn",
            f"The ablation zone's edge would be {edge:.1f} mm from the {name} "
            f"({rules.warn_min_mm:g}-{rules.allowed_min_mm:g} mm): ablate only with a "
            f"thermocouple near the {name} or thermal protection, and stop at any neurological "
            "symptom.",
        )
    return (
        "allowed",
        f"The ablation zone's edge stays {edge:.1f} mm from the nearest neural structure "
        f"(the {name}; at least {rules.allowed_min_mm:g} mm).",
    )


def _plan(
    extent_mm: float,
    width_mm: float,
    *,
    device: RfaDevice | str,
    clearance_to_foramen_mm: float | None,
    clearance_to_canal_mm: float | None,
    intact_cortex_between: bool,
    needle_od_mm: float | None,
    deep_end_beyond_tip_mm: float | None,
    entry: np.ndarray | None,
    direction: np.ndarray | None,
    deep_end_s_mm: float | None,
) -> RfaPlan:
    rules = _rules()
    dev = get_rfa_device(device) if isinstance(device, str) else device
    extent = require_number(extent_mm, "lesion extent along the track (mm)", low=0.0)
    width = require_number(width_mm, "lesion width across the track (mm)", low=0.0)
    if not isinstance(intact_cortex_between, bool):
        raise PlanningParameterError("intact_cortex_between must be true or false")
    od = (
        get_needle(dev.needle_id).outer_diameter_mm
        if needle_od_mm is None
        else require_number(needle_od_mm, "needle outer diameter (mm)", low=0.0)
    )
    # Needle-surface clearance + needle radius = axis distance; minus the zone radius = edge.
    to_edge = od / 2.0 - dev.zone_diameter_mm / 2.0
    edges: dict[str, float | None] = {}
    for name, clearance in (
        ("nearest foramen", clearance_to_foramen_mm),
        ("spinal canal", clearance_to_canal_mm),
    ):
        edges[name] = (
            None
            if clearance is None
            else require_number(clearance, f"clearance to the {name} (mm)") + to_edge
        )
    safety, reason = _safety(edges, intact_cortex_between=intact_cortex_between, rules=rules)

    n_abl = ablations_along_track(extent, dev.zone_length_mm)
    n_tracks = tracks_across(width, dev.zone_diameter_mm)
    from_deep = _centres_from_deep_end(extent, dev.zone_length_mm, n_abl)
    beyond = 0.0 if deep_end_beyond_tip_mm is None else deep_end_beyond_tip_mm
    centres_back = tuple(c - beyond for c in from_deep)
    centres_lps = None
    if entry is not None and direction is not None and deep_end_s_mm is not None:
        centres_lps = tuple(
            cast(
                tuple[float, float, float],
                tuple(float(v) for v in entry + (deep_end_s_mm - c) * direction),
            )
            for c in from_deep
        )
    warnings: list[str] = []
    if n_tracks > 1:
        warnings.append(
            f"The lesion is {width:.0f} mm wide, more than one zone ({dev.zone_diameter_mm:.0f} "
            f"mm): plan {n_tracks} parallel tracks or a device with a wider zone."
        )
    return RfaPlan(
        device=dev.id,
        zone_length_mm=dev.zone_length_mm,
        zone_diameter_mm=dev.zone_diameter_mm,
        lesion_extent_mm=extent,
        lesion_width_mm=width,
        n_ablations=n_abl,
        n_tracks=n_tracks,
        centres_back_from_tip_mm=centres_back,
        centres_lps=centres_lps,
        zone_edge_to_foramen_mm=edges["nearest foramen"],
        zone_edge_to_canal_mm=edges["spinal canal"],
        safety=safety,
        safety_reason=reason,
        evidence=rules.evidence,
        warnings=tuple(warnings),
    )


def plan_rfa(
    lesion_extent_along_track_mm: float,
    lesion_width_mm: float,
    *,
    device: RfaDevice | str,
    clearance_to_foramen_mm: float | None,
    clearance_to_canal_mm: float | None,
    intact_cortex_between: bool,
    needle_od_mm: float | None = None,
) -> RfaPlan:
    """Plan the ablations for a lesion of known extent along and across the track.

    Parameters
    ----------
    lesion_extent_along_track_mm : float
        Lesion length along the needle, mm.
    lesion_width_mm : float
        Largest lesion width across the needle, mm.
    device : RfaDevice or str
        The electrode (or its id in ``resources/rfa_devices.json``).
    clearance_to_foramen_mm, clearance_to_canal_mm : float or None
        Needle-surface clearance to the nearest foramen / the canal along the ablated part of
        the track, mm, as trajectory candidates report it (axis distance minus the needle's
        radius); the whole-path minimum is a conservative stand-in. ``None`` = not known.
    intact_cortex_between : bool
        Whether intact cortex separates the lesion from the foramina and canal.
    needle_od_mm : float, optional
        Outer diameter the clearances were measured with, mm (default: the electrode's).

    Returns
    -------
    RfaPlan
        Centres are measured back from the lesion's deep end, where the tip is assumed.

    Raises
    ------
    PlanningParameterError
        Unknown device, or a size or clearance that is not a valid number.
    """
    return _plan(
        lesion_extent_along_track_mm,
        lesion_width_mm,
        device=device,
        clearance_to_foramen_mm=clearance_to_foramen_mm,
        clearance_to_canal_mm=clearance_to_canal_mm,
        intact_cortex_between=intact_cortex_between,
        needle_od_mm=needle_od_mm,
        deep_end_beyond_tip_mm=None,
        entry=None,
        direction=None,
        deep_end_s_mm=None,
    )


def lesion_extent_along_track(
    entry_lps: np.ndarray,
    tip_lps: np.ndarray,
    lesion_points_lps: np.ndarray,
    *,
    pad_mm: float = 0.0,
) -> tuple[float, float, float, float]:
    """Measure a lesion along and across a needle track.

    Parameters
    ----------
    entry_lps, tip_lps : (3,) float ndarray, mm, LPS
        Needle entry and tip.
    lesion_points_lps : (N, 3) float ndarray, mm, LPS
        Lesion points (e.g. voxel centres of the mask through ``Volume.index_to_world``).
    pad_mm : float
        Added to both extents, e.g. one voxel size to count voxels rather than centres.

    Returns
    -------
    extent_mm : float
        Lesion length along the track, mm.
    width_mm : float
        Largest caliper width across the track, mm (within 0.1 %).
    near_s_mm, deep_s_mm : float
        Distances from the entry along the track to the lesion's near and deep ends, mm.

    Raises
    ------
    PlanningParameterError
        Entry and tip coincide, or the points are not a finite (N, 3) array.
    """
    entry = np.asarray(entry_lps, dtype=np.float64)
    tip = np.asarray(tip_lps, dtype=np.float64)
    pts = np.asarray(lesion_points_lps, dtype=np.float64)
    if entry.shape != (3,) or tip.shape != (3,) or not np.all(np.isfinite([entry, tip])):
        raise PlanningParameterError("entry and tip must each be three finite numbers (LPS, mm)")
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise PlanningParameterError("lesion points must be a non-empty finite (N, 3) array")
    length = float(np.linalg.norm(tip - entry))
    if length < 1e-6:
        raise PlanningParameterError("needle entry and tip coincide")
    pad = require_number(pad_mm, "padding (mm)", low=0.0)
    u = (tip - entry) / length
    rel = pts - entry
    s = rel @ u
    # Two unit vectors spanning the plane across the track.
    helper = np.eye(3)[int(np.argmin(np.abs(u)))]
    a = np.cross(u, helper)
    a /= np.linalg.norm(a)
    b = np.cross(u, a)
    angles = np.radians(np.arange(0.0, 180.0, 5.0))
    dirs = np.outer(np.cos(angles), a) + np.outer(np.sin(angles), b)
    proj = rel @ dirs.T
    width = float(np.max(proj.max(axis=0) - proj.min(axis=0)))
    return float(s.max() - s.min()) + pad, width + pad, float(s.min()), float(s.max())


def plan_rfa_for_track(
    entry_lps: np.ndarray,
    tip_lps: np.ndarray,
    lesion_points_lps: np.ndarray,
    *,
    device: RfaDevice | str,
    clearance_to_foramen_mm: float | None,
    clearance_to_canal_mm: float | None,
    intact_cortex_between: bool,
    needle_od_mm: float | None = None,
    pad_mm: float = 0.0,
) -> RfaPlan:
    """Plan the ablations along a given needle track through a lesion.

    As :func:`plan_rfa`, with the lesion's extent and width measured from its points along
    the track from ``entry_lps`` to ``tip_lps`` (see :func:`lesion_extent_along_track`),
    centres given back from the actual tip and as LPS points (``centres_lps``).

    Parameters
    ----------
    entry_lps, tip_lps : (3,) float ndarray, mm, LPS
        Needle entry and tip.
    lesion_points_lps : (N, 3) float ndarray, mm, LPS
        Lesion points.
    device, clearance_to_foramen_mm, clearance_to_canal_mm, intact_cortex_between, needle_od_mm
        As in :func:`plan_rfa`.
    pad_mm : float
        Added to the measured extent and width (e.g. one voxel size).

    Raises
    ------
    PlanningParameterError
        As :func:`plan_rfa` and :func:`lesion_extent_along_track`.
    """
    extent, width, _, deep = lesion_extent_along_track(
        entry_lps, tip_lps, lesion_points_lps, pad_mm=pad_mm
    )
    entry = np.asarray(entry_lps, dtype=np.float64)
    tip = np.asarray(tip_lps, dtype=np.float64)
    length = float(np.linalg.norm(tip - entry))
    deep_end = deep + pad_mm / 2.0
    return _plan(
        extent,
        width,
        device=device,
        clearance_to_foramen_mm=clearance_to_foramen_mm,
        clearance_to_canal_mm=clearance_to_canal_mm,
        intact_cortex_between=intact_cortex_between,
        needle_od_mm=needle_od_mm,
        deep_end_beyond_tip_mm=deep_end - length,
        entry=entry,
        direction=(tip - entry) / length,
        deep_end_s_mm=deep_end,
    )
