"""From result rows to the benchmark's summary: one canonical JSON, and Markdown plus PNGs derived from it.

Every number in the Markdown is read from `summary.json`, which is computed from the JSONL rows the
runner wrote; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from statistics import median
from typing import Any

from modeltrace.benchmark import metrics as mt
from modeltrace.benchmark.plots import qq_plot, roc_plot

SCHEMA = "modeltrace.bench/1"
FPR_TARGETS = (0.01, 0.001)
MISSING_SCORE = -2.0  # a baseline or peer that gave no score ranks below any score it can give
BASELINE_ABOUT = {
    "weight-spread": "per-layer std correlation (Yoon et al. 2025, arXiv:2507.03014)",
    "cka": "linear CKA of representations of the same inputs: last hidden state where both load as zoo "
           "torch modules, token embeddings otherwise (REEF, Zhang et al. ICLR 2025)",
}

Row = dict[str, Any]
# Derivation kinds by difficulty, so that casts and exports (which any tool catches) are not counted
# together with the hard cases
TIERS: dict[str, tuple[str, ...]] = {
    "format (cast, quantize, export, rename)": ("cast", "quantize-int8", "gguf-q8_0", "gguf-q4_k", "onnx-int8",
                                                "shell", "multimodal-shell", "multi-network-renamed"),
    "reparametrised (permute, rotate)": ("permute", "rotate"),
    "trained (fine-tune, LoRA, merge, vocabulary)": (
        "finetune", "lora", "continued-pretrain", "merge-linear", "merge-slerp", "merge-task-arithmetic",
        "vocab-extend", "vocab-prune", "real-finetune", "real-lora"),
    "noised": ("noise", "real-noise", "real-rotate-noise"),
    "shape-changing (layers, width, experts)": ("layer-drop", "width-prune", "depth-upscale", "upcycle-moe",
                                                "distill-pruned-init"),
    "strength ladders": ("power-noise", "power-rotate-noise", "power-finetune", "power-width-prune",
                         "power-width-prune-healed"),
}


def tier_of(kind: str) -> str:
    """The difficulty tier of a derivation kind ("other" when none lists it)."""
    return next((t for t, kinds in TIERS.items() if kind in kinds), "other")


PEER_SUBSCORES = {  # weight sub-scores each peer reports, as paths into its row's details
    "provenancekit": ("scores.identity_score", "signals.eas", "signals.nlf", "signals.lep", "signals.end",
                      "signals.wvc"),
    "modeldna": ("features.sigma_r", "features.vector_cos", "features.pcs_cos", "features.spectra_r"),
}


# --- per-detector views of a row ----------------------------------------------------------------------

class Detector:
    """One column of the comparison: how it scores a pair, and whether it calls the pair derived."""

    def __init__(self, name: str, family: str, score: Callable[[Row], float],
                 detected: Callable[[Row], bool] | None, pvalue: Callable[[Row], float | None] | None = None,
                 note: str = "", powered: Callable[[Row], bool] | None = None) -> None:
        self.name, self.family, self.score, self.detected, self.pvalue, self.note = (
            name, family, score, detected, pvalue, note)
        self.powered = powered or (lambda row: True)


def _method_powered(method: str) -> Callable[[Row], bool]:
    def get(row: Row) -> bool:
        e = (row.get("evidence") or {}).get(method)
        return bool(e and e.get("status") == "ok" and e.get("powered", True))
    return get


def calibration_sample(rows: Sequence[Row], roots: Mapping[str, str] | None,
                       keep: Callable[[Row], bool]) -> list[Row]:
    """One independent pair per pair of independent training runs, among the rows `keep` accepts.

    The zoo reuses each pair of training runs in many pairs (a base against every derivation of
    another base, as controls); those p-values are copies of one draw, not independent draws, and
    a uniformity test needs independent draws. Tests without power (nothing comparable) say nothing
    about calibration and are left out.
    """
    seen: set[frozenset[str]] = set()
    out: list[Row] = []
    for r in rows:
        if not keep(r):
            continue
        a, b = str(r.get("a")), str(r.get("b"))
        key = frozenset({(roots or {}).get(a, a), (roots or {}).get(b, b)})
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def _method_p(method: str) -> Callable[[Row], float | None]:
    def get(row: Row) -> float | None:
        e = (row.get("evidence") or {}).get(method)
        if not e or e.get("status") != "ok":
            return None
        p = e.get("p_value")
        return None if p is None else float(p)
    return get


def _clean(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _detectors(methods: Sequence[str], rows: Sequence[Row], peers: Mapping[str, Mapping[str, Any]],
               threshold: float) -> list[Detector]:
    dets: list[Detector] = []
    def combined_p(r: Row) -> float | None:
        return _clean(r.get("p_value")) if r.get("verdict") else None

    def combined_score(r: Row) -> float:
        return mt.p_score(combined_p(r))

    def combined_detected(r: Row) -> bool:
        return r.get("verdict") == "derived"

    def combined_powered(r: Row) -> bool:
        return any(e.get("status") == "ok" and e.get("powered") and e.get("p_value") is not None
                   for e in (r.get("evidence") or {}).values())

    dets.append(Detector("combined", "modeltrace", combined_score, combined_detected, combined_p,
                         note="Bonferroni over the methods that ran; verdict 'derived' when p < threshold",
                         powered=combined_powered))
    for m in methods:
        get = _method_p(m)
        def below(r: Row, g: Callable[[Row], float | None] = get) -> bool:
            p = g(r)
            return p is not None and p < threshold

        def score(r: Row, g: Callable[[Row], float | None] = get) -> float:
            return mt.p_score(g(r))

        dets.append(Detector(m, "modeltrace method", score, below, get, powered=_method_powered(m)))
    negatives = [r for r in rows if r.get("label") == "independent"]
    for b in ("weight-spread", "cka"):
        def bscore(r: Row, b: str = b) -> float:
            s = _clean(((r.get("baselines") or {}).get(b) or {}).get("statistic"))
            return MISSING_SCORE if s is None else s
        neg_scores = [bscore(r) for r in negatives]
        t = mt.score_threshold_at_fpr(neg_scores, 0.01)

        def bdet(r: Row, f: Callable[[Row], float] = bscore, t: float | None = t) -> bool:
            return t is not None and f(r) > t

        dets.append(Detector(b, "published baseline", bscore, bdet,
                             note=f"{BASELINE_ABOUT[b]}; threshold {t if t is None else round(t, 4)} = the score "
                                  "giving <= 1% FPR on these same independent pairs (in-sample)"))
    for name, entry in peers.items():
        if entry.get("error"):
            continue
        prow = {r["pair"]: r for r in entry.get("rows", [])}

        def pscore(r: Row, prow: Mapping[str, Row] = prow) -> float:
            s = _clean((prow.get(r["pair"]) or {}).get("score"))
            return MISSING_SCORE if s is None else s

        def pdet(r: Row, prow: Mapping[str, Row] = prow) -> bool:
            return bool((prow.get(r["pair"]) or {}).get("detected"))

        dets.append(Detector(name, "peer", pscore, pdet,
                             note=f"{entry.get('package')} {entry.get('version')}: derived = "
                                  + " / ".join(entry.get("positive", []))))
        for sub in PEER_SUBSCORES.get(name, ()):
            def sscore(r: Row, prow: Mapping[str, Row] = prow, sub: str = sub) -> float:
                s = _clean(_dig((prow.get(r["pair"]) or {}).get("details") or {}, sub))
                return MISSING_SCORE if s is None else s

            dets.append(Detector(f"{name}:{sub.split('.')[-1]}", "peer sub-score", sscore, None,
                                 note=f"{name}'s {sub} (a score without a verdict of its own)"))
    return dets


def _dig(d: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


# --- the summary -------------------------------------------------------------------------------------

def _detector_metrics(d: Detector, pos: Sequence[Row], neg: Sequence[Row], dist: Sequence[Row],
                      threshold: float, roots: Mapping[str, str] | None = None) -> dict[str, Any]:
    ps, ns = [d.score(r) for r in pos], [d.score(r) for r in neg]
    det = d.detected

    def count(rows: Sequence[Row]) -> int | None:
        return None if det is None else sum(det(r) for r in rows)

    out: dict[str, Any] = {
        "family": d.family, "note": d.note,
        "auroc": mt.auroc(ps, ns),
        "operating_points": [mt.tpr_at_fpr(ps, ns, f).to_json() for f in FPR_TARGETS],
        "false_positives": count(neg), "n_independent": len(neg),
        "detected": count(pos), "n_derived": len(pos),
        "distilled_called_derived": count(dist), "n_distilled": len(dist),
    }
    if d.pvalue is not None:
        pvalue = d.pvalue
        sample = calibration_sample(neg, roots, lambda r: d.powered(r) and pvalue(r) is not None)
        pv = [pvalue(r) for r in sample]
        out["ks_uniform"] = mt.ks_uniform(pv).to_json()
        out["n_independent_tested"] = sum(pvalue(r) is not None for r in neg)
        out["n_calibration_draws"] = len(sample)
        out["derived_below_threshold"] = sum(1 for r in pos if (p := d.pvalue(r)) is not None and p < threshold)
    return out


def _timing(rows: Sequence[Row]) -> dict[str, Any]:
    def stats(vals: list[float]) -> dict[str, float | int | None]:
        return {"n": len(vals), "median": round(median(vals), 3) if vals else None,
                "max": round(max(vals), 3) if vals else None}
    ok = [r for r in rows if not r.get("error")]
    by_kind: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in ok}):
        sub = [r for r in ok if r["kind"] == kind]
        by_kind[kind] = {"compare_s": stats([r["compare_s"] for r in sub if r.get("compare_s") is not None]),
                         "peak_rss_mib": stats([r["peak_rss_mib"] for r in sub if r.get("peak_rss_mib") is not None])}
    return {
        "compare_s": stats([r["compare_s"] for r in ok if r.get("compare_s") is not None]),
        "wall_s": stats([r["wall_s"] for r in ok if r.get("wall_s") is not None]),
        "wall_s_total": round(sum(r.get("wall_s") or 0.0 for r in rows), 1),
        "peak_rss_mib": stats([r["peak_rss_mib"] for r in ok if r.get("peak_rss_mib") is not None]),
        "start_rss_mib": stats([r["start_rss_mib"] for r in ok if r.get("start_rss_mib") is not None]),
        "by_kind": by_kind,
    }


def summarize(rows: Sequence[Row], *, real_rows: Sequence[Row] = (), real_skipped: str | None = None,
              peers: Mapping[str, Mapping[str, Any]] | None = None, methods: Sequence[str] = (),
              threshold: float = mt.DEFAULT_THRESHOLD, meta: Mapping[str, Any] | None = None,
              roots: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The canonical benchmark summary (schema modeltrace.bench/1); `roots` maps each model to the
    training run it comes from, so calibration counts each pair of independent runs once."""
    peers = peers or {}
    pos = [r for r in rows if r.get("label") == "derived"]
    neg = [r for r in rows if r.get("label") == "independent"]
    dist = [r for r in rows if r.get("label") == "distilled"]
    dets = _detectors(methods, rows, peers, threshold)
    per = {d.name: _detector_metrics(d, pos, neg, dist, threshold, roots) for d in dets}

    detection = mt.detection_table(
        (r["kind"], d.name, d.detected(r)) for r in pos + dist for d in dets if d.detected is not None)
    by_tier = mt.detection_table(
        (tier_of(r["kind"]), d.name, d.detected(r)) for r in pos for d in dets if d.detected is not None)
    diag_rows = [(r["kind"], mt.diagnosis_checks(r.get("truth") or {}, r.get("transforms") or []))
                 for r in pos if not r.get("error")]
    diag_by_kind: dict[str, Any] = {}
    for kind in sorted({k for k, c in diag_rows if c}):
        diag_by_kind[kind] = mt.accuracy(c for k, c in diag_rows if k == kind)

    for m in methods:  # how often each method ran, and why it did not
        statuses: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for r in rows:
            e = (r.get("evidence") or {}).get(m)
            st = e.get("status", "missing") if e else "missing"
            statuses[st] = statuses.get(st, 0) + 1
            if e and st != "ok":
                reasons[str(e.get("statement"))[:160]] = reasons.get(str(e.get("statement"))[:160], 0) + 1
        per[m]["statuses"] = statuses
        per[m]["top_reasons"] = sorted(reasons, key=lambda k: -reasons[k])[:2]
        per[m]["gave_p_values"] = any(_method_p(m)(r) is not None for r in rows)
    comb = per["combined"]
    ks_methods = {m: per[m]["ks_uniform"] for m in methods if per[m]["ks_uniform"]["p_value"] is not None}
    targets = {
        "zero_false_positives": {
            "met": comb["false_positives"] == 0 and len(neg) > 0,
            "value": f"{comb['false_positives']} of {len(neg)} independent pairs called derived"},
        "detect_all_weight_sharing": {
            "met": bool(pos) and comb["derived_below_threshold"] == len(pos),
            "value": f"{comb['derived_below_threshold']} of {len(pos)} derived pairs with combined p < {threshold:g}"},
        "uniform_p_values": {
            "met": bool(ks_methods) and all(v["p_value"] > 0.05 for v in ks_methods.values()),
            "value": ", ".join(f"{m}: KS p {v['p_value']:.3g} (n={v['n']})" for m, v in ks_methods.items())
                     or "no method gave p-values on two or more independent pairs"},
        "distillation_separate": {
            "met": True, "value": f"{len(dist)} distilled pairs, excluded from derived and independent"},
    }
    errors = [{"pair": r["pair"], "error": r["error"]} for r in list(rows) + list(real_rows) if r.get("error")]
    peer_summary = {name: {k: v for k, v in e.items() if k != "rows"} | {
        "errors": sum(1 for r in e.get("rows", []) if r.get("error")),
        "first_errors": sorted({str(r.get("error"))[:200] for r in e.get("rows", []) if r.get("error")})[:3]}
        for name, e in peers.items()}
    real = []
    for r in real_rows:
        real.append({k: r.get(k) for k in ("pair", "a", "b", "label", "kind", "verdict", "p_value", "reason",
                                           "error", "compare_s", "peak_rss_mib")}
                    | {"methods": {m: _method_p(m)(r) for m in methods},
                       "baselines": {b: ((r.get("baselines") or {}).get(b) or {}).get("statistic")
                                     for b in ("weight-spread", "cka")},
                       "peers": {n: next(({"verdict": pr.get("verdict"), "score": pr.get("score"),
                                           "error": pr.get("error")} for pr in e.get("rows", [])
                                          if pr["pair"] == r["pair"]), None) for n, e in peers.items()}})
    return {
        "schema": SCHEMA, "meta": dict(meta or {}), "threshold": threshold,
        "counts": {"derived": len(pos), "independent": len(neg), "distilled": len(dist), "errors": len(errors)},
        "detectors": per, "detection_by_kind": detection, "detection_by_tier": by_tier,
        "diagnosis": {"overall": mt.accuracy(c for _, c in diag_rows), "by_kind": diag_by_kind},
        "timing": _timing(rows), "targets": targets, "errors": errors, "peers": peer_summary,
        "realmodels": {"skipped": real_skipped, "pairs": real},
        "_series": {  # for the plots; dropped from summary.json
            "qq": {d.name: [p for r in calibration_sample(neg, roots, d.powered) if (p := d.pvalue(r)) is not None]
                   for d in dets if d.pvalue and d.family.startswith("modeltrace")},
            "roc": {d.name: ([d.score(r) for r in pos], [d.score(r) for r in neg]) for d in dets
                    if d.family != "peer sub-score" and per[d.name].get("gave_p_values") is not False},
        },
    }


