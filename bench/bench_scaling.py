"""Benchmark: scalepipe's fit and transform against their floors and the peers.

One run generates the data once (rows x cols, mixed columns including the
hard ones: ``1e9 + N(0, 1)``, ``1e12 + 1e-3 * U(0, 1)`` and float32
``1e4 + N(0, 1)``), writes it as a ``.npy`` array and as ``--files`` Parquet
files (snappy, no dictionary encoding) in a temporary folder, warms the page
cache, computes an exact reference variance of the hard columns (corrected
two-pass with ``math.fsum`` and error-free squares), and then times every case
in its own subprocess, so each one's peak memory is its own:

* floors: one numpy ``x.sum(axis=0)``, a plain numba column-sum read on 1 and
  on all threads, ``np.copyto`` / ``np.copy``, pyarrow ``read_table`` of the
  files, and a pyarrow read+write copy (2 threads, dictionary encoding off);
* scalepipe: ``sp.fit`` in memory, ``sp.fit`` over ``io.read_table(...).frame``
  under the threaded scheduler, a 2-process ``LocalCluster`` and a
  ``LocalCluster(processes=False)``, ``model.transform`` in memory, and
  ``io.write_table(model.transform(frame), ...)`` Parquet -> Parquet;
* peers: scikit-learn (StandardScaler + MinMaxScaler + MaxAbsScaler),
  dask.array nan-statistics, dask.dataframe, dask-ml and polars (each when
  installed).

Each case runs once untimed (warm-up: imports, JIT, caches) and then
``--repeat`` times; the table shows the median, its ratio to the case's floor,
the largest relative variance error on the hard columns, and the peak resident
memory above the case's baseline (its process and all its children, sampled
every 10 ms; the baseline is taken after imports, data load and cluster
start). A JSON record with every sample, the machine and the versions is
written to ``--out``.

Usage::

    python bench/bench_scaling.py --rows 10_000_000 --cols 16 --files 32 \
        --out bench/results/latest.json
    python bench/bench_scaling.py --quick          # 1M rows, a minute or two

This is a script, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
RESULT_TAG = "BENCH-RESULT:"

#: The hard columns of the exactness bar: (name, what it is).
HARD = {
    "off1e9": "1e9 + N(0,1)",
    "tiny1e12": "1e12 + 1e-3*U(0,1)",
    "f32_1e4": "float32 1e4 + N(0,1)",
}


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _column_specs() -> list[tuple[str, str, Callable[[np.random.Generator, int], np.ndarray]]]:
    """(name, parquet dtype, generator) of the 16 base columns; more columns cycle them."""
    return [
        ("n01", "float64", lambda r, n: r.standard_normal(n)),
        ("off1e9", "float64", lambda r, n: 1e9 + r.standard_normal(n)),
        ("tiny1e12", "float64", lambda r, n: 1e12 + 1e-3 * r.random(n)),
        ("f32_1e4", "float32", lambda r, n: 1e4 + r.standard_normal(n)),
        ("lognormal", "float64", lambda r, n: r.lognormal(0.0, 2.0, n)),
        ("nan5", "float64", lambda r, n: np.where(r.random(n) < 0.05, np.nan, 3.0 + 2.0 * r.standard_normal(n))),
        ("uniform", "float64", lambda r, n: r.uniform(-1e6, 1e6, n)),
        ("ints", "float64", lambda r, n: r.integers(-1000, 1000, n).astype(np.float64)),
        ("f32_n01", "float32", lambda r, n: r.standard_normal(n)),
        ("binary", "float64", lambda r, n: (r.random(n) < 0.3).astype(np.float64)),
        ("exp1e3", "float64", lambda r, n: r.exponential(1e3, n)),
        ("neg5e6", "float64", lambda r, n: -5e6 + 10.0 * r.standard_normal(n)),
        ("n100_15", "float64", lambda r, n: 100.0 + 15.0 * r.standard_normal(n)),
        ("small", "float64", lambda r, n: -3.0 + 0.1 * r.standard_normal(n)),
        ("n1e3", "float64", lambda r, n: 1e3 + 1e2 * r.standard_normal(n)),
        ("t3", "float64", lambda r, n: r.standard_t(3, n)),
    ]


def _columns(cols: int) -> list[tuple[str, str, Callable[[np.random.Generator, int], np.ndarray]]]:
    base = _column_specs()
    out = []
    for i in range(cols):
        name, dtype, gen = base[i % len(base)]
        out.append((name if i < len(base) else f"{name}_{i // len(base)}", dtype, gen))
    return out


def generate(folder: Path, rows: int, cols: int, files: int, seed: int = 0) -> dict[str, Any]:
    """Write ``x.npy`` (float64, C order) and ``parquet/part-NNN.parquet``; return the metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    specs = _columns(cols)
    names = [s[0] for s in specs]
    dtypes = [s[1] for s in specs]
    folder.mkdir(parents=True, exist_ok=True)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float64, shape=(rows, cols))
    rng = np.random.default_rng(seed)
    step = 1 << 20
    for j, (_, dtype, gen) in enumerate(specs):
        for start in range(0, rows, step):
            n = min(step, rows - start)
            values = gen(rng, n)
            if dtype == "float32":
                values = values.astype(np.float32)
            x[start : start + n, j] = values
    x.flush()
    pdir = folder / "parquet"
    pdir.mkdir(exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(np.int64)
    schema = pa.schema([pa.field(n, pa.float32() if d == "float32" else pa.float64()) for n, d in zip(names, dtypes)])
    width = max(3, len(str(files - 1)))
    for k in range(files):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        arrays = [pa.array(np.ascontiguousarray(x[lo:hi, j]).astype(dtypes[j])) for j in range(cols)]
        table = pa.Table.from_arrays(arrays, schema=schema)
        pq.write_table(table, pdir / f"part-{k:0{width}d}.parquet", compression="snappy", use_dictionary=False)
    quarter = folder / "parquet_quarter"
    quarter.mkdir(exist_ok=True)
    kept = sorted(pdir.glob("*.parquet"))[: max(1, files // 4)]
    for f in kept:
        (quarter / f.name).symlink_to(f)
    meta = {
        "rows": rows,
        "cols": cols,
        "files": files,
        "seed": seed,
        "names": names,
        "dtypes": dtypes,
        "rows_per_file": int(math.ceil(rows / files)),
        "quarter_rows": int(bounds[len(kept)]),
        "parquet_bytes": sum(f.stat().st_size for f in pdir.glob("*.parquet")),
    }
    del x
    return meta


def _exact_square_parts(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``d*d == p + e`` exactly for each element (Dekker's split, no FMA needed)."""
    split = 134217729.0  # 2**27 + 1
    c = split * d
    hi = c - (c - d)
    lo = d - hi
    p = d * d
    e = ((hi * hi - p) + 2.0 * hi * lo) + lo * lo
    return p, e


def exact_variance(v: np.ndarray) -> float:
    """Population variance of ``v`` (no NaN), exact to ~1e-16 relative.

    Corrected two-pass: ``m`` is the fsum mean rounded to float64; ``d = v - m``
    is exact (Sterbenz) for these near-constant-offset columns; ``sum(d*d)`` is
    summed exactly from error-free square parts, and ``sum(d)**2 / n`` removes
    the rounding of ``m``.
    """
    v = np.asarray(v, dtype=np.float64)
    n = v.size
    m = math.fsum(v.tolist()) / n
    d = v - m
    p, e = _exact_square_parts(d)
    s_d = math.fsum(d.tolist())
    m2 = math.fsum(p.tolist() + e.tolist()) - s_d * s_d / n
    return m2 / n


def reference(folder: Path, meta: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Exact variances of the hard columns over all rows and over the quarter dataset's rows."""
    x = np.load(folder / "x.npy", mmap_mode="r")
    out: dict[str, dict[str, float]] = {"full": {}, "quarter": {}}
    for name in HARD:
        if name in meta["names"]:
            column = np.array(x[:, meta["names"].index(name)])
            out["full"][name] = exact_variance(column)
            out["quarter"][name] = exact_variance(column[: meta["quarter_rows"]])
    return out


def warm_page_cache(folder: Path) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


# --------------------------------------------------------------------------
# Measuring (inside a case's subprocess)
# --------------------------------------------------------------------------


def _rss(proc: Any) -> int:
    try:
        return proc.memory_info().rss
    except Exception:  # a child that just exited
        return 0


class MemorySampler:
    """Peak RSS of this process plus all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.mark_base = 0
        self.peak_since_mark = 0
        self._children: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def total(self) -> int:
        return _rss(self.me) + sum(_rss(c) for c in self._children)

    def refresh_children(self) -> None:
        try:
            self._children = self.me.children(recursive=True)
        except Exception:
            self._children = []

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            if tick % 50 == 0:
                self.refresh_children()
            now = self.total()
            self.peak = max(self.peak, now)
            self.peak_since_mark = max(self.peak_since_mark, now)
            tick += 1
            self._stop.wait(self.interval)

    def mark(self) -> None:
        """Start a second peak from here (after the warm-up: the steady-state working set)."""
        self.refresh_children()
        self.mark_base = self.peak_since_mark = self.total()

    def __enter__(self) -> MemorySampler:
        self.refresh_children()
        self.baseline = self.total()
        self.peak = self.mark_base = self.peak_since_mark = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        now = self.total()
        self.peak = max(self.peak, now)
        self.peak_since_mark = max(self.peak_since_mark, now)


@dataclass
class Measured:
    times: list[float]
    result: Any
    peak_mb: float
    baseline_mb: float
    first_s: float | None = None
    steady_peak_mb: float | None = None


def measure(run: Callable[[], Any], repeat: int, reset: Callable[[], None] | None = None, warmup: bool = True) -> Measured:
    """Run ``run`` once untimed (``warmup``), then ``repeat`` timed times."""
    import gc

    times = []
    result = None
    with MemorySampler() as mem:
        for i in range(repeat + (1 if warmup else 0)):
            result = None
            gc.collect()
            if i == (1 if warmup else 0):
                mem.mark()
            t0 = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - t0)
            if reset is not None:
                reset()
    first = times.pop(0) if warmup else None
    return Measured(
        times, result, (mem.peak - mem.baseline) / 2**20, mem.baseline / 2**20, first,
        (mem.peak_since_mark - mem.mark_base) / 2**20,
    )


@contextlib.contextmanager
def scheduler(kind: str) -> Iterator[Any]:
    """The three embedded options of issue 6, on this machine's cores."""
    import dask

    if kind == "threads":
        with dask.config.set(scheduler="threads", num_workers=CORES):
            yield None
        return
    from distributed import Client, LocalCluster

    if kind == "lc_procs":
        cluster = LocalCluster(
            n_workers=CORES, threads_per_worker=1, processes=True, memory_limit="4GiB",
            host="127.0.0.1", dashboard_address=None,
        )
    elif kind == "lc_threads":
        # scalepipe's embedded default (ClusterConfig(): in-process workers get
        # no memory limit); no host: an in-process cluster talks over inproc://,
        # which host="127.0.0.1" breaks
        cluster = LocalCluster(
            n_workers=CORES, threads_per_worker=1, processes=False, memory_limit=0, dashboard_address=None
        )
    else:
        raise ValueError(kind)
    with cluster, Client(cluster) as client:
        yield client


SCHEDULER_LABEL = {
    "threads": "threaded scheduler",
    "lc_procs": f"LocalCluster {CORES} procs x 1 thread",
    "lc_threads": f"LocalCluster(processes=False) {CORES} x 1 thread (the embedded default)",
}


class Ctx:
    """What a case needs: the data folder, its metadata, the repeat count."""

    def __init__(self, folder: Path, meta: dict[str, Any], repeat: int) -> None:
        self.folder = folder
        self.meta = meta
        self.repeat = repeat
        self.names: list[str] = meta["names"]
        self.parquet = str(folder / "parquet")
        self._scratch = 0

    def load_x(self) -> np.ndarray:
        return np.load(self.folder / "x.npy")

    def scratch(self) -> str:
        self._scratch += 1
        return str(self.folder / f"out-{os.getpid()}-{self._scratch}")

    def hard_var(self, names: list[Any], var: Any) -> dict[str, float]:
        var = np.asarray(var, dtype=np.float64)
        return {h: float(var[names.index(h)]) for h in HARD if h in names}

    def scalers(self) -> list[Any]:
        """One rule of each kind over all columns: every statistic is needed."""
        import scalepipe as sp

        n = self.names
        q = max(1, len(n) // 4)
        rules = [sp.ZScore(n[: 2 * q]), sp.MinMax(n[2 * q : 3 * q], feature_range=(-1, 1))]
        if n[3 * q :]:
            rules.append(sp.Decimal(n[3 * q :]))
        return rules


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _files(ctx: Ctx) -> list[str]:
    return sorted(str(p) for p in Path(ctx.parquet).glob("*.parquet"))


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {}


def case(
    name: str,
    group: str,
    label: str,
    floor: str | None = None,
    floor2: str | None = None,
    optional: str | None = None,
    dataset: str = "full",
    env: dict[str, str] | None = None,
):
    """Register a case: its table row, its floors, an optional module it needs, its dataset, extra env."""

    def register(fn: Callable[[Ctx], dict[str, Any]]) -> Callable[[Ctx], dict[str, Any]]:
        CASES[name] = {
            "fn": fn, "group": group, "label": label, "floor": floor, "floor2": floor2,
            "optional": optional, "dataset": dataset, "env": env or {},
        }
        return fn

    return register


def _colsum_kernel() -> Callable[..., Any]:
    import numba

    @numba.njit(parallel=True, nogil=True, cache=False)
    def colsum(x: np.ndarray, blocks: int) -> np.ndarray:
        n, f = x.shape
        out = np.zeros((blocks, f))
        step = (n + blocks - 1) // blocks
        for b in numba.prange(blocks):
            acc = np.zeros(f)
            for i in range(b * step, min(n, (b + 1) * step)):
                for j in range(f):
                    acc[j] += x[i, j]
            out[b] = acc
        return out.sum(axis=0)

    return colsum


def _fused_kernel() -> Callable[..., Any]:
    import numba

    @numba.njit(parallel=True, nogil=True, cache=False)
    def fused(x: np.ndarray, blocks: int) -> tuple[np.ndarray, ...]:
        n, f = x.shape
        cnt = np.zeros((blocks, f))
        s = np.zeros((blocks, f))
        q = np.zeros((blocks, f))
        lo = np.full((blocks, f), np.inf)
        hi = np.full((blocks, f), -np.inf)
        pivot = x[0].copy()
        step = (n + blocks - 1) // blocks
        for b in numba.prange(blocks):
            for i in range(b * step, min(n, (b + 1) * step)):
                for j in range(f):
                    v = x[i, j]
                    if v == v:
                        d = v - pivot[j]
                        cnt[b, j] += 1.0
                        s[b, j] += d
                        q[b, j] += d * d
                        lo[b, j] = min(lo[b, j], v)
                        hi[b, j] = max(hi[b, j], v)
        return cnt, s, q, lo, hi, pivot

    def run(x: np.ndarray, blocks: int) -> tuple[np.ndarray, ...]:
        cnt, s, q, lo, hi, pivot = fused(x, blocks)
        c, ss = cnt.sum(axis=0), s.sum(axis=0)
        var = (q.sum(axis=0) - ss * ss / c) / c
        return c, lo.min(axis=0), hi.max(axis=0), pivot + ss / c, var

    return run


@case("numpy_sum", "fit in memory", "numpy x.sum(axis=0), one pass [floor]")
def _numpy_sum(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    m = measure(lambda: x.sum(axis=0), ctx.repeat)
    return {"m": m}


def _colsum(ctx: Ctx, threads: int) -> dict[str, Any]:
    import numba

    numba.set_num_threads(threads)
    x = ctx.load_x()
    kernel = _colsum_kernel()
    m = measure(lambda: kernel(x, threads), ctx.repeat)
    return {"m": m}


@case("colsum_read_1t", "fit in memory", "plain column-sum read, numba, 1 thread [floor]", optional="numba")
def _colsum_1(ctx: Ctx) -> dict[str, Any]:
    return _colsum(ctx, 1)


@case("colsum_read_all", "fit in memory", f"plain column-sum read, numba, {CORES} threads [floor]", optional="numba")
def _colsum_all(ctx: Ctx) -> dict[str, Any]:
    return _colsum(ctx, CORES)


@case("sp_fit_mem", "fit in memory", "scalepipe sp.fit(numpy)", floor="numpy_sum", floor2="colsum_read_all")
def _sp_fit_mem(ctx: Ctx) -> dict[str, Any]:
    import scalepipe as sp

    x = ctx.load_x()
    rules = ctx.scalers()
    m = measure(lambda: sp.fit(x, scalers=rules, feature_names=ctx.names), ctx.repeat)
    return {"m": m, "var": ctx.hard_var(m.result.feature_names, m.result.moments.var(0))}


def _supports_exact() -> bool:
    import inspect

    import scalepipe as sp

    return "exact" in inspect.signature(sp.fit).parameters


@case("sp_fit_mem_exact", "fit in memory", "scalepipe sp.fit(numpy, exact=True)", floor="numpy_sum", floor2="colsum_read_all")
def _sp_fit_mem_exact(ctx: Ctx) -> dict[str, Any]:
    import scalepipe as sp

    if not _supports_exact():
        raise SystemExit("this scalepipe has no sp.fit(exact=...)")
    x = ctx.load_x()
    rules = ctx.scalers()
    m = measure(lambda: sp.fit(x, scalers=rules, feature_names=ctx.names, exact=True), ctx.repeat)
    return {"m": m, "var": ctx.hard_var(m.result.feature_names, m.result.moments.var(0))}


@case("sp_fit_mem_numpy", "fit in memory", "scalepipe sp.fit(numpy), numpy kernels (SCALEPIPE_NO_NUMBA=1)", floor="numpy_sum", floor2="colsum_read_all", env={"SCALEPIPE_NO_NUMBA": "1"})
def _sp_fit_mem_numpy(ctx: Ctx) -> dict[str, Any]:
    return _sp_fit_mem(ctx)


@case("numba_fused_mem", "fit in memory", f"hand-fused numba min/max/sum/sumsq sweep, {CORES} threads (reference)", floor="numpy_sum", floor2="colsum_read_all", optional="numba")
def _numba_fused(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    kernel = _fused_kernel()
    m = measure(lambda: kernel(x, CORES), ctx.repeat)
    return {"m": m, "var": ctx.hard_var(ctx.names, m.result[4])}


@case("sklearn_3_mem", "fit in memory", "scikit-learn Standard+MinMax+MaxAbs fit", floor="numpy_sum", floor2="colsum_read_all", optional="sklearn")
def _sklearn(ctx: Ctx) -> dict[str, Any]:
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    x = ctx.load_x()

    def run() -> Any:
        std = StandardScaler().fit(x)
        MinMaxScaler().fit(x)
        MaxAbsScaler().fit(x)
        return std

    m = measure(run, ctx.repeat, warmup=False)
    return {"m": m, "var": ctx.hard_var(ctx.names, m.result.var_)}


@case("dask_array_mem", "fit in memory", "dask.array nanmin/nanmax/nanmean/nanvar, threads", floor="numpy_sum", floor2="colsum_read_all")
def _dask_array(ctx: Ctx) -> dict[str, Any]:
    import dask
    import dask.array as da

    x = ctx.load_x()
    xd = da.from_array(x, chunks=(ctx.meta["rows_per_file"], x.shape[1]))

    def run() -> Any:
        return dask.compute(da.nanmin(xd, 0), da.nanmax(xd, 0), da.nanmean(xd, 0), da.nanvar(xd, 0))

    with scheduler("threads"):
        m = measure(run, ctx.repeat)
    return {"m": m, "var": ctx.hard_var(ctx.names, m.result[3])}


@case("dask_ml_3_mem", "fit in memory", "dask-ml Standard+MinMax+MaxAbs fit (dask array), threads", floor="numpy_sum", floor2="colsum_read_all", optional="dask_ml")
def _dask_ml_mem(ctx: Ctx) -> dict[str, Any]:
    import dask.array as da
    from dask_ml.preprocessing import MinMaxScaler, StandardScaler

    x = ctx.load_x()
    xd = da.from_array(x, chunks=(ctx.meta["rows_per_file"], x.shape[1]))

    def run() -> Any:
        std = StandardScaler().fit(xd)
        MinMaxScaler().fit(xd)
        # dask-ml has no MaxAbsScaler: its statistic is one more reduction
        np.asarray(abs(xd).max(axis=0).compute())
        return std

    with scheduler("threads"):
        m = measure(run, ctx.repeat)
    return {"m": m, "var": ctx.hard_var(ctx.names, m.result.var_)}


# ---- from Parquet


@case("pyarrow_read", "fit from Parquet", f"pyarrow read_table of the files, {CORES} threads [floor]")
def _pyarrow_read(ctx: Ctx) -> dict[str, Any]:
    import pyarrow.parquet as pq

    files = _files(ctx)
    m = measure(lambda: pq.read_table(files, use_threads=True).num_rows, ctx.repeat)
    return {"m": m}


def _sp_fit_parquet(ctx: Ctx, kind: str, path: str | None = None) -> dict[str, Any]:
    import scalepipe as sp
    from scalepipe import io

    rules = ctx.scalers()
    path = path or ctx.parquet
    with scheduler(kind):
        m = measure(lambda: sp.fit(io.read_table(path, "parquet").frame, scalers=rules), ctx.repeat)
    return {"m": m, "var": ctx.hard_var(m.result.feature_names, m.result.moments.var(0))}


for _kind in ("threads", "lc_procs", "lc_threads"):
    case(f"sp_fit_parquet_{_kind}", "fit from Parquet", f"scalepipe sp.fit(read_table().frame), {SCHEDULER_LABEL[_kind]}", floor="pyarrow_read")(
        lambda ctx, _k=_kind: _sp_fit_parquet(ctx, _k)
    )

def _sp_fit_parquet_exact(ctx: Ctx) -> dict[str, Any]:
    import scalepipe as sp
    from scalepipe import io

    if not _supports_exact():
        raise SystemExit("this scalepipe has no sp.fit(exact=...)")
    rules = ctx.scalers()
    with scheduler("threads"):
        m = measure(lambda: sp.fit(io.read_table(ctx.parquet, "parquet").frame, scalers=rules, exact=True), ctx.repeat)
    return {"m": m, "var": ctx.hard_var(m.result.feature_names, m.result.moments.var(0))}


case("sp_fit_parquet_exact_threads", "fit from Parquet", "scalepipe sp.fit(read_table().frame, exact=True), threaded scheduler", floor="pyarrow_read")(_sp_fit_parquet_exact)

for _kind in ("threads", "lc_procs"):
    case(f"sp_fit_parquet_quarter_{_kind}", "fit from Parquet", f"the same on the first quarter of the files, {SCHEDULER_LABEL[_kind]} (memory growth)", floor="pyarrow_read", dataset="quarter")(
        lambda ctx, _k=_kind: _sp_fit_parquet(ctx, _k, str(ctx.folder / "parquet_quarter"))
    )


@case("dask_dataframe_parquet", "fit from Parquet", "dask.dataframe read_parquet min/max/mean/var, threads", floor="pyarrow_read")
def _dask_df(ctx: Ctx) -> dict[str, Any]:
    import dask
    import dask.dataframe as dd

    def run() -> Any:
        df = dd.read_parquet(ctx.parquet)
        return dask.compute(df.min(), df.max(), df.mean(), df.var(ddof=0))

    with scheduler("threads"):
        m = measure(run, ctx.repeat)
    var = m.result[3]
    return {"m": m, "var": ctx.hard_var(list(var.index), var.to_numpy())}


@case("dask_ml_3_parquet", "fit from Parquet", "dask-ml Standard+MinMax fit + absmax (dask.dataframe), threads", floor="pyarrow_read", optional="dask_ml")
def _dask_ml_parquet(ctx: Ctx) -> dict[str, Any]:
    import dask.dataframe as dd
    from dask_ml.preprocessing import MinMaxScaler, StandardScaler

    def run() -> Any:
        df = dd.read_parquet(ctx.parquet)
        std = StandardScaler().fit(df)
        MinMaxScaler().fit(df)
        df.abs().max().compute()
        return std

    with scheduler("threads"):
        m = measure(run, ctx.repeat)
    return {"m": m, "var": ctx.hard_var(ctx.names, np.asarray(m.result.var_))}


@case("polars_parquet", "fit from Parquet", "polars scan_parquet min/max/mean/var/absmax", floor="pyarrow_read", optional="polars")
def _polars_fit(ctx: Ctx) -> dict[str, Any]:
    import polars as pl

    glob = os.path.join(ctx.parquet, "*.parquet")

    def run() -> Any:
        exprs = []
        for c in ctx.names:
            col = pl.col(c)
            exprs += [col.min().alias(f"{c}|min"), col.max().alias(f"{c}|max"), col.abs().max().alias(f"{c}|absmax"),
                      col.mean().alias(f"{c}|mean"), col.var(ddof=0).alias(f"{c}|var"), col.count().alias(f"{c}|n")]
        return pl.scan_parquet(glob).select(exprs).collect()

    m = measure(run, ctx.repeat)
    row = m.result.row(0, named=True)
    return {"m": m, "var": ctx.hard_var(ctx.names, [row[f"{c}|var"] for c in ctx.names])}


# ---- transform in memory


@case("np_copyto", "transform in memory", "np.copyto into a pre-faulted buffer [floor]")
def _copyto(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    out = np.ones_like(x)
    m = measure(lambda: np.copyto(out, x), ctx.repeat)
    return {"m": m}


@case("np_copy", "transform in memory", "np.copy (allocate + copy)", floor="np_copyto")
def _copy(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    m = measure(lambda: (x.copy(), None)[1], ctx.repeat)
    return {"m": m}


def _fitted(ctx: Ctx, x: np.ndarray) -> Any:
    import scalepipe as sp

    return sp.fit(x, scalers=ctx.scalers(), feature_names=ctx.names)


@case("sp_transform_mem", "transform in memory", "scalepipe model.transform(numpy)", floor="np_copyto", floor2="np_copy")
def _sp_transform_mem(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    model = _fitted(ctx, x)
    m = measure(lambda: (model.transform(x, feature_names=ctx.names), None)[1], ctx.repeat)
    return {"m": m}


@case("sp_transform_mem_out", "transform in memory", "scalepipe model.transform(numpy, out=buffer)", floor="np_copyto", floor2="np_copy")
def _sp_transform_mem_out(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    model = _fitted(ctx, x)
    out = np.ones_like(x)
    m = measure(lambda: (model.transform(x, feature_names=ctx.names, out=out), None)[1], ctx.repeat)
    return {"m": m}


@case("numpy_outofplace_mem", "transform in memory", "numpy (x - mean) / std, out of place", floor="np_copyto", floor2="np_copy")
def _numpy_oop(ctx: Ctx) -> dict[str, Any]:
    x = ctx.load_x()
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    m = measure(lambda: ((x - mean) / std, None)[1], ctx.repeat)
    return {"m": m}


@case("sklearn_transform_mem", "transform in memory", "scikit-learn StandardScaler.transform", floor="np_copyto", floor2="np_copy", optional="sklearn")
def _sklearn_transform(ctx: Ctx) -> dict[str, Any]:
    from sklearn.preprocessing import StandardScaler

    x = ctx.load_x()
    scaler = StandardScaler().fit(x)
    m = measure(lambda: (scaler.transform(x), None)[1], ctx.repeat)
    return {"m": m}


@case("dask_ml_transform_mem", "transform in memory", "dask-ml StandardScaler.transform(dask array).compute(), threads", floor="np_copyto", floor2="np_copy", optional="dask_ml")
def _dask_ml_transform(ctx: Ctx) -> dict[str, Any]:
    import dask.array as da
    from dask_ml.preprocessing import StandardScaler

    x = ctx.load_x()
    xd = da.from_array(x, chunks=(ctx.meta["rows_per_file"], x.shape[1]))
    with scheduler("threads"):
        scaler = StandardScaler().fit(xd)
        m = measure(lambda: (scaler.transform(xd).compute(), None)[1], ctx.repeat)
    return {"m": m}


# ---- transform Parquet -> Parquet


def _pyarrow_copy(ctx: Ctx, durable: bool, codec: str = "snappy") -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    files = _files(ctx)
    state = {"out": ""}

    def one(args: tuple[str, str]) -> None:
        src, dst = args
        pq.write_table(pq.read_table(src, use_threads=False), dst, compression=codec, use_dictionary=False)
        if durable:
            h = hashlib.sha256()
            with open(dst, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
                os.fsync(fh.fileno())

    def run() -> None:
        out = state["out"] = ctx.scratch()
        os.mkdir(out)
        with ThreadPoolExecutor(CORES) as pool:
            list(pool.map(one, [(f, os.path.join(out, os.path.basename(f))) for f in files]))

    m = measure(run, ctx.repeat, reset=lambda: _rmtree(state["out"]))
    return {"m": m}


@case("pyarrow_copy", "transform Parquet->Parquet", f"pyarrow read+write copy, {CORES} threads, no dictionary [floor]")
def _pa_copy(ctx: Ctx) -> dict[str, Any]:
    return _pyarrow_copy(ctx, durable=False)


@case("pyarrow_copy_durable", "transform Parquet->Parquet", "the same + sha256 + fsync per file (what write_table's commit adds)", floor="pyarrow_copy")
def _pa_copy_durable(ctx: Ctx) -> dict[str, Any]:
    return _pyarrow_copy(ctx, durable=True)


def _sp_transform_parquet(ctx: Ctx, kind: str, codec: str = "snappy", durable: bool = True) -> dict[str, Any]:
    import scalepipe as sp
    from scalepipe import io

    rules = ctx.scalers()
    state = {"out": ""}

    def run() -> None:
        state["out"] = ctx.scratch()
        frame = io.read_table(ctx.parquet, "parquet").frame
        io.write_table(model.transform(frame), state["out"], "parquet", compression=codec, durable=durable)

    with scheduler(kind):
        model = sp.fit(io.read_table(ctx.parquet, "parquet").frame, scalers=rules)
        m = measure(run, ctx.repeat, reset=lambda: _rmtree(state["out"]))
    return {"m": m}


for _kind in ("threads", "lc_procs", "lc_threads"):
    case(f"sp_transform_parquet_{_kind}", "transform Parquet->Parquet", f"scalepipe write_table(model.transform(frame)), {SCHEDULER_LABEL[_kind]}", floor="pyarrow_copy", floor2="pyarrow_copy_durable")(
        lambda ctx, _k=_kind: _sp_transform_parquet(ctx, _k)
    )


@case(
    "sp_transform_parquet_nondurable_threads", "transform Parquet->Parquet",
    "scalepipe write_table(..., durable=False) (output.durable: false), threaded scheduler",
    floor="pyarrow_copy", floor2="pyarrow_copy_durable",
)
def _sp_transform_parquet_nondurable(ctx: Ctx) -> dict[str, Any]:
    return _sp_transform_parquet(ctx, "threads", durable=False)


UNCOMPRESSED = "transform Parquet->Parquet, output.compression: none"


@case("pyarrow_copy_none", UNCOMPRESSED, f"pyarrow read+write copy, {CORES} threads, no dictionary, no compression [floor]")
def _pa_copy_none(ctx: Ctx) -> dict[str, Any]:
    return _pyarrow_copy(ctx, durable=False, codec="none")


@case("pyarrow_copy_durable_none", UNCOMPRESSED, "the same + sha256 + fsync per file", floor="pyarrow_copy_none")
def _pa_copy_durable_none(ctx: Ctx) -> dict[str, Any]:
    return _pyarrow_copy(ctx, durable=True, codec="none")


@case(
    "sp_transform_parquet_none_threads", UNCOMPRESSED,
    "scalepipe write_table(model.transform(frame), compression='none'), threaded scheduler",
    floor="pyarrow_copy_none", floor2="pyarrow_copy_durable_none",
)
def _sp_transform_parquet_none(ctx: Ctx) -> dict[str, Any]:
    return _sp_transform_parquet(ctx, "threads", codec="none")


@case("polars_zscore_sink", "transform Parquet->Parquet", "polars z-score sink_parquet, one file per input file", floor="pyarrow_copy", floor2="pyarrow_copy_durable", optional="polars")
def _polars_sink(ctx: Ctx) -> dict[str, Any]:
    import polars as pl

    glob = os.path.join(ctx.parquet, "*.parquet")
    stats = pl.scan_parquet(glob).select(
        [pl.col(c).mean().alias(f"{c}|m") for c in ctx.names] + [pl.col(c).std(ddof=0).alias(f"{c}|s") for c in ctx.names]
    ).collect().row(0, named=True)
    kinds = dict(zip(ctx.names, ctx.meta["dtypes"]))
    state = {"out": ""}

    def run() -> None:
        out = state["out"] = ctx.scratch()
        exprs = []
        for c in ctx.names:
            e = (pl.col(c) - stats[f"{c}|m"]) / stats[f"{c}|s"]
            exprs.append(e.cast(pl.Float32 if kinds[c] == "float32" else pl.Float64).alias(c))
        pl.scan_parquet(glob).select(exprs).sink_parquet(
            pl.PartitionBy(out, max_rows_per_file=ctx.meta["rows_per_file"], approximate_bytes_per_file=None),
            compression="snappy", mkdir=True,
        )

    m = measure(run, ctx.repeat, reset=lambda: _rmtree(state["out"]))
    return {"m": m}


@case("dask_dataframe_transform", "transform Parquet->Parquet", "dask.dataframe (df - mean) / std to_parquet, threads", floor="pyarrow_copy", floor2="pyarrow_copy_durable")
def _dask_df_transform(ctx: Ctx) -> dict[str, Any]:
    import dask
    import dask.dataframe as dd

    state = {"out": ""}
    with scheduler("threads"):
        df = dd.read_parquet(ctx.parquet)
        mean, std = dask.compute(df.mean(), df.std(ddof=0))

        def scale(part: Any) -> Any:
            return (part - mean) / std

        def run() -> None:
            state["out"] = ctx.scratch()
            # aligning a dask frame with a pandas Series fails in dask-expr: scale per partition
            frame = dd.read_parquet(ctx.parquet)
            frame.map_partitions(scale, meta=scale(frame._meta)).to_parquet(
                state["out"], write_index=False, compression="snappy"
            )

        m = measure(run, ctx.repeat, reset=lambda: _rmtree(state["out"]))
    return {"m": m}


# ---- the whole job, as a user runs it


CLI_JOB = """version: 1
input: {{format: parquet, path: {data}}}
stats: {{scope: global, path: {folder}/stats.json}}
scalers: [{{columns: null, method: zscore}}]
output: {{format: parquet, path: {folder}/out}}
report: {report}
"""


def _sp_cli_run(ctx: Ctx, report: bool) -> dict[str, Any]:
    state = {"out": ""}

    def run() -> None:
        folder = state["out"] = ctx.scratch()
        os.mkdir(folder)
        config = os.path.join(folder, "job.yaml")
        with open(config, "w") as fh:
            fh.write(CLI_JOB.format(data=ctx.parquet, folder=folder, report=str(report).lower()))
        subprocess.run([sys.executable, "-m", "scalepipe", "run", config, "-q"], check=True)

    m = measure(run, ctx.repeat, reset=lambda: _rmtree(state["out"]))
    return {"m": m}


@case("sp_cli_run", "job (CLI)", "scalepipe run: fit + transform + write + report (histograms, plots), the embedded default cluster, process start included", floor="pyarrow_copy", floor2="pyarrow_copy_durable")
def _cli_run(ctx: Ctx) -> dict[str, Any]:
    return _sp_cli_run(ctx, report=True)


@case("sp_cli_run_noreport", "job (CLI)", "the same with report: false", floor="pyarrow_copy", floor2="pyarrow_copy_durable")
def _cli_run_noreport(ctx: Ctx) -> dict[str, Any]:
    return _sp_cli_run(ctx, report=False)


# --------------------------------------------------------------------------
# Start-up time (measured from the driver, one subprocess per sample)
# --------------------------------------------------------------------------


def startup_times(repeat: int) -> list[dict[str, Any]]:
    exe = Path(sys.executable)
    cli = exe.parent / "scalepipe"
    help_cmd = [str(cli), "--help"] if cli.exists() else [sys.executable, "-m", "scalepipe", "--help"]
    commands = [
        ("python_pass", "python -c pass [floor]", [sys.executable, "-c", "pass"], None),
        ("scalepipe_help", "scalepipe --help", help_cmd, "python_pass"),
        ("import_scalepipe", "python -c 'import scalepipe'", [sys.executable, "-c", "import scalepipe"], "python_pass"),
        ("import_dask_distributed", "python -c 'import dask.dataframe, distributed' (peer)", [sys.executable, "-c", "import dask.dataframe, distributed"], "python_pass"),
    ]
    out = []
    for name, label, cmd, floor in commands:
        subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache and .pyc files
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
        out.append({"case": name, "group": "start-up", "label": label, "floor": floor, "floor2": None,
                    "times": times, "median_s": statistics.median(times), "min_s": min(times), "peak_mb": None,
                    "steady_peak_mb": None, "baseline_mb": None, "var": None})
    return out


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def worker_main(name: str, folder: Path, repeat: int) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    spec = CASES[name]
    got = spec["fn"](Ctx(folder, meta, repeat))
    m: Measured = got["m"]
    record = {
        "times": m.times,
        "first_s": m.first_s,
        "peak_mb": m.peak_mb,
        "steady_peak_mb": m.steady_peak_mb,
        "baseline_mb": m.baseline_mb,
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "var": got.get("var"),
    }
    print(RESULT_TAG + json.dumps(record), flush=True)


def _available(module: str | None) -> bool:
    if module is None:
        return True
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_case(name: str, folder: Path, repeat: int, timeout: float) -> dict[str, Any]:
    spec = CASES[name]
    base = {key: spec[key] for key in ("group", "label", "floor", "floor2", "dataset")}
    base["case"] = name
    if not _available(spec["optional"]):
        return {**base, "skipped": f"{spec['optional']} is not installed"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--data-dir", str(folder), "--repeat", str(repeat)]
    env = {**os.environ, **spec["env"]}
    base["load_before"] = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**base, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    rec = json.loads(lines[-1][len(RESULT_TAG) :])
    return {**base, **rec, "median_s": statistics.median(rec["times"]), "min_s": min(rec["times"]),
            "wall_s": wall, "load_after": os.getloadavg()[0]}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One record from a case's rounds: all timed samples pooled, the worst peak memory."""
    bad = [r for r in runs if "error" in r or "skipped" in r]
    if bad:
        return bad[0]
    out = dict(runs[-1])
    out["times"] = [t for r in runs for t in r["times"]]
    out["median_s"] = statistics.median(out["times"])
    out["min_s"] = min(out["times"])
    out["round_medians_s"] = [r["median_s"] for r in runs]
    out["first_s"] = [r["first_s"] for r in runs]
    out["peak_mb"] = max(r["peak_mb"] for r in runs)
    out["steady_peak_mb"] = max(r["steady_peak_mb"] for r in runs)
    out["load_before"] = [r["load_before"] for r in runs]
    out["load_after"] = [r["load_after"] for r in runs]
    out["wall_s"] = sum(r["wall_s"] for r in runs)
    return out


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    versions = {"python": platform.python_version()}
    for mod in ("numpy", "pandas", "pyarrow", "dask", "distributed", "numba", "sklearn", "polars", "dask_ml", "scalepipe"):
        with contextlib.suppress(Exception):
            versions[mod] = __import__(mod).__version__
    commit = dirty = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "scalepipe"], capture_output=True, text=True).stdout
        dirty = [line[3:] for line in status.splitlines()]
    return {
        "cpu": model,
        "cores": CORES,
        "cpu_count": os.cpu_count(),
        "memory_bytes": mem,
        "platform": platform.platform(),
        "versions": versions,
        "scalepipe_commit": commit,
        "scalepipe_uncommitted": dirty,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS") if k in os.environ},
    }


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def add_ratios(results: list[dict[str, Any]], refs: dict[str, dict[str, float]]) -> None:
    by = {r["case"]: r for r in results}
    for r in results:
        for key in ("floor", "floor2"):
            f = by.get(r.get(key) or "")
            if f and f.get("median_s") and r.get("median_s"):
                r[f"ratio_{key}"] = r["median_s"] / f["median_s"]
        if r.get("var"):
            ref = refs[r.get("dataset", "full")]
            r["var_rel_err"] = {
                k: (abs(v - ref[k]) / ref[k] if v is not None and math.isfinite(v) else float("inf"))
                for k, v in r["var"].items()
                if k in ref
            }
            r["var_rel_err_max"] = max(r["var_rel_err"].values())


def table(results: list[dict[str, Any]]) -> str:
    head = ("| work | what | median s | min s | vs floor | vs floor 2 | var rel err (max of hard cols) "
            "| peak MB above baseline | steady peak MB |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['group']} | {r['label']} | {r.get('skipped') or r.get('error')} | | | | | | |")
            continue
        r1 = f"{r['ratio_floor']:.2f}x" if "ratio_floor" in r else "-"
        r2 = f"{r['ratio_floor2']:.2f}x" if "ratio_floor2" in r else "-"
        err = r.get("var_rel_err_max")
        e = "-" if err is None else ("inf/nan" if not math.isfinite(err) else f"{err:.1e}")
        mem = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        steady = "-" if r.get("steady_peak_mb") is None else f"{r['steady_peak_mb']:.0f}"
        lines.append(
            f"| {r['group']} | {r['label']} | {_fmt_time(r['median_s'])} | {_fmt_time(r.get('min_s'))} "
            f"| {r1} | {r2} | {e} | {mem} | {steady} |"
        )
    return "\n".join(lines)


def floor_legend(results: list[dict[str, Any]]) -> str:
    """One line per group naming the floors its ratios divide by."""
    label = {r["case"]: r["label"] for r in results}
    chosen: dict[str, tuple[str | None, str | None]] = {}
    for r in results:
        pair = (r.get("floor"), r.get("floor2"))
        if pair[0] and (r["group"] not in chosen or (pair[1] and not chosen[r["group"]][1])):
            chosen[r["group"]] = pair
    lines = []
    for group, (f1, f2) in chosen.items():
        line = f"- {group}: floor = {label.get(f1, f1)}"
        if f2:
            line += f"; floor 2 = {label.get(f2, f2)}"
        lines.append(line)
    return "\n".join(lines)


ORDER = [
    "numpy_sum", "colsum_read_1t", "colsum_read_all", "sp_fit_mem", "sp_fit_mem_exact", "sp_fit_mem_numpy", "numba_fused_mem",
    "sklearn_3_mem", "dask_array_mem", "dask_ml_3_mem",
    "pyarrow_read", "sp_fit_parquet_threads", "sp_fit_parquet_lc_procs", "sp_fit_parquet_lc_threads", "sp_fit_parquet_exact_threads",
    "sp_fit_parquet_quarter_threads", "sp_fit_parquet_quarter_lc_procs",
    "dask_dataframe_parquet", "dask_ml_3_parquet", "polars_parquet",
    "np_copyto", "np_copy", "sp_transform_mem", "sp_transform_mem_out", "numpy_outofplace_mem", "sklearn_transform_mem", "dask_ml_transform_mem",
    "pyarrow_copy", "pyarrow_copy_durable", "sp_transform_parquet_threads", "sp_transform_parquet_lc_procs",
    "sp_transform_parquet_lc_threads", "sp_transform_parquet_nondurable_threads", "polars_zscore_sink", "dask_dataframe_transform",
    "pyarrow_copy_none", "pyarrow_copy_durable_none", "sp_transform_parquet_none_threads",
    "sp_cli_run", "sp_cli_run_noreport",
]
assert set(ORDER) == set(CASES), set(ORDER) ^ set(CASES)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    p.add_argument("--cols", type=int, default=16)
    p.add_argument("--files", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per case (after one untimed warm-up); median reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole case list this many times, interleaved, and pool the samples "
                        "(a busy machine then slows every case alike)")
    p.add_argument("--quick", action="store_true", help="1M rows (overrides --rows)")
    p.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--data-dir", help="reuse/keep the generated data here (default: a temporary folder, removed)")
    p.add_argument("--cases", help="comma-separated subset of: " + ", ".join(ORDER))
    p.add_argument("--skip", help="comma-separated cases to leave out")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per case")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker_main(args.worker, Path(args.data_dir), args.repeat)
        return 0

    rows = 1_000_000 if args.quick else args.rows
    names = ORDER if not args.cases else [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES and c != "startup"]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {ORDER}")
    skip = {c.strip() for c in (args.skip or "").split(",") if c.strip()}
    names = [c for c in names if c not in skip]

    tmp = None
    if args.data_dir:
        folder = Path(args.data_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="scalepipe-bench-")
        folder = Path(tmp)
    try:
        wanted = {"rows": rows, "cols": args.cols, "files": args.files}
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if meta is None or any(meta.get(k) != v for k, v in wanted.items()):
            if folder.exists() and args.data_dir:
                for child in ("x.npy", "parquet", "parquet_quarter", "meta.json", "reference.json"):
                    target = folder / child
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            t0 = time.perf_counter()
            meta = generate(folder, rows, args.cols, args.files)
            meta_path.write_text(json.dumps(meta))
            print(f"generated {rows:,} x {args.cols} ({rows * args.cols * 8 / 1e9:.2f} GB in memory, "
                  f"{meta['parquet_bytes'] / 1e9:.2f} GB Parquet in {args.files} files) in {time.perf_counter() - t0:.1f} s", flush=True)
        ref_path = folder / "reference.json"
        if ref_path.exists():
            ref = json.loads(ref_path.read_text())
        else:
            t0 = time.perf_counter()
            ref = reference(folder, meta)
            ref_path.write_text(json.dumps(ref))
            print(f"exact reference variances in {time.perf_counter() - t0:.1f} s: {ref}", flush=True)
        warm_page_cache(folder)

        started = time.time()
        host = machine()
        cases = [n for n in names if n != "startup"]
        rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in cases}
        for k in range(args.rounds):
            for name in cases:
                r = run_case(name, folder, args.repeat, args.timeout)
                rounds[name].append(r)
                shown = r.get("skipped") or r.get("error") or (
                    f"median {r['median_s']:.3f} s  times {[round(t, 3) for t in r['times']]}  "
                    f"first {r['first_s'] or 0:.2f} s  peak +{r['peak_mb']:.0f} MB (steady +{r['steady_peak_mb']:.0f})  "
                    f"load {r['load_before']:.1f}"
                )
                tag = f"[{k + 1}/{args.rounds}] " if args.rounds > 1 else ""
                print(f"{tag}{name:34s} {shown}", flush=True)
        results = [combine(rounds[n]) for n in cases]
        if not args.cases or "startup" in names:
            for r in startup_times(max(5, args.repeat)):
                results.append(r)
                print(f"{r['case']:34s} median {r['median_s']:.3f} s", flush=True)
        add_ratios(results, ref)
        text = table(results)
        print()
        print(text)
        print()
        print(floor_legend(results))
        record = {
            "date": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": host,
            "data": {**{k: meta[k] for k in ("rows", "cols", "files", "rows_per_file", "quarter_rows", "parquet_bytes", "names", "dtypes")},
                     "in_memory_bytes": meta["rows"] * meta["cols"] * 8, "hard_columns": HARD},
            "repeat": args.repeat,
            "rounds": args.rounds,
            "reference_var": ref,
            "results": results,
            "table_markdown": text,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=float) + "\n")
        print(f"\nwrote {out}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
