"""The artifact: exact round trip, and a clear error for every damaged file."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import scalepipe as sp
from scalepipe.artifact import checksum
from scalepipe.errors import ArtifactError

from .conftest import mixed_frame

RULES = [sp.ZScore(["offset", "tiny"]), sp.MinMax(["f*", "lognormal"], feature_range=(-1, 1), clip=True), sp.Decimal(["count"]), sp.BatchNorm(["const"])]


@pytest.fixture
def saved(tmp_path):
    model = sp.fit(mixed_frame(500), RULES)
    path = tmp_path / "stats.json"
    model.save(path)
    return model, path


def test_round_trip_bit_identical(saved, tmp_path):
    model, path = saved
    loaded = sp.load(path)
    assert loaded.moments.identical(model.moments)
    for k in ("center", "scale", "offset", "lo", "hi"):
        assert np.array_equal(getattr(loaded.params, k), getattr(model.params, k))
    assert loaded.scalers == model.scalers and loaded.features == model.features
    df = mixed_frame(100, seed=9)
    assert loaded.transform(df).equals(model.transform(df))
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_save_replaces_statistics_and_nothing_else(saved, tmp_path):
    """Saving over any file replaced it (a job's own config, named as its stats.path, was lost)."""
    model, path = saved
    model.save(path)  # statistics: replaced
    (tmp_path / "empty.json").write_text("")
    model.save(tmp_path / "empty.json")
    assert sp.load(tmp_path / "empty.json").moments.identical(model.moments)
    for name, text in (("job.yaml", "version: 1\n"), ("other.json", '{"format": "other"}'), ("notes.txt", "keep me")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ArtifactError, match=rf"'{re.escape(str(tmp_path / name))}' is a file that is not scalepipe statistics"):
            model.save(tmp_path / name)
        assert (tmp_path / name).read_text() == text
    # statistics in another key order (jq -S) are statistics; a pipe is refused without being opened (it hung)
    (tmp_path / "sorted.json").write_text(json.dumps(json.loads(path.read_text()), sort_keys=True))
    model.save(tmp_path / "sorted.json")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ArtifactError, match=r"pipe\.json' is not a regular file"):
        model.save(tmp_path / "pipe.json")


def test_is_plain_json_with_header(saved):
    _, path = saved
    doc = json.loads(path.read_text())
    assert doc["format"] == "scalepipe.stats" and doc["schema_version"] == 1
    assert doc["checksum"].startswith("sha256:") and doc["scalepipe_version"] == sp.__version__
    assert [f["name"] for f in doc["features"]] == ["offset", "tiny", "lognormal", "f32", "const", "count"]


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 3)),
                  elements=st.floats(allow_infinity=False, allow_nan=True, allow_subnormal=True, width=64)))
def test_round_trip_any_floats(tmp_path_factory, x):
    if np.isnan(x).all(axis=0).any():
        x[0, np.isnan(x).all(axis=0)] = 0.0
    try:
        model = sp.fit(x, [sp.MinMax(constant_policy="passthrough")])
    except sp.DataError:
        return  # e.g. a range that overflows float64
    path = tmp_path_factory.mktemp("rt") / "s.json"
    model.save(path)
    loaded = sp.load(path)
    assert loaded.moments.identical(model.moments)
    assert all(np.array_equal(getattr(loaded.params, k), getattr(model.params, k), equal_nan=True) for k in ("center", "scale", "offset"))


def _rewrite(path, mutate):
    doc = json.loads(path.read_text())
    mutate(doc)
    path.write_text(json.dumps(doc))


def _assert_refused_once_resigned(path, edit, message):
    """``edit`` the artifact and recompute its checksum (as anyone can): loading it is refused with ``message``."""

    def change(d):
        edit(d)
        d["checksum"] = checksum(d)

    _rewrite(path, change)
    with pytest.raises(ArtifactError, match=f"{path.name}: malformed statistics file: " + message):
        sp.load(path)


def test_truncated(saved):
    _, path = saved
    path.write_text(path.read_text()[:-200])
    with pytest.raises(ArtifactError, match=rf"{path.name}: not valid JSON .*truncated"):
        sp.load(path)


def test_edited_value(saved):
    _, path = saved
    _rewrite(path, lambda d: d["statistics"]["mean"].__setitem__(0, 1.0))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        sp.load(path)


