"""Independently trained pairs (same architecture, data and tokenizer; different seeds) are never derived,
and the core tests' p-values are uniform."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from modeltrace.compare import compare
from modeltrace.model import Model

WEIGHT_METHODS = ["weight-match", "weight-identity", "weight-permutation"]


@pytest.fixture(scope="module")
def results(independent_pairs: list[tuple[Path, Path]]):  # type: ignore[no-untyped-def]
    out = []
    for a, b in independent_pairs:
        with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
            out.append(compare(ma, mb, methods=WEIGHT_METHODS, seed=0))
    return out


def _ps(results, method: str) -> list[float]:  # type: ignore[no-untyped-def]
    return [next(e.p_value for e in r.evidence if e.method == method) for r in results]


@pytest.mark.slow
def test_no_independent_pair_is_derived(results) -> None:  # type: ignore[no-untyped-def]
    assert len(results) >= 20
    assert [r.verdict for r in results] == ["independent"] * len(results)
    for r in results:
        assert all(e.powered for e in r.evidence if e.p_value is not None and e.method != "weight-match")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["weight-identity", "weight-permutation"])
def test_p_values_of_independent_pairs_are_uniform(results, method: str) -> None:  # type: ignore[no-untyped-def]
    ps = _ps(results, method)
    assert min(ps) > 1e-3
    assert stats.kstest(ps, "uniform").pvalue > 0.05


@pytest.mark.slow
def test_layer_map_finds_no_correspondence_between_independent_models(results) -> None:  # type: ignore[no-untyped-def]
    mapped = sum(e["a_layer"] is not None for r in results for e in r.layer_map)
    assert mapped == 0
