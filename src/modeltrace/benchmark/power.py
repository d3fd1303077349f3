"""Power curves: each test's p-value on derivations of one parent at a ladder of strengths, and the strength
at which it stops detecting.

Rows are the runner's result rows (pairs.jsonl) whose truth carries `strength`: the zoo's ladders (noise
sigma, rotation plus noise, fine-tune steps, kept fraction of a width pruning, with and without healing) and
the real model's derivations. Each ladder is read from one parent, one pair per strength, so a curve is one
draw per point: it says where this parent's copies stop being detected, not a detection rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Row = dict[str, Any]
P_FLOOR = 1e-300  # -log10 p is drawn up to 300


@dataclass(frozen=True)
class Axis:
    """What a ladder varies, and which way is harder."""

    variable: str
    harder: str  # "up": larger values are harder to detect; "down": smaller values are
    log: bool


AXES: dict[str, Axis] = {
    "power-noise": Axis("noise sigma (relative to each tensor's std)", "up", True),
    "power-rotate-noise": Axis("noise sigma after a residual rotation", "up", False),
    "power-finetune": Axis("fine-tune steps (lr 1e-3, other text)", "up", True),
    "power-width-prune": Axis("kept fraction (residual and MLP), no healing", "down", False),
    "power-width-prune-healed": Axis("kept fraction (residual and MLP), healed", "down", False),
    "real-noise": Axis("noise sigma (relative to each tensor's std)", "up", True),
    "real-rotate-noise": Axis("noise sigma after a residual rotation", "up", False),
}


def _p(row: Row, detector: str) -> float | None:
    if row.get("error"):
        return None
    if detector == "combined":
        p = row.get("p_value")
    else:
        e = (row.get("evidence") or {}).get(detector)
        p = e.get("p_value") if e and e.get("status") == "ok" else None
    try:
        return None if p is None or math.isnan(float(p)) else float(p)
    except (TypeError, ValueError):
        return None


def _called(row: Row, detector: str, threshold: float) -> bool:
    if detector == "combined":
        return row.get("verdict") == "derived"
    p = _p(row, detector)
    return p is not None and p < threshold


def curves(rows_by_zoo: Mapping[str, Sequence[Row]], methods: Sequence[str], threshold: float) -> list[dict[str, Any]]:
    """One curve per (zoo, ladder kind): points by strength, each detector's p, and its detection limit."""
    out: list[dict[str, Any]] = []
    for zoo, rows in rows_by_zoo.items():
        for kind, axis in AXES.items():
            ladder = sorted((r for r in rows if r.get("kind") == kind and "strength" in (r.get("truth") or {})),
                            key=lambda r: float(r["truth"]["strength"]), reverse=axis.harder == "down")
            if not ladder:
                continue
            dets = ["combined"] + [m for m in methods if any(_p(r, m) is not None for r in ladder)]
            points = [{"pair": r["pair"], "strength": float(r["truth"]["strength"]), "error": r.get("error"),
                       "verdict": r.get("verdict"),
                       "p": {d: _p(r, d) for d in dets}, "called": {d: _called(r, d, threshold) for d in dets}}
                      for r in ladder]
            limits = {}
            for d in dets:
                held: float | None = None
                first: float | None = None
                for pt in points:
                    if pt["called"][d] and first is None:
                        held = pt["strength"]
                    elif not pt["called"][d] and first is None:
                        first = pt["strength"]
                limits[d] = {"detected_through": held, "first_missed": first,
                             "detected": sum(pt["called"][d] for pt in points), "n": len(points)}
            out.append({"zoo": zoo, "kind": kind, "variable": axis.variable, "harder": axis.harder, "log": axis.log,
                        "detectors": dets, "points": points, "limits": limits})
    return out


def plot(curve_list: Sequence[Mapping[str, Any]], path: Path, threshold: float) -> Path | None:
    """One panel per ladder: -log10 p of each detector against strength, with the threshold drawn."""
    if not curve_list:
        return None
    from modeltrace.benchmark.plots import _pyplot

    plt = _pyplot()
    n = len(curve_list)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, c in zip(axes.flat, curve_list, strict=False):
        xs = [pt["strength"] for pt in c["points"]]
        for d in c["detectors"]:
            ys = [min(300.0, -math.log10(max(P_FLOOR, p))) if (p := pt["p"][d]) is not None else float("nan")
                  for pt in c["points"]]
            ax.plot(xs, ys, marker="o", ms=3, lw=1.2 if d == "combined" else 0.9,
                    color="black" if d == "combined" else None, label=d)
        ax.axhline(-math.log10(threshold), color="red", lw=0.8, ls="--")
        if c["log"] and min(xs) > 0:
            ax.set_xscale("log")
        if c["harder"] == "down":
            ax.invert_xaxis()
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(f"{c['zoo']}: {c['kind']}", fontsize=9)
        ax.set_xlabel(c["variable"], fontsize=8)
        ax.set_ylabel("-log10 p", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:g}"


def markdown(curve_list: Sequence[Mapping[str, Any]], threshold: float) -> list[str]:
    """The limits table and, per ladder, the p-values by strength."""
    if not curve_list:
        return ["No ladder pairs in these results."]
    out = [(f"Detected: combined verdict `derived`, or a method's p below {threshold:g}. \"Detected through\" is "
           "the strongest derivation detected before the first miss, in the ladder's order (harder to the "
           "right); \"first missed\" is where the test stopped detecting. One parent, one pair per strength."), "",
           "| zoo | ladder | variable | detector | detected | detected through | first missed |",
           "|---|---|---|---|---|---|---|"]
    for c in curve_list:
        for d in c["detectors"]:
            lim = c["limits"][d]
            out.append(f"| {c['zoo']} | {c['kind']} | {c['variable']} | {d} | {lim['detected']}/{lim['n']} | "
                       f"{_fmt(lim['detected_through'])} | {_fmt(lim['first_missed'])} |")
    out.append("")
    for c in curve_list:
        out += [f"### {c['zoo']}: {c['kind']}", "", "| strength | verdict | " + " | ".join(
            f"p {d}" for d in c["detectors"]) + " |", "|---|---|" + "---|" * len(c["detectors"])]
        for pt in c["points"]:
            cells = ["–" if (p := pt["p"][d]) is None else f"{p:.2g}" for d in c["detectors"]]
            out.append(f"| {pt['strength']:g} | {pt['verdict'] or 'error: ' + str(pt['error'])[:60]} | "
                       + " | ".join(cells) + " |")
        out.append("")
    return out
