"""Scoring straight needles against a stack of distance fields (numba kernels).

A needle is the segment from its skin entry to its tip (world points, mm, LPS). The kernel walks the
segment on a lattice of ``step_mm`` (both ends included), samples every channel of a
:class:`~geometry.fieldstack.FieldStack` by trilinear interpolation, and keeps, per channel:

* clearance channels (foramina, canal, SI joint, pelvic side): the minimum sampled value and where
  along the needle it occurs (the earliest sample wins ties);
* region channels (sacrum, ilium, lesion): the length of the segment inside (value < 0, crossing
  points placed by linear interpolation between consecutive lattice samples) and the number of
  sign changes;
* every channel: the value at the tip.

It also marches from the tip along the needle direction until the sacrum field turns positive (the
bone left ahead of the tip; sphere tracing, then two regula-falsi steps) and reads the pelvic-side
field there. :func:`score_needles` turns the raw minima into conservative clearances with the
sampling bound of :func:`geometry.distance.conservative_distance_mm`.

Skipping. The trilinear interpolant of 1-Lipschitz node values changes by at most
``L_u = sum_a spacing_a |du_a|`` mm per mm along a direction ``u`` (``du`` in voxels per mm, so
``1 <= L_u <= sqrt(3)``). A sample whose clearance values exceed the running minima (or the
clearance cap) by ``H`` and whose region values are at least ``H`` from zero guarantees that no
lattice sample within ``H / L_u`` can change any result, so the walk jumps ahead; the tip is
sampled first so the minima start low. A region sign change found after a jump re-samples the
lattice point just before it, so crossings are interpolated between the same two samples as
without skipping: the results are bit-identical to the unskipped walk (tested).

Speed. The kernel is bound by memory latency, so: channels are interleaved (one sample reads all
of them from the same few cache lines), stored as int16 fixed point (half the bytes), loaded and
interpolated with explicit LLVM vector instructions (:func:`_make_trilinear`; numba leaves LLVM's
SLP vectoriser off), prefetched ahead of the walk, and each needle is walked by up to three
walkers (consecutive stretches of the lattice) taking turns with the bone-ahead march: independent
chains of reads whose cache misses the processor overlaps. None of this changes a result.

Results are written to a float32 array ``out[N, 5 * C + N_SCALARS]`` (``C``: stored, padded
channels): per channel ``c`` the columns ``5c + CH_MIN, CH_MIN_AT, CH_INSIDE_LEN, CH_CROSSINGS,
CH_TIP`` and then the scalar columns ``5C + SC_*`` (see the constants). Each needle is computed by
one thread from its own inputs only, so the results are bit-identical for any number of threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from geometry.distance import DistanceField, conservative_distance_mm, interpolation_bound_mm
from geometry.fieldstack import (
    QUANTUM_MM,
    TRACK_MIN,
    TRACK_SIGN,
    FieldStack,
    build_field_stack,
)

# per-channel columns (offset within the channel's block of CH_COLUMNS)
CH_MIN = 0  #: minimum sampled value, capped (mm; clearance channels, else NaN)
CH_MIN_AT = 1  #: distance from the entry of that minimum (mm; NaN when capped)
CH_INSIDE_LEN = 2  #: length of the segment inside (value < 0) (mm; region channels, else NaN)
CH_CROSSINGS = 3  #: number of sign changes along the segment (region channels, else NaN)
CH_TIP = 4  #: interpolated value at the tip (mm; every channel)
CH_COLUMNS = 5

# scalar columns (offset after the channel blocks)
SC_LENGTH = 0  #: entry-to-tip length (mm)
SC_AHEAD = 1  #: bone ahead of the tip along the needle direction (mm; 0 if the tip is outside bone)
SC_AHEAD_EXIT_SIDE = 2  #: pelvic-side field where the ray leaves the bone (mm; NaN if none)
SC_OUTSIDE_GRID = 3  #: length of the segment outside the grid (mm)
SC_LABEL = 4  #: label-map value at the minimum of the labelled channel (-1 if none)
SC_EVALUATED = 5  #: number of points sampled (diagnostic)
SC_LATTICE = 6  #: number of lattice samples without skipping (diagnostic)
N_SCALARS = 7

_CHUNK = 64  # needles per parallel work item
# margin of the skip test: stored codes are within one quantum (1/64 mm) of a 1-Lipschitz field,
# plus float32 rounding of the interpolant
_SKIP_EPS_MM = 0.02
_PREFETCH_AHEAD = 6  # samples ahead whose cell is prefetched
_PREFETCH_START = 2  # samples prefetched at the start of each walker


@intrinsic
def _prefetch(typingctx, arr, index):  # noqa: ANN001, ANN202
    """Hint the CPU to fetch the cache line holding ``arr[index]`` (no effect on results)."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _clamp_cell(x: float, n: int) -> tuple[int, np.float32]:
    if x < 0.0:
        x = 0.0
    elif x > n - 1.0:
        x = n - 1.0
    i0 = int(x)
    if i0 > n - 2:
        i0 = n - 2
    return i0, np.float32(x - i0)


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(
    x: float, y: float, z: float, ni: int, nj: int, nk: int, nc: int
) -> tuple[np.uint64, np.float32, np.float32, np.float32]:
    """Flat index of the cell's first corner (channel 0) and the fractions, clamped to the grid."""
    i0, fx = _clamp_cell(x, ni)
    j0, fy = _clamp_cell(y, nj)
    k0, fz = _clamp_cell(z, nk)
    b = np.uint64(((k0 * nj + j0) * ni + i0) * nc)
    return b, fx, fy, fz


@numba.njit(cache=True, nogil=True, inline="always")
def _prefetch_cell(
    flat: np.ndarray, b: np.uint64, si: np.uint64, sj: np.uint64, sk: np.uint64
) -> None:
    last = si + si - np.uint64(1)
    _prefetch(flat, b)
    _prefetch(flat, b + last)
    _prefetch(flat, b + sj)
    _prefetch(flat, b + sj + last)
    _prefetch(flat, b + sk)
    _prefetch(flat, b + sk + last)
    _prefetch(flat, b + sk + sj)
    _prefetch(flat, b + sk + sj + last)


