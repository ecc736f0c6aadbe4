"""The job: config -> read -> fit -> transform -> write -> persist.

Every check that can fail without computing runs first (paths, the output's
existence, the input's schema against the rules or the artifact), so a bad job
fails in seconds and touches nothing. The output is committed atomically by
:mod:`scalepipe.io`; the statistics artifact is written last, so a failed run
leaves neither a partial dataset nor an artifact from that run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import TABLE_FORMATS, Config, config_hash
from .errors import ColumnError, ConfigError, OutputError
from .model import Model, fit, load, resolve_columns
from .views import view_of

__all__ = ["JobResult", "run_job", "validate_job"]

Mode = Literal["run", "fit", "transform"]


@dataclass
class JobResult:
    """What a job did."""

    model: Model
    stats_path: str | None
    output_path: str | None
    rows: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _fingerprint(files: list[str]) -> dict[str, Any]:
    """Names, sizes and modification times of the input files, hashed."""
    entries = []
    for f in files:
        st = os.stat(f)
        entries.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"files": len(files), "bytes": sum(e[1] for e in entries), "sha256": digest}


def _input_files(path: str) -> list[str]:
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith(("_", ".")))
    import glob

    return sorted(glob.glob(path, recursive=True))


def _preflight(cfg: Config, mode: Mode) -> None:
    """Checks that need no data: scope support, output presence and placement."""
    from . import io

    if cfg.stats.scope != "global":
        raise ConfigError(
            f"stats.scope: {cfg.stats.scope!r} is not available in this version of scalepipe yet; use 'global'"
        )
    if mode == "fit":
        return
    if cfg.output is None:
        raise ConfigError(f"output: required for `scalepipe {mode}` (add output.format and output.path)")
    io.check_paths(cfg.input.path, cfg.output.path)
    if os.path.lexists(cfg.output.path) and not cfg.output.overwrite:
        raise OutputError(f"{cfg.output.path}: output exists; set output.overwrite: true to replace it")


def _ensure_demo_input(cfg: Config, echo: Callable[[str], None]) -> None:
    demo = getattr(cfg.input, "demo", None)
    if demo is None or os.path.exists(cfg.input.path):
        return
    from .demo import write_demo_table

    echo(f"writing demo data ({demo.rows} rows, {demo.files} files) to {cfg.input.path}")
    write_demo_table(cfg.input.path, rows=demo.rows, files=demo.files, seed=demo.seed)


def _candidate_columns(schema: dict[str, str], patterns: list[str] | None) -> list[str]:
    """The columns the rules may scale: ``input.columns`` (names/globs) or all."""
    if patterns is None:
        return list(schema)
    chosen: list[str] = []
    for pat in patterns:
        hits = [c for c in schema if fnmatch.fnmatchcase(c, pat)]
        if not hits:
            raise ColumnError(f"input.columns: {pat!r} matches no column of the input (it has {', '.join(schema)})")
        chosen += [c for c in hits if c not in chosen]
    return chosen


def _open_input(cfg: Config) -> tuple[Any, list[str], dict[str, str] | None]:
    """The input as a lazy collection, its files, and (tables) its schema."""
    from . import io

    if cfg.input.format in TABLE_FORMATS:
        source = io.read_table(cfg.input.path, cfg.input.format)
        return source.frame, source.paths, source.schema
    ds = io.read_array(cfg.input.path, cfg.input.format, cfg.input.variables)
    return ds, _input_files(cfg.input.path), None


def _write_output(cfg: Config, data: Any) -> Any:
    from . import io

    assert cfg.output is not None
    if cfg.output.format in TABLE_FORMATS:
        return io.write_table(data, cfg.output.path, cfg.output.format, overwrite=cfg.output.overwrite)
    return io.write_array(data, cfg.output.path, overwrite=cfg.output.overwrite)


def run_job(
    cfg: Config,
    mode: Mode,
    *,
    scheduler: str | None = None,
    update: bool = False,
    echo: Callable[[str], None] = lambda _: None,
) -> JobResult:
    """Run a job on the configured cluster.

    Parameters
    ----------
    cfg
        The validated config.
    mode
        ``"run"`` (fit, write output, persist), ``"fit"`` (fit and persist) or
        ``"transform"`` (apply the artifact at ``stats.path``, write output).
    scheduler
        Overrides ``cluster.address``.
    update
        ``fit`` only: merge the new data into the existing artifact
        (``partial_fit``) instead of replacing it.
    echo
        Receives progress lines.

    Raises
    ------
    ScalepipeError
        Any user-facing problem; the message names the key, file or column.
    """
    from .cluster import open_cluster

    start = time.perf_counter()
    _preflight(cfg, mode)
    _ensure_demo_input(cfg, echo)
    data, files, schema = _open_input(cfg)
    previous = load(cfg.stats.path) if mode == "transform" or update else None
    with open_cluster(cfg.cluster, scheduler=scheduler, echo=echo, input_path=cfg.input.path):
        if previous is not None and mode == "transform":
            model = previous
            output = model.transform(data)  # checks the columns before any work
        else:
            model = _fit(cfg, data, schema, files, previous, echo)
            output = model.transform(data) if mode == "run" else None
        manifest = None
        if output is not None:
            echo(f"writing {cfg.output.path}")  # type: ignore[union-attr]
            manifest = _write_output(cfg, output)
    if mode != "transform":
        model.save(cfg.stats.path)
    rows = manifest.rows if manifest is not None and manifest.rows else int(model.moments.count[0] + model.moments.nan_count[0])
    return JobResult(
        model=model,
        stats_path=cfg.stats.path if mode != "transform" else None,
        output_path=cfg.output.path if output is not None and cfg.output else None,
        rows=rows,
        seconds=time.perf_counter() - start,
    )


def _fit(
    cfg: Config, data: Any, schema: dict[str, str] | None, files: list[str], previous: Model | None, echo: Callable[[str], None]
) -> Model:
    meta = {"config_hash": config_hash(cfg), "input_fingerprint": _fingerprint(files)}
    fit_data = data
    if schema is not None and cfg.input.columns is not None:
        fit_data = data[_candidate_columns(schema, cfg.input.columns)]
    echo(f"fitting {len(files)} input file(s)")
    if previous is not None:
        previous.partial_fit(fit_data)
        previous.meta.update(meta)
        return previous
    return fit(fit_data, cfg.scaler_objects(), reduce_dims=cfg.input.reduce_dims, meta=meta)


def validate_job(cfg: Config) -> list[str]:
    """Check the config and the input's schema without computing anything.

    Returns
    -------
    list of str
        Lines describing what the job would do (features per rule).
    """
    _preflight(cfg, "run" if cfg.output is not None else "fit")
    if getattr(cfg.input, "demo", None) is not None and not os.path.exists(cfg.input.path):
        return [f"input {cfg.input.path} does not exist yet; demo data will be written there"]
    data, files, schema = _open_input(cfg)
    if schema is None:
        view = view_of(data, reduce_dims=cfg.input.reduce_dims)
    else:  # the empty frame Dask keeps as metadata: no data is read
        chosen = _candidate_columns(schema, cfg.input.columns) if cfg.input.columns is not None else list(schema)
        view = view_of(data._meta[chosen])
    scalers = cfg.scaler_objects()
    features, passthrough = resolve_columns(view, scalers)
    lines = [f"input: {len(files)} file(s), {len(view.names)} column(s)"]
    for i, s in enumerate(scalers):
        mine = [f.name for f in features if f.rule == i]
        lines.append(f"scalers[{i}] {s.method}: {', '.join(map(str, mine))}")
    if passthrough:
        lines.append(f"passthrough: {', '.join(map(str, passthrough))}")
    return lines
