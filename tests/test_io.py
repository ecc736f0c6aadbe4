"""Tests of scalepipe.io: sources, path checks, and the atomic commit protocol.

Reads run on the synchronous scheduler; writes run on a real two-process
``distributed.LocalCluster``; crash, disk-full and concurrent-writer cases run
in child processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalepipe.errors import ColumnError, DataError, InputError, OutputError
from scalepipe.io import (
    MANIFEST_NAME,
    TableSource,
    _write_partition,
    check_paths,
    read_array,
    read_manifest,
    read_table,
    verify_output,
    write_array,
    write_table,
    write_text_atomic,
)

xr = pytest.importorskip("xarray")


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture
def sync():
    with dask.config.set(scheduler="sync"):
        yield


def make_frame(start: int, rows: int) -> pd.DataFrame:
    """Rows numbered from ``start``: an int id, float32 and float64 features, text."""
    ids = np.arange(start, start + rows)
    return pd.DataFrame(
        {
            "id": ids,
            "f32": (ids * 0.5).astype("float32"),
            "f64": np.sqrt(ids.astype("float64")) + 1e9,
            "name": [f"row{i}" for i in ids],
        }
    )


def write_parquet_files(folder: Path, n_files: int, rows: int = 7) -> pd.DataFrame:
    """``part.0.parquet`` .. ``part.<n-1>.parquet`` (unpadded, to test natural order)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n_files):
        df = make_frame(i * rows, rows)
        df.to_parquet(folder / f"part.{i}.parquet", index=False)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def leftovers(parent: Path) -> list[str]:
    """Staging or set-aside folders left beside outputs."""
    return sorted(p.name for p in parent.iterdir() if ".staging-" in p.name or ".old-" in p.name)


def assert_same_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.reset_index(drop=True)
    expected = expected.reset_index(drop=True)
    assert list(got.columns) == list(expected.columns)
    for col in expected.columns:
        if expected[col].dtype.kind in "fiu":
            assert got[col].dtype == expected[col].dtype, col
            np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy())
        else:
            assert got[col].astype(str).tolist() == expected[col].astype(str).tolist()


def run_child(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# read_table: Parquet
# --------------------------------------------------------------------------


def test_read_parquet_folder_keeps_natural_file_order_and_dtypes(tmp_path, sync):
    expected = write_parquet_files(tmp_path / "in", n_files=12)
    (tmp_path / "in" / "_SUCCESS").write_text("")
    (tmp_path / "in" / ".part.0.parquet.crc").write_text("junk")

    src = read_table(str(tmp_path / "in"), "parquet")

    assert isinstance(src, TableSource)
    assert src.frame.npartitions == len(src.files) == 12
    assert [Path(f).name for f in src.files] == [f"part.{i}.parquet" for i in range(12)]
    assert src.schema["id"] == "int64" and src.schema["f32"] == "float32"
    assert src.schema["f64"] == "float64"
    assert_same_frame(src.frame.compute(), expected)


def test_read_parquet_single_file_and_glob(tmp_path, sync):
    expected = write_parquet_files(tmp_path / "in", n_files=3)
    one = read_table(str(tmp_path / "in" / "part.1.parquet"), "parquet")
    assert_same_frame(one.frame.compute(), expected.iloc[7:14])

    globbed = read_table(str(tmp_path / "in" / "*.parquet"), "parquet")
    assert globbed.frame.npartitions == 3
    assert_same_frame(globbed.frame.compute(), expected)


def test_read_parquet_splits_large_files_by_row_group_in_order(tmp_path, sync):
    df = make_frame(0, 1000)
    (tmp_path / "in").mkdir()
    df.to_parquet(tmp_path / "in" / "a.parquet", index=False, row_group_size=100)
    df.iloc[::-1].to_parquet(tmp_path / "in" / "b.parquet", index=False, row_group_size=500)
    with dask.config.set({"scalepipe.io.parquet-partition-size": 1}):
        src = read_table(str(tmp_path / "in"), "parquet")
    assert src.frame.npartitions == 12
    assert src.files.count(str(tmp_path / "in" / "a.parquet")) == 10
    assert_same_frame(src.frame.compute(), pd.concat([df, df.iloc[::-1]]))


def test_read_parquet_selects_columns(tmp_path, sync):
    expected = write_parquet_files(tmp_path / "in", n_files=2)
    src = read_table(str(tmp_path / "in"), "parquet", columns=["f64", "id"])
    assert list(src.schema) == ["f64", "id"]
    assert_same_frame(src.frame.compute(), expected[["f64", "id"]])
    assert_same_frame(src.frame[["id"]].compute(), expected[["id"]])
    with pytest.raises(ColumnError, match="'nope'.*'f32'"):
        read_table(str(tmp_path / "in"), "parquet", columns=["id", "nope"])


def test_a_boolean_column_with_nulls_stays_boolean_through_read_and_write(tmp_path, sync):
    """It was read as text (an object column, which Dask turns into strings),
    and written back as the strings 'True' and 'False'."""
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"b": pa.array([True, False, True]), "x": [1.0, 2.0, 3.0]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"b": pa.array([None, True, False]), "x": [4.0, 5.0, 6.0]}), tmp_path / "in" / "b.parquet")
    src = read_table(str(tmp_path / "in"), "parquet")
    assert src.schema == {"b": "boolean", "x": "float64"}
    assert src.frame.compute()["b"].tolist() == [True, False, True, pd.NA, True, False]
    write_table(src.frame, str(tmp_path / "out"), "parquet")
    back = pq.read_table(tmp_path / "out")
    assert back.schema.field("b").type == pa.bool_()
    assert back.column("b").to_pylist() == [True, False, True, None, True, False]


@pytest.mark.parametrize(
    ("column", "detail"),
    [
        (pa.array([True, None, False]), "dtype bool cannot hold (a null)"),  # was written as False, silently
        (pa.array([1, None, 3], pa.int64()), "dtype int64 cannot hold (a null)"),
        (pa.array(["a", "b", "c"]), "dtype int64 cannot hold"),
        (pa.array([1.5, 2.0, 3.0]), "dtype int64 cannot hold (a value it would change)"),  # was read as 1
        (pa.array([0, 2, 5], pa.int8()), "dtype bool cannot hold (a value it would change)"),  # was read as True
    ],
    ids=["bool-null", "int-null", "text", "float-as-int", "int-as-bool"],
)
def test_a_file_changed_after_its_schema_was_read_is_named(tmp_path, sync, column, detail):
    (tmp_path / "in").mkdir()
    boolean = pa.types.is_boolean(column.type) or column.type == pa.int8()
    first = pa.table({"c": pa.array([True, False, True]) if boolean else pa.array([1, 2, 3]), "x": [1.0, 2.0, 3.0]})
    pq.write_table(first, tmp_path / "in" / "a.parquet")
    pq.write_table(first, tmp_path / "in" / "b.parquet")
    src = read_table(str(tmp_path / "in"), "parquet")
    pq.write_table(pa.table({"c": column, "x": [4.0, 5.0, 6.0]}), tmp_path / "in" / "b.parquet")  # replaced mid-job
    with pytest.raises(InputError, match=re.escape(f"b.parquet': column 'c' holds values its {detail}")):
        src.frame.compute()


