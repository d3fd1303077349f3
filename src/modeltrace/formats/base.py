"""The one tensor-source interface every reader implements, and dtype conversions to float32.

A source lists names, shapes and dtypes without touching tensor data; `read` returns one
tensor (or a range of its leading rows) as float32, so memory is bounded by the largest tensor.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from modeltrace.errors import FormatError

MAX_NAME_CHARS = 4096
"""Longest tensor name any reader accepts (real names are under 200 characters; a name of a few MB makes
every later step that matches names slow)."""
MAX_SHAPE_ELEMENTS = 2**40
"""Most elements a shape may describe, zero-length dimensions aside: numpy refuses larger shapes even
when a zero makes them empty, and no tensor comes near (a file-backed tensor is also held to its bytes)."""


def check_shape(path: Path | str, shape: tuple[int, ...], tensor: str | None = None) -> None:
    """Refuse a shape numpy cannot represent (see MAX_SHAPE_ELEMENTS), as a FormatError naming the tensor."""
    n = 1
    for d in shape:
        if d:
            n *= d
    if n > MAX_SHAPE_ELEMENTS:
        raise FormatError(path, f"shape {list(shape)} describes more than {MAX_SHAPE_ELEMENTS} elements",
                          tensor=tensor)


@dataclass(frozen=True)
class TensorInfo:
    """What a reader knows about a tensor before reading it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # storage dtype as the file names it: "F32", "BF16", "Q4_K", "INT8", ...
    file: str  # the file that holds it
    quantization: str | None = None  # scheme name when the data is quantized
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


class TensorSource(ABC):
    """A lazily read collection of named tensors in one file (or one logical model)."""

    format: ClassVar[str] = "?"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @abstractmethod
    def infos(self) -> dict[str, TensorInfo]:
        """Every tensor's metadata, in file order, without reading data."""

    @abstractmethod
    def read(self, name: str) -> np.ndarray:
        """The whole tensor as a float32 array (dequantized where needed)."""

    def read_buffer(self, names: Iterable[str] | None = None) -> np.ndarray:
        """An uninitialised flat float32 array large enough for any of `names` (default: every tensor).

        Made for `read_into`, allocated as `empty_float32` does: large numpy allocations can stall for
        seconds while the kernel compacts memory for huge pages.
        """
        infos = self.infos()
        wanted = infos if names is None else [self.info(n).name for n in names]
        return empty_float32(max((infos[n].numel for n in wanted), default=0))

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        """The tensor as float32, written into the leading elements of `out` and returned as a view of it.

        For loops over many tensors: one buffer (see `read_buffer`), reused, saves the allocation and
        first touch of a fresh array per tensor, which costs more CPU time than the conversion itself.
        `out` must be a writable C-contiguous float32 array with at least as many elements as the
        tensor. Readers override this to convert straight into `out`; this default copies `read`'s result.
        """
        arr = self.read(name)
        dest = float32_destination(out, arr.size).reshape(arr.shape)
        np.copyto(dest, arr)
        return dest

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows `start:stop` of the leading axis as float32; readers override to avoid a full read."""
        return np.ascontiguousarray(self.read(name)[start:stop])

    def metadata(self) -> dict[str, Any]:
        """Format-level metadata (safetensors `__metadata__`, GGUF key-values, ONNX producer)."""
        return {}

    def close(self) -> None:
        """Release file handles and maps."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def info(self, name: str) -> TensorInfo:
        infos = self.infos()
        if name not in infos:
            raise FormatError(self.path, "no such tensor", tensor=name)
        return infos[name]


def float32_destination(out: np.ndarray, n: int) -> np.ndarray:
    """The first `n` elements of `out` as a flat writable view; a clear error for an unusable buffer."""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"out must be a float32 numpy array, got {got}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writable C-contiguous array")
    if out.size < n:
        raise ValueError(f"out has {out.size} elements, the tensor needs {n}")
    return out.reshape(-1)[:n]


def _fp8_e4m3fn_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exp = (b >> 3) & 0xF
        man = b & 0x7
        if exp == 0xF and man == 0x7:
            table[b] = np.nan
        elif exp == 0:
            table[b] = sign * (man / 8.0) * 2.0**-6
        else:
            table[b] = sign * (1 + man / 8.0) * 2.0 ** (exp - 7)
    return table


def _fp8_e5m2_table() -> np.ndarray:
    return (np.arange(256, dtype=np.uint16) << 8).view(np.float16).astype(np.float32)


FP8_E4M3FN = _fp8_e4m3fn_table()
FP8_E5M2 = _fp8_e5m2_table()