def _make_trilinear(width: int):  # noqa: ANN202
    """An intrinsic interpolating ``width`` consecutive channels with LLVM vector instructions.

    ``_trilinear(flat, b, si, sj, sk, fx, fy, fz, out, o)`` writes to ``out[o:o + width]`` (mm)
    the trilinear interpolation of the int16 codes ``flat[b + c + {0, si} + {0, sj} + {0, sk}]``
    at fractions ``(fx, fy, fz)``, times ``QUANTUM_MM``: ``a + f * (b - a)`` per axis in float32,
    each operation rounded as the scalar code (:func:`_sample_one`) rounds it (no fused
    multiply-add), so both give identical values. numba leaves LLVM's SLP vectoriser off (it
    miscompiled), hence the explicit vectors.
    """

    @intrinsic
    def _trilinear(typingctx, flat, b, si, sj, sk, fx, fy, fz, out, o):  # noqa: ANN001, ANN202
        sig = types.void(flat, b, si, sj, sk, fx, fy, fz, out, o)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            flat_t = signature.args[0]
            out_t = signature.args[8]
            fa = context.make_array(flat_t)(context, builder, args[0])
            oa = context.make_array(out_t)(context, builder, args[8])
            b0, s_i, s_j, s_k = args[1], args[2], args[3], args[4]
            vty = ir.VectorType(ir.FloatType(), width)
            i32 = ir.IntType(32)

            ity = ir.VectorType(ir.IntType(16), width)

            def load(idx):  # noqa: ANN001, ANN202
                ptr = cgutils.get_item_pointer(
                    context, builder, flat_t, fa, [idx], wraparound=False
                )
                codes = builder.load(builder.bitcast(ptr, ity.as_pointer()), align=2, typ=ity)
                return builder.sitofp(codes, vty)

            def splat(x):  # noqa: ANN001, ANN202
                v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, i32(0))
                mask = ir.Constant(ir.VectorType(i32, width), [0] * width)
                return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)

            def lerp(lo, hi, f):  # noqa: ANN001, ANN202
                return builder.fadd(lo, builder.fmul(f, builder.fsub(hi, lo)))

            wx, wy, wz = splat(args[5]), splat(args[6]), splat(args[7])
            add = builder.add
            bj = add(b0, s_j)
            bk = add(b0, s_k)
            bjk = add(bk, s_j)
            a00 = lerp(load(b0), load(add(b0, s_i)), wx)
            a10 = lerp(load(bj), load(add(bj, s_i)), wx)
            a01 = lerp(load(bk), load(add(bk, s_i)), wx)
            a11 = lerp(load(bjk), load(add(bjk, s_i)), wx)
            r = lerp(lerp(a00, a10, wy), lerp(a01, a11, wy), wz)
            r = builder.fmul(r, ir.Constant(vty, [QUANTUM_MM] * width))
            optr = cgutils.get_item_pointer(
                context, builder, out_t, oa, [args[9]], wraparound=False
            )
            builder.store(r, builder.bitcast(optr, vty.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return _trilinear


_trilinear8 = _make_trilinear(8)
_trilinear4 = _make_trilinear(4)
_trilinear2 = _make_trilinear(2)
_trilinear1 = _make_trilinear(1)


@numba.njit(cache=True, nogil=True, inline="always")
def _sample_all(
    flat: np.ndarray,
    nc: int,
    b: np.uint64,
    fx: np.float32,
    fy: np.float32,
    fz: np.float32,
    si: np.uint64,
    sj: np.uint64,
    sk: np.uint64,
    out: np.ndarray,
    o: int,
) -> None:
    """Trilinear interpolation (mm) of the ``nc`` channels in the cell at ``b`` into ``out[o:]``.

    ``nc`` is 1, 2, 4, 8 or 16 (:func:`geometry.fieldstack.padded_channels`).
    """
    if nc == 8:
        _trilinear8(flat, b, si, sj, sk, fx, fy, fz, out, o)
    elif nc == 4:
        _trilinear4(flat, b, si, sj, sk, fx, fy, fz, out, o)
    elif nc == 2:
        _trilinear2(flat, b, si, sj, sk, fx, fy, fz, out, o)
    elif nc == 1:
        _trilinear1(flat, b, si, sj, sk, fx, fy, fz, out, o)
    else:
        _trilinear8(flat, b, si, sj, sk, fx, fy, fz, out, o)
        _trilinear8(flat, b + np.uint64(8), si, sj, sk, fx, fy, fz, out, o + 8)


@numba.njit(cache=True, nogil=True, inline="always")
def _sample_one(
    flat: np.ndarray, ni: int, nj: int, nk: int, nc: int, c: int, x: float, y: float, z: float
) -> np.float32:
    """Trilinear interpolation (mm) of channel ``c`` at continuous index ``(x, y, z)`` (clamped)."""
    b, fx, fy, fz = _cell(x, y, z, ni, nj, nk, nc)
    b += np.uint64(c)
    si = np.uint64(nc)
    sj = np.uint64(ni * nc)
    sk = np.uint64(nj * ni * nc)
    v000 = np.float32(flat[b])
    v010 = np.float32(flat[b + sj])
    v001 = np.float32(flat[b + sk])
    v011 = np.float32(flat[b + sk + sj])
    a00 = v000 + fx * (np.float32(flat[b + si]) - v000)
    a10 = v010 + fx * (np.float32(flat[b + sj + si]) - v010)
    a01 = v001 + fx * (np.float32(flat[b + sk + si]) - v001)
    a11 = v011 + fx * (np.float32(flat[b + sk + sj + si]) - v011)
    b0 = a00 + fy * (a10 - a00)
    b1 = a01 + fy * (a11 - a01)
    return (b0 + fz * (b1 - b0)) * np.float32(QUANTUM_MM)


def _make_track(width: int):  # noqa: ANN202
    """An intrinsic doing one sample's bookkeeping for ``width`` channels with vector instructions.

    ``_track(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign) -> (h, changed)``, with
    the channels at ``vals[ov:ov + width]`` and ``prev[op:op + width]``:

    * ``changed``: some region channel (``off_sign == 0``) has a different sign in ``vals`` and
      ``prev``;
    * running minima: where ``vals < curmin``, or equal with ``t < argt``, ``curmin = vals`` and
      ``argt = t`` (so the earliest sample wins ties, in any order of evaluation);
    * ``h``: the skip horizon (mm of field change), the least over channels of
      ``vals - min(curmin, cap) + off_min`` and ``|vals| + off_sign``.
    """

    @intrinsic
    def _track(typingctx, vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign):  # noqa: ANN001, ANN202
        ret = types.Tuple((types.float32, types.boolean))
        sig = ret(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            f32 = ir.FloatType()
            vty = ir.VectorType(f32, width)
            i32 = ir.IntType(32)

            offsets = {0: args[1], 2: args[3]}

            def ptr(k):  # noqa: ANN001, ANN202
                aryty = signature.args[k]
                ary = context.make_array(aryty)(context, builder, args[k])
                index = offsets.get(k, ir.Constant(ir.IntType(64), 0))
                p = cgutils.get_item_pointer(
                    context, builder, aryty, ary, [index], wraparound=False
                )
                return builder.bitcast(p, vty.as_pointer())

            def load(k):  # noqa: ANN001, ANN202
                return builder.load(ptr(k), align=4, typ=vty)

            def splat(x):  # noqa: ANN001, ANN202
                v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, i32(0))
                mask = ir.Constant(ir.VectorType(i32, width), [0] * width)
                return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)

            def vmin(a, b):  # noqa: ANN001, ANN202
                return builder.select(builder.fcmp_ordered("<", a, b), a, b)

            v, pv, cm, at = load(0), load(2), load(4), load(5)
            tt, cp = splat(args[6]), splat(args[7])
            omin, osign = load(8), load(9)
            zero = ir.Constant(vty, [0.0] * width)
            # sign changes of region channels
            flip = builder.xor(
                builder.fcmp_ordered("<", v, zero), builder.fcmp_ordered("<", pv, zero)
            )
            flip = builder.and_(flip, builder.fcmp_ordered("==", osign, zero))
            bits = builder.bitcast(flip, ir.IntType(width))
            changed = builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(width), 0))
            # running minima
            lower = builder.or_(
                builder.fcmp_ordered("<", v, cm),
                builder.and_(builder.fcmp_ordered("==", v, cm), builder.fcmp_ordered("<", tt, at)),
            )
            cm = builder.select(lower, v, cm)
            builder.store(cm, ptr(4), align=4)
            builder.store(builder.select(lower, tt, at), ptr(5), align=4)
            # skip horizon
            absv = builder.select(builder.fcmp_ordered("<", v, zero), builder.fsub(zero, v), v)
            terms = vmin(
                builder.fadd(builder.fsub(v, vmin(cm, cp)), omin), builder.fadd(absv, osign)
            )
            half = width
            while half > 1:
                half //= 2
                hi = builder.shuffle_vector(
                    terms,
                    ir.Constant(vty, ir.Undefined),
                    ir.Constant(
                        ir.VectorType(i32, width),
                        [half + q if q < half else q for q in range(width)],
                    ),
                )
                terms = vmin(terms, hi)
            h = builder.extract_element(terms, i32(0))
            return context.make_tuple(builder, ret, [h, changed])

        return sig, codegen

    return _track


