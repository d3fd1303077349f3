"""Precision and recall of `code-clone` on the modelling files of the installed `transformers`.

Ground truth, read from the files themselves (never imported):
- a file COPIES from another when it carries `# Copied from transformers.models.<m>.<module>.<Name>`
  markers naming it, or when it was generated from a modular_<m>.py that imports from the other's
  modeling module (`from ..<m>.modeling_<m> import ...`); a pair counts as a real copy when at
  least MIN_UNITS classes or functions were copied;
- ORIGINALS are modeling files neither generated from a modular file nor carrying any copy marker:
  pairs of originals of different models are independent implementations (the null).
Also measured: each original against a disguised copy of itself (identifiers renamed, comments and
docstrings dropped, definitions reordered, reformatted by `ast.unparse`), and such disguised
copies against the other originals.

The null sample is split in two halves by a seeded shuffle: the threshold (99th percentile of
`matched`) comes from the first half, false positives are counted on the second. With --write-null
the whole null sample is stored as src/modeltrace/artifacts/data/code_clone_null.json, which the
`code-clone` evidence method uses for its p-values.

Run: .venv/bin/python bench/bench_code_clones.py [--null-pairs 1500] [--seed 0] [--write-null]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

from modeltrace.artifacts.code import (
    MIN_TOKENS_FOR_SIMILARITY,
    WINDOW,
    FilePairSimilarity,
    Fingerprint,
    K,
    compare_fingerprints,
    empirical_p,
    fingerprint,
    parse_source,
    rename_map,
)
from modeltrace.errors import FormatError

MIN_UNITS = 3
COPIED = re.compile(r"#\s*Copied from transformers\.models\.([\w]+)\.(modeling_[\w]+)\.([\w.]+)")
GENERATED = re.compile(r"automatically generated from src/transformers/models/([\w]+)/(modular_[\w]+)\.py")
NULL_PATH = Path(__file__).resolve().parents[1] / "src/modeltrace/artifacts/data/code_clone_null.json"


def ground_truth(models: Path) -> tuple[dict[str, Path], dict[tuple[str, str], int], list[str]]:
    files: dict[str, Path] = {}
    for p in sorted(models.glob("*/modeling_*.py")):
        if p.name.startswith(("modeling_tf_", "modeling_flax_")):
            continue
        files[f"{p.parent.name}/{p.stem}"] = p
    copies: dict[tuple[str, str], int] = defaultdict(int)
    originals: list[str] = []
    for key, p in files.items():
        text = p.read_text(encoding="utf-8")
        marked = False
        for m in COPIED.finditer(text):
            src = f"{m.group(1)}/{m.group(2)}"
            marked = True
            if src in files and src != key:
                copies[(key, src)] += 1
        gen = GENERATED.search(text[:2000])
        if gen:
            marked = True
            modular = models / gen.group(1) / f"{gen.group(2)}.py"
            if modular.is_file():
                for node in ast.walk(ast.parse(modular.read_text(encoding="utf-8"))):
                    if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module and "." in node.module:
                        model, module = node.module.split(".", 1)
                        src = f"{model}/{module.replace('modular_', 'modeling_')}"
                        if src in files and src != key:
                            copies[(key, src)] += len(node.names)
        if not marked:
            originals.append(key)
    return files, dict(copies), originals


def _p_functions(calib: list[FilePairSimilarity]) -> tuple[list[int], list[float]]:
    return ([r.matched for r in calib],
            [r.similarity for r in calib if min(r.a_tokens, r.b_tokens) >= MIN_TOKENS_FOR_SIMILARITY])


def _is_clone(r: FilePairSimilarity, null_m: list[int], null_s: list[float], alpha: float = 0.01) -> bool:
    p_m = empirical_p(r.matched, null_m) or 1.0
    p_s = (empirical_p(r.similarity, null_s) or 1.0) if min(r.a_tokens, r.b_tokens) >= MIN_TOKENS_FOR_SIMILARITY \
        else 1.0
    return 2 * min(p_m, p_s) <= alpha


class _Renamer(ast.NodeTransformer):
    """Rename every identifier defined in the file (names, args, functions, classes) consistently."""

    def __init__(self) -> None:
        self.map: dict[str, str] = {}

    def _r(self, name: str) -> str:
        if name in ("self", "cls", "super") or name.startswith("__"):
            return name
        return self.map.setdefault(name, f"n{len(self.map)}_{name[::-1][:3]}")

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._r(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._r(node.arg)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.name = self._r(node.name)
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        node.name = self._r(node.name)
        return node


def disguise(source: str, seed: int) -> tuple[str, dict[str, str]]:
    renamer = _Renamer()
    tree = renamer.visit(ast.parse(source))
    rnd = random.Random(seed)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            body[:] = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              and isinstance(n.value.value, str))] or body
            idx = [i for i, n in enumerate(body) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            moved = [body[i] for i in idx]
            rnd.shuffle(moved)
            for i, n in zip(idx, moved):
                body[i] = n
    return ast.unparse(tree), renamer.map


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--null-pairs", type=int, default=1500)
    ap.add_argument("--disguised", type=int, default=60, help="originals to disguise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-null", action="store_true")
    args = ap.parse_args()
    import transformers

    models = Path(transformers.__file__).parent / "models"
    t0 = time.perf_counter()
    files, copies, originals = ground_truth(models)
    prints: dict[str, Fingerprint] = {}
    failed: list[str] = []
    for key, p in files.items():
        try:
            prints[key] = fingerprint(parse_source(p.read_bytes(), key + ".py"))
        except FormatError as exc:
            failed.append(str(exc))
    rnd = random.Random(args.seed)
    originals = [o for o in originals if o in prints]
    null_pairs = [(a, b) for i, a in enumerate(originals) for b in originals[i + 1:]
                  if a.split("/")[0] != b.split("/")[0]]
    rnd.shuffle(null_pairs)
    null_pairs = null_pairs[:args.null_pairs]
    null_results = [compare_fingerprints(prints[a], prints[b]) for a, b in null_pairs]
    null = [r.matched for r in null_results]
    null_sim = [r.similarity for r in null_results if min(r.a_tokens, r.b_tokens) >= MIN_TOKENS_FOR_SIMILARITY]
    half = len(null_results) // 2
    calib, held = null_results[:half], null_results[half:]
    p_m, p_s = _p_functions(calib)
    fp = sum(_is_clone(r, p_m, p_s) for r in held)
    threshold = sorted(r.matched for r in calib)[int(0.99 * (len(calib) - 1))]

    pos = [(k, n) for k, n in copies.items() if n >= MIN_UNITS and k[0] in prints and k[1] in prints]
    pos_results = [(k, n, compare_fingerprints(prints[k[1]], prints[k[0]])) for k, n in pos]
    pos_scores = [(k, n, r.matched) for k, n, r in pos_results]
    hits = {k: _is_clone(r, p_m, p_s) for k, n, r in pos_results}
    tp = sum(hits.values())
    by_units: dict[str, list[bool]] = defaultdict(list)
    for k, n, _ in pos_results:
        bucket = "3-5" if n <= 5 else "6-15" if n <= 15 else "16+"
        by_units[bucket].append(hits[k])

    sample = rnd.sample(originals, min(args.disguised, len(originals)))
    dis_hits = 0
    dis_fp = 0
    dis_null = 0
    inferred = 0
    inferred_right = 0
    renamed_names = 0
    for j, key in enumerate(sample):
        src = files[key].read_text(encoding="utf-8")
        text, truth = disguise(src, args.seed + j)
        d = fingerprint(parse_source(text, key + "-disguised.py"))
        r = compare_fingerprints(prints[key], d)
        dis_hits += _is_clone(r, p_m, p_s)
        got = rename_map([r.renames])
        inferred += len(got)
        inferred_right += sum(truth.get(a) == b for a, b in got.items())
        renamed_names += sum(a != b for a, b in truth.items())
        other = rnd.choice([o for o in originals if o.split("/")[0] != key.split("/")[0]])
        dis_null += 1
        dis_fp += _is_clone(compare_fingerprints(prints[other], d), p_m, p_s)

    n_held = len(held)
    precision = tp / (tp + fp * len(pos) / max(n_held, 1)) if tp else 0.0
    out = {
        "transformers": transformers.__version__, "k": K, "window": WINDOW, "seed": args.seed,
        "files": len(files), "parse_failures": len(failed), "originals": len(originals),
        "null_pairs": len(null), "threshold_matched_p99_calibration_half": threshold,
        "false_positives_held_out": f"{fp}/{n_held}",
        "positives": len(pos), "true_positives": tp, "recall": round(tp / max(len(pos), 1), 4),
        "recall_by_copied_units": {b: f"{sum(v)}/{len(v)}" for b, v in sorted(by_units.items())},
        "precision_at_equal_prevalence": round(precision, 4),
        "disguised_copies_detected": f"{dis_hits}/{len(sample)}",
        "disguised_vs_unrelated_false_positives": f"{dis_fp}/{dis_null}",
        "disguised_rename_map": {"inferred": inferred, "correct": inferred_right,
                                 "precision": round(inferred_right / max(inferred, 1), 4),
                                 "identifiers_renamed_in_the_copies": renamed_names},
        "null_matched_quantiles": {q: sorted(null)[int(q * (len(null) - 1))] for q in (0.5, 0.9, 0.99)},
        "null_matched_max": max(null),
        "positive_matched_quantiles": {q: sorted(s for *_, s in pos_scores)[int(q * (len(pos_scores) - 1))]
                                       for q in (0.1, 0.5, 0.9)} if pos_scores else {},
        "null_similarity_quantiles": {q: sorted(null_sim)[int(q * (len(null_sim) - 1))] for q in (0.5, 0.9, 0.99)}
        if null_sim else {},
        "decision": "clone when 2 * min(p_matched, p_similarity) <= 0.01, p from the calibration half",
        "missed_positives": [f"{k[0]} <- {k[1]} ({n} units, matched {s})" for k, n, s in pos_scores
                             if not hits[k]][:15],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=1))
    if args.write_null:
        NULL_PATH.write_text(json.dumps({
            "schema": "modeltrace.code_clone_null/1",
            "what": "matched tokens (code-clone statistic) of pairs of independently written modelling files "
                    "of transformers (no '# Copied from' markers, not generated from a modular file, "
                    "different models)",
            "transformers": transformers.__version__, "k": K, "window": WINDOW, "seed": args.seed,
            "command": "python bench/bench_code_clones.py --write-null " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "write_null"),
            "pairs": [f"{a} | {b}" for a, b in null_pairs],
            "matched": null,
            "similarity": null_sim,
            "min_tokens_for_similarity": MIN_TOKENS_FOR_SIMILARITY,
        }, indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
