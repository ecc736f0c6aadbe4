"""Recycled output buffers: the memory of a freed array is reused, never that of a live one."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from scalepipe import buffers

BIG = (300_000, 7)  # 16.8 MB of float64: recycled


@pytest.fixture(autouse=True)
def _no_idle_blocks():
    buffers._idle.clear()
    yield
    buffers._idle.clear()


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [BIG, (10, 3), (0, 5), (4_000_000,)])
def test_empty_is_numpy_empty(shape, dtype, order):
    a = buffers.empty(shape, dtype, order)
    ref = np.empty(shape, dtype, order)
    assert a.shape == ref.shape and a.dtype == ref.dtype and a.strides == ref.strides
    assert a.flags.writeable and a.flags.aligned
    a[...] = np.arange(a.size, dtype=dtype).reshape(shape, order=order)
    assert np.array_equal(a.ravel(order="K"), np.arange(a.size, dtype=dtype))


def test_memory_of_a_freed_array_is_reused():
    a = buffers.empty(BIG, order="F")
    address = a.ctypes.data
    del a
    b = buffers.empty((BIG[0] - 10, BIG[1]), order="C")  # the same rounded size
    assert b.ctypes.data == address


def test_live_arrays_and_their_views_keep_their_memory():
    a = buffers.empty(BIG)
    a[...] = 1.0
    column = a[:, 3]  # a view keeps the block
    arrow = pa.array(np.ascontiguousarray(buffers.empty((BIG[0],))))  # Arrow's zero-copy reference
    before = arrow.to_numpy().copy()
    del a
    gc.collect()
    others = [buffers.empty(BIG) for _ in range(3)] + [buffers.empty((BIG[0],)) for _ in range(3)]
    for other in others:
        other[...] = -7.0
        assert not np.shares_memory(other, column)
    assert (column == 1.0).all()
    assert np.array_equal(arrow.to_numpy(), before, equal_nan=True)


def test_idle_memory_is_bounded():
    arrays = [buffers.empty((2 << 20,)) for _ in range(buffers.MAX_IDLE + 3)]  # 16 MB each
    del arrays
    assert len(buffers._idle) == buffers.MAX_IDLE
    huge = buffers.empty((buffers.MAX_IDLE_BYTES // 8 + 1,))
    del huge
    assert sum(m.nbytes for m, _ in buffers._idle) <= buffers.MAX_IDLE_BYTES
    assert len(buffers._idle) == buffers.MAX_IDLE


def test_idle_memory_is_freed_after_a_while(monkeypatch):
    """A process that stops transforming kept up to 256 MiB of idle blocks for good."""
    monkeypatch.setattr(buffers, "IDLE_SECONDS", 0.2)
    a = buffers.empty(BIG)
    del a
    assert len(buffers._idle) == 1
    deadline = time.monotonic() + 10
    while buffers._idle and time.monotonic() < deadline:
        time.sleep(0.05)
    assert buffers._idle == [] and buffers._janitor is None
    kept = buffers.empty(BIG)  # and the next transform starts afresh
    assert kept.flags.writeable


def test_threads_never_share_a_live_block():
    failures = []

    def work(k: int) -> None:
        for i in range(40):
            a = buffers.empty(BIG if i % 2 else (BIG[0] + 1000, BIG[1]), order="F")
            a[...] = k
            if not (a == k).all():
                failures.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_a_process_holding_a_result_exits():
    """A result alive at exit was freed during finalization, which started
    the idle timer's thread: the interpreter never exited."""
    import subprocess
    import sys

    script = (
        "import numpy as np, scalepipe as sp\n"
        "x = np.arange(400_000.0).reshape(-1, 2)\n"
        "scaled = sp.fit(x).transform(x)\n"  # 3.2 MB: recycled memory, alive at exit
        "cycle = [scaled]; cycle.append(cycle)\n"  # and one freed by the last collection
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
