"""Write small, valid ONNX files from named numpy weights, laid out the way torch exports them.

Used by tests and by the benchmark zoo (derivation "onnx-int8"). Each 2-D Linear weight becomes a
MatMul initializer stored transposed (in x out), named ``onnx::MatMul_<n>`` when ``anonymous``, with
the module path in the node name (``/encoder/layer.0/attention/self/query/MatMul``) and its bias
added by an Add node; embeddings feed a Gather; every other tensor feeds an Identity. Each weight
computes one graph output, so onnxruntime can run the file.

``quantize`` stores 2-D weights as int8 with per-channel symmetric scales (``"int8"``: DequantizeLinear;
``"int8-cast"``: Cast -> Mul), or as uint8 with per-channel zero points (``"uint8"``: DequantizeLinear;
``"uint8-cast"``: Cast -> Sub -> Mul).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

QUANTIZE_MODES = ("int8", "int8-cast", "uint8", "uint8-cast")
_EMBEDDING = re.compile(r"(embed|(^|\.)wte\.|(^|\.)wpe\.|shared\.weight$)")
OPSET = 17
MAX_EMBEDDED_BYTES = 1_800_000_000  # protobuf messages are limited to 2 GiB


def is_embedding(name: str) -> bool:
    """Whether a 2-D weight is looked up by index (Gather) rather than multiplied (MatMul)."""
    return _EMBEDDING.search(name) is not None


def module_path(name: str) -> str:
    """``encoder.layer.0.attention.self.query.weight`` -> ``/encoder/layer.0/attention/self/query``.

    torch.onnx names nodes by module scope: list indices stay joined to their container.
    """
    parts = name.split(".")[:-1]
    scopes: list[str] = []
    for p in parts:
        if p.isdigit() and scopes:
            scopes[-1] += "." + p
        else:
            scopes.append(p)
    return "/" + "/".join(scopes)


def quantize_per_channel(w: np.ndarray, axis: int, unsigned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, scale, zero_point) quantizing `w` per slice along `axis`; symmetric int8 or asymmetric uint8."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    w = w.astype(np.float32)
    if unsigned:
        lo = np.minimum(w.min(axis=other), 0.0)
        hi = np.maximum(w.max(axis=other), 0.0)
        scale = ((hi - lo) / 255.0).astype(np.float32)
        scale[scale == 0] = 1.0
        zp = np.clip(np.round(-lo / scale), 0, 255).astype(np.uint8)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)) + zp.reshape(shape), 0, 255).astype(np.uint8)
        return q, scale, zp
    amax = np.abs(w).max(axis=other)
    scale = (amax / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale, np.zeros_like(scale, dtype=np.int8)


def write_onnx(path: str | Path, tensors: dict[str, np.ndarray], quantize: str | None = None,
               anonymous: bool = True, external_data: bool = False) -> Path:
    """Write `tensors` as an ONNX model at `path`; return the path.

    Read back through ONNXReader, every tensor appears under its name in `tensors` and in the
    orientation given here (Linear weights out x in), dequantized where `quantize` is set.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, not {quantize!r}")
    path = Path(path)
    total = sum(np.asarray(a).nbytes for a in tensors.values())
    if total > MAX_EMBEDDED_BYTES and not external_data:
        raise ValueError(f"{total} bytes of weights exceed what one protobuf file can hold; "
                         "pass external_data=True")
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    inputs: dict[str, onnx.ValueInfoProto] = {}
    outputs: list[onnx.ValueInfoProto] = []
    counter = iter(range(1, 1 << 30))

    linear = {n for n, a in tensors.items()
              if a.ndim == 2 and n.endswith(".weight") and not is_embedding(n) and a.dtype.kind == "f"}
    biases = {n[: -len(".weight")] + ".bias" for n in linear} & set(tensors)

    def add_init(name: str, arr: np.ndarray) -> None:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))

    def weight_value(name: str, arr: np.ndarray, value: str, channel_axis: int) -> None:
        """Make `value` carry `arr` (as stored) in the graph: an initializer or a dequantized one."""
        if quantize is None or arr.ndim != 2 or arr.dtype.kind != "f":
            add_init(value, arr.astype(np.float32) if arr.dtype.kind == "f" else arr)
            return
        unsigned = quantize.startswith("uint8")
        q, scale, zp = quantize_per_channel(arr, channel_axis, unsigned)
        base = value.replace("::", "_")
        add_init(f"{base}_quantized", q)
        if quantize.endswith("-cast"):
            shape = [1, 1]
            shape[channel_axis] = -1
            add_init(f"{base}_scale", scale.reshape(shape))
            nodes.append(helper.make_node("Cast", [f"{base}_quantized"], [f"{base}_float"],
                                          name=f"{base}_cast", to=TensorProto.FLOAT))
            current = f"{base}_float"
            if unsigned:
                add_init(f"{base}_zero_point", zp.astype(np.float32).reshape(shape))
                nodes.append(helper.make_node("Sub", [current, f"{base}_zero_point"], [f"{base}_centred"],
                                              name=f"{base}_sub"))
                current = f"{base}_centred"
            nodes.append(helper.make_node("Mul", [current, f"{base}_scale"], [value], name=f"{base}_mul"))
        else:
            add_init(f"{base}_scale", scale)
            add_init(f"{base}_zero_point", zp)
            nodes.append(helper.make_node("DequantizeLinear",
                                          [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                                          [value], name=f"{base}_dequantize", axis=channel_axis))

    def graph_input(name: str, elem: int, shape: list[int | str]) -> str:
        if name not in inputs:
            inputs[name] = helper.make_tensor_value_info(name, elem, shape)
        return name

    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if name in biases:
            continue  # added with its weight
        out = f"out_{next(counter)}"
        if name in linear:
            out_f, in_f = arr.shape
            x = graph_input(f"x_{in_f}", TensorProto.FLOAT, ["batch", in_f])
            scope = module_path(name)
            bias = name[: -len(".weight")] + ".bias"
            if anonymous:
                value = f"onnx::MatMul_{next(counter)}"
                weight_value(name, arr.T, value, channel_axis=1)
                mm_out = f"{scope}/MatMul_output_0"
                nodes.append(helper.make_node("MatMul", [x, value], [mm_out], name=f"{scope}/MatMul"))
                if bias in biases:
                    add_init(bias, tensors[bias].astype(np.float32))
                    nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=f"{scope}/Add"))
                else:
                    nodes.append(helper.make_node("Identity", [mm_out], [out], name=f"{scope}/Identity"))
            else:
                weight_value(name, arr, name, channel_axis=0)
                gemm_in = [x, name]
                if bias in biases:
                    add_init(bias, tensors[bias].astype(np.float32))
                    gemm_in.append(bias)
                nodes.append(helper.make_node("Gemm", gemm_in, [out], name=f"{scope}/Gemm", transB=1))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", out_f]))
        elif arr.ndim == 2 and arr.dtype.kind == "f" and is_embedding(name):
            ids = graph_input("input_ids", TensorProto.INT64, ["batch"])
            weight_value(name, arr, name, channel_axis=0)
            nodes.append(helper.make_node("Gather", [name, ids], [out], name=f"{module_path(name)}/Gather"))
            outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", arr.shape[1]]))
        else:
            stored = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
            add_init(name, stored)
            nodes.append(helper.make_node("Identity", [name], [out], name=f"{module_path(name)}/Identity"))
            elem = helper.np_dtype_to_tensor_dtype(stored.dtype)
            outputs.append(helper.make_tensor_value_info(out, elem, list(stored.shape)))

    graph = helper.make_graph(nodes, "main_graph", list(inputs.values()), outputs, initializer=inits)
    model = helper.make_model(graph, producer_name="modeltrace", producer_version="0.1.0",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
        onnx.checker.check_model(str(path))  # by path: the checker reads external data itself
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
    return path
