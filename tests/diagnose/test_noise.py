"""Additive Gaussian noise: detection, the relative level (1/708 as in Llama3-V), and what is not noise."""

from __future__ import annotations

import numpy as np
import pytest

from modeltrace.diagnose.cast import round_bf16
from modeltrace.diagnose.noise import diagnose_noise, tensor_noise

SHAPES = [(128, 256), (256, 128), (256, 256), (512, 128), (256,)]


def model(rng: np.random.Generator) -> list[np.ndarray]:
    scales = [0.02, 0.05, 0.01, 0.03, 0.1]
    return [(rng.standard_normal(s) * sc).astype(np.float32) for s, sc in zip(SHAPES, scales, strict=True)]


@pytest.mark.parametrize("sigma", [1 / 708, 1 / 100, 0.05])
def test_relative_noise_level_is_estimated(rng: np.random.Generator, sigma: float) -> None:
    a = model(rng)
    b = [(x + rng.standard_normal(x.shape) * x.std() * sigma).astype(np.float32) for x in a]
    d = diagnose_noise([tensor_noise(x, y) for x, y in zip(a, b, strict=True)])
    assert d.detected, d.reason
    assert d.sigma_rel == pytest.approx(sigma, rel=0.3)
    assert d.scale == "relative"
    assert d.n_noise == len(a)


def test_absolute_noise_is_told_apart(rng: np.random.Generator) -> None:
    a = model(rng)
    b = [(x + rng.standard_normal(x.shape) * 1e-4).astype(np.float32) for x in a]
    d = diagnose_noise([tensor_noise(x, y) for x, y in zip(a, b, strict=True)])
    assert d.detected
    assert d.scale == "absolute"
    assert d.sigma_abs == pytest.approx(1e-4, rel=0.1)


def test_noise_on_norm_gains_near_one(rng: np.random.Generator) -> None:
    g = (1 + 0.05 * rng.standard_normal(4096)).astype(np.float32)
    t = tensor_noise(g, (g + rng.standard_normal(4096) * g.std() / 708).astype(np.float64))
    assert t.looks_noise
    assert t.sigma_rel == pytest.approx(1 / 708, rel=0.3)


def test_independent_tensors_are_not_noise(rng: np.random.Generator) -> None:
    a, b = model(rng), model(rng)
    per = [tensor_noise(x, y) for x, y in zip(a, b, strict=True)]
    assert not any(t.looks_noise for t in per)
    assert all(t.corr_with_a < -0.5 for t in per)
    assert not diagnose_noise(per).detected


def test_independent_norm_gains_are_not_noise(rng: np.random.Generator) -> None:
    g1 = (1 + 0.01 * rng.standard_normal(4096)).astype(np.float32)
    g2 = (1 + 0.01 * rng.standard_normal(4096)).astype(np.float32)
    assert not tensor_noise(g1, g2).looks_noise


def test_low_rank_change_is_not_noise(rng: np.random.Generator) -> None:
    a = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
    lora = rng.standard_normal((256, 4)) @ rng.standard_normal((4, 256)) * 2e-4
    t = tensor_noise(a, (a + lora).astype(np.float32))
    assert not t.looks_noise
    assert "low-rank" in t.reason


def test_rounding_and_uniform_errors_are_not_gaussian_noise(rng: np.random.Generator) -> None:
    a = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
    assert not tensor_noise(a, round_bf16(a)).looks_noise
    uniform = a + rng.uniform(-1e-4, 1e-4, a.shape).astype(np.float32)
    t = tensor_noise(a, uniform)
    assert not t.looks_noise and "kurtosis" in t.reason


def test_identical_is_not_noise(rng: np.random.Generator) -> None:
    a = model(rng)
    d = diagnose_noise([tensor_noise(x, x) for x in a])
    assert not d.detected
    assert d.n_tensors == 0


@pytest.mark.parametrize("sigma", [1 / 708, 1 / 5000])
@pytest.mark.parametrize("a_on_grid", [True, False])
def test_noise_seen_through_bf16_rounding(rng: np.random.Generator, sigma: float, a_on_grid: bool) -> None:
    """B = bf16(A + noise): the rounding error is as large as the noise (or larger); the level is still found."""
    a = (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
    if a_on_grid:
        a = round_bf16(a)
    b = round_bf16((a + rng.standard_normal(a.shape) * a.std() * sigma).astype(np.float32))
    t = tensor_noise(a, b)
    assert t.looks_noise, t.reason
    assert "bf16 rounding" in t.reason
    assert t.sigma_rel == pytest.approx(sigma, rel=0.1)


def test_uniform_noise_through_bf16_is_rejected(rng: np.random.Generator) -> None:
    a = round_bf16((rng.standard_normal((256, 512)) * 0.02).astype(np.float32))
    b = round_bf16((a + rng.uniform(-1, 1, a.shape) * a.std() / 300).astype(np.float32))
    t = tensor_noise(a, b)
    assert not t.looks_noise
    assert "not Gaussian noise seen through bf16 rounding either" in t.reason


def test_lora_through_bf16_is_not_noise(rng: np.random.Generator) -> None:
    a = round_bf16((rng.standard_normal((256, 512)) * 0.02).astype(np.float32))
    delta = rng.standard_normal((256, 4)) @ rng.standard_normal((4, 512))
    delta *= 0.05 * np.linalg.norm(a) / np.linalg.norm(delta)
    assert not tensor_noise(a, round_bf16((a + delta).astype(np.float32))).looks_noise
