"""Exact, partition-independent sums: ``sum(x)`` and ``sum(x*x)`` per feature.

Floating-point sums depend on the order of the additions, so statistics merged
from 8 partitions and from 80 differ in the last bits. Here the sums are kept
*exactly*, as integers, so the merge is integer addition: associative and
commutative, and the statistics are bit-identical for any chunking, merge
order and worker count. ``mean`` and ``m2`` are derived once, at the end, with
rational arithmetic and rounded once (correctly rounded to float64).

Representation (a fixed-point "superaccumulator", after Neal 2015, "Fast exact
summation using small and large superaccumulators"): every finite float64 is
an integer multiple of ``2**-1074`` below ``2**1024``, so ``S1 = sum(x)`` is
``A1 * 2**-1074`` for an integer ``A1``, and ``S2 = sum(x*x)`` is
``A2 * 2**-2148``. Each integer is held per feature as ``L`` int64 limbs of 32
bits, ``A = sum(limb[k] * 2**(32*k))``:

* ``s1`` has :data:`S1_LIMBS` (67) limbs: bits ``0 .. 2111`` of ``A1`` hold
  every value (``|x| < 2**1024`` is bit ``2097``), the top limb is the sign
  and the carries of many values.
* ``s2`` has :data:`S2_LIMBS` (133) limbs: ``x*x < 2**2048`` is bit ``4195``
  of ``A2``, below the top limb's ``4224``.

The limbs are kept *canonical*: limbs ``0 .. L-2`` in ``[0, 2**32)``, the top
limb a signed int64. Each integer has exactly one canonical form, so equal sums
are equal arrays, bit for bit.

Overflow: a merge adds two canonical forms limb by limb (lower limbs
``< 2**33``) and carry-normalises, so no limb ever exceeds ``2**33`` in a merge
of two, nor ``2**63`` when up to ``2**31`` canonical values are added at once
(:func:`merge_exact_all`). The top limb of ``s1`` holds ``|A1| / 2**2112 <=
n * 2**-14`` and that of ``s2`` ``A2 / 2**4224 <= n * 2**-28`` for ``n`` values,
so it cannot overflow for any count an int64 can hold.

This module imports numpy only. A numba kernel (``scalepipe._exact_numba``)
computes the same canonical limbs faster when numba is installed; set the
environment variable ``SCALEPIPE_NO_NUMBA=1`` to use the numpy path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._accel import numba_kernels
from .errors import ArtifactError, DataError

__all__ = [
    "S1_EXP",
    "S1_LIMBS",
    "S2_EXP",
    "S2_LIMBS",
    "ExactSums",
    "Extremes",
    "chunk_exact",
    "chunk_exact_sums",
    "exact_mean_lo",
    "exact_mean_m2",
    "from_lists",
    "merge_exact",
    "merge_exact_all",
    "to_lists",
]

#: ``S1 = A1 * 2**S1_EXP``: the unit of ``s1`` is the smallest subnormal.
S1_EXP = -1074
#: ``S2 = A2 * 2**S2_EXP``: the unit of ``s2`` is the square of that.
S2_EXP = -2148
LIMB_BITS = 32
S1_LIMBS = 67
S2_LIMBS = 133

_LIMB_MASK = (1 << LIMB_BITS) - 1
_FRAC_MASK = (1 << 52) - 1
_HALF_BITS = 27
_HALF_MASK = (1 << _HALF_BITS) - 1

#: Bucket positions (bits of ``A1`` / ``A2``) that a value can touch, rounded
#: up to whole limbs. A bucket at position ``p`` holds an int64 ``|B| < 2**62``
#: that spans limbs ``p // 32 .. p // 32 + 2``, which stay below the top limb.
_S1_POSITIONS = LIMB_BITS * (S1_LIMBS - 2)  # 2080 > 2045 + 27, the highest used
_S2_POSITIONS = LIMB_BITS * (S2_LIMBS - 2)  # 4192 > 2 * 2045 + 81

#: Values per sub-block of the numpy kernel: temporaries stay in cache, and a
#: bucket receives at most 2**16 weights per ``bincount`` (see ``_bucket_sums``).
_SUB_VALUES = 1 << 16

#: Rows per kernel call: a bucket gains at most 2**28 per row, so its int64
#: total stays below 2**28 * 2**32 = 2**60.
_MAX_ROWS = 1 << 32

#: Canonical forms added at once by :func:`merge_exact_all` before normalising.
_MERGE_FAN_IN = 1 << 20


@dataclass(frozen=True, eq=False)
class ExactSums:
    """Exact ``sum(x)`` and ``sum(x*x)`` over the non-NaN values, per feature.

    Attributes
    ----------
    s1 : int64 array, shape ``(*shape, S1_LIMBS)``
        Canonical 32-bit limbs of ``A1 = sum(x) * 2**1074``.
    s2 : int64 array, shape ``(*shape, S2_LIMBS)``
        Canonical 32-bit limbs of ``A2 = sum(x*x) * 2**2148``.

    Two plain arrays of a fixed size (1600 bytes per feature): cheap to pickle
    and ship between workers, merged by :func:`merge_exact`.

    Examples
    --------
    >>> import numpy as np
    >>> s = chunk_exact_sums(np.array([[0.1], [0.2], [np.nan]]))
    >>> mean, m2 = exact_mean_m2(s, np.array([2]))
    >>> mean.tolist()  # the exact mean of the two doubles, rounded once
    [0.15000000000000002]
    """

    s1: np.ndarray
    s2: np.ndarray

    def __post_init__(self) -> None:
        for name, limbs in (("s1", S1_LIMBS), ("s2", S2_LIMBS)):
            a = getattr(self, name)
            if not (isinstance(a, np.ndarray) and a.dtype == np.int64 and a.ndim >= 1 and a.shape[-1] == limbs):
                got = getattr(a, "shape", None), getattr(a, "dtype", type(a))
                raise ValueError(f"ExactSums.{name} must be an int64 array of shape (..., {limbs}), got {got!r}")
        if self.s1.shape[:-1] != self.s2.shape[:-1]:
            raise ValueError(
                f"ExactSums.s1 and s2 disagree on the features' shape: {self.s1.shape} and {self.s2.shape}"
            )

    @classmethod
    def empty(cls, n_features: int | tuple[int, ...]) -> ExactSums:
        """The identity of :func:`merge_exact`: the sums of zero rows."""
        shape = (n_features,) if isinstance(n_features, (int, np.integer)) else tuple(n_features)
        return cls(np.zeros((*shape, S1_LIMBS), np.int64), np.zeros((*shape, S2_LIMBS), np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        """The features' shape (``(n_features,)`` for a table)."""
        return self.s1.shape[:-1]

    def take(self, index: Sequence[int] | np.ndarray) -> ExactSums:
        """The sums of the features at ``index`` (along the first axis)."""
        return ExactSums(self.s1[index], self.s2[index])

    def reshape(self, shape: tuple[int, ...]) -> ExactSums:
        """The same sums with the features arranged in ``shape``."""
        return ExactSums(self.s1.reshape(*shape, S1_LIMBS), self.s2.reshape(*shape, S2_LIMBS))

    @classmethod
    def concat(cls, parts: Sequence[ExactSums], axis: int = 0) -> ExactSums:
        """Join the sums of disjoint feature sets along ``axis``."""
        return cls(
            np.concatenate([p.s1 for p in parts], axis=axis), np.concatenate([p.s2 for p in parts], axis=axis)
        )

    def identical(self, other: ExactSums) -> bool:
        """Whether both hold the same sums (canonical limbs make this bitwise)."""
        return np.array_equal(self.s1, other.s1) and np.array_equal(self.s2, other.s2)


