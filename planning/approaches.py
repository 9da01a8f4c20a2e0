"""The registry of needle approach families (data in ``resources/approaches.json``).

Each family is an entry region (rules on where the needle first enters bone), a cone of
travel directions in the sacral frame, whether it may cross the SI joint, and the Denis
zones the cohort rule admits it for. Adding an approach means adding one data entry (and,
for a new kind of entry rule, one function in :data:`ENTRY_RULES`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaging.errors import ResourceDataError
from planning.needles import read_resource_json

SIDES = ("left", "right", "midline")


@dataclass(frozen=True)
class SacralAxes:
    """The sacral frame as plain vectors (LPS mm).

    Attributes
    ----------
    origin : (3,) float ndarray, mm, LPS
        Centre of the S1 superior endplate.
    e_x, e_y, e_z : (3,) float ndarray
        Unit axes: patient left, posterior, toward the head along the endplate normal.
    """

    origin: np.ndarray
    e_x: np.ndarray
    e_y: np.ndarray
    e_z: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) matrix whose columns are ``e_x, e_y, e_z``."""
        return np.column_stack([self.e_x, self.e_y, self.e_z])

    def to_frame(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) -> sacral-frame coordinates (N, 3), mm."""
        return (np.asarray(points_lps, float) - self.origin) @ self.rotation

    def vectors_to_lps(self, vectors: np.ndarray) -> np.ndarray:
        """Sacral-frame direction vectors (N, 3) -> LPS vectors (N, 3)."""
        return np.asarray(vectors, float) @ self.rotation.T


@dataclass(frozen=True)
class Approach:
    """One approach family, as read from ``resources/approaches.json``."""

    key: str
    label: str
    description: str
    sides: tuple[str, ...]
    axis: tuple[float, float, float]
    cone_half_angle_deg: float
    step_deg: float
    entry_rules: tuple[str, ...]
    may_cross_si_joint: bool
    zones: tuple[int, ...]
    cohort_cases: int
    preference: float
    max_elevation_deg: float | None = None

    def describe(self) -> str:
        """A one-line plain description for tables and the "why?" panel."""
        return f"{self.label}: {self.description}"

    def axis_for_side(self, side: str) -> np.ndarray:
        """Unit travel direction (sacral frame) for ``side``; the right side mirrors x."""
        axis = np.asarray(self.axis, float)
        if side == "right":
            axis = axis * np.array([-1.0, 1.0, 1.0])
        return axis / np.linalg.norm(axis)

    def directions(self, side: str, axes: SacralAxes) -> np.ndarray:
        """Travel directions sampled in the cone, as LPS unit vectors.

        Directions are spaced about ``step_deg`` apart on concentric rings around the
        cone axis; ``max_elevation_deg`` (when set) keeps them within that angle of the
        S1 endplate plane.

        Returns
        -------
        (M, 3) float ndarray
            Unit vectors, LPS.
        """
        local = cone_directions(
            self.axis_for_side(side), self.cone_half_angle_deg, step_deg=self.step_deg
        )
        if self.max_elevation_deg is not None:
            elevation = np.degrees(np.arcsin(np.clip(local[:, 2], -1.0, 1.0)))
            local = local[np.abs(elevation) <= self.max_elevation_deg]
        return axes.vectors_to_lps(local)


def cone_directions(axis: np.ndarray, half_angle_deg: float, *, step_deg: float) -> np.ndarray:
    """Unit vectors within ``half_angle_deg`` of ``axis``, about ``step_deg`` apart.

    Parameters
    ----------
    axis : (3,) float ndarray
        Cone axis (any length).
    half_angle_deg, step_deg : float
        Cone half-angle and sampling step, degrees.

    Returns
    -------
    (M, 3) float ndarray
        The axis itself first, then rings of directions.
    """
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    out = [axis]
    for theta in np.arange(step_deg, half_angle_deg + 1e-9, step_deg):
        t = np.radians(theta)
        n = max(6, int(round(2 * np.pi * np.sin(t) / np.radians(step_deg))))
        phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
        ring = np.cos(t) * axis[None, :] + np.sin(t) * (
            np.cos(phi)[:, None] * u[None, :] + np.sin(phi)[:, None] * v[None, :]
        )
        out.extend(ring)
    return np.asarray(out)


# -- entry rules: where the needle first enters bone, in sacral-frame coordinates -----------
@dataclass(frozen=True)
class EntryContext:
    """What the entry rules look at, all in sacral-frame mm.

    Attributes
    ----------
    entry : (N, 3) float ndarray
        Where each needle first enters bone.
    target : (N, 3) float ndarray
        Each needle's tip.
    side_sign : float
        +1 for the left side, -1 for the right, 0 for midline.
    foramen_medial_x, foramen_lateral_x : Callable[[ndarray], ndarray]
        Medial and lateral foraminal border |x| (mm) at the given heights z.
    s2_z : float
        Height (z) of the S2 foramina's centres.
    s1_top_z : float
        Height (z) of the top of the S1 foramina; the S1 pedicles lie above it.
    s1_centre_x : float
        |x| of the S1 foramina's centres: the lateral end of the S1 pedicle column.
    """

    entry: np.ndarray
    target: np.ndarray
    side_sign: float
    foramen_medial_x: Callable[[np.ndarray], np.ndarray]
    foramen_lateral_x: Callable[[np.ndarray], np.ndarray]
    s2_z: float
    s1_top_z: float = np.inf
    s1_centre_x: float = 0.0


def _dorsal(c: EntryContext) -> np.ndarray:
    return c.entry[:, 1] > c.target[:, 1]


def _same_side(c: EntryContext) -> np.ndarray:
    if c.side_sign == 0:
        return np.ones(len(c.entry), bool)
    return c.entry[:, 0] * c.side_sign > 0


def _lateral_to_foramina(c: EntryContext) -> np.ndarray:
    return np.abs(c.entry[:, 0]) >= c.foramen_lateral_x(c.entry[:, 2])


def _medial_to_foramina(c: EntryContext) -> np.ndarray:
    return np.abs(c.entry[:, 0]) <= c.foramen_medial_x(c.entry[:, 2])


def _medial_or_s1_pedicle(c: EntryContext) -> np.ndarray:
    """Medial to the foramina, or above the S1 foramen no further out than its centre line:
    the S1 pedicle, which joins the body to the dorsal arch cranial to the S1 foramen."""
    pedicle = (c.entry[:, 2] >= c.s1_top_z) & (np.abs(c.entry[:, 0]) <= c.s1_centre_x)
    return _medial_to_foramina(c) | pedicle


def _caudal_to_s2(c: EntryContext) -> np.ndarray:
    return c.entry[:, 2] <= c.s2_z


ENTRY_RULES: dict[str, tuple[Callable[[EntryContext], np.ndarray], str]] = {
    "dorsal": (_dorsal, "enters from behind the target"),
    "same_side": (_same_side, "enters on the lesion's side"),
    "lateral_to_foramina": (_lateral_to_foramina, "enters lateral to the dorsal foramina"),
    "medial_to_foramina": (_medial_to_foramina, "enters medial to the foramina"),
    "medial_or_s1_pedicle": (
        _medial_or_s1_pedicle,
        "enters medial to the foramina or through the S1 pedicle above the S1 foramen",
    ),
    "caudal_to_s2": (_caudal_to_s2, "enters at or below the S2 foramina"),
}


def entry_rules_ok(approach: Approach, context: EntryContext) -> np.ndarray:
    """(N,) bool: which needles satisfy every entry rule of ``approach``."""
    ok = np.ones(len(context.entry), bool)
    for name in approach.entry_rules:
        ok &= ENTRY_RULES[name][0](context)
    return ok


# -- registry --------------------------------------------------------------------------------
def _approach_from_json(d: dict[str, Any]) -> Approach:
    try:
        approach = Approach(
            key=str(d["key"]),
            label=str(d["label"]),
            description=str(d["description"]),
            sides=tuple(str(s) for s in d["sides"]),
            axis=tuple(float(v) for v in d["axis"]),  # type: ignore[arg-type]
            cone_half_angle_deg=float(d["cone_half_angle_deg"]),
            step_deg=float(d["step_deg"]),
            entry_rules=tuple(str(r) for r in d["entry_rules"]),
            may_cross_si_joint=bool(d["may_cross_si_joint"]),
            zones=tuple(int(z) for z in d["zones"]),
            cohort_cases=int(d["cohort_cases"]),
            preference=float(d["preference"]),
            max_elevation_deg=(
                None if d.get("max_elevation_deg") is None else float(d["max_elevation_deg"])
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResourceDataError(f"resources/approaches.json: bad approach entry ({exc})") from exc
    if len(approach.axis) != 3 or not np.linalg.norm(approach.axis) > 0:
        raise ResourceDataError(f"resources/approaches.json: {approach.key}: bad axis")
    unknown = [r for r in approach.entry_rules if r not in ENTRY_RULES]
    if unknown or not set(approach.sides) <= set(SIDES):
        raise ResourceDataError(
            f"resources/approaches.json: {approach.key}: unknown rule or side {unknown}"
        )
    if not (0 < approach.step_deg <= approach.cone_half_angle_deg <= 90):
        raise ResourceDataError(f"resources/approaches.json: {approach.key}: bad cone")
    return approach


@functools.cache
def approach_registry() -> dict[str, Approach]:
    """Every approach family by its stable key, in the data file's order."""
    data = read_resource_json("approaches.json")
    approaches = [_approach_from_json(d) for d in data.get("approaches", [])]
    registry = {a.key: a for a in approaches}
    if len(registry) != len(approaches):
        raise ResourceDataError("resources/approaches.json: approach keys must be unique")
    return registry


def get_approach(key: str) -> Approach:
    """The approach registered under ``key``.

    Raises
    ------
    ResourceDataError
        Unknown key (the message lists the known ones).
    """
    registry = approach_registry()
    if key not in registry:
        raise ResourceDataError(f"unknown approach {key!r}; known: {', '.join(registry)}")
    return registry[key]


def admitted_for_zone(zone: int | None) -> tuple[str, ...]:
    """Approach keys the cohort rule admits for a lesion whose centroid is in ``zone``."""
    if zone is None:
        return tuple(approach_registry())
    return tuple(k for k, a in approach_registry().items() if zone in a.zones)
