"""Was B merged from A and another model C? Mixing coefficients, spherical merges, task arithmetic.

With C given, least squares over all tensors fits B ~ alpha A + beta C (ordinary least squares,
accumulated tensor by tensor so memory stays bounded). A linear merge has alpha + beta = 1. A
spherical merge (slerp, Shoemake 1985, as model-merging tools apply it per tensor) has
alpha = sin((1-t) theta) / sin theta and beta = sin(t theta) / sin theta with theta the angle
between A and C, so alpha + beta > 1 where theta is large; each tensor's (alpha, beta) is tested
against both. Task arithmetic (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023)
fits B - base ~ sum_i lambda_i (T_i - base). Without C, the share of B that A explains is the
R^2 of B regressed on A, with the slope alpha: for B = alpha A + beta C with C independent of
A, the slope estimates alpha and R^2 = alpha^2 var(A) / var(B).

Given the base and several task models (compare's repeatable `--other`), `merge_from_parts` fits
task arithmetic and TIES-merging (Yadav, Tam, Choshen, Raffel & Bansal, "TIES-Merging: Resolving
Interference When Merging Models", NeurIPS 2023) and names the better one with its coefficients.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modeltrace.diagnose._common import check_same_shape, sample_flat

if TYPE_CHECKING:
    from modeltrace.evidence.base import Transform
    from modeltrace.model import Model
    from modeltrace.weights.match import Matching

SUM_TOL = 0.03  # |alpha + beta - 1| within this reads as linear


@dataclass(frozen=True)
class MergeFit:
    """B ~ alpha A + beta C over all tensors, and whether the merge was linear or spherical."""

    alpha: float
    beta: float
    r2: float  # share of B's variance the fit explains
    method: str  # "linear", "slerp", "undetermined"
    slerp_t: float | None  # median per-tensor interpolation factor when spherical
    per_tensor: tuple[tuple[float, float], ...]
    n_tensors: int
    reason: str


@dataclass(frozen=True)
class TaskArithmeticFit:
    """B - base ~ sum_i lambda_i (T_i - base)."""

    lambdas: tuple[float, ...]
    r2: float
    reason: str


@dataclass(frozen=True)
class ShareExplained:
    """Without the other model: how much of B a linear function of A explains."""

    r2: float  # pooled over tensors
    slope: float  # pooled least-squares slope of B on A
    per_tensor_r2: tuple[float, ...]
    reason: str
    per_tensor_slope: tuple[float, ...] = ()

    @property
    def median_r2(self) -> float:
        """Per-tensor median: robust to one large tensor (an embedding) dominating the pooled value."""
        return float(np.median(self.per_tensor_r2)) if self.per_tensor_r2 else 0.0

    @property
    def median_slope(self) -> float:
        return float(np.median(self.per_tensor_slope)) if self.per_tensor_slope else 0.0


def _slerp_coeffs(t: float, theta: float) -> tuple[float, float]:
    st = math.sin(theta)
    if st < 1e-6:
        return 1.0 - t, t
    return math.sin((1 - t) * theta) / st, math.sin(t * theta) / st


class MergeAccumulator:
    """Feed tensor triples (A, B, C) one at a time; `result()` gives the pooled fit."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.g = np.zeros((2, 2))
        self.h = np.zeros(2)
        self.bb = 0.0
        self.per_tensor: list[tuple[float, float]] = []
        self.judged: list[tuple[str, float | None]] = []

    def add(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        check_same_shape(a, b)
        check_same_shape(a, c, "A and C")
        fa, fb, fc = (sample_flat(x, seed=self.seed) for x in (a, b, c))
        g = np.array([[fa @ fa, fa @ fc], [fc @ fa, fc @ fc]])
        h = np.array([fa @ fb, fc @ fb])
        self.g += g
        self.h += h
        self.bb += float(fb @ fb)
        if fa.size < 64 or abs(np.linalg.det(g)) <= 1e-12 * (g[0, 0] * g[1, 1] + 1e-300):
            return
        alpha, beta = (float(v) for v in np.linalg.solve(g, h))
        self.per_tensor.append((alpha, beta))
        cos = float(g[0, 1] / math.sqrt(g[0, 0] * g[1, 1]))
        theta = math.acos(max(-1.0, min(1.0, cos)))
        self.judged.append(_judge(alpha, beta, theta))

    def result(self) -> MergeFit:
        if not self.per_tensor or abs(np.linalg.det(self.g)) == 0.0:
            return MergeFit(math.nan, math.nan, 0.0, "undetermined", None, (), 0,
                            "A and C are collinear or no tensor could be fitted")
        alpha, beta = (float(v) for v in np.linalg.solve(self.g, self.h))
        coef = np.array([alpha, beta])
        resid = self.bb - 2 * float(coef @ self.h) + float(coef @ self.g @ coef)
        r2 = 1.0 - resid / self.bb if self.bb > 0 else 0.0
        kinds = [k for k, _ in self.judged]
        lin, sph = kinds.count("linear"), kinds.count("slerp")
        ts = [t for k, t in self.judged if k == "slerp" and t is not None]
        if sph > lin and sph >= 0.5 * len(kinds):
            method, t = "slerp", statistics.median(ts)
        elif lin > sph and lin >= 0.5 * len(kinds):
            method, t = "linear", None
        else:
            method, t = "undetermined", None
        what = {"linear": "a linear merge", "slerp": f"a spherical merge (t = {t:.3g})" if t is not None else "",
                "undetermined": "linear and spherical merges fit alike (A and C nearly parallel)"}[method]
        return MergeFit(alpha, beta, r2, method, t, tuple(self.per_tensor), len(self.per_tensor),
                        f"B = {alpha:.3f} A + {beta:.3f} C explains {r2:.1%} of B: {what}")


def _judge(alpha: float, beta: float, theta: float) -> tuple[str, float | None]:
    """Does one tensor's (alpha, beta) fit a linear merge, a slerp, or both alike?"""
    if alpha <= 0 or beta <= 0:
        return "neither", None
    ratio = beta / alpha
    t = math.atan2(ratio * math.sin(theta), 1.0 + ratio * math.cos(theta)) / theta if theta > 1e-6 else ratio / (
        1 + ratio)
    sa, sb = _slerp_coeffs(t, theta)
    slerp_sum = sa + sb
    if abs(slerp_sum - 1.0) < 2 * SUM_TOL:
        return "both", t
    if abs(alpha + beta - 1.0) <= SUM_TOL:
        return "linear", None
    if abs(alpha + beta - slerp_sum) <= SUM_TOL * slerp_sum:
        return "slerp", t
    return "neither", None


def merge_coefficients(triples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *, seed: int = 0) -> MergeFit:
    """Fit B ~ alpha A + beta C over tensor triples (A, B, C)."""
    acc = MergeAccumulator(seed)
    for a, b, c in triples:
        acc.add(a, b, c)
    return acc.result()


def task_arithmetic(groups: Iterable[tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]], *,
                    seed: int = 0) -> TaskArithmeticFit:
    """Fit B - base ~ sum_i lambda_i (T_i - base) over tensor groups (base, B, [T_1..T_k])."""
    g: np.ndarray | None = None
    h: np.ndarray | None = None
    yy = 0.0
    for base, b, tasks in groups:
        fbase = sample_flat(base, seed=seed)
        y = sample_flat(b, seed=seed) - fbase
        x = np.stack([sample_flat(t, seed=seed) - fbase for t in tasks], axis=1)
        g = x.T @ x if g is None else g + x.T @ x
        h = x.T @ y if h is None else h + x.T @ y
        yy += float(y @ y)
    if g is None or h is None:
        raise ValueError("task_arithmetic needs at least one tensor group")
    lam, *_ = np.linalg.lstsq(g, h, rcond=None)
    resid = yy - 2 * float(lam @ h) + float(lam @ g @ lam)
    r2 = 1.0 - resid / yy if yy > 0 else 0.0
    lams = tuple(float(v) for v in lam)
    return TaskArithmeticFit(lams, r2, "B - base = " + " + ".join(f"{v:.3f} task{i + 1}" for i, v in enumerate(lams))
                             + f" explains {r2:.1%} of the change")


