"""The job's YAML config: validated models, safe loading, one-line errors.

A config is read with PyYAML's safe loader (plain data only: no Python tags),
checked against the pydantic models below (every section rejects unknown
keys), and any problem is reported as one :class:`~scalepipe.errors.ConfigError`
line naming the file, the key path and the line::

    configs/job.yaml: scalers[1].feature_range: must be two finite numbers [a, b] with a < b, got (1, 0) (line 12)

Scaler rules are checked by :func:`scalepipe.methods.scaler_from_dict`, the same
code that builds them, and stored as its canonical plain-data form (defaults
filled), so :func:`config_hash` covers what will run.

This module imports no Dask; ``cluster.memory_limit`` is checked with
``dask.utils.parse_bytes``, imported when that check runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import re
import reprlib
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from .codecs import ParquetCodec, compression_problem
from .errors import ConfigError, ParameterError
from .methods import METHODS, Scaler, scaler_from_dict

__all__ = [
    "ClusterConfig",
    "Config",
    "DemoConfig",
    "InputConfig",
    "OutputConfig",
    "SecurityConfig",
    "StatsConfig",
    "config_hash",
    "load_config",
    "parse_config",
]

#: A position in the config: mapping keys and list indices, e.g. ``("scalers", 1, "eps")``.
KeyPath = tuple[str | int, ...]

TABLE_FORMATS = ("parquet", "csv")
ARRAY_FORMATS = ("zarr", "netcdf")

# Strict: YAML already types its values, so a quoted "2" for n_workers or a
# boolean for an integer is a mistake to report, not a value to coerce.
_STRICT = ConfigDict(strict=True)
_SECTION = ConfigDict(extra="forbid", strict=True, frozen=True)

NonEmptyStr = Annotated[str, Field(min_length=1)]
NonEmptyList = Annotated[list[NonEmptyStr], Field(min_length=1)]


class _FieldError(ValueError):
    """A complaint about ``path``, relative to the section or value being checked."""

    def __init__(self, path: KeyPath, detail: str) -> None:
        super().__init__(detail)
        self.path = path
        self.detail = detail


def _without_file_scheme(path: str) -> str:
    """``file:///data/x`` as ``/data/x``, the local path every reader and check takes (other schemes are refused there)."""
    if not path.startswith("file://"):
        return path
    if len(path) == len("file://"):
        raise _FieldError((), "'file://' names no path; give a local path")
    return path[len("file://") :]


#: A local path; ``file://`` is accepted and removed.
LocalPath = Annotated[str, Field(min_length=1), AfterValidator(_without_file_scheme)]


def _unused(name: str, value: object, needs: str, current: str) -> _FieldError:
    """The error for a setting that has no effect with the current settings."""
    return _FieldError((name,), f"only used with {needs} ({current}), got {_brief(value)}; remove it or set {needs}")


class SecurityConfig(BaseModel):
    """TLS files for ``tls://`` connections (``distributed.security.Security``).

    Attributes
    ----------
    ca_file, cert_file
        Paths of the certificate authority and of this client's certificate.
    key_file
        Path of the client's private key; ``None`` when it is in ``cert_file``.
    require_encryption
        Refuse unencrypted connections.
    """

    model_config = _SECTION

    ca_file: NonEmptyStr
    cert_file: NonEmptyStr
    key_file: NonEmptyStr | None = None
    require_encryption: bool = True


