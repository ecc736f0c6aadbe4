"""Uniform views of the data kinds scalepipe accepts.

A view knows a collection's features (names, dtypes, which are numeric), how
to get their statistics (eagerly for in-memory data, lazily for Dask), and how
to rebuild a collection of the same kind with some features scaled. numpy and
pandas are handled here directly; Dask and xarray are recognised without
importing them (a collection of theirs can only exist if they are imported),
and Dask work is delegated to :mod:`scalepipe.reduce`, imported on first use.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .batches import batch_moments
from .errors import ColumnError, DataError, ParameterError
from .maps import ValueMap, on_threads
from .stats import Columns, array_moments

__all__ = ["ARRAY_KINDS", "View", "view_of"]

#: The ``kind`` of the views of arrays (numpy, dask arrays, xarray), which a
#: model records as its ``data_kind``; the others are tables.
ARRAY_KINDS = ("numpy", "dask.array", "xarray")


def _is_instance(obj: object, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    return mod is not None and isinstance(obj, getattr(mod, name))


class View(abc.ABC):
    """Features of one collection and the operations scalepipe needs on them.

    Attributes
    ----------
    names : list
        Every feature, in the collection's order.
    dtypes : list of str
        Each feature's dtype.
    numeric : list of bool
        Whether each feature can be scaled.
    kind : str
        ``"numpy"``, ``"pandas"``, ``"dask.array"``, ``"dask.dataframe"`` or ``"xarray"``.
    """

    kind: str
    names: list[Any]
    dtypes: list[str]
    numeric: list[bool]

    @property
    def lazy(self) -> bool:
        """Whether :meth:`moments` returns a ``dask.delayed`` value."""
        return self.kind.startswith("dask") or getattr(self, "_dask", False)

    def positions(self, names: Sequence[Any]) -> np.ndarray:
        """Positions of ``names`` among the features; a missing one is an error."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ColumnError(
                f"column(s) {', '.join(map(repr, missing))} were fitted but are not in the data "
                f"(it has {_preview(self.names)})"
            )
        pos = np.array([index[n] for n in names], dtype=np.int64)
        not_numeric = [(self.names[p], self.dtypes[p]) for p in pos if not self.numeric[p]]
        if not_numeric:
            name, dtype = not_numeric[0]
            raise ColumnError(f"column {name!r} has dtype {dtype}, not numeric; it cannot be scaled")
        return pos

    @abc.abstractmethod
    def moments(self, names: Sequence[Any], exact: bool = False) -> Any:
        """Statistics of ``names`` (a :class:`Moments`, or a delayed one if :attr:`lazy`).

        With ``exact``, :class:`~scalepipe.stats.ExactMoments`.
        """

    @abc.abstractmethod
    def batch_moments(self, names: Sequence[Any], batch_rows: int | None) -> list[Any]:
        """Per-batch statistics of ``names`` for each partition, in order (delayed if :attr:`lazy`).

        Each item has shape ``(n_batches, len(names))``.
        """

    def check_batches(self, names: Sequence[Any]) -> None:
        """Raise a :class:`DataError` if the partition scope cannot batch ``names`` (from the schema alone)."""

    @abc.abstractmethod
    def transform(self, names: Sequence[Any], fn: ValueMap) -> Any:
        """A collection of the same kind with the features ``names`` mapped by ``fn``.

        ``fn`` receives positions into ``names`` (see :mod:`scalepipe.maps`).
        """


