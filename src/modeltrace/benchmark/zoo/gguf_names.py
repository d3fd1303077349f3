"""Hugging Face -> GGUF as llama.cpp's converter lays it out: tensor names, rotary Q/K row order, metadata.

llama.cpp stores Llama's q/k projection rows interleaved per head for its rotary kernel (the converter's
`permute`), GPT-2's Conv1D weights as (out, in), and keeps only BERT's encoder (no masked-LM head).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modeltrace.benchmark.zoo.families import Spec

_LLAMA = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GPT2 = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
         "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_BERT = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
         "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
         "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm"}


def rope_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection from HF's half-split rotary order to llama.cpp's interleaved order."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def to_gguf(spec: Spec, hf: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(GGUF-named tensors, `{arch}.*` metadata) for one zoo model in Hugging Face layout."""
    out: dict[str, np.ndarray] = {}
    fam = spec.family
    for name, w in hf.items():
        parts = name.split(".")
        if fam == "llama":
            if name == "model.embed_tokens.weight":
                out["token_embd.weight"] = w
            elif name == "model.norm.weight":
                out["output_norm.weight"] = w
            elif name == "lm_head.weight":
                out["output.weight"] = w
            else:
                i, mod = parts[2], ".".join(parts[3:-1])
                g = _LLAMA[mod]
                out[f"blk.{i}.{g}.{parts[-1]}"] = rope_interleave(w, spec.heads) if g in ("attn_q", "attn_k") else w
        elif fam == "gpt2":
            top = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
                   "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias"}
            if name in top:
                out[top[name]] = w
            else:
                i, mod = parts[2], ".".join(parts[3:-1])
                out[f"blk.{i}.{_GPT2[mod]}.{parts[-1]}"] = w.T.copy() if w.ndim == 2 else w
        else:
            top = {"bert.embeddings.word_embeddings.weight": "token_embd.weight",
                   "bert.embeddings.position_embeddings.weight": "position_embd.weight",
                   "bert.embeddings.token_type_embeddings.weight": "token_types.weight",
                   "bert.embeddings.LayerNorm.weight": "token_embd_norm.weight",
                   "bert.embeddings.LayerNorm.bias": "token_embd_norm.bias"}
            if name in top:
                out[top[name]] = w
            elif name.startswith("bert.encoder.layer."):
                i, mod = parts[3], ".".join(parts[4:-1])
                out[f"blk.{i}.{_BERT[mod]}.{parts[-1]}"] = w
    arch = {"llama": "llama", "gpt2": "gpt2", "bert": "bert"}[fam]
    meta: dict[str, Any] = {f"{arch}.context_length": spec.max_pos, f"{arch}.embedding_length": spec.hidden,
                            f"{arch}.block_count": spec.layers, f"{arch}.feed_forward_length": spec.intermediate,
                            f"{arch}.attention.head_count": spec.heads}
    if fam == "llama":
        meta.update({"llama.attention.head_count_kv": spec.heads, "llama.rope.freq_base": spec.rope_theta,
                     "llama.attention.layer_norm_rms_epsilon": spec.eps, "llama.rope.dimension_count": spec.head_dim})
    else:
        meta[f"{arch}.attention.layer_norm_epsilon"] = spec.eps
    if fam == "bert":
        meta["bert.attention.causal"] = False
    return out, meta


def gguf_tokenizer(tokenizer_json: dict[str, Any], vocab: int) -> dict[str, Any]:
    """The byte-level BPE as llama.cpp's `gpt2` tokenizer model: tokens by id, merges, token types."""
    by_id = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    special = {t["id"] for t in tokenizer_json["added_tokens"] if t.get("special")}
    for t in tokenizer_json["added_tokens"]:
        by_id[t["id"]] = t["content"]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    return {"model": "gpt2", "pre": "default", "tokens": tokens, "merges": merges,
            "token_type": [3 if i in special else 1 for i in range(vocab)],
            "bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 3, "padding_token_id": 0}
