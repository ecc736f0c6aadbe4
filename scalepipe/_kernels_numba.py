"""Fused numba kernels for the statistics and the affine transform (the ``fast`` extra).

Each kernel does in one sweep over a block what the numpy versions in
:mod:`scalepipe.stats` and :mod:`scalepipe.methods` do in several, reading the
caller's array in place whatever its layout and real dtype (no float64 copy).
They release the GIL, so Dask's threads run them in parallel. The numpy
versions stay the fallback and the test reference.

The statistics follow the same scheme as the numpy kernel: per column and per
sub-block of :data:`ROWS` rows, a first sweep gives count, NaN count, min, max
and a pivot (the sub-block's float mean), a second sums the deviations from
the pivot and their squares; sub-blocks merge with Chan's update, the mean as
a double-double and ``m2`` with a compensated sum, so rounding stays at the
level of a few ulps for any number of rows.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Rows per sub-block: its slice of every column stays in the L1/L2 cache.
ROWS = 512


@numba.njit(inline="always")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@numba.njit(nogil=True, cache=True)
def moments(x: np.ndarray, rows_first: bool) -> tuple:
    """Count, NaN count, min, max, mean, mean residual, m2 and an inf flag per column.

    ``rows_first`` sweeps each sub-block row by row (vectorised across the
    columns of a C-ordered array); otherwise column by column (F order).
    """
    n, f = x.shape
    count = np.zeros(f, np.int64)
    nan_count = np.zeros(f, np.int64)
    lo = np.full(f, np.nan)
    hi = np.full(f, np.nan)
    mean = np.zeros(f)
    mean_lo = np.zeros(f)
    m2 = np.zeros(f)
    m2_lo = np.zeros(f)
    bad = np.zeros(f, np.bool_)
    c = np.zeros(f, np.int64)
    s = np.zeros(f)
    bmin = np.zeros(f)
    bmax = np.zeros(f)
    pivot = np.zeros(f)
    d = np.zeros(f)
    q = np.zeros(f)
    for start in range(0, n, ROWS):
        stop = min(start + ROWS, n)
        c[:] = 0
        s[:] = 0.0
        bmin[:] = np.inf
        bmax[:] = -np.inf
        d[:] = 0.0
        q[:] = 0.0
        if rows_first:
            for i in range(start, stop):
                for j in range(f):
                    v = np.float64(x[i, j])
                    ok = v == v
                    c[j] += ok
                    s[j] += v if ok else 0.0
                    if v < bmin[j]:
                        bmin[j] = v
                    if v > bmax[j]:
                        bmax[j] = v
        else:
            for j in range(f):
                cj, sj, mn, mx = 0, 0.0, np.inf, -np.inf
                for i in range(start, stop):
                    v = np.float64(x[i, j])
                    ok = v == v
                    cj += ok
                    sj += v if ok else 0.0
                    if v < mn:
                        mn = v
                    if v > mx:
                        mx = v
                c[j], s[j], bmin[j], bmax[j] = cj, sj, mn, mx
        for j in range(f):
            nan_count[j] += (stop - start) - c[j]
            if c[j] > 0 and (math.isinf(bmin[j]) or math.isinf(bmax[j])):
                bad[j] = True
            p = s[j] / max(c[j], 1)
            pivot[j] = p if math.isfinite(p) else 0.5 * bmin[j] + 0.5 * bmax[j]
        if rows_first:
            for i in range(start, stop):
                for j in range(f):
                    v = np.float64(x[i, j])
                    e = v - pivot[j] if v == v else 0.0
                    d[j] += e
                    q[j] += e * e
        else:
            for j in range(f):
                pj, dj, qj = pivot[j], 0.0, 0.0
                for i in range(start, stop):
                    v = np.float64(x[i, j])
                    e = v - pj if v == v else 0.0
                    dj += e
                    qj += e * e
                d[j], q[j] = dj, qj
        for j in range(f):
            cj = c[j]
            if cj == 0 or bad[j]:
                continue
            bm2 = max(q[j] - d[j] * (d[j] / cj), 0.0)
            bmean, bmean_lo = _two_sum(pivot[j], d[j] / cj)
            na = count[j]
            if na == 0:
                mean[j], mean_lo[j], m2[j], m2_lo[j] = bmean, bmean_lo, bm2, 0.0
                lo[j], hi[j] = bmin[j] + 0.0, bmax[j] + 0.0
            else:
                w = cj / (na + cj)
                delta = (bmean - mean[j]) + (bmean_lo - mean_lo[j])
                mean[j], mean_lo[j] = _two_sum(mean[j], mean_lo[j] + delta * w)
                m2[j], err = _two_sum(m2[j], bm2 + delta * delta * (na * w))
                m2_lo[j] += err
                lo[j] = min(lo[j], bmin[j] + 0.0)
                hi[j] = max(hi[j], bmax[j] + 0.0)
            count[j] += cj
    for j in range(f):
        m2[j], m2_lo[j] = _two_sum(m2[j], m2_lo[j])
    return count, nan_count, lo, hi, mean, mean_lo, m2, bad


@numba.njit(inline="always")
def _clipped(y: float, lo: float, hi: float) -> float:
    if y < lo:
        return lo
    if y > hi:
        return hi
    return y


@numba.njit(nogil=True, cache=True)
def affine(
    x: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    clip: bool,
    rows_first: bool,
    out: np.ndarray,
) -> np.ndarray:
    """``out = clip((x - center) * scale + offset, lo, hi)`` in one sweep (NaN stays NaN).

    The same operations, in the same order, as the numpy version, so the
    results are bit-identical to it. Returns, per column, whether ``x`` held
    an infinity.
    """
    n, f = x.shape
    infinite = np.zeros(f, np.bool_)
    if rows_first:
        for i in range(n):
            for j in range(f):
                v = np.float64(x[i, j])
                infinite[j] |= math.isinf(v)
                y = (v - center[j]) * scale[j] + offset[j]
                out[i, j] = _clipped(y, lo[j], hi[j]) if clip else y
    else:
        for j in range(f):
            c, sc, o, a, b = center[j], scale[j], offset[j], lo[j], hi[j]
            seen = False
            for i in range(n):
                v = np.float64(x[i, j])
                seen |= math.isinf(v)
                y = (v - c) * sc + o
                out[i, j] = _clipped(y, a, b) if clip else y
            infinite[j] = seen
    return infinite
