"""The set of distance fields a needle is scored against, stacked channel-last on one grid.

Layout. One sample of a needle reads every structure at the same point, so the fields are
interleaved as ``values[k, j, i, c]``: the eight trilinear corners of all channels are then eight
short contiguous runs (a cache line or two each) that the kernel loads as vectors.

Storage. Values are kept in fixed point, ``int16`` units of ``QUANTUM_MM = 1/64 mm``, rounded
*down* (``floor(d * 64)``): every stored value is a lower bound of the field it came from, within
0.016 mm, so clearances stay conservative, and surfaces move outward by at most 0.016 mm. The range
is +-511.98 mm (larger values are clipped: still "far" or "deep"). Half the bytes of float32 make
the scoring kernel about 20 % faster (it is bound by memory latency) and halve the memory.

Channels are padded to 1, 2, 4 or a multiple of 8 (at most 16) with far, role-less channels, so
the kernel's vector loops have a fixed width. Memory per voxel: 16 bytes for 5 to 8 channels (the
union layout: sacrum, foramina, canal, pelvic side, SI joint, ilium, lesion: 96 MB for a
200 x 200 x 150 crop), 32 bytes for 9 to 16 (one channel per foramen), plus one byte per voxel for
the nearest-foramen map in union mode.

Roles. ``"clearance"`` channels (``TRACK_MIN``) are signed distance fields whose minimum along
the needle matters: foramina (one channel per named foramen, or their union plus a
nearest-foramen map), the spinal canal, the SI-joint gap and the pelvic side (the space anterior
to the sacrum; negative inside it). ``"region"`` channels (``TRACK_SIGN``) are fields whose inside
matters: the sacrum (in-bone length, cortices crossed, bone ahead of the tip; build it from
sacrum | lesion so that a lytic lesion counts as inside the bone), the ilia (passing from an ilium
into the sacrum crosses the SI joint) and the lesion.

Every structure must lie inside the grid: outside it the kernel reads the nearest grid point,
which is then a lower bound of the true distance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numba
import numpy as np

from geometry.distance import (
    EMPTY_DISTANCE_MM,
    DistanceField,
    index_from_world_matrix,
    union_field,
)

TRACK_MIN = 1  #: role bit: the kernel tracks the channel's minimum along the needle (clearance)
TRACK_SIGN = 2  #: role bit: the kernel tracks inside length and sign changes (region)
QUANTUM_MM = 1.0 / 64.0  #: one unit of the stored fixed-point values (mm)
MAX_CHANNELS = 16  #: most channels a stack holds


def padded_channels(n: int) -> int:
    """Stored channel count for ``n`` channels: 1, 2, 4, 8 or 16."""
    for width in (1, 2, 4, 8, 16):
        if n <= width:
            return width
    raise ValueError(f"a field stack holds at most {MAX_CHANNELS} channels, got {n}")


def quantize_mm(values_mm: np.ndarray) -> np.ndarray:
    """Fixed-point codes of distances: ``floor(d / QUANTUM_MM)``, clipped to int16.

    Parameters
    ----------
    values_mm : ndarray, mm
        Finite distances.

    Returns
    -------
    int16 ndarray
        Codes ``q`` with ``q * QUANTUM_MM <= d`` (within one quantum, inside the range).
    """
    q = np.floor(np.asarray(values_mm, dtype=np.float64) / QUANTUM_MM)
    return np.clip(q, -32767, 32767).astype(np.int16)


@numba.njit(cache=True, parallel=True, nogil=True)
def _quantize_all(channels: tuple, out: np.ndarray, fill: int) -> np.ndarray:
    """``out[..., c] = quantize_mm(channels[c])`` for every channel, ``fill`` in the padding.

    ``channels`` is a tuple of float32 C-contiguous arrays (a homogeneous tuple compiles once
    per channel count and is cached on disk; a ``numba.typed.List`` would compile its own
    methods in every process).

    Slice by slice (one output slice stays in cache while its channels are written), in
    parallel over slices. Returns the count of non-finite values per channel (those voxels are
    left incomplete).
    """
    n = len(channels)
    nk, nj, ni, width = out.shape
    scale = 1.0 / QUANTUM_MM
    bad = np.zeros((nk, n), dtype=np.int64)
    for k in numba.prange(nk):
        for c in range(n):
            src = channels[c]
            for j in range(nj):
                for i in range(ni):
                    v = np.float64(src[k, j, i])
                    if not math.isfinite(v):
                        bad[k, c] += 1
                        continue
                    q = min(max(math.floor(v * scale), -32767.0), 32767.0)
                    out[k, j, i, c] = np.int16(q)
        for c in range(n, width):
            for j in range(nj):
                for i in range(ni):
                    out[k, j, i, c] = fill
    return bad.sum(axis=0)


@numba.njit(cache=True, parallel=True, nogil=True)
def _quantize_channel(src: np.ndarray, out: np.ndarray, c: int) -> int:
    """``out[..., c] = quantize_mm(src)`` (float32, C-contiguous ``src``), in parallel over
    slices. Returns the count of non-finite values (those voxels are left incomplete)."""
    nk, nj, ni, _ = out.shape
    scale = 1.0 / QUANTUM_MM
    bad = np.zeros(nk, dtype=np.int64)
    for k in numba.prange(nk):
        for j in range(nj):
            for i in range(ni):
                v = np.float64(src[k, j, i])
                if not math.isfinite(v):
                    bad[k] += 1
                    continue
                q = min(max(math.floor(v * scale), -32767.0), 32767.0)
                out[k, j, i, c] = np.int16(q)
    return bad.sum()


@dataclass(frozen=True, eq=False)
class FieldStack:
    """Distance fields of the structures a needle is scored against, on one grid.

    Build it with :func:`build_field_stack`.

    Parameters
    ----------
    values : (K, J, I, C) ndarray
        Signed distance of channel ``c`` at voxel ``[k, j, i]`` (negative inside): float mm,
        converted on construction to int16 codes of ``QUANTUM_MM`` (see the module notes) and
        padded to :func:`padded_channels`.
    channel_names : tuple of str
        Name of every (unpadded) channel.
    track : (C,) uint8 ndarray
        Role bits per channel (``TRACK_MIN`` clearance, ``TRACK_SIGN`` region); stored padded.
    origin : (3,) float ndarray, mm, LPS
    spacing : (3,) float ndarray, mm
    direction : (3, 3) float ndarray
        Grid geometry, as for :class:`~geometry.distance.DistanceField`.
    foramen_names : tuple of str
        Names of the foramina (e.g. ``"left S1"``).
    foramen_channels : tuple of int
        One channel per foramen, or one union channel when ``foramen_nearest`` is set.
    foramen_nearest : (K, J, I) int8 ndarray or None
        Union mode: index into ``foramen_names`` of the foramen nearest to each voxel.
    canal, sacrum, pelvic_side, si_joint, ilium, lesion : int
        Channel of each structure, -1 when absent.
    exact_within_mm : float
        Channel values are exact (to a quantum) below this distance and lower bounds beyond.

    Raises
    ------
    ValueError
        On a malformed grid, non-finite values, or more than ``MAX_CHANNELS`` channels.
    """

    values: np.ndarray
    channel_names: tuple[str, ...]
    track: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    foramen_names: tuple[str, ...] = ()
    foramen_channels: tuple[int, ...] = ()
    foramen_nearest: np.ndarray | None = None
    canal: int = -1
    sacrum: int = -1
    pelvic_side: int = -1
    si_joint: int = -1
    ilium: int = -1
    lesion: int = -1
    exact_within_mm: float = math.inf

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim != 4 or min(values.shape[:3]) < 2 or values.shape[3] < 1:
            raise ValueError(
                f"field stack must be (K, J, I, C) with K, J, I >= 2, got {values.shape}"
            )
        n_real = len(self.channel_names)
        track = np.asarray(self.track, dtype=np.uint8).reshape(-1)
        if n_real < 1 or values.shape[3] < n_real or track.shape[0] < n_real:
            raise ValueError("one name and one role per channel expected")
        padded = padded_channels(n_real)
        if values.dtype != np.int16 or values.shape[3] != padded:
            real = values[..., :n_real]
            if values.dtype != np.int16:
                if not np.all(np.isfinite(real)):
                    raise ValueError("distance fields must be finite")
                real = quantize_mm(real)
            full = np.empty(values.shape[:3] + (padded,), dtype=np.int16)
            full[..., :n_real] = real
            full[..., n_real:] = quantize_mm(np.array(EMPTY_DISTANCE_MM))
            values = full
        full_track = np.zeros(padded, dtype=np.uint8)
        full_track[:n_real] = track[:n_real]
        object.__setattr__(self, "values", np.ascontiguousarray(values))
        object.__setattr__(self, "track", full_track)
        object.__setattr__(self, "origin", np.asarray(self.origin, dtype=np.float64).reshape(3))
        object.__setattr__(self, "spacing", np.asarray(self.spacing, dtype=np.float64).reshape(3))
        object.__setattr__(
            self, "direction", np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        )
        if self.foramen_nearest is not None:
            nearest = np.ascontiguousarray(self.foramen_nearest, dtype=np.int8)
            if nearest.shape != values.shape[:3]:
                raise ValueError("the nearest-foramen map must have the grid's shape")
            object.__setattr__(self, "foramen_nearest", nearest)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(K, J, I)``."""
        k, j, i, _ = self.values.shape
        return (k, j, i)

    @property
    def n_channels(self) -> int:
        """Number of channels ``C`` (without the padding)."""
        return len(self.channel_names)

    @property
    def nbytes(self) -> int:
        """Memory held by the stack (bytes)."""
        extra = 0 if self.foramen_nearest is None else self.foramen_nearest.nbytes
        return int(self.values.nbytes + extra)

    def channel_mm(self, channel: int, box: tuple[slice, ...] = ()) -> np.ndarray:
        """The stored values of one channel, in mm.

        Parameters
        ----------
        channel : int
        box : tuple of slices, optional
            ``[k, j, i]`` slices: only that part of the grid is converted.

        Returns
        -------
        (K, J, I) float32 ndarray, mm
            The box's shape when ``box`` is given.
        """
        part = self.values[(*box, Ellipsis, channel)] if box else self.values[..., channel]
        return part.astype(np.float32) * np.float32(QUANTUM_MM)

    def index_from_world(self) -> np.ndarray:
        """(3, 4) affine from world points (mm, LPS) to continuous ``(i, j, k)`` indices."""
        return index_from_world_matrix(self.origin, self.spacing, self.direction)


