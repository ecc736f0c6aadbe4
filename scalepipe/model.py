"""The fitted model: fit, transform and inverse_transform for every data kind; save/load.

A :class:`Model` holds the scaling rules, the fitted features, their mergeable
:class:`~scalepipe.stats.Moments` and the affine parameters derived from them.
It reaches Dask only through :mod:`scalepipe.views` when it is handed a Dask
collection; loading an artifact and transforming a pandas frame or numpy array
imports numpy and pandas only.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import artifact
from .errors import ArtifactError, ColumnError, DataError, ParameterError
from .methods import Affine, Scaler, ZScore, affine_params, scaler_from_dict
from .stats import Moments, NonFiniteError, merge
from .views import View, view_of

__all__ = ["Model", "fit", "load"]

_GLOB_CHARS = set("*?[")

_AFFINE_FIELDS = ("center", "scale", "offset", "lo", "hi")


@dataclass(frozen=True)
class Feature:
    """One fitted feature: its name, input dtype and the index of its rule."""

    name: Any
    dtype: str
    rule: int


def _rule_label(i: int, scaler: Scaler) -> str:
    return f"scalers[{i}] ({scaler.method})"


def resolve_columns(view: View, scalers: Sequence[Scaler]) -> tuple[list[Feature], list[Any]]:
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
    numeric = dict(zip(view.names, view.numeric))
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
            if pattern not in numeric:
                raise ColumnError(
                    f"{_rule_label(i, scaler)}: column {pattern!r} not found in the data "
                    f"(it has {', '.join(map(repr, view.names[:10]))}{', ...' if len(view.names) > 10 else ''})"
                )
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
    passthrough = [n for n in view.names if numeric[n] and n not in rule_of]
    return features, passthrough


def _compute(lazy: Any, names: Sequence[Any]) -> Moments:
    """Evaluate (possibly lazy) moments, naming the column of an ``inf``."""
    try:
        if isinstance(lazy, Moments):
            return lazy
        from . import reduce

        (moments,) = reduce.compute(lazy)
        return moments
    except NonFiniteError as err:
        if err.names is None:
            raise err.named(names) from None
        raise


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
    ) -> None:
        self.scalers = list(scalers)
        self.features = list(features)
        self.passthrough = list(passthrough)
        self.moments = moments
        self.meta = dict(meta or {})
        self.params = params if params is not None else self._derive_params()

    @property
    def feature_names(self) -> list[Any]:
        """Names of the fitted features, in order."""
        return [f.name for f in self.features]

    def _derive_params(self) -> Affine:
        rules = np.array([f.rule for f in self.features], dtype=np.int64)
        names = self.feature_names
        center, scale, offset, lo, hi = (np.empty(len(names)) for _ in range(5))
        for i, scaler in enumerate(self.scalers):
            idx = np.flatnonzero(rules == i)
            if idx.size == 0:
                continue
            p = affine_params(scaler, self.moments.take(idx), [names[k] for k in idx])
            center[idx], scale[idx], offset[idx], lo[idx], hi[idx] = p.center, p.scale, p.offset, p.lo, p.hi
        return Affine(center, scale, offset, lo, hi)

    def transform(self, data: Any, *, feature_names: Sequence[Any] | None = None) -> Any:
        """Scale ``data``; returns the same kind (lazy for Dask input).

        Parameters
        ----------
        data
            numpy array, pandas DataFrame, dask array or DataFrame, xarray
            DataArray or Dataset, holding every fitted feature. Columns that
            were not fitted pass through unchanged. ``data`` is not modified.
        feature_names
            Names of a numpy/dask array's columns (default: their positions).

        Raises
        ------
        ColumnError
            A fitted column is missing or not numeric.
        """
        return self._apply(data, feature_names, inverse=False)

    def inverse_transform(self, data: Any, *, feature_names: Sequence[Any] | None = None) -> Any:
        """Undo :meth:`transform` (a feature scaled to a constant maps back to its center)."""
        return self._apply(data, feature_names, inverse=True)

    def _apply(self, data: Any, feature_names: Sequence[Any] | None, inverse: bool) -> Any:
        view = view_of(data, feature_names, self.meta.get("reduce_dims"))
        return view.transform(self.feature_names, self.params, inverse)

    def partial_fit(self, data: Any, *, feature_names: Sequence[Any] | None = None) -> Model:
        """Update the statistics with more rows; equals a fit on all rows together.

        Returns
        -------
        Model
            ``self``, updated (as scikit-learn's ``partial_fit``).
        """
        view = view_of(data, feature_names, self.meta.get("reduce_dims"))
        new = _compute(view.moments(self.feature_names), self.feature_names)
        self.moments = merge(self.moments, new)
        self.params = self._derive_params()
        self.meta["created"] = _now()
        self.meta["input_fingerprint"] = None
        return self

    def summary(self) -> list[dict[str, Any]]:
        """One record per fitted feature: method, statistics and parameters."""
        m = self.moments
        std = m.std(0)
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

        stats = self.moments.to_dict()
        return {
            "scalepipe_version": __version__,
            "created": self.meta.get("created"),
            "config_hash": self.meta.get("config_hash"),
            "input_fingerprint": self.meta.get("input_fingerprint"),
            "data_kind": self.meta.get("data_kind"),
            "reduce_dims": self.meta.get("reduce_dims"),
            "scalers": [s.to_dict() for s in self.scalers],
            "features": [{"name": f.name, "dtype": f.dtype, "rule": f.rule} for f in self.features],
            "passthrough": list(self.passthrough),
            "statistics": {
                k: (v.tolist() if v.dtype.kind == "i" else artifact.encode_floats(v)) for k, v in stats.items()
            },
            "parameters": {k: artifact.encode_floats(getattr(self.params, k)) for k in _AFFINE_FIELDS},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the artifact (JSON; never a pickle), atomically."""
        artifact.write_text_atomic(path, artifact.render_artifact(self.to_document()))

    @classmethod
    def from_document(cls, doc: dict[str, Any], source: str = "<document>") -> Model:
        """Rebuild a model from an artifact document (see :func:`load`)."""
        try:
            scalers = [scaler_from_dict(d) for d in doc["scalers"]]
            features = [Feature(f["name"], f["dtype"], int(f["rule"])) for f in doc["features"]]
            raw = doc["statistics"]
            moments = Moments.from_dict(
                {k: (v if k in ("count", "nan_count") else artifact.decode_floats(v)) for k, v in raw.items()}
            )
            params = Affine(*(np.array(artifact.decode_floats(doc["parameters"][k])) for k in _AFFINE_FIELDS))
        except (KeyError, TypeError, ValueError, ParameterError) as err:
            raise ArtifactError(f"{source}: malformed statistics file: {err}") from None
        if moments.shape != (len(features),) or params.center.shape != (len(features),):
            raise ArtifactError(f"{source}: malformed statistics file: statistics do not match the features")
        meta = {k: doc.get(k) for k in ("created", "config_hash", "input_fingerprint", "data_kind", "reduce_dims")}
        return cls(scalers, features, doc.get("passthrough", []), moments, params, meta)

    def __repr__(self) -> str:
        methods = sorted({self.scalers[f.rule].method for f in self.features})
        return f"<scalepipe.Model: {len(self.features)} features ({', '.join(methods)}), {len(self.passthrough)} passthrough>"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_scalers(scalers: Sequence[Scaler | dict[str, Any]] | None) -> list[Scaler]:
    if scalers is None:
        return [ZScore()]
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
        Rules, first match wins: ``sp.ZScore(["age"])``, ``sp.MinMax(["px_*"])``,
        or dicts such as ``{"method": "zscore", "columns": ["age"]}``. A rule
        without columns takes every numeric column not matched earlier.
        Default: ``[sp.ZScore()]``.
    feature_names
        Names of an array's columns (default: positions ``0, 1, ...``).
    reduce_dims
        xarray only: the dims to reduce over (default: the first dim).
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
    view = view_of(data, feature_names, reduce_dims)
    features, passthrough = resolve_columns(view, rules)
    names = [f.name for f in features]
    moments = _compute(view.moments(names), names)
    rows = int(moments.count[0] + moments.nan_count[0]) if len(names) else 0
    if rows == 0:
        raise DataError("the data has no rows to fit")
    info = {
        "created": _now(),
        "data_kind": view.kind,
        "reduce_dims": getattr(view, "reduce_dims", None),
        "input_fingerprint": {"kind": view.kind, "rows": rows, "features": len(view.names)},
        **(meta or {}),
    }
    return Model(rules, features, passthrough, moments, meta=info)


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
    return Model.from_document(doc, str(path))
