"""Grids and millimetre morphology for the anatomy segmentation.

The segmentation works internally on *axis-aligned* grids: the direction is the identity,
so index ``i`` runs along +x (patient left), ``j`` along +y (posterior) and ``k`` along +z
(head), whatever the orientation of the study. :class:`Grid` describes such a grid and
resamples any :class:`~imaging.volume.Volume` onto it.

Morphology is done in millimetres with Euclidean distance maps (SimpleITK
``SignedMaurerDistanceMap`` with ``UseImageSpacing=True``), so a 6 mm ball is a 6 mm ball on
every grid, isotropic or not.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from imaging.volume import Volume


@dataclass(frozen=True)
class Grid:
    """An axis-aligned (identity direction) grid in LPS millimetres.

    Parameters
    ----------
    origin : (3,) float ndarray, mm, LPS
        Centre of voxel ``(i, j, k) = (0, 0, 0)``.
    spacing : (3,) float ndarray, mm
        Voxel size along x, y, z.
    shape : tuple of int
        Array shape ``(K, J, I)``.
    """

    origin: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def covering(cls, lo: np.ndarray, hi: np.ndarray, spacing_mm: float | np.ndarray) -> Grid:
        """The grid of spacing ``spacing_mm`` whose voxel centres cover the box ``[lo, hi]``."""
        sp = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,)).copy()
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
        n = np.maximum(np.ceil((hi - lo) / sp).astype(int) + 1, 1)
        return cls(origin=lo.copy(), spacing=sp, shape=(int(n[2]), int(n[1]), int(n[0])))

    # -- coordinates ---------------------------------------------------------------------------
    def axis_mm(self, axis: str) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along ``"x"``, ``"y"`` or ``"z"``."""
        a = "xyz".index(axis)
        n = self.shape[2 - a]
        return self.origin[a] + self.spacing[a] * np.arange(n)

    def index_to_world(self, kji: np.ndarray) -> np.ndarray:
        """``(N, 3)`` array indices ``[k, j, i]`` to ``(N, 3)`` LPS points (mm)."""
        kji = np.asarray(kji, dtype=np.float64)
        return self.origin + kji[..., ::-1] * self.spacing

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` LPS points (mm) to continuous array indices ``[k, j, i]``."""
        points = np.asarray(points, dtype=np.float64)
        return ((points - self.origin) / self.spacing)[..., ::-1]

    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel (mm^3)."""
        return float(np.prod(self.spacing))

    def to_sitk_reference(self) -> sitk.Image:
        """An empty SimpleITK image with this geometry (for ``Resample``)."""
        ref = sitk.Image([self.shape[2], self.shape[1], self.shape[0]], sitk.sitkUInt8)
        ref.SetOrigin(tuple(float(v) for v in self.origin))
        ref.SetSpacing(tuple(float(v) for v in self.spacing))
        return ref

    def image(self, array: np.ndarray) -> sitk.Image:
        """Wrap an array of this grid's shape as a SimpleITK image with this geometry."""
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetSpacing(tuple(float(v) for v in self.spacing))
        return img


def world_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box ``(lo, hi)`` (mm) of a volume's voxel centres."""
    corners = volume.bounds_world()
    return corners.min(axis=0), corners.max(axis=0)


def resample_to_grid(
    volume: Volume | sitk.Image,
    grid: Grid,
    *,
    linear: bool = True,
    default: float = 0.0,
    antialias: bool = False,
    dtype: type = np.float32,
) -> np.ndarray:
    """Sample a volume on a grid.

    Parameters
    ----------
    volume : Volume or sitk.Image
        Source (any spacing and direction).
    grid : Grid
        Target axis-aligned grid.
    linear : bool
        Trilinear interpolation (``True``) or nearest neighbour (labels).
    default : float
        Value outside the source.
    antialias : bool
        Average the source in blocks first when it is much finer than the grid
        (``BinShrink``), so thin bright cortex is not sampled away.
    dtype : numpy dtype
        Output array type.

    Returns
    -------
    (K, J, I) ndarray on ``grid``.
    """
    img = volume.to_sitk() if isinstance(volume, Volume) else volume
    if antialias:
        spacing = np.array(img.GetSpacing())
        target = float(np.min(grid.spacing))
        factors = [max(1, int(np.floor(target / s))) for s in spacing]
        if max(factors) > 1:
            img = sitk.Cast(sitk.BinShrink(img, factors), sitk.sitkFloat32)
    pixel = sitk.sitkFloat32 if linear else img.GetPixelID()
    interp = sitk.sitkLinear if linear else sitk.sitkNearestNeighbor
    out = sitk.Resample(
        img, grid.to_sitk_reference(), sitk.Transform(), interp, float(default), pixel
    )
    return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


# -- millimetre morphology --------------------------------------------------------------------


def distance_outside_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean distance (mm) from every voxel to the nearest voxel of ``mask`` (0 inside).

    Parameters
    ----------
    mask : (K, J, I) bool ndarray
    spacing : (3,) float ndarray, mm, ``(x, y, z)`` order

    Returns
    -------
    (K, J, I) float32 ndarray, mm
    """
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(v) for v in spacing))
    dist = sitk.SignedMaurerDistanceMap(
        img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    d = sitk.GetArrayFromImage(dist)
    return np.maximum(d, 0.0).astype(np.float32)


def dilate_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a Euclidean ball of ``radius_mm`` (voxel centres within the radius)."""
    if radius_mm <= 0:
        return mask.copy()
    return distance_outside_mm(mask, spacing) <= radius_mm + 1e-6


def erode_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a Euclidean ball of ``radius_mm`` (the image border counts as outside)."""
    if radius_mm <= 0:
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)
    keep = distance_outside_mm(~padded, spacing) > radius_mm + 1e-6
    return keep[1:-1, 1:-1, 1:-1]


def close_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Closing by a Euclidean ball (padded, so shapes at the border close too)."""
    if radius_mm <= 0:
        return mask.copy()
    pad = np.ceil(radius_mm / np.asarray(spacing)).astype(int)[::-1] + 1
    padded = np.pad(mask, [(p, p) for p in pad], constant_values=False)
    grown = distance_outside_mm(padded, spacing) <= radius_mm + 1e-6
    closed = distance_outside_mm(~grown, spacing) > radius_mm + 1e-6
    return closed[pad[0] : -pad[0], pad[1] : -pad[1], pad[2] : -pad[2]]


def open_mm(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Opening by a Euclidean ball."""
    if radius_mm <= 0:
        return mask.copy()
    return dilate_mm(erode_mm(mask, radius_mm, spacing), radius_mm, spacing) & mask


def enclosed_mm(mask: np.ndarray, reach_mm: float, spacing: np.ndarray) -> np.ndarray:
    """The mask plus what it encloses within ``reach_mm`` in one of the three axis planes.

    A voxel is enclosed when, in its axial, coronal or sagittal plane, the mask lies
    within ``reach_mm`` along both directions of both in-plane axes. This fills fatty
    marrow inside a thin cortex shell (enclosed at least in a cross-section) without
    filling grooves on the outside of the bone, which a closing with a ball that large
    would: a groove is open along itself and toward the outside in every plane. Beyond
    the array border there is no mask.

    Parameters
    ----------
    mask : (K, J, I) bool ndarray
    reach_mm : float
    spacing : (3,) float ndarray, mm, ``(x, y, z)`` order

    Returns
    -------
    (K, J, I) bool ndarray
    """
    m8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    both = []
    for axis in range(3):
        n = int(np.ceil(reach_mm / float(spacing[2 - axis]))) // 2 * 2 + 1
        shift = n // 2 + 1
        length = mask.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (shift, shift)
        # win[q]: mask within [q - n//2, q + n//2] of the padded axis, where voxel p sits
        # at q = p + shift: win[p + 2 shift] looks at [p + 1, p + n], win[p] at
        # [p - n, p - 1]
        win = ndi.maximum_filter1d(np.pad(m8, pad), size=n, axis=axis, mode="constant") > 0
        ahead = [slice(None)] * 3
        behind = [slice(None)] * 3
        ahead[axis] = slice(2 * shift, 2 * shift + length)
        behind[axis] = slice(0, length)
        both.append(win[tuple(ahead)] & win[tuple(behind)])
    plane = (both[1] & both[2]) | (both[0] & both[2]) | (both[0] & both[1])
    return mask | plane


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling (cavities not connected to the array border)."""
    return ndi.binary_fill_holes(mask)


def bbox_slices(mask: np.ndarray, *, pad: int) -> tuple[slice, slice, slice]:
    """Index slices of the bounding box of ``mask`` grown by ``pad`` voxels (clipped)."""
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    return (
        slice(int(lo[0]), int(hi[0])),
        slice(int(lo[1]), int(hi[1])),
        slice(int(lo[2]), int(hi[2])),
    )


def sparse_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """A zero array whose memory is taken only where it is written.

    Backed by a private anonymous memory map where the system has one (Linux, macOS):
    untouched pages stay unallocated, in pages of a few kB (``np.zeros`` may hand out
    2 MB huge pages, so one written voxel would take 2 MB). A mask holding a structure
    much smaller than its grid then costs about the bounding boxes it is written in.
    Elsewhere, ``np.zeros``. The array is an ordinary writeable ndarray.
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    flags = getattr(mmap, "MAP_PRIVATE", None)
    anonymous = getattr(mmap, "MAP_ANONYMOUS", None)
    if flags is None or anonymous is None or count * dtype.itemsize < mmap.PAGESIZE:
        return np.zeros(shape, dtype)
    buffer = mmap.mmap(-1, count * dtype.itemsize, flags=flags | anonymous)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def label_masks(labels: np.ndarray, codes: dict[str, int]) -> dict[str, np.ndarray]:
    """One boolean mask per named code of a label image, each taking memory only around it.

    Parameters
    ----------
    labels : (K, J, I) integer ndarray
        E.g. ``AnatomyMasks.masks["foramina"]`` (codes ``1..8``, 0 elsewhere).
    codes : dict of str to int
        Name -> positive label value.

    Returns
    -------
    dict of str to (K, J, I) bool ndarray
        ``labels == code`` for each name, as :func:`sparse_zeros` arrays written only in the
        code's bounding box (one pass over ``labels`` for all of them).
    """
    top = max([int(c) for c in codes.values()], default=0)
    boxes = ndi.find_objects(labels, max_label=top) if top > 0 else []
    out = {}
    for name, code in codes.items():
        mask = sparse_zeros(labels.shape, bool)
        box = boxes[code - 1] if 0 < code <= len(boxes) else None
        if box is not None:
            mask[box] = labels[box] == code
        out[name] = mask
    return out


def release_free_memory() -> None:
    """Hand memory freed by the last stage back to the system (glibc ``malloc_trim``).

    The C allocator keeps freed medium-sized blocks (slabs, fine-grid images) for reuse, so a
    finished stage would go on holding its peak. Nothing happens where there is no glibc.
    """
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None
