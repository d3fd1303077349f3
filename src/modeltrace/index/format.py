"""The fingerprint file: a versioned JSON header plus named little-endian arrays, parsed with bounds.

Layout (all integers little-endian)::

    b"MTFP"  u32 header_length  header (UTF-8 JSON object)  array bytes

The header carries ``schema`` (``modeltrace.fingerprint``), ``version``, the model's metadata and an
``arrays`` table ``{name: {"dtype", "shape", "offset", "nbytes"}}`` whose offsets count from the first
byte after the header. Parsing never trusts the file: the header length, the JSON size, every dtype,
shape, offset and length are checked against caps and against the bytes actually present, and any
violation is a `FormatError` naming the file. Nothing in a fingerprint is executed.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError

MAGIC = b"MTFP"
SCHEMA = "modeltrace.fingerprint"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_ARRAYS = 100_000
MAX_NDIM = 4
DTYPES: dict[str, np.dtype[Any]] = {"i1": np.dtype("i1"), "u1": np.dtype("u1"), "i4": np.dtype("<i4"),
                                    "u8": np.dtype("<u8"), "f2": np.dtype("<f2"), "f4": np.dtype("<f4")}


@dataclass(frozen=True)
class RawFingerprint:
    """A parsed fingerprint file: its header (without the array table) and its arrays by name."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def is_fingerprint_file(path: str | Path) -> bool:
    """True when `path` is a regular file that starts with the fingerprint magic."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with p.open("rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _dtype_name(arr: np.ndarray) -> str:
    for name, dt in DTYPES.items():
        if arr.dtype == dt or (arr.dtype.kind == dt.kind and arr.dtype.itemsize == dt.itemsize):
            return name
    raise ValueError(f"unsupported array dtype {arr.dtype}")


def dumps(raw: RawFingerprint) -> bytes:
    """The bytes of a fingerprint file (array order: sorted by name, so equal content gives equal bytes)."""
    table: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(raw.arrays):
        arr = np.ascontiguousarray(raw.arrays[name])
        dname = _dtype_name(arr)
        data = arr.astype(DTYPES[dname], copy=False).tobytes()
        table[name] = {"dtype": dname, "shape": list(arr.shape), "offset": offset, "nbytes": len(data)}
        blobs.append(data)
        offset += len(data)
    header = dict(raw.header)
    header["arrays"] = table
    hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(hb)) + hb + b"".join(blobs)


def write(raw: RawFingerprint, path: Path) -> int:
    """Write atomically (temporary file, then rename); returns the size in bytes."""
    data = dumps(raw)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


def loads(data: bytes, where: str | Path = "<fingerprint>") -> RawFingerprint:
    """Parse fingerprint bytes; every defect is a `FormatError` naming `where`."""
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(where, f"fingerprint is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte cap")
    if data[:4] != MAGIC:
        raise FormatError(where, "not a modeltrace fingerprint (bad magic bytes)")
    if len(data) < 8:
        raise FormatError(where, "fingerprint truncated in its header length")
    (hlen,) = struct.unpack("<I", data[4:8])
    if hlen > MAX_HEADER_BYTES:
        raise FormatError(where, f"fingerprint header is {hlen} bytes, over the {MAX_HEADER_BYTES}-byte cap")
    if 8 + hlen > len(data):
        raise FormatError(where, f"fingerprint truncated: header of {hlen} bytes, file has {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + hlen].decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FormatError(where, "fingerprint header is not UTF-8") from exc
    except RecursionError as exc:
        raise FormatError(where, "fingerprint header nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(where, f"fingerprint header is not valid JSON ({exc.msg})") from exc
    if not isinstance(header, dict):
        raise FormatError(where, "fingerprint header is not a JSON object")
    if header.get("schema") != SCHEMA:
        raise FormatError(where, f"schema is {header.get('schema')!r}, expected {SCHEMA!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(where, f"fingerprint version {version!r} is not a positive integer")
    if version > VERSION:
        raise FormatError(where, f"fingerprint version {version} is newer than this modeltrace reads ({VERSION})",
                          hint="upgrade modeltrace")
    table = header.pop("arrays", {})
    if not isinstance(table, dict):
        raise FormatError(where, "the 'arrays' table is not an object")
    if len(table) > MAX_ARRAYS:
        raise FormatError(where, f"{len(table)} arrays, over the {MAX_ARRAYS} cap")
    body = memoryview(data)[8 + hlen:]
    arrays: dict[str, np.ndarray] = {}
    for name, spec in table.items():
        arrays[name] = _array(where, name, spec, body)
    return RawFingerprint(header, arrays)


def _array(where: str | Path, name: str, spec: Any, body: memoryview) -> np.ndarray:
    if not isinstance(spec, dict):
        raise FormatError(where, f"array {name!r}: entry is not an object")
    dname, shape, offset, nbytes = spec.get("dtype"), spec.get("shape"), spec.get("offset"), spec.get("nbytes")
    if dname not in DTYPES:
        raise FormatError(where, f"array {name!r}: dtype {dname!r} not one of {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_FILE_BYTES for d in shape)):
        raise FormatError(where, f"array {name!r}: shape {shape!r} is not a list of at most {MAX_NDIM} sizes")
    for label, v in (("offset", offset), ("nbytes", nbytes)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise FormatError(where, f"array {name!r}: {label} {v!r} is not a non-negative integer")
    assert isinstance(offset, int) and isinstance(nbytes, int)
    dt = DTYPES[dname]
    numel = math.prod(shape)
    if numel * dt.itemsize != nbytes:
        raise FormatError(where, f"array {name!r}: shape {shape} of {dname} needs {numel * dt.itemsize} bytes, "
                                 f"table says {nbytes}")
    if offset + nbytes > len(body):
        raise FormatError(where, f"array {name!r}: bytes {offset}..{offset + nbytes} lie beyond the end of the "
                                 f"file; truncated?")
    return np.frombuffer(body[offset:offset + nbytes], dtype=dt).reshape(shape).copy()


def read(path: Path) -> RawFingerprint:
    """Read and parse a fingerprint file (size-capped before reading)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise FormatError(path, f"cannot read fingerprint: {exc.strerror or exc}") from exc
    if size > MAX_FILE_BYTES:
        raise FormatError(path, f"fingerprint is {size} bytes, over the {MAX_FILE_BYTES}-byte cap")
    return loads(path.read_bytes(), path)


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows as int8 with one float16 scale each (max-abs scaling): 1 byte per value, cosines kept to ~1e-2."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("quantize expects a 2-D array")
    scale = np.max(np.abs(x), axis=1) / 127.0 if x.size else np.zeros(x.shape[0], dtype=np.float32)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0).astype(np.float16)
    s32 = scale.astype(np.float32)
    q = np.clip(np.rint(np.nan_to_num(x) / s32[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out: np.ndarray = q.astype(np.float32) * scale.astype(np.float32)[:, None]
    return out
