"""The job in-process: the example configs end to end, validation, and the checks before any work.

Jobs run on the session's ``distributed`` cluster (``scheduler=`` its address),
which exercises the connect-to-an-address path and saves a cluster start per
job; ``tests/test_cli.py`` runs the embedded cluster in real subprocesses.
Expected values are computed here with numpy from the data written, not with
scalepipe.
"""

from __future__ import annotations

import csv

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scalepipe as sp
from scalepipe import io
from scalepipe.config import load_config
from scalepipe.config import ClusterConfig
from scalepipe.errors import ColumnError, ConfigError, DataError, OutputError
from scalepipe.pipeline import drift_job, run_job, validate_job

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def job(name: str, tmp_path: Path, *overrides: str, inp: str = "in", out: str | None = "out"):
    """``configs/<name>`` with its paths moved under ``tmp_path``."""
    paths = [f"input.path={tmp_path / inp}", f"stats.path={tmp_path / 'stats.json'}"]
    if out is not None:
        paths.append(f"output.path={tmp_path / out}")
    return load_config(CONFIGS / name, [*paths, *overrides])


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_is_valid(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.version == 1 and cfg.scalers


# --------------------------------------------------------------------------
# CSV: configs/csv_example.yaml
# --------------------------------------------------------------------------


def customers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "customer_id": [f"c{seed}-{i:05d}" for i in range(n)],
            "age": rng.integers(18, 90, n).astype(float),
            "income": np.round(rng.lognormal(10, 1, n), 2),
            "px_1": rng.random(n),
            "px_2": 100 + rng.standard_normal(n),
            "amount": np.round(rng.normal(0, 3000, n), 2),
            "segment": rng.choice(["a", "b", "c"], n),
            "visits": rng.integers(0, 50, n),
        }
    )
    df.loc[rng.random(n) < 0.05, "income"] = np.nan
    return df


def expected_customers(df: pd.DataFrame) -> pd.DataFrame:
    """csv_example.yaml's rules, computed with numpy."""
    out = df.copy()
    for col in ("age", "income"):
        x = df[col].to_numpy(float)
        out[col] = (x - np.nanmean(x)) / np.nanstd(x)
    for col in ("px_1", "px_2"):
        x = df[col].to_numpy(float)
        lo, hi = np.nanmin(x), np.nanmax(x)
        out[col] = np.clip(-1 + (x - lo) * (2 / (hi - lo)), -1, 1)
    x = df["amount"].to_numpy(float)
    j = int(np.floor(np.log10(np.nanmax(np.abs(x))))) + 1
    out["amount"] = x / 10.0**j
    return out


@pytest.fixture(scope="module")
def csv_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("customers")
    df = customers(3000, seed=1)
    for i, part in enumerate(np.array_split(np.arange(len(df)), 2)):
        df.iloc[part].to_csv(folder / f"part{i}.csv", index=False)
    return folder, df


@pytest.mark.parametrize("at", ["writing", "report ->"])
def test_an_interrupt_says_whether_the_results_are_in_place(tmp_path, client, csv_input, at):
    """An interrupt after the output and statistics were committed (while the
    report was drawn) said "an unfinished output or statistics file is never
    put in place", as if nothing had been written; before the commit it still does."""
    folder, df = csv_input
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}")

    def echo(line: str) -> None:
        if line.startswith(at):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        run_job(cfg, "run", scheduler=client.scheduler.address, echo=echo)
    if at == "writing":
        assert str(caught.value) == "" and not (tmp_path / "out").exists() and not (tmp_path / "stats.json").exists()
    else:
        assert str(caught.value) == (
            f"interrupted after the job's results were complete and in place (statistics -> {tmp_path / 'stats.json'}, "
            f"output -> {tmp_path / 'out'}); what came after them (closing the cluster, the report) may be unfinished"
        )
        assert io.verify_output(str(tmp_path / "out")).rows == len(df)


def test_transform_refuses_rules_other_than_the_statistics(tmp_path, client, csv_input):
    """transform applied the artifact's rules and ignored the config's changed
    scalers (and another stats.scope) without a word."""
    folder, _ = csv_input
    run_job(job("csv_example.yaml", tmp_path, f"input.path={folder}", out=None), "fit", scheduler=client.scheduler.address)
    changed = job("csv_example.yaml", tmp_path, f"input.path={folder}", "scalers.0.ddof=1")
    with pytest.raises(ConfigError, match=r"^scalers: the config's rules are not those the statistics at stats\.path were fitted with \(ZScore"):
        run_job(changed, "transform", scheduler="tcp://127.0.0.1:9")
    scope = job("csv_example.yaml", tmp_path, f"input.path={folder}", "stats.scope=partition")
    with pytest.raises(ConfigError, match=r"^stats\.scope: 'partition', but .* fitted with scope 'global', which transform keeps"):
        run_job(scope, "transform", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out").exists()


def test_a_report_that_cannot_be_written_says_the_results_are_complete(tmp_path, client, csv_input):
    """The report comes after the output and the statistics are committed:
    its failure is an error that says they are complete and where they are."""
    folder, df = csv_input
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}")
    (tmp_path / "stats.report.html").mkdir()  # the report's path is taken by a folder
    expected = f"; the job's results are complete: statistics -> {tmp_path / 'stats.json'}, output -> {tmp_path / 'out'}"
    with pytest.raises(OutputError, match=r"the report could not be written \(OutputError: .* is a folder; choose a file path\)" + re.escape(expected)):
        run_job(cfg, "run", scheduler=client.scheduler.address)
    assert io.verify_output(str(tmp_path / "out")).rows == len(df)
    assert sp.load(tmp_path / "stats.json").moments.count[0] == len(df)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_example_round_trip(tmp_path, client, csv_input, fmt):
    folder, df = csv_input
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}", f"output.format={fmt}")
    result = run_job(cfg, "run", scheduler=client.scheduler.address)

    assert result.rows_written == len(df)
    manifest = io.verify_output(str(tmp_path / "out"))
    assert [f.name for f in manifest.files] == [f"part.0000{i}.{fmt}" for i in range(2)]  # one file per input file
    files = [tmp_path / "out" / f.name for f in manifest.files]
    if fmt == "csv":
        got = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    else:
        got = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    want = expected_customers(df)
    assert list(got.columns) == list(df.columns)
    for col in ("age", "income", "px_1", "px_2", "amount"):
        np.testing.assert_allclose(got[col], want[col], rtol=0, atol=1e-12, err_msg=col)
    assert got["customer_id"].tolist() == df["customer_id"].tolist()  # row order kept
    assert got["segment"].tolist() == df["segment"].tolist()
    np.testing.assert_array_equal(got["visits"], df["visits"])  # no rule: passed through
    assert sp.load(tmp_path / "stats.json").passthrough == ["visits"]


