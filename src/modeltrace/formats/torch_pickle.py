"""PyTorch checkpoint reader (.bin/.pt/.pth) that never needs torch and never runs the pickle's code.

A zip checkpoint holds ``<archive>/data.pkl`` (the object tree) and ``<archive>/data/<key>`` (raw
storages). The pickle is read by `safe_pickle.SafeUnpickler` (allow-listed stand-ins, bounded, nothing
imported or run). Tensors come back as `LazyTensor` records (storage key, offset, shape, stride), so
listing reads only the pickle and the zip directory; `read` slices one storage from a memory map, and
every size a zip entry or the pickle declares is checked against the bytes that back it.

The legacy (pre-1.6, non-zip) format is read too: five pickles in a row, then each storage as an
8-byte element count followed by its bytes.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
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
    raw_to_float32,
    release_map,
)
from modeltrace.formats.safe_pickle import (  # noqa: F401  (re-exported: the names a checkpoint may use)
    ALLOWED_GLOBALS,
    MAX_PICKLE_BYTES,
    STORAGE_DTYPES,
    TORCH_DTYPES,
    LazyTensor,
    SafeUnpickler,
    StorageRef,
    _brief,
    _FileSlice,
    _PickleShapeError,
    _show,
    _size,
    safe_load,
)

MAX_FLATTEN_NODES = 1_000_000
"""Most containers and tensors visited while naming the tensors of the object tree."""
MAX_FLATTEN_DEPTH = 32
"""Containers nested deeper than this in the object tree are not searched for tensors."""
MAX_KEY_INT_BITS = 128
"""Largest integer dict key turned into a name part (str() of a huge int is quadratic, then refused)."""
MAX_INFLATE_RATIO = 32
"""A compressed storage may inflate to at most this many times its compressed size (plus 1 MiB): torch
stores storages uncompressed, and a deflate bomb reaches 1032:1."""
INFLATE_SLACK_BYTES = 1024 * 1024
"""Allowance above MAX_INFLATE_RATIO for small members (a few KB of zeros may inflate further)."""
INFLATE_CHUNK_BYTES = 1024 * 1024
"""Bytes inflated per step: a member is streamed, never inflated past what was asked for."""
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "ema", "model_ema",
                "state_dict_ema")

NUMPY_DTYPES: dict[str, str] = {
    "F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U8": "u1", "BOOL": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "F8_E4M3": "u1",
    "F8_E5M2": "u1",
}


def sniff(head: bytes) -> bool:
    """A zip archive (torch >= 1.6 checkpoints) or a legacy checkpoint's leading pickle (protocol 2+)."""
    if head.startswith(b"PK\x03\x04"):
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


# ---------------------------------------------------------------------------- flattening


