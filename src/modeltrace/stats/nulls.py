"""Null distributions of unit-matching statistics: fixed points of a matching under a random relabelling.

The setting (after Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language Models",
ICML 2025). Under H0 the two models were trained from independent initializations by a
procedure that is equivariant to permuting hidden units (MLP neurons, conv output channels),
with an initialization whose distribution is invariant to that permutation. Then B has the
same distribution as B with the units of one layer relabelled by a uniformly random
permutation `pi`, independent of A and of everything else.

Take any matching rule `f` that maps m sampled units i of A to units f(i) of B and is
*equivariant* (relabelling B's units relabels the answer: f_{pi B} = pi o f_B), e.g. the
argmax of cosine similarity. Let F = #{i : f(i) = i} be the number of units that land on
their own index. Under H0, F has the law of #{i : pi(f(i)) = i} for a uniform `pi`.

Exact law when f is injective on the sampled set S (we make it so: when two units of A pick
the same unit of B, only the one with the higher similarity keeps it; which rows are kept is
invariant to relabelling B, so conditioning on it is allowed). For any j-subset T of S, the
event {pi(f(i)) = i for all i in T} fixes j distinct values of pi, so

    P(all of T fixed) = (n - j)! / n! = 1 / (n)_j          (falling factorial)

The binomial moments of F are therefore E[C(F, j)] = C(m, j) / (n)_j (m = |S|), and by
inclusion-exclusion

    P(F >= k) = sum_{j >= k} (-1)^(j-k) C(j-1, k-1) C(m, j) / (n)_j .

The first term is Markov's bound on k-subsets, P(F >= k) <= E[C(F,k)] = C(m,k)(n-k)!/n!,
which holds for *any* f (injective or not); `fixed_point_bound` returns it. `fixed_point_tail`
evaluates the exact sum with integer arithmetic (no cancellation error).

F is discrete, so the plain p-value P(F >= k) is conservative: under H0 it equals 1 whenever
k <= 1. `randomized_p` returns P(F > k) + U * P(F = k) with U ~ Uniform(0,1) drawn from a seeded
generator; under H0 it is exactly Uniform(0,1), which is what makes Fisher's combination across
layers exact and lets the calibration test on independent pairs be a uniformity test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from modeltrace.stats.combine import P_FLOOR

EXACT_LIMIT = 4096  # above this many matched units the tail is the (valid) Markov bound


def _fraction_to_float(x: Fraction) -> float:
    """A non-negative fraction as float, clamped to the p-value floor instead of underflowing to 0."""
    if x <= 0:
        return 0.0
    num, den = x.numerator, x.denominator
    if den.bit_length() - num.bit_length() > 1000:  # far below 1e-300
        return P_FLOOR
    return max(P_FLOOR, num / den)


def _log_falling(n: int, j: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(n - j + 1)


def fixed_point_bound(k: int, m: int, n: int) -> float:
    """Markov bound P(F >= k) <= C(m, k) (n-k)!/n!, valid for any matching rule (see module doc)."""
    if k <= 0:
        return 1.0
    if k > min(m, n):
        return P_FLOOR
    log_p = math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) - _log_falling(n, k)
    return 1.0 if log_p >= 0 else max(P_FLOOR, math.exp(log_p))


def _exact_pmf_tail(k: int, m: int, n: int) -> tuple[Fraction, Fraction]:
    """(P(F >= k), P(F == k)) exactly, for an injective matching of m of n units."""
    if k > m:
        return Fraction(0), Fraction(0)
    # (n)_m / (n)_j = (n-j)(n-j-1)...(n-m+1): build from j = m downwards, so every term is an integer
    tail_num = 0
    eq_num = 0
    ratio = 1  # (n)_m / (n)_j for j = m
    for j in range(m, k - 1, -1):
        if j < m:
            ratio *= n - j
        base = math.comb(m, j) * ratio
        sign = -1 if (j - k) % 2 else 1
        tail_num += sign * (math.comb(j - 1, k - 1) if k > 0 else (1 if j == 0 else 0)) * base
        eq_num += sign * math.comb(j, k) * base
    den = 1
    for t in range(m):
        den *= n - t
    tail = Fraction(tail_num, den) if k > 0 else Fraction(1)
    return tail, Fraction(eq_num, den)


def fixed_point_tail(k: int, m: int, n: int) -> float:
    """Exact P(F >= k) under H0 for an injective matching of m sampled units into n units."""
    if m > n or m < 0:
        raise ValueError(f"need 0 <= m <= n, got m={m}, n={n}")
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    if m > EXACT_LIMIT:
        return fixed_point_bound(k, m, n)
    tail, _ = _exact_pmf_tail(k, m, n)
    return min(1.0, _fraction_to_float(tail))


def randomized_p(k: int, m: int, n: int, u: float) -> float:
    """P(F > k) + u P(F = k): exactly Uniform(0,1) under H0 when u ~ Uniform(0,1) independently."""
    if m == 0:
        return float(u) if u > 0 else P_FLOOR
    if m > EXACT_LIMIT:
        return fixed_point_bound(k, m, n)  # conservative, not randomized
    tail, eq = _exact_pmf_tail(k, m, n)
    p = (tail - eq) + Fraction(u) * eq
    return min(1.0, max(P_FLOOR, _fraction_to_float(p)))


def null_fixed_points(m: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Monte Carlo draws of F for an injective matching i -> i of m of n units under uniform pi.

    Used by the tests to check `fixed_point_tail` and the calibration of `randomized_p`.
    """
    out = np.empty(size, dtype=np.int64)
    idx = np.arange(m)
    for t in range(size):
        perm = rng.permutation(n)
        out[t] = int(np.count_nonzero(perm[:m] == idx))
    return out


def spearman_identity_p(perm: np.ndarray) -> tuple[float, float]:
    """(rho, one-sided p) for the rank correlation of a full matching `perm` with the identity.

    Zhu et al. (ICML 2025): under H0 the matching is a uniformly random permutation, whose Spearman
    correlation with the identity has mean 0 and variance 1/(n-1); p is the normal tail of
    rho * sqrt(n-1) (an approximation, good for n in the tens and above).
    """
    from scipy import stats as _st

    n = len(perm)
    if n < 3:
        return 0.0, 1.0
    rho = float(np.corrcoef(np.arange(n), np.asarray(perm, dtype=np.float64))[0, 1])
    p = float(_st.norm.sf(rho * np.sqrt(n - 1)))
    return rho, max(P_FLOOR, p)

