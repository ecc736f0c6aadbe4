"""Drift check: compare new data with the statistics a model was fitted on.

One pass over the new data computes, per partition and in the same task, its
mergeable :class:`~scalepipe.stats.Moments`, its histograms over the model's
input bins (values outside the fitted ``[min, max]`` included) and, for the
key scope, the rows whose key was not fitted. Per feature it then reports:

* ``mean_shift``: ``(new mean - fitted mean) / fitted std``;
* ``variance_ratio``: ``new variance / fitted variance``;
* ``outside_share``: share of the new values outside the fitted ``[min, max]``;
* ``nan_rate`` against ``nan_rate_fit``: the share of missing values;
* ``psi``: the population stability index over the report's bins (plus under-
  and overflow), against the fitted data's histograms when the run saved them
  (:func:`scalepipe.report.histograms_path`); NaN without them.

:class:`DriftThresholds` holds the limits (DESIGN.md's defaults: 0.25 std,
variance ratio outside ``[0.5, 2]``, more than 1% outside the range, PSI
above 0.2); :attr:`DriftResult.flagged` says whether any was crossed, which
the command line turns into its exit code.

Examples
--------
>>> import numpy as np, scalepipe as sp
>>> rng = np.random.default_rng(0)
>>> model = sp.fit(rng.normal(size=(10_000, 2)), [sp.ZScore()])
>>> drift_report(model, rng.normal(size=(10_000, 2))).flagged
False
>>> drift_report(model, rng.normal(1.0, 1.0, size=(10_000, 2))).flagged
True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import DataError, ParameterError
from .histograms import DEFAULT_BINS, Counts, count_bins, feature_columns, histogram_edges, psi
from .maps import unseen_mask
from .stats import Moments, NonFiniteError, chunk_moments, merge_all, tree_reduce

__all__ = ["DriftResult", "DriftThresholds", "FeatureDrift", "UnseenKeys", "drift_report"]

#: Distinct unseen keys kept for the report (their rows are all counted).
MAX_UNSEEN_KEYS = 1000


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature has drifted; ``None`` turns a test off.

    Attributes
    ----------
    mean_shift
        Largest ``|new mean - fitted mean|`` in fitted standard deviations.
    variance_ratio
        Allowed ``[low, high]`` of ``new variance / fitted variance``.
    outside_share
        Largest share of new values outside the fitted ``[min, max]``.
    psi
        Largest population stability index.
    nan_rate
        Largest change of the share of missing values (off by default).
    unseen_share
        Key scope: largest share of rows whose key was not fitted (off by default).
    """

    mean_shift: float | None = 0.25
    variance_ratio: tuple[float, float] | None = (0.5, 2.0)
    outside_share: float | None = 0.01
    psi: float | None = 0.2
    nan_rate: float | None = None
    unseen_share: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "variance_ratio":
                pair = tuple(value)
                if len(pair) != 2 or not all(_is_number(v) for v in pair) or not 0 <= pair[0] <= pair[1]:
                    raise ParameterError("variance_ratio", f"must be [low, high] with 0 <= low <= high, got {value!r}")
                object.__setattr__(self, f.name, (float(pair[0]), float(pair[1])))
            elif not _is_number(value) or value < 0:
                raise ParameterError(f.name, f"must be a non-negative number, or null (off on the command line), got {value!r}")
            elif f.name in _SHARES and value > 1:  # a share above 1 is never crossed: the test would be off unsaid
                raise ParameterError(f.name, f"is a share of rows, from 0 to 1, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DriftThresholds:
        """Thresholds from plain data (a config section); missing keys keep their defaults.

        Raises
        ------
        ParameterError
            An unknown key (the message lists the valid ones) or an impossible value.
        """
        d = dict(d or {})
        valid = [f.name for f in fields(cls)]
        for key in d:
            if key not in valid:
                raise ParameterError(key, f"not a drift threshold; valid: {', '.join(valid)}")
        return cls(**d)

    @classmethod
    def from_overrides(cls, items: Sequence[str], base: dict[str, Any] | None = None) -> DriftThresholds:
        """Thresholds from command-line ``NAME=VALUE`` items over ``base``.

        ``VALUE`` is a number, ``LOW,HIGH`` for ``variance_ratio``, or ``off``
        to turn the test off (an empty value is an error: an unset shell
        variable turned the test off).

        Examples
        --------
        >>> DriftThresholds.from_overrides(["psi=off", "variance_ratio=0.8,1.25"]).variance_ratio
        (0.8, 1.25)
        """
        values = dict(base or {})
        for item in items:
            name, sep, text = item.partition("=")
            name, text = name.strip(), text.strip()
            if not sep:
                raise ParameterError(name or item, f"expected NAME=VALUE, got {item!r}")
            if not text:
                raise ParameterError(name, f"has no value in {item!r}; give a number, or {name}=off to turn the test off")
            try:
                if text.lower() in ("off", "none", "null"):
                    values[name] = None
                elif name == "variance_ratio":
                    values[name] = tuple(float(v) for v in text.split(","))
                else:
                    values[name] = float(text)
            except ValueError:
                raise ParameterError(name, f"{text!r} is not a number") from None
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as plain data."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


#: The thresholds that are shares of rows (0 to 1).
_SHARES = ("outside_share", "nan_rate", "unseen_share")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class FeatureDrift:
    """The comparison of one feature (see the module docstring); ``reasons`` lists what crossed a threshold."""

    feature: Any
    method: str
    count: int
    mean_shift: float
    variance_ratio: float
    outside_share: float
    below: int
    above: int
    nan_rate_fit: float
    nan_rate: float
    psi: float
    reasons: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        """Whether any threshold was crossed."""
        return bool(self.reasons)


@dataclass(frozen=True)
class UnseenKeys:
    """Key scope: rows of the new data whose key was not fitted (scaled with the global statistics).

    Attributes
    ----------
    rows
        Rows whose key was not fitted (a missing key is not counted: such
        rows are scaled with the global statistics, at fit too).
    share
        ``rows`` over all rows.
    keys
        Distinct unseen keys, most frequent first, at most :data:`MAX_UNSEEN_KEYS`.
    truncated
        Whether more distinct unseen keys exist than are listed.
    flagged
        Whether ``share`` crossed ``unseen_share``.
    """

    rows: int
    share: float
    keys: list[Any]
    truncated: bool
    flagged: bool = False


@dataclass(frozen=True)
class DriftResult:
    """What :func:`drift_report` found.

    Attributes
    ----------
    features
        One :class:`FeatureDrift` per fitted feature.
    thresholds
        The thresholds applied.
    rows
        Rows of the new data.
    unseen
        Key scope only: the unseen keys.
    notes
        Caveats (e.g. no reference histograms, so no PSI).
    """

    features: list[FeatureDrift]
    thresholds: DriftThresholds
    rows: int
    unseen: UnseenKeys | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether any feature (or the unseen keys) crossed a threshold."""
        return any(f.flagged for f in self.features) or (self.unseen is not None and self.unseen.flagged)

    @property
    def flagged_features(self) -> list[Any]:
        """The features that crossed a threshold."""
        return [f.feature for f in self.features if f.flagged]

    def table(self) -> str:
        """A plain-text table, one row per feature, then the unseen keys and the notes."""
        head = ["feature", "method", "count", "mean_shift", "var_ratio", "outside", "nan fit->new", "psi", "drift"]
        rows = [
            [
                str(f.feature),
                f.method,
                str(f.count),
                _num(f.mean_shift, "+.3f"),
                _num(f.variance_ratio, ".3f"),
                _pct(f.outside_share),
                f"{_pct(f.nan_rate_fit)}->{_pct(f.nan_rate)}",
                _num(f.psi, ".3f"),
                ", ".join(f.reasons) or "-",
            ]
            for f in self.features
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        if self.unseen is not None:
            shown = ", ".join(map(repr, self.unseen.keys[:10]))  # quoted: a key may hold a comma or a line break
            more = " ..." if self.unseen.truncated or len(self.unseen.keys) > 10 else ""
            lines.append(
                f"unseen keys: {self.unseen.rows} rows ({_pct(self.unseen.share)}), {len(self.unseen.keys)}"
                f"{'+' if self.unseen.truncated else ''} key{'' if len(self.unseen.keys) == 1 and not self.unseen.truncated else 's'}"
                f"{': ' + shown + more if shown else ''}"
                + (" [drift]" if self.unseen.flagged else "")
            )
        lines += [f"note: {n}" for n in self.notes]
        verdict = f"drift in {len(self.flagged_features)} of {len(self.features)} features" if self.flagged else "no drift"
        if self.unseen is not None and self.unseen.flagged and not self.flagged_features:
            verdict = "drift: unseen keys"
        lines.append(f"{verdict} ({self.rows} rows)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN, a statistic not computed, as ``null``; infinities as ``"Infinity"``/``"-Infinity"``)."""
        return {
            "flagged": self.flagged,
            "rows": self.rows,
            "thresholds": self.thresholds.to_dict(),
            "features": [
                {k: (_json_number(v) if isinstance(v, float) else list(v) if isinstance(v, tuple) else v) for k, v in f.__dict__.items()}
                for f in self.features
            ],
            "unseen": None if self.unseen is None else {**self.unseen.__dict__, "share": _json_number(self.unseen.share)},
            "notes": list(self.notes),
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from .artifact import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, default=str, allow_nan=False) + "\n")


