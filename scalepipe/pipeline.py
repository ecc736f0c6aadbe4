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
import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from .codecs import describe
from .config import TABLE_FORMATS, Config, config_hash
from .errors import ColumnError, ConfigError, DataError, InterruptedAfterCommit, OutputError
from .groups import key_family, keys_family
from .model import Model, fit, load, resolve_columns
from .stats import NonFiniteError
from .views import ARRAY_KINDS, View, view_of

__all__ = ["JobResult", "drift_job", "run_job", "validate_job"]

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


T = TypeVar("T")

#: An error message that starts with a config key (``stats.key: ...``, ``scalers[0].columns: ...``).
_CONFIG_KEY = re.compile(r"^((?:cluster|input|stats|scalers|output|report)(?:\[\d+\]|\.\w+)*): ")


def _locating_config_keys(job: Callable[..., T]) -> Callable[..., T]:
    """``job(cfg, ...)``, whose errors naming a config key also say where the config sets it.

    Checks made after the config was read (a key column missing from the
    input, an artifact's settings) named the key but not its line or the
    ``--set`` it came from, as the config's own errors do.
    """

    @functools.wraps(job)
    def located(cfg: Config, *args: Any, **kwargs: Any) -> T:
        try:
            return job(cfg, *args, **kwargs)
        except (ConfigError, ColumnError) as err:
            message = str(err)
            key = _CONFIG_KEY.match(message)
            where = cfg.whereabouts(key.group(1)) if key and "(line " not in message and "(from --set " not in message else ""
            if not where:
                raise
            raise type(err)(message + where).with_traceback(err.__traceback__) from err.__cause__

    return located


@_locating_config_keys
def run_job(
    cfg: Config,
    mode: Mode,
    *,
    scheduler: str | None = None,
    update: bool = False,
    profile: str | None = None,
    echo: Echo = _quiet,
) -> JobResult:
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
    profile
        Write Dask's ``performance_report`` HTML of the job here.
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
    from .report import check_profile, performance_report

    start = time.perf_counter()
    check_profile(profile)
    _check_plan(cfg, writes_output=mode != "fit", writes_stats=mode != "transform")
    if mode != "fit":
        _refuse_existing_output(cfg)
    _ensure_demo_input(cfg, echo)
    previous = load(cfg.stats.path) if mode == "transform" or update else None
    source = _open_input(cfg, _text_key(cfg.input.format, previous, cfg.stats.key))
    if previous is not None:
        command = "fit --update" if update else "transform"
        _check_kept_settings(cfg, previous, command)
        _check_reduce_dims(cfg, previous, command)
    with _about_input(cfg.input.path):
        _check_columns(cfg, source, previous)
    if update:
        _check_update_keys(previous, source)
    manifest = None
    cluster = open_cluster(
        cfg.cluster, scheduler=scheduler, echo=echo, input_path=cfg.input.path, partition_files=source.partition_files
    )
    histograms = None
    made = [os.path.dirname(os.path.abspath(os.path.expanduser(p))) for p in (cfg.stats.path, cfg.output and cfg.output.path) if p]
    done: list[str] = []  # the results in place, for the message of a later interrupt
    with _interrupt_after(done), _folders_removed_on_failure(made):
        with cluster, performance_report(profile), _naming_the_file(source), _about_input(cfg.input.path):
            if mode == "transform" and previous is not None:
                model = previous
            else:
                model = _fit(cfg, source, previous, echo)
            if mode == "fit":
                _save(model, cfg.stats.path, cfg.stats.path)
                done.append(f"statistics -> {cfg.stats.path}")
            else:
                published = model if mode == "run" else None
                with _artifact_published_after(published, cfg.stats.path) as publish:

                    def committed() -> None:
                        publish()
                        done.extend([f"statistics -> {cfg.stats.path}"] * (published is not None) + [f"output -> {cfg.output.path}"])  # type: ignore[union-attr]

                    echo(f"writing {cfg.output.path}")  # type: ignore[union-attr]
                    manifest, histograms = _transform_and_write(cfg, model, source, mode, echo, committed)
        _finish_report(cfg, mode, model, histograms, echo, done)
    return JobResult(
        model=model,
        stats_path=None if mode == "transform" else cfg.stats.path,
        output_path=None if mode == "fit" else cfg.output.path,  # type: ignore[union-attr]
        rows_written=manifest.rows if manifest is not None else None,
        seconds=time.perf_counter() - start,
    )


