"""Out-of-core: fit and transform a Parquet dataset with bounded worker memory.

A real one-worker, one-thread, process-based ``distributed.LocalCluster`` fits
and transforms a dataset of ~480 MB (in memory; 40 files) through the Python
API -- ``sp.fit(io.read_table(...).frame)`` and
``io.write_table(model.transform(frame), ...)`` -- and then the same on a
quarter of the files. The tests check that

* the statistics equal a reference computed here file by file in numpy, with
  ``math.fsum`` across files and a corrected two-pass variance (~1e-15
  relative), to 1e-12 relative -- including ``1e9 + N(0, 1)``,
  ``1e12 + 1e-3 * U(0, 1)`` and a float32 column;
* the scaled files hold every row, scaled as the reference statistics say;
* the worker's peak resident memory stays under its limit, and the part of it
  that the data takes (peak minus the warmed-up worker's resident memory) is a
  small fraction of the dataset and does not grow when the dataset grows 4x;
* the client process does not grow by more than a small fraction of the
  dataset: no step gathers the data to the client.

The worker's limit cannot be as small as the dataset's partitions suggest: a
worker process that has imported distributed, pandas, pyarrow and the numba
kernels is already ~300-360 MB resident before it holds any data, and
the nanny kills a worker past 95% of its limit. The limit (600 MiB) is
therefore that footprint plus ~200 MB of headroom -- less than the dataset,
not several times less -- and what is checked against the dataset size is the
memory the data itself takes in the worker.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scalepipe as sp
from scalepipe import io

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

FILES = 40
ROWS_PER_FILE = 200_000
SMALL_FILES = FILES // 4
MEMORY_LIMIT = 600 * 2**20
MiB = 2**20

#: name -> (stored dtype, generator of one file's values)
COLUMNS = {
    "off1e9": ("float64", lambda r, n: 1e9 + r.standard_normal(n)),
    "tiny1e12": ("float64", lambda r, n: 1e12 + 1e-3 * r.random(n)),
    "f32": ("float32", lambda r, n: 1e4 + r.standard_normal(n)),
    "lognormal": ("float64", lambda r, n: r.lognormal(0.0, 2.0, n)),
    "nan10": ("float64", lambda r, n: np.where(r.random(n) < 0.1, np.nan, r.standard_normal(n))),
    "uniform": ("float64", lambda r, n: r.uniform(-1e6, 1e6, n)),
    "ints": ("float64", lambda r, n: r.integers(-1000, 1000, n).astype(np.float64)),
    "neg": ("float64", lambda r, n: -5e6 + 10.0 * r.standard_normal(n)),
}
NAMES = list(COLUMNS)


# --------------------------------------------------------------------------
# Data and the reference statistics
# --------------------------------------------------------------------------


def _file_values(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {c: table.column(c).to_numpy().astype(np.float64) for c in NAMES}


def _reference(files: list[Path]) -> dict[str, dict[str, float]]:
    """count, nan_count, min, max, mean, var (ddof=0) per column, file by file.

    Pass 1: counts, extremes, and ``math.fsum`` of the per-file numpy sums give
    a mean ``m`` rounded to float64. Pass 2: ``d = x - m`` is exact for these
    columns (Sterbenz), and ``sum(d*d) - sum(d)**2 / n`` is the sum of squared
    deviations from the exact mean: the rounding of ``m`` (0.4 standard
    deviations on ``1e12 + 1e-3 * U``) cancels, and what is left is the
    pairwise-summation error of ``sum(d*d)``, ~1e-15 relative.
    """
    acc = {c: {"n": 0, "nan": 0, "min": math.inf, "max": -math.inf, "sums": []} for c in NAMES}
    for f in files:
        for c, v in _file_values(f).items():
            ok = v[~np.isnan(v)]
            a = acc[c]
            a["n"] += ok.size
            a["nan"] += v.size - ok.size
            a["min"] = min(a["min"], float(ok.min()))
            a["max"] = max(a["max"], float(ok.max()))
            a["sums"].append(float(np.sum(ok)))
    means = {c: math.fsum(a["sums"]) / a["n"] for c, a in acc.items()}
    d1 = {c: [] for c in NAMES}
    d2 = {c: [] for c in NAMES}
    for f in files:
        for c, v in _file_values(f).items():
            d = v[~np.isnan(v)] - means[c]
            d1[c].append(float(np.sum(d)))
            d2[c].append(float(np.sum(d * d)))
    out = {}
    for c, a in acc.items():
        n = a["n"]
        s1 = math.fsum(d1[c])
        m2 = math.fsum(d2[c]) - s1 * s1 / n
        out[c] = {
            "count": n,
            "nan_count": a["nan"],
            "min": a["min"],
            "max": a["max"],
            "mean": means[c] + s1 / n,
            "var": m2 / n,
        }
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """40 Parquet files (~12 MB in memory each), a quarter of them, one file, and references."""
    root = tmp_path_factory.mktemp("outofcore")
    full = root / "full"
    full.mkdir()
    rng = np.random.default_rng(20240606)
    schema = pa.schema([pa.field(c, pa.float32() if t == "float32" else pa.float64()) for c, (t, _) in COLUMNS.items()])
    files = []
    for k in range(FILES):
        arrays = [pa.array(gen(rng, ROWS_PER_FILE).astype(t)) for t, gen in COLUMNS.values()]
        path = full / f"part-{k:03d}.parquet"
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path, compression="snappy", use_dictionary=False)
        files.append(path)
    small = root / "small"
    small.mkdir()
    for f in files[:SMALL_FILES]:
        (small / f.name).symlink_to(f)
    warm = root / "warm"
    warm.mkdir()
    (warm / files[0].name).symlink_to(files[0])
    row_bytes = sum(np.dtype(t).itemsize for t, _ in COLUMNS.values())
    return {
        "root": root,
        "full": full,
        "small": small,
        "warm": warm,
        "files": files,
        "bytes_full": FILES * ROWS_PER_FILE * row_bytes,
        "bytes_small": SMALL_FILES * ROWS_PER_FILE * row_bytes,
        "ref_full": _reference(files),
        "ref_small": _reference(files[:SMALL_FILES]),
    }


# --------------------------------------------------------------------------
# Memory measurement
# --------------------------------------------------------------------------


def _reset_peak() -> bool:
    """Reset this process's VmHWM (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_and_current() -> tuple[int, int]:
    """(VmHWM, VmRSS) in bytes on Linux; (0, RSS) elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import psutil

        return 0, psutil.Process().memory_info().rss


class Sampler:
    """Peak RSS of some processes, sampled every few milliseconds in a thread.

    Complements VmHWM (exact, but Linux only) for the worker, and measures the
    client, whose VmHWM includes the fixture's work.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.005) -> None:
        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = {k: 0 for k in pids}
        self.start = {k: 0 for k in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.interval = interval

    def _sample(self) -> None:
        for k, p in self.procs.items():
            try:
                self.peak[k] = max(self.peak[k], p.memory_info().rss)
            except psutil.Error:
                pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        for k, p in self.procs.items():
            self.start[k] = self.peak[k] = p.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------
# The cluster and one run
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_client():
    # Only the hard limit: the nanny kills a worker past 95% of it, which fails
    # the run (KilledWorker). Pausing or spilling would only hide or stall a
    # working set that grows.
    thresholds = {
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": 0.95,
    }
    with dask.config.set(thresholds):
        cluster = distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=MEMORY_LIMIT,
        )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


