"""Was B made by adding Gaussian noise to A? Estimate the noise level relative to each tensor.

Model: B = A + E with E i.i.d. N(0, s^2), independent of A. Checks, per tensor, on a fixed
random sample of positions: E uncorrelated with A (|r| < 6/sqrt(n)), E's variance not growing
with |A| (rounding and quantization errors do), E's skewness and excess kurtosis near 0 (within 6
standard errors, sqrt(6/n) and sqrt(24/n)), and, for matrices, E's largest singular value not
above the Marchenko-Pastur edge s(sqrt(m) + sqrt(n)) that pure noise reaches (no low-rank
structure, as a fine-tune or LoRA merge leaves). The level is sigma_rel = std(E) / std(A); in the
Llama3-V case it was reported as about 1/708. An independent B fails the first check at once:
then E = B - A has correlation about -0.7 with A.
References: Marchenko & Pastur (1967), Math. USSR Sbornik 1(4); D'Agostino & Pearson moments.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modeltrace.diagnose._common import (
    MAX_FLAT,
    as_f32,
    check_same_shape,
    flat_index,
    pearson,
    sample_matrix,
    singular_values,
)

SV_MAX_DIM = 384
EDGE_RATIO_MAX = 1.15  # top singular value over the Marchenko-Pastur edge still counted as noise
GRID_EDGE_MAX = 2.0  # the same when B went through float rounding, whose error varies from row to row
MIN_CHANGED = 20  # positions that must differ from round(A) for the rounding fit to say anything
MIN_ELEMENTS = 256
HIST_BINS = 41
HIST_SPAN = 5.0  # the histogram covers +-5 standard deviations of B - A


@dataclass(frozen=True)
class TensorNoise:
    """Noise statistics of one tensor pair (B - A) and whether they fit additive Gaussian noise."""

    n: int
    sigma_abs: float  # std(B - A)
    sigma_rel: float  # std(B - A) / std(A)
    corr_with_a: float  # r(B - A, A)
    corr_sq: float  # r((B - A)^2, A^2): variance that grows with |A|
    skew: float
    excess_kurtosis: float
    edge_ratio: float | None  # top singular value of B - A over the MP edge (matrices only)
    looks_noise: bool
    reason: str
    informative: bool = True  # False when too few positions changed to judge (rounding hid the rest)
    # descriptive, for reports: counts of (B - A) / std(A) in HIST_BINS equal bins over [-w, w]
    delta_hist: tuple[float, tuple[int, ...]] | None = None


@dataclass(frozen=True)
class NoiseDiagnosis:
    """Across tensors: is B = A + Gaussian noise, and with what relative (and absolute) level."""

    detected: bool
    sigma_rel: float | None  # median over the tensors that look like noise
    sigma_abs: float | None
    sigma_rel_cv: float | None  # spread of sigma_rel across tensors (coefficient of variation)
    sigma_abs_cv: float | None
    scale: str | None  # "relative" when sigma_rel is the constant one, "absolute" when sigma_abs is
    n_tensors: int
    n_noise: int
    confidence: float
    reason: str


def _moments(e: np.ndarray) -> tuple[float, float]:
    c = e - e.mean()
    v = float(np.mean(c * c))
    if v == 0.0:
        return 0.0, 0.0
    c2 = c * c
    skew = float(np.mean(c2 * c)) / v**1.5
    kurt = float(np.mean(c2 * c2)) / v**2 - 3.0
    return skew, kurt


def delta_histogram(e: np.ndarray, sa: float) -> tuple[float, tuple[int, ...]] | None:
    """Counts of e / sa in HIST_BINS equal bins over +-HIST_SPAN std(e) / sa: the B - A histogram a report draws.

    Values outside the range are not counted (at 5 sigma there are none for Gaussian noise)."""
    se = float(np.std(e))
    if sa <= 0.0 or se <= 0.0 or not math.isfinite(se / sa):
        return None
    w = HIST_SPAN * se / sa
    counts, _ = np.histogram(e / sa, bins=HIST_BINS, range=(-w, w))
    return float(f"{w:.6g}"), tuple(int(c) for c in counts)


def edge_ratio(delta: np.ndarray, *, seed: int = 0) -> float | None:
    """Largest singular value of a (sub-sampled) centered matrix over the noise edge s(sqrt(m)+sqrt(n))."""
    if delta.ndim < 2 or min(delta.shape[0], int(np.prod(delta.shape[1:]))) < 16:
        return None
    m = sample_matrix(delta, SV_MAX_DIM, SV_MAX_DIM, seed)
    m = m - m.mean()
    s = float(np.std(m))
    if s == 0.0:
        return None
    top = float(singular_values(m)[0])
    return top / (s * (math.sqrt(m.shape[0]) + math.sqrt(m.shape[1])))


def tensor_noise(a: np.ndarray, b: np.ndarray, *, seed: int = 0, spectrum: bool = True) -> TensorNoise:
    """Estimate the noise in B - A for one tensor pair and test whether it looks Gaussian and i.i.d.

    `spectrum=False` skips the singular-value check (to bound the cost over a large model)."""
    check_same_shape(a, b)
    xa = as_f32(a)
    xb = as_f32(b)
    idx = flat_index(xa.size, MAX_FLAT, seed)
    fa = xa.reshape(-1).astype(np.float64) if idx is None else xa.reshape(-1)[idx].astype(np.float64)
    fb = xb.reshape(-1).astype(np.float64) if idx is None else xb.reshape(-1)[idx].astype(np.float64)
    e = fb - fa
    n = int(e.size)
    sa = float(np.std(fa)) if n else 0.0
    se = float(np.std(e)) if n else 0.0
    rel = se / sa if sa > 0 else math.inf
    if n < MIN_ELEMENTS or sa == 0.0 or se == 0.0:
        why = ("too few elements" if n < MIN_ELEMENTS else "A is constant" if sa == 0.0 else "B equals A")
        return TensorNoise(n, se, rel, 0.0, 0.0, 0.0, 0.0, None, False, why)
    hist = delta_histogram(e, sa)
    r = pearson(e, fa) or 0.0
    r2 = pearson(e * e, fa * fa) or 0.0
    skew, kurt = _moments(e)
    er = None
    if spectrum and xa.ndim >= 2:  # the same rows and columns of both (same seed, same shape)
        er = edge_ratio(sample_matrix(xb, SV_MAX_DIM, SV_MAX_DIM, seed) - sample_matrix(xa, SV_MAX_DIM, SV_MAX_DIM, seed),
                        seed=seed)
    lim_r = 6.0 / math.sqrt(n)
    problems = []
    if abs(r) > max(lim_r, 0.02):
        problems.append(f"B - A correlates with A (r = {r:.3f})")
    if abs(r2) > max(lim_r, 0.05):
        problems.append(f"the size of B - A follows |A| (r = {r2:.3f}), as rounding error does")
    if abs(skew) > max(6.0 * math.sqrt(6.0 / n), 0.1):
        problems.append(f"B - A is skewed ({skew:.2f})")
    if abs(kurt) > max(6.0 * math.sqrt(24.0 / n), 0.2):
        problems.append(f"B - A is not Gaussian (excess kurtosis {kurt:.2f})")
    if er is not None and er > EDGE_RATIO_MAX:
        problems.append(f"B - A has low-rank structure (top singular value {er:.2f}x the noise edge)")
    ok = not problems
    reason = (f"B - A looks like i.i.d. Gaussian noise of {rel:.3g} x std(A)" if ok else "; ".join(problems))
    # rounding to a float grid makes the error grow with |A|, row by row, which lifts the top singular
    # value a little; a spike with a clear gap below it (a low-rank change) still rules noise out
    structural = abs(r) > max(lim_r, 0.02) or (er is not None and er > GRID_EDGE_MAX)
    if not structural and er is not None and er > EDGE_RATIO_MAX:
        structural = _low_rank_spike(sample_matrix(xb, SV_MAX_DIM, SV_MAX_DIM, seed)
                                     - sample_matrix(xa, SV_MAX_DIM, SV_MAX_DIM, seed))
    if problems and not structural:
        grid = float_grid(fb)
        if grid is not None:
            fit = rounded_noise(fa, fb, grid, seed=seed)
            if fit is not None and fit.changed < MIN_CHANGED:
                return TensorNoise(n, se, rel, r, r2, skew, kurt, er, False,
                                   f"only {fit.changed} positions changed after {grid} rounding: too few to judge",
                                   informative=False)
            if fit is not None and fit.fits:
                return TensorNoise(n, fit.sigma, fit.sigma / sa, r, r2, skew, kurt, er, True,
                                   f"B = {grid}(A + Gaussian noise of {fit.sigma / sa:.3g} x std(A)): the noise "
                                   f"level fitted through the {grid} rounding of B (maximum likelihood)",
                                   delta_hist=hist)
            if fit is not None:
                reason += f"; not Gaussian noise seen through {grid} rounding either ({fit.reason})"
    return TensorNoise(n, se, rel, r, r2, skew, kurt, er, ok, reason, delta_hist=hist)


def _low_rank_spike(delta: np.ndarray) -> bool:
    from modeltrace.diagnose.finetune import GAP_MIN, LOW_RANK_SHARE, effective_rank

    est = effective_rank(delta)
    return 0 < est.rank <= max(1, int(LOW_RANK_SHARE * min(est.shape))) and est.gap >= GAP_MIN


# --- noise seen through rounding to a narrow float type -------------------------------------------

ROUND_MAX = 1 << 14  # elements used by the rounding-channel likelihood fit (its check uses all given)


@dataclass(frozen=True)
class RoundedNoise:
    """Fit of B = round_grid(A + N), N ~ N(0, sigma^2), with a simulation check of the fit."""

    sigma: float
    unchanged_observed: float  # share of positions where B = round(A)
    unchanged_expected: float
    var_ratio: float  # observed var(B - A) over the simulated one
    changed: int  # positions where B differs from round(A)
    fits: bool
    reason: str


def float_grid(x: np.ndarray) -> str | None:
    """"bf16" or "f16" when every value of `x` is representable in that type, else None."""
    from modeltrace.diagnose.cast import round_bf16, round_f16

    x32 = x.astype(np.float32)
    for name, fn in (("bf16", round_bf16), ("f16", round_f16)):
        if np.array_equal(fn(x32), x32):
            return name
    return None


def _cell(b: np.ndarray, grid: str) -> tuple[np.ndarray, np.ndarray]:
    """The interval of reals that round to each grid value b (round to nearest)."""
    bits = 8 if grid == "bf16" else 11  # significand bits, the implicit one included
    mant, exp = np.frexp(np.abs(b))
    spacing = np.ldexp(1.0, exp - bits)
    below = np.where(mant == 0.5, spacing / 2, spacing)  # a power of two: finer grid below it
    tiny = np.ldexp(1.0, -126 if grid == "bf16" else -24)
    spacing = np.where(b == 0, tiny, spacing)
    below = np.where(b == 0, tiny, below)
    up = np.where(b >= 0, spacing, below) / 2
    down = np.where(b >= 0, below, spacing) / 2
    return b - down, b + up


def _rounded_nll(log_sigma: float, a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    from scipy.special import log_ndtr

    sig = math.exp(log_sigma)
    z1 = (lo - a) / sig
    z2 = (hi - a) / sig
    # log(Phi(z2) - Phi(z1)), taken on the side of the tail for accuracy
    upper = z1 > 0
    l2 = np.where(upper, log_ndtr(-z1), log_ndtr(z2))
    l1 = np.where(upper, log_ndtr(-z2), log_ndtr(z1))
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = l2 + np.log1p(-np.exp(np.minimum(l1 - l2, 0.0)))
    return float(-np.sum(np.maximum(lp, -745.0)))


def rounded_noise(a: np.ndarray, b: np.ndarray, grid: str, *, seed: int = 0) -> RoundedNoise | None:
    """Maximum-likelihood sigma for B = round_grid(A + N), N ~ N(0, sigma^2), and a check of the fit.

    Each B value stands for the interval of reals that round to it, so the likelihood of sigma is
    the product of Gaussian probabilities of those intervals around A (interval-censored data).
    The fit is checked by simulating the model with the fitted sigma on the same A: the share of
    positions left unchanged and the variance of B - A must match what was observed.
    """
    from scipy.optimize import minimize_scalar

    from modeltrace.diagnose.cast import round_bf16, round_f16

    rnd = round_bf16 if grid == "bf16" else round_f16
    fa = a.reshape(-1).astype(np.float64)
    fb = b.reshape(-1).astype(np.float64)
    sa = float(np.std(fa))
    d = fb - fa
    if sa == 0.0 or not np.any(d):
        return None
    idx = flat_index(fa.size, ROUND_MAX, seed)  # the fit on a subset, the check on everything given
    ma, mb = (fa, fb) if idx is None else (fa[idx], fb[idx])
    lo, hi = _cell(mb, grid)
    res = minimize_scalar(_rounded_nll, bounds=(math.log(sa * 1e-7), math.log(sa * 2.0)), args=(ma, lo, hi),
                          method="bounded", options={"xatol": 1e-3})
    sigma = math.exp(float(res.x))
    z = np.random.default_rng([seed, 41]).standard_normal(fa.size)
    sim = rnd((fa + sigma * z).astype(np.float32)).astype(np.float64)
    base = rnd(fa.astype(np.float32)).astype(np.float64)
    un_obs = float(np.mean(fb == base))
    un_exp = float(np.mean(sim == base))
    v_sim = float(np.var(sim - fa))
    ratio = float(np.var(d)) / v_sim if v_sim > 0 else math.inf
    changed = int(np.count_nonzero(fb != base))
    tol = 0.005 + 4.0 * math.sqrt(2.0 * max(un_exp * (1 - un_exp), 1e-6) / fa.size)  # observed and simulated
    tol_var = 0.15 + 3.0 * math.sqrt(2.0 / max(changed, 1))  # a variance from few changed values is rough
    fits = abs(un_obs - un_exp) <= tol and abs(ratio - 1.0) <= tol_var and un_obs < 1.0
    reason = (f"unchanged {un_obs:.3f} observed vs {un_exp:.3f} expected; variance ratio {ratio:.3f}"
              if un_obs < 1.0 else f"B is A rounded to {grid} everywhere: a cast, no noise")
    return RoundedNoise(sigma, un_obs, un_exp, ratio, changed, fits, reason)


def _cv(xs: Sequence[float]) -> float | None:
    if len(xs) < 2:
        return None
    mu = statistics.fmean(xs)
    return statistics.pstdev(xs) / mu if mu > 0 else None


def diagnose_noise(per_tensor: Sequence[TensorNoise], *, min_share: float = 0.8) -> NoiseDiagnosis:
    """Combine per-tensor checks: noise is diagnosed when at least `min_share` of the informative
    tensors (enough elements, A not constant, B != A) pass every check."""
    informative = [t for t in per_tensor if t.informative and t.n >= MIN_ELEMENTS and math.isfinite(t.sigma_rel)
                   and t.sigma_abs > 0]
    noisy = [t for t in informative if t.looks_noise]
    if not informative:
        return NoiseDiagnosis(False, None, None, None, None, None, 0, 0, 0.0,
                              "no tensor differs from A with enough elements to judge")
    share = len(noisy) / len(informative)
    if not noisy or share < min_share:
        worst = next((t.reason for t in informative if not t.looks_noise), "")
        return NoiseDiagnosis(False, None, None, None, None, None, len(informative), len(noisy), 0.0,
                              f"{len(noisy)} of {len(informative)} changed tensors look like added Gaussian noise"
                              + (f"; e.g. {worst}" if worst else ""))
    rels = [t.sigma_rel for t in noisy]
    abss = [t.sigma_abs for t in noisy]
    cv_rel, cv_abs = _cv(rels), _cv(abss)
    scale = None
    if cv_rel is not None and cv_abs is not None:
        scale = "relative" if cv_rel <= cv_abs else "absolute"
    sig = statistics.median(rels)
    return NoiseDiagnosis(True, sig, statistics.median(abss), cv_rel, cv_abs, scale, len(informative), len(noisy),
                          share, f"{len(noisy)} of {len(informative)} changed tensors look like B = A + Gaussian "
                          f"noise; median std(noise)/std(A) = {sig:.3g} (about 1/{1 / sig:.0f})")