def build_field_stack(
    *,
    sacrum: DistanceField,
    foramina: Mapping[str, DistanceField] | None = None,
    canal: DistanceField | None = None,
    pelvic_side: DistanceField | None = None,
    si_joint: DistanceField | None = None,
    ilium: DistanceField | None = None,
    lesion: DistanceField | None = None,
    foramina_union: bool = False,
) -> FieldStack:
    """Stack the distance fields of the anatomy for the scoring kernel.

    Parameters
    ----------
    sacrum : DistanceField
        The sacrum (bone, including any lesion inside it). Defines the grid.
    foramina : mapping of str to DistanceField, optional, keyword-only
        One field per named foramen (``{"left S1": field, ...}``).
    canal, pelvic_side, si_joint, ilium, lesion : DistanceField, optional, keyword-only
        Spinal canal; the pelvic side (the space anterior to the sacrum, negative inside); the
        SI-joint gap (both joints); both ilia; the lesion.
    foramina_union : bool, keyword-only
        Store one union channel and a nearest-foramen map instead of one channel per foramen:
        half the bytes per voxel with eight foramina, but only the nearest foramen's clearance is
        reported.

    Returns
    -------
    FieldStack

    Raises
    ------
    ValueError
        If the fields do not share the sacrum's grid, or there are more than 16 channels.
    """
    fields: list[DistanceField] = []
    names: list[str] = []
    track: list[int] = []

    def add(field: DistanceField, name: str, role: int) -> int:
        if not sacrum.same_grid(field):
            raise ValueError(f"the {name} distance field is not on the sacrum's grid")
        fields.append(field)
        names.append(name)
        track.append(role)
        return len(fields) - 1

    roles: dict[str, int] = {"sacrum": add(sacrum, "sacrum", TRACK_SIGN)}
    foramen_names: tuple[str, ...] = ()
    foramen_channels: tuple[int, ...] = ()
    nearest = None
    if foramina:
        foramen_names = tuple(foramina)
        if foramina_union:
            union, nearest = union_field([foramina[n] for n in foramen_names])
            foramen_channels = (add(union, "foramina", TRACK_MIN),)
        else:
            foramen_channels = tuple(
                add(foramina[n], f"foramen {n}", TRACK_MIN) for n in foramen_names
            )
    for name, field, role in (
        ("canal", canal, TRACK_MIN),
        ("pelvic_side", pelvic_side, TRACK_MIN),
        ("si_joint", si_joint, TRACK_MIN),
        ("ilium", ilium, TRACK_SIGN),
        ("lesion", lesion, TRACK_SIGN),
    ):
        if field is not None:
            roles[name] = add(field, name, role)
    padded = padded_channels(len(fields))
    values = np.empty(sacrum.values.shape + (padded,), dtype=np.int16)
    channels = tuple(np.ascontiguousarray(f.values, dtype=np.float32) for f in fields)
    bad = _quantize_all(channels, values, int(quantize_mm(np.array(EMPTY_DISTANCE_MM))))
    for c in np.nonzero(bad)[0]:
        raise ValueError(f"the {names[c]} distance field has non-finite values")
    return FieldStack(
        values=values,
        channel_names=tuple(names),
        track=np.array(track, dtype=np.uint8),
        origin=sacrum.origin,
        spacing=sacrum.spacing,
        direction=sacrum.direction,
        foramen_names=foramen_names,
        foramen_channels=foramen_channels,
        foramen_nearest=nearest,
        canal=roles.get("canal", -1),
        sacrum=roles["sacrum"],
        pelvic_side=roles.get("pelvic_side", -1),
        si_joint=roles.get("si_joint", -1),
        ilium=roles.get("ilium", -1),
        lesion=roles.get("lesion", -1),
        exact_within_mm=min(f.exact_within_mm for f in fields),
    )


