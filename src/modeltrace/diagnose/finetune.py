"""Was B fine-tuned from A? Relative change per layer, and low-rank changes read as LoRA merges.

A LoRA merge adds W_B = W_A + (alpha/r) U V with U (m x r), V (r x n), so B - A has rank r and its
singular values drop sharply after the r-th (to the noise floor); a full fine-tune leaves a change
whose spectrum decays smoothly, so a low rank also needs a gap s_r / s_(r+1) >= 2. The rank is counted as the singular values
of B - A above a noise floor set from the bulk of the spectrum: the optimal hard threshold of
Gavish & Donoho (2014), tau = omega(beta) * median singular value, which is the Marchenko-Pastur
edge for white noise of unknown level (float rounding after the merge, a cast, extra noise).
Reference: M. Gavish and D. L. Donoho, "The Optimal Hard Threshold for Singular Values is
4/sqrt(3)", IEEE Trans. Inf. Theory 60(8), 2014.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modeltrace.diagnose._common import (
    as_f32,
    check_same_shape,
    pearson,
    rms,
    sample_flat,
    sample_matrix,
    singular_values,
)

SVD_MAX_DIM = 512  # larger matrices are judged on a random submatrix (rows and columns)
ROUNDOFF = 1e-5  # singular values below this share of the largest are float round-off
LOW_RANK_SHARE = 0.25  # a rank at most this share of min(m, n) counts as low rank
GAP_MIN = 2.0  # ... and only with a clear drop after it: a full fine-tune's spectrum decays smoothly


@dataclass(frozen=True)
class RankEstimate:
    """Effective rank of a change matrix and the threshold that set it."""

    rank: int
    threshold: float
    top: tuple[float, ...]  # the largest singular values (up to 16 past the rank)
    shape: tuple[int, int]  # of the matrix the SVD ran on (after sub-sampling)
    subsampled: bool
    gap: float = math.inf  # s[rank-1] / s[rank]: how far the last kept value stands above the rest


@dataclass(frozen=True)
class TensorChange:
    """How one tensor changed from A to B."""

    rel_change: float  # ||B - A|| / ||A|| (Frobenius, on a fixed sample of positions)
    corr: float | None  # Pearson r(A, B)
    rank: RankEstimate | None  # for matrices that changed
    shape: tuple[int, ...]

    @property
    def low_rank(self) -> bool:
        if self.rank is None or self.rank.rank == 0:
            return False
        m, n = self.rank.shape
        return self.rank.rank <= max(1, int(LOW_RANK_SHARE * min(m, n))) and self.rank.gap >= GAP_MIN


@dataclass(frozen=True)
class FinetuneDiagnosis:
    """Relative change per layer, overall, and whether the changes look like a LoRA merge."""

    changed: bool
    finetuned: bool  # changed, and B still correlates with A (median r >= min_corr): not a new model
    rel_change: float  # median over changed tensors
    median_corr: float | None  # median r(A, B) over changed tensors
    per_layer: dict[int, float]  # layer -> median relative change of its tensors
    lora: bool
    lora_rank: int | None
    lora_tensors: tuple[str, ...]
    ranks: dict[str, int] = field(default_factory=dict)
    confidence: float = 0.0
    reason: str = ""


def gd_omega(beta: float) -> float:
    """Gavish-Donoho's omega(beta) for an unknown noise level (their eq. 5 approximation)."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def effective_rank(delta: np.ndarray, *, seed: int = 0, max_dim: int = SVD_MAX_DIM) -> RankEstimate:
    """Count singular values of `delta` above the Gavish-Donoho threshold (and above round-off).

    Assumes B - A = low-rank signal + white noise. Sub-sampling rows and columns keeps the rank of
    the signal (generic position) but weakens faint components relative to the noise edge.
    """
    m = delta.reshape(delta.shape[0], -1) if delta.ndim != 2 else delta
    sub = sample_matrix(m, max_dim, max_dim, seed)
    subsampled = sub.shape != m.shape
    s = singular_values(sub)
    if s.size == 0 or s[0] == 0.0:
        return RankEstimate(0, 0.0, (), (int(sub.shape[0]), int(sub.shape[1])), subsampled)
    r, c = sub.shape
    beta = min(r, c) / max(r, c)
    tau = max(gd_omega(beta) * float(np.median(s)), ROUNDOFF * float(s[0]))
    rank = int(np.sum(s > tau))
    gap = math.inf if rank == 0 or rank >= s.size or s[rank] <= 0 else float(s[rank - 1] / s[rank])
    return RankEstimate(rank, tau, tuple(float(v) for v in s[: rank + 16]), (int(r), int(c)), subsampled, gap)


