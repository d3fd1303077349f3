"""Build a lineage tree from fingerprints: related pairs, merges, then a minimum spanning arborescence.

1. Relations: every pair of fingerprints is tested (`index.fpcompare`, the search's cheap first
   look, then the full test where it rejects); a pair is related when the verdict is "derived".
2. Merges: a model related to two models that are not related to each other is their merge (a
   child of both); it gets one parent edge per side (the nearest model of each side).
3. Tree: over the other relations, a minimum spanning arborescence (Chu-Liu/Edmonds, networkx) of
   the directed graph whose edge u -> v costs the distance of `index.search.distance` (how many
   independent changes separate the two) plus direction priors, with a virtual root reachable at
   `ROOT_COST` from every model (its children are the roots of the collection). Direction priors,
   after Horwitz et al., "Unsupervised Model Tree Heritage Recovery" (MoTHer, ICLR 2025), which
   recover direction from weight statistics:
   - a model stored more coarsely (cast, quantized) is the child (`PRECISION_PRIOR`);
   - a model with experts made from a dense one is the child (`EXPERTS_PRIOR`);
   - otherwise the kurtosis of the MLP weights: training increases it (MoTHer), so the model with
     the higher kurtosis is the child (`KURTOSIS_PRIOR`, only when the difference exceeds
     `KURTOSIS_TIE`);
   - and always a centrality term (`CENTRALITY_PRIOR` times how much less central the parent is than
     the child, centrality being the mean distance to a model's relatives): the parent of a cluster
     of copies is its medoid, each copy having moved away from it independently.
Each edge records how its direction was told: "derivation" (precision, experts, merge), "kurtosis",
"centrality", or "unknown".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from modeltrace.compare import DEFAULT_THRESHOLD, CompareResult
from modeltrace.index.fingerprint import Fingerprint
from modeltrace.index.fpcompare import compare_fingerprints
from modeltrace.index.search import PRECISION_STEP, SCREEN_LAYERS, SCREEN_LEVEL, distance, precision_bits
from modeltrace.textsafe import escape

SCHEMA = "modeltrace.lineage/1"
ROOT_COST = 100.0
PRECISION_PRIOR = 1.0
EXPERTS_PRIOR = 1.0
KURTOSIS_PRIOR = 0.02
CENTRALITY_PRIOR = 1.0
KURTOSIS_TIE = 0.005  # difference of mean excess kurtosis below which the direction is unknown
_VIRTUAL = "\x00root"


@dataclass(frozen=True)
class Edge:
    """parent -> child, with the test's p-value and what kind of derivation it looks like."""

    parent: str
    child: str
    kind: str
    p_value: float
    distance: float
    direction: str  # "derivation" | "kurtosis" | "centrality" | "unknown"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent, "child": self.child, "kind": self.kind, "p_value": self.p_value,
                "distance": round(self.distance, 6), "direction": self.direction, "reason": self.reason}


@dataclass
class Tree:
    nodes: list[str]
    edges: list[Edge]
    roots: list[str]
    tested_pairs: int
    related_pairs: int
    info: dict[str, Any] = field(default_factory=dict)

    def parents(self, node: str) -> list[str]:
        return [e.parent for e in self.edges if e.child == node]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "nodes": self.nodes, "roots": self.roots, "edges": [e.to_json() for e in self.edges],
                "tested_pairs": self.tested_pairs, "related_pairs": self.related_pairs, **self.info}


def _kurt(fp: Fingerprint) -> float | None:
    ks = [s.kurtosis for s in fp.layers if s.kurtosis is not None]
    return float(np.mean(ks)) if ks else None


def _test(a: Fingerprint, b: Fingerprint, threshold: float) -> CompareResult:
    res = compare_fingerprints(a, b, threshold=threshold, screen=SCREEN_LAYERS)
    if res.p_value < SCREEN_LEVEL:
        res = compare_fingerprints(a, b, threshold=threshold)
    return res


def _base_distance(res: CompareResult, a: Fingerprint, b: Fingerprint) -> float:
    """`search.distance` without its precision step (a direction prior here, added per direction)."""
    d = distance(res, a, b)
    return d - (PRECISION_STEP if precision_bits(a) < precision_bits(b) else 0.0)


def prior(u: Fingerprint, v: Fingerprint) -> tuple[float, str]:
    """(extra cost of u being v's parent, how the direction is told)."""
    bu, bv = precision_bits(u), precision_bits(v)
    if bu != bv:
        return (PRECISION_PRIOR if bu < bv else 0.0), "derivation"
    eu, ev = int(u.meta.get("experts") or 0), int(v.meta.get("experts") or 0)
    if (eu > 0) != (ev > 0):
        return (EXPERTS_PRIOR if eu > 0 else 0.0), "derivation"
    ku, kv = _kurt(u), _kurt(v)
    if ku is None or kv is None or abs(ku - kv) <= KURTOSIS_TIE:
        return 0.0, "unknown"
    return (KURTOSIS_PRIOR if kv < ku else 0.0), "kurtosis"


