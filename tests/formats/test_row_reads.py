"""A row read of a large tensor costs what the rows cost, in every reader: counted as the bytes allocated
(tracemalloc sees numpy buffers and protobuf's bytes copies), which cannot flake the way a timing can."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from format_builders import Member, state_dict_pickle, tensor, torch_zip
from st_builders import write_safetensors

from modeltrace.formats import open_file
from modeltrace.formats.gguf_write import write_gguf
from modeltrace.formats.onnx_write import QUANTIZE_MODES, write_onnx

ROWS, COLS = 4096, 512  # 8 MB as float32: a copy of the whole tensor is 1000 times the two rows read
LIMIT = 64 * 1024  # bytes a two-row read may allocate (two float32 rows are 4 KB)


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"model.embed_tokens.weight": rng.standard_normal((ROWS, COLS), dtype=np.float32),
            "model.layers.0.mlp.up_proj.weight": rng.standard_normal((ROWS, COLS), dtype=np.float32),
            "model.norm.weight": rng.standard_normal(ROWS * COLS, dtype=np.float32)}


def _allocated(read: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    tracemalloc.start()
    try:
        out = read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, peak


def _check(path: Path, names: list[str]) -> None:
    with open_file(path) as src:
        for name in names:
            full = src.read(name)
            src.read_rows(name, 0, 1)  # first touch: maps and caches are opened once per file
            rows, peak = _allocated(lambda: src.read_rows(name, 100, 102))  # noqa: B023
            np.testing.assert_array_equal(rows, full[100:102])
            assert peak < LIMIT, f"{name}: a two-row read allocated {peak} bytes"


def test_safetensors_rows(tmp_path: Path, rng: np.random.Generator) -> None:
    w = _weights(rng)
    _check(write_safetensors(tmp_path / "m.safetensors", w), list(w))


@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_gguf_rows_and_vector_elements(tmp_path: Path, rng: np.random.Generator, qtype: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", _weights(rng), qtype)
    with open_file(path) as src:
        _check(path, list(src.infos()))


@pytest.mark.parametrize("quantize", [None, *QUANTIZE_MODES])
@pytest.mark.parametrize("external", [False, True])
def test_onnx_rows_inline_external_quantized_and_transposed(tmp_path: Path, rng: np.random.Generator,
                                                            quantize: str | None, external: bool) -> None:
    w = _weights(rng)
    w["model.norm.weight"] = w["model.norm.weight"][:COLS]
    path = write_onnx(tmp_path / "m.onnx", w, quantize=quantize, external_data=external)
    with open_file(path) as src:
        names = list(src.infos())
        assert any(i.extra.get("transposed") for i in src.infos().values())  # MatMul weights stored in x out
    _check(path, [n for n in names if src.infos()[n].numel >= ROWS * COLS])


def test_torch_rows_of_stored_and_deflated_storages(tmp_path: Path, rng: np.random.Generator) -> None:
    w = rng.standard_normal((ROWS, COLS), dtype=np.float32)
    pkl = state_dict_pickle({"stored": tensor("0", ROWS * COLS, (ROWS, COLS)),
                             "deflated": tensor("1", ROWS * COLS, (ROWS, COLS))})
    path = torch_zip(tmp_path / "m.bin", pkl, {"0": w.tobytes(), "1": Member(w.tobytes(), deflate=True)})
    _check(path, ["stored", "deflated"])


def test_onnx_bf16_rows_convert_only_the_rows(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    bits = np.arange(ROWS * COLS, dtype=np.uint32).astype(np.uint16) & 0x3FFF
    init = helper.make_tensor("emb.weight", TensorProto.BFLOAT16, [ROWS, COLS], bits.tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("Identity", ["emb.weight"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [ROWS, COLS])], [init])
    path = tmp_path / "bf16.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    _check(path, ["emb.weight"])
