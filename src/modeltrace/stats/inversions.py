"""Exact null of an order statistic: the number of inversions of a uniformly random permutation.

Used where a derivation keeps the *order* of units but not their indices (width pruning keeps a
subset of MLP units and residual dimensions in their original order, so matched pairs are
monotone). Take matched pairs (i_1 < i_2 < ... < i_m on A's side, each with its partner j_k on B's
side) from a matching rule that is equivariant to relabelling B's units. Under H0 B's labels are a
uniformly random permutation independent of A, so the sequence j_1..j_m is in uniformly random
order, and I = #{k < l : j_k > j_l} has the Mahonian law: P(I = x) = M(m, x) / m!, where
M(m, x) counts the permutations of m with x inversions (M(n, x) = sum_{t=0}^{n-1} M(n-1, x-t)).
`inversion_tail(k, m)` = P(I <= k) exactly, in integer arithmetic (no underflow: 1/m! for m = 128
is about 1e-216). Few inversions mean B's units kept A's order. The p-value is discrete, hence
conservative (super-uniform), which keeps Fisher's combination across independent layers valid.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from modeltrace.stats.combine import P_FLOOR

MAX_M = 128  # pairs per test (callers subsample): the exact count stays fast


def inversions(seq: np.ndarray) -> int:
    """#{k < l : seq[k] > seq[l]} (values distinct), by merge counting in O(m log m)."""
    def sort(a: list[int]) -> tuple[list[int], int]:
        if len(a) <= 1:
            return a, 0
        mid = len(a) // 2
        left, x = sort(a[:mid])
        right, y = sort(a[mid:])
        out, inv, i, j = [], x + y, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                inv += len(left) - i
                j += 1
        out += left[i:] + right[j:]
        return out, inv

    return sort([int(v) for v in seq])[1]


@lru_cache(maxsize=256)
def _cumulative(m: int, k: int) -> int:
    """#{permutations of m with at most k inversions}."""
    counts = [1]  # n = 1
    for n in range(2, m + 1):
        width = min(len(counts) + n - 1, k + 1)
        prefix = [0]
        for c in counts:
            prefix.append(prefix[-1] + c)
        new = []
        for x in range(width):
            hi = min(x, len(counts) - 1)
            lo = x - (n - 1)
            new.append(prefix[hi + 1] - prefix[max(lo, 0)] if hi >= max(lo, 0) else 0)
        counts = new
    return sum(counts[: k + 1])


EXACT_K = 400  # up to this many inversions the tail is summed in integers; above it in float64
FLOAT_SLACK = 1e-9  # relative; the float64 sum of positive terms is far more accurate than this


@lru_cache(maxsize=64)
def _law(m: int) -> np.ndarray:
    """P(I = x), x = 0..m(m-1)/2, in float64: P_n(x) = (1/n) sum_{t<n} P_{n-1}(x - t), positive terms only."""
    p = np.ones(1)
    for n in range(2, m + 1):
        c = np.concatenate([[0.0], np.cumsum(p)])
        x = np.arange(len(p) + n - 1)
        hi = np.minimum(x, len(p) - 1) + 1
        lo = np.maximum(x - (n - 1), 0)
        p = (c[hi] - c[lo]) / n
    out: np.ndarray = p
    return out


def inversion_tail(k: int, m: int) -> float:
    """P(I <= k) for the inversion count I of a uniform random permutation of m items.

    Exact (integers) when k <= EXACT_K, where the small p-values that decide live; above, from the
    float64 law inflated by FLOAT_SLACK, which keeps it conservative (those p-values are large).
    """
    if m < 0 or m > 4 * MAX_M:
        raise ValueError(f"need 0 <= m <= {4 * MAX_M}, got {m}")
    if m <= 1 or k >= m * (m - 1) // 2:
        return 1.0
    if k < 0:
        return 0.0
    if k > EXACT_K:
        return min(1.0, float(np.sum(_law(m)[: k + 1])) * (1 + FLOAT_SLACK))
    total = 1
    for t in range(2, m + 1):
        total *= t
    x = Fraction(_cumulative(m, k), total)
    if x.denominator.bit_length() - x.numerator.bit_length() > 1000:
        return P_FLOOR
    return min(1.0, max(P_FLOOR, x.numerator / x.denominator))
