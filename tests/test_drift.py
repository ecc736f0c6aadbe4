"""Drift check: no false alarm on a fresh sample, flags for each kind of drift, PSI by hand, unseen keys."""

from __future__ import annotations

import json
import math

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe.drift import DriftThresholds, drift_report
from scalepipe.errors import ColumnError, ParameterError
from scalepipe.histograms import transform_with_histograms

N = 40_000


def sample(seed: int, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "normal": rng.normal(10.0, 2.0, n),
            "offset": 1e9 + rng.standard_normal(n),
            "skewed": rng.lognormal(0.0, 0.5, n),
            "label": rng.choice(["a", "b"], n),
        }
    )
    df.loc[rng.random(n) < 0.02, "skewed"] = np.nan
    return df


@pytest.fixture(scope="module")
def fitted():
    train = sample(0)
    model = sp.fit(train, [sp.ZScore(["normal", "offset"]), sp.MinMax(["skewed"])])
    _, reference = transform_with_histograms(model, train)
    return model, reference


def by_name(result):
    return {f.feature: f for f in result.features}


def test_no_drift_on_a_fresh_sample(fitted):
    model, reference = fitted
    result = drift_report(model, sample(1), reference=reference)
    assert not result.flagged, result.table()
    for f in result.features:
        assert abs(f.mean_shift) < 0.05 and 0.95 < f.variance_ratio < 1.05
        assert f.outside_share < 0.001 and f.psi < 0.02
    assert result.rows == N and result.unseen is None and result.notes == []
    assert "no drift" in result.table()
    json.dumps(result.to_dict(), allow_nan=False)


def test_each_kind_of_drift_is_flagged(fitted):
    model, reference = fitted
    new = sample(2)
    new["normal"] += 0.5 * 2.0  # half a fitted standard deviation
    new["offset"] = 1e9 + 2.0 * (new["offset"] - 1e9)  # variance x4, same mean
    new.loc[: int(0.03 * N), "skewed"] = 100.0  # 3% beyond the fitted max
    result = drift_report(model, new, reference=reference)
    f = by_name(result)
    assert result.flagged and result.flagged_features == ["normal", "offset", "skewed"]
    assert "mean_shift" in f["normal"].reasons and f["normal"].mean_shift == pytest.approx(0.5, abs=0.03)
    assert "variance_ratio" in f["offset"].reasons and "mean_shift" not in f["offset"].reasons
    assert f["offset"].variance_ratio == pytest.approx(4.0, rel=0.05)
    assert "outside_share" in f["skewed"].reasons and f["skewed"].above == int(0.03 * N) + 1
    lo, hi = model.moments.min[2], model.moments.max[2]
    outside = ((new["skewed"] < lo) | (new["skewed"] > hi)).sum()
    assert f["skewed"].outside_share == outside / new["skewed"].notna().sum()
    # thresholds: loosened, nothing is flagged; a NaN-rate test on demand
    loose = {"mean_shift": 1.0, "variance_ratio": [0.1, 10], "outside_share": 0.5, "psi": None}
    assert drift_report(model, new, loose, reference=reference).flagged_features == ["skewed"]  # 3% at 100
    off = {"mean_shift": None, "variance_ratio": None, "outside_share": None, "psi": None}
    assert not drift_report(model, new, off, reference=reference).flagged
    more_nan = sample(3)
    more_nan.loc[: N // 5, "normal"] = np.nan
    assert not drift_report(model, more_nan, reference=reference).flagged
    assert drift_report(model, more_nan, {"nan_rate": 0.1}, reference=reference).flagged_features == ["normal"]


def test_psi_against_a_hand_computation():
    model = sp.fit(pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]}), [sp.MinMax()])
    _, reference = transform_with_histograms(model, pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]}), bins=3)
    # edges 0, 1, 2, 3: the fitted data has 1, 1, 2 in the bins; the new data 2, 0, 1 and 1 above
    new = pd.DataFrame({"x": [0.5, 0.5, 2.5, 4.0]})
    result = drift_report(model, new, {"psi": 0.2}, reference=reference)
    p = [1e-4, 0.25, 0.25, 0.5, 1e-4]  # under, 3 bins, over; empty shares floored at 1e-4
    q = [1e-4, 0.5, 1e-4, 0.25, 0.25]
    expected = sum((b - a) * math.log(b / a) for a, b in zip(p, q))
    assert result.features[0].psi == pytest.approx(expected, rel=1e-12)
    assert "psi" in result.features[0].reasons
    # without the fitted data's histograms there is no PSI, and it says so
    plain = drift_report(model, new)
    assert math.isnan(plain.features[0].psi) and "PSI not computed" in plain.notes[0]