def _preview(names: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return shown + (f", ... ({len(names)} columns)" if len(names) > limit else "")


class FrameView(View):
    """A pandas or dask DataFrame: features are its columns."""

    def __init__(self, frame: Any, kind: str) -> None:
        from .frames import is_numeric

        self.frame, self.kind = frame, kind
        self.names = list(frame.columns)
        self.dtypes = [str(t) for t in frame.dtypes]
        self.numeric = [is_numeric(t) for t in frame.dtypes]

    def moments(self, names: Sequence[Any], exact: bool = False) -> Any:
        self.positions(names)
        if self.kind == "dask.dataframe":
            from . import reduce

            return reduce.frame_moments(self.frame, names, exact)
        from .frames import column_arrays

        return array_moments(column_arrays(self.frame, names), list(names), exact=exact)

    def batch_moments(self, names: Sequence[Any], batch_rows: int | None) -> list[Any]:
        self.positions(names)
        if self.kind == "dask.dataframe":
            from . import reduce

            return reduce.frame_batch_moments(self.frame, names, batch_rows)
        from .frames import float_values

        return [batch_moments(float_values(self.frame, names), batch_rows, list(names))]

    def key_moments(self, names: Sequence[Any], key: Any) -> Any:
        """Global statistics and per-key table of ``names`` (delayed if :attr:`lazy`)."""
        self.positions(names)
        if key not in self.names:
            raise ColumnError(f"stats.key: key column {key!r} is not in the data (it has {_preview(self.names)})")
        if self.kind == "dask.dataframe":
            from . import reduce

            return reduce.frame_key_moments(self.frame, names, key)
        from .frames import float_values
        from .groups import key_moments

        values = float_values(self.frame, names)
        return array_moments(values, list(names)), key_moments(self.frame[key], values, list(names))

    def transform(self, names: Sequence[Any], fn: ValueMap) -> Any:
        self.positions(names)
        if self.kind == "dask.dataframe":
            from . import reduce

            return reduce.transform_frame(self.frame, names, fn)
        from .frames import map_columns

        return map_columns(self.frame, list(names), on_threads(fn))


class ArrayView(View):
    """An N-d numpy or dask array reduced over some axes; features are the rest.

    Parameters
    ----------
    data
        numpy or dask array.
    reduce_axes
        Axes reduced over (``(0,)`` for rows x features).
    names
        Feature names, an array shaped as the remaining axes.
    """

    def __init__(self, data: Any, reduce_axes: Sequence[int], names: np.ndarray, kind: str) -> None:
        if data.dtype.kind not in "iuf":
            raise ColumnError(f"array has dtype {data.dtype}, not numeric; it cannot be scaled")
        self.data, self.kind = data, kind
        self._dask = not isinstance(data, np.ndarray)
        self.reduce_axes = tuple(reduce_axes)
        self.other_axes = tuple(a for a in range(data.ndim) if a not in self.reduce_axes)
        self.feature_shape = tuple(data.shape[a] for a in self.other_axes)
        self.name_grid = names
        self.names = list(names.ravel())
        self.dtypes = [str(data.dtype)] * len(self.names)
        self.numeric = [True] * len(self.names)

    def _flat(self) -> np.ndarray:
        x = np.transpose(self.data, self.reduce_axes + self.other_axes)
        return x.reshape(-1, int(np.prod(self.feature_shape, dtype=np.int64)))

    def moments(self, names: Sequence[Any], exact: bool = False) -> Any:
        """Statistics of ``names``; in memory, and for a 2-D dask array, the other features are not read
        (an infinity there is no error; an N-d dask array is reduced whole, then the features picked)."""
        pos = self.positions(names)
        every = np.array_equal(pos, np.arange(len(self.names)))
        if self._dask:
            import dask

            from . import reduce

            if self.data.ndim == 2 and self.reduce_axes == (0,) and not every:  # rows x features: the chosen columns only
                return reduce.array_moments(self.data[:, pos], (0,), self.name_grid[pos], exact)
            full = reduce.array_moments(self.data, self.reduce_axes, self.name_grid, exact)
            return dask.delayed(_take_flat, pure=True)(full, pos)
        flat = self._flat()
        if not every:
            flat = Columns([flat[:, p] for p in pos])
        return array_moments(flat, [self.names[p] for p in pos], exact=exact)

    def batch_moments(self, names: Sequence[Any], batch_rows: int | None) -> list[Any]:
        pos = self.positions(names)
        if self._dask:
            from . import reduce

            return reduce.array_batch_moments(self.data, self.reduce_axes, self.name_grid, batch_rows, pos)
        return [batch_moments(self._flat()[:, pos], batch_rows, list(names))]

    def transform(self, names: Sequence[Any], fn: ValueMap) -> Any:
        self.positions(names)
        return self.map_features(names, fn)

    def map_features(self, names: Sequence[Any], fn: ValueMap, out: np.ndarray | None = None) -> Any:
        """Map with ``fn``; features not in ``names`` pass through (positions -1).

        ``out``: where to write an in-memory 2-D result (``fn`` an :class:`~scalepipe.maps.AffineMap`).
        """
        index = {n: i for i, n in enumerate(names)}
        positions = np.array([index.get(n, -1) for n in self.names], dtype=np.int64).reshape(self.feature_shape)
        if self._dask:
            from . import reduce

            return reduce.transform_array(self.data, self.reduce_axes, fn, positions)
        perm = self.reduce_axes + self.other_axes
        if out is not None:
            return on_threads(fn)(self.data, positions.ravel(), None, out)
        out = on_threads(fn)(self._flat(), positions.ravel(), None)
        shaped = out.reshape(tuple(self.data.shape[a] for a in perm))
        return np.transpose(shaped, np.argsort(perm))


def _take_flat(m: Any, pos: np.ndarray) -> Any:
    return m.reshape((-1,)).take(pos)


class XarrayView(View):
    """An xarray DataArray or Dataset: one :class:`ArrayView` per data variable.

    A Dataset's variables that are not numeric or lack a reduced dim (a
    static mask, labels) have no features and pass through a transform
    unchanged (:attr:`unscalable` says why); a DataArray must be scalable.

    Features are named ``var`` when a variable has only reduced dims, else
    ``var[label]`` with the coordinate labels of the other dims (``t2m[850,red]``),
    in the order of ``feature_dims[var]`` when given (the order at fit, so a
    transposed variable gets the same names for the same cells), else in the
    variable's own order, which :attr:`feature_dims` records.
    """

    kind = "xarray"

    def __init__(self, data: Any, reduce_dims: Sequence[str] | None, feature_dims: dict[str, list[str]] | None = None) -> None:
        import xarray as xr

        self.data = data
        self.is_dataset = isinstance(data, xr.Dataset)
        arrays = dict(data.data_vars) if self.is_dataset else {data.name if data.name is not None else "data": data}
        if reduce_dims is None:
            reduce_dims = _samples_dim(arrays)
        self.reduce_dims = list(reduce_dims)
        self.parts: dict[Any, ArrayView] = {}
        self.feature_dims: dict[str, list[str]] = {}
        #: Dataset variables that cannot be scaled, and why: they pass through unchanged.
        self.unscalable: dict[Any, str] = {}
        for var, arr in arrays.items():
            missing = [d for d in self.reduce_dims if d not in arr.dims]
            if arr.dtype.kind not in "iuf":
                self.unscalable[var] = f"has dtype {arr.dtype}, not numeric"
            elif missing or not self.reduce_dims:
                self.unscalable[var] = f"has no dimension(s) {missing} to reduce over (its dims: {list(arr.dims)})"
            if var in self.unscalable:
                if not self.is_dataset:
                    raise DataError(f"variable {var!r} {self.unscalable[var]}; it cannot be scaled")
                continue
            axes = [arr.dims.index(d) for d in self.reduce_dims]
            other = [d for d in arr.dims if d not in self.reduce_dims]
            order = (feature_dims or {}).get(str(var))
            if order is None or sorted(order) != sorted(map(str, other)):
                order = [str(d) for d in other]
            self.feature_dims[str(var)] = order
            grid = _label_grid(var, arr, other, order)
            kind = "numpy" if isinstance(arr.data, np.ndarray) else "dask.array"
            self.parts[var] = ArrayView(arr.data, axes, grid, kind)
        if not self.parts:
            reasons = "; ".join(f"{var!r} {why}" for var, why in self.unscalable.items())
            raise DataError(f"no data variable can be scaled: {reasons or 'the dataset has none'}")
        self._dask = any(p._dask for p in self.parts.values())
        self.names = [n for p in self.parts.values() for n in p.names]
        _refuse_repeats(self.names, " (a dimension's coordinate labels repeat)")
        self.dtypes = [t for p in self.parts.values() for t in p.dtypes]
        self.numeric = [True] * len(self.names)

    def moments(self, names: Sequence[Any], exact: bool = False) -> Any:
        self.positions(names)
        wanted = set(names)
        pieces = []
        for part in self.parts.values():
            mine = [n for n in part.names if n in wanted]
            if mine:
                pieces.append((mine, part.moments(mine, exact)))
        order = {n: i for i, n in enumerate(n for mine, _ in pieces for n in mine)}
        index = np.array([order[n] for n in names], dtype=np.int64)
        if self._dask:
            import dask

            return dask.delayed(_concat_take, pure=True)([m for _, m in pieces], index)
        return _concat_take([m for _, m in pieces], index)

    def batch_moments(self, names: Sequence[Any], batch_rows: int | None) -> list[Any]:
        self.positions(names)
        return self._batch_owner(names).batch_moments(names, batch_rows)

    def check_batches(self, names: Sequence[Any]) -> None:
        self._batch_owner(names)

    def _batch_owner(self, names: Sequence[Any]) -> ArrayView:
        """The one data variable holding ``names``: the partition scope's batches are its chunks."""
        owners = [part for part in self.parts.values() if set(part.names) & set(names)]
        if len(owners) > 1:
            raise DataError(
                "scope 'partition' needs one data variable (its chunks are the batches); "
                f"the rules match {len(owners)} variables: select one with input.variables"
            )
        return owners[0]

    def transform(self, names: Sequence[Any], fn: ValueMap) -> Any:
        self.positions(names)
        wanted = set(names)
        out = self.data.copy(deep=False)
        for var, part in self.parts.items():
            if not wanted & set(part.names):
                continue
            scaled = part.map_features(names, fn)
            if self.is_dataset:
                out[var] = _new_values(out[var], scaled)
            else:
                out = _new_values(out, scaled)
        return out


def _samples_dim(arrays: dict[Any, Any]) -> list[str]:
    """The default ``reduce_dims``: the first dimension of the numeric variables with the most dimensions.

    Static variables have fewer (a mask or an elevation over lat, lon) and
    pass through; taking the first variable's first dimension instead made a
    mask listed first (Zarr lists variables alphabetically) reduce every
    variable over ``lat``. Widest variables that start with different
    dimensions leave the choice to the caller.
    """
    numeric = {var: a.dims for var, a in arrays.items() if a.dtype.kind in "iuf" and a.dims}
    if not numeric:
        return []
    most = max(len(dims) for dims in numeric.values())
    firsts = {var: dims[0] for var, dims in numeric.items() if len(dims) == most}
    if len(set(firsts.values())) > 1:
        listed = ", ".join(f"{var!r} starts with {dim!r}" for var, dim in firsts.items())
        raise DataError(f"reduce_dims: the variables start with different dimensions ({listed}); name the dimensions to reduce over")
    return [next(iter(firsts.values()))]


#: Attributes that describe the input's values, not scaled ones: a z-scored
#: temperature kept ``units: K``, which unit-aware tools (pint, cf-xarray)
#: would convert as kelvins.
_VALUE_ATTRS = ("units", "valid_min", "valid_max", "valid_range", "actual_range", "actual_min", "actual_max")


def _new_values(array: Any, values: Any) -> Any:
    """``array`` holding ``values`` (scaled), without the encoding that stored the old ones, or their units and ranges.

    An input's on-disk encoding (an integer ``dtype``, CF packing with
    ``scale_factor``/``add_offset``, a ``_FillValue``, lossy filters) fits its
    values, not scaled ones: kept, it made ``to_zarr`` round the scaled values
    back into integers or the input's packing. Other attributes (a
    ``long_name``) stay.
    """
    out = array.copy(data=values)
    out.encoding = {}
    out.attrs = {k: v for k, v in array.attrs.items() if k not in _VALUE_ATTRS}
    return out


def _refuse_repeats(names: Sequence[Any], where: str) -> None:
    """A :class:`ColumnError` naming the first feature name that appears more than once."""
    seen: set[Any] = set()
    for name in names:
        if name in seen:
            count = sum(1 for n in names if n == name)
            raise ColumnError(f"feature name {name!r} appears {count} times{where}; feature names must be unique")
        seen.add(name)


def _concat_take(parts: list[Any], index: np.ndarray) -> Any:
    return type(parts[0]).concat(parts).take(index)


def _label_grid(var: Any, arr: Any, other: Sequence[Any], order: Sequence[str]) -> np.ndarray:
    """Feature names of ``var``'s cells, shaped as its ``other`` dims; labels listed in the dims' ``order``."""
    shape = tuple(arr.sizes[d] for d in other)
    if not other:
        return np.array(str(var), dtype=object).reshape(())
    labels = [
        [str(v) for v in (arr[d].values if d in arr.coords else range(arr.sizes[d]))] for d in other
    ]
    rank = [[str(d) for d in other].index(d) for d in order]  # the k-th named label is that of dim rank[k]
    grid = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        grid[idx] = f"{var}[{','.join(labels[k][idx[k]] for k in rank)}]"
    return grid


def view_of(
    data: Any,
    feature_names: Sequence[Any] | None = None,
    reduce_dims: Sequence[str] | None = None,
    feature_dims: dict[str, list[str]] | None = None,
) -> View:
    """The :class:`View` for ``data`` (``reduce_dims``, ``feature_dims``: xarray only, see :class:`XarrayView`).

    Raises
    ------
    DataError
        ``data`` is of a kind scalepipe does not accept, or an array is not 2-D.
    """
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return FrameView(data, "pandas")
    if _is_instance(data, "dask.dataframe", "DataFrame"):
        return FrameView(data, "dask.dataframe")
    if _is_instance(data, "xarray", "DataArray") or _is_instance(data, "xarray", "Dataset"):
        return XarrayView(data, reduce_dims, feature_dims)
    is_dask = _is_instance(data, "dask.array", "Array")
    if isinstance(data, np.ma.MaskedArray):  # its mask would be ignored: the masked values fitted and scaled
        raise DataError("masked arrays are not read (their mask would be ignored); pass x.filled(np.nan): NaN is a missing value")
    if isinstance(data, np.ndarray) or is_dask:
        if data.ndim != 2:
            raise DataError(
                f"expected a 2-D array (rows x features), got shape {data.shape}; "
                "reshape it, or wrap it in an xarray.DataArray to name the dims to reduce over"
            )
        n = data.shape[1]
        if n != n:
            raise DataError(
                "the array's number of columns is unknown (NaN); give it known chunk sizes first "
                "(x.compute_chunk_sizes(), or the shape to da.from_delayed)"
            )
        if isinstance(feature_names, (str, bytes)):  # "ab" was taken as the names 'a' and 'b'
            raise ParameterError("feature_names", f"a sequence of names, one per column, not the string {feature_names!r}")
        names = list(feature_names) if feature_names is not None else list(range(n))
        if len(names) != n:
            raise DataError(f"feature_names has {len(names)} names for an array of {n} columns")
        _refuse_repeats(names, " in feature_names")
        grid = np.empty(n, dtype=object)
        grid[:] = names
        return ArrayView(data, (0,), grid, "dask.array" if is_dask else "numpy")
    raise DataError(
        f"cannot scale a {type(data).__module__}.{type(data).__name__}; pass a numpy array, "
        "pandas or dask DataFrame, dask array, or xarray DataArray/Dataset"
    )
