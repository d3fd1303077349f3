"""The zoo's model families: one small transformer, parameterised as Llama, GPT-2 or BERT.

A model lives in memory under canonical parameter names (`blocks.N.q.weight`, ...) and is written to disk
under the family's Hugging Face names and layouts (fused GPT-2 `c_attn` in Conv1D (in, out) layout, BERT's
post-norm encoder, Llama's untied head), with a config.json whose field names match the real architectures.
`export_hf` and `import_hf` convert between the two, so every derivation works on one representation.
"""

# mypy: disable-error-code="no-any-return,no-untyped-call"
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeltrace.benchmark.zoo.tokenizer import BOS, EOS, PAD

FAMILIES = ("llama", "gpt2", "bert")


@dataclass(frozen=True)
class Spec:
    """Shape and flavour of one model."""

    family: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_pos: int = 64
    eps: float = 1e-5
    rope_theta: float = 10000.0
    head_dim_kept: int = 0  # a head size that is not hidden // heads (width pruning keeps the heads' size)

    @property
    def head_dim(self) -> int:
        return self.head_dim_kept or self.hidden // self.heads

    @property
    def norm(self) -> str:
        return "rms" if self.family == "llama" else "layer"

    @property
    def causal(self) -> bool:
        return self.family != "bert"

    @property
    def bias(self) -> bool:
        return self.family != "llama"

    @property
    def tied(self) -> bool:
        return self.family != "llama"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.head_dim_kept:  # absent when unused, so recipes (cache keys) of older models stay the same
            out.pop("head_dim_kept")
        return out


def _norm(spec: Spec, dim: int) -> nn.Module:
    return RMSNorm(dim, spec.eps) if spec.norm == "rms" else nn.LayerNorm(dim, eps=spec.eps)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rope_cache(spec: Spec, seq: int) -> tuple[Tensor, Tensor]:
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, spec.head_dim, 2, dtype=torch.float32) / spec.head_dim))
    t = torch.arange(seq, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Block(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        d, m = spec.hidden, spec.intermediate
        self.spec = spec
        self.norm1 = _norm(spec, d)
        self.q = nn.Linear(d, spec.heads * spec.head_dim, bias=spec.bias)
        self.k = nn.Linear(d, spec.heads * spec.head_dim, bias=spec.bias)
        self.v = nn.Linear(d, spec.heads * spec.head_dim, bias=spec.bias)
        self.o = nn.Linear(spec.heads * spec.head_dim, d, bias=spec.bias)
        self.norm2 = _norm(spec, d)
        self.up = nn.Linear(d, m, bias=spec.bias)
        if spec.family == "llama":
            self.gate = nn.Linear(d, m, bias=False)
        self.down = nn.Linear(m, d, bias=spec.bias)

    def attn(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None) -> Tensor:
        b, s, _ = x.shape
        sp = self.spec
        q = self.q(x).view(b, s, sp.heads, sp.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, sp.heads, sp.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, sp.heads, sp.head_dim).transpose(1, 2)
        if rope is not None:
            cos, sin = rope[0][:s], rope[1][:s]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=sp.causal and mask is None)
        return self.o(y.transpose(1, 2).reshape(b, s, sp.heads * sp.head_dim))

    def mlp(self, x: Tensor) -> Tensor:
        if self.spec.family == "llama":
            return self.down(F.silu(self.gate(x)) * self.up(x))
        approx = "tanh" if self.spec.family == "gpt2" else "none"
        return self.down(F.gelu(self.up(x), approximate=approx))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None = None) -> Tensor:
        if self.spec.family == "bert":  # post-norm
            x = self.norm1(x + self.attn(x, rope, mask))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), rope, mask)
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """One class for the three families; `spec.family` picks norms, positions, MLP and head."""

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        d = spec.hidden
        self.tok = nn.Embedding(spec.vocab, d)
        if spec.family != "llama":
            self.pos = nn.Embedding(spec.max_pos, d)
        if spec.family == "bert":
            self.typ = nn.Embedding(2, d)
            self.emb_norm = nn.LayerNorm(d, eps=spec.eps)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        if spec.family != "bert":
            self.final_norm = _norm(spec, d)
        if spec.family == "llama":
            self.head = nn.Linear(d, spec.vocab, bias=False)
        if spec.family == "bert":
            self.head_dense = nn.Linear(d, d)
            self.head_norm = nn.LayerNorm(d, eps=spec.eps)
            self.head_bias = nn.Parameter(torch.zeros(spec.vocab))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden_states(self, ids: Tensor) -> Tensor:
        s = ids.shape[1]
        x = self.tok(ids)
        rope = None
        if self.spec.family == "llama":
            rope = rope_cache(self.spec, s)
        else:
            x = x + self.pos(torch.arange(s, device=ids.device))
        if self.spec.family == "bert":
            x = self.emb_norm(x + self.typ.weight[0])
        for blk in self.blocks:
            x = blk(x, rope)
        return x

    def logits_from_hidden(self, x: Tensor) -> Tensor:
        if self.spec.family == "bert":
            h = self.head_norm(F.gelu(self.head_dense(x)))
            return h @ self.tok.weight.T + self.head_bias
        x = self.final_norm(x)
        if self.spec.family == "llama":
            return self.head(x)
        return x @ self.tok.weight.T

    def forward(self, ids: Tensor) -> Tensor:
        return self.logits_from_hidden(self.hidden_states(ids))


