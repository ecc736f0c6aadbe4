"""Faults on real processes: killed workers, a poison partition, a lost scheduler, Ctrl-C.

The jobs run through the command line against a scheduler and nanny-managed
workers started as separate processes on 127.0.0.1 (``ProcessCluster``).
The scheduler allows one failure per task (``allowed-failures: 1``) and
queues input tasks so that each worker holds one at a time
(``worker-saturation: 1.0``): a worker that dies takes little else down with
the task it was running, so a poison partition is the task that gets blamed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_cluster import (
    ProcessCluster,
    artifact_content,
    output_frame,
    run_cli,
    snapshot,
    start_cli,
    stop_process_group,
    wait_until,
    write_dataset,
    write_job,
)

import scalepipe as sp
from scalepipe import io
from scalepipe.artifact import decode_floats
from scalepipe.cluster import _quiet, open_cluster
from scalepipe.config import ClusterConfig
from scalepipe.errors import ClusterError

psutil = pytest.importorskip("psutil")

FAULT_ENV = {
    "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0",
}
FILES, ROWS = 24, 1000


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, Any]]:
    """A scheduler and two nanny-managed workers whose processes the tests kill."""
    cluster = ProcessCluster(tmp_path_factory.mktemp("fault-cluster"), env=FAULT_ENV)
    client = None
    try:
        for _ in range(2):
            cluster.add_worker()
        client = cluster.client()
        cluster.wait_for_workers(client, 2)
        yield cluster, client
    finally:
        if client is not None:
            client.close()
        cluster.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-data") / "train"
    write_dataset(folder, files=FILES, rows=ROWS, seed=1)
    return folder


@pytest.fixture(scope="module")
def baseline(faulty, data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The fault-free run on the process cluster: its artifact content and output rows."""
    cluster, _ = faulty
    root = tmp_path_factory.mktemp("baseline")
    job = write_job(root / "job.yaml", data, root / "out", root / "stats.json")
    done = run_cli("run", str(job), "--scheduler", cluster.address, "--quiet", cwd=root)
    assert done.returncode == 0, done.stderr
    return {"root": root, "artifact": artifact_content(root / "stats.json"), "output": output_frame(root / "out")}


def _worker_pids(client: Any) -> dict[str, int]:
    return client.run(os.getpid)


def _kill_a_worker_running(client: Any, job: subprocess.Popen[str], wanted: Callable[[str], bool]) -> str:
    """SIGKILL the process of a worker as soon as it runs a task whose key ``wanted`` accepts.

    Returns the key it was running. Fails if the job ends before such a task runs.
    """
    pids = _worker_pids(client)
    deadline = time.monotonic() + 120
    while job.poll() is None and time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            hits = [str(k) for k in keys if wanted(str(k))]
            if hits and worker in pids:
                os.kill(pids[worker], signal.SIGKILL)
                return hits[0]
        time.sleep(0.01)
    raise AssertionError("the job ended before a matching task ran: the fault was not injected")


def _finish(job: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(job)
        raise AssertionError(f"the job did not finish within {timeout}s") from None
    return job.returncode, err


def _assert_same_result(root: Path, baseline: dict[str, Any]) -> None:
    assert artifact_content(root / "stats.json") == baseline["artifact"]
    out = output_frame(root / "out")
    assert out["id"].tolist() == list(range(FILES * ROWS))  # every row exactly once
    assert out.equals(baseline["output"])


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param(lambda key: "_frame_block_moments" in key or "merge_all" in key, id="fit"),
        pytest.param(lambda key: "_write_partition" in key, id="write"),
    ],
)
def test_a_worker_killed_mid_job_changes_nothing(faulty, data, baseline, tmp_path, wanted):
    cluster, client = faulty
    cluster.wait_for_workers(client, 2)  # the nanny has restarted the worker an earlier test killed
    job = write_job(tmp_path / "job.yaml", data, tmp_path / "out", tmp_path / "stats.json")
    proc = start_cli("run", str(job), "--scheduler", cluster.address, "--quiet", cwd=tmp_path)
    try:
        killed = _kill_a_worker_running(client, proc, wanted)
        code, err = _finish(proc)
    finally:
        stop_process_group(proc)
    assert code == 0, f"killed while running {killed}: {err}"
    _assert_same_result(tmp_path, baseline)


def test_the_statistics_do_not_depend_on_the_number_of_workers(data, baseline):
    """1, 2 and 3 workers, and the process cluster's CLI run: the same statistics to the bit.

    In-process workers (``processes: false``) keep this short; they are
    distributed workers all the same, finishing tasks in whatever order.
    """
    source = io.read_table(str(data), "parquet")
    scalers = [sp.ZScore(["x", "big"]), sp.MinMax(["f32"], feature_range=(-1, 1))]
    results = []
    for workers in (1, 2, 3):
        cfg = ClusterConfig(n_workers=workers, processes=False, dashboard_address=None)
        with open_cluster(cfg) as client:
            assert len(client.scheduler_info()["workers"]) == workers
            results.append(sp.fit(source.frame, scalers=scalers))
    for model in results:
        assert model.moments.identical(results[0].moments)
    first = results[0]
    assert [f.name for f in first.features] == [f["name"] for f in baseline["artifact"]["features"]]
    saved = baseline["artifact"]["statistics"]  # the process cluster's CLI run
    fields = first.moments.to_dict()
    assert set(saved) == set(fields)
    for name, values in fields.items():
        assert np.array_equal(values, np.array(decode_floats(saved[name])), equal_nan=True), name


