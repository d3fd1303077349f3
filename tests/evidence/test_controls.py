"""Positive controls behind every `independent`, and the verdict paths that depend on them."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from modeltrace.compare import compare, decide
from modeltrace.errors import EvidenceError
from modeltrace.evidence.base import ControlOutcome, Evidence
from modeltrace.evidence.controls import ControlReport
from modeltrace.model import Model
from modeltrace.stats.combine import P_FLOOR, bonferroni_min, fisher, floor

sys.path.insert(0, str(Path(__file__).parents[1] / "weights"))
import tinytrain


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controls")
    base = tinytrain.train(seed=11)
    return {
        "a": tinytrain.save_model(root / "a", base),
        "b": tinytrain.save_model(root / "b", tinytrain.train(seed=12)),
        "perm": tinytrain.save_model(root / "perm", tinytrain.permute_neurons(base, 3)),
        "rotnoise": tinytrain.save_model(root / "rotnoise",
                                         tinytrain.add_noise(tinytrain.rotate_residual(base, 4), 0.2, 5)),
    }


def _cmp(models: dict[str, Path], x: str, y: str, **kw: object):  # type: ignore[no-untyped-def]
    return compare(Model.open(str(models[x])), Model.open(str(models[y])), **kw)  # type: ignore[arg-type]


def test_independent_pair_is_cleared_only_with_its_detection_limit(models: dict[str, Path]) -> None:
    r = _cmp(models, "a", "b")
    assert r.verdict == "independent", r.reason
    assert r.controls is not None and not r.controls.missed
    kinds = {o.kind for o in r.controls.outcomes if o.detected}
    assert {"permute", "rotate", "noise", "rotate+noise", "finetune", "drop-layer", "duplicate-layer"} <= kinds
    assert "would have been detected" in r.reason and "behaviour not tested" in r.reason
    out = r.to_json()
    assert out["detection_limit"] == r.controls.limit and out["controls"]
    assert all(c["detected"] == (c["p_value"] < r.threshold) for c in out["controls"])


def test_permuted_copy_under_weight_identity_alone_is_never_independent(models: dict[str, Path]) -> None:
    r = _cmp(models, "a", "perm", methods=["weight-identity"])
    assert r.verdict != "independent"
    if r.verdict == "inconclusive":
        assert r.controls is not None and "permute" in r.controls.missed
        assert "permute" in r.reason


def test_rotated_copy_with_noise_of_a_fifth_is_not_independent(models: dict[str, Path]) -> None:
    for methods in (None, ["weight-identity"], ["weight-permutation"]):
        r = _cmp(models, "a", "rotnoise", methods=methods)
        assert r.verdict != "independent", (methods, r.reason)
    assert _cmp(models, "a", "rotnoise").verdict == "derived"


def test_without_controls_nothing_is_called_independent(models: dict[str, Path]) -> None:
    r = _cmp(models, "a", "b", controls=False)
    assert r.verdict == "inconclusive" and "positive controls were not run" in r.reason


def test_threshold_reaches_the_controls(models: dict[str, Path]) -> None:
    r = _cmp(models, "a", "b", threshold=1e-250)
    assert r.controls is not None
    assert all(o.detected == (o.p_value < 1e-250) for o in r.controls.outcomes)


# --- every verdict path -------------------------------------------------------------------------------
def _ev(method: str, p: float | None, status: str = "ok", kind: str = "weights") -> Evidence:
    return Evidence(method=method, status=status, statement="s", p_value=p, kind=kind)  # type: ignore[arg-type]


def _report(detected: list[bool]) -> ControlReport:
    outs = [ControlOutcome("noise", 0.3, "weight-identity", 1e-9 if d else 0.5, d) for d in detected]
    return ControlReport(outs, ["noise 0.3"] * len(outs), [f"noise 0.3 #{i}" for i, d in enumerate(detected) if not d],
                         "limit")


EVIDENCE = [
    [], [_ev("weight-match", None)], [_ev("weight-identity", 0.4)], [_ev("weight-identity", 1e-9)],
    [_ev("weight-identity", 0.4), _ev("diagnosis", None, "error")],
    [_ev("output-agreement", 0.2, kind="behaviour")], [_ev("weight-identity", 0.3, "skipped")],
]
REPORTS = [None, ControlReport([], [], [], "none"), _report([True, False]), _report([False]), _report([True, True])]


@pytest.mark.parametrize("evidence, report", list(itertools.product(EVIDENCE, REPORTS)))
def test_no_verdict_path_says_independent_without_detected_controls(evidence: list[Evidence],
                                                                    report: ControlReport | None) -> None:
    verdict, _p, reason = decide(evidence, 1e-6, report)
    if verdict == "independent":
        assert report is not None and report.outcomes and not report.missed
        assert all(e.status != "error" for e in evidence)
        assert any(e.status == "ok" and e.p_value is not None for e in evidence)
    if any(e.status == "error" for e in evidence) and verdict != "derived":
        assert verdict == "inconclusive" and "failed" in reason
    for e in evidence:  # the reason names only tests that ran
        if e.status == "skipped":
            assert e.method not in reason


def test_nan_p_value_is_an_error_not_no_evidence() -> None:
    with pytest.raises(EvidenceError):
        floor(float("nan"))
    with pytest.raises(EvidenceError):
        fisher([0.5, float("nan")])


def test_bonferroni_corrects_at_the_floor_too() -> None:
    assert bonferroni_min([P_FLOOR, 0.5]) == pytest.approx(2 * P_FLOOR)
    assert bonferroni_min([1e-10, 0.5, 0.9]) == pytest.approx(3e-10)
