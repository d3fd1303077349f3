"""The fixed-point null: exact tail against simulation, validity of the bound, uniformity of the randomized p."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modeltrace.stats.nulls import fixed_point_bound, fixed_point_tail, null_fixed_points, randomized_p


@pytest.mark.parametrize(("m", "n"), [(5, 10), (64, 64), (30, 200)])
def test_exact_tail_matches_simulation(m: int, n: int) -> None:
    rng = np.random.default_rng(0)
    draws = null_fixed_points(m, n, 20000, rng)
    for k in range(1, 5):
        emp = float(np.mean(draws >= k))
        exact = fixed_point_tail(k, m, n)
        se = math.sqrt(max(exact * (1 - exact), 1e-6) / len(draws))
        assert abs(emp - exact) < 5 * se + 1e-4, (k, emp, exact)


def test_tail_edge_cases() -> None:
    assert fixed_point_tail(0, 10, 10) == 1.0
    assert fixed_point_tail(11, 10, 10) == 0.0
    assert fixed_point_tail(6, 6, 6) == pytest.approx(1 / math.factorial(6))
    # exactly n-1 fixed points is impossible for a full permutation: P(F >= n-1) = P(F = n)
    assert fixed_point_tail(5, 6, 6) == pytest.approx(1 / math.factorial(6))
    assert fixed_point_tail(128, 128, 128) == pytest.approx(1 / math.factorial(128), rel=1e-9)
    assert fixed_point_tail(2000, 2000, 8192) == 1e-300  # floored, never 0
    with pytest.raises(ValueError, match="need 0 <= m <= n"):
        fixed_point_tail(1, 11, 10)


@pytest.mark.parametrize(("m", "n"), [(5, 10), (40, 300), (128, 128)])
def test_bound_dominates_exact_tail(m: int, n: int) -> None:
    for k in range(1, min(m, 12)):
        assert fixed_point_bound(k, m, n) >= fixed_point_tail(k, m, n) * (1 - 1e-12)


def test_bound_is_valid_for_a_non_injective_rule() -> None:
    # f sends every sampled unit to one of 3 B units (many collisions): the Markov bound must still hold
    rng = np.random.default_rng(1)
    n, m = 20, 20
    f = rng.integers(0, 3, size=m)
    alpha_hits = {0.05: 0, 0.2: 0}
    trials = 20000
    for _ in range(trials):
        pi = rng.permutation(n)
        k = int(np.count_nonzero(pi[f] == np.arange(m)))
        p = fixed_point_bound(k, m, n)
        for a in alpha_hits:
            alpha_hits[a] += p <= a
    for a, hits in alpha_hits.items():
        assert hits / trials <= a + 0.01


@pytest.mark.parametrize(("m", "n"), [(10, 10), (50, 400)])
def test_randomized_p_is_uniform_under_the_null(m: int, n: int) -> None:
    rng = np.random.default_rng(2)
    draws = null_fixed_points(m, n, 5000, rng)
    u = rng.random(len(draws))
    ps = np.array([randomized_p(int(k), m, n, float(x)) for k, x in zip(draws, u)])
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    for alpha in (0.01, 0.05, 0.2):
        assert np.mean(ps <= alpha) <= alpha + 3 * math.sqrt(alpha / len(ps))


def test_randomized_p_is_tiny_for_many_fixed_points() -> None:
    assert randomized_p(64, 64, 64, 0.5) < 1e-80
    assert randomized_p(0, 0, 10, 0.3) == pytest.approx(0.3)


def test_spearman_of_random_permutations_is_calibrated_and_identity_is_extreme() -> None:
    from modeltrace.stats.nulls import spearman_identity_p

    rng = np.random.default_rng(3)
    ps = np.array([spearman_identity_p(rng.permutation(200))[1] for _ in range(2000)])
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    rho, p = spearman_identity_p(np.arange(200))
    assert rho == pytest.approx(1.0) and p < 1e-40
