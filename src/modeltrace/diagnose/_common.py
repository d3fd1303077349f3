"""Small numeric functions shared by the diagnosis estimators (no model or file access here)."""

from __future__ import annotations

import functools
import math

import numpy as np

MAX_FLAT = 1 << 16  # elements sampled from one tensor for element-wise statistics


def as_f32(x: np.ndarray) -> np.ndarray:
    """A float32 view or copy of `x` (estimators never modify their inputs)."""
    return np.asarray(x, dtype=np.float32)


def check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "A and B") -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {a.shape} and {b.shape}")


def flat_index(n: int, k: int, seed: int) -> np.ndarray | None:
    """A fixed random subset of `k` indices of `range(n)` (sorted), or None when `n <= k`."""
    if n <= k:
        return None
    return _flat_index(n, k, seed)


@functools.lru_cache(maxsize=32)
def _flat_index(n: int, k: int, seed: int) -> np.ndarray:
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    idx.flags.writeable = False  # shared between calls
    return idx


def sample_flat(x: np.ndarray, k: int = MAX_FLAT, seed: int = 0) -> np.ndarray:
    """Up to `k` elements of `x` (flattened) as float64, the same positions for every tensor of that size."""
    flat = np.asarray(x).reshape(-1)
    idx = flat_index(flat.size, k, seed)
    out = flat if idx is None else flat[idx]
    return out.astype(np.float64)


def sample_matrix(x: np.ndarray, max_rows: int, max_cols: int, seed: int = 0) -> np.ndarray:
    """A random submatrix (rows and columns chosen without replacement) as float64."""
    m = np.asarray(x)
    if m.ndim != 2:
        m = m.reshape(m.shape[0], -1)
    rng = np.random.default_rng(seed)
    if m.shape[0] > max_rows:
        m = m[np.sort(rng.choice(m.shape[0], size=max_rows, replace=False))]
    if m.shape[1] > max_cols:
        m = m[:, np.sort(rng.choice(m.shape[1], size=max_cols, replace=False))]
    return m.astype(np.float64)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two equal-length vectors; None when either is constant."""
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if den == 0.0 or not math.isfinite(den):
        return None
    return float(xc @ yc) / den


def rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS of B - A over RMS of A (inf when A is all zeros and B is not, 0 when both are)."""
    num = rms(np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64))
    den = rms(np.asarray(a))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def singular_values(m: np.ndarray) -> np.ndarray:
    """Singular values (descending) via the eigenvalues of the smaller Gram matrix (float64).

    Faster than an SVD and accurate to about 1e-8 of the largest value, which is all the rank and
    noise-edge checks need."""
    x = np.asarray(m, dtype=np.float64)
    g = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
    ev = np.linalg.eigvalsh(g)[::-1]
    out: np.ndarray = np.sqrt(np.clip(ev, 0.0, None))
    return out
