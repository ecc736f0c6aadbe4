"""Column handling for tables: numeric detection, float64 extraction, rebuild.

pandas only (no Dask): used by the in-memory path and, per partition, by the
Dask orchestration, so both see a table the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def is_numeric(dtype: object) -> bool:
    """Whether a column of this dtype is scaled: integers and floats, nullable or not (not bool)."""
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def float_values(df: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The columns as one float64 array (rows x columns), missing values as NaN.

    Nullable integer/float columns (``pd.NA``) become NaN; the caller's frame is
    not modified.
    """
    if not len(columns):
        return np.empty((len(df), 0))
    return df[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)


def output_dtype(dtype: object) -> np.dtype:
    """The dtype a scaled column gets: float32 stays float32, everything else float64."""
    np_dtype = getattr(dtype, "numpy_dtype", dtype)
    return np.dtype(np.float32) if np.dtype(np_dtype) == np.float32 else np.dtype(np.float64)


def replace_columns(df: pd.DataFrame, columns: Sequence[str], values: np.ndarray) -> pd.DataFrame:
    """A new frame equal to ``df`` with ``columns`` replaced by ``values`` (column order kept)."""
    position = {c: i for i, c in enumerate(columns)}
    data = {
        c: (values[:, position[c]].astype(output_dtype(df[c].dtype), copy=False) if c in position else df[c])
        for c in df.columns
    }
    return pd.DataFrame(data, index=df.index, columns=df.columns)
