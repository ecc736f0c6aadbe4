"""The numba kernel of :mod:`scalepipe.exact`: the same sums, in one pass.

Importing this module fails without numba; :mod:`scalepipe.exact` then uses
its numpy kernel. Both produce buckets (int64 sums at bit positions) whose
weighted total is exactly ``sum(x)`` and ``sum(x*x)``, and both are folded into
the same canonical limbs, so the two kernels agree bit for bit.

The kernel reads float64 or float32 (widened exactly as it is read) in place,
in blocks of rows per feature:

* Columns contiguous (Fortran order, or rows sliced from it): one feature at a
  time, in lanes of at most :data:`BLOCK` rows.
* C-contiguous: across the features, a row segment at a time, in blocks of
  up to 256 KiB and groups of at most :data:`_GROUP` features (see
  ``_row_sums``); each sweep's loop over a segment vectorises across the
  features, with per-feature constants and sums held in one small aligned
  array. Narrow blocks put several rows in one segment.

A first sweep over a block finds each feature's largest ``|x|`` and smallest
nonzero ``|x|``; their exponent fields give ``T`` and ``L`` with ``|x| <
2**T`` and every ``x`` an integer multiple of ``2**L``. (The same sweep
records the feature's min, max and NaN count, so exact mode needs no other
kernel.) The feature's block then takes one of two paths:

*General path* (any finite values; an inf is reported): each value is split
into its integer mantissa and exponent and its pieces are added to the
buckets, as the numpy kernel does (see the comment above ``_bucket_sums`` in
``exact``).

*Fast path* (ordinary data: ``T - L <= 75`` and ``-462 <= T <= 510``). A
second sweep reads each value as integer digits on fixed grids, with the
rounding trick ``y = r + 1.5 * 2**(g + 52)``: when ``|r| <= 2**(g + 50)``, ``y``
stays in the binade of the constant, ``y - 1.5 * 2**(g + 52)`` is ``r`` rounded
to the grid ``2**g``, exact (Sterbenz), and so is the remainder; the integer
digit is ``bits(y) - bits(1.5 * 2**(g + 52))``.

* ``x = a + b + c`` with ``a`` on ``2**(T - 25)`` (at most ``2**25`` units),
  ``b`` on ``2**(T - 50)`` and the remainder ``c`` on ``2**(T - 75)`` (both at
  most ``2**24`` units; ``c`` is whole since ``L >= T - 75``).
* ``x*x = a*a + 2ab + (b*b + 2ac) + 2bc + c*c``, terms on the grids ``2**(2T -
  50)``, ``2**(2T - 75)``, ..., ``2**(2T - 150)``, each below ``2**51`` units.
  Every product of two digits (at most 26 bits each) is exact, and a fused
  multiply-add adds it (and ``b*b`` its ``2ac``) to the grid's constant in the
  same rounding, which is exact too: the result is representable.

The digits are summed as wrapping uint64 bit patterns, which vectorises
without reassociating any float addition; the constants' patterns are
subtracted when the sums are added to the buckets, and a digit sum stays below
``2**11 * 2**51``: per lane of at most :data:`BLOCK` rows, and, in C order,
over at most :data:`_PENDING_ROWS` rows on the same grids (a larger ``T``
whose grids still hold a block's values is kept; a block that does not fit
them starts new sums). The bounds above follow from ``T`` and ``L`` alone, so
no value is ever rounded and nothing is checked afterwards. ``T <= 510`` keeps
the constants finite, ``T >= -462`` keeps them (and the finest grid) normal.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["BLOCK", "bucket_sums", "limbs_from_buckets", "normalise"]

#: Most rows per lane: a digit sum stays below ``BLOCK * 2**51 = 2**59``.
BLOCK = 256
#: Features of a C-contiguous block swept together, across the features.
_GROUP = 64
#: Values per block of a C-contiguous ``x`` (256 KiB of float64): the second
#: sweep reads the block from the L2 cache.
_LANE_VALUES = 1 << 15
#: Most rows whose digit sums a feature of a C-contiguous block keeps before
#: adding them to its buckets: the sums stay below 2**11 * 2**51 = 2**62.
_PENDING_ROWS = 2048
#: A feature's constants in a work array are no fast path's (``T`` of none).
_NO_GRIDS = -(1 << 20)

_FRAC_MASK = (1 << 52) - 1
_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_ABS_MASK = (1 << 63) - 1
_INF_BITS = 0x7FF << 52
_NO_BITS = (1 << 63) - 1  # above the bits of every |x|: the smallest of none
_HALF_BITS = 27
_HALF_MASK = (1 << _HALF_BITS) - 1
_DIGIT_BITS = 25
_FAST_MIN_TOP = -462  # the finest constant, 1.5 * 2**(2T - 98), is normal
_FAST_MAX_TOP = 510  # the coarsest constant, 1.5 * 2**(2T + 2), is finite

# What a feature's block needs: nothing (zeros and NaN only), the fast path,
# or the general path.
_EMPTY = 0
_FAST = 1
_GENERAL = 2


@intrinsic
def _bits(typingctx, x):
    """The IEEE-754 bit pattern of a float64, as an int64."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _ubits(typingctx, x):
    """The IEEE-754 bit pattern of a float64, as a uint64 (sums of these wrap)."""
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _from_bits(typingctx, b):
    """The float64 with the IEEE-754 bit pattern ``b`` (an int64)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@numba.njit(inline="always")
def _rounding_constant(g: int) -> float:
    """``1.5 * 2**(g + 52)``, which reads a value as a digit on the grid ``2**g`` (a normal double)."""
    return _from_bits(((g + 52 + 1023) << 52) | (np.int64(1) << 51))


@intrinsic
def _fma(typingctx, x, y, z):
    """``x*y + z`` with one rounding (a fused multiply-add)."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


