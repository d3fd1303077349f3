"""Tiny Llama-shaped models for the index tests: random weights and exact derivations, built in numpy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from st_builders import tokenizer_json, write_safetensors

from modeltrace.index.fingerprint import TOKEN_CANDIDATES

HIDDEN, INTER, LAYERS = 32, 96, 3
VOCAB = ["[UNK]"] + list(TOKEN_CANDIDATES[:90]) + [f"w{i}" for i in range(37)]
State = dict[str, np.ndarray]


def random_state(seed: int, layers: int = LAYERS, hidden: int = HIDDEN, inter: int = INTER) -> State:
    rng = np.random.default_rng(seed)
    t: State = {"model.embed_tokens.weight": rng.standard_normal((len(VOCAB), hidden), dtype=np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = rng.standard_normal((hidden, hidden), dtype=np.float32) * 0.1
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32) * 0.1
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32) * 0.1
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, inter), dtype=np.float32) * 0.1
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
    t["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    t["lm_head.weight"] = rng.standard_normal((len(VOCAB), hidden), dtype=np.float32)
    return t


def save(folder: Path, state: State, vocab: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocab or VOCAB
    hidden = state["model.embed_tokens.weight"].shape[1]
    layers = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "vocab_size": len(vocab),
        "intermediate_size": state["model.layers.0.mlp.up_proj.weight"].shape[0]}))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, [(0, "[UNK]", True)])))
    write_safetensors(folder / "model.safetensors", state)
    return folder


def noised(state: State, sigma: float, seed: int) -> State:
    rng = np.random.default_rng(seed)
    return {k: (v + sigma * float(v.std() or 1) * rng.standard_normal(v.shape)).astype(np.float32) if v.ndim == 2
            else v.copy() for k, v in state.items()}


def permuted(state: State, seed: int) -> State:
    """Relabel every MLP layer's hidden units (the function is unchanged)."""
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in state.items()}
    for k in state:
        if k.endswith("mlp.up_proj.weight"):
            p = k[: -len("up_proj.weight")]
            perm = rng.permutation(state[k].shape[0])
            out[p + "up_proj.weight"] = state[p + "up_proj.weight"][perm]
            out[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][perm]
            out[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, perm]
    return out


def rotated(state: State, seed: int) -> State:
    """Rotate the residual stream by a random orthogonal R, folding the norm gains into the next weights."""
    h = state["model.embed_tokens.weight"].shape[1]
    r, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((h, h)))
    r = r.astype(np.float32)
    out: State = {}
    for k, v in state.items():
        if k == "model.embed_tokens.weight":
            out[k] = v @ r
        elif k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            g = state[k.rsplit("self_attn", 1)[0] + "input_layernorm.weight"]
            out[k] = (v * g[None, :]) @ r
        elif k.endswith(("gate_proj.weight", "up_proj.weight")):
            g = state[k.rsplit("mlp", 1)[0] + "post_attention_layernorm.weight"]
            out[k] = (v * g[None, :]) @ r
        elif k.endswith(("o_proj.weight", "down_proj.weight")):
            out[k] = r.T @ v
        elif k == "lm_head.weight":
            out[k] = (v * state["model.norm.weight"][None, :]) @ r
        elif v.ndim == 1:
            out[k] = np.ones_like(v)
        else:
            out[k] = v.copy()
    return out


def dropped(state: State, layer: int) -> State:
    out: State = {}
    for k, v in state.items():
        if k.startswith("model.layers."):
            i = int(k.split(".")[2])
            if i == layer:
                continue
            if i > layer:
                k = k.replace(f"model.layers.{i}.", f"model.layers.{i - 1}.", 1)
        out[k] = v.copy()
    return out
