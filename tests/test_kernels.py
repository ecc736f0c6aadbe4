"""The fused numba kernels against the numpy reference kernels."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalepipe.methods import Affine, apply_affine
from scalepipe.errors import DataError
from scalepipe.stats import Columns, NonFiniteError, chunk_moments, merge

pytest.importorskip("numba")


def numpy_only(fn, *args, **kwargs):
    """Call ``fn`` with the numba kernels switched off (SCALEPIPE_NO_NUMBA=1)."""
    os.environ["SCALEPIPE_NO_NUMBA"] = "1"
    try:
        return fn(*args, **kwargs)
    finally:
        del os.environ["SCALEPIPE_NO_NUMBA"]


def _data(seed: int, n: int, dtype: str, layout: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cols = [rng.normal(size=n), 1e9 + rng.standard_normal(n), 1e12 + 1e-3 * rng.random(n), rng.lognormal(size=n)]
    x = np.column_stack(cols)
    if dtype.startswith("float"):
        x[rng.random(x.shape) < 0.1] = np.nan
    x = x.astype(dtype) if dtype != "int64" else np.round(x[:, :1] * 100).astype(np.int64).repeat(4, axis=1)
    return np.asfortranarray(x) if layout == "F" else x


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([0, 1, 2, 7, 511, 512, 513, 3000]),
    dtype=st.sampled_from(["float64", "float32", "int64"]),
    layout=st.sampled_from(["C", "F"]),
)
def test_fused_moments_match_numpy_kernel(seed, n, dtype, layout):
    x = _data(seed, n, dtype, layout)
    fused = chunk_moments(x)
    ref = numpy_only(chunk_moments, x)
    for field in ("count", "nan_count", "min", "max", "absmax"):
        np.testing.assert_array_equal(getattr(fused, field), getattr(ref, field))
    # tolerance: 1e-12 relative; near a zero mean, 1e-12 of the standard deviation
    std = np.nan_to_num(ref.std())
    assert np.all(np.abs(fused.mean - ref.mean) <= 1e-12 * (np.abs(ref.mean) + std))
    np.testing.assert_allclose(fused.var(), ref.var(), rtol=1e-12)
    # the fused kernel reads any layout the same way: bit-identical
    assert fused.identical(chunk_moments(np.ascontiguousarray(x) if layout == "F" else np.asfortranarray(x)))


def _exact_var(col: np.ndarray) -> float:
    from fractions import Fraction

    values = [Fraction(float(v)) for v in col if v == v]
    mean = sum(values) / len(values)
    return float(sum((v - mean) ** 2 for v in values) / len(values))


def test_fused_moments_resweep_far_shifted_sub_blocks():
    """Sub-blocks whose mean lies far from their pivot (an outlier as the first
    value, a trend, steps, block-wise offsets) are swept again about their own
    mean, so the variance keeps two-pass accuracy: within 5e-15 of the exact
    value (``fractions``). Without the re-sweep the errors here reach 3e-13."""
    rng = np.random.default_rng(7)
    n = 5 * 512 + 17
    cols = [
        np.where(np.arange(n) < 700, 0.0, 1e9 + rng.standard_normal(n)),
        np.sort(rng.standard_normal(n)) * 1e6,
        np.repeat([3.0, -2.5e8, 7.0], [600, 900, n - 1500]),
        np.concatenate([[1e8], 1e3 + rng.standard_normal(n - 1)]),
        np.repeat(rng.standard_normal(6) * 1e4, [512] * 5 + [17]) + rng.standard_normal(n),
    ]
    x = np.column_stack(cols)
    x[1 + np.flatnonzero(rng.random(n - 1) < 0.05)] = np.nan  # keep row 0: the outlier pivot
    fused = chunk_moments(x)
    for j in range(x.shape[1]):
        exact = _exact_var(x[:, j])
        assert abs(fused.var()[j] - exact) <= 5e-15 * exact, j
    # the column kernel re-sweeps from its tiles of four columns: the same bits,
    # with re-swept columns in a full group and in the remainder
    order = [2, 4, 0, 1, 3, 2, 0]
    table = Columns([np.ascontiguousarray(x[:, j]) for j in order])
    assert chunk_moments(table).identical(chunk_moments(np.ascontiguousarray(x[:, order])))


def test_fused_rejects_inf():
    x = np.ones((600, 3))
    x[599, 2] = -np.inf
    with pytest.raises(NonFiniteError, match="'c'"):
        chunk_moments(x, names=["a", "b", "c"])
    with pytest.raises(NonFiniteError, match="'c'"):
        numpy_only(chunk_moments, x, names=["a", "b", "c"])


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_fused_affine_bit_identical_to_numpy(dtype, layout):
    x = _data(3, 1000, dtype, layout)
    p = Affine(np.array([0.5, 1e9, 1e12, 1.0]), np.array([2.0, 0.5, 3e3, 0.1]), np.zeros(4) + 0.25, np.full(4, -1.0), np.full(4, 1.0))
    fused, ref = apply_affine(x, p), numpy_only(apply_affine, x, p)
    assert fused.dtype == ref.dtype == (np.float32 if dtype == "float32" else np.float64)
    assert np.array_equal(fused, ref, equal_nan=True)
    before = x.copy()
    out = np.empty(x.shape, dtype=fused.dtype)
    assert apply_affine(x, p, out=out) is out and np.array_equal(out, ref, equal_nan=True)
    assert np.array_equal(x, before, equal_nan=True)


def _table_columns(seed: int, n: int) -> list[np.ndarray]:
    """Columns as tables hold them: separate buffers, several dtypes, views at a stride, one unaligned."""
    rng = np.random.default_rng(seed)
    wide = np.column_stack([rng.normal(size=n), 1e9 + rng.standard_normal(n)])  # C order: columns at a stride
    wide[rng.random(wide.shape) < 0.1] = np.nan
    raw = np.empty(8 * n + 1, np.uint8)
    unaligned = np.frombuffer(raw.data, np.float64, count=n, offset=1)  # a float64 view at an odd address
    unaligned[:] = 1e12 + 1e-3 * rng.random(n)
    return [
        wide[:, 0],
        wide[::-1, 1],  # a negative stride
        unaligned,
        (1e4 + rng.standard_normal(n)).astype(np.float32),
        rng.integers(-(10**12), 10**12, n),
        rng.integers(-1000, 1000, n).astype(np.int32),
        rng.integers(0, 9, n).astype(np.int16),  # not read in place: converted
    ]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 2, 511, 512, 513, 2000]))
def test_column_kernel_reads_table_columns_in_place(seed, n):
    """The statistics of separate columns (mixed dtypes, strides, alignment) are
    bit-identical to those of one float64 array of the same values, in either
    layout, and agree with the numpy reference kernel (1e-12); exact sums too."""
    cols = _table_columns(seed, n)
    table = Columns(cols)
    assert table.shape == (n, len(cols))
    assert not cols[2].flags.aligned and table.arrays[2].flags.aligned
    stacked = np.column_stack([c.astype(np.float64) for c in cols])
    fused = chunk_moments(table)
    assert fused.identical(chunk_moments(stacked))
    assert fused.identical(chunk_moments(np.asfortranarray(stacked)))
    ref = numpy_only(chunk_moments, table)  # the numpy kernel stacks the columns
    for field in ("count", "nan_count", "min", "max", "absmax"):
        np.testing.assert_array_equal(getattr(fused, field), getattr(ref, field))
    std = np.nan_to_num(ref.std())
    assert np.all(np.abs(fused.mean - ref.mean) <= 1e-12 * (np.abs(ref.mean) + std))
    np.testing.assert_allclose(fused.var(), ref.var(), rtol=1e-12)
    assert chunk_moments(table, exact=True).sums.identical(chunk_moments(stacked, exact=True).sums)
    halves = merge(chunk_moments(table[: n // 2]), chunk_moments(table[n // 2 :]))
    np.testing.assert_allclose(halves.var(), fused.var(), rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), f=st.integers(1, 10), n=st.sampled_from([1, 3, 512, 1100]))
@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_column_kernel_float64_columns_any_count(seed, f, n):
    """float64 columns (the tile's fast fill) in groups of four and a remainder:
    the same bits as the row-major kernel, with NaNs, signed zeros, a constant
    and a far-shifted column; min/max against numpy exactly."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, f)) * 10.0 ** rng.integers(-3, 9, f) + rng.choice([0.0, 1e9], f)
    x[rng.random((n, f)) < 0.1] = np.nan
    x[rng.random((n, f)) < 0.05] = -0.0
    x[:, f // 2] = 7.0
    table = Columns([np.ascontiguousarray(x[:, j]) for j in range(f)])
    fused, rows = chunk_moments(table), chunk_moments(np.ascontiguousarray(x))
    for field in ("count", "nan_count", "min", "max", "absmax", "mean", "mean_lo", "m2"):  # bits: signed zeros too
        np.testing.assert_array_equal(getattr(fused, field).view(np.int64), getattr(rows, field).view(np.int64), field)
    np.testing.assert_array_equal(fused.min, np.nanmin(x, axis=0) + 0.0)
    np.testing.assert_array_equal(fused.max, np.nanmax(x, axis=0) + 0.0)
    np.testing.assert_array_equal(fused.nan_count, np.isnan(x).sum(axis=0))


def test_numba_kernels_load_where_numba_is_installed():
    """With numba installed the fused kernels load (a failure would fall back to
    numpy quietly, and the kernel tests would compare numpy with numpy)."""
    pytest.importorskip("numba")
    from scalepipe._accel import _load

    assert _load("_kernels_numba") is not None and _load("_exact_numba") is not None


def test_column_kernel_names_an_infinite_column():
    cols = [np.ones(700), np.ones(700, np.float32), np.arange(700.0)]
    cols[1][650] = np.inf
    with pytest.raises(NonFiniteError, match="'b'"):
        chunk_moments(Columns(cols), names=["a", "b", "c"])


def test_columns_refuse_what_is_not_a_table():
    with pytest.raises(DataError, match="different lengths"):
        Columns([np.ones(3), np.ones(4)])
    with pytest.raises(DataError, match="1-D"):
        Columns([np.ones((3, 2))])
    with pytest.raises(DataError, match="numeric"):
        Columns([np.array(["a", "b"])])
    assert chunk_moments(Columns([], n_rows=5)).count.shape == (0,)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 20000])