def test_newer_schema(saved):
    _, path = saved

    def bump(d):
        d["schema_version"] = 2
        d["checksum"] = checksum(d)

    _rewrite(path, bump)
    with pytest.raises(ArtifactError, match="schema version 2 is newer"):
        sp.load(path)


@pytest.mark.parametrize("text", ['{"hello": 1}', "[1, 2]", '{"format": "other"}'])
def test_not_an_artifact(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(ArtifactError, match="x.json: not a scalepipe statistics file"):
        sp.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="nope.json: statistics file not found"):
        sp.load(tmp_path / "nope.json")


def test_no_checksum(saved):
    _, path = saved
    _rewrite(path, lambda d: d.pop("checksum"))
    with pytest.raises(ArtifactError, match="no checksum"):
        sp.load(path)


def test_never_unpickles(saved):
    """A pickle payload in a field is data: it is rejected, never executed."""
    _, path = saved

    def poison(d):
        d["scalers"][0]["method"] = "cos\nsystem\n(S'touch /tmp/pwned'\ntR."
        d["checksum"] = checksum(d)

    _rewrite(path, poison)
    with pytest.raises(ArtifactError, match="malformed"):
        sp.load(path)


def test_rules_and_scopes_given_numpy_scalars_save_and_load(tmp_path):
    """Positions from np.where, an np.float32 gamma or an np.int64 batch size
    were accepted by fit, then save failed with a raw TypeError (not JSON
    serializable)."""
    x = np.random.default_rng(0).normal(0, 1, (20, 3))
    rules = [sp.ZScore(np.array([0, 2])), sp.BatchNorm([np.int64(1)], gamma=np.float32(2.0), momentum=np.float64(0.2))]
    for model in (sp.fit(x, rules), sp.fit(x, scope="partition", batch_rows=np.int64(5), min_batch_rows=np.int64(3))):
        model.save(tmp_path / "stats.json")
        back = sp.load(tmp_path / "stats.json")
        assert back.scalers == model.scalers and back.scope == model.scope
        np.testing.assert_array_equal(back.transform(x), model.transform(x))
    assert rules[0].columns == (0, 2) and type(rules[0].columns[0]) is int and type(rules[1].gamma) is float


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["features"][0].update(rule=7), r"features\[0\]\.rule is 7, but there are 2 scalers"),
        (lambda d: d["features"][0].update(rule=True), r"features\[0\]\.rule: expected an integer, got True"),
        (lambda d: d["parameters"]["scale"].pop(), "parameters.scale has 1 values for 2 features"),
        (lambda d: d["statistics"]["m2"].pop(), r"statistics.m2 has shape \[1\], expected \[2\]"),
        (lambda d: d["features"][1].update(name=0), "feature name 0 appears more than once"),
        (lambda d: d.update(tables="x.npz"), "tables must name a file scalepipe-tables"),
        (lambda d: d.update(tables={"file": "../x.npz", "sha256": "sha256:00"}), "tables must name a file scalepipe-tables"),
        (lambda d: d["parameters"]["scale"].__setitem__(0, 10**400), "parameters.scale: a number of 401 digits is beyond float64"),
        (lambda d: d["parameters"]["scale"].__setitem__(0, None), "parameters.scale: None is not a number"),
        (lambda d: d["parameters"]["center"].__setitem__(0, "NaN"), "parameters.center holds NaN"),
        (lambda d: d["statistics"]["count"].__setitem__(0, "3"), "statistics.count: expected an integer, got '3'"),
        (lambda d: d["statistics"]["nan_count"].__setitem__(0, -1), "statistics: a count is negative"),
        (lambda d: d["parameters"].update(lo=[1.0, 1.0], hi=[0.0, 2.0]), "parameters: a clip bound lo is above its hi"),
        # types of the structured fields: these failed with raw AttributeErrors and TypeErrors
        (lambda d: d.update(statistics=[]), "statistics: expected an object, got list"),
        (lambda d: d.update(groups="x"), "groups: expected an object, got str"),
        (lambda d: d.update(passthrough=None), "passthrough: expected a list, got NoneType"),
        (lambda d: d["features"][0].update(name=None), r"features\[0\]\.name: a name is text or an integer, got None"),
        (lambda d: d["features"][0].update(dtype=5), r"features\[0\]\.dtype: expected text, got 5"),
        (lambda d: d["scope"].update(batch_rows="x"), "batch_rows: must be a positive integer or None, got 'x'"),
        (lambda d: d["scope"].update(kind="partition"), "scope.kind is 'partition', but the file holds neither batches nor groups"),
        # statistics no data has, and parameters no fit gives: these loaded and transformed
        (lambda d: d["statistics"]["min"].__setitem__(0, 100.0), "statistics: a min is above its max, or NaN, where there are values"),
        (lambda d: d["statistics"]["max"].__setitem__(1, "NaN"), "statistics: a min is above its max, or NaN, where there are values"),
        (lambda d: d["statistics"]["m2"].__setitem__(1, -5.0), "statistics.m2: a sum of squared deviations is negative"),
        (lambda d: d["parameters"]["scale"].__setitem__(0, "Infinity"), "parameters.scale holds an infinity"),
    ],
)
def test_a_document_whose_parts_do_not_fit_is_refused_naming_the_field(tmp_path, edit, message):
    """The checksum only shows a file was not damaged by accident (anyone can
    recompute it): such documents loaded, then failed later with raw
    IndexErrors, or transformed with the wrong statistics."""
    sp.fit(np.array([[1.0, 10], [3, 30], [2, 5]]), [sp.MinMax([0]), sp.ZScore([1])]).save(tmp_path / "stats.json")
    _assert_refused_once_resigned(tmp_path / "stats.json", edit, message)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_bare_non_finite_json_number_is_refused_naming_the_file(saved, token):
    """What json.dump writes for a NaN by default: a raw ValueError that named no file."""
    _, path = saved
    text = path.read_text()
    first = re.search(r'"m2": \[\s*([-0-9.e+]+)', text)
    path.write_text(text[: first.start(1)] + token + text[first.end(1) :])
    with pytest.raises(ArtifactError, match=f"stats.json: holds the number {re.escape(token)}, which scalepipe never writes"):
        sp.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["statistics"]["mean"].__setitem__(0, 100.0), "statistics.mean differs from the value of the exact sums"),
        (lambda d: d["statistics"]["m2"].__setitem__(1, 1.0), "statistics.m2 differs from the value of the exact sums"),
        (lambda d: d["statistics"]["count"].__setitem__(0, 1), "feature 0: count 1 is inconsistent with the exact sums"),
    ],
)
def test_exact_statistics_that_disagree_with_their_sums_are_refused(tmp_path, edit, message):
    """An edited mean loaded (the parameters used it); an edited count loaded
    and failed the next fit --update with a bare ValueError naming no file."""
    sp.fit(np.array([[1.0, 10], [3, 30], [2, 5], [7, 1]]), [sp.MinMax([0]), sp.ZScore([1])], exact=True).save(tmp_path / "stats.json")
    _assert_refused_once_resigned(tmp_path / "stats.json", edit, message)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": ' + "9" * 5000 + "}"])
