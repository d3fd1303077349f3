"""Benchmark figures (PNG, matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.benchmark.metrics import qq_points


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def qq_plot(pvalues: Mapping[str, Sequence[float]], path: Path, title: str) -> Path | None:
    """QQ plot of -log10 p on independent pairs against Uniform(0, 1), one series per method."""
    series = {k: v for k, v in pvalues.items() if len(v) >= 2}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    top = 0.0
    for name, ps in sorted(series.items()):
        exp, obs = qq_points(ps)
        ax.plot(exp, obs, marker="o", ms=3, lw=1, label=f"{name} (n={len(ps)})")
        top = max(top, float(exp.max()), float(min(obs.max(), 12.0)))
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="uniform")
    ax.set_xlabel("expected -log10 p (uniform)")
    ax.set_ylabel("observed -log10 p")
    ax.set_ylim(bottom=0, top=max(top, 1.0) * 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def roc_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str) -> Path | None:
    """ROC curves (derived vs independent pairs) from (positive scores, negative scores) per detector."""
    usable = {k: v for k, v in curves.items() if v[0] and v[1]}
    if not usable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    for name, (pos, neg) in sorted(usable.items()):
        p, n = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
        ts = np.unique(np.concatenate([p, n, [np.inf]]))[::-1]
        tpr = [float(np.mean(p >= t)) for t in ts] + [1.0]
        fpr = [float(np.mean(n >= t)) for t in ts] + [1.0]
        ax.plot(fpr, tpr, lw=1.2, label=name)  # straight segments across ties, as the AUROC counts them
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false-positive rate (independent pairs)")
    ax.set_ylabel("true-positive rate (derived pairs)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
