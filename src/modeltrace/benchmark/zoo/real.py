"""Derivations of a real model: SmolLM2-135M-Instruct (the Q4_1 GGUF of the real-model set), dequantized by
modeltrace's GGUF reader and written as Hugging Face safetensors, then changed as a derived release would be:

- `real-finetune`: a short full fine-tune on CPU (torch, transformers' Llama), on prose the model may not know;
- `real-lora`: LoRA adapters (Hu et al. 2021) on the attention and MLP projections, trained and merged;
- `real-noise`: Gaussian noise at a ladder of relative sigmas (each tensor's own std);
- `real-rotate-noise`: a random residual rotation (norm gains folded, SliceGPT's invariance) plus noise.

The dequantized copy is paired with the published GGUF file, every other derivation with the dequantized
copy. Independent pairs of real models (other families and widths) are the real-model set's own
(`../shared/realmodels/pairs.json`, the published-models table of the tuning run). The manifest has the zoo's schema (modeltrace.zoo/1), so `modeltrace bench --manifest`
runs it like any zoo; models are cached in the same resumable way (recipe hash, record, then rename).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.benchmark.zoo.build import SCHEMA, stable_seed

SOURCE = "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
NOISE = (0.01, 0.05, 0.2, 0.5)
ROTATE_NOISE = (0.0, 0.05, 0.2)
FINETUNE: dict[str, Any] = {"steps": 20, "lr": 3e-5, "batch": 4, "seq": 64}
LORA: dict[str, Any] = {"steps": 20, "lr": 1e-3, "batch": 4, "seq": 64, "rank": 8, "alpha": 16.0}
VERSION = 1
_LLAMA = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def rope_deinterleave(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a q/k projection from llama.cpp's interleaved rotary order back to Hugging Face's half split."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf_llama(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json of LlamaForCausalLM, HF-named float32 tensors) from a llama GGUF file."""
    from modeltrace.formats.gguf import GGUFReader

    r = GGUFReader(path)
    try:
        md = r.metadata()
        heads, kv = int(md["llama.attention.head_count"]), int(md["llama.attention.head_count_kv"])
        hidden = int(md["llama.embedding_length"])
        out: dict[str, np.ndarray] = {}
        for name in r.infos():
            w = np.asarray(r.read(name), dtype=np.float32)
            if name == "token_embd.weight":
                out["model.embed_tokens.weight"] = w
            elif name == "output_norm.weight":
                out["model.norm.weight"] = w
            elif name == "output.weight":
                out["lm_head.weight"] = w
            else:
                _, i, g, leaf = name.split(".")
                if g in ("attn_q", "attn_k"):
                    w = rope_deinterleave(w, heads if g == "attn_q" else kv)
                out[f"model.layers.{i}.{_LLAMA[g]}.{leaf}"] = np.ascontiguousarray(w)
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
               "intermediate_size": int(md["llama.feed_forward_length"]),
               "num_hidden_layers": int(md["llama.block_count"]), "num_attention_heads": heads,
               "num_key_value_heads": kv, "head_dim": hidden // heads, "hidden_act": "silu",
               "max_position_embeddings": int(md["llama.context_length"]),
               "rms_norm_eps": float(md["llama.attention.layer_norm_rms_epsilon"]),
               "rope_theta": float(md["llama.rope.freq_base"]), "vocab_size": int(md["llama.vocab_size"]),
               "tie_word_embeddings": "lm_head.weight" not in out, "torch_dtype": "float32",
               "attention_bias": False, "mlp_bias": False}
        return cfg, out
    finally:
        r.close()


