"""The lineage index on disk: one SQLite file, numbered schema migrations, one transaction per model.

Why SQLite: one file, no server, safe against concurrent writers (WAL journal, a busy timeout,
`BEGIN IMMEDIATE` so two writers queue instead of failing midway) and against crashes (a model's
row, fingerprint and the generation counter are written in one transaction: a process killed
mid-add leaves every committed model and no partial one). The schema version is SQLite's
`user_version`; `MIGRATIONS[k]` takes version k to k+1, each in its own transaction.

Tables: ``models`` (one row per indexed model: name, reference, candidate vector, the fingerprint
file's bytes, labels as JSON) and ``meta`` (``generation``, bumped by every change, which tells the
nearest-neighbour cache in `index.candidates` when it is stale).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np

from modeltrace.errors import FormatError, IndexError_
from modeltrace.index.fingerprint import VECTOR_DIM, Fingerprint, from_bytes

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
     "INSERT INTO meta (key, value) VALUES ('generation', '0')",
     ("CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, ref TEXT NOT NULL, "
      "added TEXT NOT NULL, fp_sha256 TEXT NOT NULL, fp_size INTEGER NOT NULL, vector BLOB NOT NULL, "
      "fingerprint BLOB NOT NULL)")),
    ("ALTER TABLE models ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
     "ALTER TABLE models ADD COLUMN layers INTEGER NOT NULL DEFAULT 0",
     "ALTER TABLE models ADD COLUMN parameters INTEGER NOT NULL DEFAULT 0",
     "CREATE INDEX models_sha ON models (fp_sha256)"),
    ("CREATE TABLE scan_failures (ref TEXT PRIMARY KEY, error TEXT NOT NULL, at TEXT NOT NULL)",),
)
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Entry:
    """One indexed model, without its fingerprint."""

    id: int
    name: str
    ref: str
    added: str
    fp_sha256: str
    fp_size: int
    layers: int
    parameters: int
    labels: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "ref": self.ref, "added": self.added,
                "fingerprint_sha256": self.fp_sha256, "fingerprint_bytes": self.fp_size, "layers": self.layers,
                "parameters": self.parameters, "labels": self.labels}


class IndexStore:
    """An open index file (see the module docstring). Use as a context manager or call `close`."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise IndexError_(f"{self.path}: no index here (run `modeltrace index add` first)")
        if self.path.exists() and not self.path.is_file():
            raise IndexError_(f"{self.path}: not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise IndexError_(f"{self.path}: not a usable modeltrace index ({exc})",
                              hint="move the file away and rebuild the index with `modeltrace index add`") from exc

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise IndexError_(f"{self.path}: index schema version {version} is newer than this modeltrace knows "
                              f"({SCHEMA_VERSION})", hint="upgrade modeltrace")
        if version == 0:
            tables = self.db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
            if tables:
                raise IndexError_(f"{self.path}: an SQLite file, but not a modeltrace index "
                                  f"(tables: {', '.join(sorted(t[0] for t in tables))[:200]})")
        while version < SCHEMA_VERSION:
            with self.transaction():
                now = int(self.db.execute("PRAGMA user_version").fetchone()[0])
                if now != version:  # another process migrated meanwhile
                    version = now
                    continue
                for stmt in MIGRATIONS[version]:
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version = {version + 1}")
            version += 1
        for table in ("models", "meta"):
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone() is None:
                raise IndexError_(f"{self.path}: index lacks its {table!r} table")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately so that concurrent writers wait rather than fail."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self._close_quietly()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: index unreadable ({exc})") from exc

    # --- writing ------------------------------------------------------------------------------
    def add(self, name: str, fp: Fingerprint, data: bytes, *, labels: dict[str, str] | None = None,
            replace: bool = False) -> int:
        """Insert (or replace) one model in one transaction; returns its row id."""
        added = datetime.now(UTC).isoformat(timespec="seconds")
        vec = np.ascontiguousarray(fp.vector, dtype=np.float32).tobytes()
        try:
            with self.transaction() as db:
                if replace:
                    db.execute("DELETE FROM models WHERE name = ?", (name,))
                cur = db.execute(
                    "INSERT INTO models (name, ref, added, fp_sha256, fp_size, vector, fingerprint, labels, layers, "
                    "parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, fp.ref, added, fp.sha256, len(data), vec, data, json.dumps(labels or {}, sort_keys=True),
                     len(fp.layers), int(fp.meta.get("parameters") or 0)))
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        except sqlite3.IntegrityError as exc:
            raise IndexError_(f"{self.path}: a model named {name!r} is already indexed",
                              hint="use --replace to fingerprint it again") from exc
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: could not write to the index ({exc})") from exc
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def add_many(self, items: list[tuple[str, Fingerprint, bytes, dict[str, str]]]) -> None:
        """Insert many models in one transaction (bulk loads: all of them or none)."""
        added = datetime.now(UTC).isoformat(timespec="seconds")
        rows = [(name, fp.ref, added, fp.sha256, len(data), np.ascontiguousarray(fp.vector, dtype=np.float32).tobytes(),
                 data, json.dumps(labels, sort_keys=True), len(fp.layers), int(fp.meta.get("parameters") or 0))
                for name, fp, data, labels in items]
        try:
            with self.transaction() as db:
                db.executemany(
                    "INSERT INTO models (name, ref, added, fp_sha256, fp_size, vector, fingerprint, labels, layers, "
                    "parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        except sqlite3.IntegrityError as exc:
            raise IndexError_(f"{self.path}: a model in the batch is already indexed ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: could not write to the index ({exc})") from exc

    def record_failure(self, ref: str, error: str) -> None:
        """Remember that `ref` could not be fingerprinted (a scan's partial failure, kept as data)."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            with self.transaction() as db:
                db.execute("INSERT OR REPLACE INTO scan_failures (ref, error, at) VALUES (?, ?, ?)",
                           (ref, error[:2000], at))
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: could not write to the index ({exc})") from exc

    def clear_failure(self, ref: str) -> None:
        try:
            with self.transaction() as db:
                db.execute("DELETE FROM scan_failures WHERE ref = ?", (ref,))
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: could not write to the index ({exc})") from exc

    def failures(self) -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in self._q("SELECT ref, error FROM scan_failures ORDER BY ref")}

    def remove(self, names: list[str]) -> int:
        """Remove models by name in one transaction; returns how many were removed."""
        try:
            with self.transaction() as db:
                n = 0
                for name in names:
                    n += db.execute("DELETE FROM models WHERE name = ?", (name,)).rowcount
                if n:
                    db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"{self.path}: could not write to the index ({exc})") from exc
        return n

    # --- reading ------------------------------------------------------------------------------
    def generation(self) -> int:
        rows = self._q("SELECT value FROM meta WHERE key = 'generation'")
        if not rows:
            raise IndexError_(f"{self.path}: index lacks its generation counter")
        return int(rows[0][0])

    def count(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM models")[0][0])

    def has(self, name: str) -> bool:
        return bool(self._q("SELECT 1 FROM models WHERE name = ?", (name,)))

    def entries(self, ids: list[int] | None = None) -> list[Entry]:
        cols = "id, name, ref, added, fp_sha256, fp_size, layers, parameters, labels"
        if ids is None:
            rows = self._q(f"SELECT {cols} FROM models ORDER BY id")
        else:
            rows = []
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                rows += self._q(f"SELECT {cols} FROM models WHERE id IN ({','.join('?' * len(chunk))})",
                                tuple(chunk))
        out = []
        for r in rows:
            try:
                labels = json.loads(r[8])
            except (json.JSONDecodeError, TypeError):
                labels = {}
            out.append(Entry(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), int(r[6]), int(r[7]),
                             labels if isinstance(labels, dict) else {}))
        return out

    def fingerprint(self, model_id: int) -> Fingerprint:
        rows = self._q("SELECT name, fingerprint FROM models WHERE id = ?", (model_id,))
        if not rows:
            raise IndexError_(f"{self.path}: no model with id {model_id}")
        try:
            return from_bytes(bytes(rows[0][1]), f"{self.path}#{rows[0][0]}")
        except FormatError as exc:
            raise IndexError_(f"{self.path}: stored fingerprint of {rows[0][0]!r} is corrupt ({exc})") from exc

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors): every model's candidate vector, for building the nearest-neighbour stage."""
        rows = self._q("SELECT id, vector FROM models ORDER BY id")
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.zeros((len(rows), VECTOR_DIM), dtype=np.float32)
        for k, r in enumerate(rows):
            v = np.frombuffer(r[1], dtype=np.float32)
            if v.shape != (VECTOR_DIM,):
                raise IndexError_(f"{self.path}: model id {r[0]} has a malformed candidate vector")
            vecs[k] = v
        return ids, vecs

    def stats(self) -> dict[str, Any]:
        row = self._q("SELECT COUNT(*), COALESCE(SUM(fp_size), 0), COALESCE(AVG(fp_size), 0) FROM models")[0]
        size = self.path.stat().st_size if self.path.exists() else 0
        wal = Path(str(self.path) + "-wal")
        return {"path": str(self.path), "models": int(row[0]), "fingerprint_bytes": int(row[1]),
                "mean_fingerprint_bytes": round(float(row[2]), 1), "file_bytes": size,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0, "schema_version": SCHEMA_VERSION,
                "generation": self.generation()}
