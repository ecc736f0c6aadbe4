"""Per-feature histograms of the input and of the scaled output, mergeable by addition.

The bins are fixed by the fitted model before the data is read: ``bins``
equal-width bins over each feature's fitted ``[min, max]`` for the input, and
over the affine image of that range for the output. So every partition counts
into the same bins and partial histograms merge by adding counts, in any order
and on any worker; nothing but the counts travels to the client. Values
outside the bins (new data) go to ``under``/``over`` counters, NaN to ``nan``.

A value ``x`` falls in bin ``k`` when ``edges[k] <= x < edges[k + 1]``, the
last bin also holding ``x == edges[-1]``: exactly :func:`numpy.histogram`'s
rule for explicit edges, which the tests use as the reference.

The kernels (:func:`count_bins`, :func:`partition_histograms`,
:func:`merge_histograms`) are numpy and pandas only, with one numba sweep per
column where the ``fast`` extra is installed. :func:`transform_with_histograms`
builds the Dask graph (Dask imported lazily, only for Dask input): the scaled
collection and the histograms come from the *same* partition tasks, so a
caller that computes both together (the pipeline's output write) reads the
data once.

Examples
--------
>>> import numpy as np, scalepipe as sp
>>> model = sp.fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [sp.MinMax()])
>>> scaled, hist = transform_with_histograms(model, np.array([[0.5], [3.0], [9.0]]), bins=3)
>>> hist.input.counts.tolist(), hist.input.over.tolist(), hist.outside.tolist()
([[1, 0, 1]], [1], [1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._accel import numba_kernels
from .errors import ArtifactError, DataError, ParameterError
from .methods import apply_affine
from .stats import Columns, on_calling_thread, tree_reduce

__all__ = [
    "DEFAULT_BINS",
    "Counts",
    "Histograms",
    "count_bins",
    "feature_columns",
    "histogram_edges",
    "histograms_from_dict",
    "merge_histograms",
    "model_edges",
    "output_range",
    "partition_histograms",
    "psi",
    "transform_with_histograms",
]

#: Bins per feature unless the caller says otherwise.
DEFAULT_BINS = 40


@dataclass(frozen=True, eq=False)
class Counts:
    """Histograms of one side (input or output) of every feature.

    Attributes
    ----------
    edges : float64 array, shape (n_features, bins + 1)
        Bin edges, increasing along the last axis.
    counts : int64 array, shape (n_features, bins)
        Values per bin.
    under, over : int64 array, shape (n_features,)
        Values below ``edges[:, 0]`` and above ``edges[:, -1]``.
    """

    edges: np.ndarray
    counts: np.ndarray
    under: np.ndarray
    over: np.ndarray

    @property
    def total(self) -> np.ndarray:
        """Non-missing values counted, in the bins or outside them."""
        return self.counts.sum(axis=1) + self.under + self.over

    def __add__(self, other: Counts) -> Counts:
        if not np.array_equal(self.edges, other.edges):
            raise DataError("histograms with different bins cannot be merged")
        return Counts(self.edges, self.counts + other.counts, self.under + other.under, self.over + other.over)


@dataclass(frozen=True, eq=False)
class Histograms:
    """Input and output histograms of the fitted features.

    Attributes
    ----------
    names : list
        The features, in the model's order.
    input : Counts
        Histograms of the input values over the fitted ranges.
    output : Counts or None
        Histograms of the scaled values (``None`` when only the input was counted,
        as the drift check does).
    outside : int64 array, shape (n_features,)
        Input values outside the fitted ``[min, max]`` (equal to
        ``input.under + input.over`` except for a constant column, whose bins
        are widened around its value).
    nan : int64 array, shape (n_features,)
        Missing input values.
    """

    names: list[Any]
    input: Counts
    output: Counts | None
    outside: np.ndarray
    nan: np.ndarray

    @property
    def bins(self) -> int:
        """Bins per feature."""
        return int(self.input.counts.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data; floats are written so that they read back bit-identical."""
        from .artifact import encode_floats

        def side(c: Counts | None) -> dict[str, Any] | None:
            if c is None:
                return None
            return {
                "edges": [encode_floats(row) for row in c.edges],
                "counts": c.counts.tolist(),
                "under": c.under.tolist(),
                "over": c.over.tolist(),
            }

        return {
            "names": list(self.names),
            "input": side(self.input),
            "output": side(self.output),
            "outside": self.outside.tolist(),
            "nan": self.nan.tolist(),
        }