class ClusterConfig(BaseModel):
    """Where the work runs: an embedded ``LocalCluster``, SLURM, or a running scheduler.

    Attributes
    ----------
    kind
        ``"local"`` (``distributed.LocalCluster``) or ``"slurm"`` (``dask_jobqueue``).
    address
        A running scheduler (``tcp://host:8786``, ``tls://...``) to connect to
        instead of starting a cluster.
    n_workers, threads_per_worker, processes, memory_limit, dashboard_address
        ``LocalCluster`` settings; ``memory_limit`` is a size (``"4GiB"``,
        ``"500MB"``), a number of bytes, or ``"auto"``; a ``None`` dashboard
        address disables the dashboard. ``processes`` is false by default:
        the workers are threads of the scalepipe process (on 2 cores they
        fitted and wrote Parquet as fast or faster than 2 worker processes,
        with less memory; see ``bench/``); true starts worker processes, which
        a nanny restarts after a crash or an out-of-memory kill.
        ``memory_limit`` applies to worker processes only: an in-process
        worker would measure the whole scalepipe process against it and,
        once over, pause for good.
    security
        TLS settings, or ``None``.
    jobqueue
        Keyword arguments for ``dask_jobqueue.SLURMCluster`` (``kind: slurm`` only).
    """

    model_config = _SECTION

    kind: Literal["local", "slurm"] = "local"
    address: NonEmptyStr | None = None
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = False
    memory_limit: str | int = "4GiB"
    dashboard_address: str | None = "127.0.0.1:0"
    security: SecurityConfig | None = None
    jobqueue: dict[str, Any] = Field(default_factory=dict)

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _check_memory_limit(cls, value: object) -> object:
        return _checked_byte_size(value)

    @model_validator(mode="after")
    def _check_jobqueue(self) -> Self:
        if self.jobqueue and self.kind != "slurm":
            raise _unused("jobqueue", self.jobqueue, "kind: slurm", f"kind is {self.kind!r}")
        return self


def _checked_byte_size(value: object) -> object:
    """``value`` unchanged if Dask reads it as a memory size (or it is ``"auto"``)."""
    if value == "auto":
        return value
    problem = _FieldError((), f"expected a size like '4GiB' or '500MB', a number of bytes, or 'auto', got {_brief(value)}")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise problem
    if isinstance(value, str) and not re.match(r"\s*[0-9.]", value):
        raise problem  # parse_bytes("") and parse_bytes("MB") are 1 and 1e6, not errors
    from dask.utils import parse_bytes  # importing the config must not import Dask

    try:
        size = parse_bytes(value)
    except ValueError:
        raise problem from None
    if size < 0:
        raise problem
    return value


class DemoConfig(BaseModel):
    """Synthetic quickstart data (:func:`scalepipe.demo.write_demo_table`), written to a missing input path.

    Attributes
    ----------
    rows, files, seed
        The table's size, the number of Parquet files, and the random seed.
    """

    model_config = _SECTION

    rows: int = Field(100_000, ge=1)
    files: int = Field(8, ge=1)
    seed: int = 0


class InputConfig(BaseModel):
    """The data to fit (and to transform).

    Attributes
    ----------
    format
        ``"parquet"`` or ``"csv"`` (tables), ``"zarr"`` or ``"netcdf"`` (arrays).
    path
        A file, a directory, a glob or a URL.
    columns
        Names or glob patterns of the columns to read; ``None`` for all.
    reduce_dims
        Arrays only: the dimensions to reduce over; statistics are kept per
        coordinate of the others.
    variables
        Arrays only: the data variables to read; ``None`` for all.
    demo
        Parquet only: write synthetic data to ``path`` when it does not exist.
    """

    model_config = _SECTION

    format: Literal["parquet", "csv", "zarr", "netcdf"]
    path: LocalPath
    columns: NonEmptyList | None = None
    reduce_dims: NonEmptyList | None = None
    variables: NonEmptyList | None = None
    demo: DemoConfig | None = None

    @model_validator(mode="after")
    def _check_format_options(self) -> Self:
        if self.format in TABLE_FORMATS:
            for name in ("reduce_dims", "variables"):
                if getattr(self, name) is not None:
                    raise _unused(name, getattr(self, name), "format: zarr or netcdf", f"format is {self.format!r}")
        elif self.columns is not None:
            raise _FieldError(
                ("columns",),
                f"only used with format: parquet or csv (format is {self.format!r}), got {_brief(self.columns)}; "
                "an array input selects its data variables with variables",
            )
        if self.demo is not None and self.format != "parquet":
            raise _unused("demo", self.demo.model_dump(), "format: parquet", f"format is {self.format!r}")
        return self


