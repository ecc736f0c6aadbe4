"""Sources and sinks: Parquet, CSV, Zarr and NetCDF in; atomic, verifiable writes out.

This module knows nothing about scaling. It turns paths into lazy Dask
collections and writes Dask collections to disk so that a destination is
either absent, the previous output, or the complete new output -- never a
half-written folder (the design's invariant 6, "Nothing is lost").

Reading
    :func:`read_table` (Parquet, CSV) returns a :class:`TableSource`: a lazy
    ``dask.dataframe.DataFrame`` with one partition per Parquet row-group run
    or CSV block, the file behind each partition, and the schema. Every
    Parquet footer is opened before any work so a corrupt file is reported by
    name up front. :func:`read_array` (Zarr, NetCDF) returns a dask-backed
    ``xarray.Dataset`` chunked as stored.

Writing (the commit protocol)
    :func:`write_table` and :func:`write_array` write into a staging folder
    ``.<name>.staging-<uuid>`` beside the destination, from tasks on the Dask
    workers, then write a ``_SUCCESS`` manifest (file names, row counts,
    sha256, sizes), fsync, and ``os.rename`` the folder into place. An existing
    destination is replaced only with ``overwrite=True`` and only if it carries
    scalepipe's own manifest. :func:`write_text_atomic` does the same for one
    small file (the statistics JSON).

Paths are local filesystem paths (``file://`` is accepted). With a distributed
cluster the workers read and write the same paths, so a cluster whose workers
run on other machines needs those paths on a shared filesystem.

Runtime knobs (``dask.config``, read at call time):

``scalepipe.io.parquet-partition-size`` (default ``"128MiB"``)
    Consecutive row groups of one Parquet file are read as one partition up to
    this uncompressed size; a larger row group is a partition of its own.
``scalepipe.io.csv-blocksize`` (default ``"64MiB"``)
    Uncompressed CSV files are split into blocks of about this size.
``scalepipe.io.csv-sample-rows`` (default ``10000``)
    Rows of the first CSV file read to infer the column dtypes.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import datetime as _dt
import decimal
import glob
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar

import dask
import dask.config
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.utils import parse_bytes
from fsspec.utils import read_block

from scalepipe.artifact import fsync_dir, write_bytes_atomic, write_text_atomic
from scalepipe.codecs import compression_problem
from scalepipe.errors import ColumnError, ConfigError, InputError, OutputError, ScalepipeError

if TYPE_CHECKING:
    import dask.dataframe as dd
    import xarray as xr

__all__ = [
    "Manifest",
    "OutputFile",
    "TableSource",
    "check_paths",
    "read_array",
    "read_manifest",
    "read_table",
    "verify_output",
    "write_array",
    "write_bytes_atomic",
    "write_table",
    "write_text_atomic",
]

MANIFEST_NAME = "_SUCCESS"
MANIFEST_FORMAT = "scalepipe.output"
MANIFEST_VERSION = 1

_GLOB_CHARS = re.compile(r"[*?\[]")
_COMPRESSED_CSV = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
_HASH_BLOCK = 1 << 20

T = TypeVar("T")


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def _local(path: str) -> str:
    """``path`` with ``~`` expanded and a ``file://`` scheme removed; other schemes refused."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise InputError(
            f"path {path!r}: only local filesystem paths are supported "
            "(mount remote storage, or use a path on a shared filesystem)"
        )
    return os.path.expanduser(text)


def _fixed_prefix(path: str) -> str:
    """The leading components of ``path`` before the first one with a glob character."""
    if not _GLOB_CHARS.search(path):
        return path
    parts = Path(path).parts
    fixed: list[str] = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _resolved(path: str) -> Path:
    """Absolute, symlink-free form of ``path`` (or of its fixed prefix when it is a glob)."""
    return Path(os.path.realpath(_fixed_prefix(_local(path))))


def check_paths(input_path: str, output_path: str, *, output_root: str | None = None) -> None:
    """Refuse an output that could overwrite or be read as the input.

    Both paths are normalised (``~`` expanded, globs cut to their fixed
    prefix, symlinks and ``..`` resolved) before they are compared, so this is
    safe to call before anything exists on disk.

    Parameters
    ----------
    input_path
        The input file, folder or glob.
    output_path
        The output file or folder.
    output_root
        If given, the output must lie inside this folder (or be it).

    Raises
    ------
    OutputError
        The output equals the input, lies inside it, contains it, or escapes
        ``output_root``.

    Examples
    --------
    >>> check_paths("data/train/*.parquet", "out/train_scaled")
    """
    source = _resolved(input_path)
    target = _resolved(output_path)
    if target == source:
        raise OutputError(
            f"output path {output_path!r} is the input path {input_path!r}; "
            "the input is never overwritten: choose another output path"
        )
    if target.is_relative_to(source):
        raise OutputError(
            f"output path {output_path!r} lies inside the input {input_path!r} "
            f"(resolved: {str(target)!r} in {str(source)!r}); choose an output outside the input"
        )
    if source.is_relative_to(target):
        raise OutputError(
            f"output path {output_path!r} contains the input {input_path!r} "
            f"(resolved: {str(source)!r} in {str(target)!r}); replacing it would delete the input"
        )
    if output_root is not None:
        root = _resolved(output_root)
        if not target.is_relative_to(root):
            raise OutputError(
                f"output path {output_path!r} resolves to {str(target)!r}, outside the "
                f"allowed output root {str(root)!r}; choose a path under {output_root!r}"
            )


def _natural_key(path: str) -> list[Any]:
    """Sort key that orders ``part.9`` before ``part.10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path)]


def _is_hidden(name: str) -> bool:
    return name.startswith(("_", "."))


def _data_files(path: str) -> list[str]:
    """The data files a table path names, in natural sorted order.

    A directory, given or matched by a glob, is walked recursively; names
    starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc`` files,
    ``_temporary`` folders) are skipped.
    """
    local = _local(path)
    if _GLOB_CHARS.search(local):
        matches = [m for m in glob.glob(local, recursive=True) if not _is_hidden(os.path.basename(m))]
        files = [f for m in matches for f in (_folder_files(m) if os.path.isdir(m) else [m])]
        if not files:
            raise InputError(f"input path {path!r}: no files match this pattern (or the folders it matches hold none)")
    elif os.path.isdir(local):
        if any(os.path.exists(os.path.join(local, marker)) for marker in ("zarr.json", ".zgroup", ".zarray")):
            raise InputError(f"input path {path!r} is a Zarr store, not a folder of Parquet or CSV files")
        files = _folder_files(local)
        if not files:
            raise InputError(
                f"input path {path!r} is a folder with no data files "
                "(names starting with '_' or '.' are ignored)"
            )
    elif os.path.isfile(local):
        files = [local]
    else:
        raise InputError(f"input path {path!r} does not exist")
    return sorted(dict.fromkeys(files), key=_natural_key)


def _folder_files(folder: str) -> list[str]:
    """The data files under ``folder``, recursively (hidden names skipped)."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        files.extend(os.path.join(root, n) for n in names if not _is_hidden(n))
    return files


# --------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSource:
    """A lazily read table.

    Attributes
    ----------
    frame
        The data, one partition per Parquet row-group run or CSV block, in
        file order then row order.
    files
        ``files[i]`` is the file partition ``i`` comes from, so that an error
        in a partition can name its file.
    schema
        Column name -> pandas dtype string of ``frame`` (``"float64"``,
        ``"float32"``, ``"string"``, ...), in column order; the index is not
        included. Text comes out in dask's string dtype (pyarrow-backed unless
        ``dataframe.convert-string`` is off).
    """

    frame: dd.DataFrame
    files: list[str]
    schema: dict[str, str]

    @property
    def paths(self) -> list[str]:
        """The distinct files read, in order."""
        return list(dict.fromkeys(self.files))


