"""The ONNX reader: names, orientation, dequantization, external data confinement, bad files."""

from __future__ import annotations

import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modeltrace.errors import FormatError, UnsafeFileError
from modeltrace.formats import detect_format, open_file
from modeltrace.formats.onnx import ONNXReader, is_anonymous, sniff
from modeltrace.formats.onnx_write import QUANTIZE_MODES, write_onnx

Q = "encoder.layer.0.attention.self.query.weight"
QB = "encoder.layer.0.attention.self.query.bias"
EMB = "embeddings.word_embeddings.weight"
HEAD = "lm_head.weight"
NORM = "encoder.layer.0.output.LayerNorm.weight"
POS = "embeddings.position_ids"


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        EMB: rng.normal(size=(40, 8)).astype(np.float32),
        Q: rng.normal(size=(6, 8)).astype(np.float32),
        QB: rng.normal(size=(6,)).astype(np.float32),
        HEAD: rng.normal(size=(5, 8)).astype(np.float32),
        NORM: rng.normal(size=(8,)).astype(np.float32),
        POS: np.arange(16, dtype=np.int64)[None],
    }


def _numel(w: dict[str, np.ndarray]) -> int:
    return sum(int(a.size) for a in w.values())


# -- float models -------------------------------------------------------------------------------


def test_float_anonymous_matmul_weights_get_layer_names_and_torch_orientation(
        tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w)
    with ONNXReader(path) as r:
        infos = r.infos()
        assert sorted(infos) == sorted(w)
        for name, arr in w.items():
            assert infos[name].shape == arr.shape
            got = r.read(name)
            assert got.dtype == np.float32 and got.flags.writeable
            np.testing.assert_array_equal(got, arr.astype(np.float32))
        assert sum(i.numel for i in infos.values()) == _numel(w) == 438
        assert infos[Q].extra["transposed"] is True
        assert infos[Q].extra["onnx_name"].startswith("onnx::MatMul_")
        assert infos[Q].extra["onnx_node"] == "/encoder/layer.0/attention/self/query/MatMul"
        assert infos[HEAD].extra["transposed"] is True  # no bias: named from the node's module path
        assert "transposed" not in infos[EMB].extra
        assert infos[Q].dtype == "F32" and infos[Q].quantization is None
        assert infos[POS].dtype == "I64"
        assert r.metadata()["renamed_tensors"] == 2


def test_raw_view_lists_tensors_as_stored(tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w)
    with ONNXReader(path, raw=True) as r:
        infos = r.infos()
        anon = [n for n in infos if n.startswith("onnx::MatMul_")]
        assert len(anon) == 2
        shapes = {infos[n].shape for n in anon}
        assert shapes == {(8, 6), (8, 5)}
        q_raw = next(n for n in anon if infos[n].shape == (8, 6))
        np.testing.assert_array_equal(r.read(q_raw), w[Q].T)
        assert sum(i.numel for i in infos.values()) == 438


def test_named_gemm_weights_keep_name_and_orientation(tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w, anonymous=False)
    with ONNXReader(path) as r:
        assert sorted(r.infos()) == sorted(w)
        assert "transposed" not in r.info(Q).extra
        np.testing.assert_array_equal(r.read(Q), w[Q])
        assert r.metadata()["renamed_tensors"] == 0


@pytest.mark.parametrize("quantize", [None, *QUANTIZE_MODES])
def test_read_rows_matches_read(tmp_path: Path, rng: np.random.Generator, quantize: str | None) -> None:
    w = _weights(rng)
    for external in (False, True):
        path = write_onnx(tmp_path / f"m-{external}.onnx", w, quantize=quantize, external_data=external)
        with ONNXReader(path) as r:
            for name in (EMB, Q, NORM, POS):
                full = r.read(name)
                np.testing.assert_array_equal(r.read_rows(name, 2, 5), full[2:5])
                np.testing.assert_array_equal(r.read_rows(name, 3, 100), full[3:])


# -- quantized models ---------------------------------------------------------------------------


