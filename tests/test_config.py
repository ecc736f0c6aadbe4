"""Tests of scalepipe.config: the schema, its one-line errors, overrides and the hash."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from scalepipe.config import ClusterConfig, Config, DemoConfig, StatsConfig, config_hash, load_config, parse_config
from scalepipe.errors import ConfigError
from scalepipe.methods import BatchNorm, Decimal, MinMax, ZScore

MINIMAL = """\
version: 1
input:
  format: parquet
  path: data/train/
scalers:
  - columns: [age, income]
    method: zscore
  - columns: ["px_*"]
    method: minmax
    feature_range: [-1, 1]
"""

FULL = """\
# every key, every section
version: 1
cluster:
  kind: slurm
  address: null
  n_workers: 4
  threads_per_worker: 2
  processes: false
  memory_limit: 8GiB
  dashboard_address: null
  security:
    ca_file: certs/ca.pem
    cert_file: certs/client.pem
    key_file: certs/client.key
    require_encryption: true
  jobqueue: {queue: normal, cores: 4}
input:
  format: csv
  path: "data/train/*.csv"
  columns: [age, income, "px_*", "f*", amount, sensor]
stats:
  scope: key
  key: sensor
  exact: false
  path: artifacts/stats.json
scalers:
  - columns: [age, income]
    method: zscore
    ddof: 1
  - columns: ["px_*"]
    method: minmax
    feature_range: [-1, 1]
    clip: true
  - columns: [amount]
    method: decimal
  - columns: ["f*"]
    method: batchnorm
    momentum: 0.2
    eps: 1e-3
    constant_policy: zero
output:
  format: parquet
  path: out/train_scaled/
  overwrite: true