def read_table(
    path: str,
    format: Literal["parquet", "csv"],
    columns: Sequence[str] | None = None,
    *,
    text: Collection[str] = (),
    verbatim: Collection[str] = (),
) -> TableSource:
    """Open a Parquet or CSV table lazily.

    Parameters
    ----------
    path
        A file, a folder (searched recursively; names starting with ``_`` or
        ``.`` are ignored) or a glob (``data/*.parquet``, ``data/**/*.csv``).
        Files are read in natural sorted order (``part.9`` before ``part.10``).
    format
        ``"parquet"`` or ``"csv"``.
    columns
        Columns to read, in this order; ``None`` reads all. Others are never
        read.
    text
        CSV only: columns read as text whatever their values look like
        (``007`` stays ``007``; blanks and ``NA`` are still missing values),
        e.g. a key column whose fitted keys are text.
    verbatim
        Columns read so that a table written from them repeats them
        unchanged. CSV: as the text written in the file (``007``, ``5``,
        ``NA`` and a blank stay as they are; no number or missing value is
        parsed). Parquet: string, ``null`` and float columns as the file's
        Arrow data (``pd.ArrowDtype``), so a ``string`` column stays
        ``string``, a ``null`` column ``null``, and NaN and null stay apart
        in a float column (pandas' own dtypes make both NaN).

    Returns
    -------
    TableSource
        ``frame``, ``files`` (the file of each partition) and ``schema``.

    Raises
    ------
    InputError
        The path is missing, holds no data files, a Parquet file is truncated
        or corrupt, or the files' schemas differ (names the first odd file and
        column).
    ColumnError
        A requested column is not in the data.

    Notes
    -----
    Parquet: integer and boolean columns that may hold nulls, according to
    the row-group statistics, are read as pandas' nullable integer (exact,
    where float64 is not beyond 2**53) and ``boolean`` dtypes in every
    partition, so all partitions share one dtype. CSV: integer-looking
    columns are read as float64 for the same reason (a missing value further
    down a file would otherwise change a block's dtype), except those whose
    sampled values reach beyond 2**53, read as nullable integers (exact);
    ``true``/``false`` columns as ``boolean``; other columns as text. Blocks split at newlines, so a quoted field holding a newline must
    not straddle a block boundary (as with ``dask.dataframe.read_csv``).

    Examples
    --------
    >>> src = read_table("data/train/", "parquet")  # doctest: +SKIP
    >>> src.frame.npartitions == len(src.files)  # doctest: +SKIP
    True
    """
    if format == "parquet":
        return _read_parquet(path, columns, frozenset(verbatim))
    if format == "csv":
        return _read_csv(path, columns, frozenset(text), frozenset(verbatim))
    raise InputError(f"table format {format!r} is not supported; use 'parquet' or 'csv'")


def _positive_setting(name: str, default: Any, parse: Callable[[Any], int], what: str) -> int:
    """The Dask config setting ``name`` (or its ``DASK_...`` variable), parsed to a positive integer.

    Raises
    ------
    ConfigError
        Naming the setting (a bad value failed as dask's "Could not interpret
        'banana' as a byte unit", or as an error about a healthy input file).
    """
    value = dask.config.get(name, default)
    try:
        parsed = parse(value)
    except (ValueError, TypeError, KeyError):
        parsed = 0
    if parsed < 1:
        variable = "DASK_" + name.upper().replace(".", "__").replace("-", "_")
        raise ConfigError(f"setting {name} ({variable}): {value!r} is not {what}")
    return parsed


def _whole_number(value: Any) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise ValueError(value)
    return int(value)


def _selected(available: Sequence[str], columns: Sequence[str] | None, where: str) -> list[str]:
    if columns is None:
        return list(available)
    if isinstance(columns, str):
        columns = [columns]
    missing = [c for c in columns if c not in available]
    if missing:
        raise ColumnError(
            f"column {missing[0]!r} is not in {where}; its columns are: "
            + ", ".join(repr(c) for c in available)
        )
    return list(columns)


def _parquet_footer(path: str) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(
            f"Parquet file {path!r} cannot be read (truncated, corrupt, or not Parquet): {exc}"
        ) from exc


def _schema_difference(first: pa.Schema, other: pa.Schema) -> str | None:
    """How ``other`` differs from ``first``, naming the first odd column; None if alike."""
    first_types = {f.name: f.type for f in first}
    other_types = {f.name: f.type for f in other}
    for name, typ in first_types.items():
        if name not in other_types:
            return f"lacks column {name!r}"
        if other_types[name] != typ:
            return f"has column {name!r} as {other_types[name]} where the first file has {typ}"
    for name in other_types:
        if name not in first_types:
            return f"has column {name!r}, which the first file lacks"
    return None


def _may_hold_nulls(footer: pq.FileMetaData, column: str) -> bool:
    """Whether the row-group statistics allow a null in leaf ``column`` (True if unknown)."""
    leaves = [footer.schema.column(i).path for i in range(footer.num_columns)]
    if column not in leaves:
        return True
    idx = leaves.index(column)
    for rg in range(footer.num_row_groups):
        stats = footer.row_group(rg).column(idx).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            return True
    return False


#: pandas' nullable integer dtype of each Arrow integer type: exact, where float64 is not beyond 2**53.
_NULLABLE_INTEGERS = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
}


def _arrow_backed(arrow_type: pa.DataType) -> pd.ArrowDtype | None:
    """The pandas dtype of a column kept as Arrow data, for the types pandas would make Python objects or a Categorical.

    Dates, times, decimals, binary, nested types and dictionaries pass
    through unchanged this way: as objects, dask's string conversion wrote
    them as text (``'[1 2]'``, ``'2020-01-01'``, a binary column failed),
    and a Categorical's empty meta wrote nulls.
    """
    t = pa.types
    kept = (t.is_date, t.is_time, t.is_decimal, t.is_nested, t.is_dictionary, t.is_binary, t.is_large_binary, t.is_fixed_size_binary)
    return pd.ArrowDtype(arrow_type) if any(test(arrow_type) for test in kept) else None


