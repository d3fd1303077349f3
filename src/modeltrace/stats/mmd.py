"""Two-sample test on sampled completions: is the same model behind both endpoints?

After Gao, Liang & Guestrin, "Model Equality Testing: Which Model Is This API Serving?"
(ICLR 2025): samples are (prompt, completion) pairs; the kernel is zero across prompts and, for
the same prompt, the Hamming similarity of the two completions (here over characters, since
endpoints return text; the paper uses tokens), normalised to [0, 1]. The statistic is the
unbiased MMD^2 estimate; its p-value comes from a permutation test that shuffles the
model labels within each prompt. Null hypothesis: both sources draw completions from the same
distribution for every prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def hamming_kernel(texts: Sequence[str], length: int) -> np.ndarray:
    """K[i, j] = share of the first `length` character positions where texts i and j agree."""
    codes = np.full((len(texts), length), -1, dtype=np.int32)
    for i, t in enumerate(texts):
        cp = [ord(c) for c in t[:length]]
        codes[i, : len(cp)] = cp
    pad = codes < 0
    eq = (codes[:, None, :] == codes[None, :, :]) & ~(pad[:, None, :] & pad[None, :, :])
    both_pad = pad[:, None, :] & pad[None, :, :]
    out: np.ndarray = ((eq | both_pad).sum(axis=2) / length).astype(np.float64)
    return out


def _mmd2(k: np.ndarray, lab: np.ndarray) -> float:
    x, y = lab == 0, lab == 1
    nx, ny = int(x.sum()), int(y.sum())
    if nx < 2 or ny < 2:
        return 0.0
    kxx = (k[np.ix_(x, x)].sum() - np.trace(k[np.ix_(x, x)])) / (nx * (nx - 1))
    kyy = (k[np.ix_(y, y)].sum() - np.trace(k[np.ix_(y, y)])) / (ny * (ny - 1))
    kxy = k[np.ix_(x, y)].mean()
    return float(kxx + kyy - 2 * kxy)


@dataclass(frozen=True)
class MMDResult:
    statistic: float
    p_value: float
    prompts: int
    samples_per_prompt: int
    permutations: int


def mmd_test(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]], *, length: int = 32,
             permutations: int = 1000, seed: int = 0) -> MMDResult:
    """a[p] and b[p] are completions of prompt p from the two sources (any number per prompt)."""
    if len(a) != len(b) or not a:
        raise ValueError("need completions for the same, non-empty list of prompts from both sources")
    blocks = []
    for xs, ys in zip(a, b):
        texts = list(xs) + list(ys)
        lab = np.array([0] * len(xs) + [1] * len(ys))
        blocks.append((hamming_kernel(texts, length), lab))
    total = sum(len(lab) for _, lab in blocks)

    def stat(labels: list[np.ndarray]) -> float:
        # kernel is zero across prompts: the pooled MMD^2 is a weighted sum of per-prompt terms
        return sum(_mmd2(k, lab) * len(lab) for (k, _), lab in zip(blocks, labels)) / total

    observed = stat([lab for _, lab in blocks])
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        if stat([rng.permutation(lab) for _, lab in blocks]) >= observed - 1e-12:
            exceed += 1
    return MMDResult(statistic=observed, p_value=(exceed + 1) / (permutations + 1), prompts=len(a),
                     samples_per_prompt=max(len(x) for x in a), permutations=permutations)
