"""What a transform does to a block of values: picklable maps shipped to workers.

A map is called as ``fn(values, positions, part)`` on one block:

* ``values``: rows x columns (numpy, any real dtype), or, for a map whose
  ``reads_columns`` is true, a table's :class:`~scalepipe.stats.Columns`
  (read in place; the result is then float64);
* ``positions``: for each column, its index among the model's fitted
  features, or -1 for a column that passes through (arrays only);
* ``part``: the block's pandas partition (tables) or ``None`` (arrays).

It returns the scaled values, float (float32 kept). The same maps run in a
plain process, in Dask tasks, and (later) on Spark executors.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .batches import scale_batches
from .groups import INTEGER_TEXT, keys_family
from .methods import (
    _AFFINE_FIELDS,
    Affine,
    RuleSet,
    affine_output,
    apply_affine,
    invert_affine,
)
from .stats import Columns, NonFiniteError, block_rows, on_row_blocks

__all__ = ["AffineMap", "BatchMap", "KeyMap", "ValueMap", "on_threads", "params_at"]


class ValueMap(Protocol):
    """``fn(values, positions, part) -> scaled values`` (see the module docstring)."""

    def __call__(self, values: np.ndarray, positions: np.ndarray, part: Any = None) -> np.ndarray: ...


def params_at(params: Affine, positions: np.ndarray) -> Affine:
    """``params`` at ``positions``; the identity map where a position is -1."""
    passthrough = positions < 0
    picked = params.take(np.maximum(positions, 0))
    if not passthrough.any():
        return picked
    identity = {"center": 0.0, "scale": 1.0, "offset": 0.0, "lo": -np.inf, "hi": np.inf}
    return Affine(**{k: np.where(passthrough, identity[k], getattr(picked, k)) for k in _AFFINE_FIELDS})


def _named_inf(err: NonFiniteError, names: tuple[Any, ...], positions: np.ndarray) -> NonFiniteError:
    """The error of a block, its columns named by the fitted features' names."""
    return NonFiniteError(err.positions, [names[positions[p]] if positions[p] >= 0 else p for p in err.positions])


