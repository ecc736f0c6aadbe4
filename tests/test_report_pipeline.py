"""The report and the drift check through the command line, on the quickstart job."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe.report import load_histograms

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalepipe", *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    shutil.copytree(ROOT / "configs", root / "configs")
    sets = ["--set", "input.demo.rows=12000", "--set", "cluster.n_workers=1", "--set", "cluster.processes=false"]
    result = cli("run", "configs/quickstart.yaml", "-q", *sets, cwd=root)
    assert result.returncode == 0, result.stderr
    return root, sets


def test_report_is_one_html_file_naming_every_feature(quickstart):
    root, _ = quickstart
    report = root / "quickstart-data" / "artifacts" / "stats.report.html"
    html = report.read_text()
    model = sp.load(root / "quickstart-data" / "artifacts" / "stats.json")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert all(str(name) in html for name in model.feature_names)
    assert 'src="http' not in html and "<link" not in html  # self-contained


def test_histogram_counts_equal_numpy_histogram(quickstart):
    root, _ = quickstart
    stats = root / "quickstart-data" / "artifacts" / "stats.json"
    model = sp.load(stats)
    hist = load_histograms(Path(f"{stats}.hist.json"), model)
    assert hist is not None
    data = pd.read_parquet(root / "quickstart-data" / "train")
    scaled = pd.read_parquet(root / "quickstart-data" / "out" / "train_scaled")
    for i, name in enumerate(hist.names):
        x = data[name].to_numpy(float)
        x = x[~np.isnan(x)]
        expected, _ = np.histogram(x, bins=hist.input.edges[i])
        np.testing.assert_array_equal(hist.input.counts[i], expected)
        y = scaled[name].to_numpy(float)
        y = y[~np.isnan(y)]
        inside = (y >= hist.output.edges[i][0]) & (y <= hist.output.edges[i][-1])
        expected_out, _ = np.histogram(y[inside], bins=hist.output.edges[i])
        np.testing.assert_array_equal(hist.output.counts[i], expected_out)


def test_drift_exit_code_follows_the_threshold(quickstart, tmp_path):
    root, sets = quickstart
    same = cli("drift", "configs/quickstart.yaml", "-q", *sets, cwd=root)
    assert same.returncode == 0, same.stdout + same.stderr
    data = pd.read_parquet(root / "quickstart-data" / "train")
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    data.assign(temperature=data["temperature"] + 4.0).to_parquet(shifted / "part.0.parquet")
    stats = str(root / "quickstart-data" / "artifacts" / "stats.json")
    out = tmp_path / "drift.json"
    flagged = cli("drift", "--stats", stats, "--input", str(shifted), "--json", str(out), "-q", cwd=root)
    assert flagged.returncode == 3, flagged.stdout + flagged.stderr
    doc = json.loads(out.read_text())
    assert "temperature" in json.dumps(doc) and doc["flagged"]
    relaxed = cli("drift", "--stats", stats, "--input", str(shifted), "-q", "--threshold", "mean_shift=1",
                  "--threshold", "psi=off", cwd=root)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


def test_report_command_rebuilds_the_page(quickstart, tmp_path):
    root, _ = quickstart
    target = tmp_path / "again.html"
    result = cli("report", "quickstart-data/artifacts/stats.json", "-o", str(target), cwd=root)
    assert result.returncode == 0, result.stderr
    assert "temperature" in target.read_text()


def test_report_and_drift_never_write_over_the_statistics_the_input_or_other_files(quickstart, tmp_path):
    """``report -o`` onto the statistics, its histograms or any existing
    non-HTML file is refused, and the file is left as it was."""
    root, _ = quickstart
    stats = root / "quickstart-data" / "artifacts" / "stats.json"
    other = tmp_path / "data.csv"
    other.write_text("a\n1\n")
    for target in (stats, stats.with_name("stats.json.hist.json"), other):
        before = target.read_bytes()
        result = cli("report", str(stats), "-o", str(target), cwd=root)
        assert result.returncode == 1 and result.stderr.startswith(f"error: --output {str(target)!r}"), result.stderr
        assert target.read_bytes() == before
    # drift --json likewise (it replaced the statistics with the drift JSON), and never writes into its input
    train = root / "quickstart-data" / "train"
    for target in (stats, stats.with_name("stats.json.hist.json"), other, sorted(train.iterdir())[0]):
        before = target.read_bytes()
        result = cli("drift", "--stats", str(stats), "--input", str(train), "--json", str(target), cwd=root)
        assert result.returncode == 1 and result.stderr.startswith(f"error: --json {str(target)!r}"), result.stderr
        assert target.read_bytes() == before
    globbed = cli("drift", "--stats", str(stats), "--input", str(train / "*.parquet"), "--json", str(train / "d.json"), cwd=root)
    assert globbed.returncode == 1 and "inside the input" in globbed.stderr and not (train / "d.json").exists()
    ignored = cli("drift", "--stats", str(stats), "--input", str(train), "--set", "stats.scope=key", cwd=root)
    assert ignored.returncode == 1 and "--set changes a CONFIG" in ignored.stderr  # was silently ignored
