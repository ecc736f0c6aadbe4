"""The numba kernel of :mod:`scalepipe.exact`: the same sums, in one pass.

Importing this module fails without numba; :mod:`scalepipe.exact` then uses
its numpy kernel. Both produce buckets (int64 sums at bit positions) whose
weighted total is exactly ``sum(x)`` and ``sum(x*x)``, and both are folded into
the same canonical limbs, so the two kernels agree bit for bit.

The kernel reads float64 or float32 (widened exactly as it is read) in place,
in blocks of rows per feature:

* Columns contiguous (Fortran order, or rows sliced from it): one feature at a
  time, in lanes of at most :data:`BLOCK` rows.
* C-contiguous: in blocks of at most :data:`_ROWS` rows by panels of at
  most :data:`_PANEL` features (:data:`_PANEL_VALUES` values, which stay in
  the cache), four features at a time (see ``_row_sums``). Fewer than four
  features are read as columns (a copy).

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
subtracted when the sums are added to the buckets, after each block (of at
most :data:`BLOCK` rows in a lane, :data:`_ROWS` in C order), so a digit sum
stays below ``2**11 * 2**51``. The bounds above follow from ``T`` and ``L``
alone, so no value is ever rounded and nothing is checked afterwards. ``T <= 510`` keeps
the constants finite, ``T >= -462`` keeps them (and the finest grid) normal.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._numba_build import slp_vectorised

__all__ = ["BLOCK", "bucket_sums", "limbs_from_buckets", "normalise"]

#: Most rows per lane: a digit sum stays below ``BLOCK * 2**51 = 2**59``.
BLOCK = 256
#: Features swept together in C order, their running values in registers.
_LANES = 4
#: Most features of a C-order panel, and most values (64 KiB of float64): the
#: second sweep over a panel reads it from the cache.
_PANEL = 64
_PANEL_VALUES = 1 << 13
#: Most rows of a C-order block: a digit sum stays below 2**11 * 2**51 = 2**62.
_ROWS = 2048
#: The ``T`` of a feature whose constants are no fast path's yet.
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
def _grid_constants(t: int) -> tuple:
    """The rounding constants of the fast path's grids for ``T = t``.

    Those of ``2**(T - 25 (q + 1))`` for ``q = 0..2`` (the digits of ``x``)
    and of ``2**(2T - 25 (q - 1))`` for ``q = 3..7`` (the sums of their
    products).
    """
    return (
        _rounding_constant(t - _DIGIT_BITS),
        _rounding_constant(t - 2 * _DIGIT_BITS),
        _rounding_constant(t - 3 * _DIGIT_BITS),
        _rounding_constant(2 * t - 2 * _DIGIT_BITS),
        _rounding_constant(2 * t - 3 * _DIGIT_BITS),
        _rounding_constant(2 * t - 4 * _DIGIT_BITS),
        _rounding_constant(2 * t - 5 * _DIGIT_BITS),
        _rounding_constant(2 * t - 6 * _DIGIT_BITS),
    )


@numba.njit(inline="always")
def _add_digit(buckets: np.ndarray, c: int, pos: int, d: np.int64) -> None:
    """Add ``d * 2**pos`` as three pieces below 2**27 (``|d| < 2**62``)."""
    buckets[c, pos] += d & _HALF_MASK
    buckets[c, pos + _HALF_BITS] += (d >> _HALF_BITS) & _HALF_MASK
    buckets[c, pos + 2 * _HALF_BITS] += d >> (2 * _HALF_BITS)


@numba.njit(inline="always")
def _add_sums(
    s: tuple, k: tuple, c: int, rows: int, t: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray
) -> None:
    """Add feature ``c``'s digit sums ``s`` of ``rows`` values on the grids of ``T = t`` (constants ``k``) to its buckets.

    The constants' bit patterns are subtracted, once per value read on each
    grid (each sum wraps, their total does not: it is below ``rows * 2**51
    <= 2**62``). The 8 digit sums land at positions 25 apart, each split into
    pieces 27 apart, so no two of the 24 pieces share a bucket: a bucket
    gains less than 2**27 per call, within exact's 2**28 per row.
    """
    count = np.uint64(rows)
    for q in range(8):
        d = np.int64(s[q] - count * _ubits(k[q]))
        if q < 3:
            _add_digit(b1, c, t - _DIGIT_BITS * (q + 1) + 1074, d)
        else:
            _add_digit(b2, c, 2 * t - _DIGIT_BITS * (q - 1) + 2148, d)
    ranges[0] = min(ranges[0], t - 3 * _DIGIT_BITS + 1074)
    ranges[1] = max(ranges[1], t - _DIGIT_BITS + 1074 + 2 * _HALF_BITS + 1)
    ranges[2] = min(ranges[2], 2 * t - 6 * _DIGIT_BITS + 2148)
    ranges[3] = max(ranges[3], 2 * t - 2 * _DIGIT_BITS + 2148 + 2 * _HALF_BITS + 1)


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


@numba.njit(inline="always")
def _digit_update(v: float, k: tuple, s: tuple) -> tuple:
    """The digit sums ``s`` with those of one value on the grids of the constants ``k`` added."""
    d = _digits(v, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7])
    return (
        s[0] + d[0],
        s[1] + d[1],
        s[2] + d[2],
        s[3] + d[3],
        s[4] + d[4],
        s[5] + d[5],
        s[6] + d[6],
        s[7] + d[7],
    )


_NO_SUMS = (np.uint64(0),) * 8


@numba.njit(nogil=True, cache=True)
def _fast_lane(lane: np.ndarray, k: tuple) -> tuple:
    """Fast path: the digit sums of a feature's block on the grids of the constants ``k`` (vectorises along the lane)."""
    s = _NO_SUMS
    for i in range(lane.shape[0]):
        s = _digit_update(np.float64(lane[i]), k, s)
    return s