def _nullable_or_arrow_backed(arrow_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """:func:`_arrow_backed`, and integers as pandas' nullable integers."""
    return _NULLABLE_INTEGERS.get(arrow_type) or _arrow_backed(arrow_type)


def _read_as_arrow(arrow_type: pa.DataType) -> bool:
    """Whether a verbatim column of this type is read as Arrow data: the types pandas' own dtypes change.

    Strings (pandas makes ``string`` ``large_string``), ``null`` (text) and
    floats (NaN and null both NaN). The others pandas' dtypes keep, or
    :func:`_arrow_backed` reads as Arrow data anyway.
    """
    t = pa.types
    return t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_null(arrow_type) or t.is_floating(arrow_type)


def _parquet_meta(schema: pa.Schema, columns: list[str], nullable: set[str], verbatim: frozenset[str]) -> pd.DataFrame:
    """Empty frame with the dtypes every partition is converted to (``verbatim`` columns as Arrow data)."""
    meta = schema.empty_table().to_pandas(types_mapper=_arrow_backed)
    meta = meta[columns]
    for name in columns:
        dtype = meta[name].dtype
        if name in verbatim and _read_as_arrow(schema.field(name).type):
            meta[name] = pd.arrays.ArrowExtensionArray(pa.chunked_array([], schema.field(name).type))
        elif name in nullable and dtype.kind in "iu":
            meta[name] = meta[name].astype(_NULLABLE_INTEGERS[schema.field(name).type])
        elif name in nullable and dtype.kind == "b":
            meta[name] = meta[name].astype("boolean")
    return meta


def _conform(df: pd.DataFrame, meta: pd.DataFrame, columns: Sequence[str], path: str) -> pd.DataFrame:
    """``df[columns]`` with the dtypes ``meta`` prescribes (``path``, the file, names it in errors).

    Compares names and dtypes in bulk: looking each column up by name costs
    ~0.1 ms a column (a partition of a wide table paid milliseconds). A
    value the dtype cannot hold (a null where the schema had none, text) is
    an :class:`InputError` naming the file and column (casting would turn a
    null into ``False``, or fail naming neither).
    """
    columns = list(columns)
    if list(df.columns) != columns:
        df = df[columns]
    wanted = dict(zip(meta.columns, meta.dtypes, strict=True))
    casts = {c: wanted[c] for c, dtype in zip(columns, df.dtypes, strict=True) if dtype != wanted[c]}
    if not casts:
        return df
    df = df.copy(deep=False)
    for name, dtype in casts.items():
        column = df[name]
        # numpy casts to these neither keep nulls nor check values; a widening one
        # (a nullable int64 without nulls to int64) needs no value check
        exact = isinstance(dtype, np.dtype) and dtype.kind in "biu"
        source = getattr(column.dtype, "numpy_dtype", column.dtype)
        widening = exact and isinstance(source, np.dtype) and np.can_cast(source, dtype, "safe")
        try:
            if exact and column.isna().any():
                raise ValueError("a null")
            cast = column.astype(dtype)
            if exact and not widening and not (cast.astype("float64") == column.astype("float64")).all():
                raise ValueError("a value it would change")  # 1.5 as an integer, 2**40 as int32, 2 as a boolean
            df[name] = cast
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"file {path!r}: column {name!r} holds values its dtype {dtype} cannot hold ({exc}); the dtypes "
                "come from the input's schema, read before the job started (did the file change?)"
            ) from None
    return df


def _read_parquet_part(
    part: tuple[str, tuple[int, ...]],
    meta: pd.DataFrame,
    verbatim: frozenset[str] = frozenset(),
    columns: list[str] | None = None,
) -> pd.DataFrame:
    path, row_groups = part
    wanted = list(meta.columns) if columns is None else list(columns)
    try:
        # Read, not memory-mapped: mapping was ~7% faster for a fit, but a file
        # rewritten in place while mapped (`cp new.parquet part.1.parquet`) kills
        # the process with SIGBUS, where a read gives an error naming the file.
        pf = pq.ParquetFile(path)
        if row_groups:
            table = pf.read_row_groups(list(row_groups), columns=wanted, use_pandas_metadata=True)
        else:
            table = pf.read(columns=wanted, use_pandas_metadata=True)
        # Arrow's buffers, not a consolidated copy; integers with nulls as pandas' nullable
        # integers (to_pandas would make them float64, inexact beyond 2**53); see _arrow_backed
        exact = any(
            isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "iu" and name not in verbatim
            for name, dtype in meta.dtypes.items()
        )
        kept = [c for c in wanted if c in verbatim and _read_as_arrow(table.schema.field(c).type)]
        arrow = {c: table.column(c) for c in kept}
        df = table.drop_columns(kept).to_pandas(
            split_blocks=True, types_mapper=_nullable_or_arrow_backed if exact else _arrow_backed
        )
        if kept:  # the verbatim columns as they are: Arrow's own arrays
            df = df.assign(**{c: pd.arrays.ArrowExtensionArray(values) for c, values in arrow.items()})[wanted]
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"Parquet file {path!r} cannot be read: {exc}") from exc
    return _conform(df, meta, wanted, path)


def _row_group_runs(footer: pq.FileMetaData, target: int) -> list[tuple[int, ...]]:
    """Consecutive row groups grouped up to ``target`` uncompressed bytes each."""
    runs: list[tuple[int, ...]] = []
    current: list[int] = []
    size = 0
    for rg in range(footer.num_row_groups):
        rg_size = footer.row_group(rg).total_byte_size
        if current and size + rg_size > target:
            runs.append(tuple(current))
            current, size = [], 0
        current.append(rg)
        size += rg_size
    if current:
        runs.append(tuple(current))
    return runs or [()]


def _read_parquet(path: str, columns: Sequence[str] | None, verbatim: frozenset[str]) -> TableSource:
    import dask.dataframe as dd

    files = _data_files(path)
    footers = [_parquet_footer(f) for f in files]
    schemas = [footer.schema.to_arrow_schema() for footer in footers]
    first = schemas[0]
    for file, schema in zip(files, schemas, strict=True):
        repeated = next((n for n in schema.names if schema.names.count(n) > 1), None)
        if repeated is not None:
            raise InputError(f"Parquet file {file!r} has column {repeated!r} {schema.names.count(repeated)} times; column names must be unique")
    for file, schema in zip(files[1:], schemas[1:], strict=True):
        difference = _schema_difference(first, schema)
        if difference:
            raise InputError(
                f"Parquet file {file!r} {difference} ({files[0]!r} is the first file); "
                "all files of a table must share one schema"
            )
    index_columns = {
        c for c in (first.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)
    }
    data_columns = [n for n in first.names if n not in index_columns]
    selected = _selected(data_columns, columns, f"the Parquet input {path!r}")
    widened = [
        f.name
        for f in first
        if f.name in selected and (pa.types.is_integer(f.type) or pa.types.is_boolean(f.type))
    ]
    nullable = {c for c in widened if any(_may_hold_nulls(ft, c) for ft in footers)}
    meta = _parquet_meta(first, selected, nullable, verbatim)

    target = _positive_setting("scalepipe.io.parquet-partition-size", "128MiB", parse_bytes, "a size like '128MiB'")
    parts = [
        (file, run)
        for file, footer in zip(files, footers, strict=True)
        for run in _row_group_runs(footer, target)
    ]
    frame = dd.from_map(_read_parquet_part, parts, args=(meta, verbatim), meta=meta, label="read-parquet")
    return TableSource(
        frame=frame,
        files=[file for file, _ in parts],
        schema={c: str(dtype) for c, dtype in frame.dtypes.items()},
    )


#: float64 holds every integer up to this magnitude, and not all beyond it.
_FLOAT_EXACT = 2**53
_INTEGER_TEXT = r"\s*[+-]?\d+\s*"


def _csv_dtype(sample: pd.Series, text: Callable[[], pd.Series]) -> str:
    """The dtype a CSV column is parsed as, from the values of a sample (``text()``: the same values as text).

    Numbers are float64, except integers beyond 2**53 in magnitude (64-bit
    IDs, nanosecond timestamps), which float64 would change: a column whose
    sampled values are all integers, some of them that large, is pandas'
    nullable ``Int64`` (``UInt64`` beyond int64). ``true``/``false``
    columns are pandas' nullable ``boolean``, so a blank (in the sample or
    further down) is a missing value, not a reason to read the column as text.
    """
    kind = sample.dtype.kind if isinstance(sample.dtype, np.dtype) else "O"
    if kind in "iuf":
        return _csv_number_dtype(sample, text) if _beyond_float(sample) else "float64"
    present = sample.dropna()
    if kind == "b" or (len(present) and all(isinstance(v, (bool, np.bool_)) for v in present)):
        return "boolean"
    return "str"


def _beyond_float(sample: pd.Series) -> bool:
    """Whether a numeric sample holds a value beyond 2**53 in magnitude (compared without rounding)."""
    if sample.dtype.kind == "f":
        return bool((sample.abs() >= _FLOAT_EXACT).any())
    return bool(((sample > _FLOAT_EXACT) | (sample < -_FLOAT_EXACT)).any())


