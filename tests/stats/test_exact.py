"""Exact sign tests: the binomial tail with integers, its floor, and its calibration under H0 by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from modeltrace.errors import EvidenceError
from modeltrace.evidence.behaviour import paired_agreement_test
from modeltrace.stats.calibration import clopper_pearson
from modeltrace.stats.exact import binomial_half_sf, checked, sign_test_floor, sign_test_p, units_needed


def test_binomial_tail_is_exact() -> None:
    assert binomial_half_sf(10, 10) == 2.0 ** -10
    assert binomial_half_sf(0, 10) == 1.0 and binomial_half_sf(11, 10) == 0.0
    for k in (1, 7, 30, 55):
        assert binomial_half_sf(k, 60) == pytest.approx(float(stats.binom.sf(k - 1, 60, 0.5)), rel=1e-12)
    assert binomial_half_sf(2000, 2000) == 1e-300  # 2^-2000 is below the float floor: clamped, not 0


def test_floor_and_units_needed() -> None:
    assert sign_test_floor(10) == 2.0 ** -10 and sign_test_floor(0) == 1.0
    assert units_needed(1e-6) == 20 and sign_test_floor(20) < 1e-6 < sign_test_floor(19)
    assert units_needed(1e-3) == 10


def test_nan_is_an_error_never_p_one() -> None:
    with pytest.raises(EvidenceError, match="the p-value came out nan"):
        checked(math.nan, "output-agreement")
    assert checked(0.25, "x") == 0.25


def _within(k: int, n: int, level: float) -> bool:
    lo, hi = clopper_pearson(k, n, 0.999)
    return lo <= level <= hi


def test_sign_test_is_exact_at_its_attainable_levels_under_h0() -> None:
    """B and the reference exchangeable relative to A: P(p <= a_k) = a_k at each attainable a_k."""
    rng = np.random.default_rng(3)
    n, reps = 24, 40000
    d_ab = rng.gamma(3.0, 0.2, size=(reps, n))
    d_ar = rng.gamma(3.0, 0.2, size=(reps, n))
    ks = (d_ab < d_ar).sum(axis=1)
    ps = np.array([sign_test_p(int(k), n) for k in ks])
    for k in (17, 19, 20):  # attainable levels near 0.03, 0.003, 0.0008
        level = binomial_half_sf(k, n)
        assert _within(int((ps <= level).sum()), reps, level), (k, level)
    assert (ps < 1e-2).mean() <= clopper_pearson(int((ps < 1e-2).sum()), reps)[1]
    assert (ps < 1e-2).mean() < 1e-2 + 3 * math.sqrt(1e-2 / reps)


def test_paired_agreement_test_is_valid_under_exchangeable_models() -> None:
    """McNemar on simulated continuations: y and r equally related to x; the tail at 1e-1 and 1e-2 holds."""
    rng = np.random.default_rng(5)
    reps, n = 4000, 60
    ps = []
    for _ in range(reps):
        x = rng.integers(0, 6, size=n)
        y = np.where(rng.random(n) < 0.3, x, rng.integers(0, 40, size=n))
        r = np.where(rng.random(n) < 0.3, x, rng.integers(0, 40, size=n))
        ps.append(paired_agreement_test([f"w{v}" for v in x], [f"w{v}" for v in y], [f"w{v}" for v in r]))
    arr = np.array(ps)
    for level in (0.1, 0.01):
        k = int((arr <= level).sum())
        assert clopper_pearson(k, reps, 0.999)[0] <= level, (level, k)  # never significantly above the level


def test_cka_block_sign_test_is_valid_under_exchangeable_models() -> None:
    """B and R drawn alike (both unrelated to A): the block sign test rejects no more than its level."""
    from modeltrace.evidence.representation import block_sign_p, unit_rows

    rng = np.random.default_rng(9)
    reps, n = 600, 48  # 6 blocks of 8 prompts
    ps = []
    for _ in range(reps):
        hx = unit_rows([rng.standard_normal((n, 12))])
        shared = rng.standard_normal((n, 12))  # what any model on these inputs picks up
        hy = unit_rows([shared + rng.standard_normal((n, 12))])
        hr = unit_rows([shared + rng.standard_normal((n, 12))])
        ps.append(block_sign_p(hx, hy, hr, 0.0))
    arr = np.array(ps)
    for k in (5, 6):  # attainable levels 7/64 and 1/64
        level = binomial_half_sf(k, 6)
        assert clopper_pearson(int((arr <= level).sum()), reps, 0.999)[0] <= level, (k, level)


def test_canary_null_is_exact_for_any_guessing_bias() -> None:
    """B never saw the facts: the right choice sits at a uniform position, so any bias of B is irrelevant."""
    from modeltrace.probes.mistakes import poisson_binomial_sf

    rng = np.random.default_rng(4)
    reps, items = 20000, 30
    bias = np.array([0.7, 0.1, 0.1, 0.1])  # B strongly prefers the first choice
    right_pos = rng.integers(0, 4, size=(reps, items))
    guesses = rng.choice(4, size=(reps, items), p=bias)
    rights = (right_pos == guesses).sum(axis=1)
    ps = np.array([poisson_binomial_sf([0.25] * items, int(k)) for k in rights])
    for k in (13, 15):
        level = poisson_binomial_sf([0.25] * items, k)
        assert _within(int((ps <= level).sum()), reps, level), (k, level)
