"""Behaviour and representation evidence on the benchmark zoo: verdicts, p-values, queries needed.

On every pair of the zoo's Llama family whose two models transformers loads (independent bases, other
shapes, the derivations of `llama-s0`), with two reference bases unrelated to either side, this runs:
- shared-mistakes on cloze items cut from the zoo's own training text (a context, the true next word
  and three other words of the text as choices; a model answers with the choice it finds most likely,
  one next-token log-probability query per item), with the other independent bases as reference models;
- output-agreement of greedy 4-token continuations of generic prompts, against the same reference models;
- logprob-similarity: rank distance of next-token log-probabilities (top 100, as local models give, and
  top 20, as hosted endpoints cap it), one query per prompt and model, against the same references;
- activation-match (MLP neuron matching on activations);
- representation-cka (1 - linear CKA of hidden states, against the same references, jackknife over prompts).
It also reports how many queries each behaviour test needed before p < 1e-6, and what they cost in time.

    python bench/bench_behaviour.py --zoo bench/cache/zoo-quick --out bench/results/behaviour.json
    python bench/bench_behaviour.py --zoo bench/cache/zoo-full-llama --build full-llama \
        --out bench/results/behaviour-full.json

If `--zoo` holds no manifest.json, the zoo named by `--build` is built there first (deterministic and
cached): `quick` (the quick zoo) or `full-llama` (the full zoo's Llama family: 6 bases, 2 other shapes,
every derivation transformers can load of each base; its models are the full zoo's own).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeltrace.backends.cache import CachedBackend, ResponseCache
from modeltrace.backends.local import TransformersBackend
from modeltrace.errors import BackendError
from modeltrace.evidence.base import CompareContext
from modeltrace.evidence.behaviour import OutputAgreementMethod, paired_agreement_test
from modeltrace.evidence.logprobs import LogprobSimilarityMethod
from modeltrace.evidence.representation import ActivationMatchMethod, RepresentationCKAMethod
from modeltrace.model import Model
from modeltrace.probes.mistakes import shared_mistakes
from modeltrace.probes.probeset import ProbeItem
from modeltrace.probes.prompts import generic_prompts

THRESHOLD = 1e-6
LOGPROB_K = (100, 20)
ANCHOR = "llama-s0"
BASE = re.compile(r"^llama-s\d+$")
WORD = re.compile(r"^Ġ[A-Za-z_][A-Za-z_0-9]{2,}$")  # a whole word with its leading space, byte-level BPE


@dataclass
class Loaded:
    """A zoo model run locally, with what it answered and how long each kind of query took."""

    mid: str
    path: Path
    backend: TransformersBackend
    vocab: dict[str, int]
    cloze_s: float = 0.0


def load_models(zoo: Path, manifest: dict[str, Any]) -> tuple[dict[str, Loaded], dict[str, str]]:
    """Every Llama model of the zoo that transformers loads; the others with the reason they were left out."""
    models: dict[str, Loaded] = {}
    skipped: dict[str, str] = {}
    for m in manifest["models"]:
        if m["family"] != "llama":
            continue
        mid, path = m["id"], zoo / m["path"]
        if not (path / "config.json").is_file():
            skipped[mid] = f"not a Hugging Face folder ({m.get('format')})"
            continue
        be = TransformersBackend(path, threads=1)
        try:
            be._load()
        except BackendError as exc:  # recorded: the benchmark reports what it could not run
            skipped[mid] = str(exc).splitlines()[0][:200]
            continue
        models[mid] = Loaded(mid, path, be, be._tok.get_vocab())
    return models, skipped


def zoo_settings(name: str) -> Any:
    """The quick zoo, or the full zoo's Llama family without the files transformers cannot load."""
    from dataclasses import replace

    from modeltrace.benchmark.zoo.settings import DERIVATION_KINDS, FULL, QUICK

    if name == "quick":
        return QUICK
    kinds = tuple(k for k in DERIVATION_KINDS if k not in ("gguf-q8_0", "gguf-q4_k", "onnx-int8", "shell"))
    return replace(FULL, bases={"llama": 6}, derive={"llama": (6, kinds)}, multimodal=False)