def test_column_affine_bit_identical_to_numpy(n):
    """A table's columns (mixed dtypes, strides, an unaligned one) are scaled in
    place into one float64 column-major result, bit-identical to the numpy
    kernel on the same values, with and without clipping."""
    cols = _table_columns(11, n)
    table = Columns(cols)
    stacked = np.column_stack([c.astype(np.float64) for c in cols])
    f = len(cols)
    rng = np.random.default_rng(1)
    for lo, hi in ((np.full(f, -np.inf), np.full(f, np.inf)), (np.full(f, -0.5), np.full(f, 0.75))):
        p = Affine(rng.normal(size=f) * 1e3, rng.random(f) + 0.1, rng.normal(size=f), lo, hi)
        got = apply_affine(table, p)
        assert got.shape == (n, f) and got.dtype == np.float64 and got.flags.f_contiguous
        assert np.array_equal(got, numpy_only(apply_affine, stacked, p), equal_nan=True)
        assert np.array_equal(got, numpy_only(apply_affine, table, p), equal_nan=True)


def test_column_affine_names_infinite_columns():
    cols = [np.ones(5000), np.ones(5000, np.float32), np.arange(5000.0)]
    cols[1][4999], cols[2][0] = np.inf, -np.inf
    p = Affine(np.zeros(3), np.ones(3), np.zeros(3), np.full(3, -np.inf), np.full(3, np.inf))
    with pytest.raises(NonFiniteError) as err:
        apply_affine(Columns(cols), p, reject_inf=True)
    assert err.value.positions == [1, 2]


