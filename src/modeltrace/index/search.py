"""Search the index: which indexed models is this one derived from (or related to)?

Two stages. The candidate stage (`index.candidates`) returns the models whose small vectors are
nearest the query's; the full fingerprint test (`index.fpcompare`) then runs on each candidate as
A and the query as B, with the same verdict rule and threshold as `compare`. Results are best
first: related models (combined p below the threshold) before unrelated ones, the related ranked
by how many changes separate them from the query (`distance`, which puts a parent above its
siblings), then by p-value.

Each candidate first gets a cheap look (`SCREEN_LAYERS` same-index layer pairs, no layer map);
only those below `SCREEN_LEVEL` get the full test. Both p-values are valid; a candidate left at
its first look is reported with that p-value.

Every p-value is the pair's own: testing many candidates makes a small p-value by chance more
likely, so `SearchResult.family_wise` also reports the Bonferroni-adjusted threshold over the
candidates tested (a conservative reading for a user who asks "is anything here related?").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeltrace.compare import DEFAULT_THRESHOLD, CompareResult
from modeltrace.index.candidates import CandidateIndex, open_candidates
from modeltrace.index.fingerprint import Fingerprint
from modeltrace.index.fpcompare import compare_fingerprints, diagnosis, jaccard
from modeltrace.index.store import Entry, IndexStore

SCHEMA = "modeltrace.index-search/1"
MIN_CANDIDATES = 32
SCREEN_LAYERS = 4  # layer pairs per component in the first look at a candidate
SCREEN_LEVEL = 1e-3  # candidates whose first look reaches this get the full test (with the layer map)


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


def distance(result: CompareResult, a: Fingerprint, b: Fingerprint) -> float:
    """How many changes separate B from A, for ranking relatives (lower is closer; not a test).

    The sum of: the root-mean-square relative distance of the units matched to themselves, on raw coordinates
    and in the token basis (`MISSING_VIEW` for a view without such units), or twice that of the units
    both views agreed on plus two missing views when only the permutation test found the relation; the relative change of the basis tokens'
    embedding Gram matrix; one minus the vocabulary overlap; the relative change in depth and in
    MLP width; a step when the tensor names differ, and one when A is stored more coarsely than B
    (a cast or quantized copy is more often a descendant than a parent). A child of P is P plus its own change, a sibling is P plus two independent changes,
    so the parent is nearer than the siblings on average, including siblings whose MLPs are exact
    copies of the parent's but whose vocabulary, embeddings, depth or residual basis differ.
    """
    by = {e.method: e for e in result.evidence if e.status == "ok"}
    ident, perm = by.get("weight-identity"), by.get("weight-permutation")
    total = 0.0
    if ident is not None and ident.p_value is not None and ident.p_value < result.threshold:
        # per view: the distance of the units found in place, else MISSING_VIEW (a view in which the units
        # are not in place, a rotated residual stream for the raw coordinates, counts as one change)
        dists = ident.details.get("distances") or {}
        pv = ident.details.get("views") or {}
        ok = [float(d) for v, d in dists.items() if isinstance(d, (int, float))
              and float(pv.get(v, 1.0)) < result.threshold]
        total += sum(ok) + MISSING_VIEW * (2 - len(ok))
    elif perm is not None:
        d = perm.details.get("rms_relative_distance")
        total += 2.0 * (float(d) if isinstance(d, (int, float)) else 1.0) + 2 * MISSING_VIEW  # units moved
    else:
        total += 2.0
    if a.basis is not None and b.basis is not None and a.basis.tokens == b.basis.tokens:
        ga, gb = a.basis.gram.astype(np.float64), b.basis.gram.astype(np.float64)
        total += float(np.linalg.norm(ga - gb) / max(float(np.linalg.norm(ga)), 1e-30))
    else:
        total += 1.0
    jac = jaccard(a, b)
    total += 1.0 - jac if jac is not None else 0.5
    total += abs(len(a.layers) - len(b.layers)) / max(1, len(a.layers), len(b.layers))
    na, nb = sum(s.n for s in a.layers), sum(s.n for s in b.layers)
    total += abs(na - nb) / max(1, na, nb)
    if a.meta.get("embedding_rows") != b.meta.get("embedding_rows"):
        total += STRUCTURE_STEP  # a changed vocabulary, seen even without tokenizer files
    if a.meta.get("tensor_names_sha256") != b.meta.get("tensor_names_sha256"):
        total += STRUCTURE_STEP  # renamed, added or removed tensors: one more change
    if precision_bits(a) < precision_bits(b):
        total += PRECISION_STEP  # A stored more coarsely than B: more likely B's descendant than its parent
    return total


MISSING_VIEW = 1.0  # about the relative distance of two unrelated units (sqrt(2) for equal norms)
STRUCTURE_STEP = 0.05
PRECISION_STEP = 0.05
_BITS = {"F64": 53, "F32": 24, "F16": 11, "BF16": 8, "F8_E4M3": 4, "F8_E5M2": 3}


def precision_bits(fp: Fingerprint) -> int:
    """Significant bits of the MLP weights' storage type (quantized types: 8 for Q8, 4 for Q4, ...)."""
    dt = str(fp.meta.get("mlp_dtype") or "F32").upper()
    if dt in _BITS:
        return _BITS[dt]
    digits = "".join(c for c in dt.split("_")[0] if c.isdigit())
    return int(digits) if digits else 8


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
        res = compare_fingerprints(fp, query, threshold=threshold, seed=seed, screen=SCREEN_LAYERS)
        if res.p_value < SCREEN_LEVEL:
            res = compare_fingerprints(fp, query, threshold=threshold, seed=seed)
        hits.append(Hit(entry, sim, res, distance(res, fp, query) if res.verdict == "derived" else float("inf")))
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
