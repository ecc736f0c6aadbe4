"""Histograms against numpy.histogram (pandas, numpy, a real cluster) and the HTML run report."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import scalepipe as sp
from scalepipe import report
from scalepipe.errors import ArtifactError
from scalepipe.histograms import count_bins, histogram_edges, merge_histograms, transform_with_histograms

from .conftest import mixed_frame

RULES = [
    sp.ZScore(["offset", "lognormal"]),
    sp.MinMax(["tiny", "f32"], feature_range=(-1, 1), clip=True),
    sp.Decimal(["count"]),
    sp.BatchNorm(gamma=2.0, beta=0.5),
]


def frame(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    return mixed_frame(n, seed)


def assert_counts_equal_numpy(hist, model, data: pd.DataFrame) -> None:
    """Input and output counts, under/overflow and NaNs against numpy.histogram on the same edges."""
    scaled = model.transform(data)
    for j, name in enumerate(model.feature_names):
        x = data[name].to_numpy(dtype=np.float64, na_value=np.nan)
        y = scaled[name].to_numpy(dtype=np.float64, na_value=np.nan)
        for values, side in ((x, hist.input), (y, hist.output)):
            edges = side.edges[j]
            expected, _ = np.histogram(values[~np.isnan(values)], bins=edges)
            np.testing.assert_array_equal(side.counts[j], expected, err_msg=str(name))
            assert side.under[j] == np.count_nonzero(values < edges[0])
            assert side.over[j] == np.count_nonzero(values > edges[-1])
        assert hist.nan[j] == np.isnan(x).sum()
        fitted = model.moments
        assert hist.outside[j] == np.count_nonzero((x < fitted.min[j]) | (x > fitted.max[j]))


def new_data(train: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """Data with values outside the fitted ranges, to exercise under/overflow."""
    new = frame(len(train), seed)
    new.loc[:50, "lognormal"] = new["lognormal"].max() * 3
    new.loc[60:80, "count"] = -10_000
    return new


@pytest.mark.parametrize("value", [1.7e308, -1.7e308, np.finfo(np.float64).max, -np.finfo(np.float64).max, 5.0, 0.0])
def test_a_constant_column_gets_finite_edges_that_hold_it(value):
    """A constant's bins are widened around it, and stop at the largest
    double instead of overflowing (the edges were inf and NaN near it)."""
    edges = histogram_edges(np.array([value]), np.array([value]), 4)
    assert np.isfinite(edges).all() and (np.diff(edges) > 0).all(), edges
    counted = count_bins(np.full((3, 1), value), edges)
    assert counted.counts.sum() == 3 and counted.under[0] == counted.over[0] == 0


def test_histograms_equal_numpy_in_memory():
    train = frame()
    model = sp.fit(train, RULES)
    scaled, hist = transform_with_histograms(model, train, bins=40)
    pd.testing.assert_frame_equal(scaled, model.transform(train))
    assert hist.bins == 40 and hist.names == model.feature_names
    assert_counts_equal_numpy(hist, model, train)
    # the fitted data lies inside its own bins; the constant column in its middle bin
    assert not hist.input.under.any() and not hist.input.over.any() and not hist.outside.any()
    assert not hist.output.under.any() and not hist.output.over.any()
    const = model.feature_names.index("const")
    assert hist.input.counts[const].max() == len(train) and hist.input.edges[const, 0] < 7.25 < hist.input.edges[const, -1]
    # new data: outside values counted, and partial histograms add up to the whole
    new = new_data(train)
    _, whole = transform_with_histograms(model, new, bins=40)
    assert_counts_equal_numpy(whole, model, new)
    assert whole.input.over[model.feature_names.index("lognormal")] >= 51
    parts = [transform_with_histograms(model, new.iloc[a:b], bins=40)[1] for a, b in ((0, 700), (700, 701), (701, 3000))]
    merged = merge_histograms(parts)
    for field in ("counts", "under", "over"):
        np.testing.assert_array_equal(getattr(merged.input, field), getattr(whole.input, field))
        np.testing.assert_array_equal(getattr(merged.output, field), getattr(whole.output, field))
    np.testing.assert_array_equal(merged.outside, whole.outside)


@pytest.mark.parametrize("seed", range(6))
def test_float32_outputs_of_the_fitted_data_fall_in_the_output_bins(seed):
    """The output edges were the float64 image of [min, max]; a float32 column's
    scaled max, rounded to float32, fell above the last edge ("1 outside the
    bins") for most seeds here. The ends are widened to their float32 rounding."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"a": rng.normal(0, 1, 200).astype("float32"), "b": (1e4 + rng.normal(0, 1, 200)).astype("float32")})
    model = sp.fit(df, [sp.ZScore(["a"]), sp.MinMax(["b"], feature_range=(0.1, 0.9))])
    scaled, hist = transform_with_histograms(model, df, bins=20)
    assert (scaled.dtypes == np.float32).all()
    assert not hist.output.over.any() and not hist.output.under.any()
    assert hist.output.counts.sum(axis=1).tolist() == [200, 200]


