"""A tiny Llama-style decoder trained on CPU in about a second, and the derivations the tests apply.

Data: the bytes of a Python standard-library source file (deterministic, always present); the
tokenizer is byte-level (256 tokens). Models are saved as Hugging Face-style folders
(model.safetensors with Llama tensor names, config.json, tokenizer.json).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

HIDDEN = 32
FF = 128
HEADS = 4
LAYERS = 2
VOCAB = 256
SEQ = 32
BATCH = 16
STEPS = 100


def corpus() -> np.ndarray:
    """The bytes of `string.py` from the standard library (the same everywhere Python 3.11+ runs)."""
    return np.frombuffer(Path(string.__file__).read_bytes(), dtype=np.uint8).astype(np.int64)


class _RMSNorm(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        lin = lambda o, i: torch.nn.Linear(i, o, bias=False)
        self.input_layernorm = _RMSNorm(HIDDEN)
        self.q, self.k, self.v, self.o = (lin(HIDDEN, HIDDEN) for _ in range(4))
        self.post_attention_layernorm = _RMSNorm(HIDDEN)
        self.gate, self.up, self.down = lin(FF, HIDDEN), lin(FF, HIDDEN), lin(HIDDEN, FF)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.input_layernorm(x)
        hd = d // HEADS
        q, k, v = (f(h).view(b, t, HEADS, hd).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.post_attention_layernorm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


class TinyLlama(torch.nn.Module):
    def __init__(self, layers: int = LAYERS) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(layers))
        self.norm = _RMSNorm(HIDDEN)
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02 if p.shape[0] != VOCAB else 0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.norm(x))

    def state(self) -> dict[str, np.ndarray]:
        """Parameters under Hugging Face Llama names, float32 numpy."""
        out = {"model.embed_tokens.weight": self.embed.weight, "model.norm.weight": self.norm.weight,
               "lm_head.weight": self.lm_head.weight}
        for i, blk in enumerate(self.blocks):
            p = f"model.layers.{i}."
            out.update({p + "input_layernorm.weight": blk.input_layernorm.weight,
                        p + "post_attention_layernorm.weight": blk.post_attention_layernorm.weight,
                        p + "self_attn.q_proj.weight": blk.q.weight, p + "self_attn.k_proj.weight": blk.k.weight,
                        p + "self_attn.v_proj.weight": blk.v.weight, p + "self_attn.o_proj.weight": blk.o.weight,
                        p + "mlp.gate_proj.weight": blk.gate.weight, p + "mlp.up_proj.weight": blk.up.weight,
                        p + "mlp.down_proj.weight": blk.down.weight})
        return {k: v.detach().numpy().astype(np.float32).copy() for k, v in out.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        names = self.state().keys()
        params = dict(zip(names, self._params_in_state_order()))
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch.from_numpy(state[k]))

    def _params_in_state_order(self) -> list[torch.nn.Parameter]:
        out = [self.embed.weight, self.norm.weight, self.lm_head.weight]
        for blk in self.blocks:
            out += [blk.input_layernorm.weight, blk.post_attention_layernorm.weight, blk.q.weight, blk.k.weight,
                    blk.v.weight, blk.o.weight, blk.gate.weight, blk.up.weight, blk.down.weight]
        return out


def train(seed: int, steps: int = STEPS, start: dict[str, np.ndarray] | None = None,
          data_offset: int = 0, lr: float = 3e-3) -> dict[str, np.ndarray]:
    """Train a tiny model from seed `seed` (or fine-tune `start`) and return its weights."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model = TinyLlama()
    if start is not None:
        model.load(start)
    data = torch.from_numpy(corpus())
    gen = torch.Generator().manual_seed(seed + 1000 * data_offset)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    half = len(data) // 2
    lo, hi = (0, half) if data_offset == 0 else (half, len(data))
    for _ in range(steps):
        idx = torch.randint(lo, hi - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[i:i + SEQ + 1] for i in idx.tolist()])
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state()


