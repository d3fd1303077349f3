"""Benchmark metrics over scored pairs: pure functions, no I/O.

Scores are "larger means more evidence of derivation"; for a p-value we use -log10(p), floored at
`P_FLOOR`, so one convention covers p-values, correlations and probabilities alike. A method that did
not produce a p-value on a pair counts as p = 1 (no evidence): a detector that cannot run on a pair has
not detected it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from modeltrace.stats.combine import P_FLOOR

DEFAULT_THRESHOLD = 1e-6


def p_score(p: float | None) -> float:
    """-log10 of a p-value (floored); None (no test) scores 0, the same as p = 1."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return 0.0
    return -math.log10(min(1.0, max(P_FLOOR, float(p))))


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties 1/2.

    Computed exactly from the Mann-Whitney U statistic; None when either class is empty.
    """
    if not positive or not negative:
        return None
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    ranks = _st.rankdata(np.concatenate([pos, neg]))  # average ranks handle ties
    u = float(ranks[: pos.size].sum()) - pos.size * (pos.size + 1) / 2.0
    return u / (pos.size * neg.size)


@dataclass(frozen=True)
class OperatingPoint:
    """TPR at a target FPR: the threshold, the TPR reached, the FPR actually reached, and whether the
    number of negatives can resolve the target at all (n_negative >= 1 / target)."""

    target_fpr: float
    threshold: float | None
    tpr: float | None
    fpr: float | None
    resolvable: bool

    def to_json(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "threshold": self.threshold, "tpr": self.tpr, "fpr": self.fpr,
                "resolvable": self.resolvable}


def tpr_at_fpr(positive: Sequence[float], negative: Sequence[float], target_fpr: float) -> OperatingPoint:
    """Detect when score > t, with t the smallest negative score that keeps the FPR at or under target.

    With fewer than 1/target negatives this is the TPR at zero false positives (t = the largest negative
    score), flagged `resolvable=False`.
    """
    if not positive or not negative:
        return OperatingPoint(target_fpr, None, None, None, bool(negative) and len(negative) * target_fpr >= 1)
    neg = np.sort(np.asarray(negative, dtype=np.float64))[::-1]  # descending
    allowed = math.floor(target_fpr * neg.size + 1e-9)  # negatives allowed above t
    t = float(neg[allowed]) if allowed < neg.size else float(neg[-1]) - 1.0
    pos = np.asarray(positive, dtype=np.float64)
    return OperatingPoint(
        target_fpr=target_fpr, threshold=t, tpr=float(np.mean(pos > t)), fpr=float(np.mean(neg > t)),
        resolvable=neg.size * target_fpr >= 1.0,
    )


def false_positives(negative_p: Iterable[float | None], threshold: float = DEFAULT_THRESHOLD) -> int:
    """How many independent pairs a method calls derived (p < threshold)."""
    return sum(1 for p in negative_p if p is not None and p < threshold)


@dataclass(frozen=True)
class Uniformity:
    """Kolmogorov-Smirnov test of H0: the p-values on independent pairs are Uniform(0, 1)."""

    n: int
    statistic: float | None
    p_value: float | None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "statistic": self.statistic, "p_value": self.p_value}


def ks_uniform(pvalues: Iterable[float | None]) -> Uniformity:
    """One-sample KS test against Uniform(0, 1) (two-sided, exact for small n); needs >= 2 p-values.

    A calibrated test gives uniform p-values under its null; a conservative one piles them near 1 (also a
    rejection here, which is the honest reading: its p-values are not what they claim).
    """
    ps = [float(p) for p in pvalues if p is not None and not math.isnan(float(p))]
    if len(ps) < 2:
        return Uniformity(len(ps), None, None)
    res = _st.kstest(ps, "uniform")
    return Uniformity(len(ps), float(res.statistic), float(res.pvalue))


def qq_points(pvalues: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed -log10 p for a QQ plot against Uniform(0, 1) (expected at (i - 0.5) / n)."""
    ps = np.sort(np.clip(np.asarray(pvalues, dtype=np.float64), P_FLOOR, 1.0))
    n = ps.size
    expected = (np.arange(1, n + 1) - 0.5) / n
    return -np.log10(expected), -np.log10(ps)