def test_histograms_numpy_array_by_position():
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.normal(size=500), rng.lognormal(size=500), rng.integers(0, 9, 500)])
    model = sp.fit(x, [sp.MinMax([1]), sp.ZScore([0])])
    _, hist = transform_with_histograms(model, x, bins=7)
    y = model.transform(x)
    for j, col in enumerate(model.feature_names):
        np.testing.assert_array_equal(hist.input.counts[j], np.histogram(x[:, col], bins=hist.input.edges[j])[0])
        np.testing.assert_array_equal(hist.output.counts[j], np.histogram(y[:, col], bins=hist.output.edges[j])[0])


def test_histograms_of_a_chunked_dask_array():
    import dask
    import dask.array as da

    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(size=900), rng.integers(0, 50, 900)]).astype(np.float32)
    model = sp.fit(x[:600], [sp.MinMax([0]), sp.Decimal([1])])
    scaled, lazy = transform_with_histograms(model, da.from_array(x, chunks=(250, 1)), bins=9)
    out, hist = dask.compute(scaled, lazy, scheduler="sync")
    np.testing.assert_array_equal(out, model.transform(x))
    for j in range(2):
        np.testing.assert_array_equal(hist.input.counts[j], np.histogram(x[:, j], bins=hist.input.edges[j])[0])
        np.testing.assert_array_equal(hist.output.counts[j], np.histogram(out[:, j], bins=hist.output.edges[j])[0])
        assert hist.input.under[j] + hist.input.over[j] == np.count_nonzero((x[:, j] < hist.input.edges[j][0]) | (x[:, j] > hist.input.edges[j][-1]))


def test_histograms_on_a_cluster_in_the_write_pass(client):
    """A dask DataFrame of several partitions on a real cluster: scaled output and histograms in one compute."""
    import dask
    import dask.dataframe as dd

    train = frame(4000, 1)
    model = sp.fit(train, RULES)
    new = new_data(train, seed=7)
    scaled, lazy = transform_with_histograms(model, dd.from_pandas(new, npartitions=4, sort=False))
    # what the pipeline's write does: per-partition tasks and the histograms in one compute
    parts, hist = dask.compute(list(scaled.to_delayed()), lazy)
    written, expected = pd.concat(parts), model.transform(new)
    pd.testing.assert_frame_equal(written[model.feature_names], expected[model.feature_names])
    assert written["id"].tolist() == expected["id"].tolist()
    assert_counts_equal_numpy(hist, model, new)


def test_scaled_output_and_histograms_read_each_partition_once():
    import dask
    import dask.dataframe as dd

    reads: list[int] = []

    def read(i: int) -> pd.DataFrame:
        reads.append(i)
        return frame(300, seed=i)

    ddf = dd.from_map(read, range(4), meta=frame(2).iloc[:0])
    model = sp.fit(frame(300), RULES)
    reads.clear()
    scaled, lazy = transform_with_histograms(model, ddf)
    tasks = [dask.delayed(len)(part) for part in scaled.to_delayed()]  # as io.write_table builds its writes
    lengths, hist = dask.compute(tasks, lazy, scheduler="sync")
    assert sorted(reads) == [0, 1, 2, 3]
    assert sum(lengths) == 1200 == int(hist.input.total[0] + hist.nan[0])


