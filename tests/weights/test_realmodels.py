"""The labelled real pairs (../shared/realmodels/pairs.json) come out as labelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeltrace.compare import compare
from modeltrace.model import Model

WEIGHT_METHODS = ["weight-match", "weight-identity", "weight-permutation"]


def _compare(root: Path, a: str, b: str):  # type: ignore[no-untyped-def]
    for name in (a, b):
        if not (root / name).is_dir():
            pytest.skip(f"real model {name} absent from {root}")
    with Model.open(str(root / a)) as ma, Model.open(str(root / b)) as mb:
        return compare(ma, mb, methods=WEIGHT_METHODS)


@pytest.mark.realmodels
@pytest.mark.slow
@pytest.mark.parametrize(("pid", "a", "b"), [
    ("P01", "all-minilm-l6-v2", "all-minilm-l6-v2-int8-onnx"),
    ("P02", "all-minilm-l6-v2", "all-minilm-l6-v2-rebrand-internal"),
])
def test_derived_pairs(realmodels: Path, pid: str, a: str, b: str) -> None:
    r = _compare(realmodels, a, b)
    assert r.verdict == "derived" and r.p_value < 1e-100, pid
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(i, i) for i in range(6)]


@pytest.mark.realmodels
@pytest.mark.slow
@pytest.mark.parametrize(("pid", "a", "b"), [
    ("N16", "efficientnet-lite0", "efficientnet-lite1"),
    ("N22", "smollm2-135m-instruct-q4_1", "gemma-3-270m-q4_k_m"),
    ("N23", "gemma-3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m"),
])
def test_independent_pairs(realmodels: Path, pid: str, a: str, b: str) -> None:
    r = _compare(realmodels, a, b)
    assert r.verdict != "derived", pid
    assert r.p_value > 1e-3


@pytest.mark.realmodels
@pytest.mark.slow
@pytest.mark.parametrize(("pid", "a", "b"), [
    ("N22", "smollm2-135m-instruct-q4_1", "gemma-3-270m-q4_k_m"),
    ("N23", "gemma-3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m"),
])
def test_independent_models_of_different_widths_get_a_powered_test(realmodels: Path, pid: str, a: str,
                                                                     b: str) -> None:
    for name in (a, b):
        if not (realmodels / name).is_dir():
            pytest.skip(f"real model {name} absent from {realmodels}")
    with Model.open(str(realmodels / a)) as ma, Model.open(str(realmodels / b)) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-order", "weight-heads"])
    # a test ran and found nothing; the verdict is not `independent` because its positive controls show
    # that these tests, the only ones that apply across widths, would miss a permuted copy: said exactly
    assert r.verdict == "inconclusive", pid
    assert r.controls is not None and "permute" in r.controls.missed
    assert "would have missed a copy made by permute" in r.reason
    order = next(e for e in r.evidence if e.method == "weight-order")
    assert order.powered and order.p_value > 1e-3 and "nothing comparable" not in order.statement
    w = order.details["widths"]
    assert w["d_a"] != w["d_b"] and w["paired_dims"] >= 64
    heads = next(e for e in r.evidence if e.method == "weight-heads")
    assert heads.statement.startswith("nothing comparable: head counts differ (A ")  # the exact reason