def fold_and_rotate(cfg: dict[str, Any], t: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Fold RMSNorm gains into the next weights, then rotate the residual stream by a random orthogonal Q.
    The head becomes its own tensor (the tie breaks once the final gain is folded)."""
    d = cfg["hidden_size"]
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))[None, :]
    o = {k: v.astype(np.float64) for k, v in t.items()}
    head = o.get("lm_head.weight", o["model.embed_tokens.weight"]).copy()
    head = head * o["model.norm.weight"][None, :]
    o["model.norm.weight"] = np.ones(d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        g1, g2 = o[f"{p}.input_layernorm.weight"], o[f"{p}.post_attention_layernorm.weight"]
        for k in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            o[f"{p}.{k}.weight"] = (o[f"{p}.{k}.weight"] * g1[None, :]) @ q
        for k in ("mlp.gate_proj", "mlp.up_proj"):
            o[f"{p}.{k}.weight"] = (o[f"{p}.{k}.weight"] * g2[None, :]) @ q
        for k in ("self_attn.o_proj", "mlp.down_proj"):
            o[f"{p}.{k}.weight"] = q.T @ o[f"{p}.{k}.weight"]
        o[f"{p}.input_layernorm.weight"] = np.ones(d)
        o[f"{p}.post_attention_layernorm.weight"] = np.ones(d)
    o["model.embed_tokens.weight"] = o["model.embed_tokens.weight"] @ q
    o["lm_head.weight"] = head @ q
    return {k: v.astype(np.float32) for k, v in o.items()}


def add_noise(t: dict[str, np.ndarray], sigma: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted(t):
        v = t[k]
        sd = float(v.std()) if v.size > 1 else 0.0
        out[k] = (v + sigma * sd * rng.standard_normal(v.shape)).astype(np.float32) if sd > 0 and sigma > 0 else v
    return out


def _text(tokenizer: Any, chars: int) -> Any:
    import torch

    from modeltrace.benchmark.zoo.text import load_corpus

    ids = tokenizer(load_corpus("heldout-other", chars).text)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def train_real(cfg: dict[str, Any], t: dict[str, np.ndarray], tokenizer: Any, seed: int, *, steps: int, lr: float,
               batch: int, seq: int, lora_rank: int = 0, alpha: float = 16.0) -> tuple[dict[str, np.ndarray],
                                                                                         dict[str, Any]]:
    """Fine-tune (or LoRA-tune, then merge) a Llama given as HF tensors; next-token loss on held-out prose."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",
                                                                                        "torch_dtype")}))
    state = {k: torch.from_numpy(v.copy()) for k, v in t.items()}
    if cfg["tie_word_embeddings"]:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    data = _text(tokenizer, 400_000)
    gen = torch.Generator().manual_seed(seed)
    base = {k: v.detach() for k, v in model.named_parameters()}
    adapters: dict[str, tuple[Any, Any]] = {}
    if lora_rank:
        for n, w in base.items():
            if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "up_proj.weight",
                           "gate_proj.weight", "down_proj.weight")):
                a = (torch.randn(lora_rank, w.shape[1], generator=gen) / math.sqrt(w.shape[1])).requires_grad_()
                adapters[n] = (a, torch.zeros(w.shape[0], lora_rank, requires_grad=True))
        params = [x for ab in adapters.values() for x in ab]
    else:
        params = list(model.parameters())
    scale = alpha / max(1, lora_rank)

    def merged() -> dict[str, Any]:
        out = dict(base)
        for n, (a, b) in adapters.items():
            out[n] = base[n] + scale * (b @ a)
        return out

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        window = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
        inp, tgt = window[:, :-1], window[:, 1:]
        logits = (functional_call(model, merged(), (inp,)) if adapters else model(inp)).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    final = merged() if adapters else dict(model.named_parameters())
    out = {k: final[k].detach().numpy().astype(np.float32) for k in t if k in final}
    info = {"steps": steps, "lr": lr, "batch": batch, "seq": seq, "lora_rank": lora_rank,
            "first_loss": losses[0], "last_loss": losses[-1], "seconds": round(time.perf_counter() - t0, 1)}
    return out, info


def _write(folder: Path, cfg: dict[str, Any], t: dict[str, np.ndarray], tok_dir: Path) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    c = dict(cfg)
    c["tie_word_embeddings"] = "lm_head.weight" not in t
    (folder / "config.json").write_text(json.dumps(c, indent=2), encoding="utf-8")
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    for f in tok_dir.iterdir():
        shutil.copyfile(f, folder / f.name)