@pytest.mark.parametrize("quantize", QUANTIZE_MODES)
def test_quantized_weights_read_back_as_one_float_tensor(tmp_path: Path, rng: np.random.Generator,
                                                         quantize: str) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w, quantize=quantize)
    kind = "UINT8" if quantize.startswith("uint8") else "INT8"
    with ONNXReader(path) as r:
        infos = r.infos()
        assert sorted(infos) == sorted(w)  # scales and zero points are folded in, not listed
        assert sum(i.numel for i in infos.values()) == _numel(w)
        for name in (EMB, Q, HEAD):
            info = infos[name]
            assert (info.dtype, info.quantization) == (kind, f"onnx-{kind.lower()}")
            assert info.shape == w[name].shape
            got = r.read(name)
            src = w[name]
            # per output channel (rows in torch orientation): error at most half a quantization step
            step = (src.max(axis=1) - np.minimum(src.min(axis=1), 0) if kind == "UINT8"
                    else 2 * np.abs(src).max(axis=1)) / (255.0 if kind == "UINT8" else 254.0)
            assert np.all(np.abs(got - src) <= step[:, None] * 0.5 + 1e-6)
            cos = float((got * src).sum() / np.linalg.norm(got) / np.linalg.norm(src))
            assert cos > 0.999
        assert infos[Q].extra["transposed"] is True
        assert infos[Q].extra["pattern"] == {"int8": "DequantizeLinear", "uint8": "DequantizeLinear",
                                             "int8-cast": "Cast-Mul", "uint8-cast": "Cast-Sub-Mul"}[quantize]
        np.testing.assert_array_equal(r.read(NORM), w[NORM])  # 1-D tensors stay float
        assert r.metadata()["quantized_tensors"] == 3


@pytest.mark.parametrize("quantize", QUANTIZE_MODES)
def test_raw_element_count_includes_scales_and_zero_points(tmp_path: Path, rng: np.random.Generator,
                                                          quantize: str) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w, quantize=quantize)
    # one scale per output channel: 40 (embedding rows) + 6 + 5; DequantizeLinear always stores
    # zero points, the Cast patterns only when asymmetric (uint8)
    channels = 40 + 6 + 5
    with_zp = quantize != "int8-cast"
    expected = _numel(w) + channels * (2 if with_zp else 1)
    with ONNXReader(path, raw=True) as r:
        infos = r.infos()
        assert sum(i.numel for i in infos.values()) == expected
        assert len(infos) == len(w) + 3 * (3 if with_zp else 2) - 3
        assert {i.dtype for i in infos.values() if i.name.endswith("_quantized")} == (
            {"U8"} if quantize.startswith("uint8") else {"I8"})
    with ONNXReader(path) as r:
        assert r.metadata()["initializer_elements"] == expected


_ORT_LAYOUTS = ["dynamic-int8", "dynamic-uint8", "dynamic-int8-per-channel", "static-qdq", "static-qoperator"]


@pytest.mark.parametrize("layout", _ORT_LAYOUTS)
def test_onnxruntime_quantizer_layouts_read_back_under_hf_names(tmp_path: Path, rng: np.random.Generator,
                                                               layout: str) -> None:
    # MatMulInteger + Gather -> DequantizeLinear (dynamic), DequantizeLinear with *_DequantizeLinear_Output
    # values (QDQ), QLinearMatMul and QLinearAdd (QOperator), exactly as onnxruntime writes them
    quantization = pytest.importorskip("onnxruntime.quantization")
    w = {k: v for k, v in _weights(rng).items() if k not in (NORM, POS)}
    src = write_onnx(tmp_path / "float.onnx", w)
    out = tmp_path / "q.onnx"
    kind, _, variant = layout.partition("-")
    if kind == "dynamic":
        weight_type = quantization.QuantType.QUInt8 if variant == "uint8" else quantization.QuantType.QInt8
        quantization.quantize_dynamic(str(src), str(out), weight_type=weight_type,
                                      per_channel=variant.endswith("per-channel"))
    else:
        feeds = [{"x_8": rng.normal(size=(4, 8)).astype(np.float32), "input_ids": np.array([1, 2], np.int64)}
                 for _ in range(2)]

        class Feeds(quantization.CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(feeds)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.it, None)

        fmt = quantization.QuantFormat.QDQ if variant == "qdq" else quantization.QuantFormat.QOperator
        quantization.quantize_static(str(src), str(out), Feeds(), quant_format=fmt, per_channel=True)
    with ONNXReader(out) as r:
        infos = r.infos()
        assert set(w) <= set(infos)
        # what else is listed: activation quantization parameters (scalars), never a weight's parts
        assert all(infos[n].numel == 1 for n in set(infos) - set(w))
        for name in (EMB, Q, HEAD):
            assert infos[name].quantization in ("onnx-int8", "onnx-uint8")
            got, src_w = r.read(name), w[name]
            assert got.shape == src_w.shape
            rel = float(np.linalg.norm(got - src_w) / np.linalg.norm(src_w))
            assert rel < 0.02, (name, rel)
        assert infos[Q].extra["transposed"] is True and infos[HEAD].extra["transposed"] is True
        assert float(np.abs(r.read(QB) - w[QB]).max()) < 0.05
        for name, info in infos.items():  # scalars included
            full = r.read(name)
            np.testing.assert_array_equal(r.read_rows(name, 1, 3), full[1:3] if info.shape else full)


