"""Configs across naming schemes, tensor-name rename patterns, chat-template normalization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeltrace.artifacts.chat_template import compare_templates, normalize, style
from modeltrace.artifacts.config import auto_map_modules, from_dict, from_gguf, is_peculiar, read_config
from modeltrace.artifacts.names import patterns_from_map, rename_patterns
from modeltrace.errors import FormatError
from modeltrace.model import Model


def test_naming_schemes_normalize_to_one_vocabulary() -> None:
    gpt2 = from_dict({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
                      "vocab_size": 50257, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}, "c")
    llama = from_dict({"model_type": "llama", "hidden_size": 768, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "max_position_embeddings": 1024, "vocab_size": 50257,
                       "rms_norm_eps": 1e-5, "hidden_act": "silu"}, "c")
    keys = ("hidden_size", "num_layers", "num_heads", "max_positions", "vocab_size", "norm_eps")
    assert {k: gpt2.normalized[k] for k in keys} == {k: llama.normalized[k] for k in keys}
    assert gpt2.normalized["activation"] == "gelu_new" and llama.normalized["activation"] == "silu"
    gguf = from_gguf({"general.architecture": "llama", "general.name": "SmolLM2", "llama.embedding_length": 576,
                      "llama.block_count": 30, "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3,
                      "llama.feed_forward_length": 1536, "llama.context_length": 8192,
                      "llama.rope.freq_base": 100000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5,
                      "tokenizer.ggml.tokens": {"array": "string", "length": 49152, "head": []}}, "m.gguf")
    assert gguf is not None
    assert gguf.family == "llama"
    assert gguf.normalized == {"hidden_size": 576, "num_layers": 30, "num_heads": 9, "num_kv_heads": 3,
                               "intermediate_size": 1536, "max_positions": 8192, "rope_theta": 100000.0,
                               "norm_eps": 1e-5, "vocab_size": 49152}


def test_multimodal_subconfigs_are_flattened_and_lifted() -> None:
    c = from_dict({"model_type": "llava", "text_config": {"hidden_size": 4096, "num_hidden_layers": 32},
                   "vision_config": {"hidden_size": 1024, "image_size": 336}}, "config.json")
    assert c.normalized["hidden_size"] == 4096  # the language model's, lifted
    assert c.normalized["vision_config.hidden_size"] == 1024
    assert c.raw["vision_config.image_size"] == 336


def test_peculiar_fields_come_from_the_transformers_count() -> None:
    assert is_peculiar("query_num") and is_peculiar("slice_mode")
    assert not is_peculiar("hidden_size") and not is_peculiar("image_size") and not is_peculiar("vocab_size")
    assert not is_peculiar("_name_or_path") and not is_peculiar("architectures")
    assert is_peculiar("vision_config.query_num")


def test_auto_map_repos() -> None:
    from modeltrace.artifacts.config import auto_map_repos

    assert auto_map_repos({"AutoModel": "openbmb/MiniCPM-Llama3-V-2_5--modeling_minicpmv.MiniCPMV",
                           "AutoTokenizer": ["openbmb/MiniCPM-Llama3-V-2_5--modeling_minicpmv.W", None],
                           "AutoConfig": "configuration_x.C"}) == ["openbmb/MiniCPM-Llama3-V-2_5"]


def test_auto_map_modules() -> None:
    got = auto_map_modules({"AutoTokenizer": ["modeling_minicpmv.PreTrainedTokenizerFastWrapper", None],
                            "AutoModel": "openbmb/MiniCPM-V--modeling_minicpmv.MiniCPMV",
                            "AutoConfig": "configuration_minicpm.MiniCPMVConfig"})
    assert sorted(got) == ["configuration_minicpm", "modeling_minicpmv"]
    assert len(got["modeling_minicpmv"]) == 2


def test_config_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(FormatError) as err:
        read_config(Model.open(str(tmp_path)))
    assert str(err.value) == f"{tmp_path / 'config.json'}: config.json is not a JSON object"


def test_hostile_config_values_are_capped(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x" * 10_000, "weird": {"a": [1] * 10_000}}))
    c = read_config(Model.open(str(tmp_path)))
    assert c is not None and c.family is not None and len(c.family) == 200
    assert len(c.raw["weird"]) == 200


# --- tensor names -----------------------------------------------------------------------------------

A_NAMES = [f"vpm.encoder.layers.{i}.{w}" for i in range(4) for w in ("mlp.fc1.weight", "self_attn.q_proj.weight")] + \
          ["resampler.query", "resampler.kv_proj.weight", "resampler.attn.in_proj_weight", "resampler.ln_q.weight"] + \
          [f"llm.model.layers.{i}.self_attn.q_proj.weight" for i in range(4)] + ["llm.lm_head.weight"]


def test_prefix_renames_with_every_sub_key_unchanged() -> None:
    b = [n.replace("vpm.", "vison.", 1).replace("resampler.", "projection.", 1) for n in A_NAMES]
    r = rename_patterns(A_NAMES, b)
    assert [(p.a_prefix, p.b_prefix, p.all_unchanged) for p in r.renamed] == [
        ("vpm.", "vison.", True), ("resampler.", "projection.", True)]
    assert [p.a_prefix for p in r.kept] == ["llm."]
    assert r.covered == len(A_NAMES)
    via_map = patterns_from_map({a: bb for a, bb in zip(A_NAMES, b)})
    assert [(p.a_prefix, p.b_prefix, p.n_shared) for p in via_map.renamed] == [
        ("vpm.", "vison.", 8), ("resampler.", "projection.", 4)]


def test_renamed_prefix_with_changed_sub_keys_is_reported_as_such() -> None:
    b = [n.replace("vpm.", "vision.", 1).replace("fc1", "up_proj") for n in A_NAMES]
    r = rename_patterns(A_NAMES, b)
    vpm = next(p for p in r.renamed if p.a_prefix == "vpm.")
    assert vpm.b_prefix == "vision." and not vpm.all_unchanged and vpm.n_shared == 4


def test_unrelated_names_give_no_rename() -> None:
    b = [f"blocks.{i}.weight" for i in range(10)]
    r = rename_patterns(A_NAMES, b)
    assert r.renamed == () and r.kept == () and r.n_identical_names == 0


# --- chat templates ---------------------------------------------------------------------------------

def test_template_normalization_ignores_layout_and_comments() -> None:
    a = "{%- for m in messages -%}\n  {{- m['content'] }}{# note #}\n{%- endfor %}"
    b = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert normalize(a) == normalize(b)
    c = compare_templates(a, b)
    assert c.identical_normalized and not c.identical_raw and c.similarity == 1.0
    d = compare_templates(b, "{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}")
    assert not d.identical_normalized and 0.5 < d.similarity < 1.0
    assert style("<|im_start|>user") == "chatml" and style("plain") is None
