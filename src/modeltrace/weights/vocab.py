"""Which embedding rows of A and B stand for the same token.

With both tokenizers present, rows are paired by token string (so extended, pruned or reordered
vocabularies compare row for row). Without them, rows are paired by index over the common
range, which is right for the same tokenizer and for vocabularies extended at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from modeltrace.errors import ModelTraceError

if TYPE_CHECKING:
    from modeltrace.model import Model


@dataclass(frozen=True)
class VocabAlignment:
    """Row indices of the same tokens in A (`rows_a`) and in B (`rows_b`)."""

    rows_a: np.ndarray
    rows_b: np.ndarray
    how: str  # "tokens" | "index"
    size_a: int
    size_b: int
    reordered: int = 0  # shared tokens whose id differs

    def describe(self) -> dict[str, object]:
        return {"how": self.how, "shared": len(self.rows_a), "size_a": self.size_a, "size_b": self.size_b,
                "only_a": self.size_a - len(self.rows_a), "only_b": self.size_b - len(self.rows_b),
                "reordered": self.reordered}


def _vocab(model: Model) -> dict[str, int] | None:
    try:
        from modeltrace.artifacts.tokenizer import read_tokenizer
    except ImportError:
        return None
    try:
        tok = read_tokenizer(model)
    except ModelTraceError:  # a broken tokenizer is reported by the tokenizer methods; here: no alignment
        return None
    if tok is None or not tok.vocab:
        return None
    vocab = dict(tok.vocab)
    for t in tok.added_tokens:
        vocab.setdefault(t.content, t.id)
    return vocab


def align_vocab(a: Model | None, b: Model | None, size_a: int, size_b: int) -> VocabAlignment:
    """Pair embedding rows of A (size_a rows) and B (size_b rows) by token string when possible."""
    va = _vocab(a) if a is not None else None
    vb = _vocab(b) if b is not None else None
    if va and vb:
        common = [(ia, vb[t]) for t, ia in va.items() if t in vb and 0 <= ia < size_a and 0 <= vb[t] < size_b]
        if common:
            common.sort()
            ra = np.fromiter((x for x, _ in common), dtype=np.int64, count=len(common))
            rb = np.fromiter((y for _, y in common), dtype=np.int64, count=len(common))
            # a row index used twice (duplicate ids in a hostile tokenizer) is dropped
            _, ua = np.unique(ra, return_index=True)
            keep = np.zeros(len(ra), dtype=bool)
            keep[ua] = True
            _, ub = np.unique(rb, return_index=True)
            keep_b = np.zeros(len(rb), dtype=bool)
            keep_b[ub] = True
            keep &= keep_b
            ra, rb = ra[keep], rb[keep]
            return VocabAlignment(ra, rb, "tokens", size_a, size_b, int(np.count_nonzero(ra != rb)))
    n = min(size_a, size_b)
    idx = np.arange(n, dtype=np.int64)
    return VocabAlignment(idx, idx, "index", size_a, size_b)