def _single_tensor_model(path: Path, nodes: list[onnx.NodeProto], inits: list[TensorProto],
                         out: str, shape: list[int]) -> Path:
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path))
    return path


def test_per_tensor_dequantize_linear_with_zero_point(tmp_path: Path) -> None:
    q = np.array([[0, 10, 255], [128, 3, 7]], dtype=np.uint8)
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(np.array(0.5, np.float32), "w_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "w_zp")]
    node = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["conv.weight"])
    path = _single_tensor_model(tmp_path / "m.onnx", [node], inits, "conv.weight", [2, 3])
    with ONNXReader(path) as r:
        assert list(r.infos()) == ["conv.weight"]
        np.testing.assert_array_equal(r.read("conv.weight"), (q.astype(np.float32) - 128) * 0.5)
        assert r.info("conv.weight").quantization == "onnx-uint8"


def test_qlinearconv_weights_dequantize_per_output_channel(tmp_path: Path) -> None:
    q = np.arange(-12, 12, dtype=np.int8).reshape(2, 3, 2, 2)
    scale = np.array([0.5, 0.25], np.float32)
    zp = np.array([1, -2], np.int8)
    inits = [numpy_helper.from_array(q, "conv1.weight_quantized"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(zp, "w_zero_point"), numpy_helper.from_array(np.array(0.1, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(np.array(0.2, np.float32), "y_s"),
             numpy_helper.from_array(np.array(0, np.int8), "y_zp")]
    node = helper.make_node("QLinearConv", ["x", "x_s", "x_zp", "conv1.weight_quantized", "w_scale", "w_zero_point",
                                            "y_s", "y_zp"], ["y"], name="/conv1/Conv_quant")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, None)], initializer=inits)
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with ONNXReader(path) as r:
        info = r.info("conv1.weight")
        assert (info.shape, info.quantization, info.extra["pattern"]) == ((2, 3, 2, 2), "onnx-int8", "QLinearConv")
        want = (q.astype(np.float32) - zp.reshape(2, 1, 1, 1)) * scale.reshape(2, 1, 1, 1)
        np.testing.assert_array_equal(r.read("conv1.weight"), want)
        np.testing.assert_array_equal(r.read_rows("conv1.weight", 1, 2), want[1:2])
        assert sorted(r.infos()) == ["conv1.weight", "x_s", "x_zp", "y_s", "y_zp"]


def test_blocked_dequantize_linear(tmp_path: Path) -> None:
    q = np.arange(-10, 10, dtype=np.int8).reshape(2, 10)
    scale = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # blocks of 4 along axis 1: 3 blocks
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_s")]
    node = helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["proj.weight"], axis=1, block_size=4)
    path = _single_tensor_model(tmp_path / "m.onnx", [node], inits, "proj.weight", [2, 10])
    with ONNXReader(path) as r:
        want = q.astype(np.float32) * np.repeat(scale, 4, axis=1)[:, :10]
        np.testing.assert_array_equal(r.read("proj.weight"), want)
        assert r.info("proj.weight").extra["block_size"] == 4


