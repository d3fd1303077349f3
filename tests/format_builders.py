"""Byte-level builders for hostile weight files: pickles opcode by opcode, torch zips with forged directory
entries, legacy checkpoints, GGUF headers. No torch needed (shared by tests/formats and tests/fuzz)."""

from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------- pickle opcodes (protocol 2)

PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
EMPTY_TUPLE = b")"
SETITEMS = b"u"
SETITEM = b"s"
APPENDS = b"e"
APPEND = b"a"
TUPLE = b"t"
TUPLE1 = b"\x85"
REDUCE = b"R"
BINPERSID = b"Q"
NONE = b"N"
POP = b"0"
FALSE = b"\x89"


def u(text: str) -> bytes:
    """BINUNICODE: a str."""
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def i(n: int) -> bytes:
    """The shortest integer opcode for `n` (BININT1, BININT, LONG1 or LONG4)."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(raw) < 256:
        return b"\x8a" + bytes([len(raw)]) + raw
    return b"\x8b" + struct.pack("<I", len(raw)) + raw


def put(idx: int) -> bytes:
    return b"q" + bytes([idx]) if idx < 256 else b"r" + struct.pack("<I", idx)


def get(idx: int) -> bytes:
    return b"h" + bytes([idx]) if idx < 256 else b"j" + struct.pack("<I", idx)


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def ints(values: tuple[int, ...] | list[int]) -> bytes:
    return tup(*(i(v) for v in values))


def dict_of(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in pairs) + SETITEMS if pairs else EMPTY_DICT


def storage(key: str, numel: int, stype: str = "FloatStorage") -> bytes:
    """A persistent storage reference, as torch.save writes it."""
    return tup(u("storage"), glob("torch", stype), u(key), u("cpu"), i(numel)) + BINPERSID


def tensor(key: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...] | None = None,
           offset: int = 0, stype: str = "FloatStorage") -> bytes:
    """_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
    if stride is None:
        stride_l = []
        acc = 1
        for d in reversed(shape):
            stride_l.append(acc)
            acc *= d
        stride = tuple(reversed(stride_l))
    hooks = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    return (glob("torch._utils", "_rebuild_tensor_v2")
            + tup(storage(key, numel, stype), i(offset), ints(shape), ints(stride), FALSE, hooks) + REDUCE)


def pickle_of(body: bytes) -> bytes:
    return PROTO2 + body + STOP


def state_dict_pickle(tensors: dict[str, bytes]) -> bytes:
    """data.pkl of {name: tensor expression}."""
    return pickle_of(dict_of([(u(name), expr) for name, expr in tensors.items()]))


# ---------------------------------------------------------------------------- torch zip checkpoints


@dataclass
class Member:
    data: bytes
    deflate: bool = False
    declare: int | None = None  # forge the uncompressed size in the local header and the directory


def torch_zip(path: Path, pkl: bytes, storages: dict[str, Member | bytes], archive: str = "archive") -> Path:
    """A torch >= 1.6 zip checkpoint; storages may be deflated and have forged sizes (CRC stays right)."""
    members: dict[str, Member] = {f"{archive}/data.pkl": Member(pkl), f"{archive}/byteorder": Member(b"little")}
    for key, m in storages.items():
        members[f"{archive}/data/{key}"] = m if isinstance(m, Member) else Member(m)
    with zipfile.ZipFile(path, "w") as zf:
        for name, m in members.items():
            zf.writestr(name, m.data, compress_type=zipfile.ZIP_DEFLATED if m.deflate else zipfile.ZIP_STORED)
    raw = bytearray(path.read_bytes())
    for name, m in members.items():
        if m.declare is not None:
            _forge_size(raw, name.encode(), m.declare)
    path.write_bytes(bytes(raw))
    return path


def _forge_size(raw: bytearray, name: bytes, size: int) -> None:
    """Overwrite a member's uncompressed size in its local header and its central directory entry."""
    pos = 0
    while (pos := raw.find(b"PK\x03\x04", pos)) >= 0:
        n = struct.unpack_from("<H", raw, pos + 26)[0]
        if raw[pos + 30: pos + 30 + n] == name:
            struct.pack_into("<I", raw, pos + 22, size)
        pos += 4
    pos = 0
    while (pos := raw.find(b"PK\x01\x02", pos)) >= 0:
        n = struct.unpack_from("<H", raw, pos + 28)[0]
        if raw[pos + 46: pos + 46 + n] == name:
            struct.pack_into("<I", raw, pos + 24, size)
        pos += 4


def legacy_checkpoint(path: Path, root_pkl: bytes, storages: list[tuple[str, int, bytes]]) -> Path:
    """A pre-1.6 checkpoint: magic, protocol, sys info, the object tree, storage keys, then each storage as
    (element count, bytes)."""
    out = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
           pickle.dumps({"little_endian": True}, protocol=2), root_pkl,
           pickle.dumps([k for k, _, _ in storages], protocol=2)]
    for _key, numel, data in storages:
        out.append(struct.pack("<q", numel) + data)
    path.write_bytes(b"".join(out))
    return path


# ---------------------------------------------------------------------------- GGUF


def gguf_string(s: bytes | str) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def gguf_file(path: Path, kvs: list[bytes], tensors: list[tuple[str, tuple[int, ...], int, int]],
              data: bytes, alignment: int = 32, version: int = 3) -> Path:
    """A GGUF file from encoded key-values, tensor infos (name, dims innermost first, type, offset) and data."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, qtype, offset in tensors:
        head += gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        head += struct.pack("<IQ", qtype, offset)
    head += b"\x00" * ((-len(head)) % alignment)
    path.write_bytes(head + data)
    return path


def gguf_kv_u32(key: str, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<II", 4, value)


def gguf_kv_str(key: str, value: str) -> bytes:
    return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)


def gguf_kv_array(key: str, itype: int, items: bytes, count: int) -> bytes:
    return gguf_string(key) + struct.pack("<IIQ", 9, itype, count) + items
