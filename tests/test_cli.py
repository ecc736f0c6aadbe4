"""The ``scalepipe`` command in real subprocesses (``python -m scalepipe``), on the embedded cluster.

Each job starts its own embedded ``LocalCluster``, as a user's does: with worker
threads (the default), and with worker processes where a test is about them. Expected values are
computed with numpy (and exact rationals for the means) from the files the
test wrote, never with scalepipe's own kernels; where a test compares with the
Python API it says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import scalepipe as sp
from scalepipe import io
from scalepipe.cli import main

psutil = pytest.importorskip("psutil")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TIMEOUT = 180

JOB = """\
version: 1
cluster:
  n_workers: 1
  processes: false
  memory_limit: 1GiB
input:
  format: parquet
  path: a
stats:
  path: stats/model.json
scalers:
  - columns: [offset]
    method: zscore
  - columns: [lognormal]
    method: minmax
    feature_range: [-1, 1]
  - columns: [count]
    method: decimal
  - columns: null
    method: batchnorm
output:
  format: parquet
  path: out
"""


def command(*args: object) -> list[str]:
    return [sys.executable, "-m", "scalepipe", *map(str, args)]


def scalepipe(*args: object, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m scalepipe ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run(command(*args), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed on stderr."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout
    return lines[0]


def table(n: int, seed: int) -> pd.DataFrame:
    """Mixed columns: an offset with a unit spread, a heavy tail, float32, a constant, integers, text, NaNs."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": [f"r{seed}-{i}" for i in range(n)],
            "offset": 1e9 + rng.standard_normal(n),
            "lognormal": rng.lognormal(0.0, 2.0, n),
            "f32": (10 + rng.standard_normal(n)).astype(np.float32),
            "const": np.full(n, 7.25),
            "count": rng.integers(-500, 500, n),
        }
    )
    for col in ("offset", "lognormal", "f32"):
        df.loc[rng.random(n) < 0.03, col] = np.nan
    return df


def write_parts(df: pd.DataFrame, folder: Path, files: int, row_group_size: int | None = None) -> Path:
    folder.mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(df)), files)):
        pq.write_table(pa.Table.from_pandas(df.iloc[rows], preserve_index=False), folder / f"part.{i}.parquet", row_group_size=row_group_size)
    return folder


def read_parts(folder: Path) -> pd.DataFrame:
    """An output folder's files in partition order, as one frame."""
    names = [f.name for f in io.verify_output(str(folder)).files]
    return pd.concat([pd.read_parquet(folder / n) for n in names], ignore_index=True)


def exact_mean(x: np.ndarray) -> float:
    """The mean of the non-NaN values, correctly rounded (exact rational sum)."""
    x = x[~np.isnan(x)]
    return float(sum(map(Fraction, x.tolist()), Fraction(0)) / len(x))


def zscore(x: np.ndarray) -> np.ndarray:
    mean = exact_mean(x)
    return (x - mean) / np.sqrt(np.nanmean((x - mean) ** 2))


def minmax(x: np.ndarray, a: float, b: float, clip: bool) -> np.ndarray:
    lo, hi = np.nanmin(x), np.nanmax(x)
    y = a + (x - lo) * ((b - a) / (hi - lo))
    return np.clip(y, a, b) if clip else y


def decimal(x: np.ndarray) -> np.ndarray:
    absmax = np.nanmax(np.abs(x))
    j = int(np.floor(np.log10(absmax))) + 1
    return x / 10.0**j


def batchnorm(x: np.ndarray, gamma: float = 1.0, beta: float = 0.0, eps: float = 1e-5) -> np.ndarray:
    mean = exact_mean(x)
    return gamma * (x - mean) / np.sqrt(np.nanmean((x - mean) ** 2) + eps) + beta


def assert_close(got: pd.Series, want: np.ndarray, name: str) -> None:
    """Within 1e-12; a float32 column within half a float32 ulp of the float64 result."""
    got_values = got.to_numpy()
    np.testing.assert_array_equal(np.isnan(got_values), np.isnan(want), err_msg=name)
    if got_values.dtype == np.float32:
        ok = ~np.isnan(want)
        err = np.abs(got_values[ok].astype(np.float64) - want[ok])
        assert (err <= 0.5 * np.spacing(np.abs(want[ok]).astype(np.float32)) + 1e-12).all(), name
    else:
        np.testing.assert_allclose(got_values, want, rtol=0, atol=1e-12, err_msg=name)