def test_huge_block_size_does_not_allocate_per_block_element(tmp_path: Path) -> None:
    q = np.arange(-10, 10, dtype=np.int8).reshape(2, 10)
    scale = np.array([[2.0], [3.0]], np.float32)  # one block covers the row: any block >= 10 is the same
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_s")]
    node = helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["proj.weight"], axis=1, block_size=2**40)
    path = _single_tensor_model(tmp_path / "m.onnx", [node], inits, "proj.weight", [2, 10])
    with ONNXReader(path) as r:  # np.repeat by the block size asked for 2^41 floats
        np.testing.assert_array_equal(r.read("proj.weight"), q.astype(np.float32) * scale)


def test_dynamic_quantize_matmul_takes_its_name_from_the_bias(tmp_path: Path) -> None:
    q = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)  # in x out
    scale = np.array([0.5, 1.0, 2.0], np.float32)
    inits = [numpy_helper.from_array(q, "onnx::MatMul_7_quantized"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(3, np.int8), "zp"),
             numpy_helper.from_array(np.zeros(3, np.float32), "mlp.fc1.bias")]
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "onnx::MatMul_7_quantized", "s", "zp", "mlp.fc1.bias"],
                            ["y"], domain="com.microsoft", name="fused")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    path = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    onnx.save_model(model, str(path))
    with ONNXReader(path) as r:
        assert sorted(r.infos()) == ["mlp.fc1.bias", "mlp.fc1.weight"]
        np.testing.assert_array_equal(r.read("mlp.fc1.weight"), (q.astype(np.float32) * scale).T)
        assert r.info("mlp.fc1.weight").extra["onnx_name"] == "onnx::MatMul_7_quantized"


def test_scale_that_does_not_fit_leaves_tensors_as_stored(tmp_path: Path) -> None:
    q = np.ones((2, 3), dtype=np.int8)
    inits = [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(np.ones(5, np.float32), "w_s")]
    node = helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w"], axis=1)
    path = _single_tensor_model(tmp_path / "m.onnx", [node], inits, "w", [2, 3])
    with ONNXReader(path) as r:
        assert sorted(r.infos()) == ["w_q", "w_s"]
        assert r.metadata()["warnings"] == ["DequantizeLinear : scale shape [5] does not fit [2, 3]; left as stored"]


# -- constants and subgraphs --------------------------------------------------------------------


def test_constant_nodes_and_subgraph_initializers_are_listed(tmp_path: Path) -> None:
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c"))
    floats = helper.make_node("Constant", [], ["f"], value_floats=[1.0, 2.5])
    branch = helper.make_graph([helper.make_node("Identity", ["inner_w"], ["y"])], "then_branch", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                               initializer=[numpy_helper.from_array(np.array([4.0, 5.0], np.float32), "inner_w")])
    other = helper.make_graph([helper.make_node("Identity", ["f"], ["z"])], "else_branch", [],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    if_node = helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=other)
    graph = helper.make_graph([const, floats, if_node], "g", [],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 3])],
                              initializer=[cond])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with ONNXReader(path) as r:
        infos = r.infos()
        assert list(infos) == ["cond", "c", "f", "inner_w"]
        np.testing.assert_array_equal(r.read("c"), c)
        np.testing.assert_array_equal(r.read("f"), [1.0, 2.5])
        np.testing.assert_array_equal(r.read("inner_w"), [4.0, 5.0])
        assert infos["inner_w"].extra["subgraph"] == "then_branch"
        assert infos["cond"].dtype == "BOOL"
        md = r.metadata()
        assert (md["initializers"], md["stored_tensors"]) == (2, 4)


def test_string_tensors_are_not_weights(tmp_path: Path) -> None:
    labels = helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", b"dog"])
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    const = helper.make_node("Constant", [], ["names"], value=helper.make_tensor("n", TensorProto.STRING, [1], [b"x"]))
    path = _single_tensor_model(tmp_path / "m.onnx", [const, helper.make_node("Identity", ["w"], ["y"])],
                                [labels, w], "y", [3])
    with ONNXReader(path) as r:
        assert list(r.infos()) == ["w"]


# -- metadata -----------------------------------------------------------------------------------