CSV_TEXT = (
    "id,zip,x,count,note,big\n"
    '00123,02139,1.5,5,NA,9007199254740993\n'
    '00456,10001,2.5,0,"a,b",1\n'
    "00789,,3.5,-7,,12345678901234567890\n"
)


@pytest.mark.parametrize("scope", ["global", "key"])
def test_csv_to_csv_copies_unscaled_columns_as_written(tmp_path, client, scope):
    """Columns no rule scales were written with the values read as numbers:
    `00123` as `123.0`, `5` as `5.0`, `NA` as a blank, an integer beyond 2**53
    rounded; now copied as the file's text, in a run and in a transform."""
    from scalepipe.config import parse_config

    (tmp_path / "in.csv").write_text(CSV_TEXT)
    key = ", scope: key, key: count" if scope == "key" else ""
    for mode in ("run", "transform"):
        cfg = parse_config(
            f"version: 1\ninput: {{format: csv, path: {tmp_path / 'in.csv'}}}\n"
            f"output: {{format: csv, path: {tmp_path / f'out-{mode}'}}}\nstats: {{path: {tmp_path / 'stats.json'}{key}}}\n"
            "scalers: [{method: minmax, columns: [x]}]\n"
        )
        run_job(cfg, mode, scheduler=client.scheduler.address)
        (part,) = (tmp_path / f"out-{mode}").glob("part.*.csv")
        rows = list(csv.reader(part.read_text().splitlines()))
        want = list(csv.reader(CSV_TEXT.splitlines()))
        copied = [0, 1, 3, 4, 5]  # 2 is scaled; a key (3 in the key scope) is read as text, so copied too
        assert [[r[i] for i in copied] for r in rows] == [[r[i] for i in copied] for r in want], mode
        # each key has one row, so its x is constant and maps to a
        assert [float(r[2]) for r in rows[1:]] == ([0.0, 0.5, 1.0] if scope == "global" else [0.0] * 3)