RULES = [sp.ZScore(NAMES[:-2]), sp.MinMax(NAMES[-2:], feature_range=(-1.0, 1.0))]


def _fit_and_transform(client, source: Path, out: Path) -> tuple[sp.Model, io.Manifest, dict[str, float]]:
    """Fit and transform under ``client``; the worker's and client's peak memory (bytes)."""
    (worker_pid,) = client.run(os.getpid).values()
    exact_peak = all(client.run(_reset_peak).values())
    with client.as_current(), Sampler({"worker": worker_pid, "client": os.getpid()}) as mem:
        model = sp.fit(io.read_table(str(source), "parquet").frame, scalers=RULES)
        frame = io.read_table(str(source), "parquet").frame
        manifest = io.write_table(model.transform(frame), str(out), "parquet")
    (worker_hwm, worker_rss) = next(iter(client.run(_peak_and_current).values()))
    memory = {
        "worker_peak": max(mem.peak["worker"], worker_hwm if exact_peak else 0),
        "worker_start": mem.start["worker"],
        "worker_end": worker_rss,
        "client_start": mem.start["client"],
        "client_peak": mem.peak["client"],
    }
    return model, manifest, memory


@pytest.fixture(scope="module")
def runs(dataset, cluster_client):
    """Warm the worker (imports, JIT), then run the small and the full dataset."""
    root = dataset["root"]
    timings = {}
    t0 = time.perf_counter()
    _fit_and_transform(cluster_client, dataset["warm"], root / "out-warm")
    timings["warm"] = time.perf_counter() - t0
    (baseline,) = [rss for _, rss in cluster_client.run(_peak_and_current).values()]
    out = {"baseline": baseline, "timings": timings}
    for name in ("small", "full"):
        t0 = time.perf_counter()
        out[name] = _fit_and_transform(cluster_client, dataset[name], root / f"out-{name}")
        timings[name] = time.perf_counter() - t0
    print(f"\nout-of-core timings (s): {timings}; worker baseline {baseline / MiB:.0f} MiB; "
          f"memory small {_mib(out['small'][2])}; full {_mib(out['full'][2])}", file=sys.stderr)
    return out