@dataclass(frozen=True, eq=False)
class AffineMap:
    """Apply (or invert) fixed per-feature parameters; an infinity in the input is an error."""

    params: Affine
    names: tuple[Any, ...]
    inverse: bool = False

    @property
    def reads_columns(self) -> bool:
        """Whether ``values`` may be a table's :class:`~scalepipe.stats.Columns` (read in place)."""
        return not self.inverse

    def __call__(
        self, values: np.ndarray | Columns, positions: np.ndarray, part: Any = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        p = params_at(self.params, positions)
        if self.inverse:
            return invert_affine(values, p)
        try:
            return apply_affine(values, p, out, reject_inf=positions >= 0)  # passthrough columns may hold inf
        except NonFiniteError as err:
            raise _named_inf(err, self.names, positions) from None


@dataclass(frozen=True, eq=False)
class ThreadedMap:
    """An :class:`AffineMap` applied to row blocks of in-memory data on threads.

    Each row's result depends only on that row, so the blocks are independent;
    they are written into one output (allocated here, or the caller's ``out``),
    whose pages the threads also fault in in parallel. The kernels release the
    GIL. Not for Dask tasks, whose scheduler already runs blocks in parallel.
    """

    fn: AffineMap

    @property
    def reads_columns(self) -> bool:
        """Whether ``values`` may be a table's :class:`~scalepipe.stats.Columns` (as for :class:`AffineMap`)."""
        return self.fn.reads_columns

    def __call__(
        self, values: np.ndarray | Columns, positions: np.ndarray, part: Any = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        n, f = values.shape
        if out is None:
            out = affine_output(values)
        rows = block_rows(f)
        if n <= rows:
            return self.fn(values, positions, part, out)
        on_row_blocks(lambda a: self.fn(values[a : a + rows], positions, None, out[a : a + rows]), n, rows)
        return out


def on_threads(fn: ValueMap) -> ValueMap:
    """``fn`` run on threads over row blocks where its rows are independent (see :class:`ThreadedMap`)."""
    return ThreadedMap(fn) if isinstance(fn, AffineMap) and not fn.inverse else fn


@dataclass(frozen=True, eq=False)
class BatchMap:
    """Scale each batch with its own statistics (partition scope, training mode)."""

    rules: RuleSet
    batch_rows: int | None
    min_batch_rows: int = 1

    def __call__(self, values: np.ndarray, positions: np.ndarray, part: Any = None) -> np.ndarray:
        fitted = positions >= 0
        out = np.array(values, dtype=values.dtype if values.dtype.kind == "f" else np.float64)
        pos = positions[fitted]
        names = [self.rules.names[p] for p in pos]
        out[:, fitted] = scale_batches(
            out[:, fitted], self.batch_rows, lambda m: self.rules.params(m, pos, allow_empty=True), names, self.min_batch_rows
        )
        return out


def key_positions(keys: Any, column: Any) -> np.ndarray:
    """Each row's position among the fitted ``keys`` (a pandas Index), -1 where not found.

    Exact: a float key matches an integer key only when it is that integer
    (pandas would compare them as floats, so ``2.0**53`` would find a
    fitted ``2**53 + 1``). Keys of another type are not found (pandas finds
    ``1`` for a fitted ``True``), except numbers against text keys (a CSV's:
    its key column is read as text), matched by their decimal text: ``3``
    finds the key ``"3"``, not ``"03"``.
    """
    fitted, given = keys_family(keys), keys_family(column)
    if fitted == "text" and given in ("integer", "float"):
        return _by_text(keys, column)
    if fitted == "integer" and given == "text":
        return _by_number(keys, column)
    if (fitted is None) != (given is None) or (fitted is not None and given is not None and not _compatible(fitted, given)):
        return np.full(len(column), -1, dtype=np.intp)  # keys of another type (dates for text, text for dates)
    if given == "mixed" and fitted in _KIN:  # Python objects of several types: each found among keys of its own
        wanted = _KIN[fitted]
        kin = np.fromiter((isinstance(v, wanted) and not _wrong_bool(v, wanted) for v in column.to_numpy()), bool, len(column))
        found = np.full(len(column), -1, dtype=np.intp)
        found[kin] = keys.get_indexer(column[kin])
        return found
    if keys.dtype.kind == "f" and column.dtype.kind in "iu":  # an integer finds a float key only when it is that float
        integer = np.uint64 if column.dtype.kind == "u" else np.int64
        values = column.to_numpy(dtype=integer, na_value=0)  # nullable integers exactly (not through float64)
        as_float = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            exact = (as_float.astype(integer) == values) & ~column.isna().to_numpy()
        found = np.full(len(values), -1, dtype=np.intp)
        found[exact] = keys.get_indexer(as_float[exact])
        return found
    if keys.dtype.kind in "iu" and column.dtype.kind == "f":
        unsigned = keys.dtype.kind == "u"
        target, lo, hi = (np.uint64, 0.0, 2.0**64) if unsigned else (np.int64, -(2.0**63), 2.0**63)
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = (values == np.floor(values)) & (values >= lo) & (values < hi)
        found = np.full(len(values), -1, dtype=np.intp)
        found[whole] = keys.get_indexer(values[whole].astype(target))
        return found
    return keys.get_indexer(column)


#: The Python types of the keys of each family (numbers match numbers of the other kind only when equal).
_KIN: dict[str, tuple[type, ...]] = {
    "integer": (int, np.integer, float, np.floating),
    "float": (int, np.integer, float, np.floating),
    "boolean": (bool, np.bool_),
    "text": (str,),
}


def _wrong_bool(value: object, wanted: tuple[type, ...]) -> bool:
    """A boolean where numbers are wanted (``bool`` is an ``int`` to Python)."""
    return isinstance(value, (bool, np.bool_)) and bool not in wanted


def _compatible(fitted: str, given: str) -> bool:
    numbers = ("integer", "float")
    return given == "mixed" or fitted == given or (fitted in numbers and given in numbers)


def _by_text(keys: Any, column: Any) -> np.ndarray:
    """Positions of a numeric ``column``'s values among text ``keys``, by their decimal text (integral floats as integers)."""
    if column.dtype.kind in "iu" or keys_family(column) == "integer":  # Python ints beyond 2**53 too, not through float64
        text = np.array([None if pd.isna(v) else str(int(v)) for v in column.to_numpy(dtype=object)], dtype=object)
    else:  # integral floats as integers (1e20 as its 21 digits), others as their dtype's shortest text (float32 0.1 as 0.1)
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        native = column.to_numpy() if isinstance(column.dtype, np.dtype) else values
        text = np.array(
            [None if v != v else str(int(v)) if v.is_integer() else str(n) for v, n in zip(values.tolist(), native, strict=True)],
            dtype=object,
        )
    found = keys.get_indexer(pd.Index(text, dtype=object))
    return np.where(pd.isna(text), -1, found)


def _by_number(keys: Any, column: Any) -> np.ndarray:
    """Positions of a text ``column``'s values among integer ``keys``: ``"7"``, ``"+7"`` and ``"7.0"`` find ``7``, exactly.

    A CSV's key column read as text for statistics keyed by integers (fitted
    from Parquet, say): read as float64, an ID beyond 2**53 was rounded onto
    another fitted key.
    """
    numbers = []
    for text in column.to_numpy(dtype=object, na_value=None):
        value = None
        if isinstance(text, str):
            text = text.strip()
            if INTEGER_TEXT.fullmatch(text):
                value = int(text)
            else:
                with contextlib.suppress(ValueError):
                    number = float(text)
                    value = int(number) if number.is_integer() and abs(number) <= 2**53 else None
        numbers.append(value)
    found = keys.get_indexer(pd.Index(numbers, dtype=object))
    return np.where([v is None for v in numbers], -1, found)



def unseen_mask(keys: Any, column: Any) -> np.ndarray:
    """Rows of ``column`` (a pandas Series) whose key is not among the fitted ``keys`` (a pandas Index).

    The lookup :class:`KeyMap` scales by (:func:`key_positions`), so a key of
    another type (``1`` for a fitted ``True``) is unseen. A missing key is
    not: such rows were in the fit too (in the global statistics, in no key's).
    """
    return (key_positions(keys, column) < 0) & column.notna().to_numpy()


@dataclass(frozen=True, eq=False)
class KeyMap:
    """Scale each row with its key's parameters; unseen keys use the global ones.

    Parameters
    ----------
    key
        The key column of each partition.
    keys
        The fitted keys (a pandas Index).
    per_key
        Parameters shaped ``(len(keys), n_features)``.
    fallback
        The global parameters, shaped ``(n_features,)``.
    names
        The fitted features' names, to name a column holding an infinity.
    inverse
        Invert instead of apply.
    """

    key: Any
    keys: Any
    per_key: Affine
    fallback: Affine
    names: tuple[Any, ...]
    inverse: bool = False

    def rows(self, part: Any) -> np.ndarray:
        """Each row's index among the fitted keys (-1 where unseen or missing)."""
        return key_positions(self.keys, part[self.key])

    def __call__(self, values: np.ndarray, positions: np.ndarray, part: Any = None) -> np.ndarray:
        if part is None:
            raise TypeError("the key scope needs the partition's key column")
        idx = self.rows(part)
        seen = (idx >= 0)[:, None]
        safe = np.maximum(idx, 0)
        rowwise = Affine(
            **{
                k: np.where(seen, getattr(self.per_key, k)[safe][:, positions], getattr(self.fallback, k)[positions])
                for k in _AFFINE_FIELDS
            }
        )
        if self.inverse:
            return invert_affine(values, rowwise)
        try:
            return apply_affine(values, rowwise, reject_inf=True)
        except NonFiniteError as err:
            raise _named_inf(err, self.names, positions) from None
