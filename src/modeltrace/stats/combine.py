"""Combining p-values into one verdict.

Within one test (layers of one model pair), p-values are combined with Fisher's method, valid
when the parts are independent under the null. Across evidence methods, which read the same
models and so are dependent, we use the Bonferroni bound `min(1, m * min p)`, valid under any
dependence; the harmonic mean p-value (Wilson, PNAS 2019) is reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as _st

from modeltrace.errors import EvidenceError

P_FLOOR = 1e-300  # smallest p-value we report: float64 cannot say less with meaning


def floor(p: float) -> float:
    """Clamp a p-value into [P_FLOOR, 1]. NaN is a bug upstream, never "no evidence": it raises."""
    if math.isnan(p):
        raise EvidenceError("a p-value is NaN: the test's inputs were not finite or its statistic is undefined")
    return min(1.0, max(P_FLOOR, p))


def fisher(pvalues: Sequence[float]) -> float:
    """Fisher's combined p-value: -2 sum log p ~ chi2(2k) under independent nulls."""
    ps = [floor(p) for p in pvalues]
    if not ps:
        return 1.0
    stat = -2.0 * sum(math.log(p) for p in ps)
    return floor(float(_st.chi2.sf(stat, 2 * len(ps))))


def bonferroni_min(pvalues: Sequence[float]) -> float:
    """min(1, m * min p): valid under arbitrary dependence between the tests."""
    ps = [floor(p) for p in pvalues]
    if not ps:
        return 1.0
    return floor(len(ps) * min(ps))  # at the floor too: m * P_FLOOR, never P_FLOOR itself


def harmonic_mean_p(pvalues: Sequence[float]) -> float:
    """The harmonic mean p-value (Wilson 2019), uncorrected; approximately valid under dependence."""
    ps = [floor(p) for p in pvalues]
    if not ps:
        return 1.0
    return floor(len(ps) / sum(1.0 / p for p in ps))
