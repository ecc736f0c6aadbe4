"""The job: config -> checks -> read -> fit -> transform -> write -> persist.

Every check that can fail without computing runs before the cluster starts
(scope and path placement, the output's existence, the input's files and
schema against the rules or the artifact), so a bad job fails in seconds and
touches nothing. The output is committed atomically by :mod:`scalepipe.io`.
The statistics artifact of a ``run`` is written beside its destination before
the output is committed and moved into place only after the commit, so a
failed run leaves neither a partial dataset nor an artifact from that run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config import ARRAY_FORMATS, TABLE_FORMATS, Config, config_hash
from .errors import ConfigError, OutputError
from .model import Model, fit, load, resolve_columns
from .views import View, view_of

__all__ = ["JobResult", "run_job", "validate_job"]

Mode = Literal["run", "fit", "transform"]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class JobResult:
    """What a job did.

    Attributes
    ----------
    model
        The fitted (or, for ``transform``, loaded) model.
    stats_path
        Where the artifact was written; ``None`` for ``transform``.
    output_path
        Where the output was committed; ``None`` for ``fit``.
    rows_written
        Rows of a table output; ``None`` for ``fit`` and array outputs.
    seconds
        Wall time of the job.
    """

    model: Model
    stats_path: str | None
    output_path: str | None
    rows_written: int | None
    seconds: float


@dataclass(frozen=True)
class _Input:
    """The opened input: a lazy collection, and what is known of it without reading data.

    Attributes
    ----------
    data
        A dask DataFrame (tables) or a dask-backed xarray Dataset (arrays).
    files
        The distinct files read, in order.
    partition_files
        Tables: the file of each partition, to name it in errors; ``None`` for arrays.
    schema
        Tables: column name -> dtype; ``None`` for arrays.
    """

    data: Any
    files: list[str]
    partition_files: list[str] | None
    schema: dict[str, str] | None


def _quiet(_: str) -> None:
    """The default ``echo``: say nothing."""


def run_job(cfg: Config, mode: Mode, *, scheduler: str | None = None, update: bool = False, echo: Echo = _quiet) -> JobResult:
    """Run a job on the configured cluster.

    Parameters
    ----------
    cfg
        The validated config.
    mode
        ``"run"`` (fit, persist, transform, write), ``"fit"`` (fit and persist)
        or ``"transform"`` (apply the artifact at ``stats.path``, write output).
    scheduler
        Overrides ``cluster.address``.
    update
        ``fit`` only: merge the new data into the existing artifact
        (``partial_fit``) instead of replacing it.
    echo
        Receives progress lines.

    Returns
    -------
    JobResult

    Raises
    ------
    ScalepipeError
        Any user-facing problem; the message names the key, file or column.
        Nothing is written at ``output.path`` or ``stats.path`` by a failed job.

    Examples
    --------
    >>> from scalepipe.config import load_config
    >>> result = run_job(load_config("configs/quickstart.yaml"), "run")  # doctest: +SKIP
    >>> result.rows_written  # doctest: +SKIP
    200000
    """
    from .cluster import open_cluster

    start = time.perf_counter()
    _check_plan(cfg, writes_output=mode != "fit")
    if mode != "fit":
        _refuse_existing_output(cfg)
    _ensure_demo_input(cfg, echo)
    source = _open_input(cfg)
    previous = load(cfg.stats.path) if mode == "transform" or update else None
    _check_columns(cfg, source, previous)
    manifest = None
    cluster = open_cluster(
        cfg.cluster, scheduler=scheduler, echo=echo, input_path=cfg.input.path, partition_files=source.partition_files
    )
    with cluster:
        if mode == "transform" and previous is not None:
            model = previous
        else:
            model = _fit(cfg, source, previous, echo)
        if mode == "fit":
            _save(model, cfg.stats.path, cfg.stats.path)
        else:
            published = model if mode == "run" else None
            with _artifact_published_after(published, cfg.stats.path):
                echo(f"writing {cfg.output.path}")  # type: ignore[union-attr]
                manifest = _write_output(cfg, model.transform(source.data))
    return JobResult(
        model=model,
        stats_path=None if mode == "transform" else cfg.stats.path,
        output_path=None if mode == "fit" else cfg.output.path,  # type: ignore[union-attr]
        rows_written=manifest.rows if manifest is not None else None,
        seconds=time.perf_counter() - start,
    )


def validate_job(cfg: Config) -> tuple[list[str], list[str]]:
    """Check the config and the input's schema without computing anything.

    Only file listings, Parquet footers, CSV headers and array metadata are
    read; no cluster is started and nothing is written.

    Returns
    -------
    lines : list of str
        What the job would do: the input, and the columns of each rule.
    warnings : list of str
        Problems that do not make the config invalid but would stop a run
        (an existing output without ``overwrite``).

    Raises
    ------
    ScalepipeError
        The config cannot run on this input: a rule names a missing or
        non-numeric column, the input is missing or unreadable, paths overlap.
    """
    writes_output = cfg.output is not None
    _check_plan(cfg, writes_output=writes_output)
    warnings = []
    if writes_output and (problem := _existing_output_problem(cfg)):
        warnings.append(problem)
    if cfg.input.demo is not None and not os.path.exists(cfg.input.path):
        return [f"input: {cfg.input.path} does not exist yet; demo data will be written there"], warnings
    source = _open_input(cfg)
    view = _schema_view(cfg, source, None)
    scalers = cfg.scaler_objects()
    features, passthrough = resolve_columns(view, scalers)
    lines = [f"input: {len(source.files)} file(s), {len(view.names)} column(s)"]
    for i, scaler in enumerate(scalers):
        mine = [str(f.name) for f in features if f.rule == i]
        lines.append(f"scalers[{i}] {scaler.method}: {', '.join(mine)}")
    if passthrough:
        lines.append(f"passthrough: {', '.join(map(str, passthrough))}")
    return lines, warnings


def _check_plan(cfg: Config, *, writes_output: bool) -> None:
    """Checks that need neither data nor files: supported options and path placement."""
    from . import io

    if cfg.stats.scope != "global":
        raise ConfigError(
            f"stats.scope: {cfg.stats.scope!r} is not available in this version of scalepipe yet; use 'global'"
        )
    if cfg.input.columns is not None and cfg.input.format in ARRAY_FORMATS:
        raise ConfigError(
            f"input.columns: only for parquet and csv inputs (format is {cfg.input.format!r}); "
            "select arrays with input.variables"
        )
    if writes_output and cfg.output is None:
        raise ConfigError("output: required to write scaled data (add output.format and output.path)")
    placed = [("input.path", cfg.input.path)]
    if writes_output:
        assert cfg.output is not None
        io.check_paths(cfg.input.path, cfg.output.path)
        placed.append(("output.path", cfg.output.path))
    for key, other in placed:
        try:
            io.check_paths(other, cfg.stats.path)
        except OutputError:
            raise ConfigError(
                f"stats.path: {cfg.stats.path!r} overlaps {key} {other!r}; write the statistics outside it"
            ) from None


def _existing_output_problem(cfg: Config) -> str | None:
    """Why the output path cannot be written now, or ``None``."""
    from . import io

    assert cfg.output is not None
    path = cfg.output.path
    if not os.path.lexists(os.path.expanduser(path)):
        return None
    if not cfg.output.overwrite:
        return f"output.path: {path!r} exists; set output.overwrite: true to replace it, or choose another path"
    try:
        io.read_manifest(path)
    except OutputError:
        return (
            f"output.path: {path!r} exists and was not written by scalepipe (no {io.MANIFEST_NAME} manifest); "
            "scalepipe replaces only its own outputs: remove it yourself or choose another path"
        )
    return None


def _refuse_existing_output(cfg: Config) -> None:
    if problem := _existing_output_problem(cfg):
        raise OutputError(problem)


def _ensure_demo_input(cfg: Config, echo: Echo) -> None:
    demo = cfg.input.demo
    if demo is None or os.path.exists(cfg.input.path):
        return
    from .demo import write_demo_table

    echo(f"writing demo data ({demo.rows} rows, {demo.files} files) to {cfg.input.path}")
    write_demo_table(cfg.input.path, rows=demo.rows, files=demo.files, seed=demo.seed)


def _open_input(cfg: Config) -> _Input:
    """The input, opened lazily: file listings, footers and headers are read, no data."""
    from . import io

    if cfg.input.format in TABLE_FORMATS:
        table = io.read_table(cfg.input.path, cfg.input.format)  # type: ignore[arg-type]
        return _Input(table.frame, table.paths, table.files, table.schema)
    ds = io.read_array(cfg.input.path, cfg.input.format, cfg.input.variables)  # type: ignore[arg-type]
    return _Input(ds, _array_files(cfg.input.path), None, None)


def _array_files(path: str) -> list[str]:
    """The files of a Zarr store (a folder) or the NetCDF file."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file())
    return [str(p)]


