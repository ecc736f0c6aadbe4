"""Synthetic demo data for the quickstart: a small table with the shapes that break scalers.

Columns: ``sensor_id`` (string), ``temperature`` (normal), ``pressure`` (a large
offset with a small spread), ``income`` (lognormal, heavy tail), ``reading``
(float32), ``calibration`` (constant), ``visits`` (integers), with NaNs in
several columns. Files appear only when complete (staging folder + rename).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

__all__ = ["demo_frame", "write_demo_table"]


def demo_frame(rows: int, seed: int = 0):
    """The synthetic table as a pandas DataFrame."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "sensor_id": [f"s{k:03d}" for k in rng.integers(0, 50, rows)],
            "temperature": rng.normal(15.0, 8.0, rows),
            "pressure": 101325.0 + rng.normal(0.0, 0.05, rows),
            "income": rng.lognormal(10.0, 1.0, rows),
            "reading": rng.normal(0.0, 1.0, rows).astype(np.float32),
            "calibration": np.full(rows, 1.5),
            "visits": rng.integers(0, 1000, rows),
        }
    )
    for col, share in (("temperature", 0.02), ("income", 0.05), ("reading", 0.01)):
        df.loc[rng.random(rows) < share, col] = np.nan
    return df


def write_demo_table(path: str | os.PathLike[str], rows: int = 100_000, files: int = 8, seed: int = 0) -> None:
    """Write the demo table as ``files`` Parquet files in the folder ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        df = demo_frame(rows, seed)
        for i, part in enumerate(np.array_split(np.arange(rows), files)):
            table = pa.Table.from_pandas(df.iloc[part], preserve_index=False)
            pq.write_table(table, staging / f"part.{i:05d}.parquet")
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
