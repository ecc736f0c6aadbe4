"""Optional numba kernels: loaded once, skipped when numba is missing or disabled.

Set the environment variable ``SCALEPIPE_NO_NUMBA=1`` to force the pure numpy
kernels (the fallback and the test reference); it is read at each call.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import cache
from types import ModuleType


@cache
def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f".{name}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name not in ("numba", "llvmlite"):
            _warn(name, exc)
        return None  # numba not installed: the numpy kernels are the fallback
    except Exception as exc:  # numba installed but failing: say so, and fall back
        _warn(name, exc)
        return None


def _warn(name: str, exc: Exception) -> None:
    warnings.warn(
        f"scalepipe: the numba kernels ({name}) failed to load, the numpy kernels are used instead "
        f"(the same results to a few ulps, slower): {type(exc).__name__}: {exc}",
        RuntimeWarning,
        stacklevel=3,
    )


def numba_kernels(name: str) -> ModuleType | None:
    """The numba kernel module ``scalepipe.<name>``, or ``None`` to use numpy."""
    if os.environ.get("SCALEPIPE_NO_NUMBA", "").strip() not in ("", "0"):
        return None
    return _load(name)
