"""safetensors reader: our own header parser (size-capped, validated), tensors read on demand.

Format: 8-byte little-endian header length N, N bytes of JSON header, then the data buffer.
Every dtype including bf16 and fp8 (e4m3fn, e5m2) is read back as float32, chunk by chunk through
pread so that memory holds the result only; `raw` gives the stored bytes as a memory-mapped view.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError
from modeltrace.formats.base import (
    DTYPE_SIZES,
    MAX_NAME_CHARS,
    TensorInfo,
    TensorSource,
    check_shape,
    float32_destination,
    pread_float32,
    release_map,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Largest JSON header read (the `safetensors` library's own cap)."""
MAX_JSON_DEPTH = 128
"""Deepest nesting of the JSON header (serde_json's recursion limit, which the `safetensors` library uses)."""
MAX_INT_DIGITS = 20
"""Integers longer than this (more than u64 holds) are read as floats, and so refused as shapes and offsets."""
MAX_DIM = 2**64 - 1
"""Largest dimension or offset: the library reads them as u64."""


class _HeaderError(ValueError):
    """The header breaks a rule of the format; the message says which."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _HeaderError(f"key {_show(key)!r} appears twice in one object")
        out[key] = value
    return out


def _parse_int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else float(text)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


def _show(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:200]


def parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The header JSON as a dict, with every rule of the JSON layer checked (duplicates, depth, numbers)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_int=_parse_int)
    except _HeaderError as exc:
        raise FormatError(path, f"header is not valid: {exc}") from exc
    except RecursionError as exc:
        raise FormatError(path, f"header nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise FormatError(path, f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise FormatError(path, "header is not a JSON object")
    if _too_deep(header, MAX_JSON_DEPTH):
        raise FormatError(path, f"header nests deeper than {MAX_JSON_DEPTH} levels")
    return header


def _valid_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def sniff(head: bytes) -> bool:
    """safetensors files start with a u64 header length and then a JSON object."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n and head[8:9] == b"{"


class SafetensorsReader(TensorSource):
    """One .safetensors file; tensors are views into a memory map until converted."""

    format = "safetensors"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._fd: int | None = None
        self._mm: mmap.mmap | None = None
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise FormatError(path, f"file is {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise FormatError(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
            if 8 + n > size:
                raise FormatError(path, f"header length {n} is larger than the file ({size} bytes); truncated?")
            raw = fh.read(n)
        header = parse_header(path, raw)
        meta = header.pop("__metadata__", None)
        if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
            raise FormatError(path, "__metadata__ is not an object of strings")
        self._meta: dict[str, Any] = meta or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        infos: dict[str, TensorInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if len(name) > MAX_NAME_CHARS:
                raise FormatError(path, f"a tensor name is {len(name)} characters long, over the "
                                  f"{MAX_NAME_CHARS}-character cap")
            if not isinstance(entry, dict):
                raise FormatError(path, "header entry is not an object", tensor=name)
            dtype = entry.get("dtype")
            shape = entry.get("shape")
            offs = entry.get("data_offsets")
            if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
                raise FormatError(path, f"unknown dtype {_brief(dtype)}", tensor=name)
            if not isinstance(shape, list) or not all(_valid_int(d) for d in shape):
                raise FormatError(path, f"invalid shape {_brief(shape)}", tensor=name)
            if not isinstance(offs, list) or len(offs) != 2 or not all(_valid_int(o) for o in offs) or offs[1] < offs[0]:
                raise FormatError(path, f"invalid data_offsets {_brief(offs)}", tensor=name)
            if offs[1] > data_len:
                raise FormatError(path, f"data_offsets {offs} run past the end of the data ({data_len} bytes)",
                                  tensor=name)
            check_shape(path, tuple(shape), name)
            numel = 1
            for d in shape:
                numel *= d
            if numel * DTYPE_SIZES[dtype] != offs[1] - offs[0]:
                raise FormatError(path, f"shape {shape} of {dtype} needs {numel * DTYPE_SIZES[dtype]} bytes "
                                  f"but data_offsets span {offs[1] - offs[0]}", tensor=name)
            infos[name] = TensorInfo(name, tuple(shape), dtype, str(path), extra={"offsets": (offs[0], offs[1])})
            spans.append((offs[0], offs[1], name))
        # As the library requires: tensors tile the data buffer, in offset order, with no gap, overlap or
        # tail (a zero-size tensor cannot hide an overlap, and no bytes are left unaccounted for).
        spans.sort()
        end, last = 0, ""
        for s0, e0, n0 in spans:
            if s0 < end:
                raise FormatError(path, f"tensors {last!r} and {n0!r} overlap in the data buffer", tensor=n0)
            if s0 > end:
                raise FormatError(path, f"data_offsets leave bytes [{end}, {s0}) before it unused", tensor=n0)
            end, last = e0, n0
        if end != data_len:
            raise FormatError(path, f"the data buffer holds {data_len - end} bytes after the last tensor")
        self._infos = dict(sorted(infos.items(), key=lambda kv: kv[1].extra["offsets"][0]))

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor as a zero-copy uint8 view."""
        info = self.info(name)
        s, e = info.extra["offsets"]
        return np.frombuffer(self._map(), dtype=np.uint8, count=e - s, offset=self._data_start + s)

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self._fd

    def read(self, name: str) -> np.ndarray:
        info = self.info(name)
        s, e = info.extra["offsets"]
        return pread_float32(self._file(), self.path, self._data_start + s, e - s, info.dtype).reshape(info.shape)

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        info = self.info(name)
        s, e = info.extra["offsets"]
        dest = float32_destination(out, info.numel)
        pread_float32(self._file(), self.path, self._data_start + s, e - s, info.dtype, out=dest)
        return dest.reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.info(name)
        if not info.shape:
            return self.read(name)
        rows = info.shape[0]
        stop = max(0, min(rows, stop))
        start = min(max(0, start), stop)
        row_bytes = DTYPE_SIZES[info.dtype] * (info.numel // rows if rows else 0)
        s, _ = info.extra["offsets"]
        flat = pread_float32(self._file(), self.path, self._data_start + s + start * row_bytes,
                             (stop - start) * row_bytes, info.dtype)
        return flat.reshape((stop - start,) + info.shape[1:])

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        release_map(self._mm)
        self._mm = None
