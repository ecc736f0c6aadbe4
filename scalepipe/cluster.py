"""Where the work runs: an embedded ``distributed.LocalCluster``, SLURM, or a running scheduler.

:func:`open_cluster` is a context manager that yields a connected
``distributed.Client`` and always closes what it opened (on success, on error
and on Ctrl-C), so no worker process outlives the command.

Connecting
    ``cluster.address`` (or ``--scheduler``, or Dask's ``scheduler-address``
    setting, e.g. ``DASK_SCHEDULER_ADDRESS``) names a running scheduler,
    ``tcp://`` or ``tls://``; ``cluster.security`` gives the TLS files
    (``distributed.security.Security``). Without ``cluster.security`` the
    client takes Dask's own configuration, so ``DASK_DISTRIBUTED__COMM__TLS__*``
    environment variables and Dask config files work as they do for any Dask
    client. A scheduler that cannot be reached within
    ``scalepipe.cluster.connect-timeout`` is a :class:`ClusterError` naming it.

Checks before any work
    Every worker connected at that moment runs :func:`_worker_facts`: its
    scalepipe, dask and distributed versions must equal the client's, and it
    must be able to read the job's input path (the same path string the tasks
    will open, relative paths resolved in the worker's own directory).

Failures inside the ``with`` block
    A task that killed ``distributed.scheduler.allowed-failures + 1`` workers
    (``KilledWorker``) becomes a :class:`ClusterError` naming its partition and
    input file (:func:`explain_killed_worker`); a scheduler lost mid-job
    becomes a :class:`ClusterError` naming the scheduler, raised as soon as
    distributed notices the closed connection (the client does not wait to
    reconnect). Both are found also when another layer wrapped them (the
    output writer turns a failed write into an ``OutputError`` caused by them).
    Ctrl-C (SIGINT) is not translated: the ``KeyboardInterrupt`` leaves the
    block, the client is closed, which makes the scheduler release (cancel)
    every task of this job, the embedded cluster is shut down, and the
    interrupt goes on to the caller. While the block runs, a SIGINT is never
    lost (:class:`_Interrupt`).

Runtime knobs (``dask.config``, read at call time):

``scalepipe.cluster.connect-timeout`` (default ``"10s"``)
    How long to wait for a scheduler to accept the connection; a scheduler
    still starting is retried until then.
``scalepipe.cluster.worker-timeout`` (default ``"10min"``)
    How long to wait for a first worker to join a running scheduler that has
    none (compose's workers still starting); the job says it waits.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask.config

from .config import ClusterConfig
from .errors import ClusterError, ConfigError

__all__ = ["explain_killed_worker", "open_cluster"]

DEFAULT_CONNECT_TIMEOUT = "10s"
DEFAULT_WORKER_TIMEOUT = "10min"

#: The packages whose versions must match between the client and the workers:
#: the tasks are scalepipe functions, pickled by reference, run by dask/distributed.
CHECKED_PACKAGES = ("scalepipe", "dask", "distributed")

_GLOB_CHARS = "*?["


def _security(cfg: ClusterConfig) -> Any:
    """``distributed.security.Security`` from ``cluster.security``; ``None`` leaves it to Dask's config."""
    if cfg.security is None:
        return None
    from distributed.security import Security

    sec = cfg.security
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(sec, key)
        if path is not None and not os.path.isfile(path):
            raise ClusterError(f"cluster.security.{key}: {path!r} is not a readable file")
    return Security(
        tls_ca_file=sec.ca_file,
        tls_client_cert=sec.cert_file,
        tls_client_key=sec.key_file,
        require_encryption=sec.require_encryption,
    )


#: In-process workers get no memory limit: each would measure the whole
#: scalepipe process against it and, once over, pause for good (nothing
#: restarts a thread), so a job would hang; the partitions in flight bound their
#: memory instead.
_IN_PROCESS_LIMIT = 0


