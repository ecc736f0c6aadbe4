"""The numba kernel of :mod:`scalepipe.exact`: the same sums, in one pass.

Importing this module fails without numba; :mod:`scalepipe.exact` then uses
its numpy kernel. Both produce buckets (int64 sums at bit positions) whose
weighted total is exactly ``sum(x)`` and ``sum(x*x)``, and both are folded into
the same canonical limbs, so the two kernels agree bit for bit.

The kernel reads float64 or float32 (widened exactly as it is read), one
feature at a time in lanes of at most :data:`BLOCK` rows: the columns of a
block whose columns are contiguous (Fortran order, or rows sliced from it) are
read in place; a C-contiguous block is transposed a row at a time into a small
scratch buffer first. A first sweep over a lane finds its largest ``|x|`` and
smallest nonzero ``|x|``; their exponent fields give ``T`` and ``L`` with ``|x|
< 2**T`` and every ``x`` an integer multiple of ``2**L``. The lane then takes
one of two paths:

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
subtracted once per lane, and a digit sum stays below ``BLOCK * 2**51``. The
bounds above follow from ``T`` and ``L`` alone, so no value is ever rounded and
nothing is checked afterwards. ``T <= 510`` keeps the constants finite, ``T >=
-462`` keeps them (and the finest grid) normal.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["BLOCK", "bucket_sums", "limbs_from_buckets", "normalise"]

#: Most rows per lane: a digit sum stays below ``BLOCK * 2**51 = 2**59``.
BLOCK = 256
#: Features transposed together from a C-contiguous block (its scratch stays in cache).
_GROUP = 64

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


@numba.njit(nogil=True, cache=True)
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


@numba.njit(nogil=True, cache=True)
def _grids(top: np.int64, bottom: np.int64, k: np.ndarray) -> tuple[int, int]:
    """The path of a feature's block from its largest and smallest nonzero ``|x|`` (bits).

    Returns ``(path, T)``; on the fast path, ``k`` receives the rounding
    constants of the grids ``2**(T - 25 j)``, ``j = 1..3`` (the digits of
    ``x``) and ``2**(2T - 25 j)``, ``j = 2..6`` (the sums of their products).
    """
    if top == 0:
        return _EMPTY, 0
    if top >= _INF_BITS:
        return _GENERAL, 0
    t = max(top >> 52, 1) - 1022  # |x| < 2**t
    u = max(bottom >> 52, 1) - 1075  # every x is a multiple of 2**u
    if not (_FAST_MIN_TOP <= t <= _FAST_MAX_TOP and t - u <= 3 * _DIGIT_BITS):
        return _GENERAL, 0
    for j in range(3):
        k[j] = _rounding_constant(t - _DIGIT_BITS * (j + 1))
    for j in range(5):
        k[3 + j] = _rounding_constant(2 * t - _DIGIT_BITS * (j + 2))
    return _FAST, t


@numba.njit(nogil=True, cache=True)
def _add_digit(buckets: np.ndarray, c: int, pos: int, d: np.int64) -> None:
    """Add ``d * 2**pos`` as three pieces below 2**27 (``|d| < 2**62``)."""
    buckets[c, pos] += d & _HALF_MASK
    buckets[c, pos + _HALF_BITS] += (d >> _HALF_BITS) & _HALF_MASK
    buckets[c, pos + 2 * _HALF_BITS] += d >> (2 * _HALF_BITS)


@numba.njit(nogil=True, cache=True)
def _fast_lane(lane: np.ndarray, c: int, t: int, k: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> None:
    """Fast path: add a feature's block through its digits (see the module docstring).

    The 8 digit sums land at positions 25 apart, each split into pieces 27
    apart, so no two of the 24 pieces share a bucket: a bucket gains less than
    2**27 per block, within exact's 2**28 per row.
    """
    k0, k1, k2, k3, k4, k5, k6, k7 = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.uint64(0)
    for i in range(lane.shape[0]):
        v = np.float64(lane[i])
        v = v if v == v else 0.0  # NaN adds nothing
        y = v + k0
        da = y - k0
        r = v - da
        z = r + k1
        db = z - k1
        dc = r - db  # v == da + db + dc, on the three grids
        s0 += _ubits(y)
        s1 += _ubits(z)
        s2 += _ubits(dc + k2)
        da2 = da + da
        s3 += _ubits(_fma(da, da, k3))
        s4 += _ubits(_fma(da2, db, k4))
        s5 += _ubits(_fma(da2, dc, _fma(db, db, k5)))
        s6 += _ubits(_fma(db + db, dc, k6))
        s7 += _ubits(_fma(dc, dc, k7))
    # The constants' bit patterns, once per value read on each grid.
    m = np.uint64(lane.shape[0])
    sums = (s0, s1, s2, s3, s4, s5, s6, s7)
    for j in range(3):
        _add_digit(b1, c, t - _DIGIT_BITS * (j + 1) + 1074, np.int64(sums[j] - m * _ubits(k[j])))
    for j in range(5):
        _add_digit(b2, c, 2 * t - _DIGIT_BITS * (j + 2) + 2148, np.int64(sums[3 + j] - m * _ubits(k[3 + j])))
    ranges[0] = min(ranges[0], t - 3 * _DIGIT_BITS + 1074)
    ranges[1] = max(ranges[1], t - _DIGIT_BITS + 1074 + 2 * _HALF_BITS + 1)
    ranges[2] = min(ranges[2], 2 * t - 6 * _DIGIT_BITS + 2148)
    ranges[3] = max(ranges[3], 2 * t - 2 * _DIGIT_BITS + 2148 + 2 * _HALF_BITS + 1)


@numba.njit(nogil=True, cache=True)
def _add_lane(lane: np.ndarray, c: int, k: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> bool:
    """Add a feature's block (contiguous, at most :data:`BLOCK` rows); False if it holds an inf.

    The first sweep finds the largest ``|x|`` and the smallest nonzero ``|x|``
    (as bits: NaN is neither, an inf is the largest) and so the path.
    """
    top = np.int64(0)
    bottom = np.int64(_NO_BITS)
    for i in range(lane.shape[0]):
        a = _bits(np.float64(lane[i])) & _ABS_MASK
        top = max(top, a if a <= _INF_BITS else 0)
        bottom = min(bottom, a if a != 0 else _NO_BITS)  # NaN's bits exceed a finite value's
    path, t = _grids(top, bottom, k)
    if path == _FAST:
        _fast_lane(lane, c, t, k, b1, b2, ranges)
    elif path == _GENERAL:
        return _general_lane(lane, c, b1, b2, ranges)
    return True


@numba.njit(nogil=True, cache=True)
def _row_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> bool:
    """Add every value of a C-contiguous (rows, features) ``x``; False if it holds an inf.

    Blocks of :data:`BLOCK` rows and up to :data:`_GROUP` features are
    transposed into a scratch buffer, a row at a time, then added lane by lane.
    """
    n, f = x.shape
    width = min(f, _GROUP)
    scratch = np.empty((width, min(n, BLOCK)), x.dtype)
    k = np.empty(8)
    for start in range(0, n, BLOCK):
        rows = min(BLOCK, n - start)
        for g in range(0, f, width):
            w = min(width, f - g)
            for i in range(rows):
                for j in range(w):
                    scratch[j, i] = x[start + i, g + j]
            for j in range(w):
                if not _add_lane(scratch[j, :rows], g + j, k, b1, b2, ranges):
                    return False
    return True


@numba.njit(nogil=True, cache=True)
def _column_sums(flat: np.ndarray, stride: int, n: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> bool:
    """Add every value of the columns ``flat[j * stride : j * stride + n]``; False if one holds an inf."""
    k = np.empty(8)
    for j in range(b1.shape[0]):
        for start in range(0, n, BLOCK):
            lane = flat[j * stride + start : j * stride + min(start + BLOCK, n)]
            if not _add_lane(lane, j, k, b1, b2, ranges):
                return False
    return True


def bucket_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int, int, int] | None:
    """Add every value of the float64 or float32 block ``x`` to the buckets.

    Returns the ranges of bucket positions touched, ``(lo1, hi1, lo2, hi2)``
    (``hi`` exclusive), or None when ``x`` holds an inf.
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
        ok = _column_sums(flat, stride, n, b1, b2, ranges)
    else:
        ok = _row_sums(np.ascontiguousarray(x), b1, b2, ranges)
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
