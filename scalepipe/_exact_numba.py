"""The numba kernel of :mod:`scalepipe.exact`: the same sums, in one pass.

Importing this module fails without numba; :mod:`scalepipe.exact` then uses
its numpy kernel. Both produce buckets (int64 sums at bit positions) whose
weighted total is exactly ``sum(x)`` and ``sum(x*x)``, and both are folded into
the same canonical limbs, so the two kernels agree bit for bit.

The kernel visits each feature in blocks of :data:`BLOCK` rows and takes one of
two paths per (feature, block):

*General path* (any finite values): each value is split into its integer
mantissa and exponent and its pieces are added to the buckets, as the numpy
kernel does (see the comment above ``_bucket_sums`` in ``exact``).

*Fast path* (ordinary data: the block's values span at most 75 bits and
``2**-437 <= max|x| < 2**500``). With ``T`` such that ``max|x| < 2**T``, a value
is split into digits on the grids ``2**(T - 50)`` and ``2**(T - 100)``; its
square ``x*x = p + e`` (``e`` from a fused multiply-add, exact here) into
digits on the grids ``2**(2T - 50 j)``, ``j = 1..3``. A digit on grid ``2**g``
is read with the rounding trick ``y = r + 1.5 * 2**(g + 52)``: since ``|r| <
2**(g + 51)``, ``y - 1.5 * 2**(g + 52)`` is ``r`` rounded to the grid, the
subtractions are exact (Sterbenz), and the integer digit is ``bits(y) -
bits(1.5 * 2**(g + 52))``. Digits are below ``2**51`` and summed as integers,
which vectorises without any reassociation of float additions. Every leftover
after the finest grid must be zero; if one is not (the span does not hold), the
block is redone on the general path, so no value is ever rounded.

Why ``e`` is exact: a passing block has every ``x`` a multiple of ``2**(T -
100)``, hence ``x*x - p`` a multiple of ``2**(2T - 200) >= 2**-1074`` (``T >=
-437``) with at most 53 significant bits, so one rounding leaves it unchanged
(and a failing block is discarded anyway). ``|x| < 2**500`` keeps ``x*x`` and
the rounding constants finite.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["BLOCK", "bucket_sums", "limbs_from_buckets", "normalise"]

#: Rows per (feature, block): a digit sum stays below ``2 * BLOCK * 2**50 = 2**61``.
BLOCK = 1024
#: Features transposed together from a row-major block (one cache line of a row).
_GROUP = 8

_FRAC_MASK = (1 << 52) - 1
_LIMB_BITS = 32
_LIMB_MASK = (1 << _LIMB_BITS) - 1
_ABS_MASK = (1 << 63) - 1
_INF_BITS = 0x7FF << 52
_HALF_BITS = 27
_HALF_MASK = (1 << _HALF_BITS) - 1
_LEVEL_BITS = 50
_FAST_MIN_TOP = -437  # 2 * (T - 100) >= -1074
_FAST_MAX_TOP = 500


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
def _square_error(typingctx, x, p):
    """``x*x - p`` with one rounding (a fused multiply-add)."""
    sig = types.float64(types.float64, types.float64)

    def codegen(context, builder, signature, args):
        v, prod = args
        return builder.fma(v, v, builder.fneg(prod))

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
        e = _add_value(_bits(lane[i]), c, b1, b2)
        if e == -2:
            return False
        if e >= 0:
            ranges[0] = min(ranges[0], e)
            ranges[1] = max(ranges[1], e + _HALF_BITS + 1)
            ranges[2] = min(ranges[2], 2 * e)
            ranges[3] = max(ranges[3], 2 * e + 3 * _HALF_BITS + 1)
    return True


@numba.njit(nogil=True, cache=True)
def _top_bits(lane: np.ndarray) -> np.int64:
    """The largest ``|x|`` of the block as bits (NaN ignored; inf kept)."""
    top = np.int64(0)
    for i in range(lane.shape[0]):
        a = _bits(lane[i]) & _ABS_MASK
        a = a if a <= _INF_BITS else 0
        top = a if a > top else top
    return top


@numba.njit(nogil=True, cache=True)
def _digit_sums(lane: np.ndarray, k: np.ndarray, out: np.ndarray) -> bool:
    """Fast path: the integer digit sums of a block; False if a leftover is nonzero.

    ``k`` holds the rounding constants ``1.5 * 2**(g + 52)`` of the grids
    ``2**(T - 50)``, ``2**(T - 100)`` (sum of ``x``) and ``2**(2T - 50 j)``,
    ``j = 1..3`` (sum of ``x*x``); ``out`` receives the five digit sums. The
    digits are summed as wrapping uint64 bit patterns and the constants' bit
    patterns subtracted once at the end: the true sums are below 2**61.
    """
    c1, c2, d1, d2, d3 = k[0], k[1], k[2], k[3], k[4]
    s1 = np.uint64(0)
    s2 = np.uint64(0)
    q1 = np.uint64(0)
    q2 = np.uint64(0)
    q3 = np.uint64(0)
    left = np.int64(0)
    n = lane.shape[0]
    for i in range(n):
        v = lane[i]
        v = v if v == v else 0.0
        y = v + c1
        r = v - (y - c1)
        s1 += _ubits(y)
        y = r + c2
        r = r - (y - c2)
        s2 += _ubits(y)
        p = v * v
        e = _square_error(v, p)  # v*v == p + e exactly
        y = p + d1
        p = p - (y - d1)
        q1 += _ubits(y)
        y = p + d2
        p = p - (y - d2)
        q2 += _ubits(y)
        y = e + d2
        e = e - (y - d2)
        q2 += _ubits(y)
        y = p + d3
        p = p - (y - d3)
        q3 += _ubits(y)
        y = e + d3
        e = e - (y - d3)
        q3 += _ubits(y)
        left |= _bits(r) | _bits(p) | _bits(e)
    m = np.uint64(n)
    out[0] = np.int64(s1 - m * _ubits(c1))
    out[1] = np.int64(s2 - m * _ubits(c2))
    out[2] = np.int64(q1 - m * _ubits(d1))
    out[3] = np.int64(q2 - np.uint64(2) * m * _ubits(d2))
    out[4] = np.int64(q3 - np.uint64(2) * m * _ubits(d3))
    return (left & _ABS_MASK) == 0


@numba.njit(nogil=True, cache=True)
def _add_digit(buckets: np.ndarray, c: int, pos: int, d: np.int64) -> None:
    """Add ``d * 2**pos`` as three pieces below 2**27 (``|d| < 2**62``)."""
    buckets[c, pos] += d & _HALF_MASK
    buckets[c, pos + _HALF_BITS] += (d >> _HALF_BITS) & _HALF_MASK
    buckets[c, pos + 2 * _HALF_BITS] += d >> (2 * _HALF_BITS)


@numba.njit(nogil=True, cache=True)
def _fast_lane(lane, c, b1, b2, ranges, k, digits) -> bool:
    """Try the fast path on a feature's block; False if it does not apply."""
    top_bits = _top_bits(lane)
    if top_bits == 0:
        return True  # zeros and NaN only: nothing to add
    biased = top_bits >> 52
    top = max(biased, 1) - 1022  # max|x| < 2**top
    if top > _FAST_MAX_TOP:
        return False
    top = max(top, _FAST_MIN_TOP)
    g1 = top - _LEVEL_BITS
    g2 = top - 2 * _LEVEL_BITS
    k[0] = math.ldexp(1.5, g1 + 52)
    k[1] = math.ldexp(1.5, g2 + 52)
    for j in range(3):
        k[2 + j] = math.ldexp(1.5, 2 * top - _LEVEL_BITS * (j + 1) + 52)
    if not _digit_sums(lane, k, digits):
        return False
    # The 15 pieces land on distinct buckets (grids 50 apart, pieces 27 apart),
    # so a bucket gains less than 2**27 per block: within exact's 2**28 per row.
    _add_digit(b1, c, g1 + 1074, digits[0])
    _add_digit(b1, c, g2 + 1074, digits[1])
    for j in range(3):
        _add_digit(b2, c, 2 * top - _LEVEL_BITS * (j + 1) + 2148, digits[2 + j])
    ranges[0] = min(ranges[0], g2 + 1074)
    ranges[1] = max(ranges[1], g1 + 1074 + 2 * _HALF_BITS + 1)
    ranges[2] = min(ranges[2], 2 * top - 3 * _LEVEL_BITS + 2148)
    ranges[3] = max(ranges[3], 2 * top - _LEVEL_BITS + 2148 + 2 * _HALF_BITS + 1)
    return True


