"""Search the index: which indexed models is this one derived from (or related to)?

Two stages. The candidate stage (`index.candidates`) returns the models whose small vectors are
nearest the query's; the full fingerprint test (`index.fpcompare`) then runs on each candidate as
A and the query as B, with the same verdict rule and threshold as `compare`. Results are best
first: related models (combined p below the threshold) before unrelated ones, the related ranked
by how far the query's units moved from theirs (`distance`, which puts a parent above its
siblings), then by p-value.

Every p-value is the pair's own: testing many candidates makes a small p-value by chance more
likely, so `SearchResult.family_wise` also reports the Bonferroni-adjusted threshold over the
candidates tested (a conservative reading for a user who asks "is anything here related?").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modeltrace.compare import DEFAULT_THRESHOLD, CompareResult
from modeltrace.index.candidates import CandidateIndex, open_candidates
from modeltrace.index.fingerprint import Fingerprint
from modeltrace.index.fpcompare import compare_fingerprints, diagnosis
from modeltrace.index.store import Entry, IndexStore

SCHEMA = "modeltrace.index-search/1"
MIN_CANDIDATES = 32


@dataclass(frozen=True)
class Hit:
    """One indexed model tested against the query."""

    entry: Entry
    similarity: float  # candidate-stage cosine
    result: CompareResult
    distance: float

    @property
    def related(self) -> bool:
        return self.result.verdict == "derived"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.entry.name, "ref": self.entry.ref, "labels": self.entry.labels,
                "verdict": self.result.verdict, "p_value": self.result.p_value, "related": self.related,
                "diagnosis": diagnosis(self.result), "reason": self.result.reason,
                "distance": None if self.distance == float("inf") else round(self.distance, 6),
                "candidate_similarity": round(self.similarity, 5),
                "transforms": [t.to_json() for t in self.result.transforms]}


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[Hit]
    indexed: int
    candidates: int
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def related(self) -> list[Hit]:
        return [h for h in self.hits if h.related]

    @property
    def family_wise(self) -> float:
        return self.threshold / max(1, self.candidates)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "query": self.query, "indexed": self.indexed, "candidates_tested": self.candidates,
                "threshold": self.threshold, "family_wise_threshold": self.family_wise,
                "related": len(self.related),
                "summary": (f"{len(self.related)} related model(s) in the index" if self.related
                            else "nothing in the index is related"),
                "hits": [h.to_json() for h in self.hits],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()}}


def distance(result: CompareResult) -> float:
    """How far B's units moved from A's, from the test that found the relation (lower is closer).

    The median relative distance of the units matched to themselves (identity test) or agreed on
    (permutation test). Among relatives this ranks a parent above its siblings: a child of P is
    P plus its own change, a sibling is P plus two independent changes, so farther on average.
    """
    best = float("inf")
    for e in result.evidence:
        if e.status == "ok" and e.p_value is not None and e.p_value < result.threshold:
            d = e.details.get("median_relative_distance")
            if isinstance(d, (int, float)):
                best = min(best, float(d))
    return best


def search(store: IndexStore, query: Fingerprint, *, top: int = 10, threshold: float = DEFAULT_THRESHOLD,
           seed: int = 0, candidates: int | None = None, backend: str | None = None,
           exclude: set[str] | None = None, cand: CandidateIndex | None = None) -> SearchResult:
    """The indexed models most likely related to `query`, best first (see the module docstring)."""
    t0 = time.perf_counter()
    k = candidates or max(MIN_CANDIDATES, 4 * top)
    cand = cand or open_candidates(store, backend)
    t1 = time.perf_counter()
    near = cand.search(query.vector, k + len(exclude or ()))
    t2 = time.perf_counter()
    entries = {e.id: e for e in store.entries([i for i, _ in near])}
    hits: list[Hit] = []
    for model_id, sim in near:
        entry = entries.get(model_id)
        if entry is None or (exclude and entry.name in exclude):
            continue
        if len(hits) >= k:
            break
        fp = store.fingerprint(model_id)
        res = compare_fingerprints(fp, query, threshold=threshold, seed=seed)
        hits.append(Hit(entry, sim, res, distance(res) if res.verdict == "derived" else float("inf")))
    t3 = time.perf_counter()
    hits.sort(key=lambda h: (not h.related, h.distance, h.result.p_value, -h.similarity))
    tested = len(hits)
    return SearchResult(query=query.ref, hits=hits[:top], indexed=store.count(), candidates=tested,
                        threshold=threshold,
                        timings={"open_candidates": t1 - t0, "candidates": t2 - t1, "tests": t3 - t2,
                                 "total": t3 - t0})


def rank_of(result: SearchResult, names: set[str]) -> int | None:
    """1-based rank of the first hit whose name is in `names` among related hits (None: not found)."""
    for r, h in enumerate(result.hits, 1):
        if h.entry.name in names and h.related:
            return r
    return None


__all__ = ["Hit", "SearchResult", "distance", "rank_of", "search"]