@numba.njit(nogil=True, cache=True)
def _add_lane(lane: np.ndarray, c: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray) -> bool:
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
        k = _grid_constants(t)
        _add_sums(_fast_lane(lane, k), k, c, lane.shape[0], t, b1, b2, ranges)
    elif path == _GENERAL:
        return _general_lane(lane, c, b1, b2, ranges)
    return True


@numba.njit(inline="always")
def _range_update(v: float, r: tuple) -> tuple:
    """One value's update of a feature's largest ``|x|``, smallest nonzero ``|x|``, min, max and NaN count.

    Every comparison is false for a NaN ``v``, which leaves the first four;
    on values in registers each select is one vmaxpd/vminpd (on values in
    memory, a masked store: 2x slower).
    """
    a = abs(v)
    b = a if a != 0.0 else np.inf
    return (
        a if a > r[0] else r[0],
        b if b < r[1] else r[1],
        v if v < r[2] else r[2],
        v if v > r[3] else r[3],
        r[4] + (1.0 if v != v else 0.0),
    )


@numba.njit(inline="always")
def _group_ranges(flat: np.ndarray, rows: int, f: int, j: int, tb: np.ndarray) -> None:
    """:func:`_range_update` over ``rows`` rows (``f`` apart in ``flat``) of features ``j .. j + 3``, into ``tb[:, j:j + 4]``.

    The four features' running values stay in registers, where the SLP
    vectoriser packs each quantity into one vector. (Unsigned indices: no
    negative-index wraparound, so the four loads are seen as neighbours.)
    """
    r0 = r1 = r2 = r3 = (0.0, np.inf, np.inf, -np.inf, 0.0)
    u = np.uint64(0)
    for _ in range(rows):
        r0 = _range_update(np.float64(flat[u]), r0)
        r1 = _range_update(np.float64(flat[u + np.uint64(1)]), r1)
        r2 = _range_update(np.float64(flat[u + np.uint64(2)]), r2)
        r3 = _range_update(np.float64(flat[u + np.uint64(3)]), r3)
        u += np.uint64(f)
    for q in range(5):
        tb[q, j], tb[q, j + 1], tb[q, j + 2], tb[q, j + 3] = r0[q], r1[q], r2[q], r3[q]


