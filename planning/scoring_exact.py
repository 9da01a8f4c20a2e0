"""Exact clearances of a few needles against the danger structures' surfaces, without a cap.

The search scores up to a million needles on cropped distance fields (:mod:`geometry.kernels`);
their clearances are conservative, and capped where a field's crop ends. The few needles a plan
reports are re-measured here, needle surface to structure surface, against a triangulated
surface of each whole structure:

* the surface is the 0.5 level of the structure's mask smoothed by a Gaussian of
  ``SMOOTH_MM`` (in mm, so anisotropic and oblique grids are treated alike), triangulated by
  marching cubes and mapped to LPS mm. Smoothing before the level set removes the voxel
  staircase: on a thick-slice grid the raw mask's surface is off by up to half a slice, the
  smoothed one by a fraction of that on smooth anatomy;
* the distance from the needle's axis (skin entry to tip) to the surface is exact against the
  triangles (closest point on each candidate triangle, candidates culled by a KD-tree of
  triangle centroids), the axis sampled every ``STEP_MM`` (the minimum of a 1-Lipschitz
  function sampled that finely is at most ``sqrt(d^2 + STEP_MM^2/4) - d`` above it, which is
  subtracted);
* a sample inside the structure counts as minus its depth, so a needle through a foramen
  has a negative clearance like the kernel's.

The clearance is that distance minus the needle's outer radius, in mm; no cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from imaging.phantom_shapes import cylinder_signed_distance
from imaging.volume import Volume

#: Gaussian smoothing of a mask before its surface is taken (sigma, mm).
SMOOTH_MM = 1.0
#: Sampling steps along the needle axis (mm): every ``COARSE_MM``, then every ``STEP_MM``
#: where the minimum may lie.
COARSE_MM = 1.0
STEP_MM = 0.1
#: The triangulated surface is covered by points this far apart (mm) at most.
POINT_SPACING_MM = 0.4
#: Below this distance (mm) the minimum is searched again every ``STEP_MM``; above it the
#: ``COARSE_MM`` sampling costs at most sqrt(d^2 - COARSE_MM^2 / 4) (0.04 mm at 3 mm).
FINE_BELOW_MM = 3.0


def surface_points(triangles: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Points covering triangles (T, 3, 3): a barycentric grid with edges at most ``spacing_mm``.

    Every point of every triangle lies within ``spacing_mm / sqrt(3)`` of one of them (the
    circumradius of a sub-triangle, or half its longest edge when obtuse).
    """
    if not len(triangles):
        return np.zeros((0, 3))
    edges = np.linalg.norm(triangles - np.roll(triangles, 1, axis=1), axis=2).max(axis=1)
    n_sub = np.maximum(1, np.ceil(edges / spacing_mm)).astype(int)
    out = []
    for n in np.unique(n_sub):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        w = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1) / float(n)
        out.append(np.einsum("pv,tvc->tpc", w, triangles[n_sub == n]).reshape(-1, 3))
    return np.vstack(out)


#: Triangles handled at a time by :func:`_covering_points` (bounded working memory).
_TRIANGLE_CHUNK = 65536


def _covering_points(
    vertices: np.ndarray, faces: np.ndarray, spacing_mm: float
) -> tuple[np.ndarray, float]:
    """``surface_points(vertices[faces], spacing_mm)`` and the longest edge (mm), computed a
    chunk of triangles at a time: the same points in the same order, without the (T, 3, 3)
    triangle array and its temporaries."""
    if not len(faces):
        return np.zeros((0, 3)), 0.0
    chunks = range(0, len(faces), _TRIANGLE_CHUNK)
    n_sub = np.empty(len(faces), dtype=np.int64)
    longest = 0.0
    for c in chunks:
        tris = vertices[faces[c : c + _TRIANGLE_CHUNK]]
        edges = np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=2).max(axis=1)
        n_sub[c : c + len(tris)] = np.maximum(1, np.ceil(edges / spacing_mm)).astype(int)
        longest = max(longest, float(edges.max()))
    levels = np.unique(n_sub)
    counts = np.bincount(n_sub)[levels] * ((levels + 1) * (levels + 2) // 2)
    out = np.empty((int(counts.sum()), 3))
    at = 0
    for n in levels:  # grouped by subdivision, in triangle order: as surface_points
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        w = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=1) / float(n)
        picked = np.flatnonzero(n_sub == n)
        for c in range(0, len(picked), _TRIANGLE_CHUNK):
            tris = vertices[faces[picked[c : c + _TRIANGLE_CHUNK]]]
            pts = np.einsum("pv,tvc->tpc", w, tris).reshape(-1, 3)
            out[at : at + len(pts)] = pts
            at += len(pts)
    return out, longest


