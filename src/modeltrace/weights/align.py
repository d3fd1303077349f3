"""Align units (neurons, channels) and the residual stream of B to A.

Three tools, used by the weight evidence methods and by diagnosis:

- `unit_rows(W, kind)`: a weight as one row per hidden unit (rows of input projections and
  conv kernels; columns of output projections such as the MLP down matrix);
- `match_units(xa, yb)`: for each of A's sampled unit vectors, the most similar of B's (cosine,
  after a shared random projection of long rows), made injective (two A units never keep the same
  B unit: the more similar keeps it). The rule is *equivariant*: relabelling B's units relabels the
  answer, which is what the exact null distributions in `modeltrace.stats.nulls` need;
- `align_residual(...)`: the residual-stream map R with E_B ~= E_A R from the token embeddings of the
  tokens both vocabularies share (orthogonal Procrustes, Schoenemann 1966), so B's unit rows
  compare with A's as `rows_B @ R.T`. It is used only when it explains B's embeddings far better
  than the identity, and it reads embeddings only, so it does not depend on how B's MLP units are
  labelled (the exact per-layer tests stay exact after it).

Power cost of sampling. Matching m sampled rows instead of all n costs nothing in validity (the
null accounts for m); it costs power only through the number of fixed points a derived pair can
show: with m rows the smallest attainable p-value per layer is 1/(n)_m, below the 1e-300 floor
once m * log10(n) > 300 (m >= 91 for n = 2048; the default m = 256 reaches it for any n >= 15).
Comparing rows on r = 256 sampled coordinates adds noise of about 1/sqrt(r) to each cosine, which
matters only for pairs whose matched cosine is below ~0.3 (heavily changed); bench/bench_compare.py
measures the p-value against m on a fine-tuned and noised pair (docs/benchmarks/compare.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

OUTPUT_KINDS = ("mlp_down", "attn_o")  # units are the columns of these
DEFAULT_ROWS = 256
PROJECT_DIM = 256


def unit_rows(w: np.ndarray, kind: str) -> np.ndarray:
    """One row per hidden unit: columns of output projections (a transposed view), rows (flattened) otherwise."""
    if kind in OUTPUT_KINDS and w.ndim == 2:
        return w.T
    if w.ndim > 2:
        return w.reshape(w.shape[0], -1)
    return w


def fold_gain(rows: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """Fold a norm gain into the input side of a projection (what a residual rotation requires)."""
    if gain is None or gain.ndim != 1 or gain.shape[0] != rows.shape[1]:
        return rows
    return rows * gain[None, :].astype(np.float32)


class Projector:
    """A seeded random subset of `out_dim` coordinates of long rows; the identity when rows are short.

    Coordinate sampling instead of a Gaussian projection: it costs a gather, not a matmul over every
    unit row of B (the dominant cost on large models), and it is a column operation, so the unit
    matching stays equivariant. Cosines on a coordinate subset estimate the full cosine; a copy of
    A's unit still matches its source exactly, an unrelated unit does not.
    """

    def __init__(self, dim: int, seed: int, out_dim: int = PROJECT_DIM) -> None:
        self.dim = dim
        if dim <= out_dim:
            self.cols: np.ndarray | None = None
        else:
            rng = np.random.default_rng([seed, dim, 7])
            self.cols = np.sort(rng.choice(dim, size=out_dim, replace=False))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x if self.cols is None else x[:, self.cols]


@dataclass(frozen=True)
class UnitMatch:
    """A's sampled units and the B unit each kept (-1: lost to a more similar A unit)."""

    sample: np.ndarray  # indices into A's units
    target: np.ndarray  # index into B's units, or -1
    best: np.ndarray  # cosine with the best B unit
    second: np.ndarray  # cosine with the second-best B unit
    n_a: int
    n_b: int

    @property
    def kept(self) -> np.ndarray:
        return self.target >= 0

    def fixed_points(self) -> tuple[int, int]:
        """(F, m): kept units that landed on their own index, and how many were kept."""
        k = self.kept
        return int(np.count_nonzero(self.target[k] == self.sample[k])), int(np.count_nonzero(k))

    def confident(self, ratio: float = 1.25, floor: float = 0.5) -> np.ndarray:
        """Units whose best match clearly beats the runner-up (a descriptive, not a test, criterion)."""
        out: np.ndarray = (self.best >= floor) & (self.best >= ratio * np.maximum(self.second, 1e-12))
        return out


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.maximum(n, 1e-30)
    return out