@dataclass(frozen=True, eq=False)
class QuantizedField:
    """A distance field already in the stack's fixed-point codes (2 bytes a voxel).

    Made with :meth:`of` before a :class:`FieldStackBuilder` writes its stack (whose memory is
    taken as soon as one channel is written), so that large fields can be computed while only
    their codes are kept; :meth:`FieldStackBuilder.add` takes it like a
    :class:`~geometry.distance.DistanceField`, with the same result.

    Parameters
    ----------
    codes : (K, J, I) int16 ndarray
        ``quantize_mm`` of the field's values.
    origin, spacing, direction, exact_within_mm
        As for :class:`~geometry.distance.DistanceField`.
    """

    codes: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    exact_within_mm: float = math.inf

    @classmethod
    def of(cls, field: DistanceField) -> QuantizedField:
        """The codes of ``field``.

        Raises
        ------
        ValueError
            The field has non-finite values.
        """
        src = np.ascontiguousarray(field.values, dtype=np.float32)
        out = np.empty(src.shape + (1,), dtype=np.int16)
        if _quantize_channel(src, out, 0):
            raise ValueError("the distance field has non-finite values")
        return cls(out[..., 0], field.origin, field.spacing, field.direction, field.exact_within_mm)


#: Role of each named structure of a stack (foramina are added with ``add_foramen``).
_STRUCTURE_ROLES = {
    "sacrum": TRACK_SIGN,
    "canal": TRACK_MIN,
    "pelvic_side": TRACK_MIN,
    "si_joint": TRACK_MIN,
    "ilium": TRACK_SIGN,
    "lesion": TRACK_SIGN,
}