def test_json_python_cannot_parse_is_refused_naming_the_file(tmp_path, text):
    """A RecursionError and "Exceeds the limit (4300 digits)" ValueError came out raw."""
    (tmp_path / "stats.json").write_text(text)
    with pytest.raises(ArtifactError, match="stats.json: not a statistics file scalepipe wrote"):
        sp.load(tmp_path / "stats.json")


def _side_tables_replaced(tmp_path, change) -> None:
    """A key-scope artifact with side tables, its tables file's bytes replaced by ``change(old bytes)`` and rehashed (as anyone can)."""
    import hashlib

    keys = pd.DataFrame({"k": np.arange(40_002) % 20_001, "v": np.arange(40_002.0)})  # beyond INLINE_TABLE_VALUES
    sp.fit(keys, scope="key", key="k").save(tmp_path / "stats.json")
    table = tmp_path / json.loads((tmp_path / "stats.json").read_text())["tables"]["file"]
    table.write_bytes(change(table.read_bytes()))

    def rehash(d):
        d["tables"]["sha256"] = "sha256:" + hashlib.sha256(table.read_bytes()).hexdigest()
        d["checksum"] = checksum(d)

    _rewrite(tmp_path / "stats.json", rehash)


def test_side_tables_with_fractional_counts_are_refused(tmp_path):
    """Counts of 3.7 in the .npz were truncated to integers silently."""

    def fractional(data: bytes) -> bytes:
        with np.load(io.BytesIO(data)) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["groups.count"] = arrays["groups.count"] + 0.7
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    _side_tables_replaced(tmp_path, fractional)
    with pytest.raises(ArtifactError, match="groups.statistics: a count is not a whole number"):
        sp.load(tmp_path / "stats.json")