def wait_for(predicate: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the job ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def staged_parts(parent: Path, name: str) -> bool:
    return any(list(p.glob("part.*")) for p in parent.glob(f".{name}.staging-*"))


def hidden(folder: Path) -> list[str]:
    """Staging folders, set-aside outputs and pending artifacts left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------
# The quickstart
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    home = tmp_path_factory.mktemp("quickstart")
    shutil.copytree(CONFIGS, home / "configs")
    result = scalepipe("run", "configs/quickstart.yaml", "--set", "input.demo.rows=20000", "--set", "cluster.n_workers=1", cwd=home)
    assert result.returncode == 0, result.stderr
    return home, result


def test_quickstart_writes_input_artifact_and_output(quickstart):
    home, result = quickstart
    data = home / "quickstart-data"
    assert sorted(p.name for p in (data / "train").iterdir()) == [f"part.{i:05d}.parquet" for i in range(8)]
    manifest = io.verify_output(str(data / "out" / "train_scaled"))
    assert manifest.rows == 20000 and len(manifest.files) == 8  # the input's partitioning
    model = sp.load(data / "artifacts" / "stats.json")
    assert model.feature_names == ["temperature", "pressure", "income", "reading", "calibration", "visits"]
    assert "dashboard: http://127.0.0.1:" in result.stderr
    # the dashboard's pages need bokeh (an extra): the link says so where it is missing
    assert ("need bokeh: pip install 'scalepipe[dashboard]'" in result.stderr) == (importlib.util.find_spec("bokeh") is None)
    assert "writing demo data (20000 rows, 8 files)" in result.stderr
    out = result.stdout.splitlines()
    assert out[0].split()[:4] == ["feature", "method", "count", "nan"]
    assert out[-1].startswith("done in ") and "20000 rows, 6 features" in out[-1]


def test_quickstart_output_equals_numpy(quickstart):
    home, _ = quickstart
    data = home / "quickstart-data"
    source = pd.concat([pd.read_parquet(data / "train" / f"part.{i:05d}.parquet") for i in range(8)], ignore_index=True)
    got = read_parts(data / "out" / "train_scaled")
    f64 = {c: source[c].to_numpy(np.float64) for c in source.columns if c != "sensor_id"}
    want = {
        "temperature": zscore(f64["temperature"]),
        "pressure": zscore(f64["pressure"]),
        "income": minmax(f64["income"], -1, 1, clip=True),
        "reading": minmax(f64["reading"], -1, 1, clip=True),
        "visits": decimal(f64["visits"]),
        "calibration": batchnorm(f64["calibration"]),
    }
    for name, values in want.items():
        assert_close(got[name], values, name)
    assert (got["calibration"] == 0).all()  # constant: (x - mean) / sqrt(0 + eps) is exactly 0


def test_quickstart_keeps_untouched_columns_order_and_float32(quickstart):
    home, _ = quickstart
    data = home / "quickstart-data"
    source = pd.concat([pd.read_parquet(data / "train" / f"part.{i:05d}.parquet") for i in range(8)], ignore_index=True)
    got = read_parts(data / "out" / "train_scaled")
    assert list(got.columns) == list(source.columns)
    assert got["sensor_id"].tolist() == source["sensor_id"].tolist()
    assert got["reading"].dtype == np.float32 and source["reading"].dtype == np.float32
    assert got["visits"].dtype == np.float64  # integers are scaled into float64


def test_inspect_prints_the_table(quickstart):
    home, _ = quickstart
    result = scalepipe("inspect", "quickstart-data/artifacts/stats.json", cwd=home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["feature", "method", "count", "nan", "min", "max", "mean", "std", "center", "scale", "offset", "constant"]
    rows = {line.split()[0]: line.split() for line in lines[1:7]}
    assert rows["pressure"][1] == "zscore" and rows["pressure"][2] == "20000"
    assert rows["calibration"][1] == "batchnorm" and rows["calibration"][-1] == "True"
    assert lines[-1].startswith("6 features, 0 passthrough")
    as_json = CliRunner().invoke(main, ["inspect", "--json", str(home / "quickstart-data" / "artifacts" / "stats.json")])
    assert as_json.exit_code == 0 and '"feature": "visits"' in as_json.output
    records = json.loads(as_json.output, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))  # strict JSON
    assert {r["feature"]: (r["lo"], r["hi"]) for r in records}["visits"] == ("-Infinity", "Infinity")


def test_validate_prints_rule_columns_without_computing(quickstart):
    home, _ = quickstart
    success = home / "quickstart-data" / "out" / "train_scaled" / "_SUCCESS"
    before = success.stat().st_mtime_ns
    overrides = [
        "stats.path=fresh/stats.json",
        "output.overwrite=false",
        "output.compression=zstd",
        "output.compression_level=3",
        "output.durable=false",
    ]
    result = scalepipe("validate", "configs/quickstart.yaml", *[arg for o in overrides for arg in ("--set", o)], cwd=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "input: 8 file(s), 7 column(s)",
        "output: parquet (zstd level 3) -> quickstart-data/out/train_scaled, not flushed to disk (durable: false)",
        "scalers[0] zscore: temperature, pressure",
        "scalers[1] minmax: income, reading",
        "scalers[2] decimal: visits",
        "scalers[3] batchnorm: calibration",
        "configs/quickstart.yaml: ok",
    ]
    assert result.stderr.startswith("warning: output.path: 'quickstart-data/out/train_scaled' exists")
    assert not (home / "fresh").exists() and success.stat().st_mtime_ns == before


# --------------------------------------------------------------------------
# fit, then transform another dataset
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with the job file and two datasets: ``a`` (20k rows) and ``b`` (6k rows), 4 files each."""
    home = tmp_path_factory.mktemp("project")
    (home / "job.yaml").write_text(JOB)
    first, second = table(20_000, seed=0), table(6_000, seed=1)
    write_parts(first, home / "a", 4)
    write_parts(second, home / "b", 4)
    return home, first, second


def test_fit_then_transform_equals_the_python_api(project):
    home, first, second = project
    fitted = scalepipe("fit", "job.yaml", "--quiet", "--set", "stats.path=ft/model.json", cwd=home)
    assert fitted.returncode == 0 and fitted.stdout == "", fitted.stderr
    assert not (home / "out").exists()
    model = sp.load(home / "ft" / "model.json")
    assert model.feature_names == ["offset", "lognormal", "f32", "const", "count"]
    np.testing.assert_allclose(model.transform(first)["offset"], zscore(first["offset"].to_numpy()), rtol=0, atol=1e-12)

    overrides = ["stats.path=ft/model.json", "input.path=b", "output.path=ft/out", "output.compression=zstd", "output.durable=false"]
    result = scalepipe("transform", "job.yaml", *[arg for o in overrides for arg in ("--set", o)], cwd=home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].startswith("done in ") and "6000 rows" in result.stdout
    for part in sorted((home / "ft" / "out").glob("part.*.parquet")):
        assert pq.ParquetFile(part).metadata.row_group(0).column(0).compression == "ZSTD", part
    got = read_parts(home / "ft" / "out")
    want = model.transform(second)  # the Python API on a plain pandas frame
    assert got["id"].tolist() == second["id"].tolist()
    for col in ("offset", "lognormal", "f32", "const", "count"):
        assert got[col].dtype == want[col].dtype, col
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    assert got["f32"].dtype == np.float32


# --------------------------------------------------------------------------
# Errors: one line, nothing left behind
# --------------------------------------------------------------------------

BAD = {
    "unknown_key": ([], "input.colums: unknown key; did you mean 'columns'?"),
    "feature_range": (["scalers.1.feature_range=[1, 0]"], "scalers[1].feature_range"),
    "eps": (["scalers.3.eps=0"], "scalers[3].eps"),
    "momentum": (["scalers.3.momentum=1.5"], "scalers[3].momentum"),
    "scope_key": (["stats.scope=key"], "stats.key: required with scope: key"),
    "missing_input": (["input.path=nowhere"], "'nowhere' does not exist"),
    "missing_column": (["scalers.0.columns=[nosuch]"], "column 'nosuch' not found"),
    "string_column": (["scalers.0.columns=[id]"], "column 'id' has dtype"),
    "existing_output": ([], "'existing_output/out' exists; set output.overwrite: true"),
    "truncated_input": (["input.path=truncated"], "truncated/part.2.parquet"),
    "codec": (["output.compression=lzo"], "output.compression: must be 'snappy', 'zstd', 'gzip', 'brotli' or 'none'"),
}


@pytest.fixture(scope="module")
def bad_runs(project):
    """Every bad job of :data:`BAD`, run at once; ``{case: (result, output, stats)}``."""
    home, _, _ = project
    (home / "bad.yaml").write_text(JOB.replace("  path: a\n", "  path: a\n  colums: [offset]\n"))
    (home / "existing_output" / "out").mkdir(parents=True)
    (home / "existing_output" / "out" / "mine.txt").write_text("keep me")
    shutil.copytree(home / "a", home / "truncated")
    victim = home / "truncated" / "part.2.parquet"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    running = {}
    for case, (overrides, _) in BAD.items():
        config = "bad.yaml" if case == "unknown_key" else "job.yaml"
        paths = [f"output.path={case}/out", f"stats.path={case}/stats.json"]
        args = [arg for o in [*paths, *overrides] for arg in ("--set", o)]
        running[case] = subprocess.Popen(command("run", config, *args), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for case, process in running.items():
        stdout, stderr = process.communicate(timeout=TIMEOUT)
        results[case] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), home / case / "out", home / case / "stats.json")
    return results


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_job_fails_with_one_line_and_leaves_nothing(bad_runs, case):
    result, output, stats = bad_runs[case]
    line = error_line(result)
    assert BAD[case][1] in line
    assert not stats.exists()
    if case == "existing_output":
        assert [p.name for p in output.iterdir()] == ["mine.txt"]
    else:
        assert not output.exists()