def tensor_change(a: np.ndarray, b: np.ndarray, *, seed: int = 0, with_rank: bool = True) -> TensorChange:
    """Relative change, correlation and (for changed matrices) the effective rank of B - A."""
    check_same_shape(a, b)
    fa = sample_flat(a, seed=seed)
    fb = sample_flat(b, seed=seed)
    na = rms(fa)
    nd = rms(fb - fa)
    rel = nd / na if na > 0 else (0.0 if nd == 0 else math.inf)
    rank = None
    if with_rank and nd > 0 and a.ndim >= 2 and min(a.shape[0], int(np.prod(a.shape[1:]))) >= 8:
        d = sample_matrix(as_f32(b), SVD_MAX_DIM, SVD_MAX_DIM, seed) - sample_matrix(as_f32(a), SVD_MAX_DIM,
                                                                                     SVD_MAX_DIM, seed)
        rank = effective_rank(d, seed=seed)
        sub_m, sub_n = a.shape[0], int(np.prod(a.shape[1:]))
        if (sub_m, sub_n) != rank.shape:
            rank = RankEstimate(rank.rank, rank.threshold, rank.top, rank.shape, True, rank.gap)
    return TensorChange(rel, pearson(fa, fb), rank, tuple(int(d) for d in a.shape))


def diagnose_finetune(changes: Mapping[str, TensorChange], layer_of: Mapping[str, int | None] | None = None,
                      *, min_change: float = 1e-6, min_corr: float = 0.5) -> FinetuneDiagnosis:
    """Per-layer relative change and a LoRA reading: most changed matrices low rank, of one common rank.

    `layer_of` maps tensor names to their layer index (None for tensors outside the stack).
    """
    layer_of = layer_of or {}
    changed = {k: c for k, c in changes.items() if math.isfinite(c.rel_change) and c.rel_change > min_change}
    if not changed:
        return FinetuneDiagnosis(False, False, 0.0, None, {}, False, None, (), {}, 0.0, "no tensor changed")
    per_layer_lists: dict[int, list[float]] = {}
    for k, c in changes.items():
        layer = layer_of.get(k)
        if layer is not None and math.isfinite(c.rel_change):
            per_layer_lists.setdefault(layer, []).append(c.rel_change)
    per_layer = {layer: statistics.median(v) for layer, v in sorted(per_layer_lists.items())}
    rel = statistics.median(c.rel_change for c in changed.values())
    corrs = [c.corr for c in changed.values() if c.corr is not None]
    med_corr = statistics.median(corrs) if corrs else None
    related = med_corr is not None and med_corr >= min_corr
    mats = {k: c for k, c in changed.items() if c.rank is not None}
    ranks = {k: c.rank.rank for k, c in mats.items() if c.rank is not None}
    low = sorted(k for k, c in mats.items() if c.low_rank)
    lora = related and bool(mats) and len(low) >= max(1, math.ceil(0.5 * len(mats)))
    lora_rank = None
    if lora:
        counts = Counter(ranks[k] for k in low)
        top = max(counts.values())
        lora_rank = max(r for r, n in counts.items() if n == top)
        reason = (f"{len(low)} of {len(mats)} changed matrices changed by a low-rank update "
                  f"(most common rank {lora_rank}): a merged LoRA adapter; median relative change {rel:.3g}")
        conf = len(low) / len(mats)
    elif not related:
        reason = (f"{len(changed)} tensors differ, but B hardly correlates with A (median r = "
                  f"{med_corr if med_corr is not None else float('nan'):.3f}): not a fine-tune of A")
        conf = 0.0
    else:
        reason = (f"{len(changed)} tensors changed, median relative change {rel:.3g}; "
                  f"{len(low)} of {len(mats)} changed matrices low rank")
        conf = 1.0 - (len(low) / len(mats) if mats else 0.0)
    return FinetuneDiagnosis(True, related, rel, med_corr, per_layer, bool(lora), lora_rank, tuple(low), ranks,
                             conf, reason)