def test_frame_transform_reads_columns_in_place_bit_identical():
    """A pandas frame (large enough for several threaded row blocks) is scaled
    from its columns in place: float32 stays float32, integers become float64,
    text passes through, and every value equals the numpy kernels' result."""
    import pandas as pd

    import scalepipe as sp

    rng = np.random.default_rng(5)
    n = 700_000
    df = pd.DataFrame(
        {
            "f64": 1e9 + rng.standard_normal(n),
            "f32": rng.standard_normal(n).astype(np.float32),
            "i64": rng.integers(-50, 50, n),
            "nullable": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(0, 9, n)), dtype="Int64"),
            "text": np.where(rng.random(n) < 0.5, "a", "b"),
        }
    )
    model = sp.fit(df, [sp.MinMax(["f64"], clip=True), sp.ZScore(["f32", "i64", "nullable"])])
    got, ref = model.transform(df), numpy_only(model.transform, df)
    assert got.dtypes.to_dict() == ref.dtypes.to_dict() and got["f32"].dtype == np.float32
    for c in ("f64", "f32", "i64", "nullable"):
        assert np.array_equal(got[c].to_numpy(np.float64), ref[c].to_numpy(np.float64), equal_nan=True), c
    assert got["text"].equals(df["text"])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([0, 1, 50, 4097]), bins=st.sampled_from([1, 3, 50]))