report: false
"""


def config_error(text: str, overrides: tuple[str, ...] | list[str] = ()) -> str:
    """The one-line message of the ConfigError that ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "configs/job.yaml", overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def line_of(text: str, marker: str) -> int:
    """The 1-based number of the first line of ``text`` containing ``marker``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


# --- valid configs -------------------------------------------------------------


def test_full_config_is_read_with_every_value() -> None:
    cfg = parse_config(FULL)
    assert cfg.cluster.kind == "slurm" and cfg.cluster.n_workers == 4 and cfg.cluster.processes is False
    assert cfg.cluster.security is not None and cfg.cluster.security.key_file == "certs/client.key"
    assert cfg.cluster.jobqueue == {"queue": "normal", "cores": 4}
    assert cfg.input.columns == ["age", "income", "px_*", "f*", "amount", "sensor"]
    assert (cfg.stats.scope, cfg.stats.key, cfg.stats.exact) == ("key", "sensor", False)
    assert cfg.output is not None and cfg.output.overwrite is True
    assert cfg.report is False
    assert cfg.scaler_objects() == [
        ZScore(["age", "income"], ddof=1),
        MinMax(["px_*"], feature_range=(-1, 1), clip=True),
        Decimal(["amount"]),
        BatchNorm(["f*"], momentum=0.2, eps=1e-3, constant_policy="zero"),
    ]


def test_minimal_config_gets_the_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.cluster == ClusterConfig()
    assert (cfg.cluster.kind, cfg.cluster.n_workers, cfg.cluster.memory_limit) == ("local", 2, "4GiB")
    assert cfg.cluster.dashboard_address == "127.0.0.1:0"
    assert cfg.stats == StatsConfig()
    assert (cfg.stats.scope, cfg.stats.min_batch_rows, cfg.stats.path) == ("global", 2, "artifacts/stats.json")
    assert cfg.output is None and cfg.report is True
    assert cfg.scalers == [
        {
            "method": "zscore",
            "columns": ["age", "income"],
            "constant_policy": "unit_scale",
            "with_mean": True,
            "with_std": True,
            "ddof": 0,
        },
        {"method": "minmax", "columns": ["px_*"], "constant_policy": "unit_scale", "feature_range": [-1.0, 1.0], "clip": False},
    ]


@pytest.mark.parametrize("text", [FULL, MINIMAL])
def test_validated_config_round_trips(text: str) -> None:
    cfg = parse_config(text)
    again = parse_config(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_yaml_1_1_exponent_floats_are_read_as_numbers() -> None:
    text = MINIMAL + "  - method: batchnorm\n    eps: 1e-5\n    gamma: 2E3\n    momentum: 1.0e-1\n"
    bn = parse_config(text).scaler_objects()[2]
    assert (bn.eps, bn.gamma, bn.momentum) == (1e-5, 2000.0, 0.1)


@pytest.mark.parametrize("limit", ["auto", "500MB", "4 GiB", 2_000_000_000])
def test_memory_limit_accepts_dask_sizes(limit: object) -> None:
    cfg = parse_config(MINIMAL, overrides=[f"cluster.memory_limit={limit}"])
    assert cfg.cluster.memory_limit == limit


def test_array_input_with_array_options() -> None:
    text = MINIMAL.replace("format: parquet", "format: zarr") + (
        "  - method: decimal\n"
        "output: {format: zarr, path: out.zarr}\n"
    )
    cfg = parse_config(text, overrides=["input.reduce_dims=[time, lat]", "input.variables=[t2m]"])
    assert cfg.input.reduce_dims == ["time", "lat"] and cfg.input.variables == ["t2m"]


def test_quickstart_config_is_valid() -> None:
    path = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    if not path.exists():
        pytest.skip("no configs/quickstart.yaml in this checkout")
    cfg = load_config(path)
    assert cfg.input.demo is not None and cfg.input.demo.rows > 0


def test_demo_data_defaults() -> None:
    cfg = parse_config(MINIMAL.replace("  path: data/train/\n", "  path: data/train/\n  demo: {}\n"))
    assert cfg.input.demo == DemoConfig(rows=100_000, files=8, seed=0)


def test_partition_scope_takes_batch_rows() -> None:
    cfg = parse_config(MINIMAL + "stats: {scope: partition, batch_rows: 4096}\n")
    assert cfg.stats.batch_rows == 4096


def test_anchors_and_merge_keys_are_plain_yaml() -> None:
    text = MINIMAL + "  - &rule {method: batchnorm, columns: [f1], eps: 1e-3}\n  - <<: *rule\n    columns: [f2]\n"
    assert parse_config(text).scaler_objects()[2:] == [BatchNorm(["f1"], eps=1e-3), BatchNorm(["f2"], eps=1e-3)]
    bad = text.replace("columns: [f2]", "columns: [f2]\n    eps: 0")
    assert config_error(bad) == (
        f"configs/job.yaml: scalers[3].eps: must be a positive number, got 0 (line {line_of(bad, 'eps: 0')})"
    )


def test_duplicate_key_is_an_error() -> None:
    text = MINIMAL + "version: 1\n"
    assert config_error(text) == f"configs/job.yaml: version: duplicate key (first on line 1) (line {text.count(chr(10))})"


# --- errors: key path and line ----------------------------------------------------

with_cluster = MINIMAL + "cluster:\n  n_workers: 3\n"
batchnorm = MINIMAL + "  - method: batchnorm\n    eps: 1e-5\n    momentum: 0.1\n"

BAD = [
    # id, text, key path, the line's marker (None: no line), more of the message
    (
        "unknown-top-level",
        MINIMAL + "reprot: true\n",
        "reprot",
        "reprot",
        "unknown key; did you mean 'report'? (valid keys: cluster, input, output, report, scalers, stats, version)",
    ),
    (
        "unknown-nested",
        with_cluster.replace("n_workers", "n_wrkers"),
        "cluster.n_wrkers",
        "n_wrkers",
        "unknown key; did you mean 'n_workers'? (valid keys: address, dashboard_address, jobqueue, kind, memory_limit, "
        "n_workers, processes, security, threads_per_worker)",
    ),
    (
        "misspelled-required",  # the missing input.path (line of input:) came first, the hint hidden in "(and 1 more)"
        MINIMAL.replace("  path: data", "  paht: data"),
        "input.paht",
        "paht",
        "unknown key; did you mean 'path'?",
    ),
    (
        "unknown-deep",
        MINIMAL + "cluster:\n  security:\n    ca_file: a\n    cert_file: b\n    keyfile: c\n",
        "cluster.security.keyfile",
        "keyfile",
        "did you mean 'key_file'?",
    ),
    ("wrong-type-int", with_cluster.replace("3", "two"), "cluster.n_workers", "n_workers", "expected an integer, got 'two'"),
    ("quoted-int", with_cluster.replace("3", '"3"'), "cluster.n_workers", "n_workers", "expected an integer, got '3'"),
    ("float-for-int", with_cluster.replace("3", "2.5"), "cluster.n_workers", "n_workers", "expected an integer, got 2.5"),
    ("bool-for-int", with_cluster.replace("3", "true"), "cluster.n_workers", "n_workers", "expected an integer, got True"),
    ("wrong-type-bool", MINIMAL + "report: maybe\n", "report", "report", "expected true or false, got 'maybe'"),
    ("wrong-type-str", MINIMAL.replace("data/train/", "2023"), "input.path", "2023", "expected a string, got 2023"),
    ("section-not-mapping", MINIMAL + "cluster: local\n", "cluster", "cluster", "expected a mapping, got 'local'"),
    (
        "scalers-not-list",
        MINIMAL.split("scalers:")[0] + "scalers: zscore\n",
        "scalers",
        "scalers",
        "expected a list, got 'zscore'",
    ),
    ("n-workers-zero", with_cluster.replace("3", "0"), "cluster.n_workers", "n_workers", "must be >= 1, got 0"),
    (
        "bad-choice",
        MINIMAL.replace("parquet", "excel"),
        "input.format",
        "excel",
        "must be 'parquet', 'csv', 'zarr' or 'netcdf', got 'excel'",
    ),
    ("bad-memory-limit", MINIMAL + "cluster:\n  memory_limit: lots\n", "cluster.memory_limit", "memory_limit", "got 'lots'"),
    ("empty-memory-limit", MINIMAL + "cluster:\n  memory_limit: ''\n", "cluster.memory_limit", "memory_limit", "got ''"),
    ("missing-input-path", MINIMAL.replace("  path: data/train/\n", ""), "input.path", "input:", "required key is missing"),
    (
        "missing-input",
        MINIMAL.replace("input:\n  format: parquet\n  path: data/train/\n", ""),
        "input",
        None,
        "required key is missing",
    ),
    ("missing-scalers", MINIMAL.split("scalers:")[0], "scalers", None, "required key is missing"),
    ("missing-version", MINIMAL.replace("version: 1\n", ""), "version", None, "required key is missing"),
    (
        "version-2",
        MINIMAL.replace("version: 1", "version: 2"),
        "version",
        "version",
        "unsupported config version 2; this scalepipe reads version 1",
    ),
    ("empty-scalers", MINIMAL.split("scalers:")[0] + "scalers: []\n", "scalers", "scalers", "must not be empty, got []"),
    (
        "empty-columns",
        MINIMAL + "  - columns: []\n    method: decimal\n",
        "scalers[2].columns",
        "columns: []",
        "an empty list matches nothing",
    ),
    (
        "feature-range-reversed",
        MINIMAL.replace("[-1, 1]", "[1, 0]"),
        "scalers[1].feature_range",
        "feature_range",
        "must be two finite numbers [a, b] with a < b, got (1, 0)",
    ),
    ("feature-range-empty", MINIMAL.replace("[-1, 1]", "[1, 1]"), "scalers[1].feature_range", "feature_range", "got (1, 1)"),
    (
        "feature-range-length",
        MINIMAL.replace("[-1, 1]", "[0, 1, 2]"),
        "scalers[1].feature_range",
        "feature_range",
        "got (0, 1, 2)",
    ),
    (
        "feature-range-text",
        MINIMAL.replace("[-1, 1]", "[a, 1]"),
        "scalers[1].feature_range[0]",
        "feature_range",
        "expected a number, got 'a'",
    ),
    (
        "feature-range-scalar",
        MINIMAL.replace("[-1, 1]", "5"),
        "scalers[1].feature_range",
        "feature_range",
        "expected a list, got 5",
    ),
    ("clip-not-bool", MINIMAL + "    clip: sometimes\n", "scalers[1].clip", "clip", "expected true or false, got 'sometimes'"),
    ("eps-zero", batchnorm.replace("1e-5", "0"), "scalers[2].eps", "eps", "must be a positive number, got 0"),
    ("eps-negative", batchnorm.replace("1e-5", "-1e-5"), "scalers[2].eps", "eps", "must be a positive number, got -1e-05"),
    ("eps-text", batchnorm.replace("1e-5", "small"), "scalers[2].eps", "eps", "expected a number, got 'small'"),
    (
        "momentum-zero",
        batchnorm.replace("0.1", "0"),
        "scalers[2].momentum",
        "momentum",
        "must be in (0, 1] or null (cumulative average), got 0",
    ),
    (
        "momentum-above-one",
        batchnorm.replace("0.1", "1.5"),
        "scalers[2].momentum",
        "momentum",
        "must be in (0, 1] or null (cumulative average), got 1.5",
    ),
    (
        "ddof-negative",
        MINIMAL.replace("method: zscore", "method: zscore\n    ddof: -1"),
        "scalers[0].ddof",
        "ddof",
        "must be a non-negative integer, got -1",
    ),
    (
        "unknown-method",
        MINIMAL.replace("method: minmax", "method: robust"),
        "scalers[1].method",
        "robust",
        "unknown method 'robust'; valid methods: batchnorm, decimal, minmax, zscore",
    ),
    (
        "missing-method",
        MINIMAL + "  - columns: [x]\n",
        "scalers[2].method",
        "columns: [x]",
        "required key is missing (valid methods: batchnorm, decimal, minmax, zscore)",
    ),
    (
        "method-not-name",
        MINIMAL + "  - method: [zscore]\n",
        "scalers[2].method",
        "method: [zscore]",
        "expected a method name, got ['zscore']",
    ),
    (
        "unknown-parameter",
        MINIMAL.replace("method: zscore", "method: zscore\n    with_means: false"),
        "scalers[0].with_means",
        "with_means",
        "unknown key for method 'zscore'; did you mean 'with_mean'? "
        "(valid keys: columns, constant_policy, ddof, method, with_mean, with_std)",
    ),
    (
        "class-attribute-is-not-a-parameter",
        MINIMAL + "    divides_by_spread: false\n",
        "scalers[1].divides_by_spread",
        "divides_by_spread",
        "unknown key for method 'minmax'",
    ),
    ("rule-not-mapping", MINIMAL + "  - zscore\n", "scalers[2]", "- zscore", "expected a mapping, got 'zscore'"),
    ("rule-key-not-string", MINIMAL + "  - {method: zscore, 1: x}\n", "scalers[2]", "1: x", "keys must be strings, got 1"),
    ("scope-key-without-key", MINIMAL + "stats:\n  scope: key\n", "stats.key", "stats:", "required with scope: key"),
    (
        "key-with-global-scope",
        MINIMAL + "stats:\n  key: sensor\n",
        "stats.key",
        "key: sensor",
        "only used with scope: key (scope is 'global'), got 'sensor'",
    ),
    (
        "batch-rows-with-global-scope",
        MINIMAL + "stats:\n  scope: global\n  batch_rows: 1000\n",
        "stats.batch_rows",
        "batch_rows",
        "only used with scope: partition (scope is 'global'), got 1000",
    ),
    (
        "inference-stats-with-key-scope",
        MINIMAL + "stats:\n  scope: key\n  key: sensor\n  inference_stats: global\n",
        "stats.inference_stats",
        "inference_stats",
        "only used with scope: partition (scope is 'key'), got 'global'",
    ),
    (
        "min-batch-rows-with-global-scope",
        MINIMAL + "stats:\n  min_batch_rows: 5\n",
        "stats.min_batch_rows",
        "min_batch_rows",
        "only used with scope: partition (scope is 'global'), got 5",
    ),
    (
        "batch-rows-below-min-batch-rows",
        MINIMAL + "stats:\n  scope: partition\n  batch_rows: 1\n",
        "stats.batch_rows",
        "batch_rows",
        "1 is below min_batch_rows (2): every batch would be refused",
    ),
    (
        "batch-rows-zero",
        MINIMAL + "stats:\n  scope: partition\n  batch_rows: 0\n",
        "stats.batch_rows",
        "batch_rows",
        "must be > 0, got 0",
    ),
    (
        "bad-scope",
        MINIMAL + "stats:\n  scope: row\n",
        "stats.scope",
        "scope",
        "must be 'global', 'partition' or 'key', got 'row'",
    ),
    (
        "reduce-dims-with-parquet",
        MINIMAL.replace("  path: data/train/\n", "  path: data/train/\n  reduce_dims: [time]\n"),
        "input.reduce_dims",
        "reduce_dims",
        "only used with format: zarr or netcdf (format is 'parquet'), got ['time']",
    ),
    (
        "variables-with-csv",
        MINIMAL.replace("parquet", "csv").replace("  path: data/train/\n", "  path: data/train/\n  variables: [t2m]\n"),
        "input.variables",
        "variables",
        "only used with format: zarr or netcdf",
    ),
    (
        "zarr-output-from-parquet",
        MINIMAL + "output:\n  format: zarr\n  path: out.zarr\n",
        "output.format",
        "format: zarr",
        "'zarr' needs an array input, but input.format is 'parquet'",
    ),
    (
        "parquet-output-from-zarr",
        MINIMAL.replace("format: parquet", "format: zarr") + "output:\n  format: parquet\n  path: out/\n",
        "output.format",
        "format: parquet",
        "'parquet' needs a table input, but input.format is 'zarr'",
    ),
    (
        "demo-with-csv",
        MINIMAL.replace("parquet", "csv").replace("  path: data/train/\n", "  path: data/train/\n  demo: {rows: 10}\n"),
        "input.demo",
        "demo",
        "only used with format: parquet (format is 'csv')",
    ),
    (
        "demo-rows-zero",
        MINIMAL.replace("  path: data/train/\n", "  path: data/train/\n  demo:\n    rows: 0\n"),
        "input.demo.rows",
        "rows: 0",
        "must be >= 1, got 0",
    ),
    ("missing-output-path", MINIMAL + "output:\n  format: parquet\n", "output.path", "output:", "required key is missing"),
    (
        "exact-with-key-scope",
        MINIMAL + "stats:\n  scope: key\n  key: store\n  exact: true\n",
        "stats.exact",
        "exact",
        "only used with scope: global (scope is 'key'), got True",
    ),
    (
        "compression-with-csv",
        MINIMAL + "output:\n  format: csv\n  path: out/\n  compression: zstd\n",
        "output.compression",
        "compression",
        "only used with format: parquet (format is 'csv'), got 'zstd'",
    ),
    (
        "unknown-codec",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: lzo\n",
        "output.compression",
        "compression",
        "must be 'snappy', 'zstd', 'gzip', 'brotli' or 'none', got 'lzo'",
    ),
    (
        "level-without-levels",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression_level: 3\n",
        "output.compression_level",
        "compression_level",
        "compression is unset (default 'snappy'), which has no levels, got 3; remove it or set compression to one of zstd, gzip, brotli",
    ),
    (
        "level-of-snappy",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: snappy\n  compression_level: 3\n",
        "output.compression_level",
        "compression_level",
        "'snappy' has no levels, got 3",
    ),
    (
        "null-codec",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: null\n",
        "output.compression",
        "compression",
        "must be 'snappy', 'zstd', 'gzip', 'brotli' or 'none', got None; for no compression write none",
    ),
    (
        "false-codec",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: off\n",
        "output.compression",
        "compression",
        "got False; for no compression write none",
    ),
    (
        "float-level",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: zstd\n  compression_level: 3.0\n",
        "output.compression_level",
        "compression_level",
        "expected an integer, got 3.0",
    ),
    (
        "snappy-with-csv",
        MINIMAL + "output:\n  format: csv\n  path: out/\n  compression: snappy\n",
        "output.compression",
        "compression",
        "only used with format: parquet (format is 'csv'), got 'snappy'",
    ),
    (
        "level-out-of-range",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  compression: gzip\n  compression_level: 10\n",
        "output.compression_level",
        "compression_level",
        "must be an integer from 1 to 9 for gzip, got 10",
    ),
    (
        "durable-not-a-flag",
        MINIMAL + "output:\n  format: parquet\n  path: out/\n  durable: 'no'\n",
        "output.durable",
        "durable",
        "expected true or false, got 'no'",
    ),
    (
        "jobqueue-with-local",
        MINIMAL + "cluster:\n  jobqueue: {queue: normal}\n",
        "cluster.jobqueue",
        "jobqueue",
        "only used with kind: slurm (kind is 'local')",
    ),
    ("empty-address", MINIMAL + "cluster:\n  address: ''\n", "cluster.address", "address", "must not be empty"),
]


@pytest.mark.parametrize(("text", "path", "marker", "detail"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config_names_key_path_and_line(text: str, path: str, marker: str | None, detail: str) -> None:
    message = config_error(text)
    assert message.startswith(f"configs/job.yaml: {path}: "), message
    assert detail in message, message
    if marker is None:
        assert "(line" not in message, message
    else:
        assert f"(line {line_of(text, marker)})" in message, message


def test_the_first_error_in_document_order_is_reported_with_a_count() -> None:
    text = textwrap.dedent(
        """\
        version: 1
        scalers:
          - method: batchnorm
            eps: 0
        cluster:
          n_workers: zero
          kind: k8s
        input: {format: parquet, path: data/}
        """
    )
    assert config_error(text) == "configs/job.yaml: scalers[0].eps: must be a positive number, got 0 (line 4) (and 2 more)"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\ninput:\n  format: parquet\n   path: x\n", 4),
        ("version: 1\nscalers: [{method: zscore}\n", 3),
        ("version: 1\n\tinput: x\n", 2),
        ("version: 1\n---\nversion: 1\n", 2),
    ],
)
def test_malformed_yaml_names_file_and_line(text: str, line: int) -> None:
    message = config_error(text)
    assert message.startswith("configs/job.yaml: invalid YAML: ")
    assert f"(line {line}, column " in message


@pytest.mark.parametrize(
    "text",
    [
        "version: !!python/object/apply:os.system ['touch {marker}']\n",
        "!!python/object/apply:os.system ['touch {marker}']\n",
        "version: !!python/name:os.system\n",
        "version: !!python/object/new:pathlib.Path ['{marker}']\n",
        "version: !custom 1\n",
    ],
)
def test_unsafe_tags_are_rejected_without_running_anything(text: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    message = config_error(text.format(marker=marker))
    assert message.startswith("configs/job.yaml: invalid YAML: could not determine a constructor for the tag")
    assert "(line 1, column " in message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "got"),
    [
        ("- a\n- b\n", "got ['a', 'b']"),
        ("just text\n", "got 'just text'"),
        ("", "got an empty document"),
        ("# only a comment\n", "got an empty document"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    message = config_error(text)
    assert message.startswith("configs/job.yaml: the top level must be a mapping of config keys (version, cluster, input")
    assert message.endswith(got)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read the config file (No such file or directory)")):
        load_config(path)


def test_directory_and_binary_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)
    binary = tmp_path / "job.yaml"
    binary.write_bytes(b"version: \xff\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: not UTF-8 text \(byte 9\)"):
        load_config(binary)


def test_load_config_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(MINIMAL.replace("[-1, 1]", "[1, 0]"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: scalers[1].feature_range: ")
    assert str(info.value).endswith(f"(line {line_of(MINIMAL, 'feature_range')})")
    assert load_config(path, ["scalers.1.feature_range=[0, 1]"]).scaler_objects()[1].feature_range == (0.0, 1.0)


# --- --set overrides -------------------------------------------------------------


def test_override_scalar() -> None:
    cfg = parse_config(MINIMAL + "output: {format: parquet, path: out/}\n", overrides=["output.overwrite=true"])
    assert cfg.output is not None and cfg.output.overwrite is True


def test_override_creates_missing_sections_and_keys() -> None:
    overrides = ["cluster.n_workers=8", "cluster.security.ca_file=ca.pem", "cluster.security.cert_file=c.pem"]
    cfg = parse_config(MINIMAL, overrides=overrides)
    assert cfg.cluster.n_workers == 8
    assert cfg.cluster.security is not None and cfg.cluster.security.ca_file == "ca.pem"


def test_override_list_item_and_new_key_in_it() -> None:
    cfg = parse_config(MINIMAL, overrides=["scalers.1.feature_range=[-2, 2]", "scalers.1.clip=true", "scalers.0.columns=[age]"])
    assert cfg.scaler_objects()[:2] == [ZScore(["age"]), MinMax(["px_*"], feature_range=(-2, 2), clip=True)]


def test_overrides_apply_in_order() -> None:
    cfg = parse_config(MINIMAL, overrides=["stats.scope=key", "stats.key=sensor", "cluster.address=tcp://scheduler:8786"])
    assert (cfg.stats.scope, cfg.stats.key) == ("key", "sensor")
    assert cfg.cluster.address == "tcp://scheduler:8786"


def test_override_with_null_and_flow_mapping() -> None:
    text = MINIMAL + "output: {format: parquet, path: out/}\n"
    cfg = parse_config(text, overrides=["output=null", "input={format: csv, path: a.csv}"])
    assert cfg.output is None and (cfg.input.format, cfg.input.path) == ("csv", "a.csv")


@pytest.mark.parametrize(
    ("override", "detail"),
    [
        ("output.overwrite", "expected KEY.PATH=VALUE"),
        ("=true", "expected KEY.PATH=VALUE"),
        ("cluster..n_workers=2", "expected KEY.PATH=VALUE"),
        ("scalers.2.method=zscore", "scalers: index 2 is out of range: the list has 2 item(s)"),
        ("scalers.first.method=zscore", "scalers: is a list, so 'first' must be an index (0 to 1)"),
        ("scalers.-1.method=zscore", "scalers: is a list, so '-1' must be an index (0 to 1)"),
        ("version.major=1", "version: is 1, not a mapping or a list, so it has no 'major'"),
        ("scalers.0.method.name=zscore", "scalers[0].method: is 'zscore', not a mapping or a list, so it has no 'name'"),
        ("scalers.0.feature_range=[1,", "invalid YAML: "),
        ("version=!!python/object/apply:os.getcwd []", "invalid YAML: could not determine a constructor"),
        ("scalers.0.columns=*", "invalid YAML: while scanning an alias"),
        ("scalers.0.columns=*", "(the value is read as YAML: quote it, --set 'scalers.0.columns=\"*\"')"),
    ],
)
def test_bad_override_names_the_override(override: str, detail: str) -> None:
    message = config_error(MINIMAL, [override])
    assert message.startswith(f"configs/job.yaml: --set {override!r}: "), message
    assert detail in message, message


def test_invalid_override_value_cites_the_override_not_a_line() -> None:
    text = MINIMAL + "cluster:\n  n_workers: 2\n"
    assert config_error(text, ["cluster.n_workers=0"]) == (
        "configs/job.yaml: cluster.n_workers: must be >= 1, got 0 (from --set 'cluster.n_workers=0')"
    )
    assert config_error(text, ["cluster={n_workers: 0}"]) == (
        "configs/job.yaml: cluster.n_workers: must be >= 1, got 0 (from --set 'cluster={n_workers: 0}')"
    )
    message = config_error(MINIMAL, ["scalers.1.feature_range=[3, 2]"])
    assert message.startswith("configs/job.yaml: scalers[1].feature_range: must be two finite numbers")
    assert message.endswith("got (3, 2) (from --set 'scalers.1.feature_range=[3, 2]')")


def test_a_mapping_an_override_created_is_blamed_on_it() -> None:
    # input.columns is unset, so the override makes a mapping {'0': 'a'} there (the error named input's line)
    assert config_error(MINIMAL, ["input.columns.0=a"]) == (
        "configs/job.yaml: input.columns: expected a list, got {'0': 'a'} (from --set 'input.columns.0=a')"
    )


def test_errors_outside_overrides_keep_their_lines() -> None:
    text = MINIMAL.replace("[-1, 1]", "[1, 0]")
    message = config_error(text, ["scalers.0.ddof=1"])
    assert message.endswith(f"(line {line_of(text, 'feature_range')})")


# --- the hash --------------------------------------------------------------------

REORDERED = """\
scalers:   # the rules first, in flow style
  - {method: zscore, columns: [age, income], ddof: 0}
  - method: minmax
    feature_range: [-1.0, 1.0]   # same range, as floats
    columns: ["px_*"]