def test_an_int_column_with_nulls_in_one_file_keeps_its_exact_values(tmp_path, sync):
    """It was read as float64 (as to_pandas does): 2**53 + 1 became 2**53,
    in a passthrough ID column and in a key, merging two keys."""
    (tmp_path / "in").mkdir()
    big = 2**53
    table_a = pa.table({"k": pa.array([1, big + 1, 3], pa.int64()), "u": pa.array([1, 2, 3], pa.uint8()), "x": [1.0, 2.0, 3.0]})
    table_b = pa.table({"k": pa.array([4, None, big], pa.int64()), "u": pa.array([None, 2, 3], pa.uint8()), "x": [4.0, 5.0, 6.0]})
    pq.write_table(table_a, tmp_path / "in" / "a.parquet")
    pq.write_table(table_b, tmp_path / "in" / "b.parquet")
    src = read_table(str(tmp_path / "in"), "parquet")
    assert src.schema == {"k": "Int64", "u": "UInt8", "x": "float64"}
    got = src.frame.compute()
    assert got["k"].tolist() == [1, big + 1, 3, 4, pd.NA, big]
    write_table(src.frame, str(tmp_path / "out"), "parquet")
    back = pq.read_table(tmp_path / "out")
    assert back.schema.field("k").type == pa.int64() and back.schema.field("u").type == pa.uint8()
    pd.read_parquet(tmp_path / "out").to_parquet(tmp_path / "by_pandas.parquet")  # pandas metadata: Int64 already
    assert read_table(str(tmp_path / "by_pandas.parquet"), "parquet").frame.compute()["k"].tolist()[:2] == [1, big + 1]
    assert back.column("k").to_pylist() == [1, big + 1, 3, 4, None, big]
    assert back.column("u").to_pylist() == [1, 2, 3, None, 2, 3]


def test_truncated_parquet_file_is_named_before_any_work(tmp_path):
    write_parquet_files(tmp_path / "in", n_files=3)
    bad = tmp_path / "in" / "part.1.parquet"
    bad.write_bytes(bad.read_bytes()[:-30])
    with pytest.raises(InputError, match=r"part\.1\.parquet.*(truncated|corrupt)"):
        read_table(str(tmp_path / "in"), "parquet")


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="nothing-here.*does not exist"):
        read_table(str(tmp_path / "nothing-here"), "parquet")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_text("")
    with pytest.raises(InputError, match="no data files"):
        read_table(str(tmp_path / "empty"), "parquet")
    with pytest.raises(InputError, match="no files match"):
        read_table(str(tmp_path / "*.parquet"), "csv")


def test_mismatched_parquet_schemas_name_file_and_column(tmp_path):
    write_parquet_files(tmp_path / "in", n_files=3)
    odd = make_frame(0, 3).rename(columns={"f64": "g64"})
    odd.to_parquet(tmp_path / "in" / "part.2.parquet", index=False)
    with pytest.raises(InputError, match=r"part\.2\.parquet.*'f64'"):
        read_table(str(tmp_path / "in"), "parquet")
    typed = make_frame(0, 3).astype({"f32": "float64"})
    typed.to_parquet(tmp_path / "in" / "part.2.parquet", index=False)
    with pytest.raises(InputError, match=r"part\.2\.parquet.*'f32'.*double"):
        read_table(str(tmp_path / "in"), "parquet")


# --------------------------------------------------------------------------
# read_table: CSV
# --------------------------------------------------------------------------


def test_read_csv_blocks_keep_order_and_name_their_files(tmp_path, sync):
    (tmp_path / "in").mkdir()
    frames = [make_frame(i * 300, 300) for i in range(3)]
    for i, df in enumerate(frames):
        df.to_csv(tmp_path / "in" / f"part.{i}.csv", index=False)
    with dask.config.set({"scalepipe.io.csv-blocksize": 2048}):
        src = read_table(str(tmp_path / "in"), "csv")
    assert src.frame.npartitions == len(src.files) > 3
    assert src.files == sorted(src.files, key=lambda f: int(Path(f).stem.split(".")[1]))
    assert src.schema["id"] == "float64"  # CSV integers are read as float64
    got = src.frame.compute()
    expected = pd.concat(frames).astype({"id": "float64", "f32": "float64"})
    assert_same_frame(got[["id", "f32", "name"]], expected[["id", "f32", "name"]])
    np.testing.assert_array_equal(got["f64"].to_numpy(), expected["f64"].to_numpy())


def test_read_csv_bad_value_names_file_and_column(tmp_path, sync):
    (tmp_path / "in").mkdir()
    make_frame(0, 5).to_csv(tmp_path / "in" / "a.csv", index=False)
    bad = make_frame(5, 5).astype({"f64": object})
    bad.loc[3, "f64"] = "oops"
    bad.to_csv(tmp_path / "in" / "b.csv", index=False)
    src = read_table(str(tmp_path / "in"), "csv")
    with pytest.raises(InputError, match=r"b\.csv.*'f64'.*'oops'"):
        src.frame.compute()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_read_csv_bad_value_in_the_only_or_compressed_file_names_the_column(tmp_path, sync, suffix):
    """A compressed file is read whole: its error named no column (pandas' own message)."""
    bad = make_frame(0, 6).astype({"f64": object})
    bad.loc[4, "f64"] = "oops"
    (tmp_path / "in").mkdir()
    bad.to_csv(tmp_path / "in" / f"a{suffix}", index=False)
    with dask.config.set({"scalepipe.io.csv-sample-rows": 2}):  # the dtypes come from rows before the bad one
        src = read_table(str(tmp_path / "in"), "csv")
    with pytest.raises(InputError, match=f"a{suffix.replace('.', '[.]')}.*column 'f64' holds 'oops', not a number"):
        src.frame.compute()


