"""Canonical roles: real tensor names from each naming scheme map to the same roles."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from modeltrace.roles import KINDS, Role, assign_roles, canonical, fixed_buffer, scheme, scheme_of, schemes

LM = "language_model"


def R(kind: str, layer: int | None = None, param: str = "weight", component: str = LM, **kw: object) -> Role:
    return Role(component, layer, kind, param, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name, role", [
    # Hugging Face Llama / Mistral / Qwen2 / Gemma
    ("model.embed_tokens.weight", R("token_embed")),
    ("model.layers.0.self_attn.q_proj.weight", R("attn_q", 0)),
    ("model.layers.0.self_attn.q_proj.bias", R("attn_q", 0, "bias")),  # Qwen2 has q/k/v biases
    ("model.layers.31.self_attn.k_proj.weight", R("attn_k", 31)),
    ("model.layers.2.self_attn.v_proj.weight", R("attn_v", 2)),
    ("model.layers.2.self_attn.o_proj.weight", R("attn_o", 2)),
    ("model.layers.2.mlp.gate_proj.weight", R("mlp_gate", 2)),
    ("model.layers.2.mlp.up_proj.weight", R("mlp_up", 2)),
    ("model.layers.2.mlp.down_proj.weight", R("mlp_down", 2)),
    ("model.layers.2.input_layernorm.weight", R("attn_norm", 2)),
    ("model.layers.2.post_attention_layernorm.weight", R("mlp_norm", 2)),
    ("model.layers.5.self_attn.q_norm.weight", R("other", 5, sub="q_norm")),
    ("model.norm.weight", R("final_norm")),
    ("lm_head.weight", R("lm_head")),
    # Phi-3 fused projections, Phi-2 dense/fc names
    ("model.layers.1.self_attn.qkv_proj.weight", R("attn_qkv", 1)),
    ("model.layers.1.mlp.gate_up_proj.weight", R("mlp_gate_up", 1)),
    ("model.layers.1.self_attn.dense.bias", R("attn_o", 1, "bias")),
    ("model.layers.1.mlp.fc1.weight", R("mlp_up", 1)),
    ("model.layers.1.mlp.fc2.weight", R("mlp_down", 1)),
    ("model.final_layernorm.weight", R("final_norm")),
    # mixture of experts: Mixtral and Qwen2-MoE / OLMoE
    ("model.layers.3.block_sparse_moe.gate.weight", R("other", 3, sub="router")),
    ("model.layers.3.block_sparse_moe.experts.7.w1.weight", R("mlp_gate", 3, expert=7)),
    ("model.layers.3.block_sparse_moe.experts.7.w3.weight", R("mlp_up", 3, expert=7)),
    ("model.layers.3.block_sparse_moe.experts.7.w2.weight", R("mlp_down", 3, expert=7)),
    ("model.layers.3.mlp.experts.12.gate_proj.weight", R("mlp_gate", 3, expert=12)),
    ("model.layers.3.mlp.shared_expert.down_proj.weight", R("mlp_down", 3, sub="shared_expert")),
    # GPT-2, with and without the transformer. prefix
    ("transformer.wte.weight", R("token_embed")),
    ("wpe.weight", R("pos_embed")),
    ("transformer.h.4.ln_1.weight", R("attn_norm", 4)),
    ("h.4.attn.c_attn.weight", R("attn_qkv", 4)),
    ("transformer.h.4.attn.c_proj.bias", R("attn_o", 4, "bias")),
    ("transformer.h.4.ln_2.bias", R("mlp_norm", 4, "bias")),
    ("transformer.h.4.mlp.c_fc.weight", R("mlp_up", 4)),
    ("transformer.h.4.mlp.c_proj.weight", R("mlp_down", 4)),
    ("transformer.ln_f.weight", R("final_norm")),
    # GPT-NeoX / Pythia
    ("gpt_neox.embed_in.weight", R("token_embed")),
    ("gpt_neox.layers.0.attention.query_key_value.weight", R("attn_qkv", 0)),
    ("gpt_neox.layers.0.attention.dense.weight", R("attn_o", 0)),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", R("mlp_up", 0)),
    ("gpt_neox.layers.0.mlp.dense_4h_to_h.bias", R("mlp_down", 0, "bias")),
    ("gpt_neox.final_layer_norm.weight", R("final_norm")),
    ("embed_out.weight", R("lm_head")),
    # BERT / MiniLM, plain, with bert. prefix, in a sentence-transformers folder, in an ONNX export
    ("embeddings.word_embeddings.weight", R("token_embed")),
    ("bert.embeddings.position_embeddings.weight", R("pos_embed")),
    ("embeddings.token_type_embeddings.weight", R("type_embed")),
    ("embeddings.LayerNorm.bias", R("embed_norm", param="bias")),
    ("encoder.layer.5.attention.self.query.weight", R("attn_q", 5)),
    ("encoder.layer.5.attention.self.key.bias", R("attn_k", 5, "bias")),
    ("encoder.layer.5.attention.self.value.weight", R("attn_v", 5)),
    ("encoder.layer.5.attention.output.dense.weight", R("attn_o", 5)),
    ("encoder.layer.5.attention.output.LayerNorm.weight", R("attn_norm", 5)),
    ("encoder.layer.5.intermediate.dense.weight", R("mlp_up", 5)),
    ("encoder.layer.5.output.dense.weight", R("mlp_down", 5)),
    ("encoder.layer.5.output.LayerNorm.weight", R("mlp_norm", 5)),
    ("pooler.dense.weight", R("other", sub="pooler")),
    ("0_Transformer/encoder.layer.1.attention.self.query.weight", R("attn_q", 1)),
    ("0_Transformer/auto_model.encoder.layer.1.attention.self.query.weight", R("attn_q", 1)),
    ("inner.encoder.layer.0.attention.self.query.bias", R("attn_q", 0, "bias")),
    # llama.cpp GGUF
    ("token_embd.weight", R("token_embed")),
    ("blk.0.attn_q.weight", R("attn_q", 0)),
    ("blk.0.attn_k.weight", R("attn_k", 0)),
    ("blk.0.attn_v.weight", R("attn_v", 0)),
    ("blk.0.attn_output.weight", R("attn_o", 0)),
    ("blk.0.attn_qkv.weight", R("attn_qkv", 0)),
    ("blk.0.ffn_gate.weight", R("mlp_gate", 0)),
    ("blk.0.ffn_up.weight", R("mlp_up", 0)),
    ("blk.0.ffn_down.weight", R("mlp_down", 0)),
    ("blk.0.attn_norm.weight", R("attn_norm", 0)),
    ("blk.0.ffn_norm.weight", R("mlp_norm", 0)),
    ("blk.0.attn_q_norm.weight", R("other", 0, sub="q_norm")),
    ("blk.0.post_attention_norm.weight", R("other", 0, sub="post_attn_norm")),
    ("blk.2.ffn_gate_exps.weight", R("mlp_gate", 2, sub="experts")),
    ("output_norm.weight", R("final_norm")),
    ("output.weight", R("lm_head")),
    # vision towers: CLIP / SigLIP / MiniCPM-V vpm / ViT / GGUF mmproj
    ("vision_model.embeddings.patch_embedding.weight", R("other", sub="patch_embed", component="vision_tower")),
    ("vision_model.embeddings.position_embedding.weight", R("pos_embed", component="vision_tower")),
    ("vision_model.embeddings.class_embedding", R("other", sub="cls_token", component="vision_tower")),
    ("vision_model.pre_layrnorm.weight", R("embed_norm", component="vision_tower")),
    ("vision_model.encoder.layers.11.self_attn.q_proj.weight", R("attn_q", 11, component="vision_tower")),
    ("vision_model.encoder.layers.11.self_attn.out_proj.weight", R("attn_o", 11, component="vision_tower")),
    ("vision_model.encoder.layers.11.layer_norm1.weight", R("attn_norm", 11, component="vision_tower")),
    ("vision_model.encoder.layers.11.mlp.fc2.bias", R("mlp_down", 11, "bias", component="vision_tower")),
    ("vision_model.post_layernorm.weight", R("final_norm", component="vision_tower")),
    ("vpm.encoder.layers.0.self_attn.k_proj.weight", R("attn_k", 0, component="vision_tower")),
    ("text_model.encoder.layers.0.self_attn.k_proj.weight", R("attn_k", 0, component=LM)),
    ("vit.embeddings.cls_token", R("other", sub="cls_token", component="vision_tower")),
    ("vit.encoder.layer.3.attention.attention.query.weight", R("attn_q", 3, component="vision_tower")),
    ("vit.encoder.layer.3.layernorm_before.weight", R("attn_norm", 3, component="vision_tower")),
    ("visual.blocks.7.attn.qkv.weight", R("attn_qkv", 7, component="vision_tower")),
    ("v.blk.3.attn_q.weight", R("attn_q", 3, component="vision_tower")),
    # multimodal prefixes
    ("model.language_model.layers.0.self_attn.q_proj.weight", R("attn_q", 0)),
    ("language_model.model.layers.0.self_attn.q_proj.weight", R("attn_q", 0)),
    ("language_model.lm_head.weight", R("lm_head")),
    ("llm.model.layers.4.mlp.down_proj.weight", R("mlp_down", 4)),
    ("model.vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight", R("mlp_up", 2, component="vision_tower")),
    ("multi_modal_projector.linear_1.weight",
     R("other", sub="multi_modal_projector.linear_1", component="projector")),
    ("model.mm_projector.0.bias", R("other", param="bias", sub="mm_projector.0", component="projector")),
    ("resampler.attn.in_proj_weight", R("other", param="in_proj_weight", sub="resampler.attn",
                                         component="projector")),
    ("mm.2.weight", R("other", sub="mm.2", component="projector")),
    ("2_Dense/linear.weight", R("other", sub="2_Dense/linear", component="other")),
])
def test_canonical_names_of_each_scheme(name: str, role: Role) -> None:
    assert canonical(name) == role


@pytest.mark.parametrize("name", [
    "onnx::MatMul_123", "classifier.weight", "features.0.0.weight", "model.layers.x.self_attn.q_proj.weight",
    "embeddings.position_ids", "model.layers.0.self_attn.rotary_emb.inv_freq", "h.0.attn.bias",
    "model.layers.0.self_attn.q_proj.weight.extra", "", "layers.0.self_attn.q_proj",
])
def test_unknown_names_and_buffers_have_no_role(name: str) -> None:
    assert canonical(name) is None


def test_gpt2_conv1d_weights_are_marked_transposed_and_equal_to_linear_roles() -> None:
    conv = canonical("transformer.h.0.mlp.c_fc.weight")
    gguf = canonical("blk.0.ffn_up.weight")
    assert conv is not None and gguf is not None
    assert conv.transposed and not gguf.transposed
    assert conv == gguf  # layout is not part of identity
    bias = canonical("transformer.h.0.mlp.c_fc.bias")
    assert bias is not None and not bias.transposed
    assert "transpose" in scheme("gpt2").notes["transposed"]


def test_hf_llama_and_gguf_names_get_the_same_roles() -> None:
    hf = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
    gg = ["token_embd.weight", "output_norm.weight", "output.weight"] + [
        f"blk.{i}.{m}.weight" for i in range(2) for m in (
            "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")]
    a, b = assign_roles(hf), assign_roles(gg)
    assert len(a) == len(hf) and len(b) == len(gg)
    assert sorted(r.key for r in a.values()) == sorted(r.key for r in b.values())
    assert scheme_of(hf) == "hf-decoder" and scheme_of(gg) == "gguf"


def test_gemma2_sandwich_norms_follow_context() -> None:
    names = [f"model.layers.0.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm",
                                                  "pre_feedforward_layernorm", "post_feedforward_layernorm")]
    roles = assign_roles(names)
    assert scheme_of(names) == "hf-gemma2"
    assert roles["model.layers.0.post_attention_layernorm.weight"] == R("other", 0, sub="post_attn_norm")
    assert roles["model.layers.0.pre_feedforward_layernorm.weight"] == R("mlp_norm", 0)
    # the same roles as llama.cpp gives Gemma 3's norms
    assert roles["model.layers.0.post_attention_layernorm.weight"] == canonical("blk.0.post_attention_norm.weight")
    assert roles["model.layers.0.post_feedforward_layernorm.weight"] == canonical("blk.0.post_ffw_norm.weight")
    # without context the Llama meaning is taken
    assert canonical("model.layers.0.post_attention_layernorm.weight") == R("mlp_norm", 0)


def test_vit_context_beats_bert_for_shared_names() -> None:
    names = ["vit.encoder.layer.0.attention.attention.query.weight", "vit.encoder.layer.0.layernorm_before.weight",
             "vit.encoder.layer.0.intermediate.dense.weight", "vit.encoder.layer.0.output.dense.weight"]
    roles = assign_roles(names)
    assert scheme_of(names) == "vit"
    assert {r.component for r in roles.values()} == {"vision_tower"}
    assert roles["vit.encoder.layer.0.output.dense.weight"] == R("mlp_down", 0, component="vision_tower")


def test_duplicate_roles_are_dropped() -> None:
    roles = assign_roles(["model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight",
                          "model.layers.0.self_attn.k_proj.weight"])
    assert list(roles) == ["model.layers.0.self_attn.k_proj.weight"]


def test_multimodal_components() -> None:
    names = ["model.language_model.layers.0.self_attn.q_proj.weight",
             "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
             "model.multi_modal_projector.linear_1.weight", "lm_head.weight"]
    roles = assign_roles(names)
    assert [roles[n].component for n in names] == ["language_model", "vision_tower", "projector",
                                                   "language_model"]
    assert roles[names[0]].key == "language_model.0.attn_q.weight"
    assert roles[names[1]].key == "vision_tower.0.attn_q.weight"


def test_scheme_of_unknown_names_is_none() -> None:
    assert scheme_of(["features.0.0.weight", "classifier.1.bias"]) is None
    assert scheme_of([]) is None
    assert assign_roles(["features.0.0.weight"]) == {}


def test_real_minilm_names(realmodels: object) -> None:
    from pathlib import Path

    from safetensors import safe_open

    path = Path(str(realmodels)) / "all-minilm-l6-v2" / "model.safetensors"
    with safe_open(str(path), "np") as f:
        names = list(f.keys())
    roles = assign_roles(names)
    assert scheme_of(names) == "bert"
    assert set(names) - set(roles) == {"embeddings.position_ids"}
    assert sum(r.kind == "attn_q" for r in roles.values()) == 12  # 6 layers x weight, bias
    assert {r.layer for r in roles.values() if r.layer is not None} == set(range(6))


@pytest.mark.parametrize("name, fixed", [
    ("embeddings.position_ids", True),
    ("model.layers.0.self_attn.rotary_emb.inv_freq", True),
    ("transformer.h.0.attn.bias", True),
    ("transformer.h.0.attn.masked_bias", True),
    ("gpt_neox.layers.0.attention.bias", True),
    ("features.1.bn.num_batches_tracked", True),
    ("rope_freqs.weight", True),
    ("features.1.bn.running_mean", False),  # statistics of the training data, not fixed
    ("features.1.bn.running_var", False),
    ("transformer.h.0.attn.c_attn.bias", False),
    ("encoder.layer.0.attention.output.dense.bias", False),
    ("model.layers.0.self_attn.q_proj.weight", False),
])
def test_fixed_buffers(name: str, fixed: bool) -> None:
    assert fixed_buffer(name) is fixed


def test_data_files_are_well_formed() -> None:
    folder = resources.files("modeltrace.formats").joinpath("data")
    names = {s.name for s in schemes()}
    assert {"hf-decoder", "hf-gemma2", "gpt2", "gpt-neox", "bert", "vit", "clip-encoder", "gguf"} <= names
    for entry in folder.iterdir():
        if entry.name.startswith("scheme-"):
            data = json.loads(entry.read_text(encoding="utf-8"))
            for target in data["rules"].values():
                assert target.partition("/")[0] in KINDS, (entry.name, target)


def test_wrapper_prefixes_are_stripped_in_linear_time_and_long_names_get_no_role() -> None:
    import time

    from modeltrace.roles import MAX_NAME_CHARS, component_of

    inner = "model.layers.0.mlp.up_proj.weight"
    deep = "module." * 140 + inner  # just under the cap: every wrapper is stripped
    assert len(deep) <= MAX_NAME_CHARS and canonical(deep) == canonical(inner)
    hostile = "module." * 400_000 + inner
    start = time.perf_counter()
    for _ in range(20):
        assert canonical(hostile) is None
        assert assign_roles([hostile, inner]) == {inner: canonical(inner)}
        assert component_of(hostile, None) == "other" and not fixed_buffer(hostile)
    assert time.perf_counter() - start < 1.0
