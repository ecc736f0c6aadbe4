"""The exceptions scalepipe raises.

Every error a user can cause is a :class:`ScalepipeError`; its message names the
column, config key, file or rule at fault and, where there is one, the fix. The
command line prints the message as one line.
"""

from __future__ import annotations


class ScalepipeError(Exception):
    """Base class of every error scalepipe raises on bad input or configuration."""


class ParameterError(ScalepipeError, ValueError):
    """A scaler parameter has an impossible value.

    Parameters
    ----------
    field
        The parameter's name (``feature_range``, ``eps``, ...), so a config
        loader can report the full key path.
    message
        What is wrong and what to do instead.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class ColumnError(ScalepipeError, KeyError):
    """A column is missing, not numeric, or matched by no rule."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(ScalepipeError, ValueError):
    """The data cannot be fitted or transformed (inf values, all-NaN, empty)."""


class ArtifactError(ScalepipeError, ValueError):
    """A statistics file is missing, corrupt, edited, or of an unknown format."""


class ConfigError(ScalepipeError, ValueError):
    """The YAML config is invalid; the message names the key path and line."""


class InputError(ScalepipeError, OSError):
    """An input path is missing, unreadable, or a file in it is corrupt."""


class OutputError(ScalepipeError, OSError):
    """An output cannot be written: it exists, overlaps the input, or the write failed."""


class ClusterError(ScalepipeError, RuntimeError):
    """The Dask cluster cannot be started, reached, or was lost mid-run."""


class InterruptedAfterCommit(KeyboardInterrupt):
    """An interrupt (Ctrl-C, SIGTERM) once the job's results were complete and in place; the message says which."""