def test_a_header_only_csv_file_neither_decides_the_dtypes_nor_hides_an_empty_input(tmp_path, sync):
    """The dtypes come from the first file with rows (a header-only first file
    made every column text: 'not numeric'); an input with no rows at all says so."""
    (tmp_path / "in").mkdir()
    df = make_frame(0, 5)
    df.iloc[:0].to_csv(tmp_path / "in" / "a.csv", index=False)
    df.iloc[:0].to_csv(tmp_path / "in" / "a2.csv.gz", index=False)  # compressed, read whole
    df.to_csv(tmp_path / "in" / "b.csv", index=False)
    src = read_table(str(tmp_path / "in"), "csv")
    assert src.schema["f64"] == "float64"
    np.testing.assert_array_equal(src.frame.compute()["f64"].to_numpy(), df["f64"].to_numpy())
    (tmp_path / "in" / "b.csv").unlink()
    (tmp_path / "in" / "a2.csv.gz").unlink()
    with pytest.raises(InputError, match="has a header but no rows in any of its 1 file"):
        read_table(str(tmp_path / "in"), "csv")


def test_a_csv_boolean_column_with_blanks_stays_boolean(tmp_path, sync):
    """A blank in the sampled rows made the column text ('True'/'False'
    strings in the output); one further down failed as "Bool column has NA"."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("b,x\nTrue,1\n,2\nFalse,3\n")
    (tmp_path / "in" / "b.csv").write_text("b,x\nfalse,4\n,5\n")
    src = read_table(str(tmp_path / "in"), "csv")
    assert src.schema == {"b": "boolean", "x": "float64"}
    assert src.frame.compute()["b"].tolist() == [True, pd.NA, False, False, pd.NA]
    write_table(src.frame, str(tmp_path / "out"), "parquet")
    assert pq.read_table(tmp_path / "out").column("b").to_pylist() == [True, None, False, False, None]
    (tmp_path / "in" / "b.csv").write_text("b,x\nfalse,4\nmaybe,5\n")
    with pytest.raises(InputError, match="b.csv' .*column 'b' holds 'maybe', not true or false"):
        read_table(str(tmp_path / "in"), "csv").frame.compute()


def test_csv_integers_beyond_2_53_are_read_exactly(tmp_path, sync):
    """Such columns were read as float64: 2**53 + 1 became 2**53 (IDs,
    nanosecond timestamps); and pandas' own nullable-integer parsing rounds a
    whole block through float64 once one value is written as ``7.0``."""
    (tmp_path / "in").mkdir()
    big, ts, top = 2**53 + 1, 1_700_000_000_000_000_001, 2**64 - 1
    (tmp_path / "in" / "a.csv").write_text(f"id,ts,u,small,x\n{big},{ts},{top},3,1.5\n{big + 2},,1,4,2.5\n")
    (tmp_path / "in" / "b.csv").write_text(f"id,ts,u,small,x\n{-big},{ts + 2},2,5,3.5\n7.0,1e3,3,,4.5\n{big}.0,-0,+4,6,5.5\n")
    src = read_table(str(tmp_path / "in"), "csv")
    # a 7.0 among the sampled values made the column float64, rounding the others
    (tmp_path / "seven").mkdir()
    (tmp_path / "seven" / "a.csv").write_text(f"x,id\n1,{big}\n2,7.0\n3,{big + 2}\n")
    seven = read_table(str(tmp_path / "seven"), "csv")
    assert seven.schema["id"] == "Int64" and seven.frame.compute()["id"].tolist() == [big, 7, big + 2]
    assert src.schema == {"id": "Int64", "ts": "Int64", "u": "UInt64", "small": "float64", "x": "float64"}
    got = src.frame.compute()
    assert got["id"].tolist() == [big, big + 2, -big, 7, big]
    assert got["ts"].tolist() == [ts, pd.NA, ts + 2, 1000, 0]
    assert got["u"].tolist() == [top, 1, 2, 3, 4]
    write_table(src.frame, str(tmp_path / "out"), "parquet")
    written = pq.read_table(tmp_path / "out")
    assert written.column("id").to_pylist() == [big, big + 2, -big, 7, big]
    assert written.column("ts").to_pylist() == [ts, None, ts + 2, 1000, 0]
    assert written.column("u").type == pa.uint64() and written.column("u").to_pylist() == [top, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("value", "shown"),
    [("2.5", "2.5"), ("1e300", "1e300"), ("4503599627370496.4", "4503599627370496.4"), (str(2**63), str(2**63)), (" nan", " nan"), ("x", "x")],
)
def test_a_value_a_large_integer_csv_column_cannot_hold_is_named(tmp_path, sync, value, shown):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text(f"id,x\n{2**60},1\n")
    (tmp_path / "in" / "b.csv").write_text(f"id,x\n5,2\n{value},3\n")
    src = read_table(str(tmp_path / "in"), "csv")
    with pytest.raises(InputError, match=rf"b\.csv' .*column 'id' holds '{re.escape(shown)}', not an integer that Int64 holds"):
        src.frame.compute()


def test_a_csv_row_with_more_fields_than_the_header_is_an_error(tmp_path, sync):
    """pandas' usecols dropped the extra value silently (lost from the output)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text("a,b,s\n1,10,x\n2,20,y\n3,30,z,EXTRA\n")
    with pytest.raises(InputError, match=r"x\.csv' .*cannot be parsed: .*Expected 3 fields in line 4 of the file"):
        read_table(str(tmp_path / "in"), "csv").frame.compute()


@pytest.mark.parametrize("blocksize", ["64MiB", "1KiB", "977B"])
def test_a_csv_parse_error_names_the_file_line(tmp_path, sync, blocksize):
    """pandas counts the lines of the block it read, after the header: line
    700 of the file was reported as "line 699", or "line 32" in a later block."""
    import dask

    (tmp_path / "in").mkdir()
    rows = [f"{i},{i}" if i != 700 else f"{i},{i},9" for i in range(2, 1001)]
    (tmp_path / "in" / "x.csv").write_text("a,b\n" + "\n".join(rows) + "\n")
    with dask.config.set({"scalepipe.io.csv-blocksize": blocksize}):
        with pytest.raises(InputError, match=r"x\.csv' \(bytes \d+-\d+\) cannot be parsed: .*Expected 2 fields in line 700 of the file, saw 3"):
            read_table(str(tmp_path / "in"), "csv").frame.compute()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
