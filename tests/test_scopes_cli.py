"""The three statistics scopes end to end: YAML -> ``scalepipe run`` (a real subprocess) -> Parquet."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from scalepipe.demo import write_demo_table

SCOPES = {
    "global": "stats: {scope: global, path: out/stats.json}",
    "partition": "stats: {scope: partition, batch_rows: 700, path: out/stats.json}",
    "key": "stats: {scope: key, key: sensor_id, path: out/stats.json}",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("scopes")
    write_demo_table(root / "train", rows=6000, files=3, seed=4)
    return root


def exact_mean(values: np.ndarray) -> float:
    return float(sum(map(Fraction, values.tolist()), Fraction(0)) / len(values))


@pytest.mark.parametrize("scope", SCOPES)
def test_scope_through_the_cli(data_dir, tmp_path, scope):
    config = tmp_path / "job.yaml"
    config.write_text(
        "version: 1\n"
        "cluster: {n_workers: 1, processes: false, dashboard_address: null}\n"
        f"input: {{format: parquet, path: {data_dir / 'train'}}}\n"
        f"{SCOPES[scope]}\n"
        "scalers: [{columns: [pressure, visits], method: zscore}]\n"
        "output: {format: parquet, path: out/scaled}\n"
        "report: false\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "scalepipe", "run", str(config), "-q"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    files = sorted((data_dir / "train").glob("*.parquet"))
    parts = [pd.read_parquet(f) for f in files]
    df = pd.concat(parts, ignore_index=True)
    out = pd.read_parquet(tmp_path / "out" / "scaled")
    assert out["sensor_id"].tolist() == df["sensor_id"].tolist()
    doc = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert doc["scope"]["kind"] == scope
    cols = ["pressure", "visits"]
    if scope == "global":
        x = df[cols].to_numpy(float)
        expected = (x - [exact_mean(c) for c in x.T]) / x.std(0)
    elif scope == "partition":
        expected = []
        for part in parts:  # every file is one partition here; batches of 700 rows within it
            x = part[cols].to_numpy(float)
            for a in range(0, len(x), 700):
                b = x[a : a + 700]
                expected.append((b - [exact_mean(c) for c in b.T]) / b.std(0))
        expected = np.vstack(expected)
        assert doc["batches"]["running"]["num_batches_tracked"] == sum(-(-len(p) // 700) for p in parts)
    else:
        g = df.groupby("sensor_id")[cols]
        expected = ((df[cols] - g.transform("mean")) / g.transform(lambda s: s.std(ddof=0)).replace(0, 1)).to_numpy()
        assert sorted(doc["groups"]["keys"]) == sorted(df["sensor_id"].unique())
    # tolerance: 1e-9 absolute on O(1) outputs (pressure is 101325 + 0.05 N(0,1): the reference's own rounding)
    np.testing.assert_allclose(out[cols].to_numpy(), expected, rtol=0, atol=1e-9)
