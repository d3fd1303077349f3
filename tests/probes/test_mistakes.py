from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modeltrace.probes.make import make_facts
from modeltrace.probes.mistakes import poisson_binomial_sf, shared_mistakes


def test_poisson_binomial_matches_binomial() -> None:
    qs = [0.3] * 40
    for s in (0, 5, 12, 20, 40):
        assert poisson_binomial_sf(qs, s) == pytest.approx(stats.binom.sf(s - 1, 40, 0.3), rel=1e-9, abs=1e-15)


def _answers(items, rng, err, bias=None):  # type: ignore[no-untyped-def]
    out = {}
    for it in items:
        if rng.random() < err:
            wrong = [c for c in it.choices if c != it.answer]
            p = None
            if bias is not None:
                p = np.array([bias.get(c, 1.0) for c in wrong])
                p = p / p.sum()
            out[it.id] = str(rng.choice(wrong, p=p))
        else:
            out[it.id] = it.answer
    return out


def test_independent_models_are_calibrated() -> None:
    items = make_facts(300, seed=1)
    rng = np.random.default_rng(0)
    ps = []
    for _ in range(60):
        a = _answers(items, rng, 0.5, bias={"A": 3.0})  # both share a preference for option A
        b = _answers(items, rng, 0.4, bias={"A": 3.0})
        ps.append(shared_mistakes(items, a, b).p_value)
    # valid test: P(p <= alpha) <= alpha (with sampling slack), and no tiny p-values
    assert np.mean(np.array(ps) <= 0.1) <= 0.2
    assert min(ps) > 1e-4


def test_copy_shares_mistakes() -> None:
    items = make_facts(300, seed=2)
    rng = np.random.default_rng(1)
    a = _answers(items, rng, 0.5)
    b = dict(a)
    for k in list(b)[:60]:  # a fine-tuned copy: some answers changed
        b[k] = items[0].choices[0]
    res = shared_mistakes(items, a, b)
    assert res.p_value < 1e-6
    assert res.same_wrong > 2 * res.expected_same_wrong


def test_shared_right_answers_are_not_evidence() -> None:
    items = make_facts(100, seed=3)
    perfect = {it.id: it.answer for it in items}
    res = shared_mistakes(items, perfect, perfect)
    assert res.both_right == 100 and res.p_value == 1.0
