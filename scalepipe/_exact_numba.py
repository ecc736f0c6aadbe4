"""The numba kernel of :mod:`scalepipe.exact`: the same buckets, one pass, no temporaries.

Importing this module fails without numba; :mod:`scalepipe.exact` then uses
its numpy kernel. Both add the same integer pieces to the same buckets (see the
comment above ``_bucket_sums`` there), so they give identical limbs.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["bucket_sums"]

_FRAC_MASK = (1 << 52) - 1
_HALF_BITS = 27
_HALF_MASK = (1 << _HALF_BITS) - 1


@numba.njit(nogil=True, cache=True, inline="always")
def _add_value(bits: np.int64, c: int, b1: np.ndarray, b2: np.ndarray) -> int:
    """Add one double (given by its bits) to feature ``c``'s buckets.

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
def _sums_by_rows(bits: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int]:
    """``bits`` is (rows, features), row-contiguous."""
    e_lo, e_hi = 2046, -1
    n, f = bits.shape
    for i in range(n):
        for c in range(f):
            e = _add_value(bits[i, c], c, b1, b2)
            if e == -2:
                return e_lo, -2
            if e >= 0:
                e_lo = min(e_lo, e)
                e_hi = max(e_hi, e)
    return e_lo, e_hi


@numba.njit(nogil=True, cache=True)
def _sums_by_columns(bits_t: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int]:
    """``bits_t`` is (features, rows), row-contiguous: the transpose of a column-major block."""
    e_lo, e_hi = 2046, -1
    f, n = bits_t.shape
    for c in range(f):
        for i in range(n):
            e = _add_value(bits_t[c, i], c, b1, b2)
            if e == -2:
                return e_lo, -2
            if e >= 0:
                e_lo = min(e_lo, e)
                e_hi = max(e_hi, e)
    return e_lo, e_hi


def bucket_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int]:
    """Add every value of the float64 block ``x`` to the buckets.

    Returns the smallest and largest exponent of a nonzero value (``(2046,
    -1)`` when there is none), or ``e_hi == -2`` when ``x`` holds an inf.
    """
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        e_lo, e_hi = _sums_by_columns(x.T.view(np.int64), b1, b2)
    else:
        e_lo, e_hi = _sums_by_rows(np.ascontiguousarray(x).view(np.int64), b1, b2)
    return int(e_lo), int(e_hi)
