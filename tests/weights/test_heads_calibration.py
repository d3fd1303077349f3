"""`weight-heads` and `weight-order` on independently trained pairs: never derived, p-values uniform or
conservative (the nulls are exact)."""

from __future__ import annotations

from pathlib import Path

from scipy import stats

from modeltrace.compare import compare
from modeltrace.model import Model


def test_p_values_of_independent_pairs_are_uniform(independent_pairs: list[tuple[Path, Path]]) -> None:
    ps: dict[str, list[float]] = {"weight-heads": [], "weight-order": []}
    for a, b in independent_pairs:
        with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
            r = compare(ma, mb, methods=["weight-match", "weight-heads", "weight-order"])
        for method, got in ps.items():
            ev = next(e for e in r.evidence if e.method == method)
            assert ev.status == "ok" and ev.p_value is not None
            got.append(ev.p_value)
        assert next(e for e in r.evidence if e.method == "weight-order").powered
    for got in ps.values():
        assert min(got) > 1e-4
    assert stats.kstest(ps["weight-heads"], "uniform").pvalue > 0.01
    # discrete, hence conservative: no excess of small p-values
    assert sum(p <= 0.1 for p in ps["weight-order"]) <= 5