def cloze_items(zoo_settings: Any, tokenizer: Any, n: int, seed: int, ctx_tokens: int = 24) -> list[ProbeItem]:
    """`n` cloze items from the zoo's training text: context, the true next word, three other words."""
    from modeltrace.benchmark.zoo.text import load_corpus

    text = load_corpus("main", zoo_settings.main_chars).text
    ids = tokenizer(text[:400_000], add_special_tokens=False)["input_ids"]
    inv = {v: k for k, v in tokenizer.get_vocab().items()}
    words = [i for i in ids if WORD.match(inv.get(i, ""))]
    counts: dict[int, int] = {}
    for i in words:
        counts[i] = counts.get(i, 0) + 1
    pool = sorted(t for t, c in counts.items() if c >= 5)
    weights = np.array([counts[t] for t in pool], dtype=float)
    weights /= weights.sum()
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    items: list[ProbeItem] = []
    seen: set[int] = set()
    while len(items) < n:
        pos = rng.randrange(ctx_tokens, len(ids))
        if pos in seen or ids[pos] not in counts or counts[ids[pos]] < 5:
            continue
        seen.add(pos)
        answer = inv[ids[pos]]
        distract: list[str] = []
        while len(distract) < 3:
            w = inv[int(pool[nrng.choice(len(pool), p=weights)])]
            if w != answer and w not in distract:
                distract.append(w)
        choices = [answer, *distract]
        rng.shuffle(choices)
        prompt = tokenizer.decode(ids[pos - ctx_tokens:pos])
        items.append(ProbeItem(id=f"cloze-{len(items):04d}", prompt=prompt, answer=answer, choices=tuple(choices)))
    return items


def answer_cloze(m: Loaded, items: list[ProbeItem]) -> dict[str, str]:
    """The choice each item's next-token distribution ranks first (items whose choices the vocabulary lacks: none)."""
    t0 = time.perf_counter()
    lp = m.backend.next_token_logprobs([it.prompt for it in items])
    m.cloze_s = (time.perf_counter() - t0) / len(items)
    out: dict[str, str] = {}
    for row, it in zip(lp, items):
        ids = [m.vocab.get(c) for c in it.choices]
        if any(i is None for i in ids):
            continue
        out[it.id] = it.choices[int(np.argmax([row[i] for i in ids]))]
    return out


def first_below(ns: list[int], ps: list[float]) -> int | None:
    return next((n for n, p in zip(ns, ps) if p < THRESHOLD), None)


def mistakes_curve(items: list[ProbeItem], a: dict[str, str], b: dict[str, str],
                   refs: list[dict[str, str]], step: int) -> tuple[list[int], list[float]]:
    ns = list(range(step, len(items) + 1, step))
    return ns, [shared_mistakes(items[:n], a, b, refs).p_value for n in ns]


def agreement_curve(out_a: list[str], out_b: list[str], refs: list[list[str]],
                    step: int) -> tuple[list[int], list[float]]:
    ns = list(range(step, len(out_a) + 1, step))
    ps = []
    for n in ns:
        ps.append(max(paired_agreement_test(x[:n], y[:n], r[:n])
                      for r in refs for x, y in ((out_a, out_b), (out_b, out_a))))
    return ns, ps


def _ancestry(mid: str, truth: dict[str, Any]) -> set[str]:
    """The independent bases a model comes from (its own base, and the other parent of a merge)."""
    out = {m.group(0) for m in [re.match(r"llama-s\d+", mid)] if m}
    other = truth.get("other")
    if isinstance(other, str):
        out.add(other)
    out |= {f"llama-s{k}" for k in re.findall(r"-s(\d+)$", mid)}
    return out