class StatsConfig(BaseModel):
    """How the statistics are computed and where they are saved.

    Attributes
    ----------
    scope
        ``"global"``, ``"partition"`` (each batch scaled with its own
        statistics) or ``"key"`` (statistics per value of ``key``).
    key
        The key column; required with ``scope: key``, an error otherwise.
    batch_rows
        ``scope: partition`` only: rows per batch; ``None`` for one batch per partition.
    min_batch_rows
        The fewest rows a batch may have.
    inference_stats
        ``scope: partition``: which statistics a loaded model uses,
        ``"running"`` (moving average) or ``"global"``.
    exact
        Sum with an exact superaccumulator.
    path
        Where the statistics artifact is written.
    """

    model_config = _SECTION

    scope: Literal["global", "partition", "key"] = "global"
    key: NonEmptyStr | None = None
    batch_rows: Annotated[int, Field(gt=0)] | None = None
    min_batch_rows: int = Field(2, ge=1)
    inference_stats: Literal["running", "global"] = "running"
    exact: bool = False
    path: LocalPath = "artifacts/stats.json"

    @model_validator(mode="after")
    def _check_scope_options(self) -> Self:
        if self.scope == "key" and self.key is None:
            raise _FieldError(("key",), "required with scope: key; name the column whose values get their own statistics")
        if self.scope != "key" and self.key is not None:
            raise _unused("key", self.key, "scope: key", f"scope is {self.scope!r}")
        if self.scope != "partition" and self.batch_rows is not None:
            raise _unused("batch_rows", self.batch_rows, "scope: partition", f"scope is {self.scope!r}")
        if self.scope != "global" and self.exact:
            raise _unused("exact", self.exact, "scope: global", f"scope is {self.scope!r}")
        if self.batch_rows is not None and self.batch_rows < self.min_batch_rows:
            raise _FieldError(
                ("batch_rows",),
                f"{self.batch_rows} is below min_batch_rows ({self.min_batch_rows}): every batch would be refused; "
                "raise batch_rows or lower min_batch_rows",
            )
        for name in ("min_batch_rows", "inference_stats"):  # set to other than the default (a dumped config has them all)
            if self.scope != "partition" and getattr(self, name) != type(self).model_fields[name].default:
                raise _unused(name, getattr(self, name), "scope: partition", f"scope is {self.scope!r}")
        return self


class OutputConfig(BaseModel):
    """Where the scaled data is written.

    Attributes
    ----------
    format
        ``"parquet"`` or ``"csv"`` for a table input, ``"zarr"`` for an array input.
    path
        The destination.
    overwrite
        Replace an existing destination.
    compression
        Parquet only: the codec of the data pages (see
        :data:`scalepipe.codecs.ParquetCodec`).
    compression_level
        Parquet with ``zstd``, ``gzip`` or ``brotli`` only: the codec's level
        (pyarrow's default for the codec when ``None``).
    durable
        Flush the output to disk before it is moved into place (see
        :func:`scalepipe.io.write_table`).
    """

    model_config = _SECTION

    format: Literal["parquet", "zarr", "csv"]
    path: LocalPath
    overwrite: bool = False
    compression: ParquetCodec = "snappy"
    compression_level: int | None = None
    durable: bool = True

    @field_validator("compression", mode="before")
    @classmethod
    def _check_codec(cls, value: object) -> object:
        problem = compression_problem(value, None)
        if problem is not None:
            raise _FieldError((), problem[1])
        return value

    @model_validator(mode="after")
    def _check_compression(self) -> Self:
        if self.format != "parquet":
            for name in ("compression", "compression_level"):
                if name in self.model_fields_set:
                    raise _unused(name, getattr(self, name), "format: parquet", f"format is {self.format!r}")
        given = "compression" in self.model_fields_set
        problem = compression_problem(self.compression, self.compression_level, codec_given=given)
        if problem is not None:
            raise _FieldError((problem[0],), problem[1])
        return self

    def parquet_options(self) -> dict[str, Any]:
        """The codec settings as keyword arguments of :func:`scalepipe.io.write_table` (``{}`` for CSV)."""
        if self.format != "parquet":
            return {}
        return {"compression": self.compression, "compression_level": self.compression_level}