@contextlib.contextmanager
def _interrupt_after(done: list[str]) -> Iterator[None]:
    """An interrupt once results are in place (``done`` names them) says they are complete (:class:`InterruptedAfterCommit`)."""
    try:
        yield
    except KeyboardInterrupt:
        if not done:
            raise
        raise InterruptedAfterCommit(
            f"interrupted after the job's results were complete and in place ({', '.join(done)}); what came after "
            "them (closing the cluster, the report) may be unfinished"
        ) from None


def _finish_report(cfg: Config, mode: str, model: Model, histograms: Any, echo: Callable[[str], None], done: list[str]) -> None:
    """Write the run report (``fit`` and ``run``, unless ``report: false``); ``done``: the results in place."""
    if mode != "transform" and cfg.report:
        from .report import write_run_report

        try:
            echo(f"report -> {write_run_report(model, histograms, cfg.stats.path)}")
        except Exception as err:  # the job's results are complete and in place; say so
            raise OutputError(
                f"the report could not be written ({type(err).__name__}: {err}); the job's results are complete: {', '.join(done)} "
                "(rebuild the report with `scalepipe report`)"
            ) from err


@_locating_config_keys
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
    demo = cfg.input.demo is not None and not os.path.exists(cfg.input.path)
    source = _demo_input(cfg) if demo else _open_input(cfg, _text_key(cfg.input.format, None, cfg.stats.key))
    view = _schema_view(cfg, source, None)
    scalers = cfg.scaler_objects()
    features, passthrough = resolve_columns(view, scalers, exclude=_key_columns(cfg))
    _check_batches(cfg, view, features)
    if source.schema is None:  # an array store: its files are chunks, its features cells of its variables
        lines = [f"input: {cfg.input.format}, {len(source.data.data_vars)} variable(s), {len(view.names)} feature(s)"]
    elif demo:
        lines = [f"input: {cfg.input.path} does not exist yet; demo data will be written there ({len(view.names)} column(s))"]
    else:
        lines = [f"input: {len(source.files)} file(s), {len(view.names)} column(s)"]
    if cfg.output is not None:
        codec = f" ({describe(cfg.output.compression, cfg.output.compression_level)})" if cfg.output.format == "parquet" else ""
        flush = "" if cfg.output.durable else ", not flushed to disk (durable: false)"
        lines.append(f"output: {cfg.output.format}{codec} -> {cfg.output.path}{flush}")
    for i, scaler in enumerate(scalers):
        mine = [str(f.name) for f in features if f.rule == i]
        lines.append(f"scalers[{i}] {scaler.method}: {', '.join(mine)}")
    if passthrough:
        lines.append(f"passthrough: {', '.join(map(str, passthrough))}")
    return lines, warnings


def _check_kept_settings(cfg: Config, previous: Model, command: str) -> None:
    """``transform`` and ``fit --update`` keep the artifact's rules, scope (with its batches and inference statistics) and exactness.

    A config that sets others is refused: ``transform`` wrote data scaled by
    the artifact's rules while the config named others, without a word.
    """
    if cfg.scaler_objects() != list(previous.scalers):
        fitted = "; ".join(map(repr, previous.scalers))
        raise ConfigError(
            f"scalers: the config's rules are not those the statistics at stats.path were fitted with ({fitted}); "
            f"{command} applies the statistics' rules: restore them in the config, or fit anew with these"
        )
    scope = previous.scope
    kept = {
        "scope": scope.kind,
        "key": scope.key,
        "batch_rows": scope.batch_rows,
        "min_batch_rows": scope.min_batch_rows,
        "inference_stats": scope.inference_stats,
        "exact": previous.exact is not None,
    }
    for name, value in kept.items():
        if name in cfg.stats.model_fields_set and getattr(cfg.stats, name) != value:
            raise ConfigError(
                f"stats.{name}: {getattr(cfg.stats, name)!r}, but the statistics at stats.path were fitted with "
                f"{name} {value!r}, which {command} keeps; remove stats.{name} or fit anew"
            )