def pair_list(models: dict[str, Loaded], manifest: dict[str, Any], n_refs: int = 2) -> list[dict[str, Any]]:
    """Every manifest pair of two loaded Llama models, with reference bases unrelated to both sides."""
    bases = sorted(m for m in models if BASE.match(m))
    truth = {m["id"]: {} for m in manifest["models"]}
    for p in manifest["pairs"]:
        truth[p["b"]] = {**truth.get(p["b"], {}), **(p.get("truth") or {})}
    pairs = []
    for p in manifest["pairs"]:
        a, b = p["a"], p["b"]
        if a not in models or b not in models:
            continue
        related = _ancestry(a, truth[a]) | _ancestry(b, truth[b]) | {a, b}
        refs = [x for x in bases if x not in related][:n_refs]
        if not refs:
            continue
        pairs.append({"id": p["id"], "a": a, "b": b, "label": p["label"], "kind": p["kind"], "refs": refs})
    return pairs


def _p(x: float | None) -> str:
    return "n/a" if x is None else ("<1e-300" if x <= 1e-300 else f"{x:.2g}")


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _n(n: int | None, q: int | None, sec: float | None) -> str:
    return "not reached" if n is None else f"{n} ({q} queries, {sec:.1f} s)"


METHOD_COLUMNS = (("shared-mistakes", lambda r: r["shared_mistakes"]["p_value"]),
                  ("output-agreement", lambda r: r["output_agreement"]["p_value"]),
                  ("logprob-similarity top 100", lambda r: r["logprob_similarity"]["100"]["p_value"]),
                  ("logprob-similarity top 20", lambda r: r["logprob_similarity"]["20"]["p_value"]),
                  ("activation-match", lambda r: r["activation_match"]["p_value"]),
                  ("representation-cka", lambda r: (r.get("representation_cka") or {}).get("p_value")))