def _checked_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """``rule`` in canonical form (``Scaler.to_dict``: defaults filled), or a :class:`_FieldError`."""
    name = rule.get("method")
    if not isinstance(name, str):
        problem = "required key is missing" if "method" not in rule else f"expected a method name, got {_brief(name)}"
        raise _FieldError(("method",), f"{problem} (valid methods: {', '.join(sorted(METHODS))})")
    if name in METHODS:
        _check_parameters(name, rule)
    try:
        return scaler_from_dict(rule).to_dict()
    except ParameterError as exc:
        raise _FieldError((exc.field,), exc.detail) from None


def _check_parameters(method: str, rule: Mapping[str, Any]) -> None:
    """Reject keys that are not parameters of ``method``, and values of the wrong type."""
    checks = _parameter_checks(METHODS[method])
    for key, value in rule.items():
        if key == "method":
            continue
        if key not in checks:
            raise _FieldError((key,), _unknown_key(key, ["method", *checks], f"for method {method!r}"))
        check = checks[key]
        if check is None:
            continue
        try:
            check.validate_python(value)
        except ValidationError as exc:
            loc, detail = _describe(exc.errors()[0])
            raise _FieldError((key, *loc), detail) from None


@functools.cache
def _parameter_checks(cls: type[Scaler]) -> dict[str, TypeAdapter[Any] | None]:
    """A strict type check per parameter of ``cls``; ``None`` where the scaler checks alone.

    ``columns`` is left to the scaler, which also takes a single name. A fixed
    length tuple is checked as a list (YAML has no tuples) of any length, so
    that the scaler reports a wrong length in its own words.
    """
    hints = typing.get_type_hints(cls)
    checks: dict[str, TypeAdapter[Any] | None] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if typing.get_origin(hint) is tuple:
            hint = list[typing.get_args(hint)[0]]  # type: ignore[valid-type]
        checks[field.name] = None if field.name == "columns" else TypeAdapter(hint, config=_STRICT)
    return checks


ScalerRule = Annotated[dict[str, Any], AfterValidator(_checked_rule)]


@dataclasses.dataclass(frozen=True, eq=False)
class _Source:
    """Where a config's keys were set: their lines in the file, and the ``--set`` overrides.

    Not part of what the config says: every two are equal, so configs read
    from differently laid out files compare by their values.
    """

    lines: Mapping[KeyPath, int]
    origins: Mapping[KeyPath, str]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Source)

    def __hash__(self) -> int:
        return 0


