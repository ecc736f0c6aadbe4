"""Column handling for tables: numeric detection, float64 extraction, rebuild.

pandas only (no Dask): used by the in-memory path and, per partition, by the
Dask orchestration, so both see a table the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import buffers
from .errors import ColumnError
from .stats import KERNEL_DTYPES, Columns


def _in_place(dtype: object) -> bool:
    """Whether the kernels read a column of this dtype in place (else it becomes float64)."""
    return isinstance(dtype, np.dtype) and dtype in KERNEL_DTYPES


def is_numeric(dtype: object) -> bool:
    """Whether a column of this dtype is scaled: integers and floats, nullable or not.

    Not booleans, complex numbers (their imaginary part would be dropped;
    numpy input refuses them too), sparse columns, or Arrow-backed ones
    other than integers and floats (decimals pass through, as they do when
    pandas holds them as objects).
    """
    api = pd.api.types
    if isinstance(dtype, pd.SparseDtype) or api.is_complex_dtype(dtype) or api.is_bool_dtype(dtype):
        return False
    if isinstance(dtype, pd.ArrowDtype):
        import pyarrow as pa

        return pa.types.is_integer(dtype.pyarrow_dtype) or pa.types.is_floating(dtype.pyarrow_dtype)
    return api.is_numeric_dtype(dtype)


def float_values(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The columns as one float64 array (rows x columns), missing values as NaN.

    Nullable integer/float columns (``pd.NA``) become NaN; the caller's frame is
    not modified.
    """
    if not len(columns):
        return np.empty((len(df), 0))
    return df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)


def _column(df: pd.DataFrame, name: object) -> pd.Series:
    column = df[name]
    if isinstance(column, pd.DataFrame):
        raise ColumnError(
            f"column {name!r} appears {column.shape[1]} times in the frame; column names must be unique"
        )
    return column


def column_arrays(df: pd.DataFrame, columns: Sequence[object]) -> Columns:
    """The columns as :class:`~scalepipe.stats.Columns`, for the statistics kernels.

    A column of a dtype the kernels read in place (float64, float32, int64,
    int32) comes as a view of pandas' own storage (for a frame read from
    Parquet, of Arrow's buffers), so no copy is made; the others (nullable,
    small integers) as float64 with missing values as NaN. The caller's frame
    is not modified.
    """
    arrays = []
    for name in columns:
        column = _column(df, name)
        in_place = _in_place(column.dtype)
        arrays.append(column.to_numpy() if in_place else column.to_numpy(dtype=np.float64, na_value=np.nan))
    return Columns(arrays, len(df))


def column_blocks(df: pd.DataFrame, columns: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The columns as 2-D blocks (rows x columns) of one dtype each, with their positions in ``columns``.

    Columns of a dtype the kernels read in place (float64, float32, int64,
    int32) come as views of pandas' own storage where it allows, so no copy
    is made; the others (nullable, small integers) as float64 with missing
    values as NaN. The caller's frame is not modified.
    """
    groups: dict[np.dtype | None, list[int]] = {}
    for i, c in enumerate(columns):
        dtype = _column(df, c).dtype
        groups.setdefault(dtype if _in_place(dtype) else None, []).append(i)
    for dtype, positions in groups.items():
        names = [columns[i] for i in positions]
        block = df[names]
        values = block.to_numpy() if dtype is not None else block.to_numpy(dtype=np.float64, na_value=np.nan)
        yield np.asarray(positions, dtype=np.int64), values


def map_columns(
    df: pd.DataFrame, columns: Sequence[str], fn: Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
) -> pd.DataFrame:
    """A new frame equal to ``df`` with ``columns`` replaced by ``fn(values, positions, df)``.

    ``fn`` is applied to all the columns at once as :func:`column_arrays` when
    it ``reads_columns`` (no copy of the input), else to each block of
    :func:`column_blocks`; the result keeps the column order, and each scaled
    column gets :func:`output_dtype`.
    """
    scaled: dict[str, np.ndarray] = {}
    if getattr(fn, "reads_columns", False):
        blocks: Iterable[tuple[np.ndarray, Any]] = [(np.arange(len(columns)), column_arrays(df, columns))]
    else:
        blocks = column_blocks(df, columns)
    for positions, values in blocks:
        out = fn(values, positions, df)
        for k, p in enumerate(positions):
            scaled[columns[p]] = out[:, k]
    data = {  # by position: a column passed through may share its name with another
        i: (_as_dtype(scaled[c], output_dtype(df[c].dtype)) if c in scaled else df.iloc[:, i])
        for i, c in enumerate(df.columns)
    }
    out = pd.DataFrame(data, index=df.index, copy=False)
    out.columns = df.columns
    return out


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``: themselves, or a copy in recycled memory (:mod:`~scalepipe.buffers`)."""
    if values.dtype == dtype:
        return values
    converted = buffers.empty(values.shape, dtype)
    np.copyto(converted, values, casting="same_kind")
    return converted


def output_dtype(dtype: object) -> np.dtype:
    """The dtype a scaled column gets: its float dtype (nullable ones as numpy's), float64 for integers.

    As :func:`~scalepipe.methods.affine_dtype` for arrays.
    """
    np_dtype = np.dtype(getattr(dtype, "numpy_dtype", dtype))
    return np_dtype if np_dtype.kind == "f" else np.dtype(np.float64)
