"""Clopper-Pearson intervals and the tail table the calibration benchmark prints."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modeltrace.stats.calibration import clopper_pearson, tail_table


def test_clopper_pearson_matches_scipy_and_edges() -> None:
    lo, hi = clopper_pearson(7, 2000)
    ci = stats.binomtest(7, 2000).proportion_ci(0.95, method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert clopper_pearson(0, 2000)[0] == 0.0 and clopper_pearson(2000, 2000)[1] == 1.0
    with pytest.raises(ValueError, match="need 0 <= k <= n"):
        clopper_pearson(3, 2)


def test_tail_table_on_uniform_p_values_is_consistent() -> None:
    ps = np.random.default_rng(0).random(20000)
    rows = tail_table(ps)
    assert [r.level for r in rows] == [1e-1, 1e-2, 1e-3, 1e-4]
    assert all(r.consistent for r in rows)
    assert rows[0].low < 0.1 < rows[0].high


def test_tail_table_flags_an_anticonservative_test() -> None:
    ps = np.random.default_rng(1).random(5000) ** 2  # P(p <= a) = sqrt(a): far too many small p-values
    assert [r.consistent for r in tail_table(ps)] == [False, False, False, False]


def test_nan_p_values_are_refused() -> None:
    with pytest.raises(ValueError, match="without NaN"):
        tail_table([0.5, float("nan")])