def build_model(spec: Spec, seed: int) -> TinyTransformer:
    torch.manual_seed(seed)
    return TinyTransformer(spec)


def params_of(model: TinyTransformer) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def model_from_params(spec: Spec, params: dict[str, Tensor]) -> TinyTransformer:
    m = TinyTransformer(spec)
    m.load_state_dict(params, strict=True)
    return m


# --- Hugging Face names ------------------------------------------------------------------------------------


def hf_config(spec: Spec) -> dict[str, Any]:
    """A config.json with the field names of the real architecture."""
    if spec.family == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": spec.vocab,
                "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
                "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
                "num_key_value_heads": spec.heads, "head_dim": spec.head_dim, "hidden_act": "silu",
                "max_position_embeddings": spec.max_pos, "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta,
                "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
                "initializer_range": 0.02, "tie_word_embeddings": False, "bos_token_id": BOS,
                "eos_token_id": EOS, "pad_token_id": PAD, "torch_dtype": "float32", "use_cache": True}
    if spec.family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": spec.vocab,
                "n_embd": spec.hidden, "n_layer": spec.layers, "n_head": spec.heads, "n_inner": spec.intermediate,
                "n_positions": spec.max_pos, "n_ctx": spec.max_pos, "activation_function": "gelu_new",
                "layer_norm_epsilon": spec.eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "initializer_range": 0.02, "bos_token_id": BOS, "eos_token_id": EOS,
                "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True}
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": spec.vocab,
            "hidden_size": spec.hidden, "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
            "intermediate_size": spec.intermediate, "hidden_act": "gelu", "max_position_embeddings": spec.max_pos,
            "type_vocab_size": 2, "layer_norm_eps": spec.eps, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "pad_token_id": PAD,
            "position_embedding_type": "absolute", "tie_word_embeddings": True, "torch_dtype": "float32"}


def spec_from_hf_config(cfg: dict[str, Any]) -> Spec:
    mt = cfg.get("model_type")
    if mt == "llama":
        hd = int(cfg.get("head_dim") or 0)
        return Spec("llama", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                    cfg["num_attention_heads"], cfg["intermediate_size"], cfg["max_position_embeddings"],
                    cfg["rms_norm_eps"], cfg["rope_theta"],
                    head_dim_kept=hd if hd and hd != cfg["hidden_size"] // cfg["num_attention_heads"] else 0)
    if mt == "gpt2":
        return Spec("gpt2", cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_inner"],
                    cfg["n_positions"], cfg["layer_norm_epsilon"])
    if mt == "bert":
        return Spec("bert", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                    cfg["num_attention_heads"], cfg["intermediate_size"], cfg["max_position_embeddings"],
                    cfg["layer_norm_eps"])
    raise ValueError(f"not a zoo family config: model_type {mt!r}")


_LLAMA_LAYER = {"norm1.weight": "input_layernorm.weight", "q.weight": "self_attn.q_proj.weight",
                "k.weight": "self_attn.k_proj.weight", "v.weight": "self_attn.v_proj.weight",
                "o.weight": "self_attn.o_proj.weight", "norm2.weight": "post_attention_layernorm.weight",
                "gate.weight": "mlp.gate_proj.weight", "up.weight": "mlp.up_proj.weight",
                "down.weight": "mlp.down_proj.weight"}
_BERT_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
               "o": "attention.output.dense", "norm1": "attention.output.LayerNorm", "up": "intermediate.dense",
               "down": "output.dense", "norm2": "output.LayerNorm"}
_GPT2_LAYER = {"norm1": "ln_1", "o": "attn.c_proj", "norm2": "ln_2", "up": "mlp.c_fc", "down": "mlp.c_proj"}


