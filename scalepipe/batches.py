"""Partition scope (batch normalization in training mode): numpy kernels.

Each partition is split into consecutive batches of ``batch_rows`` rows (the
last may be shorter; ``None`` is one batch per partition). Every batch is
scaled with its own statistics, and the batches' statistics, in partition
order, feed PyTorch-style running statistics for inference::

    running = (1 - momentum) * running + momentum * batch

starting from mean 0 and variance 1, with the *unbiased* batch variance in the
running variance (normalization itself uses the biased one), and
``momentum=None`` meaning the cumulative average, as ``torch.nn.BatchNorm1d``.

This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .methods import Affine, apply_affine
from .stats import Moments, chunk_moments

__all__ = ["Running", "batch_bounds", "batch_moments", "check_batch_rows", "running_stats", "scale_batches"]


def batch_bounds(n_rows: int, batch_rows: int | None) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch of a partition of ``n_rows`` rows; none for an empty partition.

    (An empty partition, such as a CSV block that holds no row, has no batch.)
    """
    if batch_rows is None:
        return [(0, n_rows)] if n_rows else []
    return [(a, min(a + batch_rows, n_rows)) for a in range(0, n_rows, batch_rows)]


def batch_moments(x: np.ndarray, batch_rows: int | None, names: Sequence[object] | None = None) -> Moments:
    """Statistics of each batch of ``x`` (rows x features): shape ``(n_batches, n_features)``."""
    bounds = batch_bounds(len(x), batch_rows)
    if not bounds:
        return Moments.empty((0, x.shape[1]))
    return Moments.stack([chunk_moments(x[a:b], names) for a, b in bounds])


def check_batch_rows(batches: Moments, min_rows: int, labels: Sequence[str]) -> None:
    """Reject a batch with fewer than ``min_rows`` rows; its variance would be meaningless.

    ``labels[i]`` names batch ``i`` (its partition's file and the batch number).
    """
    rows = batches.count[:, 0] + batches.nan_count[:, 0] if batches.count.ndim == 2 else batches.count
    small = np.flatnonzero(rows < min_rows)
    if small.size:
        i = int(small[0])
        raise DataError(
            f"{labels[i]}: a batch of {int(rows[i])} row(s) is smaller than stats.min_batch_rows={min_rows}; "
            "batch statistics need more rows (choose another batch_rows or repartition the input)"
        )


@dataclass(frozen=True)
class Running:
    """PyTorch-convention running statistics after ``num_batches`` batches."""

    mean: np.ndarray
    var: np.ndarray
    num_batches: int


def running_stats(batches: Moments, momentum: np.ndarray, start: Running | None = None) -> Running:
    """Fold batch statistics (rows in partition order) into running statistics.

    Parameters
    ----------
    batches
        Shape ``(n_batches, n_features)``.
    momentum
        Per feature; NaN means ``None`` (cumulative average).
    start
        Running statistics to continue from (``partial_fit``); default mean 0, var 1.

    Notes
    -----
    A batch whose column is all NaN leaves that column's running values as they are.
    """
    n_features = batches.count.shape[-1]
    mean = np.zeros(n_features) if start is None else start.mean.copy()
    var = np.ones(n_features) if start is None else start.var.copy()
    tracked = 0 if start is None else start.num_batches
    cumulative = np.isnan(momentum)
    for i in range(batches.count.shape[0]):
        tracked += 1
        b = batches.row(i)
        with np.errstate(invalid="ignore", divide="ignore"):
            unbiased = np.where(b.count > 1, b.m2 / np.maximum(b.count - 1, 1), b.m2 * 0.0)
        factor = np.where(cumulative, 1.0 / tracked, momentum)
        seen = b.count > 0
        mean = np.where(seen, (1 - factor) * mean + factor * b.mean, mean)
        var = np.where(seen, (1 - factor) * var + factor * unbiased, var)
    return Running(mean, var, tracked)


def scale_batches(
    x: np.ndarray,
    batch_rows: int | None,
    params_of: Callable[[Moments], Affine],
    names: Sequence[object] | None = None,
    min_rows: int = 1,
) -> np.ndarray:
    """Scale each batch of ``x`` with the parameters of its own statistics (training mode).

    Raises
    ------
    DataError
        A batch has fewer than ``min_rows`` rows (as a fit refuses it).
    """
    out = np.empty(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    for a, b in batch_bounds(len(x), batch_rows):
        if b - a < min_rows:
            raise DataError(
                f"rows {a} to {b - 1} of a partition: a batch of {b - a} row(s) is smaller than min_batch_rows={min_rows}; "
                "batch statistics need more rows (choose another batch_rows or repartition the data)"
            )
        piece = x[a:b]
        out[a:b] = apply_affine(piece, params_of(chunk_moments(piece, names)))
    return out
