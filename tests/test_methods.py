"""The four methods: scikit-learn parity, decimal edge cases, constant policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scalepipe as sp
from scalepipe.errors import DataError, ParameterError
from scalepipe.methods import decimal_exponent, scaler_from_dict

preprocessing = pytest.importorskip("sklearn.preprocessing")


def data_with_nan_and_constant(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(3, 2, 500), rng.lognormal(size=500), np.full(500, 4.5), 1e6 + rng.random(500)])
    x[rng.random(x.shape) < 0.1] = np.nan
    x[:, 2] = 4.5
    return x


@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 1.0), (2.0, 5.0)])
@pytest.mark.parametrize("clip", [False, True])
def test_minmax_matches_sklearn(feature_range, clip):
    x = data_with_nan_and_constant()
    ref = preprocessing.MinMaxScaler(feature_range=feature_range, clip=clip).fit(x)
    model = sp.fit(x, [sp.MinMax(feature_range=feature_range, clip=clip)])
    probe = x * 1.5 - 1.0  # out of the fitted range, so clipping matters
    # tolerance: 1e-12 relative, 1e-12 absolute near zero
    np.testing.assert_allclose(model.transform(probe), ref.transform(probe), atol=1e-12, rtol=1e-12)
    scaled = model.transform(x)
    np.testing.assert_allclose(model.inverse_transform(scaled), x, rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    feature_range=st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.1, 0.9), (-3.0, 7.5), (1e-300, 1e-299), (-1e300, 1e300)]),
)
def test_minmax_keeps_fitted_values_within_the_range_unclipped(seed, feature_range):
    """Rounded, (b - a) / (max - min) put max 1 ulp above b for ~1 column in 12
    of (0.1, 0.9); the scale is lowered by an ulp or two where needed: every
    fitted value lands within [a, b] without clip, min exactly on a, and the
    scale stays within 2 ulps of the quotient (scikit-learn's)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, 3)) * 10 ** rng.uniform(-3, 3, 3) + rng.normal(size=3) * 10
    a, b = feature_range
    model = sp.fit(x, [sp.MinMax(feature_range=feature_range)])
    y = model.transform(x)
    assert np.all(y <= b) and np.all(y >= a)
    np.testing.assert_array_equal(y[x.argmin(0), range(3)], a)
    quotient = (b - a) / (x.max(0) - x.min(0))
    np.testing.assert_allclose(model.params.scale, quotient, rtol=4.5e-16, atol=0)


@pytest.mark.parametrize("with_mean", [True, False])
@pytest.mark.parametrize("with_std", [True, False])
def test_zscore_matches_sklearn(with_mean, with_std):
    # the 1e6 + U(0, 1) column is left out: there scikit-learn's mean is an ulp
    # off, 3e-9 standard deviations (see test_zscore_exact_where_sklearn_drifts)
    x = data_with_nan_and_constant(1)[:, :3]
    ref = preprocessing.StandardScaler(with_mean=with_mean, with_std=with_std).fit(x)
    model = sp.fit(x, [sp.ZScore(with_mean=with_mean, with_std=with_std)])
    # tolerance: 1e-12 relative, 1e-12 absolute near zero
    out, expected = model.transform(x), ref.transform(x)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.inverse_transform(out), x, rtol=1e-12, atol=1e-12)


def test_zscore_exact_where_sklearn_drifts():
    from fractions import Fraction

    x = data_with_nan_and_constant(1)[:, 3:]
    values = [Fraction(v) for v in x[~np.isnan(x)]]
    mean = sum(values, Fraction(0)) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    expected = (x - float(mean)) / std
    # tolerance: 1e-12 absolute on O(1) outputs
    np.testing.assert_allclose(sp.fit(x, [sp.ZScore()]).transform(x), expected, atol=1e-12)


