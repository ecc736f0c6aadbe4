"""Dask orchestration of the statistics: one tree reduction, one compute.

Each chunk (a dask array block or a DataFrame partition) is read once by
:func:`~scalepipe.stats.chunk_moments`; the partial results are merged with
:func:`~scalepipe.stats.tree_reduce`, whose tree depends only on the number and
order of chunks, so the statistics are bit-identical whichever worker finishes
first and however many workers there are. The functions here build lazy
graphs; :func:`compute` evaluates any number of them with one ``dask.compute``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import dask
import numpy as np
from dask.delayed import Delayed

from .batches import batch_moments
from .frames import column_arrays, float_values, map_columns
from .groups import KeyTable, key_moments, merge_all_tables
from .maps import ValueMap
from .stats import ExactMoments, Moments, chunk_moments, merge_all, tree_reduce

__all__ = [
    "array_batch_moments",
    "array_moments",
    "compute",
    "frame_batch_moments",
    "frame_key_moments",
    "frame_moments",
    "transform_array",
    "transform_frame",
]

_merge = dask.delayed(merge_all, pure=True)


def _active_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute(*lazy: Delayed) -> tuple[Any, ...]:
    """Evaluate the lazy statistics together: every chunk is read once.

    With ``dask.config`` ``scalepipe.progress`` true and a distributed client
    active, a progress bar follows the work.
    """
    client = _active_client() if dask.config.get("scalepipe.progress", False) else None
    if client is None:
        return dask.compute(*lazy)
    from distributed import progress

    futures = client.compute(list(lazy))
    progress(futures)
    return tuple(client.gather(futures))


def _frame_block_moments(df: Any, columns: list[str], exact: bool) -> Moments | ExactMoments:
    return chunk_moments(column_arrays(df, columns), columns, exact)


def frame_moments(frame: Any, columns: Sequence[str], exact: bool = False) -> Delayed:
    """Lazy :class:`Moments` of ``columns`` of a dask DataFrame (one per column).

    With ``exact``, :class:`ExactMoments` (exact sums beside the moments).
    """
    columns = list(columns)
    parts = [
        dask.delayed(_frame_block_moments, pure=True)(part, columns, exact)
        for part in frame[columns].to_delayed()
    ]
    if not parts:
        return dask.delayed(Moments.empty)(len(columns))
    return tree_reduce(parts, _merge)


def _nd_block_moments(block: np.ndarray, n_reduce: int, names: np.ndarray, exact: bool) -> Moments | ExactMoments:
    other = block.shape[n_reduce:]
    rows = int(np.prod(block.shape[:n_reduce], dtype=np.int64))
    flat = np.reshape(block, (rows, int(np.prod(other, dtype=np.int64))))
    return chunk_moments(flat, list(names.ravel()), exact).reshape(other)


def _assemble(parts: list[Any], slices: list[tuple[slice, ...]], shape: tuple[int, ...]) -> Any:
    if len(parts) == 1:
        return parts[0]
    full = Moments.empty(shape).to_dict()
    for part, where in zip(parts, slices):
        for name, values in part.to_dict().items():
            full[name][where] = values
    return Moments(**full)


def _block_slices(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[slice, ...]]:
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    return [
        tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, idx))
        for idx in product(*(range(len(c)) for c in chunks))
    ]


def array_moments(x: Any, reduce_axes: Sequence[int], names: np.ndarray, exact: bool = False) -> Delayed:
    """Lazy :class:`Moments` of a dask array reduced over ``reduce_axes``.

    Parameters
    ----------
    x : dask.array.Array
        Any chunking.
    reduce_axes
        The axes to reduce over (``(0,)`` for a rows x features table).
    names : ndarray
        Feature names, shaped as the remaining axes (for error messages).
    exact : bool
        Also accumulate exact sums; the remaining axes are then joined into
        one block (exact sums are assembled whole).

    Returns
    -------
    Delayed
        Evaluates to :class:`Moments` (or :class:`ExactMoments`) shaped as
        the remaining axes, in their order.
    """
    reduce_axes = tuple(reduce_axes)
    other_axes = tuple(a for a in range(x.ndim) if a not in reduce_axes)
    xt = x.transpose(reduce_axes + other_axes)
    n_reduce = len(reduce_axes)
    if exact and any(n > 1 for n in xt.numblocks[n_reduce:]):
        xt = xt.rechunk({i: -1 for i in range(n_reduce, xt.ndim)})
    blocks = xt.to_delayed()
    reduce_grid = list(product(*(range(n) for n in xt.numblocks[:n_reduce])))
    other_chunks = xt.chunks[n_reduce:]
    other_grid = list(product(*(range(n) for n in xt.numblocks[n_reduce:])))
    slices = _block_slices(other_chunks)
    merged = []
    for o, where in zip(other_grid, slices):
        block_names = np.asarray(names[where], dtype=object)
        parts = [
            dask.delayed(_nd_block_moments, pure=True)(blocks[r + o], n_reduce, block_names, exact)
            for r in reduce_grid
        ]
        merged.append(tree_reduce(parts, _merge))
    shape = tuple(sum(c) for c in other_chunks)
    return dask.delayed(_assemble, pure=True)(merged, slices, shape)


def _frame_block_transform(df: Any, columns: list[str], fn: ValueMap) -> Any:
    return map_columns(df, columns, fn)


def transform_frame(frame: Any, columns: Sequence[str], fn: ValueMap) -> Any:
    """Lazily map ``columns`` of a dask DataFrame with ``fn``, partition by partition.

    The parameters travel inside ``fn`` as numpy vectors and are applied per
    partition (aligning a dask frame with a pandas Series would align on rows).
    """
    columns = list(columns)
    meta = _frame_block_transform(frame._meta, columns, fn)
    return frame.map_partitions(_frame_block_transform, columns, fn, meta=meta)


def _nd_block_transform(
    block: np.ndarray, fn: ValueMap, n_reduce: int, positions: np.ndarray, block_info: dict | None = None
) -> np.ndarray:
    location = block_info[0]["array-location"][n_reduce:] if block_info else [(0, s) for s in block.shape[n_reduce:]]
    where = tuple(slice(a, b) for a, b in location)
    other = block.shape[n_reduce:]
    rows = int(np.prod(block.shape[:n_reduce], dtype=np.int64))
    flat = np.reshape(block, (rows, int(np.prod(other, dtype=np.int64))))
    return fn(flat, np.reshape(positions[where], -1), None).reshape(block.shape)


def transform_array(x: Any, reduce_axes: Sequence[int], fn: ValueMap, positions: np.ndarray) -> Any:
    """Lazily map a dask array block by block with ``fn``; chunks are kept.

    ``positions`` is shaped as the non-reduced axes (in their order): each
    feature's index among the fitted ones, -1 where it passes through.
    """
    reduce_axes = tuple(reduce_axes)
    other_axes = tuple(a for a in range(x.ndim) if a not in reduce_axes)
    perm = reduce_axes + other_axes
    xt = x.transpose(perm)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    out = xt.map_blocks(_nd_block_transform, fn, len(reduce_axes), positions, dtype=dtype)
    return out.transpose(tuple(int(a) for a in np.argsort(perm)))


def _frame_block_batches(df: Any, columns: list[str], batch_rows: int | None) -> Moments:
    return batch_moments(float_values(df, columns), batch_rows, columns)


def frame_batch_moments(frame: Any, columns: Sequence[str], batch_rows: int | None) -> list[Delayed]:
    """Lazy per-batch statistics of each partition, in partition order.

    Each item evaluates to :class:`Moments` of shape ``(n_batches, n_columns)``.
    """
    columns = list(columns)
    return [
        dask.delayed(_frame_block_batches, pure=True)(part, columns, batch_rows)
        for part in frame[columns].to_delayed()
    ]


def _nd_block_batches(
    block: np.ndarray, n_reduce: int, names: list[Any], batch_rows: int | None, positions: np.ndarray
) -> Moments:
    rows = int(np.prod(block.shape[:n_reduce], dtype=np.int64))
    cells = int(np.prod(block.shape[n_reduce:], dtype=np.int64))  # not -1: an empty block has no shape to infer
    flat = np.reshape(block, (rows, cells))[:, positions]
    return batch_moments(flat, batch_rows, names)


def array_batch_moments(
    x: Any, reduce_axes: Sequence[int], names: np.ndarray, batch_rows: int | None, positions: np.ndarray
) -> list[Delayed]:
    """Lazy per-batch statistics of each block along the reduced axes, in C order.

    Each item evaluates to :class:`Moments` of shape ``(n_batches, len(positions))``;
    ``positions`` picks features from the flattened non-reduced axes, whose
    blocks are joined first (batch statistics need whole rows).
    """
    reduce_axes = tuple(reduce_axes)
    other_axes = tuple(a for a in range(x.ndim) if a not in reduce_axes)
    xt = x.transpose(reduce_axes + other_axes)
    n_reduce = len(reduce_axes)
    if any(n > 1 for n in xt.numblocks[n_reduce:]):
        xt = xt.rechunk({i: -1 for i in range(n_reduce, xt.ndim)})
    blocks = xt.to_delayed()
    picked = [np.ravel(names)[p] for p in positions]
    tail = (0,) * (xt.ndim - n_reduce)
    return [
        dask.delayed(_nd_block_batches, pure=True)(blocks[r + tail], n_reduce, picked, batch_rows, positions)
        for r in product(*(range(n) for n in xt.numblocks[:n_reduce]))
    ]


def _frame_block_keys(df: Any, columns: list[str], key: Any) -> tuple[Moments, KeyTable]:
    values = float_values(df, columns)
    return chunk_moments(values, columns), key_moments(df[key], values, columns)


def _merge_keyed(parts: list[tuple[Moments, KeyTable]]) -> tuple[Moments, KeyTable]:
    return merge_all([p[0] for p in parts]), merge_all_tables([p[1] for p in parts])


def frame_key_moments(frame: Any, columns: Sequence[str], key: Any) -> Delayed:
    """Lazy global :class:`Moments` and per-key :class:`KeyTable` of a dask DataFrame.

    One task per partition computes both; a fixed tree merges them. No
    shuffle: only the (small) per-key tables travel.
    """
    columns = list(columns)
    parts = [
        dask.delayed(_frame_block_keys, pure=True)(part, columns, key)
        for part in frame[[*columns, key]].to_delayed()
    ]
    return tree_reduce(parts, dask.delayed(_merge_keyed, pure=True))
