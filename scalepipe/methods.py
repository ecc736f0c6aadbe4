"""The four scaling methods: parameters from statistics, and their numpy kernels.

Every method is an affine map per feature,

    y = (x - center) * scale + offset        (then clipped to [lo, hi])

with the inverse ``x = (y - offset) / scale + center``. A method is a small
frozen description (its parameters and how to derive ``center``, ``spread``,
``gain`` and ``offset`` from :class:`~scalepipe.stats.Moments`), registered in
:data:`METHODS`; :func:`affine_params` turns that into the map and is the one
place where constant columns are handled, so every code path treats them alike.

This module imports numpy only.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal, get_args

import numpy as np

from . import buffers
from ._accel import numba_kernels
from .errors import DataError, ParameterError
from .stats import KERNEL_DTYPES, Columns, Moments, NonFiniteError

__all__ = [
    "METHODS",
    "Affine",
    "BatchNorm",
    "ConstantPolicy",
    "Decimal",
    "MinMax",
    "Scaler",
    "ZScore",
    "apply_affine",
    "decimal_exponent",
    "invert_affine",
    "scaler_from_dict",
]

ConstantPolicy = Literal["unit_scale", "zero", "passthrough", "error"]
CONSTANT_POLICIES: tuple[str, ...] = get_args(ConstantPolicy)

Column = str | int

_AFFINE_FIELDS = ("center", "scale", "offset", "lo", "hi")


@dataclass(frozen=True, eq=False)
class Affine:
    """Per-feature affine map ``clip((x - center) * scale + offset, lo, hi)``.

    All fields are float64 arrays of one shape; ``lo``/``hi`` are ``-inf``/``inf``
    where no clipping applies.
    """

    center: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def concat(cls, parts: Sequence[Affine]) -> Affine:
        """Join the maps of disjoint feature sets."""
        return cls(*(np.concatenate([getattr(p, k) for p in parts], axis=-1) for k in _AFFINE_FIELDS))

    def take(self, index: Sequence[int] | np.ndarray) -> Affine:
        """The maps of the features at ``index`` (the last axis)."""
        return Affine(*(np.take(getattr(self, k), index, axis=-1) for k in _AFFINE_FIELDS))


@dataclass(frozen=True)
class Scaler(abc.ABC):
    """A scaling rule: which columns, which method, with which parameters.

    Parameters
    ----------
    columns
        Column names or glob patterns (``"px_*"``), positions for arrays, or
        ``None`` for every numeric column not matched by an earlier rule.
    constant_policy
        What a constant column becomes (its range within 4 ulps of its
        magnitude): ``"unit_scale"`` (default, as scikit-learn: the spread is
        taken as 1), ``"zero"`` (output 0.0), ``"passthrough"`` (output = input)
        or ``"error"``.
    """

    method: ClassVar[str]
    #: Whether the method divides by the column's spread, which is 0 for a
    #: constant column (and so what ``unit_scale`` replaces by 1).
    divides_by_spread: ClassVar[bool] = True
    #: Whether the spread is a standard deviation (its squared deviations can overflow first).
    spread_from_variance: ClassVar[bool] = False
    #: Booleans among the fields, checked as such (a string such as "no" is not false).
    _FLAGS: ClassVar[tuple[str, ...]] = ()

    columns: Sequence[Column] | None = None
    constant_policy: ConstantPolicy = "unit_scale"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # numpy scalars (np.where's positions, np.float32 gammas) as Python ones
            object.__setattr__(self, f.name, plain(getattr(self, f.name)))
        if isinstance(self.columns, (str, int)):
            object.__setattr__(self, "columns", (self.columns,))
        elif self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
            if not self.columns:
                raise ParameterError("columns", "an empty list matches nothing; use null for all numeric columns")
        if self.columns is not None and any(isinstance(c, (bool, np.bool_)) for c in self.columns):
            # True is 1 to Python: it selected column 1
            raise ParameterError("columns", f"{list(self.columns)!r} holds a boolean; name the columns (or give their positions)")
        if self.constant_policy not in CONSTANT_POLICIES:
            raise ParameterError(
                "constant_policy",
                f"{self.constant_policy!r} is not one of {', '.join(map(repr, CONSTANT_POLICIES))}",
            )
        for name in self._FLAGS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ParameterError(name, f"must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))

    def min_count(self) -> int:
        """The fewest non-missing values a column needs for the parameters to exist."""
        return 1

    def scale_of(self, gain: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """The map's scale from :meth:`components`' gain and spread: ``gain / spread``, rounded once."""
        return gain / spread

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain data (``method`` first), for configs and artifacts."""
        d = asdict(self)
        d["columns"] = list(self.columns) if self.columns is not None else None
        return {"method": self.method, **{k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}}

    @abc.abstractmethod
    def components(self, m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``center, spread, gain, offset`` with ``y = (x - center) / spread * gain + offset``."""

    def clip_bounds(self) -> tuple[float, float]:
        """Bounds of the output; unbounded unless the method clips."""
        return -math.inf, math.inf


@dataclass(frozen=True)
class MinMax(Scaler):
    """``a + (x - min) * (b - a) / (max - min)``, optionally clipped to ``[a, b]``.

    Examples
    --------
    >>> MinMax(["px_*"], feature_range=(-1, 1), clip=True).feature_range
    (-1.0, 1.0)
    """

    method: ClassVar[str] = "minmax"
    _FLAGS: ClassVar[tuple[str, ...]] = ("clip",)
    feature_range: tuple[float, float] = (0.0, 1.0)
    clip: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        fr = _numbers(self.feature_range)
        if fr is None or len(fr) != 2 or not all(math.isfinite(v) for v in fr) or not fr[0] < fr[1]:
            raise ParameterError("feature_range", f"must be two finite numbers [a, b] with a < b, got {self.feature_range!r}")
        if not math.isfinite(fr[1] - fr[0]):  # else the fit failed blaming the data's range
            raise ParameterError("feature_range", f"its width b - a must be a finite float64, got {self.feature_range!r}")
        object.__setattr__(self, "feature_range", fr)

    def components(self, m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.feature_range
        return m.min, m.max - m.min, np.full(m.shape, b - a), np.full(m.shape, a)

    def scale_of(self, gain: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """``(b - a) / (max - min)``, less an ulp or two where the fitted max would map above ``b``.

        Rounded, the quotient (and the sum with ``a``) could put ``max`` 1 ulp
        above ``b`` (``feature_range=(0.1, 0.9)``: 1 column in 12), outside the
        range without ``clip``. The map is monotone, so with ``max`` at most
        ``b`` every fitted value lies within ``[a, b]`` (``min`` maps to ``a``
        exactly).
        """
        a, b = self.feature_range
        scale = np.asarray(gain / spread, dtype=np.float64)
        for _ in range(4):
            above = np.isfinite(scale) & (scale > 0) & (spread * scale + a > b)
            if not above.any():
                break
            scale = np.where(above, np.nextafter(scale, 0.0), scale)
        return scale

    def clip_bounds(self) -> tuple[float, float]:
        return self.feature_range if self.clip else (-math.inf, math.inf)


@dataclass(frozen=True)
class ZScore(Scaler):
    """``(x - mean) / std``; ``with_mean``/``with_std`` turn either part off.

    Examples
    --------
    >>> ZScore(["age", "income"], ddof=1).ddof
    1
    """

    method: ClassVar[str] = "zscore"
    spread_from_variance: ClassVar[bool] = True
    _FLAGS: ClassVar[tuple[str, ...]] = ("with_mean", "with_std")
    with_mean: bool = True
    with_std: bool = True
    ddof: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.ddof, bool) or not isinstance(self.ddof, int) or self.ddof < 0:
            raise ParameterError("ddof", f"must be a non-negative integer, got {self.ddof!r}")

    def min_count(self) -> int:
        """``ddof + 1``: the standard deviation divides by ``count - ddof``."""
        return self.ddof + 1 if self.with_std else 1

    def components(self, m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        center = m.mean if self.with_mean else np.zeros(m.shape)
        spread = m.std(self.ddof) if self.with_std else np.ones(m.shape)
        return center, spread, np.ones(m.shape), np.zeros(m.shape)


@dataclass(frozen=True)
class Decimal(Scaler):
    """``x / 10**j`` with ``j`` the smallest integer such that ``max|x| / 10**j < 1``.

    ``j`` may be negative (``max|x| = 0.05`` gives ``j = -1``) and is 0 for an
    all-zero column. Its divisor depends on the magnitude, not the spread, so
    ``unit_scale`` leaves a constant column's ``10**j`` as it is.

    Examples
    --------
    >>> decimal_exponent(999.9), decimal_exponent(1000.0), decimal_exponent(0.05)
    (3, 4, -1)
    """

    method: ClassVar[str] = "decimal"
    divides_by_spread: ClassVar[bool] = False

    def components(self, m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        j = np.array([decimal_exponent(v) for v in np.ravel(m.absmax)], dtype=np.float64).reshape(m.shape)
        return np.zeros(m.shape), 10.0**j, np.ones(m.shape), np.zeros(m.shape)

    def scale_of(self, gain: np.ndarray, spread: np.ndarray) -> np.ndarray:
        """``10**-j`` correctly rounded (the gain is 1).

        ``1 / 10.0**j`` rounds twice where ``10**j`` is no double: 1e-5's
        inverse came out 99999.99999999999, not 100000, and the outputs up to
        2 ulps off. A spread that is no finite power of ten (beyond float64,
        which the caller refuses) keeps the quotient.
        """
        out = np.asarray(gain / spread, dtype=np.float64)
        finite = np.isfinite(spread) & (spread > 0)
        out[finite] = [_inverse_power_of_ten(round(math.log10(s))) for s in spread[finite]]
        return out


def _inverse_power_of_ten(j: int) -> float:
    """``10**-j`` correctly rounded; ``inf`` beyond float64 (which the caller refuses)."""
    try:
        return float(Fraction(10) ** -j)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class BatchNorm(Scaler):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` with the biased variance.

    ``momentum`` is used by the partition scope's running statistics
    (PyTorch's convention; ``None`` is the cumulative average). ``eps`` keeps
    the divisor positive, so ``unit_scale`` leaves a constant column's divisor
    as ``sqrt(eps)``, as PyTorch does.

    Examples
    --------
    >>> BatchNorm(gamma=2.0, beta=0.5).eps
    1e-05
    """

    method: ClassVar[str] = "batchnorm"
    spread_from_variance: ClassVar[bool] = True
    divides_by_spread: ClassVar[bool] = False
    gamma: float = 1.0
    beta: float = 0.0
    eps: float = 1e-5
    momentum: float | None = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gamma", "beta", "eps", "momentum"):
            value = getattr(self, name)
            if not (value is None and name == "momentum") and _numbers([value]) is None:
                raise ParameterError(name, f"must be a number, got {value!r}")
        for name in ("gamma", "beta"):
            if not math.isfinite(getattr(self, name)):
                raise ParameterError(name, f"must be finite, got {getattr(self, name)!r}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ParameterError("eps", f"must be a positive number, got {self.eps!r}")
        if self.momentum is not None and not 0 < self.momentum <= 1:
            raise ParameterError("momentum", f"must be in (0, 1] or null (cumulative average), got {self.momentum!r}")

    def components(self, m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        spread = np.sqrt(m.var(0) + self.eps)
        return m.mean, spread, np.full(m.shape, self.gamma), np.full(m.shape, self.beta)


#: The registry of methods by name; adding a method is one entry here.
METHODS: dict[str, type[Scaler]] = {cls.method: cls for cls in (MinMax, ZScore, Decimal, BatchNorm)}


def scaler_from_dict(d: dict[str, Any]) -> Scaler:
    """Build a scaler from plain data, e.g. ``{"method": "zscore", "columns": ["a"]}``.

    Raises
    ------
    ParameterError
        The method is unknown (the message lists the valid ones), a parameter
        is not one of the method's, or its value is impossible.
    """
    d = dict(d)
    name = d.pop("method", None)
    if name not in METHODS:
        raise ParameterError("method", f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in d:
        if key not in valid:
            raise ParameterError(key, f"not a parameter of {name!r}; valid: {', '.join(valid)}")
    if "feature_range" in d and d["feature_range"] is not None:
        d["feature_range"] = tuple(d["feature_range"])
    return cls(**d)


def decimal_exponent(absmax: float) -> int:
    """The smallest integer ``j`` with ``absmax / 10**j < 1`` (0 when ``absmax == 0``).

    Decided exactly with rational arithmetic, so powers of ten at the boundary
    (``1000`` gives 4) are never misjudged by rounding.
    """
    if absmax == 0 or math.isnan(absmax):
        return 0
    exact = Fraction(abs(absmax))
    j = math.floor(math.log10(abs(absmax))) + 1
    while exact >= Fraction(10) ** j:
        j += 1
    while exact < Fraction(10) ** (j - 1):
        j -= 1
    return j


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as the Python scalars and tuples they hold (which JSON can store)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return tuple(value.tolist()) if value.ndim else value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def _numbers(values: object) -> tuple[float, ...] | None:
    """``values`` as floats, or ``None`` unless it is a sequence (or array) of real numbers (not booleans or strings)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return None
    if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in values):
        return None
    return tuple(float(v) for v in values)


def _named(names: Sequence[object], mask: np.ndarray) -> list[object]:
    """Names of the features (last axis) where ``mask`` holds anywhere."""
    return [names[i] for i in np.unique(np.nonzero(mask)[-1])]


def affine_params(scaler: Scaler, m: Moments, names: Sequence[object], *, allow_empty: bool = False) -> Affine:
    """The affine map of ``scaler`` for features with statistics ``m``.

    This is the single place where an all-NaN column is rejected and a
    constant column gets its ``constant_policy``. ``m`` may have leading axes
    (one row per batch or per key); the features are its last axis.
    ``allow_empty`` accepts statistics of no values (a batch or key whose
    column is all NaN): their parameters are NaN, and so is every output.

    Raises
    ------
    DataError
        A column has no non-missing value, is constant under
        ``constant_policy="error"``, or has a divisor (range, standard
        deviation, power of ten) whose inverse float64 cannot hold (it
        would scale every value to 0 or to infinity); the message names the
        columns.
    """
    empty = m.count == 0
    if empty.any() and not allow_empty:
        cols = _named(names, empty)
        raise DataError(f"column(s) {', '.join(map(repr, cols))}: every value is missing (NaN); cannot fit {scaler.method}")
    few = ~empty & (m.count < scaler.min_count())
    if few.any() and not allow_empty:
        cols = _named(names, few)
        raise DataError(
            f"column(s) {', '.join(map(repr, cols))}: {scaler.method} with ddof={getattr(scaler, 'ddof', 0)} needs at "
            f"least {scaler.min_count()} non-missing values, got {int(np.min(m.count[few]))}"
        )
    with np.errstate(over="ignore"):  # an overflowing spread is refused below, naming the column
        center, spread, gain, offset = scaler.components(m)
    constant = m.is_constant()
    if constant.any() and scaler.constant_policy == "error":
        cols = _named(names, constant)
        raise DataError(
            f"column(s) {', '.join(map(repr, cols))} are constant (range within 4 ulps of the magnitude) and "
            "constant_policy is 'error' (set it to unit_scale, zero or passthrough)"
        )
    if scaler.constant_policy == "unit_scale" and scaler.divides_by_spread:
        spread = np.where(constant, 1.0, spread)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = scaler.scale_of(gain, spread)
    # a constant column keeps its divisor unless its policy replaces the map below; statistics
    # of no (or too few) values have NaN parameters where allowed
    exempt = (constant & (scaler.constant_policy in ("zero", "passthrough"))) | empty | few
    # a variance below float64's normal numbers (values within ~1e-154 of each other) is 0 or a subnormal, its
    # square root off by up to 1e-4: a divisor that is that square root is not the data's (batchnorm's eps hides it)
    with np.errstate(over="ignore", invalid="ignore"):
        lost = scaler.spread_from_variance & m.variance_out_of_range() & ~constant & (spread * spread < np.finfo(np.float64).tiny)
    unscalable = ~exempt & (~np.isfinite(spread) | ~np.isfinite(scale) | ((scale == 0) & (gain != 0)) | lost)
    if unscalable.any():
        cols = _named(names, unscalable)
        overflow = ""
        if scaler.spread_from_variance and not np.isfinite(spread[unscalable]).all():
            overflow = " (the squared deviations overflow float64 for values beyond about 1e154)"
        elif lost[unscalable].any():
            overflow = " (the squared deviations underflow float64 for values within about 1e-154 of each other)"
        raise DataError(
            f"column(s) {', '.join(map(repr, cols))}: {scaler.method}'s divisor "
            f"({', '.join(f'{v:.3g}' for v in np.unique(spread[unscalable]))}) or its inverse is beyond "
            f"float64{overflow}: the values' range or magnitude is too large or too small to scale; rescale "
            "the column before fitting"
        )
    lo_val, hi_val = scaler.clip_bounds()
    lo, hi = np.full(m.shape, lo_val), np.full(m.shape, hi_val)
    if scaler.constant_policy in ("zero", "passthrough"):
        keep = scaler.constant_policy == "passthrough"
        # zero keeps the constant as center, so the inverse maps 0 back to it
        center = np.where(constant, 0.0 if keep else m.mean, center)
        scale = np.where(constant, 1.0 if keep else 0.0, scale)
        offset = np.where(constant, 0.0, offset)
        lo = np.where(constant, -np.inf, lo)
        hi = np.where(constant, np.inf, hi)
    return Affine(*(np.asarray(a, dtype=np.float64) for a in (center, scale, offset, lo, hi)))


def affine_dtype(x: np.ndarray | Columns) -> np.dtype:
    """The dtype :func:`apply_affine` returns for ``x``: its float dtype, float64 for integers and :class:`Columns`."""
    if isinstance(x, Columns):
        return np.dtype(np.float64)
    return x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)


def affine_output(x: np.ndarray | Columns) -> np.ndarray:
    """A new buffer for :func:`apply_affine`'s result on ``x``.

    ``x``'s shape and :func:`affine_dtype`; column-major for a table's
    :class:`Columns` (the kernel writes each column contiguously) and for a
    column-major array, else row-major. From :mod:`~scalepipe.buffers`'
    recycled memory, so a partition's result does not page-fault in new
    memory.
    """
    if isinstance(x, Columns):
        return buffers.empty(x.shape, order="F")
    order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    return buffers.empty(x.shape, affine_dtype(x), order)


def apply_affine(
    x: np.ndarray | Columns, p: Affine, out: np.ndarray | None = None, *, reject_inf: bool | np.ndarray = False
) -> np.ndarray:
    """Apply ``p`` to the columns of ``x`` (shape ``(n, n_features)``; NaN stays NaN).

    Computed in float64; the result keeps ``x``'s float dtype (float64 for
    integer input, and for a table's :class:`~scalepipe.stats.Columns`, which
    are read in place and give a column-major result). ``x`` is never
    modified; pass ``out`` to reuse a buffer scalepipe owns. With
    ``reject_inf`` (true, or true per column), an infinity in ``x`` (in such
    a column) raises :class:`~scalepipe.stats.NonFiniteError` naming its
    column's position.

    Examples
    --------
    >>> import numpy as np
    >>> p = Affine(*(np.array([v]) for v in (1.0, 2.0, 0.0, -np.inf, np.inf)))
    >>> apply_affine(np.array([[1.0], [2.0], [np.nan]]), p).ravel().tolist()
    [0.0, 2.0, nan]
    """
    clip = bool(np.isfinite(p.lo).any() or np.isfinite(p.hi).any())
    kernels = numba_kernels("_kernels_numba")
    if kernels is not None and p.center.ndim == 1 and (isinstance(x, Columns) or _fused_kind(x)):
        target = affine_output(x) if out is None else out
        params = np.stack([p.center, p.scale, p.offset, p.lo, p.hi])
        if isinstance(x, np.ndarray) and x.flags.c_contiguous:
            infinite = kernels.affine(x, params, clip, target)
        else:
            columns = x if isinstance(x, Columns) else Columns.of(x)
            infinite = kernels.column_affine(*columns.pointers(), columns.n_rows, params, clip, target)
        if (infinite & reject_inf).any():
            raise NonFiniteError(np.flatnonzero(infinite & reject_inf))
        return target
    x = x.stacked() if isinstance(x, Columns) else np.asarray(x)
    if np.any(reject_inf) and x.dtype.kind == "f" and (infinite := np.isinf(x).any(axis=0) & reject_inf).any():
        raise NonFiniteError(np.flatnonzero(infinite))
    y = np.subtract(x, p.center, dtype=np.float64)
    y *= p.scale
    y += p.offset
    if clip:
        np.clip(y, p.lo, p.hi, out=y)
    if out is not None:
        out[...] = y
        return out
    return y.astype(affine_dtype(x), copy=False)


def _fused_kind(x: object) -> bool:
    """Whether the fused kernels take ``x`` as it is: a 2-D array of a dtype they read (native float64, float32, int64, int32)."""
    return isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype in KERNEL_DTYPES


def invert_affine(y: np.ndarray, p: Affine) -> np.ndarray:
    """Inverse of :func:`apply_affine`; a feature scaled by 0 maps back to its center."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.subtract(y, p.offset, dtype=np.float64) / p.scale + p.center
    zero = p.scale == 0
    if zero.any():
        x = np.where(zero & ~np.isnan(np.asarray(y, dtype=np.float64)), p.center, x)
    return x.astype(affine_dtype(np.asarray(y)), copy=False)


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Which rule scales each fitted feature: derives every feature's :class:`Affine`.

    Parameters
    ----------
    scalers
        The rules, in order.
    rule_of
        The rule index of each fitted feature.
    names
        The fitted features' names (for error messages).
    """

    scalers: tuple[Scaler, ...]
    rule_of: np.ndarray
    names: tuple[object, ...]

    def min_counts(self) -> np.ndarray:
        """Each feature's rule's :meth:`Scaler.min_count` (the fewest values it can estimate from)."""
        return np.array([self.scalers[r].min_count() for r in self.rule_of], dtype=np.int64)

    def params(self, m: Moments, positions: np.ndarray | None = None, *, allow_empty: bool = False) -> Affine:
        """Parameters for statistics ``m`` of the features at ``positions`` (default: all, in order).

        ``m`` may have leading axes (batches, keys); its last axis matches ``positions``.
        """
        if positions is None:
            positions = np.arange(len(self.rule_of))
        rules = self.rule_of[positions]
        shape = m.count.shape
        out = {k: np.empty(shape) for k in _AFFINE_FIELDS}
        for i, scaler in enumerate(self.scalers):
            cols = np.flatnonzero(rules == i)
            if cols.size == 0:
                continue
            names = [self.names[positions[c]] for c in cols]
            p = affine_params(scaler, m.take(cols), names, allow_empty=allow_empty)
            for k in _AFFINE_FIELDS:
                out[k][..., cols] = getattr(p, k)
        return Affine(**out)
