"""Identical tensors and dtype casts, with the chance-agreement guard (norm gains near 1)."""

from __future__ import annotations

import numpy as np
import pytest

from modeltrace.diagnose.cast import detect_cast, round_bf16, round_f16, truncate_bf16


@pytest.fixture
def weights(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal((64, 128)) * 0.02).astype(np.float32)


def test_bit_identical_is_identical(weights: np.ndarray) -> None:
    d = detect_cast(weights, weights.copy())
    assert d.kind == "identical"
    assert d.match_fraction == 1.0
    assert d.log10_p_chance < -100


@pytest.mark.parametrize("name,fn", [("bf16", round_bf16), ("f16", round_f16), ("bf16-truncate", truncate_bf16)])
def test_cast_round_trip_is_named(weights: np.ndarray, name: str, fn: object) -> None:
    b = fn(weights)  # type: ignore[operator]
    d = detect_cast(weights, b)
    assert (d.kind, d.dtype) == ("cast", name)
    assert d.max_abs_diff > 0


def test_bf16_rounding_matches_torch(weights: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    ref = torch.from_numpy(weights).to(torch.bfloat16).to(torch.float32).numpy()
    assert np.array_equal(round_bf16(weights), ref)


def test_small_change_is_different(weights: np.ndarray, rng: np.random.Generator) -> None:
    b = weights + rng.standard_normal(weights.shape).astype(np.float32) * 1e-5
    d = detect_cast(weights, b)
    assert d.kind == "different"


def test_constant_norm_gains_are_uninformative() -> None:
    d = detect_cast(np.ones(4096, np.float32), np.ones(4096, np.float32))
    assert d.kind == "uninformative"
    assert "proves nothing" in d.reason


def test_independent_gains_near_one_are_not_identical(rng: np.random.Generator) -> None:
    g1 = (1 + 0.01 * rng.standard_normal(2048)).astype(np.float32)
    g2 = (1 + 0.01 * rng.standard_normal(2048)).astype(np.float32)
    # stored in bf16 they share many values by chance, still not a cast or a copy
    for a, b in ((g1, g2), (g1, round_bf16(g2)), (round_bf16(g1), round_bf16(g2))):
        assert detect_cast(a, b).kind == "different"


def test_gains_with_few_values_identical_only_when_surprising(rng: np.random.Generator) -> None:
    levels = np.array([0.99609375, 1.0, 1.0078125], dtype=np.float32)
    g = levels[rng.integers(0, 3, size=8)]
    assert detect_cast(g, g.copy()).kind == "uninformative"  # 8 values on 3 levels: chance 1/3 each
    big = levels[rng.integers(0, 3, size=4096)]
    assert detect_cast(big, big.copy()).kind == "identical"  # 4096 agreements at rate 1/3 are no accident


def test_shape_mismatch_is_an_error(weights: np.ndarray) -> None:
    with pytest.raises(ValueError, match="same shape"):
        detect_cast(weights, weights.T)
