"""Signatures that pair tensors by content when no naming scheme explains both models.

An adversary chooses the names; what it cannot change without changing the function is the
content. Each signature survives what a function-preserving shell does to a tensor:

- a matrix: the Gram matrix of its *residual* axis (``X^T X`` over the hidden units, on a fixed,
  evenly spaced subset of at most `GRAM_COORDS` residual coordinates). It does not change when
  the units (rows of an input projection, columns of an output projection, heads) are permuted,
  it is read in A's (out, in) layout so a transposed copy gives the same matrix, and added noise
  of relative size s moves it by about s. Its diagonal is the column-norm profile;
- its sorted spectrum (the eigenvalues of that Gram matrix): invariant to permutations and to a
  rotation of the residual stream as well, a weaker tie-breaker;
- a vector over the residual stream (a norm gain): the vector itself;
- any other vector (a bias over units): its sorted values.

Why the exact unit tests stay exact. The pairing depends on B's MLP tensors only through
quantities that do not change when B's hidden units are relabelled (Gram over the residual axis,
spectrum, sorted values). Under the null of `modeltrace.stats.nulls` B's unit labels are a
uniform permutation independent of everything else, so they are still uniform given the pairing:
the fixed-point laws hold conditionally on it, and so unconditionally. (A square matrix, whose
unit axis cannot be told from its residual axis by size, takes its orientation from the
non-square pairs' vote instead of from content, so no orientation choice reads B's unit or head
axis; only when no non-square pair exists does content decide.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRAM_COORDS = 128  # residual coordinates kept in a Gram signature
MIN_SCORE = 0.3  # content pairs below this score are not made


@dataclass(frozen=True)
class Signature:
    """What a tensor's content says about it, in a form that survives permutations, transposes and noise."""

    shape: tuple[int, ...]
    gram: np.ndarray | None  # upper triangle (with diagonal) of the residual Gram, centred and unit norm
    spectrum: np.ndarray | None  # sorted eigenvalues of the Gram, unit norm
    vector: np.ndarray | None  # 1-D: the values (residual) or sorted values (units), centred and unit norm
    flat: bool = False  # a 1-D tensor whose variation is below float noise (an untrained gain): no content


def _unit(x: np.ndarray) -> np.ndarray | None:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    n = float(np.linalg.norm(x))
    if not np.isfinite(n) or n <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0))) or n == 0.0:
        return None
    out: np.ndarray = x / n
    return out


def coords(d: int) -> np.ndarray:
    """The residual coordinates a Gram signature keeps (the same on both sides)."""
    if d <= GRAM_COORDS:
        return np.arange(d)
    return np.unique(np.linspace(0, d - 1, GRAM_COORDS).astype(np.int64))


def matrix_signature(x: np.ndarray, residual_axis: int) -> Signature:
    """Signature of a matrix in A's (out, in) layout whose residual axis is `residual_axis` (0 or 1).

    A tensor of more dimensions (a conv kernel) is read as (output channels, the rest), the Gram
    taken over the rest: invariant to permuting output channels."""
    shape = tuple(int(s) for s in x.shape)
    if x.ndim > 2:  # a kernel: one row per output channel
        x, residual_axis = x.reshape(x.shape[0], -1), 1
    m = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if residual_axis == 0:
        m = m.T
    m = m[:, coords(m.shape[1])]
    g = m.T @ m
    iu = np.triu_indices(g.shape[0])
    spec = np.sort(np.clip(np.linalg.eigvalsh(g), 0.0, None))
    sn = float(np.linalg.norm(spec))
    return Signature(shape, _unit(g[iu]), spec / sn if sn > 0 else None, None)


def vector_signature(x: np.ndarray, residual: bool) -> Signature:
    """Signature of a 1-D tensor: its values over the residual stream, else its sorted values."""
    v = np.nan_to_num(np.asarray(x, dtype=np.float64).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
    u = _unit(v if residual else np.sort(v))
    return Signature((int(v.shape[0]),), None, None, u, flat=u is None)


def score(a: Signature, b: Signature) -> float:
    """Similarity in [-1, 1] (higher: more alike); -1 when the shapes differ or there is no content."""
    if a.shape != b.shape:
        return -1.0
    if a.vector is not None or b.vector is not None or a.flat or b.flat:
        if a.vector is None or b.vector is None:
            return -1.0
        return float(a.vector @ b.vector)
    if a.gram is None or b.gram is None:
        return -1.0
    s = float(a.gram @ b.gram)
    if a.spectrum is not None and b.spectrum is not None:
        s += 0.05 * (1.0 - float(np.linalg.norm(a.spectrum - b.spectrum)))
    return s


def first_varying_int(names: list[str]) -> dict[str, int]:
    """Each name's layer number, taken as the first integer position whose value varies across the names.

    A custom layout still numbers its blocks (``blk_3/ffn``, ``h.3.attn``, ``layers/3/w13``); the first
    integer that is not the same for every tensor is the block index. Names without it get none.
    """
    import re

    ints = {n: [int(t) for t in re.findall(r"\d+", n)] for n in names}
    width = max((len(v) for v in ints.values()), default=0)
    for k in range(width):
        vals = {v[k] for v in ints.values() if len(v) > k}
        if len(vals) > 1:
            return {n: v[k] for n, v in ints.items() if len(v) > k}
    return {}


def assign(scores: np.ndarray) -> list[tuple[int, int, float, float]]:
    """One-to-one assignment maximizing total score: (row, col, score, margin) for pairs above `MIN_SCORE`.

    The margin is the chosen score minus the best other score in the row and column: how sure the
    pairing is (near 0: two candidates look alike).
    """
    from scipy.optimize import linear_sum_assignment

    if scores.size == 0:
        return []
    rows, cols = linear_sum_assignment(scores, maximize=True)
    out = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        s = float(scores[r, c])
        if s < MIN_SCORE:
            continue
        others = np.concatenate([np.delete(scores[r], c), np.delete(scores[:, c], r)])
        margin = s - float(others.max()) if others.size else s
        out.append((r, c, s, margin))
    return out
