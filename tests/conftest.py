"""Shared fixtures: a real ``distributed`` cluster on loopback, and test data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def _shared_cluster_client():
    """A client of a 2-worker, process-based LocalCluster bound to 127.0.0.1, started once."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        memory_limit="2GiB",
    ) as cluster:
        c = distributed.Client(cluster, set_as_default=False)
        try:
            yield c
        finally:
            c.close()


@pytest.fixture
def client(_shared_cluster_client):
    """The shared cluster's client, current for this test only.

    Entering it as the current client just for the test keeps other tests
    (which start or connect to clusters of their own) from computing on it.
    """
    with _shared_cluster_client.as_current():
        yield _shared_cluster_client


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


@pytest.fixture(autouse=True)
def _no_stale_distributed_scheduler():
    """Forget a ``scheduler: dask.distributed`` setting left behind by a closed client.

    A client made with ``set_as_default=True`` sets that Dask config globally;
    closing clients out of creation order can leave it set with no client
    alive, and the next test's in-process ``compute`` then fails.
    """
    yield
    import dask

    if dask.config.get("scheduler", None) in ("dask.distributed", "distributed"):
        try:
            from distributed import default_client

            default_client()
        except (ImportError, ValueError):
            dask.config.config.pop("scheduler", None)
