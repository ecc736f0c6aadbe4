"""Exact sums against rational arithmetic, and their merge laws (bit-identical)."""

from __future__ import annotations

import json
import math
import pickle
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalepipe import exact
from scalepipe.errors import ArtifactError, DataError
from scalepipe.exact import (
    S1_LIMBS,
    S2_LIMBS,
    ExactSums,
    chunk_exact_sums,
    exact_mean_m2,
    from_lists,
    merge_exact,
    merge_exact_all,
    to_lists,
)
from scalepipe.stats import NonFiniteError

try:
    from scalepipe import _exact_numba

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False

KERNELS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing"))]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    """Run the test with the numpy kernel and (where installed) the numba kernel."""
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1" if request.param == "numpy" else "")
    return request.param


def _to_float(q: Fraction) -> float:
    try:
        return float(q)
    except OverflowError:
        return math.inf


def reference(column: np.ndarray) -> tuple[float, float]:
    """Correctly rounded mean and m2 of the non-NaN values, by ``Fraction``."""
    values = [Fraction(float(v)) for v in column if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    n = len(values)
    s1 = sum(values, Fraction(0))
    mean = s1 / n
    m2 = sum(((v - mean) ** 2 for v in values), Fraction(0))
    return _to_float(mean), _to_float(m2)


def exact_ints(s: ExactSums) -> list[tuple[Fraction, Fraction]]:
    """The sums held by ``s`` as fractions, from the limbs."""
    out = []
    for i in range(s.s1.shape[0]):
        a1 = sum(int(v) << (32 * k) for k, v in enumerate(s.s1[i]))
        a2 = sum(int(v) << (32 * k) for k, v in enumerate(s.s2[i]))
        out.append((Fraction(a1, 1 << 1074), Fraction(a2, 1 << 2148)))
    return out


def check_against_reference(x: np.ndarray) -> None:
    s = chunk_exact_sums(x)
    count = (~np.isnan(x)).sum(axis=0)
    mean, m2 = exact_mean_m2(s, count)
    for j in range(x.shape[1]):
        col = x[:, j]
        values = [Fraction(float(v)) for v in col if not math.isnan(v)]
        assert exact_ints(s)[j] == (sum(values, Fraction(0)), sum((v * v for v in values), Fraction(0)))
        want_mean, want_m2 = reference(col)
        np.testing.assert_array_equal([mean[j], m2[j]], [want_mean, want_m2], err_msg=f"column {j}")
    assert_canonical(s)


def assert_canonical(s: ExactSums) -> None:
    for limbs in (s.s1, s.s2):
        low = limbs[..., :-1]
        assert ((low >= 0) & (low < 2**32)).all()


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n = 400
    tiny = np.array([5e-324, -5e-324, 2.2250738585072014e-308, 1e-310, -3e-320, 1e-300, -1e-300])
    huge = np.array([1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308, 3e307])
    mixed = np.concatenate([tiny, huge, [1.0, -0.1, 0.0, -0.0, np.nan]])
    with_nan = rng.standard_normal(n)
    with_nan[rng.random(n) < 0.2] = np.nan
    return {
        "normal": np.column_stack([rng.standard_normal(n), 3 * rng.standard_normal(n) - 7]),
        "nan": with_nan[:, None],
        "subnormal": (rng.standard_normal(n) * 1e-310)[:, None],
        "1e300": (rng.standard_normal(n) * 1e300)[:, None],
        "1e-300": (rng.standard_normal(n) * 1e-300)[:, None],
        "1e-160": (rng.standard_normal(n) * 1e-160)[:, None],
        "mixed_magnitudes": rng.permutation(np.tile(mixed, 20))[:, None],
        "tiny_spread": (1e12 + 1e-3 * rng.random(n))[:, None],
        "offset": (1e9 + rng.standard_normal(n))[:, None],
        "float32": (1e4 + rng.standard_normal((n, 2))).astype(np.float32).astype(np.float64),
        "zeros": np.zeros((5, 2)),
        "one_row": np.array([[3.5, -1e300, 5e-324, np.nan]]),
        "all_nan_column": np.column_stack([np.full(n, np.nan), rng.random(n)]),
        "cancelling": np.array([[1e300], [1.0], [-1e300], [1e-300], [2.0**-1074]]),
        "lognormal": rng.lognormal(0.0, 20.0, (n, 1)),
    }


@pytest.mark.parametrize("name", list(datasets()))
def test_matches_fraction_reference(name, kernel):
    check_against_reference(datasets()[name])


def test_zero_rows(kernel):
    s = chunk_exact_sums(np.empty((0, 3)))
    assert s.identical(ExactSums.empty(3))
    mean, m2 = exact_mean_m2(s, np.zeros(3, np.int64))
    assert np.isnan(mean).all() and np.isnan(m2).all()


def test_float32_input_is_exact(kernel):
    x32 = (np.random.default_rng(1).standard_normal((100, 3)) * 1e20).astype(np.float32)
    assert chunk_exact_sums(x32).identical(chunk_exact_sums(x32.astype(np.float64)))


def test_integers_convert_and_bad_input_is_rejected():
    ints = np.arange(-6, 6).reshape(4, 3)
    assert chunk_exact_sums(ints).identical(chunk_exact_sums(ints.astype(np.float64)))
    with pytest.raises(DataError, match="real numeric"):
        chunk_exact_sums(np.ones((2, 2), dtype=complex))
    with pytest.raises(DataError, match="2-D"):
        chunk_exact_sums(np.ones(3))


def test_inf_raises_naming_the_column(kernel):
    x = np.ones((50, 4))
    x[10, 2] = -np.inf
    x[3, 0] = np.nan
    with pytest.raises(NonFiniteError) as info:
        chunk_exact_sums(x)
    assert info.value.positions == [2]


def test_layouts_and_views_agree(kernel):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((301, 7)) * np.logspace(-200, 200, 7)
    x[rng.random(x.shape) < 0.1] = np.nan
    want = chunk_exact_sums(x)
    assert chunk_exact_sums(np.asfortranarray(x)).identical(want)
    wide = np.zeros((301, 14))
    wide[:, ::2] = x
    assert chunk_exact_sums(wide[:, ::2]).identical(want)
    assert chunk_exact_sums(x[::-1]).identical(want)


def test_numpy_sub_blocks(monkeypatch):
    """Many numpy sub-blocks (and one-row sub-blocks) give the same limbs."""
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
    x = np.random.default_rng(4).standard_normal((257, 5)) * 1e100
    want = chunk_exact_sums(x)
    for sub in (1, 7, 64):
        monkeypatch.setattr(exact, "_SUB_VALUES", sub)
        assert chunk_exact_sums(x).identical(want)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_numba_and_numpy_identical(monkeypatch):
    rng = np.random.default_rng(5)
    scales = np.array([1.0, 1e-300, 1e300, 1e12, 5e-324, 1e-160, 1e160, 1.0])
    x = rng.standard_normal((2000, 8)) * scales
    x[:, 3] += 1e12
    x[rng.random(x.shape) < 0.05] = np.nan
    x[::7, 7] = 0.0
    for block in (x, np.asfortranarray(x), x[::3, ::2]):
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
        a = chunk_exact_sums(block)
        merged_a = merge_exact(a, chunk_exact_sums(-block))
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
        b = chunk_exact_sums(block)
        assert a.identical(b)
        assert merge_exact(b, chunk_exact_sums(-block)).identical(merged_a)


def _fast_path_edges(seed: int) -> np.ndarray:
    """Columns at the numba fast path's limits: magnitudes near 2**-462 and
    2**510, exponent spans near 75 bits, one odd value in a block, blocks of
    NaN/zeros, and blocks on both paths in one column."""
    rng = np.random.default_rng(seed)
    lane = _exact_numba.BLOCK
    n = 8 * lane + 1  # full lanes and one row
    u = rng.standard_normal(n)
    cols = [np.ldexp(u, t) for t in (-465, -462, -461, -300, 0, 300, 509, 510, 511)]
    for span in (20, 22, 23, 24, 30, 75, 101):
        c = 1.0 + np.ldexp(np.floor(rng.random(n) * 2**20), -20)  # in [1, 2): |x| < 2**1
        c[rng.integers(0, n, 8)] = np.ldexp(1.0, 1 - span)  # its exponent `span` below
        c[::5] *= -1
        cols.append(c)
    odd = rng.standard_normal(n)
    odd[int(1.5 * lane)] = 1e-30
    odd[100] = np.nan
    cols.append(odd)
    nan_block = rng.standard_normal(n)
    nan_block[:lane] = np.nan
    nan_block[lane : lane + 50] = 0.0
    cols.append(nan_block)
    straddle = rng.standard_normal(n)  # lanes alternate between the fast and the general path
    straddle[lane + 3 :: 2 * lane] = 1e-300
    straddle[3 * lane + 7 :: 4 * lane] = 1e300
    cols.append(straddle)
    cols.append(1e9 + rng.standard_normal(n))
    cols.append(np.float32(rng.lognormal(0.0, 3.0, n)).astype(np.float64))
    cols.append(np.float32(1e4 + rng.standard_normal(n)).astype(np.float64))
    return np.column_stack(cols)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
@pytest.mark.parametrize("seed", [0, 1])
def test_numba_fast_path_edges_identical(seed, monkeypatch):
    x = _fast_path_edges(seed)
    lane = _exact_numba.BLOCK
    f_order = np.asfortranarray(x)
    blocks = [x, f_order, f_order[lane - 3 : 3 * lane + 5], f_order[1:2], x[: lane + 1], x[:7, :11], x[:, ::-1], x[::2]]
    blocks += [f_order[:, ::-3], np.broadcast_to(x[:, :1], (x.shape[0], 3)), x[:1], x[:0]]
    for block in blocks:
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
        a = chunk_exact_sums(block)
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
        assert chunk_exact_sums(block).identical(a), block.shape
    if seed == 0:
        check_against_reference(x[: lane + 40])
        check_against_reference(f_order[lane - 30 : 2 * lane + 30, -6:])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_numba_reads_float32_in_place(monkeypatch):
    """float32 goes to the numba kernel unconverted, in either layout; the sums are those of its float64 values."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3 * _exact_numba.BLOCK + 5, 5)) * np.array([1.0, 1e30, 1e-30, 1e37, 1.0])).astype(
        np.float32
    )
    x[rng.random(x.shape) < 0.05] = np.nan
    x[:, 4] = np.float32(1e-45)  # the smallest float32 subnormal
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
    want = chunk_exact_sums(x.astype(np.float64))
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
    assert chunk_exact_sums(x).identical(want)
    assert chunk_exact_sums(np.asfortranarray(x)).identical(want)
    assert chunk_exact_sums(x[:, ::-1]).identical(want.take([4, 3, 2, 1, 0]))
    tail = chunk_exact_sums(np.asfortranarray(x)[3:])
    assert merge_exact(chunk_exact_sums(x[:3]), tail).identical(want)
    check_against_reference(x[:200].astype(np.float64))


