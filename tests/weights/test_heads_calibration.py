"""`weight-heads` on independently trained pairs: never derived, p-values uniform (the null is exact)."""

from __future__ import annotations

from pathlib import Path

from scipy import stats

from modeltrace.compare import compare
from modeltrace.model import Model


def test_head_p_values_of_independent_pairs_are_uniform(independent_pairs: list[tuple[Path, Path]]) -> None:
    ps = []
    for a, b in independent_pairs:
        with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
            r = compare(ma, mb, methods=["weight-match", "weight-heads"])
        ev = next(e for e in r.evidence if e.method == "weight-heads")
        assert ev.status == "ok" and ev.p_value is not None and len(ev.details["layers"]) == 2
        ps.append(ev.p_value)
    assert min(ps) > 1e-4
    assert stats.kstest(ps, "uniform").pvalue > 0.01