def test_the_chunk_kernel_does_not_depend_on_memory_layout():
    from scalepipe.stats import chunk_moments

    rng = np.random.default_rng(7)
    base = np.ascontiguousarray(1e9 + rng.standard_normal((5000, 3)))
    layouts = {
        "C": base,
        "F": np.asfortranarray(base),
        "strided": np.repeat(base, 2, axis=0)[::2],
        "wide": np.hstack([base, base])[:, :3],
    }
    buffer = bytearray(base.nbytes + 1)
    unaligned = np.frombuffer(buffer, dtype=np.uint8)[1:].view(np.float64).reshape(base.shape)
    unaligned[...] = base
    assert not unaligned.flags.aligned
    layouts["unaligned"] = unaligned
    reference = chunk_moments(base)
    for name, block in layouts.items():
        assert chunk_moments(block).identical(reference), name


def test_a_lost_scheduler_ends_the_run_quickly_and_a_rerun_matches(faulty, data, baseline, tmp_path):
    lost = ProcessCluster(tmp_path / "doomed", env=FAULT_ENV)
    observer = None
    try:
        lost.add_worker(nanny=False, preload=())  # it imports what the job needs while the job runs
        observer = lost.client()
        lost.wait_for_workers(observer, 1)
        shutil.copytree(baseline["root"] / "out", tmp_path / "out")  # an earlier output the job may replace
        shutil.copy(baseline["root"] / "stats.json", tmp_path / "stats.json")
        before = snapshot(tmp_path / "out", tmp_path / "stats.json")
        job = write_job(tmp_path / "job.yaml", data, tmp_path / "out", tmp_path / "stats.json")
        proc = start_cli("run", str(job), "--scheduler", lost.address, cwd=tmp_path)
        try:
            wait_until(lambda: proc.poll() is not None or any(observer.processing().values()), 120,
                       "the job's first task")
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            lost.scheduler.kill()
            sent = time.monotonic()
            code, err = _finish(proc, timeout=60)
            took = time.monotonic() - sent
        finally:
            stop_process_group(proc)
    finally:
        if observer is not None:
            with _quiet("distributed.client", "distributed.comm", "distributed.core"):
                observer.close(timeout=2)
        lost.close()
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"lost the connection to the scheduler {lost.address}" in errors[0], err
    assert took < 10, f"took {took:.1f}s to notice"
    assert snapshot(tmp_path / "out", tmp_path / "stats.json") == before

    cluster, client = faulty
    cluster.wait_for_workers(client, 2)
    again = run_cli("run", str(job), "--scheduler", cluster.address, "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    _assert_same_result(tmp_path, baseline)


def test_sigint_stops_the_embedded_cluster_and_writes_nothing(data, tmp_path):
    job = write_job(tmp_path / "job.yaml", data, tmp_path / "out", tmp_path / "stats.json", processes=True)
    before = snapshot(tmp_path / "out", tmp_path / "stats.json")
    proc = start_cli("run", str(job), cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("fitting") for line in lines) or proc.poll() is not None, 120,
                   "the job to start fitting")
        assert proc.poll() is None, "".join(lines)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the embedded cluster has no worker processes"
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        took = time.monotonic() - sent
        _, alive = psutil.wait_procs(children, timeout=10)  # checked before the finalizer kills the group
    finally:
        stop_process_group(proc)
    reader.join(timeout=5)
    assert proc.returncode == 130, "".join(lines)
    assert took < 10, f"took {took:.1f}s to stop"
    assert any(line.startswith("error: interrupted") for line in lines), "".join(lines)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    assert snapshot(tmp_path / "out", tmp_path / "stats.json") == before


def test_a_wrapped_killed_worker_is_translated(tmp_path):
    """The output writer turns a failed write into an OutputError caused by the KilledWorker."""
    from distributed import KilledWorker

    from scalepipe.errors import OutputError

    files = ["a.parquet", "b.parquet"]
    with pytest.raises(ClusterError, match=r"^partition 1 \(file 'b.parquet'\) killed 3 workers .*allowed-failures=2"):
        with open_cluster(ClusterConfig(n_workers=1, processes=False, dashboard_address=None), partition_files=files):
            try:
                raise KilledWorker(("read-parquet-0123", 1), None, 2)
            except KilledWorker as err:
                raise OutputError("writing output 'out' failed: KilledWorker") from err


def test_a_poison_partition_ends_the_run_naming_it(faulty):
    """Last on the fault cluster: both of its workers die (and restart) here."""
    import dask.dataframe as dd
    import pandas as pd

    cluster, client = faulty
    cluster.wait_for_workers(client, 2)
    files = [f"input/part.{i:05d}.parquet" for i in range(6)]

    def load(i: int) -> pd.DataFrame:
        if i == 4:
            os._exit(1)  # kills whichever worker reads this partition, every time
        return pd.DataFrame({"a": np.arange(10.0) + i})

    with pytest.raises(ClusterError) as info:
        with open_cluster(ClusterConfig(), scheduler=cluster.address, partition_files=files):
            sp.fit(dd.from_map(load, range(6)), scalers=[sp.ZScore()])
    message = str(info.value)
    assert "partition 4 (file 'input/part.00004.parquet') killed 2 workers" in message, message
    assert "allowed-failures=1" in message and "\n" not in message
