"""What a transform does to a block of values: picklable maps shipped to workers.

A map is called as ``fn(values, positions, part)`` on one block:

* ``values``: rows x columns (numpy, any real dtype);
* ``positions``: for each column, its index among the model's fitted
  features, or -1 for a column that passes through (arrays only);
* ``part``: the block's pandas partition (tables) or ``None`` (arrays).

It returns the scaled values, float (float32 kept). The same maps run in a
plain process, in Dask tasks, and (later) on Spark executors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .batches import scale_batches
from .methods import _AFFINE_FIELDS, Affine, RuleSet, apply_affine, invert_affine

__all__ = ["AffineMap", "BatchMap", "ValueMap", "params_at"]


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


@dataclass(frozen=True, eq=False)
class AffineMap:
    """Apply (or invert) fixed per-feature parameters."""

    params: Affine
    inverse: bool = False

    def __call__(self, values: np.ndarray, positions: np.ndarray, part: Any = None) -> np.ndarray:
        p = params_at(self.params, positions)
        return invert_affine(values, p) if self.inverse else apply_affine(values, p)


@dataclass(frozen=True, eq=False)
class BatchMap:
    """Scale each batch with its own statistics (partition scope, training mode)."""

    rules: RuleSet
    batch_rows: int | None

    def __call__(self, values: np.ndarray, positions: np.ndarray, part: Any = None) -> np.ndarray:
        fitted = positions >= 0
        out = np.array(values, dtype=values.dtype if values.dtype.kind == "f" else np.float64)
        pos = positions[fitted]
        names = [self.rules.names[p] for p in pos]
        out[:, fitted] = scale_batches(
            out[:, fitted], self.batch_rows, lambda m: self.rules.params(m, pos, allow_empty=True), names
        )
        return out
