"""Where the work runs: an embedded ``distributed.LocalCluster``, SLURM, or a running scheduler.

:func:`open_cluster` is a context manager that yields a connected
``distributed.Client`` and always closes what it opened (on success, on error
and on Ctrl-C), so no worker process outlives the command.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .config import ClusterConfig
from .errors import ClusterError

__all__ = ["open_cluster"]

CONNECT_TIMEOUT = "15s"


def _security(cfg: ClusterConfig) -> Any:
    if cfg.security is None:
        return None
    from distributed.security import Security

    sec = cfg.security
    return Security(
        tls_ca_file=sec.ca_file,
        tls_client_cert=sec.cert_file,
        tls_client_key=sec.key_file,
        require_encryption=sec.require_encryption,
    )


def _start_local(cfg: ClusterConfig) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=cfg.processes,
        memory_limit=cfg.memory_limit,
        host="127.0.0.1",
        dashboard_address=cfg.dashboard_address,
    )


def _start_slurm(cfg: ClusterConfig) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("cluster.kind: slurm needs dask-jobqueue: pip install 'scalepipe[slurm]'") from None
    cluster = SLURMCluster(**cfg.jobqueue)
    cluster.scale(jobs=cfg.n_workers)
    return cluster


@contextlib.contextmanager
def open_cluster(
    cfg: ClusterConfig,
    *,
    scheduler: str | None = None,
    echo: Callable[[str], None] = lambda _: None,
    input_path: str | None = None,
) -> Iterator[Any]:
    """Connect to (or start) the configured cluster; yield a ``distributed.Client``.

    Parameters
    ----------
    cfg
        The config's ``cluster`` section.
    scheduler
        A scheduler address that overrides ``cfg.address`` (``--scheduler``).
    echo
        Receives one line with the dashboard link.
    input_path
        The job's input, which the workers must be able to read.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached in time, or the cluster cannot start.
    """
    from distributed import Client

    address = scheduler or cfg.address
    cluster = None
    try:
        if address:
            client = Client(address, security=_security(cfg), timeout=CONNECT_TIMEOUT, set_as_default=True)
        else:
            cluster = _start_slurm(cfg) if cfg.kind == "slurm" else _start_local(cfg)
            client = Client(cluster, set_as_default=True)
    except (OSError, TimeoutError, ValueError) as err:
        if cluster is not None:
            cluster.close()
        where = f"scheduler {address}" if address else f"a {cfg.kind} cluster"
        raise ClusterError(f"cannot reach {where}: {err}") from None
    try:
        if cfg.dashboard_address is not None or address:
            echo(f"dashboard: {client.dashboard_link}")
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