def test_metadata_escapes_and_caps_strings(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "m.onnx", {NORM: rng.normal(size=(8,)).astype(np.float32)})
    model = onnx.load(str(path))
    model.doc_string = "line\x1b[31mred\n" + "x" * 5000
    onnx.save_model(model, str(path))
    with ONNXReader(path) as r:
        md = r.metadata()
    assert md["producer_name"] == "modeltrace"
    assert md["ir_version"] == 8
    assert md["opsets"] == {"ai.onnx": 17}
    assert md["inputs"] == [] and md["outputs"] == ["out_1"]
    assert md["doc_string"].startswith("line\\x1b[31mred\\x0a") and len(md["doc_string"]) == 1000
    assert "\x1b" not in md["doc_string"]


# -- external data ------------------------------------------------------------------------------


def test_external_data_inside_the_folder_is_read_lazily(tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w, external_data=True, quantize="int8")
    data = tmp_path / "m.onnx.data"
    with ONNXReader(path) as r:
        info = r.info(NORM)
        assert info.extra["external"]["file"] == str(data.resolve())
        assert r.metadata()["external_files"] == [str(data.resolve())]
        # data is read on demand: bytes changed after opening are what read() returns
        off = info.extra["external"]["offset"]
        blob = bytearray(data.read_bytes())
        blob[off: off + 32] = np.full(8, 7.0, np.float32).tobytes()
        data.write_bytes(bytes(blob))
        np.testing.assert_array_equal(r.read(NORM), np.full(8, 7.0, np.float32))
        assert np.abs(r.read(Q) - w[Q]).max() < 0.05


def _external_model(folder: Path, location: str, *, offset: int | None = None, length: int | None = None,
                    name: str = "m.onnx") -> Path:
    t = TensorProto()
    t.name = "w"
    t.data_type = TensorProto.FLOAT
    t.dims.extend([4])
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[t])
    path = folder / name
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_external_data_with_offset(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 16 + np.arange(4, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, "w.bin", offset=16, length=16)
    with ONNXReader(path) as r:
        np.testing.assert_array_equal(r.read("w"), [0, 1, 2, 3])


def test_external_data_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = model_dir.resolve()
    path = _external_model(model_dir, "../secret")
    with pytest.raises(UnsafeFileError) as exc:
        ONNXReader(path)
    assert str(exc.value) == (f"{path} [tensor w]: external data location '../secret' leaves the model folder; "
                              f"only files inside {folder} are read")
    assert exc.value.path == str(path)

    path = _external_model(model_dir, str(secret))
    with pytest.raises(UnsafeFileError) as exc:
        ONNXReader(path)
    assert str(exc.value) == (f"{path} [tensor w]: external data location {str(secret)!r} is an absolute path; "
                              f"only files inside {folder} are read")

    (model_dir / "link").symlink_to(secret)
    path = _external_model(model_dir, "link")
    with pytest.raises(UnsafeFileError, match="resolves outside the model folder"):
        ONNXReader(path)


def test_external_data_shorter_than_offset_plus_length(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 20)
    path = _external_model(tmp_path, "w.bin", offset=8, length=16)
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert not isinstance(exc.value, UnsafeFileError)
    assert str(exc.value) == (f"{path} [tensor w]: external data 'w.bin' is 20 bytes, shorter than offset 8 "
                              "+ length 16; truncated?")


def test_external_data_length_must_match_shape(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    path = _external_model(tmp_path, "w.bin", length=12)
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value) == (f"{path} [tensor w]: external data length 12 does not match F32 shape [4] "
                              "(16 bytes)")


def test_missing_external_file(tmp_path: Path) -> None:
    path = _external_model(tmp_path, "gone.bin")
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value) == f"{path} [tensor w]: external data file 'gone.bin' is missing"


# -- bad files ----------------------------------------------------------------------------------