@numba.njit(inline="always")
def _lane_constants(ks: np.ndarray, c: int) -> tuple:
    """Feature ``c``'s grid constants, column ``c`` of ``ks``."""
    return (ks[0, c], ks[1, c], ks[2, c], ks[3, c], ks[4, c], ks[5, c], ks[6, c], ks[7, c])


@numba.njit(inline="always")
def _group_digits(
    flat: np.ndarray, rows: int, f: int, j: int, ks: np.ndarray, sums: np.ndarray, spare: np.ndarray, ahead: int
) -> None:
    """Fast path of features ``j .. j + 3`` over ``rows`` rows: their digit sums on the grids ``ks`` into ``sums[:, j:j + 4]``.

    As :func:`_group_ranges`, the sums in registers. The sums pass through
    ``spare`` at fixed offsets (neighbouring stores start the SLP
    vectoriser's search). Each row also asks for the memory ``ahead`` bytes
    on (the next panel's row): its first sweep then reads the cache while
    this sweep's arithmetic keeps memory busy.
    """
    k0, k1, k2, k3 = _lane_constants(ks, j), _lane_constants(ks, j + 1), _lane_constants(ks, j + 2), _lane_constants(ks, j + 3)
    s0 = s1 = s2 = s3 = _NO_SUMS
    u = np.uint64(0)
    address = flat.ctypes.data + ahead
    for _ in range(rows):
        _prefetch(address)
        address += f * flat.itemsize
        s0 = _digit_update(np.float64(flat[u]), k0, s0)
        s1 = _digit_update(np.float64(flat[u + np.uint64(1)]), k1, s1)
        s2 = _digit_update(np.float64(flat[u + np.uint64(2)]), k2, s2)
        s3 = _digit_update(np.float64(flat[u + np.uint64(3)]), k3, s3)
        u += np.uint64(f)
    for q in range(8):
        spare[4 * q], spare[4 * q + 1], spare[4 * q + 2], spare[4 * q + 3] = s0[q], s1[q], s2[q], s3[q]
    for q in range(8):
        for i in range(_LANES):
            sums[q, j + i] = spare[4 * q + i]


