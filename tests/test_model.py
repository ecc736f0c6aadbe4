"""The fitted model across data kinds, column rules, partial_fit and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scalepipe as sp
from scalepipe.errors import ArtifactError, ColumnError, DataError, ParameterError

from .conftest import mixed_frame

RULES = [sp.ZScore(["offset", "tiny"]), sp.MinMax(["f*", "lognormal"], feature_range=(-1, 1)), sp.Decimal(["count"])]
NUMERIC = ["offset", "tiny", "lognormal", "f32", "const", "count"]


def assert_same_model(a: sp.Model, b: sp.Model, rtol: float = 1e-12) -> None:
    assert a.feature_names == b.feature_names
    assert np.array_equal(a.moments.count, b.moments.count)
    np.testing.assert_array_equal(a.moments.min, b.moments.min)
    np.testing.assert_array_equal(a.moments.max, b.moments.max)
    # a mean near zero is compared at the scale of the spread
    assert np.all(np.abs(a.moments.mean - b.moments.mean) <= rtol * (np.abs(b.moments.mean) + b.moments.std()))
    np.testing.assert_allclose(a.moments.var(), b.moments.var(), rtol=rtol, atol=1e-300)
    for k in ("center", "scale", "offset"):
        np.testing.assert_allclose(getattr(a.params, k), getattr(b.params, k), rtol=rtol)


def test_rules_first_match_wins_and_passthrough():
    df = mixed_frame(300)
    model = sp.fit(df, RULES)
    methods = {f.name: model.scalers[f.rule].method for f in model.features}
    assert methods == {"offset": "zscore", "tiny": "zscore", "lognormal": "minmax", "f32": "minmax", "count": "decimal"}
    assert model.passthrough == ["const"]
    out = model.transform(df)
    assert list(out.columns) == list(df.columns)
    assert out["const"].equals(df["const"]) and out["id"].equals(df["id"])
    assert out["f32"].dtype == np.float32 and out["count"].dtype == np.float64


def test_transform_does_not_modify_input():
    df = mixed_frame(300)
    before = df.copy(deep=True)
    x = df[NUMERIC].to_numpy()
    x_before = x.copy()
    sp.fit(df, RULES).transform(df)
    sp.fit(x, [sp.ZScore()]).transform(x)
    pd.testing.assert_frame_equal(df, before)
    assert np.array_equal(x, x_before, equal_nan=True)


def test_transform_matches_numpy_reference():
    df = mixed_frame(1000)
    out = sp.fit(df, [sp.ZScore(["lognormal"]), sp.MinMax(["f32"])]).transform(df)
    col = df["lognormal"].to_numpy()
    expected = (col - np.nanmean(col)) / np.nanstd(col)
    np.testing.assert_allclose(out["lognormal"].to_numpy(), expected, rtol=1e-12, atol=1e-12)
    f = df["f32"].to_numpy(np.float64)
    expected32 = ((f - np.nanmin(f)) / (np.nanmax(f) - np.nanmin(f))).astype(np.float32)
    np.testing.assert_allclose(out["f32"].to_numpy(), expected32, rtol=1e-6)


def test_same_model_for_every_kind(client):
    dd = pytest.importorskip("dask.dataframe")
    da = pytest.importorskip("dask.array")
    xr = pytest.importorskip("xarray")
    df = mixed_frame(3000)[NUMERIC].astype(np.float64)
    x = df.to_numpy()
    rules = [sp.ZScore([0, 1]), sp.MinMax([2, 3]), sp.Decimal([5])]
    names = list(range(6))
    base = sp.fit(x, rules)
    by_kind = {
        "pandas": sp.fit(df.set_axis(names, axis=1), rules),
        "dask.array": sp.fit(da.from_array(x, chunks=(700, 4)), rules),
        "dask.dataframe": sp.fit(dd.from_pandas(df.set_axis([str(n) for n in names], axis=1), npartitions=5),
                                 [sp.ZScore(["0", "1"]), sp.MinMax(["2", "3"]), sp.Decimal(["5"])]),
        "xarray": sp.fit(xr.DataArray(x, dims=("row", "feature")).chunk({"row": 900}), [sp.ZScore(["data[0]", "data[1]"]), sp.MinMax(["data[2]", "data[3]"]), sp.Decimal(["data[5]"])]),
    }
    for kind, model in by_kind.items():
        model.features = [type(f)(names[i], f.dtype, f.rule) for i, f in zip([0, 1, 2, 3, 5], model.features)]
        assert_same_model(model, base)
    ref = base.transform(x)
    np.testing.assert_allclose(by_kind["dask.array"].transform(da.from_array(x, chunks=(700, 4))).compute(), ref, rtol=1e-12, atol=1e-12)


def test_dask_transform_is_lazy_and_keeps_partitions(client):
    dd = pytest.importorskip("dask.dataframe")
    df = mixed_frame(2000)
    ddf = dd.from_pandas(df, npartitions=4)
    model = sp.fit(ddf, RULES)
    out = model.transform(ddf)
    assert out.npartitions == 4
    pd.testing.assert_frame_equal(out.compute()[NUMERIC], sp.fit(df, RULES).transform(df)[NUMERIC], rtol=1e-12, atol=1e-12)


def test_xarray_reduce_dims_per_coordinate(client):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(5)
    values = rng.normal(10, 3, size=(40, 6, 3, 5))
    arr = xr.DataArray(values, dims=("time", "lat", "level", "ch"), coords={"level": [850, 500, 250]}, name="t")
    lazy = arr.chunk({"time": 9, "lat": 4, "ch": 2})
    model = sp.fit(lazy, [sp.ZScore()], reduce_dims=["time", "lat"])
    assert model.feature_names[:2] == ["t[850,0]", "t[850,1]"]
    flat = values.reshape(40 * 6, 15)
    np.testing.assert_allclose(model.moments.mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(model.moments.var(), flat.var(0), rtol=1e-12)
    out = model.transform(lazy)
    assert out.chunks == lazy.chunks and out.dims == lazy.dims
    expected = (values - values.mean((0, 1))) / values.std((0, 1))
    np.testing.assert_allclose(out.values, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.transform(arr).values, expected, rtol=1e-12, atol=1e-12)


def test_the_default_reduce_dim_is_the_widest_variables_first():
    """The default took the first numeric variable's first dimension (Zarr
    lists them alphabetically): a static mask(lat, lon) made t2m(time, lat,
    lon) reduce over lat, one feature per (time, lon), without a word."""
    import xarray as xr

    t2m = np.arange(30.0).reshape(5, 2, 3)
    ds = xr.Dataset({"mask": (("lat", "lon"), np.ones((2, 3))), "t2m": (("time", "lat", "lon"), t2m)})
    model = sp.fit(ds)
    assert model.meta["reduce_dims"] == ["time"] and len(model.feature_names) == 6 and model.feature_names[0] == "t2m[0,0]"
    assert model.transform(ds)["mask"].identical(ds["mask"])
    np.testing.assert_allclose(model.transform(ds)["t2m"].values, (t2m - t2m.mean(0)) / t2m.std(0), rtol=0, atol=1e-12)
    ds["v"] = (("lat", "time", "lon"), np.ones((2, 5, 3)))
    with pytest.raises(DataError, match="reduce_dims: the variables start with different dimensions .*'v' starts with 'lat'"):
        sp.fit(ds)


def test_xarray_dataset(client):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(6)
    ds = xr.Dataset({"a": (("t", "c"), rng.normal(size=(30, 2))), "b": (("t",), rng.random(30))}).chunk({"t": 7})
    model = sp.fit(ds, [sp.MinMax(["a*"]), sp.ZScore(["b"])])
    out = model.transform(ds).compute()
    a = ds["a"].values
    np.testing.assert_allclose(out["a"].values, (a - a.min(0)) / (a.max(0) - a.min(0)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out["b"].values, (ds["b"].values - ds["b"].values.mean()) / ds["b"].values.std(), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(1, 499), min_size=1, max_size=5, unique=True))
def test_partial_fit_equals_one_fit(seed, cuts):
    cuts = [c for c in cuts if c >= 40] or [40]  # the first piece needs a non-NaN value in every column
    df = mixed_frame(500, seed % 1000)
    bounds = [0, *sorted(cuts), 500]
    pieces = [df.iloc[a:b] for a, b in zip(bounds, bounds[1:])]
    model = sp.fit(pieces[0], RULES)
    for piece in pieces[1:]:
        model.partial_fit(piece)
    assert_same_model(model, sp.fit(df, RULES))


@pytest.mark.parametrize("scope", ["global", "exact", "partition", "key"])
def test_a_failed_partial_fit_leaves_the_model_unchanged(tmp_path, scope):
    """The rejected rows were merged into the statistics before the
    parameters failed: the model kept transforming with the old parameters,
    and saved statistics that included the rows."""
    df = pd.DataFrame({"k": [1, 1, 1, 2], "x": [1.0, 2.0, 3.0, 2.5]})
    kwargs = {"exact": {"exact": True}, "partition": {"scope": "partition"}, "key": {"scope": "key", "key": "k"}}.get(scope, {})
    model = sp.fit(df, [sp.MinMax(["x"])], **kwargs)
    model.save(tmp_path / "before.json")
    with pytest.raises(DataError, match="beyond float64"):
        model.partial_fit(pd.DataFrame({"k": [1, 1], "x": [1.7e308, -1.7e308]}))
    model.save(tmp_path / "after.json")
    before, after = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("before", "after"))
    for doc in (before, after):
        for field in ("checksum", "created"):
            doc.pop(field)
    assert after == before


def test_partial_fit_of_a_loaded_model(tmp_path):
    df = mixed_frame(600)
    sp.fit(df.iloc[:200], RULES).save(tmp_path / "s.json")
    updated = sp.load(tmp_path / "s.json").partial_fit(df.iloc[200:])
    assert_same_model(updated, sp.fit(df, RULES))


def test_missing_fitted_column():
    df = mixed_frame(50)
    model = sp.fit(df, RULES)
    with pytest.raises(ColumnError, match="'tiny'.*not in the data"):
        model.transform(df.drop(columns=["tiny"]))


def test_non_numeric_fitted_column_at_transform():
    df = mixed_frame(50)
    model = sp.fit(df, RULES)
    with pytest.raises(ColumnError, match="'offset'.*not numeric"):
        model.transform(df.assign(offset="x"))


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
def test_complex_and_sparse_frame_columns_are_not_numeric():
    """A complex column was fitted and scaled by its real part (numpy input
    refuses complex data); a sparse one failed with a raw TypeError."""
    z = np.array([1 + 100j, 2 + 0j, 3 - 50j])
    sparse = pd.arrays.SparseArray([0.0, 1.0, 0.0])
    df = pd.DataFrame({"z": z, "s": sparse, "x": [1.0, 2.0, 3.0]})
    model = sp.fit(df)
    assert model.feature_names == ["x"]
    out = model.transform(df)
    assert out["z"].tolist() == z.tolist() and out["s"].dtype == sparse.dtype
    for name, dtype in (("z", "complex128"), ("s", re.escape("Sparse[float64, nan]"))):
        with pytest.raises(ColumnError, match=f"column '{name}' has dtype {dtype}, not numeric"):
            sp.fit(df, [sp.MinMax([name])])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_frames_keep_the_float_dtype_arrays_keep(dtype):
    """float16 came back float16 from arrays and float64 from frames."""
    import dask.dataframe as dd

    x = np.array([[1.0], [2.0], [4.0]], dtype=dtype)
    model = sp.fit(x, [sp.MinMax()])
    want = model.transform(x)
    assert want.dtype == dtype
    for got in (model.transform(pd.DataFrame(x)), model.transform(dd.from_pandas(pd.DataFrame(x), npartitions=1)).compute()):
        assert got.dtypes.tolist() == [np.dtype(dtype)]
        np.testing.assert_array_equal(got.to_numpy(), want)


def test_labels_the_model_could_not_find_again_are_refused_at_fit():
    """A NaN column label was fitted, then the same frame could not be
    transformed ('nan were fitted but are not in the data (it has nan, ...)');
    an array of unknown width failed with a raw TypeError."""
    import dask
    import dask.array as da

    with pytest.raises(ColumnError, match="column nan: a NaN label equals no label"):
        sp.fit(pd.DataFrame({np.nan: [1.0, 2.0, 4.0], 1.0: [10.0, 20.0, 40.0]}))
    x = np.arange(20.0).reshape(10, 2)
    unknown = da.from_delayed(dask.delayed(lambda: x)(), shape=(np.nan, np.nan), dtype=float)
    for call in (lambda: sp.fit(unknown), lambda: sp.fit(x).transform(unknown)):
        with pytest.raises(DataError, match=r"number of columns is unknown \(NaN\)"):
            call()


def test_repeated_column_names():
    """A repeated name cannot be fitted (which column?) and is refused by name; one
    that is only passed through keeps both columns, in place."""
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.0, 1.0, 5.0], "c": [7.0, 8.0, 9.0]})
    df.columns = ["a", "b", "a"]
    with pytest.raises(ColumnError, match="column 'a' appears 2 times"):
        sp.fit(df)
    out = sp.fit(df[["b"]], [sp.MinMax(["b"])]).transform(df)
    assert list(out.columns) == ["a", "b", "a"]
    np.testing.assert_array_equal(out.iloc[:, 0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(out.iloc[:, 1], [0.0, 0.2, 1.0])
    np.testing.assert_array_equal(out.iloc[:, 2], [7.0, 8.0, 9.0])


def test_rule_naming_string_column():
    with pytest.raises(ColumnError, match=r"scalers\[0\] \(zscore\): column 'id' has dtype .* not numeric"):
        sp.fit(mixed_frame(50), [sp.ZScore(["id"])])


def test_rule_naming_missing_column():
    with pytest.raises(ColumnError, match=r"scalers\[1\] \(minmax\): column 'nope' not found"):
        sp.fit(mixed_frame(50), [sp.ZScore(["offset"]), sp.MinMax(["nope"])])


def test_rule_matching_nothing():
    with pytest.raises(ColumnError, match=r"scalers\[1\] \(minmax\): \['zz\*'\] matches no"):
        sp.fit(mixed_frame(50), [sp.ZScore(), sp.MinMax(["zz*"])])


def test_inf_at_fit_names_column(client):
    dd = pytest.importorskip("dask.dataframe")
    df = mixed_frame(100)
    df.loc[60, "lognormal"] = np.inf
    with pytest.raises(DataError, match="'lognormal'.*infinite"):
        sp.fit(df, RULES)
    with pytest.raises(DataError, match="'lognormal'.*infinite"):
        sp.fit(dd.from_pandas(df, npartitions=3), RULES)


def test_empty_dataset():
    with pytest.raises(DataError, match="no rows"):
        sp.fit(mixed_frame(10).iloc[:0], RULES)


def test_unknown_method_in_dict_rule():
    with pytest.raises(ParameterError, match=r"scalers\[0\]\.method: unknown method 'robust'"):
        sp.fit(mixed_frame(10), [{"method": "robust"}])


def test_bad_kinds():
    with pytest.raises(DataError, match="2-D"):
        sp.fit(np.arange(5.0), [sp.ZScore()])
    with pytest.raises(DataError, match="cannot scale a builtins.list"):
        sp.fit([[1.0]], [sp.ZScore()])


def test_inference_without_dask(tmp_path):
    df = mixed_frame(200)
    model = sp.fit(df, RULES)
    model.save(tmp_path / "stats.json")
    df.iloc[:1].to_parquet(tmp_path / "row.parquet")
    expected = model.transform(df.iloc[:1])
    script = textwrap.dedent(
        f"""
        import sys
        import pandas as pd
        import scalepipe as sp
        row = pd.read_parquet({str(tmp_path / 'row.parquet')!r})
        out = sp.load({str(tmp_path / 'stats.json')!r}).transform(row)
        out.to_parquet({str(tmp_path / 'got.parquet')!r})
        leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'xarray'))
        print(','.join(leaked))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
    got = pd.read_parquet(tmp_path / "got.parquet")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_exact_fit_identical_across_kinds_and_chunkings(client, tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    df = mixed_frame(4000)[NUMERIC].astype(np.float64)
    rules = [sp.ZScore()]
    models = [sp.fit(df, rules, exact=True)] + [
        sp.fit(dd.from_pandas(df, npartitions=k), rules, exact=True) for k in (1, 3, 17)
    ]
    for m in models[1:]:
        assert m.moments.identical(models[0].moments)
    models[0].save(tmp_path / "e.json")
    loaded = sp.load(tmp_path / "e.json")
    assert loaded.exact.identical(models[0].exact)
    updated = sp.fit(df.iloc[:1500], rules, exact=True).partial_fit(df.iloc[1500:])
    assert updated.moments.identical(models[0].moments)


def test_inf_at_transform_names_the_column(client):
    dd = pytest.importorskip("dask.dataframe")
    df = mixed_frame(200)
    model = sp.fit(df, RULES)
    bad = df.copy()
    bad.loc[7, "f32"] = np.inf
    with pytest.raises(DataError, match="'f32'.*infinite"):
        model.transform(bad)
    with pytest.raises(DataError, match="'f32'.*infinite"):
        model.transform(dd.from_pandas(bad, npartitions=3)).compute()
    x = df[NUMERIC].to_numpy(float)
    x[3, 2] = -np.inf
    with pytest.raises(DataError, match="'lognormal'.*infinite"):
        sp.fit(df[NUMERIC].to_numpy(float), [sp.ZScore()], feature_names=NUMERIC).transform(x, feature_names=NUMERIC)
    # passthrough columns are not checked: they are written unchanged
    assert np.isinf(model.transform(df.assign(const=np.inf))["const"]).all()


def test_xarray_3d_uneven_chunks(client):
    xr = pytest.importorskip("xarray")
    values = np.random.default_rng(14).normal(5, 2, size=(37, 11, 4))
    arr = xr.DataArray(values, dims=("time", "x", "band"), coords={"band": ["r", "g", "b", "n"]}, name="img")
    lazy = arr.chunk({"time": (10, 20, 7), "x": (3, 8), "band": (1, 3)})
    model = sp.fit(lazy, [sp.MinMax(["img[r]", "img[g]"]), sp.ZScore()], reduce_dims=["time", "x"])
    flat = values.reshape(-1, 4)
    np.testing.assert_array_equal(model.moments.min, flat.min(0))
    np.testing.assert_allclose(model.moments.var(), flat.var(0), rtol=1e-12)
    out = model.transform(lazy)
    assert out.chunks == lazy.chunks
    lo, hi = values.min((0, 1)), values.max((0, 1))
    expected = np.concatenate(
        [(values[..., :2] - lo[:2]) / (hi[:2] - lo[:2]), (values[..., 2:] - values[..., 2:].mean((0, 1))) / values[..., 2:].std((0, 1))],
        axis=-1,
    )
    np.testing.assert_allclose(out.values, expected, rtol=1e-12, atol=1e-12)


def _numpy_reference(model, x):
    """The model's transform with the pure numpy kernels, in one block (no threads)."""
    import os

    from scalepipe.methods import apply_affine

    os.environ["SCALEPIPE_NO_NUMBA"] = "1"
    try:
        return apply_affine(x, model.params)
    finally:
        del os.environ["SCALEPIPE_NO_NUMBA"]


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_threaded_transform_and_out_are_bit_identical(layout, dtype):
    """Row blocks on threads (300k x 16 is two blocks), with or without ``out``,
    in place or not, give exactly the one-block numpy result."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((300_000, 16)) * 100).astype(dtype)
    x = np.asfortranarray(x) if layout == "F" else x
    model = sp.fit(x, [sp.ZScore(list(range(6))), sp.MinMax(list(range(6, 12)), clip=True), sp.Decimal()])
    ref = _numpy_reference(model, x)
    got = model.transform(x)
    assert got.dtype == ref.dtype and np.array_equal(got, ref)
    out = np.full_like(ref, np.nan)
    assert model.transform(x, out=out) is out and np.array_equal(out, ref)
    if dtype != "int64":
        y = x.copy(order="K")
        model.transform(y, out=y)
        assert np.array_equal(y, ref)


def test_threaded_transform_names_an_inf_in_a_later_block():
    x = np.ones((300_000, 16))
    x[290_000, 7] = np.inf
    model = sp.fit(np.random.default_rng(0).standard_normal((100, 16)))
    with pytest.raises(DataError, match="'7'|7"):
        model.transform(x)


def test_transform_out_refused_where_it_cannot_apply():
    x = np.random.default_rng(0).standard_normal((50, 3))
    model = sp.fit(x)
    for bad, message in [
        (np.empty((50, 2)), "shape"),
        (np.empty((50, 3), dtype=np.float32), "dtype"),
        (np.empty((50, 3)).__array__(), None),
    ]:
        if message is None:
            bad.flags.writeable = False
            message = "read-only"
        with pytest.raises(ParameterError, match=message):
            model.transform(x, out=bad)
    with pytest.raises(ParameterError, match="2-D numpy"):
        model.transform(pd.DataFrame(x, columns=["0", "1", "2"]), out=np.empty((50, 3)))
    with pytest.raises(ParameterError, match="2-D numpy"):
        sp.fit(x, scope="partition").transform(x, stats="batch", out=np.empty((50, 3)))


def test_one_rule_may_be_given_alone():
    x = np.random.default_rng(0).standard_normal((50, 2))
    np.testing.assert_array_equal(sp.fit(x, sp.ZScore()).transform(x), sp.fit(x, [sp.ZScore()]).transform(x))


@pytest.mark.parametrize("lazy", [False, True])
def test_an_infinity_in_a_column_no_rule_fits_is_no_error(lazy):
    """Only the fitted columns are read at fit (as for tables); the other
    passes through, infinity included, and the statistics equal numpy's."""
    x = np.column_stack([np.arange(6.0), [1.0, np.inf, 2.0, 3.0, -np.inf, 4.0], np.arange(6.0) ** 2])
    data = x
    if lazy:
        import dask.array as da

        data = da.from_array(x, chunks=(4, 3))
    model = sp.fit(data, [sp.MinMax([2]), sp.ZScore([0])])
    assert model.feature_names == [0, 2] and model.passthrough == [1]
    np.testing.assert_allclose(model.moments.mean, [x[:, 0].mean(), x[:, 2].mean()], rtol=1e-15)
    np.testing.assert_allclose(model.moments.max, [5.0, 25.0], rtol=0)
    out = np.asarray(model.transform(data))
    np.testing.assert_array_equal(out[:, 1], x[:, 1])
    with pytest.raises(DataError, match="column 1: infinite values"):
        sp.fit(data, [sp.ZScore()])


def test_repeated_feature_names_are_refused():
    x = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ColumnError, match="feature name 'x' appears 2 times in feature_names"):
        sp.fit(x, [sp.ZScore()], feature_names=["x", "x", "y"])
    xr = pytest.importorskip("xarray")
    labelled = xr.DataArray(x[:, :2], dims=("t", "c"), coords={"c": ["a", "a"]}, name="v")
    with pytest.raises(ColumnError, match=r"feature name 'v\[a\]' appears 2 times \(a dimension's coordinate labels repeat\)"):
        sp.fit(labelled, [sp.MinMax()])


