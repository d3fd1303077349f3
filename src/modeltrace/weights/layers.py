"""Layer correspondence: which block of A each block of B comes from.

For every pair (A layer i, B layer j) the score is the share of A's sampled MLP units whose
best match among B layer j's units is *confident* (cosine >= 0.5 and >= 1.25 times the
runner-up), after residual alignment. A copied layer scores near 1 even when its units were
permuted; unrelated layers score near 0. The assignment gives each B layer the A layer with the
highest score when that score is at least `MIN_SCORE`, else None (a new or unrecognisable layer).

The score depends on B's units only through the best and second-best similarities of each A
unit, which do not change when B's units are relabelled; the exact tests that run on the
chosen layer pairs therefore keep their null distributions. The scores themselves are
descriptive, not a test.

When both models have the same depth and every same-index pair already scores at least
`MIN_SCORE`, the full matrix is not computed (`full` is False): the diagonal is the answer, and
the L^2 work is spent only where layers may have moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_SCORE = 0.2
OFFDIAG_ROWS = 48  # rows per A layer when filling the full matrix (score resolution about 1/48)


@dataclass(frozen=True)
class LayerMap:
    """Scores (A layers x B layers, NaN where not computed) and each B layer's source layer in A."""

    a_layers: tuple[int, ...]
    b_layers: tuple[int, ...]
    scores: np.ndarray
    assignment: dict[int, int | None]  # B layer -> A layer
    full: bool

    def entries(self, component: str) -> list[dict[str, Any]]:
        out = []
        for jj, j in enumerate(self.b_layers):
            i = self.assignment.get(j)
            col = self.scores[:, jj]
            s = float(col[self.a_layers.index(i)]) if i is not None else (
                float(np.nanmax(col)) if np.any(~np.isnan(col)) else None)
            out.append({"component": component, "b_layer": j, "a_layer": i,
                        "score": None if s is None else round(s, 4)})
        return out

    def dropped(self) -> list[int]:
        used = {i for i in self.assignment.values() if i is not None}
        return [i for i in self.a_layers if i not in used]


def layer_map(a_layers: list[int], b_layers: list[int], score: Callable[[int, int, bool], float]) -> LayerMap:
    """Fill the score matrix with `score(i, j, full)` (full=False: the cheap off-diagonal variant)."""
    sa, sb = tuple(a_layers), tuple(b_layers)
    scores = np.full((len(sa), len(sb)), np.nan)
    diag_ok = sa == sb and len(sa) > 0
    if diag_ok:
        for k, layer in enumerate(sa):
            scores[k, k] = score(layer, layer, True)
        diag_ok = bool(np.all(scores.diagonal() >= MIN_SCORE))
    if not diag_ok:
        for ii, i in enumerate(sa):
            for jj, j in enumerate(sb):
                if np.isnan(scores[ii, jj]):
                    scores[ii, jj] = score(i, j, False)
    assignment: dict[int, int | None] = {}
    for jj, j in enumerate(sb):
        col = scores[:, jj]
        if np.all(np.isnan(col)):
            assignment[j] = None
            continue
        ii = int(np.nanargmax(col))
        assignment[j] = sa[ii] if col[ii] >= MIN_SCORE else None
    return LayerMap(sa, sb, scores, assignment, full=not diag_ok)
