"""The ``scalepipe`` command line (click).

Subcommands import the pipeline lazily so ``scalepipe --help`` starts fast.
Every user-facing error is printed as one line ``error: ...`` naming the key,
file or column at fault, with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import click

from . import __version__

EXIT_ERROR = 1
EXIT_DRIFT = 3
EXIT_INTERRUPTED = 130


def _echo(quiet: bool) -> Callable[[str], None]:
    return (lambda _: None) if quiet else (lambda line: click.echo(line, err=True))


def _silence_dask_logs() -> None:
    """Leave a failure to our one line: no worker logs, no asyncio noise from a client closed mid-gather.

    Set before Dask is imported; worker processes inherit the environment.
    """
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _load_job_modules() -> None:
    """Import what a job runs on with the garbage collector off, then freeze those objects.

    Importing dask, distributed, pandas and numba creates hundreds of
    thousands of long-lived objects; full collections during the imports,
    and later ones sweeping those objects again, held the GIL for ~1.3 s of a
    10M-row ``scalepipe run`` (0.3 s after this). The command owns its
    process, so what the imports made can stay out of every later collection
    (:func:`gc.freeze`). Garbage they left (a first numba compilation leaves
    some cycles) is frozen with it: a bounded, one-time cost in a process
    that ends with the job, where collecting it first cost a full collection
    (0.3-0.5 s). The collector's previous state is restored.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401

        from . import pipeline  # noqa: F401
        from ._accel import numba_kernels

        numba_kernels("_kernels_numba")  # else loaded inside the first task, on a worker thread
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


#: Commands that only read and print: their reader leaving early is not an error.
_PRINTING_COMMANDS = ("inspect", "validate")


def _handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn exceptions into one-line messages and exit codes."""

    @functools.wraps(func)
    def wrapper(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        from .errors import ScalepipeError

        if not debug:
            _silence_dask_logs()
        previous = signal.signal(signal.SIGTERM, _interrupt)  # from the start: a job stopped while it loads exits 130 too
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as err:
            message = str(err) or "interrupted; an unfinished output or statistics file is never put in place"
            click.echo(f"error: {message}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # the reader of our output left (`scalepipe inspect ... | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
            # a command that only prints is done; a job that was stopped by it has failed
            sys.exit(0 if func.__name__ in _PRINTING_COMMANDS else EXIT_ERROR)
        except click.ClickException:
            raise  # a usage error: click prints it with the usage line and exits 2
        except ScalepipeError as err:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {' '.join(str(err).split())}", err=True)
            sys.exit(EXIT_ERROR)
        except Exception as err:  # an unexpected failure: still one line unless --debug
            if debug:
                traceback.print_exc()
            message = " ".join(str(err).split()) or type(err).__name__
            hint = "" if debug else " (run with --debug for the traceback)"
            click.echo(f"error: {type(err).__name__}: {message}{hint}", err=True)
            sys.exit(EXIT_ERROR)
        finally:
            if previous is not None:  # the caller's again (entry ignores it while the process exits)
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _check_overrides(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--set`` items not of the form ``KEY.PATH=VALUE`` are a usage error (exit 2), before the config is read."""
    if not values:
        return values
    from .config import split_override

    for item in values:
        try:
            split_override(item)
        except ValueError as err:
            raise click.BadParameter(f"{item!r}: {err}", ctx=ctx, param=param) from None
    return values


def _job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("config", type=click.Path()),
            click.option("--scheduler", metavar="ADDRESS", help="Connect to this Dask scheduler (tcp://host:8786)."),
            click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", callback=_check_overrides, help="Override a config value (repeatable)."),
            click.option("--quiet", "-q", is_flag=True, help="No progress output."),
            click.option("--debug", is_flag=True, help="Show tracebacks."),
        ]
    ):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalepipe")
def main() -> None:
    """Exact, one-pass feature scaling on Dask: fit statistics, persist them, scale data."""


