"""Is B bit-identical to A, or equal to A after a round trip through a narrower float type?

Exact equality is only evidence when chance equality is unlikely: two untrained LayerNorm gains
are both all ones, and two sets of gains near 1 stored in bfloat16 share most values by chance.
So every claim is checked against the *chance* match rate, the probability that two independent
tensors with these value histograms agree at a position (sum over values v of p_A(v) p_B(v)); the
observed matches must be a binomial surprise under that rate (p below `max_chance_p`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as _st

from modeltrace.diagnose._common import as_f32, check_same_shape, flat_index

CastKind = Literal["identical", "cast", "uninformative", "different"]
MATCH_MIN = 0.999  # share of positions that must agree (rounding-mode differences at ties allowed)
MAX_ELEMENTS = 1 << 22
PROBE = 1 << 14  # positions tried before a candidate is checked on the whole tensor


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32 with round-to-nearest-even (as torch and safetensors do)."""
    u = as_f32(x).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) & np.uint64(0xFFFF0000)
    out: np.ndarray = rounded.astype(np.uint32).view(np.float32)
    nan = np.isnan(x)
    if nan.any():
        out = np.where(nan, np.float32(np.nan), out)
    return out


def truncate_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 by dropping the low 16 bits (some converters round this way)."""
    return (as_f32(x).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def round_f16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 -> float32 (values beyond the float16 range become infinite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return as_f32(x).astype(np.float16).astype(np.float32)


CASTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bf16": round_bf16, "bf16-truncate": truncate_bf16, "f16": round_f16,
}


@dataclass(frozen=True)
class CastDiagnosis:
    """Outcome for one tensor pair: `kind` and, for a cast, the narrow `dtype` B went through."""

    kind: CastKind
    dtype: str | None  # "bf16", "bf16-truncate", "f16" for a cast
    match_fraction: float  # share of positions where B equals A (or cast(A))
    chance_fraction: float  # share expected to agree by chance for independent tensors (NaN if not needed)
    log10_p_chance: float  # log10 binomial tail of the observed matches under the chance rate
    max_abs_diff: float
    n: int
    confidence: float
    reason: str


def chance_match_rate(x: np.ndarray, y: np.ndarray) -> float:
    """Probability that two independent draws, one from each value histogram, are equal."""
    vx, cx = np.unique(x, return_counts=True)
    vy, cy = np.unique(y, return_counts=True)
    _, ix, iy = np.intersect1d(vx, vy, assume_unique=True, return_indices=True)
    return float(np.sum(cx[ix].astype(np.float64) * cy[iy]) / (float(x.size) * float(y.size)))


def _log10_binom_tail(k: int, n: int, p: float) -> float:
    if p <= 0.0:
        return -math.inf if k > 0 else 0.0
    if p >= 1.0:
        return 0.0
    lp = float(_st.binom.logsf(k - 1, n, p))
    return lp / math.log(10)


def _equal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    same: np.ndarray = (x == y) | (np.isnan(x) & np.isnan(y))
    return same


def detect_cast(a: np.ndarray, b: np.ndarray, *, max_chance_p: float = 1e-6, seed: int = 0) -> CastDiagnosis:
    """Is B identical to A, or A after a bf16/f16 round trip? Checked against chance agreement.

    Null hypothesis of the guard: B's values agree with A's no more than two independent tensors
    with the same value histograms would (element-wise independence assumed). Tensors larger than
    4M elements are judged on a fixed random sample of positions.
    """
    check_same_shape(a, b)
    xa = as_f32(a).reshape(-1)
    xb = as_f32(b).reshape(-1)
    idx = flat_index(xa.size, MAX_ELEMENTS, seed)
    if idx is not None:
        xa, xb = xa[idx], xb[idx]
    n = int(xa.size)
    if n == 0:
        return CastDiagnosis("uninformative", None, 1.0, 1.0, 0.0, 0.0, 0, 0.0, "empty tensor")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(xa - xb)
    finite = diff[np.isfinite(diff)]
    max_abs = float(finite.max()) if finite.size else 0.0

    # each candidate is first tried on a few positions; only a near match is checked everywhere
    probe = flat_index(n, PROBE, seed + 1)
    pa, pb = (xa, xb) if probe is None else (xa[probe], xb[probe])
    fns: list[tuple[str | None, Callable[[np.ndarray], np.ndarray]]] = [(None, lambda x: x)]
    fns += list(CASTS.items())
    best: tuple[str | None, float, np.ndarray] | None = None
    for name, fn in fns:
        frac = float(np.mean(_equal(fn(pa), pb)))
        if frac < MATCH_MIN and probe is not None:
            if best is None or frac > best[1]:
                best = (name, frac, pa)
            continue
        ya = fn(xa)
        frac = float(np.mean(_equal(ya, xb)))
        if best is None or frac > best[1] + 1e-12:
            best = (name, frac, ya)
        if name is None and frac == 1.0:
            break
    assert best is not None
    name, frac, ya = best
    if frac < MATCH_MIN or ya.shape != xb.shape:  # no chance rate needed (it costs a sort): NaN
        return CastDiagnosis("different", None, frac, math.nan, 0.0, max_abs, n, 1.0 - frac,
                             f"only {frac:.4%} of positions agree with A or a cast of A")
    chance = chance_match_rate(ya, xb)
    k = round(frac * n)
    log10_p = _log10_binom_tail(k, n, chance)
    what = "bit-identical to A" if name is None else f"equal to A after a {name} round trip"
    if log10_p > math.log10(max_chance_p):
        return CastDiagnosis("uninformative", name, frac, chance, log10_p, max_abs, n, 0.0,
                             f"{what}, but {chance:.1%} of positions would agree by chance "
                             f"(few distinct values, e.g. constant norm gains): proves nothing")
    kind: CastKind = "identical" if name is None else "cast"
    conf = 1.0 - 10.0 ** max(log10_p, -300.0)
    return CastDiagnosis(kind, name, frac, chance, log10_p, max_abs, n, conf,
                         f"{what} at {frac:.4%} of {n} positions (chance rate {chance:.2%})")
