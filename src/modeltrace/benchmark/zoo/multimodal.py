"""The seed case in miniature: a tiny MiniCPM-V-like model, an independent twin, and a Llama3-V-style copy.

A SigLIP-like vision tower reads 16x16 glyph images of digits, a cross-attention resampler with learned
queries (as in MiniCPM-V) turns patches into a few query embeddings, and a Llama-style LM writes the caption
("the digit seven"). Weights are written under MiniCPM-V's prefixes (`vpm.`, `resampler.`, `llm.`); the copy
renames them as Llama3-V did (`vison.`, `projection.`), restructures the resampler's attention and adds noise
of 1/708 of each tensor's std. The copy keeps the original's tokenizer (added special tokens at the same ids);
the twin has the same base tokenizer with its own added tokens at those ids.
"""

# mypy: disable-error-code="no-any-return,no-untyped-call"
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeltrace.benchmark.zoo import derive as D
from modeltrace.benchmark.zoo.build import Task, Zoo
from modeltrace.benchmark.zoo.families import Spec, TinyTransformer, export_hf, rope_cache, save_safetensors
from modeltrace.benchmark.zoo.tokenizer import (
    BOS,
    EOS,
    MULTIMODAL_SPECIALS,
    PAD,
    vocab_size_of,
    with_added_tokens,
    write_tokenizer,
)

TWIN_SPECIALS = ("<img>", "</img>", "<obj>", "</obj>", "<bbox>", "</bbox>", "<tile>", "</tile>")
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GLYPHS = {0: "111101101101111", 1: "010110010010111", 2: "111001111100111", 3: "111001111001111",
          4: "101101111001001", 5: "111100111001111", 6: "111100111101111", 7: "111001001001001",
          8: "111101111101111", 9: "111101111001111"}
IMAGE, PATCH, QUERIES, VHIDDEN, VLAYERS, VHEADS = 16, 4, 8, 48, 2, 4
MINICPM_TOKENIZER = ["tokenization_minicpmv_fast.MiniCPMVTokenizerFast", None]


MM_LR = 1e-3  # 3e-3 left the LM ignoring the image (caption accuracy at chance)
IMAGES_VERSION = "glyph 5x3 scaled 2x at (3, 5), ink 0.7-1.3, noise 0.1"