def test_stats_path_never_replaces_a_file_that_is_not_statistics(tmp_path):
    """``stats.path`` naming the job's own config replaced it with the statistics (exit 0); refused before any work."""
    config = tmp_path / "job.yaml"
    text = (
        f"version: 1\ninput: {{format: csv, path: {tmp_path / 'in.csv'}}}\nstats: {{path: {config}}}\n"
        "scalers: [{method: minmax, columns: [x]}]\nreport: false\n"
    )
    config.write_text(text)
    (tmp_path / "in.csv").write_text("x\n1\n2\n")
    with pytest.raises(ConfigError, match=r"^stats\.path: '.*job\.yaml' is a file that is not scalepipe statistics"):
        run_job(load_config(config), "fit", scheduler="tcp://127.0.0.1:9")  # refused before connecting
    assert config.read_text() == text
    # a folder: the hint named a file inside the output folder, itself refused as overlapping the output
    (tmp_path / "out").mkdir()
    folder = load_config(config, [f"stats.path={tmp_path / 'out'}", "output.format=csv", f"output.path={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=rf"is a folder; name the statistics file, e\.g\. '{re.escape(str(tmp_path / 'stats.json'))}'"):
        run_job(folder, "fit", scheduler="tcp://127.0.0.1:9")


def test_a_failed_job_removes_the_folders_it_made(tmp_path, client):
    """The statistics' and the output's folders, created for them, were left
    behind empty when the job failed in its write pass."""
    from scalepipe.config import parse_config
    from scalepipe.errors import InputError

    (tmp_path / "in.csv").write_text("a,b,x\n1,2,3\n4,5,6,7\n")  # the fit reads x only; the write reads the long row
    cfg = parse_config(
        f"version: 1\ninput: {{format: csv, path: {tmp_path / 'in.csv'}}}\n"
        f"output: {{format: csv, path: {tmp_path / 'deep' / 'er' / 'out'}}}\nstats: {{path: {tmp_path / 's1' / 's2' / 'stats.json'}}}\n"
        "scalers: [{method: minmax, columns: [x]}]\nreport: false\n"
    )
    with pytest.raises(InputError, match="Expected 3 fields in line 3 of the file"):
        run_job(cfg, "run", scheduler=client.scheduler.address)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_input_columns_limit_what_the_rules_see(tmp_path, client, csv_input):
    folder, df = csv_input
    cfg = job(
        "csv_example.yaml",
        tmp_path,
        f"input.path={folder}",
        "input.columns=[age, 'px_*', amount]",
        "scalers.0.columns=[age]",
        "output.format=parquet",
    )
    # a rule naming a column that input.columns leaves out: it was "not found in the data (it has 'age', ...)"
    hidden = job("csv_example.yaml", tmp_path, f"input.path={folder}", "input.columns=[age]", "scalers.0.columns=[age, amount]")
    with pytest.raises(ColumnError, match=r"scalers\[0\] \(\w+\): column 'amount' is in the input but not selected by input.columns \('age'\)"):
        validate_job(hidden)
    run_job(cfg, "run", scheduler=client.scheduler.address)
    model = sp.load(tmp_path / "stats.json")
    assert model.feature_names == ["age", "px_1", "px_2", "amount"]
    got = pd.read_parquet(tmp_path / "out")
    np.testing.assert_array_equal(got["income"], df["income"])  # not selected: written unchanged
    np.testing.assert_allclose(got["age"], expected_customers(df)["age"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_fit_update_equals_one_fit_on_all_data(tmp_path, client, exact):
    first, second = customers(1500, seed=2), customers(900, seed=3)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first.to_csv(tmp_path / "a" / "x.csv", index=False)
    second.to_csv(tmp_path / "b" / "x.csv", index=False)
    address = client.scheduler.address
    run_job(job("csv_example.yaml", tmp_path, f"stats.exact={exact}", inp="a", out=None), "fit", scheduler=address)
    assert not (tmp_path / "out").exists()
    # input.columns is the artifact's business in an update, as in transform (it failed after the fit pass, saying
    # the fitted columns not listed were not in the data)
    update = job("csv_example.yaml", tmp_path, "input.columns=[age]", inp="b", out=None)
    updated = run_job(update, "fit", update=True, scheduler=address)
    # the config may not ask for another scope, inference statistics or exactness than the artifact's (they were ignored)
    for overrides in ([f"stats.exact={not exact}"], ["stats.scope=key", "stats.key=segment"]):
        with pytest.raises(ConfigError, match=r"stats\.(exact|scope): .*fit --update keeps; remove"):
            run_job(job("csv_example.yaml", tmp_path, *overrides, inp="b", out=None), "fit", update=True, scheduler="tcp://127.0.0.1:9")

    both = pd.concat([first, second], ignore_index=True)
    saved = sp.load(tmp_path / "stats.json")
    assert saved.moments.count.tolist() == updated.model.moments.count.tolist()
    assert (saved.exact is not None) == exact
    if exact:  # correctly rounded: the same bits as a fit of everything at once
        parsed = pd.concat([pd.read_csv(tmp_path / d / "x.csv") for d in "ab"], ignore_index=True)
        once = sp.fit(parsed, updated.model.scalers, exact=True)
        np.testing.assert_array_equal(saved.moments.mean, once.moments.mean)
        np.testing.assert_array_equal(saved.moments.m2, once.moments.m2)
    want = expected_customers(both)
    got = saved.transform(both)
    for col in ("age", "income", "px_1", "px_2", "amount"):
        np.testing.assert_allclose(got[col], want[col], rtol=0, atol=1e-12, err_msg=col)


# --------------------------------------------------------------------------
# Arrays: configs/zarr_example.yaml (Zarr and NetCDF in, Zarr out)
# --------------------------------------------------------------------------


def era5(seed: int = 0):
    import xarray as xr

    rng = np.random.default_rng(seed)
    time, level, lat, lon = 24, 2, 3, 4
    t2m = (280 + 10 * rng.standard_normal((time, lat, lon))).astype(np.float32)
    t2m[0, 0, 0] = np.nan
    u = rng.normal([[[5.0]], [[20.0]]], [[[2.0]], [[9.0]]], (time, level, lat, lon))
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m, {"units": "K", "long_name": "2 metre temperature", "valid_range": [150.0, 350.0]}),
            "u": (("time", "level", "lat", "lon"), u),
            "q": (("time", "lat", "lon"), rng.random((time, lat, lon))),  # not in input.variables
        },
        coords={"time": np.arange(time), "level": [850, 500], "lat": ("lat", [10.0, 20.0, 30.0], {"units": "degrees_north"}), "lon": np.arange(lon) * 1.5},
    )


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_array_example_round_trip(tmp_path, client, fmt):
    ds = era5()
    source = tmp_path / ("in.zarr" if fmt == "zarr" else "in.nc")
    if fmt == "zarr":
        ds.chunk({"time": 8}).to_zarr(source)
    else:
        ds.to_netcdf(source, engine="h5netcdf")
    cfg = job("zarr_example.yaml", tmp_path, f"input.format={fmt}", inp=source.name, out="out.zarr")
    lines, _ = validate_job(cfg)
    assert lines[:2] == [f"input: {fmt}, 2 variable(s), 3 feature(s)", f"output: zarr -> {tmp_path / 'out.zarr'}"]  # not the store's chunk files
    run_job(cfg, "run", scheduler=client.scheduler.address)

    import xarray as xr

    io.verify_output(str(tmp_path / "out.zarr"))
    got = xr.open_zarr(tmp_path / "out.zarr")
    assert sorted(got.data_vars) == ["t2m", "u"]
    assert got["t2m"].dtype == np.float32 and got["u"].dtype == np.float64
    if fmt == "zarr":
        assert got["t2m"].chunks[0] == (8, 8, 8)
    t = ds["t2m"].values.astype(np.float64)
    want_t = (t - np.nanmean(t)) / np.nanstd(t)
    np.testing.assert_allclose(got["t2m"].values, want_t.astype(np.float32), rtol=0, atol=4e-7)
    assert np.isnan(got["t2m"].values[0, 0, 0])
    u = ds["u"].values
    lo, hi = u.min(axis=(0, 2, 3), keepdims=True), u.max(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(got["u"].values, -1 + (u - lo) * (2 / (hi - lo)), rtol=0, atol=1e-12)
    model = sp.load(tmp_path / "stats.json")
    assert model.feature_names == ["t2m", "u[850]", "u[500]"]
    # a scaled variable drops the input's units and valid range (a z-score in kelvins
    # would be converted as such); its other attributes and the coordinates' stay
    assert got["t2m"].attrs == {"long_name": "2 metre temperature"}
    assert got["lat"].attrs == {"units": "degrees_north"}


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
@pytest.mark.parametrize("update", [False, True])
def test_another_reduce_dims_than_the_statistics_is_refused(tmp_path, update):
    """transform and fit --update took the artifact's reduce_dims and ignored the config's silently."""
    era5().chunk({"time": 8}).to_zarr(tmp_path / "in.zarr")
    cfg = job("zarr_example.yaml", tmp_path, "input.reduce_dims=[time]", inp="in.zarr", out="out.zarr")
    data = io.read_array(str(tmp_path / "in.zarr"), "zarr", ["t2m", "u"])
    sp.fit(data, cfg.scaler_objects(), reduce_dims=["time", "lat", "lon"]).save(tmp_path / "stats.json")
    command = "fit --update" if update else "transform"
    with pytest.raises(ConfigError, match=rf"^input.reduce_dims: \['time'\], but .* fitted over \['time', 'lat', 'lon'\]; {command} takes"):
        run_job(cfg, "fit" if update else "transform", update=update, scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_stored_encodings_do_not_round_scaled_zarr_variables(tmp_path, client):
    """Integer variables came back truncated (int32 z-scores), CF-packed ones
    re-packed (int16 x 0.01), both with exit 0; a Zarr version 2 store's
    codecs failed the version 3 write. Given as ``file://``, an array
    input failed after the fit (its fingerprint took the path as a file name)."""
    import xarray as xr

    rng = np.random.default_rng(3)
    counts = rng.integers(0, 1000, (12, 2)).astype(np.int32)
    level = rng.random((12, 2))
    kept = rng.integers(0, 100, (12, 2)).astype(np.int16)  # not scaled: stored as it was
    ds = xr.Dataset({"n": (("time", "c"), counts), "x": (("time", "c"), level), "m": (("time", "c"), kept)})
    ds["x"].encoding = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32768}
    ds.to_zarr(tmp_path / "in.zarr", zarr_format=2)
    stored = xr.open_zarr(tmp_path / "in.zarr")
    cfg = job(
        "zarr_example.yaml", tmp_path, "input.variables=[n, x, m]", "input.reduce_dims=[time]",
        "scalers=[{columns: ['n*', 'x*'], method: zscore}]", f"input.path=file://{tmp_path / 'in.zarr'}", out="out.zarr",
    )
    run_job(cfg, "run", scheduler=client.scheduler.address)
    io.verify_output(str(tmp_path / "out.zarr"))
    got = xr.open_zarr(tmp_path / "out.zarr")
    for name in ("n", "x"):
        v = stored[name].values.astype(np.float64)  # the packed values as the fit read them
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name].values, (v - v.mean(0)) / v.std(0), rtol=0, atol=1e-14)
    assert got["m"].dtype == np.int16 and np.array_equal(got["m"].values, kept)


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_scopes_an_array_input_cannot_take_fail_before_any_work(tmp_path):
    import xarray as xr

    xr.Dataset({"a": (("t", "c"), np.ones((4, 2))), "b": (("t", "c"), np.ones((4, 2)))}).to_zarr(tmp_path / "in.zarr")
    with pytest.raises(ConfigError, match="stats.scope: 'key' needs a table input .* input.format is 'zarr'"):
        job("zarr_example.yaml", tmp_path, "stats.scope=key", "stats.key=a", inp="in.zarr")
    cfg = job(
        "zarr_example.yaml", tmp_path, "input.variables=null", "input.reduce_dims=[t]", "scalers=[{method: batchnorm}]",
        "stats.scope=partition", inp="in.zarr",
    )
    for check in (lambda: validate_job(cfg), lambda: run_job(cfg, "fit", scheduler="tcp://127.0.0.1:9")):
        with pytest.raises(ConfigError, match="stats.scope: scope 'partition' needs one data variable .* match 2 variables"):
            check()  # the fit would have started the cluster and read the data first