@pytest.mark.parametrize("columns", [None, ["x"]])
def test_csv_rows_all_longer_than_the_header(tmp_path, sync, suffix, columns):
    """Every row one field longer than the header: pandas took the first field
    as the index and shifted every column one to the left (a compressed file:
    exit 0, x fitted on t's values), or failed naming no row (a subset of the
    columns). An empty last field (a delimiter at the end of every line) is
    nothing; a value there is an error naming the line."""
    import gzip

    def write(text: bytes) -> str:
        folder = tmp_path / f"in{len(text)}"
        folder.mkdir()
        (folder / f"a{suffix}").write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
        return str(folder)

    got = read_table(write(b"id,x,t\n001,1,10,\n002,2,30,\n"), "csv", columns).frame.compute()
    assert got["x"].tolist() == [1.0, 2.0] and (columns or got["t"].tolist() == [10.0, 30.0])
    with pytest.raises(InputError, match=r"cannot be parsed: a row holds more fields than the header's 3 \(line 2 of the file\)"):
        read_table(write(b"id,x,t\n001,1,10,7\n002,2,30,8\n"), "csv", columns).frame.compute()


def test_a_csv_with_carriage_returns_alone_is_refused(tmp_path):
    """Blocks split at "\\n": such a file was read as its header alone, its rows lost (exit 0)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "b.csv").write_bytes(b"id,x\r007,1\r008,2\r")
    with pytest.raises(InputError, match=r"b\.csv' ends its lines with a carriage return alone"):
        read_table(str(tmp_path / "in"), "csv")
    (tmp_path / "in" / "b.csv").write_bytes(b"id,x\r\n007,1\r\n008,2\r\n")  # Windows line ends are fine
    assert read_table(str(tmp_path / "in"), "csv").frame.compute()["x"].tolist() == [1.0, 2.0]


def test_csv_text_columns_are_read_as_written(tmp_path, sync):
    """``text`` keeps 007 as text (a key column whose fitted keys are text), blanks missing;
    ``verbatim`` keeps NA and blanks as written too."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("k,v,x\n007,NA,1\n,5,2\n8,,3\n")
    got = read_table(str(tmp_path / "in"), "csv", text=["k"], verbatim=["v"]).frame.compute()
    assert got["k"].tolist()[::2] == ["007", "8"] and pd.isna(got["k"][1])
    assert got["v"].tolist() == ["NA", "5", ""] and got["x"].tolist() == [1.0, 2.0, 3.0]


def test_parquet_verbatim_columns_are_the_files_arrow_data(tmp_path, sync):
    """``verbatim`` keeps NaN and null apart and the Arrow types; the rows stay
    beside their index (the file's pandas index) and the other columns keep pandas' dtypes."""
    (tmp_path / "in").mkdir()
    df = pd.DataFrame({"x": [1.0, np.nan, 3.0], "s": ["a", None, "c"]}, index=pd.Index([30, 10, 20], name="row"))
    table = pa.Table.from_pandas(df)
    table = table.add_column(1, "f", pa.array([np.nan, None, 2.5], from_pandas=False))
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    got = read_table(str(tmp_path / "in"), "parquet", verbatim=["f", "s"]).frame.compute()
    assert list(got.columns) == ["x", "f", "s"] and got.index.tolist() == [30, 10, 20]
    assert got["x"].dtype == np.float64 and got["f"].dtype == pd.ArrowDtype(pa.float64())
    assert pa.array(got["s"]).type == pq.read_schema(tmp_path / "in" / "a.parquet").field("s").type
    f = pa.array(got["f"])
    assert f.is_null().to_pylist() == [False, True, False] and np.isnan(f[0].as_py()) and f[2].as_py() == 2.5
    assert got["s"].tolist()[::2] == ["a", "c"] and pd.isna(got["s"].iloc[1])


@pytest.mark.parametrize(
    ("setting", "value", "what"),
    [
        ("scalepipe.io.csv-blocksize", "banana", "a size like '64MiB'"),
        ("scalepipe.io.csv-sample-rows", -3, "a whole number of rows like 10000"),
        ("scalepipe.io.csv-sample-rows", "1e3", "a whole number of rows like 10000"),
        ("scalepipe.io.parquet-partition-size", "0", "a size like '128MiB'"),
    ],
)
def test_a_bad_setting_is_named(tmp_path, setting, value, what):
    """A bad value failed as dask's "Could not interpret 'banana' as a byte
    unit", or as "CSV file ... cannot be parsed" about a healthy file."""
    import dask

    from scalepipe.errors import ConfigError

    (tmp_path / "a.csv").write_text("x\n1\n")
    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "a.parquet")
    variable = "DASK_" + setting.upper().replace(".", "__").replace("-", "_")
    with dask.config.set({setting: value}), pytest.raises(ConfigError, match=rf"^setting {setting} \({variable}\): {re.escape(repr(value))} is not {re.escape(what)}$"):
        read_table(str(tmp_path / ("a.parquet" if "parquet" in setting else "a.csv")), "parquet" if "parquet" in setting else "csv")
    with dask.config.set({setting: 2 if "rows" in setting else "1MiB"}):
        assert read_table(str(tmp_path / "a.csv"), "csv").frame.compute()["x"].tolist() == [1.0]


def test_a_parquet_file_naming_a_column_twice_is_an_error(tmp_path):
    """It failed with a raw "AttributeError: 'DataFrame' object has no attribute 'dtype'"."""
    (tmp_path / "in").mkdir()
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array([5.0, 6.0])], names=["x", "p", "p"])
    pq.write_table(table, tmp_path / "in" / "part.0.parquet")
    with pytest.raises(InputError, match=r"part\.0\.parquet' has column 'p' 2 times; column names must be unique"):
        read_table(str(tmp_path / "in"), "parquet")