def test_a_transposed_xarray_variable_is_scaled_cell_by_cell(tmp_path):
    """Names follow the dims' order at fit, so a variable whose other dims
    come in another order (same labels on both, as positions are) gets each
    cell's own parameters, before and after save/load; the output keeps the
    input's dims order. (Each cell was scaled with its mirror cell's.)"""
    xr = pytest.importorskip("xarray")
    scale = np.arange(1.0, 10.0).reshape(1, 3, 3)
    a = xr.DataArray(np.random.default_rng(0).standard_normal((50, 3, 3)) * scale + scale, dims=("t", "y", "x"), name="v")
    model = sp.fit(a, [sp.ZScore()])
    model.save(tmp_path / "m.json")
    expected = (a - a.mean("t")) / a.std("t")
    for m in (model, sp.load(tmp_path / "m.json")):
        out = m.transform(a.transpose("x", "t", "y"))
        assert out.dims == ("x", "t", "y")
        np.testing.assert_allclose(out.transpose("t", "y", "x").values, expected.values, rtol=1e-12, atol=1e-12)


def test_dataset_variables_that_cannot_be_scaled_pass_through():
    """A static mask, a label and a variable without the reduced dim pass
    through a Dataset's transform unchanged (the fit refused the whole
    Dataset); the scaled variable equals numpy's z-score; a DataArray, or a
    Dataset with nothing to scale, is an error naming the variables."""
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    t2m = rng.standard_normal((40, 3)) + 280
    ds = xr.Dataset(
        {
            "mask": (("lat",), np.array([True, False, True])),
            "t2m": (("time", "lat"), t2m),
            "label": (("time",), np.array(["a"] * 40)),
            "elev": (("lat",), np.array([1.0, 2.0, 3.0])),
        }
    )
    model = sp.fit(ds, [sp.ZScore()])
    assert model.feature_names == ["t2m[0]", "t2m[1]", "t2m[2]"] and model.meta["reduce_dims"] == ["time"]
    out = model.transform(ds)
    for var in ("mask", "label", "elev"):
        assert out[var].identical(ds[var]), var
    np.testing.assert_allclose(out["t2m"].values, (t2m - t2m.mean(0)) / t2m.std(0), rtol=0, atol=1e-12)
    with pytest.raises(DataError, match="variable 'mask' has dtype bool, not numeric; it cannot be scaled"):
        sp.fit(ds["mask"])
    with pytest.raises(DataError, match="no data variable can be scaled: 'mask' has dtype bool, not numeric; 'label' has dtype <U1"):
        sp.fit(ds[["mask", "label"]])


