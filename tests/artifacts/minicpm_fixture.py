"""A miniature of the Llama3-V artifact evidence, built in the test.

`build_original` writes a MiniCPM-Llama3-V-2.5-like folder (config with query_num / slice_mode,
a Llama-3-like tokenizer with MiniCPM's added tokens, modeling_minicpmv.py and resampler.py, tiny
safetensors weights under vpm. / resampler. / llm.). `build_copy` writes what the Llama3-V
authors shipped: names changed, the resampler reformatted with renamed helpers as projection.py,
the same added tokens, a tokenizer config still pointing at modeling_minicpmv, and weights under
vison. / projection. / llm. `build_unrelated` writes an independent model for the null side.
"""

from __future__ import annotations

import ast
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

DATA = Path(__file__).parent / "data"
N_CORE = 128000

# The 12 MiniCPM-V tokens at 128010-128021, <unk> at 128002 (Llama-3 keeps a reserved token there).
MINICPM_TOKENS = ["<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>",
                  "</point>", "<slice>", "</slice>"]
LLAMA3_SPECIAL = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
                  128007: "<|end_header_id|>", 128009: "<|eot_id|>"}

RESAMPLER_RENAMES = {
    "get_2d_sincos_pos_embed": "pos_embed_val",
    "get_2d_sincos_pos_embed_from_grid": "pos_embed_from_grid_val",
    "get_1d_sincos_pos_embed_from_grid_new": "pos_embed_1d_val",
    "Resampler": "Projection",
    "_set_2d_pos_cache": "_cache_pos",
    "_adjust_pos_cache": "_resize_pos_cache",
    "grid_h_size": "height",
    "grid_w_size": "width",
    "tgt_sizes": "target_sizes",
}
MODELING_RENAMES = {
    "MiniCPMV": "Llama3V", "MiniCPMVPreTrainedModel": "Llama3VPreTrainedModel", "MiniCPMVConfig": "Llama3VConfig",
    "Resampler": "Projection", "init_resampler": "init_projection", "get_vllm_embedding": "get_embedding",
    "vision_hidden_states": "image_states", "slice_image": "split_image", "find_best_resize": "best_resize",
    "ensure_divide": "round_to_patch",
}


def _llama3_like_vocab() -> dict[str, int]:
    """128,000 distinct byte-level-looking tokens (deterministic), standing in for Llama-3's base."""
    alphabet = "abcdefghijklmnopqrstuvwxyzĠ"
    vocab: dict[str, int] = {}
    for a in alphabet:
        vocab[a] = len(vocab)
    i = 0
    while len(vocab) < N_CORE:
        n = i
        tok = ""
        while True:
            tok += alphabet[n % 27]
            n //= 27
            if n == 0:
                break
        tok = "Ġ" + tok if i % 3 == 0 else tok
        if tok not in vocab:
            vocab[tok] = len(vocab)
        i += 1
    return vocab


def _added_minicpm() -> dict[int, tuple[str, bool]]:
    out: dict[int, tuple[str, bool]] = {}
    reserved = 0
    for tid in range(N_CORE, N_CORE + 256):
        if tid in LLAMA3_SPECIAL:
            out[tid] = (LLAMA3_SPECIAL[tid], True)
        elif tid == 128002:
            out[tid] = ("<unk>", True)
            reserved += 1
        elif 128010 <= tid <= 128021:
            out[tid] = (MINICPM_TOKENS[tid - 128010], True)
            reserved += 1
        else:
            out[tid] = (f"<|reserved_special_token_{reserved}|>", True)
            reserved += 1
    return out


def _added_llama3() -> dict[int, tuple[str, bool]]:
    out: dict[int, tuple[str, bool]] = {}
    reserved = 0
    for tid in range(N_CORE, N_CORE + 256):
        if tid in LLAMA3_SPECIAL:
            out[tid] = (LLAMA3_SPECIAL[tid], True)
        else:
            out[tid] = (f"<|reserved_special_token_{reserved}|>", True)
            reserved += 1
    return out


