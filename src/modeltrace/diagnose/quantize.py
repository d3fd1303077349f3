"""Was B quantized? Find the grid its values sit on, name the scheme, and measure the error.

Block quantizers store each block of weights as small integers times a per-block scale (plus a
per-block offset for affine schemes), so B's values in every block lie on an evenly spaced grid
of at most 2^bits levels. We fit each known layout (llama.cpp's Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K and Q5_K blocks
as documented in ggml's `ggml-quants.c`; int8 with one scale per tensor or per output row, as
ONNX and bitsandbytes store it) and accept the first whose grid holds nearly every value: values
of a float tensor fall within `tol` of such a grid with probability about 2*tol each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from modeltrace.diagnose._common import as_f32, check_same_shape, rel_rms, sample_flat

GRID_TOL = 2e-3  # distance to the nearest level, in grid steps, still counted as on the grid
ON_GRID_MIN = 0.98  # share of values that must sit on the grid
MAX_BLOCKS = 2048  # blocks examined per tensor (a fixed sample of them when there are more)
PRESCREEN_BLOCKS = 64
PRESCREEN_MIN = 0.9


@dataclass(frozen=True)
class QuantDiagnosis:
    """The quantization scheme B's values fit (None when none does) and its error against A."""

    scheme: str | None  # "int8-per-tensor", "int8-per-channel", "Q8_0", "Q4_0", ..., "Q5_K", "block32-<b>bit"
    bits: int | None
    block_size: int | None  # elements sharing one scale (row length for per-channel)
    on_grid_fraction: float  # of the best-fitting scheme
    rel_rms_error: float | None  # RMS(B - A) / RMS(A), when A was given
    snr_db: float | None
    confidence: float
    reason: str


def _blocks(x: np.ndarray, size: int, seed: int, max_blocks: int = MAX_BLOCKS) -> np.ndarray | None:
    """Rows of `size` consecutive elements along the last axis (None when it does not divide)."""
    if x.ndim == 0 or x.shape[-1] % size != 0:
        return None
    blocks = x.reshape(-1, size)
    if blocks.shape[0] > max_blocks:
        pick = np.sort(np.random.default_rng(seed).choice(blocks.shape[0], max_blocks, replace=False))
        blocks = blocks[pick]
    return blocks.astype(np.float64)


def _on_grid(k: np.ndarray, kmin: float, kmax: float, live: np.ndarray) -> float:
    """Share of entries (in blocks with a nonzero step) that are integers within [kmin, kmax]."""
    if not live.any():
        return 0.0
    kk = k[live]
    r = np.rint(kk)
    ok = (np.abs(kk - r) <= GRID_TOL) & (r >= kmin - 0.5) & (r <= kmax + 0.5)
    return float(ok.mean())


def _symmetric(blocks: np.ndarray, qmax: float, kmin: float, kmax: float) -> float:
    d = np.abs(blocks).max(axis=1) / qmax
    live = d > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        k = blocks / np.where(live, d, 1.0)[:, None]
    return _on_grid(k, kmin, kmax, live)


def _affine(blocks: np.ndarray, levels: int) -> float:
    lo = blocks.min(axis=1)
    d = (blocks.max(axis=1) - lo) / (levels - 1)
    live = d > 0
    k = (blocks - lo[:, None]) / np.where(live, d, 1.0)[:, None]
    return _on_grid(k, 0, levels - 1, live)


