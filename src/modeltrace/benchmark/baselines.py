"""Two published lineage scores, re-implemented for the benchmark only (they are not evidence methods).

- Weight-spread correlation: per layer, the standard deviation of every attention and MLP projection;
  the Pearson correlation of the two models' per-layer curves. Used in the dispute over Pangu Pro MoE:
  D. Yoon et al., "Intrinsic Fingerprint of LLMs: Continue Training is NOT All You Need to Steal A
  Model!", arXiv:2507.03014 (2025). No null distribution is given in the paper; a score only.
- Representation CKA: linear centered kernel alignment of two models' representations of the same
  inputs, invariant to orthogonal transforms and isotropic scaling of either side. REEF: J. Zhang et al.,
  "REEF: Representation Encoding Fingerprints for Large Language Models", ICLR 2025. CKA itself:
  S. Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019.

Neither paper fixes a decision threshold that transfers to other models, so the benchmark states the one
it uses (see `report`). Both are scores, not tests: neither gives a p-value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeltrace.model import Model

SPREAD_KINDS = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "mlp_gate", "mlp_up", "mlp_gate_up",
                "mlp_down")

# Benchmark-local fallback when modeltrace.roles is unavailable: suffix patterns of common layouts.
_KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    ("attn_qkv", r"(c_attn|qkv_proj|query_key_value|wqkv|attn_qkv)\.weight$"),
    ("attn_q", r"(q_proj|\.query|\.wq|attn_q)\.weight$"),
    ("attn_k", r"(k_proj|\.key|\.wk|attn_k)\.weight$"),
    ("attn_v", r"(v_proj|\.value|\.wv|attn_v)\.weight$"),
    ("attn_o", r"(o_proj|attention\.output\.dense|attn\.c_proj|\.wo|out_proj|attn_output)\.weight$"),
    ("mlp_gate_up", r"(gate_up_proj)\.weight$"),
    ("mlp_gate", r"(gate_proj|\.w1|ffn_gate)\.weight$"),
    ("mlp_up", r"(up_proj|c_fc|intermediate\.dense|fc1|\.w3|ffn_up)\.weight$"),
    ("mlp_down", r"(down_proj|mlp\.c_proj|(?<!attention\.)output\.dense|fc2|\.w2|ffn_down)\.weight$"),
)
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|blk)\.(\d+)\.")
_ZOO_CONFIG_KEYS = {"llama": ("vocab_size", "hidden_size", "rms_norm_eps", "rope_theta", "max_position_embeddings"),
                    "gpt2": ("vocab_size", "n_embd", "n_inner", "n_positions", "layer_norm_epsilon"),
                    "bert": ("vocab_size", "hidden_size", "layer_norm_eps", "max_position_embeddings")}
_EMBED = re.compile(r"(embed_tokens|wte|word_embeddings|tok_embeddings|token_embd)(\.weight)?$")


@dataclass(frozen=True)
class BaselineScore:
    """A baseline's score on one pair, or the reason it could not be computed."""

    name: str
    statistic: float | None
    reason: str | None = None
    details: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "reason": self.reason, "details": self.details or {}}


def _roles(names: Iterable[str]) -> dict[str, tuple[str, int | None]]:
    """name -> (kind, layer) for the projection matrices, by modeltrace.roles when present."""
    from modeltrace.roles import assign_roles

    names = list(names)
    out: dict[str, tuple[str, int | None]] = {}
    for name, role in assign_roles(names).items():
        if role.kind in (*SPREAD_KINDS, "token_embed") and role.param == "weight" \
                and role.component in ("language_model", "other") and role.expert is None:
            out[name] = (role.kind, role.layer)
    if out:
        return out
    for name in names:  # names no scheme knows: common suffixes
        if _EMBED.search(name):
            out[name] = ("token_embed", None)
            continue
        m = _LAYER.search(name)
        for kind, pat in _KIND_PATTERNS:
            if re.search(pat, name):
                out[name] = (kind, int(m.group(1)) if m else None)
                break
    return out


def spread_curves(model: Model) -> dict[str, list[float]]:
    """kind -> per-layer standard deviation (layers in index order; kinds missing a layer are dropped)."""
    src = model.source
    infos = src.infos()
    per: dict[str, dict[int, float]] = {}
    for name, (kind, layer) in _roles(infos).items():
        if kind == "token_embed" or layer is None or len(infos[name].shape) != 2:
            continue
        per.setdefault(kind, {})[layer] = float(np.std(src.read(name), dtype=np.float64))
    curves: dict[str, list[float]] = {}
    for kind, by_layer in per.items():
        layers = sorted(by_layer)
        if layers == list(range(len(layers))):
            curves[kind] = [by_layer[i] for i in layers]
    return curves