# --------------------------------------------------------------------------
# Validation and the checks before any work
# --------------------------------------------------------------------------


def test_validate_checks_the_rules_against_the_demo_table_before_it_is_written(tmp_path):
    """With the demo input not yet written, validate said ok without checking
    the rules (a misspelt column failed the run after the demo data was written)."""
    overrides = [f"input.path={tmp_path / 'demo'}", f"stats.path={tmp_path / 'stats.json'}", f"output.path={tmp_path / 'out'}"]
    lines, _ = validate_job(load_config(CONFIGS / "quickstart.yaml", overrides))
    assert lines[0] == f"input: {tmp_path / 'demo'} does not exist yet; demo data will be written there (7 column(s))"
    assert "scalers[0] zscore: temperature, pressure" in lines
    typo = load_config(CONFIGS / "quickstart.yaml", [*overrides, "scalers.0.columns=[temprature]"])
    with pytest.raises(ColumnError, match=r"temprature"):
        validate_job(typo)
    assert not (tmp_path / "demo").exists()


def test_errors_found_after_reading_the_config_say_where_it_sets_the_key(tmp_path):
    """"stats.key: key column 'nope' is not in the input" gave neither the
    line nor the --set it came from, as the config's own errors do."""
    overrides = [f"input.path={tmp_path / 'demo'}", f"stats.path={tmp_path / 'stats.json'}", f"output.path={tmp_path / 'out'}"]
    cfg = load_config(CONFIGS / "quickstart.yaml", [*overrides, "stats.scope=key", "stats.key=nope"])
    with pytest.raises(ColumnError, match=r"^stats\.key: key column 'nope' is not in the input .*\(from --set 'stats\.key=nope'\)$"):
        validate_job(cfg)
    text = (CONFIGS / "quickstart.yaml").read_text().replace("  scope: global\n", "  scope: key\n  key: nope\n")
    (tmp_path / "job.yaml").write_text(text)
    line = text.splitlines().index("  key: nope") + 1
    with pytest.raises(ColumnError, match=rf"^stats\.key: key column 'nope' is not in the input .*\(line {line}\)$"):
        validate_job(load_config(tmp_path / "job.yaml", overrides))


