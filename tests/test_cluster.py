"""Connecting to real Dask clusters: separate scheduler and worker processes on 127.0.0.1.

The process helpers here (``ProcessCluster``, ``write_dataset``, ``write_job``,
``start_cli`` ...) are shared with ``test_faults.py``. Every process is started
in its own session and killed with its group in the fixtures' finalizers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

distributed = pytest.importorskip("distributed")

from scalepipe.cluster import open_cluster  # noqa: E402
from scalepipe.config import ClusterConfig, SecurityConfig  # noqa: E402
from scalepipe.errors import ClusterError  # noqa: E402

STARTUP_TIMEOUT = 60.0  # seconds for a scheduler and its workers to come up on a busy 2-core machine
#: Compared between runs: everything in the artifact that the data determines.
ARTIFACT_KEYS = ("features", "passthrough", "scalers", "statistics", "parameters")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process_group(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM ``proc``'s session (it was started with ``start_new_session``), then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the process, or children that outlived it
    proc.wait(timeout=grace)


class ProcessCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, each in its own session.

    Parameters
    ----------
    root
        Folder for the scheduler file and the processes' logs (also their working directory).
    env
        Extra environment for every process (``DASK_*`` settings).
    tls
        ``(ca, cert, key)`` paths: the scheduler listens on ``tls://`` and everyone uses them.
    """

    def __init__(self, root: Path, *, env: dict[str, str] | None = None, tls: tuple[str, str, str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.tls_args = [] if tls is None else ["--tls-ca-file", tls[0], "--tls-cert", tls[1], "--tls-key", tls[2]]
        self.procs: list[subprocess.Popen[Any]] = []
        self.logs: dict[int, Path] = {}
        scheduler_file = root / "scheduler.json"
        protocol = ["--protocol", "tls"] if tls else []
        self.scheduler = self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(scheduler_file), *protocol, *self.tls_args],
        )
        wait_until(lambda: self._address(scheduler_file), STARTUP_TIMEOUT, f"the scheduler (log: {root / 'scheduler.log'})")
        self.address: str = self._address(scheduler_file)  # type: ignore[assignment]

    def _address(self, scheduler_file: Path) -> str | None:
        if self.scheduler.poll() is not None:
            raise AssertionError(f"the scheduler exited: {_tail(self.root / 'scheduler.log')}")
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            return None

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[Any]:
        path = self.root / f"{name}.log"
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dask", *args], cwd=self.root, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = path
        return proc

    def add_worker(self, *, nanny: bool = True, preload: Sequence[str] = ("dask.dataframe",), name: str | None = None) -> subprocess.Popen[Any]:
        """Start a worker with one thread; ``preload`` modules are imported before it joins."""
        name = name or f"worker-{len(self.procs)}"
        args = ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--memory-limit", "1GiB",
                "--no-dashboard", "--name", name, *self.tls_args]
        if not nanny:
            args.append("--no-nanny")
        for module in preload:
            args += ["--preload", module]
        return self._spawn(name, args)

    def client(self, security: Any = None) -> Any:
        """An observer client (not the default one, so it does not steer the code under test)."""
        return distributed.Client(self.address, security=security, timeout="20s", set_as_default=False)

    def wait_for_workers(self, client: Any, n: int) -> None:
        def ready() -> bool:
            for proc in self.procs[1:]:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGTERM):
                    raise AssertionError(f"a worker exited with {proc.returncode}: {_tail(self.logs[proc.pid])}")
            return len(client.scheduler_info()["workers"]) == n

        wait_until(ready, STARTUP_TIMEOUT, f"{n} worker(s) at {self.address}")

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Stop one of the processes (and forget it)."""
        stop_process_group(proc)
        self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process_group(proc)


# --------------------------------------------------------------------------
# Data, jobs and the command line
# --------------------------------------------------------------------------


def write_dataset(folder: Path, files: int, rows: int, seed: int = 0) -> int:
    """``files`` Parquet files with a unique int ``id`` and float columns; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
        x = rng.normal(3.0, 2.0, rows)
        x[rng.random(rows) < 0.02] = np.nan
        table = pa.table(
            {
                "id": ids,
                "x": x,
                "big": 1e9 + rng.standard_normal(rows),
                "f32": rng.lognormal(0.0, 1.0, rows).astype(np.float32),
            }
        )
        pq.write_table(table, folder / f"part.{i:05d}.parquet")
    return files * rows