def _key_text(key: Any) -> str:
    """A dict key as a name part: strings and numbers only, with huge integers refused."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or key is None or isinstance(key, float):
        return str(key)
    if isinstance(key, int):
        if key.bit_length() > MAX_KEY_INT_BITS:
            raise _PickleShapeError(f"a dict key is an integer of {key.bit_length()} bits")
        return str(key)
    raise _PickleShapeError(f"a dict key is {_brief(key)}, not a string or number")


class _Flattener:
    """Names every tensor of an object tree by its path of keys and indices.

    Each container is entered once (a dict that holds itself, or a DAG of shared lists, would
    otherwise be walked along every path: 2^30 paths from 1.2 KB), and the walk stops with an error
    past `MAX_FLATTEN_NODES` visits or a name longer than `MAX_NAME_CHARS`.
    """

    def __init__(self, out: dict[str, LazyTensor], scalars: dict[str, Any]) -> None:
        self.out, self.scalars = out, scalars
        self.seen: set[int] = set()
        self.visits = 0

    def walk(self, obj: Any, prefix: str, depth: int = 0) -> None:
        self.visits += 1
        if self.visits > MAX_FLATTEN_NODES:
            raise _PickleShapeError(f"object tree has more than {MAX_FLATTEN_NODES} nodes")
        if len(prefix) > MAX_NAME_CHARS:
            raise _PickleShapeError(f"a tensor name is longer than {MAX_NAME_CHARS} characters")
        if isinstance(obj, LazyTensor):
            self.out[prefix] = obj
            return
        if isinstance(obj, (dict, list, tuple)):
            if depth > MAX_FLATTEN_DEPTH or id(obj) in self.seen:
                return
            self.seen.add(id(obj))
            if isinstance(obj, dict):
                for k, v in obj.items():
                    part = _key_text(k)
                    self.walk(v, f"{prefix}.{part}" if prefix else part, depth + 1)
            elif any(isinstance(v, (LazyTensor, dict, list, tuple)) for v in obj):
                for i, v in enumerate(obj):
                    self.walk(v, f"{prefix}.{i}" if prefix else str(i), depth + 1)
        elif (isinstance(obj, (int, float, str, bool)) or obj is None) and prefix and len(self.scalars) < 256:
            if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 64:
                obj = f"<integer of {obj.bit_length()} bits>"
            self.scalars[prefix] = obj if not isinstance(obj, str) else obj[:200]


def _flatten(obj: Any, prefix: str, out: dict[str, LazyTensor], scalars: dict[str, Any]) -> None:
    _Flattener(out, scalars).walk(obj, prefix)


def _has_direct_tensors(obj: dict[Any, Any]) -> bool:
    return any(isinstance(v, LazyTensor) for v in obj.values())


def select_weights(root: Any) -> tuple[Any, list[str]]:
    """The model's weights inside a checkpoint: unwrap `{"state_dict": ...}`-style wrappers (repeatedly)."""
    path: list[str] = []
    node = root
    seen: set[int] = set()
    while isinstance(node, dict) and id(node) not in seen and not _has_direct_tensors(node):
        seen.add(id(node))  # a wrapper that holds itself would otherwise be unwrapped for ever
        for key in WRAPPER_KEYS:
            if isinstance(node.get(key), dict):
                path.append(key)
                node = node[key]
                break
        else:
            break
    return node, path


# ---------------------------------------------------------------------------- reader


