"""Exact small-sample tests for the behaviour and representation methods, and a guard against NaN.

The behaviour tests compare A-B with A-reference on the same prompts. Their p-values must stay
valid far in the tail (a verdict is decided near 1e-6), where normal and t approximations are
not: they are replaced here by exact binomial tails computed with integers.

- `sign_test_p(k, n)`: P(X >= k) for X ~ Binomial(n, 1/2). Used as a *sign test*: with n
  independent units (prompts, or blocks of prompts) and k of them where B is closer to A than the
  reference (by the method's margin), it is a valid p-value for H0 "on a random unit, B is closer
  with probability at most 1/2" (the count is then stochastically smaller than Binomial(n, 1/2)).
  Ties count against B, which keeps it valid. Its smallest value is 2^-n, so n units can never
  reject below 2^-n: `sign_test_floor` says so before any query is spent.
- `checked(p, what)`: a p-value that is NaN is a bug, never "no evidence": it raises.
Reference: the sign test (Arbuthnott 1710; e.g. Lehmann & Romano, Testing Statistical
Hypotheses, 3rd ed., sec. 6.4).
"""

from __future__ import annotations

import math
from fractions import Fraction

from modeltrace.errors import EvidenceError
from modeltrace.stats.combine import P_FLOOR


def _to_float(x: Fraction) -> float:
    if x <= 0:
        return 0.0
    if x.denominator.bit_length() - x.numerator.bit_length() > 1000:
        return P_FLOOR
    return min(1.0, max(P_FLOOR, x.numerator / x.denominator))


def binomial_half_sf(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic), floored at P_FLOOR."""
    if n < 0:
        raise ValueError(f"need n >= 0, got {n}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return _to_float(Fraction(sum(math.comb(n, j) for j in range(k, n + 1)), 1 << n))


def sign_test_p(k: int, n: int) -> float:
    """One-sided exact sign test: k of n units favour B (see the module docstring)."""
    return max(P_FLOOR, binomial_half_sf(k, n)) if n > 0 else 1.0


def sign_test_floor(n: int) -> float:
    """The smallest p-value a sign test over n units can give: 2^-n."""
    return _to_float(Fraction(1, 1 << n)) if n > 0 else 1.0


def units_needed(threshold: float) -> int:
    """The fewest units a sign test needs to be able to reach p < threshold."""
    return max(1, math.floor(math.log2(1.0 / threshold)) + 1)


def checked(p: float, what: str) -> float:
    """`p` unchanged when it is a probability; an EvidenceError when it is NaN or out of [0, 1]."""
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise EvidenceError(f"{what}: the p-value came out {p!r}, not a probability (a bug, not evidence)")
    return p