# --- diagnosis ------------------------------------------------------------------------------------

SIGMA_REL_TOL = 0.30
LORA_RANK_TOL = 2
MERGE_COEF_TOL = 0.10

_SIGMA_KEYS = ("sigma_rel", "noise_sigma_rel", "sigma")
_RANK_KEYS = ("lora_rank", "rank")
_COEF_KEYS = ("merge_coef", "coef_a", "coef", "alpha", "weight")
_DROP_KEYS = ("dropped_layers", "layers", "layers_dropped", "dropped")


def _first(transforms: Sequence[Mapping[str, Any]], kinds: tuple[str, ...], keys: tuple[str, ...]) -> Any:
    for t in transforms:
        if t.get("kind") in kinds:
            for k in keys:
                if t.get(k) is not None:
                    return t[k]
    return None


def diagnosis_checks(truth: Mapping[str, Any], transforms: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Which of the four diagnoses the truth allows to check, and whether the transforms got each right.

    - noise: an estimated relative sigma within 30% of the true one;
    - layer-drop: exactly the dropped layer indices;
    - lora: the rank within 2;
    - merge: the coefficient within 0.1.
    Estimates are read from the compare result's `transforms` (key names in `_SIGMA_KEYS` etc.); a check
    whose truth is absent is left out, a check whose estimate is absent counts as wrong.
    """
    out: dict[str, bool] = {}
    sigma = truth.get("sigma_rel")
    if isinstance(sigma, (int, float)) and sigma > 0:
        est = _first(transforms, ("noise",), _SIGMA_KEYS)
        out["noise_sigma"] = isinstance(est, (int, float)) and abs(est - sigma) <= SIGMA_REL_TOL * sigma
    dropped = truth.get("dropped_layers")
    if isinstance(dropped, list) and dropped:
        est = _first(transforms, ("layer-drop",), _DROP_KEYS)
        out["dropped_layers"] = isinstance(est, list) and sorted(int(x) for x in est) == sorted(
            int(x) for x in dropped)
    rank = truth.get("lora_rank")
    if isinstance(rank, (int, float)) and rank > 0:
        est = _first(transforms, ("lora", "finetune"), _RANK_KEYS)
        out["lora_rank"] = isinstance(est, (int, float)) and abs(est - rank) <= LORA_RANK_TOL
    coef = truth.get("merge_coef")
    if isinstance(coef, (int, float)):
        est = _first(transforms, ("merge",), _COEF_KEYS)
        out["merge_coef"] = isinstance(est, (int, float)) and abs(est - coef) <= MERGE_COEF_TOL
    return out


def accuracy(checks: Iterable[Mapping[str, bool]]) -> dict[str, dict[str, int]]:
    """Per diagnosis: how many pairs were checked and how many got it right."""
    out: dict[str, dict[str, int]] = {}
    for c in checks:
        for name, ok in c.items():
            cell = out.setdefault(name, {"correct": 0, "checked": 0})
            cell["checked"] += 1
            cell["correct"] += int(bool(ok))
    return out


def detection_table(rows: Iterable[tuple[str, str, bool]]) -> dict[str, dict[str, dict[str, int]]]:
    """(kind, method, detected) triples -> kind -> method -> {"detected", "n"}."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for kind, method, detected in rows:
        cell = out.setdefault(kind, {}).setdefault(method, {"detected": 0, "n": 0})
        cell["n"] += 1
        cell["detected"] += int(detected)
    return out


def score_threshold_at_fpr(negative: Sequence[float], target_fpr: float) -> float | None:
    """The score threshold (detect when score > t) that keeps the FPR on `negative` at or under target."""
    if not negative:
        return None
    return tpr_at_fpr([0.0], negative, target_fpr).threshold


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for k successes in n trials (Clopper and Pearson 1934)."""
    from scipy.stats import beta

    if n <= 0:
        return (0.0, 1.0)
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return (lo, hi)
