"""PyTorch checkpoint reader (.bin/.pt/.pth) that never needs torch and never runs the pickle's code.

A zip checkpoint holds ``<archive>/data.pkl`` (the object tree) and ``<archive>/data/<key>`` (raw
storages). The pickle is read by `SafeUnpickler`, whose `find_class` hands out our own inert
stand-ins for an allow-list of names (tensor rebuild functions, storage types, OrderedDict,
torch.Size, dtypes) and refuses everything else with `UnsafeFileError`; nothing is imported.
Tensors come back as `LazyTensor` records (storage key, offset, shape, stride), so listing
reads only the pickle and the zip directory; `read` slices one storage from a memory map.

The legacy (pre-1.6, non-zip) format is read too: five pickles in a row, then each storage as an
8-byte element count followed by its bytes.
"""

from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from modeltrace.errors import FormatError, UnsafeFileError
from modeltrace.formats.base import (
    DTYPE_SIZES,
    MAX_NAME_CHARS,
    TensorInfo,
    TensorSource,
    check_shape,
    raw_to_float32,
    release_map,
)

MAX_PICKLE_BYTES = 256 * 1024 * 1024
"""Largest object-tree pickle read (an 8B model's data.pkl is about 50 KB)."""
MAX_PICKLE_OPS = 10_000_000
"""Most pickle opcodes executed per pickle: each makes at most one object, so this bounds the objects."""
MAX_PICKLE_MEMO = 4_000_000
"""Most memo entries a pickle may hold (C unpicklers size the memo by the largest index a file names)."""
MAX_PICKLE_ELEMENTS = 4_000_000
"""Most container elements passed to allow-listed calls and BUILD in one pickle: repeating such a call on
one shared list would otherwise copy it again and again (a quadratic bomb from a few KB)."""
MAX_FLATTEN_NODES = 1_000_000
"""Most containers and tensors visited while naming the tensors of the object tree."""
MAX_FLATTEN_DEPTH = 32
"""Containers nested deeper than this in the object tree are not searched for tensors."""
MAX_KEY_INT_BITS = 128
"""Largest integer dict key turned into a name part (str() of a huge int is quadratic, then refused)."""
MAX_TENSOR_DIMS = 64
"""Most dimensions of one tensor (torch allows 64)."""
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

# Storage class name -> our dtype name (the names of base.DTYPE_SIZES).
STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL", "UntypedStorage": "U8",
}
# torch dtype attribute name -> our dtype name (for _rebuild_tensor_v3 and stray dtype globals).
TORCH_DTYPES: dict[str, str] = {
    "float32": "F32", "float": "F32", "float64": "F64", "double": "F64", "float16": "F16", "half": "F16",
    "bfloat16": "BF16", "int64": "I64", "long": "I64", "int32": "I32", "int": "I32", "int16": "I16",
    "short": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32",
    "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
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


# ---------------------------------------------------------------------------- inert stand-ins


@dataclass(frozen=True, slots=True)
class StorageType:
    """Stands in for a torch.*Storage class: only its element dtype matters."""

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class DType:
    """Stands in for a torch.dtype global such as ``torch.bfloat16``."""

    name: str
    dtype: str | None


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage named by the pickle's persistent id; `numel` counts elements of `dtype`."""

    key: str
    dtype: str
    numel: int


@dataclass(frozen=True, slots=True)
class LazyTensor:
    """Where one tensor's elements sit: a strided view of a storage, not yet read."""

    storage: StorageRef
    dtype: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _as_ints(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)) and len(value) > MAX_TENSOR_DIMS:
        raise _PickleShapeError(f"{what} has {len(value)} dimensions, more than {MAX_TENSOR_DIMS}")
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in value):
        raise _PickleShapeError(f"{what} is not a tuple of integers: {_brief(value)}")
    return tuple(int(v) for v in value)


