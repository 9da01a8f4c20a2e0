"""The sacral anatomy model: landmarks, sacral frame, Denis zones, correctable masks.

:class:`SacralAnatomy` is built from the automatic CT anatomy (:func:`from_masks`) or from
landmarks a user placed (:func:`from_landmarks`, e.g. on an MR study). It holds

* the landmarks: the S1-S4 foramina (centre, axis, radius), the S1 superior endplate
  (centre, normal), optional canal points;
* the **sacral frame** (DESIGN.md section 5.2): origin at the endplate centre, ``e_z`` the
  endplate normal toward the head, ``e_x`` fitted through the paired foramen centres,
  ``e_y`` completing it (posterior);
* the **midsagittal plane** through the midpoints of the foramen pairs;
* the **Denis zones**: per level, the medial and lateral walls of the foramina along
  ``e_x`` through their centres, interpolated linearly in sacral ``z`` between levels and
  held constant above S1 and below S4; zone 3 medial, 2 through the foramina, 1 lateral
  (the ala); :meth:`zone_of` for any points and :attr:`zone_map` on the mask grid;
* the masks (when there are any) on the crop grid of the study, editable with a
  spherical brush.

Every edit recomputes the dependents (frame, midsagittal plane, zone lines, zone map)
and notifies subscribers: ``callback(what, anatomy)`` with ``what`` one of
``"landmarks"``, ``"masks"``. No Qt: the UI wraps it.

Everything is JSON-serialisable for the plan file (landmarks and derived frame; masks are
referenced by a caller-given string, not inlined).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imaging.anatomy import FORAMEN_NAMES, AnatomyMasks, sacral_axes
from imaging.errors import SacroplanError
from imaging.volume import Volume

__all__ = [
    "DEFAULT_FORAMEN_RADIUS_MM",
    "AnatomyEditError",
    "DenisLevel",
    "ForamenLandmark",
    "SacralAnatomy",
    "SacralFrame",
]

#: Radius used for a foramen placed by hand (DESIGN.md 5.2: S1 ~13 x 12 mm, S2 ~13 mm, ...).
DEFAULT_FORAMEN_RADIUS_MM = {"S1": 6.3, "S2": 6.3, "S3": 5.0, "S4": 4.0}
_LEVELS = ("S1", "S2", "S3", "S4")
SCHEMA = "sacroplan.anatomy/1"

AnatomyCallback = Callable[[str, "SacralAnatomy"], None]


class AnatomyEditError(SacroplanError):
    """A landmark or mask edit that cannot be applied (unknown name, bad value)."""


# == value types ==============================================================================


@dataclass(frozen=True)
class ForamenLandmark:
    """One foramen as a landmark.

    Attributes
    ----------
    name : str
        ``"left S1"`` ... ``"right S4"``.
    center_lps : (3,) float ndarray, mm, LPS
    axis : (3,) float ndarray or None
        Unit channel direction (posterior), None when unknown (placed by hand).
    radius_mm : float
    source : str
        ``"auto"`` (segmentation) or ``"user"``.
    """

    name: str
    center_lps: np.ndarray
    axis: np.ndarray | None
    radius_mm: float
    source: str = "auto"

    @property
    def level(self) -> str:
        """``"S1"``..``"S4"``."""
        return self.name.split()[1]

    @property
    def side(self) -> str:
        """``"left"`` or ``"right"`` (patient side)."""
        return self.name.split()[0]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "name": self.name,
            "center_lps": _list(self.center_lps),
            "axis": None if self.axis is None else _list(self.axis),
            "radius_mm": float(self.radius_mm),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ForamenLandmark:
        """Inverse of :meth:`to_json`."""
        axis = data.get("axis")
        return cls(
            name=_foramen_name(data["name"]),
            center_lps=_point(data["center_lps"], "foramen centre"),
            axis=None if axis is None else _unit(_point(axis, "foramen axis")),
            radius_mm=_positive(data["radius_mm"], "foramen radius"),
            source=str(data.get("source", "user")),
        )


@dataclass(frozen=True)
class SacralFrame:
    """Sacral frame: ``frame = axes @ (lps - origin)``; rows of ``axes`` are e_x, e_y, e_z."""

    origin: np.ndarray
    axes: np.ndarray

    @property
    def e_x(self) -> np.ndarray:
        """(3,) unit vector toward patient left."""
        return self.axes[0]

    @property
    def e_y(self) -> np.ndarray:
        """(3,) unit vector toward posterior."""
        return self.axes[1]

    @property
    def e_z(self) -> np.ndarray:
        """(3,) unit endplate normal toward the head."""
        return self.axes[2]

    def to_frame(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS points ``(N, 3)`` (mm) to sacral-frame coordinates ``(N, 3)`` (mm)."""
        return (np.asarray(points_lps, dtype=np.float64) - self.origin) @ self.axes.T

    def to_lps(self, points_frame: np.ndarray) -> np.ndarray:
        """Sacral-frame points ``(N, 3)`` (mm) to LPS points ``(N, 3)`` (mm)."""
        return np.asarray(points_frame, dtype=np.float64) @ self.axes + self.origin

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "origin": _list(self.origin),
            "e_x": _list(self.e_x),
            "e_y": _list(self.e_y),
            "e_z": _list(self.e_z),
        }