class ShareAccumulator:
    """Pooled regression of B on A (with intercept per tensor), fed one tensor pair at a time."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.sxx = self.sxy = self.syy = 0.0
        self.per: list[float] = []
        self.slopes: list[float] = []

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        check_same_shape(a, b)
        fa, fb = sample_flat(a, seed=self.seed), sample_flat(b, seed=self.seed)
        fa = fa - fa.mean()
        fb = fb - fb.mean()
        sxx, sxy, syy = float(fa @ fa), float(fa @ fb), float(fb @ fb)
        self.sxx += sxx
        self.sxy += sxy
        self.syy += syy
        if sxx > 0 and syy > 0:
            self.per.append(sxy * sxy / (sxx * syy))
            self.slopes.append(sxy / sxx)

    def result(self) -> ShareExplained:
        if self.sxx <= 0 or self.syy <= 0:
            return ShareExplained(0.0, 0.0, tuple(self.per), "A or B is constant", tuple(self.slopes))
        r2 = self.sxy**2 / (self.sxx * self.syy)
        slope = self.sxy / self.sxx
        return ShareExplained(r2, slope, tuple(self.per),
                              f"A explains {r2:.1%} of B's variance (slope {slope:.3f})", tuple(self.slopes))


def share_explained(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, seed: int = 0) -> ShareExplained:
    """R^2 and slope of B on A pooled over tensor pairs (A, B)."""
    acc = ShareAccumulator(seed)
    for a, b in pairs:
        acc.add(a, b)
    return acc.result()


# --- a merge given its base and task models ------------------------------------------------------

TIES_DENSITIES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # the share of each task vector TIES keeps, tried in turn
TIES_GAIN = 0.02  # TIES is named only when it explains this much more of the change than task arithmetic


def ties_direction(deltas: Sequence[np.ndarray], density: float) -> np.ndarray:
    """The TIES-merged task vector (Yadav et al., "TIES-Merging", NeurIPS 2023) before its scale.

    Each task vector keeps its `density` share of largest magnitudes (trim); each coordinate's sign
    is the sign of the trimmed vectors' sum (elect); the kept values that agree with it are averaged
    (disjoint mean). With density 1 and one task it is the task vector itself.
    """
    stack = np.stack([np.asarray(d, dtype=np.float64) for d in deltas])
    if density < 1.0:
        for i in range(len(stack)):
            mag = np.abs(stack[i])
            keep = max(1, round(density * mag.size))
            if keep < mag.size:
                thr = np.partition(mag, mag.size - keep)[mag.size - keep]
                stack[i] = np.where(mag >= thr, stack[i], 0.0)
    sign = np.sign(stack.sum(axis=0))
    agree = (np.sign(stack) == sign[None, :]) & (stack != 0)
    count = agree.sum(axis=0)
    out: np.ndarray = np.where(count > 0, (stack * agree).sum(axis=0) / np.maximum(count, 1), 0.0)
    return out


@dataclass(frozen=True)
class PartsFit:
    """B as base plus its task models' vectors: task arithmetic (one lambda per task) or TIES (one scale)."""

    method: str  # "task-arithmetic" | "ties" | "undetermined"
    lambdas: tuple[float, ...]  # per task (task arithmetic), or the one TIES scale
    r2: float  # share of B - base explained
    density: float | None  # TIES: the share of each task vector kept
    n_tensors: int
    fits: dict[str, float]  # R^2 of every candidate ("task-arithmetic", "ties@0.2", ...)
    reason: str


