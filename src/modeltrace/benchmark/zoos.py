"""The tuning and held-out benchmarks side by side, each method's claimed level against the measured one,
and the power curves: one page derived from each zoo's summary.json and result rows.

The tuning zoo is the one every threshold, gate and rule was tuned on; the held-out zoos (fresh seeds,
widths, learning rate and text; a family of realistic size; derivations of a real model) were built after.
A rule that changes re-runs every zoo: the page is only meaningful when all columns come from one tree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from modeltrace.benchmark import metrics as mt
from modeltrace.benchmark import power
from modeltrace.benchmark.report import TIERS, calibration_sample, tier_of

Row = dict[str, Any]
LABELS = {"tuning": "tuning", "heldout": "held-out", "scale": "held-out, scale", "real": "held-out, real model"}
TAIL_LEVELS = (0.1, 0.01, 0.001)


def _frac(d: Mapping[str, Any], k: str, n: str) -> str:
    return "–" if d.get(k) is None else f"{d[k]}/{d[n]}"


def _p(row: Row, method: str) -> float | None:
    e = (row.get("evidence") or {}).get(method)
    if not e or e.get("status") != "ok" or e.get("p_value") is None:
        return None
    return float(e["p_value"])


def _powered(row: Row, method: str) -> bool:
    e = (row.get("evidence") or {}).get(method)
    return bool(e and e.get("status") == "ok" and e.get("powered", True))


def _usable(method: str) -> Callable[[Row], bool]:
    return lambda r: _powered(r, method) and _p(r, method) is not None


def claimed_vs_measured(rows: Sequence[Row], methods: Sequence[str], threshold: float,
                        roots: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Per method: the level it claims (a p below t on an independent pair has probability at most t) against
    the fraction measured on independent pairs, with exact 95% intervals, at the threshold and in the tail
    levels that these pair counts can see."""
    neg = [r for r in rows if r.get("label") == "independent" and not r.get("error")]
    out = []
    for m in ["combined", *methods]:
        if m == "combined":
            sample = calibration_sample(neg, roots, lambda r: r.get("p_value") is not None)
            ps = [float(r["p_value"]) for r in sample]
            called = sum(1 for r in neg if r.get("verdict") == "derived")
            tested = len(neg)
        else:
            sample = calibration_sample(neg, roots, _usable(m))
            ps = [p for r in sample if (p := _p(r, m)) is not None]
            tested = sum(1 for r in neg if _p(r, m) is not None)
            called = sum(1 for r in neg if (p := _p(r, m)) is not None and p < threshold)
        if not tested:
            continue
        levels = []
        for lvl in (threshold, *TAIL_LEVELS):
            k = sum(1 for p in ps if p < lvl)
            lo, hi = mt.clopper_pearson(k, len(ps))
            levels.append({"level": lvl, "below": k, "n": len(ps), "ci95": [lo, hi],
                           "consistent": lo <= lvl})
        lo, hi = mt.clopper_pearson(called, tested)
        out.append({"method": m, "tested": tested, "called_derived": called, "fpr_ci95": [lo, hi],
                    "calibration_draws": len(ps), "levels": levels})
    return out


def _levels_cell(entry: Mapping[str, Any], lvl: float) -> str:
    c = next((x for x in entry["levels"] if x["level"] == lvl), None)
    if c is None or not c["n"]:
        return "–"
    lo, hi = c["ci95"]
    flag = "" if c["consistent"] else " **above**"
    return f"{c['below']}/{c['n']} [{lo:.2g}, {hi:.2g}]{flag}"