@pytest.mark.parametrize("args", [("run", "adir"), ("validate", "adir"), ("inspect", "adir"), ("drift", "adir")])
def test_a_folder_given_as_the_file_is_an_error_as_a_missing_file_is(tmp_path, args):
    """A folder was a usage error (exit 2), a missing file an error (exit 1)."""
    (tmp_path / "adir").mkdir()
    assert error_line(scalepipe(*args, cwd=tmp_path)).startswith("error: adir: cannot read")
    assert error_line(scalepipe(args[0], "missing", cwd=tmp_path)).startswith("error: missing")


def test_bad_config_error_names_the_line(bad_runs):
    line = error_line(bad_runs["unknown_key"][0])
    assert line.startswith("error: bad.yaml: input.colums:") and line.endswith("(line 9)")


# --------------------------------------------------------------------------
# Interrupted, full disk, concurrent
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_partitions(project):
    """``a`` again as 80 row groups, and an environment that reads each as a partition (a slow write)."""
    home, first, _ = project
    write_parts(first, home / "many", 4, row_group_size=250)
    env = {**os.environ, "DASK_SCALEPIPE__IO__PARQUET_PARTITION_SIZE": "1"}
    return home, env


def test_sigkill_mid_write_keeps_the_previous_output(many_partitions):
    home, env = many_partitions
    dest, stats = home / "killed" / "out", home / "killed" / "stats.json"
    previous = table(100, seed=9)
    old_manifest = io.write_table(previous, str(dest), "parquet")
    sp.fit(previous).save(stats)
    old_stats = stats.read_bytes()
    args = ["--set", "input.path=many", "--set", f"output.path={dest}", "--set", f"stats.path={stats}", "--set", "output.overwrite=true"]
    job = subprocess.Popen(command("run", "job.yaml", "--quiet", *args), cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: staged_parts(dest.parent, "out"), job, "the first staged file")
        job.kill()
    finally:
        job.communicate(timeout=TIMEOUT)
    assert job.returncode == -signal.SIGKILL
    assert io.verify_output(str(dest)) == old_manifest
    pd.testing.assert_frame_equal(pd.read_parquet(dest), previous, check_dtype=False)  # text comes back as "string"
    assert stats.read_bytes() == old_stats


