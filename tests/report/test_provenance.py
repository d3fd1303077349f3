"""Provenance in the canonical JSON: version, command, seeds, the sha256 of every input read and what hashing cost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from report_helpers import run_main

from modeltrace import __version__


def test_a_written_result_hashes_every_input_file(seed_copy: dict[str, Path], seed_zoo: Path,
                                                 seed_code: tuple[Path, Path]) -> None:
    p = json.loads(seed_copy["json"].read_text())["provenance"]
    assert p["tool"] == f"modeltrace {__version__}" and p["version"] == __version__
    assert p["seed"] == 0 and p["seeds"] == {"compare": 0}
    assert p["command"][:4] == ["modeltrace", "compare", str(seed_zoo / "mm-a"), str(seed_zoo / "mm-a-shell")]
    assert p["settings"]["a"] == str(seed_zoo / "mm-a") and p["settings"]["seed"] == 0
    assert p["hashed"] is True and p["hash_s"] >= 0 and p["hash_bytes"] > 0
    files_a = {f.name for f in (seed_zoo / "mm-a").iterdir()}
    assert {Path(f).name for f in p["inputs"]["a"]["sha256"]} == files_a  # config and tokenizer files too
    for f, digest in p["inputs"]["b"]["sha256"].items():
        assert hashlib.sha256(Path(f).read_bytes()).hexdigest() == digest
    extra = p["inputs"]["extra"]["sha256"]  # the modelling code given with --code
    assert set(extra) == {str(c) for c in seed_code}


def test_hashing_follows_the_outputs_and_the_flag(seed_zoo: Path, tmp_path: Path) -> None:
    def prov(*args: str) -> dict[str, object]:
        res = run_main(["compare", str(seed_zoo / "mm-a"), str(seed_zoo / "mm-b"),
                                        "--method", "config-match", *args])
        assert res.exit_code == 0, res.stderr
        out = tmp_path / "r.json"
        text = out.read_text() if "--json" in args and str(out) in args else res.stdout
        return json.loads(text)["provenance"]  # type: ignore[no-any-return]

    assert prov("--json")["hashed"] is False
    assert prov("--json", "--hash")["hashed"] is True
    assert prov("--json", str(tmp_path / "r.json"))["hashed"] is True
    assert prov("--json", str(tmp_path / "r.json"), "--no-hash")["hashed"] is False