def _min_step(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block: the smallest gap between distinct values (a candidate grid step) and the block minimum."""
    s = np.sort(blocks, axis=1)
    gaps = np.diff(s, axis=1)
    span = s[:, -1] - s[:, 0]
    gaps = np.where(gaps > 1e-6 * span[:, None], gaps, np.inf)
    return gaps.min(axis=1), s[:, 0]


def _free_grid(blocks: np.ndarray, max_levels: int) -> tuple[float, np.ndarray]:
    """Fit a grid with a free step and offset per block; returns on-grid share and the steps."""
    step, lo = _min_step(blocks)
    live = np.isfinite(step)
    step = np.where(live, step, 1.0)
    k = (blocks - lo[:, None]) / step[:, None]
    return _on_grid(k, 0, max_levels - 1, live), np.where(live, step, np.nan)


def _k_quant(x: np.ndarray, seed: int, levels: int, max_blocks: int) -> float:
    """Q4_K / Q5_K: 256-element super-blocks of eight 32-element affine sub-blocks with 16 (32) levels
    each, whose sub-block steps are 6-bit integer multiples of one super-block scale."""
    blocks = _blocks(x, 256, seed, max(1, max_blocks // 8))
    if blocks is None:
        return 0.0
    sub = blocks.reshape(-1, 32)
    share, steps = _free_grid(sub, levels)
    if share < ON_GRID_MIN:
        return share
    steps = steps.reshape(-1, 8)
    good = 0
    total = 0
    for row in steps:
        row = row[np.isfinite(row)]
        if row.size < 3:
            continue
        total += 1
        top = row.max()
        for sc in range(63, 0, -1):
            unit = top / sc
            m = row / unit
            if np.all(np.abs(m - np.rint(m)) <= 0.02) and np.all(np.rint(m) <= 63):
                good += 1
                break
    if total == 0:
        return 0.0
    return share * good / total


def _fitters(x: np.ndarray, seed: int, max_blocks: int) -> list[tuple[str, int, int | None, Callable[[], float]]]:
    row = x.shape[-1] if x.ndim else 1
    per_row = x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, row)

    def whole() -> float:
        flat = sample_flat(x, 32 * max_blocks, seed)[None, :]
        return _symmetric(flat, 127, -128, 127)

    def channel() -> float:
        if x.ndim < 2:
            return 0.0
        rows = per_row if per_row.shape[0] <= max_blocks else per_row[
            np.sort(np.random.default_rng(seed).choice(per_row.shape[0], max_blocks, replace=False))]
        return _symmetric(rows.astype(np.float64), 127, -128, 127)

    def block(size: int, fn: Callable[[np.ndarray], float]) -> Callable[[], float]:
        def run() -> float:
            b = _blocks(x, size, seed, max_blocks)
            return 0.0 if b is None else fn(b)
        return run

    return [
        ("int8-per-tensor", 8, None, whole),
        ("int8-per-channel", 8, row, channel),
        ("Q8_0", 8, 32, block(32, lambda b: _symmetric(b, 127, -127, 127))),
        ("Q4_0", 4, 32, block(32, lambda b: _symmetric(b, 8, -8, 8))),
        ("Q5_0", 5, 32, block(32, lambda b: _symmetric(b, 16, -16, 16))),
        ("Q4_K", 4, 32, lambda: _k_quant(x, seed, 16, max_blocks)),  # before Q4_1: its grids often reach both end levels too
        ("Q4_1", 4, 32, block(32, lambda b: _affine(b, 16))),
        ("Q5_K", 5, 32, lambda: _k_quant(x, seed, 32, max_blocks)),
        ("Q5_1", 5, 32, block(32, lambda b: _affine(b, 32))),
        ("block32-4bit", 4, 32, block(32, lambda b: _free_grid(b, 16)[0])),
        ("block32-5bit", 5, 32, block(32, lambda b: _free_grid(b, 32)[0])),
        ("block32-6bit", 6, 32, block(32, lambda b: _free_grid(b, 64)[0])),
    ]


def detect_quantization(b: np.ndarray, a: np.ndarray | None = None, *, seed: int = 0) -> QuantDiagnosis:
    """Name the quantization grid B's values lie on, and (with A) the error it introduced.

    A tensor with fewer than 64 distinct values (norm gains at init, masks, position ids) lies on
    every grid, so it is reported as uninformative rather than quantized.
    """
    xb = as_f32(b)
    if a is not None:
        check_same_shape(a, b)
    err = None if a is None else rel_rms(sample_flat(a, seed=seed), sample_flat(xb, seed=seed))
    snr = None
    if err is not None and err > 0:
        snr = float(-20.0 * np.log10(err))
    distinct = np.unique(sample_flat(xb, 1 << 16, seed)).size
    if distinct < 64:
        return QuantDiagnosis(None, None, None, 0.0, err, snr, 0.0,
                              f"only {distinct} distinct values: any grid fits, so it proves nothing")
    best = ("", 0.0)
    # each layout is first tried on a few blocks; only a near fit is checked on the full sample
    quick = {name: fit for name, _, _, fit in _fitters(xb, seed, PRESCREEN_BLOCKS)}
    for name, bits, size, fit in _fitters(xb, seed, MAX_BLOCKS):
        share = quick[name]()
        if share >= PRESCREEN_MIN:
            share = fit()
        if share > best[1]:
            best = (name, share)
        if share >= ON_GRID_MIN:
            tail = "" if err is None else f"; RMS error {err:.3g} of A's RMS"
            return QuantDiagnosis(name, bits, size, share, err, snr, share,
                                  f"{share:.2%} of values sit on a {name} grid{tail}")
    return QuantDiagnosis(None, None, None, best[1], err, snr, 0.0,
                          f"no quantization grid fits (best: {best[0] or 'none'} holds {best[1]:.1%} of values)")