def _num(v: float, spec: str) -> str:
    """``v`` in the fixed-point ``spec``; from 1e6 on in exponent form (a shift of 1e299 std was 300 digits wide)."""
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec if abs(v) < 1e6 else spec.replace("f", "e"))


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.2f}%"


def _json_number(v: float) -> float | str | None:
    """``v`` for JSON, which has no NaN or infinity: NaN (not computed) as null, infinities as the artifact's strings."""
    if math.isnan(v):
        return None
    return v if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity")


@dataclass(frozen=True, eq=False)
class _Pass:
    """One partition's (or the merged) statistics for the drift check."""

    moments: Moments
    counts: Counts
    below: np.ndarray
    above: np.ndarray
    unseen_rows: int
    unseen_keys: dict[Any, int]
    rows: int


def _partition_pass(
    part: Any,
    names: list[Any],
    edges: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    key: Any,
    keys: Any,
    feature_names: list[Any] | None,
) -> _Pass:
    x = feature_columns(part, names, feature_names)  # the columns where they lie: no float64 copy
    unseen_rows, unseen_keys = 0, {}
    if key is not None:
        column = part[key]
        unseen = unseen_mask(keys, column)
        unseen_rows = int(unseen.sum())
        if unseen_rows:
            counts = column[unseen].value_counts(dropna=False)
            unseen_keys = {k: int(v) for k, v in counts.head(MAX_UNSEEN_KEYS + 1).items()}
    return _Pass(
        moments=chunk_moments(x, names),
        counts=count_bins(x, edges),
        below=np.array([np.count_nonzero(a < b) for a, b in zip(x.arrays, lo, strict=True)], dtype=np.int64),
        above=np.array([np.count_nonzero(a > b) for a, b in zip(x.arrays, hi, strict=True)], dtype=np.int64),
        unseen_rows=unseen_rows,
        unseen_keys=unseen_keys,
        rows=x.n_rows,
    )


