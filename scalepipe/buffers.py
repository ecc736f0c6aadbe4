"""Recycled output buffers: arrays whose memory pages are already in place.

A transform writes each partition into a new array. The operating system
hands a large new allocation out as untouched pages, and the first write to
each page costs a page fault and the zeroing of the page: for a 40 MB
partition, about as much time as the transform's sweep itself. :func:`empty`
gives arrays backed by memory an earlier array released: when the last view
of one is freed (the written partition, an Arrow table, a user's result),
its memory returns to a small idle list, from which the next array of the
same size is cut. Memory idle for :data:`IDLE_SECONDS` is freed (a daemon
timer runs while any is idle), so a process that stops transforming does
not keep it. Small arrays come from numpy as usual (its allocator already
reuses them).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["empty"]

#: Arrays smaller than this come from numpy (malloc reuses small blocks itself).
MIN_BYTES = 1 << 20
#: Sizes are rounded up to this (a huge page), so partitions of nearly the same size share memory.
GRAIN = 1 << 21
#: At most this many released blocks, of at most this many bytes together, are kept idle (the oldest go first).
MAX_IDLE = 4
MAX_IDLE_BYTES = 256 << 20
#: A released block not reused within this many seconds is freed (partitions follow each other far faster).
IDLE_SECONDS = 1.0

_idle: list[tuple[np.ndarray, float]] = []  # (memory, when released), oldest first
# reentrant: a garbage collection run inside the lock may release a block (``_Lease.__del__``)
_lock = threading.RLock()
_janitor: threading.Timer | None = None
_closing = False  # the interpreter is exiting: no new timer (starting a thread then hangs the exit)


def _take(nbytes: int) -> np.ndarray:
    with _lock:
        for i in range(len(_idle) - 1, -1, -1):
            if _idle[i][0].nbytes == nbytes:
                return _idle.pop(i)[0]
    return np.empty(nbytes, dtype=np.uint8)


def _give_back(memory: np.ndarray) -> None:
    if memory.nbytes > MAX_IDLE_BYTES or _closing or sys.is_finalizing():
        return  # freed now
    with _lock:
        _idle.append((memory, time.monotonic()))
        while len(_idle) > MAX_IDLE or sum(m.nbytes for m, _ in _idle) > MAX_IDLE_BYTES:
            del _idle[0]
        _watch()


def _watch() -> None:
    """Start the timer that frees idle memory, unless it runs (called with the lock held)."""
    global _janitor
    if _janitor is None and _idle:
        _janitor = threading.Timer(IDLE_SECONDS, _free_old)
        _janitor.daemon = True
        _janitor.start()


@atexit.register
def _close() -> None:
    """At exit: free the idle blocks and stop watching (a result freed later, at finalization, is freed at once)."""
    global _closing, _janitor
    with _lock:
        _closing = True
        _idle.clear()
        if _janitor is not None:
            _janitor.cancel()
            _janitor = None


def _after_fork() -> None:
    """In a forked child: the parent's timer thread is not there, nor should its idle blocks be."""
    global _janitor, _lock
    _lock = threading.RLock()
    _janitor = None
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _free_old() -> None:
    """Free the blocks idle for :data:`IDLE_SECONDS`; watch on while others are idle."""
    global _janitor
    with _lock:
        _janitor = None
        now = time.monotonic()
        _idle[:] = [(m, t) for m, t in _idle if now - t < IDLE_SECONDS]
        _watch()


class _Lease:
    """Owner of one memory block lent to an array; the block returns to the idle list with it."""

    __slots__ = ("__array_interface__", "_memory")

    def __init__(self, memory: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, strides: tuple[int, ...]) -> None:
        self._memory = memory
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (memory.ctypes.data, False),
            "strides": strides,
            "version": 3,
        }

    def __del__(self) -> None:
        try:
            _give_back(self._memory)
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone; the memory is freed anyway
            pass


def empty(shape: tuple[int, ...], dtype: Any = np.float64, order: str = "C") -> np.ndarray:
    """An uninitialized writable array, as :func:`numpy.empty`, from recycled memory when large.

    Parameters
    ----------
    shape, dtype, order
        As for :func:`numpy.empty` (``order`` ``"C"`` or ``"F"``).

    Examples
    --------
    >>> a = empty((1000, 300), order="F")
    >>> a.shape, a.flags.f_contiguous, a.flags.writeable
    ((1000, 300), True, True)
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES or dtype.hasobject:
        return np.empty(shape, dtype=dtype, order=order)
    memory = _take(-(-nbytes // GRAIN) * GRAIN)
    return np.asarray(_Lease(memory, shape, dtype, _strides(shape, dtype, order)))


def _strides(shape: tuple[int, ...], dtype: np.dtype, order: str) -> tuple[int, ...]:
    step = dtype.itemsize
    strides = []
    dims = shape if order == "F" else shape[::-1]
    for size in dims:
        strides.append(step)
        step *= size
    return tuple(strides) if order == "F" else tuple(strides[::-1])
