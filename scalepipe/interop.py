"""Hand-off to scikit-learn: a fitted ``ColumnTransformer``, and a scikit-learn estimator.

* :func:`to_sklearn` turns a fitted :class:`~scalepipe.model.Model` into a
  fitted :class:`sklearn.compose.ColumnTransformer` whose ``transform`` equals
  ``model.transform`` (float64 input: within 1e-12, most columns
  bit-identical), so a scikit-learn pipeline can carry the scaling to serving.
* :class:`ScalepipeScaler` is a scikit-learn transformer (``fit``,
  ``partial_fit``, ``transform``, ``inverse_transform``,
  ``get_feature_names_out``, ``set_output``) that fits with scalepipe, so
  ``check_estimator`` applies to it and it runs in scikit-learn pipelines and
  grid searches; handed a Dask collection it fits on the cluster.

scikit-learn is optional: this module imports numpy only, scikit-learn inside
the functions, and :class:`ScalepipeScaler` is built on first access.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ParameterError
from .methods import _AFFINE_FIELDS, Affine, MinMax, apply_affine, invert_affine

__all__ = ["ScalepipeScaler", "affine_inverse", "affine_transform", "to_sklearn"]


def _values(X: Any) -> np.ndarray:
    """``X`` as a numeric numpy array (pandas nullable values become NaN)."""
    if hasattr(X, "to_numpy") and hasattr(X, "dtypes"):
        kinds = {getattr(t, "kind", "O") for t in X.dtypes}
        return X.to_numpy(dtype=np.float32 if kinds == {"f"} and all(t == np.float32 for t in X.dtypes) else np.float64, na_value=np.nan)
    x = np.asarray(X)
    return x if x.dtype.kind in "fiu" else x.astype(np.float64)


def affine_transform(X: Any, center: np.ndarray, scale: np.ndarray, offset: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """scalepipe's affine map ``clip((x - center) * scale + offset, lo, hi)``, for ``FunctionTransformer``."""
    return apply_affine(_values(X), Affine(center, scale, offset, lo, hi))


