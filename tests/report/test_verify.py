"""`modeltrace report verify`: re-runs on the same bytes; refuses (exit 2) when an input changed or was never hashed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from report_helpers import Ran, run_main


def _verify(path: Path) -> Ran:
    return run_main(["report", "verify", str(path)])


def test_verify_reproduces_the_saved_result(seed_copy: dict[str, Path]) -> None:
    res = _verify(seed_copy["json"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("inputs: ") and lines[0].endswith(" file(s), sha256 unchanged")
    assert lines[1].split() == ["verdict", "same", "saved:", "derived"]
    assert lines[-1] == "reproduced: verdict derived and every p-value"


@pytest.fixture
def own_copy(seed_zoo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the pair (so it can be changed) and a result with hashes."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(seed_zoo / "mm-a", a)
    shutil.copytree(seed_zoo / "mm-a-shell", b)
    out = tmp_path / "r.json"
    res = run_main(["compare", str(a), str(b), "--json", str(out),
                                    "--method", "weight-identity", "--method", "config-match"])
    assert res.exit_code == 0, res.stderr
    return b, out


def test_verify_refuses_when_an_input_file_changed(own_copy: tuple[Path, Path]) -> None:
    b, out = own_copy
    cfg = b / "config.json"
    old = hashlib.sha256(cfg.read_bytes()).hexdigest()
    cfg.write_text(cfg.read_text() + " ")
    new = hashlib.sha256(cfg.read_bytes()).hexdigest()
    res = _verify(out)
    assert res.exit_code == 2
    assert res.stderr == (f"error: {cfg}: sha256 is {new}, the result recorded {old}: the input changed, so the "
                          "result cannot be verified on it\n")


def test_verify_refuses_when_an_input_file_is_missing(own_copy: tuple[Path, Path]) -> None:
    b, out = own_copy
    (b / "tokenizer.json").unlink()
    res = _verify(out)
    assert res.exit_code == 2
    assert res.stderr == f"error: {b / 'tokenizer.json'}: recorded as an input of the result, but missing\n"


def test_verify_says_when_a_p_value_does_not_reproduce(own_copy: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = own_copy
    obj = json.loads(out.read_text())
    wi = next(e for e in obj["evidence"] if e["method"] == "weight-identity")
    wi["p_value"] = 0.5
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(obj))
    res = _verify(forged)
    assert res.exit_code == 1
    out_lines = res.stdout.splitlines()
    assert any(line.startswith("weight-identity") and "DIFFERS" in line and "saved: ok p=0.5" in line
               for line in out_lines)
    assert out_lines[-1] == "NOT reproduced: 1 check(s) differ"


def test_verify_refuses_a_result_without_hashes(seed_zoo: Path, tmp_path: Path) -> None:
    res = run_main(["compare", str(seed_zoo / "mm-a"), str(seed_zoo / "mm-b"), "--json",
                                    "--method", "config-match"])
    assert res.exit_code == 0
    out = tmp_path / "stdout.json"
    out.write_text(res.stdout)
    assert json.loads(res.stdout)["provenance"]["hashed"] is False  # printing JSON does not hash by default
    v = _verify(out)
    assert v.exit_code == 2
    assert v.stderr == (f"error: {out}: records no sha256 for the files of a, so it cannot be verified\n"
                        "hint: run compare again with --hash (the default when it writes a report)\n")