def _intrinsic_fn(builder: ir.IRBuilder, name: str) -> ir.Function:
    """The LLVM intrinsic ``name`` of type ``double (double, double)`` in the builder's module."""
    fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType(), ir.DoubleType()])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def _nan_skipping(name: str):
    """An intrinsic ``op(m, a)`` calling ``llvm.<name>.f64``, where a NaN ``a`` leaves ``m`` (vectorises)."""

    @intrinsic
    def op(typingctx, m, a):
        sig = types.float64(types.float64, types.float64)

        def codegen(context, builder, signature, args):
            return builder.call(_intrinsic_fn(builder, f"llvm.{name}.f64"), args)

        return sig, codegen

    return op


_larger = _nan_skipping("maxnum")  # max(m, a)
_smaller = _nan_skipping("minnum")  # min(m, a)


@intrinsic
def _smaller_nonzero(typingctx, m, a):
    """``min(m, a)`` over ``a > 0`` (for ``a >= 0``): a zero or NaN ``a`` leaves ``m`` (``llvm.minnum``)."""
    sig = types.float64(types.float64, types.float64)

    def codegen(context, builder, signature, args):
        m, a = args
        zero = ir.Constant(ir.DoubleType(), 0.0)
        b = builder.select(builder.fcmp_ordered("==", a, zero), ir.Constant(ir.DoubleType(), np.inf), a)
        return builder.call(_intrinsic_fn(builder, "llvm.minnum.f64"), [m, b])

    return sig, codegen