@pytest.mark.parametrize("sigint", ["handled", "ignored"])  # ignored: `cmd &` in a script
def test_sigterm_mid_write_cleans_up_and_stops_the_workers(many_partitions, sigint):
    home, env = many_partitions
    dest, stats = home / f"stopped-{sigint}" / "out", home / f"stopped-{sigint}" / "stats.json"
    args = ["--set", "input.path=many", "--set", f"output.path={dest}", "--set", f"stats.path={stats}", "--set", "cluster.processes=true"]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None
    job = subprocess.Popen(
        command("run", "job.yaml", "--quiet", *args), cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ignore,
    )
    try:
        wait_for(lambda: staged_parts(dest.parent, "out"), job, "the first staged file")
        workers = psutil.Process(job.pid).children(recursive=True)
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=TIMEOUT)
    finally:
        job.kill()
    _, alive = psutil.wait_procs(workers, timeout=20)
    assert alive == [], "worker processes outlived the job"
    assert job.returncode == 130, stderr
    assert stderr.splitlines() == ["error: interrupted; an unfinished output or statistics file is never put in place"]
    assert not dest.parent.exists()  # no staging folder, no pending artifact, nor the folder made for them


def test_sigterm_stops_drift_as_it_stops_a_job(many_partitions):
    """drift never installed the SIGTERM handler (killed by the signal, rc -15),
    and the other commands installed it only after their imports and config."""
    home, env = many_partitions
    sp.fit(table(100, seed=3)).save(home / "drift-stats.json")
    job = subprocess.Popen(
        command("drift", "--stats", "drift-stats.json", "--input", "many"), cwd=home, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = ""
        while not line.startswith("checking") and (line or job.poll() is None):
            line = job.stderr.readline()
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=TIMEOUT)
    finally:
        job.kill()
    assert job.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "error: interrupted; an unfinished output or statistics file is never put in place"