def test_validate_job_lists_rules_and_warns_about_an_existing_output(tmp_path, csv_input):
    folder, _ = csv_input
    (tmp_path / "out").mkdir()
    lines, warnings = validate_job(job("csv_example.yaml", tmp_path, f"input.path={folder}"))
    assert lines == [
        "input: 2 file(s), 8 column(s)",
        f"output: csv -> {tmp_path / 'out'}",
        "scalers[0] zscore: age, income",
        "scalers[1] minmax: px_1, px_2",
        "scalers[2] decimal: amount",
        "passthrough: visits",
    ]
    assert len(warnings) == 1 and str(tmp_path / "out") in warnings[0] and "overwrite" in warnings[0]
    assert not (tmp_path / "stats.json").exists() and list((tmp_path / "out").iterdir()) == []


def test_validate_job_does_not_write_demo_data(tmp_path):
    cfg = job("quickstart.yaml", tmp_path, inp="demo")
    lines, warnings = validate_job(cfg)
    assert "demo data will be written" in lines[0] and warnings == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "error", "fragment"),
    [
        ("stats={{scope: key, key: nope}}", ColumnError, "stats.key: key column 'nope'"),
        ("stats.path={in}/stats.json", ConfigError, "stats.path"),
        ("stats.path={in}", ConfigError, "stats.path: .* is a folder; name the statistics file"),  # was found after the work
        ("stats.path={out}/stats.json", ConfigError, "stats.path"),
        ("output.path={in}/scaled", OutputError, "inside the input"),
        ("scalers.0.columns=[segment]", ColumnError, "'segment'"),
    ],
)
def test_bad_jobs_fail_before_any_work(tmp_path, csv_input, override, error, fragment):
    folder, _ = csv_input
    override = override.format(**{"in": folder, "out": tmp_path / "out"})
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}", override)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(error, match=fragment.replace("[", r"\[")):
        run_job(cfg, "run", scheduler="tcp://127.0.0.1:9")  # never reached: the checks come first
    assert sorted(p.name for p in folder.iterdir()) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["stats.path", "output.path"])
def test_a_path_that_cannot_be_written_fails_before_any_work(tmp_path, csv_input, key):
    """Found when writing, after the whole fit pass; validate said ok."""
    folder, _ = csv_input
    (tmp_path / "afile").write_text("x")
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}", f"{key}={tmp_path / 'afile' / 'sub' / 'x.json'}")
    message = f"{key}: .* cannot be written: .*afile' is a file, not a folder"
    with pytest.raises(ConfigError, match=message):
        validate_job(cfg)
    with pytest.raises(ConfigError, match=message):
        run_job(cfg, "run", scheduler="tcp://127.0.0.1:9")  # never reached: the checks come first


def test_fit_refuses_statistics_inside_the_output(tmp_path, csv_input):
    """fit wrote them there (validate and transform refused the same config),
    and a later run with overwrite: true deleted them."""
    folder, _ = csv_input
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}", f"stats.path={tmp_path / 'out' / 'stats.json'}")
    with pytest.raises(ConfigError, match="stats.path: .* overlaps output.path"):
        run_job(cfg, "fit", scheduler="tcp://127.0.0.1:9")


def test_transform_checks_the_artifact_columns_before_any_work(tmp_path, csv_input):
    folder, df = csv_input
    sp.fit(df.drop(columns=["customer_id", "segment"]).assign(extra=1.0)).save(tmp_path / "stats.json")
    cfg = job("csv_example.yaml", tmp_path, f"input.path={folder}", "scalers=[{method: zscore}]")  # the artifact's rules
    with pytest.raises(ColumnError, match=f"^input.path '{folder}': column\\(s\\) 'extra' were fitted but are not in the data"):
        run_job(cfg, "transform", scheduler="tcp://127.0.0.1:9")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ColumnError, match=f"^input.path '{folder}': column\\(s\\) 'extra'"):
        drift_job(str(tmp_path / "stats.json"), str(folder), "csv", ClusterConfig(), scheduler="tcp://127.0.0.1:9")


def test_an_input_without_rows_is_named(tmp_path, client):
    """"The data has no rows to fit" says which input it means."""
    (tmp_path / "in").mkdir()
    pd.DataFrame({"a": pd.Series([], dtype="float64")}).to_parquet(tmp_path / "in" / "part.0.parquet")
    cfg = load_config(
        CONFIGS / "quickstart.yaml",
        [f"input.path={tmp_path / 'in'}", f"stats.path={tmp_path / 'stats.json'}", "input.demo=null", "scalers=[{method: zscore}]"],
    )
    with pytest.raises(DataError, match=f"^input.path '{tmp_path / 'in'}': the data has no rows to fit$"):
        run_job(cfg, "fit", scheduler=client.scheduler.address)
    assert not (tmp_path / "stats.json").exists()


def test_a_key_column_the_artifact_cannot_store_is_refused_before_any_work(tmp_path):
    """Dates as keys would fail at save, after the fit pass: refused first."""
    from scalepipe.config import parse_config

    pd.DataFrame({"day": pd.date_range("2024-01-01", periods=6), "v": np.arange(6.0)}).to_parquet(tmp_path / "in.parquet")
    cfg = parse_config(
        f"version: 1\ninput: {{format: parquet, path: {tmp_path / 'in.parquet'}}}\n"
        "stats: {scope: key, key: day}\nscalers: [{method: zscore}]\n"
    )
    with pytest.raises(ColumnError, match="stats.key: key column 'day' has dtype (datetime|timestamp).*write the column as one of those"):
        validate_job(cfg)