def weight_spread_correlation(a: Model, b: Model) -> BaselineScore:
    """Mean over shared projection kinds of the Pearson correlation of per-layer std curves.

    With each curve z-scored, this equals the Pearson correlation of the concatenated curves. Needs the
    same depth (the paper compares equal-depth models); flat curves (std identical in every layer) give
    no correlation and are left out.
    """
    name = "weight-spread"
    ca, cb = spread_curves(a), spread_curves(b)
    shared = sorted(set(ca) & set(cb))
    if not shared:
        return BaselineScore(name, None, "no projection matrices with layer indices shared by both models")
    rs: dict[str, float] = {}
    depth: tuple[int, int] = (len(ca[shared[0]]), len(cb[shared[0]]))
    for kind in shared:
        x, y = np.asarray(ca[kind]), np.asarray(cb[kind])
        if x.size != y.size:
            return BaselineScore(name, None, f"different depth ({x.size} vs {y.size} layers)")
        if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
            continue
        rs[kind] = float(np.corrcoef(x, y)[0, 1])
    if not rs:
        return BaselineScore(name, None, f"fewer than 3 layers or flat curves (depth {depth[0]})")
    return BaselineScore(name, float(np.mean(list(rs.values()))), details={"per_kind": rs, "layers": depth[0]})


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representation matrices with the same rows (inputs): Kornblith et al. 2019."""
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(y.T @ x) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / denom) if denom > 0 else 0.0


def _embedding(model: Model) -> tuple[str, np.ndarray] | None:
    src = model.source
    infos = src.infos()
    cands = [n for n, (kind, _) in _roles(infos).items() if kind == "token_embed" and len(infos[n].shape) == 2]
    if not cands:
        return None
    name = min(cands, key=len)
    w = src.read(name)
    if w.shape[0] < w.shape[1]:  # stored (hidden, vocab): rows must be tokens
        w = w.T
    return name, w


def _zoo_hidden(model: Model, ids: np.ndarray) -> np.ndarray | None:
    """Final hidden states of a zoo model (standard-family HF folder) on `ids`; None when not loadable."""
    if model.single_file or model.file("config.json") is None or model.file("model.safetensors") is None:
        return None
    cfg = model.config or {}
    if not all(k in cfg for k in _ZOO_CONFIG_KEYS.get(str(cfg.get("model_type")), ("?",))):
        return None  # not a zoo family config: do not pay for importing torch
    try:
        import torch

        from modeltrace.benchmark.zoo.families import model_from_params, read_hf_folder

        spec, params = read_hf_folder(model.root)
        net = model_from_params(spec, params).eval()
        if int(ids.max()) >= spec.vocab:
            return None
        with torch.no_grad():
            h = net.hidden_states(torch.from_numpy(ids).long())
    except Exception:  # noqa: BLE001 - not a zoo model (renamed keys, other layout): use the fallback
        return None
    return np.asarray(h.reshape(-1, h.shape[-1]).double().numpy())


def representation_cka(a: Model, b: Model, *, n_inputs: int = 512, seed: int = 0) -> BaselineScore:
    """Linear CKA of the two models' representations of the same inputs.

    Where both models load as zoo torch modules, the representation is the last block's output for
    the same seeded random token sequences (16 x 32 tokens, ids both vocabularies have). Otherwise it is
    the token-embedding output for `n_inputs` seeded token ids: REEF's statistic at layer 0, not at the
    deeper layers the paper prefers. `details.layer` says which was used.
    """
    name = "cka"
    ea, eb = _embedding(a), _embedding(b)
    if ea is not None and eb is not None:
        vocab = min(ea[1].shape[0], eb[1].shape[0])
        seqs = np.random.default_rng(seed).integers(0, vocab, size=(16, 32))
        ha, hb = _zoo_hidden(a, seqs), _zoo_hidden(b, seqs)
        if ha is not None and hb is not None:
            return BaselineScore(name, linear_cka(ha, hb), details={"inputs": int(seqs.size), "layer": "final"})
    if ea is None or eb is None:
        return BaselineScore(name, None, "no token-embedding matrix found in " +
                             ("A" if ea is None else "B"))
    vocab = min(ea[1].shape[0], eb[1].shape[0])
    if vocab < 16:
        return BaselineScore(name, None, f"vocabulary too small ({vocab})")
    ids = np.sort(np.random.default_rng(seed).choice(vocab, size=min(n_inputs, vocab), replace=False))
    x = ea[1][ids].astype(np.float64)
    y = eb[1][ids].astype(np.float64)
    return BaselineScore(name, linear_cka(x, y), details={"inputs": int(ids.size), "layer": "embedding",
                                                          "tensors": [ea[0], eb[0]]})


BASELINES = {"weight-spread": weight_spread_correlation, "cka": representation_cka}


def run_baselines(a: Model, b: Model) -> dict[str, dict[str, Any]]:
    """Every baseline on one pair; a failure is recorded as the reason, never raised."""
    out: dict[str, dict[str, Any]] = {}
    for name, fn in BASELINES.items():
        try:
            out[name] = fn(a, b).to_json()
        except Exception as exc:  # noqa: BLE001 - one broken file must not sink the pair's other results
            out[name] = BaselineScore(name, None, f"{type(exc).__name__}: {exc}").to_json()
    return out
