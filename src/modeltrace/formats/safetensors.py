"""safetensors reader: our own header parser (size-capped, validated), tensors read on demand.

Format: 8-byte little-endian header length N, N bytes of JSON header, then the data buffer.
Every dtype including bf16 and fp8 (e4m3fn, e5m2) is read back as float32, chunk by chunk through
pread so that memory holds the result only; `raw` gives the stored bytes as a memory-mapped view.
"""

from __future__ import annotations

import itertools
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
    TensorInfo,
    TensorSource,
    float32_destination,
    pread_float32,
    release_map,
)

MAX_HEADER_BYTES = 100 * 1024 * 1024


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
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(path, f"header is not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise FormatError(path, "header is not a JSON object")
        self._meta: dict[str, Any] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_len = size - self._data_start
        infos: dict[str, TensorInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise FormatError(path, "header entry is not an object", tensor=name)
            dtype = entry.get("dtype")
            shape = entry.get("shape")
            offs = entry.get("data_offsets")
            if dtype not in DTYPE_SIZES:
                raise FormatError(path, f"unknown dtype {dtype!r}", tensor=name)
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise FormatError(path, f"invalid shape {shape!r}", tensor=name)
            if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                    or offs[0] < 0 or offs[1] < offs[0]):
                raise FormatError(path, f"invalid data_offsets {offs!r}", tensor=name)
            if offs[1] > data_len:
                raise FormatError(path, f"data_offsets {offs} run past the end of the data ({data_len} bytes)",
                                  tensor=name)
            numel = 1
            for d in shape:
                numel *= d
            if numel * DTYPE_SIZES[dtype] != offs[1] - offs[0]:
                raise FormatError(path, f"shape {shape} of {dtype} needs {numel * DTYPE_SIZES[dtype]} bytes "
                                  f"but data_offsets span {offs[1] - offs[0]}", tensor=name)
            infos[name] = TensorInfo(name, tuple(shape), dtype, str(path), extra={"offsets": (offs[0], offs[1])})
            spans.append((offs[0], offs[1], name))
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in itertools.pairwise(spans):
            if s1 < e0 and e1 > s1:
                raise FormatError(path, f"tensors {n0!r} and {n1!r} overlap in the data buffer", tensor=n1)
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