def _csv_number_dtype(sample: pd.Series, text: Callable[[], pd.Series]) -> str:
    """``Int64``/``UInt64`` for a sample of integers (blanks allowed) that holds large ones, else float64."""
    if sample.dtype.kind == "u":
        return "UInt64"
    if sample.dtype.kind == "i":
        return "Int64"
    tokens = text().dropna()  # pandas read integers with blanks or 7.0 as float64: look at what was written
    values = [_integral_text(t) for t in tokens]
    if None in values:
        return "float64"
    if all(-(2**63) <= v < 2**63 for v in values):
        return "Int64"
    return "UInt64" if all(0 <= v < 2**64 for v in values) else "float64"


def _csv_header(path: str) -> list[str]:
    if not _is_compressed(path):
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if b"\r" in head and b"\n" not in head:  # blocks are split at "\n": such a file read as its header alone
            raise InputError(
                f"CSV file {path!r} ends its lines with a carriage return alone (classic Mac OS); scalepipe reads "
                "lines ending in \\n or \\r\\n: convert the file (e.g. tr '\\r' '\\n')"
            )
    try:
        names = [str(c) for c in pd.read_csv(path, nrows=1, header=None, dtype=str, keep_default_na=False).iloc[0]]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, IndexError) as exc:
        raise InputError(f"CSV file {path!r} has no readable header row: {exc}") from exc
    names = [n if n else f"Unnamed: {i}" for i, n in enumerate(names)]  # as pandas names an empty one
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise InputError(
            f"CSV file {path!r}: the header names column {repeated!r} {names.count(repeated)} times (an empty "
            "name is read as 'Unnamed: <position>'); column names must be unique (pandas would rename the copies)"
        )
    return names


def _is_compressed(path: str) -> bool:
    return path.lower().endswith(_COMPRESSED_CSV)


def _csv_bad_column(loose: pd.DataFrame, meta: pd.DataFrame, wanted: list[str]) -> str:
    """The first float or boolean column of a CSV block (read as text, ``loose``) holding another value, or ''."""
    for col in wanted:
        if meta[col].dtype.kind == "f":
            parsed = pd.to_numeric(loose[col], errors="coerce")
            bad = loose[col][parsed.isna() & loose[col].notna()]
            if len(bad):
                return f"column {col!r} holds {bad.iloc[0]!r}, not a number"
        elif meta[col].dtype.kind == "b":
            bad = loose[col][loose[col].notna() & ~loose[col].str.lower().isin(["true", "false"])]
            if len(bad):
                return f"column {col!r} holds {bad.iloc[0]!r}, not true or false"
    return ""


def _csv_integers(text: pd.Series, dtype: Any) -> pd.Series | str:
    """A CSV column read as text, as the nullable integer ``dtype``; or the first value it cannot hold exactly.

    Integers are converted as written (``pd.to_numeric`` parses them without
    rounding); other numbers (``2.0``, ``1e3``) as decimals, when integral.
    (pandas' own parsing of such a column reads the whole block through
    float64 once one value is not written as an integer, rounding the large
    ones.)
    """
    info = np.iinfo(dtype.numpy_dtype)
    missing = text.isna().to_numpy()
    tokens = text[~missing]
    digits = tokens.str.fullmatch(_INTEGER_TEXT).to_numpy(bool)
    values = np.zeros(len(tokens), dtype.numpy_dtype)
    if digits.any():
        exact = pd.to_numeric(tokens[digits])
        if exact.dtype == object:  # some beyond int64 and some negative: no numpy dtype holds both
            exact = exact.map(int)
        fits = ((exact >= info.min) & (exact <= info.max)).to_numpy(bool)
        if not fits.all():
            return str(tokens[digits].iloc[np.argmin(fits)])
        values[digits] = exact.to_numpy(dtype.numpy_dtype)
    if not digits.all():
        others = []
        for token in tokens[~digits]:
            number = _integral_text(token)
            if number is None or not info.min <= number <= info.max:
                return str(token)
            others.append(number)
        values[~digits] = np.array(others, dtype.numpy_dtype)
    data = np.zeros(len(text), dtype.numpy_dtype)
    data[~missing] = values
    return pd.Series(pd.arrays.IntegerArray(data, missing), index=text.index)


def _integral_text(token: str) -> int | None:
    """The integer a number written as ``7.0`` or ``1e3`` denotes (read as a decimal, without rounding), or None."""
    try:
        number = decimal.Decimal(token.strip())
    except decimal.InvalidOperation:
        return None
    return int(number) if number.is_finite() and number == number.to_integral_value() else None


#: pandas' default missing-value markers (``pandas.read_csv``'s ``na_values``).
_NA_MARKERS = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip


def _read_csv_part(
    part: tuple[str, int, int],
    names: list[str],
    meta: pd.DataFrame,
    verbatim: frozenset[str] = frozenset(),
    columns: list[str] | None = None,
) -> pd.DataFrame:
    path, offset, length = part
    wanted = list(meta.columns) if columns is None else list(columns)
    # nullable integer columns are read as text and converted exactly (see _csv_integers)
    dtypes = {c: str if meta[c].dtype.kind in "iu" else meta[c].dtype for c in wanted}
    # every column wanted: no usecols, with which pandas drops a row's fields beyond the header's silently
    usecols = None if set(wanted) == set(names) else wanted
    # verbatim columns: no missing-value markers (the others keep pandas' defaults)
    markers = {"keep_default_na": False, "na_values": {c: _NA_MARKERS for c in wanted if c not in verbatim}} if verbatim else {}
    # index_col=False: rows all longer than the header had their first field taken as the index, every
    # column shifted; now their last field is dropped, so one holding a value is refused first
    options = {"header": None, "names": names, "usecols": usecols, "index_col": False, "dtype": dtypes, **markers}
    try:
        if length < 0:  # a compressed file, whole, as a block is read
            data = b""
            try:
                first = pd.read_csv(path, header=None, skiprows=1, nrows=1, dtype=str, index_col=False).iloc[0].tolist()
            except pd.errors.EmptyDataError:  # a header alone
                return meta[wanted].copy()
            _check_row_length(first, names, "line 2 of the file")
            df = pd.read_csv(path, skiprows=1, **options)
        else:
            with open(path, "rb") as f:
                data = read_block(f, offset, length, delimiter=b"\n")
            if offset == 0:
                data = data.split(b"\n", 1)[1] if b"\n" in data else b""
            if not data.strip():
                return meta[wanted].copy()
            fields = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8", "replace")]), [])
            _check_row_length(fields, names, "line 1")
            df = pd.read_csv(io.BytesIO(data), **options)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        where = _csv_where(offset, length)
        try:  # name the column: read the block again as text
            if length < 0:
                loose = pd.read_csv(path, header=None, names=names, skiprows=1, usecols=wanted, index_col=False, dtype=str)
            else:
                loose = pd.read_csv(io.BytesIO(data), header=None, names=names, usecols=wanted, index_col=False, dtype=str)
            detail = _csv_bad_column(loose, meta, wanted)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError):
            detail = ""
        raise InputError(
            f"CSV file {path!r} ({where}) cannot be parsed: {detail or _file_line(str(exc), path, offset, length)}"
        ) from exc
    for col in wanted:
        if meta[col].dtype.kind in "iu":
            converted = _csv_integers(df[col], meta[col].dtype)
            if isinstance(converted, str):
                raise InputError(
                    f"CSV file {path!r} ({_csv_where(offset, length)}) cannot be parsed: column {col!r} holds "
                    f"{converted!r}, not an integer that {meta[col].dtype} holds exactly (the column is read as "
                    "integers because its sampled rows hold integers beyond 2**53, which float64 would change)"
                )
            df[col] = converted
    return _conform(df, meta, wanted, path)


