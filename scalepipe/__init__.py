"""scalepipe: exact, one-pass feature scaling for datasets larger than one machine.

>>> import numpy as np, scalepipe as sp
>>> model = sp.fit(np.array([[0.0], [4.0]]), scalers=[sp.MinMax(feature_range=(-1, 1))])
>>> model.transform(np.array([[2.0]])).tolist()
[[0.0]]

Importing scalepipe imports nothing heavy: each public name loads its module
on first use (so ``scalepipe --help`` starts fast), and a saved model scales
data with numpy and pandas alone, never Dask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ArtifactError": "errors",
    "ClusterError": "errors",
    "ColumnError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
    "ParameterError": "errors",
    "ScalepipeError": "errors",
    "METHODS": "methods",
    "BatchNorm": "methods",
    "Decimal": "methods",
    "MinMax": "methods",
    "Scaler": "methods",
    "ZScore": "methods",
    "Model": "model",
    "Scope": "model",
    "fit": "model",
    "load": "model",
    "Moments": "stats",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from .errors import (
        ArtifactError,
        ClusterError,
        ColumnError,
        ConfigError,
        DataError,
        InputError,
        OutputError,
        ParameterError,
        ScalepipeError,
    )
    from .methods import METHODS, BatchNorm, Decimal, MinMax, Scaler, ZScore
    from .model import Model, Scope, fit, load
    from .stats import Moments


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalepipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
