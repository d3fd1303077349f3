"""The ONNX writer: valid graphs laid out like torch exports, runnable by onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from modeltrace.formats.onnx_write import QUANTIZE_MODES, module_path, quantize_per_channel, write_onnx


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "embeddings.word_embeddings.weight": rng.normal(size=(40, 8)).astype(np.float32),
        "encoder.layer.0.attention.self.query.weight": rng.normal(size=(6, 8)).astype(np.float32),
        "encoder.layer.0.attention.self.query.bias": rng.normal(size=(6,)).astype(np.float32),
        "lm_head.weight": rng.normal(size=(5, 8)).astype(np.float32),
        "encoder.layer.0.output.LayerNorm.weight": rng.normal(size=(8,)).astype(np.float32),
    }


def test_module_path_keeps_list_indices_with_their_container() -> None:
    assert module_path("encoder.layer.0.attention.self.query.weight") == "/encoder/layer.0/attention/self/query"
    assert module_path("model.layers.12.mlp.down_proj.weight") == "/model/layers.12/mlp/down_proj"
    assert module_path("lm_head.weight") == "/lm_head"


def test_anonymous_layout_matches_torch_exports(tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w)
    model = onnx.load(str(path))
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert [n.name for n in matmuls] == ["/encoder/layer.0/attention/self/query/MatMul", "/lm_head/MatMul"]
    for n in matmuls:
        assert n.input[1].startswith("onnx::MatMul_")
    # stored in x out, i.e. transposed relative to the torch Linear weight
    assert inits[matmuls[0].input[1]] == (8, 6)
    assert inits[matmuls[1].input[1]] == (8, 5)
    assert inits["encoder.layer.0.attention.self.query.bias"] == (6,)
    assert inits["embeddings.word_embeddings.weight"] == (40, 8)


@pytest.mark.parametrize("quantize", [None, *QUANTIZE_MODES])
@pytest.mark.parametrize("anonymous", [True, False])
def test_onnxruntime_computes_x_times_w_transposed_plus_b(tmp_path: Path, rng: np.random.Generator,
                                                         quantize: str | None, anonymous: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    w = _weights(rng)
    path = write_onnx(tmp_path / "m.onnx", w, quantize=quantize, anonymous=anonymous)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(3, 8)).astype(np.float32)
    ids = np.array([0, 7, 39], dtype=np.int64)
    feeds = {i.name: (ids if i.name == "input_ids" else x) for i in sess.get_inputs()}
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    q = w["encoder.layer.0.attention.self.query.weight"]
    expected = [w["embeddings.word_embeddings.weight"][ids], x @ q.T + w["encoder.layer.0.attention.self.query.bias"],
                x @ w["lm_head.weight"].T, w["encoder.layer.0.output.LayerNorm.weight"]]
    tol = 1e-5 if quantize is None else 0.15
    assert len(outs) == 4
    for got, want in zip(outs.values(), expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=tol)


def test_symmetric_int8_quantization_error_is_half_a_step(rng: np.random.Generator) -> None:
    w = rng.normal(size=(7, 11)).astype(np.float32)
    q, scale, zp = quantize_per_channel(w, axis=0, unsigned=False)
    assert q.dtype == np.int8 and scale.shape == (7,) and not zp.any()
    assert np.all(np.abs(q.astype(np.float32) * scale[:, None] - w) <= scale[:, None] / 2 + 1e-6)
    assert np.array_equal(np.abs(q).max(axis=1), np.full(7, 127))


def test_unknown_quantize_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quantize must be one of"):
        write_onnx(tmp_path / "m.onnx", {"a.weight": np.zeros((2, 2), np.float32)}, quantize="int4")


def test_external_data_goes_next_to_the_model(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "m.onnx", _weights(rng), external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size > path.stat().st_size


def test_weights_too_big_for_one_protobuf_need_external_data(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from modeltrace.formats import onnx_write

    monkeypatch.setattr(onnx_write, "MAX_EMBEDDED_BYTES", 100)
    w = {"a.weight": np.zeros((8, 8), np.float32)}
    with pytest.raises(ValueError, match="^256 bytes of weights exceed what one protobuf file can hold; "
                       "pass external_data=True$"):
        write_onnx(tmp_path / "m.onnx", w)
    write_onnx(tmp_path / "m.onnx", w, external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size == 256