def _write_tokenizer(folder: Path, vocab: dict[str, int], added: dict[int, tuple[str, bool]],
                     auto_map_module: str | None) -> None:
    tj = {"version": "1.0", "added_tokens": [
        {"id": i, "content": c, "special": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False} for i, (c, s) in sorted(added.items())],
        "normalizer": None, "pre_tokenizer": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    (folder / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    cfg: dict[str, Any] = {
        "added_tokens_decoder": {str(i): {"content": c, "special": s} for i, (c, s) in sorted(added.items())},
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": "{% set loop_messages = messages %}{% for message in loop_messages %}"
                         "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                         "+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}",
        "model_max_length": 1000000000000000019884624838656,
    }
    if auto_map_module:
        cfg["auto_map"] = {"AutoTokenizer": [f"{auto_map_module}.PreTrainedTokenizerFastWrapper", None]}
        cfg["tokenizer_class"] = "PreTrainedTokenizerFastWrapper"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")


def _config(name: str, arch: str, model_type: str, modules: tuple[str, str]) -> dict[str, Any]:
    return {
        "_name_or_path": name, "architectures": [arch],
        "auto_map": {"AutoConfig": f"{modules[0]}.{arch}Config", "AutoModel": f"{modules[1]}.{arch}",
                     "AutoModelForCausalLM": f"{modules[1]}.{arch}"},
        "batch_vision_input": True, "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
        "hidden_size": 4096, "image_size": 448, "intermediate_size": 14336, "max_position_embeddings": 8192,
        "max_slice_nums": 9, "model_type": model_type, "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "patch_size": 14, "query_num": 96, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "scale_resolution": 448, "slice_mode": True, "torch_dtype": "float16", "use_cache": True,
        "vocab_size": 128256,
        "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "idefics2",
                          "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14},
    }


class _Renamer(ast.NodeTransformer):
    def __init__(self, renames: dict[str, str]) -> None:
        self.renames = renames

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self.renames.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.renames.get(node.arg, node.arg)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        node.attr = self.renames.get(node.attr, node.attr)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.name = self.renames.get(node.name, node.name)
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        node.name = self.renames.get(node.name, node.name)
        return node


def disguise(source: str, renames: dict[str, str], seed: int = 0, header: str = "") -> str:
    """Rename identifiers, drop comments and docstrings, reorder top-level defs and methods, reformat."""
    tree = ast.parse(source)
    tree = _Renamer(renames).visit(tree)
    rnd = random.Random(seed)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and \
                    isinstance(body[0].value.value, str) and len(body) > 1:
                body.pop(0)
            defs = [i for i, n in enumerate(body) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            moved = [body[i] for i in defs]
            rnd.shuffle(moved)
            for i, n in zip(defs, moved):
                body[i] = n
    return header + ast.unparse(tree) + "\n"


def _weights(prefixes: dict[str, str], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ["embeddings.patch_embedding.weight"] + [
        f"encoder.layers.{i}.{p}" for i in range(2) for p in (
            "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "self_attn.out_proj.weight", "mlp.fc1.weight", "mlp.fc2.weight", "layer_norm1.weight")]
    res = ["query", "kv_proj.weight", "attn.in_proj_weight", "attn.out_proj.weight", "ln_q.weight", "ln_kv.weight",
           "ln_post.weight", "proj"]
    llm = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{p}" for i in range(2) for p in (
            "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight")]
    out: dict[str, np.ndarray] = {}
    for group, subs in (("vpm", names), ("resampler", res), ("llm", llm)):
        for s in subs:
            out[prefixes[group] + s] = rng.standard_normal((8, 8)).astype(np.float32)
    return out


def build_original(root: Path) -> Path:
    folder = root / "MiniCPM-Llama3-V-2_5"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_config("openbmb/MiniCPM-Llama3-V-2_5", "MiniCPMV", "minicpmv",
                                                           ("configuration_minicpm", "modeling_minicpmv"))))
    _write_tokenizer(folder, _llama3_like_vocab(), _added_minicpm(), "modeling_minicpmv")
    (folder / "resampler.py").write_text((DATA / "minicpm_resampler.py").read_text())
    (folder / "modeling_minicpmv.py").write_text((DATA / "minicpm_modeling.py").read_text())
    (folder / "configuration_minicpm.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass MiniCPMVConfig(LlamaConfig):\n"
        "    model_type = 'minicpmv'\n\n    def __init__(self, query_num=96, slice_mode=True, **kwargs):\n"
        "        self.query_num = query_num\n        self.slice_mode = slice_mode\n        super().__init__(**kwargs)\n")
    save_file(_weights({"vpm": "vpm.", "resampler": "resampler.", "llm": "llm."}, seed=1),
              str(folder / "model.safetensors"))
    return folder


def build_copy(root: Path) -> Path:
    folder = root / "llama3v"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_config("mustafaaljadery/llama3v", "Llama3V", "llama3v",
                                                           ("configuration_llama3v", "modeling_llama3v"))))
    _write_tokenizer(folder, _llama3_like_vocab(), _added_minicpm(), "modeling_minicpmv")
    header = "# Projection module of Llama3-V.\n# Maps image features into the language model.\n\n"
    (folder / "projection.py").write_text(disguise((DATA / "minicpm_resampler.py").read_text(), RESAMPLER_RENAMES,
                                                   seed=3, header=header))
    (folder / "modeling_llama3v.py").write_text(disguise((DATA / "minicpm_modeling.py").read_text(),
                                                         {**MODELING_RENAMES, **RESAMPLER_RENAMES}, seed=5))
    save_file(_weights({"vpm": "vison.", "resampler": "projection.", "llm": "llm."}, seed=2),
              str(folder / "model.safetensors"))
    return folder