def quickstart(rows: int = 4000) -> tuple[pd.DataFrame, list[sp.Scaler]]:
    """The quickstart's data (smaller) and its rules, read from configs/quickstart.yaml."""
    from pathlib import Path

    from scalepipe.config import load_config
    from scalepipe.demo import demo_frame

    cfg = load_config(Path(__file__).parent.parent / "configs" / "quickstart.yaml")
    return demo_frame(rows, seed=cfg.input.demo.seed), cfg.scaler_objects()


def test_quickstart_report_is_one_html_file_with_embedded_images(tmp_path):
    pytest.importorskip("matplotlib")
    train, rules = quickstart()
    model = sp.fit(train, rules)
    _, hist = transform_with_histograms(model, train)
    assert_counts_equal_numpy(hist, model, train)
    stats = tmp_path / "stats.json"
    model.save(stats)
    path = report.write_run_report(model, hist, stats)
    assert path == tmp_path / "stats.report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json", "stats.json.hist.json", "stats.report.html"]
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert set(model.feature_names) == {"temperature", "pressure", "income", "reading", "calibration", "visits"}
    for name in model.feature_names:
        assert f">{name} <small>" in text
    assert text.count('src="data:image/png;base64,') == len(model.feature_names)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # the saved histograms come back bit-identical and are used by `scalepipe report STATS`
    again = report.load_histograms(report.histograms_path(stats), sp.load(stats))
    np.testing.assert_array_equal(again.input.edges, hist.input.edges)
    np.testing.assert_array_equal(again.output.counts, hist.output.counts)
    rebuilt = report.build_report_from_stats(stats)
    assert rebuilt.count("data:image/png;base64,") == len(model.feature_names)
    assert rebuilt == text  # the same file (its title gained the statistics file's name when rebuilt)


def test_plots_share_one_figure_without_leftovers():
    """The report draws every feature on one reused figure: a feature's image
    is the same bytes whichever features were drawn before it (no bars, text or
    limits left over), and differs between features."""
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"wide": rng.normal(0, 100, 5000), "skewed": rng.lognormal(0, 1, 5000), "flat": rng.uniform(size=5000)})
    df.loc[::7, "flat"] = np.nan
    model = sp.fit(df, [sp.ZScore()])
    _, hist = transform_with_histograms(model, df)
    alone = [report._Plots(hist).png(i) for i in range(3)]
    shared = report._Plots(hist)
    assert [shared.png(i) for i in (2, 0, 1)] == [alone[2], alone[0], alone[1]]
    assert len(set(alone)) == 3
    # edges past the largest double (no finite extent): matplotlib would keep the last limits
    edges = hist.output.edges.copy()
    edges[1] = np.inf
    odd = dataclasses.replace(hist, output=dataclasses.replace(hist.output, edges=edges))
    alone = [report._Plots(odd).png(i) for i in range(3)]
    shared = report._Plots(odd)
    assert [shared.png(i) for i in (0, 1, 2)] == alone


def test_flags_follow_the_data():
    model = sp.fit(frame(), RULES)
    flags = dict(zip(model.feature_names, ([f.name for f in fl] for fl in report.feature_flags(model))))
    assert flags["const"] == ["constant"]
    assert flags["lognormal"] == ["heavy tail"]  # lognormal(0, 2): values ~20 std above the mean
    assert "amplifies noise" in flags["tiny"]  # 1e12 + 1e-3 U(0, 1): one ulp becomes ~0.4 std
    assert "large offset" in flags["offset"]  # 1e9 + N(0, 1)
    assert flags["count"] == [] and flags["f32"] == ["large offset"]


