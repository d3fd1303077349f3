from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from modeltrace.cli import cli


def test_make_commit_verify_reveal(tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(cli, ["probe", "make", str(tmp_path / "s"), "--facts", "9", "--glyphs", "2"])
    assert res.exit_code == 0, res.output
    assert "wrote 11 items" in res.output
    res = r.invoke(cli, ["probe", "commit", str(tmp_path / "s"), "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["probe", "verify", str(tmp_path / "s"), str(tmp_path / "c.json"), "--reveal", "3"])
    assert res.exit_code == 0 and res.output.startswith("OK: ")
    opening = res.output.splitlines()[1]
    (tmp_path / "o.json").write_text(opening)
    res = r.invoke(cli, ["probe", "check-opening", str(tmp_path / "o.json"), str(tmp_path / "c.json")])
    assert res.exit_code == 0 and "OK: item 3" in res.output
    items = (tmp_path / "s" / "items.jsonl").read_text().splitlines()
    first = json.loads(items[0])
    first["prompt"] += " "
    items[0] = json.dumps(first)
    (tmp_path / "s" / "items.jsonl").write_text("\n".join(items) + "\n")
    res = r.invoke(cli, ["probe", "verify", str(tmp_path / "s"), str(tmp_path / "c.json")])
    assert res.exit_code == 1 and res.output.startswith("MISMATCH: root mismatch")
