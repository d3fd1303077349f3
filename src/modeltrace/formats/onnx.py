"""ONNX reader: initializers and Constant tensors of a model graph, read lazily as float32.

ONNX has no magic number; a file is a serialized ``ModelProto``. We parse the graph with
``onnx.load(..., load_external_data=False)`` (nothing in it is executed), then:

- external data files are confined to the model's folder and read on demand from a memory map;
- int8/uint8 weights with their scales become one logical float tensor, and anonymous MatMul weights
  get their layer's name and torch orientation (out x in): the logical view, built in `onnx_graph`
  (``raw=True`` lists every stored tensor as it is instead).

Data held inside the .onnx file itself (the format caps such a file at 2 GiB) is taken out of the
protobuf once at open, and the protobuf tree is freed; large models keep their data in external files,
which are mapped, never loaded. Either way a row read slices the stored bytes: it costs its rows.
String tensors (vocabularies, labels) are not weights and are not listed.
"""

from __future__ import annotations

import mmap
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError, UnsafeFileError
from modeltrace.formats.base import (
    DTYPE_SIZES,
    MAX_NAME_CHARS,
    TensorInfo,
    TensorSource,
    check_shape,
    raw_to_float32,
)
from modeltrace.formats.onnx_graph import (  # noqa: F401  (is_anonymous and ONNX_DTYPES are re-exported)
    _QUANT_CODES,
    ONNX_DTYPES,
    LogicalBuilder,
    _Logical,
    _Node,
    _Stored,
    _text,
    is_anonymous,
)
from modeltrace.refs import confinement_root
from modeltrace.textsafe import escape

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_STRING = 8
MAX_DIMS = 64
"""Most dimensions of one tensor."""
# TensorProto data type -> (typed field holding its values, values per element: 1, 2 for complex, 0 for
# two 4-bit elements per value)
_TYPED_FIELDS: dict[int, tuple[str, int]] = {
    1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
    7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1),
    **{code: ("int32_data", 1) for code in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20)},
    21: ("int32_data", 0), 22: ("int32_data", 0),
}

# ---------------------------------------------------------------------------------------------
# sniffing: a protobuf ModelProto starts with field 1 (ir_version, varint), then known fields.

_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_MAX_IR_VERSION = 100


def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value = 0
    shift = 0
    while pos < len(buf):
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def sniff(head: bytes) -> bool:
    """True when `head` reads as the start of a ModelProto: a small ir_version, then known fields.

    Protobuf serializers write fields in field-number order, so a model starts with ir_version
    (field 1); every later field seen in the head must be a ModelProto field of the right wire type.
    """
    if len(head) < 4 or head[0] != 0x08:
        return False
    got = _varint(head, 1)
    if got is None:
        return False
    ir_version, pos = got
    if not 1 <= ir_version <= _MAX_IR_VERSION:
        return False
    fields = 1
    while pos < len(head):
        got = _varint(head, pos)
        if got is None:  # the tag runs past the head; what we saw was valid
            break
        tag, pos = got
        number, wire = tag >> 3, tag & 7
        if _MODEL_FIELDS.get(number) != wire:
            return False
        fields += 1
        got = _varint(head, pos)
        if got is None:
            break
        value, pos = got
        if wire == 2:
            end = pos + value
            if number in (2, 3, 4, 6) and end <= len(head):
                try:
                    head[pos:end].decode("utf-8")
                except UnicodeDecodeError:
                    return False
            pos = end
    return fields >= 2


def _expected_bytes(code: int, numel: int) -> int | None:
    dtype = ONNX_DTYPES.get(code)
    if dtype in DTYPE_SIZES:
        return numel * DTYPE_SIZES[dtype]
    if dtype in ("F8_E4M3FNUZ", "F8_E5M2FNUZ"):
        return numel
    if dtype in ("U4", "I4"):
        return (numel + 1) // 2
    if dtype == "C64":
        return numel * 8
    if dtype == "C128":
        return numel * 16
    return None


_NP_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "U64": "<u8", "I32": "<i4", "U32": "<u4",
              "I16": "<i2", "U16": "<u2", "I8": "i1", "U8": "u1", "BOOL": "?", "BF16": "<u2", "F8_E4M3": "u1",
              "F8_E5M2": "u1"}


def _cut(a: np.ndarray, axis: int, start: int | None, stop: int | None, full: tuple[int, ...]) -> np.ndarray:
    """`a[start:stop]` along `axis` of a tensor of shape `full`; an `a` that broadcasts along it is kept."""
    if start is None or a.ndim != len(full) or a.shape[axis] != full[axis]:
        return a
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