class Config(BaseModel):
    """A validated job config; build it with :func:`load_config` or :func:`parse_config`.

    Attributes
    ----------
    version
        The config format's version; 1.
    cluster, input, stats, output
        The sections; ``output`` is ``None`` for a fit-only job.
    scalers
        The scaler rules, first match wins, each in canonical form
        (:meth:`scalepipe.methods.Scaler.to_dict`: ``method`` first, defaults filled).
    report
        Print a report of the fitted statistics.
    """

    model_config = _SECTION

    version: int
    _source: _Source = PrivateAttr(default_factory=lambda: _Source({}, {}))
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    input: InputConfig
    stats: StatsConfig = Field(default_factory=StatsConfig)
    scalers: Annotated[list[ScalerRule], Field(min_length=1)]
    output: OutputConfig | None = None
    report: bool = True

    def whereabouts(self, key: str) -> str:
        """Where the config sets ``key`` (``stats.key``, ``scalers[0].columns``), to end an error message with.

        `` (line N)`` (of the key, or of its section where the file leaves
        the key out), `` (from --set '...')``, or ``""`` (a config not read
        from YAML).
        """
        path = tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^.\[\]]+", key))
        return _whereabouts(path, self._source.lines, self._source.origins)[1]

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: int) -> int:
        if value != 1:
            raise _FieldError((), f"unsupported config version {value!r}; this scalepipe reads version 1")
        return value

    @model_validator(mode="after")
    def _check_formats(self) -> Self:
        if self.stats.scope == "key" and self.input.format in ARRAY_FORMATS:
            raise _FieldError(
                ("stats", "scope"),
                f"'key' needs a table input (parquet or csv), but input.format is {self.input.format!r}; "
                "an array input takes the global or partition scope",
            )
        if self.output is None:
            return self
        fmt, source = self.output.format, self.input.format
        if fmt in ARRAY_FORMATS and source in TABLE_FORMATS:
            problem = f"{fmt!r} needs an array input, but input.format is {source!r}; write parquet or csv"
            raise _FieldError(("output", "format"), problem)
        if fmt in TABLE_FORMATS and source in ARRAY_FORMATS:
            raise _FieldError(("output", "format"), f"{fmt!r} needs a table input, but input.format is {source!r}; write zarr")
        return self

    def scaler_objects(self) -> list[Scaler]:
        """The scaler rules as :class:`~scalepipe.methods.Scaler` objects, in order."""
        return [scaler_from_dict(rule) for rule in self.scalers]


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Read and validate the YAML config at ``path``.

    Parameters
    ----------
    path
        The config file (UTF-8 YAML).
    overrides
        ``--set`` strings ``key.path=value``: list indices are numbers in the
        path (``scalers.0.feature_range=[-1,1]``), the value is read as YAML,
        and a missing key of a mapping is created.

    Raises
    ------
    ConfigError
        The file cannot be read, is not YAML, an override is malformed, or the
        config is invalid; one line naming the file, key path and line.
    """
    source = os.fsdecode(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file ({exc.strerror or exc})") from exc
    return parse_config(text, source, overrides)


def parse_config(text: str, source: str = "<string>", overrides: Sequence[str] = ()) -> Config:
    """Validate a config given as YAML text; ``source`` names it in error messages.

    See :func:`load_config` for ``overrides`` and the errors raised.

    Examples
    --------
    >>> cfg = parse_config(
    ...     "version: 1\\ninput: {format: csv, path: a.csv}\\nscalers: [{method: minmax}]",
    ...     overrides=["scalers.0.feature_range=[-1, 1]"],
    ... )
    >>> cfg.scaler_objects()[0].feature_range
    (-1.0, 1.0)
    """
    data, lines = _load_yaml(text, source)
    if not isinstance(data, dict):
        got = "an empty document" if data is None else _brief(data)
        keys = ", ".join(Config.model_fields)
        raise ConfigError(f"{source}: the top level must be a mapping of config keys ({keys}), got {got}")
    origins = _apply_overrides(data, overrides, source, lines)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_first_problem(exc, source, lines, origins)) from None
    cfg._source = _Source(lines, origins)
    return cfg


def config_hash(cfg: Config) -> str:
    """``"sha256:<hex>"`` of what determines the statistics: ``input``, ``stats``, ``scalers``.

    Key order, comments, defaults written out or left implicit, and YAML
    spellings of one value do not change the hash; nor do the cluster, the
    output or the report, which do not change the statistics.
    """
    relevant = cfg.model_dump(mode="json", include={"input", "stats", "scalers"})
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-5`` and ``1.0e5`` as floats.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent, so
    it reads ``eps: 1e-5`` as the string ``'1e-5'``; YAML 1.2 and JSON read a
    float, as users expect.
    """


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _load_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """The document's data and the line of each key path in it.

    This is ``yaml.safe_load``'s own sequence (compose, then construct with the
    safe constructor), with the node tree kept to find line numbers.
    """
    loader = _SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = _key_lines(root, source) if root is not None else {}
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {_yaml_problem(exc)}") from exc
    finally:
        loader.dispose()
    return data, lines


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what PyYAML found wrong, and where."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    what = ": ".join(part for part in (exc.context, exc.problem) if part)
    if isinstance(exc, yaml.constructor.ConstructorError):
        what += " (a config holds plain data: no Python or custom tags)"
    mark = exc.problem_mark or exc.context_mark
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what