def _merge_passes(parts: Sequence[_Pass]) -> _Pass:
    counts = parts[0].counts
    keys: dict[Any, int] = dict(parts[0].unseen_keys)
    for p in parts[1:]:
        counts = counts + p.counts
        for k, v in p.unseen_keys.items():
            keys[k] = keys.get(k, 0) + v
    if len(keys) > MAX_UNSEEN_KEYS + 1:
        keys = dict(sorted(keys.items(), key=lambda kv: -kv[1])[: MAX_UNSEEN_KEYS + 1])
    return _Pass(
        moments=merge_all([p.moments for p in parts]),
        counts=counts,
        below=sum((p.below for p in parts[1:]), parts[0].below),
        above=sum((p.above for p in parts[1:]), parts[0].above),
        unseen_rows=sum(p.unseen_rows for p in parts),
        unseen_keys=keys,
        rows=sum(p.rows for p in parts),
    )


def _compute_pass(model: Any, data: Any, edges: np.ndarray, feature_names: Sequence[Any] | None) -> _Pass:
    """The drift statistics of ``data`` in one pass (one ``dask.compute`` for Dask input)."""
    import pandas as pd

    from .views import _is_instance, view_of

    names = list(model.feature_names)
    m = model.moments
    key = model.scope.key if model.groups is not None else None
    keys = model.groups.keys if key is not None else None
    fnames = list(feature_names) if feature_names is not None else None
    args = (names, edges, m.min, m.max, key, keys, fnames)
    if key is not None:
        model.key_column(data)
    view = view_of(data, feature_names, model.meta.get("reduce_dims"), model.meta.get("feature_dims"))
    view.positions(names)
    try:
        if isinstance(data, (pd.DataFrame, np.ndarray)):
            return _partition_pass(data, *args)
        if _is_instance(data, "dask.dataframe", "DataFrame"):
            columns = [*names, key] if key is not None and key not in names else names
            parts = data[columns].to_delayed()
        elif _is_instance(data, "dask.array", "Array") and data.ndim == 2:
            rows = data.rechunk({1: -1}) if data.numblocks[1] > 1 else data
            parts = list(rows.to_delayed()[:, 0])
        else:
            raise DataError(
                f"the drift check reads tables and 2-D arrays, not {type(data).__module__}.{type(data).__name__}"
            )
        import dask

        from . import reduce

        task = dask.delayed(_partition_pass, pure=True)
        lazy = tree_reduce([task(p, *args) for p in parts], dask.delayed(_merge_passes, pure=True))
        (result,) = reduce.compute(lazy)
        return result
    except NonFiniteError as err:
        raise (err.named(names) if err.names is None else err) from None


