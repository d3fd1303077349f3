"""The exact inversion-count null: matches enumeration, is uniform-or-conservative, and is fast at m = 128."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from modeltrace.stats.inversions import inversion_tail, inversions


@pytest.mark.parametrize("m", [2, 3, 5, 6])
def test_tail_matches_enumeration(m: int) -> None:
    counts = [inversions(np.array(p)) for p in itertools.permutations(range(m))]
    for k in range(m * (m - 1) // 2 + 1):
        assert inversion_tail(k, m) == pytest.approx(sum(c <= k for c in counts) / math.factorial(m))


def test_inversions_counts_pairs_out_of_order(rng: np.random.Generator) -> None:
    x = rng.permutation(50)
    brute = sum(int(x[i] > x[j]) for i in range(50) for j in range(i + 1, 50))
    assert inversions(x) == brute


def test_sorted_sequence_reaches_one_over_m_factorial() -> None:
    assert inversion_tail(0, 20) == pytest.approx(1 / math.factorial(20))
    assert inversion_tail(0, 128) == 1e-300 or inversion_tail(0, 128) < 1e-200


def test_p_values_of_random_permutations_are_super_uniform(rng: np.random.Generator) -> None:
    ps = np.array([inversion_tail(inversions(rng.permutation(40)), 40) for _ in range(400)])
    for q in (0.05, 0.2, 0.5):
        assert np.mean(ps <= q) <= q + 0.05
