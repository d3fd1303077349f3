"""The fingerprint and index commands, and compare on fingerprint files, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from modeltrace.cli import cli, main


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=False)
    return r.exit_code, r.output


def test_fingerprint_then_compare_fingerprints(tmp_path: Path, family: dict[str, Path]) -> None:
    a, b = tmp_path / "a.mtfp", tmp_path / "b.mtfp"
    code, out = run("fingerprint", str(family["base"]), "-o", str(a))
    assert code == 0 and out.startswith(f"{a}: ") and "3 MLP layer(s), basis tokens" in out
    run("fingerprint", str(family["permute"]), "-o", str(b))
    code, out = run("compare", str(a), str(b), "--json")
    js = json.loads(out)
    assert js["verdict"] == "derived" and js["schema"] == "modeltrace.compare/1"
    code, out = run("compare", str(a), str(family["other0"]))
    assert out.startswith("INCONCLUSIVE")  # no positive controls from a fingerprint


def test_a_corrupt_fingerprint_in_compare_is_one_line_and_exit_2(tmp_path: Path, family: dict[str, Path],
                                                                 capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.mtfp"
    bad.write_bytes(b"MTFP\xff\xff\xff\x00")
    try:
        main(["compare", str(bad), str(family["base"])])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}: fingerprint header is 16777215 bytes, over the 8388608-byte cap\n"


def test_index_add_search_list_remove_stats(tmp_path: Path, family: dict[str, Path]) -> None:
    db = str(tmp_path / "i.db")
    code, out = run("index", "--index", db, "add", str(family["base"]), str(family["other0"]))
    assert code == 0 and out == f"added 2, skipped 0 already indexed, failed 0; 2 model(s) in {db}\n"
    code, out = run("index", "--index", db, "add", str(family["base"]))
    assert out == f"added 0, skipped 1 already indexed, failed 0; 2 model(s) in {db}\n"
    code, out = run("index", "--index", db, "search", str(family["noise"]), "--json")
    js = json.loads(out)
    assert js["schema"] == "modeltrace.index-search/1"
    assert js["hits"][0]["name"] == str(family["base"]) and js["hits"][0]["related"]
    assert js["hits"][1]["verdict"] == "inconclusive" and not js["hits"][1]["related"]
    code, out = run("index", "--index", db, "search", str(family["other3"]))
    assert out.startswith(f"nothing in the index is related to {family['other3']}")
    code, out = run("index", "--index", db, "list", "--json")
    assert [e["name"] for e in json.loads(out)] == [str(family["base"]), str(family["other0"])]
    code, out = run("index", "--index", db, "remove", str(family["base"]), "nope")
    assert out == "removed 1; 1 name(s) were not indexed\n"
    code, out = run("index", "--index", db, "stats", "--json")
    assert json.loads(out)["models"] == 1


def test_index_add_reports_a_bad_model_and_keeps_the_rest(tmp_path: Path, family: dict[str, Path],
                                                          capsys) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "i.db")
    try:
        main(["index", "--index", db, "add", str(tmp_path / "missing"), str(family["base"])])
    except SystemExit as exc:
        assert exc.code == 2
    cap = capsys.readouterr()
    assert cap.err == f"error: {tmp_path / 'missing'}: no such file or folder\n"
    assert cap.out == f"added 1, skipped 0 already indexed, failed 1; 1 model(s) in {db}\n"


def test_a_corrupt_index_is_one_line_and_exit_2(tmp_path: Path, family: dict[str, Path],
                                                capsys) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "i.db"
    db.write_bytes(b"garbage" * 1000)
    try:
        main(["index", "--index", str(db), "search", str(family["base"])])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {db}: not a usable modeltrace index (file is not a database)"
    assert len(err.splitlines()) == 2 and err.splitlines()[1].startswith("hint: ")


def test_search_without_an_index_says_so(tmp_path: Path, family: dict[str, Path],
                                         capsys) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "none.db"
    try:
        main(["index", "--index", str(db), "search", str(family["base"])])
    except SystemExit as exc:
        assert exc.code == 2
    assert capsys.readouterr().err == (f"error: {db}: no index here (run `modeltrace index add` first)\n")