def test_a_dask_variable_reduced_over_its_last_dim_fits_the_chosen_features_only(client):
    """Reading only the chosen columns is for rows x features; a dask variable
    whose reduced dim is not the first must not take that path (it gave
    another cell's statistics)."""
    xr = pytest.importorskip("xarray")
    values = np.random.default_rng(0).standard_normal((3, 50)) * np.array([[1.0], [10.0], [100.0]]) + np.array([[0.0], [5.0], [-7.0]])
    arr = xr.DataArray(values, dims=("f", "t"), coords={"f": ["a", "b", "c"]}, name="v").chunk({"t": 20})
    model = sp.fit(arr, [sp.ZScore(["v[b]"])], reduce_dims=["t"])
    np.testing.assert_allclose([model.moments.count[0], model.moments.mean[0]], [50, values[1].mean()], rtol=1e-13)


def test_minmax_takes_an_array_feature_range():
    assert sp.MinMax(feature_range=np.array([-1, 1])).feature_range == (-1.0, 1.0)


def test_a_rule_naming_a_variable_without_the_reduced_dims_says_so():
    """It said "column 't2m' not found in the data", listing other features."""
    import xarray as xr

    ds = xr.Dataset({"t2m": (("time", "lat"), np.ones((4, 2))), "u": (("time", "level"), np.arange(8.0).reshape(4, 2))})
    with pytest.raises(ColumnError, match=r"^scalers\[0\] \(zscore\): variable 't2m' has no dimension\(s\) \['level'\] to reduce over \(its dims: \['time', 'lat'\]\); it cannot be scaled$"):
        sp.fit(ds, [sp.ZScore(["t2m"])], reduce_dims=["level"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_rows": 0}, "batch_rows: must be a positive integer or None, got 0"),
        ({"batch_rows": 2.5}, "batch_rows: must be a positive integer or None, got 2.5"),
        ({"batch_rows": True}, "batch_rows: must be a positive integer or None, got True"),
        ({"min_batch_rows": 0}, "min_batch_rows: must be a positive integer, got 0"),
    ],
)
def test_partition_scope_settings_are_checked_in_the_python_api(settings, message):
    """batch_rows=0 failed with a raw 'range() arg 3 must not be zero', 2.5 with a
    TypeError, -3 said 'no rows to fit'; min_batch_rows=0 was accepted, saved,
    and then refused by load."""
    with pytest.raises(ParameterError, match=re.escape(message)):
        sp.fit(np.arange(8.0).reshape(4, 2), scope="partition", **settings)


