"""The fitted model: fit, transform and inverse_transform for every data kind; save/load.

A :class:`Model` holds the scaling rules, the fitted features, their mergeable
:class:`~scalepipe.stats.Moments` and the affine parameters derived from them.
It reaches Dask only through :mod:`scalepipe.views` when it is handed a Dask
collection; loading an artifact and transforming a pandas frame or numpy array
imports numpy and pandas only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import artifact
from .batches import Running, check_batch_rows, running_stats
from .errors import ArtifactError, ColumnError, DataError, ParameterError
from .groups import keys_family
from .maps import AffineMap, BatchMap, KeyMap, unseen_mask
from .methods import Affine, BatchNorm, RuleSet, Scaler, ZScore, affine_dtype, plain, scaler_from_dict
from .exact import ExactSums, exact_mean_lo, exact_mean_m2, from_lists, to_lists
from .stats import ExactMoments, Moments, NonFiniteError, merge, merge_all
from .views import View, view_of

if TYPE_CHECKING:
    from .groups import KeyTable

__all__ = ["Model", "Scope", "fit", "load"]

_GLOB_CHARS = set("*?[")

_AFFINE_FIELDS = ("center", "scale", "offset", "lo", "hi")

#: Per-key and per-batch tables with more values than this go to an ``.npz`` beside the JSON.
INLINE_TABLE_VALUES = 20_000


@dataclass(frozen=True)
class Feature:
    """One fitted feature: its name, input dtype and the index of its rule."""

    name: Any
    dtype: str
    rule: int


@dataclass(frozen=True)
class Scope:
    """How the statistics are grouped (see DESIGN.md's scopes table).

    Attributes
    ----------
    kind
        ``"global"``, ``"partition"`` (each batch scaled with its own
        statistics; running statistics for inference) or ``"key"``.
    batch_rows
        Partition scope: rows per batch (``None``: one batch per partition).
    min_batch_rows
        Partition scope: the fewest rows a batch may have.
    inference_stats
        Partition scope: ``"running"`` or ``"global"`` statistics for :meth:`Model.transform`.
    key
        Key scope: the key column.
    """

    kind: str = "global"
    batch_rows: int | None = None
    min_batch_rows: int = 2
    inference_stats: str = "running"
    key: Any = None

    def __post_init__(self) -> None:
        for name in ("batch_rows", "min_batch_rows", "key"):  # numpy scalars as Python ones, which JSON can store
            object.__setattr__(self, name, plain(getattr(self, name)))
        if self.kind not in ("global", "partition", "key"):
            raise ParameterError("scope", f"{self.kind!r} is not one of 'global', 'partition', 'key'")
        if self.inference_stats not in ("running", "global"):
            raise ParameterError("inference_stats", f"{self.inference_stats!r} is not 'running' or 'global'")
        if self.kind == "key" and self.key is None:
            raise ParameterError("key", "scope 'key' needs the key column")
        if self.batch_rows is not None and (type(self.batch_rows) is not int or self.batch_rows < 1):
            raise ParameterError("batch_rows", f"must be a positive integer or None, got {self.batch_rows!r}")
        if type(self.min_batch_rows) is not int or self.min_batch_rows < 1:
            raise ParameterError("min_batch_rows", f"must be a positive integer, got {self.min_batch_rows!r}")

    def check_settings(self) -> None:
        """Refuse settings of another scope (``batch_rows``, ``key``), as the config does.

        Checked when fitting, not when loading: artifacts written before the
        check may carry such inert settings.
        """
        if self.kind != "key" and self.key is not None:
            raise ParameterError("key", f"is only used with scope 'key' (scope is {self.kind!r}), got {self.key!r}")
        if self.kind != "partition" and self.batch_rows is not None:
            raise ParameterError("batch_rows", f"is only used with scope 'partition' (scope is {self.kind!r}), got {self.batch_rows!r}")
        if self.batch_rows is not None and self.batch_rows < self.min_batch_rows:
            raise ParameterError(
                "batch_rows", f"{self.batch_rows} is below min_batch_rows ({self.min_batch_rows}): every batch would be refused"
            )
        if self.kind != "partition" and self.inference_stats != "running":
            raise ParameterError(
                "inference_stats", f"is only used with scope 'partition' (scope is {self.kind!r}), got {self.inference_stats!r}"
            )


@dataclass
class BatchStats:
    """Partition scope: every batch's statistics, in partition order, and the running statistics.

    Attributes
    ----------
    moments
        Shape ``(n_batches, n_features)``.
    labels
        One label per batch (its partition, file and number), for audits and errors.
    running
        PyTorch-convention running mean and (unbiased) variance.
    """

    moments: Moments
    labels: list[str]
    running: Running


def _momenta(scalers: Sequence[Scaler], features: Sequence[Feature]) -> np.ndarray:
    """Per feature: its rule's momentum (NaN for None), 0.1 for rules without one."""
    values = [getattr(scalers[f.rule], "momentum", 0.1) for f in features]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _rule_label(i: int, scaler: Scaler) -> str:
    return f"scalers[{i}] ({scaler.method})"


def resolve_columns(view: View, scalers: Sequence[Scaler], exclude: Sequence[Any] = ()) -> tuple[list[Feature], list[Any]]:
    """Assign features to rules: first matching rule wins.

    Returns the fitted features (in the data's order) and the numeric features
    no rule matched (they pass through unchanged). Non-numeric columns are
    never matched by a pattern or by ``columns=None``.

    Raises
    ------
    ColumnError
        A rule names a column that does not exist or is not numeric, or a rule
        matches no column at all. The message names the rule.
    """
    rule_of: dict[Any, int] = {}
    numeric = {n: ok and n not in exclude for n, ok in zip(view.names, view.numeric)}
    dtype = dict(zip(view.names, view.dtypes))
    for i, scaler in enumerate(scalers):
        claimed = []
        if scaler.columns is None:
            claimed = [n for n in view.names if numeric[n] and n not in rule_of]
        for pattern in scaler.columns or ():
            if isinstance(pattern, str) and pattern not in numeric and _GLOB_CHARS & set(pattern):
                hits = [n for n in view.names if isinstance(n, str) and fnmatch.fnmatchcase(n, pattern)]
                claimed += [n for n in hits if numeric[n] and n not in rule_of and n not in claimed]
                continue
            if pattern not in numeric and pattern in getattr(view, "unscalable", {}):
                raise ColumnError(f"{_rule_label(i, scaler)}: variable {pattern!r} {view.unscalable[pattern]}; it cannot be scaled")
            if pattern not in numeric:
                raise ColumnError(
                    f"{_rule_label(i, scaler)}: column {pattern!r} not found in the data "
                    f"(it has {', '.join(map(repr, view.names[:10]))}{', ...' if len(view.names) > 10 else ''})"
                )
            if pattern in exclude:
                raise ColumnError(f"{_rule_label(i, scaler)}: column {pattern!r} is the key column; it cannot also be scaled")
            if not numeric[pattern]:
                raise ColumnError(
                    f"{_rule_label(i, scaler)}: column {pattern!r} has dtype {dtype[pattern]}, not numeric; "
                    "scalepipe scales numeric columns only"
                )
            if pattern not in rule_of and pattern not in claimed:
                claimed.append(pattern)
        if not claimed:
            what = "no numeric column is left" if scaler.columns is None else f"{list(scaler.columns)!r} matches no unclaimed numeric column"
            raise ColumnError(f"{_rule_label(i, scaler)}: {what}; remove the rule or fix its columns")
        for n in claimed:
            rule_of[n] = i
    features = [Feature(n, dtype[n], rule_of[n]) for n in view.names if n in rule_of]
    unmatchable = next((f.name for f in features if isinstance(f.name, float) and f.name != f.name), None)
    if unmatchable is not None:
        raise ColumnError(f"column {unmatchable!r}: a NaN label equals no label, so a transform could not find it; rename the column")
    passthrough = [n for n in view.names if numeric[n] and n not in rule_of]
    return features, passthrough


def _evaluate(view: View, names: Sequence[Any], *values: Any) -> tuple[Any, ...]:
    """``values`` as the view returned them, computed together if lazy; an ``inf`` names its column."""
    if not view.lazy:
        return values
    from . import reduce

    try:
        return reduce.compute(*values)
    except NonFiniteError as err:
        raise (err.named(names) if err.names is None else err) from None


def _compute(view: View, names: Sequence[Any], exact: bool = False) -> Any:
    """The statistics of ``names`` (:class:`ExactMoments` with ``exact``), in one pass."""
    (moments,) = _evaluate(view, names, view.moments(names, exact))
    return moments


def _compute_keyed(view: View, names: Sequence[Any], key: Any) -> tuple[Moments, KeyTable]:
    """Global statistics and the per-key table, in one pass."""
    if not hasattr(view, "key_moments"):
        raise DataError(f"scope 'key' needs a table (pandas or dask DataFrame), not {view.kind} data")
    ((moments, table),) = _evaluate(view, names, view.key_moments(names, key))
    return moments, table.sorted()


def _batch_table(
    view: View, names: Sequence[Any], scope: Scope, partition_labels: Sequence[str] | None, first: int = 0
) -> tuple[Moments, list[str]]:
    """Every batch's statistics, in partition order, with one label per batch."""
    per_partition = _evaluate(view, names, *view.batch_moments(names, scope.batch_rows))
    if partition_labels is not None and len(partition_labels) != len(per_partition):
        raise ParameterError("partition_labels", f"has {len(partition_labels)} labels for {len(per_partition)} partitions")
    labels: list[str] = []
    for p, table in enumerate(per_partition):
        where = f"partition {first + p}"
        if partition_labels is not None:
            where += f" ({partition_labels[p]})"
        labels += [f"{where} batch {b}" for b in range(table.count.shape[0])]
    if not labels:
        raise DataError("the data has no rows to fit")
    moments = Moments.concat(per_partition, axis=0)
    check_batch_rows(moments, scope.min_batch_rows, labels)
    return moments, labels


class Model:
    """Fitted scaling: rules, features, statistics and parameters.

    Build one with :func:`fit` or :func:`load`; the constructor is for those.

    Attributes
    ----------
    scalers : list of Scaler
        The rules, in order.
    features : list of Feature
        The fitted features in the data's order.
    passthrough : list
        Numeric features no rule matched.
    moments : Moments
        The mergeable statistics of the fitted features.
    params : Affine
        The affine map of each fitted feature.
    meta : dict
        Provenance: data kind, config hash, input fingerprint, creation time.

    Examples
    --------
    >>> import numpy as np, scalepipe as sp
    >>> model = sp.fit(np.array([[1.0, 10.0], [3.0, 30.0]]), scalers=[sp.MinMax()])
    >>> model.transform(np.array([[2.0, 20.0]])).tolist()
    [[0.5, 0.5]]
    """

    def __init__(
        self,
        scalers: Sequence[Scaler],
        features: Sequence[Feature],
        passthrough: Sequence[Any],
        moments: Moments,
        params: Affine | None = None,
        meta: dict[str, Any] | None = None,
        scope: Scope | None = None,
        batches: BatchStats | None = None,
        groups: KeyTable | None = None,
        exact: ExactSums | None = None,
    ) -> None:
        self.scalers = list(scalers)
        self.features = list(features)
        self.passthrough = list(passthrough)
        self.moments = moments
        self.meta = dict(meta or {})
        self.scope = scope or Scope()
        self.batches = batches
        self.groups = groups
        self.exact = exact
        self.params = params if params is not None else self._derive_params()

    @property
    def feature_names(self) -> list[Any]:
        """Names of the fitted features, in order."""
        return [f.name for f in self.features]

    @property
    def rules(self) -> RuleSet:
        """The rule of each fitted feature, as a picklable :class:`~scalepipe.methods.RuleSet`."""
        return RuleSet(tuple(self.scalers), np.array([f.rule for f in self.features], dtype=np.int64), tuple(self.feature_names))

    def _inference_moments(self) -> Moments:
        """The statistics :meth:`transform` uses: global, or running ones (partition scope).

        Running statistics replace the mean and variance (``m2 = var * count``,
        so the biased variance is the running one, as in PyTorch's eval mode);
        min, max and counts stay global.
        """
        if self.batches is None or self.scope.inference_stats == "global":
            return self.moments
        run = self.batches.running
        m = self.moments
        return Moments(m.count, m.nan_count, m.min, m.max, m.absmax, run.mean, np.zeros_like(run.mean), run.var * m.count)

    def _derive_params(self) -> Affine:
        return self.rules.params(self._inference_moments())


    def transform(
        self,
        data: Any,
        *,
        feature_names: Sequence[Any] | None = None,
        stats: str | None = None,
        out: np.ndarray | None = None,
    ) -> Any:
        """Scale ``data``; returns the same kind (lazy for Dask input).

        Parameters
        ----------
        data
            numpy array, pandas DataFrame, dask array or DataFrame, xarray
            DataArray or Dataset, holding every fitted feature. Columns that
            were not fitted pass through unchanged. ``data`` is not modified.
        feature_names
            Names of a numpy/dask array's columns (default: their positions).
        stats
            ``None`` (the fitted statistics; for the partition scope, the
            running or global ones as ``inference_stats`` says), or
            ``"batch"``: scale each batch (``batch_rows`` rows of each
            partition) with its own statistics, as batch normalization does in
            training.
        out : ndarray, optional
            Where to write the result, for a 2-D numpy ``data`` scaled with
            fixed parameters (not ``stats="batch"``, not the key scope): an
            array of ``data``'s shape and of the dtype the result would have
            (``data``'s float dtype, float64 for integers). Reusing one buffer
            spares allocating (and page-faulting) a new array per call; ``out``
            may be ``data`` itself to scale in place. Returned.

        Raises
        ------
        ColumnError
            A fitted column is missing or not numeric.
        ParameterError
            ``out`` does not fit ``data`` or this model.
        """
        if stats not in (None, "batch"):
            raise ParameterError("stats", f"{stats!r} is not None or 'batch'")
        if stats == "batch" and self.scope.kind != "partition":
            raise ParameterError("stats", f"'batch' needs a model fitted with scope 'partition', not {self.scope.kind!r}")
        if self.groups is not None:
            self.key_column(data)
        view = view_of(data, feature_names, self.meta.get("reduce_dims"), self.meta.get("feature_dims"))
        fn = BatchMap(self.rules, self.scope.batch_rows, self.scope.min_batch_rows) if stats == "batch" else self._map(inverse=False)
        if out is None:
            return view.transform(self.feature_names, fn)
        _check_out(out, data, fn)
        view.positions(self.feature_names)
        if out.__array_interface__ != data.__array_interface__ and np.shares_memory(out, data):
            # overlapping, not the same view: the kernel would read values it already wrote
            out[...] = view.map_features(self.feature_names, fn, out=np.empty_like(out))
            return out
        return view.map_features(self.feature_names, fn, out=out)

    def inverse_transform(self, data: Any, *, feature_names: Sequence[Any] | None = None) -> Any:
        """Undo :meth:`transform` (a feature scaled to a constant maps back to its center)."""
        if self.groups is not None:
            self.key_column(data)
        view = view_of(data, feature_names, self.meta.get("reduce_dims"), self.meta.get("feature_dims"))
        return view.transform(self.feature_names, self._map(inverse=True))

    def key_column(self, data: Any) -> Any:
        """The key column of ``data``, a table, for a model fitted with scope ``key``.

        Raises
        ------
        ColumnError
            ``data`` is not a table or lacks the key column; the message names it.
        """
        key = self.scope.key
        if not hasattr(data, "columns") or key not in data.columns:
            kind = "a table without it" if hasattr(data, "columns") else f"{type(data).__name__} data"
            raise ColumnError(f"key column {key!r}: this model has statistics per {key!r} value and needs it, got {kind}")
        return data[key]

    def _map(self, inverse: bool) -> AffineMap | KeyMap:
        names = tuple(self.feature_names)
        if self.groups is None:
            return AffineMap(self.params, names, inverse)
        m = self.groups.moments
        few = m.count < self.rules.min_counts()
        if few.any():  # no values, or too few for the rule (zscore's ddof): that key's column takes the global statistics
            m = Moments(**{k: np.where(few, v, getattr(m, k)) for k, v in self.moments.to_dict().items()})
        try:
            per_key = self.rules.params(m, allow_empty=True)
        except DataError as err:
            raise self._keyed_error(err, m) from None
        return KeyMap(self.scope.key, self.groups.keys, per_key, self.params, names, inverse)

    def _check_keyed_params(self) -> None:
        """Key scope: derive every key's parameters once, so a fit fails as a global one does (``constant_policy: error``)."""
        if self.groups is not None:
            self._map(inverse=False)

    def _keyed_error(self, err: DataError, m: Moments) -> DataError:
        """``err`` from the per-key parameters ``m``, naming the keys whose columns are constant under ``constant_policy: error``."""
        refused = np.array([self.scalers[r].constant_policy == "error" for r in self.rules.rule_of])
        rows = np.flatnonzero((m.is_constant() & (m.count > 0) & refused).any(axis=1))
        if rows.size == 0:
            return err
        shown = ", ".join(map(repr, self.groups.keys[rows[:5]].tolist())) + (" ..." if rows.size > 5 else "")
        return DataError(f"{err}; in the statistics of {rows.size} {self.scope.key!r} value(s): {shown}")

    def unseen_rows(self, data: Any) -> Any:
        """Rows whose key was not seen at fit (they are scaled with the global statistics).

        An int for in-memory data, a lazy dask scalar for a dask DataFrame. A
        key of another type than the fitted keys (``1`` for ``True``) is
        unseen; a missing key is not counted (such rows were fitted too, in
        the global statistics only).
        """
        if self.groups is None:
            raise ParameterError("scope", "unseen_rows needs a model fitted with scope='key'")
        column = self.key_column(data)
        if hasattr(column, "map_partitions"):
            return column.map_partitions(_unseen, self.groups.keys, meta=(column.name, bool)).sum()
        return int(unseen_mask(self.groups.keys, column).sum())

    def partial_fit(
        self, data: Any, *, feature_names: Sequence[Any] | None = None, partition_labels: Sequence[str] | None = None
    ) -> Model:
        """Update the statistics with more rows; equals a fit on all rows together.

        In the partition scope the new data's batches follow the fitted ones
        (``partition_labels``, e.g. their files, name them as in :func:`fit`),
        and the running statistics continue from where they were.

        Returns
        -------
        Model
            ``self``, updated (as scikit-learn's ``partial_fit``).
        """
        view = view_of(data, feature_names, self.meta.get("reduce_dims"), self.meta.get("feature_dims"))
        names = self.feature_names
        before = (self.moments, self.exact, self.batches, self.groups)
        try:  # a failure (new rows whose statistics cannot be scaled) leaves the model as it was
            if self.groups is not None:
                from .groups import merge_tables

                new, table = _compute_keyed(view, names, self.scope.key)
                self.groups = merge_tables(self.groups, table).sorted()
            elif self.exact is not None:
                both = merge(ExactMoments(self.moments, self.exact), _compute(view, names, exact=True))
                self.moments, self.exact = both.finish(), both.sums
                new = None
            elif self.batches is None:
                new = _compute(view, names)
            else:
                first = 1 + max((int(label.split()[1]) for label in self.batches.labels), default=-1)
                table, labels = _batch_table(view, names, self.scope, partition_labels, first)
                new = merge_all([table.row(i) for i in range(len(labels))])
                self.batches = BatchStats(
                    Moments.concat([self.batches.moments, table], axis=0),
                    self.batches.labels + labels,
                    running_stats(table, _momenta(self.scalers, self.features), self.batches.running),
                )
            if new is not None:
                self.moments = merge(self.moments, new)
            self.params = self._derive_params()
            self._check_keyed_params()
        except BaseException:
            self.moments, self.exact, self.batches, self.groups = before
            raise
        self.meta["created"] = _now()
        self.meta["input_fingerprint"] = None
        return self

    def to_sklearn(self, columns: Sequence[Any] | None = None, *, pandas_output: bool = False) -> Any:
        """A fitted scikit-learn ``ColumnTransformer`` equal to :meth:`transform`.

        See :func:`scalepipe.interop.to_sklearn`; scikit-learn is imported only here.
        """
        from .interop import to_sklearn

        return to_sklearn(self, columns, pandas_output=pandas_output)

    def to_torch_state_dict(self) -> dict[str, np.ndarray]:
        """Batch-norm state for ``torch.nn.BatchNorm1d(n)`` over the batchnorm features.

        Plain numpy arrays (``weight``, ``bias``, ``running_mean``,
        ``running_var``, ``num_batches_tracked``): convert with
        ``{k: torch.as_tensor(v) for k, v in sd.items()}`` and
        ``load_state_dict``. scalepipe does not import torch. The running
        statistics are those :meth:`transform` uses (the global mean and
        biased variance, or with the partition scope the running ones unless
        ``inference_stats="global"``), so the module in eval mode gives the
        same outputs, within an ulp or two (it divides where scalepipe
        multiplies by the inverse). A constant feature under
        ``constant_policy="zero"`` gets weight and bias 0; under
        ``"passthrough"``, running mean 0, running variance ``1 - eps`` and
        weight 1, so the module returns the input.

        Raises
        ------
        ParameterError
            No feature is scaled by a ``batchnorm`` rule, the rules have
            different ``eps`` (one module has one), or the model has the key
            scope (per-key statistics, which one module cannot hold).
        """
        idx = [i for i, f in enumerate(self.features) if isinstance(self.scalers[f.rule], BatchNorm)]
        if not idx:
            raise ParameterError("scalers", "no feature is scaled by a batchnorm rule; nothing to export")
        if self.groups is not None:
            raise ParameterError(
                "scope", "a key-scope model has statistics per key, which one BatchNorm1d cannot hold; export a global- or partition-scope model"
            )
        norms = [self.scalers[self.features[i].rule] for i in idx]
        if len({b.eps for b in norms}) > 1:
            raise ParameterError(
                "eps", f"the batchnorm rules have different eps ({', '.join(map(repr, sorted({b.eps for b in norms})))}), "
                "but one BatchNorm1d has one; give the rules the same eps"
            )
        m = self._inference_moments()
        running = self.batches is not None and self.scope.inference_stats == "running"
        policy = np.array([b.constant_policy for b in norms])
        constant = m.is_constant()[idx]
        zero, keep = constant & (policy == "zero"), constant & (policy == "passthrough")
        eps = np.array([b.eps for b in norms], dtype=np.float64)
        return {
            "weight": np.where(zero, 0.0, np.where(keep, 1.0, [b.gamma for b in norms])),
            "bias": np.where(zero | keep, 0.0, [b.beta for b in norms]),
            "running_mean": np.where(keep, 0.0, m.mean[idx]),
            "running_var": np.where(keep, 1.0 - eps, m.var(0)[idx]),
            "num_batches_tracked": np.array(self.batches.running.num_batches if running else 0, dtype=np.int64),
        }

    def summary(self) -> list[dict[str, Any]]:
        """One record per fitted feature: method, statistics and parameters."""
        m = self.moments
        std = np.where(m.variance_out_of_range(), np.nan, m.std(0))  # 0 for values ~1e-200 was a wrong number
        rows = []
        for i, f in enumerate(self.features):
            scaler = self.scalers[f.rule]
            rows.append(
                {
                    "feature": f.name,
                    "method": scaler.method,
                    "count": int(m.count[i]),
                    "nan": int(m.nan_count[i]),
                    "min": float(m.min[i]),
                    "max": float(m.max[i]),
                    "mean": float(m.mean[i]),
                    "std": float(std[i]),
                    "constant": bool(m.is_constant()[i]),
                    **{k: float(getattr(self.params, k)[i]) for k in _AFFINE_FIELDS},
                }
            )
        return rows

    def to_document(self) -> dict[str, Any]:
        """The model as the artifact's JSON-ready document (without header/checksum)."""
        from . import __version__

        return {
            "scalepipe_version": __version__,
            "created": self.meta.get("created"),
            "config_hash": self.meta.get("config_hash"),
            "input_fingerprint": self.meta.get("input_fingerprint"),
            "data_kind": self.meta.get("data_kind"),
            "reduce_dims": self.meta.get("reduce_dims"),
            "feature_dims": self.meta.get("feature_dims"),
            "scalers": [s.to_dict() for s in self.scalers],
            "features": [{"name": _storable_name(f.name), "dtype": f.dtype, "rule": f.rule} for f in self.features],
            "passthrough": [_storable_name(n, strict=False) for n in self.passthrough],  # informational
            "statistics": _moments_document(self.moments),
            "parameters": {k: artifact.encode_floats(getattr(self.params, k)) for k in _AFFINE_FIELDS},
            "scope": {**asdict(self.scope), "key": None if self.scope.key is None else _storable_name(self.scope.key, what="key column")},
            "batches": None if self.batches is None else _batches_document(self.batches),
            "groups": None if self.groups is None else _groups_document(self.groups),
            "exact_sums": None if self.exact is None else to_lists(self.exact),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the artifact (JSON; never a pickle), atomically.

        Per-key and per-batch tables larger than :data:`INLINE_TABLE_VALUES`
        values, and key tables whose keys JSON has no number for (an
        infinite float key), go to an ``.npz`` beside the JSON (plain
        arrays, loaded with ``allow_pickle=False``), named by its content
        hash, which the JSON records and :func:`load` verifies.
        """
        problem = artifact.replace_problem(path)
        if problem is not None:
            raise ArtifactError(problem)
        doc = self.to_document()
        arrays: dict[str, np.ndarray] = {}
        if self.groups is not None and (
            self.groups.moments.count.size > INLINE_TABLE_VALUES or not _json_keys(self.groups.keys)
        ):
            arrays.update(_table_arrays("groups", self.groups.moments))
            arrays["groups.keys"] = _key_array(self.groups.keys)
            doc["groups"] = {"in": "tables"}
        if self.batches is not None and self.batches.moments.count.size > INLINE_TABLE_VALUES:
            arrays.update(_table_arrays("batches", self.batches.moments))
            arrays["batches.labels"] = np.array(self.batches.labels, dtype=str)
            doc["batches"]["statistics"] = doc["batches"]["labels"] = "in tables"
        if arrays:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            name = f"scalepipe-tables.{digest[:16]}.npz"
            artifact.write_bytes_atomic(Path(os.fspath(path)).expanduser().parent / name, data)
            doc["tables"] = {"file": name, "sha256": f"sha256:{digest}"}
        replaced = _tables_file_of(path)
        artifact.write_text_atomic(path, artifact.render_artifact(doc))
        if replaced is not None and replaced != doc.get("tables", {}).get("file"):
            _remove_if_unreferenced(Path(os.fspath(path)).expanduser().parent, replaced)

    @classmethod
    def from_document(
        cls, doc: dict[str, Any], source: str = "<document>", tables: dict[str, np.ndarray] | None = None
    ) -> Model:
        """Rebuild a model from an artifact document (see :func:`load`) and its side tables."""
        tables = tables or {}
        try:
            for key, kind in _FIELD_TYPES.items():
                if key in doc and not isinstance(doc[key], kind) and not (doc[key] is None and key in _OPTIONAL_FIELDS):
                    raise ValueError(f"{key}: expected {'an object' if kind is dict else 'a list'}, got {type(doc[key]).__name__}")
            scalers = [scaler_from_dict(d) for d in doc["scalers"]]
            features = [_feature_from_document(f, i) for i, f in enumerate(doc["features"])]
            passthrough = [_name(v, f"passthrough[{i}]") for i, v in enumerate(doc.get("passthrough", []))]
            moments = _moments_from_document(doc["statistics"])
            params = Affine(*(np.array(_floats(doc["parameters"][k], f"parameters.{k}")) for k in _AFFINE_FIELDS))
            scope = Scope(**doc.get("scope", {}))
            batches = _batches_from_document(doc["batches"], tables) if doc.get("batches") else None
            groups = _groups_from_document(doc["groups"], tables) if doc.get("groups") else None
            exact = from_lists(doc["exact_sums"]) if doc.get("exact_sums") else None
            _check_parts(scalers, features, moments, params, scope, batches, groups, exact)
            if exact is not None:  # the mean's residual, from the sums (files before it was kept hold 0)
                moments = replace(moments, mean_lo=exact_mean_lo(exact, moments.count, moments.mean))
        except KeyError as err:
            raise ArtifactError(f"{source}: malformed statistics file: missing field {err}") from None
        except (TypeError, ValueError, OverflowError, ParameterError) as err:
            raise ArtifactError(f"{source}: malformed statistics file: {err}") from None
        meta = {k: doc.get(k) for k in ("created", "config_hash", "input_fingerprint", "data_kind", "reduce_dims", "feature_dims")}
        return cls(scalers, features, passthrough, moments, params, meta, scope, batches, groups, exact)

    def __repr__(self) -> str:
        methods = sorted({self.scalers[f.rule].method for f in self.features})
        return f"<scalepipe.Model: {len(self.features)} features ({', '.join(methods)}), {len(self.passthrough)} passthrough>"


def _moments_document(m: Moments) -> dict[str, list[Any]]:
    """Moments as JSON lists (nested for tables); floats encoded exactly."""

    def encode(v: np.ndarray) -> list[Any]:
        if v.ndim > 1:
            return [encode(row) for row in v]
        return v.tolist() if v.dtype.kind == "i" else artifact.encode_floats(v)

    return {k: encode(v) for k, v in m.to_dict().items()}


#: The artifact's structured fields and the JSON type each must have.
_FIELD_TYPES: dict[str, type] = {
    "scalers": list, "features": list, "passthrough": list, "statistics": dict, "parameters": dict,
    "scope": dict, "batches": dict, "groups": dict, "exact_sums": dict,
}  # fmt: skip
#: Fields a model without them stores as null.
_OPTIONAL_FIELDS = ("batches", "groups", "exact_sums")


def _name(value: Any, where: str) -> Any:
    """A feature or column name: text or an integer (an array's position)."""
    if not isinstance(value, str) and type(value) is not int:
        raise ValueError(f"{where}: a name is text or an integer, got {value!r}")
    return value


def _feature_from_document(f: Any, i: int) -> Feature:
    if not isinstance(f, dict):
        raise ValueError(f"features[{i}]: expected an object, got {type(f).__name__}")
    if not isinstance(f["dtype"], str):
        raise ValueError(f"features[{i}].dtype: expected text, got {f['dtype']!r}")
    return Feature(_name(f["name"], f"features[{i}].name"), f["dtype"], _whole(f["rule"], f"features[{i}].rule"))


def _moments_from_document(d: dict[str, list[Any]], where: str = "statistics") -> Moments:
    def decode(v: list[Any], name: str) -> list[Any]:
        if isinstance(v, list) and v and isinstance(v[0], list):
            return [decode(row, name) for row in v]
        if name in ("count", "nan_count"):
            return [_whole(c, f"{where}.{name}") for c in v] if isinstance(v, list) else _whole(v, f"{where}.{name}")
        return _floats(v, f"{where}.{name}")

    return Moments.from_dict({k: decode(v, k) for k, v in d.items()})


def _floats(values: Any, where: str) -> list[float]:
    """:func:`artifact.decode_floats`, its error naming the field."""
    try:
        return artifact.decode_floats(values)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _whole(value: Any, where: str) -> int:
    """A JSON integer (not a boolean, a float or a string)."""
    if type(value) is not int:
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


def _check_parts(
    scalers: list[Scaler],
    features: list[Feature],
    moments: Moments,
    params: Affine,
    scope: Scope,
    batches: BatchStats | None,
    groups: KeyTable | None,
    exact: ExactSums | None,
) -> None:
    """Refuse a document whose parts do not fit together, or whose statistics no data has.

    Its checksum shows that it was not damaged by accident, not that it was
    made by scalepipe: anyone can recompute it after an edit. (The
    parameters are not recomputed from the statistics and compared: a file
    of an earlier scalepipe may derive them differently in the last bit.)
    """
    n = len(features)
    for i, f in enumerate(features):
        if not 0 <= f.rule < len(scalers):
            raise ValueError(f"features[{i}].rule is {f.rule}, but there are {len(scalers)} scalers")
    names = [repr(f.name) for f in features]
    if len(set(names)) < n:
        raise ValueError(f"feature name {next(x for x in names if names.count(x) > 1)} appears more than once")
    _check_moments("statistics", moments, (n,))
    for k in _AFFINE_FIELDS:
        v = getattr(params, k)
        if v.shape != (n,):
            raise ValueError(f"parameters.{k} has {v.size} values for {n} features")
        if np.isnan(v).any():
            raise ValueError(f"parameters.{k} holds NaN")
        if k in ("center", "scale", "offset") and np.isinf(v).any():
            raise ValueError(f"parameters.{k} holds an infinity")
    if (params.lo > params.hi).any():
        raise ValueError("parameters: a clip bound lo is above its hi")
    if (scope.kind == "partition") != (batches is not None) or (scope.kind == "key") != (groups is not None):
        raise ValueError(f"scope.kind is {scope.kind!r}, but the file holds {'batches' if batches else 'groups' if groups else 'neither batches nor groups'}")
    if batches is not None:
        _check_moments("batches.statistics", batches.moments, (len(batches.labels), n))
        if not all(isinstance(label, str) for label in batches.labels):
            raise ValueError("batches.labels: a label is not text")
        running = batches.running
        if running.mean.shape != (n,) or running.var.shape != (n,):
            raise ValueError(f"batches.running: the running statistics are not one per feature ({n})")
        if (running.var < 0).any() or running.num_batches < 0:
            raise ValueError("batches.running: a variance or the number of batches is negative")
    if groups is not None:
        _check_moments("groups.statistics", groups.moments, (len(groups.keys), n))
        if not groups.keys.is_unique:
            raise ValueError(f"groups.keys: key {groups.keys[groups.keys.duplicated()][0]!r} appears more than once")
    if exact is not None:
        if exact.shape != (n,):
            raise ValueError(f"exact_sums has shape {list(exact.shape)} for {n} features")
        mean, m2 = exact_mean_m2(exact, moments.count)  # a count the sums do not hold is refused here
        seen = moments.count > 0
        for name, derived in (("mean", mean), ("m2", m2)):
            if not np.array_equal(getattr(moments, name)[seen], derived[seen]):
                raise ValueError(f"statistics.{name} differs from the value of the exact sums")


def _check_moments(where: str, m: Moments, shape: tuple[int, ...]) -> None:
    """Shapes, and statistics some data could have: counts not negative, ``min <= max`` where there are values, ``m2`` not negative."""
    for k, v in m.to_dict().items():
        if v.shape != shape:
            raise ValueError(f"{where}.{k} has shape {list(v.shape)}, expected {list(shape)}")
    if (m.count < 0).any() or (m.nan_count < 0).any():
        raise ValueError(f"{where}: a count is negative")
    seen = m.count > 0
    if not (m.min[seen] <= m.max[seen]).all():  # NaN fails too
        raise ValueError(f"{where}: a min is above its max, or NaN, where there are values")
    if (m.m2 < 0).any():
        raise ValueError(f"{where}.m2: a sum of squared deviations is negative")


def _batches_document(b: BatchStats) -> dict[str, Any]:
    return {
        "labels": list(b.labels),
        "statistics": _moments_document(b.moments),
        "running": {
            "mean": artifact.encode_floats(b.running.mean),
            "var": artifact.encode_floats(b.running.var),
            "num_batches_tracked": b.running.num_batches,
        },
    }


def _batches_from_document(d: dict[str, Any], tables: dict[str, np.ndarray]) -> BatchStats:
    run = d["running"]
    running = Running(
        np.array(_floats(run["mean"], "batches.running.mean")),
        np.array(_floats(run["var"], "batches.running.var")),
        _whole(run["num_batches_tracked"], "batches.running.num_batches_tracked"),
    )
    if d["statistics"] == "in tables":
        return BatchStats(_table_moments("batches", tables), [str(v) for v in tables["batches.labels"]], running)
    return BatchStats(_moments_from_document(d["statistics"]), list(d["labels"]), running)


def _tables_file_of(path: str | os.PathLike[str]) -> str | None:
    """The side-tables file the artifact now at ``path`` names, if there is one (``None`` for anything else)."""
    try:
        ref = json.loads(Path(os.fspath(path)).expanduser().read_text(encoding="utf-8")).get("tables")
    except (OSError, ValueError, AttributeError):
        return None
    name = ref.get("file") if isinstance(ref, dict) else None
    return name if isinstance(name, str) and re.fullmatch(_TABLES_NAME, name) else None


def _remove_if_unreferenced(folder: Path, name: str) -> None:
    """Delete the side-tables file ``name`` of a replaced artifact unless another file in ``folder`` names it.

    Artifacts may have any file name, so every file that starts as JSON
    does is searched; where one cannot be read, the tables are kept.
    """
    needle = name.encode()
    for other in folder.iterdir():
        if other.suffix == ".npz" or not other.is_file():
            continue
        try:
            with other.open("rb") as f:
                if f.read(1) == b"{" and needle in f.read():
                    return
        except OSError:
            return
    (folder / name).unlink(missing_ok=True)


def _storable_name(name: Any, *, strict: bool = True, what: str = "feature name") -> str | int:
    """A name as the artifact stores it (a string or an integer).

    Another name is an :class:`ArtifactError` (``what`` says whose), or with ``strict=False`` its text.
    """
    if isinstance(name, (int, np.integer)) and not isinstance(name, (bool, np.bool_)):
        return int(name)
    if isinstance(name, str):
        return name
    if not strict:
        return str(name)
    raise ArtifactError(
        f"{what} {name!r} ({type(name).__name__}) cannot be saved: the artifact stores names as strings "
        "or integers; rename the column"
    )


def _groups_document(g: KeyTable) -> dict[str, Any]:
    return {"keys": _key_array(g.keys).tolist(), "statistics": _moments_document(g.moments)}


def _groups_from_document(d: dict[str, Any], tables: dict[str, np.ndarray]) -> KeyTable:
    import pandas as pd

    from .groups import KeyTable

    if d.get("in") == "tables":
        return KeyTable(pd.Index(tables["groups.keys"].tolist()), _table_moments("groups", tables))
    return KeyTable(pd.Index(d["keys"]), _moments_from_document(d["statistics"]))


def _table_arrays(prefix: str, m: Moments) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in m.to_dict().items()}


def _table_moments(prefix: str, tables: dict[str, np.ndarray]) -> Moments:
    for k in ("count", "nan_count"):  # from_dict would truncate fractions
        if tables[f"{prefix}.{k}"].dtype.kind not in "iu":
            raise ValueError(f"{prefix}.statistics: a count is not a whole number (tables hold {tables[f'{prefix}.{k}'].dtype})")
    return Moments.from_dict({k: tables[f"{prefix}.{k}"] for k in Moments.empty(0).to_dict()})


def _unseen(column: Any, keys: Any) -> Any:
    import pandas as pd

    return pd.Series(unseen_mask(keys, column), index=column.index)


def _json_keys(keys: Any) -> bool:
    """Whether the keys can be written as JSON numbers or strings (an infinite float cannot)."""
    values = keys.to_numpy()
    return values.dtype.kind != "f" or bool(np.isfinite(values).all())


def _key_array(keys: Any) -> np.ndarray:
    """Keys as a plain (non-object) array of the type they are looked up by: integers, floats, booleans or strings.

    Raises
    ------
    ArtifactError
        Keys of another type (dates, mixed types): the artifact could not give them back as they are.
    """
    values = keys.to_numpy()
    if values.dtype.kind in "iu":  # unsigned stays unsigned: a key from 2**63 would wrap in int64
        return values.astype(np.uint64 if values.dtype.kind == "u" else np.int64)
    if values.dtype.kind in "fb":
        return values
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=str)
    if all(isinstance(v, (bool, np.bool_)) for v in values):  # a nullable boolean column's keys
        return values.astype(bool)
    if keys_family(keys) == "integer":  # an object column of ints (one missing, say)
        ints = [int(v) for v in values]
        with contextlib.suppress(OverflowError):  # negative keys beside keys beyond 2**63: refused below
            return np.array(ints, dtype=np.uint64 if max(ints) > 2**63 - 1 else np.int64)
    odd = next((v for v in values if not isinstance(v, str)), None)
    raise ArtifactError(
        f"key value {odd!r} ({type(odd).__name__}) cannot be saved: the artifact stores keys as integers, floats, "
        "booleans or strings, all of one type; cast the key column (e.g. to strings)"
    )


#: The side-tables file an artifact names (in its own folder).
_TABLES_NAME = r"scalepipe-tables\.[0-9a-f]{16}\.npz"


def _read_tables(path: Path, ref: dict[str, str]) -> dict[str, np.ndarray]:
    """The side tables an artifact references, verified against its recorded hash."""
    name = ref.get("file") if isinstance(ref, dict) else None
    if not (isinstance(name, str) and re.fullmatch(_TABLES_NAME, name) and isinstance(ref.get("sha256"), str)):
        raise ArtifactError(
            f"{path}: malformed statistics file: tables must name a file scalepipe-tables.<hex>.npz beside it and its "
            f"sha256, got {ref!r}"
        )
    file = path.expanduser().parent / name
    try:
        data = file.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: its tables file {file} cannot be read ({err.strerror or err}); keep it beside the JSON") from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise ArtifactError(f"{path}: its tables file {file} does not match the recorded checksum (edited or corrupt)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:  # not an .npz, or object arrays (never unpickled)
        raise ArtifactError(f"{path}: its tables file {file} cannot be read as numeric tables: {err}") from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_out(out: Any, data: Any, fn: Any) -> None:
    """``out`` must be a writeable array that :meth:`Model.transform` can fill for ``data``."""
    if not (isinstance(data, np.ndarray) and data.ndim == 2 and isinstance(fn, AffineMap)):
        raise ParameterError(
            "out", "is only for a 2-D numpy array scaled with fixed parameters (not stats='batch' or the key scope)"
        )
    want = affine_dtype(data)
    if not isinstance(out, np.ndarray) or out.shape != data.shape or out.dtype != want:
        shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__)
        raise ParameterError("out", f"must be an array of shape {data.shape} and dtype {want}, got {shape} {dtype}")
    if not out.flags.writeable:
        raise ParameterError("out", "is read-only")


