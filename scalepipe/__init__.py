"""scalepipe: exact, one-pass feature scaling for datasets larger than one machine.

>>> import numpy as np, scalepipe as sp
>>> model = sp.fit(np.array([[0.0], [4.0]]), scalers=[sp.MinMax(feature_range=(-1, 1))])
>>> model.transform(np.array([[2.0]])).tolist()
[[0.0]]

Importing scalepipe imports numpy (and pandas when a frame is handled), never
Dask: a saved model scales data in a plain process.
"""

from .errors import (
    ArtifactError,
    ColumnError,
    ConfigError,
    DataError,
    InputError,
    OutputError,
    ParameterError,
    ScalepipeError,
)
from .methods import METHODS, BatchNorm, Decimal, MinMax, Scaler, ZScore
from .model import Model, fit, load
from .stats import Moments

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ArtifactError",
    "BatchNorm",
    "ColumnError",
    "ConfigError",
    "DataError",
    "Decimal",
    "InputError",
    "MinMax",
    "Model",
    "Moments",
    "OutputError",
    "ParameterError",
    "ScalepipeError",
    "Scaler",
    "ZScore",
    "__version__",
    "fit",
    "load",
]