def test_partition_labels_must_be_one_per_partition():
    x = np.arange(8.0).reshape(4, 2)
    with pytest.raises(ParameterError, match="partition_labels: has 3 labels for 1 partitions"):
        sp.fit(x, scope="partition", partition_labels=["a", "b", "c"])


def test_a_tuple_key_column_is_refused_at_save(tmp_path):
    """It saved, came back as a list, and the loaded model's transform failed ('unhashable type: list')."""
    df = pd.DataFrame({("k", 1): ["a", "b", "a"], "x": [1.0, 2.0, 4.0]})
    model = sp.fit(df, scope="key", key=("k", 1))
    with pytest.raises(ArtifactError, match=r"key column \('k', 1\) \(tuple\) cannot be saved"):
        model.save(tmp_path / "stats.json")


def test_out_overlapping_the_input_gives_the_same_values():
    """A buffer sharing memory with the input, other than the input itself, was
    filled while being read: values off by up to ~5."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=(400, 3)) * 10
    model = sp.fit(b, [sp.MinMax()])
    want = model.transform(b[:-1].copy())
    got = model.transform(b[:-1], out=b[1:])
    np.testing.assert_array_equal(got, want)
    y = rng.normal(size=(300, 4)) * [1, 10, 100, 1000]
    m = sp.fit(y[:, ::-1], [sp.MinMax()])
    want = m.transform(y[:, ::-1].copy())
    np.testing.assert_array_equal(m.transform(y[:, ::-1], out=y), want)  # the same memory, columns reversed


def test_masked_arrays_are_refused():
    """The mask was ignored at fit (the masked 1e6 fitted) and transform failed in numba."""
    x = np.ma.masked_array([[1.0], [2.0], [1e6]], mask=[[0], [0], [1]])
    with pytest.raises(DataError, match=r"masked arrays are not read .* x.filled\(np.nan\)"):
        sp.fit(x)


def test_exact_must_be_a_boolean():
    """exact="no" was taken as true."""
    with pytest.raises(ParameterError, match="exact: must be True or False, got 'no'"):
        sp.fit(np.arange(6.0).reshape(3, 2), exact="no")


def test_arguments_that_would_be_misread_are_refused():
    """feature_names="ab" was the two names 'a' and 'b'; MinMax([True])
    selected column 1 (True == 1); reduce_dims was ignored for a numpy array."""
    x = np.random.default_rng(0).random((10, 2))
    with pytest.raises(ParameterError, match=r"^feature_names: a sequence of names, one per column, not the string 'ab'$"):
        sp.fit(x, feature_names="ab")
    with pytest.raises(ParameterError, match=r"^columns: \[True\] holds a boolean"):
        sp.MinMax([True])
    with pytest.raises(ParameterError, match=r"^reduce_dims: applies to xarray data \(numpy data is reduced over its rows\), got \['time'\]$"):
        sp.fit(x, reduce_dims=["time"])
    assert sp.fit(x, [sp.MinMax([1])]).feature_names == [1]  # positions stay positions