def write_job(path: Path, data: Path, out: Path, stats: Path, **cluster: Any) -> Path:
    """A ``scalepipe run`` config over ``data`` (absolute paths); ``cluster`` keys go to ``cluster:``."""
    doc = {
        "version": 1,
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB", "dashboard_address": None, **cluster},
        "input": {"format": "parquet", "path": str(data)},
        "stats": {"path": str(stats)},
        "scalers": [
            {"method": "zscore", "columns": ["x", "big"]},
            {"method": "minmax", "columns": ["f32"], "feature_range": [-1, 1]},
        ],
        "output": {"format": "parquet", "path": str(out), "overwrite": True},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "scalepipe", *args]


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m scalepipe ARGS`` in its own session, stderr and stdout captured."""
    return subprocess.Popen(
        cli_command(*args), cwd=cwd, env={**os.environ, **(env or {})}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def run_cli(*args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = start_cli(*args, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"scalepipe {' '.join(args)} did not finish in {timeout}s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def artifact_content(path: Path) -> dict[str, Any]:
    """The parts of a statistics artifact the data determines (no timestamps or hashes of paths)."""
    doc = json.loads(path.read_text())
    return {key: doc[key] for key in ARTIFACT_KEYS}


def output_frame(path: Path) -> Any:
    """The verified output table, rows sorted by ``id``."""
    import pyarrow.parquet as pq

    from scalepipe import io

    manifest = io.verify_output(str(path))
    parts = [pq.read_table(path / f.name).to_pandas() for f in manifest.files]
    import pandas as pd

    return pd.concat(parts, ignore_index=True).sort_values("id", ignore_index=True)


def snapshot(*paths: Path) -> dict[str, bytes]:
    """Every file under ``paths`` (and the folders' listings) as bytes, to prove nothing changed."""
    seen: dict[str, bytes] = {}
    for root in paths:
        if root.is_file():
            seen[str(root)] = root.read_bytes()
        elif root.is_dir():
            for f in sorted(root.rglob("*")):
                seen[str(f)] = f.read_bytes() if f.is_file() else b"<dir>"
        for sibling in sorted(root.parent.iterdir()):
            if sibling.name.startswith(f".{root.name}."):
                seen[str(sibling)] = b"<leftover staging folder>"
    return seen


# --------------------------------------------------------------------------
# A TLS cluster: the remote cluster of this module
# --------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[str, str, str]:
    """A CA and a certificate for 127.0.0.1 signed by it, made with openssl; ``(ca, cert, key)``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=scalepipe test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "node.pem",
         "-days", "2", "-extfile", "san.cnf"],
    ]
    for step in steps:
        subprocess.run([openssl, *step], cwd=folder, check=True, capture_output=True)
    return str(folder / "ca.pem"), str(folder / "node.pem"), str(folder / "node.key")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, Any, ClusterConfig]]:
    """A ``tls://`` scheduler and two nanny-managed workers with self-signed certificates.

    Yields the cluster, an observer client, and the ``cluster`` config section that reaches it.
    """
    from distributed.security import Security

    root = tmp_path_factory.mktemp("tls-cluster")
    ca, cert, key = self_signed(root / "certs")
    cluster = ProcessCluster(root, tls=(ca, cert, key))
    client = None
    try:
        for _ in range(2):
            cluster.add_worker()
        client = cluster.client(Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True))
        cluster.wait_for_workers(client, 2)
        yield cluster, client, ClusterConfig(security=SecurityConfig(ca_file=ca, cert_file=cert, key_file=key))
    finally:
        if client is not None:
            client.close()
        cluster.close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    folder = tmp_path_factory.mktemp("cluster-data") / "train"
    return folder, write_dataset(folder, files=12, rows=500)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_cli_on_a_tls_scheduler_matches_the_embedded_cluster(secure, dataset, tmp_path):
    cluster, _, cfg = secure
    data, rows = dataset
    assert cluster.address.startswith("tls://127.0.0.1:")
    # In-process workers keep this test short; worker processes are the subject of test_faults.py.
    embedded = write_job(tmp_path / "embedded.yaml", data, tmp_path / "out-embedded", tmp_path / "embedded.json",
                         processes=False, dashboard_address="127.0.0.1:0")
    remote = write_job(tmp_path / "remote.yaml", data, tmp_path / "out-remote", tmp_path / "remote.json",
                       security=cfg.security.model_dump())

    first = run_cli("run", str(embedded), cwd=tmp_path)
    second = run_cli("run", str(remote), "--scheduler", cluster.address, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "dashboard: http://127.0.0.1:" in first.stderr  # the embedded dashboard binds to loopback only
    assert "dashboard: " in second.stderr
    assert artifact_content(tmp_path / "remote.json") == artifact_content(tmp_path / "embedded.json")
    a, b = output_frame(tmp_path / "out-remote"), output_frame(tmp_path / "out-embedded")
    assert len(a) == rows and a["id"].tolist() == list(range(rows))
    assert a.equals(b)


def test_tls_without_certificates_is_a_clear_cluster_error(secure):
    cluster, _, _ = secure
    with pytest.raises(ClusterError, match=r"uses TLS and no certificates are configured; set cluster.security"):
        with open_cluster(ClusterConfig(), scheduler=cluster.address):
            pytest.fail("the block must not run")


def test_a_missing_certificate_file_names_its_config_key(secure, tmp_path):
    cluster, _, cfg = secure
    security = cfg.security.model_copy(update={"key_file": str(tmp_path / "nope.key")})
    with pytest.raises(ClusterError, match=r"cluster.security.key_file: .*nope.key"):
        with open_cluster(ClusterConfig(security=security), scheduler=cluster.address):
            pytest.fail("the block must not run")


def test_workers_that_cannot_see_the_input_are_refused_before_work(secure, tmp_path, monkeypatch):
    cluster, client, cfg = secure
    (tmp_path / "only-here").mkdir()
    monkeypatch.chdir(tmp_path)  # the relative path exists for this client, not in the workers' directory
    with pytest.raises(ClusterError) as info:
        with open_cluster(cfg, scheduler=cluster.address, input_path="only-here"):
            pytest.fail("the block must not run")
    message = str(info.value)
    assert "cannot read the input 'only-here': it does not exist" in message and str(cluster.root) in message
    assert any(f"worker {worker} " in message for worker in client.scheduler_info()["workers"]), message
    assert "\n" not in message


def test_a_worker_with_other_versions_is_refused(secure, tmp_path):
    cluster, client, cfg = secure
    preload = tmp_path / "other_version.py"
    preload.write_text("import scalepipe\n\nscalepipe.__version__ = '0.0.0+other'\n")
    worker = cluster.add_worker(nanny=False, preload=[str(preload)], name="odd-worker")
    try:
        cluster.wait_for_workers(client, 3)
        with pytest.raises(ClusterError, match=r"worker tls://127\.0\.0\.1:\d+ runs scalepipe 0\.0\.0\+other, this client scalepipe "):
            with open_cluster(cfg, scheduler=cluster.address, input_path=str(tmp_path)):
                pytest.fail("the block must not run")
    finally:
        cluster.stop(worker)
        cluster.wait_for_workers(client, 2)


def test_an_unreachable_scheduler_is_a_cluster_error_naming_it():
    import socket

    import dask

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    with dask.config.set({"scalepipe.cluster.connect-timeout": "1s"}), pytest.raises(ClusterError) as info:
        with open_cluster(ClusterConfig(), scheduler=address):
            pytest.fail("the block must not run")
    assert time.monotonic() - start < 10
    assert str(info.value).startswith(f"cannot connect to the scheduler {address} (timeout 1s): ")
    assert "\n" not in str(info.value)


def test_an_address_that_is_no_dask_scheduler_fails_within_the_connect_timeout():
    """The dashboard's port, or any server that takes the connection and never
    answers the handshake, hung the job whatever the timeout said."""
    import socket

    import dask

    with socket.socket() as server:  # accepts connections (the backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        start = time.monotonic()
        with dask.config.set({"scalepipe.cluster.connect-timeout": "1s"}):
            with pytest.raises(ClusterError, match=f"the scheduler {address} accepted the connection but did not answer as a Dask scheduler within 1s"):
                with open_cluster(ClusterConfig(), scheduler=address):
                    pytest.fail("the block must not run")
        assert time.monotonic() - start < 20


def test_a_scheduler_without_workers_is_waited_for_then_refused():
    """With no worker joined, the job waited forever without a word."""
    import dask
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        said: list[str] = []
        address = cluster.scheduler_address
        with dask.config.set({"scalepipe.cluster.worker-timeout": "1s"}):
            with pytest.raises(ClusterError, match=rf"^no worker joined the scheduler {address} within 1s \(scalepipe\.cluster\.worker-timeout\)"):
                with open_cluster(ClusterConfig(), scheduler=address, echo=said.append):
                    pytest.fail("the block must not run")
        assert said == [f"waiting for a worker to join the scheduler {address} (none yet; at most 1s, scalepipe.cluster.worker-timeout)"]
        cluster.scale(1)
        with open_cluster(ClusterConfig(), scheduler=address, echo=said.append) as client:
            assert client.submit(sum, [1, 2]).result() == 3


@pytest.mark.parametrize("value", ["abc", "-5s", "0s"])
def test_a_bad_connect_timeout_names_its_setting(value):
    import dask

    with dask.config.set({"scalepipe.cluster.connect-timeout": value}):
        with pytest.raises(ClusterError, match=f"scalepipe.cluster.connect-timeout: '{value}' is not a positive duration"):
            with open_cluster(ClusterConfig(), scheduler="tcp://127.0.0.1:9"):
                pytest.fail("the block must not run")


def test_tls_files_need_a_tls_scheduler_address(tmp_path):
    """With a tcp:// address the client failed after 10 s blaming 'Dask configuration';
    on the embedded cluster the files were ignored."""
    for name in ("ca", "cert", "key"):
        (tmp_path / name).write_text("x")
    security = SecurityConfig(ca_file=str(tmp_path / "ca"), cert_file=str(tmp_path / "cert"), key_file=str(tmp_path / "key"))
    with pytest.raises(ClusterError, match=r"cluster.security: .* tcp://127.0.0.1:9 is tcp://, which is not encrypted"):
        with open_cluster(ClusterConfig(security=security), scheduler="tcp://127.0.0.1:9"):
            pytest.fail("the block must not run")
    with pytest.raises(ClusterError, match=r"cluster.security: the TLS files are for a running scheduler"):
        with open_cluster(ClusterConfig(security=security)):
            pytest.fail("the block must not run")


def test_rejected_slurm_worker_jobs_fail_the_job_with_sbatch_s_message(tmp_path, monkeypatch):
    """The submission error was a logged traceback and the job waited for workers forever."""
    pytest.importorskip("dask_jobqueue")
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid account' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    jobqueue = {"cores": 1, "memory": "1GiB", "walltime": "00:10:00", "log_directory": str(tmp_path / "logs")}
    with pytest.raises(ClusterError, match="cluster.jobqueue: submitting the worker jobs failed: .*Invalid account"):
        with open_cluster(ClusterConfig(kind="slurm", n_workers=1, jobqueue=jobqueue)):
            pytest.fail("the block must not run")
    with pytest.raises(ClusterError, match=r"cluster.jobqueue: .*lots"):
        with open_cluster(ClusterConfig(kind="slurm", n_workers=1, jobqueue={**jobqueue, "memory": "lots"})):
            pytest.fail("the block must not run")


def test_dask_scheduler_address_is_honoured(secure, tmp_path):
    """``DASK_SCHEDULER_ADDRESS`` (which the Kubernetes operator sets) names the scheduler."""
    import dask

    cluster, _, cfg = secure
    with dask.config.set({"scheduler-address": cluster.address}):
        with open_cluster(cfg, input_path=str(tmp_path)) as client:
            assert client.scheduler.address == cluster.address


def test_in_process_workers_are_not_memory_limited_and_say_so():
    """With ``processes: false`` a limit would be measured against the whole
    process, pausing the workers for good once exceeded: a job holding more
    than the limit (here 64 MiB, far below what this process holds) still runs,
    and an explicit limit is reported as not applied."""
    lines: list[str] = []
    cfg = ClusterConfig(n_workers=1, processes=False, memory_limit="64MiB", dashboard_address=None)
    with open_cluster(cfg, echo=lines.append) as client:
        limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
        assert list(limits.values()) in ([None], [0])
        ballast = np.ones(32 << 20)  # 256 MiB held by this process while the work runs
        assert client.submit(lambda: 41 + 1).result(timeout=60) == 42
        del ballast
    assert any("memory_limit applies to worker processes" in line for line in lines)
    with open_cluster(ClusterConfig(n_workers=1, processes=False, dashboard_address=None), echo=lines.append):
        pass
    assert sum("memory_limit" in line for line in lines) == 1  # the default limit is not worth a warning
