"""Shared mistakes with reference models: the null is measured on unrelated pairs, not modelled.

Models trained on the same data find the same wrong answers tempting. These tests simulate exactly that
(each item has one tempting distractor every model prefers) and check that the reference-based test
stays calibrated where the modelled null does not, and still convicts a copy.
"""

from __future__ import annotations

import numpy as np

from modeltrace.probes.make import make_facts
from modeltrace.probes.mistakes import shared_mistakes
from modeltrace.probes.probeset import ProbeItem


def _population(items: list[ProbeItem], seed: int) -> dict[str, str]:
    """Each item's tempting wrong answer, shared by every model trained on the same data."""
    rng = np.random.default_rng(seed)
    return {it.id: str(rng.choice([c for c in it.choices if c != it.answer])) for it in items}


def _model(items: list[ProbeItem], tempting: dict[str, str], rng: np.random.Generator, err: float,
           pull: float = 0.7) -> dict[str, str]:
    out = {}
    for it in items:
        if rng.random() >= err:
            out[it.id] = it.answer
        elif rng.random() < pull:
            out[it.id] = tempting[it.id]
        else:
            out[it.id] = str(rng.choice([c for c in it.choices if c != it.answer]))
    return out


def test_reference_null_is_calibrated_where_the_modelled_null_is_not() -> None:
    items = make_facts(300, seed=5)
    tempting = _population(items, 5)
    rng = np.random.default_rng(11)
    with_refs, modelled = [], []
    for _ in range(40):
        a, b = _model(items, tempting, rng, 0.5), _model(items, tempting, rng, 0.4)
        refs = [_model(items, tempting, rng, 0.45) for _ in range(2)]
        res = shared_mistakes(items, a, b, refs)
        assert res.null == "references" and len(res.reference_pairs) == 4
        with_refs.append(res.p_value)
        modelled.append(shared_mistakes(items, a, b).p_value)
    ps = np.array(with_refs)
    assert ps.min() > 1e-4 and np.mean(ps <= 0.05) <= 0.15  # valid: no more rejections than the level allows
    assert np.median(modelled) < 1e-3  # without references, shared temptations look like copying


def test_copy_is_still_caught_against_references() -> None:
    items = make_facts(400, seed=6)
    tempting = _population(items, 6)
    rng = np.random.default_rng(12)
    a = _model(items, tempting, rng, 0.5)
    b = dict(a)
    for it in items[:40]:  # a fine-tuned copy: 10% of the answers re-drawn
        b[it.id] = _model([it], tempting, rng, 0.5)[it.id]
    refs = [_model(items, tempting, rng, 0.5) for _ in range(2)]
    res = shared_mistakes(items, a, b, refs)
    assert res.null == "references"
    assert res.p_value < 1e-6
    assert res.same_wrong > res.expected_same_wrong
    worst = max(refs_pair["p_value"] for refs_pair in res.reference_pairs)
    assert res.p_value == worst  # intersection-union: the least convincing comparison decides


def test_references_that_never_err_with_a_or_b_fall_back_to_the_modelled_null() -> None:
    items = make_facts(60, seed=7)
    perfect = {it.id: it.answer for it in items}
    rng = np.random.default_rng(13)
    a = _model(items, _population(items, 7), rng, 0.5)
    res = shared_mistakes(items, a, dict(a), [perfect])
    assert res.null == "structure" and res.reference_pairs == []
