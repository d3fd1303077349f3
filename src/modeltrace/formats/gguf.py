"""GGUF reader: our own bounds-checked walk of the header; the `gguf` package's tables and dequantizers.

`gguf.GGUFReader` trusts the counts in a file (an absurd array length makes it loop for ever,
an absurd tensor count makes it allocate) and decodes every array up front; `scan_header`
walks the header with every count and length checked against the file size, and values are
decoded only when asked for. Shapes are reported in numpy order (GGUF stores dimensions innermost
first); tensors are dequantized to float32 one at a time with `gguf.quants.dequantize`.
"""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError
from modeltrace.formats.base import MAX_NAME_CHARS, TensorInfo, TensorSource, check_shape, release_map

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 8
"""Most dimensions of a tensor (GGML_MAX_DIMS is 4; a little room for other writers)."""
MAX_ARRAY_DEPTH = 4
"""Arrays of arrays nested deeper than this are refused."""
MAX_KEY_BYTES = 65_535
"""Longest metadata key."""
ARRAY_SUMMARY_CAP = 64  # arrays longer than this are summarized by metadata()
ARRAY_HEAD = 8
DEFAULT_ALIGNMENT = 32
READ_CHUNK_ELEMENTS = 1 << 22  # elements dequantized at a time by read()

_INTEGER_TYPES = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
_NUMBER_TYPES = _INTEGER_TYPES | {6, 12}
# Keys whose value type the GGUF specification fixes, and which later steps rely on: key -> (value type
# set, array item type set or None). A file that stores, say, strings as token types is refused here.
_KEY_TYPES: dict[str, tuple[frozenset[int], frozenset[int] | None]] = {
    "general.architecture": (frozenset({8}), None),
    "general.alignment": (frozenset({4}), None),
    "tokenizer.ggml.model": (frozenset({8}), None),
    "tokenizer.ggml.pre": (frozenset({8}), None),
    "tokenizer.ggml.tokens": (frozenset({9}), frozenset({8})),
    "tokenizer.ggml.merges": (frozenset({9}), frozenset({8})),
    "tokenizer.ggml.token_type": (frozenset({9}), _INTEGER_TYPES),
    "tokenizer.ggml.scores": (frozenset({9}), _NUMBER_TYPES),
    "tokenizer.chat_template": (frozenset({8}), None),
}
_TOKEN_ID_SUFFIX = "_token_id"

# GGUF value type -> fixed byte size (strings and arrays are variable).
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
               7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}
UNQUANTIZED = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
_PLAIN_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4",
                 "I64": "<i8"}


def sniff(head: bytes) -> bool:
    """GGUF files start with the ASCII magic ``GGUF``."""
    return head[:4] == MAGIC


@dataclass(frozen=True)
class KeyValue:
    """Where one metadata value sits; decoded only when asked for."""

    key: str
    vtype: int
    pos: int


@dataclass(frozen=True)
class TensorEntry:
    """One tensor info record, checked against the file size."""

    name: str
    dims: tuple[int, ...]  # GGUF order: innermost first
    qtype: int
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class HeaderScan:
    """What the bounds-checked walk of a GGUF header found."""

    version: int
    tensor_count: int
    kv_count: int
    alignment: int
    data_start: int
    kvs: dict[str, KeyValue]
    tensors: dict[str, TensorEntry]