_track8 = _make_track(8)
_track4 = _make_track(4)
_track2 = _make_track(2)
_track1 = _make_track(1)
_track16 = _make_track(16)


@numba.njit(cache=True, nogil=True, inline="always")
def _track(
    nc: int,
    vals: np.ndarray,
    ov: int,
    prev: np.ndarray,
    op: int,
    curmin: np.ndarray,
    argt: np.ndarray,
    t: np.float32,
    cap: np.float32,
    off_min: np.ndarray,
    off_sign: np.ndarray,
) -> tuple[np.float32, bool]:
    if nc == 8:
        return _track8(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)
    if nc == 4:
        return _track4(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)
    if nc == 2:
        return _track2(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)
    if nc == 1:
        return _track1(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)
    return _track16(vals, ov, prev, op, curmin, argt, t, cap, off_min, off_sign)


@numba.njit(cache=True, nogil=True)
def _update_min(
    nc: int, vals: np.ndarray, o: int, t: np.float32, curmin: np.ndarray, argt: np.ndarray
) -> None:
    """Running minima, as :func:`_make_track` keeps them (the earliest sample wins ties)."""
    for c in range(nc):
        v = vals[o + c]
        if v < curmin[c] or (v == curmin[c] and t < argt[c]):
            curmin[c] = v
            argt[c] = t


@numba.njit(cache=True, nogil=True)
def _crossings(
    va: np.ndarray,
    oa: int,
    ta: float,
    vb: np.ndarray,
    ob: int,
    tb: float,
    signs: np.ndarray,
    runstart: np.ndarray,
    inlen: np.ndarray,
    cross: np.ndarray,
    ow: int,
) -> None:
    """Account the sign changes of region channels between consecutive lattice samples."""
    for q in range(signs.shape[0]):
        c = signs[q]
        a = va[oa + c]
        b = vb[ob + c]
        inb = b < 0.0
        if (a < 0.0) != inb:
            tc = ta + (tb - ta) * (float(a) / (float(a) - float(b)))
            cross[ow + c] += 1
            if inb:
                runstart[ow + c] = tc
            else:
                inlen[ow + c] += tc - runstart[ow + c]


@numba.njit(cache=True, nogil=True)
def _inside_grid_length(
    px: float,
    py: float,
    pz: float,
    qx: float,
    qy: float,
    qz: float,
    length: float,
    ni: int,
    nj: int,
    nk: int,
) -> float:
    """Length of ``p + t q``, ``0 <= t <= length``, inside the box of voxel centres."""
    t0 = 0.0
    t1 = length
    for axis in range(3):
        if axis == 0:
            p, q, hi = px, qx, ni - 1.0
        elif axis == 1:
            p, q, hi = py, qy, nj - 1.0
        else:
            p, q, hi = pz, qz, nk - 1.0
        if q == 0.0:
            if p < 0.0 or p > hi:
                return 0.0
        else:
            ta = (0.0 - p) / q
            tb = (hi - p) / q
            if ta > tb:
                ta, tb = tb, ta
            if ta > t0:
                t0 = ta
            if tb < t1:
                t1 = tb
    return t1 - t0 if t1 > t0 else 0.0


# walker state columns (int64 ``wi[w, :]``; the position of the last sample is in ``wf[w]``)
_W_M = 0  # next lattice sample to evaluate
_W_PREV = 1  # last lattice sample evaluated (-1: none yet)
_W_END = 2  # last lattice sample of this walker
_W_PARITY = 3  # which of the walker's two value buffers holds the last sample
_W_ACTIVE = 4
_WALKERS = 3  # walkers per needle (each takes a stretch of the lattice)
_WALK_MIN = 12  # fewest lattice samples per walker