def _row_groups_block(seed: int) -> np.ndarray:
    """A C-order block wider than a feature group of the numba row path: in
    each group and lane, features on the fast path sit beside features on the
    general path (subnormals, +-1e300, spans past 75 bits), all-NaN and zero
    features, and features that switch path from lane to lane."""
    rng = np.random.default_rng(seed)
    lane = _exact_numba.BLOCK
    n = 2 * lane + 3
    edges = _fast_path_edges(seed)[:n]
    special = np.column_stack(
        [
            np.full(n, np.nan),
            np.zeros(n),
            rng.standard_normal(n) * 1e-310,
            rng.standard_normal(n) * 1e300,
            rng.integers(-(2**53), 2**53, n).astype(np.float64),
            rng.permutation(np.resize([1e300, -1e300, 5e-324, 1.0, np.nan, -0.0], n)),
        ]
    )
    cols = np.concatenate([edges, special, edges * -3.0, special[:, ::-1]], axis=1)
    cols = cols[:, rng.permutation(cols.shape[1])]
    width = _exact_numba._PANEL + 9
    x = np.concatenate([cols] * -(-width // cols.shape[1]), axis=1)[:, :width]
    x[rng.random(x.shape) < 0.03] = np.nan
    return np.ascontiguousarray(x)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
@pytest.mark.parametrize("seed", [0, 1])
def test_numba_row_path_identical(seed, monkeypatch):
    """C-order blocks are read in place across the features; whatever mixes of
    paths share a lane, the limbs equal the numpy kernel's and the column-major
    path's, and Fraction's sums."""
    x = _row_groups_block(seed)
    lane = _exact_numba.BLOCK
    group = _exact_numba._PANEL
    blocks = [x, x[:1], x[:0], x[lane - 2 : lane + 5], x[:, : group - 1], x[:, group - 3 :], x[5:6, 7:9]]
    for block in blocks:
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
        want = chunk_exact_sums(block)
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
        assert chunk_exact_sums(block).identical(want), block.shape
        assert chunk_exact_sums(np.asfortranarray(block)).identical(want), block.shape
    if seed == 0:
        check_against_reference(x[: lane + 9])
        check_against_reference(x[-1:])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
@pytest.mark.parametrize("f", [1, 5, 16, 64, 70])
def test_numba_row_path_across_blocks_and_panels(f, monkeypatch):
    """The row path over many blocks (and two panels for 70 features): the
    scale stepping up and down within and across blocks (a feature's grids
    change), large digits of one sign over whole blocks, a feature leaving
    the fast path for one block, all-NaN and zero stretches, and a ragged
    last block."""
    rng = np.random.default_rng(f)
    n = 5 * _exact_numba._ROWS + 7
    x = rng.standard_normal((n, f)) * np.resize([1.0, 3.0, 1e-5, 1e8], f)
    step = max(1, _exact_numba._PANEL_VALUES // min(f, _exact_numba._PANEL) // 3)
    x *= np.exp2((np.arange(n) // step) % 5 - 2.0)[:, None]  # the top exponent moves every third of a block
    x[: n // 2, 0] *= 1000.0
    x[n // 2 + 2 * _exact_numba._ROWS :: 97, 0] = 2.0**-15
    if f > 1:
        x[:, 1] = 2.0 - 2.0**-20  # digits near 2**25 units, all positive
    if f > 2:
        x[n // 2, 2] = 1e-300  # one block on the general path
    if f > 3:
        x[: 3 * step, 3] = np.nan
        x[5 * step : 6 * step, 3] = 0.0
    x[rng.random(x.shape) < 0.01] = np.nan
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
    want = chunk_exact_sums(x)
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
    assert chunk_exact_sums(x).identical(want)
    assert chunk_exact_sums(np.asfortranarray(x)).identical(want)
    x.flags.writeable = False  # read-only blocks (memory maps, Arrow buffers) take the same kernel
    assert chunk_exact_sums(x).identical(want)
    if f == 5:
        check_against_reference(x)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_numba_row_path_float32_and_ints(monkeypatch):
    """float32 (read in place) and integers (converted) on the row path, with
    fast and general features side by side; the sums are Fraction's."""
    rng = np.random.default_rng(11)
    n = _exact_numba.BLOCK + 17
    scales = np.array([1.0, 1e30, 1e-30, 1e37, 1e-40, 3.0, 1e4])
    x32 = (rng.standard_normal((n, 70)) * np.resize(scales, 70)).astype(np.float32)
    x32[:, 5] = np.float32(1e-45)  # the smallest float32 subnormal
    x32[:, 6] += np.float32(1e4)
    x32[rng.random(x32.shape) < 0.05] = np.nan
    x32[::9, 3] = np.float32(1e-38)  # a general-path feature in some lanes only
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
    want = chunk_exact_sums(x32.astype(np.float64))
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
    assert chunk_exact_sums(x32).identical(want)
    check_against_reference(x32[:, :9].astype(np.float64))
    ints = rng.integers(-(2**62), 2**62, (n, 66)) >> rng.integers(0, 62, 66)
    ints[:, 0] = 0
    check_against_reference(ints[:40, :8].astype(np.float64))
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
    want = chunk_exact_sums(ints)
    monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
    assert chunk_exact_sums(ints).identical(want)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_numba_row_path_compiled_with_its_vectoriser_settings(monkeypatch):
    """Each array type the row path meets (float32/64, read-only; unaligned
    blocks are copied) is compiled by ``_row_kernel``, none by a plain call
    (which would leave out the SLP vectoriser, 3-4x slower); the sums are the
    numpy kernel's."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((300, 6))
    x[::7, 2] = np.nan
    read_only = x.copy()
    read_only.flags.writeable = False
    unaligned = np.frombuffer(b"\0" + x.astype(np.float32).tobytes(), np.float32, offset=1).reshape(x.shape)
    assert not unaligned.flags.aligned and unaligned.flags.c_contiguous
    for block in (x, read_only, x.astype(np.float32), unaligned):
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "1")
        want = chunk_exact_sums(block.astype(np.float64))
        monkeypatch.setenv("SCALEPIPE_NO_NUMBA", "")
        assert chunk_exact_sums(block).identical(want), (block.dtype, block.flags)
    assert len(_exact_numba._row_sums.signatures) == len(_exact_numba._ROW_KERNELS) >= 3


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba missing")
def test_numba_row_path_inf_in_a_later_group():
    x = np.ones((3 * _exact_numba.BLOCK, _exact_numba._PANEL + 6))
    x[:, 1] = 1e-300  # general path before the inf
    x[2 * _exact_numba.BLOCK + 4, _exact_numba._PANEL + 2] = np.inf
    with pytest.raises(NonFiniteError) as info:
        chunk_exact_sums(x)
    assert info.value.positions == [_exact_numba._PANEL + 2]


def _pieces(x: np.ndarray, n_pieces: int, seed: int) -> list[np.ndarray]:
    cuts = sorted(random.Random(seed).choices(range(x.shape[0] + 1), k=n_pieces - 1))
    return np.split(x, cuts)


def _shuffled_merge(parts: list[ExactSums], seed: int) -> ExactSums:
    """Merge ``parts`` pairwise in a random order and a random tree shape."""
    rnd = random.Random(seed)
    pool = list(parts)
    while len(pool) > 1:
        a = pool.pop(rnd.randrange(len(pool)))
        b = pool.pop(rnd.randrange(len(pool)))
        pool.append(merge_exact(a, b) if rnd.random() < 0.5 else merge_exact(b, a))
    return pool[0]


finite = st.floats(allow_nan=False, allow_infinity=False)
values = st.one_of(
    finite,
    st.just(math.nan),
    st.floats(-1e3, 1e3),
    st.floats(min_value=-1e-300, max_value=1e-300),
    st.sampled_from([0.0, -0.0, 5e-324, 1e300, -1e300, 1e12 + 0.5]),
)


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(st.lists(values, min_size=3, max_size=3), min_size=1, max_size=120),
    n_pieces=st.sampled_from([1, 3, 17, 100]),
    seed=st.integers(0, 2**31),
)
def test_bit_identical_under_any_chunking_and_merge_order(data, n_pieces, seed):
    x = np.array(data, dtype=np.float64)
    whole = chunk_exact_sums(x)
    parts = [chunk_exact_sums(p) for p in _pieces(x, n_pieces, seed)]
    merged = _shuffled_merge(parts, seed)
    assert merged.identical(whole)
    assert merge_exact_all(parts[::-1]).identical(whole)
    count = (~np.isnan(x)).sum(axis=0)
    for got, want in zip(exact_mean_m2(merged, count), exact_mean_m2(whole, count)):
        assert np.array_equal(got, want, equal_nan=True)
    mean, m2 = exact_mean_m2(whole, count)
    for j in range(x.shape[1]):
        np.testing.assert_array_equal([mean[j], m2[j]], reference(x[:, j]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), n_pieces=st.sampled_from([3, 17, 100]))
def test_partitioning_invariance_on_hard_columns(seed, n_pieces):
    """The columns where float merges drift: offsets, tiny spreads, mixed scales."""
    rng = np.random.default_rng(seed)
    n = 1000
    x = np.column_stack(
        [
            1e12 + 1e-3 * rng.random(n),
            1e9 + rng.standard_normal(n),
            rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n),
        ]
    )
    whole = chunk_exact_sums(x)
    parts = [chunk_exact_sums(p) for p in _pieces(x, n_pieces, seed)]
    assert _shuffled_merge(parts, seed).identical(whole)


def test_merge_identity_and_many_values_do_not_overflow():
    x = np.array([[1.7976931348623157e308, -5e-324, 1e-300]])
    one = chunk_exact_sums(x)
    assert merge_exact(ExactSums.empty(3), one).identical(one)
    # 2**40 copies of each value, by repeated doubling: far beyond 2**31 values.
    s = one
    for _ in range(40):
        s = merge_exact(s, s)
    assert_canonical(s)
    for (s1, s2), v in zip(exact_ints(s), x[0]):
        assert s1 == Fraction(v) * 2**40 and s2 == Fraction(v) ** 2 * 2**40
    mean, m2 = exact_mean_m2(s, np.full(3, 2**40))
    assert mean.tolist() == x[0].tolist()
    assert m2.tolist() == [0.0, 0.0, 0.0]


def test_m2_beyond_the_largest_double_is_inf():
    x = np.array([[1e300], [-1e300]])
    mean, m2 = exact_mean_m2(chunk_exact_sums(x), np.array([2]))
    assert mean.tolist() == [0.0] and m2.tolist() == [math.inf]


def test_inconsistent_count_raises():
    s = chunk_exact_sums(np.array([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError, match="inconsistent"):
        exact_mean_m2(s, np.array([1]))
    with pytest.raises(ValueError, match="shape"):
        exact_mean_m2(s, np.array([3, 3]))


def test_json_round_trip():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((100, 4)) * np.array([1.0, 1e300, -1e-300, 1e-320])
    s = chunk_exact_sums(x).reshape((2, 2))
    text = json.dumps(to_lists(s))
    back = from_lists(json.loads(text))
    assert back.identical(s) and back.shape == (2, 2)
    # a restored model keeps updating exactly
    more = chunk_exact_sums(x[:10]).reshape((2, 2))
    assert merge_exact(back, more).identical(merge_exact(s, more))
    d = to_lists(s)
    d["s1"] = [int(v, 16) for v in d["s1"]]  # plain JSON ints are accepted too
    assert from_lists(d).identical(s)
    assert pickle.loads(pickle.dumps(s)).identical(s)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("s2"),
        lambda d: d.update(s1_exp=-1000),
        lambda d: d.update(s1=d["s1"][:1]),
        lambda d: d.update(s2=["-0x1"] * len(d["s2"])),
        lambda d: d.update(s1=["zz"] * len(d["s1"])),
        lambda d: d.update(s1=[hex(1 << 3000)] * len(d["s1"])),
    ],
)
def test_from_lists_rejects_malformed(change):
    d = to_lists(chunk_exact_sums(np.ones((3, 2))))
    change(d)
    with pytest.raises(ArtifactError):
        from_lists(d)


def test_feature_shape_helpers():
    x = np.random.default_rng(7).standard_normal((20, 6))
    s = chunk_exact_sums(x)
    assert s.reshape((2, 3)).shape == (2, 3)
    assert s.take([4, 1]).identical(chunk_exact_sums(x[:, [4, 1]]))
    assert ExactSums.concat([s.take([0, 1]), s.take([2, 3, 4, 5])]).identical(s)
    assert s.s1.shape == (6, S1_LIMBS) and s.s2.shape == (6, S2_LIMBS)
    with pytest.raises(ValueError):
        ExactSums(np.zeros((2, 3), np.int64), np.zeros((2, S2_LIMBS), np.int64))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([1, 3, 255, 257, 2049, 5000]),
    f=st.sampled_from([1, 3, 17, 70]),
    layout=st.sampled_from(["C", "F", "columns"]),
    dtype=st.sampled_from(["float64", "float32"]),
)
def test_exact_mode_extremes_equal_the_moments_kernels(seed, n, f, layout, dtype):
    """Exact mode takes count, NaN count, min, max and absmax from the exact
    kernel's own sweep (no second kernel): they equal the moments kernel's, bit
    for bit, with NaN, all-NaN columns, signed zeros and >64 columns (the C
    sweep's feature groups), in any layout and with either kernel."""
    from scalepipe.stats import Columns, chunk_moments

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, f)) * 10.0 ** rng.integers(-5, 12, f)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 0] = np.nan  # no value at all
    if f > 1:
        x[:, 1] = rng.choice([-0.0, 0.0, np.nan], n)
    block = np.asfortranarray(x) if layout == "F" else Columns.of(x) if layout == "columns" else x
    for numpy_only in ("1", ""):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SCALEPIPE_NO_NUMBA", numpy_only)
            got = chunk_moments(block, exact=True)
            ref = chunk_moments(x)
        for field in ("count", "nan_count", "min", "max", "absmax"):
            assert np.array_equal(getattr(got.moments, field), getattr(ref, field), equal_nan=True), field
        assert not np.signbit(got.moments.min[1:2]).any() and not np.signbit(got.moments.max[1:2]).any()
        assert np.isnan(got.moments.mean).all()  # until finish()
        assert got.sums.identical(chunk_exact_sums(x))


def test_exact_mode_names_every_infinite_column(kernel):
    from scalepipe.stats import Columns, chunk_moments

    x = np.ones((600, 4))
    x[10, 1], x[599, 3] = np.inf, -np.inf
    for block in (x, np.asfortranarray(x), Columns.of(x)):
        with pytest.raises(NonFiniteError, match="columns 'b', 'd'"):
            chunk_moments(block, ["a", "b", "c", "d"], exact=True)


def test_the_exact_mean_keeps_its_residual(tmp_path):
    """An exact fit stored mean_lo 0: drift compared the new data's mean
    (kept to ~106 bits) with the rounded exact mean alone and found a shift
    of 0.8 standard deviations on the data the artifact was fitted on
    (1e12 + 1e-4*U: an ulp of the mean is four standard deviations)."""
    import scalepipe as sp
    from scalepipe.drift import drift_report

    rng = np.random.default_rng(0)
    x = np.column_stack([1e12 + 1e-4 * rng.random(5000), rng.standard_normal(5000) * 1e-200, np.arange(5000.0)])
    model = sp.fit(x, [sp.MinMax()], exact=True)  # zscore refuses the 1e-200 column: its variance underflows
    for j in range(x.shape[1]):
        exact_mean = sum(map(Fraction, x[:, j].tolist()), Fraction(0)) / len(x)
        residual = exact_mean - Fraction(model.moments.mean[j])
        assert model.moments.mean_lo[j] == _to_float(residual), j  # the residual, correctly rounded
    model.save(tmp_path / "stats.json")
    loaded = sp.load(tmp_path / "stats.json")
    assert np.array_equal(loaded.moments.mean_lo, model.moments.mean_lo)
    assert drift_report(loaded, x).features[0].mean_shift == 0.0