def affine_inverse(X: Any, center: np.ndarray, scale: np.ndarray, offset: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The inverse of :func:`affine_transform`."""
    return invert_affine(_values(X), Affine(center, scale, offset, lo, hi))


def _kind(model: Any, i: int) -> str:
    """How feature ``i`` is exported: ``standard``, ``minmax`` or ``affine``.

    ``standard`` is a StandardScaler, ``(x - mean_) / scale_``: any map without
    an offset or clipping (zscore, decimal, batchnorm with beta 0).
    ``minmax`` is the minmax rule as a centring step then a MinMaxScaler.
    Everything else (batchnorm with beta, a constant column that escapes a
    clipping rule's bounds) is a FunctionTransformer running the exact map.
    """
    p = model.params
    scaler = model.scalers[model.features[i].rule]
    if isinstance(scaler, MinMax):
        bounds = scaler.clip_bounds()
        if p.lo[i] == bounds[0] and p.hi[i] == bounds[1]:
            return "minmax"
        return "affine"
    if p.offset[i] == 0 and np.isneginf(p.lo[i]) and np.isposinf(p.hi[i]):
        return "standard"
    return "affine"


def _runs(model: Any, columns: Sequence[Any]) -> list[tuple[str, int, list[Any], list[int]]]:
    """Consecutive columns that share a rule and an export kind: ``(kind, rule, columns, positions)``.

    Passthrough runs have kind ``passthrough`` and rule -1.
    """
    index = {n: i for i, n in enumerate(model.feature_names)}
    runs: list[tuple[str, int, list[Any], list[int]]] = []
    for c in columns:
        if c in index:
            i = index[c]
            key = (_kind(model, i), model.features[i].rule)
        else:
            i, key = -1, ("passthrough", -1)
        if runs and (runs[-1][0], runs[-1][1]) == key:
            runs[-1][2].append(c)
            runs[-1][3].append(i)
        else:
            runs.append((key[0], key[1], [c], [i]))
    return runs


def _samples_seen(count: np.ndarray, nan_count: np.ndarray) -> int | np.ndarray:
    """scikit-learn's ``n_samples_seen_``: an int without missing values, else per feature."""
    if not nan_count.any() and len(set(count.tolist())) <= 1:
        return int(count[0]) if len(count) else 0
    return count.astype(np.int64)


def to_sklearn(model: Any, columns: Sequence[Any] | None = None, *, pandas_output: bool = False) -> Any:
    """A fitted scikit-learn ``ColumnTransformer`` equal to ``model.transform``.

    Parameters
    ----------
    model
        A fitted :class:`~scalepipe.model.Model` of the global or partition
        scope (the latter exports its inference statistics).
    columns
        The input's columns in order (e.g. ``list(df.columns)``), so the output
        keeps them in place, as scalepipe does; columns the model did not fit
        pass through. Default: the model's columns (a numpy array's positions
        in order; for a frame, the fitted then the passthrough columns, since
        the model does not record where its passthrough columns sit). Columns
        beyond these are appended at the end (``remainder="passthrough"``).
    pandas_output
        Call ``set_output(transform="pandas")``.

    Returns
    -------
    sklearn.compose.ColumnTransformer
        With ``verbose_feature_names_out=False`` (the output names are the
        input's). Each run of consecutive columns with the same rule is one
        step: ``zscore``/``decimal``/``batchnorm`` (beta 0) a ``StandardScaler``
        (``mean_``, ``scale_``, ``var_``, ``n_samples_seen_``); ``minmax`` a
        ``Pipeline`` of a ``StandardScaler(with_std=False)`` that subtracts the
        minimum, then a ``MinMaxScaler`` (``data_min_``/``data_max_`` of the
        centred data, ``data_range_``, ``scale_``, ``min_``): scikit-learn's own
        ``x * scale_ + min_`` loses the digits of a column with a large offset,
        centring first repeats scalepipe's exact operations; other maps a
        ``FunctionTransformer`` of :func:`affine_transform`. Unpickling it
        needs scikit-learn (and scalepipe for FunctionTransformer steps).

    Raises
    ------
    ParameterError
        A key-scope model (per-key parameters have no scikit-learn equivalent).

    Notes
    -----
    float64 input gives scalepipe's values within 1e-12 (StandardScaler
    divides by ``scale_`` where scalepipe multiplies by its reciprocal: at
    most an ulp or two; the other steps are bit-identical). scikit-learn
    computes float32 input in float32, scalepipe in float64.

    Examples
    --------
    >>> import pandas as pd, scalepipe as sp
    >>> df = pd.DataFrame({"a": [1.0, 2.0, 4.0], "id": ["x", "y", "z"]})
    >>> ct = to_sklearn(sp.fit(df, [sp.MinMax(["a"])]), list(df.columns), pandas_output=True)
    >>> ct.transform(df)["a"].tolist()
    [0.0, 0.3333333333333333, 1.0]
    """
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

    if model.groups is not None:
        raise ParameterError(
            "scope", "a key-scope model has per-key parameters, which no scikit-learn scaler holds; export a global-scope model"
        )
    known = list(model.feature_names) + list(model.passthrough)
    if columns is None:
        columns = sorted(known) if all(isinstance(c, (int, np.integer)) for c in known) else known
    columns = list(columns)
    missing = [n for n in model.feature_names if n not in columns]
    if missing:
        raise ParameterError("columns", f"fitted column(s) {', '.join(map(repr, missing))} are not in columns")
    by_position = all(isinstance(c, (int, np.integer)) for c in columns)
    if not by_position and not all(isinstance(c, str) for c in columns):
        raise ParameterError("columns", "must be all strings (a frame's columns) or all integers (array positions)")
    p, m = model.params, model.moments
    steps, taken = [], {}
    for kind, rule, cols, pos in _runs(model, columns):
        if kind == "passthrough":
            name, step = "passthrough", "passthrough"
        else:
            name = model.scalers[rule].method
            if kind == "minmax":
                scaler = model.scalers[rule]
                # Frames between its two steps whatever the outer output, so
                # the inner MinMaxScaler always sees the names it was fitted with.
                step = Pipeline(
                    [
                        ("center", StandardScaler(with_std=False)),
                        ("minmax", MinMaxScaler(feature_range=scaler.feature_range, clip=scaler.clip)),
                    ]
                ).set_output(transform="pandas")
            elif kind == "standard":
                step = StandardScaler()
            else:
                kw = {k: getattr(p, k)[pos] for k in _AFFINE_FIELDS}
                step = FunctionTransformer(
                    affine_transform,
                    inverse_func=affine_inverse,
                    kw_args=kw,
                    inv_kw_args=kw,
                    feature_names_out="one-to-one",
                    check_inverse=False,
                )
        taken[name] = taken.get(name, 0) + 1
        steps.append((name if taken[name] == 1 else f"{name}_{taken[name]}", step, cols, kind, pos))
    ct = ColumnTransformer(
        [(name, step, cols) for name, step, cols, _, _ in steps], remainder="passthrough", verbose_feature_names_out=False
    )
    # Fitting on two placeholder rows sets scikit-learn's own fitted state
    # (column bookkeeping, feature names); the statistics are set below.
    if by_position:
        ct.fit(np.tile([[0.0], [1.0]], (1, max(columns) + 1)))
    else:
        ct.fit(pd.DataFrame({c: [0.0, 1.0] for c in columns}))
    for name, _, _, kind, pos in steps:
        if kind == "passthrough":
            continue
        fitted = ct.named_transformers_[name]
        seen = _samples_seen(m.count[pos], m.nan_count[pos])
        if kind == "standard":
            fitted.mean_ = p.center[pos].copy()
            with np.errstate(divide="ignore"):
                fitted.scale_ = 1.0 / p.scale[pos]
            fitted.var_ = m.var(0)[pos]
            fitted.n_samples_seen_ = seen
        elif kind == "minmax":
            center, minmax = fitted.named_steps["center"], fitted.named_steps["minmax"]
            center.mean_, center.var_, center.scale_ = p.center[pos].copy(), None, None
            center.n_samples_seen_ = seen
            minmax.data_min_ = m.min[pos] - p.center[pos]
            minmax.data_max_ = m.max[pos] - p.center[pos]
            minmax.data_range_ = m.max[pos] - m.min[pos]
            minmax.scale_ = p.scale[pos].copy()
            minmax.min_ = p.offset[pos].copy()
            minmax.n_samples_seen_ = int(np.max(m.count[pos] + m.nan_count[pos]))
    if pandas_output:
        ct.set_output(transform="pandas")
    return ct


def _is_dask(X: Any) -> bool:
    from .views import _is_instance

    return _is_instance(X, "dask.dataframe", "DataFrame") or _is_instance(X, "dask.array", "Array")


_SCALER_CLASS: type | None = None


def _scaler_class() -> type:
    """Build :class:`ScalepipeScaler` (scikit-learn's base classes are imported here, once)."""
    global _SCALER_CLASS
    if _SCALER_CLASS is not None:
        return _SCALER_CLASS
    from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
    from sklearn.utils.validation import check_is_fitted, validate_data

    class ScalepipeScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
        """A scikit-learn transformer that fits and scales with scalepipe.

        Parameters
        ----------
        method : str, default="zscore"
            ``"zscore"``, ``"minmax"``, ``"decimal"`` or ``"batchnorm"``.
        params : dict, optional
            The method's parameters (``{"feature_range": (-1, 1), "clip": True}``,
            ``{"ddof": 1}``, ``{"constant_policy": "zero"}``, ...).
        scalers : list, optional
            Full scalepipe rules (``[sp.ZScore([0, 1]), sp.MinMax()]``,
            columns by position, or by name for a frame fitted through Dask);
            replaces ``method`` and ``params``.

        Attributes
        ----------
        model_ : scalepipe.Model
            The fitted model (save it with ``model_.save``).
        center_, scale_, offset_ : ndarray of shape (n_features_in_,)
            The affine map ``(x - center_) * scale_ + offset_`` of every
            column (identity for columns no rule matched).
        n_samples_seen_ : ndarray of shape (n_features_in_,)
            Non-missing values seen per column.
        n_features_in_, feature_names_in_
            As in every scikit-learn estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from scalepipe.interop import ScalepipeScaler
        >>> ScalepipeScaler("minmax").fit_transform(np.array([[1.0], [3.0]])).ravel().tolist()
        [0.0, 1.0]
        """

        def __init__(self, method: str = "zscore", params: dict[str, Any] | None = None, scalers: Sequence[Any] | None = None) -> None:
            self.method = method
            self.params = params
            self.scalers = scalers

        def __sklearn_tags__(self) -> Any:
            tags = super().__sklearn_tags__()
            tags.input_tags.allow_nan = True
            tags.transformer_tags.preserves_dtype = ["float64", "float32"]
            return tags

        def _rules(self) -> list[Any]:
            if self.scalers is not None:
                return list(self.scalers)
            return [{"method": self.method, **(self.params or {})}]

        def _check(self, X: Any, reset: bool) -> Any:
            if _is_dask(X):
                n = X.shape[1] if X.ndim == 2 else None
                if reset:
                    self.n_features_in_ = len(X.columns) if hasattr(X, "columns") else n
                    if hasattr(X, "columns"):
                        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
                    elif hasattr(self, "feature_names_in_"):
                        del self.feature_names_in_
                return X
            return validate_data(
                self, X, reset=reset, dtype=[np.float64, np.float32], ensure_all_finite="allow-nan", copy=False
            )

        def fit(self, X: Any, y: Any = None) -> ScalepipeScaler:
            """Fit the statistics of ``X`` (rows x features) in one pass."""
            for attr in ("model_", "n_features_in_", "feature_names_in_"):
                self.__dict__.pop(attr, None)
            return self.partial_fit(X, y)

        def partial_fit(self, X: Any, y: Any = None) -> ScalepipeScaler:
            """Add the rows of ``X`` to the statistics (equal to a fit on all rows)."""
            from .model import fit

            first = not hasattr(self, "model_")
            X = self._check(X, reset=first)
            if first:
                self.model_ = fit(X, self._rules(), feature_names=self._names())
            else:
                self.model_.partial_fit(X, feature_names=self._names())
            self._set_fitted()
            return self

        def _names(self) -> list[Any] | None:
            """The column names the model knows (``None``: positions)."""
            return list(self.feature_names_in_) if hasattr(self, "feature_names_in_") else None

        def _set_fitted(self) -> None:
            model, n = self.model_, self.n_features_in_
            index = {c: i for i, c in enumerate(self._names() or range(n))}
            pos = np.array([index[f] for f in model.feature_names], dtype=np.int64)
            for k, v in {"center": 0.0, "scale": 1.0, "offset": 0.0}.items():
                full = np.full(n, v)
                full[pos] = getattr(model.params, k)
                setattr(self, f"{k}_", full)
            seen = np.zeros(n, dtype=np.int64)
            seen[pos] = model.moments.count
            self.n_samples_seen_ = seen

        def transform(self, X: Any) -> Any:
            """Scale ``X``; the result has ``X``'s float dtype (float64 for integers)."""
            check_is_fitted(self, "model_")
            return self.model_.transform(self._check(X, reset=False), feature_names=self._names())

        def inverse_transform(self, X: Any) -> Any:
            """Undo :meth:`transform`."""
            check_is_fitted(self, "model_")
            return self.model_.inverse_transform(self._check(X, reset=False), feature_names=self._names())

    ScalepipeScaler.__module__ = __name__
    ScalepipeScaler.__qualname__ = "ScalepipeScaler"
    _SCALER_CLASS = ScalepipeScaler
    return ScalepipeScaler


def __getattr__(name: str) -> Any:
    if name == "ScalepipeScaler":
        return _scaler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