UNRELATED_CODE = '''
import torch
from torch import nn


class ConvStem(nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TinyClassifier(nn.Module):
    def __init__(self, num_classes=10, width=32, depth=4):
        super().__init__()
        self.stem = ConvStem(3, width)
        blocks = []
        for i in range(depth):
            blocks.append(nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images, labels=None):
        h = self.stem(images)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(h.mean(dim=(2, 3)))
        if labels is None:
            return logits
        loss = nn.functional.cross_entropy(logits, labels)
        return loss, logits


def load_batches(dataset, batch_size, shuffle=True, seed=0):
    order = list(range(len(dataset)))
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=g).tolist()
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        images = torch.stack([x for x, _ in items])
        labels = torch.tensor([y for _, y in items])
        yield images, labels
'''


def build_unrelated(root: Path) -> Path:
    """An independent Llama-3-based model: same base tokenizer, its own added tokens, its own code."""
    folder = root / "independent-vlm"
    folder.mkdir(parents=True)
    cfg = {"_name_or_path": "someone/independent-vlm", "architectures": ["IndependentVLM"],
           "model_type": "independent_vlm", "hidden_size": 4096, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
           "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "image_token_index": 128256,
           "auto_map": {"AutoModel": "modeling_independent.IndependentVLM"}}
    (folder / "config.json").write_text(json.dumps(cfg))
    added = _added_llama3()
    # the same tag strings chosen independently, appended after the reserved block in another order
    for k, tok in enumerate(["<image>", "</image>", "<box>", "</box>", "<ref>", "</ref>"]):
        added[N_CORE + 256 + k] = (tok, True)
    _write_tokenizer(folder, _llama3_like_vocab(), added, None)
    (folder / "modeling_independent.py").write_text(UNRELATED_CODE)
    save_file({f"vision_model.blocks.{i}.weight": np.ones((4, 4), np.float32) for i in range(3)}
              | {f"language_model.layers.{i}.weight": np.ones((4, 4), np.float32) for i in range(3)},
              str(folder / "model.safetensors"))
    return folder
