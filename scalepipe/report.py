"""The run report: one self-contained HTML file per fitted model.

Per feature: the input and the scaled output histograms side by side (PNG
images embedded as base64 when matplotlib is installed; without it, tables
and a sentence saying plots need ``pip install 'scalepipe[plot]'``), the
statistics and parameters of :meth:`Model.summary`, NaN counts, and flags:

* ``constant``: the range is within a few ulps of the magnitude;
* ``heavy tail``: a value lies more than :data:`HEAVY_TAIL_STD` standard
  deviations from the mean;
* ``large offset``: ``|mean| / std`` exceeds :data:`OFFSET_STD` (the spread
  is a tiny part of the magnitude);
* ``no std``: the variance is beyond float64's range (it overflowed, or
  underflowed for values within ~1e-154 of each other), so no standard
  deviation is shown and the two flags above are not computed;
* ``amplifies noise``: one rounding step of the input (one ulp of its
  largest magnitude, in its dtype) becomes more than :data:`MAX_OUTPUT_STEP`
  after scaling, so the output is visibly quantised by the input's precision
  (a large scale alone is not: data in small units keeps its relative
  precision).

The histograms live beside the statistics in a side file
``<stats>.hist.json`` (see :func:`histograms_path`), not in the artifact:
the artifact holds mergeable statistics (``fit --update`` must equal a fit on
all the data), while histograms over bins fixed by one fit's min/max do not
merge across fits; they are counted during the output write, after the
artifact is staged; and ``scalepipe transform`` must not rewrite the
training artifact. The side file records its bin edges, so a side file left
over from an earlier fit no longer matches the model and is ignored.

numpy only at import; matplotlib is imported inside :func:`render_report`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import checksum, write_text_atomic
from .errors import ArtifactError, ParameterError
from .histograms import Histograms, histograms_from_dict, model_edges
from .views import ARRAY_KINDS

__all__ = [
    "HISTOGRAMS_FORMAT",
    "Flag",
    "build_report_from_stats",
    "feature_flags",
    "histograms_path",
    "load_histograms",
    "performance_report",
    "render_report",
    "report_path",
    "save_histograms",
    "write_report",
    "write_run_report",
]

HISTOGRAMS_FORMAT = "scalepipe.histograms"
HISTOGRAMS_SCHEMA_VERSION = 1

#: A value further than this many standard deviations from the mean is a heavy tail.
HEAVY_TAIL_STD = 10.0
#: ``|mean| / std`` above this is a large offset.
OFFSET_STD = 1e3
#: One input ulp becoming more than this after scaling amplifies noise.
MAX_OUTPUT_STEP = 1e-3

PLOT_EXTRA = "pip install 'scalepipe[plot]'"


@dataclass(frozen=True)
class Flag:
    """A warning about one feature: a short ``name`` and what it means for this feature."""

    name: str
    detail: str


def report_path(stats_path: str | os.PathLike[str]) -> Path:
    """Where the run report of ``stats_path`` goes: ``stats.json`` -> ``stats.report.html``."""
    p = Path(stats_path)
    return p.with_name(f"{p.stem}.report.html")


def histograms_path(stats_path: str | os.PathLike[str]) -> Path:
    """The histograms side file of ``stats_path``: ``stats.json`` -> ``stats.json.hist.json``."""
    p = Path(stats_path)
    return p.with_name(f"{p.name}.hist.json")


def save_histograms(histograms: Histograms, path: str | os.PathLike[str], model: Any = None) -> None:
    """Write ``histograms`` as JSON (format name, schema version, checksum), atomically."""
    doc: dict[str, Any] = {
        "format": HISTOGRAMS_FORMAT,
        "schema_version": HISTOGRAMS_SCHEMA_VERSION,
        "config_hash": None if model is None else model.meta.get("config_hash"),
        "model_created": None if model is None else model.meta.get("created"),
        "histograms": histograms.to_dict(),
    }
    doc["checksum"] = checksum(doc)
    write_text_atomic(path, json.dumps(doc, indent=None, allow_nan=False) + "\n")


def load_histograms(path: str | os.PathLike[str], model: Any = None) -> Histograms | None:
    """Read a histograms side file; ``None`` if it is missing or does not match ``model``.

    With ``model`` given, the file's features, input bin edges and value
    counts must equal those of the model's fit, so histograms of an earlier
    fit (before ``fit --update`` or a new ``fit``, even one whose ranges did
    not move) are not shown as this model's.

    Raises
    ------
    ArtifactError
        The file exists but is not a valid histograms file (edited, truncated).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON at line {err.lineno} (truncated or corrupt?)") from None
    if not isinstance(doc, dict) or doc.get("format") != HISTOGRAMS_FORMAT:
        raise ArtifactError(f"{path}: not a scalepipe histograms file")
    if not isinstance(doc.get("schema_version"), int) or doc["schema_version"] > HISTOGRAMS_SCHEMA_VERSION:
        raise ArtifactError(f"{path}: unsupported schema version {doc.get('schema_version')!r}; upgrade scalepipe")
    if doc.get("checksum") != checksum(doc):
        raise ArtifactError(f"{path}: checksum mismatch: the file was edited or corrupted after it was written")
    try:
        hist = histograms_from_dict(doc["histograms"])
    except (ArtifactError, KeyError) as err:
        raise ArtifactError(f"{path}: {err}") from None
    if model is not None and not _matches(hist, model):
        return None
    return hist