def sample_units(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    if m >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=m, replace=False))


def match_units(xa: np.ndarray, yb: np.ndarray, sample: np.ndarray, n_a: int) -> UnitMatch:
    """Match A's sampled unit rows `xa` (rows of A at indices `sample`) into all of B's rows `yb`."""
    a = _normalize(xa.astype(np.float32, copy=False))
    b = _normalize(yb.astype(np.float32, copy=False))
    n_b = b.shape[0]
    sims = a @ b.T
    if n_b >= 2:
        r = np.arange(len(a))
        best_j = sims.argmax(axis=1)
        best = sims[r, best_j].copy()
        sims[r, best_j] = -np.inf
        second = sims.max(axis=1)
    else:
        best_j, best, second = np.zeros(len(a), dtype=np.int64), sims[:, 0], np.full(len(a), -1.0)
    target = best_j.astype(np.int64).copy()
    # injective: for each B unit chosen more than once, only the most similar A unit keeps it
    order = np.lexsort((-best, best_j))
    seen = np.zeros(n_b, dtype=bool)
    for i in order:
        j = best_j[i]
        if seen[j]:
            target[i] = -1
        else:
            seen[j] = True
    return UnitMatch(sample=np.asarray(sample, dtype=np.int64), target=target, best=best.astype(np.float64),
                     second=second.astype(np.float64), n_a=n_a, n_b=n_b)


def lap_matching(xa: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """The one-to-one matching of all of A's units to B's that maximizes total cosine (Hungarian/LAPJV)."""
    from scipy.optimize import linear_sum_assignment

    sims = _normalize(xa.astype(np.float32, copy=False)) @ _normalize(yb.astype(np.float32, copy=False)).T
    rows, cols = linear_sum_assignment(sims, maximize=True)
    out = np.empty(len(rows), dtype=np.int64)
    out[rows] = cols
    return out


def agreement(m1: UnitMatch, m2: UnitMatch) -> tuple[int, int]:
    """(K, m): units kept by both views that both views send to the same B unit, and how many were kept."""
    both = m1.kept & m2.kept
    return int(np.count_nonzero(m1.target[both] == m2.target[both])), int(np.count_nonzero(both))


@dataclass(frozen=True)
class ResidualAlignment:
    """How B's residual coordinates map to A's: E_B ~= E_A R (R orthogonal), or the identity."""

    kind: str  # "identity" | "rotate" | "permute" | "unavailable"
    r: np.ndarray | None
    fit_identity: float  # ||E_A - E_B|| / ||E_B|| on the shared tokens
    fit_rotation: float  # ||E_A R - E_B|| / ||E_B||
    tokens: int
    reason: str = ""

    def to_a(self, rows_b: np.ndarray) -> np.ndarray:
        """B's unit rows (in B's residual coordinates) expressed in A's."""
        return rows_b if self.r is None else rows_b @ self.r.T

    def moved(self) -> int:
        """Residual dimensions that R moves (for a permutation: how many are not fixed)."""
        if self.r is None:
            return 0
        return int(np.count_nonzero(np.argmax(np.abs(self.r), axis=1) != np.arange(self.r.shape[0])))

    def describe(self) -> dict[str, object]:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)  # NaN (not computed) -> null in JSON

        return {"kind": self.kind, "fit_identity": num(self.fit_identity),
                "fit_rotation": num(self.fit_rotation), "tokens": self.tokens, "moved_dims": self.moved(),
                **({"reason": self.reason} if self.reason else {})}


