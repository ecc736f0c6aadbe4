"""Optional numba kernels: loaded once, skipped when numba is missing or disabled.

Set the environment variable ``SCALEPIPE_NO_NUMBA=1`` to force the pure numpy
kernels (the fallback and the test reference); it is read at each call.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType


@cache
def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f".{name}", __package__)
    except Exception:  # numba missing or broken: the numpy kernels are the fallback
        return None


def numba_kernels(name: str) -> ModuleType | None:
    """The numba kernel module ``scalepipe.<name>``, or ``None`` to use numpy."""
    if os.environ.get("SCALEPIPE_NO_NUMBA", "").strip() not in ("", "0"):
        return None
    return _load(name)