def _check_reduce_dims(cfg: Config, previous: Model, command: str) -> None:
    """``transform`` and ``fit --update`` take an array's dimensions from the artifact: another ``input.reduce_dims`` is refused (it was ignored)."""
    given, fitted = cfg.input.reduce_dims, previous.meta.get("reduce_dims")
    if given is not None and fitted is not None and list(given) != list(fitted):
        raise ConfigError(
            f"input.reduce_dims: {list(given)!r}, but the statistics at stats.path were fitted over {list(fitted)!r}; "
            f"{command} takes the dimensions of the statistics: remove input.reduce_dims or fit anew"
        )


def _check_update_keys(previous: Model, source: Any) -> None:
    """``fit --update`` of a key-scope artifact needs the key column to hold keys of the artifact's type.

    Keys of another type would not merge with the fitted ones (the update
    failed after the fit pass, naming a fitted key).
    """
    import pandas as pd

    key = previous.scope.key
    if previous.groups is None or source.schema is None or key not in source.schema:
        return
    fitted = keys_family(previous.groups.keys)
    given = key_family(pd.api.types.pandas_dtype(source.schema[key]).kind)
    # merged as partial_fit merges them: integral floats as integers, a CSV's text keys and integers as the fitted type
    if fitted != given and {fitted, given} not in ({"integer", "float"}, {"integer", "text"}):
        raise ColumnError(
            f"stats.key: key column {key!r} is {source.schema[key]} ({given}) in the input, but the statistics at "
            f"stats.path have {fitted} keys; fit --update merges keys of one type: cast the column, or fit anew"
        )


def _check_plan(cfg: Config, *, writes_output: bool, writes_stats: bool = True) -> None:
    """Checks that need neither data nor files: supported options and path placement."""
    from . import io
    from .cluster import check_jobqueue_options

    check_jobqueue_options(cfg.cluster)
    if writes_output and cfg.output is None:
        raise ConfigError("output: required to write scaled data (add output.format and output.path)")
    if os.path.isdir(os.path.expanduser(cfg.stats.path)):
        inside = os.path.join(cfg.stats.path, "stats.json")
        beside = os.path.join(os.path.dirname(os.path.normpath(cfg.stats.path)), "stats.json")
        example = beside if cfg.output is not None and _overlaps(cfg.output.path, inside) else inside
        raise ConfigError(f"stats.path: {cfg.stats.path!r} is a folder; name the statistics file, e.g. {example!r}")
    from .artifact import replace_problem

    if writes_stats and (problem := replace_problem(cfg.stats.path)) is not None:
        raise ConfigError(f"stats.path: {problem}")
    placed = [("input.path", cfg.input.path)]
    if writes_output:
        assert cfg.output is not None
        io.check_paths(cfg.input.path, cfg.output.path)
        check_writable("output.path", cfg.output.path)
    if cfg.output is not None:  # also for fit: a later run with overwrite would delete the statistics
        placed.append(("output.path", cfg.output.path))
    check_writable("stats.path", cfg.stats.path)
    for key, other in placed:
        if _overlaps(other, cfg.stats.path):
            raise ConfigError(f"stats.path: {cfg.stats.path!r} overlaps {key} {other!r}; write the statistics outside it")


def _overlaps(folder: str, path: str) -> bool:
    from . import io

    try:
        io.check_paths(folder, path)
    except OutputError:
        return True
    return False


