"""Partition scope (batch normalization, training mode) against an independent numpy reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe.errors import DataError


def exact_mean_var(b):
    """Correctly rounded column mean and the biased variance (numpy's own mean drifts on 1e6 + N(0,1))."""
    cols = [c[~np.isnan(c)] for c in b.T]
    n = np.array([len(c) for c in cols])
    mean = np.array([float(sum(map(Fraction, c), Fraction(0)) / len(c)) for c in cols])
    var = np.array([math.fsum((c - m) ** 2) / len(c) - (math.fsum(c - m) / len(c)) ** 2 for c, m in zip(cols, mean)])
    return mean, var, n


def numpy_batchnorm(batches, gamma, beta, eps, momentum):
    """Reference: PyTorch BatchNorm1d training mode, written with numpy, batch by batch."""
    outs = []
    running_mean = np.zeros(batches[0].shape[1])
    running_var = np.ones(batches[0].shape[1])
    for k, b in enumerate(batches, start=1):
        mean, var, n = exact_mean_var(b)
        outs.append(gamma * (b - mean) / np.sqrt(var + eps) + beta)
        factor = 1.0 / k if momentum is None else momentum
        running_mean = (1 - factor) * running_mean + factor * mean
        running_var = (1 - factor) * running_var + factor * var * n / (n - 1)
    return outs, running_mean, running_var


def uneven_parts(k: int, seed: int = 0) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 60, k)
    parts = []
    for i, n in enumerate(sizes):
        df = pd.DataFrame({"a": rng.normal(3 * i, 1 + i, n), "b": 1e6 + rng.standard_normal(n), "id": ["x"] * n})
        df.loc[rng.random(n) < 0.1, "a"] = np.nan
        parts.append(df)
    return parts


@pytest.mark.parametrize("k", [1, 2, 7])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_partition_scope_matches_numpy_batchnorm(client, k, momentum):
    dd = pytest.importorskip("dask.dataframe")
    parts = uneven_parts(k, seed=k)
    whole = pd.concat(parts, ignore_index=True)
    ddf = dd.from_delayed([__import__("dask").delayed(p) for p in parts], meta=parts[0].iloc[:0])
    rule = sp.BatchNorm(["a", "b"], gamma=1.5, beta=-0.5, eps=1e-3, momentum=momentum)
    model = sp.fit(ddf, [rule], scope="partition")
    ref_out, ref_mean, ref_var = numpy_batchnorm([p[["a", "b"]].to_numpy() for p in parts], 1.5, -0.5, 1e-3, momentum)
    out = model.transform(ddf, stats="batch").compute()
    # tolerances: per-batch outputs 1e-10, running statistics 1e-12 (the bars)
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), np.vstack(ref_out), rtol=1e-10, atol=1e-10)
    run = model.batches.running
    np.testing.assert_allclose(run.mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(run.var, ref_var, rtol=1e-12)
    assert run.num_batches == k and len(model.batches.labels) == k
    # inference uses the running statistics
    expected = 1.5 * (whole[["a", "b"]].to_numpy() - ref_mean) / np.sqrt(ref_var + 1e-3) - 0.5
    np.testing.assert_allclose(model.transform(whole)[["a", "b"]].to_numpy(), expected, rtol=1e-12, atol=1e-12)
    assert out["id"].tolist() == whole["id"].tolist()


def test_batch_rows_split_partitions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(23, 3))
    model = sp.fit(x, [sp.ZScore()], scope="partition", batch_rows=5)
    assert model.batches.moments.count.shape == (5, 3)
    out = model.transform(x, stats="batch")
    for a in range(0, 23, 5):
        b = x[a : a + 5]
        np.testing.assert_allclose(out[a : a + 5], (b - b.mean(0)) / b.std(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.moments.mean, x.mean(0), rtol=1e-12)


def test_small_batch_is_an_error_naming_it():
    x = np.random.default_rng(2).normal(size=(11, 2))
    with pytest.raises(DataError, match=r"partition 0 batch 2: a batch of 1 row"):
        sp.fit(x, [sp.ZScore()], scope="partition", batch_rows=5)


def test_dask_array_partitions_are_row_chunks(client):
    da = pytest.importorskip("dask.array")
    x = np.random.default_rng(3).normal(5, 2, size=(40, 4))
    dx = da.from_array(x, chunks=(10, 2))
    model = sp.fit(dx, [sp.BatchNorm()], scope="partition")
    assert model.batches.running.num_batches == 4
    out = model.transform(dx, stats="batch").compute()
    ref, *_ = numpy_batchnorm([x[i : i + 10] for i in range(0, 40, 10)], 1.0, 0.0, 1e-5, 0.1)
    np.testing.assert_allclose(out, np.vstack(ref), rtol=1e-10, atol=1e-10)


def test_partition_model_round_trip_and_global_inference(tmp_path):
    x = np.random.default_rng(4).normal(size=(30, 2))
    model = sp.fit(x, [sp.BatchNorm()], scope="partition", batch_rows=10, inference_stats="global")
    model.save(tmp_path / "s.json")
    loaded = sp.load(tmp_path / "s.json")
    assert loaded.batches.moments.identical(model.batches.moments)
    assert loaded.batches.labels == model.batches.labels
    np.testing.assert_array_equal(loaded.transform(x), model.transform(x))
    np.testing.assert_allclose(loaded.transform(x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-12)


def test_partial_fit_continues_running_stats():
    rng = np.random.default_rng(5)
    parts = [rng.normal(i, 1, size=(8, 2)) for i in range(3)]
    one = sp.fit(parts[0], [sp.BatchNorm(momentum=0.3)], scope="partition")
    for p in parts[1:]:
        one.partial_fit(p)
    _, mean, var = numpy_batchnorm(parts, 1.0, 0.0, 1e-5, 0.3)
    np.testing.assert_allclose(one.batches.running.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(one.batches.running.var, var, rtol=1e-12)
    np.testing.assert_allclose(one.moments.mean, np.vstack(parts).mean(0), rtol=1e-12)


def test_torch_state_dict():
    x = np.random.default_rng(6).normal(2, 3, size=(50, 3))
    model = sp.fit(x, [sp.BatchNorm([0, 1], gamma=2.0, beta=0.1), sp.ZScore()], scope="partition", batch_rows=10)
    sd = model.to_torch_state_dict()
    assert sd["weight"].tolist() == [2.0, 2.0] and sd["bias"].tolist() == [0.1, 0.1]
    assert int(sd["num_batches_tracked"]) == 5
    np.testing.assert_array_equal(sd["running_mean"], model.batches.running.mean[:2])
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(2, eps=1e-5).double()
    bn.load_state_dict({k: torch.as_tensor(v) for k, v in sd.items()})
    bn.eval()
    got = bn(torch.as_tensor(x[:, :2])).detach().numpy()
    np.testing.assert_allclose(got, model.transform(x)[:, :2], rtol=1e-10, atol=1e-10)
