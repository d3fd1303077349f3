"""A SQLite response cache: every answer is stored as it arrives, keyed by the canonical request.

Writes are committed one by one in WAL mode, so a run killed with SIGKILL keeps every answer it
had received; rerunning asks only what is missing. Schema changes go through numbered migrations.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from modeltrace.backends.base import Backend, Request, Response
from modeltrace.errors import BackendError

MIGRATIONS = [
    """CREATE TABLE responses (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        request TEXT NOT NULL,
        response TEXT NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE INDEX responses_model ON responses(model)",
]


class ResponseCache:
    """Request -> Response store in one SQLite file, safe across threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"{self.path}: not a usable response cache ({exc})") from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for i, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute(sql)
            self._db.execute(f"PRAGMA user_version = {i}")

    @staticmethod
    def key(model: str, request: Request) -> str:
        return hashlib.sha256((model + "\n" + request.canonical()).encode("utf-8")).hexdigest()

    def get(self, model: str, request: Request) -> Response | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?",
                                   (self.key(model, request),)).fetchone()
        return Response.from_json(json.loads(row[0])) if row else None

    def put(self, model: str, request: Request, response: Response) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                             (self.key(model, request), model, request.canonical(),
                              json.dumps(response.to_json(), ensure_ascii=False), time.time()))

    def count(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
            return int(self._db.execute("SELECT COUNT(*) FROM responses WHERE model = ?", (model,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(Backend):
    """Wraps a backend: answers from the cache where it can, asks the rest, stores each answer at once."""

    def __init__(self, inner: Backend, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.max_top_logprobs = inner.max_top_logprobs
        self.asked = 0  # requests that went to the model in this process (not served from cache)

    @property
    def identity(self) -> str:
        return self.inner.identity

    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        out: list[Response | None] = [self.cache.get(self.identity, r) for r in requests]
        missing = [i for i, r in enumerate(out) if r is None]
        for i, r in enumerate(out):
            if r is not None and on_response:
                on_response(i, r)
        if missing:
            todo = [requests[i] for i in missing]

            def store(j: int, resp: Response) -> None:
                i = missing[j]
                self.cache.put(self.identity, requests[i], resp)
                out[i] = resp
                if on_response:
                    on_response(i, resp)

            answers = self.inner.generate(todo, on_response=store)
            self.asked += len(todo)
            for j, resp in enumerate(answers):
                if out[missing[j]] is None:
                    store(j, resp)
        return [r for r in out if r is not None]

    def close(self) -> None:
        self.inner.close()