class _PickleShapeError(Exception):
    """The pickle called an allowed function with arguments of the wrong kind."""


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise _PickleShapeError(f"tensor storage is {type(storage).__name__}, not a storage reference")
    if not isinstance(storage_offset, int):
        raise _PickleShapeError(f"storage offset is not an integer: {_brief(storage_offset)}")
    return LazyTensor(storage, storage.dtype, storage_offset, _as_ints(size, "size"),
                      _as_ints(stride, "stride"))


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, *_rest: Any) -> LazyTensor:
    t = _rebuild_tensor(storage, storage_offset, size, stride)
    if not isinstance(dtype, DType) or dtype.dtype is None:
        raise _PickleShapeError(f"unsupported tensor dtype {_brief(getattr(dtype, 'name', dtype))}")
    # v3 storages are untyped (bytes); offsets and strides count elements of `dtype`.
    return LazyTensor(t.storage, dtype.dtype, t.offset, t.shape, t.stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> Any:
    return data


def _size(*args: Any) -> tuple[int, ...]:
    return _as_ints(args[0] if args else (), "torch.Size")


def _ordered_dict(*args: Any) -> dict[Any, Any]:
    if not args:
        return collections.OrderedDict()
    if len(args) > 1 or not isinstance(args[0], (list, tuple)):
        raise _PickleShapeError("OrderedDict called with arguments other than a list of pairs")
    pairs = args[0]
    if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
        raise _PickleShapeError("OrderedDict called with items that are not pairs")
    _check_hashable([p[0] for p in pairs], "an OrderedDict key")
    return collections.OrderedDict(pairs)


def _tensor_type(*_args: Any) -> None:
    raise _PickleShapeError("a tensor class was called directly")


def _device(*args: Any) -> str:
    return str(args[0]) if args and isinstance(args[0], (str, int)) else "cpu"


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or dtype.hasobject:
        raise _PickleShapeError("numpy scalar with an unexpected payload")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def _numpy_dtype(spec: Any, *_rest: Any) -> np.dtype[Any]:
    if not isinstance(spec, str) or spec.startswith("O") or len(spec) > 8:
        raise _PickleShapeError(f"numpy dtype {_brief(spec)} not allowed")
    return np.dtype(spec)


class _Stub:
    """An allow-listed callable as the pickle sees it: callable, but with no attributes to set.

    BUILD on a plain function would write into its ``__dict__`` (or setattr its defaults); a
    stub has no ``__dict__`` and refuses assignment, so a file cannot alter this module.
    """

    __slots__ = ("_fn",)
    _fn: Callable[..., Any]

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "_fn", fn)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _PickleShapeError(f"attempt to set attribute {name!r:.40} on an allow-listed name")

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not isinstance(func, _Stub) or func not in _REBUILDERS:
        raise _PickleShapeError("_rebuild_from_type_v2 with a function outside the allow-list")
    if not isinstance(args, tuple):
        raise _PickleShapeError("_rebuild_from_type_v2 arguments are not a tuple")
    return func(*args)


_REBUILD_V2 = _Stub(_rebuild_tensor)
_REBUILDERS = (_REBUILD_V2, _Stub(_rebuild_tensor_v3), _Stub(_rebuild_parameter))
_NUMPY_SCALAR = _Stub(_numpy_scalar)

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _REBUILD_V2,
    ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_V2,
    ("torch._utils", "_rebuild_tensor_v3"): _REBUILDERS[1],
    ("torch._utils", "_rebuild_parameter"): _REBUILDERS[2],
    ("torch._utils", "_rebuild_parameter_with_state"): _REBUILDERS[2],
    ("torch._tensor", "_rebuild_from_type_v2"): _Stub(_rebuild_from_type_v2),
    ("torch", "Tensor"): _Stub(_tensor_type),
    ("torch.nn.parameter", "Parameter"): _Stub(_tensor_type),
    ("torch", "Size"): _Stub(_size),
    ("torch", "device"): _Stub(_device),
    ("collections", "OrderedDict"): _Stub(_ordered_dict),
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy", "dtype"): _Stub(_numpy_dtype),
}
for _name, _dt in STORAGE_DTYPES.items():
    ALLOWED_GLOBALS[("torch", _name)] = StorageType(_name, _dt)
    ALLOWED_GLOBALS[("torch.storage", _name)] = StorageType(_name, _dt)
for _name, _dt in TORCH_DTYPES.items():
    ALLOWED_GLOBALS[("torch", _name)] = DType(_name, _dt)


_SCALAR_KEYS = (str, bytes, int, float, bool, type(None), StorageRef, LazyTensor, DType, StorageType)


def _check_hashable(items: Any, what: str) -> None:
    """Refuse dict keys and set items other than scalars and flat tuples of scalars.

    Hashing a tuple nested a few million deep overflows the C stack (SIGSEGV); checkpoints key their
    dicts by strings and integers.
    """
    for item in items:
        if isinstance(item, _SCALAR_KEYS):
            continue
        if isinstance(item, tuple) and all(isinstance(v, _SCALAR_KEYS) for v in item):
            continue
        raise _PickleShapeError(f"{what} is a {type(item).__name__}{_nested(item)}, not a string or number")


def _nested(item: Any) -> str:
    return " of containers" if isinstance(item, (tuple, list, dict, frozenset, set)) else ""