def entry() -> None:
    """The ``scalepipe`` command (console script and ``python -m scalepipe``): :func:`main`, then an exit no signal interrupts.

    Once the command is over, a SIGTERM or Ctrl-C while the process exits
    (closing threads, flushing) is ignored: a SIGTERM right after a job's
    "done" killed it with exit 143. Not in :func:`main` itself, which also
    runs inside other programs (click's test runner).
    """
    try:
        main()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM (a scheduler or container stopping the job) cleans up as Ctrl-C does.

    It re-raises as SIGINT, so the cluster's SIGINT handler (which makes sure
    the interrupt is not swallowed inside distributed's callbacks) applies;
    where SIGINT is ignored (a job started in the background by a
    non-interactive shell, ``cmd &`` in a script; some batch launchers) it
    interrupts directly, since a SIGINT would be ignored too (while the
    cluster runs, the cluster's handler takes SIGTERM itself).
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _run(
    mode: str,
    config: str,
    scheduler: str | None,
    overrides: tuple[str, ...],
    quiet: bool,
    update: bool = False,
    profile: str | None = None,
) -> None:
    from .config import load_config

    cfg = load_config(config, overrides)  # a config error is reported before the heavy imports
    _load_job_modules()
    import dask

    from .pipeline import run_job

    if quiet:  # zarr's note on text coordinates, on every such output: -q leaves errors only
        warnings.filterwarnings("ignore", message=r".*does not have a Zarr V3 specification")
    with dask.config.set({"scalepipe.progress": not quiet and sys.stdout.isatty()}):
        result = run_job(cfg, mode, scheduler=scheduler, update=update, profile=profile, echo=_echo(quiet))  # type: ignore[arg-type]
    if quiet:
        return
    if cfg.report and mode != "transform":
        for line in _table(result.model):
            click.echo(line)
    parts = [f"{len(result.model.features)} features"]
    if result.rows_written is not None:
        parts.insert(0, f"{result.rows_written} rows")
    if result.stats_path:
        parts.append(f"statistics -> {result.stats_path}")
    if result.output_path:
        parts.append(f"output -> {result.output_path}")
    click.echo(f"done in {result.seconds:.1f}s: " + ", ".join(parts))


_PROFILE = click.option(
    "--profile", type=click.Path(dir_okay=False), metavar="HTML", help="Save Dask's performance report of the job here."
)


@main.command()
@_job_options
@_PROFILE
@_handle_errors
def run(config: str, scheduler: str | None, overrides: tuple[str, ...], quiet: bool, profile: str | None) -> None:
    """Fit, persist the statistics, transform and write the output."""
    _run("run", config, scheduler, overrides, quiet, profile=profile)


@main.command()
@_job_options
@click.option("--update", is_flag=True, help="Merge the new data into the existing statistics (partial_fit).")
@_PROFILE
@_handle_errors
def fit(config: str, scheduler: str | None, overrides: tuple[str, ...], quiet: bool, update: bool, profile: str | None) -> None:
    """Fit and persist the statistics only."""
    _run("fit", config, scheduler, overrides, quiet, update, profile)


@main.command()
@_job_options
@_handle_errors
def transform(config: str, scheduler: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Apply the persisted statistics (stats.path) to the input and write the output."""
    _run("transform", config, scheduler, overrides, quiet)


@main.command()
@click.argument("config", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", callback=_check_overrides, help="Override a config value (repeatable).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def validate(config: str, overrides: tuple[str, ...]) -> None:
    """Check the config and the input's schema without computing."""
    from .config import load_config
    from .pipeline import validate_job

    lines, warnings = validate_job(load_config(config, overrides))
    for line in lines:
        click.echo(line)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config}: ok")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isinf(value) else f"{value:.6g}"
    return str(value)


@main.command()
@click.argument("stats", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def inspect(stats: str, as_json: bool) -> None:
    """Print the statistics and parameters of a statistics file as a table."""
    from .model import load

    model = load(stats)
    if as_json:
        from .artifact import encode_floats

        rows = [{k: encode_floats([v])[0] if isinstance(v, float) else v for k, v in row.items()} for row in model.summary()]
        click.echo(json.dumps(rows, indent=1, default=str, allow_nan=False))  # infinities as strings, as in the artifact
        return
    for line in _table(model):
        click.echo(line)
    meta = model.meta
    click.echo(
        f"\n{len(model.features)} features, {len(model.passthrough)} passthrough; "
        f"created {meta.get('created')}; "
        + (f"config {meta['config_hash']}" if meta.get("config_hash") else "fitted through the Python API (no config)")
    )


def _table(model: Any) -> list[str]:
    """Per feature: method, count, NaNs, min, max, mean, std and the affine parameters, aligned."""
    columns = ["feature", "method", "count", "nan", "min", "max", "mean", "std", "center", "scale", "offset", "constant"]
    table = [[_fmt(r[c]) for c in columns] for r in model.summary()]
    widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(columns)]
    return ["  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip() for t in [columns, *table]]


def _check_target(option: str, target: str, stats: str, suffixes: tuple[str, ...]) -> None:
    """Refuse to write ``target`` over the statistics, their histograms, or another kind of file."""
    from .errors import OutputError
    from .report import histograms_path

    if os.path.realpath(target) in {os.path.realpath(p) for p in (stats, histograms_path(stats))}:
        raise OutputError(f"{option} {target!r} is the statistics file or its histograms; write elsewhere")
    if os.path.exists(target) and not target.lower().endswith(suffixes):
        raise OutputError(f"{option} {target!r} exists and is not a {' or '.join(suffixes)} file; write elsewhere")
    from .pipeline import check_writable

    check_writable(option, target)  # before the work (a path under a file failed after the whole pass)


@main.command()
@click.argument("stats", type=click.Path())
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Where to write the HTML (default: beside STATS).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def report(stats: str, output: str | None) -> None:
    """Rebuild the HTML report of a statistics file."""
    from .artifact import write_text_atomic
    from .report import build_report_from_stats, report_path

    target = output or str(report_path(stats))
    if output is not None:
        _check_target("--output", output, stats, (".html", ".htm"))
    write_text_atomic(target, build_report_from_stats(stats))
    click.echo(f"report -> {target}")


@main.command()
@click.argument("config", type=click.Path(), required=False)
@click.option("--stats", "stats_path", type=click.Path(dir_okay=False), help="Statistics file (default: the config's stats.path).")
@click.option("--input", "input_path", help="New data (default: the config's input.path).")
@click.option("--format", "input_format", type=click.Choice(["parquet", "csv"]), help="Format of --input (default: the CONFIG's input.format, else parquet).")
@click.option("--threshold", "thresholds", multiple=True, metavar="NAME=VALUE", help="Override a drift threshold, or NAME=off (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the result as JSON here.")
@click.option("--scheduler", metavar="ADDRESS", help="Connect to this Dask scheduler (tcp://host:8786).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", callback=_check_overrides, help="Override a config value (repeatable).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@_handle_errors
def drift(
    config: str | None,
    stats_path: str | None,
    input_path: str | None,
    input_format: str | None,
    thresholds: tuple[str, ...],
    json_path: str | None,
    scheduler: str | None,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Compare new data with fitted statistics; exit 3 when drift crosses a threshold."""
    from .config import ClusterConfig, load_config
    from .drift import DriftThresholds
    from .errors import ConfigError, ParameterError

    if overrides and not config:
        raise ConfigError("drift: --set changes a CONFIG; give one, or drop --set")
    cfg = load_config(config, overrides) if config else None
    stats_path = stats_path or (cfg.stats.path if cfg else None)
    input_path = input_path or (cfg.input.path if cfg else None)
    if stats_path is None or input_path is None:
        raise click.UsageError("give a CONFIG, or both --stats and --input")
    fmt = input_format or (cfg.input.format if cfg else "parquet")
    try:
        limits = DriftThresholds.from_overrides(thresholds)
    except ParameterError as err:
        raise click.BadParameter(str(err), param_hint="'--threshold'") from None  # a usage error (exit 2)
    if json_path:
        _check_target("--json", json_path, stats_path, (".json",))
    _load_job_modules()  # after the arguments are checked: their errors come at once
    from . import io
    from .errors import OutputError
    from .pipeline import drift_job

    if json_path:
        try:
            io.check_paths(input_path, json_path)  # never into the input (its folder, or a glob's fixed prefix)
        except OutputError as err:
            raise OutputError(f"--json {json_path!r}: {err}") from None

    result = drift_job(
        stats_path,
        input_path,
        fmt,
        cfg.cluster if cfg else ClusterConfig(),
        thresholds=limits,
        scheduler=scheduler,
        echo=_echo(quiet),
    )
    click.echo(result.table())
    if json_path:
        result.write_json(json_path)
    if result.flagged:
        sys.exit(EXIT_DRIFT)