def drift_report(
    model: Any,
    data: Any,
    thresholds: DriftThresholds | dict[str, Any] | None = None,
    *,
    reference: Any = None,
    feature_names: Sequence[Any] | None = None,
    bins: int | None = None,
) -> DriftResult:
    """Compare ``data`` with the statistics ``model`` was fitted on, in one pass.

    Parameters
    ----------
    model
        A fitted :class:`~scalepipe.model.Model` (any scope; the global
        statistics are the reference).
    data
        pandas or dask DataFrame, or a 2-D numpy or dask array, holding the
        fitted features (and the key column, for the key scope).
    thresholds
        :class:`DriftThresholds` or a dict of them (default: DESIGN.md's).
    reference
        The fitted data's :class:`~scalepipe.histograms.Histograms` (the
        run's side file, :func:`scalepipe.report.load_histograms`): the PSI
        uses their bins and shares. Without it the PSI is NaN and not tested.
    feature_names
        Column names of an array (default: positions).
    bins
        Bins for the out-of-range and PSI counts when there is no reference
        (default 40).

    Returns
    -------
    DriftResult

    Raises
    ------
    ColumnError, DataError
        A fitted column (or the key column) is missing, or holds ``inf``.
    """
    if not isinstance(thresholds, DriftThresholds):
        thresholds = DriftThresholds.from_dict(thresholds)
    m = model.moments
    if reference is not None:
        if list(reference.names) != list(model.feature_names):
            raise DataError("the reference histograms belong to other features than the model's")
        edges = reference.input.edges
    else:
        edges = histogram_edges(m.min, m.max, bins or DEFAULT_BINS)
    new = _compute_pass(model, data, edges, feature_names)
    if new.rows == 0:
        raise DataError("the new data has no rows to compare with the fitted statistics")
    nm = new.moments
    fit_std, fit_var = m.std(0), m.var(0)
    vanished = nm.count == 0  # every new value missing: no mean, variance or range to compare
    # the fitted variance overflowed, or underflowed (it read 0 for values ~1e-200, giving a shift of -inf): no unit for a shift or ratio
    unmeasured = m.variance_out_of_range()
    new_var = np.where(np.isfinite(nm.var(0)) | vanished, nm.var(0), np.inf)  # overflowed: beyond any fitted one
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        diff = (nm.mean - m.mean) + (nm.mean_lo - m.mean_lo)
        shift = np.where(vanished | unmeasured, np.nan, np.where(diff == 0, 0.0, diff / fit_std))
        ratio = np.where(vanished | unmeasured, np.nan, np.where(new_var == fit_var, 1.0, new_var / fit_var))
        outside = np.where(vanished, np.nan, (new.below + new.above) / nm.count)
        rate_fit = m.nan_count / (m.count + m.nan_count)
        rate = nm.nan_count / (nm.count + nm.nan_count)
    stability = psi(reference.input, new.counts) if reference is not None else np.full(len(model.features), np.nan)
    t = thresholds
    features = []
    for i, f in enumerate(model.features):
        reasons = ["no_values"] if vanished[i] else []  # a feature that vanished has drifted, whatever the thresholds
        if t.mean_shift is not None and abs(shift[i]) > t.mean_shift:
            reasons.append("mean_shift")
        if t.variance_ratio is not None and not t.variance_ratio[0] <= ratio[i] <= t.variance_ratio[1] and not math.isnan(ratio[i]):
            reasons.append("variance_ratio")
        if t.outside_share is not None and outside[i] > t.outside_share:
            reasons.append("outside_share")
        if t.nan_rate is not None and abs(rate[i] - rate_fit[i]) > t.nan_rate:
            reasons.append("nan_rate")
        if t.psi is not None and stability[i] > t.psi:
            reasons.append("psi")
        features.append(
            FeatureDrift(
                feature=f.name,
                method=model.scalers[f.rule].method,
                count=int(nm.count[i]),
                mean_shift=float(shift[i]),
                variance_ratio=float(ratio[i]),
                outside_share=float(outside[i]),
                below=int(new.below[i]),
                above=int(new.above[i]),
                nan_rate_fit=float(rate_fit[i]),
                nan_rate=float(rate[i]),
                psi=float(stability[i]),
                reasons=tuple(reasons),
            )
        )
    notes = []
    if unmeasured.any():
        names = ", ".join(repr(f.name) for f, u in zip(model.features, unmeasured) if u)
        notes.append(
            f"mean_shift and var_ratio not computed for {names}: the fitted variance is beyond float64's range "
            "(values beyond ~1e154 or within ~1e-154 of each other)"
        )
    if thresholds.unseen_share is not None and model.groups is None:
        notes.append("unseen_share applies to the key scope only: not checked")
    if reference is None:
        saved = (
            "a global-scope `scalepipe run` of a table with `report: true`"
            if model.scope.kind == "global"
            else f"`scalepipe run` in the global scope only, not {model.scope.kind!r}"
        )
        notes.append(f"no histograms of the fitted data (saved beside the statistics by {saved}): PSI not computed")
    unseen = None
    if model.groups is not None:
        share = new.unseen_rows / new.rows  # rows > 0: checked above
        ordered = sorted(new.unseen_keys.items(), key=lambda kv: -kv[1])
        unseen = UnseenKeys(
            rows=new.unseen_rows,
            share=share,
            keys=[_plain(k) for k, _ in ordered[:MAX_UNSEEN_KEYS]],
            truncated=len(ordered) > MAX_UNSEEN_KEYS,
            flagged=t.unseen_share is not None and share > t.unseen_share,
        )
    return DriftResult(features, thresholds, new.rows, unseen, notes)


def _plain(key: Any) -> Any:
    """An unseen key as a JSON-friendly Python value (never missing: a missing key is not unseen)."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, float) and math.isinf(key):
        return "Infinity" if key > 0 else "-Infinity"  # JSON has none: the artifact's strings
    return key
