"""The graph side of the ONNX reader: stored tensors, nodes, and the logical view built on them.

int8/uint8 weights with their scales become one logical float tensor named after the float weight they
stand for, read as ``(q - zero_point) * scale``. Recognised layouts: ``DequantizeLinear`` (per tensor,
per axis, blocked), ``Cast -> [Sub zp] -> Mul scale``, and onnxruntime's quantizers (``MatMulInteger``,
``Gather -> DequantizeLinear``, ``QLinearMatMul``, ``QLinearConv``, ``QLinearAdd``,
``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat``). A weight's scale and zero point are hidden from
the logical view when nothing else uses them. Anonymous MatMul weights (``onnx::MatMul_123``,
``val_49``) get the name of the Linear layer they belong to (from the bias added to the MatMul output,
or from the node's module path) and are marked transposed, since ONNX stores them as in x out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.textsafe import escape

# TensorProto.DataType codes -> our storage dtype names (safetensors spelling where one exists).
ONNX_DTYPES: dict[int, str] = {
    1: "F32", 2: "U8", 3: "I8", 4: "U16", 5: "I16", 6: "I32", 7: "I64", 8: "STRING", 9: "BOOL",
    10: "F16", 11: "F64", 12: "U32", 13: "U64", 14: "C64", 15: "C128", 16: "BF16", 17: "F8_E4M3",
    18: "F8_E4M3FNUZ", 19: "F8_E5M2", 20: "F8_E5M2FNUZ", 21: "U4", 22: "I4",
}
_FLOAT_CODES = {1, 10, 11, 16}
_QUANT_CODES = {2: "UINT8", 3: "INT8"}

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


class LogicalBuilder:
    """Builds the logical view of one graph's stored tensors (see the module docstring)."""

    def __init__(self, stored: dict[str, _Stored], graph_names: dict[str, str], nodes: list[_Node],
                 warnings: list[str]) -> None:
        self._stored, self._graph_names, self._nodes, self._warnings = stored, graph_names, nodes, warnings

    def build(self) -> dict[str, _Logical]:
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
