"""Grid helpers shared by lesion growing and lesion metrics.

Crops of a :class:`~imaging.volume.Volume` around a point, nearest-neighbour sampling of a
mask onto another grid, and binary morphology with radii in millimetres on anisotropic
grids. Arrays are indexed ``[k, j, i]``; radii and distances are in mm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from imaging.volume import Volume


@dataclass(frozen=True)
class Crop:
    """A box of voxels of a parent grid.

    Attributes
    ----------
    lo : (3,) int tuple
        First voxel ``(k, j, i)`` of the box in the parent grid.
    hi : (3,) int tuple
        One past the last voxel ``(k, j, i)`` of the box.
    """

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Slices that cut the box out of a parent ``[k, j, i]`` array."""
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Box shape ``(K, J, I)``."""
        return tuple(b - a for a, b in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]


def crop_around(volume: Volume, center_lps: np.ndarray, *, radius_mm: float) -> Crop:
    """The voxel box that holds a ball of ``radius_mm`` around a world point, clipped to the grid.

    Parameters
    ----------
    volume : Volume
        Parent grid.
    center_lps : (3,) float ndarray, mm, LPS
    radius_mm : float
        Half-width of the box along every index axis, in mm.

    Returns
    -------
    Crop
    """
    ijk = volume.world_to_index(np.asarray(center_lps, dtype=np.float64))
    half = np.ceil(radius_mm / volume.spacing)
    kji = ijk[::-1]
    half_kji = half[::-1]
    shape = np.asarray(volume.array.shape)
    lo = np.clip(np.floor(kji - half_kji), 0, shape).astype(int)
    hi = np.clip(np.ceil(kji + half_kji) + 1, 0, shape).astype(int)
    return Crop(lo=tuple(int(v) for v in lo), hi=tuple(int(v) for v in hi))  # type: ignore[arg-type]


def bbox_crop(mask: np.ndarray, *, pad: int, shape: tuple[int, ...] | None = None) -> Crop:
    """The bounding box of the non-zero voxels of ``mask`` grown by ``pad`` voxels.

    The box is clipped to ``shape`` (default: the mask's shape). ``mask`` must not be empty.
    """
    shape = mask.shape if shape is None else shape
    lo, hi = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        lo.append(max(0, int(hit[0]) - pad))
        hi.append(min(shape[axis], int(hit[-1]) + 1 + pad))
    return Crop(lo=tuple(lo), hi=tuple(hi))  # type: ignore[arg-type]


def sub_volume(volume: Volume, crop: Crop) -> Volume:
    """The part of ``volume`` inside ``crop`` as a Volume with the matching origin."""
    k0, j0, i0 = crop.lo
    origin = volume.index_to_world(np.array([i0, j0, k0], dtype=np.float64))
    return replace(volume, array=volume.array[crop.slices], origin=origin)


def grid_like(volume: Volume, crop: Crop, array: np.ndarray) -> Volume:
    """A Volume carrying ``array`` (of ``crop.shape``) on the crop's part of ``volume``'s grid."""
    k0, j0, i0 = crop.lo
    origin = volume.index_to_world(np.array([i0, j0, k0], dtype=np.float64))
    return replace(volume, array=array, origin=origin, modality="LABEL", meta={})


def mask_on_grid(mask: Volume, reference: Volume) -> np.ndarray:
    """``mask > 0`` resampled (nearest neighbour) onto ``reference``'s grid.

    Parameters
    ----------
    mask : Volume
        Any label or binary volume, on any grid.
    reference : Volume
        The grid to sample on.

    Returns
    -------
    (K, J, I) bool ndarray
        ``reference.array.shape``; voxels outside ``mask``'s grid are False.
    """
    if mask.same_grid(reference):
        return np.asarray(mask.array) > 0
    # only the block of ``mask`` under the reference grid (plus a voxel) is resampled
    k, j, i = reference.array.shape
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)])
    ijk = mask.world_to_index(reference.index_to_world(corners.astype(np.float64)))
    size = np.asarray(mask.size)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 2, 0, size)
    if np.any(hi <= lo):
        return np.zeros(reference.array.shape, dtype=bool)
    block = np.asarray(mask.array)[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] > 0
    origin = mask.index_to_world(lo.astype(np.float64))
    src = replace(mask, array=block.astype(np.uint8), origin=origin).to_sitk()
    ref = sitk.Image(list(reference.size), sitk.sitkUInt8)
    ref.SetOrigin(tuple(float(v) for v in reference.origin))
    ref.SetSpacing(tuple(float(v) for v in reference.spacing))
    ref.SetDirection(tuple(float(v) for v in reference.direction.reshape(-1)))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(out) > 0


def values_at(volume: Volume, points_lps: np.ndarray) -> np.ndarray:
    """Nearest-voxel values of ``volume`` at world points (0 outside the grid).

    Parameters
    ----------
    volume : Volume
    points_lps : (N, 3) float ndarray, mm, LPS

    Returns
    -------
    (N,) ndarray of ``volume.array.dtype``
    """
    ijk = np.rint(np.atleast_2d(volume.world_to_index(points_lps))).astype(np.int64)
    size = np.asarray(volume.size)
    ok = np.all((ijk >= 0) & (ijk < size), axis=1)
    out = np.zeros(len(ijk), dtype=volume.array.dtype)
    i, j, k = ijk[ok].T
    out[ok] = volume.array[k, j, i]
    return out


def radius_vox(spacing: np.ndarray, radius_mm: float) -> list[int]:
    """Kernel radius in voxels along ``(i, j, k)`` for a ball of ``radius_mm`` (at least 0)."""
    return [int(v) for v in np.floor(radius_mm / np.asarray(spacing) + 1e-6)]


def _to_image(mask: np.ndarray, spacing: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    img.SetSpacing(tuple(float(v) for v in spacing))
    return img


def dilate(mask: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Binary dilation of a ``[k, j, i]`` mask by a ball of ``radius_mm`` (per-axis voxel radii)."""
    r = radius_vox(spacing, radius_mm)
    if max(r) == 0:
        return mask.astype(bool)
    out = sitk.BinaryDilate(_to_image(mask, spacing), r, sitk.sitkBall, 0, 1)
    return sitk.GetArrayFromImage(out) > 0


def closing(mask: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Binary closing by a ball of ``radius_mm``, safe at the array border."""
    r = radius_vox(spacing, radius_mm)
    if max(r) == 0:
        return mask.astype(bool)
    out = sitk.BinaryMorphologicalClosing(_to_image(mask, spacing), r, sitk.sitkBall, 1, True)
    return sitk.GetArrayFromImage(out) > 0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities of a ``[k, j, i]`` mask (background not face-connected to the border)."""
    mask = np.asarray(mask, dtype=bool)
    background = ~mask
    labels, n = ndi.label(background)
    if n == 0:
        return mask.copy()
    open_to_border = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for end in (0, -1):
            open_to_border[np.take(labels, end, axis=axis)] = True
    open_to_border[0] = False
    return mask | (background & ~open_to_border[labels])