def test_histogram_kernel_counts_as_numpy_searchsorted(seed, n, bins):
    """The one-sweep histogram kernel puts every value in numpy's bin (the last
    edge at or below it), values exactly on edges, coinciding edges (a range of
    a few ulps), NaN (in no bin), values outside the edges and the fitted bounds,
    a huge range, NaN edges, and mixed column dtypes included."""
    from scalepipe.histograms import _tally, histogram_edges

    rng = np.random.default_rng(seed)
    lo = np.array([0.0, 1.0, -1.5e308, 5.0, np.nan, -3.0])  # hi - lo overflows in the third
    hi = np.array([1.0, 1.0 + 4e-16, 1.5e308, 5.0, np.nan, 2.0])
    edges = histogram_edges(lo, hi, bins)
    assert np.isfinite(edges[:4]).all()  # the overflowing range too
    picks = [rng.uniform(-0.5, 1.5, n), 1.0 + rng.integers(-2, 6, n) * 2.2e-16, rng.uniform(-1, 1, n) * 1.5e308,
             np.full(n, 5.0), rng.normal(size=n), rng.integers(-5, 5, n)]
    for j, col in enumerate(picks[:4]):
        on_edges = rng.random(n) < 0.3
        col[on_edges] = rng.choice(edges[j], on_edges.sum())  # exactly on an edge
        col[rng.random(n) < 0.1] = np.nan
    cols = [picks[0], picks[1].astype(np.float64), picks[2], picks[3].astype(np.float32), picks[4], picks[5]]
    bounds = np.array([[0.1, 1.0, -1.0, 5.0, 0.0, -4.0], [0.9, 1.0, 1.0, 5.0, 0.0, 4.0]])
    got = _tally(Columns(cols), edges, bounds)
    ref = numpy_only(_tally, Columns(cols), edges, bounds)
    for a, b in ((got[0].counts, ref[0].counts), (got[0].under, ref[0].under), (got[0].over, ref[0].over),
                 (got[1], ref[1]), (got[2], ref[2])):
        np.testing.assert_array_equal(a, b)
    stacked = np.column_stack([c.astype(np.float64) for c in cols])
    for j in range(len(cols)):
        if np.isfinite(edges[j]).all():  # numpy.histogram agrees where the edges are numbers
            np.testing.assert_array_equal(got[0].counts[j], np.histogram(stacked[:, j][~np.isnan(stacked[:, j])], edges[j])[0])


def test_histogram_kernel_refuses_mismatched_shapes_and_counts_zero_width_edges():
    """Edges of zero width are counted as numpy counts them (no division error);
    edges or bounds of the wrong shape are refused before the kernel runs."""
    from scalepipe.histograms import _tally, count_bins

    x = np.array([[1.0], [1.0], [0.5], [2.0], [np.nan]])
    got = count_bins(x, np.array([[1.0, 1.0]]))
    ref = numpy_only(count_bins, x, np.array([[1.0, 1.0]]))
    assert got.counts.tolist() == ref.counts.tolist() == [[2]]
    assert (got.under.tolist(), got.over.tolist()) == (ref.under.tolist(), ref.over.tolist()) == ([1], [1])
    with pytest.raises(DataError, match="4 columns need edges of shape"):
        count_bins(np.ones((10, 4)), np.array([[0.0, 1.0]]))
    with pytest.raises(DataError, match="bins >= 1"):
        count_bins(np.ones((10, 1)), np.array([[0.0]]))
    with pytest.raises(DataError, match="bounds of shape"):
        _tally(np.ones((10, 1)), np.array([[0.0, 1.0]]), np.zeros((2, 3)))


def test_non_native_and_small_dtypes_take_the_numpy_path():
    """Big-endian and float16 arrays are scaled (the numpy kernel), equal to native float64."""
    import scalepipe as sp

    x = np.random.default_rng(2).normal(size=(300, 3))
    model = sp.fit(x)
    for odd in (x.astype(">f8"), x.astype(np.float16), np.asfortranarray(x.astype(">f8"))):
        np.testing.assert_array_equal(
            np.asarray(model.transform(odd), np.float64), model.transform(odd.astype(np.float64)).astype(odd.dtype).astype(np.float64)
        )
    assert chunk_moments(Columns([], n_rows=4), exact=True).moments.count.shape == (0,)