def render(digits: Tensor, gen: torch.Generator) -> Tensor:
    """Each digit as a 5x3 glyph scaled 2x, at a fixed place in a 16x16 image, with random ink and noise.

    A fixed place keeps the task learnable in a few hundred CPU steps (random placement was not)."""
    n = digits.shape[0]
    imgs = 0.1 * torch.randn(n, 1, IMAGE, IMAGE, generator=gen)
    ink = 0.7 + 0.6 * torch.rand(n, generator=gen)
    for i in range(n):
        g = torch.tensor([float(c) for c in GLYPHS[int(digits[i])]]).view(5, 3)
        g = g.repeat_interleave(2, 0).repeat_interleave(2, 1)
        imgs[i, 0, 3:13, 5:11] += ink[i] * g
    return imgs


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        q, k, v = (p(x).view(b, s, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, d: int, m: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, m), nn.Linear(m, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, m: int) -> None:
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(d), Attention(d, heads)
        self.layer_norm2, self.mlp = nn.LayerNorm(d), MLP(d, m)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(1, d, PATCH, PATCH)
        self.position_embedding = nn.Embedding((IMAGE // PATCH) ** 2, d)

    def forward(self, img: Tensor) -> Tensor:
        x = self.patch_embedding(img).flatten(2).transpose(1, 2)
        return x + self.position_embedding.weight


class Encoder(nn.Module):
    def __init__(self, d: int, heads: int, m: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, heads, m) for _ in range(layers))


class VisionTower(nn.Module):
    """SigLIP-like: conv patches, learned positions, pre-norm encoder layers, final LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = Embeddings(VHIDDEN)
        self.encoder = Encoder(VHIDDEN, VHEADS, 4 * VHIDDEN, VLAYERS)
        self.post_layernorm = nn.LayerNorm(VHIDDEN)

    def forward(self, img: Tensor) -> Tensor:
        x = self.embeddings(img)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


def sincos_2d(d: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos positions for the resampler's keys (a buffer, not a weight)."""
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    q = d // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    parts = [f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, 1)


class Resampler(nn.Module):
    """Learned queries cross-attend to projected patch features (MiniCPM-V's resampler, Perceiver-style)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(0.02 * torch.randn(QUERIES, d))
        self.kv_proj = nn.Linear(VHIDDEN, d, bias=False)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.proj = nn.Parameter(d ** -0.5 * torch.randn(d, d))
        self.register_buffer("pos", sincos_2d(d, IMAGE // PATCH), persistent=False)

    def forward(self, feats: Tensor) -> Tensor:
        x = self.ln_kv(self.kv_proj(feats))
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        out, _ = self.attn(q, x + self.pos, x, need_weights=False)
        return self.ln_post(out) @ self.proj


class TinyVLM(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.vpm = VisionTower()
        self.resampler = Resampler(spec.hidden, spec.heads)
        self.llm = TinyTransformer(spec)

    def forward(self, img: Tensor, ids: Tensor) -> Tensor:
        q = self.resampler(self.vpm(img))
        x = self.llm.tok(ids)
        x = torch.cat([x[:, :2], q, x[:, 2 + QUERIES:]], 1)
        rope = rope_cache(self.llm.spec, x.shape[1])
        for blk in self.llm.blocks:
            x = blk(x, rope)
        return self.llm.logits_from_hidden(x)


def batch(tokenizer: Any, base_vocab: int, digits: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Images, input ids `<s> <image> q*N </image> caption </s>` and targets on the caption only."""
    img = render(digits, gen)
    seqs = []
    for d in digits.tolist():
        cap = tokenizer.encode(f" the digit {NAMES[d]}").ids + [EOS]
        seqs.append([BOS, base_vocab] + [PAD] * QUERIES + [base_vocab + 1] + cap)
    n = max(map(len, seqs))
    ids = torch.full((len(seqs), n), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    tgt = ids[:, 1:].clone()
    tgt[:, : 2 + QUERIES] = -100
    tgt[tgt == PAD] = -100
    return img, ids, tgt


def _eval(model: TinyVLM, tokenizer: Any, base_vocab: int) -> tuple[float, float]:
    """Held-out caption loss and the share of images whose whole caption is predicted right."""
    gen = torch.Generator().manual_seed(999)
    digits = torch.arange(64) % 10
    img, ids, tgt = batch(tokenizer, base_vocab, digits, gen)
    with torch.no_grad():
        logits = model(img, ids)[:, :-1]
    loss = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100))
    keep = tgt != -100
    right = (logits.argmax(-1) == tgt) | ~keep
    return loss, float(right.all(dim=1).float().mean())


def train_vlm(spec: Spec, tokenizer: Any, base_vocab: int, steps: int, seed: int) -> tuple[TinyVLM, dict[str, Any]]:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = TinyVLM(spec)
    model.llm.apply(TinyTransformer._init)
    gen = torch.Generator().manual_seed(seed)
    init_loss, init_acc = _eval(model, tokenizer, base_vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=MM_LR, weight_decay=0.01)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = MM_LR * min(1.0, (step + 1) / max(1, steps // 10))
        digits = torch.randint(0, 10, (16,), generator=gen)
        img, ids, tgt = batch(tokenizer, base_vocab, digits, gen)
        logits = model(img, ids)[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    final_loss, final_acc = _eval(model, tokenizer, base_vocab)
    return model, {"objective": "captioning", "steps": steps, "lr": MM_LR, "batch": 16, "data": "rendered digits",
                   "initial_loss": round(init_loss, 5), "final_loss": round(final_loss, 5),
                   "initial_caption_accuracy": round(init_acc, 4),
                   "final_caption_accuracy": round(final_acc, 4), "seconds": time.perf_counter() - t0}


def vlm_tensors(model: TinyVLM) -> dict[str, Tensor]:
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    llm = {k[len("llm."):]: v.detach() for k, v in model.state_dict().items() if k.startswith("llm.")}
    sd.update({"llm." + k: v for k, v in export_hf(model.llm.spec, llm).items()})
    return {k: v.float().contiguous() for k, v in sd.items()}


def vlm_config(spec: Spec) -> dict[str, Any]:
    return {"architectures": ["MiniCPMV"], "model_type": "minicpmv", "version": 2.5,
            "query_num": QUERIES, "image_size": IMAGE, "patch_size": PATCH, "slice_mode": True,
            "max_slice_nums": 9, "scale_resolution": IMAGE, "use_cache": True,
            "vocab_size": spec.vocab, "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
            "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
            "num_key_value_heads": spec.heads, "hidden_act": "silu", "max_position_embeddings": spec.max_pos,
            "rms_norm_eps": spec.eps, "rope_theta": spec.rope_theta, "bos_token_id": BOS, "eos_token_id": EOS,
            "torch_dtype": "float32",
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": VHIDDEN,
                              "intermediate_size": 4 * VHIDDEN, "num_hidden_layers": VLAYERS,
                              "num_attention_heads": VHEADS, "num_channels": 1, "image_size": IMAGE,
                              "patch_size": PATCH, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-5}}


def shell_tensors(t: dict[str, Tensor], d: int, seed: int) -> dict[str, Tensor]:
    """Rename prefixes as Llama3-V did, split the resampler's fused in-projection into q and fused kv, add noise."""
    out: dict[str, Tensor] = {}
    for k, v in t.items():
        if k == "resampler.attn.in_proj_weight":
            out["projection.attn.q.weight"], out["projection.attn.kv.weight"] = v[:d], v[d:]
        elif k == "resampler.attn.in_proj_bias":
            out["projection.attn.q.bias"], out["projection.attn.kv.bias"] = v[:d], v[d:]
        elif k.startswith("resampler.attn.out_proj."):
            out["projection.attn.o." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("resampler."):
            out["projection." + k[len("resampler."):]] = v
        elif k.startswith("vpm."):
            out["vison." + k[len("vpm."):]] = v
        else:
            out[k] = v
    return {k: v.contiguous() for k, v in D.add_noise(out, D.SIGMA_708, seed).items()}


def plan_multimodal(zoo: Zoo) -> None:
    s = zoo.s
    spec_of = lambda base_vocab: Spec("llama", base_vocab + len(MULTIMODAL_SPECIALS), s.hidden,
                                      s.layers, s.heads, s.intermediate, max_pos=s.seq)

    def trained(mid: str, seed: int, specials: tuple[str, ...], minicpm_tok: bool):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            d = zoo.data()
            base_vocab = vocab_size_of(d["tokenizer_json"])
            spec = spec_of(base_vocab)
            model, info = train_vlm(spec, d["tokenizer"], base_vocab, s.mm_steps, seed)
            _write(tmp, vlm_config(spec), vlm_tensors(model), d["tokenizer_json"], specials, base_vocab,
                   minicpm_tok, spec.max_pos)
            info.pop("seconds")
            return {"train": info}
        return run

    a, b, c = "mm-a", "mm-b", "mm-a-shell"
    seed_a, seed_b = zoo.base_seed("mm", 0), zoo.base_seed("mm", 1)
    recipe = {"kind": "multimodal", "steps": s.mm_steps, "lr": MM_LR, "images": IMAGES_VERSION}
    zoo.add(Task(a, "multimodal", "base", (), {**recipe, "seed": seed_a},
                 trained(a, seed_a, MULTIMODAL_SPECIALS, True), ancestors=frozenset({a})))
    tb = Task(b, "multimodal", "base", (), {**recipe, "seed": seed_b},
              trained(b, seed_b, TWIN_SPECIALS, False), ancestors=frozenset({b}))
    tb.pairs = [{"id": f"{a}~{b}", "a": a, "b": b, "label": "independent", "kind": "multimodal-independent",
                 "truth": {"note": "same architecture, base tokenizer and task; own seed and added tokens"}}]
    zoo.add(tb)

    def run_shell(tmp: Path) -> dict[str, Any]:
        d = zoo.data()
        base_vocab = vocab_size_of(d["tokenizer_json"])
        src = zoo.models_dir / a
        cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
        cfg.update({"architectures": ["Llama3VModel"], "model_type": "llama3v", "_name_or_path": "llama3-v"})
        from safetensors.torch import load_file

        t = shell_tensors(load_file(str(src / "model.safetensors")), s.hidden, zoo.seed(c))
        _write(tmp, cfg, t, d["tokenizer_json"], MULTIMODAL_SPECIALS, base_vocab, True, s.seq)
        return {}

    tc = Task(c, "multimodal", "multimodal-shell", (a,), {"kind": "multimodal-shell", "sigma_rel": D.SIGMA_708},
              run_shell, ancestors=frozenset({a}))
    truth = {"sigma_rel": D.SIGMA_708, "rename": {"vpm.": "vison.", "resampler.": "projection.", "llm.": "llm."},
             "restructured": {"resampler.attn.in_proj_weight": ["projection.attn.q.weight",
                                                                "projection.attn.kv.weight"],
                              "resampler.attn.out_proj": "projection.attn.o"},
             "tokenizer": "same, with the same added special tokens at the same ids"}
    tc.pairs = [{"id": f"{a}~{c}", "a": a, "b": c, "label": "derived", "kind": "multimodal-shell", "truth": truth},
                {"id": f"{b}~{c}", "a": b, "b": c, "label": "independent", "kind": "multimodal-independent",
                 "truth": {"control_for": "multimodal-shell"}}]
    zoo.add(tc)


def _write(folder: Path, cfg: dict[str, Any], tensors: dict[str, Tensor], tok_json: dict[str, Any],
           specials: tuple[str, ...], base_vocab: int, minicpm_tok: bool, max_len: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_safetensors(folder / "model.safetensors", tensors)
    write_tokenizer(folder, with_added_tokens(tok_json, list(specials), special=True), max_len, specials, base_vocab)
    if minicpm_tok:
        tc_path = folder / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        tc["auto_map"] = {"AutoTokenizer": MINICPM_TOKENIZER}
        tc_path.write_text(json.dumps(tc, indent=2), encoding="utf-8")


__all__ = ["TinyVLM", "plan_multimodal", "render"]