class FieldStackBuilder:
    """A :class:`FieldStack` filled one field at a time, for bounded memory.

    Each distance field is quantized into the stack as soon as it is added, so the caller can
    drop it before computing the next one: only the int16 stack and one float32 field are alive
    at once (:func:`build_field_stack` needs every field at the same time). The result is the
    same as :func:`build_field_stack` with the fields in the order they were added.

    Parameters
    ----------
    shape : (3,) int
        Grid shape ``(K, J, I)``.
    origin : (3,) float ndarray, mm, LPS
    spacing : (3,) float ndarray, mm
    direction : (3, 3) float ndarray
        Grid geometry, as for :class:`~geometry.distance.DistanceField`.
    n_channels : int
        How many fields will be added (sets the stored channel width; adding fewer works too,
        at the cost of one copy in :meth:`build`).

    Raises
    ------
    ValueError
        More than ``MAX_CHANNELS`` channels.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        origin: np.ndarray,
        spacing: np.ndarray,
        direction: np.ndarray,
        n_channels: int,
    ) -> None:
        self._values = np.empty(tuple(shape) + (padded_channels(n_channels),), dtype=np.int16)
        self._origin = np.asarray(origin, dtype=np.float64).reshape(3)
        self._spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
        self._direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        self._names: list[str] = []
        self._track: list[int] = []
        self._roles: dict[str, int] = {}
        self._foramen_names: list[str] = []
        self._foramen_channels: list[int] = []
        self._exact = math.inf

    def _put(self, field: DistanceField | QuantizedField, name: str, role: int) -> int:
        c = len(self._names)
        if c >= self._values.shape[3]:
            raise ValueError(f"the stack was made for {c} channels; {name} is one too many")
        quantized = isinstance(field, QuantizedField)
        shape = field.codes.shape if quantized else field.values.shape
        if shape != self._values.shape[:3] or not (
            np.allclose(field.origin, self._origin, atol=1e-3)
            and np.allclose(field.spacing, self._spacing, atol=1e-3)
            and np.allclose(field.direction, self._direction, atol=1e-6)
        ):
            raise ValueError(f"the {name} distance field is not on the stack's grid")
        if quantized:
            self._values[..., c] = field.codes
        else:
            src = np.ascontiguousarray(field.values, dtype=np.float32)
            if _quantize_channel(src, self._values, c):
                raise ValueError(f"the {name} distance field has non-finite values")
        self._names.append(name)
        self._track.append(role)
        self._exact = min(self._exact, float(field.exact_within_mm))
        return c

    def add(self, structure: str, field: DistanceField | QuantizedField) -> int:
        """Quantize the field of ``structure`` into the next channel; returns the channel.

        ``structure`` is one of ``sacrum``, ``canal``, ``pelvic_side``, ``si_joint``,
        ``ilium``, ``lesion`` (roles as in :func:`build_field_stack`).
        """
        if structure not in _STRUCTURE_ROLES:
            raise ValueError(f"unknown structure {structure!r}")
        if structure in self._roles:
            raise ValueError(f"the {structure} field was added already")
        self._roles[structure] = self._put(field, structure, _STRUCTURE_ROLES[structure])
        return self._roles[structure]

    def add_foramen(self, name: str, field: DistanceField | QuantizedField) -> int:
        """Quantize the field of the foramen ``name`` (e.g. ``"left S1"``) into the next channel."""
        c = self._put(field, f"foramen {name}", TRACK_MIN)
        self._foramen_names.append(name)
        self._foramen_channels.append(c)
        return c

    def build(self) -> FieldStack:
        """The stack (the builder must not be used afterwards).

        Raises
        ------
        ValueError
            No sacrum field was added.
        """
        if "sacrum" not in self._roles:
            raise ValueError("a field stack needs the sacrum's field")
        n = len(self._names)
        values = self._values
        if values.shape[3] != padded_channels(n):
            values = np.ascontiguousarray(values[..., : padded_channels(n)])
        values[..., n:] = quantize_mm(np.array(EMPTY_DISTANCE_MM))
        self._values = np.empty((0, 0, 0, 1), dtype=np.int16)
        return FieldStack(
            values=values,
            channel_names=tuple(self._names),
            track=np.array(self._track, dtype=np.uint8),
            origin=self._origin,
            spacing=self._spacing,
            direction=self._direction,
            foramen_names=tuple(self._foramen_names),
            foramen_channels=tuple(self._foramen_channels),
            canal=self._roles.get("canal", -1),
            sacrum=self._roles["sacrum"],
            pelvic_side=self._roles.get("pelvic_side", -1),
            si_joint=self._roles.get("si_joint", -1),
            ilium=self._roles.get("ilium", -1),
            lesion=self._roles.get("lesion", -1),
            exact_within_mm=self._exact,
        )
