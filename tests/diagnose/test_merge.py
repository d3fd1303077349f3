"""Merges: coefficients with the other model given, slerp vs linear, task arithmetic, share explained."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modeltrace.diagnose.merge import merge_coefficients, share_explained, task_arithmetic

SHAPES = [(64, 128), (128, 64), (96, 96), (256,)]


def model(rng: np.random.Generator) -> list[np.ndarray]:
    return [(rng.standard_normal(s) * 0.02).astype(np.float32) for s in SHAPES]


def slerp(t: float, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    cos = float(a.ravel() @ c.ravel() / (np.linalg.norm(a) * np.linalg.norm(c)))
    th = math.acos(cos)
    return ((math.sin((1 - t) * th) * a + math.sin(t * th) * c) / math.sin(th)).astype(np.float32)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8])
def test_linear_merge_coefficients(rng: np.random.Generator, alpha: float) -> None:
    a, c = model(rng), model(rng)
    b = [(alpha * x + (1 - alpha) * y).astype(np.float32) for x, y in zip(a, c, strict=True)]
    fit = merge_coefficients(zip(a, b, c, strict=True))
    assert fit.alpha == pytest.approx(alpha, abs=0.01)
    assert fit.beta == pytest.approx(1 - alpha, abs=0.01)
    assert fit.r2 > 0.999
    assert fit.method == "linear"


def test_merge_then_noise_is_still_fitted(rng: np.random.Generator) -> None:
    a, c = model(rng), model(rng)
    b = [(0.3 * x + 0.7 * y + rng.standard_normal(x.shape) * 0.005).astype(np.float32)
         for x, y in zip(a, c, strict=True)]
    fit = merge_coefficients(zip(a, b, c, strict=True))
    assert fit.alpha == pytest.approx(0.3, abs=0.1)
    assert fit.beta == pytest.approx(0.7, abs=0.1)


def test_slerp_is_told_from_linear(rng: np.random.Generator) -> None:
    a, c = model(rng), model(rng)
    b = [slerp(0.3, x, y) for x, y in zip(a, c, strict=True)]
    fit = merge_coefficients(zip(a, b, c, strict=True))
    assert fit.method == "slerp"
    assert fit.slerp_t == pytest.approx(0.3, abs=0.02)
    assert fit.alpha + fit.beta > 1.2  # nearly orthogonal A and C: slerp keeps the norm


def test_nearly_parallel_models_leave_the_method_open(rng: np.random.Generator) -> None:
    base = model(rng)
    a = [(x + rng.standard_normal(x.shape) * 0.002).astype(np.float32) for x in base]
    c = [(x + rng.standard_normal(x.shape) * 0.002).astype(np.float32) for x in base]
    b = [slerp(0.5, x, y) for x, y in zip(a, c, strict=True)]
    fit = merge_coefficients(zip(a, b, c, strict=True))
    assert fit.method == "undetermined"
    assert fit.alpha == pytest.approx(0.5, abs=0.05)


def test_unrelated_b_has_no_fit(rng: np.random.Generator) -> None:
    a, c, b = model(rng), model(rng), model(rng)
    fit = merge_coefficients(zip(a, b, c, strict=True))
    assert fit.r2 < 0.05
    assert abs(fit.alpha) < 0.1 and abs(fit.beta) < 0.1


def test_task_arithmetic(rng: np.random.Generator) -> None:
    base = model(rng)
    t1 = [(x + rng.standard_normal(x.shape) * 0.004).astype(np.float32) for x in base]
    t2 = [(x + rng.standard_normal(x.shape) * 0.004).astype(np.float32) for x in base]
    b = [(x + 0.6 * (y - x) + 0.3 * (z - x)).astype(np.float32) for x, y, z in zip(base, t1, t2, strict=True)]
    fit = task_arithmetic((x, y, [u, v]) for x, y, u, v in zip(base, b, t1, t2, strict=True))
    assert fit.lambdas == pytest.approx((0.6, 0.3), abs=0.02)
    assert fit.r2 > 0.99


@pytest.mark.parametrize("alpha", [0.3, 0.6, 0.9])
def test_share_explained_without_the_other_model(rng: np.random.Generator, alpha: float) -> None:
    a, c = model(rng), model(rng)
    b = [(alpha * x + (1 - alpha) * y).astype(np.float32) for x, y in zip(a, c, strict=True)]
    share = share_explained(zip(a, b, strict=True))
    truth = alpha**2 / (alpha**2 + (1 - alpha) ** 2)  # equal spreads, C independent of A
    assert share.r2 == pytest.approx(truth, abs=0.1)
    assert share.slope == pytest.approx(alpha, abs=0.1)


def test_share_explained_of_independent_model_is_near_zero(rng: np.random.Generator) -> None:
    share = share_explained(zip(model(rng), model(rng), strict=True))
    assert share.r2 < 0.01
