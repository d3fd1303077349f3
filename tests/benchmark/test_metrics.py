"""Benchmark metrics on synthetic inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modeltrace.benchmark import metrics as m


def test_p_score_floors_and_treats_missing_as_no_evidence() -> None:
    assert m.p_score(1e-6) == pytest.approx(6.0)
    assert m.p_score(1.0) == 0.0
    assert m.p_score(None) == 0.0
    assert m.p_score(float("nan")) == 0.0
    assert m.p_score(0.0) == pytest.approx(300.0)


def test_auroc_perfect_reversed_and_ties() -> None:
    assert m.auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert m.auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert m.auroc([1.0], [1.0]) == 0.5
    # pos {1, 3} vs neg {2}: one of two positives above -> 0.5
    assert m.auroc([1.0, 3.0], [2.0]) == 0.5
    # pos {2, 2} vs neg {1, 2}: pairs (2>1)x2 = 2, ties (2=2)x2 = 1 -> 3/4
    assert m.auroc([2.0, 2.0], [1.0, 2.0]) == 0.75
    assert m.auroc([], [1.0]) is None


def test_auroc_matches_brute_force(rng: np.random.Generator) -> None:
    pos = rng.normal(1.0, 1.0, 40).round(1)
    neg = rng.normal(0.0, 1.0, 55).round(1)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert m.auroc(list(pos), list(neg)) == pytest.approx(brute)


def test_tpr_at_fpr_with_enough_negatives() -> None:
    neg = [float(i) for i in range(200)]  # 0..199
    pos = [150.5, 197.5, 198.5, 250.0]
    op = m.tpr_at_fpr(pos, neg, 0.01)  # 2 negatives may lie above t -> t = 197
    assert op.threshold == 197.0
    assert op.fpr == pytest.approx(2 / 200)
    assert op.tpr == pytest.approx(3 / 4)
    assert op.resolvable
    op = m.tpr_at_fpr(pos, neg, 0.001)  # 0 allowed -> t = 199
    assert op.threshold == 199.0 and op.tpr == pytest.approx(1 / 4) and op.fpr == 0.0
    assert not op.resolvable


def test_tpr_at_fpr_few_negatives_means_zero_false_positives() -> None:
    op = m.tpr_at_fpr([5.0, 1.0], [2.0, 3.0], 0.01)
    assert op.threshold == 3.0 and op.tpr == 0.5 and op.fpr == 0.0 and not op.resolvable
    assert m.tpr_at_fpr([], [1.0], 0.01).tpr is None


def test_false_positives_counts_strictly_below_threshold() -> None:
    assert m.false_positives([1e-7, 1e-6, 0.5, None, 1e-300], 1e-6) == 2


def test_ks_uniform_accepts_uniform_and_rejects_piled_up() -> None:
    rng = np.random.default_rng(7)
    assert m.ks_uniform(rng.uniform(size=400).tolist()).p_value > 0.01  # type: ignore[operator]
    piled = m.ks_uniform([1.0] * 50)
    assert piled.statistic == pytest.approx(1.0) and piled.p_value < 1e-10  # type: ignore[operator]
    assert m.ks_uniform([0.3]).p_value is None
    assert m.ks_uniform([None, 0.2, float("nan"), 0.9]).n == 2


def test_qq_points_expected_quantiles() -> None:
    exp, obs = m.qq_points([0.5, 0.1])
    assert exp.tolist() == pytest.approx([-math.log10(0.25), -math.log10(0.75)])
    assert obs.tolist() == pytest.approx([1.0, -math.log10(0.5)])


def test_diagnosis_checks_tolerances() -> None:
    truth = {"sigma_rel": 0.01, "dropped_layers": [3, 1], "lora_rank": 8, "merge_coef": 0.3}
    good = [{"kind": "noise", "sigma_rel": 0.0129}, {"kind": "layer-drop", "dropped_layers": [1, 3]},
            {"kind": "lora", "rank": 10}, {"kind": "merge", "coef": 0.39}]
    assert m.diagnosis_checks(truth, good) == {"noise_sigma": True, "dropped_layers": True, "lora_rank": True,
                                               "merge_coef": True}
    bad = [{"kind": "noise", "sigma_rel": 0.0131}, {"kind": "layer-drop", "dropped_layers": [1]},
           {"kind": "lora", "rank": 11}, {"kind": "merge", "coef": 0.41}]
    assert m.diagnosis_checks(truth, bad) == dict.fromkeys(
        ["noise_sigma", "dropped_layers", "lora_rank", "merge_coef"], False)
    assert m.diagnosis_checks(truth, []) == dict.fromkeys(
        ["noise_sigma", "dropped_layers", "lora_rank", "merge_coef"], False)
    assert m.diagnosis_checks({"other": "x"}, good) == {}
    # the key names compare's diagnosis writes
    written = [{"kind": "layer-drop", "layers": [1, 3]}, {"kind": "merge", "coef_a": 0.35, "other": None},
               {"kind": "lora", "rank": 6}]
    assert m.diagnosis_checks(truth, written) == {"noise_sigma": False, "dropped_layers": True, "lora_rank": True,
                                                  "merge_coef": True}


def test_accuracy_and_detection_tables() -> None:
    acc = m.accuracy([{"noise_sigma": True}, {"noise_sigma": False, "lora_rank": True}])
    assert acc == {"noise_sigma": {"correct": 1, "checked": 2}, "lora_rank": {"correct": 1, "checked": 1}}
    table = m.detection_table([("noise", "a", True), ("noise", "a", False), ("lora", "b", True)])
    assert table == {"noise": {"a": {"detected": 1, "n": 2}}, "lora": {"b": {"detected": 1, "n": 1}}}


def test_score_threshold_at_fpr() -> None:
    assert m.score_threshold_at_fpr([0.1, 0.9, 0.5], 0.01) == 0.9
    assert m.score_threshold_at_fpr([], 0.01) is None
