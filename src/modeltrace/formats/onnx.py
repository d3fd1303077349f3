"""ONNX reader: initializers and Constant tensors of a model graph, read lazily as float32.

ONNX has no magic number; a file is a serialized ``ModelProto``. We parse the graph with
``onnx.load(..., load_external_data=False)`` (nothing in it is executed), then:

- external data files are confined to the model's folder and read on demand from a memory map;
- int8/uint8 weights with their scales become one logical float tensor named after the float
  weight they stand for, read as ``(q - zero_point) * scale``. Recognised layouts: ``DequantizeLinear``
  (per tensor, per axis, blocked), ``Cast -> [Sub zp] -> Mul scale``, and onnxruntime's quantizers
  (``MatMulInteger``, ``Gather -> DequantizeLinear``, ``QLinearMatMul``, ``QLinearConv``, ``QLinearAdd``,
  ``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``). A weight's scale and zero point are hidden
  from the logical view when nothing else uses them, so parameter counts match the float model
  (``raw=True`` lists every stored tensor as it is instead);
- anonymous MatMul weights (``onnx::MatMul_123``, ``val_49``) get the name of the Linear layer
  they belong to (from the bias added to the MatMul output, or from the node's module path) and are
  exposed in torch orientation (out x in), since ONNX stores them as in x out.

Data held inside the .onnx file itself is parsed into memory by protobuf (the format caps such a
file at 2 GiB); large models keep their data in external files, which are mapped, never loaded.
String tensors (vocabularies, labels) are not weights and are not listed.
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass, field
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
from modeltrace.refs import confinement_root
from modeltrace.textsafe import escape

# TensorProto.DataType codes -> our storage dtype names (safetensors spelling where one exists).
ONNX_DTYPES: dict[int, str] = {
    1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 8: "STRING", 9: "BOOL",
    10: "F16", 11: "F64", 12: "U32", 13: "U64", 14: "C64", 15: "C128", 16: "BF16", 17: "F8_E4M3",
    18: "F8_E4M3FNUZ", 19: "F8_E5M2", 20: "F8_E5M2FNUZ", 21: "U4", 22: "I4",
}
_FLOAT_CODES = {1, 10, 11, 16}
_QUANT_CODES = {2: "UINT8", 3: "INT8"}
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

_ANONYMOUS = re.compile(r"[A-Za-z_]*_?\d+")


def _text(value: object) -> str:
    """A protobuf string field as str: proto2 hands back bytes when a file's bytes are not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def is_anonymous(name: str) -> bool:
    """Whether an ONNX value name is an exporter's counter (``onnx::MatMul_12``, ``val_49``), not a path."""
    return name.startswith("onnx::") or ("." not in name and _ANONYMOUS.fullmatch(name) is not None)


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


# ---------------------------------------------------------------------------------------------
# the stored tensors (initializers, Constant values) and the logical tensors built on them


@dataclass
class _Node:
    """The parts of a NodeProto the reader uses, with strings decoded and integer attributes only."""

    op_type: str
    domain: str
    name: str
    inputs: list[str]
    outputs: list[str]
    ints: dict[str, int]

    @classmethod
    def of(cls, node: Any) -> _Node:
        from onnx import AttributeProto

        ints = {_text(a.name): int(a.i) for a in node.attribute if a.type == AttributeProto.INT}
        return cls(_text(node.op_type), _text(node.domain), _text(node.name),
                   [_text(i) for i in node.input], [_text(o) for o in node.output], ints)

    @property
    def standard(self) -> bool:
        return self.domain in ("", "ai.onnx")