def _fit_columns(cfg: Config, schema: dict[str, str]) -> list[str]:
    """The table columns the rules may scale: those ``input.columns`` (names or globs) selects."""
    import fnmatch

    from .errors import ColumnError

    if cfg.input.columns is None:
        return list(schema)
    chosen: list[str] = []
    for pattern in cfg.input.columns:
        hits = [c for c in schema if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise ColumnError(f"input.columns: {pattern!r} matches no column of the input (it has {', '.join(schema)})")
        chosen += [c for c in hits if c not in chosen]
    return chosen


def _schema_view(cfg: Config, source: _Input, previous: Model | None) -> View:
    """A view of the input's features that reads no data (a table's empty meta frame)."""
    if source.schema is None:
        dims = previous.meta.get("reduce_dims") if previous is not None else cfg.input.reduce_dims
        return view_of(source.data, reduce_dims=dims)
    columns = _fit_columns(cfg, source.schema) if previous is None else list(source.schema)
    return view_of(source.data._meta[columns])


def _check_columns(cfg: Config, source: _Input, previous: Model | None) -> None:
    """Match the input's columns against the rules, or against the artifact's features."""
    view = _schema_view(cfg, source, previous)
    if previous is None:
        resolve_columns(view, cfg.scaler_objects())
    else:
        view.positions(previous.feature_names)


def _fingerprint(files: list[str]) -> dict[str, Any]:
    """Names, sizes and modification times of the input files, hashed."""
    entries = []
    for f in files:
        st = os.stat(f)
        entries.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"files": len(files), "bytes": sum(e[1] for e in entries), "sha256": digest}