@dataclass(frozen=True, eq=False)
class Extremes:
    """A block's count, NaN count, min and max per feature, from the exact kernel's sweep.

    ``min``/``max`` are NaN where a feature has no value; a zero extreme is
    ``+0.0`` (its sign would depend on row order), as in
    :class:`~scalepipe.stats.Moments`.
    """

    count: np.ndarray
    nan_count: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def of(cls, n_rows: int, raw: np.ndarray) -> Extremes:
        """From the kernels' ``(3, n_features)`` array of min, max (infinite where empty) and NaN count."""
        nan_count = raw[2].astype(np.int64)
        count = n_rows - nan_count
        empty = count == 0
        lo = np.where(empty, np.nan, raw[0]) + 0.0
        hi = np.where(empty, np.nan, raw[1]) + 0.0
        return cls(count, nan_count, lo, hi)

    @classmethod
    def concat(cls, parts: Sequence[Extremes]) -> Extremes:
        """Join the extremes of disjoint feature sets."""
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("count", "nan_count", "min", "max")))


def _normalised(limbs: np.ndarray) -> np.ndarray:
    """The canonical form of limbs whose value fits (lower limbs ``< 2**62``).

    Carries ripple from the lowest limb up, one limb at a time over all
    features; an arithmetic shift is a floor division, so negative limbs borrow.
    """
    out = np.array(limbs, dtype=np.int64, order="C", copy=True)
    flat = out.reshape(-1, out.shape[-1])
    kernel = _numba_kernel()
    if kernel is not None:
        kernel.normalise(flat)
        return out
    for k in range(flat.shape[1] - 1):
        carry = flat[:, k] >> LIMB_BITS
        if carry.any():
            flat[:, k] &= _LIMB_MASK
            flat[:, k + 1] += carry
    return out