def _key_lines(root: yaml.Node, source: str) -> dict[KeyPath, int]:
    """The line of every key and list item under ``root``; a repeated key is a ConfigError."""
    lines: dict[KeyPath, int] = {}
    for path, line in _node_lines(root, (), set()):
        if path in lines:
            raise ConfigError(f"{source}: {_dotted(path)}: duplicate key (first on line {lines[path]}) (line {line})")
        lines[path] = line
    return lines


def _node_lines(node: yaml.Node, path: KeyPath, seen: set[int]) -> Iterator[tuple[KeyPath, int]]:
    """``(key path, line)`` of the keys and items under ``node``, in document order."""
    if id(node) in seen:
        return  # an alias: its keys are reported where its anchor is, once
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                child = (*path, key.value)
                yield child, key.start_mark.line + 1
                yield from _node_lines(value, child, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield (*path, index), item.start_mark.line + 1
            yield from _node_lines(item, (*path, index), seen)


def _apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], source: str, lines: dict[KeyPath, int]
) -> dict[KeyPath, str]:
    """Apply ``--set`` overrides to ``data`` in order; return the override that set each path.

    The lines of the values an override replaces are dropped from ``lines``.
    """
    origins: dict[KeyPath, str] = {}
    for override in overrides:
        try:
            path = _set_value(data, *_parsed_override(override, source))
        except _FieldError as exc:
            where = f"{_dotted(exc.path)}: " if exc.path else ""
            raise ConfigError(f"{source}: --set {override!r}: {where}{exc.detail}") from None
        for stale in [p for p in lines if p[: len(path)] == path]:
            del lines[stale]
        origins[path] = override
    return origins


def split_override(override: str) -> tuple[list[str], str]:
    """The dotted keys and the raw value of a ``--set`` item ``key.path=value``.

    Raises
    ------
    ValueError
        Not of that form (no ``=``, or an empty key).
    """
    key, sep, raw = override.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ValueError("expected KEY.PATH=VALUE, e.g. output.overwrite=true or scalers.0.feature_range=[-1,1]")
    return keys, raw


def _parsed_override(override: str, source: str) -> tuple[list[str], Any]:
    """The dotted keys and the YAML value of ``key.path=value``."""
    try:
        keys, raw = split_override(override)
    except ValueError as exc:
        raise _FieldError((), str(exc)) from None
    try:
        value, _ = _load_yaml(raw, f"{source}: --set {override!r}")
    except ConfigError as err:
        if raw.strip()[:1] in tuple("*&@`%|>"):  # a glob, say, which YAML reads as an alias
            raise ConfigError(f"{err} (the value is read as YAML: quote it, --set '{'.'.join(keys)}=\"{raw.strip()}\"')") from None
        raise
    return keys, value


def _set_value(data: dict[str, Any], keys: Sequence[str], value: Any) -> KeyPath:
    """Set ``value`` at ``keys`` in ``data``, creating missing mappings; return its key path."""
    node: Any = data
    path: KeyPath = ()
    for depth, key in enumerate(keys):
        if isinstance(node, list):
            step: str | int = _list_index(node, key, path)
        elif isinstance(node, dict):
            step = key
        else:
            raise _FieldError(path, f"is {_brief(node)}, not a mapping or a list, so it has no {key!r}")
        path = (*path, step)
        if depth == len(keys) - 1:
            node[step] = value
        else:
            if isinstance(node, dict) and node.get(step) is None:
                node[step] = {}
            node = node[step]
    return path


def _list_index(items: list[Any], key: str, path: KeyPath) -> int:
    """``key`` as an index of ``items`` (at ``path``), or a :class:`_FieldError`."""
    if not re.fullmatch(r"[0-9]+", key):
        raise _FieldError(path, f"is a list, so {key!r} must be an index (0 to {len(items) - 1})")
    if int(key) >= len(items):
        raise _FieldError(path, f"index {int(key)} is out of range: the list has {len(items)} item(s)")
    return int(key)