def test_drift_checks_the_key_column_before_the_cluster_starts(tmp_path):
    from scalepipe.config import ClusterConfig

    df = pd.DataFrame({"store": ["a", "b"] * 10, "sales": np.arange(20.0)})
    sp.fit(df, scope="key", key="store").save(tmp_path / "stats.json")
    (tmp_path / "new").mkdir()
    df[["sales"]].to_parquet(tmp_path / "new" / "part.parquet")
    with pytest.raises(ColumnError, match="key column 'store'"):  # not a failure to reach the scheduler
        drift_job(str(tmp_path / "stats.json"), str(tmp_path / "new"), "parquet", ClusterConfig(), scheduler="tcp://127.0.0.1:9")


@pytest.mark.filterwarnings("ignore:Consolidated metadata")
def test_drift_refuses_arrays_clearly(tmp_path):
    """drift on array statistics or a Zarr store read a chunk file as a corrupt
    Parquet file ("Parquet file 'x.zarr/a/c/0/0/0' cannot be read")."""
    import xarray as xr

    from scalepipe.errors import InputError

    ds = xr.Dataset({"a": (("t", "y"), np.arange(12.0).reshape(4, 3))})
    ds.to_zarr(tmp_path / "x.zarr")
    sp.fit(ds).save(tmp_path / "arrays.json")
    sp.fit(pd.DataFrame({"a": np.arange(4.0)})).save(tmp_path / "table.json")
    where = ("parquet", ClusterConfig())
    with pytest.raises(DataError, match="fitted on array data \\(xarray\\); drift compares tables only"):
        drift_job(str(tmp_path / "arrays.json"), str(tmp_path / "x.zarr"), *where, scheduler="tcp://127.0.0.1:9")
    with pytest.raises(InputError, match="'.*x.zarr' is a Zarr store, not a folder of Parquet or CSV files"):
        drift_job(str(tmp_path / "table.json"), str(tmp_path / "x.zarr"), *where, scheduler="tcp://127.0.0.1:9")
    with pytest.raises(ConfigError, match="input.format: drift reads tables \\(parquet, csv\\), not 'zarr'"):
        drift_job(str(tmp_path / "table.json"), str(tmp_path / "x.zarr"), "zarr", ClusterConfig(), scheduler="tcp://127.0.0.1:9")


def test_a_dictionary_key_column_over_several_files(tmp_path, client):
    """A categorical (dictionary) key: the key tables of two partitions failed to
    merge (ArrowTypeError: string vs dictionary), and fit --update failed on the
    dtype's name. Grouped by its text, as dates are."""
    from scalepipe.config import parse_config

    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(2):
        keys = rng.choice(["a", "b", "c"], 50)
        x = rng.normal(size=50)
        frames.append(pd.DataFrame({"key": keys, "x": x}))
        pq.write_table(pa.table({"key": pa.array(keys).dictionary_encode(), "x": x}), tmp_path / "in" / f"part.{i}.parquet")
    cfg = parse_config(
        f"version: 1\ninput: {{format: parquet, path: {tmp_path / 'in'}}}\noutput: {{format: parquet, path: {tmp_path / 'out'}}}\n"
        f"stats: {{path: {tmp_path / 'stats.json'}, scope: key, key: key}}\nscalers: [{{method: zscore, columns: [x]}}]\nreport: false\n"
    )
    run_job(cfg, "run", scheduler=client.scheduler.address)
    df = pd.concat(frames, ignore_index=True)
    got = pd.read_parquet(tmp_path / "out")
    want = df.groupby("key")["x"].transform(lambda v: (v - v.mean()) / v.std(ddof=0))
    np.testing.assert_allclose(got["x"].to_numpy(), want.to_numpy(), rtol=0, atol=1e-12)
    assert got["key"].astype(str).tolist() == df["key"].tolist()
    updated = run_job(cfg, "fit", update=True, scheduler=client.scheduler.address)
    assert updated.model.groups.moments.count[:, 0].tolist() == (df["key"].value_counts().sort_index() * 2).tolist()


def test_fit_update_refuses_another_batch_size(tmp_path):
    """The artifact's batches decide how new data is batched; a config with
    another stats.batch_rows was ignored."""
    (tmp_path / "b").mkdir()
    data = customers(60, seed=4)
    data.to_csv(tmp_path / "b" / "x.csv", index=False)
    cfg = job("csv_example.yaml", tmp_path, "stats.scope=partition", "stats.batch_rows=7", inp="b", out=None)
    numeric = data[["age", "income", "px_1", "px_2", "amount"]]
    sp.fit(numeric, cfg.scaler_objects(), scope="partition", batch_rows=5).save(tmp_path / "stats.json")
    with pytest.raises(ConfigError, match=r"stats\.batch_rows: 7, but the statistics at stats.path were fitted with batch_rows 5"):
        run_job(cfg, "fit", update=True, scheduler="tcp://127.0.0.1:9")