def check_writable(key: str, path: str) -> None:
    """The folder ``path`` goes into exists and is writable, or can be made in its nearest existing ancestor.

    ``key`` (``output.path``, ``--json``) names the setting in the :class:`ConfigError`.

    Checked before any work: found when writing, such a path failed after
    the whole fit pass.
    """
    folder = Path(os.path.expanduser(path)).absolute().parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{key}: {path!r} cannot be written: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path!r} cannot be written: the folder {str(folder)!r} is not writable (permissions, or a read-only filesystem)")


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


@contextlib.contextmanager
def _folders_removed_on_failure(folders: list[str]) -> Iterator[None]:
    """The folders (and their parents) missing now are removed again, if still empty, when the block fails.

    Writing the statistics or the output creates them; a failed job left
    them behind, empty.
    """
    missing: list[str] = []
    for folder in folders:
        while folder not in missing and not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
    try:
        yield
    except BaseException:
        for folder in sorted(missing, key=len, reverse=True):  # the deepest first
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


@contextlib.contextmanager
def _about_input(path: str) -> Iterator[None]:
    """A column or data error that speaks of "the data" (no rows to fit, a fitted column missing) names the input too."""
    try:
        yield
    except (ColumnError, DataError) as err:
        if type(err) not in (ColumnError, DataError) or path in str(err):
            raise
        raise type(err)(f"input.path {path!r}: {err}") from None


@contextlib.contextmanager
def _naming_the_file(source: _Input) -> Iterator[None]:
    """An infinity found in a table's column (named by its column only) also names the first input file holding one.

    Found by a second read of those columns, on the cluster still open, only
    when the error happens.
    """
    try:
        yield
    except NonFiniteError as err:
        if source.partition_files is None or source.schema is None or not err.names or err.file is not None:
            raise
        import dask

        columns = [c for c in err.names if c in source.schema]
        flags = dask.compute(*(dask.delayed(_holds_inf)(part) for part in source.data[columns].to_delayed())) if columns else ()
        hits = [i for i, hit in enumerate(flags) if hit]
        if not hits:
            raise
        raise err.in_file(source.partition_files[hits[0]]) from None


def _holds_inf(frame: Any) -> bool:
    import numpy as np

    return bool(np.isinf(frame.to_numpy(dtype="float64", na_value=np.nan)).any())


def _ensure_demo_input(cfg: Config, echo: Echo) -> None:
    demo = cfg.input.demo
    if demo is None or os.path.exists(cfg.input.path):
        return
    from .demo import write_demo_table

    echo(f"writing demo data ({demo.rows} rows, {demo.files} files) to {cfg.input.path}")
    write_demo_table(cfg.input.path, rows=demo.rows, files=demo.files, seed=demo.seed)


def _text_key(input_format: str, model: Model | None, key: Any = None) -> list[str]:
    """A CSV input's key column, read as text: a key is an identifier, and its text in the file is the key.

    At fit (no statistics yet; ``key``, the configured key column) and with
    statistics whose keys are text. Read as numbers, ``02134`` and ``2134``
    were one key, IDs beyond 2**53 that the sampled rows did not show were
    rounded into one, and the output's key column was rewritten (``2134.0``);
    inferred from a new file, a key column of ``007`` values came out as
    numbers, none of them a fitted key. Statistics keyed by numbers (fitted
    by an earlier scalepipe) keep reading the column as numbers.
    """
    if input_format != "csv":
        return []
    if model is None:
        return [] if key is None else [key]
    if model.groups is None:
        return []
    # integer keys too (fitted from Parquet, say): as float64, an ID beyond 2**53 was rounded onto another key
    return [model.scope.key] if keys_family(model.groups.keys) in ("text", "integer") else []


def _open_input(cfg: Config, text: list[str]) -> _Input:
    """The input, opened lazily: file listings, footers and headers are read, no data; ``text``: CSV columns read as text."""
    from . import io

    if cfg.input.format in TABLE_FORMATS:
        table = io.read_table(cfg.input.path, cfg.input.format, text=text)  # type: ignore[arg-type]
        frame = _key_as_text(table.frame, cfg.stats.key)
        return _Input(frame, table.paths, table.files, {c: str(t) for c, t in frame.dtypes.items()})
    ds = io.read_array(cfg.input.path, cfg.input.format, cfg.input.variables)  # type: ignore[arg-type]
    return _Input(ds, _array_files(cfg.input.path), None, None)