def _first_problem(exc: ValidationError, source: str, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str]) -> str:
    """The first problem in document order, as one line, with a count of the others.

    A missing key beside an unknown one comes after the others: it is most
    often that key misspelled, whose message says "did you mean".
    """
    errors = exc.errors()
    misspelled = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "extra_forbidden"}
    problems = []
    for error in errors:
        loc, detail = _describe(error)
        line, where = _whereabouts(loc, lines, origins)
        later = error["type"] == "missing" and tuple(error["loc"][:-1]) in misspelled
        problems.append((later, math.inf if line is None else line, loc, detail, where))
    problems.sort(key=lambda p: p[:2])
    *_, loc, detail, where = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{source}: {_dotted(loc)}: {detail}{where}{more}"


def _whereabouts(loc: KeyPath, lines: Mapping[KeyPath, int], origins: Mapping[KeyPath, str]) -> tuple[int | None, str]:
    """The line of ``loc`` (or of its nearest ancestor in the file) and how to say it.

    A value an override made below ``loc`` (a mapping it created there) is blamed on the override.
    """
    below = [override for path, override in origins.items() if path[: len(loc)] == loc and len(path) > len(loc)]
    if below:
        return None, f" (from --set {below[-1]!r})"
    for end in range(len(loc), -1, -1):
        if loc[:end] in origins:
            return None, f" (from --set {origins[loc[:end]]!r})"
        if loc[:end] in lines:
            return lines[loc[:end]], f" (line {lines[loc[:end]]})"
    return None, ""


_EXPECTED = {
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "float_type": "a number",
    "int_type": "an integer",
    "list_type": "a list",
    "model_type": "a mapping",
    "string_type": "a string",
}


def _describe(error: ErrorDetails) -> tuple[KeyPath, str]:
    """The key path and a plain-words description of one pydantic error."""
    loc: KeyPath = tuple(error["loc"])
    kind, ctx, got = error["type"], error.get("ctx", {}), _brief(error["input"])
    cause = ctx.get("error")
    if isinstance(cause, _FieldError):
        return (*loc, *cause.path), cause.detail
    if kind == "extra_forbidden":
        return loc, _unknown_key(str(loc[-1]), _section_keys(loc[:-1]))
    if kind == "missing":
        return loc, "required key is missing"
    if loc[-1:] == ("[key]",):
        return loc[:-2], f"keys must be strings, got {loc[-2]!r}"
    if kind in _EXPECTED:
        return loc, f"expected {_EXPECTED[kind]}, got {got}"
    if kind == "literal_error":
        return loc, f"must be {ctx['expected']}, got {got}"
    if kind in ("greater_than", "greater_than_equal"):
        return loc, f"must be {'>' if kind == 'greater_than' else '>='} {ctx.get('gt', ctx.get('ge'))}, got {got}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return loc, f"must not be empty, got {got}"
    return loc, f"{error['msg']}, got {got}"


def _unknown_key(key: str, valid: Sequence[str], scope: str = "") -> str:
    """Says ``key`` is unknown, suggests the closest valid key, and lists them all."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{' ' + scope if scope else ''}{hint} (valid keys: {', '.join(sorted(valid))})"


def _section_keys(loc: KeyPath) -> list[str]:
    """The keys of the config section at ``loc`` (a path of section names)."""
    model: type[BaseModel] = Config
    for name in loc:
        annotation = model.model_fields[str(name)].annotation
        model = next(t for t in (annotation, *typing.get_args(annotation)) if isinstance(t, type) and issubclass(t, BaseModel))
    return list(model.model_fields)


def _dotted(path: KeyPath) -> str:
    """``("scalers", 1, "eps")`` as ``scalers[1].eps``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6


def _brief(value: object) -> str:
    """``repr(value)``, shortened to keep error messages on one readable line."""
    return _REPR.repr(value)
