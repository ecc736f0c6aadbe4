"""The statistics value against exact references, and its merge laws."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalepipe.stats import (
    Moments,
    NonFiniteError,
    array_moments,
    chunk_moments,
    merge,
    merge_all,
    on_calling_thread,
    on_row_blocks,
    tree_reduce,
)

from .conftest import mixed_frame

NUMERIC = ["offset", "tiny", "lognormal", "f32", "const", "count"]


def exact_mean_var(column: np.ndarray) -> tuple[float, float]:
    """Correctly rounded mean and population variance, in rational arithmetic."""
    values = [Fraction(float(v)) for v in column if not math.isnan(v)]
    mean = sum(values, Fraction(0)) / len(values)
    var = sum(((v - mean) ** 2 for v in values), Fraction(0)) / len(values)
    return float(mean), float(var)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


@pytest.mark.parametrize("column", NUMERIC)
def test_matches_exact_reference(column):
    df = mixed_frame(3000)
    x = df[[column]].to_numpy(dtype=np.float64, na_value=np.nan)
    m = chunk_moments(df[[column]].to_numpy())
    mean, var = exact_mean_var(x[:, 0])
    # tolerance: 1e-12 relative, the bar for every mode
    assert rel(float(m.mean[0]), mean) <= 1e-12
    assert rel(float(m.var()[0]), var) <= 1e-12
    assert m.min[0] == np.nanmin(x) and m.max[0] == np.nanmax(x)
    assert m.absmax[0] == np.nanmax(np.abs(x))
    assert m.count[0] == np.count_nonzero(~np.isnan(x)) and m.nan_count[0] == np.count_nonzero(np.isnan(x))


def test_float32_accumulates_in_float64():
    rng = np.random.default_rng(3)
    x32 = (1e4 + rng.standard_normal((5000, 1))).astype(np.float32)
    m = chunk_moments(x32)
    mean, var = exact_mean_var(x32[:, 0].astype(np.float64))
    assert m.mean.dtype == np.float64
    assert rel(float(m.var()[0]), var) <= 1e-12 and rel(float(m.mean[0]), mean) <= 1e-12


def test_large_offset_survives_many_merges():
    """1e12 + 1e-3 U: one ulp of the mean is ~0.4 std; a naive merge drifts ~1e-4."""
    rng = np.random.default_rng(7)
    x = (1e12 + 1e-3 * rng.random(20000))[:, None]
    parts = [chunk_moments(x[i : i + 37]) for i in range(0, len(x), 37)]
    mean, var = exact_mean_var(x[:, 0])
    m = merge_all(parts)
    assert rel(float(m.var()[0]), var) <= 1e-12 and rel(float(m.mean[0]), mean) <= 1e-12


def test_nullable_and_integer_columns():
    s = pd.array([1, None, 3, 4], dtype="Int64")
    f = pd.array([0.5, 1.5, None, 2.5], dtype="Float32")
    df = pd.DataFrame({"i": s, "f": f})
    m = chunk_moments(df.to_numpy(dtype=np.float64, na_value=np.nan))
    assert m.count.tolist() == [3, 3] and m.nan_count.tolist() == [1, 1]
    assert m.mean.tolist() == [8 / 3, 1.5]


def test_empty_is_identity_and_zero_rows():
    x = np.random.default_rng(0).normal(size=(10, 3))
    m = chunk_moments(x)
    for combined in (merge(Moments.empty(3), m), merge(m, chunk_moments(np.empty((0, 3))))):
        assert combined.identical(m)


def test_all_nan_column_has_no_count():
    x = np.array([[np.nan, 1.0], [np.nan, 2.0]])
    m = chunk_moments(x)
    assert m.count.tolist() == [0, 2] and math.isnan(m.min[0]) and m.nan_count[0] == 2


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf_names_the_column(bad):
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(NonFiniteError, match="'b'") as info:
        chunk_moments(x, names=["a", "b", "c"])
    assert info.value.positions == [1]


def test_signed_zero_extremes_are_positive():
    m = chunk_moments(np.array([[-0.0], [0.0]]))
    assert math.copysign(1.0, m.min[0]) == 1.0 and math.copysign(1.0, m.max[0]) == 1.0


def test_threaded_array_moments_equal_serial():
    x = np.random.default_rng(2).normal(5.0, 2.0, size=(300_000, 4))
    a = array_moments(x, threads=1)
    b = array_moments(x, threads=4)
    assert a.identical(b)
    assert rel(float(a.mean[0]), float(np.mean(x[:, 0]))) <= 1e-12


def test_on_calling_thread_keeps_row_blocks_on_the_caller():
    """Inside a Dask task (on_calling_thread) the row blocks run on the calling
    thread, in order, with the same results; elsewhere they go to a pool."""
    import threading

    def where(start: int) -> tuple[int, int]:
        return start, threading.get_ident()

    pooled = on_row_blocks(where, 10, 3, threads=2)
    with on_calling_thread():
        inline = on_row_blocks(where, 10, 3)
        x = np.random.default_rng(3).normal(size=(300_000, 4))
        assert array_moments(x).identical(array_moments(x, threads=4))
    assert [s for s, _ in inline] == [s for s, _ in pooled] == [0, 3, 6, 9]
    assert {t for _, t in inline} == {threading.get_ident()}
    assert threading.get_ident() not in {t for _, t in pooled}
    assert len(on_row_blocks(where, 10, 3)) == 4  # the setting ended with the block


def test_tree_reduce_shape_fixed_by_count():
    calls = []

    def combine(group):
        calls.append(list(group))
        return sum(group)

    assert tree_reduce(list(range(20)), combine, split_every=8) == sum(range(20))
    assert calls[0] == list(range(8)) and calls[-1] == [28, 92, 70]


columns = st.sampled_from(["normal", "offset", "tiny", "f32", "mixed_nan"])


def _column(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "offset":
        return 1e9 + rng.standard_normal(n)
    if kind == "tiny":
        return 1e12 + 1e-3 * rng.random(n)
    if kind == "f32":
        return (1e4 + rng.standard_normal(n)).astype(np.float32).astype(np.float64)
    out = rng.lognormal(size=n)
    out[rng.random(n) < 0.2] = np.nan
    return out


@settings(max_examples=60, deadline=None)
@given(
    kind=columns,
    n=st.integers(2, 3000),
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.floats(0, 1), max_size=12),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_chunking_and_merge_order_invariance(kind, n, seed, cuts, order_seed):
    """Any row chunking, merged in any order, agrees to 1e-12 relative (for the
    mean, relative to its magnitude plus the standard deviation: a mean near
    zero is as precise as the spread of the values it averages)."""
    x = np.column_stack([_column(kind, n, seed), _column("normal", n, seed + 1)])
    if np.isnan(x[:, 0]).all():
        x[0, 0] = 1.0
    whole = chunk_moments(x)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    parts = [chunk_moments(x[a:b]) for a, b in zip(bounds, bounds[1:])]
    np.random.default_rng(order_seed).shuffle(parts)
    merged = merge_all(parts)
    assert np.array_equal(merged.count, whole.count) and np.array_equal(merged.nan_count, whole.nan_count)
    assert np.array_equal(merged.min, whole.min) and np.array_equal(merged.max, whole.max)
    scale = np.abs(whole.mean) + np.nan_to_num(whole.std())
    assert np.all(np.abs(merged.mean - whole.mean) <= 1e-12 * scale)
    np.testing.assert_allclose(merged.var(), whole.var(), rtol=1e-12, atol=1e-300)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(0, 200), min_size=3, max_size=3))
def test_merge_associative(seed, sizes):
    rng = np.random.default_rng(seed)
    a, b, c = (chunk_moments(1e6 + rng.standard_normal((k, 2))) for k in sizes)
    left, right = merge(merge(a, b), c), merge(a, merge(b, c))
    assert np.array_equal(left.count, right.count)
    np.testing.assert_allclose(left.mean, right.mean, rtol=1e-12)
    np.testing.assert_allclose(left.m2, right.m2, rtol=1e-12, atol=1e-300)


def _fraction_mean_m2(column: np.ndarray) -> tuple[float, float]:
    values = [Fraction(float(v)) for v in column if not math.isnan(v)]
    n = len(values)
    s1 = sum(values, Fraction(0))
    s2 = sum((v * v for v in values), Fraction(0))
    return float(s1 / n), float(s2 - s1 * s1 / n)


@pytest.mark.parametrize("splits", [1, 3, 17, 100])
def test_exact_mode_bit_identical_under_any_chunking(splits):
    rng = np.random.default_rng(11)
    x = np.column_stack([1e12 + 1e-3 * rng.random(2000), 1e9 + rng.standard_normal(2000), rng.lognormal(size=2000)])
    x[rng.random(x.shape) < 0.05] = np.nan
    bounds = np.linspace(0, len(x), splits + 1).astype(int)
    parts = [chunk_moments(x[a:b], exact=True) for a, b in zip(bounds, bounds[1:])]
    rng.shuffle(parts)
    got = merge_all(parts).finish()
    reference = chunk_moments(x, exact=True).finish()
    assert got.identical(reference)
    for j in range(x.shape[1]):
        mean, m2 = _fraction_mean_m2(x[:, j])
        assert got.mean[j] == mean and got.m2[j] == m2  # correctly rounded: equal, not close


def test_merging_statistics_beyond_float64_squares_is_quiet():
    """Values near 1e300 (fine for min-max) overflow m2 in the merge, which
    printed numpy's "overflow encountered in multiply" on the job's stderr."""
    import warnings

    rng = np.random.default_rng(0)
    parts = [chunk_moments(rng.uniform(-1e300, 1e300, (100, 1))) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merged = merge_all(parts)
    assert merged.count.tolist() == [300] and np.isfinite(merged.min).all() and np.isfinite(merged.max).all()