def _mib(d: dict[str, float]) -> dict[str, int]:
    return {k: round(v / MiB) for k, v in d.items()}


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["small", "full"])
def test_statistics_equal_the_file_by_file_reference(dataset, runs, size):
    model = runs[size][0]
    ref = dataset[f"ref_{size}"]
    m = model.moments
    assert model.feature_names == NAMES
    for i, c in enumerate(NAMES):
        r = ref[c]
        assert int(m.count[i]) == r["count"], c
        assert int(m.nan_count[i]) == r["nan_count"], c
        assert float(m.min[i]) == r["min"], c
        assert float(m.max[i]) == r["max"], c
        assert float(m.mean[i]) == pytest.approx(r["mean"], rel=1e-12, abs=0), c
        assert float(m.var(0)[i]) == pytest.approx(r["var"], rel=1e-12, abs=0), c


def test_scaled_output_holds_every_row_scaled_by_the_reference(dataset, runs):
    manifest = runs["full"][1]
    ref = dataset["ref_full"]
    assert manifest.rows == FILES * ROWS_PER_FILE
    assert len(manifest.files) == FILES
    out = io.verify_output(manifest.path)
    assert out.rows == manifest.rows
    for k in (0, FILES // 2, FILES - 1):
        source = _file_values(dataset["files"][k])
        scaled = pq.read_table(Path(manifest.path) / manifest.files[k].name)
        assert scaled.schema.field("f32").type == pa.float32()
        for c in NAMES:
            x, y = source[c], scaled.column(c).to_numpy().astype(np.float64)
            r = ref[c]
            if c in NAMES[-2:]:
                want = -1.0 + (x - r["min"]) * (2.0 / (r["max"] - r["min"]))
            else:
                want = (x - r["mean"]) / math.sqrt(r["var"])
            tol = 1e-5 if c == "f32" else 1e-9
            np.testing.assert_allclose(y, want, rtol=0, atol=tol, equal_nan=True, err_msg=c)


def test_worker_memory_is_bounded_and_does_not_grow_with_the_data(dataset, runs):
    base = runs["baseline"]
    small, full = runs["small"][2], runs["full"][2]
    assert full["worker_peak"] < MEMORY_LIMIT
    data_small = max(small["worker_peak"] - base, 0)
    data_full = max(full["worker_peak"] - base, 0)
    # The data's share of the worker: a few partitions (~12 MB each), not the dataset.
    assert data_full < dataset["bytes_full"] / 3, (data_full / MiB, dataset["bytes_full"] / MiB)
    # 4x the data: the same peak, to 25% (plus a few MiB of allocator noise).
    assert data_full <= 1.25 * data_small + 16 * MiB, (data_small / MiB, data_full / MiB)
    # No leak across runs: the worker returns to about where it was.
    assert full["worker_end"] - base < 64 * MiB, (base / MiB, full["worker_end"] / MiB)


def test_no_step_gathers_the_data_to_the_client(dataset, runs):
    full = runs["full"][2]
    grown = full["client_peak"] - full["client_start"]
    assert grown < dataset["bytes_full"] / 8, (grown / MiB, dataset["bytes_full"] / MiB)