@numba.njit(cache=True, nogil=True)
def _score_range(
    lo: int,
    hi: int,
    entries: np.ndarray,
    tips: np.ndarray,
    flat: np.ndarray,
    dims: np.ndarray,
    a: np.ndarray,
    spacing: np.ndarray,
    track: np.ndarray,
    roles: np.ndarray,
    labels: np.ndarray,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Score needles ``lo .. hi - 1`` into ``out`` (one thread).

    Each needle's lattice is walked by two walkers (its first and second half) taking turns, and
    the bone-ahead march advances alongside them: three independent chains of memory reads whose
    cache misses the processor overlaps. The minima do not depend on the order of evaluation
    (ties go to the earliest sample) and each walker accounts its own crossings, so the results
    do not depend on the interleaving.
    """
    ni = dims[0]
    nj = dims[1]
    nk = dims[2]
    nc = dims[3]
    bone_ch = roles[0]
    side_ch = roles[1]
    label_ch = roles[2]
    step = params[0]
    ahead_max = params[1]
    skip = params[2] != 0.0
    cap = np.float32(params[3])
    sc = CH_COLUMNS * nc
    si = np.uint64(nc)
    sj = np.uint64(ni * nc)
    sk = np.uint64(nj * ni * nc)
    buf = np.empty(2 * _WALKERS * nc, dtype=np.float32)  # two value buffers per walker
    tmp = np.empty(nc, dtype=np.float32)
    tipv = np.empty(nc, dtype=np.float32)
    curmin = np.empty(nc, dtype=np.float32)
    argt = np.empty(nc, dtype=np.float32)
    inlen = np.empty(_WALKERS * nc, dtype=np.float64)
    runstart = np.empty(_WALKERS * nc, dtype=np.float64)
    cross = np.empty(_WALKERS * nc, dtype=np.int64)
    wi = np.zeros((_WALKERS, 5), dtype=np.int64)
    wf = np.zeros(_WALKERS, dtype=np.float64)
    n_sign = 0
    for c in range(nc):
        n_sign += (track[c] & TRACK_SIGN) != 0
    signs = np.empty(n_sign, dtype=np.int64)
    n_sign = 0
    for c in range(nc):
        if track[c] & TRACK_SIGN:
            signs[n_sign] = c
            n_sign += 1
    off_min = np.empty(nc, dtype=np.float32)
    off_sign = np.empty(nc, dtype=np.float32)
    for c in range(nc):
        off_min[c] = 0.0 if track[c] & TRACK_MIN else np.inf
        off_sign[c] = 0.0 if track[c] & TRACK_SIGN else np.inf
    nan = np.float32(np.nan)

    # (no array slices in the loop: a slice of a shared array touches its reference count, a
    # cache line all threads would fight over)
    for n in range(lo, hi):
        ex = entries[n, 0]
        ey = entries[n, 1]
        ez = entries[n, 2]
        dx = tips[n, 0] - ex
        dy = tips[n, 1] - ey
        dz = tips[n, 2] - ez
        length = math.sqrt(dx * dx + dy * dy + dz * dz)
        if length > 0.0:
            ux = dx / length
            uy = dy / length
            uz = dz / length
        else:
            ux = 0.0
            uy = 0.0
            uz = 0.0
        # entry and direction in continuous voxel indices
        px = a[0, 0] * ex + a[0, 1] * ey + a[0, 2] * ez + a[0, 3]
        py = a[1, 0] * ex + a[1, 1] * ey + a[1, 2] * ez + a[1, 3]
        pz = a[2, 0] * ex + a[2, 1] * ey + a[2, 2] * ez + a[2, 3]
        qx = a[0, 0] * ux + a[0, 1] * uy + a[0, 2] * uz
        qy = a[1, 0] * ux + a[1, 1] * uy + a[1, 2] * uz
        qz = a[2, 0] * ux + a[2, 1] * uy + a[2, 2] * uz
        # Lipschitz constant of the interpolant along the needle (mm per mm)
        lip = spacing[0] * abs(qx) + spacing[1] * abs(qy) + spacing[2] * abs(qz)
        if lip < 1.0:
            lip = 1.0
        n_last = int(math.ceil(length / step)) if length > 0.0 else 0
        tx = px + length * qx
        ty = py + length * qy
        tz = pz + length * qz

        # warm the caches for the next needle's tip and entry while this one runs
        if n + 1 < hi:
            for end in range(2):
                w = tips if end == 0 else entries
                wx = w[n + 1, 0]
                wy = w[n + 1, 1]
                wz = w[n + 1, 2]
                b, fx, fy, fz = _cell(
                    a[0, 0] * wx + a[0, 1] * wy + a[0, 2] * wz + a[0, 3],
                    a[1, 0] * wx + a[1, 1] * wy + a[1, 2] * wz + a[1, 3],
                    a[2, 0] * wx + a[2, 1] * wy + a[2, 2] * wz + a[2, 3],
                    ni,
                    nj,
                    nk,
                    nc,
                )
                _prefetch_cell(flat, b, si, sj, sk)
        # the tip first: its values seed the running minima
        b, fx, fy, fz = _cell(tx, ty, tz, ni, nj, nk, nc)
        _sample_all(flat, nc, b, fx, fy, fz, si, sj, sk, tipv, 0)
        n_eval = 1
        for c in range(nc):
            curmin[c] = tipv[c]
            argt[c] = np.float32(length)
        for c in range(_WALKERS * nc):
            inlen[c] = 0.0
            runstart[c] = 0.0
            cross[c] = 0
        n_walkers = min(_WALKERS, max(1, n_last // _WALK_MIN))
        for w in range(_WALKERS):
            m0 = w * n_last // n_walkers
            wi[w, _W_M] = m0
            wi[w, _W_PREV] = -1
            wi[w, _W_END] = (w + 1) * n_last // n_walkers
            wi[w, _W_PARITY] = 0
            wi[w, _W_ACTIVE] = 1 if w < n_walkers else 0
            if w >= n_walkers:
                continue
            for q in range(_PREFETCH_START):
                tq = (m0 + q) * step
                if tq < length:
                    b, fx, fy, fz = _cell(px + tq * qx, py + tq * qy, pz + tq * qz, ni, nj, nk, nc)
                    _prefetch_cell(flat, b, si, sj, sk)

        # the bone-ahead march: phase 0 steps out of the bone, 1 and 2 refine the exit, 3 done
        march = bone_ch >= 0 and length > 0.0 and tipv[max(bone_ch, 0)] < 0.0
        phase = 0 if march else 3
        t_in = 0.0
        v_in = float(tipv[max(bone_ch, 0)])
        t_out = 0.0
        v_out = 0.0
        tc = 0.0
        found = False

        while True:
            busy = False
            for w in range(_WALKERS):
                if not wi[w, _W_ACTIVE]:
                    continue
                busy = True
                # one evaluated lattice sample of walker w
                m = wi[w, _W_M]
                mprev = wi[w, _W_PREV]
                parity = wi[w, _W_PARITY]
                ov = (2 * w + 1 - parity) * nc  # the buffer receiving this sample
                op = (2 * w + parity) * nc  # the buffer holding the previous one
                ow = w * nc
                if m == n_last:
                    t = length
                    for c in range(nc):
                        buf[ov + c] = tipv[c]
                else:
                    t = m * step
                    b, fx, fy, fz = _cell(px + t * qx, py + t * qy, pz + t * qz, ni, nj, nk, nc)
                    _sample_all(flat, nc, b, fx, fy, fz, si, sj, sk, buf, ov)
                    n_eval += 1
                h, changed = _track(
                    nc, buf, ov, buf, op, curmin, argt, np.float32(t), cap, off_min, off_sign
                )
                if mprev < 0:
                    for c in range(nc):
                        runstart[ow + c] = t
                elif changed:
                    if mprev < m - 1:
                        # a jump ended across a surface: interpolate from the lattice point before
                        tb = (m - 1) * step
                        b, fx, fy, fz = _cell(
                            px + tb * qx, py + tb * qy, pz + tb * qz, ni, nj, nk, nc
                        )
                        _sample_all(flat, nc, b, fx, fy, fz, si, sj, sk, tmp, 0)
                        n_eval += 1
                        _update_min(nc, tmp, 0, np.float32(tb), curmin, argt)
                        _crossings(tmp, 0, tb, buf, ov, t, signs, runstart, inlen, cross, ow)
                    else:
                        _crossings(buf, op, wf[w], buf, ov, t, signs, runstart, inlen, cross, ow)
                m_end = wi[w, _W_END]
                wi[w, _W_PARITY] = 1 - parity
                wi[w, _W_PREV] = m
                wf[w] = t
                if m >= m_end:
                    for q in range(signs.shape[0]):
                        c = signs[q]
                        if buf[ov + c] < 0.0:
                            inlen[ow + c] += t - runstart[ow + c]
                    wi[w, _W_ACTIVE] = 0
                    continue
                jump = 1
                if skip:
                    hh = (float(h) - _SKIP_EPS_MM) / lip
                    if hh > step:
                        if hh >= (m_end - m) * step:
                            jump = m_end - m
                        else:
                            jump = max(1, int(math.ceil(hh / step * (1.0 - 1e-9))))
                m = min(m + jump, m_end)
                wi[w, _W_M] = m
                if jump > 1 and m < n_last:
                    tn = m * step
                    b, fx, fy, fz = _cell(px + tn * qx, py + tn * qy, pz + tn * qz, ni, nj, nk, nc)
                    _prefetch_cell(flat, b, si, sj, sk)
                tn = (m + _PREFETCH_AHEAD) * step
                if tn < length:
                    b, fx, fy, fz = _cell(px + tn * qx, py + tn * qy, pz + tn * qz, ni, nj, nk, nc)
                    _prefetch_cell(flat, b, si, sj, sk)
            if phase == 0:
                busy = True
                if t_in >= ahead_max:
                    phase = 3
                else:
                    dt = (-v_in - _SKIP_EPS_MM) / lip
                    if dt < step:
                        dt = step
                    tn = t_in + dt
                    vn = float(
                        _sample_one(
                            flat, ni, nj, nk, nc, bone_ch, tx + tn * qx, ty + tn * qy, tz + tn * qz
                        )
                    )
                    n_eval += 1
                    if vn >= 0.0:
                        t_out = tn
                        v_out = vn
                        tc = t_in + (t_out - t_in) * (v_in / (v_in - v_out))
                        found = True
                        phase = 1
                    else:
                        t_in = tn
                        v_in = vn
                        tn += max((-v_in - _SKIP_EPS_MM) / lip, step)
                        b, fx, fy, fz = _cell(
                            tx + tn * qx, ty + tn * qy, tz + tn * qz, ni, nj, nk, nc
                        )
                        _prefetch_cell(flat, b, si, sj, sk)
            elif phase < 3:
                # regula falsi on the bracket [t_in (inside), t_out (outside)]
                busy = True
                vm = float(
                    _sample_one(
                        flat, ni, nj, nk, nc, bone_ch, tx + tc * qx, ty + tc * qy, tz + tc * qz
                    )
                )
                n_eval += 1
                if vm == 0.0:
                    phase = 3
                else:
                    if vm < 0.0:
                        t_in = tc
                        v_in = vm
                    else:
                        t_out = tc
                        v_out = vm
                    tc = t_in + (t_out - t_in) * (v_in / (v_in - v_out))
                    phase += 1
            if not busy:
                break

        for c in range(nc):
            base = CH_COLUMNS * c
            tr = track[c]
            if tr & TRACK_MIN:
                if curmin[c] < cap:
                    out[n, base + CH_MIN] = curmin[c]
                    out[n, base + CH_MIN_AT] = argt[c]
                else:
                    out[n, base + CH_MIN] = cap
                    out[n, base + CH_MIN_AT] = nan
            else:
                out[n, base + CH_MIN] = nan
                out[n, base + CH_MIN_AT] = nan
            if tr & TRACK_SIGN:
                total_len = 0.0
                total_cross = 0
                for w in range(_WALKERS):
                    total_len += inlen[w * nc + c]
                    total_cross += cross[w * nc + c]
                out[n, base + CH_INSIDE_LEN] = total_len
                out[n, base + CH_CROSSINGS] = total_cross
            else:
                out[n, base + CH_INSIDE_LEN] = nan
                out[n, base + CH_CROSSINGS] = nan
            out[n, base + CH_TIP] = tipv[c]

        # bone ahead of the tip, along the needle direction
        ahead = nan
        ahead_side = nan
        if bone_ch >= 0 and length > 0.0:
            if not march:
                ahead = np.float32(0.0)
                if side_ch >= 0:
                    ahead_side = tipv[side_ch]
            elif found:
                ahead = np.float32(tc)
                if side_ch >= 0:
                    ahead_side = _sample_one(
                        flat, ni, nj, nk, nc, side_ch, tx + tc * qx, ty + tc * qy, tz + tc * qz
                    )
            else:
                ahead = np.float32(np.inf)

        label = -1.0
        if label_ch >= 0 and curmin[label_ch] < cap:
            tl = float(argt[label_ch])
            li = min(max(int(math.floor(px + tl * qx + 0.5)), 0), ni - 1)
            lj = min(max(int(math.floor(py + tl * qy + 0.5)), 0), nj - 1)
            lk = min(max(int(math.floor(pz + tl * qz + 0.5)), 0), nk - 1)
            label = float(labels[lk, lj, li])

        out[n, sc + SC_LENGTH] = length
        out[n, sc + SC_AHEAD] = ahead
        out[n, sc + SC_AHEAD_EXIT_SIDE] = ahead_side
        out[n, sc + SC_OUTSIDE_GRID] = length - _inside_grid_length(
            px, py, pz, qx, qy, qz, length, ni, nj, nk
        )
        out[n, sc + SC_LABEL] = label
        out[n, sc + SC_EVALUATED] = n_eval
        out[n, sc + SC_LATTICE] = n_last + 1


@numba.njit(parallel=True, cache=True, nogil=True)
def score_kernel_parallel(
    entries: np.ndarray,
    tips: np.ndarray,
    flat: np.ndarray,
    dims: np.ndarray,
    a: np.ndarray,
    spacing: np.ndarray,
    track: np.ndarray,
    roles: np.ndarray,
    labels: np.ndarray,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Score all needles, parallel over chunks of ``_CHUNK`` needles (see :func:`score_kernel`)."""
    n = entries.shape[0]
    nchunks = (n + _CHUNK - 1) // _CHUNK
    for ch in numba.prange(nchunks):
        lo = ch * _CHUNK
        hi = min(n, lo + _CHUNK)
        _score_range(
            lo, hi, entries, tips, flat, dims, a, spacing, track, roles, labels, params, out
        )


@numba.njit(cache=True, nogil=True)
def score_kernel(
    entries: np.ndarray,
    tips: np.ndarray,
    flat: np.ndarray,
    dims: np.ndarray,
    a: np.ndarray,
    spacing: np.ndarray,
    track: np.ndarray,
    roles: np.ndarray,
    labels: np.ndarray,
    params: np.ndarray,
    out: np.ndarray,
) -> None:
    """Score all needles on the calling thread (no parallel launch: for a few needles).

    Parameters
    ----------
    entries, tips : (N, 3) float64 ndarray, mm, LPS
        Skin entry and tip of every needle.
    flat : (K * J * I * C,) int16 ndarray
        The field stack's codes ``values[k, j, i, c]`` raveled (C order), ``QUANTUM_MM`` units.
    dims : (4,) int64 ndarray
        ``(I, J, K, C)``.
    a : (3, 4) float64 ndarray
        World-to-index affine (:func:`geometry.distance.index_from_world_matrix`).
    spacing : (3,) float64 ndarray, mm
        Grid spacing along ``i``, ``j``, ``k``.
    track : (C,) uint8 ndarray
        Role bits per channel (``TRACK_MIN``, ``TRACK_SIGN``).
    roles : (3,) int64 ndarray
        Channels of the sacrum (bone-ahead march), the pelvic side (read where the march leaves
        bone) and the labelled clearance channel; -1 where absent.
    labels : (K, J, I) int8 ndarray
        Label map read at the minimum of the labelled channel (any shape if unused).
    params : (4,) float64 ndarray
        ``(step_mm, ahead_max_mm, skip (0/1), cap_mm)``: sampling step; longest bone-ahead march;
        distance-bound skipping; clearance minima above ``cap_mm`` are reported as ``cap_mm``.
    out : (N, 5 * C + N_SCALARS) float32 ndarray
        Filled with the results (layout in the module notes).
    """
    _score_range(
        0,
        entries.shape[0],
        entries,
        tips,
        flat,
        dims,
        a,
        spacing,
        track,
        roles,
        labels,
        params,
        out,
    )


# -- the Python face -------------------------------------------------------------------------------
_PARALLEL_MIN_NEEDLES = 256
DEFAULT_CLEARANCE_CAP_MM = 20.0  #: clearances beyond this many mm are reported as "at least"


@dataclass(frozen=True, eq=False)
class NeedleScores:
    """What the kernel measured for ``N`` needles (capsules from skin entry to tip).

    Clearances are from the needle's *surface* (axis distance minus ``radius_mm``) to the
    structure's surface, in mm, the minimum along the needle, made conservative with the sampling
    bound (:func:`geometry.distance.conservative_distance_mm`): never larger than the exact value
    for the fields' surfaces. Negative means the needle cuts into the structure. NaN: structure
    absent from the stack. Where the axis stays farther than ``cap_mm`` from a structure, its
    clearance is the lower bound the cap gives, with no position and no nearest foramen.

    Attributes
    ----------
    radius_mm, step_mm, cap_mm : float
        Needle outer radius, sampling step and clearance cap used (mm).
    bound_mm : float
        The sampling-bound constant ``c`` (mm) of :func:`geometry.distance.interpolation_bound_mm`.
    length_mm : (N,) float ndarray
        Skin-to-tip length (mm).
    foramen_names : tuple of str
        Names of the foramina, the columns of ``foramen_clearance_mm``.
    foramen_clearance_mm : (N, F) float ndarray
        Clearance to each foramen (mm). With a union stack only the nearest foramen's column is
        filled, the others are NaN (farther), unless all lie beyond the cap.
    nearest_foramen : (N,) int ndarray
        Index into ``foramen_names`` of the foramen with the least clearance (-1: none).
    nearest_foramen_clearance_mm, nearest_foramen_at_mm : (N,) float ndarray
        Its clearance, and where along the needle (mm from the entry) it is least.
    canal_clearance_mm, canal_at_mm : (N,) float ndarray
        Clearance to the spinal canal, and where it is least (mm from the entry).
    si_joint_clearance_mm : (N,) float ndarray
        Clearance to the SI-joint gap (mm).
    crosses_si_joint : (N,) bool ndarray
        The axis passes through the SI-joint gap, or visits both an ilium and the sacrum.
    pelvic_clearance_mm : (N,) float ndarray
        Clearance to the pelvic side (the space anterior to the sacrum) (mm).
    exits_anterior : (N,) bool ndarray
        The axis reaches the pelvic side: the path leaves the sacrum anteriorly.
    in_bone_length_mm : (N,) float ndarray
        Length of the axis inside the sacrum (mm).
    cortices_crossed : (N,) int ndarray
        Number of times the axis crosses the sacrum's surface.
    tip_in_bone : (N,) bool ndarray
        The tip lies inside the sacrum.
    tip_bone_depth_mm : (N,) float ndarray
        Distance from the tip to the nearest sacral surface, any direction (mm; < 0 outside).
    bone_ahead_mm : (N,) float ndarray
        Bone left ahead of the tip along the needle direction until it leaves the sacrum
        (mm; 0 when the tip is outside bone, inf when it does not leave within the march).
    bone_ahead_exits_anterior : (N,) bool ndarray
        The bone ahead ends at the anterior cortex (the exit point touches the pelvic side).
    tip_in_lesion : (N,) bool ndarray
        The tip lies inside the lesion.
    tip_lesion_depth_mm, in_lesion_length_mm : (N,) float ndarray
        Depth of the tip below the lesion surface (mm; < 0 outside); length of the axis inside it.
    tip_to_lesion_centroid_mm : (N,) float ndarray
        Distance from the tip to the lesion centroid given (mm; NaN if none given).
    outside_grid_length_mm : (N,) float ndarray
        Length of the segment outside the field grid (read there at the nearest grid point).
    samples_evaluated, samples_lattice : (N,) int ndarray
        Points sampled, and samples a plain walk would take (diagnostic).
    channel_names : tuple of str
        Names of the stack's channels, for ``raw``.
    raw : (N, 5 * C + N_SCALARS) float32 ndarray
        The kernel's output (layout in the module notes).
    """

    radius_mm: float
    step_mm: float
    cap_mm: float
    bound_mm: float
    length_mm: np.ndarray
    foramen_names: tuple[str, ...]
    foramen_clearance_mm: np.ndarray
    nearest_foramen: np.ndarray
    nearest_foramen_clearance_mm: np.ndarray
    nearest_foramen_at_mm: np.ndarray
    canal_clearance_mm: np.ndarray
    canal_at_mm: np.ndarray
    si_joint_clearance_mm: np.ndarray
    crosses_si_joint: np.ndarray
    pelvic_clearance_mm: np.ndarray
    exits_anterior: np.ndarray
    in_bone_length_mm: np.ndarray
    cortices_crossed: np.ndarray
    tip_in_bone: np.ndarray
    tip_bone_depth_mm: np.ndarray
    bone_ahead_mm: np.ndarray
    bone_ahead_exits_anterior: np.ndarray
    tip_in_lesion: np.ndarray
    tip_lesion_depth_mm: np.ndarray
    in_lesion_length_mm: np.ndarray
    tip_to_lesion_centroid_mm: np.ndarray
    outside_grid_length_mm: np.ndarray
    samples_evaluated: np.ndarray
    samples_lattice: np.ndarray
    channel_names: tuple[str, ...]
    raw: np.ndarray

    def __len__(self) -> int:
        return int(self.length_mm.shape[0])

    @property
    def tip_to_anterior_cortex_mm(self) -> np.ndarray:
        """(N,) Bone ahead of the tip where the needle's ray leaves the sacrum anteriorly (mm).

        NaN where the ray leaves through another surface (or the tip is outside bone).
        """
        return np.where(self.bone_ahead_exits_anterior, self.bone_ahead_mm, np.nan)

    def row(self, index: int) -> dict[str, Any]:
        """The results of needle ``index`` as JSON-ready scalars (NaN becomes ``None``)."""

        def scalar(v: Any) -> Any:
            v = v.item() if isinstance(v, np.generic) else v
            if isinstance(v, float) and math.isnan(v):
                return None
            return v

        out: dict[str, Any] = {
            "tip_to_anterior_cortex_mm": scalar(self.tip_to_anterior_cortex_mm[index])
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("raw", "channel_names"):
                continue
            if f.name == "foramen_clearance_mm":
                out[f.name] = {
                    name: scalar(value[index, c]) for c, name in enumerate(self.foramen_names)
                }
            elif f.name == "nearest_foramen":
                k = int(value[index])
                out[f.name] = self.foramen_names[k] if k >= 0 else None
            elif isinstance(value, np.ndarray):
                out[f.name] = scalar(value[index])
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = scalar(value)
        return out


def _points(name: str, points: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3) points in mm, got shape {np.shape(points)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain non-finite coordinates")
    return arr


def score_needles(
    entries: np.ndarray,
    tips: np.ndarray,
    fields: FieldStack,
    *,
    radius_mm: float,
    step_mm: float = 0.5,
    lesion_centroid: np.ndarray | None = None,
    ahead_max_mm: float = 150.0,
    anterior_contact_mm: float | None = None,
    clearance_cap_mm: float | None = None,
    skip: bool = True,
    parallel: bool | None = None,
) -> NeedleScores:
    """Score straight needles against the anatomy's distance fields.

    Parameters
    ----------
    entries, tips : (N, 3) float ndarray, mm, LPS
        Skin entry and tip of every needle.
    fields : FieldStack
        The anatomy (:func:`geometry.fieldstack.build_field_stack`).
    radius_mm : float, keyword-only
        Needle outer radius (mm; 13G 1.2, 15G 0.9, 17G 0.75).
    step_mm : float, keyword-only
        Sampling step along the needle (mm).
    lesion_centroid : (3,) float ndarray, mm, LPS, optional, keyword-only
        Lesion centroid, for ``tip_to_lesion_centroid_mm``.
    ahead_max_mm : float, keyword-only
        Longest march ahead of the tip when measuring the bone ahead (mm).
    anterior_contact_mm : float, optional, keyword-only
        The bone ahead ends anteriorly when the pelvic-side field at the exit point is at most this
        (mm). Default: half the voxel diagonal plus one step.
    clearance_cap_mm : float, optional, keyword-only
        Axis distances above this are not resolved: a clearance whose sampled minimum exceeds it is
        reported from the cap (a lower bound) with no position and no nearest foramen. Default
        ``DEFAULT_CLEARANCE_CAP_MM`` (20 mm, twice the 10 mm thermal-safety distance); ``inf``
        resolves every distance, at about 1.5 times the cost. Keep it below the fields'
        ``exact_within_mm`` (their crop margin): beyond that they hold lower bounds anyway.
    skip : bool, keyword-only
        Use distance-bound skipping (same results as without, fewer samples).
    parallel : bool, optional, keyword-only
        Run on all numba threads; default: when there are at least 256 needles.

    Returns
    -------
    NeedleScores

    Raises
    ------
    ValueError
        On malformed points, a negative radius or a non-positive step.
    """
    entries = _points("needle entries", entries)
    tips = _points("needle tips", tips)
    if entries.shape != tips.shape:
        raise ValueError(f"{len(entries)} entries but {len(tips)} tips")
    if not radius_mm >= 0:
        raise ValueError(f"needle radius must be >= 0 mm, got {radius_mm}")
    if not step_mm > 0:
        raise ValueError(f"sampling step must be > 0 mm, got {step_mm}")
    cap = DEFAULT_CLEARANCE_CAP_MM if clearance_cap_mm is None else float(clearance_cap_mm)
    if not cap > 0:
        raise ValueError(f"clearance cap must be > 0 mm, got {clearance_cap_mm}")
    n = entries.shape[0]
    nc = fields.values.shape[3]
    k, j, i = fields.shape
    dims = np.array([i, j, k, nc], dtype=np.int64)
    roles = np.array(
        [
            fields.sacrum,
            fields.pelvic_side,
            fields.foramen_channels[0] if fields.foramen_nearest is not None else -1,
        ],
        dtype=np.int64,
    )
    labels = fields.foramen_nearest if fields.foramen_nearest is not None else _NO_LABELS
    out = np.empty((n, CH_COLUMNS * nc + N_SCALARS), dtype=np.float32)
    run = (
        score_kernel_parallel
        if (n >= _PARALLEL_MIN_NEEDLES if parallel is None else parallel)
        else score_kernel
    )
    run(
        entries,
        tips,
        fields.values.reshape(-1),
        dims,
        fields.index_from_world(),
        fields.spacing,
        fields.track,
        roles,
        labels,
        np.array([step_mm, ahead_max_mm, 1.0 if skip else 0.0, cap], dtype=np.float64),
        out,
    )
    return _assemble(
        out,
        fields,
        entries=entries,
        tips=tips,
        radius_mm=float(radius_mm),
        step_mm=float(step_mm),
        cap_mm=cap,
        lesion_centroid=lesion_centroid,
        anterior_contact_mm=anterior_contact_mm,
    )


def score_one(
    entry: np.ndarray,
    tip: np.ndarray,
    fields: FieldStack,
    *,
    radius_mm: float,
    step_mm: float = 0.5,
    lesion_centroid: np.ndarray | None = None,
    ahead_max_mm: float = 150.0,
    anterior_contact_mm: float | None = None,
) -> NeedleScores:
    """Score one manual trajectory on the calling thread (typically ~0.1 ms; see score_needles).

    Parameters
    ----------
    entry, tip : (3,) float ndarray, mm, LPS
        Skin entry and tip.
    fields, radius_mm, step_mm, lesion_centroid, ahead_max_mm, anterior_contact_mm
        As for :func:`score_needles`.

    Returns
    -------
    NeedleScores
        Of length 1; ``.row(0)`` gives plain scalars.
    """
    return score_needles(
        entry,
        tip,
        fields,
        radius_mm=radius_mm,
        step_mm=step_mm,
        lesion_centroid=lesion_centroid,
        ahead_max_mm=ahead_max_mm,
        anterior_contact_mm=anterior_contact_mm,
        parallel=False,
    )


_NO_LABELS = np.full((1, 1, 1), -1, dtype=np.int8)


def _assemble(
    out: np.ndarray,
    fields: FieldStack,
    *,
    entries: np.ndarray,
    tips: np.ndarray,
    radius_mm: float,
    step_mm: float,
    cap_mm: float,
    lesion_centroid: np.ndarray | None,
    anterior_contact_mm: float | None,
) -> NeedleScores:
    n = out.shape[0]
    sc = CH_COLUMNS * fields.values.shape[3]
    nan = np.full(n, np.nan)
    no = np.zeros(n, dtype=bool)

    def col(c: int, what: int) -> np.ndarray:
        return out[:, CH_COLUMNS * c + what].astype(np.float64) if c >= 0 else nan

    def clearance(c: int) -> np.ndarray:
        if c < 0:
            return nan
        axis = conservative_distance_mm(col(c, CH_MIN), fields.spacing, step_mm=step_mm)
        return axis - radius_mm

    n_foramina = len(fields.foramen_names)
    foramen = np.full((n, n_foramina), np.nan)
    nearest = np.full(n, -1, dtype=np.int64)
    nearest_clear = nan
    nearest_at = nan
    if n_foramina and fields.foramen_nearest is not None:
        c = fields.foramen_channels[0]
        nearest_clear = clearance(c)
        nearest_at = col(c, CH_MIN_AT)
        nearest = out[:, sc + SC_LABEL].astype(np.int64)
        ok = nearest >= 0
        foramen[np.flatnonzero(ok), nearest[ok]] = nearest_clear[ok]
        # beyond the cap every foramen is at least that far
        foramen[~ok, :] = nearest_clear[~ok, np.newaxis]
    elif n_foramina:
        for f, c in enumerate(fields.foramen_channels):
            foramen[:, f] = clearance(c)
        nearest = np.argmin(foramen, axis=1)
        rows = np.arange(n)
        nearest_clear = foramen[rows, nearest]
        raw = np.stack([col(c, CH_MIN) for c in fields.foramen_channels], axis=1)
        at = np.stack([col(c, CH_MIN_AT) for c in fields.foramen_channels], axis=1)
        nearest_at = at[rows, nearest]
        nearest[raw[rows, nearest] >= np.float32(cap_mm)] = -1

    si_min = col(fields.si_joint, CH_MIN)
    crosses_si = (si_min <= 0.0) if fields.si_joint >= 0 else no.copy()
    if fields.ilium >= 0:
        crosses_si |= (col(fields.ilium, CH_INSIDE_LEN) > 0.0) & (
            col(fields.sacrum, CH_INSIDE_LEN) > 0.0
        )
    if anterior_contact_mm is None:
        anterior_contact_mm = 0.5 * float(np.linalg.norm(fields.spacing)) + step_mm
    ahead_side = out[:, sc + SC_AHEAD_EXIT_SIDE].astype(np.float64)
    tip_bone = col(fields.sacrum, CH_TIP)
    tip_lesion = col(fields.lesion, CH_TIP)
    if lesion_centroid is not None:
        centroid = np.asarray(lesion_centroid, dtype=np.float64).reshape(3)
        to_centroid = np.linalg.norm(tips - centroid, axis=1)
    else:
        to_centroid = nan
    with np.errstate(invalid="ignore"):
        return NeedleScores(
            radius_mm=radius_mm,
            step_mm=step_mm,
            cap_mm=cap_mm,
            bound_mm=interpolation_bound_mm(fields.spacing, step_mm=step_mm),
            length_mm=out[:, sc + SC_LENGTH].astype(np.float64),
            foramen_names=fields.foramen_names,
            foramen_clearance_mm=foramen,
            nearest_foramen=nearest,
            nearest_foramen_clearance_mm=nearest_clear,
            nearest_foramen_at_mm=nearest_at,
            canal_clearance_mm=clearance(fields.canal),
            canal_at_mm=col(fields.canal, CH_MIN_AT),
            si_joint_clearance_mm=clearance(fields.si_joint),
            crosses_si_joint=crosses_si,
            pelvic_clearance_mm=clearance(fields.pelvic_side),
            exits_anterior=(col(fields.pelvic_side, CH_MIN) <= 0.0),
            in_bone_length_mm=col(fields.sacrum, CH_INSIDE_LEN),
            cortices_crossed=out[:, CH_COLUMNS * fields.sacrum + CH_CROSSINGS].astype(np.int64),
            tip_in_bone=tip_bone < 0.0,
            tip_bone_depth_mm=-tip_bone,
            bone_ahead_mm=out[:, sc + SC_AHEAD].astype(np.float64),
            bone_ahead_exits_anterior=ahead_side <= anterior_contact_mm,
            tip_in_lesion=tip_lesion < 0.0,
            tip_lesion_depth_mm=-tip_lesion,
            in_lesion_length_mm=col(fields.lesion, CH_INSIDE_LEN),
            tip_to_lesion_centroid_mm=to_centroid,
            outside_grid_length_mm=out[:, sc + SC_OUTSIDE_GRID].astype(np.float64),
            samples_evaluated=out[:, sc + SC_EVALUATED].astype(np.int64),
            samples_lattice=out[:, sc + SC_LATTICE].astype(np.int64),
            channel_names=fields.channel_names,
            raw=out,
        )


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels, e.g. at start-up off the GUI thread."""
    shape = (3, 3, 3)
    field = DistanceField(
        np.full(shape, -1.0, dtype=np.float32), np.zeros(3), np.ones(3), np.eye(3)
    )
    stack = build_field_stack(sacrum=field)
    entry = np.zeros((1, 3))
    tip = np.ones((1, 3))
    score_needles(entry, tip, stack, radius_mm=1.0, parallel=False)
    score_needles(entry, tip, stack, radius_mm=1.0, parallel=True)
