"""`modeltrace report RESULT.json`: rebuilds the same report from the JSON alone; bad input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result
from report_helpers import run_main

from modeltrace.cli import cli


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_report_rebuilds_the_same_files_from_the_json(seed_copy: dict[str, Path], tmp_path: Path) -> None:
    res = _run("report", str(seed_copy["json"]), "--html", str(tmp_path / "r.html"), "--md", str(tmp_path / "r.md"),
               "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert res.output == (f"wrote {tmp_path / 'r.html'}\nwrote {tmp_path / 'r.md'}\n"
                          f"wrote {tmp_path / 'r.json'}\n")
    assert (tmp_path / "r.html").read_bytes() == seed_copy["html"].read_bytes()
    assert (tmp_path / "r.md").read_text() == seed_copy["md"].read_text().replace("report-img/", "r-img/")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(seed_copy["json"].read_text())
    for png in (seed_copy["md"].parent / "report-img").iterdir():
        assert (tmp_path / "r-img" / png.name).read_bytes() == png.read_bytes()


def test_report_needs_no_models(seed_copy: dict[str, Path], tmp_path: Path) -> None:
    obj = json.loads(seed_copy["json"].read_text())
    obj["a"], obj["b"] = str(tmp_path / "gone-a"), str(tmp_path / "gone-b")
    obj["provenance"]["settings"]["a"] = obj["a"]
    (tmp_path / "moved.json").write_text(json.dumps(obj))
    res = _run("report", str(tmp_path / "moved.json"), "--html", str(tmp_path / "m.html"))
    assert res.exit_code == 0
    assert "Verdict: DERIVED" in (tmp_path / "m.html").read_text()


def test_report_without_outputs_prints_the_summary(seed_twin: dict[str, Path]) -> None:
    res = _run("report", str(seed_twin["json"]))
    assert res.exit_code == 0
    assert res.output.startswith("No sign that B is derived from A")


def test_bad_result_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    res = run_main(["report", str(bad), "--html", str(tmp_path / "x.html")])
    assert res.exit_code == 2
    assert res.stderr == f"error: {bad}: invalid JSON at line 1 column 1: Expecting value\n"
    res = run_main(["report", "verify", str(tmp_path / "missing.json")])
    assert res.exit_code == 2
    assert res.stderr == f"error: {tmp_path / 'missing.json'}: cannot read: No such file or directory\n"
    assert not (tmp_path / "x.html").exists()


def test_an_unwritable_output_is_one_line_and_exit_2(seed_twin: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "r.html"  # its folder is a file
    res = run_main(["report", str(seed_twin["json"]), "--html", str(out)])
    assert res.exit_code == 2
    assert res.stderr == f"error: {out}: cannot write the html report: {tmp_path / 'file'} is not a folder\n"