def test_a_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    """pandas renamed the copy ('a.1'), which was written as the output's header."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text("a,a,b\n1,2,3\n")
    with pytest.raises(InputError, match=r"x\.csv': the header names column 'a' 2 times"):
        read_table(str(tmp_path / "in"), "csv")
    # an empty name is read as pandas names it, which may repeat another (pandas refused it later, naming nothing)
    (tmp_path / "in" / "x.csv").write_text("x,,Unnamed: 1\n1,2,3\n")
    with pytest.raises(InputError, match=r"x\.csv': the header names column 'Unnamed: 1' 2 times \(an empty name"):
        read_table(str(tmp_path / "in"), "csv")


def test_a_glob_matching_folders_reads_them_recursively(tmp_path, sync):
    """Folders matched by a glob were skipped (only-folder matches: 'no files match')."""
    for i, sub in enumerate(["day1", "day2", "day2/late"]):
        (tmp_path / sub).mkdir(parents=True)
        make_frame(i, 3).to_parquet(tmp_path / sub / f"part.{i}.parquet")
    make_frame(9, 3).to_parquet(tmp_path / "extra.parquet")
    src = read_table(str(tmp_path / "day*"), "parquet")
    assert [Path(f).relative_to(tmp_path).as_posix() for f in src.paths] == ["day1/part.0.parquet", "day2/late/part.2.parquet", "day2/part.1.parquet"]
    assert len(read_table(str(tmp_path / "*"), "parquet").paths) == 4


def test_read_compressed_csv_whole_file(tmp_path, sync):
    (tmp_path / "in").mkdir()
    df = make_frame(0, 40)
    df.to_csv(tmp_path / "in" / "a.csv.gz", index=False)
    src = read_table(str(tmp_path / "in"), "csv", columns=["f64", "name"])
    assert src.frame.npartitions == 1
    assert_same_frame(src.frame.compute(), df[["f64", "name"]])


def test_read_csv_header_mismatch(tmp_path):
    (tmp_path / "in").mkdir()
    make_frame(0, 5).to_csv(tmp_path / "in" / "a.csv", index=False)
    make_frame(0, 5).rename(columns={"f32": "x"}).to_csv(tmp_path / "in" / "b.csv", index=False)
    with pytest.raises(InputError, match=r"b\.csv.*'x'"):
        read_table(str(tmp_path / "in"), "csv")


# --------------------------------------------------------------------------
# read_array
# --------------------------------------------------------------------------


def make_dataset() -> xr.Dataset:
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {
            "t": (("time", "channel"), rng.normal(size=(20, 3)).astype("float32")),
            "u": (("time",), rng.normal(size=20)),
        },
        coords={"time": np.arange(20), "channel": [10, 20, 30]},
    ).chunk({"time": 8})


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_read_zarr_keeps_stored_chunks_and_selects_variables(tmp_path):
    make_dataset().to_zarr(tmp_path / "in.zarr", mode="w")
    ds = read_array(str(tmp_path / "in.zarr"), "zarr")
    assert ds["t"].data.chunks == ((8, 8, 4), (3,))
    assert ds["t"].dtype == np.float32
    only = read_array(str(tmp_path / "in.zarr"), "zarr", ["u"])
    assert list(only.data_vars) == ["u"]
    with pytest.raises(ColumnError, match="'v'.*'t'"):
        read_array(str(tmp_path / "in.zarr"), "zarr", ["v"])
    with pytest.raises(InputError, match="missing.zarr"):
        read_array(str(tmp_path / "missing.zarr"), "zarr")


def test_read_netcdf(tmp_path, monkeypatch):
    path = tmp_path / "in.nc"
    path.write_bytes(b"not really netcdf")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "h5py" else real_find_spec(name, *a),
    )
    with pytest.raises(InputError, match=r"scalepipe\[netcdf\]"):
        read_array(str(path), "netcdf")
    monkeypatch.undo()

    pytest.importorskip("h5py")
    classic = tmp_path / "classic.nc"  # a NetCDF3 header: h5py said "file signature not found", as for any garbage
    classic.write_bytes(b"CDF\x01" + bytes(28))
    with pytest.raises(InputError, match=r"is a NetCDF3 \(classic\) file; scalepipe reads NetCDF4 \(HDF5\) files"):
        read_array(str(classic), "netcdf")
    with pytest.raises(InputError, match=r"cannot be opened"):  # not NetCDF at all
        read_array(str(path), "netcdf")
    make_dataset().to_netcdf(path, engine="h5netcdf")
    ds = read_array(str(path), "netcdf", ["t"])
    np.testing.assert_array_equal(ds["t"].values, make_dataset()["t"].values)


# --------------------------------------------------------------------------
# check_paths
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inp", "out", "fragment"),
    [
        ("data", "data", "is the input"),
        ("data", "data/", "is the input"),
        ("data", "data/scaled", "inside the input"),
        ("data/*.parquet", "data/scaled", "inside the input"),
        ("data/train", "data", "contains the input"),
        ("data/train", "./data/x/../train", "is the input"),
    ],
)
def test_check_paths_refuses_overlap(tmp_path, monkeypatch, inp, out, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "train").mkdir(parents=True)
    with pytest.raises(OutputError, match=fragment):
        check_paths(inp, out)


def test_check_paths_allows_siblings_and_respects_output_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    check_paths("data", "data_scaled")
    check_paths("data/*.parquet", "out/scaled", output_root="out")
    with pytest.raises(OutputError, match="outside the allowed output root"):
        check_paths("data", "out/../elsewhere", output_root="out")
    (tmp_path / "out" / "link").symlink_to(tmp_path / "data")
    with pytest.raises(OutputError, match="inside the input"):
        check_paths("data", "out/link/scaled")
    (tmp_path / "other").mkdir()
    (tmp_path / "out" / "escape").symlink_to(tmp_path / "other")
    with pytest.raises(OutputError, match="outside the allowed output root"):
        check_paths("data", "out/escape/scaled", output_root="out")
    check_paths("data", "~/x", output_root=str(Path("~").expanduser()))


# --------------------------------------------------------------------------
# write_table on a distributed cluster
# --------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_write_table_round_trip_with_manifest(tmp_path, client, durable):
    expected = pd.concat([make_frame(i * 50, 50) for i in range(4)], ignore_index=True)
    frame = dd.from_pandas(expected, npartitions=4, sort=False)
    dest = tmp_path / "out"

    manifest = write_table(frame, str(dest), "parquet", durable=durable)

    assert manifest.rows == 200 and len(manifest.files) == 4
    assert [f.name for f in manifest.files] == [f"part.{i:05d}.parquet" for i in range(4)]
    doc = json.loads((dest / MANIFEST_NAME).read_text())
    assert doc["format"] == "scalepipe.output" and doc["version"] == 1 and doc["rows"] == 200
    for entry in manifest.files:
        data = (dest / entry.name).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.bytes == len(data)
        assert entry.rows == pq.read_metadata(dest / entry.name).num_rows == 50
    assert read_manifest(str(dest)) == manifest == verify_output(str(dest))
    assert leftovers(tmp_path) == []

    back = pd.read_parquet(dest)
    assert back["f32"].dtype == np.float32
    assert_same_frame(back, expected)
    src = read_table(str(dest), "parquet")
    assert_same_frame(src.frame.compute(), expected)

    meta = pq.ParquetFile(dest / "part.00000.parquet").metadata
    columns = [meta.schema.column(i).name for i in range(4)]
    f64_encodings = meta.row_group(0).column(columns.index("f64")).encodings
    assert not any("DICTIONARY" in e for e in f64_encodings)
    assert meta.row_group(0).column(0).compression == "SNAPPY"


def test_written_parquet_equals_arrow_from_pandas(tmp_path, sync):
    """What write_table stores is what ``pa.Table.from_pandas`` makes of each
    partition: NaN as null in every float column that holds one, the same
    types and values, whether or not a column holds a NaN; every file carries
    the pandas metadata of the frame's meta, so all partitions carry the same."""
    rng = np.random.default_rng(5)
    n = 1000
    expected = pd.DataFrame(
        {
            "clean64": rng.standard_normal(n),
            "nan64": np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n)),
            "clean32": rng.standard_normal(n).astype(np.float32),
            "nan32": np.where(rng.random(n) < 0.1, np.nan, rng.standard_normal(n)).astype(np.float32),
            "ints": rng.integers(0, 9, n),
            "nullable": pd.array(np.where(rng.random(n) < 0.1, None, rng.integers(0, 9, n)), dtype="Int64"),
            "text": rng.choice(["a", "b", None], n),
        }
    )
    frame = dd.from_pandas(expected, npartitions=2, sort=False)
    write_table(frame, str(tmp_path / "out"), "parquet")
    written = pq.read_table(tmp_path / "out" / "part.00000.parquet")
    schema = pa.Schema.from_pandas(frame._meta, preserve_index=False)
    reference = pa.Table.from_pandas(expected.iloc[:500], schema=schema, preserve_index=False)
    assert written.equals(reference)
    assert written.schema.equals(schema, check_metadata=True)
    assert written.column("nan64").null_count == int(expected["nan64"].iloc[:500].isna().sum()) > 0
    assert written.column("clean64").null_count == 0