def _as_scalers(scalers: Sequence[Scaler | dict[str, Any]] | None) -> list[Scaler]:
    if scalers is None:
        return [ZScore()]
    if isinstance(scalers, (Scaler, dict)):
        scalers = [scalers]
    out = []
    for i, s in enumerate(scalers):
        if isinstance(s, Scaler):
            out.append(s)
        elif isinstance(s, dict):
            try:
                out.append(scaler_from_dict(s))
            except ParameterError as err:
                raise ParameterError(f"scalers[{i}].{err.field}", err.detail) from None
        else:
            raise ParameterError(f"scalers[{i}]", f"expected a scaler such as sp.ZScore(...) or a dict, got {s!r}")
    if not out:
        raise ParameterError("scalers", "no scaling rule given")
    return out


def fit(
    data: Any,
    scalers: Sequence[Scaler | dict[str, Any]] | None = None,
    *,
    feature_names: Sequence[Any] | None = None,
    reduce_dims: Sequence[str] | None = None,
    scope: Scope | str = "global",
    batch_rows: int | None = None,
    min_batch_rows: int = 2,
    inference_stats: str = "running",
    key: Any = None,
    partition_labels: Sequence[str] | None = None,
    exact: bool = False,
    meta: dict[str, Any] | None = None,
) -> Model:
    """Compute the statistics of ``data`` in one pass and derive every rule's parameters.

    Parameters
    ----------
    data
        numpy array (rows x features), pandas DataFrame, dask array or
        DataFrame, xarray DataArray or Dataset. In-memory data is fitted in
        this process on threads; Dask collections on the active scheduler
        (a ``distributed.Client`` if one is active), with one ``compute``.
    scalers
        Rules, first match wins (one rule may be given alone): ``sp.ZScore(["age"])``, ``sp.MinMax(["px_*"])``,
        or dicts such as ``{"method": "zscore", "columns": ["age"]}``. A rule
        without columns takes every numeric column not matched earlier.
        Default: ``[sp.ZScore()]``.
    feature_names
        Names of an array's columns (default: positions ``0, 1, ...``).
    reduce_dims
        xarray only: the dims to reduce over (default: the first dim).
    scope, batch_rows, min_batch_rows, inference_stats, key
        How statistics are grouped (:class:`Scope`): ``"global"``;
        ``"partition"``, where each batch of ``batch_rows`` rows of each
        partition (a dask partition or chunk; in-memory data is one
        partition) has its own statistics, scale it with
        ``model.transform(data, stats="batch")``, and the running statistics
        serve inference; or ``"key"``.
    partition_labels
        A label per partition (e.g. its file) for error messages.
    exact
        Accumulate exact sums of ``x`` and ``x*x`` (global scope): the mean and
        the sum of squared deviations are correctly rounded (the variance is
        their float64 quotient, within an ulp), and all are bit-identical for
        any chunking, merge order or cluster size.
    meta
        Provenance to record in the artifact (``config_hash``, ``input_fingerprint``).

    Returns
    -------
    Model

    Raises
    ------
    ColumnError, DataError, ParameterError
        A rule matches no column or names a non-numeric one; a column holds
        ``inf`` or only NaN; the data has no rows; a parameter is invalid.

    Examples
    --------
    >>> import pandas as pd, scalepipe as sp
    >>> df = pd.DataFrame({"age": [20.0, 40.0], "id": ["a", "b"]})
    >>> sp.fit(df, scalers=[sp.ZScore(["age"])]).transform(df)["age"].tolist()
    [-1.0, 1.0]
    """
    rules = _as_scalers(scalers)
    if not isinstance(scope, Scope):
        scope = Scope(scope, batch_rows, min_batch_rows, inference_stats, key)
    scope.check_settings()
    if not isinstance(exact, (bool, np.bool_)):  # "no" would be true
        raise ParameterError("exact", f"must be True or False, got {exact!r}")
    if exact and scope.kind != "global":
        raise ParameterError("exact", f"exact sums are kept for the global scope only, not {scope.kind!r}")
    exact_sums = None
    view = view_of(data, feature_names, reduce_dims)
    if reduce_dims is not None and view.kind != "xarray":
        raise ParameterError("reduce_dims", f"applies to xarray data ({view.kind} data is reduced over its rows), got {list(reduce_dims)!r}")
    features, passthrough = resolve_columns(view, rules, exclude=[scope.key] if scope.kind == "key" else ())
    names = [f.name for f in features]
    batches = groups = None
    if scope.kind == "key":
        moments, groups = _compute_keyed(view, names, scope.key)
    elif scope.kind == "partition":
        table, labels = _batch_table(view, names, scope, partition_labels)
        moments = merge_all([table.row(i) for i in range(len(labels))])
        batches = BatchStats(table, labels, running_stats(table, _momenta(rules, features)))
    elif exact:
        both = _compute(view, names, exact=True)
        moments, exact_sums = both.finish(), both.sums
    else:
        moments = _compute(view, names)
    rows = int(moments.count[0] + moments.nan_count[0]) if len(names) else 0
    if rows == 0:
        raise DataError("the data has no rows to fit")
    info = {
        "created": _now(),
        "data_kind": view.kind,
        "reduce_dims": getattr(view, "reduce_dims", None),
        "feature_dims": getattr(view, "feature_dims", None),
        "input_fingerprint": {"kind": view.kind, "rows": rows, "features": len(view.names)},
        **(meta or {}),
    }
    model = Model(
        rules, features, passthrough, moments, meta=info, scope=scope, batches=batches, groups=groups, exact=exact_sums
    )
    model._check_keyed_params()
    return model


def load(path: str | os.PathLike[str]) -> Model:
    """Load a model saved by :meth:`Model.save` (JSON only; nothing is unpickled).

    Needs numpy alone (pandas to transform frames): no Dask, no cluster.

    Raises
    ------
    ArtifactError
        The file is missing, truncated, edited, of a newer schema or not a
        scalepipe artifact; the message names the file.
    """
    doc = artifact.read_artifact(path)
    tables = _read_tables(Path(os.fspath(path)), doc["tables"]) if doc.get("tables") else None
    return Model.from_document(doc, str(path), tables)
