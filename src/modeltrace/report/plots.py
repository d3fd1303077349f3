"""Every picture of a report, drawn from the Report alone (matplotlib, Agg backend, PNG bytes).

Each function returns a `Plot` or None when the result holds no data for it; `all_plots` draws them
all in one matplotlib rc context (no TeX). Labels from model files go through `_label`, which escapes
`$` (so a tensor called `$\\frac{}$` is drawn as text, not parsed as mathtext), control characters,
and caps the length.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modeltrace.errors import ModelTraceError
from modeltrace.report.model import EvidenceRow, Report
from modeltrace.report.summary import fmt_p, p_is
from modeltrace.textsafe import escape

DPI = 110
P_LOG_FLOOR = 300.0  # p-values are floored at 1e-300
COLORS = {"a": "#4c72b0", "b": "#dd8452", "obs": "#c44e52", "null": "#8c8c8c", "fit": "#2ca02c"}


@dataclass(frozen=True)
class Plot:
    """One picture: a file stem (also its HTML id), PNG bytes, alt text and a caption."""

    name: str
    png: bytes
    alt: str
    caption: str


def _mpl() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ModelTraceError("reports with pictures need matplotlib",
                              hint="pip install 'modeltrace[plots]'") from exc
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure


def _label(text: object, limit: int = 48) -> str:
    """Untrusted text for a matplotlib label: no mathtext, control characters escaped, length bounded."""
    return escape(text, limit=limit).replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    fig = _mpl()(figsize=(width, height), dpi=DPI)
    fig.set_layout_engine("constrained")
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _neglog(p: float | None) -> float:
    if p is None:
        return 0.0
    return min(P_LOG_FLOOR, -math.log10(max(p, 1e-300)))


def diagnosis_details(report: Report) -> dict[str, Any]:
    d = report.method("diagnosis")
    return d.details if d is not None and d.status == "ok" else {}


def all_plots(report: Report) -> dict[str, list[Plot]]:
    """Every picture the report has data for, by section: layers, delta, finetune, null."""
    import matplotlib

    _mpl()
    with matplotlib.rc_context({"text.usetex": False, "font.size": 9,
                                "svg.hashsalt": "modeltrace", "axes.spines.top": False,
                                "axes.spines.right": False}):
        found = {"layers": [layer_heatmap(report), layer_curves(report)],
                 "delta": [delta_histograms(report)], "finetune": [finetune_deltas(report)]}
        out = {k: [p for p in v if p is not None] for k, v in found.items()}
        out["null"] = null_distributions(report)
    return out


# --- layers --------------------------------------------------------------------------------------

def layer_heatmap(report: Report) -> Plot | None:
    """Layer-correspondence scores (A layer x B layer) per component, the chosen pairs outlined."""
    import numpy as np

    mats = diagnosis_details(report).get("layer_scores") or {}
    if not isinstance(mats, dict) or not mats:
        return _layer_map_only(report)
    comps = [c for c, m in mats.items() if isinstance(m, dict) and m.get("scores")][:6]
    if not comps:
        return None
    fig = _figure(3.4 * len(comps) + 1.2, 3.6)
    axes = fig.subplots(1, len(comps), squeeze=False)[0]
    im = None
    chosen = {(r.get("component"), r.get("a_layer"), r.get("b_layer")) for r in report.layer_map}
    for ax, comp in zip(axes, comps, strict=True):
        m = mats[comp]
        s = np.array([[np.nan if v is None else float(v) for v in row] for row in m["scores"]], dtype=float)
        la, lb = list(m.get("a_layers", range(s.shape[0]))), list(m.get("b_layers", range(s.shape[1])))
        ax.set_facecolor("#e6e6e6")
        im = ax.imshow(s, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="lower")
        for i in range(s.shape[0]):
            for j in range(s.shape[1]):
                if s.shape[0] * s.shape[1] <= 64:
                    txt = "n/c" if np.isnan(s[i, j]) else f"{s[i, j]:.2f}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                            color="black" if np.isnan(s[i, j]) or s[i, j] > 0.6 else "white")
                if i < len(la) and j < len(lb) and (comp, la[i], lb[j]) in chosen:
                    ax.add_patch(_rect(j, i))
        ax.set_xticks(range(len(lb)), [str(x) for x in lb] if len(lb) <= 24 else None)
        ax.set_yticks(range(len(la)), [str(x) for x in la] if len(la) <= 24 else None)
        ax.set_xlabel("B layer index")
        ax.set_ylabel("A layer index")
        ax.set_title(_label(comp) + ("" if m.get("full") else "\n(diagonal only: n/c = not computed)"),
                     fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="score: share of A's units matched (0-1)", shrink=0.9)
    return Plot("layer-heatmap", _png(fig), "Layer-correspondence heatmap of A layers against B layers",
                "Share of A's sampled MLP units that match a unit of the B layer confidently. A copied layer "
                "scores near 1, unrelated layers near 0; outlined cells are the correspondence chosen.")


def _rect(j: int, i: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=COLORS["obs"], linewidth=2)


def _layer_map_only(report: Report) -> Plot | None:
    rows = [r for r in report.layer_map if r.get("score") is not None]
    if not rows:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    xs = list(range(len(rows)))
    ax.bar(xs, [float(r["score"]) for r in rows], color=COLORS["a"])
    ax.set_xticks(xs, [_label(f"{r.get('component')}:{r.get('b_layer')}<-{r.get('a_layer')}", 30) for r in rows],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (share of units matched, 0-1)")
    ax.set_xlabel("B layer <- A layer")
    return Plot("layer-heatmap", _png(fig), "Layer-correspondence scores of each chosen layer pair",
                "The score of each B layer's chosen A layer (the full score matrix is not in this result).")


LAYER_METHODS = {"weight-identity": ("fixed", "units on their own index"),
                 "weight-permutation": ("agree", "units where both views agree")}


def _layer_rows(e: EvidenceRow) -> list[dict[str, Any]]:
    rows = e.details.get("layers")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _pair_label(r: dict[str, Any]) -> str:
    """'language_model 0->0' for a layer pair; the tensor name when the test fell back to paired weights."""
    if r.get("a_layer") is None and r.get("b") is not None:
        return _label(r["b"], 32)
    comp = _label(f"{r['component']} ", 20) if r.get("component") else ""
    return f"{comp}{r.get('a_layer')}->{r.get('b_layer')}"


def layer_curves(report: Report) -> Plot | None:
    """Per layer pair: the statistic (share of units) and -log10 p of the unit-matching tests."""
    series = []
    for name, (key, what) in LAYER_METHODS.items():
        e = report.method(name)
        if e is not None and e.status == "ok":
            rows = [r for r in _layer_rows(e) if isinstance(r.get(key), int | float) and r.get("kept")]
            if rows:
                series.append((name, key, what, rows))
    if not series:
        return None
    fig = _figure(9.0, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    labels: list[str] = []
    for k, (name, key, what, rows) in enumerate(series):
        xs = list(range(len(rows)))
        labels = [_pair_label(r) for r in rows]
        share = [float(r[key]) / float(r["kept"]) for r in rows]
        chance = [1.0 / float(r.get("n_b") or r["kept"]) for r in rows]
        marker, style, size = ("o", "-", 7) if k == 0 else ("s", "--", 4)
        ax1.plot(xs, share, marker=marker, linestyle=style, markersize=size, label=f"{name}: {what}")
        if k == 0:
            ax1.plot(xs, chance, linestyle=":", color=COLORS["null"], label="expected under H0 (1/n)")
        ax2.plot(xs, [_neglog(r.get("p_value")) for r in rows], marker=marker, linestyle=style, markersize=size,
                 label=name)
    step = max(1, math.ceil(len(labels) / 16))  # at most 16 tick labels, so they stay readable
    for ax in (ax1, ax2):
        ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("layer pair (component A->B) or paired tensor")
    ax1.set_ylim(-0.02, 1.05)
    ax1.set_ylabel("statistic: share of sampled units (0-1)")
    ax1.legend(fontsize=7, loc="center right")
    thr = _neglog(report.threshold)
    ax2.axhline(thr, color=COLORS["obs"], linestyle="--", label=f"threshold p = {report.threshold:g}")
    ax2.set_ylabel("-log10 p-value (floor 1e-300)")
    ax2.legend(fontsize=7)
    return Plot("layer-curves", _png(fig), "Per-layer statistic and p-value curves",
                "Left: share of A's sampled MLP units matched as the test counts them, per layer pair, against "
                "the chance level. Right: each layer pair's p-value on a -log10 scale (higher is stronger).")


# --- B - A -----------------------------------------------------------------------------------------

HIST_PANELS = 6


def delta_histograms(report: Report) -> Plot | None:
    """The distribution of (B - A) / std(A) per tensor, against the Gaussian noise fitted over the model."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    d = diagnosis_details(report)
    rows = [r for r in d.get("per_tensor") or [] if isinstance(r, dict) and isinstance(r.get("delta_hist"), dict)]
    if not rows:
        return None
    rows.sort(key=lambda r: -sum(r["delta_hist"].get("counts") or [0]))
    picked = rows[:HIST_PANELS]
    noise: dict[str, Any] = d["noise"] if isinstance(d.get("noise"), dict) else {}
    fitted = noise.get("sigma_rel") if noise.get("detected") else None
    cols = min(3, len(picked))
    nrows = math.ceil(len(picked) / cols)
    fig = _figure(3.3 * cols, 2.6 * nrows + 0.3)
    axes = fig.subplots(nrows, cols, squeeze=False).reshape(-1)
    for ax, r in zip(axes, picked, strict=False):
        h = r["delta_hist"]
        counts = np.asarray(h.get("counts") or [], dtype=float)
        w = float(h.get("half_width_rel") or 0.0)
        if counts.size == 0 or w <= 0 or counts.sum() == 0:
            ax.set_axis_off()
            continue
        edges = np.linspace(-w, w, counts.size + 1)
        width = edges[1] - edges[0]
        density = counts / (counts.sum() * width)
        ax.bar(edges[:-1], density, width=width, align="edge", color=COLORS["b"], alpha=0.8,
               label="B - A (sampled)")
        xs = np.linspace(-w, w, 200)
        sig = float(fitted) if fitted else None
        if sig and sig > 0:
            ax.plot(xs, np.exp(-0.5 * (xs / sig) ** 2) / (sig * math.sqrt(2 * math.pi)), color=COLORS["fit"],
                    label=f"fitted noise N(0, {sig:.3g}^2)")
        ax.set_title(_label(r.get("tensor", "?"), 40), fontsize=8)
        ax.set_xlabel("(B - A) / std(A)  [units of A's std]", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
    for ax in axes[len(picked):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for all panels, above them, clear of the bars
        fig.legend(handles, labels, loc="outside upper center", ncols=len(handles), fontsize=8, frameon=False)
    cap = (f"Gaussian noise was fitted with std {fitted:.3g} x each tensor's std (about 1/{1 / fitted:.0f})."
           if fitted else "No Gaussian noise model fits B - A: the difference is as wide as the weights themselves"
           " or structured.")
    return Plot("delta-histograms", _png(fig), "Histograms of B minus A per tensor with the fitted noise",
                f"Distribution of B - A, in units of std(A), for the {len(picked)} largest tensors compared. "
                + cap)


FT_BARS = 40


def finetune_deltas(report: Report) -> Plot | None:
    """Relative change |B - A| / |A| per tensor (a fine-tune changes some tensors much more than others)."""
    rows = [r for r in diagnosis_details(report).get("per_tensor") or []
            if isinstance(r, dict) and isinstance(r.get("rel_change"), int | float) and r["rel_change"] > 0]
    if not rows:
        return None
    shown = sorted(rows, key=lambda r: -float(r["rel_change"]))[:FT_BARS]
    fig = _figure(8.0, 0.9 + 0.2 * len(shown))
    ax = fig.subplots()
    ys = list(range(len(shown)))[::-1]
    noise_like = [bool(r.get("noise_like")) for r in shown]
    ax.barh(ys, [float(r["rel_change"]) for r in shown], color=[COLORS["b"] if n else COLORS["a"] for n in noise_like])
    ax.set_yticks(ys, [_label(r.get("tensor", "?"), 56) for r in shown], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("relative change ||B - A|| / ||A||  (log scale, dimensionless)")
    ft = diagnosis_details(report).get("finetune")
    if isinstance(ft, dict) and isinstance(ft.get("rel_change"), int | float):
        ax.axvline(float(ft["rel_change"]), color=COLORS["obs"], linestyle="--",
                   label=f"model-level change {float(ft['rel_change']):.3g}")
        ax.legend(fontsize=7, loc="lower right")
    more = f" (the {FT_BARS} largest of {len(rows)})" if len(rows) > FT_BARS else ""
    if not any(report.transform(k) for k in ("finetune", "noise", "lora", "merge", "quantize", "cast")):
        more += ("; the diagnosis names no transform of A here, so these are the sizes of unrelated weights' "
                 "differences, not of a fine-tune")
    return Plot("finetune-deltas", _png(fig), "Per-tensor size of the difference between B and A",
                f"Relative size of B - A per tensor{more}; orange bars look like i.i.d. noise, blue ones do not.")


# --- null distributions -----------------------------------------------------------------------------

def null_distributions(report: Report) -> list[Plot]:
    """What unrelated models score: each test's null law with the observed value marked."""
    out = []
    for name in LAYER_METHODS:
        e = report.method(name)
        if e is not None and e.tested and _layer_rows(e):
            p = _fixed_point_null(e)
            if p is not None:
                out.append(p)
    code = report.method("code-clone")
    if code is not None and code.tested:
        p = _code_null(code)
        if p is not None:
            out.append(p)
    for e in report.evidence:
        samples = e.details.get("null_samples")
        if e.tested and isinstance(samples, list) and samples and e.statistic is not None:
            out.append(_sample_null(e, [float(x) for x in samples if isinstance(x, int | float)]))
    return out


def _fixed_point_null(e: EvidenceRow) -> Plot | None:
    import numpy as np
    from scipy import stats as st

    from modeltrace.stats.nulls import fixed_point_tail

    key = LAYER_METHODS[e.method][0]
    rows = [r for r in _layer_rows(e) if isinstance(r.get(key), int | float) and r.get("kept") and r.get("n_b")]
    if not rows:
        return None
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((int(r["kept"]), int(r["n_b"])), []).append(r)
    (m, n), grp = max(groups.items(), key=lambda kv: len(kv[1]))
    kmax = min(m, 12)
    tails = [fixed_point_tail(k, m, n) for k in range(kmax + 2)]
    pmf = [max(tails[k] - tails[k + 1], 1e-300) for k in range(kmax + 1)]
    fig = _figure(9.0, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(range(kmax + 1), pmf, color=COLORS["null"], label=f"null law (m={m} of n={n} units)")
    obs = [int(r[key]) for r in grp]
    ax1.set_yscale("log")
    for k, v in enumerate(sorted(set(obs))):
        tail = fixed_point_tail(v, m, n)
        ax1.axvline(v, color=COLORS["obs"], linewidth=2,
                    label=f"observed {v}: P(count >= {v}) = {fmt_p(tail)}" if k < 3 else None)
    ax1.set_xlim(-0.8, max(kmax, *obs) + 1.5)
    ax1.set_xlabel("units counted in one layer pair (count)")
    ax1.set_ylabel("probability under H0 (log scale)")
    ax1.legend(fontsize=7)
    ps = [float(r["p_value"]) for r in rows if isinstance(r.get("p_value"), int | float)]
    if ps:
        dof = 2 * len(ps)
        stat = -2.0 * sum(math.log(max(p, 1e-300)) for p in ps)
        top = float(st.chi2.ppf(0.9999, dof))
        far = stat > 10 * top
        lo = max(1e-2, float(st.chi2.ppf(1e-4, dof))) if far else 0.0
        hi = max(top, stat) * 1.3
        xs = np.geomspace(lo, hi, 600) if far else np.linspace(0, hi, 400)
        ax2.plot(xs, st.chi2.pdf(xs, dof), color=COLORS["null"], label=f"null: chi-squared, {dof} d.f.")
        ax2.fill_between(xs, st.chi2.pdf(xs, dof), color=COLORS["null"], alpha=0.3)
        ax2.axvline(stat, color=COLORS["obs"], linewidth=2,
                    label=f"observed {stat:.4g}: {p_is(float(st.chi2.sf(stat, dof)))}")
        if far:
            ax2.set_xscale("log")
        ax2.set_xlabel("Fisher statistic -2 sum log p" + (" (log scale)" if far else ""))
        ax2.set_ylabel("density under H0")
        ax2.legend(fontsize=7)
    else:
        ax2.set_axis_off()
    return Plot(f"null-{e.method}", _png(fig), f"Null distribution of the {e.method} statistic with the observed value",
                f"{e.method}: left, the exact law of the per-layer count if B had been trained independently "
                "(uniformly relabelled units), with each layer's observed count in red; right, the law of the "
                "combined Fisher statistic with the observed value.")


def _code_null(e: EvidenceRow) -> Plot | None:
    from modeltrace.artifacts.code import null_sample

    _, sims = null_sample()
    pairs = [p for p in e.details.get("pairs") or [] if isinstance(p, dict)
             and isinstance(p.get("similarity"), int | float)]
    if not sims or not pairs:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    ax.hist(sims, bins=30, range=(0, 1), color=COLORS["null"], label=f"{len(sims)} independent file pairs")
    for k, p in enumerate(pairs[:5]):
        ax.axvline(float(p["similarity"]), color=COLORS["obs"], linewidth=2,
                   label=_label(f"observed: {p.get('b')} vs {p.get('a')}", 60) if k == 0 else None)
    ax.set_xlabel("share of normalized code shared (0-1)")
    ax.set_ylabel("file pairs (count)")
    ax.legend(fontsize=7)
    return Plot("null-code-clone", _png(fig), "Null distribution of code similarity with the observed file pairs",
                "Similarity of independently written modelling files (the null sample shipped with modeltrace) "
                "and the observed file pairs in red.")


def _sample_null(e: EvidenceRow, samples: Sequence[float]) -> Plot:
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    ax.hist(samples, bins=min(30, max(5, len(samples) // 3)), color=COLORS["null"], label="null sample")
    ax.axvline(float(e.statistic or 0.0), color=COLORS["obs"], linewidth=2, label="observed")
    ax.set_xlabel(_label(f"{e.method} statistic", 60))
    ax.set_ylabel("count")
    ax.legend(fontsize=7)
    return Plot(f"null-{e.method}", _png(fig), f"Null distribution of {e.method} with the observed value",
                f"{e.method}: the statistic under the null (measured) and the observed value.")
