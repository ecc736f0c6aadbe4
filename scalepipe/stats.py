"""The mergeable statistics value and its numpy chunk kernel.

Every scaling method's parameters derive from one value per feature,
:class:`Moments`: ``count``, ``nan_count``, ``min``, ``max``, ``absmax``,
``mean`` and ``m2`` (the sum of squared deviations from the mean). It is
computed per chunk by :func:`chunk_moments` and combined by :func:`merge`
(Chan, Golub and LeVeque's pairwise update), so any chunking and any reduction
tree give the same answer to within a few ulps.

A float64 mean alone is not precise enough to merge: on a column like
``1e12 + 1e-3 * U(0, 1)`` one ulp of the mean is ~0.4 standard deviations.
The mean is therefore kept as a double-double ``mean + mean_lo``, which makes
the merge's ``delta`` (difference of two means) exact to the last bit of the
deviations instead of the last bit of the values.

This module imports numpy only: the same kernels run under Dask, in a plain
process, and (later) on Spark executors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from ._accel import numba_kernels
from .errors import DataError
from .exact import ExactSums, Extremes, chunk_exact, exact_mean_lo, exact_mean_m2, merge_exact

__all__ = [
    "KERNEL_DTYPES",
    "Columns",
    "ExactMoments",
    "Moments",
    "NonFiniteError",
    "array_moments",
    "block_rows",
    "chunk_moments",
    "merge",
    "merge_all",
    "on_calling_thread",
    "on_row_blocks",
    "tree_reduce",
]

T = TypeVar("T")

#: Values per sub-block of the chunk kernel: the temporaries stay in cache and
#: each sub-block is summed pairwise, which bounds the rounding error.
BLOCK_VALUES = 1 << 18

#: Moments merged per node of the reduction tree.
SPLIT_EVERY = 8

#: The dtypes the numba kernels read in place (others are converted to
#: float64 first); a column's position here is its code for the kernels.
KERNEL_DTYPES = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.int32))


class NonFiniteError(DataError):
    """A chunk holds ``inf`` or ``-inf`` in some columns.

    Parameters
    ----------
    positions
        The positions (in the chunk's feature order) of the offending columns;
        the caller maps them to names with :meth:`named`.
    names
        Their names, when known.
    file
        The input file holding them, when known (:meth:`in_file`).
    """

    def __init__(self, positions: Sequence[int], names: Sequence[object] | None = None, file: str | None = None) -> None:
        self.positions = [int(p) for p in positions]
        self.names = list(names) if names is not None else None
        self.file = file
        shown = self.names if self.names is not None else self.positions
        label = "columns" if len(shown) > 1 else "column"
        where = f" (in input file {file!r})" if file is not None else ""
        super().__init__(
            f"{label} {', '.join(repr(s) for s in shown)}{where}: infinite values are not "
            "allowed (replace them with NaN to treat them as missing)"
        )

    def named(self, names: Sequence[object]) -> NonFiniteError:
        """Return the same error with the columns named by ``names[position]``."""
        return NonFiniteError(self.positions, [names[p] for p in self.positions], self.file)

    def in_file(self, file: str) -> NonFiniteError:
        """Return the same error naming the input file that holds the values."""
        return NonFiniteError(self.positions, self.names, file)

    def __reduce__(self):  # survive pickling between Dask workers and the client
        return (NonFiniteError, (self.positions, self.names, self.file))


@dataclass(frozen=True, eq=False)
class Moments:
    """Mergeable per-feature statistics; every field is an array of one shape.

    Attributes
    ----------
    count : int64 array
        Non-missing values.
    nan_count : int64 array
        Missing (NaN) values.
    min, max : float64 array
        Smallest and largest value (NaN when ``count == 0``).
    absmax : float64 array
        Largest absolute value (NaN when ``count == 0``).
    mean : float64 array
        The mean, rounded to float64.
    mean_lo : float64 array
        The rounding residual of ``mean`` (``mean + mean_lo`` is the mean to
        about 106 bits), which keeps merges exact for data with a large offset.
    m2 : float64 array
        Sum of squared deviations from the mean.

    Examples
    --------
    >>> import numpy as np
    >>> m = chunk_moments(np.array([[1.0], [2.0], [np.nan]]))
    >>> m.count.tolist(), m.mean.tolist(), m.var().tolist()
    ([2], [1.5], [0.25])
    """

    count: np.ndarray
    nan_count: np.ndarray
    min: np.ndarray
    max: np.ndarray
    absmax: np.ndarray
    mean: np.ndarray
    mean_lo: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: int | tuple[int, ...]) -> Moments:
        """The identity of :func:`merge`: statistics of zero rows."""
        zeros_i = np.zeros(shape, dtype=np.int64)
        zeros = np.zeros(shape, dtype=np.float64)
        nans = np.full(shape, np.nan)
        return cls(zeros_i, zeros_i.copy(), nans, nans.copy(), nans.copy(), zeros, zeros.copy(), zeros.copy())

    @property
    def shape(self) -> tuple[int, ...]:
        """The features' shape (``(n_features,)`` for a table)."""
        return self.count.shape

    def var(self, ddof: int = 0) -> np.ndarray:
        """Variance with ``count - ddof`` in the denominator (NaN where that is <= 0)."""
        denom = self.count - ddof
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, self.m2 / np.maximum(denom, 1), np.nan)

    def std(self, ddof: int = 0) -> np.ndarray:
        """Standard deviation, ``sqrt(var(ddof))``."""
        return np.sqrt(self.var(ddof))

    def variance_out_of_range(self) -> np.ndarray:
        """Whether each feature's variance is beyond float64's normal numbers: it overflowed (values
        beyond ~1e154), or it underflowed to 0 or a subnormal (values within ~1e-154 of each other
        that are not constant), so that the variance and standard deviation are wrong or lost.
        """
        var = self.var(0)
        with np.errstate(invalid="ignore"):
            return (self.count > 0) & (~np.isfinite(var) | ((var < np.finfo(np.float64).tiny) & (self.min < self.max)))

    def is_constant(self) -> np.ndarray:
        """Whether each feature's range is within 4 ulps of its magnitude.

        Our variance is accurate, so a column with a real but tiny spread is not
        constant; only a range at the level of rounding is.
        """
        with np.errstate(invalid="ignore", over="ignore"):
            return (self.max - self.min) <= 4 * np.spacing(self.absmax)

    def take(self, index: Sequence[int] | np.ndarray, axis: int = -1) -> Moments:
        """The statistics at ``index`` along ``axis`` (by default the features, the last axis)."""
        return Moments(**{f.name: np.take(getattr(self, f.name), index, axis=axis) for f in fields(self)})

    @classmethod
    def stack(cls, parts: Sequence[Moments]) -> Moments:
        """Stack statistics of one shape along a new first axis (e.g. one row per batch)."""
        return cls(**{f.name: np.stack([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def row(self, i: int) -> Moments:
        """Row ``i`` of statistics stacked by :meth:`stack`."""
        return Moments(**{f.name: getattr(self, f.name)[i] for f in fields(self)})

    def reshape(self, shape: tuple[int, ...]) -> Moments:
        """The same statistics with the features arranged in ``shape``."""
        return Moments(**{f.name: getattr(self, f.name).reshape(shape) for f in fields(self)})

    @classmethod
    def concat(cls, parts: Sequence[Moments], axis: int = 0) -> Moments:
        """Join the statistics of disjoint feature sets along ``axis``."""
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts], axis=axis) for f in fields(cls)}
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        """The fields as a plain dict of arrays."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> Moments:
        """Inverse of :meth:`to_dict`; counts become int64, the rest float64."""
        ints = {"count", "nan_count"}
        return cls(
            **{
                f.name: np.asarray(d[f.name], dtype=np.int64 if f.name in ints else np.float64)
                for f in fields(cls)
            }
        )

    def identical(self, other: Moments) -> bool:
        """Bitwise equality of every field (NaN equals NaN)."""
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name), equal_nan=True) for f in fields(self)
        )


@dataclass(frozen=True, eq=False)
class ExactMoments:
    """:class:`Moments` with exact sums beside them (``stats.exact``).

    The exact sums of ``x`` and ``x*x`` merge by integer addition, so
    :meth:`finish` gives a correctly rounded mean and ``m2`` that are
    bit-identical for any chunking, merge order or worker count. Until then
    ``moments`` holds the counts and extremes; its ``mean``, ``mean_lo`` and
    ``m2`` are NaN (a chunk's exact kernel does not compute them).
    """

    moments: Moments
    sums: ExactSums

    def finish(self) -> Moments:
        """The moments with ``mean`` and ``m2`` taken from the exact sums."""
        from dataclasses import replace

        mean, m2 = exact_mean_m2(self.sums, self.moments.count)
        mean = np.where(self.moments.count > 0, mean, 0.0)
        m2 = np.where(self.moments.count > 0, m2, 0.0)
        return replace(self.moments, mean=mean, mean_lo=exact_mean_lo(self.sums, self.moments.count, mean), m2=m2)

    def reshape(self, shape: tuple[int, ...]) -> ExactMoments:
        """The same statistics with the features arranged in ``shape``."""
        return ExactMoments(self.moments.reshape(shape), self.sums.reshape(shape))

    def take(self, index: Sequence[int] | np.ndarray) -> ExactMoments:
        """The statistics of the features at ``index``."""
        flat = np.asarray(index)
        return ExactMoments(self.moments.take(flat), ExactSums(self.sums.s1[flat], self.sums.s2[flat]))

    @classmethod
    def concat(cls, parts: Sequence[ExactMoments]) -> ExactMoments:
        """Join the statistics of disjoint feature sets."""
        return cls(Moments.concat([p.moments for p in parts]), ExactSums.concat([p.sums for p in parts]))


class Columns:
    """Equal-length 1-D columns, read as one block of rows x features.

    A table's columns live in separate buffers (pandas' blocks, Arrow's
    arrays), often of several dtypes; the statistics kernels read them where
    they are instead of copying them into one 2-D array first.

    Parameters
    ----------
    arrays
        1-D arrays of a real numeric dtype, all of one length. Those of a
        dtype in :data:`KERNEL_DTYPES` are kept as given (views, no copy);
        others, and unaligned ones, are converted to float64.
    n_rows
        The number of rows; needed only when there are no columns.

    Examples
    --------
    >>> import numpy as np
    >>> cols = Columns([np.arange(3.0), np.arange(3, dtype=np.float32)])
    >>> cols.shape, chunk_moments(cols).mean.tolist()
    ((3, 2), [1.0, 1.0])
    """

    __slots__ = ("arrays", "n_rows")

    def __init__(self, arrays: Sequence[np.ndarray], n_rows: int | None = None) -> None:
        kept = []
        for a in arrays:
            a = np.asarray(a)
            if a.ndim != 1:
                raise DataError(f"a column must be 1-D, got shape {a.shape}")
            if a.dtype.kind not in "fiub":
                raise DataError(f"expected numeric data, got dtype {a.dtype}")
            kept.append(a if a.dtype in KERNEL_DTYPES and a.flags.aligned else a.astype(np.float64))
        lengths = {len(a) for a in kept}
        if n_rows is not None:
            lengths.add(n_rows)
        if len(lengths) != 1:
            raise DataError(f"columns of different lengths: {sorted(lengths)}")
        self.arrays: tuple[np.ndarray, ...] = tuple(kept)
        self.n_rows: int = lengths.pop()

    @classmethod
    def of(cls, x: np.ndarray) -> Columns:
        """The columns of a 2-D array, as views."""
        return cls([x[:, j] for j in range(x.shape[1])], x.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_columns)``."""
        return self.n_rows, len(self.arrays)

    def __getitem__(self, rows: slice) -> Columns:
        """The rows ``rows`` of every column (views)."""
        n = len(range(*rows.indices(self.n_rows)))
        return Columns([a[rows] for a in self.arrays], n)

    def stacked(self) -> np.ndarray:
        """One float64, column-contiguous ``(n_rows, n_columns)`` copy."""
        out = np.empty((len(self.arrays), self.n_rows))
        for row, a in zip(out, self.arrays, strict=True):
            row[:] = a
        return out.T

    def pointers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each column's address, stride (bytes) and dtype code, as the kernels read them.

        Valid while the columns are alive.
        """
        addresses = np.array([a.__array_interface__["data"][0] for a in self.arrays], dtype=np.int64)
        strides = np.array([a.strides[0] for a in self.arrays], dtype=np.int64)
        codes = np.array([KERNEL_DTYPES.index(a.dtype) for a in self.arrays], dtype=np.int64)
        return addresses, strides, codes


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's error-free sum: ``s + e == a + b`` exactly, ``s = fl(a + b)``."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _as_float64_columns(block: object) -> np.ndarray:
    """The block as an aligned, column-contiguous float64 2-D array.

    Column-contiguous data makes every column reduction a pairwise sum over a
    contiguous buffer: accurate, and independent of how the caller laid the
    data out in memory (so results are bit-reproducible).
    """
    return np.require(_as_real_2d(block), dtype=np.float64, requirements=["F", "A"])


def _as_real_2d(block: object) -> np.ndarray:
    """The block as a 2-D array of a real dtype the fused kernel reads in place."""
    x = np.asarray(block)
    if x.ndim != 2:
        raise DataError(f"expected a 2-D block (rows x features), got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"expected numeric data, got dtype {x.dtype}")
    if x.dtype not in (np.float64, np.float32, np.int64, np.int32):
        return x.astype(np.float64)
    return x


def _block_moments(x: np.ndarray) -> Moments:
    """Moments of one float64, column-contiguous block with at least one row."""
    n = x.shape[0]
    nan = np.isnan(x)
    nan_count = nan.sum(axis=0, dtype=np.int64)
    count = n - nan_count
    # fmin/fmax skip NaN; an all-NaN column gives NaN. Adding 0.0 makes -0.0 +0.0,
    # since the sign of a zero extreme would depend on row order.
    lo = np.fmin.reduce(x, axis=0) + 0.0
    hi = np.fmax.reduce(x, axis=0) + 0.0
    bad = np.isinf(lo) | np.isinf(hi)
    if bad.any():
        raise NonFiniteError(np.flatnonzero(bad))
    has_nan = bool(nan_count.any())
    filled = np.where(nan, 0.0, x) if has_nan else x
    safe_count = np.maximum(count, 1)
    with np.errstate(over="ignore", invalid="ignore"):
        pivot = filled.sum(axis=0) / safe_count
    # A sum that overflows falls back to the midrange, which always exists.
    pivot = np.where(np.isfinite(pivot), pivot, lo * 0.5 + hi * 0.5)
    pivot = np.where(count > 0, pivot, 0.0)
    dev = x - pivot
    if has_nan:
        dev[nan] = 0.0
    s = dev.sum(axis=0)
    m2 = np.square(dev).sum(axis=0) - s * (s / safe_count)
    mean, mean_lo = _two_sum(pivot, s / safe_count)
    absmax = np.fmax(np.abs(lo), np.abs(hi))
    return Moments(count, nan_count, lo, hi, absmax, mean, mean_lo, np.maximum(m2, 0.0))


def chunk_moments(
    block: object, names: Sequence[object] | None = None, exact: bool = False
) -> Moments | ExactMoments:
    """Statistics of a 2-D block (rows x features), accumulated in float64.

    Parameters
    ----------
    block : array_like, shape (n_rows, n_features), or Columns
        Any real numeric dtype (float32, float64, integers, booleans), or a
        table's columns (:class:`Columns`). NaN is missing data and is skipped.
    names : sequence, optional
        The features' names, used to name the columns in errors.
    exact : bool
        Also accumulate exact sums (:class:`ExactMoments`).

    Returns
    -------
    Moments or ExactMoments
        One value per feature, shape ``(n_features,)``; the same for the same
        values whatever their layout or dtype mix (bit for bit).

    Raises
    ------
    NonFiniteError
        Some column holds ``inf``; ``positions`` says which.

    Examples
    --------
    >>> import numpy as np
    >>> chunk_moments(np.arange(6.0).reshape(3, 2)).mean.tolist()
    [2.0, 3.0]
    """
    kernels = numba_kernels("_kernels_numba")
    if isinstance(block, Columns):
        x = block if kernels is not None else block.stacked()
    else:
        x = _as_real_2d(block) if kernels is not None else _as_float64_columns(block)
    n, f = x.shape
    if n == 0 or f == 0:
        return ExactMoments(Moments.empty(f), ExactSums.empty(f)) if exact else Moments.empty(f)
    try:
        if exact:
            return _exact_moments(x)
        return _fused_moments(kernels, x) if kernels is not None else _numpy_moments(x)
    except NonFiniteError as err:
        raise (err.named(names) if names is not None else err) from None


def _exact_moments(x: np.ndarray | Columns) -> ExactMoments:
    """Exact sums and the extremes from the exact kernel alone (one sweep for everything)."""
    if isinstance(x, Columns):
        try:
            parts = [chunk_exact(a[:, None]) for a in x.arrays]
        except NonFiniteError:
            raise NonFiniteError([j for j, a in enumerate(x.arrays) if np.isinf(a).any()]) from None
        sums, ext = ExactSums.concat([s for s, _ in parts]), Extremes.concat([e for _, e in parts])
    else:
        sums, ext = chunk_exact(x)
    unknown = np.full(ext.count.shape, np.nan)  # until ExactMoments.finish
    absmax = np.fmax(np.abs(ext.min), np.abs(ext.max))
    moments = Moments(ext.count, ext.nan_count, ext.min, ext.max, absmax, unknown, unknown.copy(), unknown.copy())
    return ExactMoments(moments, sums)


def _numpy_moments(x: np.ndarray) -> Moments:
    rows = max(1024, BLOCK_VALUES // max(x.shape[1], 1))
    if len(x) <= rows:
        return _block_moments(x)
    return merge_all([_block_moments(x[i : i + rows]) for i in range(0, len(x), rows)])


def _fused_moments(kernels: Any, x: np.ndarray | Columns) -> Moments:
    """The numba kernel's statistics: a row-major array in place, anything else by its columns."""
    if isinstance(x, np.ndarray) and x.flags.c_contiguous:
        result = kernels.moments(x)
    else:
        columns = x if isinstance(x, Columns) else Columns.of(x)
        result = kernels.column_moments(*columns.pointers(), columns.n_rows)
    count, nan_count, lo, hi, mean, mean_lo, m2, bad = result
    if bad.any():
        raise NonFiniteError(np.flatnonzero(bad))
    absmax = np.fmax(np.abs(lo), np.abs(hi))
    return Moments(count, nan_count, lo, hi, absmax, mean, mean_lo, m2)


def array_moments(
    x: np.ndarray | Columns,
    names: Sequence[object] | None = None,
    threads: int | None = None,
    exact: bool = False,
) -> Moments | ExactMoments:
    """Statistics of an in-memory 2-D array (or a table's :class:`Columns`), its row blocks on threads.

    The blocks and the merge tree depend only on the shape, so the result
    does not depend on the number of threads.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_features), or Columns
    names : sequence, optional
        Feature names for error messages.
    threads : int, optional
        Worker threads (default: the CPUs this process may use).
    exact : bool
        Also accumulate exact sums (:class:`ExactMoments`).
    """
    n, f = x.shape if isinstance(x, Columns) else np.shape(x)
    rows = block_rows(f)
    if n <= rows:
        return chunk_moments(x, names, exact)
    return merge_all(on_row_blocks(lambda a: chunk_moments(x[a : a + rows], names, exact), n, rows, threads))


def block_rows(n_features: int) -> int:
    """Rows per block when in-memory data is split for threads (a few MB of values)."""
    return max(1024, (16 * BLOCK_VALUES) // max(n_features, 1))


#: Set (by :func:`on_calling_thread`) where in-memory work must not start threads of its own.
_CALLING_THREAD: ContextVar[bool] = ContextVar("scalepipe_calling_thread", default=False)


@contextmanager
def on_calling_thread() -> Iterator[None]:
    """Run :func:`on_row_blocks` (in-memory fits and transforms) on the calling thread within the block.

    For in-memory work done inside a Dask task: the scheduler already runs
    the tasks in parallel, and a thread pool per task would only compete
    with them. The setting is per thread (a context variable).
    """
    token = _CALLING_THREAD.set(True)
    try:
        yield
    finally:
        _CALLING_THREAD.reset(token)


def on_row_blocks(fn: Callable[[int], T], n_rows: int, rows: int, threads: int | None = None) -> list[T]:
    """``fn(start)`` for each block of ``rows`` rows, on threads; the results in row order.

    ``threads`` defaults to the CPUs this process may use (one, the calling
    thread, under :func:`on_calling_thread`). The first failing block's error
    (in row order) is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    if threads is None and _CALLING_THREAD.get():
        threads = 1
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if threads == 1:
        return [fn(start) for start in range(0, n_rows, rows)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, range(0, n_rows, rows)))


def merge(a: Moments | ExactMoments, b: Moments | ExactMoments) -> Moments | ExactMoments:
    """Statistics of the union of two disjoint row sets (Chan et al.).

    ``merge(Moments.empty(shape), m)`` is ``m``: empty chunks merge cleanly.
    Exact sums, when present, merge by integer addition.
    """
    if isinstance(a, ExactMoments) and isinstance(b, ExactMoments):
        return ExactMoments(merge(a.moments, b.moments), merge_exact(a.sums, b.sums))
    na, nb = a.count, b.count
    n = na + nb
    safe_n = np.maximum(n, 1)
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond ~1e154: their m2 overflows (ZScore refuses them)
        delta = (b.mean - a.mean) + (b.mean_lo - a.mean_lo)
        w = nb / safe_n
        mean, mean_lo = _two_sum(a.mean, a.mean_lo + delta * w)
        m2 = a.m2 + b.m2 + delta * delta * (na * w)
    a_empty, b_empty = na == 0, nb == 0
    mean = np.where(a_empty, b.mean, np.where(b_empty, a.mean, mean))
    mean_lo = np.where(a_empty, b.mean_lo, np.where(b_empty, a.mean_lo, mean_lo))
    m2 = np.where(a_empty, b.m2, np.where(b_empty, a.m2, m2))
    return Moments(
        count=n,
        nan_count=a.nan_count + b.nan_count,
        min=np.fmin(a.min, b.min),
        max=np.fmax(a.max, b.max),
        absmax=np.fmax(a.absmax, b.absmax),
        mean=mean,
        mean_lo=mean_lo,
        m2=m2,
    )


def merge_all(parts: Sequence[Moments]) -> Moments:
    """Merge a non-empty sequence of moments with a fixed tree (see :func:`tree_reduce`)."""
    return tree_reduce(list(parts), _fold)


def _fold(group: Sequence[Moments]) -> Moments:
    out = group[0]
    for m in group[1:]:
        out = merge(out, m)
    return out


def tree_reduce(items: list[T], combine: Callable[[list[T]], T], split_every: int = SPLIT_EVERY) -> T:
    """Reduce ``items`` with a tree fixed by their number and order alone.

    Consecutive groups of ``split_every`` items are combined level by level, so
    the result does not depend on which worker finishes first: the same
    partitions always give bit-identical statistics.

    Parameters
    ----------
    items
        At least one item.
    combine
        Called with a list of 1 to ``split_every`` items; returns one item. It
        may return a lazy object (a ``dask.delayed``), which is how the Dask
        orchestration builds its graph with this same function.
    split_every
        Fan-in of each tree node (>= 2).
    """
    if not items:
        raise ValueError("tree_reduce needs at least one item")
    level = list(items)
    while len(level) > 1:
        level = [combine(level[i : i + split_every]) for i in range(0, len(level), split_every)]
    return level[0]