class TorchReader(TensorSource):
    """A PyTorch checkpoint (zip or legacy) read lazily: the pickle at open, one storage slice per read."""

    format = "torch"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._mm: mmap.mmap | None = None
        self._zip: zipfile.ZipFile | None = None
        self._inflated_key: str | None = None
        self._inflated_bytes = np.zeros(0, dtype=np.uint8)
        self._size = os.path.getsize(self.path)
        # storage key -> (absolute byte offset in the file or None when compressed, member name or None)
        self._spans: dict[str, tuple[int | None, str | None]] = {}
        with open(self.path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(b"PK\x03\x04"):
            root, self._kind = self._open_zip(), "zip"
        elif head[:1] == b"\x80":
            root, self._kind = self._open_legacy(), "legacy"
        else:
            raise FormatError(self.path, "not a PyTorch checkpoint (neither a zip archive nor a pickle)")
        weights, wrappers = select_weights(root)
        tensors: dict[str, LazyTensor] = {}
        scalars: dict[str, Any] = {}
        try:
            if isinstance(weights, LazyTensor):  # torch.save(tensor)
                tensors["tensor"] = weights
            else:
                _flatten(weights, "", tensors, scalars)
            if wrappers and isinstance(root, dict):  # epoch, step, ... beside the wrapped weights
                scalars = {}
                _flatten({k: v for k, v in root.items() if not isinstance(v, (dict, list, tuple))}, "", {},
                         scalars)
            top_keys = [_key_text(k)[:100] for k in root][:64] if isinstance(root, dict) else []
        except _PickleShapeError as exc:
            raise FormatError(self.path, f"pickle is not a tensor checkpoint: {exc}") from exc
        if not tensors and not isinstance(weights, dict):
            raise FormatError(self.path,
                              f"checkpoint holds a {type(weights).__name__}, not a dict of tensors")
        self._tensors = tensors
        self._meta: dict[str, Any] = {"container": self._kind, "wrapper": ".".join(wrappers) or None,
                                      "top_level_keys": top_keys, "scalars": scalars}
        self._infos = {name: self._check(name, t) for name, t in tensors.items()}

    # -- opening

    def _open_zip(self) -> Any:
        try:
            zf = zipfile.ZipFile(self.path)
            members = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise FormatError(self.path, f"not a readable zip archive ({exc}); truncated?") from exc
        self._zip = zf
        pkls = [m for m in members if m.filename == "data.pkl" or m.filename.endswith("/data.pkl")]
        if not pkls:
            raise FormatError(self.path, "zip archive has no data.pkl; not a PyTorch checkpoint")
        pkl = min(pkls, key=lambda m: m.filename.count("/"))
        prefix = pkl.filename[: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        names = {m.filename: m for m in members}
        if byteorder in names and self._inflate(names[byteorder], 16, "byteorder").strip() not in (b"little", b""):
            raise FormatError(self.path, "big-endian checkpoints are not supported")
        raw = self._inflate(pkl, MAX_PICKLE_BYTES, "data.pkl")
        storages: dict[str, StorageRef] = {}
        root = safe_load(io.BytesIO(raw), self.path, storages)
        for key, ref in storages.items():
            member = names.get(f"{prefix}data/{key}")
            if member is None:
                raise FormatError(self.path, f"storage {_show(key)!r} named by data.pkl is missing from the "
                                  f"archive (expected member {_show(prefix)}data/{_show(key)})")
            need = ref.numel * DTYPE_SIZES[ref.dtype]
            if member.file_size < need:
                raise FormatError(self.path, f"storage {_show(key)!r} holds {member.file_size} bytes but "
                                  f"{need} are needed; truncated?")
            self._check_member(member, need)
            self._spans[key] = (self._member_offset(member), member.filename)
        return root

    def _check_member(self, member: zipfile.ZipInfo, need: int) -> None:
        """A storage member's sizes must be possible: inside the file, and inflating no further than deflate can."""
        shown = _show(member.filename)
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FormatError(self.path, f"zip member {shown} uses compression method {member.compress_type}; "
                              "only stored and deflated members are read")
        if member.header_offset + member.compress_size > self._size:
            raise FormatError(self.path, f"zip member {shown} runs past the end of the file; truncated?")
        if member.compress_type == zipfile.ZIP_STORED and member.compress_size != member.file_size:
            raise FormatError(self.path, f"zip member {shown} is stored uncompressed but declares "
                              f"{member.file_size} bytes in {member.compress_size}")
        limit = member.compress_size * MAX_INFLATE_RATIO + INFLATE_SLACK_BYTES
        if member.compress_type == zipfile.ZIP_DEFLATED and need > limit:
            raise FormatError(self.path, f"zip member {shown} would inflate {member.compress_size} bytes to "
                              f"{need}, more than {MAX_INFLATE_RATIO} times its size; refused as a zip bomb")
        # a declared size beyond what the tensors need is never inflated (see _inflated): no check here

    def _inflate(self, member: zipfile.ZipInfo, limit: int, what: str, *, prefix: bool = False) -> bytes:
        """Exactly the bytes of `member` (at most `limit`), read in chunks: short or long members are errors.

        With `prefix`, only the first `limit` bytes are wanted (a storage larger than its tensors need):
        inflating stops there, whatever the entry declares.
        """
        if member.file_size > limit and not prefix:
            raise FormatError(self.path, f"{what} is {member.file_size} bytes, over the {limit}-byte cap")
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FormatError(self.path, f"{what} uses compression method {member.compress_type}; only stored "
                              "and deflated members are read")
        assert self._zip is not None
        parts: list[bytes] = []
        got = 0
        try:
            with self._zip.open(member) as fh:
                while got <= limit:
                    chunk = fh.read(min(INFLATE_CHUNK_BYTES, limit + 1 - got))
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib_error()) as exc:
            raise FormatError(self.path, f"cannot read {what} ({_show(str(exc))}); truncated?") from exc
        if prefix:
            if got < limit:
                raise FormatError(self.path, f"{what} inflates to {got} bytes but its zip entry declares "
                                  f"{member.file_size}")
            return b"".join(parts)[:limit]
        if got > limit:
            raise FormatError(self.path, f"{what} inflates past the {limit}-byte cap")
        if got != member.file_size:
            raise FormatError(self.path, f"{what} inflates to {got} bytes but its zip entry declares "
                              f"{member.file_size}")
        return b"".join(parts)

    def _member_offset(self, member: zipfile.ZipInfo) -> int | None:
        """Absolute offset of an uncompressed member's bytes, or None when it must be decompressed."""
        if member.compress_type != zipfile.ZIP_STORED:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(member.header_offset)
            local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise FormatError(self.path, f"zip member {_show(member.filename)} has a broken local header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start: int = member.header_offset + 30 + name_len + extra_len
        if start + member.file_size > self._size:
            raise FormatError(self.path, f"zip member {_show(member.filename)} runs past the end of the "
                              "file; truncated?")
        return start

    def _open_legacy(self) -> Any:
        storages: dict[str, StorageRef] = {}
        with open(self.path, "rb") as raw_fh:
            pk = _FileSlice(raw_fh, self._size)
            magic = safe_load(pk, self.path)
            if magic != LEGACY_MAGIC:
                raise FormatError(self.path, "a bare pickle, not a PyTorch checkpoint (magic number missing)",
                                  hint="only torch.save files are read")
            version = safe_load(pk, self.path)
            if version != 1001:
                raise FormatError(self.path, f"legacy checkpoint protocol {_brief(version)} is not supported")
            sys_info = safe_load(pk, self.path)
            if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
                raise FormatError(self.path, "big-endian checkpoints are not supported")
            root = safe_load(pk, self.path, storages)
            keys = safe_load(pk, self.path)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise FormatError(self.path, "legacy checkpoint's storage key list is malformed")
            pos = pk.tell()
        for key in keys:
            if pos + 8 > self._size:
                raise FormatError(self.path,
                                  f"storage {_show(key)!r} starts past the end of the file; truncated?")
            with open(self.path, "rb") as fh:
                fh.seek(pos)
                (numel,) = struct.unpack("<q", fh.read(8))
            ref = storages.get(key)
            if ref is None:
                raise FormatError(self.path, f"storage {_show(key)!r} is not referenced by the pickle")
            nbytes = numel * DTYPE_SIZES[ref.dtype]
            if numel < 0 or pos + 8 + nbytes > self._size:
                raise FormatError(self.path, f"storage {_show(key)!r} of {numel} elements runs past the end "
                                  "of the file; truncated?")
            if numel < ref.numel:
                raise FormatError(self.path,
                                  f"storage {_show(key)!r} holds {numel} elements, {ref.numel} needed")
            self._spans[key] = (pos + 8, None)
            pos += 8 + nbytes
        for key in storages:
            if key not in self._spans:
                raise FormatError(self.path, f"storage {_show(key)!r} named by the pickle is missing")
        return root

    def _check(self, name: str, t: LazyTensor) -> TensorInfo:
        """A view must lie inside its storage, and hold no more elements than the storage backs.

        The second rule keeps a 400-byte file from claiming 10^12 parameters through zero strides.
        """
        if len(t.shape) != len(t.stride) or any(d < 0 for d in t.shape) or any(s < 0 for s in t.stride):
            raise FormatError(self.path, f"invalid size {t.shape} / stride {t.stride}", tensor=_show(name))
        check_shape(self.path, t.shape, _show(name))
        item = DTYPE_SIZES[t.dtype]
        storage_items = t.storage.numel * DTYPE_SIZES[t.storage.dtype] // item
        numel = 1
        for d in t.shape:
            numel *= d
        if numel:
            last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
            if t.offset < 0 or last >= storage_items:
                raise FormatError(self.path, f"view (offset {t.offset}, size {t.shape}, stride {t.stride}) "
                                  f"runs past its storage of {storage_items} elements", tensor=_show(name))
            if numel > storage_items:
                raise FormatError(self.path, f"size {t.shape} has {numel} elements but its storage holds "
                                  f"{storage_items}", tensor=_show(name))
        return TensorInfo(name, t.shape, t.dtype, str(self.path),
                          extra={"storage": t.storage.key, "offset": t.offset, "stride": t.stride})

    # -- reading

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def metadata(self) -> dict[str, Any]:
        return dict(self._meta)

    def _storage_array(self, ref: StorageRef, dtype: str) -> np.ndarray:
        start, member = self._spans[ref.key]
        nbytes = ref.numel * DTYPE_SIZES[ref.dtype]
        npdt = np.dtype(NUMPY_DTYPES[dtype])
        if start is not None:
            if self._mm is None:
                with open(self.path, "rb") as fh:
                    self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            buf: Any = self._mm
            base = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=start)
        else:
            base = self._inflated(ref, member, nbytes)
        usable = nbytes - nbytes % npdt.itemsize
        return base[:usable].view(npdt)

    def _inflated(self, ref: StorageRef, member: str | None, nbytes: int) -> np.ndarray:
        """A compressed storage's first `nbytes`, inflated once and kept until another storage is asked for
        (row reads of one tensor then cost their rows, not a decompression each)."""
        if self._inflated_key != ref.key:
            assert self._zip is not None and member is not None
            info = self._zip.getinfo(member)
            data = self._inflate(info, nbytes, f"storage {_show(ref.key)!r}", prefix=True)
            if len(data) < nbytes:  # _check_member saw the declared size; this is what it held
                raise FormatError(self.path, f"storage {_show(ref.key)!r} inflates to {len(data)} bytes but "
                                  f"{nbytes} are needed")
            self._inflated_key, self._inflated_bytes = ref.key, np.frombuffer(data, dtype=np.uint8)
        return self._inflated_bytes[:nbytes]

    def _view(self, name: str) -> tuple[np.ndarray, str]:
        if name not in self._tensors:
            raise FormatError(self.path, "no such tensor", tensor=_show(name))
        t = self._tensors[name]
        store = self._storage_array(t.storage, t.dtype)
        item = store.dtype.itemsize
        if any(d == 0 for d in t.shape):
            return np.zeros(t.shape, dtype=store.dtype), t.dtype
        last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
        if t.offset < 0 or last >= store.size:  # as_strided past the buffer would read memory we do not own
            raise FormatError(self.path, f"view (offset {t.offset}, size {t.shape}, stride {t.stride}) runs "
                              f"past the {store.size} elements its storage holds", tensor=_show(name))
        store = store[t.offset:]
        strides = tuple(s * item for s in t.stride)
        view = np.lib.stride_tricks.as_strided(store, shape=t.shape, strides=strides, writeable=False)
        return view, t.dtype

    def read(self, name: str) -> np.ndarray:
        view, dtype = self._view(name)
        return _to_float32(view, dtype)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        view, dtype = self._view(name)
        if view.ndim == 0:
            return _to_float32(view, dtype)
        return _to_float32(view[max(0, start):max(0, stop)], dtype)

    def close(self) -> None:
        release_map(self._mm)
        self._mm = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._inflated_key, self._inflated_bytes = None, np.zeros(0, dtype=np.uint8)


def _to_float32(view: np.ndarray, dtype: str) -> np.ndarray:
    shape = view.shape
    flat = np.ascontiguousarray(view).reshape(-1)
    return raw_to_float32(flat.view(np.uint8), dtype).reshape(shape)


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error
