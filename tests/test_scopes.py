"""Partition scope (batch normalization, training mode) against an independent numpy reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe.errors import ColumnError, DataError, ParameterError
from scalepipe.maps import key_positions


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
    one = sp.fit(parts[0], [sp.BatchNorm(momentum=0.3)], scope="partition", partition_labels=["a.parquet"])
    for i, p in enumerate(parts[1:]):
        one.partial_fit(p, partition_labels=[f"{'bc'[i]}.parquet"] if i == 0 else None)
    _, mean, var = numpy_batchnorm(parts, 1.0, 0.0, 1e-5, 0.3)
    np.testing.assert_allclose(one.batches.running.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(one.batches.running.var, var, rtol=1e-12)
    np.testing.assert_allclose(one.moments.mean, np.vstack(parts).mean(0), rtol=1e-12)
    # the update's batches are named by their partitions' labels, as at fit
    assert one.batches.labels == ["partition 0 (a.parquet) batch 0", "partition 1 (b.parquet) batch 0", "partition 2 batch 0"]


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
    # one module has one eps: rules with different ones were exported, one column off by ~2 whatever the module's eps
    mixed = sp.fit(x, [sp.BatchNorm([0], eps=1e-3), sp.BatchNorm([1], eps=1e-5)])
    with pytest.raises(ParameterError, match=r"eps: the batchnorm rules have different eps \(1e-05, 0.001\)"):
        mixed.to_torch_state_dict()


def keyed_frame(n: int = 3000, keys: int = 40, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sensor = rng.integers(0, keys, n)
    df = pd.DataFrame(
        {
            "sensor": np.array([f"s{k}" for k in sensor]),
            "temp": 10.0 * sensor + rng.normal(0, 1 + sensor % 3, n),
            "load": 1e6 + rng.random(n),
        }
    )
    df.loc[rng.random(n) < 0.05, "temp"] = np.nan
    lonely = pd.DataFrame({"sensor": ["solo"], "temp": [3.0], "load": [5.0]})
    return pd.concat([df, lonely], ignore_index=True)


def test_key_scope_matches_pandas_groupby(client):
    dd = pytest.importorskip("dask.dataframe")
    df = keyed_frame()
    model = sp.fit(dd.from_pandas(df, npartitions=5), [sp.ZScore(["temp", "load"])], scope="key", key="sensor")
    grouped = df.groupby("sensor")
    mean, std = grouped[["temp", "load"]].mean(), grouped[["temp", "load"]].std(ddof=0)
    keys = list(model.groups.keys)
    assert sorted(keys) == keys and set(keys) == set(df["sensor"])
    # tolerance: 1e-12 relative against pandas groupby (its mean drifts on load = 1e6 + U; compare var loosely there)
    np.testing.assert_allclose(model.groups.moments.mean, mean.loc[keys].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(model.groups.moments.var()), std.loc[keys].fillna(0).to_numpy(), rtol=1e-9, atol=1e-12)
    assert model.feature_names == ["temp", "load"]
    out = model.transform(df)
    expected = (df["temp"] - df.groupby("sensor")["temp"].transform("mean")) / df.groupby("sensor")["temp"].transform(
        lambda s: s.std(ddof=0)
    )
    solo = df["sensor"] == "solo"
    np.testing.assert_allclose(out.loc[~solo, "temp"], expected[~solo], rtol=1e-10, atol=1e-10)
    # one row: zero variance -> constant -> unit scale: x - mean = 0
    assert out.loc[solo, "temp"].tolist() == [0.0] and out.loc[solo, "load"].tolist() == [0.0]


def test_key_scope_unseen_key_falls_back_to_global(tmp_path):
    df = keyed_frame(500, keys=5)
    model = sp.fit(df, [sp.MinMax(["temp"])], scope="key", key="sensor")
    model.save(tmp_path / "k.json")
    loaded = sp.load(tmp_path / "k.json")
    new = pd.DataFrame({"sensor": ["s1", "never"], "temp": [12.0, 12.0], "load": [0.0, 0.0]})
    out = loaded.transform(new)
    g = df[df["sensor"] == "s1"]["temp"]
    assert out["temp"].iloc[0] == pytest.approx((12.0 - g.min()) / (g.max() - g.min()), rel=1e-12)
    t = df["temp"]
    assert out["temp"].iloc[1] == pytest.approx((12.0 - t.min()) / (t.max() - t.min()), rel=1e-12)
    assert loaded.unseen_rows(new) == 1
    np.testing.assert_allclose(loaded.inverse_transform(out)["temp"], new["temp"], rtol=1e-12)


def test_key_scope_integer_keys_many_distinct(client):
    dd = pytest.importorskip("dask.dataframe")
    rng = np.random.default_rng(8)
    n, keys = 400_000, 100_000
    key = rng.integers(0, keys, n)
    df = pd.DataFrame({"k": key, "v": key + rng.standard_normal(n)})
    model = sp.fit(dd.from_pandas(df, npartitions=8), [sp.ZScore(["v"])], scope="key", key="k")
    assert len(model.groups.keys) == df["k"].nunique()
    assert model.feature_names == ["v"]
    ref = df.groupby("k")["v"].mean()
    np.testing.assert_allclose(model.groups.moments.mean[:, 0], ref.loc[model.groups.keys].to_numpy(), rtol=1e-12)
    out = model.transform(dd.from_pandas(df, npartitions=8)).compute()
    assert np.isfinite(out["v"]).all()


def test_partial_fit_key_scope():
    df = keyed_frame(800)
    model = sp.fit(df.iloc[:300], [sp.ZScore(["temp"])], scope="key", key="sensor").partial_fit(df.iloc[300:])
    whole = sp.fit(df, [sp.ZScore(["temp"])], scope="key", key="sensor")
    assert list(model.groups.keys) == list(whole.groups.keys)
    np.testing.assert_allclose(model.groups.moments.mean, whole.groups.moments.mean, rtol=1e-12)
    np.testing.assert_allclose(model.groups.moments.m2, whole.groups.moments.m2, rtol=1e-12, atol=1e-300)


def test_large_tables_go_to_npz_beside_the_json(tmp_path):
    rng = np.random.default_rng(9)
    n = 60_000
    df = pd.DataFrame({"k": np.array([f"key{i}" for i in rng.integers(0, 25_000, n)]), "v": rng.normal(size=n)})
    model = sp.fit(df, [sp.ZScore(["v"])], scope="key", key="k")
    model.save(tmp_path / "stats.json")
    sidecars = list(tmp_path.glob("scalepipe-tables.*.npz"))
    assert len(sidecars) == 1
    assert "key0" not in (tmp_path / "stats.json").read_text()
    loaded = sp.load(tmp_path / "stats.json")
    assert list(loaded.groups.keys) == list(model.groups.keys)
    assert loaded.groups.moments.identical(model.groups.moments)
    pd.testing.assert_frame_equal(loaded.transform(df), model.transform(df))
    with np.load(sidecars[0], allow_pickle=False) as npz:  # plain arrays only
        assert all(npz[k].dtype != object for k in npz.files)
    sidecars[0].write_bytes(sidecars[0].read_bytes()[:-10])
    with pytest.raises(sp.ArtifactError, match="does not match the recorded checksum"):
        sp.load(tmp_path / "stats.json")
    sidecars[0].unlink()
    with pytest.raises(sp.ArtifactError, match="cannot be read"):
        sp.load(tmp_path / "stats.json")


def test_large_batch_table_round_trip(tmp_path):
    x = np.random.default_rng(10).normal(size=(30_000, 2))
    model = sp.fit(x, [sp.BatchNorm()], scope="partition", batch_rows=2)
    model.save(tmp_path / "b.json")
    loaded = sp.load(tmp_path / "b.json")
    assert loaded.batches.labels == model.batches.labels
    assert loaded.batches.moments.identical(model.batches.moments)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_partition_scope_matches_torch_batchnorm1d(momentum):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.normal(3, 2, size=(70, 3))
    model = sp.fit(x, [sp.BatchNorm(gamma=1.0, beta=0.0, eps=1e-5, momentum=momentum)], scope="partition", batch_rows=16)
    bn = torch.nn.BatchNorm1d(3, eps=1e-5, momentum=momentum, affine=False).double()
    bn.train()
    outs = [bn(torch.as_tensor(x[a : a + 16])).detach().numpy() for a in range(0, 70, 16)]
    # tolerances: per-batch outputs 1e-10, running statistics 1e-12
    np.testing.assert_allclose(model.transform(x, stats="batch"), np.vstack(outs), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(model.batches.running.mean, bn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(model.batches.running.var, bn.running_var.numpy(), rtol=1e-12)
    assert model.batches.running.num_batches == int(bn.num_batches_tracked)


def test_torch_export_of_a_global_model_matches_transform():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(13).normal(1, 4, size=(200, 2))
    model = sp.fit(x, [sp.BatchNorm(gamma=0.5, beta=2.0)])
    bn = torch.nn.BatchNorm1d(2).double()
    bn.load_state_dict({k: torch.as_tensor(v) for k, v in model.to_torch_state_dict().items()})
    bn.eval()
    np.testing.assert_allclose(bn(torch.as_tensor(x)).detach().numpy(), model.transform(x), rtol=1e-12, atol=1e-12)


def batchnorm_eval(sd: dict[str, np.ndarray], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """``torch.nn.BatchNorm1d`` in eval mode, as PyTorch documents it."""
    return (x - sd["running_mean"]) / np.sqrt(sd["running_var"] + eps) * sd["weight"] + sd["bias"]


def test_torch_export_holds_the_statistics_and_constant_policies_transform_uses():
    """It exported the running statistics under inference_stats='global'
    (outputs off by units) and a constant column's statistics under
    constant_policy zero or passthrough (316 where scalepipe gives 0 or the
    input); a key-scope model exported its global statistics."""
    rng = np.random.default_rng(21)
    x = np.vstack([rng.normal(0, 1, (100, 1)), rng.normal(5, 3, (100, 1))])
    flat = np.column_stack([np.full(6, 3.0), np.full(6, 3.0), rng.normal(1, 2, 6)])
    shifted = flat + np.array([1.0, -2.5, 0.5])
    cases = [
        (sp.fit(x, [sp.BatchNorm()], scope="partition", batch_rows=100, inference_stats="global"), x),
        (sp.fit(x, [sp.BatchNorm()], scope="partition", batch_rows=100), x),
        (sp.fit(flat, [sp.BatchNorm([0], constant_policy="zero"), sp.BatchNorm([1], constant_policy="passthrough"), sp.BatchNorm([2])]), shifted),
    ]
    for model, data in cases:
        sd = model.to_torch_state_dict()
        # tolerance: an ulp or two (the module divides where scalepipe multiplies by the inverse)
        np.testing.assert_allclose(batchnorm_eval(sd, data), model.transform(data), rtol=1e-13, atol=1e-13)
    assert batchnorm_eval(cases[2][0].to_torch_state_dict(), shifted)[:, :2].tolist() == [[0.0, 0.5]] * 6
    torch = pytest.importorskip("torch")
    for model, data in cases:
        bn = torch.nn.BatchNorm1d(data.shape[1], eps=1e-5).double()
        bn.load_state_dict({k: torch.as_tensor(v) for k, v in model.to_torch_state_dict().items()})
        bn.eval()
        np.testing.assert_allclose(bn(torch.as_tensor(data)).detach().numpy(), model.transform(data), rtol=1e-13, atol=1e-13)


def test_a_key_scope_model_has_no_torch_export():
    df = pd.DataFrame({"k": [1, 2] * 5, "v": np.arange(10.0)})
    with pytest.raises(ParameterError, match="scope: a key-scope model has statistics per key"):
        sp.fit(df, [sp.BatchNorm(["v"])], scope="key", key="k").to_torch_state_dict()


def test_key_scope_needs_its_key_column_and_never_scales_it():
    """A key model given data without the key column says so, naming it
    (it raised a bare KeyError, or said the fitted columns were missing for
    an array); a rule naming the key column says it is the key."""
    from scalepipe.errors import ColumnError

    df = pd.DataFrame({"k": [1, 2] * 10, "v": np.arange(20.0), "w": np.arange(20.0) ** 2})
    model = sp.fit(df, scope="key", key="k")
    for call in (model.transform, model.inverse_transform, model.unseen_rows):
        with pytest.raises(ColumnError, match="key column 'k': this model has statistics per 'k' value and needs it, got a table without it"):
            call(df.drop(columns="k"))
    with pytest.raises(ColumnError, match="got ndarray data"):
        model.transform(df[["v", "w"]].to_numpy())
    with pytest.raises(ColumnError, match=r"scalers\[0\] \(zscore\): column 'k' is the key column; it cannot also be scaled"):
        sp.fit(df, [sp.ZScore(["k", "v"])], scope="key", key="k")


def test_scope_settings_outside_their_scope_are_refused():
    """As in the config: batch_rows and key belong to their scopes, and a
    model without batches cannot scale by batch (these were accepted and ignored)."""
    from scalepipe.errors import ParameterError

    x = np.random.default_rng(0).standard_normal((40, 2))
    with pytest.raises(ParameterError, match="batch_rows: is only used with scope 'partition' \\(scope is 'global'\\), got 10"):
        sp.fit(x, batch_rows=10)
    with pytest.raises(ParameterError, match="key: is only used with scope 'key' \\(scope is 'partition'\\), got 'k'"):
        sp.fit(x, scope="partition", key="k")
    with pytest.raises(ParameterError, match="stats: 'batch' needs a model fitted with scope 'partition', not 'global'"):
        sp.fit(x).transform(x, stats="batch")


def test_partition_scope_skips_an_empty_partition():
    """An empty partition (a CSV block without rows, a filtered-out file) has
    no batch; it was 'a batch of 0 row(s)', an error. The other batches are
    scaled with their own statistics, as numpy computes them."""
    import dask
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"v": rng.standard_normal(30), "w": 5 + rng.standard_normal(30)})
    parts = [df.iloc[:10], df.iloc[10:10], df.iloc[10:30]]
    frame = dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=df.iloc[:0])
    with dask.config.set(scheduler="sync"):
        model = sp.fit(frame, scope="partition", batch_rows=10)
        out = model.transform(frame, stats="batch").compute()
    assert model.batches.labels == ["partition 0 batch 0", "partition 2 batch 0", "partition 2 batch 1"]
    expected = pd.concat([(b - b.mean()) / b.std(ddof=0) for b in (df.iloc[:10], df.iloc[10:20], df.iloc[20:])])
    np.testing.assert_allclose(out.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-14)


def test_partition_scope_skips_an_empty_array_chunk():
    """A chunk emptied by a boolean filter (or given as 0 rows) failed with a
    raw 'cannot reshape array of size 0'; frames skipped such partitions."""
    import dask
    import dask.array as da
    import xarray as xr

    x = np.random.default_rng(4).normal(3, 2, (40, 2))
    keep = np.ones(40, bool)
    keep[10:20] = False
    filtered = da.from_array(x, chunks=(10, 2))[da.from_array(keep, chunks=10)]
    given = xr.DataArray(x[keep], dims=("t", "c")).chunk({"t": (10, 0, 10, 10)})
    expected = np.vstack([(b - b.mean(0)) / b.std(0) for b in (x[:10], x[20:30], x[30:])])
    with dask.config.set(scheduler="sync"):
        for data in (filtered, given):
            model = sp.fit(data, [sp.ZScore()], scope="partition")
            assert model.batches.labels == ["partition 0 batch 0", "partition 2 batch 0", "partition 3 batch 0"]
            out = np.asarray(model.transform(data, stats="batch").compute())
            np.testing.assert_allclose(out, expected, rtol=0, atol=1e-14)


def test_partition_numbers_continue_after_an_empty_partition_and_no_rows_is_an_error():
    import dask
    import dask.dataframe as dd

    from scalepipe.errors import DataError

    df = pd.DataFrame({"v": np.arange(20.0), "w": np.arange(20.0) ** 2})

    def frame(parts):
        return dd.from_delayed([dask.delayed(lambda p: p)(p) for p in parts], meta=df.iloc[:0])

    with dask.config.set(scheduler="sync"):
        model = sp.fit(frame([df.iloc[:10], df.iloc[10:10]]), scope="partition")
        model.partial_fit(frame([df.iloc[10:20]]))
        assert model.batches.labels == ["partition 0 batch 0", "partition 1 batch 0"]  # after the highest, not the count
        with pytest.raises(DataError, match="the data has no rows to fit"):
            sp.fit(frame([df.iloc[:0]]), scope="partition")


def test_a_key_with_too_few_values_for_ddof_uses_the_global_statistics():
    """Its standard deviation is undefined (count <= ddof): its rows came out
    NaN, silently; they are scaled with the global statistics, as an unseen
    key's, in that column only."""
    df = pd.DataFrame({"k": [1, 1, 2, 2, 2, 2], "v": [1.0, 2, 3, 4, 5, 7], "w": [1.0, 2, 3, np.nan, np.nan, np.nan]})
    model = sp.fit(df, sp.ZScore(ddof=2), scope="key", key="k")
    got = model.transform(df)
    v, w = df["v"].to_numpy(), df["w"].to_numpy()
    np.testing.assert_allclose(got["v"][:2], (v[:2] - v.mean()) / v.std(ddof=2), rtol=1e-15)  # key 1: global
    np.testing.assert_allclose(got["v"][2:], (v[2:] - v[2:].mean()) / v[2:].std(ddof=2), rtol=1e-15)  # key 2: its own
    # w: key 1 has 2 values, key 2 one: both use the global statistics; NaN stays NaN
    np.testing.assert_allclose(got["w"], (w - np.nanmean(w)) / np.nanstd(w, ddof=2), rtol=1e-15)


