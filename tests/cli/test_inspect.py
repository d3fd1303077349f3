"""`modeltrace inspect`: JSON and table output on tiny checkpoints of every format and on the real models."""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from st_builders import LLAMA_CONFIG, llama_folder, llama_params, tokenizer_json, write_safetensors

from modeltrace.cli import cli
from modeltrace.inspect import inspect_model
from modeltrace.model import Model

REQUIRED_KEYS = {"format", "parameters", "tensors", "components", "tokenizer", "files"}


def inspect_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["inspect", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def need_reader(module: str) -> None:
    """modeltrace's own readers are always there: a failing import is a failure, never a skip."""
    importlib.import_module(module)


def test_json_of_a_tiny_llama_folder(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(0))
    (root / "modeling_custom.py").write_text("raise SystemExit('never imported')\n")
    data = inspect_json(str(root))
    assert REQUIRED_KEYS <= set(data)
    assert data["schema"] == "modeltrace.inspect/1"
    assert data["format"] == "safetensors"
    assert data["parameters"] == llama_params() == 2 * 32 * 8 + 2 * (4 * 64 + 3 * 128 + 16) + 8
    assert data["tensors"] == 21
    assert data["components"] == {"language_model": llama_params()}
    assert data["counted"] == "safetensors: elements of every stored tensor"
    assert (data["architecture"], data["family"], data["family_source"]) == ("LlamaForCausalLM", "llama",
                                                                             "config.json")
    assert data["scheme"] == "hf-decoder"
    assert data["layers"] == 2
    assert data["dtypes"] == {"F32": 21} and data["quantization"] == {}
    assert data["unassigned_tensors"] == 0
    assert data["config"] == {"hidden_size": 8, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "vocab_size": 32,
                              "intermediate_size": 16, "max_positions": 64, "torch_dtype": "float32",
                              "source": "config.json"}
    tok = data["tokenizer"]
    assert tok["kind"] == "wordlevel" and tok["vocab_size"] == 32
    assert tok["added_tokens"] == [{"id": 0, "content": "[UNK]", "special": True},
                                   {"id": 1, "content": "<s>", "special": True},
                                   {"id": 2, "content": "</s>", "special": True}]
    assert tok["special_tokens"]["bos_token"] == {"content": "<s>", "id": 1}
    assert data["code_files"] == ["modeling_custom.py"]
    assert [(f["path"], f["kind"]) for f in data["files"]] == [
        ("config.json", "config"), ("model.safetensors", "weights"), ("modeling_custom.py", "code"),
        ("tokenizer.json", "tokenizer"), ("tokenizer_config.json", "tokenizer")]
    assert all(f["sha256"] is None for f in data["files"])


def test_hash_gives_sha256_of_every_file(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(0), shards=2)
    data = inspect_json("--hash", str(root))
    assert len(data["files"]) == 6
    for f in data["files"]:
        assert f["sha256"] == hashlib.sha256((root / f["path"]).read_bytes()).hexdigest()
        assert f["size"] == (root / f["path"]).stat().st_size


def test_sharded_bf16_counts(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    root = tmp_path / "m"
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(10, 4, generator=g).to(torch.bfloat16)},
              str(root / "a.safetensors"))
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
               "lm_head.weight": torch.randn(10, 4, generator=g).to(torch.float16)}, str(root / "b.safetensors"))
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "a.safetensors", "model.layers.0.self_attn.q_proj.weight": "b.safetensors",
        "lm_head.weight": "b.safetensors"}}))
    data = inspect_json(str(root))
    assert (data["parameters"], data["tensors"]) == (96, 3)
    assert data["dtypes"] == {"BF16": 1, "F8_E4M3": 1, "F16": 1}
    assert data["dtype_parameters"] == {"BF16": 40, "F8_E4M3": 16, "F16": 40}
    assert data["family"] == "hf-decoder" and data["family_source"] == "tensor naming scheme"
    assert data["tokenizer"] is None and data["config"] == {}


