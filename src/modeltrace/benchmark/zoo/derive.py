"""Derivations: each turns a parent model into a child whose ancestry is known exactly.

Functions on canonical parameters (`blocks.N.q.weight`, ...) keep the family's layout; functions on
Hugging Face tensors (noise, casts, quantization, shells) act on what a detector would read from disk.
Every function returns the facts a diagnosis could recover (sigma, rank, dropped layers, coefficients).
"""

# mypy: disable-error-code="no-any-return,no-untyped-call"
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modeltrace.benchmark.zoo.families import Spec, TinyTransformer, model_from_params, with_shape

Params = dict[str, Tensor]
SIGMA_708 = 1.0 / 708.0


def gen_for(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def probe_ids(spec: Spec, seed: int = 7, batch: int = 2, seq: int = 32) -> Tensor:
    return torch.randint(5, spec.vocab, (batch, seq), generator=gen_for(seed))


@torch.no_grad()
def logits(spec: Spec, params: Params, ids: Tensor) -> Tensor:
    return model_from_params(spec, params).eval()(ids)


def max_logit_diff(spec_a: Spec, pa: Params, spec_b: Spec, pb: Params) -> float:
    ids = probe_ids(spec_a)
    return float((logits(spec_a, pa, ids) - logits(spec_b, pb, ids)).abs().max())


# --- function-preserving -------------------------------------------------------------------------------------


def permute(spec: Spec, params: Params, seed: int) -> tuple[Params, dict[str, Any]]:
    """Shuffle MLP neurons and attention heads in every layer; the function is unchanged."""
    g = gen_for(seed)
    p = {k: v.clone() for k, v in params.items()}
    for i in range(spec.layers):
        b = f"blocks.{i}"
        perm = torch.randperm(spec.intermediate, generator=g)
        for k in ("up", "gate"):
            if f"{b}.{k}.weight" in p:
                p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"][perm]
                if f"{b}.{k}.bias" in p:
                    p[f"{b}.{k}.bias"] = p[f"{b}.{k}.bias"][perm]
        p[f"{b}.down.weight"] = p[f"{b}.down.weight"][:, perm]
        hperm = torch.randperm(spec.heads, generator=g)
        rows = (hperm[:, None] * spec.head_dim + torch.arange(spec.head_dim)[None, :]).reshape(-1)
        for k in ("q", "k", "v"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"][rows]
            if f"{b}.{k}.bias" in p:
                p[f"{b}.{k}.bias"] = p[f"{b}.{k}.bias"][rows]
        p[f"{b}.o.weight"] = p[f"{b}.o.weight"][:, rows]
    return p, {"permuted": ["mlp_neurons", "attention_heads"], "perm_seed": seed}


def fold_rms_gains(spec: Spec, params: Params) -> Params:
    """Move every RMSNorm gain into the linear maps that read the normalized stream (gains become 1)."""
    p = {k: v.clone() for k, v in params.items()}
    for i in range(spec.layers):
        b = f"blocks.{i}"
        g1, g2 = p[f"{b}.norm1.weight"], p[f"{b}.norm2.weight"]
        for k in ("q", "k", "v"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"] * g1[None, :]
        for k in ("up", "gate"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"] * g2[None, :]
        p[f"{b}.norm1.weight"] = torch.ones_like(g1)
        p[f"{b}.norm2.weight"] = torch.ones_like(g2)
    gf = p["final_norm.weight"]
    p["head.weight"] = p["head.weight"] * gf[None, :]
    p["final_norm.weight"] = torch.ones_like(gf)
    return p


def rotate(spec: Spec, params: Params, seed: int) -> tuple[Params, dict[str, Any]]:
    """Rotate the residual stream by a random orthogonal Q after folding norm gains (Ashkboos et al. 2024,
    SliceGPT's computational invariance): RMSNorm(xQ) = RMSNorm(x)Q when gains are 1, so logits stay."""
    if spec.family != "llama":
        raise ValueError("residual rotation needs RMSNorm (llama family)")
    p = fold_rms_gains(spec, params)
    a = torch.randn(spec.hidden, spec.hidden, generator=gen_for(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    p = {k: v.double() for k, v in p.items()}
    p["tok.weight"] = p["tok.weight"] @ q
    for i in range(spec.layers):
        b = f"blocks.{i}"
        for k in ("q", "k", "v", "up", "gate"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"] @ q
        for k in ("o", "down"):
            p[f"{b}.{k}.weight"] = q.T @ p[f"{b}.{k}.weight"]
    p["head.weight"] = p["head.weight"] @ q
    return {k: v.float() for k, v in p.items()}, {"rotation_seed": seed, "norm_gains_folded": True}


# --- structural ----------------------------------------------------------------------------------------------


def drop_layers(spec: Spec, params: Params, drop: list[int]) -> tuple[Spec, Params]:
    keep = [i for i in range(spec.layers) if i not in drop]
    return _relayer(spec, params, keep)


def _relayer(spec: Spec, params: Params, order: list[int]) -> tuple[Spec, Params]:
    p: Params = {k: v.clone() for k, v in params.items() if not k.startswith("blocks.")}
    for new, old in enumerate(order):
        for k, v in params.items():
            if k.startswith(f"blocks.{old}."):
                p[f"blocks.{new}." + k[len(f"blocks.{old}."):]] = v.clone()
    return with_shape(spec, layers=len(order)), p


def depth_upscale(spec: Spec, params: Params) -> tuple[Spec, Params, dict[str, Any]]:
    """Duplicate a middle run of layers in place (depth up-scaling, Kim et al. 2023, SOLAR)."""
    n = max(1, spec.layers // 2)
    start = (spec.layers - n) // 2
    dup = list(range(start, start + n))
    order = list(range(start + n)) + dup + list(range(start + n, spec.layers))
    s, p = _relayer(spec, params, order)
    return s, p, {"duplicated_layers": dup, "layer_map": order}


def width_prune(spec: Spec, params: Params, keep_frac: float) -> tuple[Spec, Params, dict[str, Any]]:
    """Keep the MLP neurons with the largest |in row| * |out column| in every layer."""
    m = round(spec.intermediate * keep_frac)
    p = {k: v.clone() for k, v in params.items()}
    kept_all = []
    for i in range(spec.layers):
        b = f"blocks.{i}"
        score = p[f"{b}.up.weight"].norm(dim=1) * p[f"{b}.down.weight"].norm(dim=0)
        if f"{b}.gate.weight" in p:
            score = score * p[f"{b}.gate.weight"].norm(dim=1)
        keep = torch.sort(torch.topk(score, m).indices).values
        kept_all.append(keep.tolist())
        for k in ("up", "gate"):
            if f"{b}.{k}.weight" in p:
                p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"][keep]
                if f"{b}.{k}.bias" in p:
                    p[f"{b}.{k}.bias"] = p[f"{b}.{k}.bias"][keep]
        p[f"{b}.down.weight"] = p[f"{b}.down.weight"][:, keep]
    return with_shape(spec, intermediate=m), p, {"kept_fraction": keep_frac, "kept_neurons": kept_all,
                                                  "criterion": "weight magnitude"}


def prune_width(spec: Spec, params: Params, keep_frac: float) -> tuple[Spec, Params, dict[str, Any]]:
    """Minitron-style width pruning (Muralidharan et al. 2024): keep the residual dimensions and MLP neurons of
    largest importance, every head at its full size. Importance: a residual dimension by the norm of its
    embedding column times its norm gains; an MLP neuron by |up row| * |gate row| * |down column|."""
    if spec.family != "llama":
        raise ValueError("width pruning of the residual stream is written for the llama family")
    d_keep = max(2, round(spec.hidden * keep_frac))
    m_keep = max(2, round(spec.intermediate * keep_frac))
    p = {k: v.clone() for k, v in params.items()}
    score = p["tok.weight"].norm(dim=0) * p["final_norm.weight"].abs()
    for i in range(spec.layers):
        score = score * p[f"blocks.{i}.norm1.weight"].abs().clamp_min(1e-6) ** (1 / spec.layers)
    res = torch.sort(torch.topk(score, d_keep).indices).values
    p["tok.weight"] = p["tok.weight"][:, res]
    p["head.weight"] = p["head.weight"][:, res]
    p["final_norm.weight"] = p["final_norm.weight"][res]
    kept_neurons = []
    for i in range(spec.layers):
        b = f"blocks.{i}"
        for k in ("norm1", "norm2"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"][res]
        for k in ("q", "k", "v"):
            p[f"{b}.{k}.weight"] = p[f"{b}.{k}.weight"][:, res]
        p[f"{b}.o.weight"] = p[f"{b}.o.weight"][res]
        s_n = p[f"{b}.up.weight"].norm(dim=1) * p[f"{b}.gate.weight"].norm(dim=1) * p[f"{b}.down.weight"].norm(dim=0)
        keep = torch.sort(torch.topk(s_n, m_keep).indices).values
        kept_neurons.append(keep.tolist())
        p[f"{b}.up.weight"] = p[f"{b}.up.weight"][keep][:, res]
        p[f"{b}.gate.weight"] = p[f"{b}.gate.weight"][keep][:, res]
        p[f"{b}.down.weight"] = p[f"{b}.down.weight"][res][:, keep]
    spec2 = with_shape(spec, hidden=d_keep, intermediate=m_keep, head_dim_kept=spec.head_dim)
    return spec2, p, {"kept_fraction": keep_frac, "kept_residual": res.tolist(), "kept_neurons": kept_neurons,
                      "residual_kept": f"{d_keep}/{spec.hidden}", "mlp_kept": f"{m_keep}/{spec.intermediate}",
                      "criterion": "weight magnitude (embedding column and norm gains; MLP row and column norms)"}


def vocab_rows(spec: Spec, params: Params, rows: Tensor | None = None, extra: Tensor | None = None,
               extra_head: Tensor | None = None) -> tuple[Spec, Params]:
    """Select rows of every vocabulary-indexed tensor (`rows`) and/or append new rows (`extra`)."""
    p = {k: v.clone() for k, v in params.items()}
    names = ["tok.weight"] + (["head.weight"] if "head.weight" in p else [])
    for n in names + (["head_bias"] if "head_bias" in p else []):
        if rows is not None:
            p[n] = p[n][rows]
    if extra is not None:
        p["tok.weight"] = torch.cat([p["tok.weight"], extra])
        if "head.weight" in p:
            assert extra_head is not None
            p["head.weight"] = torch.cat([p["head.weight"], extra_head])
        if "head_bias" in p:
            p["head_bias"] = torch.cat([p["head_bias"], torch.zeros(extra.shape[0])])
    return with_shape(spec, vocab=p["tok.weight"].shape[0]), p


def new_words(text: str, vocab: dict[str, int], n: int) -> list[str]:
    """The `n` most frequent identifiers (6+ characters) of `text` that are not yet single tokens."""
    counts = Counter(re.findall(r"[A-Za-z_][A-Za-z_0-9]{5,}", text))
    out = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
           if w not in vocab and "\u0120" + w not in vocab]
    return out[:n]


# --- merges --------------------------------------------------------------------------------------------------


def merge_linear(a: Params, b: Params, wa: float) -> Params:
    return {k: wa * a[k] + (1 - wa) * b[k] for k in a}


def merge_slerp(a: Params, b: Params, t: float) -> Params:
    """Spherical interpolation per tensor (Shoemake 1985; as used by mergekit), t = weight toward b."""
    out: Params = {}
    for k in a:
        va, vb = a[k].double().reshape(-1), b[k].double().reshape(-1)
        na, nb = va / (va.norm() + 1e-12), vb / (vb.norm() + 1e-12)
        dot = float(torch.clamp(na @ nb, -1.0, 1.0))
        if abs(dot) > 0.9995:
            r = (1 - t) * va + t * vb
        else:
            th = math.acos(dot)
            r = (math.sin((1 - t) * th) * va + math.sin(t * th) * vb) / math.sin(th)
        out[k] = r.reshape(a[k].shape).float()
    return out


def merge_task_arithmetic(base: Params, deltas: list[tuple[Params, Params]], coef: float) -> Params:
    """Task arithmetic (Ilharco et al. 2023): base + coef * sum(finetuned - its own base)."""
    out = {k: v.clone() for k, v in base.items()}
    for ft, parent in deltas:
        for k, v in out.items():
            out[k] = v + coef * (ft[k] - parent[k])
    return out


# --- tensor-level (what a detector reads) -------------------------------------------------------------------


def add_noise(tensors: dict[str, Tensor], sigma_rel: float, seed: int) -> dict[str, Tensor]:
    """Add N(0, (sigma_rel * std(tensor))^2) to every tensor, each with its own std."""
    g = gen_for(seed)
    out = {}
    for k in sorted(tensors):
        v = tensors[k].float()
        sd = float(v.std()) if v.numel() > 1 else 0.0
        out[k] = v + sigma_rel * sd * torch.randn(v.shape, generator=g) if sd > 0 else v.clone()
    return out


def quantize_int8(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-output-channel symmetric int8 round trip, stored back as float32."""
    out = {}
    for k, v in tensors.items():
        if v.ndim != 2:
            out[k] = v.clone()
            continue
        scale = v.abs().amax(dim=1, keepdim=True) / 127.0
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        out[k] = torch.clamp(torch.round(v / scale), -127, 127) * scale
    return out


def cast(tensors: dict[str, Tensor], dtype: str) -> dict[str, Tensor]:
    dt = {"bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    return {k: v.to(dt) for k, v in tensors.items()}


# --- llama-only shells -------------------------------------------------------------------------------------


SHELL_RENAME = {"model.": "llm.model.", "lm_head.": "llm.lm_head."}


def llama3v_shell(spec: Spec, params: Params, seed: int) -> tuple[dict[str, Any], dict[str, Tensor],
                                                                   dict[str, Any]]:
    """A Llama3-V-style disguise: permuted, renamed (`model.` -> `llm.model.`), q/k/v and gate/up fused,
    o/down stored transposed, 1/708 noise on every stored tensor, a config with its own field names."""
    p, perm_truth = permute(spec, params, seed)
    t: dict[str, Tensor] = {"llm.model.embed_tokens.weight": p["tok.weight"]}
    for i in range(spec.layers):
        b, h = f"blocks.{i}", f"llm.model.layers.{i}"
        t[f"{h}.input_layernorm.weight"] = p[f"{b}.norm1.weight"]
        t[f"{h}.self_attn.qkv_proj.weight"] = torch.cat([p[f"{b}.q.weight"], p[f"{b}.k.weight"],
                                                         p[f"{b}.v.weight"]])
        t[f"{h}.self_attn.o_proj.weight"] = p[f"{b}.o.weight"].T.contiguous()
        t[f"{h}.post_attention_layernorm.weight"] = p[f"{b}.norm2.weight"]
        t[f"{h}.mlp.gate_up_proj.weight"] = torch.cat([p[f"{b}.gate.weight"], p[f"{b}.up.weight"]])
        t[f"{h}.mlp.down_proj.weight"] = p[f"{b}.down.weight"].T.contiguous()
    t["llm.model.norm.weight"] = p["final_norm.weight"]
    t["llm.lm_head.weight"] = p["head.weight"]
    t = add_noise(t, SIGMA_708, seed + 1)
    cfg = {"architectures": ["Llama3VForCausalLM"], "model_type": "llama3v", "d_model": spec.hidden,
           "n_layers": spec.layers, "n_heads": spec.heads, "n_kv_heads": spec.heads, "ffn_dim": spec.intermediate,
           "vocab": spec.vocab, "norm_eps": spec.eps, "rope_base": spec.rope_theta, "max_seq_len": spec.max_pos,
           "act": "swiglu", "tie_embeddings": False, "dtype": "float32"}
    truth = {"sigma_rel": SIGMA_708, "rename": SHELL_RENAME, "fused": {"qkv_proj": ["q_proj", "k_proj", "v_proj"],
             "gate_up_proj": ["gate_proj", "up_proj"]}, "transposed": ["o_proj", "down_proj"], **perm_truth}
    return cfg, t, truth


def upcycle_moe(spec: Spec, params: Params, experts: int, top_k: int, sigma_rel: float,
                seed: int) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """Dense-to-MoE upcycling (Komatsuzaki et al. 2023, sparse upcycling): every expert copies the dense MLP
    plus small noise; the router is new. Written with Mixtral's names and config."""
    g = gen_for(seed)
    t: dict[str, Tensor] = {"model.embed_tokens.weight": params["tok.weight"]}
    for i in range(spec.layers):
        b, h = f"blocks.{i}", f"model.layers.{i}"
        t[f"{h}.input_layernorm.weight"] = params[f"{b}.norm1.weight"]
        for k, n in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            t[f"{h}.self_attn.{n}.weight"] = params[f"{b}.{k}.weight"]
        t[f"{h}.post_attention_layernorm.weight"] = params[f"{b}.norm2.weight"]
        t[f"{h}.block_sparse_moe.gate.weight"] = 0.02 * torch.randn(experts, spec.hidden, generator=g)
        for e in range(experts):
            for k, n in (("gate", "w1"), ("down", "w2"), ("up", "w3")):
                w = params[f"{b}.{k}.weight"]
                t[f"{h}.block_sparse_moe.experts.{e}.{n}.weight"] = (
                    w + sigma_rel * float(w.std()) * torch.randn(w.shape, generator=g))
    t["model.norm.weight"] = params["final_norm.weight"]
    t["lm_head.weight"] = params["head.weight"]
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": spec.vocab,
           "hidden_size": spec.hidden, "intermediate_size": spec.intermediate, "num_hidden_layers": spec.layers,
           "num_attention_heads": spec.heads, "num_key_value_heads": spec.heads, "head_dim": spec.head_dim,
           "num_local_experts": experts, "num_experts_per_tok": top_k, "hidden_act": "silu",
           "max_position_embeddings": spec.max_pos, "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta,
           "router_aux_loss_coef": 0.02, "output_router_logits": False, "sliding_window": None,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    truth = {"experts": experts, "top_k": top_k, "expert_sigma_rel": sigma_rel, "router": "new (normal 0.02)"}
    return cfg, {k: v.contiguous() for k, v in t.items()}, truth


def fresh_student(spec: Spec, seed: int) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(spec)


def numpy_tensors(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in tensors.items()}