@dataclass(frozen=True)
class StructureSurface:
    """A structure's triangulated surface (LPS mm) and its inside test.

    Build it with :meth:`from_mask`; an empty mask gives ``triangles`` of length 0.
    """

    points: np.ndarray  # (P, 3) float64, mm LPS, covering the surface
    tree: cKDTree | None  # of ``points``
    cover_mm: float  # every surface point lies within this of one of ``points``
    coarse_tree: cKDTree | None  # of the triangles' vertices only
    coarse_cover_mm: float  # every surface point lies within this of a vertex
    level: np.ndarray  # smoothed mask (K, J, I) float32 on the crop ``grid`` (0.5 = surface)
    grid: Volume  # the crop of the mask's grid that ``level`` covers
    world_to_index: np.ndarray  # (3, 4) affine, LPS mm -> (i, j, k) of ``grid``

    @classmethod
    def from_mask(
        cls, mask: np.ndarray, grid: Volume, *, smooth_mm: float = SMOOTH_MM
    ) -> StructureSurface:
        """Surface of ``mask`` (``[k, j, i]`` bool on ``grid``), smoothed by ``smooth_mm``.

        Parameters
        ----------
        mask : (K, J, I) bool ndarray
        grid : Volume
            Geometry of ``mask`` (origin, spacing, direction; LPS mm).
        smooth_mm : float
            Gaussian sigma (mm) applied to the mask before its 0.5 level is triangulated.
        """
        spacing = np.asarray(grid.spacing, dtype=np.float64)
        sigma_vox = (smooth_mm / spacing)[::-1]  # per array axis (k, j, i)
        pad = np.ceil(3.0 * sigma_vox).astype(int) + 2
        kji = np.argwhere(mask)
        if not len(kji):
            empty = np.zeros((2, 2, 2), np.float32)
            return cls(np.zeros((0, 3)), None, 0.0, None, 0.0, empty, grid, _affine(grid))
        lo = np.maximum(kji.min(axis=0) - pad, 0)
        hi = np.minimum(kji.max(axis=0) + pad + 1, mask.shape)
        sub = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        sub = np.pad(sub, [(int(p), int(p)) for p in pad])  # room for the smoothing at edges
        level = ndi.gaussian_filter(sub, sigma_vox, mode="constant") if smooth_mm > 0 else sub
        start = lo - pad  # array index (k, j, i) of level[0, 0, 0] on the mask's grid
        sub_origin = grid.index_to_world(start[::-1].astype(np.float64)[None, :])[0]
        sub_grid = Volume(
            np.zeros((1, 1, 1), np.uint8), sub_origin, spacing, grid.direction, modality="LABEL"
        )
        if level.max() <= 0.5:  # a sliver thinner than the smoothing: keep the raw voxels
            level = np.pad(
                mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], [(int(p), int(p)) for p in pad]
            ).astype(np.float32)
        verts, faces, _n, _v = marching_cubes(level, level=0.5, allow_degenerate=False)
        world = sub_grid.index_to_world(verts[:, ::-1].astype(np.float64))
        del verts
        points, longest = _covering_points(world, faces, POINT_SPACING_MM)
        del faces
        return cls(
            points,
            cKDTree(points, balanced_tree=False, compact_nodes=False),
            POINT_SPACING_MM / math.sqrt(3.0),
            cKDTree(world),
            longest / math.sqrt(3.0),
            level,
            sub_grid,
            _affine(sub_grid),
        )

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (mm) from LPS ``points`` (N, 3) to the surface's points: < 0 inside.

        At most ``sqrt(d^2 + cover_mm^2)`` for a true distance ``d`` to the surface.
        """
        points = np.ascontiguousarray(points, dtype=np.float64)
        if self.tree is None:
            return np.full(len(points), np.inf)
        dist, _ = self.tree.query(points)
        return np.where(self._inside(points), -dist, dist)

    def segment_min(self, entry: np.ndarray, tip: np.ndarray) -> float:
        """Least signed distance (mm) from the segment ``entry`` -> ``tip`` to the surface.

        The signed distance is 1-Lipschitz along the segment. Samples every ``COARSE_MM`` are
        measured to the triangles' vertices (cheap, within ``coarse_cover_mm``); those that may
        hold the minimum, and any inside the structure, are measured to the dense surface
        points; where the minimum is below ``FINE_BELOW_MM`` it is searched again every
        ``STEP_MM`` around them. The result is lowered by the sampling and covering bounds,
        so it never exceeds the exact minimum distance to the triangulated surface.
        """
        assert self.tree is not None and self.coarse_tree is not None
        length = float(np.linalg.norm(tip - entry))
        n = max(2, int(math.ceil(length / COARSE_MM)) + 1)
        t = np.linspace(0.0, 1.0, n)
        h = length / (n - 1)
        points = entry + t[:, None] * (tip - entry)
        rough, _ = self.coarse_tree.query(points)
        inside = self._inside(points)
        # a sample within h/2 of the true minimum d* has distance <= d* + h/2 <= min(rough) + h/2
        window = inside | (rough - self.coarse_cover_mm - 0.5 * h <= rough.min())
        dense, _ = self.tree.query(points[window])
        coarse = np.where(inside[window], -dense, dense)
        best, step = float(coarse.min()), h
        if best < FINE_BELOW_MM:
            fine_t = []
            for ti in t[window][coarse - 0.5 * h <= best]:
                lo, hi = max(0.0, ti - 0.5 * h / length), min(1.0, ti + 0.5 * h / length)
                m = max(2, int(math.ceil((hi - lo) * length / STEP_MM)) + 1)
                fine_t.append(np.linspace(lo, hi, m))
            tf = np.concatenate(fine_t)
            fine = self.signed_distance(entry + tf[:, None] * (tip - entry))
            best, step = min(best, float(fine.min())), STEP_MM
        if best > 0:  # between samples, and off the surface points, d may dip this low
            slack = 0.25 * step * step + self.cover_mm * self.cover_mm
            best = math.sqrt(max(best * best - slack, 0.0))
        return best

    def _inside(self, points: np.ndarray) -> np.ndarray:
        ijk = points @ self.world_to_index[:, :3].T + self.world_to_index[:, 3]
        coords = ijk[:, ::-1].T  # (k, j, i)
        values = ndi.map_coordinates(self.level, coords, order=1, mode="constant", cval=0.0)
        return values > 0.5


def _affine(grid: Volume) -> np.ndarray:
    m = np.linalg.inv(np.asarray(grid.direction) * np.asarray(grid.spacing)[np.newaxis, :])
    return np.hstack([m, (-m @ np.asarray(grid.origin))[:, None]])


#: A channel: flat-capped cylinder (start, end LPS mm; radius mm).
Channel = tuple[np.ndarray, np.ndarray, float]


def segment_clearance_mm(
    surface: StructureSurface,
    entry: np.ndarray,
    tip: np.ndarray,
    radius_mm: float,
    channels: tuple[Channel, ...] = (),
) -> float:
    """Clearance (mm) from a needle of ``radius_mm`` along ``entry`` -> ``tip`` to a structure.

    The structure is ``surface`` united with the cylinders ``channels`` (e.g. a foramen's
    channel where it leaves the bone obliquely). The least signed distance of the axis to it
    (never above the exact one: :meth:`StructureSurface.segment_min`; the cylinders sampled
    every ``STEP_MM`` and lowered by that bound) minus the radius: negative when the needle
    cuts into the structure. ``inf`` for an empty structure.
    """
    entry = np.asarray(entry, dtype=np.float64)
    tip = np.asarray(tip, dtype=np.float64)
    best = math.inf if surface.tree is None else surface.segment_min(entry, tip)
    if channels:
        length = float(np.linalg.norm(tip - entry))
        n = max(2, int(math.ceil(length / STEP_MM)) + 1)
        points = entry + np.linspace(0.0, 1.0, n)[:, None] * (tip - entry)
        for start, end, radius in channels:
            d = float(np.min(cylinder_signed_distance(points, start, end, radius)))
            if d > 0:
                d = math.sqrt(max(d * d - 0.25 * STEP_MM * STEP_MM, 0.0))
            best = min(best, d)
    return best - radius_mm


@dataclass(frozen=True)
class DangerSurfaces:
    """The surfaces of the foramina (by name) and of the canal a plan's needles are measured to."""

    foramina: dict[str, StructureSurface]
    canal: StructureSurface | None
    channels: dict[str, tuple[Channel, ...]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        foramina: dict[str, np.ndarray],
        canal: np.ndarray | None,
        grid: Volume,
        channels: dict[str, tuple[Channel, ...]] | None = None,
    ) -> DangerSurfaces:
        """Surfaces of named foramen masks and the canal mask, all ``[k, j, i]`` on ``grid``.

        ``channels`` adds cylinders to a named foramen (its channel beyond the mask).
        """
        return cls(
            {name: StructureSurface.from_mask(m, grid) for name, m in foramina.items()},
            None if canal is None else StructureSurface.from_mask(canal, grid),
            dict(channels or {}),
        )

    def clearances(
        self, entry: np.ndarray, tip: np.ndarray, radius_mm: float
    ) -> tuple[dict[str, float], float]:
        """Clearance (mm) of one needle to every foramen (by name) and to the canal (NaN: none)."""
        by = {
            name: segment_clearance_mm(s, entry, tip, radius_mm, self.channels.get(name, ()))
            for name, s in self.foramina.items()
        }
        canal = math.nan
        if self.canal is not None:
            canal = segment_clearance_mm(self.canal, entry, tip, radius_mm)
        return by, canal