def _demo_input(cfg: Config) -> _Input:
    """The demo table ``input.demo`` would write, as an input of no files: what ``validate`` checks the rules against."""
    import dask.dataframe as dd

    from .demo import demo_frame

    frame = dd.from_pandas(demo_frame(2), npartitions=1)
    return _Input(frame, [], [], {c: str(t) for c, t in frame.dtypes.items()})


def _key_as_text(frame: Any, key: Any) -> Any:
    """``frame`` with an Arrow-backed key column (dates, decimals, ...) as text, which the artifact stores.

    Such columns are read as Arrow data to pass through unchanged
    (``io._arrow_backed``); a key of them is grouped and stored by its text,
    ``2020-01-01``, as it was when they were read as text. So is a
    dictionary (categorical) key: its values are text, and grouped as Arrow
    dictionaries the tables of two partitions failed to merge.
    """
    import pandas as pd

    if key is None or key not in frame.columns:
        return frame
    if not isinstance(frame._meta[key].dtype, pd.ArrowDtype):
        return frame
    return frame.assign(**{key: frame[key].astype("string")})


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

    if cfg.stats.key is not None and cfg.stats.key not in schema:
        raise ColumnError(f"stats.key: key column {cfg.stats.key!r} is not in the input (it has {', '.join(schema)})")
    if cfg.stats.key is not None and str(schema[cfg.stats.key]).startswith(("datetime", "timedelta", "period", "timestamp")):
        raise ColumnError(
            f"stats.key: key column {cfg.stats.key!r} has dtype {schema[cfg.stats.key]}; the statistics file stores keys "
            "as integers, floats, booleans or strings: write the column as one of those"
        )
    if cfg.input.columns is None:
        return list(schema)
    chosen: list[str] = []
    for pattern in cfg.input.columns:
        hits = [c for c in schema if fnmatch.fnmatchcase(c, pattern)]
        if not hits:
            raise ColumnError(f"input.columns: {pattern!r} matches no column of the input (it has {', '.join(schema)})")
        chosen += [c for c in hits if c not in chosen]
    if cfg.stats.key is not None and cfg.stats.key not in chosen:
        chosen.append(cfg.stats.key)
    for i, scaler in enumerate(cfg.scaler_objects()):
        for name in scaler.columns or ():
            if name in schema and name not in chosen:  # in the data, but not selected: "not found" would mislead
                raise ColumnError(
                    f"scalers[{i}] ({scaler.method}): column {name!r} is in the input but not selected by input.columns "
                    f"({', '.join(map(repr, cfg.input.columns))}); add it there or remove it from the rule"
                )
    return chosen


def _schema_view(cfg: Config, source: _Input, previous: Model | None) -> View:
    """A view of the input's features that reads no data (a table's empty meta frame)."""
    if source.schema is None:
        if previous is not None:
            return view_of(source.data, reduce_dims=previous.meta.get("reduce_dims"), feature_dims=previous.meta.get("feature_dims"))
        return view_of(source.data, reduce_dims=cfg.input.reduce_dims)
    columns = _fit_columns(cfg, source.schema) if previous is None else list(source.schema)
    return view_of(source.data._meta[columns])


def _check_columns(cfg: Config, source: _Input, previous: Model | None) -> None:
    """Match the input's columns against the rules, or against the artifact's features."""
    view = _schema_view(cfg, source, previous)
    if previous is None:
        features, _ = resolve_columns(view, cfg.scaler_objects(), exclude=_key_columns(cfg))
        _check_batches(cfg, view, features)
    else:
        view.positions(previous.feature_names)
        if previous.scope.key is not None and previous.scope.key not in view.names:
            raise ColumnError(f"stats.key: key column {previous.scope.key!r} of the artifact is not in the input")


