"""The Report model: read from the canonical JSON, with exact errors for a malformed result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeltrace.errors import FormatError
from modeltrace.report import load
from modeltrace.report.model import Report


def test_a_saved_result_loads_with_every_part(seed_copy: dict[str, Path]) -> None:
    r = load(seed_copy["json"])
    assert r.verdict == "derived" and r.p_value < 1e-298 and r.threshold == 1e-6
    assert r.method("weight-identity") is not None and r.method("nope") is None
    assert r.transform("noise") is not None and r.rename_map and r.layer_map
    assert r.controls == () and r.detection_limit is None
    assert r.provenance["hashed"] is True


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "r.json"
    p.write_text(json.dumps(obj))
    return p


def _minimal(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"schema": "modeltrace.compare/1", "a": "A", "b": "B", "verdict": "independent",
                               "p_value": 0.5, "threshold": 1e-6, "reason": "r", "evidence": []}
    base.update(over)
    return base


@pytest.mark.parametrize(("obj", "message"), [
    ([1], "a compare result is a JSON object, got list"),
    (_minimal(schema="other/1"), "schema is 'other/1', expected 'modeltrace.compare/1'"),
    (_minimal(verdict="maybe"), "verdict is 'maybe', expected one of derived, independent, inconclusive"),
    (_minimal(p_value=2), "p_value must be a number in [0, 1], got 2"),
    (_minimal(evidence={}), "'evidence' must be a list"),
    (_minimal(evidence=[{"method": "m"}]), "evidence[0] needs string 'method' and 'status'"),
    (_minimal(evidence=[{"method": "m", "status": "ok", "p_value": "tiny"}]),
     "evidence[0].p_value must be a number in [0, 1], got 'tiny'"),
    (_minimal(controls=[{"kind": "noise", "p_value": -1}]), "controls[0].p_value must be a number in [0, 1], got -1"),
])
def test_malformed_results_name_the_file_and_the_problem(tmp_path: Path, obj: object, message: str) -> None:
    p = _write(tmp_path, obj)
    with pytest.raises(FormatError) as info:
        load(p)
    assert str(info.value) == f"{p}: {message}"


def test_bad_json_and_missing_files_are_format_errors(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text("{")
    with pytest.raises(FormatError, match=r"r\.json: invalid JSON at line 1 column 2: "):
        load(p)
    with pytest.raises(FormatError, match=r"nope\.json: cannot read: No such file or directory"):
        load(tmp_path / "nope.json")


def test_controls_and_detection_limit_are_read_when_present() -> None:
    r = Report.from_json(_minimal(controls=[{"kind": "noise", "strength": 0.01, "method": "weight-identity",
                                             "p_value": 1e-20, "detected": True}],
                                  detection_limit="Noise up to 0.5 x std would have been detected."))
    assert r.controls[0].kind == "noise" and r.controls[0].detected and r.controls[0].strength == 0.01
    assert r.detection_limit == "Noise up to 0.5 x std would have been detected."
