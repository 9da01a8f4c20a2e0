"""The one volume type of sacroplan: an array on a physical grid in LPS millimetres.

Conventions (as SimpleITK):

* ``array`` is indexed ``[k, j, i]`` (slice, row, column), like ``sitk.GetArrayFromImage``;
* ``origin``, ``spacing`` are in ``(x, y, z)`` = ``(i, j, k)`` order, millimetres;
* ``direction`` is a 3x3 matrix whose **columns** are the LPS unit vectors of the
  ``i``, ``j`` and ``k`` index axes;
* world point = ``origin + direction @ (spacing * (i, j, k))``.

Index <-> world conversion happens only through :meth:`Volume.index_to_world` and
:meth:`Volume.world_to_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk

_ORTHO_TOL = 1e-4


@dataclass(frozen=True, eq=False)
class Volume:
    """An image volume in LPS millimetres.

    Parameters
    ----------
    array : (K, J, I) ndarray
        Voxel values indexed ``[k, j, i]``. CT in Hounsfield units (int16 when lossless,
        otherwise float32); MR float32; label maps integer.
    origin : (3,) float ndarray, mm, LPS
        World position of voxel ``(i, j, k) = (0, 0, 0)``'s centre.
    spacing : (3,) float ndarray, mm
        Voxel size along ``i``, ``j``, ``k``.
    direction : (3, 3) float ndarray
        Columns are the unit LPS directions of the ``i``, ``j``, ``k`` axes.
    modality : str
        ``"CT"``, ``"MR"`` or another DICOM modality code; ``"LABEL"`` for label maps.
    meta : dict
        Free-form description (patient, study and series identifiers, warnings).
    """

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    modality: str = "OT"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise ValueError(f"volume array must be 3-D [k, j, i], got shape {arr.shape}")
        origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(origin)):
            raise ValueError(f"volume origin is not finite: {origin}")
        if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
            raise ValueError(f"volume spacing must be positive and finite, got {spacing}")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=_ORTHO_TOL):
            raise ValueError("volume direction must be an orthonormal 3x3 matrix")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "direction", direction)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int, int]:
        """Number of voxels along ``(i, j, k)``, i.e. ``(x, y, z)`` as SimpleITK reports it."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in cubic millimetres."""
        return float(np.prod(self.spacing))

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) matrix mapping homogeneous ``(i, j, k, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing[np.newaxis, :]
        a[:3, 3] = self.origin
        return a

    # -- coordinates ---------------------------------------------------------------------------
    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Convert continuous voxel indices to world points.

        Parameters
        ----------
        ijk : (N, 3) or (3,) float ndarray
            Indices in ``(i, j, k)`` order (column, row, slice).

        Returns
        -------
        (N, 3) or (3,) float ndarray, mm, LPS
        """
        ijk = np.asarray(ijk, dtype=np.float64)
        m = self.direction * self.spacing[np.newaxis, :]
        return ijk @ m.T + self.origin

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Convert world points to continuous voxel indices ``(i, j, k)``.

        Parameters
        ----------
        points : (N, 3) or (3,) float ndarray, mm, LPS

        Returns
        -------
        (N, 3) or (3,) float ndarray
            Continuous indices; round them to address ``array[k, j, i]``.
        """
        points = np.asarray(points, dtype=np.float64)
        inv = (self.direction.T) / self.spacing[:, np.newaxis]
        return (points - self.origin) @ inv.T

    def contains_world(self, points: np.ndarray) -> np.ndarray:
        """Whether world points fall inside the grid (voxel centres +- half a voxel)."""
        ijk = np.atleast_2d(self.world_to_index(points))
        size = np.asarray(self.size, dtype=np.float64)
        inside = np.all((ijk >= -0.5) & (ijk <= size - 0.5), axis=1)
        return inside if np.ndim(points) > 1 else inside[0]

    def bounds_world(self) -> np.ndarray:
        """(8, 3) world positions of the corner voxel centres."""
        i, j, k = (s - 1 for s in self.size)
        corners = np.array(
            [[a, b, c] for a in (0, i) for b in (0, j) for c in (0, k)], dtype=np.float64
        )
        return self.index_to_world(corners)

    def orientation_label(self) -> str:
        """``"axial"``, ``"sagittal"``, ``"coronal"`` or ``"oblique"``, from the slice normal."""
        return orientation_from_normal(self.direction[:, 2])

    # -- derived volumes -----------------------------------------------------------------------
    def with_array(self, array: np.ndarray, *, modality: str | None = None) -> Volume:
        """A volume on the same grid holding another array of the same shape."""
        if np.shape(array) != self.array.shape:
            raise ValueError(f"array shape {np.shape(array)} != grid shape {self.array.shape}")
        return replace(self, array=np.asarray(array), modality=modality or self.modality)

    def same_grid(self, other: Volume, *, tol_mm: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape, origin, spacing and direction."""
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    # -- SimpleITK bridge ----------------------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image sharing this geometry (the array is copied)."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array), isVector=False)
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        img.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(
        cls, image: sitk.Image, *, modality: str = "OT", meta: dict[str, Any] | None = None
    ) -> Volume:
        """Wrap a 3-D SimpleITK image (its direction is taken as given; see ``to_lps``)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("only 3-D scalar images can become a Volume")
        return cls(
            array=sitk.GetArrayFromImage(image),
            origin=np.array(image.GetOrigin()),
            spacing=np.array(image.GetSpacing()),
            direction=np.array(image.GetDirection()).reshape(3, 3),
            modality=modality,
            meta=dict(meta or {}),
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description of the grid."""
        return {
            "modality": self.modality,
            "size": list(self.size),
            "spacing": [float(v) for v in self.spacing],
            "origin": [float(v) for v in self.origin],
            "direction": [float(v) for v in self.direction.reshape(-1)],
            "dtype": str(self.array.dtype),
            "orientation": self.orientation_label(),
        }


def orientation_from_normal(normal: np.ndarray, *, tol_deg: float = 1.0) -> str:
    """Name the slice orientation whose normal is ``normal`` (an LPS vector).

    Returns ``"sagittal"`` (normal along x), ``"coronal"`` (y), ``"axial"`` (z), or
    ``"oblique"`` when the normal is more than ``tol_deg`` from every axis.
    """
    n = np.asarray(normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    names = ("sagittal", "coronal", "axial")
    axis = int(np.argmax(np.abs(n)))
    if np.degrees(np.arccos(min(1.0, abs(n[axis])))) <= tol_deg:
        return names[axis]
    return "oblique"