def test_dask_input_on_a_cluster_equals_pandas(client, fitted):
    dd = pytest.importorskip("dask.dataframe")
    model, reference = fitted
    new = sample(4, 20_000)
    new.loc[:99, "normal"] = 1e3
    local = drift_report(model, new, reference=reference)
    remote = drift_report(model, dd.from_pandas(new, npartitions=4, sort=False), reference=reference)
    for a, b in zip(local.features, remote.features):
        assert (a.count, a.below, a.above, a.reasons) == (b.count, b.below, b.above, b.reasons)
        for field in ("mean_shift", "variance_ratio", "outside_share", "nan_rate", "psi"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-9, abs=1e-12)
    assert remote.flagged_features == ["normal"]


def test_unseen_keys_are_reported_for_the_key_scope():
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"store": rng.choice(["s1", "s2", "s3"], 3000), "sales": rng.gamma(2.0, 10.0, 3000)})
    model = sp.fit(train, [sp.ZScore(["sales"])], scope="key", key="store")
    new = pd.DataFrame({"store": ["s1", "s9", "s9", "s7", None, "s2"], "sales": [10.0, 20.0, 30.0, 40.0, 50.0, 15.0]})
    result = drift_report(model, new, {"mean_shift": None, "variance_ratio": None, "outside_share": None})
    assert result.unseen.rows == 3 == model.unseen_rows(new)  # the missing key is not unseen
    assert result.unseen.keys == ["s9", "s7"]
    assert result.unseen.share == pytest.approx(3 / 6) and not result.flagged
    assert "unseen keys: 3 rows" in result.table()
    assert drift_report(model, new, {"unseen_share": 0.4}).flagged
    json.dumps(drift_report(model, new).to_dict(), allow_nan=False)
    with pytest.raises(ColumnError, match="'store'"):
        drift_report(model, new[["sales"]])
    with pytest.raises(ColumnError, match="'sales'"):
        drift_report(model, new[["store"]])


def test_unseen_keys_are_those_the_transform_does_not_find():
    """Rows with a missing key were in the fit (global statistics only): a
    drift on the fitted data itself reported them as unseen, and with an
    unseen_share threshold flagged it. A key of another type (1 for a fitted
    True) was counted as seen although the transform scaled it with the
    global statistics."""
    rng = np.random.default_rng(6)
    train = pd.DataFrame({"b": pd.array(rng.choice([True, False, None], 300), dtype="boolean"), "x": rng.standard_normal(300)})
    model = sp.fit(train, [sp.ZScore(["x"])], scope="key", key="b")
    assert model.unseen_rows(train) == 0 == model.unseen_rows(dd.from_pandas(train, npartitions=3)).compute()
    report = drift_report(model, train, {"unseen_share": 0.0})
    assert report.unseen.rows == 0
    # a key model has no histograms to compare: the note says why, not "run scalepipe run"
    assert "by `scalepipe run` in the global scope only, not 'key'): PSI not computed" in report.table()
    as_ints = train.dropna().assign(b=lambda d: d["b"].astype(int))
    scaled = model.transform(as_ints)["x"].to_numpy()
    x = as_ints["x"].to_numpy()
    np.testing.assert_allclose(scaled, (x - train["x"].mean()) / train["x"].std(ddof=0), rtol=1e-12)  # global statistics
    assert model.unseen_rows(as_ints) == len(as_ints) == drift_report(model, as_ints).unseen.rows


