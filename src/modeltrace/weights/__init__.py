"""Weights of two models side by side: tensor matching, unit and residual alignment, layer correspondence.

- `match`: which tensor of B corresponds to which of A (renames, transposes, fused projections),
  by names first and by content (`content`) where no naming scheme explains them;
- `content`: tensor signatures that survive permutation, transposition and noise;
- `align`: unit rows, equivariant unit matching, residual-stream alignment, residual dimensions
  paired across models of different widths, the order test;
- `vocab`: embedding rows of the same token in both vocabularies;
- `layers`: the layer-correspondence matrix and assignment;
- `analysis`: the one shared analysis per compare (`analysis_for(ctx)`).
"""

from __future__ import annotations

from modeltrace.weights.match import Matching, Piece, TensorPair, match_models, match_sources

__all__ = ["Matching", "Piece", "TensorPair", "match_models", "match_sources"]
