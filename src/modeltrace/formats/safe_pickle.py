"""The allow-listed unpickler of PyTorch checkpoints: inert stand-ins, bounds, nothing imported or run.

`SafeUnpickler.find_class` hands out our own stand-ins for an allow-list of names (tensor rebuild
functions, storage types, OrderedDict, torch.Size, dtypes) and refuses everything else with
`UnsafeFileError`. It is built on the pure-Python unpickler, with every bound below counted as it runs,
so a file of a few KB cannot make it loop, allocate gigabytes or overflow the C stack. Tensors come back
as `LazyTensor` records (storage key, offset, shape, stride); `torch_pickle` reads their bytes.
"""

from __future__ import annotations

import collections
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from modeltrace.errors import FormatError, UnsafeFileError

MAX_PICKLE_BYTES = 256 * 1024 * 1024
"""Largest object-tree pickle read (an 8B model's data.pkl is about 50 KB)."""
MAX_PICKLE_OPS = 10_000_000
"""Most pickle opcodes executed per pickle: each makes at most one object, so this bounds the objects."""
MAX_PICKLE_MEMO = 4_000_000
"""Most memo entries a pickle may hold (C unpicklers size the memo by the largest index a file names)."""
MAX_PICKLE_ELEMENTS = 4_000_000
"""Most container elements passed to allow-listed calls and BUILD in one pickle: repeating such a call on
one shared list would otherwise copy it again and again (a quadratic bomb from a few KB)."""
MAX_TENSOR_DIMS = 64
"""Most dimensions of one tensor (torch allows 64)."""
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
