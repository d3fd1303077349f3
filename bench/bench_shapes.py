"""Weight evidence when names and shapes change: power by pruning ratio, unknown naming schemes, kept attention.

Builds every case from the tiny Llama of tests/weights/tinytrain.py (trained in about a second on
CPU) and prints Markdown tables for docs/benchmarks/shapes.md:

    PYTHONPATH=src python bench/bench_shapes.py [--seeds 3]
    PYTHONPATH=src python bench/bench_shapes.py --realmodels /path/to/realmodels   # real models of different widths
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "weights"))

import tinytrain as tt
import widths as wd

from modeltrace.compare import compare
from modeltrace.model import Model

METHODS = ["weight-match", "weight-identity", "weight-permutation", "weight-heads", "weight-order", "diagnosis"]


def _run(a: Path, b: Path) -> dict[str, object]:
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=METHODS)
    out: dict[str, object] = {"verdict": r.verdict, "p": r.p_value}
    for e in r.evidence:
        out[e.method] = e
    noise = next((t for t in r.transforms if t.kind == "noise"), None)
    out["sigma"] = noise.estimates.get("sigma_rel") if noise is not None else None
    return out


def _p(res: dict[str, object], method: str) -> str:
    e = res[method]
    p = getattr(e, "p_value", None)
    return "-" if p is None else f"{p:.2g}" + ("" if getattr(e, "powered", False) else " (np)")


def pruning(root: Path, a: Path, base: dict[str, np.ndarray], seeds: int) -> None:
    print("| residual kept | MLP kept | healing steps | derived | weight-order p (median) | "
          "weight-permutation p (median) | weight-identity p (median) |")
    print("|---|---|---|---|---|---|---|")
    for d, ff in ((28, 112), (24, 96), (16, 64), (8, 32)):
        for heal in (0, 100):
            rows = []
            for s in range(seeds):
                st = wd.prune(base, d, ff, seed=40 + s)
                if heal:
                    st = wd.train(st, heal, seed=50 + s, lr=1e-3)
                rows.append(_run(a, tt.save_model(root / f"p{d}-{ff}-{heal}-{s}", st)))
            med = {m: float(np.median([getattr(x[m], "p_value", 1.0) for x in rows]))
                   for m in ("weight-order", "weight-permutation", "weight-identity")}
            print(f"| {d}/{tt.HIDDEN} | {ff}/{tt.FF} | {heal} | {sum(x['verdict'] == 'derived' for x in rows)}/{seeds}"
                  f" | {med['weight-order']:.2g} | {med['weight-permutation']:.2g} | {med['weight-identity']:.2g} |")


def scratch(root: Path, a: Path, seeds: int) -> None:
    print("| shape (residual, MLP) | trained steps | derived | weight-order p | weight-order powered |")
    print("|---|---|---|---|---|")
    for d, ff in ((24, 96), (16, 64)):
        for s in range(seeds):
            st = wd.train(wd.fresh(d, ff, seed=60 + s), tt.STEPS, seed=70 + s)
            res = _run(a, tt.save_model(root / f"s{d}-{s}", st))
            e = res["weight-order"]
            print(f"| {d}, {ff} | {tt.STEPS} | {'yes' if res['verdict'] == 'derived' else 'no'} | "
                  f"{getattr(e, 'p_value', 1.0):.2g} | {getattr(e, 'powered', False)} |")


def shells(root: Path, a: Path, base: dict[str, np.ndarray]) -> None:
    from test_content import custom_shell, expected_pairs

    from modeltrace.weights import match_models

    print("| noise (x tensor std) | verdict | pieces paired as built | min margin | weight-permutation p | "
          "noise estimated |")
    print("|---|---|---|---|---|---|")
    want = expected_pairs()
    for sigma in (0.01, 0.05, 0.1, 0.2):
        b = tt.save_model(root / f"shell-{sigma}", custom_shell(base, 21, sigma_rel=sigma))
        with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
            m = match_models(ma, mb)
            got = {p.a: p.b + (f"[{p.b_rows[0]}:{p.b_rows[1]}]" if p.b_rows else "") for p in m.pairs}
            margin = next((t.estimates.get("content", {}).get("min_margin") for t in m.transforms
                           if t.kind == "rename"), None)
        res = _run(a, b)
        ok = sum(got.get(k) == v for k, v in want.items())
        sig = res["sigma"]
        print(f"| {sigma} | {res['verdict']} | {ok}/{len(want)} | {margin} | {_p(res, 'weight-permutation')} | "
              f"{'-' if sig is None else f'{sig:.3g}'} |")


def kept_attention(root: Path, seeds: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "evidence"))
    from test_weights_heads import _llama, _save

    print("| case | verdict | weight-heads p | weight-identity p |")
    print("|---|---|---|---|")
    for s in range(seeds):
        rng = np.random.default_rng(80 + s)
        st = _llama(rng)
        fresh = _llama(np.random.default_rng(90 + s))
        b = {k: (fresh[k] if ".mlp." in k else v) for k, v in st.items()}
        a_dir, b_dir = _save(root / f"ka-a{s}", st), _save(root / f"ka-b{s}", b)
        res = _run(a_dir, b_dir)
        print(f"| attention kept, MLPs replaced (seed {s}) | {res['verdict']} | {_p(res, 'weight-heads')} | "
              f"{_p(res, 'weight-identity')} |")
        c_dir = _save(root / f"ka-c{s}", fresh)
        res = _run(a_dir, c_dir)
        print(f"| independent (seed {s}) | {res['verdict']} | {_p(res, 'weight-heads')} | "
              f"{_p(res, 'weight-identity')} |")


REAL_PAIRS = (("smollm2-135m-instruct-q4_1", "gemma-3-270m-q4_k_m"),
              ("gemma-3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m"),
              ("smollm2-135m-instruct-q4_1", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m"))


def real(root: Path) -> None:
    print("| A | B | widths (A, B) | dims paired (confident) | verdict | weight-order p (powered) | "
          "weight-permutation p | weight-heads |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in REAL_PAIRS:
        res = _run(root / a, root / b)
        e = res["weight-order"]
        w = getattr(e, "details", {}).get("widths", {})
        heads = res["weight-heads"]
        print(f"| {a} | {b} | {w.get('d_a')}, {w.get('d_b')} | {w.get('paired_dims')} ({w.get('confident_dims')}) | "
              f"{res['verdict']} | {_p(res, 'weight-order')} | {_p(res, 'weight-permutation')} | "
              f"{getattr(heads, 'statement', '')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--realmodels", type=Path, help="measure only the real models of different widths in this folder")
    args = ap.parse_args()
    if args.realmodels is not None:
        real(args.realmodels)
        return
    base = tt.train(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a = tt.save_model(root / "A", base)
        print("## Width pruning\n")
        pruning(root, a, base, args.seeds)
        print("\n## Pruned shape trained from scratch\n")
        scratch(root, a, args.seeds)
        print("\n## Unknown naming scheme (fused, transposed, permuted, renumbered)\n")
        shells(root, a, base)
        print("\n## Attention kept\n")
        kept_attention(root, args.seeds)


if __name__ == "__main__":
    main()