def _check_batches(cfg: Config, view: View, features: list[Any]) -> None:
    """The partition scope's batching of the features, checked from the schema (an array's one data variable)."""
    if cfg.stats.scope == "partition":
        try:
            view.check_batches([f.name for f in features])
        except DataError as exc:
            raise ConfigError(f"stats.scope: {exc}") from None


def _key_columns(cfg: Config) -> list[str]:
    """The key column, which the key scope groups by and never scales."""
    return [cfg.stats.key] if cfg.stats.scope == "key" and cfg.stats.key is not None else []


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
    echo(f"fitting {len(source.files)} input file(s)" if source.schema is not None else f"fitting {cfg.input.path}")
    if previous is not None:  # the artifact's features, as transform takes them: input.columns is not used
        return previous.partial_fit(source.data, partition_labels=source.partition_files)
    fit_data = source.data if source.schema is None else source.data[_fit_columns(cfg, source.schema)]
    meta = {"config_hash": config_hash(cfg), "input_fingerprint": _fingerprint(source.files)}
    st = cfg.stats
    return fit(
        fit_data,
        cfg.scaler_objects(),
        reduce_dims=cfg.input.reduce_dims,
        scope=st.scope,
        batch_rows=st.batch_rows,
        min_batch_rows=st.min_batch_rows,
        inference_stats=st.inference_stats,
        key=st.key,
        partition_labels=source.partition_files,
        exact=st.exact,
        meta=meta,
    )


def _transform_and_write(
    cfg: Config, model: Model, source: _Input, mode: Mode, echo: Echo, on_commit: Callable[[], None]
) -> tuple[Any, Any]:
    """Scale the input and commit it, with whatever is counted in the same pass; ``on_commit`` runs once it is in place.

    A ``run`` in the partition scope scales each batch with its own
    statistics (training mode); ``transform`` applies the artifact's
    inference statistics. A global-scope ``run`` counts the report's
    histograms, and a key-scope job the rows whose key is new, alongside the
    write, so the input is read once.

    Returns
    -------
    manifest, histograms
        The output's manifest (``None`` for Zarr) and the histograms (or ``None``).
    """
    extras: dict[str, Any] = {}
    data = _as_written(cfg, model, source.data)
    if mode == "run" and model.scope.kind == "partition":
        scaled = model.transform(data, stats="batch")
    elif mode == "run" and cfg.report and source.schema is not None and model.scope.kind == "global":
        from .histograms import transform_with_histograms
        from .report import load_plotting_in_background

        load_plotting_in_background()  # the report draws them after this pass
        scaled, extras["histograms"] = transform_with_histograms(model, data)
    else:
        scaled = model.transform(data)
    if model.scope.kind == "key":
        unseen = model.unseen_rows(data)
        # a graph like the write's, so one compute runs both without materialising expressions
        extras["unseen"] = unseen.to_delayed() if hasattr(unseen, "to_delayed") else unseen
    manifest = _write_output(cfg, scaled, tuple(extras.values()), on_commit)
    values = dict(zip(extras, manifest.alongside)) if manifest is not None else {}
    if values.get("unseen"):
        echo(f"{int(values['unseen'])} row(s) had a {model.scope.key!r} value unseen at fit; scaled with the global statistics")
    return manifest, values.get("histograms")


def _as_written(cfg: Config, model: Model, frame: Any) -> Any:
    """``frame``, or for a table written in its input's format, the input again with the columns not scaled read verbatim.

    CSV: read as numbers, such a column came out reformatted (``007`` as
    ``7.0``, ``5`` as ``5.0``) and markers such as ``NA`` as blanks; read as
    text, the output repeats them. Parquet: through pandas' dtypes, a
    ``string`` column came out ``large_string``, a ``null`` one
    ``large_string``, and NaN as null; read as Arrow data, the output
    repeats them. The scaled columns and the key column keep their dtypes:
    the statistics apply to them.
    """
    data_format = cfg.input.format
    if data_format not in ("csv", "parquet") or cfg.output is None or cfg.output.format != data_format:
        return frame
    from . import io

    kept = {*model.feature_names, model.scope.key}
    verbatim = [c for c in frame.columns if c not in kept]
    if not verbatim:
        return frame
    table = io.read_table(cfg.input.path, data_format, text=_text_key(data_format, model), verbatim=verbatim)
    return _key_as_text(table.frame, model.scope.key)


