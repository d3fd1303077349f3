"""Models of different widths: width-pruned and healed copies are derived with the kept fraction; a model of the
pruned shape trained from scratch is not, with a powered test."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinytrain as tt
import widths as wd

from modeltrace.compare import compare
from modeltrace.model import Model

D_KEPT, FF_KEPT = 24, 96
METHODS = ["weight-match", "weight-identity", "weight-permutation", "weight-order"]


def _compare(a: Path, b: Path):  # type: ignore[no-untyped-def]
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        return compare(ma, mb, methods=METHODS)


def _ev(r, method: str):  # type: ignore[no-untyped-def]
    return next(e for e in r.evidence if e.method == method)


@pytest.fixture(scope="module")
def a_dir(model_dir, base_state) -> Path:  # type: ignore[no-untyped-def]
    return model_dir("W-A", base_state)


@pytest.mark.parametrize("heal", [0, 100])
def test_width_pruned_and_healed_is_derived_with_kept_fraction(heal: int, a_dir: Path, base_state,  # type: ignore[no-untyped-def]
                                                                model_dir) -> None:
    pruned = wd.prune(base_state, D_KEPT, FF_KEPT, seed=4)
    if heal:
        pruned = wd.train(pruned, steps=heal, seed=5, lr=1e-3)
    r = _compare(a_dir, model_dir(f"W-pruned-{heal}", pruned))
    assert r.verdict == "derived" and r.p_value < 1e-6
    ev = _ev(r, "weight-order")
    assert ev.p_value < 1e-20 and ev.powered
    w = ev.details["widths"]
    assert (w["d_a"], w["d_b"], w["kept_fraction"]) == (tt.HIDDEN, D_KEPT, D_KEPT / tt.HIDDEN)
    assert w["paired_dims"] >= D_KEPT - 2
    assert ev.details["mlp_kept_fraction"] == FF_KEPT / tt.FF
    prune = next(t for t in r.transforms if t.kind == "prune")
    assert prune.estimates["residual_kept_fraction"] == D_KEPT / tt.HIDDEN
    assert prune.estimates["mlp_kept_fraction"] == FF_KEPT / tt.FF


def test_model_of_the_pruned_shape_trained_from_scratch_is_not_derived(a_dir: Path, model_dir) -> None:  # type: ignore[no-untyped-def]
    scratch = wd.train(wd.fresh(D_KEPT, FF_KEPT, seed=8), steps=tt.STEPS, seed=9)
    r = _compare(a_dir, model_dir("W-scratch", scratch))
    assert r.verdict != "derived"
    ev = _ev(r, "weight-order")
    assert ev.powered and "nothing comparable" not in ev.statement
    assert ev.p_value > 1e-4