def test_a_side_tables_file_that_is_not_numeric_tables_is_refused(tmp_path):
    _side_tables_replaced(tmp_path, lambda _: b"not a zip")
    with pytest.raises(ArtifactError, match="cannot be read as numeric tables"):
        sp.load(tmp_path / "stats.json")


def test_names_the_artifact_cannot_give_back_are_refused_at_save(tmp_path):
    """Names are stored as strings or integers: a tuple (a MultiIndex column)
    or a date is refused when saving, naming it (a tuple used to come back
    as a list, which broke transform after load); numpy integers are kept."""
    import pandas as pd

    x = np.random.default_rng(0).standard_normal((30, 2))
    for columns, shown in [
        (pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")]), "('a', 'b') (tuple)"),
        (pd.date_range("2020-01-01", periods=2), "Timestamp('2020-01-01 00:00:00') (Timestamp)"),
    ]:
        with pytest.raises(ArtifactError, match=f"feature name {re.escape(shown)} cannot be saved"):
            sp.fit(pd.DataFrame(x, columns=columns)).save(tmp_path / "m.json")
        assert not (tmp_path / "m.json").exists()
    sp.fit(x, feature_names=np.array([10, 20])).save(tmp_path / "m.json")
    loaded = sp.load(tmp_path / "m.json")
    assert loaded.feature_names == [10, 20]
    np.testing.assert_array_equal(loaded.transform(x, feature_names=[10, 20]), sp.fit(x).transform(x))


@pytest.mark.parametrize("n_keys", [3, 25_000])  # inline, and in the side tables
def test_float_keys_come_back_as_floats(tmp_path, n_keys):
    """Keys are looked up by value: float keys must not come back as strings
    (every row would fall back to the global statistics after load)."""
    import pandas as pd

    rng = np.random.default_rng(1)
    df = pd.DataFrame({"k": np.repeat(np.arange(n_keys) + 0.5, 2), "v": rng.standard_normal(2 * n_keys)})
    model = sp.fit(df, scope="key", key="k")
    model.save(tmp_path / "m.json")
    loaded = sp.load(tmp_path / "m.json")
    assert loaded.groups.keys.dtype == np.float64
    pd.testing.assert_frame_equal(loaded.transform(df), model.transform(df))
    assert loaded.unseen_rows(df) == 0
    dates = df.assign(k=pd.Timestamp("2020-01-01") + pd.to_timedelta(np.repeat(np.arange(n_keys), 2), unit="D"))
    with pytest.raises(ArtifactError, match=r"key value .* \(datetime64\) cannot be saved"):
        sp.fit(dates, scope="key", key="k").save(tmp_path / "d.json")


def test_an_infinite_float_key_is_saved_in_the_side_tables(tmp_path):
    """JSON has no infinity: a small key table holding one failed at save
    with a raw JSON error; it goes to the side tables (binary) instead."""
    import pandas as pd

    rng = np.random.default_rng(2)
    df = pd.DataFrame({"k": np.repeat([0.5, np.inf, -np.inf], 4), "v": rng.standard_normal(12)})
    model = sp.fit(df, scope="key", key="k")
    model.save(tmp_path / "m.json")
    assert len(list(tmp_path.glob("*.npz"))) == 1
    loaded = sp.load(tmp_path / "m.json")
    pd.testing.assert_index_equal(loaded.groups.keys, model.groups.keys)
    pd.testing.assert_frame_equal(loaded.transform(df), model.transform(df))
    assert loaded.unseen_rows(df) == 0
    model = sp.fit(df.assign(k=df["k"].clip(-1, 1)), scope="key", key="k")  # finite keys stay inline
    model.save(tmp_path / "f.json")
    assert len(list(tmp_path.glob("*.npz"))) == 1 and sp.load(tmp_path / "f.json").groups.keys.tolist() == [-1.0, 0.5, 1.0]


def test_nullable_boolean_keys_are_saved_as_booleans(tmp_path):
    """A nullable boolean key column read from Parquet has its keys as
    objects; they were refused at save by a message saying booleans are stored."""
    import pandas as pd

    from scalepipe import io

    df = pd.DataFrame({"k": pd.array([True, False, None, True, False, True], dtype="boolean"), "v": np.arange(6.0)})
    df.to_parquet(tmp_path / "in.parquet")
    model = sp.fit(io.read_table(str(tmp_path / "in.parquet"), "parquet").frame, scope="key", key="k")
    model.save(tmp_path / "m.json")
    loaded = sp.load(tmp_path / "m.json")
    assert loaded.groups.keys.dtype == bool and loaded.groups.keys.tolist() == [False, True]
    pd.testing.assert_frame_equal(loaded.transform(df), model.transform(df))
    np.testing.assert_allclose(loaded.transform(df)["v"][[1, 4]], [-1.0, 1.0], rtol=0, atol=1e-15)  # key False: 1, 4


def test_saving_over_an_artifact_removes_its_side_tables_unless_another_names_them(tmp_path):
    """Re-saving with other tables left the old ``.npz`` behind; it goes,
    unless another artifact in the folder still names it (names are content
    hashes, so two artifacts can share one)."""
    import pandas as pd

    def keyed(seed: int) -> sp.Model:
        rng = np.random.default_rng(seed)
        return sp.fit(pd.DataFrame({"k": np.repeat(np.arange(25_000), 2), "v": rng.standard_normal(50_000)}), scope="key", key="k")

    first, second = keyed(0), keyed(1)
    first.save(tmp_path / "a.json")
    old = sorted(tmp_path.glob("*.npz"))
    first.save(tmp_path / "b.json")  # b shares a's tables file
    second.save(tmp_path / "a.json")
    assert len(old) == 1 and old[0].exists() and len(list(tmp_path.glob("*.npz"))) == 2
    second.save(tmp_path / "b.json")  # now nothing names the first tables
    assert not old[0].exists() and len(list(tmp_path.glob("*.npz"))) == 1
    for name in ("a.json", "b.json"):
        pd.testing.assert_index_equal(sp.load(tmp_path / name).groups.keys, second.groups.keys)


def test_side_tables_named_by_an_artifact_of_any_file_name_are_kept(tmp_path):
    import pandas as pd

    def keyed(seed: int) -> sp.Model:
        rng = np.random.default_rng(seed)
        return sp.fit(pd.DataFrame({"k": np.repeat(np.arange(25_000), 2), "v": rng.standard_normal(50_000)}), scope="key", key="k")

    first = keyed(0)
    first.save(tmp_path / "a.stats")
    first.save(tmp_path / "b.stats")  # not .json: still an artifact naming the tables
    keyed(1).save(tmp_path / "a.stats")
    assert sp.load(tmp_path / "b.stats").groups.keys.equals(first.groups.keys)


def test_older_artifacts_with_inert_scope_settings_still_load(tmp_path):
    """Scope settings of another scope are refused when fitting, not when loading."""
    x = np.random.default_rng(0).standard_normal((30, 2))
    sp.fit(x).save(tmp_path / "m.json")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["scope"]["batch_rows"] = 10
    doc["checksum"] = checksum(doc)
    (tmp_path / "m.json").write_text(json.dumps(doc))
    np.testing.assert_array_equal(sp.load(tmp_path / "m.json").transform(x), sp.fit(x).transform(x))


def test_a_passthrough_name_the_artifact_cannot_store_does_not_block_save(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"a": np.arange(10.0), 2.5: np.arange(10.0)})
    sp.fit(df, [sp.ZScore(["a"])]).save(tmp_path / "m.json")
    assert sp.load(tmp_path / "m.json").passthrough == ["2.5"]


@pytest.mark.parametrize("n_keys", [2, 25_000])  # inline, and in the side tables
def test_unsigned_keys_from_2_63_keep_their_value(tmp_path, n_keys):
    """They were stored as int64 and wrapped (2**63 + 5 came back negative):
    after load every such row fell back to the global statistics."""
    import pandas as pd

    keys = np.uint64(2**63) + np.arange(n_keys, dtype=np.uint64)
    df = pd.DataFrame({"k": np.repeat(keys, 2), "x": np.arange(2.0 * n_keys) % 7})
    model = sp.fit(df, scope="key", key="k")
    model.save(tmp_path / "m.json")
    loaded = sp.load(tmp_path / "m.json")
    assert loaded.groups.keys.tolist() == model.groups.keys.tolist()
    assert loaded.unseen_rows(df) == 0
    pd.testing.assert_frame_equal(loaded.transform(df), model.transform(df))