def _write_output(cfg: Config, data: Any, alongside: tuple[Any, ...], on_commit: Callable[[], None]) -> Any:
    """Commit ``data`` at ``output.path`` (then ``on_commit``); the manifest of a table, ``None`` for Zarr."""
    from . import io

    assert cfg.output is not None
    if cfg.output.format in TABLE_FORMATS:
        return io.write_table(
            data,
            cfg.output.path,
            cfg.output.format,  # type: ignore[arg-type]
            overwrite=cfg.output.overwrite,
            durable=cfg.output.durable,
            alongside=alongside,
            on_commit=on_commit,
            **cfg.output.parquet_options(),
        )
    io.write_array(data, cfg.output.path, overwrite=cfg.output.overwrite, durable=cfg.output.durable, on_commit=on_commit)
    return None


def _save(model: Model, path: str | os.PathLike[str], named: str) -> None:
    """``model.save(path)``, with a failure reported as an :class:`OutputError` naming ``named``."""
    try:
        model.save(path)
    except OSError as exc:  # the writer's own OutputError names the temporary file: name the destination
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise OutputError(f"stats.path: writing the statistics to {named!r} failed: {cause.strerror or cause}") from exc


@contextlib.contextmanager
def _artifact_published_after(model: Model | None, path: str) -> Iterator[Callable[[], None]]:
    """Write ``model``'s artifact beside ``path`` now; move it to ``path`` when the block calls the function it gets (the output is in place), or when it succeeds.

    Writing first means a full disk fails the job before the output is
    committed; the move afterwards is an atomic rename, made right after the
    output's (an interrupt while the old output was being deleted left the
    new output with the old statistics).
    """
    if model is None:
        yield lambda: None
        return
    target = Path(os.path.expanduser(path))
    pending = target.with_name(f".{target.name}.pending-{uuid.uuid4().hex}")

    def publish() -> None:
        if pending.exists():
            os.replace(pending, target)

    try:
        _save(model, pending, path)
        yield publish
        publish()
    finally:
        pending.unlink(missing_ok=True)


def drift_job(
    stats_path: str,
    input_path: str,
    input_format: str,
    cluster: Any,
    *,
    thresholds: Any = None,
    scheduler: str | None = None,
    echo: Echo = _quiet,
) -> Any:
    """Compare new data with a statistics artifact, in one pass on the cluster.

    Returns
    -------
    scalepipe.drift.DriftResult
        Per-feature drift measures; ``flagged`` when a threshold is crossed.
    """
    from . import io
    from .cluster import open_cluster
    from .drift import drift_report
    from .report import histograms_path, load_histograms

    model = load(stats_path)
    if input_format not in TABLE_FORMATS:
        raise ConfigError(f"input.format: drift reads tables ({', '.join(TABLE_FORMATS)}), not {input_format!r} (arrays are not supported yet)")
    if model.meta.get("data_kind") in ARRAY_KINDS:
        raise DataError(
            f"the statistics at {stats_path!r} were fitted on array data ({model.meta['data_kind']}); drift compares "
            "tables only (arrays are not supported yet)"
        )
    source = io.read_table(input_path, input_format, text=_text_key(input_format, model))  # type: ignore[arg-type]
    frame = _key_as_text(source.frame, model.scope.key if model.groups is not None else None)
    with _about_input(input_path):
        view_of(frame._meta).positions(model.feature_names)
    if model.groups is not None:
        model.key_column(frame._meta)  # before the cluster starts
    reference = load_histograms(histograms_path(stats_path), model)
    opened = _Input(frame, source.paths, source.files, source.schema)
    with open_cluster(cluster, scheduler=scheduler, echo=echo, input_path=input_path), _naming_the_file(opened):
        echo(f"checking {len(source.paths)} input file(s) for drift")
        return drift_report(model, frame, thresholds, reference=reference)