class ONNXReader(TensorSource):
    """One .onnx file (plus its external data files), as named float32 tensors.

    With ``raw=True`` every initializer and Constant tensor is listed under its stored name, shape
    and dtype (the file's own view: quantized parts separate, MatMul weights as in x out).
    """

    format = "onnx"

    def __init__(self, path: Path, *, raw: bool = False) -> None:
        super().__init__(path)
        self.raw_view = raw
        self._maps: dict[Path, mmap.mmap] = {}
        self._warnings: list[str] = []
        model = self._load()
        # external files are looked up beside the file as named (a hub snapshot, not the blobs/ its links
        # point into) and must resolve inside the same root as every other file of the model
        self._folder = self.path.absolute().parent
        self._root = confinement_root(self._folder)
        self._stored: dict[str, _Stored] = {}
        self._graph_names: dict[str, str] = {}
        self._nodes: list[_Node] = []
        self._collect(model.graph, top=True)
        self._model_meta = self._describe(model)
        del model  # every tensor's bytes are ours now: the protobuf tree (a second copy) can go
        if raw:
            self._logical = {s.name: _Logical(s.name, s.name, s) for s in self._stored.values()}
        else:
            self._logical = LogicalBuilder(self._stored, self._graph_names, self._nodes,
                                           self._warnings).build()
        self._infos = {name: self._info(lg) for name, lg in self._logical.items()}

    # -- loading ---------------------------------------------------------------------------

    def _load(self) -> Any:
        import onnx
        from google.protobuf.message import DecodeError

        if not self.path.is_file():
            raise FormatError(self.path, "no such file")
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except DecodeError as exc:
            raise FormatError(self.path, f"not a valid ONNX model (protobuf decode failed: {escape(exc, 200)})"
                              ) from exc
        except (OSError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
            raise FormatError(self.path, f"cannot load ONNX model ({type(exc).__name__}: {escape(exc, 200)})"
                              ) from exc
        if not model.HasField("graph"):
            raise FormatError(self.path, "ONNX model has no graph (truncated or not an ONNX file)")
        if model.ir_version <= 0:
            raise FormatError(self.path, f"ONNX model has no valid ir_version ({model.ir_version})")
        if not model.opset_import:
            self._warnings.append("no opset_import: the file may be truncated after its graph")
        return model

    def _collect(self, graph: Any, *, top: bool, depth: int = 0) -> None:
        """Record the initializers and Constant tensors of `graph` and (recursively) its subgraphs."""
        from onnx import AttributeProto

        if depth > 16:
            raise FormatError(self.path, "subgraphs nested more than 16 deep")
        gname = "" if top else (_text(graph.name) or f"subgraph{depth}")
        for t in graph.initializer:
            if t.data_type != _STRING:  # string tensors (vocabularies, labels) are not weights
                self._add(self._stored_from_proto(t, _text(t.name), gname))
        for node in graph.node:
            info = _Node.of(node)
            if top:
                self._nodes.append(info)
            if info.op_type == "Constant" and info.standard and info.outputs:
                st = self._stored_from_constant(node, info.outputs[0], gname)
                if st is not None:
                    st.constant = True
                    self._add(st)
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    self._collect(attr.g, top=False, depth=depth + 1)
                elif attr.type == AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        self._collect(g, top=False, depth=depth + 1)

    def _add(self, st: _Stored) -> None:
        graph_name = st.name
        if st.name in self._stored:  # the same value name in two scopes: keep both, tagged by scope
            base = f"{st.name}@{st.graph or 'main'}"
            st.name, n = base, 2
            while st.name in self._stored:
                st.name, n = f"{base}#{n}", n + 1
        self._stored[st.name] = st
        if not st.graph:
            self._graph_names.setdefault(graph_name, st.name)

    def _stored_from_proto(self, t: Any, name: str, gname: str) -> _Stored:
        """One tensor, its bytes taken now: a reference into external data, raw_data copied out of the
        proto once (protobuf copies a bytes field on every access: 47 MB per row read of a MiniLM
        embedding), or typed fields decoded and checked against the shape."""
        if len(name) > MAX_NAME_CHARS:
            raise FormatError(self.path, f"a tensor name is {len(name)} characters long, over the "
                              f"{MAX_NAME_CHARS}-character cap")
        if len(t.dims) > MAX_DIMS:
            raise FormatError(self.path, f"{len(t.dims)} dimensions, more than {MAX_DIMS}", tensor=name)
        dims = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in dims):
            raise FormatError(self.path, f"negative dimension in shape {list(dims)}", tensor=name)
        check_shape(self.path, dims, name)
        st = _Stored(name, int(t.data_type), dims, graph=gname)
        if t.data_location == _EXTERNAL:
            st.external = self._external(t, st)
        elif t.HasField("raw_data"):
            raw = t.raw_data
            need = _expected_bytes(st.code, st.numel)
            if need is not None and len(raw) != need:
                raise FormatError(self.path, f"{st.dtype} shape {list(dims)} needs {need} bytes "
                                  f"but raw_data holds {len(raw)}", tensor=name)
            if st.dtype in _NP_DTYPES:
                st.inline = raw
            else:  # 4-bit, complex and fnuz types: onnx decodes them
                st.array = self._decode(t, st)
        else:
            st.array = self._typed(t, st)
        return st

    def _typed(self, t: Any, st: _Stored) -> np.ndarray:
        """Values held in a TensorProto's typed fields, which must number what the shape needs."""
        field, per = _TYPED_FIELDS.get(st.code, (None, 1))
        if field is not None:
            got = len(getattr(t, field))
            need = st.numel * 2 if per == 2 else (st.numel + 1) // 2 if per == 0 else st.numel
            if got != need:
                raise FormatError(self.path, f"{st.dtype} shape {list(st.dims)} needs {need} values but the "
                                  f"tensor holds {got} in {field}", tensor=st.name)
        return self._decode(t, st)

    def _decode(self, t: Any, st: _Stored) -> np.ndarray:
        from onnx import numpy_helper

        try:
            arr = numpy_helper.to_array(t)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise FormatError(self.path, f"cannot decode {st.dtype} tensor data ({escape(exc, 200)})",
                              tensor=st.name) from exc
        if arr.shape != st.dims:
            raise FormatError(self.path, f"tensor data has shape {list(arr.shape)}, not {list(st.dims)}",
                              tensor=st.name)
        arr.flags.writeable = False
        return arr

    def _stored_from_constant(self, node: Any, name: str, gname: str) -> _Stored | None:
        from onnx import AttributeProto

        kinds = {"value": AttributeProto.TENSOR, "value_float": AttributeProto.FLOAT,
                 "value_floats": AttributeProto.FLOATS, "value_int": AttributeProto.INT,
                 "value_ints": AttributeProto.INTS}
        for attr in node.attribute:
            aname = _text(attr.name)
            if kinds.get(aname) != attr.type:
                continue
            if aname == "value":
                if attr.t.data_type == _STRING:
                    return None
                return self._stored_from_proto(attr.t, name, gname)
            value = {"value_float": attr.f, "value_floats": list(attr.floats), "value_int": attr.i,
                     "value_ints": list(attr.ints)}[aname]
            code = 1 if aname.startswith("value_float") else 7
            arr = np.asarray(value, dtype=np.float32 if code == 1 else np.int64)
            arr.flags.writeable = False
            return _Stored(name, code, tuple(arr.shape), array=arr, graph=gname)
        return None  # string and sparse constants carry no weights

    def _external(self, t: Any, st: _Stored) -> tuple[Path, int, int]:
        """Where an external tensor's bytes lie, refusing any file outside the model's folder."""
        spec = {_text(e.key): _text(e.value) for e in t.external_data}
        location = spec.get("location", "")
        if not location:
            raise FormatError(self.path, "external data without a location", tensor=st.name)
        shown = escape(location, 200)
        folder = self._folder
        if "\x00" in location:
            raise UnsafeFileError(self.path, f"external data location {shown!r} contains a NUL byte",
                                  tensor=st.name)
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            raise UnsafeFileError(self.path, f"external data location {shown!r} is an absolute path; "
                                  f"only files inside {folder} are read", tensor=st.name)
        if ".." in re.split(r"[\\/]", location):
            raise UnsafeFileError(self.path, f"external data location {shown!r} leaves the model folder; "
                                  f"only files inside {folder} are read", tensor=st.name)
        target = (folder / location).resolve()
        if not target.is_relative_to(self._root):
            raise UnsafeFileError(self.path, f"external data location {shown!r} resolves outside the model "
                                  f"folder (to {escape(target, 200)})", tensor=st.name)
        if not target.is_file():
            raise FormatError(self.path, f"external data file {shown!r} is missing", tensor=st.name)
        size = target.stat().st_size
        try:
            offset = int(spec.get("offset", "0"))
            length = int(spec["length"]) if "length" in spec else size - offset
        except ValueError as exc:
            raise FormatError(self.path, f"external data offset/length are not integers ({escape(exc, 100)})",
                              tensor=st.name) from exc
        need = _expected_bytes(st.code, st.numel)
        if offset < 0 or length < 0:
            raise FormatError(self.path, f"external data offset {offset} / length {length} is negative",
                              tensor=st.name)
        if need is not None and length != need:
            raise FormatError(self.path, f"external data length {length} does not match {st.dtype} shape "
                              f"{list(st.dims)} ({need} bytes)", tensor=st.name)
        if offset + length > size:
            raise FormatError(self.path, f"external data {shown!r} is {size} bytes, shorter than offset "
                              f"{offset} + length {length}; truncated?", tensor=st.name)
        return target, offset, length

    # -- the TensorSource interface ------------------------------------------------------------

    def _info(self, lg: _Logical) -> TensorInfo:
        st = lg.stored
        extra: dict[str, Any] = dict(lg.extra)
        extra.setdefault("onnx_name", lg.graph_name)
        if st.graph:
            extra["subgraph"] = st.graph
        if st.external is not None:
            extra["external"] = {"file": str(st.external[0]), "offset": st.external[1], "length": st.external[2]}
        if lg.scale is None:
            return TensorInfo(lg.name, lg.shape, st.dtype, str(self.path), extra=extra)
        kind = _QUANT_CODES[st.code]
        extra.update({
            "pattern": lg.pattern, "quantized": st.name, "scale": lg.scale.name,
            "zero_point": lg.zero_point.name if lg.zero_point is not None else None,
        })
        if lg.axis is not None:
            extra["axis"] = lg.axis
        if lg.block_size:
            extra["block_size"] = lg.block_size
        return TensorInfo(lg.name, lg.shape, kind, str(self.path), quantization=f"onnx-{kind.lower()}",
                          extra=extra)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def _logical_of(self, name: str) -> _Logical:
        if name not in self._logical:
            raise FormatError(self.path, "no such tensor", tensor=name)
        return self._logical[name]

    def _bytes(self, st: _Stored) -> memoryview | bytes | None:
        """The stored little-endian bytes of a tensor (a view, never a copy), or None for decoded arrays."""
        if st.external is not None:
            target, offset, length = st.external
            if length == 0:
                return b""
            mm = self._maps.get(target)
            if mm is None:
                try:
                    with open(target, "rb") as fh:
                        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError) as exc:
                    raise FormatError(self.path, f"cannot map external data {escape(target, 200)} ({exc})",
                                      tensor=st.name) from exc
                self._maps[target] = mm
            if offset + length > len(mm):
                raise FormatError(self.path, f"external data {escape(target, 200)} shrank below offset "
                                  f"{offset} + length {length}", tensor=st.name)
            return memoryview(mm)[offset: offset + length]
        return st.inline

    def _native(self, st: _Stored) -> np.ndarray:
        """The stored values as a read-only array shaped as stored, without copying them.

        bf16 and fp8 come back as their raw unsigned integers: `_to_float` converts a slice of them, so
        a row read converts its rows only.
        """
        if st.array is not None:
            arr = st.array
            if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16" and not arr.dtype.name.startswith(
                    ("float8", "float4", "int4", "uint4")):
                raise FormatError(self.path, f"ONNX dtype {st.dtype} has no float value", tensor=st.name)
            return arr
        buf = self._bytes(st)
        dtype = st.dtype
        if buf is None or dtype not in _NP_DTYPES:
            raise FormatError(self.path, f"cannot read ONNX dtype {dtype} as float", tensor=st.name)
        return np.frombuffer(buf, dtype=_NP_DTYPES[dtype]).reshape(st.dims)

    @staticmethod
    def _to_float(st: _Stored, part: np.ndarray) -> np.ndarray:
        """A slice of `_native(st)` as float32 (a new array only when the dtype differs)."""
        if st.array is None and st.dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
            flat = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
            return raw_to_float32(flat, st.dtype).reshape(part.shape)
        return part if part.dtype == np.float32 else part.astype(np.float32)

    def _float(self, st: _Stored, axis: int = 0, start: int | None = None, stop: int | None = None) -> np.ndarray:
        return self._to_float(st, _cut(self._native(st), axis, start, stop, st.dims))

    def _broadcastable(self, lg: _Logical, part: _Stored) -> np.ndarray:
        """Scale or zero point as an array of the quantized tensor's rank that broadcasts against it."""
        arr = self._float(part)
        q_dims = lg.stored.dims
        if part.numel == 1 and len(part.dims) <= 1:
            return arr.reshape((1,) * len(q_dims))
        if lg.axis is None:  # numpy broadcasting: align trailing dimensions
            return arr.reshape((1,) * (len(q_dims) - arr.ndim) + arr.shape) if arr.ndim < len(q_dims) else arr
        if lg.block_size:  # element i of the axis uses scale i // block (never np.repeat: a block of 2^40)
            return np.take(arr, np.arange(q_dims[lg.axis]) // lg.block_size, axis=lg.axis)
        shape = [1] * len(q_dims)
        shape[lg.axis] = q_dims[lg.axis]
        return arr.reshape(shape)

    def _dequantize(self, lg: _Logical, axis: int = 0, start: int | None = None,
                    stop: int | None = None) -> np.ndarray:
        """(q - zero_point) * scale over the stored slice [start:stop) of `axis` (everything by default)."""
        q_dims = lg.stored.dims
        q = _cut(self._native(lg.stored), axis, start, stop, q_dims)
        assert lg.scale is not None
        scale = _cut(self._broadcastable(lg, lg.scale), axis, start, stop, q_dims)
        out = q.astype(np.float32)
        if lg.zero_point is not None:
            out -= _cut(self._broadcastable(lg, lg.zero_point), axis, start, stop, q_dims)
        out *= scale
        return out

    def read(self, name: str) -> np.ndarray:
        lg = self._logical_of(name)
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf, as stored
            arr = self._dequantize(lg) if lg.scale is not None else self._float(lg.stored)
        if lg.transposed:
            arr = np.ascontiguousarray(arr.T)
        elif not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.float32, order="C")
        return arr

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows of the logical tensor, taken from the stored bytes by offset: the cost is the rows'.

        A transposed MatMul weight (stored in x out) gives its rows from a column slice of the stored one.
        """
        lg = self._logical_of(name)
        dims = lg.stored.dims
        if not dims:
            return self.read(name)
        axis = 1 if lg.transposed else 0
        rows = dims[axis]
        stop = min(rows, max(0, stop))
        start = min(max(0, start), stop)
        with np.errstate(over="ignore", invalid="ignore"):
            if lg.scale is not None:
                arr = self._dequantize(lg, axis, start, stop)
            else:
                arr = self._float(lg.stored, axis, start, stop)
        if lg.transposed:
            arr = arr.T
        return np.array(arr, dtype=np.float32, order="C")

    @staticmethod
    def _describe(m: Any) -> dict[str, Any]:
        """The model-level fields of metadata(), taken at open so that the protobuf tree can be freed."""
        g = m.graph
        return {
            "producer_name": escape(_text(m.producer_name), 200),
            "producer_version": escape(_text(m.producer_version), 200),
            "ir_version": int(m.ir_version),
            "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in m.opset_import},
            "domain": escape(_text(m.domain), 200),
            "model_version": int(m.model_version),
            "doc_string": escape(_text(m.doc_string), 1000),
            "graph_name": escape(_text(g.name), 200),
            "inputs": [escape(_text(i.name), 200) for i in g.input],
            "outputs": [escape(_text(o.name), 200) for o in g.output],
            "metadata_props": {escape(_text(p.key), 200): escape(_text(p.value), 1000) for p in m.metadata_props},
        }

    def metadata(self) -> dict[str, Any]:
        inits = [s for s in self._stored.values() if not s.constant]
        return {
            **self._model_meta,
            "initializers": sum(1 for s in inits),
            "initializer_elements": sum(s.numel for s in inits),
            "stored_tensors": len(self._stored),
            "stored_elements": sum(s.numel for s in self._stored.values()),
            "quantized_tensors": sum(1 for lg in self._logical.values() if lg.scale is not None),
            "renamed_tensors": sum(1 for lg in self._logical.values() if lg.name != lg.graph_name),
            "external_files": sorted({str(s.external[0]) for s in self._stored.values() if s.external}),
            "warnings": list(self._warnings),
        }

    def close(self) -> None:
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:
                pass  # a caller still holds a view; the map is freed with it
        self._maps.clear()
