"""Which layer of B comes from which layer of A: dropped, duplicated, reordered and new layers.

Input: a score matrix S (A layers x B layers), high where a B layer was made from an A layer
(for example the mean correlation of their aligned weights). Each B layer takes the A layer with
its highest score when that score stands out from the bulk of S: above median(S) + k * MAD(S)
and above a quarter of the way from the median to the maximum. Unrelated layer pairs form the
bulk, so the rule assumes most pairs are unrelated (true whenever there are more than a few layers).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

MAD_K = 6.0


@dataclass(frozen=True)
class LayerDiagnosis:
    """The layer map and what it says was done to the stack."""

    mapping: tuple[int | None, ...]  # B layer j -> A layer (None: no A layer explains it)
    scores: tuple[float, ...]  # the score of each B layer's match
    dropped: tuple[int, ...]  # A layers no B layer comes from
    duplicated: dict[int, tuple[int, ...]]  # A layer -> the B layers made from it (two or more)
    reordered: bool
    moved: tuple[tuple[int, int], ...]  # (A layer, B layer) pairs out of order
    new: tuple[int, ...]  # B layers with no A counterpart
    threshold: float
    kinds: tuple[str, ...]  # of "layer-drop", "layer-duplicate", "layer-reorder", "layer-new"
    reason: str


def _threshold(s: np.ndarray) -> float:
    med = float(np.median(s))
    mad = 1.4826 * float(np.median(np.abs(s - med)))
    return med + max(MAD_K * mad, 0.25 * (float(s.max()) - med))


def diagnose_layers(scores: np.ndarray, *, threshold: float | None = None) -> LayerDiagnosis:
    """Read a layer-correspondence score matrix (rows: A layers, columns: B layers)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"layer scores must be a non-empty 2-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        s = np.where(np.isfinite(s), s, -np.inf)
        finite = s[np.isfinite(s)]
        if finite.size == 0:
            raise ValueError("layer scores hold no finite value")
    n_a, n_b = s.shape
    thr = threshold if threshold is not None else _threshold(s[np.isfinite(s)])
    best = np.argmax(s, axis=0)
    mapping: list[int | None] = []
    matched: list[float] = []
    for j in range(n_b):
        i = int(best[j])
        mapping.append(i if s[i, j] >= thr else None)
        matched.append(float(s[i, j]))
    used: dict[int, list[int]] = {}
    for j, src in enumerate(mapping):
        if src is not None:
            used.setdefault(src, []).append(j)
    dropped = tuple(i for i in range(n_a) if i not in used)
    duplicated = {i: tuple(js) for i, js in sorted(used.items()) if len(js) > 1}
    new = tuple(j for j, i in enumerate(mapping) if i is None)
    # order of first appearance: each A layer at its first B position; reordered if not increasing
    first = [(js[0], i) for i, js in used.items()]
    first.sort()
    order = [i for _, i in first]
    reordered = any(x > y for x, y in itertools.pairwise(order))
    moved: list[tuple[int, int]] = []
    if reordered:
        longest = _longest_increasing(order)
        keep = set(longest)
        moved = [(i, j) for j, i in first if i not in keep]
    kinds = tuple(k for k, on in (("layer-drop", bool(dropped) and len(used) > 0),
                                  ("layer-duplicate", bool(duplicated)),
                                  ("layer-reorder", reordered), ("layer-new", bool(new))) if on)
    parts = []
    if dropped and used:
        parts.append(f"A layers {list(dropped)} dropped")
    if duplicated:
        parts.append("duplicated: " + ", ".join(f"A {i} -> B {list(js)}" for i, js in duplicated.items()))
    if reordered:
        parts.append(f"reordered ({len(moved)} layer(s) out of order)")
    if new:
        parts.append(f"B layers {list(new)} match no A layer")
    if not used:
        parts = ["no B layer matches an A layer"]
    reason = "; ".join(parts) if parts else f"B's {n_b} layers are A's {n_a} layers in order"
    return LayerDiagnosis(tuple(mapping), tuple(matched), dropped, duplicated, reordered, tuple(moved), new, thr,
                          kinds, reason)


def _longest_increasing(seq: list[int]) -> list[int]:
    """One longest strictly increasing subsequence (O(n^2); layer counts are small)."""
    if not seq:
        return []
    best_len = [1] * len(seq)
    prev = [-1] * len(seq)
    for i in range(len(seq)):
        for j in range(i):
            if seq[j] < seq[i] and best_len[j] + 1 > best_len[i]:
                best_len[i], prev[i] = best_len[j] + 1, j
    k = int(np.argmax(best_len))
    out = []
    while k >= 0:
        out.append(seq[k])
        k = prev[k]
    return out[::-1]


def score_matrices(maps: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The layer-correspondence score matrices as JSON, per component (descriptive, for reports).

    `maps` is component -> `weights.layers.LayerMap`. Cells that were not computed (the diagonal was
    enough) are None; `full` says whether the off-diagonal cells were filled."""
    out: dict[str, dict[str, Any]] = {}
    for comp, lm in maps.items():
        s = np.asarray(lm.scores, dtype=np.float64)
        out[comp] = {"a_layers": list(lm.a_layers), "b_layers": list(lm.b_layers), "full": bool(lm.full),
                     "scores": [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in s]}
    return out