def merge_from_parts(groups: Iterable[tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]], *,
                     seed: int = 0) -> PartsFit:
    """Fit B - base by task arithmetic and by TIES at each of `TIES_DENSITIES`, over (base, B, [T_1..T_k]).

    Task arithmetic (Ilharco et al., ICLR 2023): B - base ~ sum_i lambda_i (T_i - base), least squares.
    TIES: B - base ~ lambda ties_direction(T_i - base, density), trimmed per tensor as merging tools do.
    Both are pooled over tensors (the same sampled coordinates of each). The better fit is named;
    TIES only when it explains `TIES_GAIN` more of the change, since task arithmetic has k free
    coefficients to TIES's one.
    """
    k: int | None = None
    g: np.ndarray | None = None
    h: np.ndarray | None = None
    yy = 0.0
    n = 0
    ties_xy = dict.fromkeys(TIES_DENSITIES, 0.0)
    ties_xx = dict.fromkeys(TIES_DENSITIES, 0.0)
    for base, b, tasks in groups:
        check_same_shape(base, b, "base and B")
        for t in tasks:
            check_same_shape(base, t, "base and a task model")
        fbase = sample_flat(base, seed=seed)
        y = sample_flat(b, seed=seed) - fbase
        deltas = [sample_flat(t, seed=seed) - fbase for t in tasks]
        x = np.stack(deltas, axis=1)
        k = x.shape[1]
        g = x.T @ x if g is None else g + x.T @ x
        h = x.T @ y if h is None else h + x.T @ y
        yy += float(y @ y)
        n += 1
        for dens in TIES_DENSITIES:
            tv = ties_direction(deltas, dens)
            ties_xy[dens] += float(tv @ y)
            ties_xx[dens] += float(tv @ tv)
    if g is None or h is None or k is None or yy <= 0:
        return PartsFit("undetermined", (), 0.0, None, n, {}, "B equals the base or no tensor could be fitted")
    lam, *_ = np.linalg.lstsq(g, h, rcond=None)
    resid = yy - 2 * float(lam @ h) + float(lam @ g @ lam)
    fits = {"task-arithmetic": 1.0 - resid / yy}
    scale: dict[float, float] = {}
    for dens in TIES_DENSITIES:
        if ties_xx[dens] > 0:
            scale[dens] = ties_xy[dens] / ties_xx[dens]
            fits[f"ties@{dens:g}"] = ties_xy[dens] ** 2 / (ties_xx[dens] * yy)
    best_ties = max(scale, key=lambda d: fits[f"ties@{d:g}"], default=None)
    ta = fits["task-arithmetic"]
    if best_ties is not None and fits[f"ties@{best_ties:g}"] > ta + TIES_GAIN:
        r2 = fits[f"ties@{best_ties:g}"]
        return PartsFit("ties", (scale[best_ties],), r2, best_ties, n, fits,
                        f"B = base + {scale[best_ties]:.3f} TIES(task vectors, density {best_ties:g}) "
                        f"explains {r2:.1%} of B - base")
    lams = tuple(float(v) for v in lam)
    return PartsFit("task-arithmetic", lams, ta, None, n, fits,
                    "B = base + " + " + ".join(f"{v:.3f} (task{i + 1} - base)" for i, v in enumerate(lams))
                    + f" explains {ta:.1%} of B - base")