def test_integer_keys_beyond_2_53_with_nulls_stay_apart(tmp_path):
    """A nullable integer key went through float64: 2**53 and 2**53 + 1
    became one key (from Parquet with a null in any file, or a pandas Int64
    column), and their rows were scaled together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalepipe import io

    big = 2**53
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"k": pa.array([big, big + 1, big, big + 1], pa.int64()), "x": [0.0, 100.0, 2.0, 102.0]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"k": pa.array([big, big + 1, None, None], pa.int64()), "x": [4.0, 104.0, 50.0, 50.0]}), tmp_path / "in" / "b.parquet")
    frame = io.read_table(str(tmp_path / "in"), "parquet").frame
    in_memory = frame.compute()
    for data in (frame, in_memory):
        model = sp.fit(data, [sp.MinMax(["x"])], scope="key", key="k")
        assert model.groups.keys.tolist() == [big, big + 1]
        got = model.transform(in_memory)["x"].to_numpy()
        np.testing.assert_array_equal(got[:6], [0.0, 0.0, 0.5, 0.5, 1.0, 1.0])  # each key its own [min, max]
        np.testing.assert_allclose(got[6:], (50.0 - 0.0) / 104.0, rtol=1e-15)  # no key: the global map
        assert model.unseen_rows(in_memory) == 0
    model.save(tmp_path / "m.json")
    np.testing.assert_array_equal(sp.load(tmp_path / "m.json").transform(in_memory)["x"].to_numpy(), got)


def test_a_constant_key_under_constant_policy_error_is_named():
    """The error said the column is constant, which it is not overall: only
    the key's values are. The fit fails, as a global fit does (it saved
    statistics that every transform then refused), and so does a
    partial_fit that makes a key constant (the model stays as it was)."""
    df = pd.DataFrame({"k": ["a", "a", "b", "b", "c"], "x": [1.0, 2.0, 5.0, 5.0, 7.0]})
    rules = [sp.MinMax(["x"], constant_policy="error")]
    with pytest.raises(DataError, match=r"column\(s\) 'x' are constant .*; in the statistics of 2 'k' value\(s\): 'b', 'c'$"):
        sp.fit(df, rules, scope="key", key="k")
    first = df.iloc[:4].assign(x=[1.0, 2.0, 5.0, 6.0])
    model = sp.fit(first, rules, scope="key", key="k")
    with pytest.raises(DataError, match=r"in the statistics of 1 'k' value\(s\): 'c'$"):
        model.partial_fit(df.iloc[4:])
    assert model.groups.keys.tolist() == ["a", "b"]
    np.testing.assert_array_equal(model.transform(first)["x"], [0.0, 1.0, 0.0, 1.0])


def test_keys_of_several_types_are_refused():
    """An object key column holding 1, True and 1.0 was grouped as one key
    (pandas hashes them alike), and a fitted True found a new 1; partial_fit
    with float keys onto integer keys failed with pandas' InvalidIndexError,
    and int64 with uint64 keys became float64 keys (inexact)."""
    mixed = pd.DataFrame({"k": pd.Series([1, 1, True, True, 1.0], dtype=object), "x": [0.0, 2.0, 100.0, 104.0, 50.0]})
    with pytest.raises(ColumnError, match=r"key column 'k' holds keys of several types \(bool, float, int\)"):
        sp.fit(mixed, [sp.MinMax(["x"])], scope="key", key="k")
    flags = sp.fit(pd.DataFrame({"k": [True, False, True, False], "x": [0.0, 10.0, 4.0, 20.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    new = pd.DataFrame({"k": pd.Series([1, 0, True, np.int64(1)], dtype=object), "x": [2.0, 15.0, 2.0, 2.0]})
    assert flags.unseen_rows(new) == 3
    np.testing.assert_allclose(flags.transform(new)["x"], [0.1, 0.75, 0.5, 0.1], rtol=0, atol=1e-15)  # unseen: the global map

    big = 2**53
    ints = sp.fit(pd.DataFrame({"k": np.array([big, big + 1]), "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    with pytest.raises(ColumnError, match=r"new rows' keys \(float64\) and the fitted keys \(int64\) do not merge exactly"):
        ints.partial_fit(pd.DataFrame({"k": [0.5], "x": [5.0]}))
    assert ints.groups.keys.tolist() == [big, big + 1]
    # integral float keys (an integer key column with a missing key, to pandas) merge as integers
    small = sp.fit(pd.DataFrame({"k": [1, 2], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    small.partial_fit(pd.DataFrame({"k": [2.0, np.nan, 3.0], "x": [5.0, 6.0, 7.0]}))
    assert small.groups.keys.dtype == np.int64 and small.groups.keys.tolist() == [1, 2, 3]
    assert small.groups.moments.count[:, 0].tolist() == [1, 2, 1]
    with pytest.raises(ColumnError, match=r"the new rows' key 'a' is text that is not an integer"):
        small.partial_fit(pd.DataFrame({"k": ["a"], "x": [5.0]}))
    # a CSV's text keys and integer keys merge as the fitted ones: integer text as integers, integers as text
    small.partial_fit(pd.DataFrame({"k": ["3", "+4"], "x": [8.0, 9.0]}))
    assert small.groups.keys.dtype == np.int64 and small.groups.keys.tolist() == [1, 2, 3, 4]
    texts = sp.fit(pd.DataFrame({"k": ["1", "02"], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    texts.partial_fit(pd.DataFrame({"k": np.array([1, 2]), "x": [5.0, 6.0]}))
    assert texts.groups.keys.tolist() == ["02", "1", "2"] and texts.groups.moments.count[:, 0].tolist() == [1, 2, 1]
    # an object column of ints (one missing) holds integer keys, whatever its dtype says
    objects = sp.fit(pd.DataFrame({"k": pd.Series([None, 1, 2], dtype=object), "x": [0.0, 1.0, 2.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    objects.partial_fit(pd.DataFrame({"k": np.array([1, 3]), "x": [5.0, 6.0]}))
    assert objects.groups.keys.tolist() == [1, 2, 3] and objects.groups.moments.count[:, 0].tolist() == [2, 1, 1]
    ints.partial_fit(pd.DataFrame({"k": np.array([2**64 - 1], np.uint64), "x": [5.0]}))
    assert ints.groups.keys.dtype == np.uint64 and ints.groups.keys.tolist() == [big, big + 1, 2**64 - 1]
    negative = sp.fit(pd.DataFrame({"k": [-1, 2], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    with pytest.raises(ColumnError, match=r"no integer type that holds both"):
        negative.partial_fit(pd.DataFrame({"k": np.array([2**64 - 1], np.uint64), "x": [5.0]}))


def test_batch_statistics_at_transform_refuse_a_batch_a_fit_refuses():
    """transform(stats="batch") scaled a last batch of one row by its own
    statistics (all zeros), where the fit refuses batches under min_batch_rows."""
    df = pd.DataFrame({"x": np.arange(10.0)})
    model = sp.fit(df, [sp.ZScore(["x"])], scope="partition", batch_rows=4)
    np.testing.assert_allclose(model.transform(df.iloc[:8], stats="batch")["x"], np.tile((np.arange(4) - 1.5) / np.std(np.arange(4)), 2))
    with pytest.raises(DataError, match=r"^rows 8 to 8 of a partition: a batch of 1 row\(s\) is smaller than min_batch_rows=2"):
        model.transform(df.iloc[:9], stats="batch")


@pytest.mark.parametrize(
    "keys",
    [
        pd.Series([None, 1, 2, 1, 2, 1], dtype=object),  # ints from JSON or a database, a missing one
        pd.Series([np.int64(v) for v in (2, 1, 2, 1, 2, 1)], dtype=object),
        pd.Series([b"a", b"b", b"a", b"b", b"a", b"b"], dtype=object),
        pd.Series([True, False, True, False, np.bool_(True), False], dtype=object),
    ],
)
def test_an_object_key_column_finds_its_own_keys(keys):
    """An object key column of ints, numpy scalars, bytes or booleans found
    none of its keys at transform (every row scaled with the global statistics)."""
    df = pd.DataFrame({"k": keys, "x": [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]})
    model = sp.fit(df, [sp.MinMax(["x"])], scope="key", key="k")
    assert model.unseen_rows(df) == 0
    out = model.transform(df)["x"]
    for key, rows in df.groupby("k", dropna=True).groups.items():
        assert sorted(out[rows].tolist()) in ([0.0, 1.0], [0.0, 0.5, 1.0]), key


def test_numbers_find_the_text_keys_of_a_csv():
    """A CSV's key column is read as text: the same keys read as numbers
    (pandas, Parquet) found none of them, every row scaled with the global
    statistics, silently. Numbers match text keys by their decimal text."""
    text = pd.DataFrame({"k": ["1", "2", "1", "2", "02"], "x": [0.0, 10.0, 4.0, 20.0, 7.0]})
    model = sp.fit(text, [sp.MinMax(["x"])], scope="key", key="k")
    for column in ([1, 2, 1, 2], [1.0, 2.0, 1.0, 2.0], pd.array([1, 2, 1, 2], dtype="Int64")):
        got = model.transform(text.iloc[:4].assign(k=column))["x"].tolist()
        assert got == [0.0, 0.0, 1.0, 1.0], column
    assert model.unseen_rows(pd.DataFrame({"k": [2.5, np.nan, 1.0], "x": [1.0, 1.0, 1.0]})) == 1  # 2.5 unseen, NaN missing
    assert model.unseen_rows(pd.DataFrame({"k": [True], "x": [1.0]})) == 1  # not a number key
    big = sp.fit(pd.DataFrame({"k": [str(2**53), str(2**53 + 1)], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    objects = pd.Series([2**53 + 1, None], dtype=object)  # Python ints, exactly (not through float64)
    assert key_positions(big.groups.keys, objects).tolist() == [1, -1]
    digits = pd.Index(["100000000000000000000", "0.1"], dtype=object)  # a float finds its own shortest text
    assert key_positions(digits, pd.Series([1e20, 0.1])).tolist() == [0, 1]
    assert key_positions(digits, pd.Series(np.array([0.1], np.float32))).tolist() == [1]
    dates = sp.fit(pd.DataFrame({"k": pd.to_datetime(["2020-01-01"]), "x": [0.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    assert dates.unseen_rows(pd.DataFrame({"k": ["2020-01-01"], "x": [1.0]})) == 1  # text for a date key is another type


def test_integer_keys_are_found_exactly_from_text_and_from_floats():
    """Statistics keyed by integers (fitted from Parquet) read a CSV key column
    as float64: an ID beyond 2**53 was rounded onto another fitted key and
    scaled with its statistics. A float key found the integer 2**53 + 1
    (compared as floats). Now text is parsed exactly, and an integer finds a
    float key only when it is that float."""
    big = 2**53 + 1
    df = pd.DataFrame({"k": np.array([1, 1, big, big, big - 1, big - 1]), "x": [0.0, 2.0, 10.0, 30.0, 100.0, 300.0]})
    model = sp.fit(df, [sp.MinMax(["x"])], scope="key", key="k")
    text = pd.DataFrame({"k": pd.array(["1", "+1", str(big), "7.0", str(big - 1), None], dtype="str"), "x": [2.0, 0.0, 20.0, 1.0, 200.0, 5.0]})
    got = model.transform(text)["x"].tolist()
    assert got[:3] == [1.0, 0.0, 0.5] and got[4] == 0.5  # each its own key's min and max
    assert model.unseen_rows(text) == 1  # "7.0" is unseen; None is a missing key
    floats = sp.fit(pd.DataFrame({"k": [1.5, 2.0**53], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    assert floats.unseen_rows(pd.DataFrame({"k": pd.array([big, 2**53, None], dtype="Int64"), "x": [0.0] * 3})) == 1


def test_object_and_categorical_keys_save_and_merge(tmp_path):
    """An object column of ints (one missing) fitted but could not be saved;
    categorical keys could not take a next batch in partial_fit; a Dask fit
    merged 1 and True from two partitions of an object column into one key."""
    import dask
    import dask.dataframe as dd

    ints = sp.fit(pd.DataFrame({"k": pd.Series([None, 1, 2, 2**63 + 1], dtype=object), "x": [0.0, 1.0, 2.0, 3.0]}), [sp.MinMax(["x"])], scope="key", key="k")
    ints.save(tmp_path / "ints.json")
    assert sp.load(tmp_path / "ints.json").groups.keys.tolist() == [1, 2, 2**63 + 1]
    cats = pd.DataFrame({"k": pd.Categorical(["a", "b", "a"]), "x": [0.0, 1.0, 2.0]})
    model = sp.fit(cats, [sp.MinMax(["x"])], scope="key", key="k")
    model.partial_fit(pd.DataFrame({"k": ["b", "c"], "x": [5.0, 6.0]}))
    assert model.groups.keys.tolist() == ["a", "b", "c"] and model.groups.moments.count[:, 0].tolist() == [2, 2, 1]
    mixed = pd.DataFrame({"k": pd.Series([1, 1, True, True], dtype=object), "x": [0.0, 1.0, 2.0, 3.0]})
    with dask.config.set({"dataframe.convert-string": False}):  # objects stay objects
        frame = dd.from_pandas(mixed, npartitions=2, sort=False)
        with pytest.raises(ColumnError, match=r"keys are boolean .*, the fitted keys integer"):
            sp.fit(frame, [sp.MinMax(["x"])], scope="key", key="k")


def test_inference_stats_belongs_to_the_partition_scope():
    with pytest.raises(ParameterError, match=r"batch_rows: 1 is below min_batch_rows \(2\): every batch would be refused"):
        sp.fit(pd.DataFrame({"x": [0.0, 1.0, 2.0]}), [sp.MinMax(["x"])], scope="partition", batch_rows=1)
    with pytest.raises(ParameterError, match=r"inference_stats: is only used with scope 'partition' \(scope is 'key'\)"):
        sp.fit(pd.DataFrame({"k": [1, 2], "x": [0.0, 1.0]}), [sp.MinMax(["x"])], scope="key", key="k", inference_stats="global")


def test_a_key_too_small_for_ddof_is_not_refused_as_constant():
    """A one-row key under ddof=1 takes the global statistics; constant_policy
    error refused it as constant although its constant map is never used."""
    df = pd.DataFrame({"k": ["a", "b", "b", "b"], "x": [10.0, 1.0, 2.0, 3.0]})
    model = sp.fit(df, [sp.ZScore(["x"], ddof=1, constant_policy="error")], scope="key", key="k")
    got = model.transform(df)["x"].to_numpy()
    x = df["x"].to_numpy()
    np.testing.assert_allclose(got[0], (10.0 - x.mean()) / x.std(ddof=1), rtol=1e-15)
    np.testing.assert_allclose(got[1:], [-1.0, 0.0, 1.0], rtol=0, atol=1e-15)


def test_a_float_key_matches_an_integer_key_only_when_equal():
    """pandas compares an integer index with floats as floats: 2.0**53 (what
    2**53 + 1 becomes as a float) found the fitted key 2**53 + 1, and its rows
    were scaled with that key's statistics, counted as seen."""
    big = 2**53
    df = pd.DataFrame({"x": [1.0, 2.0, 10.0, 20.0], "k": pd.array([big + 1, big + 1, big + 2, big + 2], dtype="Int64")})
    model = sp.fit(df, [sp.MinMax(["x"])], scope="key", key="k")
    as_floats = df.assign(k=df["k"].astype("float64"))  # big + 1 -> 2.0**53 (not fitted); big + 2 stays exact
    got = model.transform(as_floats)["x"].to_numpy()
    np.testing.assert_allclose(got[:2], (np.array([1.0, 2.0]) - 1.0) / 19.0, rtol=1e-15)  # unseen: the global map
    np.testing.assert_array_equal(got[2:], [0.0, 1.0])  # the key big + 2, exactly
    assert model.unseen_rows(as_floats) == 2
    halves = df.assign(k=[1.5, np.nan, np.inf, float(big + 2)])
    assert model.unseen_rows(halves) == 2  # 1.5 and inf are unseen, NaN is missing, big + 2 is found


@pytest.mark.parametrize("cls", [sp.ZScore, sp.MinMax, sp.Decimal, sp.BatchNorm])
def test_a_key_without_values_in_a_column_takes_the_global_statistics(cls):
    """A key whose column was all NaN at fit gave NaN (decimal: unscaled
    values) for every later value of that key; it takes the global
    statistics, as a key with too few values for ddof does."""
    fit = pd.DataFrame({"k": ["a", "a", "a", "b"], "x": [1.0, 2.0, 3.0, np.nan], "y": [1.0, 2.0, 3.0, 5.0]})
    new = pd.DataFrame({"k": ["b", "b"], "x": [2.0, 4.0], "y": [5.0, 5.0]})
    keyed = sp.fit(fit, [cls(["x", "y"])], scope="key", key="k")
    glob = sp.fit(fit[["x"]], [cls(["x"])])
    got = keyed.transform(new)
    np.testing.assert_array_equal(got["x"].to_numpy(), glob.transform(new[["x"]])["x"].to_numpy())
    assert keyed.unseen_rows(new) == 0
    np.testing.assert_allclose(keyed.inverse_transform(got)["x"].to_numpy(), new["x"].to_numpy(), rtol=1e-15, atol=0)