@dataclass
class _Stored:
    """One tensor as the file stores it."""

    name: str
    code: int  # TensorProto data type
    dims: tuple[int, ...]
    inline: bytes | None = None  # raw_data held in the model file, taken from the proto once at open
    array: np.ndarray | None = None  # typed proto fields and Constant attributes, decoded at open (read-only)
    external: tuple[Path, int, int] | None = None  # (file, offset, length)
    graph: str = ""  # "" for the main graph, else the subgraph's name
    constant: bool = False  # from a Constant node rather than an initializer

    @property
    def numel(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def dtype(self) -> str:
        return ONNX_DTYPES.get(self.code, f"ONNX_{self.code}")


@dataclass
class _Logical:
    """A tensor as the reader exposes it: a stored one, or a dequantized group, maybe transposed."""

    name: str
    graph_name: str  # the value name that flows in the graph
    stored: _Stored
    scale: _Stored | None = None
    zero_point: _Stored | None = None
    axis: int | None = None  # DequantizeLinear axis; None: numpy broadcasting (Cast-Mul patterns)
    block_size: int = 0
    pattern: str | None = None
    transposed: bool = False
    layer: _Node | None = None  # the MatMul/Gemm/integer node the weight feeds as its B operand
    layer_out: str = ""  # the layer's float output, where a bias is added
    bias_inputs: list[str] = field(default_factory=list)
    matmul: bool = False  # stored as a matmul B operand (in x out)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        dims = self.stored.dims
        return tuple(reversed(dims)) if self.transposed else dims


@dataclass
class _Graph:
    """Lookups over the main graph used while matching patterns."""

    stored: dict[str, _Stored]
    graph_names: dict[str, str]
    consumers: dict[str, list[tuple[_Node, int]]]
    producers: dict[str, _Node]

    def top(self, name: str) -> _Stored | None:
        """The main-graph initializer or Constant called `name`."""
        key = self.graph_names.get(name) if name else None
        return self.stored[key] if key is not None else None

    def only_consumer(self, name: str) -> _Node | None:
        users = self.consumers.get(name, [])
        return users[0][0] if len(users) == 1 else None


# (domain, op) -> (weight input, scale input or None: found after the node, zero point, bias, is a matmul)
_QUANTIZED_OPS: dict[tuple[str, str], tuple[int, int | None, int | None, int | None, bool]] = {
    ("ai.onnx", "MatMulInteger"): (1, None, 3, None, True),
    ("ai.onnx", "QLinearMatMul"): (3, 4, 5, None, True),
    ("ai.onnx", "QLinearConv"): (3, 4, 5, None, False),
    ("com.microsoft", "DynamicQuantizeMatMul"): (1, 2, 3, 4, True),
    ("com.microsoft", "MatMulIntegerToFloat"): (1, 3, 5, 6, True),
    ("com.microsoft", "QLinearAdd"): (3, 4, 5, None, False),  # a quantized bias added to a layer
}
_QUANT_SUFFIXES = ("_quantized", "_quant", "_q")
_DEQUANT_SUFFIXES = ("_DequantizeLinear_Output", "_dequantized")


def _float_name(name: str, *, quantized: bool) -> str:
    """The float weight a quantized initializer (``w_quantized``) or dequantized value
    (``w_DequantizeLinear_Output``, onnxruntime's QDQ naming) stands for: ``w``."""
    for suffix in _QUANT_SUFFIXES if quantized else _DEQUANT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _broadcasts(q: _Stored, *parts: _Stored | None) -> bool:
    """Whether scale and zero point broadcast onto the quantized tensor without changing its shape."""
    try:
        return all(p is None or np.broadcast_shapes(q.dims, p.dims) == q.dims for p in parts)
    except ValueError:
        return False


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
            self._logical = self._build_logical()
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

    # -- the logical view: quantized groups and transposed MatMul weights ----------------------

    def _build_logical(self) -> dict[str, _Logical]:
        consumers: dict[str, list[tuple[_Node, int]]] = {}
        producers: dict[str, _Node] = {}
        for node in self._nodes:
            for i, inp in enumerate(node.inputs):
                if inp:
                    consumers.setdefault(inp, []).append((node, i))
            for value in node.outputs:
                producers.setdefault(value, node)
        graph = _Graph(self._stored, self._graph_names, consumers, producers)

        groups: dict[str, _Logical] = {}  # keyed by the stored name of the quantized tensor
        grouped_nodes: set[int] = set()
        for node in self._nodes:
            found = self._match_dequant(node, graph) or self._match_quantized_op(node, graph)
            if found is None:
                continue
            lg, nodes = found
            if lg.stored.name in groups:
                continue
            groups[lg.stored.name] = lg
            grouped_nodes.update(id(n) for n in nodes)

        hidden: set[str] = set()
        for lg in groups.values():
            for part in (lg.scale, lg.zero_point):
                if part is not None and all(id(n) in grouped_nodes for n, _ in consumers.get(part.name, [])):
                    hidden.add(part.name)

        logical: list[_Logical] = []
        for st in self._stored.values():
            if st.name in groups:
                logical.append(groups[st.name])
            elif st.name not in hidden:
                logical.append(_Logical(st.name, st.name, st))

        for lg in logical:  # names the file gives: w_quantized -> w, w_DequantizeLinear_Output -> w
            if lg.scale is not None and not is_anonymous(lg.graph_name):
                lg.name = _float_name(lg.graph_name, quantized=lg.graph_name == lg.stored.name)
        names = {lg.graph_name: lg.name for lg in logical if not lg.stored.graph}
        taken = {lg.name for lg in logical}
        for lg in logical:
            if not lg.stored.graph:
                self._name_and_orient(lg, graph, taken, names)
        out: dict[str, _Logical] = {}
        for lg in logical:
            if lg.name in out:  # a renamed tensor met an existing name: keep the stored one
                lg.extra["suggested_name"], lg.name = lg.name, lg.graph_name
            out[lg.name] = lg
        return out

    def _match_dequant(self, node: _Node, graph: _Graph) -> tuple[_Logical, list[_Node]] | None:
        """DequantizeLinear or Cast -> [Sub] -> Mul on an int8/uint8 initializer, or None."""
        if node.domain not in ("", "ai.onnx", "com.microsoft") or not node.outputs:
            return None
        zp: _Stored | None
        ins = node.inputs
        top = graph.top
        if node.op_type == "DequantizeLinear" and len(ins) >= 2:
            q, scale = top(ins[0]), top(ins[1])
            zp = top(ins[2]) if len(ins) > 2 and ins[2] else None
            gather = None
            if q is None:  # embeddings quantized by onnxruntime: Gather(q, ids) -> DequantizeLinear
                gather = graph.producers.get(ins[0])
                if gather is None or gather.op_type != "Gather" or not gather.inputs or gather.ints.get("axis", 0):
                    return None
                q = top(gather.inputs[0])
            if q is None or scale is None or q.code not in _QUANT_CODES or scale.code not in _FLOAT_CODES:
                return None
            if len(ins) > 2 and ins[2] and zp is None:
                return None
            if gather is not None:
                if any(p is not None and p.numel != 1 for p in (scale, zp)):
                    return None  # per-axis scales on a gathered tensor: axes of another shape
                lg = _Logical(q.name, q.name, q, scale, zp, pattern="Gather-DequantizeLinear")
                return lg, [node]
            axis = node.ints.get("axis", 1)
            block = node.ints.get("block_size", 0)
            rank = len(q.dims)
            per_tensor = all(p is None or p.numel == 1 and len(p.dims) <= 1 for p in (scale, zp))
            if per_tensor:
                axis, block = 0, 0  # axis is ignored for one scale per tensor
            elif not -rank <= axis < rank or block < 0:
                return None
            axis = axis % rank if rank else 0
            if not self._dq_shapes_ok(q, scale, zp, axis, block):
                self._warnings.append(f"DequantizeLinear {escape(node.name, 80)}: scale shape "
                                      f"{list(scale.dims)} does not fit {list(q.dims)}; left as stored")
                return None
            out = node.outputs[0]
            return _Logical(out, out, q, scale, zp, axis=axis, block_size=block, pattern="DequantizeLinear"), [node]
        if node.op_type == "Cast" and len(ins) == 1:
            q = top(ins[0])
            if q is None or q.code not in _QUANT_CODES or node.ints.get("to") not in _FLOAT_CODES:
                return None
            chain = [node]
            zp = None
            n2 = graph.only_consumer(node.outputs[0])
            if n2 is not None and n2.op_type == "Sub" and len(n2.inputs) == 2 and n2.inputs[0] == node.outputs[0]:
                zp = top(n2.inputs[1])
                if zp is None:
                    return None
                chain.append(n2)
                current = n2.outputs[0]
                n2 = graph.only_consumer(current)
            else:
                current = node.outputs[0]
            if n2 is None or n2.op_type != "Mul" or len(n2.inputs) != 2:
                return None
            other = n2.inputs[1] if n2.inputs[0] == current else n2.inputs[0]
            scale = top(other)
            if scale is None or scale.code not in _FLOAT_CODES or not _broadcasts(q, scale, zp):
                return None
            chain.append(n2)
            pattern = "Cast-Sub-Mul" if zp is not None else "Cast-Mul"
            out = n2.outputs[0]
            return _Logical(out, out, q, scale, zp, pattern=pattern), chain
        return None

    def _match_quantized_op(self, node: _Node, graph: _Graph) -> tuple[_Logical, list[_Node]] | None:
        """An int8/uint8 weight consumed directly by an integer operator (onnxruntime's quantizers)."""
        spec = _QUANTIZED_OPS.get((node.domain or "ai.onnx", node.op_type))
        if spec is None or not node.outputs:
            return None
        w_at, scale_at, zp_at, bias_at, matmul = spec
        ins = node.inputs

        def arg(i: int | None) -> str:
            return ins[i] if i is not None and i < len(ins) else ""

        q = graph.top(arg(w_at))
        if q is None or q.code not in _QUANT_CODES:
            return None
        zp = graph.top(arg(zp_at)) if arg(zp_at) else None
        if arg(zp_at) and zp is None:
            return None
        chain = [node]
        layer_out = node.outputs[0]
        if scale_at is not None:
            scale = graph.top(arg(scale_at))
        else:  # MatMulInteger: Cast(int32 -> float) -> Mul(., x_scale * w_scale)
            cast = graph.only_consumer(layer_out)
            mul = graph.only_consumer(cast.outputs[0]) if cast is not None and cast.outputs else None
            if cast is None or cast.op_type != "Cast" or mul is None or mul.op_type != "Mul" or not mul.outputs:
                return None
            s = next((i for i in mul.inputs if i != cast.outputs[0]), "")
            scale = graph.top(s)
            if scale is None:
                scales_mul = graph.producers.get(s)
                if scales_mul is None or scales_mul.op_type != "Mul":
                    return None
                found = [graph.top(i) for i in scales_mul.inputs if graph.top(i) is not None]
                if len(found) != 1:
                    return None
                scale = found[0]
                chain.append(scales_mul)
            chain += [cast, mul]
            layer_out = mul.outputs[0]
        if scale is None or scale.code not in _FLOAT_CODES:
            return None
        if matmul:
            if len(q.dims) != 2 or not _broadcasts(q, scale, zp):
                return None
            axis = None
        else:  # QLinearConv: per output channel, axis 0
            axis = 0
            if not q.dims or not self._dq_shapes_ok(q, scale, zp, 0, 0):
                return None
        layer = None if node.op_type == "QLinearAdd" else node  # an added constant names no layer
        lg = _Logical(q.name, q.name, q, scale, zp, axis=axis, pattern=node.op_type, layer=layer,
                      layer_out=layer_out, bias_inputs=[arg(bias_at)] if arg(bias_at) else [], matmul=matmul)
        return lg, chain

    @staticmethod
    def _dq_shapes_ok(q: _Stored, scale: _Stored, zp: _Stored | None, axis: int, block: int) -> bool:
        for part in (scale, zp):
            if part is None:
                continue
            if part.numel == 1 and len(part.dims) <= 1:
                continue
            if block > 0:
                if len(part.dims) != len(q.dims):
                    return False
                for i, (d, s) in enumerate(zip(q.dims, part.dims)):
                    want = -(-d // block) if i == axis else d
                    if s != want:
                        return False
                continue
            if not q.dims or part.dims != (q.dims[axis],):
                return False
        return True

    def _name_and_orient(self, lg: _Logical, graph: _Graph, taken: set[str], names: dict[str, str]) -> None:
        """Name a weight after its layer when the file does not, and undo ONNX's in x out storage."""
        if lg.layer is None and len(lg.stored.dims) == 2:
            for node, idx in graph.consumers.get(lg.graph_name, []):
                if idx != 1 or not node.standard or not node.outputs:
                    continue
                if node.op_type == "MatMul":
                    lg.matmul = True
                elif node.op_type == "Gemm":
                    lg.matmul = not node.ints.get("transB", 0)
                    lg.bias_inputs = node.inputs[2:3]
                else:
                    continue
                lg.layer, lg.layer_out = node, node.outputs[0]
                break
        if not is_anonymous(lg.graph_name):
            return  # a named weight keeps the orientation it has
        if lg.layer is None:
            return
        lg.transposed = lg.matmul
        lg.extra["onnx_name"] = lg.graph_name
        lg.extra["transposed"] = lg.matmul
        lg.extra["onnx_node"] = lg.layer.name
        new = self._layer_name(lg, graph, names)
        if new is not None and new not in taken:
            taken.add(new)
            lg.name = new
        elif new is not None:
            lg.extra["suggested_name"] = new

    @staticmethod
    def _layer_name(lg: _Logical, graph: _Graph, names: dict[str, str]) -> str | None:
        """`<layer>.weight` from the bias added to the layer's output, else from the node's module path."""
        assert lg.layer is not None
        bias_inputs = list(lg.bias_inputs)
        if lg.layer_out:
            for n2, _ in graph.consumers.get(lg.layer_out, []):
                if n2.op_type in ("Add", "QLinearAdd"):
                    bias_inputs.extend(i for i in n2.inputs if i != lg.layer_out)
        for b in bias_inputs:
            label = names.get(b, "")
            if label.endswith(".bias") and not is_anonymous(label):
                return label[: -len(".bias")] + ".weight"
        parts = [p for p in lg.layer.name.split("/") if p]
        if len(parts) >= 2:
            return ".".join(parts[:-1]) + ".weight"
        return None

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