def loss_of(state: dict[str, np.ndarray], n: int = 64) -> float:
    """Next-byte loss of a model on a fixed batch (to check that a derivation kept the function)."""
    torch.set_num_threads(1)
    layers = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
    model = TinyLlama(layers)
    model.load(state)
    data = torch.from_numpy(corpus())
    idx = torch.arange(0, n * 97, 97)
    batch = torch.stack([data[i:i + SEQ + 1] for i in idx.tolist()])
    with torch.no_grad():
        logits = model(batch[:, :-1])
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1)))


def token_strings() -> list[str]:
    return [f"<0x{b:02X}>" for b in range(VOCAB)]


def save_model(folder: Path, state: dict[str, np.ndarray], *, vocab: list[str] | None = None,
               dtype: str = "float32") -> Path:
    """Write a Hugging Face-style folder: model.safetensors, config.json, tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    if dtype == "bfloat16":
        from safetensors.torch import save_file as save_torch
        save_torch({k: torch.from_numpy(np.ascontiguousarray(v)).to(torch.bfloat16) for k, v in state.items()},
                   str(folder / "model.safetensors"))
    else:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(folder / "model.safetensors"))
    layers = len({k.split(".")[2] for k in state if k.startswith("model.layers.")})
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FF, "num_attention_heads": HEADS, "num_hidden_layers": layers,
        "vocab_size": VOCAB if vocab is None else len(vocab)}))
    toks = vocab or token_strings()
    (folder / "tokenizer.json").write_text(json.dumps(
        {"version": "1.0", "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(toks)},
                                     "unk_token": toks[0]}}))
    return folder


# --- derivations (each keeps the network's function unless it says otherwise) ---------------------

def layer_ids(state: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(k.split(".")[2]) for k in state if k.startswith("model.layers.")})


def add_noise(state: dict[str, np.ndarray], sigma_rel: float, seed: int) -> dict[str, np.ndarray]:
    """Gaussian noise with standard deviation sigma_rel times each tensor's own standard deviation."""
    rng = np.random.default_rng(seed)
    return {k: (v + rng.standard_normal(v.shape).astype(np.float32) * sigma_rel * float(v.std())).astype(np.float32)
            for k, v in state.items()}


def permute_neurons(state: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Permute every layer's MLP neurons (gate and up rows, down columns) by a random permutation."""
    rng = np.random.default_rng(seed)
    out = dict(state)
    for i in layer_ids(state):
        p = f"model.layers.{i}.mlp."
        perm = rng.permutation(state[p + "up_proj.weight"].shape[0])
        out[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][perm]
        out[p + "up_proj.weight"] = state[p + "up_proj.weight"][perm]
        out[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, perm]
    return out


def permute_heads(state: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Permute every layer's attention heads (q, k, v row blocks and o column blocks together)."""
    rng = np.random.default_rng(seed)
    out = dict(state)
    hd = HIDDEN // HEADS
    for i in layer_ids(state):
        p = f"model.layers.{i}.self_attn."
        heads = rng.permutation(HEADS)
        rows = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads])
        for n in ("q_proj", "k_proj", "v_proj"):
            out[p + n + ".weight"] = state[p + n + ".weight"][rows]
        out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, rows]
    return out