def edge_kind(res: CompareResult, parent: Fingerprint, child: Fingerprint, merge: bool = False) -> str:
    """One word for the derivation, most specific first."""
    if merge:
        return "merge"
    bp, bc = precision_bits(parent), precision_bits(child)
    dt = str(child.meta.get("mlp_dtype") or "").upper()
    if bc < bp:
        return "cast" if dt in ("F16", "BF16") else "quantize"
    if int(child.meta.get("experts") or 0) and not int(parent.meta.get("experts") or 0):
        return "upcycle"
    kinds = [t.kind for t in res.transforms]
    for k, name in (("layer-drop", "layer-drop"), ("layer-duplicate", "upscale"), ("prune", "prune"),
                    ("vocab-change", "vocab-change"), ("permute", "permute"), ("rotate", "rotate")):
        if k in kinds:
            if k == "layer-drop" and len(child.layers) > len(parent.layers):
                return "upscale"
            return name
    for k in ("identical", "noise", "finetune"):
        if k in kinds:
            return k
    return "derived"


def build_tree(fps: dict[str, Fingerprint], *, threshold: float = DEFAULT_THRESHOLD,
               progress: Callable[[int, int], None] | None = None) -> Tree:
    """The lineage tree of a collection of fingerprints (see the module docstring)."""
    names = sorted(fps)
    results: dict[tuple[str, str], CompareResult] = {}
    pairs = list(itertools.combinations(names, 2))
    for k, (x, y) in enumerate(pairs):
        results[(x, y)] = _test(fps[x], fps[y], threshold)
        if progress:
            progress(k + 1, len(pairs))
    related = {p for p, r in results.items() if r.verdict == "derived"}

    def rel(x: str, y: str) -> bool:
        return (min(x, y), max(x, y)) in related

    def res(x: str, y: str) -> CompareResult:
        return results[(min(x, y), max(x, y))]

    def base(x: str, y: str) -> float:
        a, b = (x, y) if x < y else (y, x)
        return _base_distance(results[(a, b)], fps[a], fps[b])

    neighbours = {n: [m for m in names if m != n and rel(n, m)] for n in names}
    merges: dict[str, list[str]] = {}
    for n in names:
        sides = _sides(neighbours[n], rel)
        if len(sides) >= 2:
            merges[n] = [_nearest(n, side, base) for side in sides]
    # centrality (mean distance to the relatives): the parent of a cluster of copies is its medoid (MoTHer)
    cent = {n: float(np.mean([base(n, m) for m in neighbours[n]])) if neighbours[n] else 0.0 for n in names}
    g = nx.DiGraph()
    g.add_node(_VIRTUAL)
    for n in names:
        g.add_edge(_VIRTUAL, n, weight=ROOT_COST)
    how: dict[tuple[str, str], str] = {}
    for x, y in related:
        if x in merges or y in merges:
            continue  # merges are attached to their parents afterwards
        for u, v in ((x, y), (y, x)):
            extra, told = prior(fps[u], fps[v])
            if told == "unknown" and cent[u] < cent[v]:
                told = "centrality"
            extra += CENTRALITY_PRIOR * max(0.0, cent[u] - cent[v])
            g.add_edge(u, v, weight=base(u, v) + extra)
            how[(u, v)] = told
    arb = nx.minimum_spanning_arborescence(g, attr="weight", preserve_attrs=True)
    edges: list[Edge] = []
    roots = []
    for u, v in arb.edges():
        if u == _VIRTUAL:
            if v not in merges:
                roots.append(v)
            continue
        r = res(u, v)
        edges.append(Edge(u, v, edge_kind(r, fps[u], fps[v]), r.p_value, base(u, v), how[(u, v)], r.reason))
    for child, parents in merges.items():
        for p in parents:
            r = res(p, child)
            edges.append(Edge(p, child, "merge", r.p_value, base(p, child), "derivation",
                              "related to models that are not related to each other: a merge of them"))
    edges.sort(key=lambda e: (e.parent, e.child))
    return Tree(nodes=names, edges=edges, roots=sorted(roots), tested_pairs=len(pairs), related_pairs=len(related),
                info={"threshold": threshold, "merges": sorted(merges)})


def _nearest(n: str, side: list[str], base: Callable[[str, str], float]) -> str:
    return min(side, key=lambda m: base(n, m))


def _sides(neigh: list[str], rel: Callable[[str, str], bool]) -> list[list[str]]:
    """Groups of a model's relatives that are related among themselves (connected components)."""
    left = set(neigh)
    out = []
    while left:
        stack = [left.pop()]
        comp = []
        while stack:
            x = stack.pop()
            comp.append(x)
            for y in list(left):
                if rel(x, y):
                    left.discard(y)
                    stack.append(y)
        out.append(sorted(comp))
    return out


def to_dot(tree: Tree) -> str:
    """Graphviz DOT text: one box per model, edges labelled with their kind (dashed: direction unknown)."""
    def q(s: str) -> str:
        text = escape(s, limit=200)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=TB; node [shape=box, fontsize=10]; edge [fontsize=9];"]
    for n in tree.nodes:
        lines.append(f"  {q(n)};")
    for e in tree.edges:
        style = ", style=dashed" if e.direction == "unknown" else ""
        lines.append(f"  {q(e.parent)} -> {q(e.child)} [label={q(e.kind)}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