def export_hf(spec: Spec, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Canonical parameters -> the family's Hugging Face tensor names and layouts."""
    out: dict[str, Tensor] = {}
    p = params
    if spec.family == "llama":
        out["model.embed_tokens.weight"] = p["tok.weight"]
        for i in range(spec.layers):
            for k, v in _LLAMA_LAYER.items():
                out[f"model.layers.{i}.{v}"] = p[f"blocks.{i}.{k}"]
        out["model.norm.weight"] = p["final_norm.weight"]
        out["lm_head.weight"] = p["head.weight"]
    elif spec.family == "gpt2":
        out["transformer.wte.weight"] = p["tok.weight"]
        out["transformer.wpe.weight"] = p["pos.weight"]
        for i in range(spec.layers):
            b, h = f"blocks.{i}", f"transformer.h.{i}"
            out[f"{h}.attn.c_attn.weight"] = torch.cat([p[f"{b}.q.weight"], p[f"{b}.k.weight"],
                                                        p[f"{b}.v.weight"]], 0).T
            out[f"{h}.attn.c_attn.bias"] = torch.cat([p[f"{b}.q.bias"], p[f"{b}.k.bias"], p[f"{b}.v.bias"]])
            for k, v in _GPT2_LAYER.items():
                w = p[f"{b}.{k}.weight"]
                out[f"{h}.{v}.weight"] = w if k.startswith("norm") else w.T  # Conv1D stores (in, out)
                out[f"{h}.{v}.bias"] = p[f"{b}.{k}.bias"]
        out["transformer.ln_f.weight"] = p["final_norm.weight"]
        out["transformer.ln_f.bias"] = p["final_norm.bias"]
    else:
        e = "bert.embeddings"
        out[f"{e}.word_embeddings.weight"] = p["tok.weight"]
        out[f"{e}.position_embeddings.weight"] = p["pos.weight"]
        out[f"{e}.token_type_embeddings.weight"] = p["typ.weight"]
        out[f"{e}.LayerNorm.weight"] = p["emb_norm.weight"]
        out[f"{e}.LayerNorm.bias"] = p["emb_norm.bias"]
        for i in range(spec.layers):
            for k, v in _BERT_LAYER.items():
                for t in ("weight", "bias"):
                    out[f"bert.encoder.layer.{i}.{v}.{t}"] = p[f"blocks.{i}.{k}.{t}"]
        out["cls.predictions.transform.dense.weight"] = p["head_dense.weight"]
        out["cls.predictions.transform.dense.bias"] = p["head_dense.bias"]
        out["cls.predictions.transform.LayerNorm.weight"] = p["head_norm.weight"]
        out["cls.predictions.transform.LayerNorm.bias"] = p["head_norm.bias"]
        out["cls.predictions.bias"] = p["head_bias"]
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def import_hf(spec: Spec, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `export_hf`."""
    t = {k: v.to(torch.float32) for k, v in tensors.items()}
    p: dict[str, Tensor] = {}
    if spec.family == "llama":
        p["tok.weight"] = t["model.embed_tokens.weight"]
        for i in range(spec.layers):
            for k, v in _LLAMA_LAYER.items():
                p[f"blocks.{i}.{k}"] = t[f"model.layers.{i}.{v}"]
        p["final_norm.weight"] = t["model.norm.weight"]
        p["head.weight"] = t["lm_head.weight"]
    elif spec.family == "gpt2":
        p["tok.weight"] = t["transformer.wte.weight"]
        p["pos.weight"] = t["transformer.wpe.weight"]
        n = spec.heads * spec.head_dim
        for i in range(spec.layers):
            b, h = f"blocks.{i}", f"transformer.h.{i}"
            w, bias = t[f"{h}.attn.c_attn.weight"].T, t[f"{h}.attn.c_attn.bias"]
            for j, k in enumerate("qkv"):
                p[f"{b}.{k}.weight"] = w[j * n:(j + 1) * n].contiguous()
                p[f"{b}.{k}.bias"] = bias[j * n:(j + 1) * n].contiguous()
            for k, v in _GPT2_LAYER.items():
                w = t[f"{h}.{v}.weight"]
                p[f"{b}.{k}.weight"] = w if k.startswith("norm") else w.T.contiguous()
                p[f"{b}.{k}.bias"] = t[f"{h}.{v}.bias"]
        p["final_norm.weight"] = t["transformer.ln_f.weight"]
        p["final_norm.bias"] = t["transformer.ln_f.bias"]
    else:
        e = "bert.embeddings"
        p["tok.weight"] = t[f"{e}.word_embeddings.weight"]
        p["pos.weight"] = t[f"{e}.position_embeddings.weight"]
        p["typ.weight"] = t[f"{e}.token_type_embeddings.weight"]
        p["emb_norm.weight"] = t[f"{e}.LayerNorm.weight"]
        p["emb_norm.bias"] = t[f"{e}.LayerNorm.bias"]
        for i in range(spec.layers):
            for k, v in _BERT_LAYER.items():
                for x in ("weight", "bias"):
                    p[f"blocks.{i}.{k}.{x}"] = t[f"bert.encoder.layer.{i}.{v}.{x}"]
        p["head_dense.weight"] = t["cls.predictions.transform.dense.weight"]
        p["head_dense.bias"] = t["cls.predictions.transform.dense.bias"]
        p["head_norm.weight"] = t["cls.predictions.transform.LayerNorm.weight"]
        p["head_norm.bias"] = t["cls.predictions.transform.LayerNorm.bias"]
        p["head_bias"] = t["cls.predictions.bias"]
    return p


def save_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})


def load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_hf_folder(folder: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_safetensors(folder / "model.safetensors", tensors)


def read_hf_folder(folder: Path) -> tuple[Spec, dict[str, Tensor]]:
    """Load a zoo model folder of a standard family back to (spec, canonical params)."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    spec = spec_from_hf_config(cfg)
    return spec, import_hf(spec, load_safetensors(folder / "model.safetensors"))


def with_shape(spec: Spec, **changes: Any) -> Spec:
    return replace(spec, **changes)


def param_count(params: dict[str, Tensor]) -> int:
    return sum(math.prod(v.shape) for v in params.values())