@numba.njit(nogil=True, cache=True)
def _row_sums(x: np.ndarray, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray) -> bool:
    """Add every value of a C-contiguous (rows, features) ``x``, at least :data:`_LANES` features; False if it holds an inf.

    Read in place, in blocks of rows by panels of features (see the module
    docstring). Per panel, a first sweep finds each feature's range and so its
    path (and its extremes); a second, from the cache, adds the digits of the
    fast-path features; their sums go to the buckets, and the general-path
    features are added on their own. The panels share the features equally
    (so that each sweep's prefetches cover the next panel). Each sweep goes
    down the block's rows four features at a time; a four that passes the
    panel's end is swept again with the next panel, and when the features are
    not a multiple of four, the last four overlap the ones before (features
    swept twice are added once).
    Call it through :func:`_row_kernel`, which compiles it with the SLP
    vectoriser and without the loop vectoriser.
    """
    n, f = x.shape
    flat = x.reshape(-1)
    tb = np.empty((5, f))
    ks = np.zeros((8, f))
    sums = np.empty((8, f), np.uint64)
    spare = np.empty(8 * _LANES, np.uint64)
    paths = np.empty(f, np.int64)
    tops = np.full(f, _NO_GRIDS, np.int64)  # the T of each feature's constants in ks
    panels = -(-f // _PANEL)
    lane = max(1, min(_ROWS, _PANEL_VALUES // -(-f // panels)))
    for start in range(0, n, lane):
        stop = min(start + lane, n)
        rows = stop - start
        for panel in range(panels):
            p0, p1 = panel * f // panels, (panel + 1) * f // panels
            ahead = (p1 - p0 if p1 < f else rows * f - p0) * flat.itemsize  # to the same place in the next panel
            for j in range(p0, p1, _LANES):
                g = min(j, f - _LANES)
                _group_ranges(flat[start * f + g :], rows, f, g, tb)
            fast = False
            for c in range(p0, p1):
                extremes[0, c] = _smaller(extremes[0, c], tb[2, c])
                extremes[1, c] = _larger(extremes[1, c], tb[3, c])
                extremes[2, c] += tb[4, c]
                path, t = _path(_bits(tb[0, c]), _bits(tb[1, c]))
                paths[c] = path
                if path == _FAST and t != tops[c]:
                    k = _grid_constants(t)
                    for q in range(8):
                        ks[q, c] = k[q]
                    tops[c] = t
                fast |= path == _FAST
            if fast:
                for j in range(p0, p1, _LANES):
                    g = min(j, f - _LANES)
                    _group_digits(flat[start * f + g :], rows, f, g, ks, sums, spare, ahead)
            for c in range(p0, p1):
                if paths[c] == _FAST:
                    s = (sums[0, c], sums[1, c], sums[2, c], sums[3, c], sums[4, c], sums[5, c], sums[6, c], sums[7, c])
                    _add_sums(s, _lane_constants(ks, c), c, rows, tops[c], b1, b2, ranges)
                elif paths[c] == _GENERAL and not _general_lane(x[start:stop, c], c, b1, b2, ranges):
                    return False
    return True


@numba.njit(nogil=True, cache=True)
def _column_sums(
    flat: np.ndarray, stride: int, n: int, b1: np.ndarray, b2: np.ndarray, ranges: np.ndarray, extremes: np.ndarray
) -> bool:
    """Add every value of the columns ``flat[j * stride : j * stride + n]``; False if one holds an inf."""
    for j in range(b1.shape[0]):
        for start in range(0, n, BLOCK):
            lane = flat[j * stride + start : j * stride + min(start + BLOCK, n)]
            if not _add_lane(lane, j, b1, b2, ranges, extremes):
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
    columns = x.strides[0] == size and x.strides[1] >= 0 and x.strides[1] % size == 0
    if not columns and f < _LANES:
        x = np.array(x, order="F")  # too narrow for the row path: a column-major copy (its strides[0] is size)
        columns = True
    if columns:
        # Columns contiguous (Fortran order, or rows sliced from it): one flat
        # view from the first value to the last holds every column at a fixed
        # stride, and reads as contiguous lanes.
        stride = x.strides[1] // size
        flat = np.lib.stride_tricks.as_strided(x, ((f - 1) * stride + n,), (size,), writeable=False)
        ok = _column_sums(flat, stride, n, b1, b2, ranges, extremes)
    else:
        x = np.require(x, requirements=("C", "A"))  # an unaligned block is copied (it would need a kernel of its own)
        ok = _row_kernel(x)(x, b1, b2, ranges, extremes)
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



_ROW_ARGS = (types.Array(types.int64, 2, "C"),) * 2 + (types.Array(types.int64, 1, "C"), types.Array(types.float64, 2, "C"))


def _row_kernel(x: np.ndarray) -> numba.core.registry.CPUDispatcher:
    """:func:`_row_sums`, compiled for ``x``'s type (float64 or float32, writable or not) on first use.

    Compiled explicitly, within :func:`~scalepipe._numba_build.slp_vectorised`
    with the loop vectoriser off: a plain call would compile without them.
    """
    key = (x.dtype.char, x.flags.writeable)
    if key not in _ROW_KERNELS:
        with slp_vectorised(loops=False):
            _row_sums.compile((numba.typeof(x),) + _ROW_ARGS)
        _ROW_KERNELS.add(key)
    return _row_sums


_ROW_KERNELS: set[tuple[str, bool]] = set()