def _matches(hist: Histograms, model: Any) -> bool:
    if list(hist.names) != list(model.feature_names):
        return False
    edges, _ = model_edges(model, hist.bins)
    counts = np.array_equal(hist.input.total, model.moments.count) and np.array_equal(hist.nan, model.moments.nan_count)
    return bool(np.array_equal(edges, hist.input.edges) and counts)


def _ratio(a: float, b: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def feature_flags(model: Any) -> list[list[Flag]]:
    """The flags of every fitted feature, in the model's order (see the module docstring)."""
    m = model.moments
    std = m.std(0)
    constant = m.is_constant()
    unmeasured = m.variance_out_of_range()
    out = []
    for i, f in enumerate(model.features):
        flags = []
        if constant[i]:
            flags.append(Flag("constant", f"every value is {m.min[i]:.6g}; constant_policy decides its output"))
        elif unmeasured[i]:
            flags.append(Flag("no std", "the variance is beyond float64's range (values beyond ~1e154 or within ~1e-154 of each other)"))
        else:
            tail = max(m.max[i] - m.mean[i], m.mean[i] - m.min[i])
            t = _ratio(tail, std[i])
            if t > HEAVY_TAIL_STD:
                flags.append(Flag("heavy tail", f"a value lies {t:.3g} standard deviations from the mean"))
            o = _ratio(abs(m.mean[i]), std[i])
            if o > OFFSET_STD:
                flags.append(Flag("large offset", f"|mean| is {o:.3g} standard deviations: the spread is a tiny part of the magnitude"))
        scale = abs(float(model.params.scale[i]))
        dtype = np.dtype(f.dtype) if _is_float_dtype(f.dtype) else np.dtype(np.float64)
        step = float(np.spacing(dtype.type(m.absmax[i]))) * scale if math.isfinite(m.absmax[i]) else 0.0
        if step > MAX_OUTPUT_STEP:
            flags.append(
                Flag("amplifies noise", f"one rounding step of the {dtype} input becomes {step:.3g} after scaling")
            )
        out.append(flags)
    return out


def _is_float_dtype(name: str) -> bool:
    try:
        return np.dtype(name).kind == "f"
    except TypeError:
        return False


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.flag{display:inline-block;background:#fde2c0;border-radius:3px;padding:0 6px;margin:1px;font-size:12px}
.note{color:#555;font-style:italic}section{border-top:1px solid #ddd;margin-top:1.5em}
img{max-width:100%}
"""

_STAT_COLUMNS = ("method", "count", "nan", "min", "max", "mean", "std", "center", "scale", "offset")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return "-" if math.isinf(v) else f"{v:.6g}"
    return html.escape(str(v))


class _Plots:
    """Each feature's input and output histograms side by side, as base64 PNGs.

    One figure and its two axes serve every feature, each feature's bars and
    labels replacing the previous ones: creating the axes was a quarter of
    the drawing time (the images are the same, byte for byte).
    """

    def __init__(self, hist: Histograms) -> None:
        from matplotlib.figure import Figure

        self.hist = hist
        self.figure = Figure(figsize=(8.0, 2.0), dpi=72)
        self.figure.subplots_adjust(left=0.02, right=0.98, bottom=0.14, top=0.98, wspace=0.06)
        self.axes = self.figure.subplots(1, 2)
        for ax, side in zip(self.axes, (hist.input, hist.output), strict=True):
            if side is None:
                ax.set_axis_off()
                continue
            # axis text instead of titles and y ticks: tick layout is most of matplotlib's drawing time
            ax.yaxis.set_visible(False)
            ax.xaxis.set_major_locator(_locator())
            ax.tick_params(labelsize=8)
        self.drawn: list[Any] = []

    def png(self, i: int) -> str:
        """Feature ``i``'s plot."""
        for artist in self.drawn:
            artist.remove()
        self.drawn = []
        sides = [("input", self.hist.input, "#4c72b0"), ("scaled output", self.hist.output, "#dd8452")]
        for ax, (label, side, colour) in zip(self.axes, sides, strict=True):
            if side is None:
                continue
            outside = int(side.under[i] + side.over[i])
            text = label + (f"\n{outside} outside the bins" if outside else "")
            self.drawn.append(ax.stairs(side.counts[i], side.edges[i], fill=True, color=colour))
            self.drawn.append(ax.text(0.99, 0.95, text, transform=ax.transAxes, ha="right", va="top", fontsize=9))
            # a new axes' limits, for bars without a finite extent (matplotlib would keep the last ones)
            ax.set_xlim(0.0, 1.0, auto=None)
            ax.set_ylim(0.0, 1.0, auto=None)
            ax.relim()
            ax.autoscale_view()
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return base64.b64encode(buf.getvalue()).decode("ascii")


def _locator() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(5)


def load_plotting_in_background() -> None:
    """Start importing matplotlib's figure and PNG modules on a daemon thread.

    A job calls it as the pass that counts the histograms starts: the import
    (about 1 s; longer on a first run, which builds matplotlib's font cache)
    then overlaps the pass, whose workers leave a core idle while they wait
    on the disk, instead of coming after it. Importing is thread-safe: the
    report's own import waits for this one. Without matplotlib it does
    nothing.
    """

    def load() -> None:
        try:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.figure  # noqa: F401
        except Exception:  # noqa: BLE001 - the report's own import says what is wrong
            pass

    # matplotlib warns when its optional 3-D axes fail to import (seen when a
    # failing disk stops the import writing its caches); the report draws none,
    # and the job's one-line error must stay one line
    warnings.filterwarnings("ignore", message="Unable to import Axes3D", category=UserWarning)
    threading.Thread(target=load, name="scalepipe-load-plots", daemon=True).start()


def _matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _why_no_histograms(model: Any) -> str:
    if model.meta.get("data_kind") in ARRAY_KINDS:
        return "Histograms are counted for tables only, not yet for arrays"
    if model.scope.kind != "global":
        return f"Histograms are counted in the global scope only, not the {model.scope.kind} scope"
    return "Histograms are counted while scalepipe run scales the data"


def render_report(model: Any, histograms: Histograms | None = None, *, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """The report of ``model`` as one self-contained HTML document.

    Parameters
    ----------
    model
        A fitted :class:`~scalepipe.model.Model`.
    histograms
        Its input/output histograms (:func:`scalepipe.histograms.transform_with_histograms`),
        or ``None`` for statistics only.
    title
        The page title (default: the model's repr).
    notes
        Extra sentences shown at the top.
    """
    summary = model.summary()
    flags = feature_flags(model)
    if histograms is not None and list(histograms.names) != list(model.feature_names):
        raise ArtifactError("the histograms do not belong to this model (their features differ)")
    plots = histograms is not None and _matplotlib_available()
    head = html.escape(title or repr(model))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{head}</title><style>{_CSS}</style></head><body>",
        f"<h1>{head}</h1>",
        "<p>" + html.escape(_provenance(model)) + "</p>",
    ]
    messages = list(notes)
    if histograms is None:
        messages.append(f"{_why_no_histograms(model)}; this report has the statistics only.")
    elif not plots:
        messages.append(f"Plots need matplotlib: {PLOT_EXTRA}. The tables below have the statistics.")
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in messages]
    parts.append(_overview(summary, flags))
    drawer = _Plots(histograms) if histograms is not None and plots else None
    for i, row in enumerate(summary):
        parts.append(_feature_section(i, row, flags[i], histograms, drawer))
    if model.passthrough:
        names = ", ".join(html.escape(str(n)) for n in model.passthrough)
        parts.append(f"<section><h2>Passthrough</h2><p>Not scaled: {names}</p></section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _provenance(model: Any) -> str:
    meta = model.meta
    bits = [f"scope {model.scope.kind}"]
    for key in ("created", "config_hash", "data_kind"):
        if meta.get(key):
            bits.append(f"{key.replace('_', ' ')} {meta[key]}")
    return "; ".join(bits)


def _overview(summary: list[dict[str, Any]], flags: list[list[Flag]]) -> str:
    head = "".join(f"<th>{c}</th>" for c in _STAT_COLUMNS)
    rows = []
    for row, fl in zip(summary, flags):
        cells = "".join(f"<td>{_fmt(row[c])}</td>" for c in _STAT_COLUMNS)
        badges = " ".join(f'<span class="flag">{html.escape(f.name)}</span>' for f in fl)
        rows.append(f'<tr><td class="l">{html.escape(str(row["feature"]))}</td>{cells}<td class="l">{badges}</td></tr>')
    return f'<h2>Features</h2><table><tr><th class="l">feature</th>{head}<th class="l">flags</th></tr>{"".join(rows)}</table>'


def _feature_section(i: int, row: dict[str, Any], flags: list[Flag], hist: Histograms | None, plots: _Plots | None) -> str:
    name = html.escape(str(row["feature"]))
    out = [f'<section><h2 id="f{i}">{name} <small>({html.escape(row["method"])})</small></h2>']
    if flags:
        out.append("<ul>" + "".join(f"<li><b>{html.escape(f.name)}</b>: {html.escape(f.detail)}</li>" for f in flags) + "</ul>")
    stats = "".join(f"<th>{c}</th>" for c in _STAT_COLUMNS[1:])
    values = "".join(f"<td>{_fmt(row[c])}</td>" for c in _STAT_COLUMNS[1:])
    out.append(f"<table><tr>{stats}</tr><tr>{values}</tr></table>")
    if hist is not None:
        if plots is not None:
            out.append(f'<img alt="histograms of {name}" src="data:image/png;base64,{plots.png(i)}">')
        sides = [("input", hist.input), ("output", hist.output)]
        cells = "".join(
            f"<tr><td class='l'>{label}</td><td>{int(side.under[i])}</td><td>{int(side.over[i])}</td>"
            f"<td>{_fmt(float(side.edges[i][0]))}</td><td>{_fmt(float(side.edges[i][-1]))}</td></tr>"
            for label, side in sides
            if side is not None
        )
        out.append(
            "<table><tr><th class='l'>histogram</th><th>below bins</th><th>above bins</th>"
            f"<th>first edge</th><th>last edge</th></tr>{cells}</table>"
        )
    out.append("</section>")
    return "".join(out)


def write_report(model: Any, histograms: Histograms | None, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Render the report (see :func:`render_report`) and write it to ``path`` atomically.

    Returns
    -------
    Path
        ``path``.
    """
    write_text_atomic(path, render_report(model, histograms, **kwargs))
    return Path(path)


def write_run_report(model: Any, histograms: Histograms | None, stats_path: str | os.PathLike[str]) -> Path:
    """What ``scalepipe run``/``fit`` writes beside the statistics.

    The histograms (when counted) go to :func:`histograms_path`, then the
    report to :func:`report_path`. Returns the report's path.
    """
    if histograms is not None:
        save_histograms(histograms, histograms_path(stats_path), model)
    return write_report(model, histograms, report_path(stats_path), title=_title(stats_path, model))


def _title(stats_path: str | os.PathLike[str], model: Any) -> str:
    """The report's title: the statistics file's name and the model (the same written by a run and rebuilt)."""
    return f"{Path(stats_path).name}: {model!r}"


def build_report_from_stats(stats_path: str | os.PathLike[str]) -> str:
    """The report of a statistics file, for ``scalepipe report STATS``.

    Uses the histograms side file when it exists and belongs to this model;
    otherwise the report has the statistics only and says why.
    """
    from .model import load

    model = load(stats_path)
    side = histograms_path(stats_path)
    hist = load_histograms(side, model)
    notes = []
    if hist is None and side.exists():
        notes.append(f"{side.name} was written for an earlier fit of these statistics and is not shown.")
    return render_report(model, hist, title=_title(stats_path, model), notes=notes)


def check_profile(path: str | os.PathLike[str] | None) -> None:
    """Refuse ``--profile`` before any work when bokeh, which Dask needs to draw it, is missing.

    Raises
    ------
    ParameterError
        ``path`` is given and bokeh is not installed.
    """
    import importlib.util

    if path is not None and importlib.util.find_spec("bokeh") is None:
        raise ParameterError("--profile", "Dask's performance report needs bokeh: pip install 'bokeh>=3.1'")


@contextmanager
def performance_report(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Keep Dask's own performance report of the block at ``path`` (``--profile``); no-op for ``None``.

    Enter it with the job's ``distributed`` client active (inside the cluster context).

    Raises
    ------
    ParameterError
        bokeh, which Dask needs to draw the report, is not installed.
    """
    if path is None:
        yield
        return
    check_profile(path)
    from distributed import performance_report as dask_report

    with dask_report(filename=os.fspath(path)):
        yield
