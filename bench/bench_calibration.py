"""Tail calibration of the weight tests: p-values of weight-identity and weight-permutation on independently
trained pairs, counted below 1e-1 ... 1e-4 with exact (Clopper-Pearson) intervals, and a log-scale QQ plot.

Under H0 (independent initializations) both tests claim P(p <= alpha) <= alpha at every alpha. The bulk of
the distribution says little about the tail where verdicts are decided, so this runs at least 2,000
*disjoint* pairs of tiny Llama-style byte-level models, each trained on the CPU from its own seed (same
data, tokenizer and architecture: the hardest case for a test of shared weights). Models are cached under
``bench/cache/calibration/`` (trained once; a rerun reads them), per-pair results in ``results.jsonl`` there
(a rerun resumes).

Run (one core, niced): ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_calibration.py --pairs 2000``.
Writes ``bench/results/calibration.json`` and ``docs/benchmarks/img/calibration_qq.png``; prints the table
that docs/benchmarks/calibration.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from modeltrace.evidence import CompareContext
from modeltrace.evidence.weights_identity import WeightIdentityMethod
from modeltrace.evidence.weights_permutation import WeightPermutationMethod
from modeltrace.model import Model
from modeltrace.stats.calibration import LEVELS, tail_table

METHODS = {"weight-identity": WeightIdentityMethod, "weight-permutation": WeightPermutationMethod}
HIDDEN, FF, HEADS, LAYERS, VOCAB = 16, 64, 2, 2, 128
SEQ, BATCH, STEPS, LR = 16, 8, 30, 1e-2
SEED0 = 1_000_000  # model seeds: SEED0 + 2k and SEED0 + 2k + 1 form pair k


def corpus() -> np.ndarray:
    """ASCII bytes of the standard library's string.py (the same wherever Python 3.11+ runs)."""
    raw = np.frombuffer(Path(string.__file__).read_bytes(), dtype=np.uint8)
    return raw[raw < VOCAB].astype(np.int64)