@pytest.mark.parametrize(
    ("codec", "level", "stored"),
    [("none", None, "UNCOMPRESSED"), ("zstd", 7, "ZSTD"), ("gzip", 1, "GZIP"), ("brotli", None, "BROTLI")],
)
def test_write_table_compression(tmp_path, sync, codec, level, stored):
    """Every data page of every column is stored with the codec asked for, and
    the values read back unchanged (NaN included)."""
    expected = make_frame(0, 40)
    expected.loc[3, "f64"] = np.nan
    frame = dd.from_pandas(expected, npartitions=2, sort=False)
    manifest = write_table(frame, str(tmp_path / "out"), "parquet", compression=codec, compression_level=level)
    for item in manifest.files:
        meta = pq.ParquetFile(tmp_path / "out" / item.name).metadata
        codecs = {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups) for c in range(meta.num_columns)}
        assert codecs == {stored}
    assert_same_frame(read_table(str(tmp_path / "out"), "parquet").frame.compute(), expected)
    verify_output(str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("fmt", "codec", "level", "message"),
    [
        ("parquet", "lz4", None, "compression: must be 'snappy', 'zstd', 'gzip', 'brotli' or 'none', got 'lz4'"),
        ("parquet", "snappy", 3, "compression_level: 'snappy' has no levels, got 3"),
        ("parquet", None, 3, "compression_level: compression is unset (default 'snappy'), which has no levels"),
        ("parquet", "zstd", 23, "compression_level: must be an integer from 1 to 22 for zstd, got 23"),
        ("csv", "zstd", None, "compression and compression_level apply to parquet output only, not csv"),
    ],
)
def test_write_table_refuses_a_bad_codec_before_writing(tmp_path, sync, fmt, codec, level, message):
    frame = dd.from_pandas(make_frame(0, 10), npartitions=1)
    with pytest.raises(OutputError, match=re.escape(message)):
        write_table(frame, str(tmp_path / "out"), fmt, compression=codec, compression_level=level)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("durable", [True, False])
def test_durable_flushes_every_file_before_the_manifest(tmp_path, sync, monkeypatch, durable):
    """Watches the real fsync (it still runs): with durable every data file is
    flushed before the manifest is written; without it none is."""
    flushed: list[str] = []
    real_fsync = os.fsync

    def watched(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        flushed.append("manifest" if path.endswith(MANIFEST_NAME) else os.path.basename(path))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watched)
    frame = dd.from_pandas(make_frame(0, 40), npartitions=4)
    write_table(frame, str(tmp_path / "out"), "parquet", durable=durable)
    parts = [f"part.{i:05d}.parquet" for i in range(4)]
    data = [name for name in flushed if name.startswith("part.")]
    assert "manifest" in flushed
    if durable:
        assert sorted(data) == parts and all(flushed.index(p) < flushed.index("manifest") for p in parts)
    else:
        assert data == []


@pytest.mark.parametrize("durable", ["false", 0, None])
def test_durable_must_be_a_flag(tmp_path, sync, durable):
    """``durable="false"`` flushed (a non-empty string is true): refused, as the config refuses it."""
    frame = dd.from_pandas(make_frame(0, 10), npartitions=1)
    with pytest.raises(OutputError, match=re.escape(f"durable must be True or False, got {durable!r}")):
        write_table(frame, str(tmp_path / "out"), "parquet", durable=durable)
    with pytest.raises(OutputError, match="durable must be True or False"):
        write_array(make_dataset(), str(tmp_path / "out.zarr"), durable=durable)
    assert leftovers(tmp_path) == []


def test_compression_levels_are_pyarrows_and_change_the_output(tmp_path, sync):
    """Each level bound is one pyarrow accepts (gzip's and brotli's are
    pyarrow's own), and writes a readable file; a higher level writes a
    smaller one on compressible data."""
    from scalepipe.codecs import COMPRESSION_LEVELS

    expected = pd.DataFrame({"x": np.round(np.random.default_rng(1).standard_normal(20_000), 2)})
    for codec, (low, high) in COMPRESSION_LEVELS.items():
        assert pa.Codec.minimum_compression_level(codec) <= low < high <= pa.Codec.maximum_compression_level(codec)
        sizes = []
        for level in (low, high):
            out = tmp_path / f"{codec}{level}"
            manifest = write_table(expected, str(out), "parquet", compression=codec, compression_level=level)
            assert_same_frame(read_table(str(out), "parquet").frame.compute(), expected)
            sizes.append(manifest.files[0].bytes)
        assert sizes[1] < sizes[0], (codec, sizes)


def test_write_csv_round_trip(tmp_path, client):
    expected = make_frame(0, 90)
    manifest = write_table(dd.from_pandas(expected, npartitions=3), str(tmp_path / "o"), "csv")
    assert [f.name for f in manifest.files] == [f"part.{i:05d}.csv" for i in range(3)]
    back = pd.concat(pd.read_csv(tmp_path / "o" / f.name) for f in manifest.files)
    np.testing.assert_array_equal(back["f64"].to_numpy(), expected["f64"].to_numpy())
    assert back["name"].tolist() == expected["name"].tolist()
    verify_output(str(tmp_path / "o"))