def histograms_from_dict(d: dict[str, Any]) -> Histograms:
    """Inverse of :meth:`Histograms.to_dict`.

    Raises
    ------
    ArtifactError
        A field is missing or the shapes do not agree.
    """
    from .artifact import decode_floats

    def side(s: dict[str, Any] | None) -> Counts | None:
        if s is None:
            return None
        edges = np.array([decode_floats(row) for row in s["edges"]], dtype=np.float64)
        counts = np.array(s["counts"], dtype=np.int64)
        under, over = np.array(s["under"], dtype=np.int64), np.array(s["over"], dtype=np.int64)
        n = len(d["names"])
        if edges.shape != (n, counts.shape[1] + 1) or counts.shape[0] != n or under.shape != (n,) or over.shape != (n,):
            raise ValueError("histogram shapes do not match the features")
        return Counts(edges, counts, under, over)

    try:
        inputs = side(d["input"])
        assert inputs is not None
        return Histograms(list(d["names"]), inputs, side(d["output"]), np.array(d["outside"], dtype=np.int64), np.array(d["nan"], dtype=np.int64))
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as err:
        raise ArtifactError(f"malformed histograms: {err}") from None


def _widened(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi]``, widened to ``mid +- max(|mid|, 1) / 2`` where it is a single value.

    A range of a few ulps keeps its own bounds: some of its edges coincide,
    which counts correctly and shows the few values it holds. A widened bound
    past the largest double stops at it (a constant near it keeps finite edges).
    """
    point = ~(hi > lo)
    mid = lo * 0.5 + hi * 0.5
    half = 0.5 * np.maximum(np.abs(mid), 1.0)
    top = np.finfo(np.float64).max
    with np.errstate(over="ignore"):
        below, above = np.clip(mid - half, -top, top), np.clip(mid + half, -top, top)
    return np.where(point, below, lo), np.where(point, above, hi)


def histogram_edges(lo: np.ndarray, hi: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """``bins`` equal-width bins per feature over ``[lo, hi]`` (widened if degenerate).

    Returns
    -------
    ndarray, shape (n_features, bins + 1)
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ParameterError("bins", f"must be a positive integer, got {bins!r}")
    lo, hi = _widened(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        edges = np.linspace(lo, hi, int(bins) + 1, axis=-1)
        huge = np.isinf(hi - lo) & np.isfinite(lo) & np.isfinite(hi)  # a range past the largest double
        if huge.any():
            t = np.arange(int(bins) + 1) / int(bins)
            between = lo[..., None] * (1.0 - t) + hi[..., None] * t  # no term overflows
            edges = np.where(huge[..., None], np.maximum.accumulate(between, axis=-1), edges)
    return edges


def output_range(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The affine image of each feature's fitted ``[min, max]``: the output's bin range.

    For the key scope this is the image under the global parameters (each
    key's own output range may differ; its values outside go to under/over).
    The ends are widened to their float32 rounding: a float32 feature's
    output is rounded so, and its fitted max landed above the last edge.
    """
    m = model.moments
    ends = apply_affine(np.stack([m.min, m.max]), model.params)
    lo, hi = np.fmin(ends[0], ends[1]), np.fmax(ends[0], ends[1])
    with np.errstate(over="ignore"):
        lo32, hi32 = lo.astype(np.float32).astype(np.float64), hi.astype(np.float32).astype(np.float64)
    return np.where(np.isfinite(lo32), np.fmin(lo, lo32), lo), np.where(np.isfinite(hi32), np.fmax(hi, hi32), hi)


def model_edges(model: Any, bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Input and output bin edges of every fitted feature of ``model``."""
    lo, hi = output_range(model)
    return histogram_edges(model.moments.min, model.moments.max, bins), histogram_edges(lo, hi, bins)


def count_bins(values: np.ndarray | Columns, edges: np.ndarray) -> Counts:
    """Histograms of the columns of ``values`` over per-column ``edges``.

    Parameters
    ----------
    values : ndarray, shape (n_rows, n_features), or Columns
        Real values; NaN is not counted.
    edges : ndarray, shape (n_features, bins + 1)

    Examples
    --------
    >>> import numpy as np
    >>> c = count_bins(np.array([[0.0], [0.5], [1.0], [2.0]]), np.array([[0.0, 0.5, 1.0]]))
    >>> c.counts.tolist(), c.over.tolist()
    ([[1, 2]], [1])
    """
    return _tally(values, edges)[0]


def _tally(
    values: np.ndarray | Columns, edges: np.ndarray, bounds: np.ndarray | None = None
) -> tuple[Counts, np.ndarray, np.ndarray]:
    """:func:`count_bins`, with each column's NaN count and the values outside ``bounds`` (rows lo, hi).

    One sweep of the numba kernel where it is installed, reading the columns
    in place; else numpy, the reference.
    """
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    n_features, n_edges = edges.shape
    bounds = np.array([[-np.inf] * n_features, [np.inf] * n_features]) if bounds is None else np.asarray(bounds, np.float64)
    n_columns = values.shape[1] if isinstance(values, Columns) else np.shape(values)[1]
    if n_edges < 2 or n_columns != n_features or bounds.shape != (2, n_features):
        raise DataError(
            f"histograms: {n_columns} columns need edges of shape ({n_columns}, bins + 1) with bins >= 1 "
            f"(got {edges.shape}) and bounds of shape (2, {n_columns}) (got {bounds.shape})"
        )
    kernels = numba_kernels("_kernels_numba")
    if kernels is not None:
        columns = values if isinstance(values, Columns) else Columns.of(np.asarray(values))
        counts = np.zeros((n_features, n_edges - 1), dtype=np.int64)
        tallies = np.zeros((4, n_features), dtype=np.int64)
        kernels.bin_counts(*columns.pointers(), columns.n_rows, edges, bounds, counts, tallies)
        return Counts(edges, counts, tallies[0], tallies[1]), tallies[2], tallies[3]
    x = values.stacked() if isinstance(values, Columns) else np.asarray(values, dtype=np.float64)
    bins = n_edges - 1
    counts = np.zeros((n_features, bins), dtype=np.int64)
    under = np.zeros(n_features, dtype=np.int64)
    over = np.zeros(n_features, dtype=np.int64)
    for j in range(n_features):
        col = x[:, j]
        e = edges[j]
        inside = (col >= e[0]) & (col <= e[-1])
        under[j] = np.count_nonzero(col < e[0])
        over[j] = np.count_nonzero(col > e[-1])
        # numpy.histogram's rule: the bin of x is the last edge <= x; x == edges[-1] is in the last bin
        k = np.searchsorted(e, col[inside], side="right") - 1
        counts[j] = np.bincount(np.minimum(k, bins - 1), minlength=bins)
    nan = np.count_nonzero(np.isnan(x), axis=0).astype(np.int64)
    outside = np.count_nonzero((x < bounds[0]) | (x > bounds[1]), axis=0).astype(np.int64)
    return Counts(edges, counts, under, over), nan, outside


def feature_columns(part: Any, names: Sequence[Any], feature_names: Sequence[Any] | None = None) -> Columns:
    """The fitted features of one partition (a pandas frame or a 2-D array) as :class:`Columns` (views)."""
    import pandas as pd

    if isinstance(part, pd.DataFrame):
        from .frames import column_arrays

        return column_arrays(part, names)
    x = np.asarray(part)
    if x.ndim != 2:
        raise DataError(f"histograms need a table or a 2-D array, got shape {x.shape}")
    columns = list(feature_names) if feature_names is not None else list(range(x.shape[1]))
    index = {c: i for i, c in enumerate(columns)}
    missing = [n for n in names if n not in index]
    if missing:
        raise DataError(f"column(s) {', '.join(map(repr, missing))} were fitted but are not in the data")
    return Columns([x[:, index[n]] for n in names], x.shape[0])


def partition_histograms(
    part: Any,
    scaled: Any,
    names: Sequence[Any],
    edges: tuple[np.ndarray, np.ndarray],
    fitted_range: tuple[np.ndarray, np.ndarray],
    feature_names: Sequence[Any] | None = None,
) -> Histograms:
    """Histograms of one partition and (optionally) of its scaled version.

    Parameters
    ----------
    part
        A pandas frame or 2-D numpy array holding the fitted features.
    scaled
        The same rows scaled by the model, or ``None`` to count the input only.
    names
        The fitted features.
    edges
        Input and output edges (see :func:`model_edges`).
    fitted_range
        The fitted ``min`` and ``max`` of each feature (for :attr:`Histograms.outside`).
    feature_names
        Column names of an array partition (default: positions).
    """
    x = feature_columns(part, names, feature_names)
    inputs, nan, outside = _tally(x, edges[0], np.stack(fitted_range))
    output = None if scaled is None else count_bins(feature_columns(scaled, names, feature_names), edges[1])
    return Histograms(list(names), inputs, output, outside, nan)


def merge_histograms(parts: Sequence[Histograms]) -> Histograms:
    """The histograms of the union of the partitions' rows (counts add up)."""
    first = parts[0]
    inputs, outputs = first.input, first.output
    outside, nan = first.outside, first.nan
    for h in parts[1:]:
        inputs = inputs + h.input
        outputs = None if outputs is None or h.output is None else outputs + h.output
        outside, nan = outside + h.outside, nan + h.nan
    return Histograms(first.names, inputs, outputs, outside, nan)


def _scaled_partition(part: Any, model: Any, feature_names: Sequence[Any] | None) -> Any:
    with on_calling_thread():  # a Dask task: its scheduler runs the partitions in parallel
        return model.transform(part, feature_names=feature_names)


def _partition_task(part: Any, scaled: Any, model: Any, edges: tuple[np.ndarray, np.ndarray], feature_names: Sequence[Any] | None) -> Histograms:
    m = model.moments
    return partition_histograms(part, scaled, model.feature_names, edges, (m.min, m.max), feature_names)


def transform_with_histograms(
    model: Any, data: Any, bins: int = DEFAULT_BINS, *, feature_names: Sequence[Any] | None = None
) -> tuple[Any, Any]:
    """Scale ``data`` with ``model`` and count the input and output histograms in the same pass.

    Parameters
    ----------
    model
        A fitted :class:`~scalepipe.model.Model`.
    data
        pandas DataFrame or 2-D numpy array (computed now), or dask DataFrame
        or 2-D dask array (lazy).
    bins
        Bins per feature.
    feature_names
        Column names of an array (default: positions).

    Returns
    -------
    scaled
        What ``model.transform(data)`` returns (lazy for Dask input).
    histograms
        :class:`Histograms`, or a ``dask.delayed`` one for Dask input. For Dask
        input both come from the same per-partition tasks: compute them in one
        ``dask.compute`` (e.g. the output write and the histograms) and every
        partition is read once; only the counts reach the client.

    Raises
    ------
    DataError
        ``data`` is of another kind (xarray, N-d arrays).

    Examples
    --------
    >>> import pandas as pd, scalepipe as sp
    >>> df = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    >>> scaled, hist = transform_with_histograms(sp.fit(df, [sp.ZScore()]), df, bins=2)
    >>> hist.input.counts.tolist(), hist.output.counts.tolist()
    ([[1, 2]], [[1, 2]])
    """
    import pandas as pd

    from .views import _is_instance

    edges = model_edges(model, bins)
    if isinstance(data, (pd.DataFrame, np.ndarray)):
        scaled = model.transform(data, feature_names=feature_names)
        return scaled, _partition_task(data, scaled, model, edges, feature_names)
    if _is_instance(data, "dask.dataframe", "DataFrame"):
        return _dask_frame(model, data, edges)
    if _is_instance(data, "dask.array", "Array") and data.ndim == 2:
        return _dask_array(model, data, edges, feature_names)
    raise DataError(
        f"histograms are computed for tables and 2-D arrays, not {type(data).__module__}.{type(data).__name__}"
    )


def _dask_frame(model: Any, frame: Any, edges: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    import dask
    import dask.dataframe as dd

    # One to_delayed() call: the scaled frame and the histograms share these
    # partition keys, so computing both together reads each partition once.
    # (Two separately optimized graphs would each read the input.)
    parts = frame.to_delayed()
    shared = dask.delayed(model, traverse=False)
    scaler = dask.delayed(_scaled_partition, pure=True)
    counter = dask.delayed(_partition_task, pure=True)
    scaled_parts = [scaler(p, shared, None) for p in parts]
    partials = [counter(p, s, shared, edges, None) for p, s in zip(parts, scaled_parts)]
    meta = model.transform(frame._meta)
    divisions = frame.divisions if frame.known_divisions else None
    scaled = dd.from_delayed(scaled_parts, meta=meta, divisions=divisions, verify_meta=False)
    return scaled, tree_reduce(partials, dask.delayed(merge_histograms, pure=True))


def _dask_array(model: Any, x: Any, edges: tuple[np.ndarray, np.ndarray], feature_names: Sequence[Any] | None) -> tuple[Any, Any]:
    import dask
    import dask.array as da

    rows = x.rechunk({1: -1}) if x.numblocks[1] > 1 else x
    blocks = rows.to_delayed()[:, 0]
    shared = dask.delayed(model, traverse=False)
    scaler = dask.delayed(_scaled_partition, pure=True)
    counter = dask.delayed(_partition_task, pure=True)
    names = list(feature_names) if feature_names is not None else None
    scaled_blocks = [scaler(b, shared, names) for b in blocks]
    partials = [counter(b, s, shared, edges, names) for b, s in zip(blocks, scaled_blocks)]
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    pieces = [
        da.from_delayed(s, shape=(n, x.shape[1]), dtype=dtype) for s, n in zip(scaled_blocks, rows.chunks[0])
    ]
    return da.concatenate(pieces, axis=0), tree_reduce(partials, dask.delayed(merge_histograms, pure=True))


def psi(reference: Counts, new: Counts, floor: float = 1e-4) -> np.ndarray:
    """Population stability index of ``new`` against ``reference``, per feature.

    The buckets are the bins plus the under- and overflow, as shares of the
    non-missing values; a share below ``floor`` counts as ``floor`` (an empty
    bucket would make the index infinite). ``sum((q - p) * ln(q / p))``.

    Returns NaN for a feature without values on either side.
    """
    if not np.array_equal(reference.edges, new.edges):
        raise DataError("the population stability index needs both histograms over the same bins")

    def shares(c: Counts) -> np.ndarray:
        buckets = np.column_stack([c.under, c.counts, c.over]).astype(np.float64)
        total = buckets.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.maximum(buckets / total, floor)

    p, q = shares(reference), shares(new)
    return np.sum((q - p) * np.log(q / p), axis=1)