def test_truncated_onnx_is_a_format_error(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "m.onnx", _weights(rng))
    blob = path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(blob[: len(blob) // 2])
    assert detect_format(cut) == "onnx"
    with pytest.raises(FormatError) as exc:
        open_file(cut)
    assert str(exc.value).startswith(f"{cut}: not a valid ONNX model (protobuf decode failed: ")


def test_garbage_is_a_format_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(FormatError, match=r"^.*bad\.onnx: not a valid ONNX model"):
        ONNXReader(bad)
    empty_model = tmp_path / "empty.onnx"
    empty_model.write_bytes(b"\x08\x07")
    with pytest.raises(FormatError) as exc:
        ONNXReader(empty_model)
    assert str(exc.value) == f"{empty_model}: ONNX model has no graph (truncated or not an ONNX file)"


def test_raw_data_of_the_wrong_size_is_a_format_error(tmp_path: Path) -> None:
    t = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    t.raw_data = t.raw_data[:10]
    path = _single_tensor_model(tmp_path / "m.onnx", [helper.make_node("Identity", ["w"], ["y"])], [t], "y", [4])
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value) == f"{path} [tensor w]: F32 shape [4] needs 16 bytes but raw_data holds 10"


def test_a_100_byte_file_cannot_claim_a_trillion_parameters(tmp_path: Path) -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6])  # a shape, and no data at all
    path = _single_tensor_model(tmp_path / "m.onnx", [helper.make_node("Identity", ["w"], ["y"])], [t], "y", [1])
    assert path.stat().st_size < 120
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value) == (f"{path} [tensor w]: F32 shape [1000000, 1000000] needs 1000000000000 values but "
                              "the tensor holds 0 in float_data")


@pytest.mark.parametrize(("code", "values", "field", "need"), [
    (TensorProto.INT64, [1, 2, 3], "int64_data", 4), (TensorProto.FLOAT16, [1], "int32_data", 4),
    (TensorProto.DOUBLE, [1.0] * 5, "double_data", 4), (TensorProto.COMPLEX64, [1.0] * 4, "float_data", 8),
])
def test_typed_fields_must_hold_what_the_shape_needs(tmp_path: Path, code: int, values: list[float], field: str,
                                                     need: int) -> None:
    t = TensorProto(name="w", data_type=code, dims=[2, 2])
    getattr(t, field).extend(values)
    path = _single_tensor_model(tmp_path / "m.onnx", [helper.make_node("Identity", ["w"], ["y"])], [t], "y", [1])
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value).endswith(f"needs {need} values but the tensor holds {len(values)} in {field}")


def test_overlong_tensor_name_is_refused(tmp_path: Path) -> None:
    name = "model." * 1000 + "w"
    t = numpy_helper.from_array(np.zeros(4, np.float32), name)
    path = _single_tensor_model(tmp_path / "m.onnx", [helper.make_node("Identity", [name], ["y"])], [t], "y", [4])
    with pytest.raises(FormatError) as exc:
        ONNXReader(path)
    assert str(exc.value) == f"{path}: a tensor name is 6001 characters long, over the 4096-character cap"


def test_reader_keeps_no_second_copy_of_inline_data(tmp_path: Path) -> None:
    import gc

    w = {"emb.weight": np.ones((2048, 1024), np.float32)}  # 8 MB inline
    path = write_onnx(tmp_path / "m.onnx", w)
    gc.collect()
    tracemalloc.start()
    try:
        reader = ONNXReader(path)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    with reader:
        np.testing.assert_array_equal(reader.read_rows("emb.weight", 5, 6), np.ones((1, 1024)))
    assert held < 1.5 * 8 * 1024 * 1024  # the bytes once, not the protobuf tree beside them


def test_corrupted_bytes_give_format_errors_or_values_never_crashes(tmp_path: Path) -> None:
    gen = np.random.default_rng(11)
    w = _weights(gen)
    blob = write_onnx(tmp_path / "m.onnx", w, quantize="uint8").read_bytes()
    outcomes = {"format-error": 0, "read": 0}
    for _ in range(300):
        b = bytearray(blob)
        for pos in gen.integers(0, len(b), 3):
            b[pos] = int(gen.integers(0, 256))
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(bytes(b))
        try:
            with ONNXReader(bad) as r:
                for name in r.infos():
                    r.read(name)
                r.metadata()
            outcomes["read"] += 1
        except FormatError:
            outcomes["format-error"] += 1
    assert outcomes["format-error"] > 0 and outcomes["read"] > 0