def _check_row_length(fields: list[Any], names: list[str], line: str) -> None:
    """Refuse a block whose first row (at ``line``) holds a value beyond the header's fields (pandas would drop it, and every such row's).

    An empty last field, a delimiter at the end of the line, is nothing.
    """
    if any(isinstance(v, str) and v != "" for v in fields[len(names) :]):
        raise pd.errors.ParserError(f"a row holds more fields than the header's {len(names)} ({line})")


def _file_line(message: str, path: str, offset: int, length: int) -> str:
    """pandas' message with its ``line N`` (counted in the block read, after the header) made the file's line number."""
    found = re.search(r"\bline (\d+)\b", message)
    if found is None or length < 0:
        return message
    lines = 1  # the header, or the line the block starts after
    with open(path, "rb") as f:
        for start in range(0, offset, 1 << 20):
            lines += f.read(min(1 << 20, offset - start)).count(b"\n")
    return f"{message[: found.start()]}line {lines + int(found.group(1))} of the file{message[found.end() :]}"


def _csv_where(offset: int, length: int) -> str:
    return f"bytes {offset}-{offset + length}" if length >= 0 else "whole file"


def _csv_blocks(path: str, blocksize: int) -> list[tuple[str, int, int]]:
    if _is_compressed(path):
        return [(path, 0, -1)]
    size = os.path.getsize(path)
    blocks = [(path, start, min(blocksize, size - start)) for start in range(0, size, blocksize)]
    return blocks or [(path, 0, 0)]


def _read_csv(path: str, columns: Sequence[str] | None, text: frozenset[str], verbatim: frozenset[str]) -> TableSource:
    import dask.dataframe as dd

    files = _data_files(path)
    names = _csv_header(files[0])
    for file in files[1:]:
        other = _csv_header(file)
        if other != names:
            odd = next(
                (
                    f"has column {b!r} where the first file has {a!r}"
                    for a, b in zip(names, other)
                    if a != b
                ),
                f"has {len(other)} columns where the first file has {len(names)}",
            )
            raise InputError(
                f"CSV file {file!r} {odd} ({files[0]!r} is the first file); "
                "all files of a table must share one header"
            )
    selected = _selected(names, columns, f"the CSV input {path!r}")
    sample_rows = _positive_setting("scalepipe.io.csv-sample-rows", 10_000, _whole_number, "a whole number of rows like 10000")
    for file in files:  # the dtypes come from the first file with rows (a header-only file has none to tell)
        try:
            sample = pd.read_csv(file, header=None, names=names, skiprows=1, nrows=sample_rows, usecols=selected, index_col=False)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
            raise InputError(f"CSV file {file!r} cannot be parsed: {exc}") from exc
        if len(sample):
            break
    else:
        raise InputError(f"the CSV input {path!r} has a header but no rows in any of its {len(files)} file(s)")
    def tokens(column: str) -> Callable[[], pd.Series]:
        return lambda: pd.read_csv(file, header=None, names=names, skiprows=1, nrows=sample_rows, usecols=[column], index_col=False, dtype=str)[column]

    meta = pd.DataFrame({c: pd.Series([], dtype="str" if c in text | verbatim else _csv_dtype(sample[c], tokens(c))) for c in selected})
    blocksize = _positive_setting("scalepipe.io.csv-blocksize", "64MiB", parse_bytes, "a size like '64MiB'")
    parts = [block for file in files for block in _csv_blocks(file, blocksize)]
    frame = dd.from_map(_read_csv_part, parts, args=(names, meta, verbatim & set(selected)), meta=meta, label="read-csv")
    return TableSource(
        frame=frame,
        files=[file for file, _, _ in parts],
        schema={c: str(dtype) for c, dtype in frame.dtypes.items()},
    )


# --------------------------------------------------------------------------
# Reading arrays
# --------------------------------------------------------------------------


def read_array(
    path: str,
    format: Literal["zarr", "netcdf"],
    variables: Sequence[str] | None = None,
) -> xr.Dataset:
    """Open a Zarr store or NetCDF file as a dask-backed ``xarray.Dataset``.

    Parameters
    ----------
    path
        The Zarr store folder or the NetCDF file.
    format
        ``"zarr"`` or ``"netcdf"`` (read with the ``h5netcdf`` engine, the
        ``scalepipe[netcdf]`` extra).
    variables
        Variables to keep (coordinates come along); ``None`` keeps all.

    Returns
    -------
    xarray.Dataset
        Lazy, chunked as stored.

    Raises
    ------
    InputError
        The path is missing or is not a readable store/file, or the NetCDF
        backend is not installed.
    ColumnError
        A requested variable is not in the dataset.

    Examples
    --------
    >>> ds = read_array("data/era5.zarr", "zarr", ["t2m"])  # doctest: +SKIP
    """
    import xarray as xr

    local = _local(path)
    if not os.path.exists(local):
        raise InputError(f"input path {path!r} does not exist")
    try:
        if format == "zarr":
            ds = xr.open_zarr(local, chunks={})
        elif format == "netcdf":
            missing = [m for m in ("h5netcdf", "h5py") if importlib.util.find_spec(m) is None]
            if missing:
                raise InputError(
                    f"reading NetCDF file {path!r} needs {' and '.join(missing)}: "
                    "pip install 'scalepipe[netcdf]' (h5netcdf with h5py)"
                )
            ds = xr.open_dataset(local, engine="h5netcdf", chunks={})
            atexit.unregister(_close_open_files)  # once
            atexit.register(_close_open_files)
        else:
            raise InputError(f"array format {format!r} is not supported; use 'zarr' or 'netcdf'")
    except ScalepipeError:
        raise
    except Exception as exc:  # zarr, h5py and xarray raise many unrelated types
        if format == "netcdf" and _is_classic_netcdf(local):
            raise InputError(
                f"netcdf input {path!r} is a NetCDF3 (classic) file; scalepipe reads NetCDF4 (HDF5) files: convert it "
                "(xarray.open_dataset(path).to_netcdf(new_path, engine='h5netcdf')) or write it as Zarr"
            ) from exc
        raise InputError(f"{format} input {path!r} cannot be opened: {exc}") from exc
    if variables is None:
        return ds
    if isinstance(variables, str):
        variables = [variables]
    missing_vars = [v for v in variables if v not in ds.variables]
    if missing_vars:
        raise ColumnError(
            f"variable {missing_vars[0]!r} is not in {path!r}; its data variables are: "
            + ", ".join(repr(str(v)) for v in ds.data_vars)
        )
    return ds[list(variables)]


