"""The cheap candidate stage: nearest neighbours of a model's small vector among the indexed models.

The vectors live in the SQLite index (the source of truth); the neighbour structure is a cache
beside it (``<index>.ann`` plus ``<index>.ann.json`` recording the index generation it was built
from), rebuilt when the index has changed. Backends, by name:

- ``usearch``: an HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor
  search using Hierarchical Navigable Small World graphs", TPAMI 2018) from the usearch library;
- ``exact``: a brute-force cosine scan in numpy, the reference the recall of ``usearch`` is
  measured against, and the fallback when usearch is not installed.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modeltrace.errors import IndexError_
from modeltrace.index.fingerprint import VECTOR_DIM
from modeltrace.index.store import IndexStore
from modeltrace.registry import Registry


class CandidateIndex(ABC):
    """Nearest neighbours by cosine over (id, vector) pairs."""

    name: ClassVar[str]

    @abstractmethod
    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index these vectors (replacing anything indexed before)."""

    @abstractmethod
    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to k (id, cosine similarity) pairs, most similar first."""

    def save(self, path: Path) -> bool:
        """Persist to `path` (False when this backend keeps nothing on disk)."""
        return False

    def load(self, path: Path) -> bool:
        """Load from `path`; False when there is nothing usable there."""
        return False


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(n, 1e-30)
    return out


class ExactCandidates(CandidateIndex):
    """Brute-force cosine similarity: exact, linear in the number of models."""

    name: ClassVar[str] = "exact"

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.vecs = np.zeros((0, VECTOR_DIM), dtype=np.float32)

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids, self.vecs = np.asarray(ids, dtype=np.int64), _unit(vectors)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not len(self.ids):
            return []
        sims = self.vecs @ _unit(vector)
        k = min(k, len(sims))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(self.ids[i]), float(sims[i])) for i in top]


class UsearchCandidates(CandidateIndex):
    """HNSW neighbours from usearch (cosine metric, float32 vectors)."""

    name: ClassVar[str] = "usearch"

    def __init__(self) -> None:
        from usearch.index import Index

        self._cls = Index
        self.index = self._new()

    def _new(self) -> Any:
        return self._cls(ndim=VECTOR_DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=128,
                         expansion_search=128)

    def build(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index = self._new()
        if len(ids):
            self.index.add(np.asarray(ids, dtype=np.uint64), _unit(vectors))

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if len(self.index) == 0:
            return []
        got = self.index.search(_unit(vector), min(k, len(self.index)))
        return [(int(key), 1.0 - float(dist)) for key, dist in zip(got.keys, got.distances, strict=True)]

    def save(self, path: Path) -> bool:
        self.index.save(str(path))
        return True

    def load(self, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            self.index = self._new()
            self.index.load(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            self.index = self._new()
            return False
        return True


BACKENDS: Registry[type[CandidateIndex]] = Registry("candidate backend", "modeltrace.index_backends")
BACKENDS.register("exact", "modeltrace.index.candidates:ExactCandidates")
BACKENDS.register("usearch", "modeltrace.index.candidates:UsearchCandidates")


def default_backend() -> str:
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return "exact"
    return "usearch"


def make(name: str | None = None) -> CandidateIndex:
    chosen = name or default_backend()
    cls = BACKENDS.get(chosen)
    try:
        return cls()
    except ImportError as exc:
        raise IndexError_(f"candidate backend {chosen!r} is unavailable: {exc}",
                          hint="pip install usearch, or use --backend exact") from exc


def cache_paths(store: IndexStore) -> tuple[Path, Path]:
    return Path(str(store.path) + ".ann"), Path(str(store.path) + ".ann.json")


def open_candidates(store: IndexStore, backend: str | None = None) -> CandidateIndex:
    """The candidate stage for `store`: the cached structure when it is current, else rebuilt (and cached)."""
    cand = make(backend)
    gen = store.generation()
    data_path, meta_path = cache_paths(store)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    if isinstance(meta, dict) and meta.get("generation") == gen and meta.get("backend") == cand.name \
            and cand.load(data_path):
        return cand
    ids, vecs = store.vectors()
    cand.build(ids, vecs)
    tmp = data_path.with_name(data_path.name + f".{os.getpid()}.tmp")
    try:
        if cand.save(tmp):
            tmp.replace(data_path)
            mtmp = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
            mtmp.write_text(json.dumps({"generation": gen, "backend": cand.name, "count": len(ids)}),
                            encoding="utf-8")
            mtmp.replace(meta_path)
    except OSError:
        pass  # a read-only folder: search still works, it just rebuilds next time
    finally:
        if tmp.exists():
            tmp.unlink()
    return cand