def test_existing_output_refused_and_overwrite_rules(tmp_path, client):
    dest = tmp_path / "out"
    first = make_frame(0, 30)
    write_table(dd.from_pandas(first, npartitions=2), str(dest), "parquet")

    second = make_frame(1000, 10)
    with pytest.raises(OutputError, match=r"out'.*already exists.*overwrite: true"):
        write_table(dd.from_pandas(second, npartitions=1), str(dest), "parquet")
    assert_same_frame(pd.read_parquet(dest), first)

    seen = []

    def committed() -> None:  # the new output is in place, the old one not deleted yet (a job publishes its statistics here)
        seen.append((len(pd.read_parquet(dest)), [p.name.split("-")[0] for p in tmp_path.iterdir() if p.name.startswith(".out.old")]))

    manifest = write_table(
        dd.from_pandas(second, npartitions=1), str(dest), "parquet", overwrite=True, on_commit=committed
    )
    assert seen == [(10, [".out.old"])]
    assert manifest.rows == 10 and sorted(os.listdir(dest)) == ["_SUCCESS", "part.00000.parquet"]
    assert_same_frame(pd.read_parquet(dest), second)
    assert leftovers(tmp_path) == []

    link = tmp_path / "link"  # to a scalepipe output: refused, and said so (it said "no _SUCCESS manifest")
    link.symlink_to(dest)
    with pytest.raises(OutputError, match="refusing to delete it .it is a symbolic link, which scalepipe never replaces"):
        write_table(dd.from_pandas(second, npartitions=1), str(link), "parquet", overwrite=True)
    assert_same_frame(pd.read_parquet(dest), second)
    link.unlink()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    (foreign / "_SUCCESS").write_text("")  # what Spark leaves: the message said "no _SUCCESS manifest"
    with pytest.raises(OutputError, match="not written by scalepipe, refusing to delete it .its _SUCCESS file is not a scalepipe manifest"):
        write_table(dd.from_pandas(second, npartitions=1), str(foreign), "parquet", overwrite=True)
    assert (foreign / "precious.txt").read_text() == "keep me"
    (foreign / "_SUCCESS").unlink()
    with pytest.raises(OutputError, match="refusing to delete it .it has no scalepipe _SUCCESS manifest"):
        write_table(dd.from_pandas(second, npartitions=1), str(foreign), "parquet", overwrite=True)
    assert leftovers(tmp_path) == []


def test_failing_partition_leaves_nothing(tmp_path, client):
    def explode_on_third(df):
        if df["id"].iloc[0] >= 20:
            raise ValueError("conversion failed")
        return df

    data = make_frame(0, 40)
    frame = dd.from_pandas(data, npartitions=4).map_partitions(explode_on_third, meta=data)
    dest = tmp_path / "out"
    with pytest.raises(OutputError, match=r"out'.*conversion failed"):
        write_table(frame, str(dest), "parquet")
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_scalepipe_error_in_a_task_propagates_unchanged(tmp_path, client):
    def reject(df):
        raise DataError("column 'f64' holds inf")

    data = make_frame(0, 10)
    frame = dd.from_pandas(data, npartitions=2).map_partitions(reject, meta=data.iloc[:0])
    with pytest.raises(DataError, match="'f64' holds inf"):
        write_table(frame, str(tmp_path / "out"), "parquet")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_retried_partition_replaces_its_file(tmp_path):
    df = make_frame(0, 5)
    a = _write_partition(df, str(tmp_path), 3, "parquet", False, None, {"compression": "snappy"}, "now")
    b = _write_partition(df, str(tmp_path), 3, "parquet", False, None, {"compression": "snappy"}, "later")
    assert a == b and os.listdir(tmp_path) == ["part.00003.parquet"]


def test_named_index_is_written_and_read_back(tmp_path, sync):
    df = make_frame(0, 12).set_index("name")
    write_table(dd.from_pandas(df, npartitions=2, sort=False), str(tmp_path / "o"), "parquet")
    src = read_table(str(tmp_path / "o"), "parquet")
    assert list(src.schema) == ["id", "f32", "f64"]
    got = src.frame.compute()
    assert got.index.name == "name" and got.index.tolist() == df.index.tolist()


def test_another_writer_committing_first_wins(tmp_path, sync):
    dest = tmp_path / "out"

    def other_writer_commits(df):
        (dest / "theirs").mkdir(parents=True, exist_ok=True)
        return df

    data = make_frame(0, 10)
    frame = dd.from_pandas(data, npartitions=2).map_partitions(other_writer_commits, meta=data)
    with pytest.raises(OutputError, match=r"out'.*appeared while it was being written"):
        write_table(frame, str(dest), "parquet")
    assert os.listdir(dest) == ["theirs"]
    assert leftovers(tmp_path) == []


def test_failed_replacement_restores_the_previous_output(tmp_path, sync, monkeypatch):
    dest = tmp_path / "out"
    previous = make_frame(0, 10)
    write_table(previous, str(dest), "parquet")
    real_rename = os.rename

    def rename_fails_for_staging(src, dst):
        if ".staging-" in str(src):
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_fails_for_staging)
    with pytest.raises(OutputError, match=r"out'.*Input/output error"):
        write_table(make_frame(50, 5), str(dest), "parquet", overwrite=True)
    monkeypatch.undo()
    verify_output(str(dest))
    assert_same_frame(pd.read_parquet(dest), previous)
    assert leftovers(tmp_path) == []