def _brief(value: Any) -> str:
    """A short description of a value from a file, safe for deep or huge objects."""
    if isinstance(value, (str, bytes, bool, float, type(None))):
        return _show(repr(value)[:80])
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that resolves only allow-listed globals, to inert stand-ins, and imports nothing.

    Built on the pure-Python unpickler, whose memo is a dict (the C one allocates an array as large as
    the biggest memo index a file names: 6 GB from a few bytes), with every bound above counted as it
    runs: opcodes, memo entries, elements handed to calls, and the kinds of keys that get hashed.
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, fh: IO[bytes] | _FileSlice, path: Path, storages: dict[str, StorageRef] | None = None) -> None:
        super().__init__(fh)
        self._path = path
        self.storages: dict[str, StorageRef] = {} if storages is None else storages
        self._elements = 0

    def load(self) -> Any:
        """`pickle._Unpickler.load` with an opcode and memo count per step."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # type: ignore[attr-defined]
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack: list[Any] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        memo: dict[int, Any] = self.memo  # type: ignore[attr-defined]
        ops = 0
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                ops += 1
                if ops > MAX_PICKLE_OPS:
                    raise _PickleShapeError(f"more than {MAX_PICKLE_OPS} pickle operations")
                dispatch[key[0]](self)
                if len(memo) > MAX_PICKLE_MEMO:
                    raise _PickleShapeError(f"more than {MAX_PICKLE_MEMO} memo entries")
        except pickle._Stop as stop:  # type: ignore[attr-defined]
            return stop.value

    def _charge(self, *parts: Any) -> None:
        for part in parts:
            if isinstance(part, (tuple, list, dict, set, frozenset)):
                self._elements += len(part)
        if self._elements > MAX_PICKLE_ELEMENTS:
            raise _PickleShapeError(f"more than {MAX_PICKLE_ELEMENTS} elements passed to calls")

    def load_reduce(self) -> None:
        args = self.stack[-1]
        if isinstance(args, tuple):
            self._charge(args, *args)
        super().load_reduce()  # type: ignore[misc]

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ call the class like REDUCE
        self._charge(args, *args)
        super()._instantiate(klass, args)  # type: ignore[misc]

    def load_build(self) -> None:
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if type(inst) is not collections.OrderedDict:  # torch sets _metadata on state dicts, nothing else
            raise _PickleShapeError(f"BUILD on {_brief(inst)}: only OrderedDict state is accepted")
        state = self.stack[-1]
        self._charge(state, *(state if isinstance(state, tuple) else ()))
        super().load_build()  # type: ignore[misc]

    dispatch[pickle.BUILD[0]] = load_build

    def load_setitem(self) -> None:
        _check_hashable(self.stack[-2:-1], "a dict key")
        super().load_setitem()  # type: ignore[misc]

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        _check_hashable(self.stack[::2], "a dict key")
        super().load_setitems()  # type: ignore[misc]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_dict(self) -> None:
        _check_hashable(self.stack[::2], "a dict key")
        super().load_dict()  # type: ignore[misc]

    dispatch[pickle.DICT[0]] = load_dict

    def load_additems(self) -> None:
        _check_hashable(self.stack, "a set item")
        super().load_additems()  # type: ignore[misc]

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        _check_hashable(self.stack, "a set item")
        super().load_frozenset()  # type: ignore[misc]

    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None and module.startswith("torch") and name.startswith("_rebuild_"):
            raise FormatError(self._path, f"tensors rebuilt by {_show(module)}.{_show(name)} (quantized, sparse "
                              "or subclass tensors) are not supported; nothing was run")
        if target is None:
            raise UnsafeFileError(self._path, f"pickle refers to {_show(module)}.{_show(name)}, which is "
                                  "not on the allow-list of tensor-rebuilding names; "
                                  "refused without running it",
                                  hint="the checkpoint may carry code; load it only if you trust its source")
        return target

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise _PickleShapeError(f"unexpected persistent id {_brief(pid)}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, StorageType):
            raise _PickleShapeError(f"persistent id names storage type {_brief(stype)}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise _PickleShapeError(f"malformed storage reference ({_brief(key)}, {_brief(numel)})")
        if len(pid) > 5 and pid[5] is not None:
            raise _PickleShapeError("storage views (legacy view_metadata) are not supported")
        ref = self.storages.get(key)
        if ref is None:
            ref = StorageRef(key, stype.dtype, numel)
            self.storages[key] = ref
        elif ref.dtype != stype.dtype or ref.numel != numel:
            raise _PickleShapeError(f"storage {_show(key)!r} is named twice with different types or sizes")
        return ref


def _show(text: str) -> str:
    """A name from a file, with control characters escaped before it reaches a terminal."""
    return text.encode("unicode_escape").decode("ascii")[:200]


class _FileSlice:
    """A file read through the unpickler with every read capped at the bytes left: a length field of 2^62
    in a legacy pickle would otherwise have the file object allocate that much before reading."""

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh, self._size = fh, size

    def read(self, n: int = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self._fh.readline(min(limit, 1 << 20) if limit and limit > 0 else 1 << 20)

    def readinto(self, buf: Any) -> int:
        fh: Any = self._fh
        return fh.readinto(memoryview(buf)[: max(0, self._size - fh.tell())]) or 0

    def tell(self) -> int:
        return self._fh.tell()


def safe_load(fh: IO[bytes] | _FileSlice, path: Path, storages: dict[str, StorageRef] | None = None) -> Any:
    """Unpickle one object through `SafeUnpickler`; every failure becomes a FormatError naming `path`."""
    try:
        return SafeUnpickler(fh, path, storages).load()
    except FormatError:
        raise
    except _PickleShapeError as exc:
        raise FormatError(path, f"pickle is not a tensor checkpoint: {exc}") from exc
    except RecursionError as exc:
        raise FormatError(path, "pickle nests too deeply") from exc
    except MemoryError as exc:
        raise FormatError(path, "pickle asks for more memory than is available") from exc
    except Exception as exc:  # pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, ...
        raise FormatError(path, f"corrupt pickle ({type(exc).__name__}: {_show(str(exc))})") from exc


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
