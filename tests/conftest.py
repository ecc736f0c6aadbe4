"""Shared fixtures: a real ``distributed`` cluster on loopback, and test data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def client():
    """A client of a 2-worker, process-based LocalCluster bound to 127.0.0.1."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit="2GiB",
    ) as cluster, distributed.Client(cluster) as c:
        yield c


def mixed_frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A table with the shapes that break naive scalers: offsets, tiny spreads,
    heavy tails, a constant column, NaNs, float32, integers and a string id."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "offset": 1e9 + rng.standard_normal(n),
            "tiny": 1e12 + 1e-3 * rng.random(n),
            "lognormal": rng.lognormal(0.0, 2.0, n),
            "f32": (1e4 + rng.standard_normal(n)).astype(np.float32),
            "const": np.full(n, 7.25),
            "count": rng.integers(-500, 500, n),
            "id": [f"row{i}" for i in range(n)],
        }
    )
    for col in ("offset", "lognormal", "f32"):
        df.loc[rng.random(n) < 0.05, col] = np.nan
    return df