def _fit(cfg: Config, source: _Input, previous: Model | None, echo: Echo) -> Model:
    """Fit the rules on ``data`` in one pass, or merge it into ``previous`` (which keeps its own rules).

    An updated model keeps its config hash; ``partial_fit`` clears its input
    fingerprint, as no single input is behind it any more.
    """
    fit_data = source.data if source.schema is None else source.data[_fit_columns(cfg, source.schema)]
    echo(f"fitting {len(source.files)} input file(s)")
    if previous is not None:
        return previous.partial_fit(fit_data)
    meta = {"config_hash": config_hash(cfg), "input_fingerprint": _fingerprint(source.files)}
    return fit(fit_data, cfg.scaler_objects(), reduce_dims=cfg.input.reduce_dims, exact=cfg.stats.exact, meta=meta)


def _write_output(cfg: Config, data: Any) -> Any:
    """Commit ``data`` at ``output.path``; the manifest of a table, ``None`` for Zarr."""
    from . import io

    assert cfg.output is not None
    if cfg.output.format in TABLE_FORMATS:
        return io.write_table(data, cfg.output.path, cfg.output.format, overwrite=cfg.output.overwrite)  # type: ignore[arg-type]
    io.write_array(data, cfg.output.path, overwrite=cfg.output.overwrite)
    return None


def _save(model: Model, path: str | os.PathLike[str], named: str) -> None:
    """``model.save(path)``, with a failure reported as an :class:`OutputError` naming ``named``."""
    try:
        model.save(path)
    except OSError as exc:  # the writer's own OutputError names the temporary file: name the destination
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise OutputError(f"stats.path: writing the statistics to {named!r} failed: {cause.strerror or cause}") from exc


@contextlib.contextmanager
def _artifact_published_after(model: Model | None, path: str) -> Iterator[None]:
    """Write ``model``'s artifact beside ``path`` now; move it to ``path`` only if the block succeeds.

    Writing first means a full disk fails the job before the output is
    committed; the move afterwards is an atomic rename.
    """
    if model is None:
        yield
        return
    target = Path(os.path.expanduser(path))
    pending = target.with_name(f".{target.name}.pending-{uuid.uuid4().hex}")
    try:
        _save(model, pending, path)
        yield
        os.replace(pending, target)
    finally:
        pending.unlink(missing_ok=True)