def test_zscore_ddof():
    x = np.random.default_rng(2).normal(size=(50, 2))
    out = sp.fit(x, [sp.ZScore(ddof=1)]).transform(x)
    np.testing.assert_allclose(out, (x - x.mean(0)) / x.std(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize(
    ("absmax", "j"),
    [(999.9, 3), (1000.0, 4), (0.05, -1), (0.0, 0), (1.0, 1), (0.1, 0), (0.099, -1), (1e-300, -299), (5e307, 308)],
)
def test_decimal_exponent(absmax, j):
    assert decimal_exponent(absmax) == j
    if absmax:
        assert absmax / 10.0**j < 1 <= absmax / 10.0 ** (j - 1) or j - 1 < -300


def test_decimal_scale_is_ten_to_minus_j_correctly_rounded():
    """The scale was 1 / 10.0**j, rounded twice: 99999.99999999999 for j = -5
    (9.9e-6 scaled to 0.9899999999999999), wrong for 178 of the 615 normal j."""
    from fractions import Fraction

    for j in range(-300, 300, 7):
        x = np.array([[9.9 * 10.0**j / 10], [0.0]])  # |x| just below 10**j: its exponent is j
        model = sp.fit(x, [sp.Decimal()])
        assert model.params.scale[0] == float(Fraction(10) ** -j), j
    model = sp.fit(np.array([[9.9e-6], [4.2e-6]]), [sp.Decimal()])
    assert model.transform(np.array([[9.9e-6], [4.2e-6]])).ravel().tolist() == [0.99, 0.42]


def test_decimal_negative_only_and_zero_columns():
    x = np.array([[-999.9, 0.0, 0.05], [-5.0, 0.0, -0.01]])
    model = sp.fit(x, [sp.Decimal()])
    np.testing.assert_allclose(model.transform(x), x / np.array([1e3, 1.0, 1e-1]), rtol=1e-15)
    assert np.all(np.abs(model.transform(x)) < 1)


def test_batchnorm_global():
    x = np.random.default_rng(4).normal(10, 3, size=(400, 3))
    model = sp.fit(x, [sp.BatchNorm(gamma=2.0, beta=0.5, eps=1e-3)])
    expected = 2.0 * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3) + 0.5
    np.testing.assert_allclose(model.transform(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.inverse_transform(expected), x, rtol=1e-12)


def test_nan_in_nan_out():
    x = np.array([[1.0, np.nan], [2.0, 3.0], [np.nan, 4.0]])
    for scaler in (sp.MinMax(), sp.ZScore(), sp.Decimal(), sp.BatchNorm()):
        out = sp.fit(x, [scaler]).transform(x)
        assert np.array_equal(np.isnan(out), np.isnan(x)), scaler.method


CONSTANT = np.column_stack([np.full(20, 3.0), np.linspace(0, 1, 20)])
NEAR_CONSTANT = 0.1 + np.arange(20)[:, None] * np.spacing(0.1) * 0  # 0.1 exactly, many times


@pytest.mark.parametrize("method", ["minmax", "zscore", "decimal", "batchnorm"])
def test_constant_policy_unit_scale(method):
    model = sp.fit(CONSTANT, [scaler_from_dict({"method": method})])
    out = model.transform(CONSTANT)[:, 0]
    expected = {"minmax": 0.0, "zscore": 0.0, "decimal": 0.3, "batchnorm": 0.0}[method]
    np.testing.assert_allclose(out, expected, atol=1e-15)
    np.testing.assert_allclose(model.inverse_transform(model.transform(CONSTANT))[:, 0], 3.0, rtol=1e-15)


@pytest.mark.parametrize("method", ["minmax", "zscore", "decimal", "batchnorm"])
def test_constant_policy_zero(method):
    model = sp.fit(CONSTANT, [scaler_from_dict({"method": method, "constant_policy": "zero"})])
    probe = np.array([[3.0, 0.5], [np.nan, 0.5]])
    out = model.transform(probe)
    assert out[0, 0] == 0.0 and math.isnan(out[1, 0])
    back = model.inverse_transform(out)
    assert back[0, 0] == 3.0 and math.isnan(back[1, 0])
    assert model.summary()[0]["constant"] and not model.summary()[1]["constant"]


@pytest.mark.parametrize("method", ["minmax", "zscore", "decimal", "batchnorm"])
def test_constant_policy_passthrough(method):
    model = sp.fit(CONSTANT, [scaler_from_dict({"method": method, "constant_policy": "passthrough", "columns": [0]})])
    assert np.array_equal(model.transform(CONSTANT)[:, 0], CONSTANT[:, 0])
    assert np.array_equal(model.inverse_transform(CONSTANT)[:, 0], CONSTANT[:, 0])


@pytest.mark.parametrize("method", ["minmax", "zscore", "decimal", "batchnorm"])
def test_constant_policy_error_names_column(method):
    with pytest.raises(DataError, match=r"'c0' are constant .*and constant_policy is 'error'"):
        sp.fit(CONSTANT, [scaler_from_dict({"method": method, "constant_policy": "error"})], feature_names=["c0", "c1"])


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_standard_deviation_lost_to_underflow_is_refused():
    """Values within ~1e-154 of each other have a variance below float64's
    normal numbers: zscore divided by a std off by 7e-5 (values ~1e-160) or
    by 0 without a word; batchnorm's eps makes the variance's loss harmless."""
    rng = np.random.default_rng(1)
    for exponent in (160, 200):
        x = rng.uniform(1, 5, (500, 1)) * 10.0**-exponent
        with pytest.raises(DataError, match=r"zscore's divisor .* \(the squared deviations underflow float64 for values within about 1e-154"):
            sp.fit(x, [sp.ZScore()])
        bn = sp.fit(x, [sp.BatchNorm()])
        np.testing.assert_allclose(bn.params.scale, 1 / np.sqrt(1e-5), rtol=1e-12)
        assert sp.fit(x, [sp.ZScore(with_std=False)]).params.scale[0] == 1.0
    x = rng.uniform(1, 5, (500, 1)) * 1e-100  # a normal variance: exact to the ulp
    want = float(np.std(x / 1e-100) * 1e-100)
    assert sp.fit(x, [sp.ZScore()]).params.scale[0] == pytest.approx(1 / want, rel=1e-14)


@pytest.mark.parametrize(
    "method, values",
    [
        ("minmax", [-1.5e308, 1.5e308, 0.0]),  # max - min overflows: every value would scale to 0
        ("zscore", [-1.5e308, 1.5e308, 0.0]),  # so does the standard deviation
        ("batchnorm", [-1.5e308, 1.5e308, 0.0]),
        ("decimal", [1.7e308, 1.0, 0.0]),  # 10**309 overflows
        ("zscore", [1e-310, 3e-310, 2e-310]),  # the variance underflows to 0: every value would scale to +-inf
        ("zscore", [-1e200, 1e200, 0.0]),  # the std is a double, but the squared deviations overflow (were NaN)
        ("batchnorm", [-1e200, 1e200, 0.0]),
        ("decimal", [1.797e308] * 3),  # a constant keeps decimal's divisor: 10**309 overflows
        ("decimal", [5e-324] * 3),  # and 1 / 10**-323 overflows
        ("decimal", [5e-324, 1e-323, 1.5e-323]),
    ],
)
@pytest.mark.filterwarnings("error::RuntimeWarning")  # and no numpy overflow warning on the way
def test_a_divisor_float64_cannot_invert_is_refused_naming_the_column(method, values):
    """Where the divisor (or its inverse) is beyond float64, fitting fails with a
    clear error naming the column, instead of a silent all-zero or infinite
    output; the other columns would have been fine."""
    x = np.column_stack([np.arange(3.0), values])
    with pytest.raises(DataError, match=rf"'wide'.*{method}'s divisor.*beyond float64"):
        sp.fit(x, [scaler_from_dict({"method": method})], feature_names=["ok", "wide"])
    model = sp.fit(x[:, :1], [scaler_from_dict({"method": method})])
    assert np.isfinite(model.params.scale).all() and (model.params.scale != 0).all()


def test_tiny_real_spread_is_not_constant():
    x = (1e12 + 1e-3 * np.random.default_rng(0).random(1000))[:, None]
    model = sp.fit(x, [sp.ZScore()])
    out = model.transform(x)
    assert not model.summary()[0]["constant"]
    np.testing.assert_allclose(out.std(), 1.0, rtol=1e-9)


def test_ulp_level_range_is_constant():
    x = np.array([[1.0], [1.0 + np.spacing(1.0)], [1.0]])
    assert sp.fit(x, [sp.ZScore()]).summary()[0]["constant"]


@pytest.mark.parametrize("ddof, rows", [(1, 1), (3, 3), (3, 2)])
def test_zscore_needs_more_values_than_ddof(ddof, rows):
    """The standard deviation with ``ddof`` divides by ``count - ddof``: with
    too few values every output would be NaN or infinite, so fitting fails."""
    x = np.column_stack([np.arange(float(rows)), np.r_[np.arange(float(rows)), np.full(2, np.nan)][:rows]])
    with pytest.raises(DataError, match=rf"column\(s\) 0, 1: zscore with ddof={ddof} needs at least {ddof + 1} non-missing values, got {rows}"):
        sp.fit(x, [sp.ZScore(ddof=ddof)])
    model = sp.fit(np.arange(float(ddof + 1))[:, None], [sp.ZScore(ddof=ddof)])
    assert np.isfinite(model.params.scale).all()


def test_all_nan_column_is_an_error():
    x = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    with pytest.raises(DataError, match="'empty'.*missing"):
        sp.fit(x, [sp.ZScore()], feature_names=["empty", "ok"])


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"method": "minmax", "feature_range": [1, 0]}, "feature_range"),
        ({"method": "minmax", "feature_range": [0, 0]}, "feature_range"),
        ({"method": "minmax", "feature_range": [-1e308, 1e308]}, "feature_range"),  # b - a overflows
        ({"method": "batchnorm", "eps": 0}, "eps"),
        ({"method": "batchnorm", "momentum": 0}, "momentum"),
        ({"method": "batchnorm", "momentum": 1.5}, "momentum"),
        ({"method": "zscore", "ddof": -1}, "ddof"),
        ({"method": "zscore", "constant_policy": "clamp"}, "constant_policy"),
        ({"method": "zscore", "bogus": 1}, "bogus"),
        ({"method": "minmax", "clip": "no"}, "clip"),  # a non-empty string is not false
        ({"method": "zscore", "with_std": 0}, "with_std"),
        ({"method": "batchnorm", "gamma": "1"}, "gamma"),
        ({"method": "batchnorm", "eps": None}, "eps"),
        ({"method": "minmax", "feature_range": "ab"}, "feature_range"),
        ({"method": "minmax", "feature_range": [0, True]}, "feature_range"),
        ({"method": "robust"}, "method"),
    ],
)
def test_impossible_parameters(spec, field):
    with pytest.raises(ParameterError) as info:
        scaler_from_dict(spec)
    assert info.value.field == field


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ParameterError, match="batchnorm, decimal, minmax, zscore"):
        scaler_from_dict({"method": "robust"})
