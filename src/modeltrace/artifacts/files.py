"""Capped reads of untrusted artifact files, with our own errors naming the file."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from modeltrace.errors import FormatError
from modeltrace.model import load_json

MAX_TEXT_BYTES = 64 * 1024 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_BINARY_BYTES = 64 * 1024 * 1024


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The whole file, refused when it is larger than `limit` bytes (default MAX_BINARY_BYTES)."""
    limit = MAX_BINARY_BYTES if limit is None else limit
    try:
        st = path.stat()
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise FormatError(path, "not a regular file")
    size = st.st_size
    if size > limit:
        raise FormatError(path, f"file is {size} bytes, over the {limit}-byte cap")
    try:
        with open(path, "rb") as fh:
            return fh.read(limit + 1)[:limit]
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from exc


def read_text(path: Path, limit: int | None = None) -> str:
    """The file as UTF-8 text (a leading byte-order mark dropped), capped at `limit` bytes."""
    raw = read_bytes(path, MAX_TEXT_BYTES if limit is None else limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not UTF-8 text (bad byte at offset {exc.start})") from exc


def read_json(path: Path, limit: int | None = None) -> Any:
    """Parsed JSON with a size cap; nesting too deep, bad syntax and bad encoding are FormatErrors."""
    try:
        return load_json(path, MAX_JSON_BYTES if limit is None else limit)
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from exc


def read_json_object(path: Path, limit: int | None = None) -> dict[str, Any]:
    data = read_json(path, limit)
    if not isinstance(data, dict):
        raise FormatError(path, f"expected a JSON object, found {type(data).__name__}")
    return data