@dataclass(frozen=True)
class DenisLevel:
    """Foraminal lines of one level, sacral frame (mm).

    ``z_mm``: sacral-frame z of the level's foramen centres; ``medial_mm``/``lateral_mm``:
    distance from the midsagittal plane of the foramen's medial and lateral walls, along
    e_x through the centre (both sides averaged).
    """

    level: str
    z_mm: float
    medial_mm: float
    lateral_mm: float

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "level": self.level,
            "z_mm": float(self.z_mm),
            "medial_mm": float(self.medial_mm),
            "lateral_mm": float(self.lateral_mm),
        }


# == the model ================================================================================


class SacralAnatomy:
    """Sacral landmarks, frame, Denis zones and (optionally) masks, with change callbacks.

    Build it with :meth:`from_masks` or :meth:`from_landmarks`.

    Parameters
    ----------
    foramina : list of ForamenLandmark
    endplate_center : (3,) float ndarray, mm, LPS
    endplate_normal : (3,) float ndarray
        Toward the head (it is normalised).
    canal_points : (N, 3) float ndarray, mm, LPS, optional
        Points along the spinal canal (landmarks for studies without masks).
    masks : dict of str to ndarray, optional
        Masks on ``grid`` (as :attr:`imaging.anatomy.AnatomyMasks.masks`).
    grid : Volume, optional
        The grid of the masks (its array is not used; any volume of that grid).
    """

    def __init__(
        self,
        *,
        foramina: list[ForamenLandmark],
        endplate_center: np.ndarray,
        endplate_normal: np.ndarray,
        canal_points: np.ndarray | None = None,
        masks: dict[str, np.ndarray] | None = None,
        grid: Volume | None = None,
    ) -> None:
        if masks is not None and grid is None:
            raise AnatomyEditError("masks need the grid they live on")
        self._foramina: dict[str, ForamenLandmark] = {}
        for f in foramina:
            self._foramina[_foramen_name(f.name)] = f
        self._endplate_center = _point(endplate_center, "endplate centre")
        self._endplate_normal = _unit(_point(endplate_normal, "endplate normal"))
        self._canal_points = (
            np.zeros((0, 3)) if canal_points is None else _points(canal_points, "canal points")
        )
        self._masks = masks if masks is not None else {}
        self._grid = grid
        self._subscribers: list[AnatomyCallback] = []
        self._zone_map: np.ndarray | None = None
        self._recompute_landmarks()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_masks(cls, anatomy: AnatomyMasks) -> SacralAnatomy:
        """The model of an automatic segmentation (its masks are shared, not copied)."""
        foramina = [
            ForamenLandmark(
                name=f.name,
                center_lps=np.asarray(f.center_lps, dtype=np.float64),
                axis=np.asarray(f.axis, dtype=np.float64),
                radius_mm=float(f.radius_mm),
                source="auto",
            )
            for f in anatomy.foramina
        ]
        return cls(
            foramina=foramina,
            endplate_center=anatomy.endplate.center_lps,
            endplate_normal=anatomy.endplate.normal,
            masks=anatomy.masks,
            grid=anatomy.image,
        )

    @classmethod
    def from_landmarks(
        cls,
        *,
        foramina: dict[str, np.ndarray],
        endplate_center: np.ndarray,
        endplate_normal: np.ndarray,
        canal_points: np.ndarray | None = None,
        radius_mm: dict[str, float] | None = None,
    ) -> SacralAnatomy:
        """A model from hand-placed landmarks (e.g. an MR-only study; no masks).

        Parameters
        ----------
        foramina : dict of str to (3,) float ndarray
            Foramen centres by name (``"left S1"``...), mm LPS.
        endplate_center, endplate_normal : (3,) float ndarray
            S1 endplate centre (mm LPS) and normal toward the head.
        canal_points : (N, 3) float ndarray, optional
        radius_mm : dict of str to float, optional
            Radius per foramen name; default by level (:data:`DEFAULT_FORAMEN_RADIUS_MM`).
        """
        radii = radius_mm or {}
        marks = []
        for name, center in foramina.items():
            key = _foramen_name(name)
            r = radii.get(key, DEFAULT_FORAMEN_RADIUS_MM[key.split()[1]])
            marks.append(ForamenLandmark(key, _point(center, key), None, float(r), "user"))
        return cls(
            foramina=marks,
            endplate_center=endplate_center,
            endplate_normal=endplate_normal,
            canal_points=canal_points,
        )

    # -- observers -----------------------------------------------------------------------------
    def subscribe(self, callback: AnatomyCallback) -> Callable[[], None]:
        """Call ``callback(what, anatomy)`` after every change; returns an unsubscribe function."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _notify(self, what: str) -> None:
        for callback in list(self._subscribers):
            callback(what, self)

    # -- landmarks -----------------------------------------------------------------------------
    @property
    def foramina(self) -> dict[str, ForamenLandmark]:
        """Foramen landmarks by name, in anatomical order (a copy)."""
        return {n: self._foramina[n] for n in FORAMEN_NAMES if n in self._foramina}

    @property
    def endplate_center(self) -> np.ndarray:
        """(3,) S1 endplate centre, mm LPS."""
        return self._endplate_center.copy()

    @property
    def endplate_normal(self) -> np.ndarray:
        """(3,) unit S1 endplate normal toward the head."""
        return self._endplate_normal.copy()

    @property
    def canal_points(self) -> np.ndarray:
        """(N, 3) canal landmark points, mm LPS."""
        return self._canal_points.copy()

    @property
    def frame(self) -> SacralFrame:
        """The sacral frame."""
        return self._frame

    @property
    def midsagittal_plane(self) -> tuple[np.ndarray, np.ndarray]:
        """``(point, normal)``: a point (mm LPS) on the midsagittal plane and its unit normal.

        Through the midpoints of the foramen pairs (the endplate centre when there is no
        pair), normal ``e_x``.
        """
        return self._mid_point.copy(), self._frame.e_x.copy()

    @property
    def denis_levels(self) -> list[DenisLevel]:
        """Foraminal lines per level with at least one foramen, from S1 down."""
        return list(self._levels)

    def move_foramen(self, name: str, center_lps: np.ndarray) -> None:
        """Move a foramen's centre (mm LPS); it becomes a user landmark."""
        key = _foramen_name(name)
        if key not in self._foramina:
            raise AnatomyEditError(f"there is no {key} foramen to move; add it instead")
        old = self._foramina[key]
        self._foramina[key] = ForamenLandmark(
            key, _point(center_lps, key), old.axis, old.radius_mm, "user"
        )
        self._landmarks_changed()

    def add_foramen(
        self,
        name: str,
        center_lps: np.ndarray,
        *,
        radius_mm: float | None = None,
        axis: np.ndarray | None = None,
    ) -> None:
        """Add (or replace) a foramen placed by hand."""
        key = _foramen_name(name)
        r = DEFAULT_FORAMEN_RADIUS_MM[key.split()[1]] if radius_mm is None else radius_mm
        self._foramina[key] = ForamenLandmark(
            key,
            _point(center_lps, key),
            None if axis is None else _unit(_point(axis, "foramen axis")),
            _positive(r, "foramen radius"),
            "user",
        )
        self._landmarks_changed()

    def remove_foramen(self, name: str) -> None:
        """Remove a foramen landmark."""
        key = _foramen_name(name)
        if key not in self._foramina:
            raise AnatomyEditError(f"there is no {key} foramen to remove")
        del self._foramina[key]
        self._landmarks_changed()

    def set_endplate(
        self, *, center_lps: np.ndarray | None = None, normal: np.ndarray | None = None
    ) -> None:
        """Move the S1 endplate centre and/or change its normal (toward the head)."""
        if center_lps is not None:
            self._endplate_center = _point(center_lps, "endplate centre")
        if normal is not None:
            self._endplate_normal = _unit(_point(normal, "endplate normal"))
        self._landmarks_changed()

    def set_canal_points(self, points_lps: np.ndarray) -> None:
        """Replace the canal landmark points ``(N, 3)`` (mm LPS)."""
        self._canal_points = _points(points_lps, "canal points")
        self._notify("landmarks")

    def _landmarks_changed(self) -> None:
        self._recompute_landmarks()
        self._notify("landmarks")

    def _recompute_landmarks(self) -> None:
        pairs = self._pairs()
        if pairs:
            left = np.array([a.center_lps for a, _ in pairs])
            right = np.array([b.center_lps for _, b in pairs])
            axes = sacral_axes(self._endplate_normal, left_points=left, right_points=right)
            self._mid_point = 0.5 * (left + right).mean(axis=0)
        else:
            axes = sacral_axes(self._endplate_normal)
            self._mid_point = self._endplate_center.copy()
        self._frame = SacralFrame(origin=self._endplate_center.copy(), axes=axes)
        self._mid_x = float(self._frame.to_frame(self._mid_point[None, :])[0, 0])
        self._levels = self._denis_levels()
        self._zone_map = None

    def _pairs(self) -> list[tuple[ForamenLandmark, ForamenLandmark]]:
        out = []
        for level in _LEVELS:
            a = self._foramina.get(f"left {level}")
            b = self._foramina.get(f"right {level}")
            if a is not None and b is not None:
                out.append((a, b))
        return out

    def _denis_levels(self) -> list[DenisLevel]:
        levels = []
        for level in _LEVELS:
            found = [
                self._foramina[n]
                for n in (f"left {level}", f"right {level}")
                if n in self._foramina
            ]
            if not found:
                continue
            zs, med, lat = [], [], []
            for f in found:
                c = self._frame.to_frame(f.center_lps[None, :])[0]
                half = _half_chord_along_x(f, self._frame)
                dist = abs(c[0] - self._mid_x)
                zs.append(c[2])
                med.append(max(dist - half, 0.0))
                lat.append(dist + half)
            levels.append(
                DenisLevel(level, float(np.mean(zs)), float(np.mean(med)), float(np.mean(lat)))
            )
        return levels

    # -- zones ---------------------------------------------------------------------------------
    def zone_of(self, points_lps: np.ndarray, *, inside_only: bool = False) -> np.ndarray:
        """Denis zone of points.

        Parameters
        ----------
        points_lps : (N, 3) or (3,) float ndarray, mm, LPS
        inside_only : bool, keyword-only
            Give 0 for points outside the sacrum mask (needs masks).

        Returns
        -------
        (N,) int ndarray (or an int for one point)
            3 medial (body and canal), 2 through the foramina, 1 lateral (ala); 0 outside
            the sacrum when ``inside_only``.

        Raises
        ------
        AnatomyEditError
            When no foramen is known (the zones are undefined), or ``inside_only`` without
            masks.
        """
        pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        zones = self._zones_frame(self._frame.to_frame(pts))
        if inside_only:
            sacrum = self._mask("sacrum")
            assert self._grid is not None
            ijk = np.round(self._grid.world_to_index(pts)).astype(int)
            shape = np.array(sacrum.shape)[::-1]
            ok = np.all((ijk >= 0) & (ijk < shape), axis=1)
            inside = np.zeros(len(pts), bool)
            inside[ok] = sacrum[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
            zones = np.where(inside, zones, 0)
        return zones if np.ndim(points_lps) > 1 else int(zones[0])

    def _zones_frame(self, s: np.ndarray) -> np.ndarray:
        if not self._levels:
            raise AnatomyEditError(
                "Denis zones need at least one foramen; place the foramina first"
            )
        levels = sorted(self._levels, key=lambda d: d.z_mm)
        zs = np.array([d.z_mm for d in levels])
        medial = np.interp(s[:, 2], zs, [d.medial_mm for d in levels])
        lateral = np.interp(s[:, 2], zs, [d.lateral_mm for d in levels])
        ax = np.abs(s[:, 0] - self._mid_x)
        return np.where(ax < medial, 3, np.where(ax <= lateral, 2, 1)).astype(np.int64)

    @property
    def zone_map(self) -> Volume | None:
        """Denis zones on the mask grid (uint8: 0 outside the sacrum), or None without masks."""
        if self._grid is None or "sacrum" not in self._masks:
            return None
        if self._zone_map is None:
            sacrum = self._masks["sacrum"]
            out = np.zeros(sacrum.shape, np.uint8)
            kji = np.argwhere(sacrum)
            if len(kji) and self._levels:
                pts = self._grid.index_to_world(kji[:, ::-1].astype(np.float64))
                out[tuple(kji.T)] = self._zones_frame(self._frame.to_frame(pts))
            self._zone_map = out
        return self._grid.with_array(self._zone_map, modality="LABEL")

    # -- masks ---------------------------------------------------------------------------------
    @property
    def grid(self) -> Volume | None:
        """The volume whose grid the masks live on (None without masks)."""
        return self._grid

    @property
    def mask_names(self) -> tuple[str, ...]:
        """Names of the masks held."""
        return tuple(self._masks)

    def mask(self, name: str) -> np.ndarray:
        """A mask array (the live array: edit it only through :meth:`paint`)."""
        return self._mask(name)

    def _mask(self, name: str) -> np.ndarray:
        if name not in self._masks:
            known = ", ".join(self._masks) or "none (landmarks only)"
            raise AnatomyEditError(f"there is no {name!r} mask; masks held: {known}")
        return self._masks[name]

    def paint(self, name: str, center_lps: np.ndarray, radius_mm: float, value: int | bool) -> int:
        """Paint (or erase with ``value=0``/False) a ball into a mask.

        Parameters
        ----------
        name : str
            Mask name (``"sacrum"``, ``"canal"``, ``"foramina"`` ...).
        center_lps : (3,) float ndarray, mm, LPS
            Brush centre.
        radius_mm : float
            Brush radius; voxels whose centre is within it change.
        value : int or bool
            New value (a foramen number 1..8 for ``"foramina"``; True/False elsewhere).

        Returns
        -------
        int
            Number of voxels changed.
        """
        mask = self._mask(name)
        assert self._grid is not None
        radius = _positive(radius_mm, "brush radius")
        center = _point(center_lps, "brush centre")
        sel = _ball_index(self._grid, center, radius)
        if sel is None:
            return 0
        k, j, i = sel
        new = np.asarray(value).astype(mask.dtype)
        changed = int(np.count_nonzero(mask[k, j, i] != new))
        if changed:
            mask[k, j, i] = new
            if name == "sacrum":
                self._zone_map = None
            self._notify("masks")
        return changed

    def refit_foramen(self, name: str) -> ForamenLandmark:
        """Refit a foramen landmark from its voxels in the ``"foramina"`` mask (after painting).

        Centre = centroid of the voxels, axis = their principal direction (posterior),
        radius = that of the disk with the same mean squared distance from the axis.

        Raises
        ------
        AnatomyEditError
            When there is no foramina mask or no voxel of this foramen in it.
        """
        key = _foramen_name(name)
        labels = self._mask("foramina")
        assert self._grid is not None
        kji = np.argwhere(labels == FORAMEN_NAMES.index(key) + 1)
        if len(kji) < 4:
            raise AnatomyEditError(f"the {key} foramen has no voxels in the mask; paint it first")
        pts = self._grid.index_to_world(kji[:, ::-1].astype(np.float64))
        center = pts.mean(axis=0)
        centered = pts - center
        _, vecs = np.linalg.eigh(centered.T @ centered)
        axis = vecs[:, -1]
        if axis @ self._frame.e_y < 0:
            axis = -axis
        radial = centered - np.outer(centered @ axis, axis)
        radius = float(np.sqrt(2.0 * np.mean(np.sum(radial**2, axis=1))))
        self._foramina[key] = ForamenLandmark(key, center, axis, max(radius, 0.5), "user")
        self._landmarks_changed()
        return self._foramina[key]

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self, *, masks_ref: str | None = None) -> dict[str, Any]:
        """JSON-ready description: landmarks, frame, zone lines and a reference to the masks.

        Parameters
        ----------
        masks_ref : str, optional
            Where the masks are stored (e.g. a file name next to the plan); not inlined.
        """
        point, normal = self.midsagittal_plane
        return {
            "schema": SCHEMA,
            "foramina": [f.to_json() for f in self.foramina.values()],
            "endplate": {
                "center_lps": _list(self._endplate_center),
                "normal": _list(self._endplate_normal),
            },
            "canal_points": [_list(p) for p in self._canal_points],
            "frame": self._frame.to_json(),
            "midsagittal_plane": {"point": _list(point), "normal": _list(normal)},
            "denis_levels": [d.to_json() for d in self._levels],
            "masks": {"ref": masks_ref, "names": list(self._masks)},
        }

    @classmethod
    def from_json(
        cls,
        data: dict[str, Any],
        *,
        masks: dict[str, np.ndarray] | None = None,
        grid: Volume | None = None,
    ) -> SacralAnatomy:
        """Inverse of :meth:`to_json`; the masks (if any) are supplied by the caller.

        Raises
        ------
        AnatomyEditError
            When the data are not a sacroplan anatomy or hold bad numbers.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise AnatomyEditError(f"not a sacroplan anatomy record (expected {SCHEMA})")
        try:
            foramina = [ForamenLandmark.from_json(f) for f in data["foramina"]]
            endplate = data["endplate"]
            canal = data.get("canal_points") or None
            return cls(
                foramina=foramina,
                endplate_center=endplate["center_lps"],
                endplate_normal=endplate["normal"],
                canal_points=None if canal is None else np.asarray(canal, dtype=np.float64),
                masks=masks,
                grid=grid,
            )
        except (KeyError, TypeError) as exc:
            raise AnatomyEditError(f"the anatomy record is incomplete: {exc}") from exc


# == helpers ==================================================================================


def _half_chord_along_x(f: ForamenLandmark, frame: SacralFrame) -> float:
    """Half-length of the line along e_x through the centre inside the foramen cylinder."""
    if f.axis is None:
        return f.radius_mm
    c = float(np.clip(abs(f.axis @ frame.e_x), 0.0, 0.95))
    return f.radius_mm / np.sqrt(1.0 - c * c)


def _ball_index(
    grid: Volume, center: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Index arrays ``(k, j, i)`` of the grid voxels whose centres lie within the ball."""
    corners = np.array(
        [
            [center[0] + a, center[1] + b, center[2] + c]
            for a in (-radius, radius)
            for b in (-radius, radius)
            for c in (-radius, radius)
        ]
    )
    ijk = grid.world_to_index(corners)
    size = np.asarray(grid.size)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(hi <= lo):
        return None
    ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi, strict=True)), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    pts = grid.index_to_world(idx.astype(np.float64))
    inside = np.sum((pts - center) ** 2, axis=1) <= radius * radius + 1e-9
    idx = idx[inside]
    if len(idx) == 0:
        return None
    return idx[:, 2], idx[:, 1], idx[:, 0]