def test_disk_full_mid_write_fails_cleanly(project):
    home, _, _ = project

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.RLIM_INFINITY))

    args = ["--set", "output.path=full/out", "--set", "stats.path=full/stats.json"]
    result = scalepipe("run", "job.yaml", "--quiet", *args, cwd=home, preexec_fn=small_disk)
    line = error_line(result)
    assert "'full/out'" in line and "File too large" in line
    assert not (home / "full").exists()  # nor the folder made for the output and statistics


def test_concurrent_runs_one_commits_one_fails_cleanly(project):
    home, first, _ = project
    args = ["--quiet", "--set", "output.path=race/out", "--set", "stats.path=race/stats.json"]
    jobs = [subprocess.Popen(command("run", "job.yaml", *args), cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [j.communicate(timeout=TIMEOUT) for j in jobs]
    results = [subprocess.CompletedProcess(j.args, j.returncode, *out) for j, out in zip(jobs, outputs)]
    assert sorted(r.returncode for r in results) == [0, 1], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert "'race/out'" in error_line(loser)
    model = sp.load(home / "race" / "stats.json")
    got = read_parts(home / "race" / "out")
    want = model.transform(first)
    assert got["id"].tolist() == first["id"].tolist()
    np.testing.assert_allclose(got["offset"], zscore(first["offset"].to_numpy()), rtol=0, atol=1e-12)
    for col in ("lognormal", "f32", "const", "count"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)
    assert hidden(home / "race") == []


# --------------------------------------------------------------------------
# A running scheduler: configs/cluster_example.yaml with --scheduler
# --------------------------------------------------------------------------


def test_cluster_example_on_a_running_scheduler(project, client, tmp_path):
    home, first, _ = project
    sets = {
        "input.path": home / "a",
        "input.columns": "[f32, count]",
        "scalers.0.columns": "[count]",
        "output.path": tmp_path / "out",
        "stats.path": tmp_path / "stats.json",
    }
    args = [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    result = scalepipe("run", CONFIGS / "cluster_example.yaml", "--scheduler", client.scheduler.address, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = read_parts(tmp_path / "out")
    assert sp.load(tmp_path / "stats.json").feature_names == ["f32", "count"]
    assert_close(got["f32"], batchnorm(first["f32"].to_numpy(np.float64)), "f32")
    assert_close(got["count"], decimal(first["count"].to_numpy(np.float64)), "count")
    assert got["id"].tolist() == first["id"].tolist()
    for col in ("offset", "lognormal", "const"):  # not in input.columns: written unchanged
        np.testing.assert_array_equal(got[col].to_numpy(), first[col].to_numpy(), err_msg=col)


# --------------------------------------------------------------------------
# Help and version
# --------------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", [[], ["run"], ["fit"], ["transform"], ["inspect"], ["validate"]])
def test_help_for_every_command(subcommand):
    result = CliRunner().invoke(main, [*subcommand, "--help"])
    assert result.exit_code == 0 and result.output.startswith("Usage: ")
    if subcommand in (["run"], ["fit"], ["transform"]):
        assert all(flag in result.output for flag in ("--scheduler", "--set", "--quiet", "--debug"))
    if subcommand == ["fit"]:
        assert "--update" in result.output


def test_an_unwritable_json_path_fails_before_the_pass(tmp_path, monkeypatch):
    """--json under a file ran the whole pass, printed the table, then failed with a raw NotADirectoryError."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["drift", "--stats", "missing.json", "--input", "nothing", "--json", "afile/x.json"])
    assert result.exit_code == 1, result.output
    assert "error: --json: 'afile/x.json' cannot be written: " in result.output and "is a file, not a folder" in result.output


def test_main_leaves_the_callers_signal_handlers_alone(tmp_path, monkeypatch):
    """Ignoring SIGINT and SIGTERM once a command is over belongs to the
    process's exit (``entry``), not to ``main`` run inside another program."""
    import signal

    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert CliRunner().invoke(main, ["--version"]).exit_code == 0
    (tmp_path / "s.json").write_text("{}")
    CliRunner().invoke(main, ["inspect", "s.json"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_drift_without_its_inputs_is_a_usage_error():
    """It exited 1 as a job error; README: a missing argument is a usage error (2)."""
    result = CliRunner().invoke(main, ["drift"])
    assert result.exit_code == 2 and "give a CONFIG, or both --stats and --input" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["drift", "--stats", "s.json", "--input", "d", "--threshold", "foo=1"], "foo: not a drift threshold"),
        (["drift", "--stats", "s.json", "--input", "d", "--threshold", "psi"], "expected NAME=VALUE"),
        (["drift", "--stats", "s.json", "--input", "d", "--threshold", "psi=lots"], "'lots' is not a number"),
        (["validate", "job.yaml", "--set", "bogus"], "'bogus': expected KEY.PATH=VALUE"),
        (["run", "job.yaml", "--set", "=true"], "expected KEY.PATH=VALUE"),
    ],
)
def test_malformed_option_values_are_usage_errors(tmp_path, args, message):
    """A --threshold or --set value not of its form exited 1 as a job error;
    like any invalid option value (--format zarr) it is a usage error (2),
    found before the config or the data is read."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_version(tmp_path):
    result = scalepipe("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"scalepipe, version {sp.__version__}"


def test_readme_opens_with_the_quickstart_and_the_ci_command():
    root = CONFIGS.parent
    readme = (root / "README.md").read_text().splitlines()
    block = readme[readme.index("```") + 1 : readme.index("```", readme.index("```") + 1)]
    assert block == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/scalepipe run configs/quickstart.yaml",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
    ]
    ci = (root / ".ci" / "run").read_text().splitlines()[-1]
    assert ci.replace(" -q", "").replace(" -p no:cacheprovider", "") == block[1]


def test_job_modules_load_with_the_collector_back_on():
    """A job command imports its modules with the garbage collector off and
    freezes them; the collector must be on again afterwards (else a long job
    would never free reference cycles). In a fresh process: it owns its GC."""
    code = (
        "import gc\n"
        "from scalepipe.cli import _load_job_modules\n"
        "_load_job_modules()\n"
        "import dask.dataframe, distributed, sys\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0, 'scalepipe.pipeline' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_output_cut_short_by_its_reader_is_not_an_error(tmp_path):
    """``scalepipe inspect ... | head``: the reader leaves early, and the
    command ends quietly with status 0 (it printed ``error: BrokenPipeError``)."""
    sp.fit(np.random.default_rng(0).standard_normal((20, 3000))).save(tmp_path / "wide.json")  # a table of 3000 lines
    shell = f"set -o pipefail; {sys.executable} -m scalepipe inspect wide.json | head -1 > /dev/null"
    result = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # a job whose output's reader leaves is stopped by it: that is a failure, not success
    (tmp_path / "job.yaml").write_text((CONFIGS / "quickstart.yaml").read_text())
    shell = f"set -o pipefail; {sys.executable} -m scalepipe run job.yaml 2>&1 | head -c 1 > /dev/null"
    job = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert job.returncode == 1, (job.returncode, job.stderr)
    assert (tmp_path / "quickstart-data" / "train").is_dir()  # it got past its checks: the pipe stopped it


def test_netcdf_input_leaves_no_traceback_at_exit(tmp_path):
    """xarray keeps NetCDF files open in its cache; closed at the
    interpreter's shutdown, after h5py's teardown, each run printed an
    "Exception ignored ... TypeError" traceback (exit 0). With -q, zarr's
    note on the text coordinate ("does not have a Zarr V3 specification") is
    not printed either: nothing is."""
    import xarray as xr

    values = np.random.default_rng(3).normal(10.0, 2.0, size=(40, 3))
    xr.Dataset({"t": (("time", "x"), values)}, coords={"x": ["a", "b", "c"]}).to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    (tmp_path / "job.yaml").write_text(
        "version: 1\ninput: {format: netcdf, path: a.nc}\nstats: {path: stats.json}\n"
        "scalers: [{method: zscore}]\noutput: {format: zarr, path: out.zarr}\nreport: false\n"
    )
    result = scalepipe("run", "job.yaml", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    got = xr.open_zarr(tmp_path / "out.zarr")["t"].values
    np.testing.assert_allclose(got, (values - values.mean(0)) / values.std(0), rtol=0, atol=1e-12)