def summary_markdown(result: dict[str, Any]) -> str:
    """Per kind of pair: how many each method called derived (p < 1e-6), of the pairs it could score."""
    kinds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in result["pairs"]:
        key = ("independent", "all") if r["label"] == "independent" else (r["label"], r["kind"])
        kinds.setdefault(key, []).append(r)
    head = ("| pairs | n | " + " | ".join(name for name, _ in METHOD_COLUMNS)
            + " | behaviour alone (Bonferroni over the first three) | top-100 prompts to p<1e-6 (median) |")
    lines = [head, "|" + "---|" * (len(METHOD_COLUMNS) + 4)]
    for (label, kind), rows in sorted(kinds.items(), key=lambda kv: (kv[0][0] != "independent", kv[0])):
        cells = []
        for _, get in METHOD_COLUMNS:
            ps = [p for p in (get(r) for r in rows) if p is not None]
            hit = sum(p < THRESHOLD for p in ps)
            cells.append(f"{hit}/{len(ps)}" + (f" (min p {_p(min(ps))})" if label == "independent" and ps else ""))
        combined = [min(p for p in (get(r) for _, get in METHOD_COLUMNS[:3]) if p is not None) * 3 for r in rows]
        cells.append(f"{sum(c < THRESHOLD for c in combined)}/{len(rows)}")
        need = sorted(r["logprob_similarity"]["100"]["prompts_to_threshold"] for r in rows
                      if r["logprob_similarity"]["100"]["prompts_to_threshold"] is not None)
        med = str(need[len(need) // 2]) if need else "not reached"
        lines.append(f"| {label if label == 'independent' else f'{label}: {kind}'} | {len(rows)} | "
                     + " | ".join(cells) + f" | {med} |")
    ratios = sorted(r["logprob_similarity"]["100"]["ratio"] for r in result["pairs"]
                    if r["label"] == "independent" and r["logprob_similarity"]["100"]["ratio"] is not None)
    note = (f"\nIndependent pairs: smallest largest-ratio of logprob-similarity (top 100) {ratios[0]:.3f}, "
            f"5th percentile {ratios[len(ratios) // 20]:.3f} (the null allows down to 0.90).\n" if ratios else "")
    return "\n".join(lines) + "\n" + note


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks/behaviour.md, from the JSON this script writes."""
    head = ("| pair | truth | shared-mistakes p (reference null) | p (modelled null) | items to p<1e-6 | "
            "output-agreement A-B / refs (A side; B side) of " + str(result["prompts"]) + " | p | prompts to p<1e-6 | "
            "activation-match p | same-index neurons |")
    lines = {"derived": [head, "|" + "---|" * 10], "independent": [head, "|" + "---|" * 10],
             "distilled": [head, "|" + "---|" * 10]}
    for r in result["pairs"]:
        sm, oa, am = r["shared_mistakes"], r["output_agreement"], r["activation_match"]
        stat = am["statistic"]
        lines[r["label"]].append(
            f"| {r['a']} ~ {r['b']} | {r['label']} ({r['kind']}) | {_p(sm['p_value'])} | "
            f"{_p(sm['p_value_structure_null'])} | "
            f"{_n(sm['items_to_threshold'], sm['queries_to_threshold'], sm['seconds_to_threshold'])} | "
            f"{oa['agree']} / {', '.join(map(str, oa['ref_agree']))}; {', '.join(map(str, oa.get('ref_agree_b', [])))} | "
            f"{_p(oa['p_value'])} | "
            f"{_n(oa['prompts_to_threshold'], oa['queries_to_threshold'], oa['seconds_to_threshold'])} | "
            f"{_p(am['p_value'])} | {'n/a' if stat is None else f'{stat:.3f}'} |")
    lp_head = ("| pair | truth | rank distance A-B | closest reference | largest ratio | p (top 100) | "
               "prompts to p<1e-6 (top 100) | p (top 20) | prompts to p<1e-6 (top 20) | CKA | CKA ratio | "
               "representation-cka p |")
    lp_lines = {k: [lp_head, "|" + "---|" * 12] for k in lines}
    for r in result["pairs"]:
        lp = r.get("logprob_similarity")
        if not lp:
            continue
        h, t = lp["100"], lp["20"]
        lp_lines[r["label"]].append(
            f"| {r['a']} ~ {r['b']} | {r['label']} ({r['kind']}) | {_f(h['distance'])} | "
            f"{_f(h['closest_reference'])} | {_f(h['ratio'])} | {_p(h['p_value'])} | "
            f"{_n(h['prompts_to_threshold'], h['queries_to_threshold'], h['seconds_to_threshold'])} | "
            f"{_p(t['p_value'])} | "
            f"{_n(t['prompts_to_threshold'], t['queries_to_threshold'], t['seconds_to_threshold'])} | "
            + (f"{_f(ck['cka'])} | {_f(ck['ratio'])} | {_p(ck['p_value'])} |" if (ck := r.get("representation_cka"))
               else "n/a | n/a | n/a |"))
    out = []
    for label in ("independent", "derived", "distilled"):
        out.append(f"### {label} pairs\n")
        out.append("\n".join(lines[label]) + "\n")
        if len(lp_lines[label]) > 2:
            out.append(f"#### logprob-similarity and representation-cka, {label} pairs\n")
            out.append("\n".join(lp_lines[label]) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--table", type=Path, help="print the Markdown tables of a result JSON and exit")
    ap.add_argument("--zoo", type=Path, default=Path("bench/cache/zoo-quick"))
    ap.add_argument("--build", choices=("quick", "full-llama"), default="quick",
                    help="the zoo to build in --zoo when it has no manifest.json")
    ap.add_argument("--items", type=int, default=600, help="cloze items for shared-mistakes")
    ap.add_argument("--prompts", type=int, default=300, help="generic prompts for output-agreement")
    ap.add_argument("--act-prompts", type=int, default=64, help="prompts for activation-match")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/behaviour.json"))
    args = ap.parse_args(argv)
    if args.table:
        result = json.loads(args.table.read_text(encoding="utf-8"))
        print(summary_markdown(result))
        print(markdown(result))
        return 0
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    manifest_path = args.zoo / "manifest.json"
    if not manifest_path.is_file():
        from modeltrace.benchmark.zoo import build_zoo

        manifest_path = build_zoo(args.zoo, settings=zoo_settings(args.build))
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    from modeltrace.benchmark.zoo import SETTINGS

    settings = SETTINGS["quick" if manifest.get("quick") else "full"]
    models, skipped = load_models(args.zoo, manifest)
    if ANCHOR not in models:
        print(f"{args.zoo}: no loadable {ANCHOR}", file=sys.stderr)
        return 2
    print(f"{len(models)} models load with transformers; left out: {skipped}", file=sys.stderr)

    items = cloze_items(settings, models[ANCHOR].backend._tok, args.items, args.seed)
    cloze = {mid: answer_cloze(m, items) for mid, m in models.items()}
    accuracy = {mid: sum(a.get(it.id) == it.answer for it in items) / len(items) for mid, a in cloze.items()}

    prompts = generic_prompts(args.prompts, seed=args.seed)
    from modeltrace.backends.base import Request

    reqs = [Request(prompt=p, max_tokens=4) for p in prompts]
    cont: dict[str, list[str]] = {}
    gen_s: dict[str, float] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # one response cache per run: every model is asked each prompt once, and the method reads it back
        cache = ResponseCache(Path(tmp) / "responses.sqlite")
        lp_s: dict[tuple[str, int], float] = {}
        for mid, m in models.items():
            t0 = time.perf_counter()
            cont[mid] = [r.text for r in CachedBackend(m.backend, cache).generate(reqs)]
            gen_s[mid] = (time.perf_counter() - t0) / len(reqs)
            for k in LOGPROB_K:  # asked here once (and timed); the method reads the answers back from the cache
                lreqs = [Request(prompt=p, max_tokens=1, top_logprobs=k) for p in prompts]
                t0 = time.perf_counter()
                CachedBackend(m.backend, cache).generate(lreqs)
                lp_s[(mid, k)] = (time.perf_counter() - t0) / len(lreqs)
        for pair in pair_list(models, manifest):
            a, b, refs = pair["a"], pair["b"], pair["refs"]
            row: dict[str, Any] = dict(pair)
            sm = shared_mistakes(items, cloze[a], cloze[b], [cloze[r] for r in refs])
            ns, ps = mistakes_curve(items, cloze[a], cloze[b], [cloze[r] for r in refs], step=20)
            n_sm = first_below(ns, ps)
            per_item_s = sum(models[x].cloze_s for x in (a, b, *refs))
            structural = shared_mistakes(items, cloze[a], cloze[b])
            row["shared_mistakes"] = {
                "p_value": sm.p_value, "null": sm.null,
                "p_value_structure_null": structural.p_value,
                "reference_pairs": sm.reference_pairs, "items": sm.n_items, "a_wrong": sm.a_wrong, "b_wrong": sm.b_wrong,
                "both_wrong": sm.both_wrong, "same_wrong": sm.same_wrong,
                "expected_same_wrong": round(sm.expected_same_wrong, 2),
                "items_to_threshold": n_sm,
                "queries_to_threshold": None if n_sm is None else n_sm * (2 + len(refs)),
                "seconds_to_threshold": None if n_sm is None else round(n_sm * per_item_s, 3)}

            ctx = CompareContext(Model.open(str(models[a].path)), Model.open(str(models[b].path)), seed=args.seed,
                                 options={"behaviour": True, "prompts": args.prompts,
                                          "backend_a": models[a].backend, "backend_b": models[b].backend,
                                          "references": [CachedBackend(models[r].backend, cache) for r in refs],
                                          "cache": str(Path(tmp) / "responses.sqlite")})
            ev = OutputAgreementMethod().run(ctx)
            ns, ps = agreement_curve(cont[a], cont[b], [cont[r] for r in refs], step=10)
            n_oa = first_below(ns, ps)
            per_prompt_s = sum(gen_s[x] for x in (a, b, *refs))
            row["logprob_similarity"] = {}
            for k in LOGPROB_K:
                lctx = CompareContext(ctx.a, ctx.b, seed=args.seed,
                                      options={**ctx.options, "top_logprobs": k, "prompts": args.prompts})
                lev = LogprobSimilarityMethod().run(lctx)
                n_lp = lev.details.get("prompts_needed")
                per_lp_s = sum(lp_s[(x, k)] for x in (a, b, *refs))
                row["logprob_similarity"][str(k)] = {
                    "p_value": lev.p_value, "distance": lev.details.get("distance"), "ratio": lev.details.get("ratio"),
                    "closest_reference": min((t["distance_to_reference"] for t in lev.details.get("tests", [])),
                                             default=None),
                    "prompts_to_threshold": n_lp,
                    "queries_to_threshold": None if n_lp is None else n_lp * (2 + len(refs)),
                    "seconds_to_threshold": None if n_lp is None else round(n_lp * per_lp_s, 3),
                    "verdict": "derived" if lev.p_value is not None and lev.p_value < THRESHOLD else "not derived"}
            row["output_agreement"] = {
                "p_value": ev.p_value, "agree": ev.details["agree"], "prompts": ev.details["prompts"],
                "ref_agree": [r["agree"] for r in ev.details.get("references", []) if r.get("side", "A") == "A"],
                "ref_agree_b": [r["agree"] for r in ev.details.get("references", []) if r.get("side") == "B"],
                "prompts_to_threshold": n_oa,
                "queries_to_threshold": None if n_oa is None else n_oa * (2 + len(refs)),
                "seconds_to_threshold": None if n_oa is None else round(n_oa * per_prompt_s, 3)}

            actx = CompareContext(ctx.a, ctx.b, seed=args.seed,
                                  options={"representation": True, "prompts": args.act_prompts},
                                  shared={"local_a": models[a].backend, "local_b": models[b].backend})
            t0 = time.perf_counter()
            am = ActivationMatchMethod().run(actx)
            row["activation_match"] = {"p_value": am.p_value, "statistic": am.statistic,
                                       "statement": am.statement, "seconds": round(time.perf_counter() - t0, 3)}
            cctx = CompareContext(ctx.a, ctx.b, seed=args.seed,
                                  options={"representation": True, "prompts": args.act_prompts,
                                           "references": [models[r].backend for r in refs]},
                                  shared={"local_a": models[a].backend, "local_b": models[b].backend})
            ck = RepresentationCKAMethod().run(cctx)
            row["representation_cka"] = {"p_value": ck.p_value, "cka": ck.statistic,
                                         "distance": ck.details.get("distance"),
                                         "ratio": max((t["ratio"] for t in ck.details.get("tests", [])
                                                       if t["ratio"] is not None), default=None)}
            for key in ("shared_mistakes", "output_agreement", "activation_match", "representation_cka"):
                p = row[key]["p_value"]
                row[key]["verdict"] = "derived" if p is not None and p < THRESHOLD else "not derived"
            rows.append(row)
            lp100 = row["logprob_similarity"]["100"]
            print(f"{pair['a']} ~ {b} [{pair['label']}/{pair['kind']}]: shared-mistakes p={sm.p_value:.3g} "
                  f"(n*={n_sm}), output-agreement p={ev.p_value:.3g} (n*={n_oa}), "
                  f"logprob-similarity p={_p(lp100['p_value'])} (n*={lp100['prompts_to_threshold']}), "
                  f"activation-match p={am.p_value if am.p_value is not None else float('nan'):.3g}",
                  file=sys.stderr)
        cache.close()

    result = {
        "schema": "modeltrace.bench-behaviour/1", "zoo": str(args.zoo), "zoo_quick": manifest.get("quick"),
        "seed": args.seed, "threshold": THRESHOLD, "items": args.items, "prompts": args.prompts,
        "act_prompts": args.act_prompts, "python": platform.python_version(), "torch": torch.__version__,
        "accuracy": accuracy, "skipped_models": skipped,
        "seconds_per_query": {"cloze": {k: round(m.cloze_s, 5) for k, m in models.items()},
                              "greedy_4_tokens": {k: round(v, 5) for k, v in gen_s.items()},
                              **{f"next_token_top{k}": {mid: round(v, 5) for (mid, kk), v in lp_s.items() if kk == k}
                                 for k in LOGPROB_K}},
        "pairs": rows, "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} in {result['wall_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
