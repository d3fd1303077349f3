"""The summary: built from the evidence, never stronger than its numbers, and honest about what was not tested."""

from __future__ import annotations

import json
from pathlib import Path

from modeltrace.report import load
from modeltrace.report.model import Report
from modeltrace.report.summary import fmt_p, p_is, summary


def test_the_copy_summary_quotes_each_kind_of_evidence(seed_copy: dict[str, Path]) -> None:
    r = load(seed_copy["json"])
    text = " ".join(summary(r))
    noise = r.transform("noise")
    assert noise is not None
    # the Bonferroni bound over the methods at the 1e-300 floor: a few times 1e-300
    assert text.startswith("B is derived from A: if B had been trained independently of A, evidence this strong "
                           "would turn up with a probability ") and "e-300" in text[:160]
    assert (f"B's language model, projector and vision tower are A's weights with Gaussian noise of about "
            f"1/{1 / noise['sigma_rel']:.0f} of each tensor's spread added") in text
    assert "renames A's prefix 'vpm.' to 'vison.'" in text
    assert "The tokenizer adds A's 8 custom token(s) at the same ids 512-519" in text
    assert "The modelling code llama3v_modeling.py shares" in text and "identifier(s) renamed" in text


def test_the_twin_summary_says_what_was_tested_what_not_and_why_shared_artifacts_do_not_count(
        seed_twin: dict[str, Path]) -> None:
    r = load(seed_twin["json"])
    lines = summary(r)
    text = " ".join(lines)
    assert r.verdict == "independent"
    assert lines[0].startswith("No sign that B is derived from A") and "not proof" in lines[0]
    assert "B is derived from A:" not in text.replace("No sign that B is derived from A:", "")
    assert "A and B share their architecture" in text and "not evidence that B's weights come from A" in text
    assert any(s.startswith("Tested: weight-identity (p = ") for s in lines)
    assert any(s.startswith("Not tested: ") and "--behaviour" in s for s in lines)
    assert lines[-1].startswith("Positive controls (known transforms of A tested the same way): the tests would "
                                "have detected permute (")


def test_positive_controls_say_what_would_have_been_detected(seed_twin: dict[str, Path]) -> None:
    obj = json.loads(seed_twin["json"].read_text())
    obj["controls"] = [
        {"kind": "noise", "strength": 0.01, "method": "weight-identity", "p_value": 1e-40, "detected": True},
        {"kind": "finetune", "strength": None, "method": "weight-permutation", "p_value": 0.2, "detected": False}]
    obj["detection_limit"] = "Copies with noise up to 1% of each tensor's spread are detected."
    lines = summary(Report.from_json(obj))
    assert lines[-1] == ("Positive controls (known transforms of A tested the same way): the tests would have "
                         "detected noise at strength 0.01 (weight-identity, p = 1.0e-40); did not detect finetune "
                         "(weight-permutation, p = 0.2). Copies with noise up to 1% of each tensor's spread are "
                         "detected.")


def test_p_values_read_as_numbers_with_the_floor_as_a_bound() -> None:
    assert [fmt_p(p) for p in (None, 1e-300, 0.5, 0.0123, 3.2e-7)] == ["-", "< 1e-300", "0.5", "0.0123", "3.2e-07"]
    assert p_is(1e-300) == "p < 1e-300" and p_is(0.25) == "p = 0.25"