def test_fit_update_refuses_keys_of_another_type(tmp_path, client):
    """It failed after the fit pass, naming a fitted key ("key value 'a' (str)
    cannot be saved") rather than the column and the types. A CSV's key
    column is text: integer text merges with integer keys (as transform finds
    them), other text is refused naming the key, and the statistics stay."""
    first, second = customers(300, seed=2), customers(200, seed=3)
    first["segment"] = np.arange(len(first)) % 3
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first.to_parquet(tmp_path / "a" / "x.parquet", index=False)  # a CSV key is read as text: keyed by integers here
    second.to_csv(tmp_path / "b" / "x.csv", index=False)
    keyed = ("stats.scope=key", "stats.key=segment", "input.format=parquet")
    run_job(job("csv_example.yaml", tmp_path, *keyed, inp="a", out=None), "fit", scheduler=client.scheduler.address)
    before = (tmp_path / "stats.json").read_bytes()
    with pytest.raises(ColumnError, match=r"the new rows' key 'a' is text that is not an integer, and the fitted keys are integers"):
        run_job(job("csv_example.yaml", tmp_path, inp="b", out=None), "fit", update=True, scheduler=client.scheduler.address)
    assert (tmp_path / "stats.json").read_bytes() == before
    second["segment"] = np.arange(len(second)) % 4  # 0..3: integer text in the CSV
    second.to_csv(tmp_path / "b" / "x.csv", index=False)
    updated = run_job(job("csv_example.yaml", tmp_path, inp="b", out=None), "fit", update=True, scheduler=client.scheduler.address)
    assert updated.model.groups.keys.tolist() == [0, 1, 2, 3]
    both = pd.concat([first["segment"], second["segment"]])
    assert updated.model.groups.moments.count[:, 0].tolist() == both.value_counts().sort_index().tolist()
    (tmp_path / "c").mkdir()  # booleans (from Parquet) never merge with integers: refused before any work
    second.assign(segment=second["segment"] > 1).to_parquet(tmp_path / "c" / "x.parquet", index=False)
    flags = job("csv_example.yaml", tmp_path, "input.format=parquet", inp="c", out=None)
    with pytest.raises(ColumnError, match=r"^stats\.key: key column 'segment' is bool \(boolean\) in the input, but the statistics at stats\.path have integer keys"):
        run_job(flags, "fit", update=True, scheduler="tcp://127.0.0.1:9")


