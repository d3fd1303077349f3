"""The SQLite index: migrations, one transaction per model, corrupt files, and kill -9 in the middle of an add."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modeltrace.errors import IndexError_
from modeltrace.index.fingerprint import fingerprint, from_bytes, to_bytes
from modeltrace.index.store import SCHEMA_VERSION, IndexStore

REPO = Path(__file__).resolve().parents[2]


def add(store: IndexStore, name: str, path: Path) -> int:
    data = to_bytes(fingerprint(str(path)))
    return store.add(name, from_bytes(data, name), data)


def test_new_index_is_migrated_to_the_latest_schema(tmp_path: Path) -> None:
    with IndexStore(tmp_path / "i.db") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.count() == 0 and s.generation() == 0


def test_a_version_one_index_is_migrated_in_place(tmp_path: Path) -> None:
    from modeltrace.index.store import MIGRATIONS

    db = sqlite3.connect(tmp_path / "old.db")
    for stmt in MIGRATIONS[0]:
        db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with IndexStore(tmp_path / "old.db") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == 3
        cols = [r[1] for r in s.db.execute("PRAGMA table_info(models)")]
        assert "labels" in cols and "layers" in cols


def test_add_list_remove_and_generation(tmp_path: Path, family: dict[str, Path]) -> None:
    with IndexStore(tmp_path / "i.db") as s:
        add(s, "base", family["base"])
        add(s, "noise", family["noise"])
        assert [e.name for e in s.entries()] == ["base", "noise"]
        assert s.generation() == 2
        assert s.entries()[0].layers == 3
        assert s.fingerprint(s.entries()[1].id).meta["name"] == "noise"
        assert s.remove(["base", "missing"]) == 1
        assert [e.name for e in s.entries()] == ["noise"] and s.generation() == 3


def test_adding_a_name_twice_is_an_index_error(tmp_path: Path, family: dict[str, Path]) -> None:
    with IndexStore(tmp_path / "i.db") as s:
        add(s, "base", family["base"])
        with pytest.raises(IndexError_) as err:
            add(s, "base", family["base"])
        assert str(err.value) == f"{tmp_path / 'i.db'}: a model named 'base' is already indexed"
        assert s.count() == 1


def test_a_file_that_is_not_sqlite_is_one_index_error(tmp_path: Path) -> None:
    p = tmp_path / "junk.db"
    p.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(IndexError_) as err:
        IndexStore(p)
    assert str(err.value) == f"{p}: not a usable modeltrace index (file is not a database)"


def test_another_sqlite_file_is_not_taken_for_an_index(tmp_path: Path) -> None:
    p = tmp_path / "other.db"
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE songs (x)")
    db.commit()
    db.close()
    with pytest.raises(IndexError_) as err:
        IndexStore(p)
    assert str(err.value) == f"{p}: an SQLite file, but not a modeltrace index (tables: songs)"


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "new.db"
    with IndexStore(p):
        pass
    db = sqlite3.connect(p)
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    with pytest.raises(IndexError_) as err:
        IndexStore(p)
    assert str(err.value) == f"{p}: index schema version 7 is newer than this modeltrace knows (3)"


def test_a_corrupt_stored_fingerprint_is_an_index_error(tmp_path: Path, family: dict[str, Path]) -> None:
    with IndexStore(tmp_path / "i.db") as s:
        mid = add(s, "base", family["base"])
        s.db.execute("UPDATE models SET fingerprint = ? WHERE id = ?", (b"MTFP\x00\x00", mid))
        with pytest.raises(IndexError_) as err:
            s.fingerprint(mid)
        assert str(err.value).startswith(f"{tmp_path / 'i.db'}: stored fingerprint of 'base' is corrupt (")


def test_kill_9_during_add_leaves_only_whole_models_and_the_next_add_carries_on(
        tmp_path: Path, family: dict[str, Path]) -> None:
    refs = []
    for k in range(80):
        link = tmp_path / "m" / f"model{k:02d}"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(family["base" if k % 2 else "other0"], target_is_directory=True)
        refs.append(str(link))
    db = tmp_path / "i.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "modeltrace", "index", "--index", str(db), "add", *refs]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                seen = con.execute("SELECT COUNT(*) FROM models").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                seen = 0
            if seen >= 3:
                break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with IndexStore(db) as s:
        assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        entries = s.entries()
        assert 3 <= len(entries) < 80
        for e in entries:  # every committed model is whole
            fp = s.fingerprint(e.id)
            assert len(fp.layers) == 3
        assert s.generation() == len(entries)
        before = len(entries)
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"added {80 - before}, skipped {before} already indexed, failed 0; 80 model(s)")


def test_two_concurrent_writers_both_finish(tmp_path: Path, family: dict[str, Path]) -> None:
    db = tmp_path / "i.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    groups = [[str(family[k]) for k in ("base", "noise", "permute")], [str(family[k]) for k in ("other0", "other1")]]
    procs = [subprocess.Popen([sys.executable, "-m", "modeltrace", "index", "--index", str(db), "add", *g], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for g in groups]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with IndexStore(db) as s:
        assert sorted(e.name for e in s.entries()) == sorted(groups[0] + groups[1])
        assert s.generation() == 5