def _list(v: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(v).reshape(-1)]


def _point(value: Any, what: str) -> np.ndarray:
    try:
        p = np.asarray(value, dtype=np.float64).reshape(3)
    except (TypeError, ValueError) as exc:
        raise AnatomyEditError(f"the {what} must be three numbers (x, y, z in mm)") from exc
    if not np.all(np.isfinite(p)):
        raise AnatomyEditError(f"the {what} must be finite numbers")
    return p


def _points(value: Any, what: str) -> np.ndarray:
    try:
        p = np.asarray(value, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError) as exc:
        raise AnatomyEditError(f"the {what} must be a list of (x, y, z) points in mm") from exc
    if not np.all(np.isfinite(p)):
        raise AnatomyEditError(f"the {what} must be finite numbers")
    return p


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise AnatomyEditError("a direction must not be the zero vector")
    return v / n


def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise AnatomyEditError(f"the {what} must be a number of millimetres") from exc
    if not np.isfinite(v) or v <= 0:
        raise AnatomyEditError(f"the {what} must be a positive number of millimetres")
    return v


def _foramen_name(name: str) -> str:
    key = " ".join(str(name).split())
    parts = key.split()
    if len(parts) == 2:
        key = f"{parts[0].lower()} {parts[1].upper()}"
    if key not in FORAMEN_NAMES:
        raise AnatomyEditError(f"unknown foramen {name!r}; use one of: {', '.join(FORAMEN_NAMES)}")
    return key