def test_flags_of_extreme_magnitudes():
    """Values ~1e-200 (their variance underflows to 0) were flagged "heavy
    tail: inf standard deviations" and "large offset", with std 0 in the
    table; data in small units (1e-7) "amplifies noise" by its scale alone,
    though its relative precision is kept."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"s200": rng.uniform(1, 5, 500) * 1e-200, "unit": rng.uniform(1, 5, 500) * 1e-7})
    model = sp.fit(df, [sp.MinMax()])
    flags = dict(zip(model.feature_names, ([f.name for f in fl] for fl in report.feature_flags(model))))
    assert flags == {"s200": ["no std"], "unit": []}
    rows = {r["feature"]: r for r in model.summary()}
    assert np.isnan(rows["s200"]["std"]) and rows["unit"]["std"] == pytest.approx(df["unit"].std(ddof=0), rel=1e-12)


def test_report_from_stats_without_or_with_stale_histograms(tmp_path):
    train = frame()
    model = sp.fit(train, RULES)
    stats = tmp_path / "stats.json"
    model.save(stats)
    text = report.build_report_from_stats(stats)
    assert "statistics only" in text and "data:image" not in text
    for name in model.feature_names:
        assert f">{name} <small>" in text
    # histograms of an earlier fit are not shown as this model's
    report.save_histograms(transform_with_histograms(model, train)[1], report.histograms_path(stats), model)
    assert "data:image" in report.build_report_from_stats(stats)  # this model's: shown
    model.partial_fit(train.iloc[:100]).save(stats)  # more rows, the same ranges and edges
    assert "earlier fit" in report.build_report_from_stats(stats)
    sp.fit(frame(seed=9), RULES).save(stats)
    stale = report.build_report_from_stats(stats)
    assert "earlier fit" in stale and "data:image" not in stale
    # an edited side file is refused
    side = report.histograms_path(stats)
    doc = json.loads(side.read_text())
    doc["histograms"]["nan"][0] += 1
    side.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="checksum"):
        report.load_histograms(side)


def test_report_without_matplotlib_says_plots_need_the_extra(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None
        import numpy as np, scalepipe as sp
        from scalepipe import report
        from scalepipe.histograms import transform_with_histograms
        x = np.random.default_rng(0).normal(size=(200, 2))
        model = sp.fit(x, [sp.ZScore()])
        report.write_report(model, transform_with_histograms(model, x)[1], {str(tmp_path / 'r.html')!r})
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    text = (tmp_path / "r.html").read_text()
    assert "pip install &#x27;scalepipe[plot]&#x27;" in text
    assert "<img" not in text and "<table>" in text


def test_profile_needs_bokeh_or_does_nothing(tmp_path):
    import importlib.util

    with report.performance_report(None):
        pass
    if importlib.util.find_spec("bokeh") is None:
        with pytest.raises(sp.ParameterError, match="bokeh"):
            with report.performance_report(tmp_path / "dask-report.html"):
                pass


def test_profile_without_bokeh_is_refused_before_any_work(tmp_path):
    """``run --profile`` without bokeh fails at once: no cluster, no demo data, no output."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("bokeh") is not None:
        pytest.skip("bokeh is installed")
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "scalepipe", "run", str(config), "--profile", str(tmp_path / "p.html")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "--profile" in proc.stderr and "bokeh" in proc.stderr
    assert "dashboard" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("installed", [True, False])
def test_plotting_modules_load_in_the_background(installed):
    """A job starts importing matplotlib while it counts the histograms; without
    matplotlib the background import is silent (no traceback from the thread)."""
    if installed:
        pytest.importorskip("matplotlib")
    code = textwrap.dedent(
        f"""
        import sys, threading
        if not {installed}:
            sys.modules["matplotlib"] = None
        from scalepipe.report import load_plotting_in_background
        load_plotting_in_background()
        for t in threading.enumerate():
            if t.name == "scalepipe-load-plots":
                t.join()
        print("matplotlib.figure" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(installed) and out.stderr == ""


def test_a_report_without_histograms_says_why():
    """An array run's report said histograms are counted while `run` scales
    the data, though that run had scaled it: arrays and the batch and key
    scopes get none."""
    df = pd.DataFrame({"k": ["a", "b"] * 5, "x": np.arange(10.0)})
    cases = {
        "not yet for arrays": sp.fit(np.arange(10.0).reshape(5, 2)),
        "global scope only, not the key scope": sp.fit(df, scope="key", key="k"),
        "while scalepipe run scales the data": sp.fit(df[["x"]]),
    }
    for reason, model in cases.items():
        page = report.render_report(model)
        assert reason in page and "this report has the statistics only" in page, reason