def _is_classic_netcdf(path: str) -> bool:
    """Whether the file starts as a NetCDF3 file does (``CDF`` and a format byte 1, 2 or 5)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:3] == b"CDF" and head[3:] in (b"\x01", b"\x02", b"\x05")


def _close_open_files() -> None:
    """Close the files xarray keeps open (its file cache) while h5py can still close them.

    Left to the interpreter's shutdown, h5py is torn down first and each
    NetCDF input printed an "Exception ignored ... TypeError" traceback.
    """
    from xarray.backends.file_manager import FILE_CACHE

    size = FILE_CACHE.maxsize
    FILE_CACHE.maxsize = 0  # evicts (and closes) every file
    FILE_CACHE.maxsize = size


# --------------------------------------------------------------------------
# Durability helpers
# --------------------------------------------------------------------------


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            _fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def _flushed_from_here() -> bool:
    """Whether this process's fsync reaches what the write tasks wrote.

    True when the tasks run in this process (no distributed client) or in a
    ``LocalCluster`` (this machine's page cache); false for workers that may
    run elsewhere (a remote scheduler, SLURM, Kubernetes), whose dirty pages
    of a shared filesystem only they can flush.
    """
    try:
        from distributed import LocalCluster, default_client

        client = default_client()
    except (ImportError, ValueError):
        return True
    return isinstance(client.cluster, LocalCluster)


def _sha256(path: str) -> tuple[str, int]:
    """sha256 hex digest and size of the file's bytes."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


class _HashingWriter:
    """A binary file that hashes what is written through it (sha256), so the file need not be read again."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size = 0

    @property
    def closed(self) -> bool:
        return self._file.closed

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._file.flush()


def _start_writeback(path: str) -> None:
    """Ask the kernel to start writing the file to disk now, without waiting for it.

    Linux starts the write-back of a file's dirty pages on
    ``POSIX_FADV_DONTNEED`` (and drops its clean ones: an output is not read
    again). The disk then writes while the job computes the next partitions,
    and the commit's fsync (:func:`_fsync_tree`) finds little left to wait
    for; an fsync per file in the task made the worker wait instead (a
    2-thread pyarrow copy of the bench's 32 files with SHA-256 and fsync:
    4.3-4.5 s instead of 4.7-5.0 s). Elsewhere
    this is a no-op and the commit's fsync does all the work.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    """Delete ``path``; a second pass catches files a still-running task added meanwhile."""
    for _ in range(2):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return


# --------------------------------------------------------------------------
# Atomic single files
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFile:
    """One data file of an output folder, as recorded in its ``_SUCCESS`` manifest."""

    name: str
    rows: int
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """The ``_SUCCESS`` manifest of a scalepipe output.

    Attributes
    ----------
    files
        The data files in partition order (empty for a Zarr store).
    rows
        Total rows over ``files`` (0 for a Zarr store).
    path
        The output folder.
    format
        ``"parquet"``, ``"csv"`` or ``"zarr"``.
    variables
        Zarr stores: variable name -> shape.
    dtypes
        Zarr stores: variable name -> the dtype its values were written with.
    sizes
        Zarr stores: each file of the store (its path inside it) -> bytes
        (empty for a store written before scalepipe recorded them).
    alongside
        The values of the lazy objects computed together with the write
        (``write_table(..., alongside=...)``); not part of the manifest file.
    """

    files: tuple[OutputFile, ...]
    rows: int
    path: str
    format: str = "parquet"
    variables: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    alongside: tuple[Any, ...] = field(default=(), compare=False, repr=False)


def _manifest_document(data_format: str, **content: Any) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "data_format": data_format,
        **content,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _write_manifest(folder: str, document: dict[str, Any]) -> None:
    target = os.path.join(folder, MANIFEST_NAME)
    with open(target, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _load_manifest_document(path: str) -> dict[str, Any] | None:
    """The manifest JSON of a scalepipe output folder, or None if it is not one."""
    local = _local(path)
    if os.path.islink(local) or not os.path.isdir(local):
        return None
    try:
        with open(os.path.join(local, MANIFEST_NAME), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    return doc


def _no_manifest(path: str) -> str:
    """Why ``path`` has no scalepipe manifest, for a message."""
    if os.path.islink(_local(path)):
        return "it is a symbolic link, which scalepipe never replaces (it writes folders)"
    if os.path.isfile(os.path.join(_local(path), MANIFEST_NAME)):
        return f"its {MANIFEST_NAME} file is not a scalepipe manifest: another tool's, such as Spark's, or damaged"
    return f"it has no scalepipe {MANIFEST_NAME} manifest"


def read_manifest(path: str) -> Manifest:
    """Read the ``_SUCCESS`` manifest of an output of :func:`write_table` or :func:`write_array`.

    Raises
    ------
    OutputError
        ``path`` has no scalepipe manifest, or a newer manifest version.
    """
    doc = _load_manifest_document(path)
    if doc is None:
        raise OutputError(f"{path!r} is not a complete scalepipe output ({_no_manifest(path)})")
    if doc.get("version") != MANIFEST_VERSION:
        raise OutputError(
            f"{path!r} has a manifest of version {doc.get('version')!r}; "
            f"this scalepipe reads version {MANIFEST_VERSION}: upgrade scalepipe"
        )
    try:
        files = tuple(
            OutputFile(str(f["name"]), int(f["rows"]), str(f["sha256"]), int(f["bytes"]))
            for f in doc.get("files", [])
        )
        variables = {
            str(name): tuple(int(n) for n in spec["shape"])
            for name, spec in doc.get("variables", {}).items()
        }
        return Manifest(
            files=files,
            rows=int(doc.get("rows", 0)),
            path=os.path.abspath(_local(path)),
            format=str(doc["data_format"]),
            variables=variables,
            dtypes={str(name): str(spec["dtype"]) for name, spec in doc.get("variables", {}).items()},
            sizes={str(name): int(size) for name, size in doc.get("sizes", {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OutputError(f"the {MANIFEST_NAME} manifest in {path!r} is malformed: {exc}") from exc


def _file_rows(path: str, data_format: str) -> int | None:
    if data_format == "parquet":
        return pq.read_metadata(path).num_rows
    return None


def verify_output(path: str) -> Manifest:
    """Check an output folder against its manifest.

    Every listed file must exist with the recorded size and sha256 (and, for
    Parquet, row count); no unlisted data file may be present. A Zarr store
    must open with the recorded variables, shapes and dtypes, and each of its files
    have the recorded size (a store written with ``durable=False`` and cut
    short by a power loss has missing or short chunk files).

    Returns
    -------
    Manifest
        The verified manifest.

    Raises
    ------
    OutputError
        Naming the first file or variable that does not match.
    """
    manifest = read_manifest(path)
    folder = manifest.path
    if manifest.format == "zarr":
        import xarray as xr

        try:
            ds = xr.open_zarr(folder, chunks={})
        except (OSError, ValueError, KeyError) as exc:
            raise OutputError(f"Zarr output {path!r} cannot be opened: {exc}") from exc
        for name, shape in manifest.variables.items():
            if name not in ds.variables or tuple(ds[name].shape) != shape:
                raise OutputError(
                    f"Zarr output {path!r}: variable {name!r} is missing or changed shape "
                    f"(manifest: {shape})"
                )
            if str(ds[name].dtype) != manifest.dtypes[name]:
                raise OutputError(
                    f"Zarr output {path!r}: variable {name!r} reads as {ds[name].dtype}, "
                    f"where {manifest.dtypes[name]} values were written"
                )
        for name, size in manifest.sizes.items():
            file = os.path.join(folder, name)
            if not os.path.isfile(file) or os.path.getsize(file) != size:
                found = f"{os.path.getsize(file)} bytes" if os.path.isfile(file) else "missing"
                raise OutputError(f"Zarr output {path!r}: file {name!r} is {found}, where {size} bytes were written")
        return manifest
    listed = {f.name for f in manifest.files}
    present = {n for n in os.listdir(folder) if not _is_hidden(n)}
    extra = sorted(present - listed, key=_natural_key)
    if extra:
        raise OutputError(f"output {path!r} holds {extra[0]!r}, which its manifest does not list")
    for entry in manifest.files:
        file = os.path.join(folder, entry.name)
        if not os.path.isfile(file):
            raise OutputError(f"output {path!r}: file {entry.name!r} is missing")
        digest, size = _sha256(file)
        if size != entry.bytes or digest != entry.sha256:
            raise OutputError(
                f"output {path!r}: file {entry.name!r} differs from its manifest "
                f"({size} bytes, sha256 {digest[:12]}... where {entry.bytes} bytes, "
                f"{entry.sha256[:12]}... were written)"
            )
        rows = _file_rows(file, manifest.format)
        if rows is not None and rows != entry.rows:
            raise OutputError(
                f"output {path!r}: file {entry.name!r} has {rows} rows, its manifest {entry.rows}"
            )
    if sum(f.rows for f in manifest.files) != manifest.rows:
        raise OutputError(f"output {path!r}: the manifest's total rows disagree with its files")
    return manifest


# --------------------------------------------------------------------------
# The commit protocol
# --------------------------------------------------------------------------


def _destination(path: str) -> str:
    """Absolute destination path with its parent folder's symlinks resolved."""
    local = os.path.abspath(_local(path))
    name = os.path.basename(local.rstrip(os.sep))
    if not name or name in (".", ".."):
        raise OutputError(f"output path {path!r} does not name a folder to write")
    return os.path.join(os.path.realpath(os.path.dirname(local.rstrip(os.sep))), name)


def _refuse_existing(dest: str, path: str, overwrite: bool) -> None:
    if not os.path.lexists(dest):
        return
    if not overwrite:
        raise OutputError(
            f"output {path!r} already exists; set `overwrite: true` (output.overwrite) "
            "to replace it, or choose another path"
        )
    if _load_manifest_document(dest) is None:
        raise OutputError(
            f"output {path!r} exists and was not written by scalepipe, refusing to delete "
            f"it ({_no_manifest(dest)}); remove it yourself or choose another path"
        )


def _commit(staging: str, dest: str, path: str, overwrite: bool, on_commit: Callable[[], None] | None = None) -> None:
    """Move the complete ``staging`` folder to ``dest``; replace an old output if allowed.

    ``on_commit`` runs as soon as the new output is in place, before the old
    one is deleted (an interrupt during that deletion left a job's output
    committed and its statistics not).
    """
    parent = os.path.dirname(dest)
    if overwrite and os.path.lexists(dest):
        _refuse_existing(dest, path, overwrite)
        aside = os.path.join(parent, f".{os.path.basename(dest)}.old-{uuid.uuid4().hex}")
        os.rename(dest, aside)
        try:
            os.rename(staging, dest)
        except BaseException:
            try:
                os.rename(aside, dest)
            except OSError as exc:
                raise OutputError(
                    f"output {path!r} was replaced by another writer while this one "
                    f"committed; the previous output is kept at {aside!r}"
                ) from exc
            raise
        if on_commit is not None:
            on_commit()
        try:
            fsync_dir(parent)
            _remove_tree(aside)
        except BaseException:  # an interrupt while the old output is deleted: delete the rest, hidden otherwise
            _remove_tree(aside)
            raise
        return
    if os.path.lexists(dest):
        raise OutputError(
            f"output {path!r} appeared while it was being written (another writer?); "
            "set `overwrite: true` to replace it"
        )
    try:
        os.rename(staging, dest)
    except OSError as exc:
        raise OutputError(
            f"output {path!r} appeared while it was being written (another writer?): {exc}"
        ) from exc
    if on_commit is not None:
        on_commit()
    fsync_dir(parent)


def _staged_write(path: str, overwrite: bool, fill: Callable[[str], T], on_commit: Callable[[], None] | None = None) -> T:
    """Run ``fill(staging_folder)``, then commit the folder to ``path``.

    ``fill`` writes the data and the manifest. On any failure the staging
    folder is removed and nothing changes at ``path``; a
    :class:`ScalepipeError` or ``KeyboardInterrupt`` propagates as it is,
    anything else becomes an :class:`OutputError` naming ``path``.
    """
    dest = _destination(path)
    _refuse_existing(dest, path, overwrite)
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of output {path!r}: {exc}") from exc
    staging = os.path.join(parent, f".{os.path.basename(dest)}.staging-{uuid.uuid4().hex}")
    try:
        os.mkdir(staging)
        result = fill(staging)
        fsync_dir(staging)
        _commit(staging, dest, path, overwrite, on_commit)
        return result
    except ScalepipeError:
        _remove_tree(staging)
        raise
    except Exception as exc:
        _remove_tree(staging)
        raise OutputError(f"writing output {path!r} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        _remove_tree(staging)
        raise


def _index_is_meaningful(meta: pd.DataFrame) -> bool:
    """Keep the index unless it is an unnamed integer (positional) index."""
    index = meta.index
    return any(n is not None for n in index.names) or index.dtype.kind not in "iu"


def _arrow_schema(meta: pd.DataFrame, keep_index: bool) -> pa.Schema | None:
    """One Arrow schema for every partition; None where the meta cannot fix a type."""
    try:
        schema = pa.Schema.from_pandas(meta, preserve_index=keep_index)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    # an empty object column says nothing of its type; an Arrow-backed null column is one
    if any(pa.types.is_null(f.type) and not isinstance(d, pd.ArrowDtype) for f, d in zip(schema, meta.dtypes)):
        return None
    return schema


def _arrow_table(df: pd.DataFrame, schema: pa.Schema | None, keep_index: bool) -> pa.Table:
    """The partition as an Arrow table, NaN written as null (as ``pa.Table.from_pandas`` does).

    A float column holding no NaN is handed to Arrow without a copy or a
    null scan, which is most of the cost of ``from_pandas`` for scaled data.
    """
    if schema is None or keep_index:
        return _pandas_readable(pa.Table.from_pandas(df, schema=schema, preserve_index=keep_index))
    arrays = []
    for name, field in zip(df.columns, schema, strict=True):
        column = df[name]
        values = column.to_numpy() if isinstance(column.dtype, np.dtype) and column.dtype.kind == "f" else None
        if values is not None and not np.isnan(values).any():
            arrays.append(pa.array(values, type=field.type))
        else:
            arrays.append(pa.array(column, type=field.type, from_pandas=True))
    return _pandas_readable(pa.Table.from_arrays(arrays, schema=schema))


def _pandas_readable(table: pa.Table) -> pa.Table:
    """``table`` with pandas metadata that reads its Arrow-backed columns back as pandas reads the input's.

    Passthrough columns kept as Arrow data (:func:`_arrow_backed`) are
    recorded as, e.g., ``list<element: int64>[pyarrow]``, which
    ``pd.read_parquet`` fails on; recorded as ``object``, pandas reads them as
    it reads such columns anywhere (dates and decimals as objects, a
    dictionary as a Categorical).
    """
    metadata = table.schema.metadata or {}
    if b"[pyarrow]" not in metadata.get(b"pandas", b""):
        return table
    doc = json.loads(metadata[b"pandas"])
    for column in doc.get("columns", []):
        if str(column.get("numpy_type")).endswith("[pyarrow]"):
            column["numpy_type"] = "object"
    return table.replace_schema_metadata({**metadata, b"pandas": json.dumps(doc).encode()})


def _write_partition(
    df: pd.DataFrame,
    folder: str,
    number: int,
    data_format: str,
    keep_index: bool,
    schema: pa.Schema | None,
    parquet_options: Mapping[str, Any],
    flush: Literal["now", "later", "no"],
) -> dict[str, Any]:
    """Write one partition as ``part.<number>`` in ``folder``; runs on a worker.

    The file is written under a temporary name and renamed, so a retried task
    replaces its file whole and a reader never sees a partial one. ``flush``:
    ``"now"`` fsyncs it here (a worker on another machine: the client's
    fsync would not reach its cache), ``"later"`` starts its write to disk
    (the commit's fsync waits for it), ``"no"`` leaves it to the system.
    """
    name = f"part.{number:05d}.{data_format}"
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        if data_format == "parquet":
            table = _arrow_table(df, schema, keep_index)
            dictionary = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
            with open(tmp, "wb") as f:
                sink = _HashingWriter(f)
                pq.write_table(table, sink, use_dictionary=dictionary or False, **parquet_options)
            digest, size = sink.digest.hexdigest(), sink.size
        else:
            df.to_csv(tmp, index=keep_index, header=True)
            digest, size = _sha256(tmp)
        if flush == "now":
            _fsync_file(tmp)
        elif flush == "later":
            _start_writeback(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    if flush == "now":
        fsync_dir(folder)
    return {"name": name, "rows": len(df), "sha256": digest, "bytes": size}


def _remove_strays(folder: str, keep: set[str]) -> None:
    """Delete what a task killed mid-write left in ``folder`` (its temporary file)."""
    for name in os.listdir(folder):
        if name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, name))


def write_table(
    frame: dd.DataFrame | pd.DataFrame,
    path: str,
    format: Literal["parquet", "csv"],
    *,
    overwrite: bool = False,
    compression: str | None = None,
    compression_level: int | None = None,
    durable: bool = True,
    alongside: Sequence[Any] = (),
    on_commit: Callable[[], None] | None = None,
) -> Manifest:
    """Write a table atomically: all of it at ``path``, or nothing changes there.

    Each partition is written by a task on the active scheduler (the Dask
    workers when a ``distributed.Client`` is active) as ``part.00000.parquet``,
    ``part.00001.parquet``, ... in a staging folder beside ``path`` (each
    task starts its file's write to disk and goes on; on workers of another
    machine it fsyncs its file itself); then the files are fsynced, a
    ``_SUCCESS`` manifest is written and fsynced, and the folder is renamed
    into place. The data is computed once.

    Parameters
    ----------
    frame
        The table (a pandas frame is written as one partition). Column order
        and dtypes are kept (float32 stays float32); the index is written only
        when it is named or not an integer index.
    path
        The output folder.
    format
        ``"parquet"`` (no dictionary encoding for float columns) or ``"csv"``
        (with a header row).
    overwrite
        Replace an existing output. Only a folder with scalepipe's own
        ``_SUCCESS`` manifest is ever replaced; the old one is moved aside,
        the new one moved in, and the old one deleted (restored on failure).
    compression, compression_level
        Parquet only: the codec of the data pages (``"snappy"`` when
        ``None``, ``"zstd"``, ``"gzip"``, ``"brotli"`` or ``"none"``) and its
        level (``None``: pyarrow's default for the codec; zstd 1-22, gzip
        1-9, brotli 0-11).
    durable
        Flush the files to disk before the output is moved into place, so it
        survives a power loss or an operating-system crash once it is there.
        With ``False`` the kernel writes them back in its own time: a failed
        or killed job still leaves nothing at ``path``, but a power loss just
        after the run can leave an output whose files lack data
        (:func:`verify_output` tells). The manifest is flushed either way.
    alongside
        Lazy values (e.g. histograms of the same partitions) computed in the
        same ``dask.compute`` as the write, so shared inputs are read once;
        their values are in ``Manifest.alongside``.
    on_commit
        Called as soon as the output is in place (before an old one is
        deleted): where a job publishes what belongs with it (its statistics).

    Returns
    -------
    Manifest
        Files (name, rows, sha256, bytes), total rows and path.

    Raises
    ------
    OutputError
        ``path`` exists (without ``overwrite``) or is not a scalepipe output,
        another writer committed first, or the write failed (disk full, a
        failing task, ...). Nothing is left at ``path`` and the staging folder
        is removed. A :class:`ScalepipeError` raised while computing the data
        (for example a ``DataError`` naming a column) propagates unchanged,
        and so does ``KeyboardInterrupt``, after the same cleanup.

    Examples
    --------
    >>> manifest = write_table(scaled, "out/train_scaled", "parquet")  # doctest: +SKIP
    >>> manifest.rows  # doctest: +SKIP
    1000000
    """
    import dask.dataframe as dd

    if format not in ("parquet", "csv"):
        raise OutputError(
            f"table output format {format!r} is not supported; use 'parquet' or 'csv'"
        )
    _check_durable(durable)
    if format != "parquet" and (compression, compression_level) != (None, None):
        raise OutputError(f"compression and compression_level apply to parquet output only, not {format}")
    codec = compression or "snappy"
    problem = compression_problem(codec, compression_level, codec_given=compression is not None)
    if problem is not None:
        raise OutputError(f"{problem[0]}: {problem[1]}")
    if isinstance(frame, pd.DataFrame):
        frame = dd.from_pandas(frame, npartitions=1, sort=False)
    meta = frame._meta
    keep_index = _index_is_meaningful(meta)
    schema = _arrow_schema(meta, keep_index) if format == "parquet" else None
    writer = dask.delayed(_write_partition, pure=False)
    options = {"compression": codec, "compression_level": compression_level}

    flush = ("later" if _flushed_from_here() else "now") if durable else "no"

    def fill(staging: str) -> Manifest:
        tasks = [
            writer(part, staging, number, format, keep_index, schema, options, flush)
            for number, part in enumerate(frame.to_delayed())
        ]
        written, extra = dask.compute(tasks, list(alongside))
        _remove_strays(staging, {item["name"] for item in written})
        if durable:
            _fsync_tree(staging)  # the data on disk before the manifest says it is complete
        total = sum(item["rows"] for item in written)
        _write_manifest(staging, _manifest_document(format, files=list(written), rows=total))
        return Manifest(
            files=tuple(OutputFile(**item) for item in written),
            rows=total,
            path=_destination(path),
            format=format,
            alongside=tuple(extra),
        )

    return _staged_write(path, overwrite, fill, on_commit)


#: Encodings that describe how the input store laid out and compressed its chunks.
_STORE_ENCODINGS = ("chunks", "preferred_chunks", "shards", "compressor", "compressors", "filters", "serializer", "codecs")


def _without_store_encoding(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy whose variables are stored with their dask chunks and the output store's default codecs.

    A stored ``chunks`` encoding left over from reading conflicts with a
    dataset that was rechunked since; the input's codecs may belong to another
    Zarr format (a version 2 store's ``Blosc`` is no version 3 codec) or be
    lossy filters fitted to the input's values. The value encodings (a
    ``dtype``, CF packing, a ``_FillValue``, time units) stay: they are how
    an unchanged variable's values are stored.
    """
    out = ds.copy(deep=False)
    for var in out.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k not in _STORE_ENCODINGS}
    return out


def _check_durable(durable: object) -> None:
    if not isinstance(durable, bool):
        raise OutputError(f"durable must be True or False, got {durable!r}")


def write_array(
    ds: xr.Dataset, path: str, *, overwrite: bool = False, durable: bool = True, on_commit: Callable[[], None] | None = None
) -> None:
    """Write a dataset to a Zarr store atomically, keeping its dask chunks.

    The same protocol as :func:`write_table`: ``ds.to_zarr`` into a staging
    store beside ``path`` (computed on the active scheduler), fsync (unless
    ``durable`` is false, as for :func:`write_table`), a ``_SUCCESS``
    manifest inside the store naming the variables with their dims, shapes,
    dtypes and chunks, rename (then ``on_commit``, as for :func:`write_table`).

    Raises
    ------
    OutputError
        As for :func:`write_table`; also when the chunks cannot be stored in
        Zarr (chunks must be uniform except the last along each dimension).

    Examples
    --------
    >>> write_array(scaled_ds, "out/scaled.zarr")  # doctest: +SKIP
    """
    _check_durable(durable)
    data = _without_store_encoding(ds)

    def fill(staging: str) -> None:
        with warnings.catch_warnings():
            # xarray consolidates by default; zarr 3 warns that this is outside its spec
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently")
            data.to_zarr(staging, mode="w")
        variables = {
            str(name): {
                "dims": [str(d) for d in var.dims],
                "shape": list(var.shape),
                "dtype": str(var.dtype),
                "chunks": [list(c) for c in var.chunks] if var.chunks else None,
            }
            for name, var in data.variables.items()
        }
        if durable:
            _fsync_tree(staging)
        sizes = {
            os.path.relpath(os.path.join(folder, name), staging): os.path.getsize(os.path.join(folder, name))
            for folder, _, names in os.walk(staging)
            for name in names
        }
        _write_manifest(staging, _manifest_document("zarr", variables=variables, sizes=sizes))

    _staged_write(path, overwrite, fill, on_commit)