def rotate_residual(state: dict[str, np.ndarray], seed: int, permutation: bool = False) -> dict[str, np.ndarray]:
    """Fold the norm gains into the next projections, then rotate (or permute) the residual stream.

    With x' = x R for an orthogonal R: embeddings E R, input projections W diag(g) R, output
    projections R^T W, norm gains 1. RMSNorm commutes with R, so the function is unchanged.
    """
    rng = np.random.default_rng(seed)
    if permutation:
        r = np.eye(HIDDEN, dtype=np.float32)[rng.permutation(HIDDEN)]
    else:
        r = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0].astype(np.float32)
    out = dict(state)
    out["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] @ r
    out["lm_head.weight"] = (state["lm_head.weight"] * state["model.norm.weight"][None, :]) @ r
    out["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    for i in layer_ids(state):
        p = f"model.layers.{i}."
        g1, g2 = state[p + "input_layernorm.weight"], state[p + "post_attention_layernorm.weight"]
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            out[p + n + ".weight"] = (state[p + n + ".weight"] * g1[None, :]) @ r
        for n in ("mlp.gate_proj", "mlp.up_proj"):
            out[p + n + ".weight"] = (state[p + n + ".weight"] * g2[None, :]) @ r
        out[p + "self_attn.o_proj.weight"] = r.T @ state[p + "self_attn.o_proj.weight"]
        out[p + "mlp.down_proj.weight"] = r.T @ state[p + "mlp.down_proj.weight"]
        out[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    return {k: v.astype(np.float32) for k, v in out.items()}


def drop_layer(state: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """Remove one block and renumber the ones after it."""
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k.startswith("model.layers."):
            i = int(k.split(".")[2])
            if i == layer:
                continue
            if i > layer:
                k = k.replace(f"model.layers.{i}.", f"model.layers.{i - 1}.", 1)
        out[k] = v
    return out


def multimodal(state: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """A MiniCPM-V-like checkpoint: the language model under `llm.`, a small vision tower `vpm.`, a resampler."""
    rng = np.random.default_rng(seed)
    out = {"llm." + k: v for k, v in state.items()}
    d, ff = 24, 96
    for i in range(2):
        p = f"vpm.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[p + f"self_attn.{n}.weight"] = rng.standard_normal((d, d)).astype(np.float32) * 0.05
        out[p + "mlp.fc1.weight"] = rng.standard_normal((ff, d)).astype(np.float32) * 0.05
        out[p + "mlp.fc2.weight"] = rng.standard_normal((d, ff)).astype(np.float32) * 0.05
        out[p + "layer_norm1.weight"] = np.ones(d, dtype=np.float32)
        out[p + "layer_norm2.weight"] = np.ones(d, dtype=np.float32)
    out["vpm.embeddings.patch_embedding.weight"] = rng.standard_normal((d, 3, 4, 4)).astype(np.float32) * 0.05
    out["resampler.query"] = rng.standard_normal((16, HIDDEN)).astype(np.float32) * 0.05
    out["resampler.kv_proj.weight"] = rng.standard_normal((HIDDEN, d)).astype(np.float32) * 0.05
    out["resampler.attn.in_proj_weight"] = rng.standard_normal((3 * HIDDEN, HIDDEN)).astype(np.float32) * 0.05
    return out


def llama3v_shell(mm: dict[str, np.ndarray], seed: int, sigma_rel: float = 1 / 708) -> dict[str, np.ndarray]:
    """The Llama3-V treatment of a multimodal checkpoint: permute neurons and heads, add noise, rename
    `vpm.`->`vison.` and `resampler.`->`projection.`, fuse q/k/v and gate/up, store fused qkv and down transposed."""
    lm = {k[len("llm."):]: v for k, v in mm.items() if k.startswith("llm.")}
    lm = add_noise(permute_heads(permute_neurons(lm, seed), seed + 1), sigma_rel, seed + 2)
    rest = add_noise({k: v for k, v in mm.items() if not k.startswith("llm.")}, sigma_rel, seed + 3)
    out: dict[str, np.ndarray] = {}
    for k, v in rest.items():
        k = k.replace("vpm.", "vison.", 1) if k.startswith("vpm.") else k.replace("resampler.", "projection.", 1)
        out[k] = v
    for i in layer_ids(lm):
        p = f"model.layers.{i}."
        qkv = np.concatenate([lm.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        out["llm." + p + "self_attn.qkv_proj.weight"] = np.ascontiguousarray(qkv.T)
        out["llm." + p + "mlp.gate_up_proj.weight"] = np.concatenate(
            [lm.pop(p + "mlp.gate_proj.weight"), lm.pop(p + "mlp.up_proj.weight")])
        out["llm." + p + "mlp.down_proj.weight"] = np.ascontiguousarray(lm.pop(p + "mlp.down_proj.weight").T)
    out.update({"llm." + k: v for k, v in lm.items()})
    return out