def parts_groups(ab: Matching, others: Sequence[Matching]) -> Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """(base, B, [T_i]) per tensor, each in A's layout: `ab` pairs A (the base) with B, `others[i]` A with T_i.

    Only pieces every task model has are used; vocabulary rows (embeddings, heads) are skipped, since
    a merge of models with extended vocabularies cannot be read row by row.
    """
    from modeltrace.weights.match import VOCAB_KINDS

    found = [{(p.a, p.a_rows): p for p in m.pairs} for m in others]
    for p in ab.pairs:
        if p.kind in VOCAB_KINDS:
            continue
        parts = [f.get((p.a, p.a_rows)) for f in found]
        if any(q is None for q in parts):
            continue
        base, b = ab.read_a(p), ab.read_b(p)
        tasks = [m.read_b(q) for m, q in zip(others, parts) if q is not None]
        if all(t.shape == base.shape for t in tasks) and b.shape == base.shape:
            yield base, b, tasks


MERGE_R2 = 0.5  # a parts fit explaining less of B - base than this names no merge


def merge_parts_transform(ab: Matching, a: Model, others: Sequence[Model | str], *, seed: int = 0,
                          ) -> tuple[Transform | None, dict[str, object]]:
    """Diagnose B as a merge of base A and the task models `others` (models or references, opened and
    closed here): the `merge` transform when the fit explains at least `MERGE_R2` of B - A, and the fit."""
    from modeltrace.evidence.base import Transform
    from modeltrace.model import Model
    from modeltrace.weights.match import match_models

    opened = [Model.open(o) if isinstance(o, str) else o for o in others]
    try:
        matchings = [match_models(a, t) for t in opened]
        fit = merge_from_parts(parts_groups(ab, matchings), seed=seed)
    finally:
        for o, t in zip(others, opened):
            if isinstance(o, str):
                t.close()
    refs = [t.ref for t in opened]
    info: dict[str, object] = {"method": fit.method, "lambdas": [round(v, 6) for v in fit.lambdas],
                               "r2": round(fit.r2, 6), "density": fit.density, "tensors": fit.n_tensors,
                               "fits": {k: round(v, 6) for k, v in fit.fits.items()}, "others": refs}
    if fit.method == "undetermined" or fit.r2 < MERGE_R2:
        return None, info
    return Transform("merge", f"{fit.reason} ({', '.join(refs)})", info), info
