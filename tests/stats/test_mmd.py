from __future__ import annotations

import numpy as np

from modeltrace.stats.mmd import hamming_kernel, mmd_test


def _sampler(weights: list[float], seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    words = ["alpha beta", "alpha gamma", "delta beta", "omega"]

    def draw(prompt: int, n: int) -> list[str]:
        p = np.roll(np.array(weights), prompt)
        return [words[i] for i in rng.choice(4, size=n, p=p / p.sum())]
    return draw


def test_kernel_is_hamming_share() -> None:
    k = hamming_kernel(["abcd", "abce", "zz"], 4)
    assert k[0, 0] == 1.0 and k[0, 1] == 0.75 and k[0, 2] == 0.0


def test_same_model_is_calibrated() -> None:
    ps = []
    for s in range(30):
        a, b = _sampler([0.4, 0.3, 0.2, 0.1], s), _sampler([0.4, 0.3, 0.2, 0.1], 1000 + s)
        res = mmd_test([a(p, 6) for p in range(10)], [b(p, 6) for p in range(10)], permutations=99, seed=s)
        ps.append(res.p_value)
    assert np.mean(np.array(ps) <= 0.1) <= 0.25


def test_other_model_is_detected() -> None:
    a, b = _sampler([0.4, 0.3, 0.2, 0.1], 1), _sampler([0.1, 0.2, 0.3, 0.4], 2)
    res = mmd_test([a(p, 10) for p in range(20)], [b(p, 10) for p in range(20)], permutations=499)
    assert res.p_value <= 0.01
