"""Plane geometry of the slice views, in LPS millimetres (numpy only, no Qt, no VTK).

A slice view shows a plane through a *reference point* ``C`` (the study's centre) shifted by
``depth_mm`` along the plane normal. Points of the plane are written in *plane coordinates*
``(a, b)``, millimetres along the screen-right axis ``u`` and the screen-up axis ``v``::

    world = C + a * u + b * v + depth_mm * n,   n = u x v (towards the viewer)

The standard views follow the radiological convention: axial seen from the feet (patient left
on screen right), coronal seen from the front, sagittal seen from the patient's left
(anterior on screen left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imaging.volume import Volume

_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "H", (2, -1): "F"}


@dataclass(frozen=True, eq=False)
class PlaneAxes:
    """Orientation of a view plane.

    Attributes
    ----------
    u, v : (3,) float ndarray, LPS unit vectors
        Screen right and screen up.
    """

    u: np.ndarray
    v: np.ndarray

    def __post_init__(self) -> None:
        u = np.asarray(self.u, dtype=np.float64)
        v = np.asarray(self.v, dtype=np.float64)
        u = u / np.linalg.norm(u)
        v = v - u * float(u @ v)
        v = v / np.linalg.norm(v)
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "v", v)

    @property
    def n(self) -> np.ndarray:
        """(3,) unit normal towards the viewer, ``u x v``."""
        return np.cross(self.u, self.v)

    def basis(self) -> np.ndarray:
        """(3, 3) matrix whose columns are ``u``, ``v``, ``n``."""
        return np.stack([self.u, self.v, self.n], axis=1)


STANDARD_AXES: dict[str, PlaneAxes] = {
    "axial": PlaneAxes(u=np.array([1.0, 0.0, 0.0]), v=np.array([0.0, -1.0, 0.0])),
    "coronal": PlaneAxes(u=np.array([1.0, 0.0, 0.0]), v=np.array([0.0, 0.0, 1.0])),
    "sagittal": PlaneAxes(u=np.array([0.0, 1.0, 0.0]), v=np.array([0.0, 0.0, 1.0])),
}


def direction_letter(vec: np.ndarray) -> str:
    """Patient direction letter(s) of an LPS vector (``"L"``, ``"PH"``, ...), strongest first.

    Components weaker than 40 % of the strongest are left out.
    """
    vec = np.asarray(vec, dtype=np.float64)
    mag = np.abs(vec)
    order = np.argsort(-mag)
    out = ""
    for axis in order:
        if mag[axis] >= 0.4 * mag[order[0]] and mag[axis] > 1e-9:
            out += _LETTERS[(int(axis), 1 if vec[axis] > 0 else -1)]
    return out


def orientation_letters(axes: PlaneAxes) -> dict[str, str]:
    """Letters at the ``right``, ``left``, ``top`` and ``bottom`` edges of a view."""
    return {
        "right": direction_letter(axes.u),
        "left": direction_letter(-axes.u),
        "top": direction_letter(axes.v),
        "bottom": direction_letter(-axes.v),
    }


def slice_step_mm(volume: Volume, normal: np.ndarray) -> float:
    """One slice step along ``normal``: the spacing of the voxel axis most aligned with it, mm."""
    align = np.abs(volume.direction.T @ np.asarray(normal, dtype=np.float64))
    return float(volume.spacing[int(np.argmax(align))])


def volume_center(volume: Volume) -> np.ndarray:
    """(3,) LPS mm centre of the voxel grid."""
    return volume.bounds_world().mean(axis=0)


@dataclass(frozen=True)
class PlaneGrid:
    """The pixel grid a view reslices onto, in plane coordinates.

    Attributes
    ----------
    origin_ab : (float, float)
        Plane coordinates of pixel (0, 0), mm.
    pixel_mm : float
        Pixel size, mm (square pixels).
    shape : (int, int)
        Pixels along ``a`` and ``b``.
    """

    origin_ab: tuple[float, float]
    pixel_mm: float
    shape: tuple[int, int]

    @property
    def extent_ab(self) -> tuple[float, float, float, float]:
        """``(a_min, a_max, b_min, b_max)`` of the pixel centres, mm."""
        a0, b0 = self.origin_ab
        return (
            a0,
            a0 + (self.shape[0] - 1) * self.pixel_mm,
            b0,
            b0 + (self.shape[1] - 1) * self.pixel_mm,
        )


def plane_grid(
    volume: Volume, axes: PlaneAxes, center: np.ndarray, *, max_pixels: int = 1024
) -> PlaneGrid:
    """A pixel grid covering the volume's footprint on planes of orientation ``axes``.

    The pixel size is the volume's finest spacing, coarsened if the grid would exceed
    ``max_pixels`` along a side.
    """
    ijk = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)]) * 1.0
    size = np.asarray(volume.size, dtype=np.float64)
    corners = volume.index_to_world((ijk + 0.5) * size - 0.5)
    rel = corners - center
    a = rel @ axes.u
    b = rel @ axes.v
    pixel = float(volume.spacing.min())
    span = max(a.max() - a.min(), b.max() - b.min())
    pixel = max(pixel, span / max_pixels)
    na = int(np.ceil((a.max() - a.min()) / pixel)) + 1
    nb = int(np.ceil((b.max() - b.min()) / pixel)) + 1
    return PlaneGrid(origin_ab=(float(a.min()), float(b.min())), pixel_mm=pixel, shape=(na, nb))


def reslice_matrix(
    volume: Volume, axes: PlaneAxes, center: np.ndarray, depth_mm: float
) -> np.ndarray:
    """(4, 4) matrix mapping plane coordinates ``(a, b, 0, 1)`` to voxel indices ``(i, j, k, 1)``.

    This is the reslice-axes matrix of a reslice whose input is the array in index space.
    """
    a_inv = (volume.direction.T) / volume.spacing[:, np.newaxis]
    m = np.eye(4)
    m[:3, :3] = a_inv @ axes.basis()
    m[:3, 3] = a_inv @ (np.asarray(center) + depth_mm * axes.n - volume.origin)
    return m


def to_plane(points: np.ndarray, axes: PlaneAxes, center: np.ndarray) -> np.ndarray:
    """World points (N, 3) LPS mm -> (N, 3) ``(a, b, height above the depth-0 plane)`` mm."""
    rel = np.atleast_2d(np.asarray(points, dtype=np.float64)) - center
    return rel @ axes.basis()


def to_world(ab: np.ndarray, axes: PlaneAxes, center: np.ndarray, depth_mm: float) -> np.ndarray:
    """Plane coordinates (N, 2) mm on the plane at ``depth_mm`` -> (N, 3) LPS mm."""
    ab = np.atleast_2d(np.asarray(ab, dtype=np.float64))
    return center + ab[:, :1] * axes.u + ab[:, 1:2] * axes.v + depth_mm * axes.n


def needle_axes(entry: np.ndarray, target: np.ndarray) -> tuple[PlaneAxes, PlaneAxes]:
    """Axes of the along-the-needle plane and of the bull's-eye plane of a needle.

    Along the needle: ``u`` runs from entry to tip, ``v`` is the patient axis least aligned
    with the needle made perpendicular to it (so the plane contains the needle). Bull's-eye:
    the viewer looks down the needle from the entry (``n`` points back to the entry).
    """
    d = np.asarray(target, dtype=np.float64) - np.asarray(entry, dtype=np.float64)
    length = float(np.linalg.norm(d))
    d = d / length if length > 1e-9 else np.array([0.0, 0.0, -1.0])
    helper = np.eye(3)[int(np.argmin(np.abs(d)))]
    # Prefer head-up when the needle is not close to vertical.
    if abs(d[2]) < 0.9:
        helper = np.array([0.0, 0.0, 1.0])
    along = PlaneAxes(u=d, v=helper - d * float(helper @ d))
    # Bull's-eye: n = -d, i.e. u x v = -d.
    up = helper - d * float(helper @ d)
    up = up / np.linalg.norm(up)
    right = np.cross(up, -d)
    bullseye = PlaneAxes(u=right, v=up)
    return along, bullseye