def merge_exact(a: ExactSums, b: ExactSums) -> ExactSums:
    """The exact sums of the union of two disjoint row sets.

    Integer addition, then carry normalisation: exactly associative and
    commutative, so any merge tree gives bit-identical limbs.
    ``merge_exact(ExactSums.empty(n), s)`` is ``s``.
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot merge exact sums of shapes {a.shape} and {b.shape}")
    return ExactSums(_normalised(a.s1 + b.s1), _normalised(a.s2 + b.s2))


def merge_exact_all(parts: Sequence[ExactSums]) -> ExactSums:
    """Merge a non-empty sequence of exact sums (one normalisation per 2**20 parts)."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_exact_all needs at least one ExactSums")
    s1, s2 = parts[0].s1, parts[0].s2
    for start in range(1, len(parts), _MERGE_FAN_IN):
        group = parts[start : start + _MERGE_FAN_IN]
        for p in group:
            if p.shape != parts[0].shape:
                raise ValueError(f"cannot merge exact sums of shapes {parts[0].shape} and {p.shape}")
        s1 = _normalised(s1 + np.sum([p.s1 for p in group], axis=0))
        s2 = _normalised(s2 + np.sum([p.s2 for p in group], axis=0))
    return ExactSums(s1, s2)


# --------------------------------------------------------------------------
# The chunk kernel.
#
# A finite double is ``mant * 2**(e - 1074)`` with an integer ``0 <= mant <
# 2**53`` and ``0 <= e <= 2045`` read from its bits (``e`` is the biased
# exponent less one for normal numbers, 0 for subnormals), so it contributes
# ``+-mant`` at bit position ``e`` of ``A1`` and ``mant**2`` at position ``2e``
# of ``A2``. Both are split into pieces below 2**28 that are added to one
# int64 bucket per (feature, bit position):
#
#   A1:  s = +-mant = hi * 2**27 + lo,   0 <= lo < 2**27, |hi| <= 2**26
#        -> lo at e, hi at e + 27
#   A2:  mant = a * 2**27 + b,           0 <= a < 2**26, 0 <= b < 2**27
#        mant**2 = a*a * 2**54 + 2*a*b * 2**27 + b*b, each product < 2**54,
#        each split at bit 27 -> four pieces, each < 2**28,
#        at 2e, 2e + 27, 2e + 54, 2e + 81
#
# No product rounds (int64 products below 2**54) and no square over- or
# underflows: it is never formed as a float. A row adds at most 2**28 to a
# bucket, so a bucket stays below 2**60 for _MAX_ROWS rows; the buckets are
# then folded into canonical limbs once per chunk.
# --------------------------------------------------------------------------


