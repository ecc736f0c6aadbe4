"""The Parquet codecs scalepipe writes, and the one rule that checks a choice.

Shared by the config (``output.compression``) and :func:`scalepipe.io.write_table`;
imports nothing heavy, so neither the CLI's start-up nor a worker pays for it.
"""

from __future__ import annotations

import typing
from typing import Literal

__all__ = ["COMPRESSION_LEVELS", "ParquetCodec", "compression_problem", "describe"]

#: The codecs of ``output.compression``. LZ4 is left out: Parquet's original
#: LZ4 codec is read differently by different readers.
ParquetCodec = Literal["snappy", "zstd", "gzip", "brotli", "none"]

#: The codecs with levels, and the levels accepted for them (within pyarrow's).
COMPRESSION_LEVELS = {"zstd": (1, 22), "gzip": (1, 9), "brotli": (0, 11)}

_CODECS: tuple[str, ...] = typing.get_args(ParquetCodec)
_CHOICES = ", ".join(repr(c) for c in _CODECS[:-1]) + f" or {_CODECS[-1]!r}"
#: Values users write for "no compression" that are not ``none``.
_MEANT_NONE = (None, False, "None", "NONE", "null", "off", "uncompressed", "UNCOMPRESSED")


def compression_problem(codec: object, level: object, *, codec_given: bool = True) -> tuple[str, str] | None:
    """What is wrong with a Parquet codec and level.

    Parameters
    ----------
    codec
        The codec, one of :data:`ParquetCodec`.
    level
        Its level, or ``None`` for the codec's default.
    codec_given
        Whether the user chose ``codec`` (``False``: it is the default, and
        the message says so).

    Returns
    -------
    tuple of (str, str) or None
        ``(setting, problem)``, ``setting`` being ``"compression"`` or
        ``"compression_level"``; ``None`` when both are valid.
    """
    if isinstance(codec, bool) or codec not in _CODECS:
        hint = "; for no compression write none" if codec in _MEANT_NONE else ""
        return "compression", f"must be {_CHOICES}, got {codec!r}{hint}"
    if level is None:
        return None
    if codec not in COMPRESSION_LEVELS:
        named = repr(codec) if codec_given else f"compression is unset (default {codec!r}), which"
        with_levels = ", ".join(COMPRESSION_LEVELS)
        return "compression_level", f"{named} has no levels, got {level!r}; remove it or set compression to one of {with_levels}"
    low, high = COMPRESSION_LEVELS[codec]
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        return "compression_level", f"must be an integer from {low} to {high} for {codec}, got {level!r}"
    return None


def describe(codec: str, level: int | None) -> str:
    """``"zstd level 3"``, or ``"snappy"``: a codec choice in words."""
    return codec if level is None else f"{codec} level {level}"