def test_thresholds_are_validated():
    assert DriftThresholds() == DriftThresholds(0.25, (0.5, 2.0), 0.01, 0.2)
    with pytest.raises(ParameterError, match="not a drift threshold; valid: mean_shift"):
        DriftThresholds.from_dict({"mean_shfit": 0.1})
    with pytest.raises(ParameterError, match="variance_ratio"):
        DriftThresholds(variance_ratio=(2.0, 0.5))
    with pytest.raises(ParameterError, match="psi"):
        DriftThresholds(psi=-1)
    parsed = DriftThresholds.from_overrides(["psi=off", "variance_ratio=0.8,1.25", "mean_shift=0.1"])
    assert parsed == DriftThresholds(0.1, (0.8, 1.25), 0.01, None)
    with pytest.raises(ParameterError, match="outside_share: 'x' is not a number"):
        DriftThresholds.from_overrides(["outside_share=x"])
    # an empty value (an unset shell variable) turned the test off; a share above 1 is never crossed
    with pytest.raises(ParameterError, match=r"^mean_shift: has no value in 'mean_shift='; give a number, or mean_shift=off"):
        DriftThresholds.from_overrides(["mean_shift="])
    for name in ("outside_share", "nan_rate", "unseen_share"):
        with pytest.raises(ParameterError, match=rf"^{name}: is a share of rows, from 0 to 1, got 2.0"):
            DriftThresholds.from_overrides([f"{name}=2"])
    assert DriftThresholds.from_overrides(["outside_share=1", "mean_shift=3"]).outside_share == 1.0


def test_a_feature_without_new_values_is_flagged_and_no_rows_is_an_error():
    """All-NaN new data for a feature gave it a made-up mean shift (the new
    mean taken as 0) and 'no drift'; now it has no shift, ratio or share and
    is flagged whatever the thresholds. No rows at all is an error."""
    from scalepipe.errors import DataError

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": 100 + rng.standard_normal(500), "b": rng.standard_normal(500)})
    model = sp.fit(train)
    result = drift_report(model, train.assign(a=np.nan), thresholds={"mean_shift": None, "variance_ratio": None, "outside_share": None, "psi": None})
    a, b = result.features
    assert a.reasons == ("no_values",) and a.count == 0 and math.isnan(a.mean_shift) and math.isnan(a.variance_ratio)
    assert b.reasons == () and result.flagged
    with pytest.raises(DataError, match="the new data has no rows"):
        drift_report(model, train.iloc[:0])


def test_unseen_keys_are_plain_json_and_quoted_in_the_table():
    """Keys holding a comma or a line break broke the table's line."""
    rng = np.random.default_rng(5)
    train = pd.DataFrame({"store": pd.array(rng.choice(["s1", "s2"], 200), dtype="string"), "sales": rng.gamma(2.0, 10.0, 200)})
    model = sp.fit(train, [sp.ZScore(["sales"])], scope="key", key="store")
    new = pd.DataFrame({"store": pd.array(["s1", None, "a,b\nc"], dtype="string"), "sales": [1.0, 2.0, 3.0]})
    result = drift_report(model, new)
    assert result.unseen.keys == ["a,b\nc"]
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["unseen"]["keys"] == ["a,b\nc"]
    line = next(line for line in result.table().splitlines() if line.startswith("unseen keys"))
    assert "'a,b\\nc'" in line
    # unseen_share on a model without keys is not silently dropped
    assert "unseen_share applies to the key scope only" in drift_report(sp.fit(train[["sales"]]), new[["sales"]], {"unseen_share": 0.1}).table()


