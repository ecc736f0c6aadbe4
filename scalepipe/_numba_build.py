"""How the numba kernels are compiled: numba's vectorisers for some compilations only.

Importing this module fails without numba, as the kernel modules that use it do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from numba.core import config
from numba.core.compiler_lock import global_compiler_lock


@contextmanager
def slp_vectorised(loops: bool = True) -> Iterator[None]:
    """numba's SLP vectoriser on for the compilations inside the block only.

    It packs like scalar operations on neighbouring columns into vector ones
    (a kernel that keeps four columns' sums in registers: 3-4x faster);
    numba leaves it off by default for all code, as it once miscompiled
    some. It never reorders floating-point operations, and the tests compare
    the kernels with the numpy reference. ``loops=False`` also turns the loop
    vectoriser off, where it would vectorise a loop over rows (integer sums
    may be reordered) into strided loads before the SLP vectoriser sees the
    columns. Holding numba's compiler lock keeps other threads' compilations
    out of the block.
    """
    with global_compiler_lock:
        saved = config.SLP_VECTORIZE, config.LOOP_VECTORIZE
        config.SLP_VECTORIZE, config.LOOP_VECTORIZE = True, loops
        try:
            yield
        finally:
            config.SLP_VECTORIZE, config.LOOP_VECTORIZE = saved