def _start_local(cfg: ClusterConfig) -> Any:
    from distributed import LocalCluster

    # Without a dashboard the scheduler still serves /health and /metrics, on
    # port 8787 unless told otherwise: a random loopback port avoids clashing
    # (and warning) when two jobs run at once.
    http = {"dashboard_address": "127.0.0.1:0"} if cfg.dashboard_address is None else {}
    # Worker processes talk TCP on loopback; in-process workers use distributed's
    # in-memory transport, which takes no host.
    where = {"host": "127.0.0.1"} if cfg.processes else {}
    return LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=cfg.processes,
        memory_limit=cfg.memory_limit if cfg.processes else _IN_PROCESS_LIMIT,
        dashboard_address=cfg.dashboard_address,
        scheduler_kwargs=http,
        **where,
    )


def _slurm_options(cfg: ClusterConfig) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` keyword arguments: ``cluster.jobqueue`` plus the dashboard.

    The scheduler runs in this process; its dashboard binds to
    ``cluster.dashboard_address`` (loopback by default) unless
    ``jobqueue.scheduler_options`` (or Dask's ``jobqueue.slurm.scheduler-options``)
    names one, where dask-jobqueue alone would listen on every interface.
    """
    options = dict(cfg.jobqueue)
    from_config = dask.config.get("jobqueue.slurm.scheduler-options", None) or {}
    scheduler = {**from_config, **(options.pop("scheduler_options", None) or {})}
    if cfg.dashboard_address is None:
        scheduler.setdefault("dashboard", False)
    scheduler.setdefault("dashboard_address", cfg.dashboard_address or "127.0.0.1:0")
    return {**options, "scheduler_options": scheduler}


def check_jobqueue_options(cfg: ClusterConfig) -> None:
    """Refuse a ``cluster.jobqueue`` option ``dask_jobqueue.SLURMCluster`` does not take, before any work.

    A misspelt option (``walltme``) passed ``validate`` and failed the run
    only when the cluster started. Checked where dask-jobqueue is installed
    (without it, starting the cluster says to install it).
    """
    if cfg.kind != "slurm":
        return
    try:
        from dask_jobqueue import SLURMCluster
        from dask_jobqueue.core import Job, JobQueueCluster
    except ImportError:
        return
    known: set[str] = set()
    for init in (SLURMCluster.__init__, SLURMCluster.job_cls.__init__, Job.__init__, JobQueueCluster.__init__):
        params = inspect.signature(init).parameters.values()
        known |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    for name in cfg.jobqueue:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"cluster.jobqueue: {name!r} is not an option of dask_jobqueue.SLURMCluster{hint}")


def _start_slurm(cfg: ClusterConfig) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("cluster.kind: slurm needs dask-jobqueue: pip install 'scalepipe[slurm]'") from None
    try:
        cluster = SLURMCluster(**_slurm_options(cfg))
    except (TypeError, ValueError) as err:  # an unknown option; a value dask-jobqueue cannot read ('lots' of memory)
        raise ClusterError(f"cluster.jobqueue: {_one_line(err)} (see dask_jobqueue.SLURMCluster's parameters)") from err
    try:
        _submit_jobs(cluster, cfg.n_workers)
    except BaseException:
        with contextlib.suppress(Exception):  # closing a job that was never submitted fails an assertion
            cluster.close()
        raise
    return cluster


#: How long to wait for sbatch to take the worker jobs before the job goes on (the jobs may then still be queued).
_SUBMIT_WAIT = 60.0


class _Failures(logging.Handler):
    """Keeps the exceptions logged by tornado's callbacks, where a failed job submission ends up."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _submit_jobs(cluster: Any, jobs: int) -> None:
    """Scale to ``jobs`` worker jobs and wait until sbatch has taken them (each has a job id).

    A rejected submission (a wrong account or queue, no ``sbatch`` on PATH)
    is only logged by the cluster's event loop, as a multi-line traceback,
    and the job would then wait for workers forever: it is a
    :class:`ClusterError` here, with sbatch's message.
    """
    import time

    failures = _Failures()
    log = logging.getLogger("tornado.application")  # distributed gives it a handler of its own
    handlers, propagate = log.handlers, log.propagate
    log.handlers, log.propagate = [failures], False
    try:
        cluster.scale(jobs=jobs)
        deadline = time.monotonic() + _SUBMIT_WAIT
        while time.monotonic() < deadline:
            if failures.errors:
                raise ClusterError(
                    f"cluster.jobqueue: submitting the worker jobs failed: {_one_line(failures.errors[0])} (check "
                    "account, queue and the other options against your site's SLURM, and that sbatch is on PATH)"
                )
            submitted = [getattr(job, "job_id", None) for job in cluster.workers.values()]
            if len(submitted) >= jobs and all(submitted):
                return
            time.sleep(0.1)
    finally:
        log.handlers, log.propagate = handlers, propagate


def _connect(address: str, cfg: ClusterConfig) -> Any:
    """A client of the scheduler at ``address``, or a :class:`ClusterError` naming it."""
    from distributed import Client

    security = _security(cfg)
    if security is not None and security.require_encryption and address.startswith("tcp://"):
        raise ClusterError(
            f"cluster.security: TLS certificates are set (require_encryption), but the scheduler address {address} "
            "is tcp://, which is not encrypted: use its tls:// address, or remove cluster.security"
        )
    timeout = _duration_setting("scalepipe.cluster.connect-timeout", DEFAULT_CONNECT_TIMEOUT)
    try:
        return _within(_seconds(timeout) + 5, lambda: Client(address, security=security, timeout=timeout, set_as_default=True))
    except _NoAnswer:
        raise ClusterError(
            f"the scheduler {address} accepted the connection but did not answer as a Dask scheduler within "
            f"{timeout}: is it the scheduler's port (8786 by default; 8787 is the dashboard)?"
        ) from None
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        if address.startswith("tls://") and security is None and "ssl_context" in str(err):
            raise ClusterError(
                f"cannot connect to the scheduler {address}: it uses TLS and no certificates are configured; "
                "set cluster.security (ca_file, cert_file, key_file) or Dask's distributed.comm.tls settings"
            ) from err
        hint = "; check that cluster.security's certificate and key are signed by a CA the scheduler trusts" if address.startswith("tls://") else ""
        raise ClusterError(f"cannot connect to the scheduler {address} (timeout {timeout}): {_one_line(err)}{hint}") from err


def _duration_setting(name: str, default: str) -> str:
    """The duration setting ``name`` (``scalepipe.cluster.connect-timeout``, ...), checked to be one."""
    value = dask.config.get(name, default)
    try:
        seconds = _seconds(value)
    except (KeyError, ValueError, TypeError):
        seconds = -1.0
    if not seconds > 0:
        raise ClusterError(f"{name}: {value!r} is not a positive duration like '10s' or '2min'")
    return str(value)


def _await_workers(client: Any, address: str, echo: Callable[[str], None]) -> None:
    """Wait for a first worker to join the scheduler at ``address``, saying so; a :class:`ClusterError` after the timeout.

    With none, the job waited forever without a word (compose starts the job
    while its workers are still connecting).
    """
    if client.scheduler_info(n_workers=1).get("workers"):
        return
    timeout = _duration_setting("scalepipe.cluster.worker-timeout", DEFAULT_WORKER_TIMEOUT)
    echo(f"waiting for a worker to join the scheduler {address} (none yet; at most {timeout}, scalepipe.cluster.worker-timeout)")
    try:
        client.wait_for_workers(1, timeout=_seconds(timeout))
    except TimeoutError:
        raise ClusterError(
            f"no worker joined the scheduler {address} within {timeout} (scalepipe.cluster.worker-timeout); "
            f"start workers (`dask worker {address}`) or give them longer"
        ) from None


def _seconds(value: object) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="seconds"))


class _NoAnswer(Exception):
    """The call did not return in time."""


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``, or :class:`_NoAnswer` if it has not returned after ``seconds``.

    For a client whose handshake can wait forever (an HTTP server or the
    dashboard's port accepts the TCP connection and never answers), whatever
    its own timeout says; the call is left running on a daemon thread.
    """
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=attempt, name="scalepipe-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise _NoAnswer
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _input_problem(path: str) -> str | None:
    """Why this process cannot read the input ``path``, or ``None`` if it can.

    A URL other than ``file://`` is not checked: its reader reports its own errors.
    """
    local = path[len("file://") :] if path.startswith("file://") else path
    if "://" in local:
        return None
    local = os.path.expanduser(local)
    if any(c in local for c in _GLOB_CHARS):
        return None if glob.glob(local, recursive=True) else "no file matches it"
    if not os.path.exists(local):
        return "it does not exist"
    if not os.access(local, os.R_OK | (os.X_OK if os.path.isdir(local) else 0)):
        return "it is not readable"
    return None


def _worker_facts(input_path: str | None) -> dict[str, Any]:
    """Run on a worker before the job: its package versions, directory, and input problem."""
    import dask
    import distributed

    import scalepipe

    return {
        "versions": {"scalepipe": scalepipe.__version__, "dask": dask.__version__, "distributed": distributed.__version__},
        "cwd": os.getcwd(),
        "input": None if input_path is None else _input_problem(input_path),
    }


def _check_workers(client: Any, input_path: str | None) -> None:
    """Refuse to start on workers whose versions differ from ours or that cannot read the input."""
    import distributed

    import scalepipe

    ours = {"scalepipe": scalepipe.__version__, "dask": dask.__version__, "distributed": distributed.__version__}
    facts = client.run(_worker_facts, input_path, on_error="return")
    for address in sorted(facts):
        got = facts[address]
        if isinstance(got, BaseException):
            raise ClusterError(
                f"worker {address} cannot run scalepipe's check ({type(got).__name__}: {_one_line(got)}); "
                f"install scalepipe {ours['scalepipe']} on every worker"
            )
        for package in CHECKED_PACKAGES:
            theirs = got["versions"][package]
            if theirs != ours[package]:
                raise ClusterError(
                    f"worker {address} runs {package} {theirs}, this client {package} {ours[package]}; "
                    f"install the same scalepipe, dask and distributed versions on the client and every worker"
                )
        if got["input"] is not None:
            where = "" if os.path.isabs(os.path.expanduser(input_path or "")) else f" (relative to its directory {got['cwd']!r})"
            raise ClusterError(
                f"worker {address} cannot read the input {input_path!r}: {got['input']}{where}; "
                "the workers must see the input at the same path as this client (a shared filesystem or volume)"
            )


def _partition_of(key: Any) -> int | tuple[int, ...] | None:
    """The partition (or array block) a Dask task key stands for: ``('name', 3)`` -> 3."""
    if isinstance(key, tuple) and len(key) >= 2 and all(isinstance(k, int) for k in key[1:]):
        return key[1] if len(key) == 2 else tuple(key[1:])
    return None


def explain_killed_worker(
    err: BaseException, partition_files: Sequence[str] | None = None, input_path: str | None = None
) -> ClusterError:
    """A :class:`ClusterError` naming the partition (and its file) behind a ``KilledWorker``.

    Parameters
    ----------
    err : distributed.KilledWorker
        Raised when a task's workers died ``allowed-failures + 1`` times.
    partition_files
        ``partition_files[i]`` is the input file of partition ``i``
        (:attr:`scalepipe.io.TableSource.files`).
    input_path
        The job's input, named when the file of the partition is not known.

    Examples
    --------
    >>> err = KilledWorker(("read-parquet-1f2e", 3), worker_state, 2)  # doctest: +SKIP
    >>> str(explain_killed_worker(err, files))  # doctest: +SKIP
    "partition 3 (file 'data/part.00003.parquet') killed 3 workers that processed it (...); the job was stopped: ..."
    """
    key = getattr(err, "task", None)
    allowed = getattr(err, "allowed_failures", None)
    last = getattr(getattr(err, "last_worker", None), "address", None)
    part = _partition_of(key)
    if isinstance(part, int) and partition_files is not None and 0 <= part < len(partition_files):
        what = f"partition {part} (file {partition_files[part]!r})"
    elif part is not None:
        what = f"{'partition' if isinstance(part, int) else 'block'} {part}" + (f" of input {input_path!r}" if input_path else "")
    else:
        what = f"task {key!r}"
    tries = f"{allowed + 1} workers" if isinstance(allowed, int) else "its workers"
    details = [f"distributed.scheduler.allowed-failures={allowed}"]
    if not what.startswith("task "):
        details.append(f"task {key!r}")
    if last:
        details.append(f"last on {last}")
    return ClusterError(
        f"{what} killed {tries} that processed it ({'; '.join(details)}); the job was stopped: "
        "the workers' logs say why (out of memory? a crash in a library reading it?)"
    )


def _causes(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _translated(
    err: Exception, client: Any, address: str, partition_files: Sequence[str] | None, input_path: str | None
) -> ClusterError | None:
    """The cluster failure behind ``err`` as a :class:`ClusterError`, or ``None`` if it is not one."""
    from distributed import KilledWorker

    for cause in _causes(err):
        if isinstance(cause, KilledWorker):
            return explain_killed_worker(cause, partition_files, input_path)
    if client.status != "running":
        return ClusterError(
            f"lost the connection to the scheduler {address} mid-job (it stopped, crashed or became unreachable); "
            "the job was stopped and nothing more was written: rerun it when the scheduler is back"
        )
    return None


def _dashboard_link(client: Any, cluster: Any) -> str:
    """The dashboard's address; for an embedded cluster, where its server is bound.

    An in-process cluster's scheduler has an ``inproc://`` address whose host
    is not where the dashboard listens.
    """
    server = getattr(getattr(cluster, "scheduler", None), "http_server", None)
    if server is None or not getattr(server, "port", None) or server.address in ("", "0.0.0.0", "::"):
        return client.dashboard_link
    return f"http://{server.address}:{server.port}/status"


def _dashboard_needs(cluster: Any) -> str:
    """What the printed dashboard link lacks: bokeh, where this process serves the dashboard without it."""
    import importlib.util

    if cluster is None or importlib.util.find_spec("bokeh") is not None:
        return ""
    return " (its pages need bokeh: pip install 'scalepipe[dashboard]')"


class _Interrupt:
    """The SIGINT handler while a job runs: a Ctrl-C that is never lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to
    be. Raised inside a garbage-collection callback (distributed installs
    one) or a ``__del__`` method, it is printed and dropped and the job runs
    on; raised inside code run by ``exec`` of a string (dataclasses, lazy
    imports), it makes ``python -m`` exit by SIGINT even when the command
    handled it. So the handler does not raise while such a frame runs inside
    the ``with`` block of :func:`open_cluster` (``body`` is the frame running
    the block), and until the block is left a watcher thread sends SIGINT
    again every quarter second while the interrupt is not delivered, and
    when the main thread is found waiting again after it was (it was lost).
    """

    _DROPPING_FRAMES = frozenset({"__del__", "_gc_callback"})
    _WAITING_FRAMES = frozenset({"wait", "_wait_for_tstate_lock"})

    def __init__(self, body: Any) -> None:
        self.body = body
        self.requested = False
        self.delivered = False
        self.finished = threading.Event()
        self.signum = signal.SIGINT

    def __call__(self, signum: int, frame: Any) -> None:
        if self.finished.is_set():
            return  # the block is over: let its cleanup run
        if not self.requested:
            self.requested = True
            self.signum = signum
            threading.Thread(target=self._redeliver, name="scalepipe-interrupt", daemon=True).start()
        if self._unsafe(frame):
            return
        self.delivered = True
        raise KeyboardInterrupt

    def _unsafe(self, frame: Any) -> bool:
        while frame is not None and frame is not self.body:
            code = frame.f_code
            if code.co_name in self._DROPPING_FRAMES or code.co_filename == "<string>":
                return True
            frame = frame.f_back
        return False

    def _main_thread_waits(self) -> bool:
        frame = sys._current_frames().get(threading.main_thread().ident)
        return frame is not None and frame.f_code.co_name in self._WAITING_FRAMES and "threading" in frame.f_code.co_filename

    def _redeliver(self) -> None:
        while not self.finished.wait(0.25):
            # A delivered interrupt unwinds the main thread to the end of the
            # block without waiting on anything: a main thread that waits
            # again has lost it.
            if not self.delivered or self._main_thread_waits():
                os.kill(os.getpid(), self.signum)


@contextlib.contextmanager
def _handling_sigint(handler: _Interrupt) -> Iterator[None]:
    """Install ``handler`` for SIGINT, unless this is not the main thread or someone else handles SIGINT.

    Where SIGINT is ignored (a job a script started in the background), it
    handles SIGTERM instead, the way such a job is stopped.
    """
    sigint = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or sigint not in (signal.default_int_handler, signal.SIG_IGN):
        yield
        return
    signum = signal.SIGINT if sigint is signal.default_int_handler else signal.SIGTERM
    previous = signal.getsignal(signum)
    signal.signal(signum, handler)
    try:
        yield
    finally:
        handler.finished.set()
        signal.signal(signum, previous)


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Silence ``loggers`` (the reconnection tracebacks of a client closed after losing its scheduler)."""
    previous = [(logging.getLogger(name), logging.getLogger(name).disabled) for name in loggers]
    for logger, _ in previous:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in previous:
            logger.disabled = disabled


@contextlib.contextmanager
def open_cluster(
    cfg: ClusterConfig,
    *,
    scheduler: str | None = None,
    echo: Callable[[str], None] = lambda _: None,
    input_path: str | None = None,
    partition_files: Sequence[str] | None = None,
) -> Iterator[Any]:
    """Connect to (or start) the configured cluster, check it, and yield a ``distributed.Client``.

    Parameters
    ----------
    cfg
        The config's ``cluster`` section.
    scheduler
        A scheduler address that overrides ``cfg.address`` (``--scheduler``).
        Without either, a ``local`` cluster is the scheduler named by Dask's
        ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``, which the
        Dask Kubernetes operator sets in a DaskJob's pod) if there is one, else
        an embedded ``LocalCluster``.
    echo
        Receives one line with the dashboard link.
    input_path
        The job's input, which every worker must be able to read.
    partition_files
        The input file of each partition (``TableSource.files``), so that a
        partition that keeps killing workers is reported by its file.

    Raises
    ------
    ClusterError
        Before the block: the scheduler cannot be reached in time, the cluster
        cannot start, a worker's versions differ from the client's, or a
        worker cannot read ``input_path``. From the block: a task killed
        ``allowed-failures + 1`` workers, or the scheduler was lost.

    Examples
    --------
    >>> with open_cluster(cfg.cluster, scheduler="tcp://127.0.0.1:8786", input_path="data/") as client:  # doctest: +SKIP
    ...     model = scalepipe.fit(frame, scalers)
    """
    from distributed import Client

    address = scheduler or cfg.address or (dask.config.get("scheduler-address", None) if cfg.kind == "local" else None)
    cluster = None
    lost = False
    if not address and cfg.kind == "local" and cfg.security is not None:
        raise ClusterError(
            "cluster.security: the TLS files are for a running scheduler (cluster.address or --scheduler); "
            "the embedded cluster's workers are this machine's and need none: remove cluster.security or give the address"
        )
    if address:
        client = _connect(address, cfg)
    else:
        try:
            cluster = _start_slurm(cfg) if cfg.kind == "slurm" else _start_local(cfg)
            client = Client(cluster, set_as_default=True)
        except ClusterError:
            raise
        except (OSError, TimeoutError, ValueError, RuntimeError) as err:
            if cluster is not None:
                cluster.close()
            raise ClusterError(f"cannot start a {cfg.kind} cluster: {_one_line(err)}") from err
    where = address or client.scheduler.address
    try:
        try:
            if address:
                _await_workers(client, address, echo)
            _check_workers(client, input_path)
        except (OSError, TimeoutError) as err:
            lost = client.status != "running"
            raise ClusterError(f"the scheduler {where} failed while checking the workers: {_one_line(err)}") from err
        if cfg.dashboard_address is not None or address:
            echo(f"dashboard: {_dashboard_link(client, cluster)}{_dashboard_needs(cluster)}")
        if cluster is not None and cfg.kind == "local" and not cfg.processes and "memory_limit" in cfg.model_fields_set:
            echo("warning: cluster.memory_limit applies to worker processes (processes: true); in-process workers are not limited")
        # The frame running the with block: this generator's, then
        # contextlib's __enter__, then the caller's.
        interrupt = _Interrupt(body=sys._getframe(2))
        with _handling_sigint(interrupt):
            try:
                yield client
            except Exception as err:
                problem = _translated(err, client, where, partition_files, input_path)
                if problem is None:
                    raise
                lost = client.status != "running"
                raise problem from err
    finally:
        with _quiet("distributed.client") if lost else contextlib.nullcontext():
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