def test_an_infinite_unseen_key_is_json():
    """``drift --json`` failed with a raw "Out of range float values" error."""
    train = pd.DataFrame({"k": [1.0, 1.0, 2.0, 2.0], "x": [1.0, 2.0, 3.0, 5.0]})
    model = sp.fit(train, [sp.ZScore(["x"])], scope="key", key="k")
    new = pd.DataFrame({"k": [1.0, np.inf, -np.inf], "x": [1.0, 2.0, 3.0]})
    doc = json.loads(json.dumps(drift_report(model, new).to_dict(), allow_nan=False))
    assert sorted(doc["unseen"]["keys"]) == ["-Infinity", "Infinity"]


def test_infinite_and_huge_statistics_in_the_table_and_json():
    """A constant fitted column that moved has an infinite mean shift and
    variance ratio: ``--json`` wrote them as null, which reads as "not
    computed" (``no_values``); now as the artifact's "Infinity" strings. A
    shift of 1e16 std was printed with 17 digits before the point."""
    train = pd.DataFrame({"const": [5.0] * 4, "tiny": [1.0, 1.0, 1.0, np.nextafter(1.0, 2.0)]})
    model = sp.fit(train)
    new = pd.DataFrame({"const": [6.0, 7.0, 6.0, 7.0], "tiny": [2.0] * 4})
    result = drift_report(model, new)
    const, tiny = result.features
    assert math.isinf(const.mean_shift) and math.isinf(const.variance_ratio) and const.flagged
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))["features"]
    assert doc[0]["mean_shift"] == "Infinity" and doc[0]["variance_ratio"] == "Infinity"
    assert doc[1]["variance_ratio"] == 0.0
    u = np.nextafter(1.0, 2.0) - 1.0
    want = (1.0 - u / 4) / (u * math.sqrt(3) / 4)  # (2 - mean) / std, exactly: mean 1 + u/4, std u sqrt(3)/4
    assert tiny.mean_shift == pytest.approx(want, rel=1e-12) and want > 1e15
    rows = {line.split()[0]: line.split() for line in result.table().splitlines()[1:3]}
    assert rows["const"][3:5] == ["inf", "inf"]
    assert rows["tiny"][3] == format(tiny.mean_shift, "+.3e")


def test_variances_beyond_float64():
    """A fitted variance that overflowed (a min-max column of ~1e160) left
    mean_shift and var_ratio blank without a word; new data whose variance
    overflows was never flagged (its ratio was NaN)."""
    rng = np.random.default_rng(9)
    train = pd.DataFrame({"huge": rng.standard_normal(400) * 1e160, "x": rng.standard_normal(400)})
    model = sp.fit(train, [sp.MinMax(["huge"]), sp.ZScore(["x"])])
    assert not np.isfinite(model.moments.var(0)[0])
    new = pd.DataFrame({"huge": train["huge"] + 0.5e160, "x": train["x"] * 1e300})
    result = drift_report(model, new, thresholds={"psi": None})
    huge, x = result.features
    assert math.isnan(huge.mean_shift) and math.isnan(huge.variance_ratio)
    assert "note: mean_shift and var_ratio not computed for 'huge': the fitted variance is beyond float64's range" in result.table()
    assert math.isinf(x.variance_ratio) and "variance_ratio" in x.reasons and result.flagged


def test_variances_below_float64():
    """A fitted variance that underflowed to 0 (values ~1e-200) gave a
    mean_shift of -inf on data of the same distribution, flagged as drift;
    a subnormal one (values ~1e-160) shifts and ratios off by 1e-4."""
    rng = np.random.default_rng(3)
    train = pd.DataFrame({"s200": rng.uniform(1, 5, 400) * 1e-200, "s160": rng.uniform(1, 5, 400) * 1e-160})
    model = sp.fit(train, [sp.MinMax()])
    new = pd.DataFrame({"s200": rng.uniform(1, 5, 400) * 1e-200, "s160": rng.uniform(1, 5, 400) * 1e-160})
    result = drift_report(model, new, thresholds={"psi": None})
    for feature in result.features:
        assert math.isnan(feature.mean_shift) and math.isnan(feature.variance_ratio) and not feature.reasons, feature
    assert "note: mean_shift and var_ratio not computed for 's200', 's160': the fitted variance is beyond" in result.table()
    assert not result.flagged