def test_names_that_are_not_utf8_are_decoded_with_replacement(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "m.onnx", {HEAD: rng.normal(size=(5, 8)).astype(np.float32)})
    blob = path.read_bytes()
    assert blob.count(b"lm_head") == 4  # node and value names; a same-length swap keeps the framing
    path.write_bytes(blob.replace(b"lm_head", b"lm_\xff\xfe\xfd\xfc"))
    bad = "lm_" + "\ufffd" * 4
    with ONNXReader(path) as r:
        assert list(r.infos()) == [f"{bad}.weight"]
        assert r.info(f"{bad}.weight").extra["onnx_node"] == f"/{bad}/MatMul"


def test_unknown_tensor_name(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "m.onnx", {NORM: rng.normal(size=(8,)).astype(np.float32)})
    with ONNXReader(path) as r, pytest.raises(FormatError) as exc:
        r.read("nope")
    assert str(exc.value) == f"{path} [tensor nope]: no such tensor"


# -- format detection ---------------------------------------------------------------------------


def test_anonymous_names() -> None:
    assert is_anonymous("onnx::MatMul_123")
    assert is_anonymous("val_49")
    assert is_anonymous("1234")
    assert not is_anonymous("encoder.layer.0.attention.self.query.weight")
    assert not is_anonymous("inner.embeddings.word_embeddings.weight")


def test_detect_format_picks_onnx_by_content(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "weights.bin", _weights(rng))
    assert detect_format(path) == "onnx"
    assert isinstance(open_file(path), ONNXReader)
    ext = write_onnx(tmp_path / "ext" / "model.onnx", _weights(rng), external_data=True, quantize="uint8")
    assert detect_format(ext) == "onnx"


def test_detect_format_does_not_call_safetensors_onnx(tmp_path: Path, rng: np.random.Generator) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.onnx"
    save_file({"a": rng.normal(size=(3, 3)).astype(np.float32)}, str(path))
    assert detect_format(path) == "safetensors"
    assert not sniff(path.read_bytes()[:64])