def markdown(summaries: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Sequence[Row]],
             roots: Mapping[str, Mapping[str, str]], commands: Sequence[str], threshold: float,
             power_img: str | None) -> str:
    zoos = list(summaries)
    head = [LABELS.get(z, z) for z in zoos]
    out = ["# Lineage benchmark: tuning and held-out zoos side by side", "",
           "Produced by:", "", "```", *commands, "```", ""]
    for z in zoos:
        m = summaries[z]["meta"]
        out.append(f"- **{LABELS.get(z, z)}** (`{z}`): manifest `{m.get('manifest')}`, {m.get('tool')}, git "
                   f"{m.get('git') or 'unknown'}, started {m.get('started')} UTC, {m.get('wall_s')} s"
                   f"{', quick sizes' if m.get('quick') else ''}"
                   + (f"; **{m['pairs_planned'] - m['pairs_reported']} of {m['pairs_planned']} pairs not run**"
                      if m.get("pairs_planned", 0) > m.get("pairs_reported", 0) else
                      f"; all {m.get('pairs_planned', '?')} pairs") + ".")
    out += ["", ("The tuning zoo is the one every threshold, gate and rule was tuned on. The held-out zoos were "
            "built after the rules were frozen: fresh seeds, other widths and learning rate, bases trained on "
            "other standard-library packages interleaved with English prose and fine-tuned on prose "
            "(`--zoo heldout`); a Llama family of hidden 256, 6 layers and an 8,192-token vocabulary "
            "(`--zoo scale`); and derivations of SmolLM2-135M (`--zoo real`). Any later change of a rule re-runs "
            "every column."), ""]
    out += ["## Headline figures", "", "| measure | " + " | ".join(head) + " |", "|---|" + "---|" * len(zoos)]

    def line(name: str, cells: list[str]) -> None:
        out.append(f"| {name} | " + " | ".join(cells) + " |")

    line("derived / independent / distilled pairs", [
        f"{s['counts']['derived']} / {s['counts']['independent']} / {s['counts']['distilled']}"
        for s in summaries.values()])
    line("pairs that ended in an error", [str(s["counts"]["errors"]) for s in summaries.values()])
    methods = sorted({m for s in summaries.values() for m, d in s["detectors"].items()
                      if d.get("family", "").startswith("modeltrace") and d.get("gave_p_values") is not False})
    methods = ["combined"] + [m for m in methods if m != "combined"]
    for m in methods:
        line(f"{m}: false positives among independent pairs",
             [_frac(s["detectors"].get(m, {}), "false_positives", "n_independent") for s in summaries.values()])
    for m in methods:
        line(f"{m}: derived pairs detected",
             [_frac(s["detectors"].get(m, {}), "detected", "n_derived") for s in summaries.values()])
    line("combined: distilled pairs called derived",
         [_frac(s["detectors"]["combined"], "distilled_called_derived", "n_distilled") for s in summaries.values()])
    for m in methods:
        line(f"{m}: AUROC", ["–" if (a := s["detectors"].get(m, {}).get("auroc")) is None else f"{a:.3g}"
                              for s in summaries.values()])
    out.append("")
    out += ["## Detection by difficulty (combined verdict)", "", "| tier | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(zoos)]
    for t in [*TIERS, "other"]:
        cells = []
        for s in summaries.values():
            c = (s.get("detection_by_tier") or {}).get(t, {}).get("combined")
            cells.append("–" if c is None else f"{c['detected']}/{c['n']}")
        if any(c != "–" for c in cells):
            line(t, cells)
    out += ["", "## Detection by derivation kind (combined verdict)", "",
            "| kind | tier | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(zoos)]
    kinds = sorted({k for s in summaries.values() for k in s["detection_by_kind"]})
    for k in kinds:
        cells = []
        for s in summaries.values():
            c = s["detection_by_kind"].get(k, {}).get("combined")
            cells.append("–" if c is None else f"{c['detected']}/{c['n']}")
        out.append(f"| {k} | {tier_of(k)} | " + " | ".join(cells) + " |")
    out += ["", ("Distilled kinds (students that share no weights) count as detected when called derived, which "
            "for them is a false attribution."), ""]
    out += ["## Calibration on independent pairs", "", "| method | " + " | ".join(head) + " |",
            "|---|" + "---|" * len(zoos)]
    for m in methods:
        cells = []
        for s in summaries.values():
            ks = (s["detectors"].get(m) or {}).get("ks_uniform") or {}
            cells.append("–" if ks.get("p_value") is None else f"KS p {ks['p_value']:.3g} (n={ks.get('n')})")
        line(m, cells)
    out += ["", ("One independent pair per pair of independent training runs, powered tests only (as in each "
            "zoo's own page)."), ""]
    out += ["## Claimed level against measured", "",
            (f"A test that claims its p-values are valid claims that on an independent pair P(p < t) <= t. Below: "
             f"independent pairs called derived at t = {threshold:g} with an exact 95% interval for the false "
             "positive rate, and, on the calibration draws, how many p-values fell below each level with an exact "
             "95% interval; **above** marks an interval whose lower end exceeds the level (the test is "
             "anti-conservative there). Levels far below 1/n cannot be seen with n draws."), ""]
    out += ["| zoo | method | called derived (FPR 95% CI) | " + " | ".join(
        f"p < {lvl:g}" for lvl in (threshold, *TAIL_LEVELS)) + " |", "|---|---|---|" + "---|" * (1 + len(TAIL_LEVELS))]
    for z in zoos:
        ms = [m for m in summaries[z]["meta"].get("methods") or []]
        for e in claimed_vs_measured(rows[z], ms, threshold, roots.get(z)):
            lo, hi = e["fpr_ci95"]
            out.append(f"| {LABELS.get(z, z)} | {e['method']} | {e['called_derived']}/{e['tested']} "
                       f"[{lo:.2g}, {hi:.2g}] | " + " | ".join(_levels_cell(e, lvl)
                                                               for lvl in (threshold, *TAIL_LEVELS)) + " |")
    out += ["", "## Power curves", ""]
    ms_all = sorted({m for z in zoos for m in summaries[z]["meta"].get("methods") or []})
    cl = power.curves(rows, ms_all, threshold)
    if power_img:
        out += [f"![power curves]({power_img})", ""]
    out += power.markdown(cl, threshold)
    return "\n".join(out) + "\n"


def write(summaries: Mapping[str, Mapping[str, Any]], rows: Mapping[str, Sequence[Row]],
          roots: Mapping[str, Mapping[str, str]], commands: Sequence[str], threshold: float, docs: Path,
          power_docs: Path | None = None) -> list[Path]:
    """The side-by-side page at `docs`, its power figure in `img/` beside it, and (optionally) the power
    curves alone at `power_docs`."""
    ms_all = sorted({m for s in summaries.values() for m in s["meta"].get("methods") or []})
    cl = power.curves(rows, ms_all, threshold)
    img = power.plot(cl, docs.parent / "img" / f"{docs.stem}-power.png", threshold)
    rel = f"img/{img.name}" if img else None
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(summaries, rows, roots, commands, threshold, rel), encoding="utf-8")
    written = [docs] + ([img] if img else [])
    if power_docs is not None:
        page = ["# Power curves by strength", "", "Produced by:", "", "```", *commands, "```", "",
                ("Each ladder derives one parent at increasing strength; the table gives, per test, the strongest "
                 "derivation it still detected and the first it missed. The same tables, with the tuning and "
                 f"held-out zoos side by side, are in [{docs.name}]({docs.name})."), ""]
        if rel:
            page += [f"![power curves]({rel})", ""]
        page += power.markdown(cl, threshold)
        power_docs.write_text("\n".join(page) + "\n", encoding="utf-8")
        written.append(power_docs)
    return written