@numba.njit(nogil=True, cache=True)
def _sums(x: np.ndarray, lanes_contiguous: bool, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray) -> bool:
    """Add every value of ``x`` to the buckets; False if ``x`` holds an inf.

    ``x`` is (features, rows) when ``lanes_contiguous``, else (rows, features);
    C-contiguous either way.
    """
    if lanes_contiguous:
        f, n = x.shape
    else:
        n, f = x.shape
    group = min(f, _GROUP)
    scratch = np.empty((group, min(n, BLOCK)))
    k = np.empty(5)
    digits = np.empty(5, np.int64)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        for g in range(0, f, group):
            width = min(group, f - g)
            if not lanes_contiguous:
                for i in range(start, stop):  # transpose a cache-line-wide strip
                    for j in range(width):
                        scratch[j, i - start] = x[i, g + j]
            for j in range(width):
                if lanes_contiguous:
                    lane = x[g + j, start:stop]
                else:
                    lane = scratch[j, : stop - start]
                if not _fast_lane(lane, g + j, b1, b2, ranges, k, digits):
                    if not _general_lane(lane, g + j, b1, b2, ranges):
                        return False
    return True


def bucket_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int, int, int] | None:
    """Add every value of the float64 block ``x`` to the buckets.

    Returns the ranges of bucket positions touched, ``(lo1, hi1, lo2, hi2)``
    (``hi`` exclusive), or None when ``x`` holds an inf.
    """
    ranges = np.array([1 << 30, 0, 1 << 30, 0], np.int64)
    if x.flags.f_contiguous:
        ok = _sums(x.T, True, b1, b2, ranges)
    else:
        ok = _sums(np.ascontiguousarray(x), False, b1, b2, ranges)
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