def test_sniff_rejects_other_formats_and_text() -> None:
    heads = [
        b"GGUF\x03\x00\x00\x00" + b"\x00" * 56,
        b"PK\x03\x04" + b"\x00" * 60,
        pickle.dumps({"w": [1.0, 2.0]}, protocol=2),
        pickle.dumps({"w": [1.0, 2.0]}, protocol=5),
        pickle.dumps({"w": [1.0, 2.0]}, protocol=0),
        b"hello world, this is a plain text file that is not a model at all",
        b'{"architectures": ["BertModel"], "hidden_size": 384}',
        b"\x08",
        b"",
        bytes(range(64)),
    ]
    # a safetensors header length whose low byte is 0x08 still has zero high bytes: never a ModelProto
    for n in (0x0508, 0x1208, 0x123408, 0x3A1208):
        heads.append(struct.pack("<Q", n) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    for head in heads:
        assert not sniff(head[:64]), head


def test_sniff_rejects_a_torch_zip(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    assert not sniff(path.read_bytes()[:64])


def test_sniff_rejects_random_bytes() -> None:
    gen = np.random.default_rng(7)
    claimed = sum(sniff(gen.integers(0, 256, 64, dtype=np.uint8).tobytes()) for _ in range(5000))
    assert claimed == 0


# -- the real quantized export of all-MiniLM-L6-v2 ------------------------------------------------


@pytest.mark.realmodels
@pytest.mark.slow
def test_real_minilm_int8_onnx_counts_names_and_values(realmodels: Path) -> None:
    from modeltrace.formats.safetensors import SafetensorsReader

    onnx_path = realmodels / "all-minilm-l6-v2-int8-onnx" / "model.onnx"
    st_path = realmodels / "all-minilm-l6-v2" / "model.safetensors"
    if not onnx_path.is_file() or not st_path.is_file():
        pytest.skip("all-minilm-l6-v2 and its int8 ONNX export are not both present")
    assert detect_format(onnx_path) == "onnx"
    with ONNXReader(onnx_path, raw=True) as raw:
        infos = raw.infos()
        assert len(infos) == 160
        assert sum(i.numel for i in infos.values()) == 22_617_680
    with ONNXReader(onnx_path) as r, SafetensorsReader(st_path) as st:
        md = r.metadata()
        assert (md["initializers"], md["initializer_elements"]) == (160, 22_617_680)
        assert md["producer_name"] == "pytorch" and md["opsets"] == {"ai.onnx": 17}
        assert md["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert md["quantized_tensors"] == 38  # 36 Linear weights + word and position embeddings
        assert md["renamed_tensors"] == 36
        infos = r.infos()
        # the export wraps the model in a module called "inner"; every HF tensor but the unused
        # pooler is present under that prefix, in the HF shape
        missing = [n for n in st.infos() if "inner." + n not in infos]
        assert missing == ["pooler.dense.bias", "pooler.dense.weight"]
        pooler = sum(st.info(n).numel for n in missing)
        graph_constants = 22  # shape and scalar constants of the exported graph (val_8, val_88, ...)
        total_st = sum(i.numel for i in st.infos().values())
        assert total_st == 22_713_728
        assert sum(i.numel for i in infos.values()) == total_st - pooler + graph_constants
        cosines = {}
        for name in st.infos():
            if name in missing:
                continue
            a = st.read(name).astype(np.float64)
            b = r.read("inner." + name).astype(np.float64)
            assert a.shape == b.shape, name
            cosines[name] = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
        assert len(cosines) == 102  # 101 floating-point tensors and the position_ids buffer
        assert min(cosines.values()) >= 0.9997
        for name in (Q, "encoder.layer.2.intermediate.dense.weight", "encoder.layer.2.output.dense.weight",
                     EMB, "embeddings.position_embeddings.weight"):
            assert cosines[name] >= 0.9997, (name, cosines[name])
        q = r.info("inner." + Q)
        assert q.quantization == "onnx-int8" and q.extra["transposed"] is True
        assert q.extra["onnx_name"] == "val_49" and q.extra["pattern"] == "Cast-Mul"
        # the transposition matters: the stored orientation does not match the HF weight
        inter = "encoder.layer.2.intermediate.dense.weight"
        assert r.info("inner." + inter).shape == (1536, 384)
        a = st.read(Q).astype(np.float64)
        b = r.read("inner." + Q).T.astype(np.float64)
        assert abs(float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))) < 0.2


@pytest.mark.realmodels
def test_sniff_claims_only_the_real_onnx_file(realmodels: Path) -> None:
    files = sorted(p for p in realmodels.rglob("*") if p.is_file()
                   and p.suffix in (".onnx", ".safetensors", ".gguf", ".pth", ".bin", ".json", ".txt"))
    if not files:
        pytest.skip("no real model files present")
    def head(p: Path) -> bytes:
        with open(p, "rb") as fh:
            return fh.read(64)

    claimed = [p.relative_to(realmodels).as_posix() for p in files if sniff(head(p))]
    expected = [p.relative_to(realmodels).as_posix() for p in files if p.suffix == ".onnx"]
    assert claimed == expected


def test_empty_shape_beyond_numpy_is_a_format_error(tmp_path: Path) -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**62, 4, 0], raw_data=b"")
    path = _single_tensor_model(tmp_path / "m.onnx", [helper.make_node("Identity", ["w"], ["y"])], [t], "y", [1])
    with pytest.raises(FormatError) as err:
        ONNXReader(path)
    assert str(err.value) == f"{path} [tensor w]: shape [{2**62}, 4, 0] describes more than {2**40} elements"


def test_external_data_of_a_hub_snapshot_is_found_beside_the_link(tmp_path: Path, rng: np.random.Generator) -> None:
    # huggingface_hub links snapshots/<sha>/model.onnx and model.onnx.data to ../../blobs/<hash>
    w = _weights(rng)
    made = write_onnx(tmp_path / "made" / "model.onnx", w, external_data=True)
    repo = tmp_path / "models--org--m"
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in made.parent.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    with ONNXReader(snap / "model.onnx") as r:
        np.testing.assert_array_equal(r.read(EMB), w[EMB])
    outside = tmp_path / "elsewhere.data"
    outside.write_bytes((made.parent / next(p.name for p in made.parent.iterdir() if p.suffix != ".onnx"))
                        .read_bytes())
    data_link = next(p for p in snap.iterdir() if p.suffix != ".onnx")
    data_link.unlink()
    data_link.symlink_to(outside)
    with pytest.raises(UnsafeFileError) as err:
        ONNXReader(snap / "model.onnx")
    assert "resolves outside the model folder" in str(err.value)
