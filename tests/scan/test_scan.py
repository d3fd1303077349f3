"""Scans: good models indexed, corrupt and hostile ones recorded with their reason, the next scan carries on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))

import builders

from modeltrace.cli import cli
from modeltrace.index.store import IndexStore
from modeltrace.scan.walk import walk

HOSTILE_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."


@pytest.fixture()
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "hub"
    builders.save(root / "org" / "good-a", builders.random_state(0))
    builders.save(root / "org" / "good-b", builders.noised(builders.random_state(0), 0.05, 1))
    bad = builders.save(root / "org" / "truncated", builders.random_state(1))
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    hostile = root / "evil"
    hostile.mkdir(parents=True)
    (hostile / "config.json").write_text("{}")
    (hostile / "pytorch_model.bin").write_bytes(HOSTILE_PICKLE)
    empty = root / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    return root


def test_walk_finds_every_model_folder(collection: Path) -> None:
    assert [Path(r).relative_to(collection).as_posix() for r in walk(collection)] == [
        "evil", "no-weights", "org/good-a", "org/good-b", "org/truncated"]


def test_scan_indexes_the_good_records_the_bad_and_resumes(collection: Path, tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    r = CliRunner().invoke(cli, ["scan", str(collection), "--index", str(db), "--workers", "2", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 2
    out = json.loads(r.output)
    assert (out["found"], out["added"], out["skipped"], out["failed"]) == (5, 2, 0, 3)
    reasons = out["failures"]
    assert reasons[str(collection / "evil")].startswith("UnsafeFileError: ")
    assert reasons[str(collection / "no-weights")] == (f"FormatError: {collection / 'no-weights'}: no weight files "
                                                       "found (looked for safetensors, .bin/.pt/.pth, GGUF and ONNX "
                                                       "files)")
    assert reasons[str(collection / "org" / "truncated")].startswith("FormatError: ")
    with IndexStore(db) as s:
        assert sorted(e.name for e in s.entries()) == [str(collection / "org" / "good-a"),
                                                        str(collection / "org" / "good-b")]
        assert set(s.failures()) == set(reasons)
    again = CliRunner().invoke(cli, ["scan", str(collection), "--index", str(db), "--json"], catch_exceptions=False)
    js = json.loads(again.output)
    assert (js["added"], js["skipped"], js["failed"]) == (0, 2, 3)


def test_a_list_file_names_the_models(collection: Path, tmp_path: Path) -> None:
    lst = tmp_path / "models.txt"
    lst.write_text(f"# two models\n{collection / 'org' / 'good-a'}\n\n{collection / 'org' / 'good-b'}\n")
    assert walk(lst) == [str(collection / "org" / "good-a"), str(collection / "org" / "good-b")]


from modeltrace.scan.run import fingerprint_job as _real_job


def _dies_on_b(ref: str, hash_files: bool) -> tuple[str, bytes | None, str | None]:
    import os

    if ref.endswith("good-b"):
        os._exit(9)  # the worker process dies on this model
    return _real_job(ref, hash_files)


def test_a_worker_that_dies_loses_only_its_model(collection: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from modeltrace.scan import run

    monkeypatch.setattr(run, "fingerprint_job", _dies_on_b)
    refs = [str(collection / "org" / n) for n in ("good-a", "good-b")]
    with IndexStore(tmp_path / "i.db") as s:
        report = run.scan(s, refs, workers=1)
        assert report.failed == {refs[1]: "worker process died while fingerprinting this model"}
        assert [e.name for e in s.entries()] == [refs[0]]
