"""Key scope: statistics per value of a key column, as one grouped reduction.

Each partition yields a :class:`KeyTable` (its keys and one row of
:class:`~scalepipe.stats.Moments` per key) computed with vectorised
``bincount`` sweeps, not a Python loop over keys; tables merge by aligning
their keys and applying the pairwise Chan merge to every row at once, so
millions of keys cost a few array operations per merge.

numpy and pandas only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import ColumnError
from .stats import Moments, NonFiniteError, _two_sum, merge

__all__ = ["KeyTable", "key_moments", "merge_tables"]


@dataclass(frozen=True, eq=False)
class KeyTable:
    """Per-key statistics.

    Attributes
    ----------
    keys : pandas.Index
        The distinct keys (unique).
    moments : Moments
        Shape ``(len(keys), n_features)``.
    """

    keys: pd.Index
    moments: Moments

    @classmethod
    def empty(cls, n_features: int) -> KeyTable:
        """A table without keys."""
        return cls(pd.Index([]), Moments.empty((0, n_features)))

    def sorted(self) -> KeyTable:
        """The same table with its keys in ascending order (a canonical form)."""
        try:
            order = np.argsort(self.keys.to_numpy(), kind="stable")
        except TypeError:  # mixed key types: keep first-seen order
            return self
        return KeyTable(self.keys[order], self.moments.take(order, axis=0))


def key_moments(keys: Any, x: np.ndarray, names: Sequence[object] | None = None) -> KeyTable:
    """Per-key statistics of ``x`` (rows x features); rows with a missing key are left out.

    Parameters
    ----------
    keys : array_like, shape (n_rows,)
        Strings or integers (a pandas column as it is: a nullable integer
        column through numpy would become float64, merging keys beyond 2**53).
    x : ndarray, shape (n_rows, n_features)
        float64, NaN for missing values.
    names
        Feature names, used to name a column holding ``inf``.
    """
    exact = keys if isinstance(keys, (pd.Series, pd.Index)) else np.asarray(keys)
    _check_one_type(exact)
    codes, uniques = pd.factorize(exact, use_na_sentinel=True)
    k, f = len(uniques), x.shape[1]
    fields = {name: np.empty((k, f)) for name in ("min", "max", "mean", "mean_lo", "m2")}
    count = np.zeros((k, f), dtype=np.int64)
    nan_count = np.zeros((k, f), dtype=np.int64)
    keyed = codes >= 0
    for j in range(f):
        col = x[:, j]
        if np.isinf(col).any():
            raise NonFiniteError([j], None if names is None else [names[j]])
        nan = np.isnan(col)
        nan_count[:, j] = np.bincount(codes[keyed & nan], minlength=k)
        ok = keyed & ~nan
        c, v = codes[ok], col[ok]
        n = np.bincount(c, minlength=k)
        count[:, j] = n
        safe = np.maximum(n, 1)
        pivot = np.bincount(c, weights=v, minlength=k) / safe
        dev = v - pivot[c]
        s = np.bincount(c, weights=dev, minlength=k)
        with np.errstate(over="ignore", invalid="ignore"):  # m2 beyond float64 is refused where a rule needs it
            q = np.bincount(c, weights=dev * dev, minlength=k)
            fields["m2"][:, j] = np.maximum(q - s * (s / safe), 0.0)
        fields["mean"][:, j], fields["mean_lo"][:, j] = _two_sum(pivot, s / safe)
        lo, hi = np.full(k, np.nan), np.full(k, np.nan)
        np.fmin.at(lo, c, v)
        np.fmax.at(hi, c, v)
        fields["min"][:, j], fields["max"][:, j] = lo + 0.0, hi + 0.0
    absmax = np.fmax(np.abs(fields["min"]), np.abs(fields["max"]))
    return KeyTable(pd.Index(uniques), Moments(count, nan_count, absmax=absmax, **fields))


def _check_one_type(keys: Any) -> None:
    """Refuse keys of several types (``1`` and ``True``, ``1`` and ``"a"``): grouping would make ``1`` and ``True`` one key."""
    if keys.dtype != object or pd.api.types.infer_dtype(keys, skipna=True) not in ("mixed", "mixed-integer"):
        return
    kinds = sorted({type(v).__name__ for v in pd.Series(keys).dropna()})
    name = getattr(keys, "name", None)
    raise ColumnError(
        f"key column{'' if name is None else f' {name!r}'} holds keys of several types ({', '.join(kinds)}); "
        "keys must be of one type (1 and True would be one key): cast the column, e.g. to strings"
    )


def key_family(kind: str) -> str:
    """The family of keys of a numpy dtype ``kind``: ``integer``, ``float``, ``boolean`` or ``text`` (others)."""
    return {"i": "integer", "u": "integer", "f": "float", "b": "boolean"}.get(kind, "text")


#: pandas' inferred type of a column of objects -> the family of its keys (``mixed``: several families).
_INFERRED = {
    "string": "text",
    "integer": "integer",
    "floating": "float",
    "mixed-integer-float": "float",
    "boolean": "boolean",
    "mixed": "mixed",
    "mixed-integer": "mixed",
}


def keys_family(values: Any) -> str | None:
    """The family of the keys ``values`` (an Index or Series) hold, looking into a column of Python objects.

    ``integer``, ``float``, ``boolean``, ``text``, ``mixed`` (several), or
    ``None`` (other types: dates, decimals, bytes; or no values). An object
    column of ints is ``integer`` (its dtype alone says text).
    """
    if isinstance(values.dtype, pd.CategoricalDtype):  # its categories' family
        return keys_family(values.dtype.categories)
    kind = values.dtype.kind
    if kind in "iufb":
        return key_family(kind)
    if kind not in "OSU" or not len(values):  # dates, durations (their strings are not their keys), or no values
        return None
    return _INFERRED.get(pd.api.types.infer_dtype(values, skipna=True))


def _aligned_keys(a: pd.Index, b: pd.Index) -> tuple[pd.Index, pd.Index]:
    """``a`` and ``b`` with one dtype that holds both exactly, else :class:`ColumnError`.

    int64 and uint64 keys as the one of them that holds both; integral float
    keys (an integer key column with a missing value, to pandas) beside
    integer keys as integers, other floats beside integers up to 2**53 as
    floats.
    """
    if not len(a) or not len(b) or (a.dtype == b.dtype and a.dtype != object):
        return a, b
    fa, fb = keys_family(a), keys_family(b)  # objects: two partitions of one column may hold 1 and True
    if {fa, fb} == {"integer", "text"}:  # a CSV's text keys and integer keys: the new ones take the fitted type
        b = _integers_as_text(b) if fa == "text" else _text_as_integers(b, a.dtype)
        return _aligned_keys(a, b)
    if {fa, fb} == {"integer", "float"}:  # pandas makes an integer key column with a missing key float
        ints, floats = (a, b) if fa == "integer" else (b, a)
        f = floats.to_numpy().astype(np.float64)
        if (f == np.floor(f)).all() and np.abs(f).max() < 2.0**63:
            floats = pd.Index(f.astype(np.int64))
        elif np.abs(ints.to_numpy().astype(object)).max() <= 2**53:  # every integer key is a float exactly
            ints = pd.Index(ints.to_numpy().astype(np.float64))
        else:
            raise ColumnError(
                f"the new rows' keys ({b.dtype}) and the fitted keys ({a.dtype}) do not merge exactly: fractional "
                "float keys beside integer keys beyond 2**53"
            )
        a, b = (ints, floats) if fa == "integer" else (floats, ints)
        return _aligned_keys(a, b)
    if fa == fb == "integer":
        both = np.concatenate([a.to_numpy().astype(object), b.to_numpy().astype(object)])
        for dtype in (np.int64, np.uint64):
            info = np.iinfo(dtype)
            if info.min <= both.min() and both.max() <= info.max:
                return pd.Index(a.to_numpy().astype(dtype)), pd.Index(b.to_numpy().astype(dtype))
        raise ColumnError(
            f"the new rows' keys ({b.dtype}) and the fitted keys ({a.dtype}) have no integer type that holds both "
            "exactly (negative keys and keys beyond 2**63)"
        )
    if fa == fb:
        return a, b
    raise ColumnError(
        f"the new rows' keys are {fb or 'of another type'} ({b.dtype}), the fitted keys {fa or 'of another type'} ({a.dtype}): keys of another type do not "
        "merge with the fitted ones exactly; cast the key column to the fitted keys' type"
    )


def _integers_as_text(keys: pd.Index) -> pd.Index:
    """Integer keys as their decimal text (how a CSV's key column, read as text, holds them)."""
    return pd.Index([str(int(v)) for v in keys], dtype=object)


def _text_as_integers(keys: pd.Index, like: np.dtype) -> pd.Index:
    """Text keys (a CSV's) as the integers they spell, exactly; :class:`ColumnError` for one that spells none."""
    values = []
    for text in keys:
        if not INTEGER_TEXT.fullmatch(str(text).strip()):
            raise ColumnError(
                f"the new rows' key {text!r} is text that is not an integer, and the fitted keys are integers ({like}); "
                "keys of another type do not merge: cast the key column, or fit anew"
            )
        values.append(int(text))
    return pd.Index(values, dtype=object)


#: The text of an integer key (a CSV's): ``7``, ``+7``, ``-007``.
INTEGER_TEXT = re.compile(r"[+-]?\d+")


def _scatter(table: KeyTable, where: np.ndarray, size: int) -> Moments:
    full = Moments.empty((size, table.moments.count.shape[1])).to_dict()
    for name, values in table.moments.to_dict().items():
        full[name][where] = values
    return Moments(**full)


def merge_tables(a: KeyTable, b: KeyTable) -> KeyTable:
    """The per-key statistics of the union of two disjoint row sets.

    Raises
    ------
    ColumnError
        The tables' keys are of two types (integers and floats, numbers and
        text), or integers that no one integer type holds.
    """
    keys_a, keys_b = _aligned_keys(a.keys, b.keys)
    a, b = KeyTable(keys_a, a.moments), KeyTable(keys_b, b.moments)
    new = b.keys[~b.keys.isin(a.keys)]
    keys = a.keys.append(new)
    size = len(keys)
    left = _scatter(a, np.arange(len(a.keys)), size)
    right = _scatter(b, keys.get_indexer(b.keys), size)
    return KeyTable(keys, merge(left, right))


def merge_all_tables(tables: Sequence[KeyTable]) -> KeyTable:
    """Merge tables left to right (callers use a fixed tree of these)."""
    out = tables[0]
    for t in tables[1:]:
        out = merge_tables(out, t)
    return out