# --- writing -----------------------------------------------------------------------------------------

def write(summary: dict[str, Any], out: Path, docs: Path | None) -> dict[str, Path]:
    """summary.json under `out`; Markdown at `docs` (default `out/lineage.md`) with PNGs in `img/` beside it."""
    series = summary.pop("_series", {})
    out.mkdir(parents=True, exist_ok=True)
    docs = docs or out / "lineage.md"
    img = docs.parent / "img"
    figs: dict[str, Path] = {}
    prefix = docs.stem + "-"  # one report's plots never overwrite another's
    if (q := qq_plot(series.get("qq", {}), img / f"{prefix}qq.png",
                     "p-values on independent pairs")) is not None:
        figs["qq"] = q
    if (r := roc_plot(series.get("roc", {}), img / f"{prefix}roc.png", "derived vs independent")) is not None:
        figs["roc"] = r
    summary["figures"] = {k: os.path.relpath(v, docs.parent) for k, v in figs.items()}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(out / "summary.json")
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(summary), encoding="utf-8")
    return {"summary": out / "summary.json", "docs": docs, **figs}


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
            return f"{x:.2e}"
        return f"{x:.{digits}g}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c.replace("|", "\\|") for c in row) + " |"
              for row in rows]
    return "\n".join(lines)


def _peer_cell(pr: Mapping[str, Any] | None) -> str:
    if pr is None:
        return "–"
    return str(pr.get("verdict") or f"error: {str(pr.get('error'))[:90]}")


