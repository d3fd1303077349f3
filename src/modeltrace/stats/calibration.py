"""Calibration of p-values under a null: how often they fall below each level, with exact intervals.

A test is valid at level alpha when P(p <= alpha) <= alpha under its null hypothesis. Given N
p-values drawn under the null, the count below alpha is Binomial(N, P(p <= alpha)); the
Clopper-Pearson interval (Clopper & Pearson, Biometrika 1934) is exact (never below its nominal
coverage), so a lower bound above alpha is evidence of an invalid test, and an upper bound says how
large the true rate can be given the data. Used by the tests and by bench/bench_calibration.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

LEVELS = (1e-1, 1e-2, 1e-3, 1e-4)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval for a binomial proportion with k successes out of n."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = 1.0 - confidence
    lo = 0.0 if k == 0 else float(_st.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class TailRow:
    """How many of `n` null p-values fell at or below `level`, with the exact interval of that rate."""

    level: float
    count: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.count / self.n

    @property
    def consistent(self) -> bool:
        """True unless the data show the rate exceeds the level (the interval lies wholly above it)."""
        return self.low <= self.level

    def to_json(self) -> dict[str, float | int | bool]:
        return {"level": self.level, "count": self.count, "n": self.n, "rate": self.rate, "ci_low": self.low,
                "ci_high": self.high, "consistent": self.consistent}


def tail_table(pvalues: Sequence[float], levels: Sequence[float] = LEVELS,
               confidence: float = 0.95) -> list[TailRow]:
    """One TailRow per level; NaN p-values are an error (a bug must not pass as calibration)."""
    ps = np.asarray(pvalues, dtype=np.float64)
    if ps.size == 0 or np.isnan(ps).any():
        raise ValueError("need a non-empty list of p-values without NaN")
    rows = []
    for level in levels:
        k = int(np.count_nonzero(ps <= level))
        lo, hi = clopper_pearson(k, ps.size, confidence)
        rows.append(TailRow(level=level, count=k, n=int(ps.size), low=lo, high=hi))
    return rows