def build_real_zoo(models_dir: Path, cache: Path, log: Callable[[str], None] = print) -> Path:
    """Build (or finish) the real-model derivations under `cache`; return the manifest path."""
    import torch

    torch.set_num_threads(1)
    src = (Path(models_dir) / SOURCE).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"{src}: the SmolLM2-135M GGUF of the real-model set is missing")
    cache = Path(cache)
    (cache / "models").mkdir(parents=True, exist_ok=True)
    (cache / "_records").mkdir(parents=True, exist_ok=True)
    src_hash = hashlib.sha256(f"{src.stat().st_size}:{src.name}".encode()).hexdigest()[:16]
    tok_dir = cache / "_tokenizer"
    state: dict[str, Any] = {}

    def base() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if "base" not in state:
            state["base"] = read_gguf_llama(src)
        return state["base"]  # type: ignore[no-any-return]

    def tokenizer() -> Any:
        if "tok" not in state:
            from transformers import AutoTokenizer

            if not (tok_dir / "tokenizer.json").is_file():
                tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
                tmp = cache / "_tokenizer.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tok.save_pretrained(str(tmp))
                os.replace(tmp, tok_dir)
            state["tok"] = AutoTokenizer.from_pretrained(str(tok_dir))
        return state["tok"]

    plan: list[tuple[str, str, dict[str, Any], Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]]] = []

    def fp32() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return base()[1], {}

    plan.append(("real-f32", "dequantize", {"from": SOURCE}, fp32))
    def noised(mid: str, sg: float, rotate: bool) -> Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]:
        def make() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
            cfg, t = base()
            if rotate:
                t = fold_and_rotate(cfg, t, stable_seed(mid + "/q"))
            return add_noise(t, sg, stable_seed(mid)), {}
        return make

    for sg in NOISE:
        plan.append((f"real-noise-{sg:g}", "real-noise", {"sigma_rel": sg}, noised(f"real-noise-{sg:g}", sg, False)))
    for sg in ROTATE_NOISE:
        mid = f"real-rotate-noise-{sg:g}"
        plan.append((mid, "real-rotate-noise", {"sigma_rel": sg}, noised(mid, sg, True)))
    plan.append(("real-finetune", "real-finetune", dict(FINETUNE),
                 lambda: train_real(base()[0], base()[1], tokenizer(), stable_seed("real-finetune"), **FINETUNE)))
    lora = {k: v for k, v in LORA.items() if k not in ("rank", "alpha")}
    plan.append(("real-lora", "real-lora", dict(LORA),
                 lambda: train_real(base()[0], base()[1], tokenizer(), stable_seed("real-lora"), **lora,
                                    lora_rank=int(LORA["rank"]), alpha=float(LORA["alpha"]))))
    models: list[dict[str, Any]] = [{"id": "smollm2-q4_1", "family": "smollm2", "kind": "published",
                                     "path": os.path.relpath(src, cache), "format": "gguf", "parents": [],
                                     "recipe": {"source": SOURCE}}]
    pairs: list[dict[str, Any]] = []
    for mid, kind, recipe, make in plan:
        h = hashlib.sha256(json.dumps({"v": VERSION, "src": src_hash, "id": mid, "recipe": recipe},
                                      sort_keys=True).encode()).hexdigest()
        rec_path = cache / "_records" / f"{mid}.json"
        final = cache / "models" / mid
        rec: dict[str, Any] | None = None
        if rec_path.is_file() and final.is_dir():
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
            if rec.get("hash") != h:
                rec = None
        if rec is None:
            t0 = time.perf_counter()
            tensors, info = make()
            tokenizer()  # its files ship with every model
            tmp = cache / "models" / f"{mid}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            _write(tmp, base()[0], tensors, tok_dir)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            rec = {"id": mid, "hash": h, "recipe": recipe, "train": info, "seconds": round(time.perf_counter() - t0, 1)}
            rec_path.write_text(json.dumps(rec, indent=1), encoding="utf-8")
            log(f"built {mid} in {rec['seconds']} s")
        else:
            log(f"cached {mid}")
        models.append({"id": mid, "family": "smollm2", "kind": kind, "path": f"models/{mid}",
                       "format": "safetensors", "parents": ["smollm2-q4_1"], "recipe": recipe,
                       **({"train": rec["train"]} if rec.get("train") else {})})
        strength = recipe.get("sigma_rel", recipe.get("steps"))
        # the dequantized copy is paired with the published GGUF; every other derivation with the dequantized
        # copy (the same values in safetensors: reading it costs no dequantization, which on this machine is
        # most of a 135M compare)
        a = "smollm2-q4_1" if kind == "dequantize" else "real-f32"
        pairs.append({"id": f"{a}~{mid}", "a": a, "b": mid, "label": "derived",
                      "kind": "cast" if kind == "dequantize" else kind,
                      "truth": {**recipe, **({"strength": strength} if strength is not None else {})}})
    manifest = {"schema": SCHEMA, "quick": False, "settings": "real", "zoo": "real", "zoo_version": VERSION,
                "source": SOURCE, "models": models, "pairs": pairs, "skipped": []}
    path = cache / "manifest.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def main() -> None:
    """`python -m modeltrace.benchmark.zoo.real MODELS_DIR CACHE`: build the real-model derivations."""
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m modeltrace.benchmark.zoo.real MODELS_DIR CACHE")
    print(build_real_zoo(Path(sys.argv[1]), Path(sys.argv[2])))


if __name__ == "__main__":
    main()
