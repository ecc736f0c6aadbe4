"""scikit-learn hand-off: to_sklearn equals scalepipe's transform; ScalepipeScaler passes check_estimator."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe.errors import ParameterError

sklearn = pytest.importorskip("sklearn")

from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from scalepipe.interop import ScalepipeScaler, to_sklearn  # noqa: E402


def frame(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """float64 columns with offsets, tiny spreads, heavy tails, NaNs, a constant, and a string between them."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": 1e9 + rng.standard_normal(n),
            "id": [f"r{i}" for i in range(n)],
            "b": 1e12 + 1e-3 * rng.random(n),
            "c": rng.lognormal(0.0, 2.0, n),
            "skip": rng.normal(size=n),
            "d": rng.integers(-500, 500, n).astype(np.float64),
            "k": np.full(n, 7.25),
        }
    )
    df.loc[rng.random(n) < 0.05, ["a", "c"]] = np.nan
    return df


NUMERIC = ["a", "b", "c", "skip", "d", "k"]

CASES = {
    "zscore": [sp.ZScore(["a", "b", "c", "d", "k"])],
    "zscore-ddof-nomean": [sp.ZScore(["a", "b", "c", "d", "k"], ddof=1, with_mean=False)],
    "minmax-clip": [sp.MinMax(["a", "b", "c", "d", "k"], feature_range=(-1, 1), clip=True)],
    "minmax-zero-policy": [sp.MinMax(["a", "b", "c", "d", "k"], clip=True, constant_policy="passthrough")],
    "decimal": [sp.Decimal(["a", "b", "c", "d", "k"])],
    "batchnorm": [sp.BatchNorm(["a", "b", "c", "d", "k"])],
    "batchnorm-gamma-beta": [sp.BatchNorm(["a", "b", "c", "d", "k"], gamma=-2.0, beta=0.5, constant_policy="zero")],
    "mixed": [sp.ZScore(["a"]), sp.MinMax(["b", "d"]), sp.Decimal(["c"]), sp.BatchNorm(["k"], beta=1.0)],
}


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within 1e-12 of max(1, |value|); NaN where scalepipe has NaN."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert np.nanmax(err, initial=0.0) <= 1e-12


@pytest.mark.parametrize("case", list(CASES))
def test_to_sklearn_equals_scalepipe(case):
    df = frame()
    model = sp.fit(df, CASES[case])
    ct = to_sklearn(model, list(df.columns), pandas_output=True)
    new = frame(300, seed=1)  # data beyond the fitted ranges too
    new.loc[:9, "c"] = 1e6
    for data in (df, new):
        got, want = ct.transform(data), model.transform(data)
        assert list(got.columns) == list(df.columns) == list(ct.get_feature_names_out())
        assert_close(got[NUMERIC].to_numpy(np.float64), want[NUMERIC].to_numpy(np.float64))
        assert got["id"].tolist() == data["id"].tolist()
        np.testing.assert_array_equal(got["skip"].to_numpy(np.float64), data["skip"].to_numpy())
    # survives pickling, and default (numpy) output keeps the column order
    again = pickle.loads(pickle.dumps(to_sklearn(model, list(df.columns))))
    assert_close(again.transform(df)[:, [0, 2, 3, 4, 5, 6]].astype(np.float64), model.transform(df)[NUMERIC].to_numpy())


def test_to_sklearn_uses_familiar_scalers_with_fitted_attributes():
    df = frame()
    model = sp.fit(df, CASES["mixed"])
    ct = to_sklearn(model, list(df.columns))
    zscore = ct.named_transformers_["zscore"]
    assert isinstance(zscore, StandardScaler)
    x = df["a"].dropna().to_numpy()
    np.testing.assert_allclose(zscore.mean_, [x.mean()], rtol=1e-15)
    np.testing.assert_allclose(zscore.var_, [x.var()], rtol=1e-9)
    np.testing.assert_allclose(zscore.scale_, [x.std()], rtol=1e-9)
    assert zscore.n_samples_seen_.tolist() == [len(x)]
    assert list(zscore.feature_names_in_) == ["a"] and zscore.n_features_in_ == 1
    minmax = ct.named_transformers_["minmax"]
    assert isinstance(minmax[-1], MinMaxScaler)
    np.testing.assert_array_equal(minmax[0].mean_, [df["b"].min()])  # the minimum is subtracted first
    np.testing.assert_array_equal(minmax[-1].data_range_, [df["b"].max() - df["b"].min()])
    assert ct.n_features_in_ == 7 and list(ct.feature_names_in_) == list(df.columns)


def test_to_sklearn_for_arrays_and_scopes():
    rng = np.random.default_rng(2)
    x = rng.normal(5.0, 3.0, size=(400, 4))
    model = sp.fit(x, [sp.MinMax([2]), sp.ZScore([0, 3])])
    assert_close(to_sklearn(model).transform(x), model.transform(x))
    part = sp.fit(x, [sp.BatchNorm()], scope="partition", batch_rows=50)
    assert_close(to_sklearn(part).transform(x), part.transform(x))
    keyed = sp.fit(pd.DataFrame({"k": ["a", "b"] * 20, "v": np.arange(40.0)}), [sp.ZScore(["v"])], scope="key", key="k")
    with pytest.raises(ParameterError, match="per-key"):
        to_sklearn(keyed)


@parametrize_with_checks(
    [ScalepipeScaler(), ScalepipeScaler("minmax", {"feature_range": (-1, 1), "clip": True}), ScalepipeScaler("batchnorm")],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_scalepipe_scaler_behaves_as_scalepipe(client):
    dd = pytest.importorskip("dask.dataframe")
    df = frame()[NUMERIC]
    est = ScalepipeScaler(scalers=[sp.MinMax(["b"]), sp.ZScore()]).set_output(transform="pandas")
    out = est.fit_transform(df)
    model = sp.fit(df, [sp.MinMax(["b"]), sp.ZScore()])
    assert_close(out.to_numpy(), model.transform(df).to_numpy())
    assert list(out.columns) == NUMERIC and list(est.get_feature_names_out()) == NUMERIC
    assert_close(est.inverse_transform(out), df.to_numpy())
    # partial_fit in two pieces equals a fit on all rows
    parts = ScalepipeScaler().partial_fit(df.iloc[:700]).partial_fit(df.iloc[700:])
    assert_close(parts.transform(df), ScalepipeScaler().fit(df).transform(df))
    assert parts.n_samples_seen_.tolist() == df.notna().sum().tolist()
    # a Dask frame fits on the cluster; the fitted estimator then serves pandas
    remote = ScalepipeScaler(scalers=[sp.MinMax(["b"]), sp.ZScore()]).fit(dd.from_pandas(df, npartitions=3))
    assert_close(remote.transform(df), out.to_numpy())
    pipe = make_pipeline(ScalepipeScaler("minmax"), StandardScaler()).fit(df.to_numpy())
    assert pipe.transform(df.to_numpy()).shape == df.shape


def test_importing_scalepipe_modules_imports_no_optional_library():
    code = (
        "import sys, scalepipe.interop, scalepipe.report, scalepipe.drift, scalepipe.histograms\n"
        "bad = [m for m in ('sklearn', 'matplotlib', 'dask', 'distributed', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