def train(seed: int, data: np.ndarray) -> dict[str, np.ndarray]:
    """A 2-layer Llama-style decoder (RMSNorm, SwiGLU MLP, causal attention) trained for STEPS Adam steps."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    lin = lambda o, i: torch.nn.Linear(i, o, bias=False)
    emb, head = torch.nn.Embedding(VOCAB, HIDDEN), lin(VOCAB, HIDDEN)
    blocks = [{"q": lin(HIDDEN, HIDDEN), "k": lin(HIDDEN, HIDDEN), "v": lin(HIDDEN, HIDDEN), "o": lin(HIDDEN, HIDDEN),
               "gate": lin(FF, HIDDEN), "up": lin(FF, HIDDEN), "down": lin(HIDDEN, FF),
               "g1": torch.nn.Parameter(torch.ones(HIDDEN)), "g2": torch.nn.Parameter(torch.ones(HIDDEN))}
              for _ in range(LAYERS)]
    g_final = torch.nn.Parameter(torch.ones(HIDDEN))
    params = [emb.weight, head.weight, g_final]
    for b in blocks:
        params += [b[k].weight for k in ("q", "k", "v", "o", "gate", "up", "down")] + [b["g1"], b["g2"]]
    with torch.no_grad():
        for p in params:
            if p.dim() == 2:
                p.normal_(0.0, 0.02 if p.shape[0] != VOCAB else 0.1)

    def norm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g

    def forward(ids: torch.Tensor) -> torch.Tensor:
        x = emb(ids)
        bsz, t, d = x.shape
        for b in blocks:
            h = norm(x, b["g1"])
            q, k, v = (b[n](h).view(bsz, t, HEADS, d // HEADS).transpose(1, 2) for n in "qkv")
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["o"](a.transpose(1, 2).reshape(bsz, t, d))
            h = norm(x, b["g2"])
            x = x + b["down"](torch.nn.functional.silu(b["gate"](h)) * b["up"](h))
        return head(norm(x, g_final))

    data_t = torch.from_numpy(data)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(params, lr=LR)
    for _ in range(STEPS):
        idx = torch.randint(0, len(data_t) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data_t[i:i + SEQ + 1] for i in idx.tolist()])
        loss = torch.nn.functional.cross_entropy(forward(batch[:, :-1]).reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = {"model.embed_tokens.weight": emb.weight, "lm_head.weight": head.weight, "model.norm.weight": g_final}
    for i, b in enumerate(blocks):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": b["q"].weight, p + "self_attn.k_proj.weight": b["k"].weight,
                    p + "self_attn.v_proj.weight": b["v"].weight, p + "self_attn.o_proj.weight": b["o"].weight,
                    p + "mlp.gate_proj.weight": b["gate"].weight, p + "mlp.up_proj.weight": b["up"].weight,
                    p + "mlp.down_proj.weight": b["down"].weight, p + "input_layernorm.weight": b["g1"],
                    p + "post_attention_layernorm.weight": b["g2"]})
    return {k: np.ascontiguousarray(v.detach().numpy(), dtype=np.float32) for k, v in out.items()}


def save(folder: Path, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": FF, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "vocab_size": VOCAB}))
    toks = [f"<0x{b:02X}>" for b in range(VOCAB)]
    (tmp / "tokenizer.json").write_text(json.dumps(
        {"version": "1.0", "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(toks)},
                                     "unk_token": toks[0]}}))
    tmp.rename(folder)


def model_dir(cache: Path, seed: int, data: np.ndarray) -> Path:
    folder = cache / f"m{seed}"
    if not folder.exists():
        save(folder, train(seed, data))
    return folder


def run_pair(a: Path, b: Path) -> dict[str, Any]:
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        ctx = CompareContext(ma, mb, seed=0)
        out: dict[str, Any] = {"a": a.name, "b": b.name}
        for name, cls in METHODS.items():
            ev = cls().run(ctx)
            out[name] = {"p": ev.p_value, "powered": ev.powered}
        return out


def qq_plot(ps: dict[str, np.ndarray], path: Path) -> None:
    """-log10 observed against -log10 expected order statistics, with a pointwise 95 % band (Beta quantiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=120)
    n = len(next(iter(ps.values())))
    i = np.arange(1, n + 1)
    expected = -np.log10(i / (n + 1))
    lo, hi = stats.beta.ppf(0.975, i, n - i + 1), stats.beta.ppf(0.025, i, n - i + 1)
    ax.fill_between(expected, -np.log10(lo), -np.log10(hi), color="0.85", label="95 % band (uniform)")
    top = float(expected.max())
    for name, arr in ps.items():
        obs = -np.log10(np.sort(np.clip(arr, 1e-300, 1.0)))
        ax.plot(expected, obs, ".", ms=3, label=name)
        top = max(top, float(obs.max()))
    ax.plot([0, top], [0, top], "k-", lw=0.8)
    ax.set_xlabel("expected -log10 p (uniform)")
    ax.set_ylabel("observed -log10 p")
    ax.set_title(f"{n} independently trained pairs")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str:
    """HEAD, with "+dirty" when tracked files differ from it (read at start: the code that runs is that tree's)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--cache", type=Path, default=REPO / "bench" / "cache" / "calibration")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "calibration.json")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks" / "img" / "calibration_qq.png")
    args = ap.parse_args()
    commit = git_commit()
    args.cache.mkdir(parents=True, exist_ok=True)
    log = args.cache / "results.jsonl"
    done: dict[int, dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            done[int(row["pair"])] = row
    data = corpus()
    t0 = time.perf_counter()
    with log.open("a") as fh:
        for k in range(args.pairs):
            if k in done:
                continue
            a = model_dir(args.cache, SEED0 + 2 * k, data)
            b = model_dir(args.cache, SEED0 + 2 * k + 1, data)
            row = {"pair": k, **run_pair(a, b)}
            done[k] = row
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            if (k + 1) % 100 == 0:
                print(f"{k + 1} pairs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = [done[k] for k in range(args.pairs)]
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {"pairs": args.pairs, "commit": commit, "elapsed_s": round(elapsed, 1),
                              "cpu_s": round(time.process_time(), 1), "levels": list(LEVELS),
                              "model": {"hidden": HIDDEN, "ff": FF, "heads": HEADS, "layers": LAYERS, "vocab": VOCAB,
                                        "steps": STEPS, "batch": BATCH, "seq": SEQ, "lr": LR, "seed0": SEED0},
                              "methods": {}}
    arrays: dict[str, np.ndarray] = {}
    for name in METHODS:
        ps = [r[name]["p"] for r in rows]
        missing = sum(p is None for p in ps)
        arr = np.array([p for p in ps if p is not None], dtype=np.float64)
        arrays[name] = arr
        table = tail_table(arr)
        result["methods"][name] = {"tested": int(arr.size), "not_tested": missing,
                                   "powered": sum(bool(r[name]["powered"]) for r in rows),
                                   "min_p": float(arr.min()), "tail": [t.to_json() for t in table]}
    qq_plot(arrays, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"commit {result['commit']}, {args.pairs} pairs, {elapsed:.0f} s wall, {result['cpu_s']:.0f} s CPU")
    print("| test | level | below | rate | 95 % CI (Clopper-Pearson) | consistent |")
    print("|---|---|---|---|---|---|")
    for name, m in result["methods"].items():
        for t in m["tail"]:
            print(f"| {name} | {t['level']:g} | {t['count']}/{t['n']} | {t['rate']:.4f} | "
                  f"[{t['ci_low']:.4f}, {t['ci_high']:.4f}] | {'yes' if t['consistent'] else 'NO'} |")
        print(f"| {name} | smallest p | {m['min_p']:.3g} | powered {m['powered']}/{args.pairs} | | |")


if __name__ == "__main__":
    main()
