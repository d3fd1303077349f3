"""Was B's vocabulary extended, pruned or reordered from A's? Which embedding rows were kept?

From the two token -> id maps: tokens only B has (added), tokens only A has (removed), shared
tokens at another id (moved). With the embedding matrices: for each shared token, whether B's row
is A's row (row correlation above `keep_corr`; two independent rows of width d correlate about
N(0, 1/d)), and how B's new rows were initialised (zeros, A's mean row, or something else).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

MAX_ROWS = 20_000  # shared rows compared (a fixed sample of them when there are more)
KEEP_CORR = 0.9


@dataclass(frozen=True)
class VocabDiagnosis:
    """What changed in the vocabulary, and what happened to the embedding rows."""

    n_a: int
    n_b: int
    n_shared: int
    n_added: int
    n_removed: int
    n_moved: int  # shared tokens at a different id
    added: tuple[str, ...]  # up to 50 examples, in B id order
    removed: tuple[str, ...]  # up to 50 examples, in A id order
    kinds: tuple[str, ...]  # of "extended", "pruned", "reordered"
    rows_compared: int
    rows_kept: float | None  # share of compared shared tokens whose embedding row B kept from A
    new_rows_init: str | None  # "zeros", "mean", "copies", "other"
    reason: str

    @property
    def changed(self) -> bool:
        return bool(self.kinds)


def _row_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    num = np.sum(xc * yc, axis=1)
    den = np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
    out: np.ndarray = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return out


def rows_kept_share(rows_a: np.ndarray, rows_b: np.ndarray, keep_corr: float = KEEP_CORR) -> float:
    """Share of row pairs (the same token in A and B) whose rows correlate above `keep_corr`."""
    if rows_a.shape != rows_b.shape or rows_a.ndim != 2:
        raise ValueError(f"row sets must be 2-D and of equal shape, got {rows_a.shape} and {rows_b.shape}")
    if rows_a.shape[0] == 0:
        return 0.0
    return float(np.mean(_row_corr(rows_a.astype(np.float64), rows_b.astype(np.float64)) > keep_corr))


def new_rows_init(mean_a: np.ndarray, new_rows: np.ndarray) -> str:
    """How rows only B has were initialised: "zeros", "mean" (A's mean row), "mean-plus-noise" or "other"."""
    if new_rows.size == 0:
        return "none"
    if np.all(new_rows == 0):
        return "zeros"
    mean = np.asarray(mean_a, dtype=np.float64)
    if np.allclose(new_rows, mean[None, :], rtol=1e-3, atol=1e-3 * (float(np.abs(mean).max()) + 1e-12)):
        return "mean"
    corr_mean = _row_corr(new_rows.astype(np.float64), np.broadcast_to(mean, new_rows.shape))
    if float(np.median(corr_mean)) > 0.9:
        return "mean-plus-noise"
    return "other"


def diagnose_vocab(vocab_a: Mapping[str, int], vocab_b: Mapping[str, int], emb_a: np.ndarray | None = None,
                   emb_b: np.ndarray | None = None, *, seed: int = 0) -> VocabDiagnosis:
    """Compare two vocabularies (token -> id) and, when given, their embedding (or output) rows."""
    shared = vocab_a.keys() & vocab_b.keys()
    added = sorted(vocab_b.keys() - vocab_a.keys(), key=lambda t: vocab_b[t])
    removed = sorted(vocab_a.keys() - vocab_b.keys(), key=lambda t: vocab_a[t])
    moved = sum(1 for t in shared if vocab_a[t] != vocab_b[t])
    kinds = tuple(k for k, on in (("extended", bool(added)), ("pruned", bool(removed)), ("reordered", moved > 0))
                  if on)
    rows_kept = None
    compared = 0
    init = None
    if emb_a is not None and emb_b is not None:
        if emb_a.ndim != 2 or emb_b.ndim != 2 or emb_a.shape[1] != emb_b.shape[1]:
            raise ValueError(f"embedding matrices must be 2-D of equal width, got {emb_a.shape} and {emb_b.shape}")
        pairs = sorted((vocab_a[t], vocab_b[t]) for t in shared
                       if 0 <= vocab_a[t] < emb_a.shape[0] and 0 <= vocab_b[t] < emb_b.shape[0])
        if len(pairs) > MAX_ROWS:
            pick = np.random.default_rng(seed).choice(len(pairs), MAX_ROWS, replace=False)
            pairs = [pairs[i] for i in sorted(pick)]
        if pairs:
            ia = np.array([p[0] for p in pairs])
            ib = np.array([p[1] for p in pairs])
            compared = len(pairs)
            rows_kept = rows_kept_share(emb_a[ia], emb_b[ib])
        new_ids = np.array([vocab_b[t] for t in added if 0 <= vocab_b[t] < emb_b.shape[0]], dtype=np.int64)
        if new_ids.size:
            init = new_rows_init(emb_a.mean(axis=0, dtype=np.float64), emb_b[new_ids[:MAX_ROWS]].astype(np.float64))
    parts = [f"{len(shared)} shared tokens"]
    if added:
        parts.append(f"{len(added)} added in B")
    if removed:
        parts.append(f"{len(removed)} removed from A")
    if moved:
        parts.append(f"{moved} shared tokens at other ids")
    if rows_kept is not None:
        parts.append(f"{rows_kept:.1%} of {compared} shared tokens keep A's embedding row")
    if init is not None:
        parts.append(f"new rows initialised as {init}")
    return VocabDiagnosis(len(vocab_a), len(vocab_b), len(shared), len(added), len(removed), moved,
                          tuple(added[:50]), tuple(removed[:50]), kinds, compared, rows_kept, init,
                          "; ".join(parts))