def _raise_non_finite(x: np.ndarray) -> None:
    from .stats import NonFiniteError  # stats imports this module; import at raise time

    raise NonFiniteError(np.flatnonzero(np.isinf(x).any(axis=0)))


def _limbs_from_buckets(buckets: np.ndarray, lo: int, hi: int, n_limbs: int) -> np.ndarray:
    """Canonical limbs of ``sum(buckets[:, p] * 2**p)``; only ``lo <= p < hi`` are nonzero.

    A bucket ``|B| < 2**62`` at ``p = 32k + r`` is split into ``B = h * 2**32 +
    l`` (``0 <= l < 2**32``, ``|h| < 2**30``); ``l << r`` and ``h << r`` fit an
    int64 and are split again at bit 32 into limbs ``k``, ``k + 1``, ``k + 2``.
    Each of the 32 values of ``r`` adds less than ``2**34`` to a limb, so the
    limbs stay below ``2**39`` before normalisation.
    """
    n = buckets.shape[0]
    limbs = np.zeros((n, n_limbs), np.int64)
    if hi <= lo:
        return limbs
    kernel = _numba_kernel()
    if kernel is not None:
        kernel.limbs_from_buckets(buckets, lo, hi, limbs)
        return limbs
    k0, k1 = lo // LIMB_BITS, -(-hi // LIMB_BITS)
    grid = buckets[:, k0 * LIMB_BITS : k1 * LIMB_BITS].reshape(n, k1 - k0, LIMB_BITS)
    width = k1 - k0
    for r in range(LIMB_BITS):
        b = grid[:, :, r]
        low = (b & _LIMB_MASK) << r
        high = (b >> LIMB_BITS) << r
        limbs[:, k0 : k0 + width] += low & _LIMB_MASK
        limbs[:, k0 + 1 : k0 + width + 1] += (low >> LIMB_BITS) + (high & _LIMB_MASK)
        limbs[:, k0 + 2 : k0 + width + 2] += high >> LIMB_BITS
    return _normalised(limbs)