def test_keyboard_interrupt_cleans_up_and_propagates(tmp_path, sync, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dask, "compute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_table(make_frame(0, 10), str(tmp_path / "out"), "parquet")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_verify_output_detects_tampering(tmp_path, sync):
    dest = tmp_path / "out"
    write_table(make_frame(0, 20), str(dest), "parquet")
    with (dest / "part.00000.parquet").open("r+b") as f:
        f.seek(10)
        f.write(b"\x00\xff")
    with pytest.raises(OutputError, match="part.00000.parquet.*differs"):
        verify_output(str(dest))
    (dest / "stray.parquet").write_bytes(b"")
    with pytest.raises(OutputError, match="stray.parquet"):
        verify_output(str(dest))


# --------------------------------------------------------------------------
# Failures in child processes: disk full, SIGKILL, concurrent writers
# --------------------------------------------------------------------------

CHILD_PRELUDE = """
import os, sys, time, resource, signal
import dask, numpy as np, pandas as pd, dask.dataframe as dd
from scalepipe.io import write_table
from scalepipe.errors import OutputError
dask.config.set(scheduler="sync")
"""


def test_disk_full_leaves_no_output(tmp_path):
    dest = tmp_path / "out"
    script = CHILD_PRELUDE + textwrap.dedent(
        """
        df = pd.DataFrame({"x": np.random.default_rng(0).normal(size=400_000)})
        frame = dd.from_pandas(df, npartitions=4)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        try:
            write_table(frame, sys.argv[1], "parquet")
        except OutputError as exc:
            print(exc, file=sys.stderr)
            sys.exit(3)
        """
    )
    result = run_child(script, str(dest))
    assert result.returncode == 3, result.stderr
    assert str(dest) in result.stderr and "File too large" in result.stderr
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_sigkill_mid_write_keeps_previous_output(tmp_path, sync):
    dest = tmp_path / "out"
    previous = make_frame(0, 25)
    old_manifest = write_table(previous, str(dest), "parquet")
    script = CHILD_PRELUDE + textwrap.dedent(
        """
        def slow(df):
            time.sleep(0.1)
            return df
        df = pd.DataFrame({"x": np.arange(400.0)})
        frame = dd.from_pandas(df, npartitions=40).map_partitions(slow)
        write_table(frame, sys.argv[1], "parquet", overwrite=True)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(dest)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            staged = [p for p in tmp_path.glob(".out.staging-*") if list(p.glob("part.*"))]
            if staged:
                break
            time.sleep(0.02)
        assert staged, "the child never started writing"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert verify_output(str(dest)) == old_manifest
    assert_same_frame(pd.read_parquet(dest), previous)


def test_concurrent_writers_exactly_one_commits(tmp_path):
    dest = tmp_path / "out"
    script = CHILD_PRELUDE + textwrap.dedent(
        """
        value = float(sys.argv[2])
        open(sys.argv[3] + sys.argv[2], "w").close()
        while not os.path.exists(sys.argv[3]):  # both writers start together
            time.sleep(0.01)
        def slow(df):
            time.sleep(0.3)
            return df
        df = pd.DataFrame({"x": np.full(100, value)})
        frame = dd.from_pandas(df, npartitions=4).map_partitions(slow)
        try:
            write_table(frame, sys.argv[1], "parquet")
        except OutputError as exc:
            print(exc, file=sys.stderr)
            sys.exit(3)
        """
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(dest), value, str(tmp_path / "go")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for value in ("1", "2")
    ]
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"go{v}").exists() for v in "12") and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outcomes = [(c.wait(timeout=60), c.stderr.read()) for c in children]
    for c in children:
        c.stderr.close()
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 3], outcomes
    loser = next(err for code, err in outcomes if code == 3)
    assert str(dest) in loser and "appeared while it was being written" in loser
    got = pd.read_parquet(dest)["x"].to_numpy()
    assert len(got) == 100 and len(set(got.tolist())) == 1 and got[0] in (1.0, 2.0)
    winner_value = float(children[[code for code, _ in outcomes].index(0)].args[4])
    assert got[0] == winner_value
    assert verify_output(str(dest)).rows == 100
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# write_array and write_text_atomic
# --------------------------------------------------------------------------


def test_write_array_round_trip_keeps_chunks(tmp_path, client):
    ds = make_dataset()
    dest = tmp_path / "out.zarr"
    write_array(ds, str(dest))
    manifest = verify_output(str(dest))
    assert manifest.format == "zarr" and manifest.variables["t"] == (20, 3)
    back = read_array(str(dest), "zarr")
    assert back["t"].data.chunks == ((8, 8, 4), (3,))
    xr.testing.assert_identical(back.compute(), ds.compute())
    assert leftovers(tmp_path) == []

    rechunked = back.chunk({"time": 5})
    with pytest.raises(OutputError, match="already exists"):
        write_array(rechunked, str(dest))
    write_array(rechunked, str(tmp_path / "re.zarr"), durable=False)
    assert verify_output(str(tmp_path / "re.zarr")).variables["t"] == (20, 3)
    assert back["t"].encoding["chunks"] == (8, 3)  # the caller's dataset is untouched
    again = read_array(str(tmp_path / "re.zarr"), "zarr")
    assert again["t"].data.chunks == ((5, 5, 5, 5), (3,))

    write_array(rechunked, str(dest), overwrite=True)
    assert read_array(str(dest), "zarr")["t"].data.chunks == ((5, 5, 5, 5), (3,))
    assert leftovers(tmp_path) == []


def test_verify_output_finds_a_missing_or_short_zarr_chunk(tmp_path, sync):
    """A Zarr store's manifest listed no files, so a truncated or deleted
    chunk (what a power loss leaves after durable=False) passed."""
    dest = tmp_path / "out.zarr"
    write_array(make_dataset(), str(dest), durable=False)
    manifest = verify_output(str(dest))
    chunks = sorted(name for name in manifest.sizes if name.startswith("t" + os.sep) and manifest.sizes[name] > 0)
    assert chunks and all((dest / name).stat().st_size == manifest.sizes[name] for name in manifest.sizes)
    (dest / chunks[0]).write_bytes(b"")
    with pytest.raises(OutputError, match=re.escape(f"file {chunks[0]!r} is 0 bytes, where {manifest.sizes[chunks[0]]} bytes")):
        verify_output(str(dest))
    (dest / chunks[0]).unlink()
    with pytest.raises(OutputError, match=re.escape(f"file {chunks[0]!r} is missing")):
        verify_output(str(dest))


def test_verify_output_finds_a_zarr_variable_stored_with_another_dtype(tmp_path, sync):
    """A scaled int32 variable written back as int32 (its values rounded)
    passed, although the manifest recorded float64."""
    dest = tmp_path / "out.zarr"
    write_array(make_dataset(), str(dest))
    document = json.loads((dest / "_SUCCESS").read_text())
    assert document["variables"]["t"]["dtype"] == "float32"
    document["variables"]["t"]["dtype"] = "float64"  # the store holds other values than were written
    (dest / "_SUCCESS").write_text(json.dumps(document))
    with pytest.raises(OutputError, match="variable 't' reads as float32, where float64 values were written"):
        verify_output(str(dest))


def test_write_text_atomic(tmp_path, monkeypatch):
    target = tmp_path / "stats" / "stats.json"
    write_text_atomic(str(target), '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    with pytest.raises(OutputError, match="already exists"):
        write_text_atomic(str(target), "{}", overwrite=False)
    write_text_atomic(str(target), '{"a": 2}')
    assert target.read_text() == '{"a": 2}'

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OutputError, match="stats.json.*No space left"):
        write_text_atomic(str(target), '{"a": 3}')
    assert target.read_text() == '{"a": 2}'
    assert os.listdir(target.parent) == ["stats.json"]