def raw_to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Convert a flat uint8 buffer of storage dtype `dtype` to float32 values."""
    if dtype == "F32":
        return raw.view("<f4").astype(np.float32)
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    if dtype == "BF16":
        out = raw.view("<u2").astype(np.uint32)
        out <<= 16
        return out.view(np.float32)
    if dtype == "F64":
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as a float32 copy would hold
            return raw.view("<f8").astype(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        table: np.ndarray = FP8_E4M3FN if dtype == "F8_E4M3" else FP8_E5M2
        return np.take(table, raw)
    ints = {"I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8"}
    if dtype in ints:
        return raw.view(ints[dtype]).astype(np.float32)
    if dtype == "BOOL":
        return raw.astype(np.float32)
    raise ValueError(dtype)


DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}


# Raw bytes converted per step of `pread_float32`: small enough that a chunk and its float32 output stay
# in a 1-2 MB L2 cache, large enough that the per-step Python overhead is negligible.
CONVERT_CHUNK_BYTES = 256 * 1024
_INT_VIEWS = {"I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4", "I64": "<i8",
              "U64": "<u8", "BOOL": "u1"}


def convert_into(raw: np.ndarray, dtype: str, out: np.ndarray) -> None:
    """Write the float32 values of the flat uint8 buffer `raw` (storage dtype `dtype`) into `out`.

    Same values as `raw_to_float32`, without allocating: one pass from a cache-sized buffer.
    """
    if dtype == "BF16":
        bits = out.view(np.uint32)
        bits[...] = raw.view("<u2")  # widen, then shift in place while the chunk is in cache
        bits <<= 16
    elif dtype == "F32":
        np.copyto(out, raw.view("<f4"))
    elif dtype == "F16":
        np.copyto(out, raw.view("<f2"))
    elif dtype == "F64":
        with np.errstate(over="ignore"):  # beyond float32's range: inf, without a RuntimeWarning on stderr
            np.copyto(out, raw.view("<f8"), casting="same_kind")
    elif dtype == "F8_E4M3":
        np.take(FP8_E4M3FN, raw, out=out)
    elif dtype == "F8_E5M2":
        np.take(FP8_E5M2, raw, out=out)
    elif dtype in _INT_VIEWS:
        np.copyto(out, raw.view(_INT_VIEWS[dtype]), casting="unsafe")
    else:
        raise ValueError(dtype)


def _pread(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    with open(fd, "rb", buffering=0, closefd=False) as fh:  # platforms without pread (Windows)
        fh.seek(offset)
        return fh.readinto(view) or 0


def _pread_exact(fd: int, view: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(view):
        got = _pread(fd, view[done:], offset + done)
        if got <= 0:
            raise FormatError(path, f"file ended at byte {offset + done} while reading tensor data; truncated?")
        done += got


# Outputs this large come from an anonymous map filled in by the kernel at once (MAP_POPULATE): cheaper
# than faulting in fresh pages one by one, and free of the transparent-huge-page compaction stalls
# that np.empty's large allocations hit when the page cache has filled memory.
_POPULATE_MIN_BYTES = 16 * 1024 * 1024


def empty_float32(n: int) -> np.ndarray:
    """An uninitialised float32 array of `n` elements, allocated for a fast first write."""
    if n * 4 >= _POPULATE_MIN_BYTES and hasattr(mmap, "MAP_POPULATE"):
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        return np.frombuffer(mmap.mmap(-1, n * 4, flags=flags), dtype=np.float32)
    return np.empty(n, dtype=np.float32)


def _convert_range(fd: int, path: Path, offset: int, dtype: str, out: np.ndarray, start: int, stop: int) -> None:
    size = DTYPE_SIZES[dtype]
    per = max(1, CONVERT_CHUNK_BYTES // size)
    buf = np.empty(min(stop - start, per) * size, dtype=np.uint8)
    view = buf.data
    for i in range(start, stop, per):
        k = min(per, stop - i)
        _pread_exact(fd, view[: k * size], offset + i * size, path)
        convert_into(buf[: k * size], dtype, out[i : i + k])


READ_THREADS = max(1, int(os.environ.get("MODELTRACE_READ_THREADS", "0") or 0) or min(4, os.cpu_count() or 1))
"""Threads that convert one large tensor (pread and numpy's conversions release the GIL); set
MODELTRACE_READ_THREADS=1 for one. Conversion, not the disk, bounds a bf16 read from the page cache."""
THREADED_MIN_BYTES = 8 * 1024 * 1024
"""Tensors smaller than this (stored bytes) are converted on the calling thread: a hand-off costs more."""
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The conversion threads, made on first use and again in a forked child (which has none of them)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="modeltrace-read")
            _POOL_PID = os.getpid()
        return _POOL


def _convert_parallel(fd: int, path: Path, offset: int, dtype: str, out: np.ndarray, n: int) -> None:
    """`_convert_range` over [0, n), split into contiguous parts converted by up to READ_THREADS threads."""
    size = DTYPE_SIZES[dtype]
    parts = min(READ_THREADS, n * size // THREADED_MIN_BYTES)
    if parts <= 1:
        _convert_range(fd, path, offset, dtype, out, 0, n)
        return
    per = max(1, CONVERT_CHUNK_BYTES // size)
    step = -(-n // parts // per) * per  # whole chunks per part
    futures = [_pool().submit(_convert_range, fd, path, offset, dtype, out, a, min(n, a + step))
               for a in range(0, n, step)]
    for f in futures:
        f.result()  # a FormatError from any part (a truncated file) is raised here


def pread_float32(fd: int, path: Path, offset: int, nbytes: int, dtype: str,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Read `nbytes` at `offset` of an open file as a flat float32 array, converting chunk by chunk.

    Reads with pread into a small reused buffer rather than through a memory map: the process then
    holds only the output array (no mapped file pages count toward its memory), and each chunk is
    converted while it is still in the CPU cache. `out`, a flat float32 array of exactly the right
    length, is written instead of a fresh array (see `TensorSource.read_into`).
    """
    size = DTYPE_SIZES[dtype]
    n = nbytes // size
    if out is None:
        out = empty_float32(n)
    elif out.shape != (n,) or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}, expected ({n},) float32")
    if n == 0:
        return out
    if dtype == "F32" and sys.byteorder == "little":
        _pread_exact(fd, out.data.cast("B"), offset, path)  # one copy, straight into the result
        return out
    _convert_parallel(fd, path, offset, dtype, out, n)
    return out


def release_map(mm: Any) -> None:
    """Close a memory map if nothing still points into it (else it is freed with the last view)."""
    if mm is None:
        return
    try:
        mm.close()
    except BufferError:
        pass  # a caller still holds a view