@intrinsic
def _prefetch(typingctx, address):
    """Ask for the cache line at ``address`` (an integer) to be loaded: a hint, which never faults."""
    sig = types.none(types.int64)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [builder.inttoptr(args[0], i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _add_value(bits: np.int64, c: int, b1: np.ndarray, b2: np.ndarray) -> int:
    """General path: add one double (its bits) to feature ``c``'s buckets.

    Returns its exponent ``e``, -1 for zero or NaN (nothing added), -2 for inf.
    """
    biased = (bits >> 52) & 0x7FF
    mant = bits & _FRAC_MASK
    if biased == 0x7FF:
        return -1 if mant != 0 else -2
    if biased != 0:
        mant |= np.int64(1) << 52
        e = biased - 1
    else:
        if mant == 0:
            return -1
        e = biased
    s = -mant if bits < 0 else mant
    b1[c, e] += s & _HALF_MASK
    b1[c, e + _HALF_BITS] += s >> _HALF_BITS
    a = mant >> _HALF_BITS
    b = mant & _HALF_MASK
    aa = a * a
    ab2 = (a * b) << 1
    bb = b * b
    p = 2 * e
    b2[c, p] += bb & _HALF_MASK
    b2[c, p + _HALF_BITS] += (bb >> _HALF_BITS) + (ab2 & _HALF_MASK)
    b2[c, p + 2 * _HALF_BITS] += (ab2 >> _HALF_BITS) + (aa & _HALF_MASK)
    b2[c, p + 3 * _HALF_BITS] += aa >> _HALF_BITS
    return e


@numba.njit(nogil=True, cache=True)
def _general_lane(lane: np.ndarray, c: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> bool:
    """Add a feature's block on the general path; False if it holds an inf."""
    for i in range(lane.shape[0]):
        e = _add_value(_bits(np.float64(lane[i])), c, b1, b2)
        if e == -2:
            return False
        if e >= 0:
            ranges[0] = min(ranges[0], e)
            ranges[1] = max(ranges[1], e + _HALF_BITS + 1)
            ranges[2] = min(ranges[2], 2 * e)
            ranges[3] = max(ranges[3], 2 * e + 3 * _HALF_BITS + 1)
    return True


@numba.njit(inline="always")
def _fits(t: int, bottom: np.int64) -> bool:
    """Whether the fast path's grids for ``T = t`` hold a block of values below ``2**t`` whose smallest nonzero ``|x|`` has the bits ``bottom``."""
    u = max(bottom >> 52, 1) - 1075  # every x is a multiple of 2**u
    return _FAST_MIN_TOP <= t <= _FAST_MAX_TOP and t - u <= 3 * _DIGIT_BITS


@numba.njit(inline="always")
def _path(top: np.int64, bottom: np.int64) -> tuple[int, int]:
    """The path of a feature's block from its largest and smallest nonzero ``|x|`` (bits): ``(path, T)``."""
    if top == 0:
        return _EMPTY, 0
    if top >= _INF_BITS:
        return _GENERAL, 0
    t = max(top >> 52, 1) - 1022  # |x| < 2**t
    if not _fits(t, bottom):
        return _GENERAL, 0
    return _FAST, t


@numba.njit(inline="always")
def _set_constants(t: int, ws: np.ndarray, j: int, w: int, m: int) -> None:
    """Store the rounding constants of a feature's grids (bit patterns) at positions ``r * w + j``, ``r < m``.

    Row ``q`` of ``ws`` (``ws[q * _GROUP + p]``) receives the constant of the
    grid ``2**(T - 25 (q + 1))`` for ``q = 0..2`` (the digits of ``x``) and of
    ``2**(2T - 25 (q - 1))`` for ``q = 3..7`` (the sums of their products).
    """
    for q in range(8):
        g = t - _DIGIT_BITS * (q + 1) if q < 3 else 2 * t - _DIGIT_BITS * (q - 1)
        k = _ubits(_rounding_constant(g))
        for r in range(m):
            ws[q * _GROUP + r * w + j] = k


@numba.njit(inline="always")
def _add_digit(buckets: np.ndarray, c: int, pos: int, d: np.int64) -> None:
    """Add ``d * 2**pos`` as three pieces below 2**27 (``|d| < 2**62``)."""
    buckets[c, pos] += d & _HALF_MASK
    buckets[c, pos + _HALF_BITS] += (d >> _HALF_BITS) & _HALF_MASK
    buckets[c, pos + 2 * _HALF_BITS] += d >> (2 * _HALF_BITS)


@numba.njit(inline="always")
def _add_digit_sums(
    ws: np.ndarray,
    j: int,
    w: int,
    m: int,
    rows: int,
    t: int,
    c: int,
    b1: np.ndarray,
    b2: np.ndarray,
    ranges: np.ndarray,
) -> None:
    """Add the digit sums of ``rows`` values of feature ``c`` (one ``T``) to its buckets, and clear them.

    The sums are at positions ``r * w + j`` (``r < m``) of rows 8..15 of
    ``ws``; the constants' bit patterns are subtracted, once per value read
    on each grid (each sum wraps, their total does not: it is below
    ``rows * 2**51 <= 2**62``). The 8 digit sums land at positions 25 apart,
    each split into pieces 27 apart, so no two of the 24 pieces share a
    bucket: a bucket gains less than 2**27 per call, within exact's 2**28 per
    row.
    """
    count = np.uint64(rows)
    for q in range(8):
        d = -count * ws[q * _GROUP + j]
        for r in range(m):
            d += ws[(8 + q) * _GROUP + r * w + j]
            ws[(8 + q) * _GROUP + r * w + j] = 0
        if q < 3:
            _add_digit(b1, c, t - _DIGIT_BITS * (q + 1) + 1074, np.int64(d))
        else:
            _add_digit(b2, c, 2 * t - _DIGIT_BITS * (q - 1) + 2148, np.int64(d))
    ranges[0] = min(ranges[0], t - 3 * _DIGIT_BITS + 1074)
    ranges[1] = max(ranges[1], t - _DIGIT_BITS + 1074 + 2 * _HALF_BITS + 1)
    ranges[2] = min(ranges[2], 2 * t - 6 * _DIGIT_BITS + 2148)
    ranges[3] = max(ranges[3], 2 * t - 2 * _DIGIT_BITS + 2148 + 2 * _HALF_BITS + 1)


@numba.njit(inline="always")
def _constant(ws: np.ndarray, q: int, j: int) -> float:
    """Feature ``j``'s rounding constant ``q`` (see :func:`_set_constants`)."""
    return _from_bits(np.int64(ws[q * _GROUP + j]))


@numba.njit(inline="always")
def _digits(v, k0, k1, k2, k3, k4, k5, k6, k7) -> tuple:
    """The eight digit bit patterns one value adds to the fast path's sums (NaN adds zeros).

    ``v`` is split on the three grids of the constants ``k0``, ``k1``, ``k2``
    (``v == da + db + dc``); ``k3`` .. ``k7`` receive the exact partial
    products of ``v*v`` (see the module docstring).
    """
    v = v if v == v else 0.0
    y = v + k0
    da = y - k0
    r = v - da
    z = r + k1
    db = z - k1
    dc = r - db
    da2 = da + da
    return (
        _ubits(y),
        _ubits(z),
        _ubits(dc + k2),
        _ubits(_fma(da, da, k3)),
        _ubits(_fma(da2, db, k4)),
        _ubits(_fma(da2, dc, _fma(db, db, k5))),
        _ubits(_fma(db + db, dc, k6)),
        _ubits(_fma(dc, dc, k7)),
    )


@numba.njit(nogil=True, cache=True)
def _fast_lane(lane: np.ndarray, ws: np.ndarray) -> None:
    """Fast path: sum the digits of a feature's block (see the module docstring) into ``ws[(8 + q) * _GROUP]``.

    Reads the constants of feature 0 of ``ws``; vectorises along the lane.
    """
    k0, k1, k2, k3 = _constant(ws, 0, 0), _constant(ws, 1, 0), _constant(ws, 2, 0), _constant(ws, 3, 0)
    k4, k5, k6, k7 = _constant(ws, 4, 0), _constant(ws, 5, 0), _constant(ws, 6, 0), _constant(ws, 7, 0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.uint64(0)
    for i in range(lane.shape[0]):
        d0, d1, d2, d3, d4, d5, d6, d7 = _digits(np.float64(lane[i]), k0, k1, k2, k3, k4, k5, k6, k7)
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        s4 += d4
        s5 += d5
        s6 += d6
        s7 += d7
    sums = (s0, s1, s2, s3, s4, s5, s6, s7)
    for q in range(8):
        ws[(8 + q) * _GROUP] = sums[q]


@numba.njit(nogil=True, cache=True)
def _add_lane(
    lane: np.ndarray, c: int, ws: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray
) -> bool:
    """Add a feature's block (contiguous, at most :data:`BLOCK` rows); False if it holds an inf.

    The first sweep finds the largest ``|x|`` and the smallest nonzero ``|x|``
    (as bits: NaN is neither, an inf is the largest) and so the path, and
    the feature's extremes (see :func:`bucket_sums`).
    """
    top = np.int64(0)
    bottom = np.int64(_NO_BITS)
    lo, hi, nans = extremes[0, c], extremes[1, c], 0
    for i in range(lane.shape[0]):
        v = np.float64(lane[i])
        a = _bits(v) & _ABS_MASK
        top = max(top, a if a <= _INF_BITS else 0)
        bottom = min(bottom, a if a != 0 else _NO_BITS)  # NaN's bits exceed a finite value's
        lo = _smaller(lo, v)
        hi = _larger(hi, v)
        nans += v != v
    extremes[0, c], extremes[1, c], extremes[2, c] = lo, hi, extremes[2, c] + nans
    path, t = _path(top, bottom)
    if path == _FAST:
        _set_constants(t, ws, 0, 1, 1)
        _fast_lane(lane, ws)
        _add_digit_sums(ws, 0, 1, 1, lane.shape[0], t, c, b1, b2, ranges)
    elif path == _GENERAL:
        return _general_lane(lane, c, b1, b2, ranges)
    return True


@numba.njit(inline="always")
def _aligned_zeros(n: int) -> np.ndarray:
    """``n`` zeroed uint64 from a 64-byte boundary: the sweeps' vector loads and stores never straddle a cache line.

    (Straddling ones made the digit sweep 1.5x slower.)
    """
    raw = np.zeros(n + 7, np.uint64)
    skip = (-raw.ctypes.data) % 64 // 8
    return raw[skip : skip + n]


@numba.njit(nogil=True, cache=True)
def _segment_ranges(flat: np.ndarray, first: int, count: int, width: int, stride: int, tb: np.ndarray) -> None:
    """Per position ``p``: largest ``|x|`` (``tb[p]``), smallest nonzero ``|x|``, min, max and NaN count.

    The last four at ``tb[k * _GROUP + p]``, ``k = 1 .. 4``. Over the
    ``count`` segments ``flat[first + s * stride :][:width]``; NaN is none
    of the first four. ``llvm.maxnum``/``minnum`` keep the loop over a
    segment vectorised (a select on the stored value becomes a masked store).
    """
    for p in range(width):
        tb[p] = 0.0
        tb[_GROUP + p] = np.inf
        tb[2 * _GROUP + p] = np.inf
        tb[3 * _GROUP + p] = -np.inf
        tb[4 * _GROUP + p] = 0.0
    for s in range(count):
        seg = flat[first + s * stride : first + s * stride + width]
        for p in range(width):
            v = np.float64(seg[p])
            a = abs(v)
            tb[p] = _larger(tb[p], a)
            tb[_GROUP + p] = _smaller_nonzero(tb[_GROUP + p], a)
            tb[2 * _GROUP + p] = _smaller(tb[2 * _GROUP + p], v)
            tb[3 * _GROUP + p] = _larger(tb[3 * _GROUP + p], v)
            tb[4 * _GROUP + p] += v != v


@numba.njit(nogil=True, cache=True)
def _segment_digits(flat: np.ndarray, first: int, count: int, width: int, stride: int, ws: np.ndarray) -> None:
    """Fast path across positions: add the digits per position ``p`` to the sums ``ws[(8 + q) * _GROUP + p]``.

    Over the same segments as :func:`_segment_ranges`, with the arithmetic of
    :func:`_fast_lane` and each position's constants from ``ws``. The
    constants and sums sit at fixed offsets of one array, so the loop over a
    segment vectorises without aliasing checks between them. It also
    prefetches the next block's segments: their first sweep then reads the
    cache while this sweep's arithmetic keeps memory busy (10% faster).
    """
    size = flat.itemsize
    ahead = flat.ctypes.data + (first + count * stride) * size  # the next block's segments
    for s in range(count):
        for b in range(0, width * size, 64):
            _prefetch(ahead + s * stride * size + b)
        seg = flat[first + s * stride : first + s * stride + width]
        for p in range(width):
            d0, d1, d2, d3, d4, d5, d6, d7 = _digits(
                np.float64(seg[p]),
                _constant(ws, 0, p),
                _constant(ws, 1, p),
                _constant(ws, 2, p),
                _constant(ws, 3, p),
                _constant(ws, 4, p),
                _constant(ws, 5, p),
                _constant(ws, 6, p),
                _constant(ws, 7, p),
            )
            ws[8 * _GROUP + p] += d0
            ws[9 * _GROUP + p] += d1
            ws[10 * _GROUP + p] += d2
            ws[11 * _GROUP + p] += d3
            ws[12 * _GROUP + p] += d4
            ws[13 * _GROUP + p] += d5
            ws[14 * _GROUP + p] += d6
            ws[15 * _GROUP + p] += d7


@numba.njit(nogil=True, cache=True)
def _add_pending(
    work: np.ndarray,
    f: int,
    m: int,
    pending: np.ndarray,
    tops: np.ndarray,
    b1: np.ndarray,
    b2: np.ndarray,
    ranges: np.ndarray,
) -> None:
    """Add every feature's pending digit sums (see :func:`_row_sums`) to its buckets."""
    for c in range(f):
        if pending[c] > 0:
            g = c - c % _GROUP
            ws = work[(g // _GROUP) * 16 * _GROUP : (g // _GROUP + 1) * 16 * _GROUP]
            _add_digit_sums(ws, c - g, min(_GROUP, f - g), m, pending[c], tops[c], c, b1, b2, ranges)
            pending[c] = 0


@numba.njit(nogil=True, cache=True)
def _row_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray) -> bool:
    """Add every value of a C-contiguous (rows, features) ``x``; False if it holds an inf.

    Read in place, a row segment at a time across the features, in blocks of
    rows (:data:`_LANE_VALUES` values, at most :data:`_PENDING_ROWS` rows)
    and groups of :data:`_GROUP` features, each group with its own work
    array. With at most ``_GROUP`` features,
    ``copies`` consecutive rows make one contiguous segment (``copies * f <=
    _GROUP`` positions, each feature at ``copies`` positions), so narrow
    blocks vectorise too. Per block, a first sweep finds each position's range
    and so each feature's path; a second, from the cache, adds the digits of
    every position with its feature's constants to the sums in the work
    array. A feature keeps the grids of a larger ``T`` while they hold its
    blocks; its sums are added to its buckets only when its grids change, when
    it leaves the fast path, before they would pass :data:`_PENDING_ROWS`
    rows, and at the end. Features off the fast path get the constants of ``T = 0``
    (their sums are cleared) and are added on their own.
    """
    n, f = x.shape
    if n == 0 or f == 0:
        return True
    flat = x.reshape(-1)
    groups = -(-f // _GROUP)
    work = _aligned_zeros(groups * 16 * _GROUP)
    tb = _aligned_zeros(5 * _GROUP).view(np.float64)
    paths = np.empty(_GROUP, np.int64)
    pending = np.zeros(f, np.int64)  # rows in a feature's digit sums
    tops = np.full(f, _NO_GRIDS, np.int64)  # the T of its constants in the work array
    copies = max(1, _GROUP // f)
    lane = (min(_PENDING_ROWS, _LANE_VALUES // min(f, _GROUP)) // copies) * copies
    m = copies
    for start in range(0, n, lane):
        rows = min(lane, n - start)
        if rows % copies != 0:  # a last, ragged block: one row per segment, with constants laid out again
            _add_pending(work, f, m, pending, tops, b1, b2, ranges)
            tops[:] = _NO_GRIDS
            m = 1
        for g in range(0, f, _GROUP):
            w = min(_GROUP, f - g)
            ws = work[(g // _GROUP) * 16 * _GROUP : (g // _GROUP + 1) * 16 * _GROUP]
            first = start * f + g
            _segment_ranges(flat, first, rows // m, m * w, m * f, tb)
            fast = False
            for j in range(w):
                c = g + j
                top, bottom = 0.0, np.inf
                for r in range(m):
                    top = max(top, tb[r * w + j])
                    bottom = min(bottom, tb[_GROUP + r * w + j])
                    extremes[0, c] = _smaller(extremes[0, c], tb[2 * _GROUP + r * w + j])
                    extremes[1, c] = _larger(extremes[1, c], tb[3 * _GROUP + r * w + j])
                    extremes[2, c] += tb[4 * _GROUP + r * w + j]
                path, t = _path(_bits(top), _bits(bottom))
                if path == _FAST and t < tops[c] and _fits(tops[c], _bits(bottom)):
                    t = tops[c]  # the grids in place hold this block too
                paths[j] = path
                if pending[c] > 0 and (path != _FAST or t != tops[c] or pending[c] + rows > _PENDING_ROWS):
                    _add_digit_sums(ws, j, w, m, pending[c], tops[c], c, b1, b2, ranges)
                    pending[c] = 0
                if path != _FAST:
                    t = _NO_GRIDS  # sums cleared after the sweep
                if t != tops[c]:
                    _set_constants(t if path == _FAST else 0, ws, j, w, m)
                    tops[c] = t
                fast |= path == _FAST
            if fast:
                _segment_digits(flat, first, rows // m, m * w, m * f, ws)
            for j in range(w):
                if paths[j] == _FAST:
                    pending[g + j] += rows
                    continue
                for q in range(8, 16):
                    for r in range(m):
                        ws[q * _GROUP + r * w + j] = 0
                if paths[j] == _GENERAL and not _general_lane(x[start : start + rows, g + j], g + j, b1, b2, ranges):
                    return False
    _add_pending(work, f, m, pending, tops, b1, b2, ranges)
    return True


@numba.njit(nogil=True, cache=True)
def _column_sums(
    flat: np.ndarray, stride: int, n: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray
) -> bool:
    """Add every value of the columns ``flat[j * stride : j * stride + n]``; False if one holds an inf."""
    ws = np.zeros(16 * _GROUP, np.uint64)
    for j in range(b1.shape[0]):
        for start in range(0, n, BLOCK):
            lane = flat[j * stride + start : j * stride + min(start + BLOCK, n)]
            if not _add_lane(lane, j, ws, b1, b2, ranges, extremes):
                return False
    return True


def bucket_sums(
    x: np.ndarray, b1: np.ndarray, b2: np.ndarray, extremes: np.ndarray
) -> tuple[int, int, int, int] | None:
    """Add every value of the float64 or float32 block ``x`` to the buckets.

    Returns the ranges of bucket positions touched, ``(lo1, hi1, lo2, hi2)``
    (``hi`` exclusive), or None when ``x`` holds an inf. ``extremes``, float64
    of shape ``(3, n_features)`` starting at ``inf``, ``-inf`` and 0, receives
    each feature's min and max (NaN skipped; a zero of either sign) and its
    NaN count, from the sweep that finds the ranges.
    """
    ranges = np.array([1 << 30, 0, 1 << 30, 0], np.int64)
    n, f = x.shape
    size = x.itemsize
    if x.strides[0] == size and x.strides[1] >= 0 and x.strides[1] % size == 0:
        # Columns contiguous (Fortran order, or rows sliced from it): one flat
        # view from the first value to the last holds every column at a fixed
        # stride, and reads as contiguous lanes.
        stride = x.strides[1] // size
        flat = np.lib.stride_tricks.as_strided(x, ((f - 1) * stride + n,), (size,), writeable=False)
        ok = _column_sums(flat, stride, n, b1, b2, ranges, extremes)
    else:
        ok = _row_sums(np.ascontiguousarray(x), b1, b2, ranges, extremes)
    if not ok:
        return None
    lo1, hi1, lo2, hi2 = (int(v) for v in ranges)
    return lo1, hi1, lo2, hi2


@numba.njit(nogil=True, cache=True)
def normalise(limbs: np.ndarray) -> None:
    """Carry-normalise rows of 32-bit limbs in place (lower limbs below 2**62)."""
    n, width = limbs.shape
    for i in range(n):
        carry = np.int64(0)
        for k in range(width - 1):
            v = limbs[i, k] + carry
            carry = v >> _LIMB_BITS
            limbs[i, k] = v & _LIMB_MASK
        limbs[i, width - 1] += carry


@numba.njit(nogil=True, cache=True)
def limbs_from_buckets(buckets: np.ndarray, lo: int, hi: int, limbs: np.ndarray) -> None:
    """Add ``sum(buckets[:, p] * 2**p)`` for ``lo <= p < hi`` to zeroed ``limbs``, normalised.

    The same split as ``exact._limbs_from_buckets``: a bucket ``|B| < 2**62`` at
    ``p = 32k + r`` becomes pieces below 2**32 at limbs ``k``, ``k+1``, ``k+2``.
    """
    for c in range(buckets.shape[0]):
        for p in range(lo, hi):
            b = buckets[c, p]
            if b == 0:
                continue
            k = p >> 5
            r = p & 31
            low = (b & _LIMB_MASK) << r
            high = (b >> _LIMB_BITS) << r
            limbs[c, k] += low & _LIMB_MASK
            limbs[c, k + 1] += (low >> _LIMB_BITS) + (high & _LIMB_MASK)
            limbs[c, k + 2] += high >> _LIMB_BITS
    normalise(limbs)