def markdown(s: Mapping[str, Any]) -> str:
    """The report page, derived from the summary only."""
    m, c = s["meta"], s["counts"]
    out: list[str] = ["# Lineage benchmark" + (" (quick subset)" if m.get("quick") else ""), ""]
    out += ["Produced by:", "", "```", str(m.get("command")), "```", "",
            (f"{m.get('tool')}, Python {m.get('python')}, git {m.get('git') or 'unknown'}, seed {m.get('seed')}, "
            f"started {m.get('started')} UTC, {m.get('wall_s')} s. Pairs: {c['derived']} derived, "
            f"{c['independent']} independent, {c['distilled']} distilled; {c['errors']} errors. "
            f"Threshold {s['threshold']:g}. Methods: {', '.join(m.get('methods') or []) or 'none registered'}."), ""]
    out += ["## Targets", ""]
    names = {"zero_false_positives": "Zero false positives among independent pairs at the default threshold",
             "detect_all_weight_sharing": "100% of weight-sharing derivations detected with p < 1e-6",
             "uniform_p_values": "p-values on independent pairs uniform (KS p > 0.05, each method)",
             "distillation_separate": "Distillation reported separately"}
    out.append(_table(["target", "met", "measured"],
                      [[names[k], "**met**" if v["met"] else "**not met**", v["value"]]
                       for k, v in s["targets"].items()]))
    out += ["", ("Calibration (the KS column and the QQ plot) uses one independent pair per pair of independent "
            "training runs, and only tests that had power: the zoo reuses each pair of training runs in many "
            "pairs (a base against every derivation of another base), and those p-values are copies of one "
            "draw, not independent draws. The combined p-value is a Bonferroni bound, conservative by design, "
            "so the uniformity target is judged per method; the combined row's KS p is shown for completeness."),
            ""]
    out += ["## Per method and combined", ""]
    rows = []
    silent = {n: d for n, d in s["detectors"].items() if d.get("gave_p_values") is False}
    for name, d in s["detectors"].items():
        if name in silent:
            continue
        op1, op01 = d["operating_points"]
        ks = d.get("ks_uniform") or {}
        def frac(k: str, n: str, d: Mapping[str, Any] = d) -> str:
            return "–" if d[k] is None else f"{d[k]}/{d[n]}"

        rows.append([name, d["family"], d["auroc"], op1["tpr"], op01["tpr"],
                     frac("false_positives", "n_independent"), frac("detected", "n_derived"),
                     ks.get("p_value"), frac("distilled_called_derived", "n_distilled")])
    out.append(_table(["detector", "kind", "AUROC", "TPR@1% FPR", "TPR@0.1% FPR", "FP at default",
                       "detected at default", "KS p (independent)", "distilled called derived"], rows))
    n_neg = c["independent"]
    out += ["", (f"With {n_neg} independent pairs, an FPR of 1% is resolvable only from 100 pairs and 0.1% from "
            "1000; below that the TPR columns are the TPR at zero false positives on these pairs. Scores: -log10 p "
            "for modeltrace; the statistic for baselines; the peer's own score (pipeline score, probability)."),
            ""]
    notes = [f"- **{n}**: {d['note']}" for n, d in s["detectors"].items() if d.get("note")]
    out += notes + [""]
    if silent:
        out += [("Methods that gave no p-value on any pair (descriptive, or not run), with how often they ran "
                "and the commonest reason they did not:"), ""]
        out += [f"- {n}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.get("statuses", {}).items()))
                + ("; " + " / ".join(f"\"{r}\"" for r in d.get("top_reasons", [])) if d.get("top_reasons") else "")
                for n, d in silent.items()]
        out.append("")
    figs = s.get("figures", {})
    for key, cap in (("qq", "QQ plot of p-values on independent pairs"), ("roc", "ROC curves")):
        if key in figs:
            out += [f"![{cap}]({figs[key]})", ""]
    out += ["## Detection by derivation kind", ""]
    kinds = s["detection_by_kind"]
    dets = [d for d in s["detectors"] if any(d in v for v in kinds.values())
            and s["detectors"][d].get("gave_p_values") is not False]
    out.append(_table(["kind"] + dets, [[k] + [f"{kinds[k][d]['detected']}/{kinds[k][d]['n']}" if d in kinds[k] else "–"
                                                for d in dets] for k in sorted(kinds)]))
    tiers = s.get("detection_by_tier") or {}
    if tiers:
        out += ["", "Derived pairs by difficulty (each kind above belongs to one tier):", ""]
        out.append(_table(["tier", "kinds"] + dets,
                          [[t, ", ".join(sorted({k for k in kinds if tier_of(k) == t})) or "–"]
                           + [f"{tiers[t][d]['detected']}/{tiers[t][d]['n']}" if d in tiers[t] else "–" for d in dets]
                           for t in list(TIERS) + ["other"] if t in tiers]))
    out += ["", ("Distillation rows are students trained on a teacher's outputs: they share behaviour but no "
            "weights, so a weight method calling them derived is a false attribution; they are counted in "
            "neither the derived nor the independent columns above."), ""]
    out += ["## Diagnosis accuracy", ""]
    diag = s["diagnosis"]
    if diag["overall"]:
        out.append(_table(["derivation kind", "diagnosis", "correct", "checked"],
                          [[kind, k, v["correct"], v["checked"]] for kind, cells in diag["by_kind"].items()
                           for k, v in cells.items()]
                          + [["**all**", k, v["correct"], v["checked"]] for k, v in diag["overall"].items()]))
        out += ["", ("Noise sigma within 30%, exactly the dropped layers, LoRA rank within 2, merge coefficient "
                "within 0.1, read from the compare result's transforms."), ""]
    else:
        out += ["No derived pair recorded a truth that a diagnosis could be checked against.", ""]
    t = s["timing"]
    out += ["## Time and memory per pair", "",
            (f"Sum of the per-pair wall times: {t.get('wall_s_total')} s (a rerun of the command reuses the pairs "
            "already in pairs.jsonl, so the run time above can be shorter)."), ""]
    out.append(_table(["measure", "pairs", "median", "max"],
                      [[k, t[k]["n"], t[k]["median"], t[k]["max"]] for k in
                       ("compare_s", "wall_s", "peak_rss_mib", "start_rss_mib")]))
    out += ["", ("compare_s: time inside `compare`; wall_s: including the child process start; peak_rss_mib: the "
            "child's resident-memory high-water mark (ru_maxrss) after compare, one fresh process per pair; "
            "start_rss_mib: the same mark before the models were opened (interpreter and imports)."), ""]
    out += ["## Peers", ""]
    for name, p in s["peers"].items():
        status = f"failed to install: {p['error']}" if p.get("error") else (
            f"ran; {p['errors']} pair(s) errored" + (f" (e.g. {p['first_errors'][0]})" if p['first_errors'] else ""))
        out.append(f"- **{name}** ({p['package']} {p['version']}): {p['about']}. {status}.")
    if not s["peers"]:
        out.append("Peers were not run (quick mode without --peers, or --no-peers).")
    out += ["", "## Real models", ""]
    real = s["realmodels"]
    if real["pairs"]:
        mnames = sorted({k for r in real["pairs"] for k, v in r["methods"].items() if v is not None})
        pnames = sorted({k for r in real["pairs"] for k in r["peers"]})
        rows = []
        for r in real["pairs"]:
            rows.append([r["pair"], r["label"], r.get("verdict") or f"error: {r.get('error')}", r.get("p_value")]
                        + [r["methods"].get(mm) for mm in mnames]
                        + [r["baselines"].get("weight-spread"), r["baselines"].get("cka")]
                        + [_peer_cell(r["peers"].get(pn)) for pn in pnames])
        out.append(_table(["pair", "label", "verdict", "p"] + [f"p {mm}" for mm in mnames]
                          + ["weight-spread r", "CKA"] + pnames, rows))
        out += ["", ("Method columns: p-values of the methods that gave one on some real pair; peer columns: the "
                "peer's verdict, or its error shortened (the full text is in summary.json).")]
    else:
        out.append(f"Skipped: {real['skipped']}.")
    if s["errors"]:
        out += ["", "## Errors", ""]
        out += [f"- {e['pair']}: {e['error']}" for e in s["errors"][:50]]
    return "\n".join(out) + "\n"