def test_a_csv_key_column_is_read_as_the_fitted_keys_are(tmp_path, client):
    """Fitted keys A and 007 are text; a new file whose keys all look like
    numbers had them read as 7.0: every row "unseen", scaled with the global
    statistics, the key written as 7.0 (and fit --update refused the type)."""
    from scalepipe.config import parse_config

    for folder, text in (("a", "k,x\nA,1\nA,3\n007,10\n007,20\n"), ("b", "k,x\n007,10\n007,20\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.csv").write_text(text)

    def config(folder: str, out: str) -> str:
        return parse_config(
            f"version: 1\ninput: {{format: csv, path: {tmp_path / folder}}}\noutput: {{format: csv, path: {tmp_path / out}}}\n"
            f"stats: {{path: {tmp_path / 'stats.json'}, scope: key, key: k}}\nscalers: [{{method: minmax, columns: [x]}}]\nreport: false\n"
        )

    run_job(config("a", "fitted"), "run", scheduler=client.scheduler.address)
    run_job(config("b", "new"), "transform", scheduler=client.scheduler.address)
    (part,) = (tmp_path / "new").glob("part.*.csv")
    assert part.read_text().splitlines() == ["k,x", "007,0.0", "007,1.0"]  # key 007's statistics, its text kept
    result = drift_job(str(tmp_path / "stats.json"), str(tmp_path / "b"), "csv", ClusterConfig(), scheduler=client.scheduler.address)
    assert result.unseen is not None and result.unseen.rows == 0
    updated = run_job(config("b", "unused"), "fit", update=True, scheduler=client.scheduler.address)
    assert updated.model.groups.keys.tolist() == ["007", "A"] and updated.model.groups.moments.count[:, 0].tolist() == [4, 2]


def test_a_csv_key_column_is_grouped_by_its_text(tmp_path, client):
    """Read as numbers, keys 02134 and 2134 were one key (2134.0), and IDs
    beyond 2**53 in a file after the sampled rows were rounded into one key:
    both groups scaled together, the output's key column rewritten
    (1.152921504606847e+18). The key's text in the file is now the key."""
    from scalepipe.config import parse_config

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.0.csv").write_text("k,x\n02134,0\n02134,10\n2134,100\n2134,300\n")
    big = 2**60
    (tmp_path / "in" / "part.1.csv").write_text(f"k,x\n{big},0\n{big + 1},100\n{big},10\n{big + 1},110\n")
    cfg = parse_config(
        f"version: 1\ninput: {{format: csv, path: {tmp_path / 'in'}}}\noutput: {{format: csv, path: {tmp_path / 'out'}}}\n"
        f"stats: {{path: {tmp_path / 'stats.json'}, scope: key, key: k}}\nscalers: [{{method: minmax, columns: [x]}}]\nreport: false\n"
    )
    result = run_job(cfg, "run", scheduler=client.scheduler.address)
    groups = result.model.groups
    assert groups.keys.tolist() == sorted(["02134", "2134", str(big), str(big + 1)])
    assert groups.moments.count[:, 0].tolist() == [2, 2, 2, 2]
    rows = [line.split(",") for part in sorted((tmp_path / "out").glob("part.*.csv")) for line in part.read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["02134", "02134", "2134", "2134", str(big), str(big + 1), str(big), str(big + 1)]
    assert [float(r[1]) for r in rows] == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]  # each key's own min and max
    assert sp.load(tmp_path / "stats.json").groups.keys.tolist() == groups.keys.tolist()


def test_an_infinity_names_its_input_file(tmp_path, client):
    """An inf in one of many input files named the column only; the fit and
    the transform now also name the first file holding one (found by a second
    read of that column, when the error happens)."""
    from scalepipe.stats import NonFiniteError

    for folder in ("clean", "bad"):
        (tmp_path / folder).mkdir()
    for i in range(5):
        part = pd.DataFrame({"x": np.arange(100.0) + i, "y": np.ones(100)})
        part.to_parquet(tmp_path / "clean" / f"p.{i}.parquet", index=False)
        if i in (2, 4):
            part.loc[7, "x"] = -np.inf
        part.to_parquet(tmp_path / "bad" / f"p.{i}.parquet", index=False)
    address = client.scheduler.address
    base = ["version: 1", f"stats: {{path: '{tmp_path / 'stats.json'}'}}", "scalers: [{method: zscore}]", "report: false"]
    cfg = tmp_path / "job.yaml"
    cfg.write_text("\n".join([*base, f"input: {{format: parquet, path: '{tmp_path / 'bad'}'}}"]) + "\n")
    file = re.escape(str(tmp_path / "bad" / "p.2.parquet"))
    with pytest.raises(NonFiniteError, match=rf"column 'x' \(in input file '{file}'\): infinite values"):
        run_job(load_config(cfg), "fit", scheduler=address)
    cfg.write_text("\n".join([*base, f"input: {{format: parquet, path: '{tmp_path / 'clean'}'}}"]) + "\n")
    run_job(load_config(cfg), "fit", scheduler=address)
    out = [f"output: {{format: parquet, path: '{tmp_path / 'out'}'}}"]
    cfg.write_text("\n".join([*base, *out, f"input: {{format: parquet, path: '{tmp_path / 'bad'}'}}"]) + "\n")
    with pytest.raises(NonFiniteError, match=rf"\(in input file '{file}'\)"):
        run_job(load_config(cfg), "transform", scheduler=address)
    assert not (tmp_path / "out").exists()
    from scalepipe.config import ClusterConfig

    with pytest.raises(NonFiniteError, match=rf"\(in input file '{file}'\)"):
        drift_job(str(tmp_path / "stats.json"), str(tmp_path / "bad"), "parquet", ClusterConfig(), scheduler=address)


def test_parquet_passthrough_columns_keep_their_arrow_types(tmp_path, client):
    """A categorical passthrough column was written as all nulls; dates,
    decimals, lists and structs as text ('[1 2]'); a binary column failed the
    write with an empty UnicodeDecodeError; a `string` column came back
    `large_string`, a `null` column `large_string`, and a float column's NaN
    as null. They pass through unchanged, in a run and in a transform."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    table = pa.table(
        {
            "x": [1.0, 2.0, 4.0],
            "cat": pa.array(["a", "b", "a"]).dictionary_encode(),
            "day": pa.array([datetime.date(2020, 1, d) for d in (1, 2, 3)]),
            "price": pa.array([decimal.Decimal("1.23"), None, decimal.Decimal("-4.50")], pa.decimal128(10, 2)),
            "items": pa.array([[1], [2, 3], []]),
            "info": pa.array([{"a": 1}, {"a": 2}, None]),
            "blob": pa.array([b"\xff", b"", None]),
            "dec_num": pa.array([decimal.Decimal("7")] * 3, pa.decimal128(5, 0)),  # not scaled: passes through
            "text": pa.array(["a", None, "c"], pa.string()),
            "nothing": pa.nulls(3),
            "f": pa.array([float("nan"), None, 2.5]),  # numeric, no rule: passes through
            "small": pa.array([1, None, -3], pa.int8()),
        }
    )
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    for mode in ("run", "transform"):
        cfg = tmp_path / "job.yaml"
        cfg.write_text(
            f"version: 1\ninput: {{format: parquet, path: '{tmp_path / 'in'}'}}\nstats: {{path: '{tmp_path / 'stats.json'}'}}\n"
            f"scalers: [{{method: zscore, columns: [x]}}]\noutput: {{format: parquet, path: '{tmp_path / mode}'}}\nreport: false\n"
        )
        run_job(load_config(cfg), mode, scheduler=client.scheduler.address)
        got = pq.read_table(tmp_path / mode / "part.00000.parquet")
        assert sp.load(tmp_path / "stats.json").feature_names == ["x"]
        for name in table.column_names[1:]:
            assert got.schema.field(name).type == table.schema.field(name).type, (mode, name)
            assert list(map(repr, got.column(name).to_pylist())) == list(map(repr, table.column(name).to_pylist())), (mode, name)
        want = (np.array([1, 2, 4]) - 7 / 3) / np.std([1, 2, 4])
        np.testing.assert_allclose(got.column("x").to_numpy(), want, rtol=0, atol=1e-15)
        # pandas reads the output back (its metadata named Arrow dtypes pandas cannot parse), as it reads the input
        # (but for `small`: the output's pandas metadata says Int8, where pandas reads the bare int8 with nulls as float64)
        back, source = pd.read_parquet(tmp_path / mode), pd.read_parquet(tmp_path / "in")
        for name in table.column_names[1:-1]:
            assert back[name].dtype == source[name].dtype, (mode, name)
            assert list(map(repr, back[name])) == list(map(repr, source[name])), (mode, name)


def test_a_date_key_column_is_grouped_by_its_text(tmp_path, client):
    """Dates are read as Arrow data to pass through unchanged; as a key they
    are grouped and stored by their text (the artifact stores text keys), as
    before they were Arrow data: the fit failed "key value datetime.date(...)
    cannot be saved"."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    days = [datetime.date(2020, 1, 1 + int(i)) for i in rng.integers(0, 3, 300)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"day": pa.array(days), "x": rng.normal(size=300)}), tmp_path / "in" / "p.parquet")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"version: 1\ninput: {{format: parquet, path: '{tmp_path / 'in'}'}}\n"
        f"stats: {{path: '{tmp_path / 'stats.json'}', scope: key, key: day}}\n"
        f"scalers: [{{method: zscore}}]\noutput: {{format: parquet, path: '{tmp_path / 'out'}'}}\nreport: false\n"
    )
    run_job(load_config(cfg), "run", scheduler=client.scheduler.address)
    assert sp.load(tmp_path / "stats.json").groups.keys.tolist() == ["2020-01-01", "2020-01-02", "2020-01-03"]
    source, got = pd.read_parquet(tmp_path / "in"), pd.read_parquet(tmp_path / "out")
    for _, rows in source.groupby("day"):
        want = (rows["x"] - rows["x"].mean()) / rows["x"].std(ddof=0)
        np.testing.assert_allclose(got.loc[rows.index, "x"], want, rtol=0, atol=1e-14)