def _bucket_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[int, int]:
    """Add the pieces of every value of ``x`` to the buckets (pure numpy).

    Returns the smallest and largest exponent ``e`` of a nonzero value
    (``(2046, -1)`` when there is none).

    ``np.bincount`` sums the float64 weights of a bucket in some order; that is
    exact because every weight is an integer below ``2**28`` in magnitude, a
    bucket belongs to one feature and receives at most one weight per value,
    and a sub-block holds at most ``2**16`` values per feature: every partial
    sum is an integer below ``2**44``, which a double holds exactly. The float
    totals are then converted to int64 and added to the buckets exactly.
    """
    n, f = x.shape
    rows = max(1, _SUB_VALUES // f)
    e_lo, e_hi = 2046, -1
    for start in range(0, n, rows):
        bits = np.ascontiguousarray(x[start : start + rows]).view(np.int64)
        biased = (bits >> 52) & 0x7FF
        mant = bits & _FRAC_MASK
        special = biased == 0x7FF
        if special.any() and (special & (mant == 0)).any():
            _raise_non_finite(x[start : start + rows])
        normal = biased != 0
        mant |= normal.astype(np.int64) << 52
        if special.any():
            mant[special] = 0  # NaN is missing: it adds nothing
        e = biased - normal
        live = mant != 0
        top = int(np.max(e, where=live, initial=-1))
        if top < 0:
            continue
        bottom = int(np.min(e, where=live, initial=2046))
        e_lo, e_hi = min(e_lo, bottom), max(e_hi, top)
        e -= bottom
        np.clip(e, 0, top - bottom, out=e)
        cols = np.arange(f, dtype=np.int64)

        span1 = top - bottom + 1 + _HALF_BITS
        idx = e + cols * span1
        s = np.where(bits < 0, -mant, mant)
        sums = np.bincount(idx.ravel(), (s & _HALF_MASK).ravel(), f * span1)
        idx += _HALF_BITS
        sums += np.bincount(idx.ravel(), (s >> _HALF_BITS).ravel(), f * span1)
        b1[:, bottom : bottom + span1] += sums.reshape(f, span1).astype(np.int64)

        span2 = 2 * (top - bottom) + 1 + 3 * _HALF_BITS
        idx = 2 * e + cols * span2
        a = mant >> _HALF_BITS
        b = mant & _HALF_MASK
        aa = a * a
        ab2 = (a * b) << 1
        bb = b * b
        sums = np.bincount(idx.ravel(), (bb & _HALF_MASK).ravel(), f * span2)
        idx += _HALF_BITS
        sums += np.bincount(idx.ravel(), ((bb >> _HALF_BITS) + (ab2 & _HALF_MASK)).ravel(), f * span2)
        idx += _HALF_BITS
        sums += np.bincount(idx.ravel(), ((ab2 >> _HALF_BITS) + (aa & _HALF_MASK)).ravel(), f * span2)
        idx += _HALF_BITS
        sums += np.bincount(idx.ravel(), (aa >> _HALF_BITS).ravel(), f * span2)
        b2[:, 2 * bottom : 2 * bottom + span2] += sums.reshape(f, span2).astype(np.int64)
    return e_lo, e_hi


def _numba_kernel() -> ModuleType | None:
    """The numba kernel module, unless numba is unusable or ``SCALEPIPE_NO_NUMBA`` is set."""
    return numba_kernels("_exact_numba")


def _chunk_limbs(x: np.ndarray) -> tuple[ExactSums, np.ndarray]:
    n, f = x.shape
    b1 = np.zeros((f, _S1_POSITIONS), np.int64)
    b2 = np.zeros((f, _S2_POSITIONS), np.int64)
    kernel = _numba_kernel()
    if kernel is None:
        e_lo, e_hi = _bucket_sums(x, b1, b2)
        ranges = (e_lo, e_hi + 1 + _HALF_BITS, 2 * e_lo, 2 * e_hi + 1 + 3 * _HALF_BITS)
        extremes = np.stack([np.fmin.reduce(x, axis=0), np.fmax.reduce(x, axis=0), np.isnan(x).sum(axis=0)])
    else:
        extremes = np.zeros((3, f))
        extremes[0], extremes[1] = np.inf, -np.inf
        ranges = kernel.bucket_sums(x, b1, b2, extremes)
        if ranges is None:
            _raise_non_finite(x)
    lo1, hi1, lo2, hi2 = ranges
    sums = ExactSums(
        _limbs_from_buckets(b1, lo1, hi1, S1_LIMBS),
        _limbs_from_buckets(b2, lo2, hi2, S2_LIMBS),
    )
    return sums, extremes


def _merged_extremes(parts: Sequence[np.ndarray]) -> np.ndarray:
    out = parts[0].copy()
    for e in parts[1:]:
        out[0], out[1], out[2] = np.fmin(out[0], e[0]), np.fmax(out[1], e[1]), out[2] + e[2]
    return out


def chunk_exact(x: np.ndarray) -> tuple[ExactSums, Extremes]:
    """Exact ``sum(x)`` and ``sum(x*x)`` per column of a 2-D block, NaN skipped, and the rest of its statistics.

    Parameters
    ----------
    x : array_like, shape (n_rows, n_features)
        Float64 in any memory layout; other real dtypes are converted to
        float64, as :func:`~scalepipe.stats.chunk_moments` does (exact for
        float32, which the numba kernel widens as it reads, and for integers
        up to 2**53). NaN is missing data; zero rows are allowed.

    Returns
    -------
    sums : ExactSums
        Shape ``(n_features,)``; the same limbs for the same rows, whatever
        the layout or the kernel (numba or numpy).
    extremes : Extremes
        Each column's count, NaN count, min and max, found by the same sweep.

    Raises
    ------
    NonFiniteError
        Some column holds ``inf`` (``positions`` says which).

    Examples
    --------
    >>> import numpy as np
    >>> s, e = chunk_exact(np.array([[1e16, 1.0], [1.0, 2.0], [-1e16, 3.0]]))
    >>> exact_mean_m2(s, e.count)[0].tolist(), e.max.tolist()
    ([0.3333333333333333, 2.0], [1e+16, 3.0])
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"expected a 2-D block (rows x features), got shape {x.shape}")
    if x.dtype != np.float64:
        if x.dtype.kind not in "fiub":
            raise DataError(f"expected real numeric data, got dtype {x.dtype}")
        if x.dtype != np.float32 or _numba_kernel() is None:
            x = x.astype(np.float64)  # the numba kernel widens float32 as it reads it
    n, f = x.shape
    if n == 0 or f == 0:
        return ExactSums.empty(f), Extremes.of(n, np.array([[np.inf] * f, [-np.inf] * f, [0.0] * f]))
    parts = [_chunk_limbs(x[i : i + _MAX_ROWS]) for i in range(0, n, _MAX_ROWS)]
    sums = parts[0][0] if len(parts) == 1 else merge_exact_all([p for p, _ in parts])
    return sums, Extremes.of(n, _merged_extremes([e for _, e in parts]))


def chunk_exact_sums(x: np.ndarray) -> ExactSums:
    """The exact sums of :func:`chunk_exact` alone.

    Examples
    --------
    >>> import numpy as np
    >>> s = chunk_exact_sums(np.array([[1e16, 1.0], [1.0, 2.0], [-1e16, 3.0]]))
    >>> exact_mean_m2(s, np.array([3, 3]))[0].tolist()
    [0.3333333333333333, 2.0]
    """
    return chunk_exact(x)[0]


def _limbs_to_ints(limbs: np.ndarray) -> list[int]:
    """Python ints of canonical limbs, shape ``(n, L)``."""
    flat = limbs.reshape(-1, limbs.shape[-1])
    top_shift = LIMB_BITS * (flat.shape[1] - 1)
    low = np.ascontiguousarray(flat[:, :-1]).astype("<u4")
    return [
        int.from_bytes(low[i].tobytes(), "little") + (int(flat[i, -1]) << top_shift) for i in range(flat.shape[0])
    ]


def _ints_to_limbs(values: Sequence[int], n_limbs: int) -> np.ndarray:
    """Canonical limbs of Python ints, shape ``(len(values), n_limbs)``."""
    top_shift = LIMB_BITS * (n_limbs - 1)
    out = np.zeros((len(values), n_limbs), np.int64)
    for i, v in enumerate(values):
        top = v >> top_shift
        if not -(1 << 62) <= top < (1 << 62):
            raise ValueError(f"exact sum {v:#x} is out of range")
        low = (v - (top << top_shift)).to_bytes(4 * (n_limbs - 1), "little")
        out[i, :-1] = np.frombuffer(low, "<u4")
        out[i, -1] = top
    return out


def _ratio_to_float(num: int, den: int) -> float:
    """``num / den`` correctly rounded (ties to even); ``inf`` past the largest double."""
    try:
        return num / den  # CPython's int true division rounds correctly, subnormals included
    except OverflowError:
        return float("inf") if (num < 0) == (den < 0) else float("-inf")


def exact_mean_m2(s: ExactSums, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correctly rounded ``mean = S1 / n`` and ``m2 = S2 - S1**2 / n`` per feature.

    Both are computed exactly in rational arithmetic and rounded once to
    float64, so they depend only on the multiset of values.

    Parameters
    ----------
    s
        The exact sums, shape ``shape``.
    count : int array, shape ``shape``
        The number of non-NaN values per feature (the caller counts them).

    Returns
    -------
    mean, m2 : float64 arrays, shape ``shape``
        NaN where ``count == 0``; ``m2 >= 0`` (``inf`` if it exceeds the
        largest double, which needs values beyond ~1e154).

    Raises
    ------
    ValueError
        ``count`` has another shape, or is inconsistent with the sums
        (``n * S2 < S1**2`` cannot happen for ``n`` real values).
    """
    count = np.asarray(count)
    if count.shape != s.shape:
        raise ValueError(f"count has shape {count.shape}, the exact sums have shape {s.shape}")
    counts = [int(c) for c in count.ravel()]
    a1 = _limbs_to_ints(s.s1)
    a2 = _limbs_to_ints(s.s2)
    mean = np.full(len(counts), np.nan)
    m2 = np.full(len(counts), np.nan)
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        # mean = A1 * 2**-1074 / n; m2 = (n * A2 - A1**2) * 2**-2148 / n
        mean[i] = _ratio_to_float(a1[i], n << -S1_EXP)
        num = n * a2[i] - a1[i] * a1[i]
        if num < 0:
            raise ValueError(
                f"feature {i}: count {n} is inconsistent with the exact sums "
                "(n * sum(x*x) < sum(x)**2); pass the number of non-NaN values"
            )
        m2[i] = _ratio_to_float(num, n << -S2_EXP)
    return mean.reshape(s.shape), m2.reshape(s.shape)


def exact_mean_lo(s: ExactSums, count: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """The rounding residual of ``mean`` (from :func:`exact_mean_m2`): ``S1 / n - mean``, correctly rounded.

    ``mean + mean_lo`` is the mean to about 106 bits, as the other modes keep
    it: comparing new data's mean with a correctly rounded one alone (drift)
    found a shift of up to half an ulp of the mean, most of a standard
    deviation on ``1e12 + 1e-4*U(0,1)``. 0 where ``count == 0``.
    """
    a1 = _limbs_to_ints(s.s1)
    lo = np.zeros(len(a1))
    for i, (total, n, m) in enumerate(zip(a1, np.asarray(count).ravel().tolist(), np.asarray(mean).ravel().tolist(), strict=True)):
        if n > 0 and math.isfinite(m):
            num, den = m.as_integer_ratio()
            scale = n << -S1_EXP
            lo[i] = _ratio_to_float(total * den - num * scale, scale * den)
    return lo.reshape(s.shape)


def to_lists(s: ExactSums) -> dict[str, Any]:
    """The exact sums as JSON-ready data: hex strings of the integers ``A1``, ``A2``.

    ``{"s1_exp": -1074, "s2_exp": -2148, "shape": [...], "s1": [...], "s2": [...]}``
    with ``sum(x) = int(s1[i], 16) * 2**s1_exp`` for the i-th feature in C order.
    :func:`from_lists` restores the identical value.
    """
    return {
        "s1_exp": S1_EXP,
        "s2_exp": S2_EXP,
        "shape": list(s.shape),
        "s1": [hex(v) for v in _limbs_to_ints(s.s1)],
        "s2": [hex(v) for v in _limbs_to_ints(s.s2)],
    }


def from_lists(d: Mapping[str, Any]) -> ExactSums:
    """Inverse of :func:`to_lists` (hex strings or Python ints are accepted).

    Raises
    ------
    ArtifactError
        The data is malformed or uses another scale.
    """
    try:
        if int(d["s1_exp"]) != S1_EXP or int(d["s2_exp"]) != S2_EXP:
            raise ValueError(f"scale exponents {d['s1_exp']!r}, {d['s2_exp']!r}; expected {S1_EXP}, {S2_EXP}")
        shape = tuple(int(v) for v in d["shape"])
        size = int(np.prod(shape, dtype=np.int64))
        values = [[v if isinstance(v, int) else int(v, 16) for v in d[k]] for k in ("s1", "s2")]
        if any(len(v) != size for v in values):
            raise ValueError(f"expected {size} values for shape {list(shape)}")
        if any(v < 0 for v in values[1]):
            raise ValueError("a sum of squares is negative")
        s1 = _ints_to_limbs(values[0], S1_LIMBS).reshape(*shape, S1_LIMBS)
        s2 = _ints_to_limbs(values[1], S2_LIMBS).reshape(*shape, S2_LIMBS)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"exact sums: malformed data ({exc}); expected the output of to_lists") from exc
    return ExactSums(s1, s2)
