"""Width pruning of a trained tiny Llama, healing, and models of the pruned shape trained from scratch.

A functional forward (any residual width and MLP width; head dim fixed at tinytrain's) so that a
pruned model can be trained further. Pruning keeps the chosen residual dimensions and MLP units in
their original order, as structured pruning (Minitron, Sheared-LLaMA) does.
"""

from __future__ import annotations

import numpy as np
import tinytrain as tt
import torch

HEAD_DIM = tt.HIDDEN // tt.HEADS


def _rms(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g


def forward(p: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    x = p["model.embed_tokens.weight"][ids]
    b, t, _ = x.shape
    for i in tt.layer_ids({k: None for k in p}):  # type: ignore[arg-type]
        q = f"model.layers.{i}."
        h = _rms(x, p[q + "input_layernorm.weight"])
        heads = p[q + "self_attn.q_proj.weight"].shape[0] // HEAD_DIM
        qs, ks, vs = ((h @ p[q + f"self_attn.{n}_proj.weight"].T).view(b, t, heads, HEAD_DIM).transpose(1, 2)
                      for n in "qkv")
        a = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)
        x = x + a.transpose(1, 2).reshape(b, t, -1) @ p[q + "self_attn.o_proj.weight"].T
        h = _rms(x, p[q + "post_attention_layernorm.weight"])
        x = x + (torch.nn.functional.silu(h @ p[q + "mlp.gate_proj.weight"].T) * (h @ p[q + "mlp.up_proj.weight"].T)
                 ) @ p[q + "mlp.down_proj.weight"].T
    return _rms(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def train(state: dict[str, np.ndarray], steps: int, seed: int, lr: float = 3e-3) -> dict[str, np.ndarray]:
    """Train (or heal) a model of any width from `state` on tinytrain's corpus."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    p = {k: torch.nn.Parameter(torch.from_numpy(np.array(v, np.float32))) for k, v in state.items()}
    opt = torch.optim.AdamW(p.values(), lr=lr, weight_decay=0.0)
    data = torch.from_numpy(tt.corpus())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(data) - tt.SEQ - 1, (tt.BATCH,), generator=gen)
        batch = torch.stack([data[i:i + tt.SEQ + 1] for i in idx.tolist()])
        logits = forward(p, batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, tt.VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().numpy().astype(np.float32).copy() for k, v in p.items()}


def fresh(d: int, ff: int, seed: int) -> dict[str, np.ndarray]:
    """A random initialization of the pruned shape (tinytrain's init scales)."""
    rng = np.random.default_rng(seed)
    st = {"model.embed_tokens.weight": rng.normal(0, 0.1, (tt.VOCAB, d)), "model.norm.weight": np.ones(d),
          "lm_head.weight": rng.normal(0, 0.1, (tt.VOCAB, d))}
    for i in range(tt.LAYERS):
        q = f"model.layers.{i}."
        st.update({q + "input_layernorm.weight": np.ones(d), q + "post_attention_layernorm.weight": np.ones(d),
                   q + "self_attn.q_proj.weight": rng.normal(0, 0.02, (tt.HIDDEN, d)),
                   q + "self_attn.k_proj.weight": rng.normal(0, 0.02, (tt.HIDDEN, d)),
                   q + "self_attn.v_proj.weight": rng.normal(0, 0.02, (tt.HIDDEN, d)),
                   q + "self_attn.o_proj.weight": rng.normal(0, 0.02, (d, tt.HIDDEN)),
                   q + "mlp.gate_proj.weight": rng.normal(0, 0.02, (ff, d)),
                   q + "mlp.up_proj.weight": rng.normal(0, 0.02, (ff, d)),
                   q + "mlp.down_proj.weight": rng.normal(0, 0.02, (d, ff))})
    return {k: np.asarray(v, np.float32) for k, v in st.items()}


def prune(state: dict[str, np.ndarray], d: int, ff: int, seed: int) -> dict[str, np.ndarray]:
    """Keep `d` residual dimensions and `ff` MLP units per layer (random choice, original order); heads kept."""
    rng = np.random.default_rng(seed)
    keep_d = np.sort(rng.choice(tt.HIDDEN, d, replace=False))
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            out[k] = v[:, keep_d]
        elif v.ndim == 1:
            out[k] = v[keep_d]
        elif k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            out[k] = v[:, keep_d]
        elif k.endswith("o_proj.weight"):
            out[k] = v[keep_d]
    for i in tt.layer_ids(state):
        q = f"model.layers.{i}.mlp."
        keep_u = np.sort(rng.choice(tt.FF, ff, replace=False))
        out[q + "gate_proj.weight"] = state[q + "gate_proj.weight"][keep_u][:, keep_d]
        out[q + "up_proj.weight"] = state[q + "up_proj.weight"][keep_u][:, keep_d]
        out[q + "down_proj.weight"] = state[q + "down_proj.weight"][keep_d][:, keep_u]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