def procrustes(ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
    """The orthogonal R minimizing ||ea R - eb||_F (Schoenemann 1966): U V^T from the SVD of ea^T eb."""
    u, _, vt = np.linalg.svd(ea.T.astype(np.float64) @ eb.astype(np.float64))
    r: np.ndarray = (u @ vt).astype(np.float32)
    return r


# relative residual below which a fitted residual-stream rotation is believed (see align_residual)
ROTATION_FIT_GOOD = 0.15


def screen_residual(ea: np.ndarray, eb: np.ndarray, *, good: float = ROTATION_FIT_GOOD,
                    gram_tokens: int = 512) -> tuple[str, float, float]:
    """Cheap first look at shared-token embeddings: ("match" | "differ" | "rotation-like", fit_identity, gram).

    "match": B's embeddings already match A's (relative error < `good`): R is the identity. "differ": the
    token Gram matrices of a `gram_tokens` subset differ (relative error >= `good`); a rotation or
    permutation of the residual stream would preserve them, so there is no rotation to find.
    """
    nb = float(np.linalg.norm(eb)) or 1.0
    fit_i = float(np.linalg.norm(ea - eb)) / nb
    if fit_i < good:
        return "match", fit_i, float("nan")
    sub = np.linspace(0, ea.shape[0] - 1, min(gram_tokens, ea.shape[0])).astype(np.int64)
    ga = ea[sub].astype(np.float64) @ ea[sub].T.astype(np.float64)
    gb = eb[sub].astype(np.float64) @ eb[sub].T.astype(np.float64)
    gram = float(np.linalg.norm(ga - gb) / (np.linalg.norm(gb) or 1.0))
    return ("differ" if gram >= good else "rotation-like"), fit_i, gram


def align_residual(ea: np.ndarray | None, eb: np.ndarray | None, *, good: float = ROTATION_FIT_GOOD,
                   gain: float = 0.5) -> ResidualAlignment:
    """Choose R from shared-token embeddings: a rotation only when it fits well and far better than I.

    `ea`, `eb`: the embeddings of the same tokens (rows) in A and B. `screen_residual` first (cheap);
    only a rotation-like pair pays for the d x d orthogonal Procrustes fit, and R is used when
    fit_rotation < `good` and fit_rotation < `gain` * fit_identity.

    Why `good` is strict: independently trained models that share a tokenizer learn embeddings that a
    rotation relates loosely (on the benchmark zoo, relative residuals 0.37-0.52 for independent
    GPT-2 and BERT bases). Accepting such a rotation aligns the two residual streams well enough for
    convergent MLP features to agree, which made the permutation test call 140 of 518 independent
    pairs derived at a gate of 0.5. A rotated copy fits to its noise level (0.0 on the zoo).
    """
    if ea is None or eb is None or ea.shape != eb.shape:
        return ResidualAlignment("unavailable", None, float("nan"), float("nan"), 0 if ea is None else ea.shape[0],
                                 "no shared token embeddings")
    verdict, fit_i, gram = screen_residual(ea, eb, good=good)
    if verdict == "match":
        return ResidualAlignment("identity", None, fit_i, float("nan"), ea.shape[0], "B's embeddings match A's")
    if verdict == "differ":
        return ResidualAlignment("identity", None, fit_i, float("nan"), ea.shape[0],
                                 f"token Gram matrices differ (relative error {gram:.3g}): no rotation relates them")
    if ea.shape[0] < ea.shape[1]:
        return ResidualAlignment("unavailable", None, fit_i, float("nan"), ea.shape[0],
                                 f"{ea.shape[0]} shared tokens cannot fix a {ea.shape[1]}-dimensional rotation")
    nb = float(np.linalg.norm(eb)) or 1.0
    r = procrustes(ea, eb)
    fit_r = float(np.linalg.norm(ea @ r - eb)) / nb
    if fit_r < good and fit_r < gain * fit_i:
        is_perm = bool(np.all(np.max(np.abs(r), axis=1) > 0.9))
        return ResidualAlignment("permute" if is_perm else "rotate", r, fit_i, fit_r, ea.shape[0])
    return ResidualAlignment("identity", None, fit_i, fit_r, ea.shape[0])


# --- residual streams of different widths --------------------------------------------------------

ORDER_PAIRS = 128  # matched pairs an order test uses (a seeded subsample; see stats.inversions)


def order_test(a_idx: np.ndarray, b_idx: np.ndarray, rng: np.random.Generator,
               m_max: int = ORDER_PAIRS) -> tuple[int, int, float]:
    """(inversions, m, exact p) of matched pairs (A index, B index): few inversions = B kept A's order.

    The pairs are subsampled by position in A's order with `rng` (which never sees B's labels), so
    under H0 (B's labels uniform) the subsample's B indices are still in uniformly random order.
    """
    from modeltrace.stats.inversions import inversion_tail, inversions

    order = np.argsort(a_idx, kind="stable")
    a_idx, b_idx = np.asarray(a_idx)[order], np.asarray(b_idx)[order]
    if len(a_idx) > m_max:
        pick = np.sort(rng.choice(len(a_idx), size=m_max, replace=False))
        a_idx, b_idx = a_idx[pick], b_idx[pick]
    m = len(b_idx)
    k = inversions(b_idx)
    return k, m, inversion_tail(k, m)


@dataclass(frozen=True)
class WidthAlignment:
    """Residual dimensions of two models of different widths paired through shared-token embeddings.

    `sel_a[k]` and `sel_b[k]` are the k-th pair (A's and B's dimension), in A's order: the pairs a
    unit of one model is compared over with a unit of the other: a partial assignment (every
    dimension of the narrower model that kept its match); `confident` of them clearly beat the runner-up.
    """

    sel_a: np.ndarray
    sel_b: np.ndarray
    d_a: int
    d_b: int
    tokens: int
    inversions: int
    order_m: int
    order_p: float  # exact: see `order_test`
    confident: int = 0

    def describe(self) -> dict[str, object]:
        narrow = min(self.d_a, self.d_b)
        return {"kind": "width", "d_a": self.d_a, "d_b": self.d_b, "paired_dims": len(self.sel_a),
                "paired_share_of_narrower": round(len(self.sel_a) / narrow, 4) if narrow else 0.0,
                "kept_fraction": round(self.d_b / self.d_a, 4) if self.d_a else None,
                "confident_dims": self.confident, "tokens": self.tokens, "order": {"inversions": self.inversions, "pairs": self.order_m,
                                                 "p_value": self.order_p}}


def align_widths(ea: np.ndarray, eb: np.ndarray, seed: int) -> WidthAlignment:
    """Pair A's and B's residual dimensions by their embedding columns over the same tokens.

    Each dimension of the narrower model is matched to the most similar column (correlation over
    the shared tokens) of the wider one, injectively (a dimension that loses its match to a more
    similar one stays unpaired). Matching B's columns is equivariant to relabelling B's residual
    dimensions, and which pairs are kept does not depend on the labels, which is what the exact
    order test needs.
    """
    def cols(e: np.ndarray) -> np.ndarray:
        x: np.ndarray = e.astype(np.float64) - e.mean(axis=0, keepdims=True)
        return x.T  # one row per residual dimension

    xa, xb = cols(ea), cols(eb)
    narrow_is_b = xb.shape[0] <= xa.shape[0]
    small, big = (xb, xa) if narrow_is_b else (xa, xb)
    um = match_units(small, big, np.arange(small.shape[0]), small.shape[0])
    conf = um.kept  # every injective pair: the order test needs no confidence, and has its power from all of them
    s_idx, b_of = np.flatnonzero(conf), um.target[conf]
    sel_a, sel_b = (b_of, s_idx) if narrow_is_b else (s_idx, b_of)
    order = np.argsort(sel_a, kind="stable")
    sel_a, sel_b = sel_a[order], sel_b[order]
    if len(sel_a) >= 2:
        k, m, p = order_test(sel_a, sel_b, np.random.default_rng([seed, 29]))
    else:
        k, m, p = 0, len(sel_a), 1.0
    return WidthAlignment(sel_a.astype(np.int64), sel_b.astype(np.int64), int(xa.shape[0]), int(xb.shape[0]),
                          int(ea.shape[0]), k, m, p, int(np.count_nonzero(um.kept & um.confident())))