class _Walker:
    """Reads primitive values from a memory map, every read checked against the end of the file."""

    def __init__(self, path: Path, buf: Any, size: int) -> None:
        self.path, self.buf, self.size, self.pos = path, buf, size, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(self.path, f"{what} at byte {self.pos} needs {n} bytes but the file ends at "
                              f"{self.size}; truncated or corrupt header")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> bytes:
        n = self.unpack("Q", what + " length")
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def value(self, vtype: int, what: str, decode: bool, depth: int = 0) -> Any:
        """Read one value of GGUF type `vtype`; with decode=False only skip it (cheap for arrays)."""
        if vtype in _SCALAR_SIZES:
            n = _SCALAR_SIZES[vtype]
            self.need(n, what)
            v = struct.unpack_from(_SCALAR_FORMATS[vtype], self.buf, self.pos)[0] if decode else None
            self.pos += n
            return v
        if vtype == _STRING:
            raw = self.string(what)
            return raw.decode("utf-8", "replace") if decode else None
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise FormatError(self.path, f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            itype = self.unpack("I", what + " item type")
            count = self.unpack("Q", what + " length")
            if itype in _SCALAR_SIZES:
                n = count * _SCALAR_SIZES[itype]
                self.need(n, f"{what} ({count} items)")
                out = None
                if decode:
                    out = np.frombuffer(self.buf, dtype=_SCALAR_FORMATS[itype], count=count,
                                        offset=self.pos).tolist()
                self.pos += n
                return out
            if itype not in (_STRING, _ARRAY):
                raise FormatError(self.path, f"{what}: unknown array item type {itype}")
            self.need(count * 8, f"{what} ({count} items)")  # every string/array item has an 8+ byte prefix
            items = [self.value(itype, what, decode, depth + 1) for _ in range(count)]
            return items if decode else None
        raise FormatError(self.path, f"{what}: unknown value type {vtype}")

    def array_summary(self, what: str) -> dict[str, Any]:
        """An array's item type, length and first items, without decoding the rest."""
        itype = self.unpack("I", what + " item type")
        count = self.unpack("Q", what + " length")
        head: list[Any] = []
        if itype in _SCALAR_SIZES:
            k = min(count, ARRAY_HEAD)
            head = np.frombuffer(self.buf, dtype=_SCALAR_FORMATS[itype], count=k, offset=self.pos).tolist()
        else:
            for _ in range(min(count, ARRAY_HEAD)):
                head.append(self.value(itype, what, True, 1))
        return {"array": _TYPE_NAMES.get(itype, str(itype)), "length": count, "head": head}


def scan_header(path: Path, buf: Any, size: int) -> HeaderScan:
    """Walk magic, version, counts, every key-value and tensor info, each checked against the file size."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if size < 24:
        raise FormatError(path, f"file is {size} bytes, too short for a GGUF header (24 bytes)")
    if bytes(buf[:4]) != MAGIC:
        raise FormatError(path, f"bad magic {bytes(buf[:4])!r}, expected b'GGUF'")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version & 0xFFFF == 0 and version:
        raise FormatError(path, "big-endian GGUF files are not supported")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(path, f"GGUF version {version} is not supported (supported: 2, 3)")
    tensor_count, kv_count = struct.unpack_from("<QQ", buf, 8)
    # The smallest key-value is 13 bytes (8-byte key length, 4-byte type, 1-byte value); the smallest
    # tensor info is 24 bytes (8-byte name length, 4-byte ndims, 4-byte type, 8-byte offset).
    room = size - 24
    if kv_count > room // 13 or tensor_count > room // 24 or kv_count * 13 + tensor_count * 24 > room:
        raise FormatError(path, f"header claims {tensor_count} tensors and {kv_count} key-values, which "
                          f"cannot fit in a file of {size} bytes")
    w = _Walker(path, buf, size)
    w.pos = 24
    alignment = DEFAULT_ALIGNMENT
    kvs: dict[str, KeyValue] = {}
    for i in range(kv_count):
        raw_key = w.string(f"key {i}")
        if len(raw_key) > MAX_KEY_BYTES:
            raise FormatError(path, f"key {i} is {len(raw_key)} bytes long, over the {MAX_KEY_BYTES}-byte cap")
        key = raw_key.decode("utf-8", "replace")
        vtype = w.unpack("I", f"type of key {_show(key)}")
        pos = w.pos
        _check_key_type(path, key, vtype, buf, pos, size)
        value = w.value(vtype, f"value of key {_show(key)}", decode=vtype != _ARRAY)
        if key in kvs:
            raise FormatError(path, f"key {_show(key)} appears twice")
        kvs[key] = KeyValue(key, vtype, pos)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise FormatError(path, f"general.alignment {value!r} is not a power of two (u32)")
            alignment = value
    entries: list[tuple[str, tuple[int, ...], int, int, int]] = []
    for i in range(tensor_count):
        raw_name = w.string(f"tensor info {i} name")
        if len(raw_name) > MAX_NAME_CHARS:
            raise FormatError(path, f"tensor info {i} has a name of {len(raw_name)} bytes, over the "
                              f"{MAX_NAME_CHARS}-byte cap")
        name = raw_name.decode("utf-8", "replace")
        shown = _show(name)
        ndims = w.unpack("I", f"tensor {shown} dimension count")
        if ndims > MAX_DIMS:
            raise FormatError(path, f"{ndims} dimensions is more than GGUF allows", tensor=shown)
        w.need(8 * ndims, f"tensor {shown} dimensions")
        dims = struct.unpack_from("<" + "Q" * ndims, buf, w.pos)
        w.pos += 8 * ndims
        qtype = w.unpack("I", f"tensor {shown} type")
        offset = w.unpack("Q", f"tensor {shown} offset")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        except (ValueError, KeyError):
            raise FormatError(path, f"unknown tensor type {qtype}", tensor=shown) from None
        check_shape(path, tuple(dims), shown)
        numel = 1
        for d in dims:
            numel *= d
        if dims and dims[0] % block:
            raise FormatError(path, f"row length {dims[0]} is not a multiple of the {block}-element block of "
                              f"{GGMLQuantizationType(qtype).name}", tensor=shown)
        entries.append((name, tuple(dims), qtype, offset, numel // block * type_size))
    data_start = w.pos + (-w.pos) % alignment
    tensors: dict[str, TensorEntry] = {}
    for name, dims, qtype, offset, nbytes in entries:
        if offset % alignment:
            raise FormatError(path, f"tensor data offset {offset} is not a multiple of the alignment "
                              f"({alignment})", tensor=_show(name))
        if data_start + offset + nbytes > size:
            raise FormatError(path, f"tensor data [{offset}, {offset + nbytes}) runs past the end of the "
                              f"data ({max(0, size - data_start)} bytes); truncated?", tensor=_show(name))
        if name in tensors:
            raise FormatError(path, "tensor name appears twice", tensor=_show(name))
        tensors[name] = TensorEntry(name, dims, qtype, data_start + offset, nbytes)
    # Tensors may not share bytes: each byte of data backs one tensor (an overlap would let one stored
    # tensor count twice, or two readers see different weights).
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise FormatError(path, f"tensors {_show(n0)!r} and {_show(n1)!r} overlap in the data",
                              tensor=_show(n1))
    return HeaderScan(version, tensor_count, kv_count, alignment, data_start, kvs, tensors)


def _check_key_type(path: Path, key: str, vtype: int, buf: Any, pos: int, size: int) -> None:
    """Keys whose type the specification fixes must have it (token types as numbers, tokens as strings)."""
    want = _KEY_TYPES.get(key)
    if want is None and key.startswith("tokenizer.ggml.") and key.endswith(_TOKEN_ID_SUFFIX):
        want = (_INTEGER_TYPES, None)
    if want is None:
        return
    types, items = want
    if vtype not in types:
        raise FormatError(path, f"key {_show(key)} has type {_TYPE_NAMES.get(vtype, vtype)}, not "
                          f"{' or '.join(sorted(_TYPE_NAMES[t] for t in types))}")
    if items is not None and pos + 4 <= size:
        (itype,) = struct.unpack_from("<I", buf, pos)
        if itype not in items:
            raise FormatError(path, f"key {_show(key)} is an array of {_TYPE_NAMES.get(itype, itype)}, not of "
                              f"{' or '.join(sorted(_TYPE_NAMES[t] for t in items))}")


def _show(raw: bytes | str) -> str:
    """A name from a file, decoded leniently, with control characters escaped."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text.encode("unicode_escape").decode("ascii")[:200]


class GGUFReader(TensorSource):
    """One .gguf file: metadata key-values, tokenizer metadata, tensors dequantized on demand.

    The header is parsed by `scan_header` (bounds-checked, lazy about values) rather than by
    ``gguf.GGUFReader``, which decodes every array item into its own numpy view (seconds for a
    256k-token vocabulary); the `gguf` package supplies the type tables and the dequantizers.
    """

    format = "gguf"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from gguf.constants import GGMLQuantizationType

        size = os.path.getsize(self.path)
        if size == 0:
            raise FormatError(self.path, "file is empty")
        with open(self.path, "rb") as fh:
            self._mm: mmap.mmap | None = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.scan = scan_header(self.path, self._mm, size)
        except BaseException:
            self.close()
            raise
        infos: dict[str, TensorInfo] = {}
        for t in self.scan.tensors.values():
            qname = GGMLQuantizationType(t.qtype).name
            infos[t.name] = TensorInfo(t.name, tuple(reversed(t.dims)), qname, str(self.path),
                                       quantization=None if qname in UNQUANTIZED else qname,
                                       extra={"offset": t.offset, "nbytes": t.nbytes})
        self._infos = infos

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def _value(self, kv: KeyValue, full: bool) -> Any:
        w = _Walker(self.path, self._map(), self._map().size())
        w.pos = kv.pos
        if kv.vtype == _ARRAY and not full:
            summary = w.array_summary(f"value of key {_show(kv.key)}")
            if summary["length"] > ARRAY_SUMMARY_CAP:
                return summary
            w.pos = kv.pos
        return w.value(kv.vtype, f"value of key {_show(kv.key)}", decode=True)

    def metadata(self, *, full_arrays: bool = False) -> dict[str, Any]:
        """Every key-value as plain Python values; arrays over 64 items become {array, length, head}."""
        out = {k: self._value(kv, full_arrays) for k, kv in self.scan.kvs.items()}
        out["GGUF.version"] = self.scan.version
        return out

    def tokenizer_metadata(self) -> dict[str, Any]:
        """Every ``tokenizer.*`` key-value in full (token lists, scores, merges, chat template)."""
        return {k: self._value(kv, True) for k, kv in self.scan.kvs.items() if k.startswith("tokenizer.")}

    def array(self, key: str) -> list[Any]:
        """One metadata value in full (a list for arrays)."""
        if key not in self.scan.kvs:
            raise FormatError(self.path, f"no metadata key {_show(key)}")
        value = self._value(self.scan.kvs[key], True)
        return value if isinstance(value, list) else [value]

    def _raw(self, name: str, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, int]:
        """The stored bytes of rows start:stop of the leading axis as a (rows, ..., row_bytes) view."""
        info = self.info(name)
        t = self.scan.tensors[name]
        shape = info.shape
        if len(shape) >= 2 and start is not None and stop is not None:
            rows = shape[0]
            start, stop = max(0, min(start, rows)), max(0, min(stop, rows))
            stop = max(start, stop)
            per_row = t.nbytes // rows if rows else 0
            raw = np.frombuffer(self._map(), dtype=np.uint8, count=(stop - start) * per_row,
                                offset=t.offset + start * per_row)
            shape = (stop - start,) + shape[1:]
        else:
            raw = np.frombuffer(self._map(), dtype=np.uint8, count=t.nbytes, offset=t.offset)
        if not shape:
            return raw, t.qtype
        numel_row = shape[-1]
        byte_shape = shape[:-1] + ((raw.size // max(1, _prod(shape[:-1]))) if numel_row else 0,)
        return raw.reshape(byte_shape), t.qtype

    def _dequantize(self, name: str, raw: np.ndarray, qtype: int, shape: tuple[int, ...]) -> np.ndarray:
        import gguf
        from gguf.constants import GGMLQuantizationType

        qt = GGMLQuantizationType(qtype)
        qname = qt.name
        try:
            # values are what the file holds: an inf or NaN scale gives inf or NaN, without a RuntimeWarning
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                if qname in _PLAIN_DTYPES:
                    out = raw.view(_PLAIN_DTYPES[qname]).astype(np.float32)
                elif qname == "BF16":
                    out = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
                else:
                    out = np.asarray(gguf.quants.dequantize(raw, qt), dtype=np.float32)
        except NotImplementedError as exc:
            raise FormatError(self.path, f"dequantizing {qname} is not supported",
                              tensor=_show(name)) from exc
        except (ValueError, TypeError, IndexError) as exc:
            raise FormatError(self.path, f"cannot dequantize {qname} data ({exc})",
                              tensor=_show(name)) from exc
        return out.reshape(shape)

    def read(self, name: str) -> np.ndarray:
        info = self.info(name)
        raw, qtype = self._raw(name)
        if len(info.shape) < 2 or info.numel <= READ_CHUNK_ELEMENTS:
            return self._dequantize(name, raw, qtype, info.shape)
        # Dequantize into the result chunk by chunk, so scratch memory stays small beside the output.
        out = np.empty(info.shape, dtype=np.float32)
        step = max(1, READ_CHUNK_ELEMENTS // (info.numel // info.shape[0]))
        for i in range(0, info.shape[0], step):
            part = raw[i:i + step]
            out[i:i + step] = self._dequantize(name, part, qtype, (part.shape[0],) + info.shape[1:])
        return out

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self.info(name)
        if not info.shape:
            return self.read(name)
        if len(info.shape) == 1:  # elements of a vector: dequantize only the blocks that hold them
            from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

            t = self.scan.tensors[name]
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.qtype)]
            n = info.shape[0]
            stop = min(n, max(0, stop))
            start = min(max(0, start), stop)
            b0, b1 = start // block, -(-stop // block)
            raw = np.frombuffer(self._map(), dtype=np.uint8, count=(b1 - b0) * type_size,
                                offset=t.offset + b0 * type_size)
            values = self._dequantize(name, raw, t.qtype, ((b1 - b0) * block,))
            return np.ascontiguousarray(values[start - b0 * block: stop - b0 * block])
        raw, qtype = self._raw(name, start, stop)
        return self._dequantize(name, raw, qtype, (raw.shape[0],) + info.shape[1:])

    def close(self) -> None:
        release_map(self._mm)
        self._mm = None


def _prod(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _plain(value: Any) -> Any:
    """numpy scalars and lists of them as plain Python values."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