def test_components_of_a_multimodal_model(tmp_path: Path) -> None:
    f32 = np.float32
    p = write_safetensors(tmp_path / "vlm.safetensors", {
        "model.language_model.embed_tokens.weight": np.zeros((10, 4), f32),
        "model.language_model.layers.0.self_attn.q_proj.weight": np.zeros((4, 4), f32),
        "model.language_model.layers.1.self_attn.q_proj.weight": np.zeros((4, 4), f32),
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": np.zeros((3, 3), f32),
        "model.multi_modal_projector.linear_1.weight": np.zeros((4, 3), f32),
        "model.language_model.rotary_emb.inv_freq": np.zeros(2, f32),
        "logit_scale": np.zeros(1, f32),
    })
    data = inspect_json(str(p))
    assert data["components"] == {"language_model": 74, "vision_tower": 9, "projector": 12, "other": 1}
    assert data["fixed_buffer_elements"] == 2
    assert data["unassigned_tensors"] == 1
    assert data["layers"] == 2
    assert data["parameters"] == 96


def test_hostile_names_are_escaped_in_tables_and_json(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write_safetensors(root / "model.safetensors", {"model.norm.weight": np.ones(4, np.float32)})
    cfg = dict(LLAMA_CONFIG, architectures=["Evil\x1b[31mRed\x07"], model_type="llama\u202egpj")
    (root / "config.json").write_text(json.dumps(cfg))
    tok = tokenizer_json(["[UNK]", "a"], [(2, "\x1b]0;pwned\x07", True), (3, "[bold]markup[/bold]", False)])
    (root / "tokenizer.json").write_text(json.dumps(tok))
    (root / "notes\x1b[2J.txt").write_text("x")
    result = CliRunner().invoke(cli, ["inspect", str(root)], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0
    out = result.stdout
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in out
    assert "Evil\\x1b[31mRed\\x07" in out
    assert "llama\\u202egpj" in out
    assert "\\x1b]0;pwned\\x07" in out
    assert "[bold]markup[/bold]" in out  # shown as text, never read as rich markup
    assert "notes\\x1b[2J.txt" in out
    js = CliRunner().invoke(cli, ["inspect", "--json", str(root)], catch_exceptions=False).stdout
    assert "\x1b" not in js and "\u202e" not in js
    assert json.loads(js)["architecture"] == "Evil\x1b[31mRed\x07"  # the data itself is kept exactly


def test_table_output(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(0))
    result = CliRunner().invoke(cli, ["inspect", "--hash", str(root)], catch_exceptions=False, terminal_width=200)
    assert result.exit_code == 0
    out = result.stdout
    assert f"{llama_params():,}" in out
    for title in ("Model", "Parameters by component", "Storage dtypes", "Config", "Tokenizer", "Added tokens", "Files"):
        assert title in out
    assert "<s> (id 1)" in out
    digest = hashlib.sha256((root / "model.safetensors").read_bytes()).hexdigest()
    assert digest in out.replace("\n", "").replace("│", "").replace(" ", "")


def test_python_dash_m_runs_inspect(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(0))
    proc = subprocess.run([sys.executable, "-m", "modeltrace", "inspect", "--json", str(root)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["parameters"] == llama_params()


# --- other formats (their readers are separate modules) ----------------------------------------------------


def test_gguf_file(tmp_path: Path) -> None:
    need_reader("modeltrace.formats.gguf")
    import gguf

    p = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_head_count(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "<|end|>"])
    w.add_token_types([1, 1, 3])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 32)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((32, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(32, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = inspect_json(str(p))
    assert data["format"] == "gguf"
    assert (data["parameters"], data["tensors"]) == (3 * 32 + 32 * 32 + 32, 3)
    assert (data["family"], data["family_source"]) == ("llama", "GGUF general.architecture")
    assert data["quantization"] == {"Q8_0": 1}
    assert data["components"] == {"language_model": 3 * 32 + 32 * 32 + 32}
    assert data["config"]["hidden_size"] == 32 and data["config"]["num_layers"] == 1
    assert data["tokenizer"]["vocab_size"] == 3


def test_torch_state_dict(tmp_path: Path) -> None:
    need_reader("modeltrace.formats.torch_pickle")
    import torch

    p = tmp_path / "w.pth"
    torch.save({"features.0.weight": torch.zeros(4, 3), "features.1.running_mean": torch.zeros(4),
                "features.1.num_batches_tracked": torch.tensor(7)}, str(p))
    data = inspect_json(str(p))
    assert data["format"] == "torch"
    assert (data["parameters"], data["tensors"]) == (17, 3)
    assert data["components"] == {"other": 17}
    assert data["fixed_buffer_elements"] == 1


def test_onnx_file(tmp_path: Path) -> None:
    need_reader("modeltrace.formats.onnx")
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "encoder.layer.0.attention.self.query.weight")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", w.name], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(p))
    data = inspect_json(str(p))
    assert data["format"] == "onnx"
    assert (data["parameters"], data["tensors"]) == (12, 1)


# --- real models --------------------------------------------------------------------------------------------

# /work/shared/realmodels/README.md: element counts measured on these files
REAL = {
    "all-minilm-l6-v2": ("safetensors", 22_713_728, 104, None),
    "all-minilm-l6-v2-rebrand-internal": ("safetensors", 22_713_728, 104, None),
    "efficientnet-lite0": ("torch", 4_694_073, 296, "modeltrace.formats.torch_pickle"),
    "efficientnet-lite1": ("torch", 5_470_408, 386, "modeltrace.formats.torch_pickle"),
    "smollm2-135m-instruct-q4_1": ("gguf", 134_515_008, 272, "modeltrace.formats.gguf"),
    "gemma-3-270m-q4_k_m": ("gguf", 268_098_176, 236, "modeltrace.formats.gguf"),
    "qwen2.5-coder-0.5b-instruct-awq-q4_k_m": ("gguf", 630_167_424, 291, "modeltrace.formats.gguf"),
    "all-minilm-l6-v2-int8-onnx": ("onnx", None, None, "modeltrace.formats.onnx"),
}


@pytest.mark.realmodels
@pytest.mark.parametrize("model_id", sorted(REAL))
def test_real_model_counts(realmodels: Path, model_id: str) -> None:
    fmt, params, tensors, module = REAL[model_id]
    if module:
        need_reader(module)
    folder = realmodels / model_id
    if not folder.is_dir():
        pytest.skip(f"{model_id} is not in {realmodels}")
    with Model.open(str(folder)) as model:
        report = inspect_model(model)
    assert report.format == fmt
    if params is not None:
        assert (report.parameters, report.tensors) == (params, tensors)
    if fmt == "onnx":
        # README: 22,617,680 elements over 160 initializers (int8 weights plus their float scales);
        # we count each int8 weight once at its float shape and do not count scales and zero points
        assert report.format_metadata["initializers"] == 160
        assert report.format_metadata["initializer_elements"] == 22_617_680
        assert report.quantization == {"onnx-int8": 38}
        assert report.scheme == "bert"
    if fmt == "safetensors":
        assert report.components == {"language_model": 22_713_728}
        assert report.layers == 6 and report.family == "bert"
        assert report.tokenizer is not None and report.tokenizer["vocab_size"] == 30522
        assert report.tokenizer["special_tokens"]["cls_token"] == {"content": "[CLS]", "id": 101}
    if fmt == "gguf":
        assert report.components == {"language_model": params}
        assert report.family == {"smollm2-135m-instruct-q4_1": "llama", "gemma-3-270m-q4_k_m": "gemma3",
                                 "qwen2.5-coder-0.5b-instruct-awq-q4_k_m": "qwen2"}[model_id]
        assert report.layers == report.config["num_layers"]
        assert report.tokenizer is not None and report.tokenizer["vocab_size"] == report.config["vocab_size"]