input: {path: data/train/, format: parquet}
stats: {scope: global}
version: 1
"""


def test_hash_is_stable_across_key_order_comments_and_defaults() -> None:
    digest = config_hash(parse_config(MINIMAL))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    assert config_hash(parse_config(REORDERED)) == digest
    assert config_hash(parse_config("# a comment\n" + MINIMAL)) == digest


def test_hash_changes_with_what_shapes_the_statistics() -> None:
    digest = config_hash(parse_config(MINIMAL))
    assert config_hash(parse_config(MINIMAL.replace("[-1, 1]", "[-1, 2]"))) != digest
    assert config_hash(parse_config(MINIMAL.replace("data/train/", "data/test/"))) != digest
    assert config_hash(parse_config(MINIMAL, overrides=["stats.exact=true"])) != digest
    # the cluster, the output and the report do not change the statistics
    assert config_hash(parse_config(MINIMAL, overrides=["report=false"])) == digest
    assert config_hash(parse_config(MINIMAL, overrides=["cluster.n_workers=7"])) == digest


def test_hash_of_an_override_equals_hash_of_the_edit() -> None:
    edited = MINIMAL + "stats:\n  exact: true\n"
    assert config_hash(parse_config(MINIMAL, overrides=["stats.exact=true"])) == config_hash(parse_config(edited))


# --- properties --------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(finite, finite)
def test_feature_ranges_round_trip_exactly(a: float, b: float) -> None:
    text = MINIMAL.replace("[-1, 1]", f"[{a!r}, {b!r}]")
    if a < b:
        cfg = parse_config(text)
        assert cfg.scaler_objects()[1].feature_range == (a, b)
        assert parse_config(yaml.safe_dump(cfg.model_dump(mode="json"))) == cfg
    else:
        assert config_error(text).startswith("configs/job.yaml: scalers[1].feature_range: must be two finite numbers")


SECTIONS = [
    "version: 1\n",
    "input:\n  format: parquet\n  path: data/\n",
    "scalers:\n  - method: zscore\n  - method: minmax\n    feature_range: [0, 2]\n",
    "cluster:\n  n_workers: 3\n  memory_limit: 1GiB\n",
    "stats:\n  scope: partition\n  batch_rows: 100\n",
    "output:\n  path: out/\n  format: csv\n",
]


@given(st.permutations(SECTIONS))
def test_hash_ignores_section_order(sections: list[str]) -> None:
    assert config_hash(parse_config("".join(sections))) == config_hash(parse_config("".join(SECTIONS)))


@given(st.permutations([*SECTIONS, "reprot: true\n"]))
def test_unknown_key_line_is_found_wherever_it_is(sections: list[str]) -> None:
    text = "".join(sections)
    assert config_error(text).endswith(
        "reprot: unknown key; did you mean 'report'? (valid keys: cluster, input, output, report, scalers, stats, version)"
        f" (line {line_of(text, 'reprot')})"
    )


def test_config_module_does_not_import_dask() -> None:
    code = (
        "import sys, scalepipe; before = {m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')}; "
        "import scalepipe.config; after = {m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')}; "
        "print(sorted(after - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_config_is_immutable() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        cfg.report = False  # type: ignore[misc]
    assert isinstance(cfg, Config)


def test_columns_with_an_array_input_is_an_error() -> None:
    text = MINIMAL.replace("format: parquet", "format: zarr").replace("path: data/train/", "path: data/store.zarr\n  columns: [a]")
    assert "input.columns" in config_error(text) and "format is 'zarr'" in config_error(text)
