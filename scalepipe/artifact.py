"""The on-disk statistics artifact: JSON with a format name, schema version and checksum.

The artifact is data, never code: loading parses JSON and validates it, and
never unpickles. Floats are written with Python's shortest round-trip repr, so
they read back bit-identical; NaN and infinities, which JSON lacks, are written
as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``. The checksum is a
SHA-256 over the canonical JSON of every field but the checksum itself, so an
edited or damaged file is detected.

This module imports the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ArtifactError

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "decode_floats",
    "encode_floats",
    "read_artifact",
    "render_artifact",
    "write_bytes_atomic",
    "write_text_atomic",
]

FORMAT = "scalepipe.stats"
SCHEMA_VERSION = 1

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

#: Top-level fields every artifact of this schema has.
REQUIRED = ("format", "schema_version", "scalepipe_version", "features", "scalers", "statistics", "parameters")


def encode_floats(values: Sequence[float]) -> list[float | str]:
    """Floats as JSON values: finite ones as numbers, the others as strings."""
    out: list[float | str] = []
    for v in values:
        v = float(v)
        if math.isfinite(v):
            out.append(v)
        else:
            out.append("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
    return out


def decode_floats(values: Sequence[float | str | int]) -> list[float]:
    """Inverse of :func:`encode_floats`.

    Raises
    ------
    ValueError
        ``values`` is not a list of numbers and the strings ``"NaN"``,
        ``"Infinity"``, ``"-Infinity"`` (or a number is beyond float64).
    """
    if not isinstance(values, list):
        raise ValueError(f"expected a list of numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, str) and v in _NONFINITE:
            out.append(_NONFINITE[v])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                out.append(float(v))
            except OverflowError:
                raise ValueError(f"a number of {len(str(abs(v)))} digits is beyond float64") from None
        else:
            raise ValueError(f"{v!r} is not a number")
    return out


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


class _NonFiniteNumber(ValueError):
    """A JSON number token that is not a finite float64 (``NaN``, ``Infinity``, ``1e999``)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(text)
    return value


def _refuse_constant(text: str) -> float:
    raise _NonFiniteNumber(text)


def checksum(doc: dict[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON of every field but ``checksum``."""
    return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()


def render_artifact(doc: dict[str, Any]) -> str:
    """The document with its format header and checksum, as indented JSON text."""
    full = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **doc}
    full["checksum"] = checksum(full)
    return json.dumps(full, indent=1, allow_nan=False) + "\n"


#: How an artifact written by scalepipe starts (its format field first; :func:`render_artifact`).
_ARTIFACT_START = re.compile(rb'\s*\{\s*"format"\s*:\s*"' + re.escape(FORMAT.encode()) + rb'"')


def replace_problem(path: str | os.PathLike[str]) -> str | None:
    """Why saving statistics at ``path`` would destroy something, or ``None``.

    Only scalepipe statistics (a JSON document whose ``format`` is
    ``scalepipe.stats``, in any key order) or an empty file are ever
    replaced: a ``stats.path`` naming the job's own config, or any other
    file, was overwritten without a word. A special file (a FIFO, a device)
    is refused without being opened.
    """
    file = Path(os.fspath(path)).expanduser()
    try:
        info = file.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # nothing there to lose (a path that cannot be written is refused for that)
    if stat.S_ISDIR(info.st_mode):
        return None  # refused as a folder by the caller
    if not stat.S_ISREG(info.st_mode):
        return f"{str(path)!r} is not a regular file (a pipe or a device); name a statistics file"
    try:
        with open(file, "rb") as f:
            head = f.read(4096)
            if not head.strip() or _ARTIFACT_START.match(head):
                return None
            if head.lstrip().startswith(b"{"):  # JSON, perhaps statistics in another key order
                f.seek(0)
                with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
                    doc = json.load(f)
                    if isinstance(doc, dict) and doc.get("format") == FORMAT:
                        return None
    except OSError as exc:
        return f"{str(path)!r} cannot be read to check what it is ({exc.strerror})"
    return (
        f"{str(path)!r} is a file that is not scalepipe statistics; it is never replaced: "
        "remove it or name another statistics file"
    )


def read_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate an artifact; never executes or unpickles anything.

    Raises
    ------
    ArtifactError
        The file is missing, not JSON (truncated?), not a scalepipe artifact,
        of a newer schema version, lacks a field, or fails its checksum. The
        message names the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: statistics file not found (run `scalepipe fit` first?)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: cannot read statistics file: {err}") from None
    try:
        doc = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise ArtifactError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno} (truncated or corrupt?)"
        ) from None
    except _NonFiniteNumber as err:
        raise ArtifactError(
            f"{path}: holds the number {err}, which scalepipe never writes (it stores non-finite values as the "
            'strings "NaN", "Infinity", "-Infinity"): the file was edited or re-serialised'
        ) from None
    except (ValueError, RecursionError) as err:  # an integer of thousands of digits, nesting too deep to parse
        raise ArtifactError(f"{path}: not a statistics file scalepipe wrote ({type(err).__name__}: {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ArtifactError(f"{path}: not a scalepipe statistics file (format {found!r}, expected {FORMAT!r})")
    version = doc.get("schema_version")
    if type(version) is not int or version < 1:
        raise ArtifactError(f"{path}: invalid schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema version {version} is newer than this scalepipe supports "
            f"({SCHEMA_VERSION}); upgrade scalepipe to read it"
        )
    if "checksum" not in doc:
        raise ArtifactError(f"{path}: no checksum field; the file is incomplete or was not written by scalepipe")
    if doc["checksum"] != checksum(doc):
        raise ArtifactError(f"{path}: checksum mismatch: the file was edited or corrupted after it was written")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ArtifactError(f"{path}: missing field(s) {', '.join(missing)}")
    return doc


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder, so a rename or a new file in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new, never a part.

    A temporary file in the same folder is written, flushed and fsynced, then
    moved into place with ``os.replace`` (or a hard link when
    ``overwrite=False``, which fails if ``path`` appeared meanwhile) and the
    folder is fsynced. A failure leaves the old file (or nothing) and no
    temporary file.

    Raises
    ------
    OutputError
        ``path`` exists and ``overwrite`` is false, ``path`` is a folder, or
        the write failed.
    """
    from .errors import OutputError

    target = os.path.abspath(os.path.expanduser(os.fspath(path)))
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise OutputError(f"output file {os.fspath(path)!r} is a folder; choose a file path")
    if not overwrite and os.path.lexists(target):
        raise OutputError(f"output file {os.fspath(path)!r} already exists; set overwrite: true to replace it")
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
    try:
        os.makedirs(parent, exist_ok=True)
        mode = os.stat(target).st_mode & 0o777 if os.path.exists(target) else 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
        fsync_dir(parent)
    except FileExistsError as exc:
        raise OutputError(
            f"output file {os.fspath(path)!r} appeared while it was being written; set overwrite: true to replace it"
        ) from exc
    except OSError as exc:
        raise OutputError(f"writing {os.fspath(path)!r} failed: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=overwrite)
