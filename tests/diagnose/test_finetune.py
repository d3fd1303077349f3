"""Fine-tune deltas: relative change per layer, LoRA rank from the spectrum, and what is not a fine-tune."""

from __future__ import annotations

import numpy as np
import pytest

from modeltrace.diagnose.cast import round_bf16
from modeltrace.diagnose.finetune import diagnose_finetune, effective_rank, tensor_change


def lora_pair(rng: np.random.Generator, rank: int, shape: tuple[int, int] = (256, 384), scale: float = 0.05,
              bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    u = rng.standard_normal((shape[0], rank))
    v = rng.standard_normal((rank, shape[1]))
    delta = u @ v
    delta *= scale * 0.02 * np.sqrt(a.size) / np.linalg.norm(delta)  # ||delta|| = scale * ||A||
    b = (a + delta).astype(np.float32)
    return a, (round_bf16(b) if bf16 else b)


@pytest.mark.parametrize("rank", [1, 4, 8, 16])
def test_lora_rank_exact(rng: np.random.Generator, rank: int) -> None:
    a, b = lora_pair(rng, rank)
    assert effective_rank(b.astype(np.float64) - a).rank == rank


@pytest.mark.parametrize("rank", [4, 8])
def test_lora_rank_through_bf16_rounding(rng: np.random.Generator, rank: int) -> None:
    a, b = lora_pair(rng, rank, bf16=True)
    assert abs(effective_rank(b.astype(np.float64) - a).rank - rank) <= 2


def test_rank_survives_subsampling(rng: np.random.Generator) -> None:
    a, b = lora_pair(rng, 6, shape=(1024, 900))
    est = effective_rank(b.astype(np.float64) - a, max_dim=300)
    assert est.subsampled and est.rank == 6


def test_diagnosis_reports_lora_and_layers(rng: np.random.Generator) -> None:
    changes = {}
    layers = {}
    for layer in range(3):
        for proj in ("q", "v"):
            a, b = lora_pair(rng, 8, scale=0.02 * (layer + 1))
            name = f"layers.{layer}.{proj}.weight"
            changes[name] = tensor_change(a, b)
            layers[name] = layer
        k = (rng.standard_normal((256, 384)) * 0.02).astype(np.float32)
        changes[f"layers.{layer}.k.weight"] = tensor_change(k, k.copy())
        layers[f"layers.{layer}.k.weight"] = layer
    d = diagnose_finetune(changes, layers)
    assert d.finetuned and d.lora
    assert d.lora_rank == 8
    assert len(d.lora_tensors) == 6
    assert d.per_layer[0] < d.per_layer[1] < d.per_layer[2]
    assert d.rel_change == pytest.approx(0.04, rel=0.1)


def test_full_finetune_is_not_lora(rng: np.random.Generator) -> None:
    changes = {}
    for i in range(4):
        a = (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
        # a full-rank change with a decaying spectrum, like a long fine-tune
        u, _, vt = np.linalg.svd(rng.standard_normal((256, 256)))
        delta = (u * (np.linspace(1, 0.2, 256) * 3e-4)) @ vt
        changes[f"t{i}"] = tensor_change(a, (a + delta).astype(np.float32))
    d = diagnose_finetune(changes)
    assert d.finetuned
    assert not d.lora and d.lora_rank is None
    assert not any(c.low_rank for c in changes.values())  # rank 0 (noise-like) or high, never a few


def test_independent_tensors_are_not_finetuned(rng: np.random.Generator) -> None:
    changes = {}
    for i in range(4):
        a = (rng.standard_normal((128, 256)) * 0.02).astype(np.float32)
        b = (rng.standard_normal((128, 256)) * 0.02).astype(np.float32)
        changes[f"t{i}"] = tensor_change(a, b)
    d = diagnose_finetune(changes)
    assert d.changed and not d.finetuned and not d.lora
    assert d.rel_change == pytest.approx(np.sqrt(2), rel=0.05)


def test_nothing_changed(rng: np.random.Generator) -> None:
    a = rng.standard_normal((32, 32)).astype(np.float32)
    d = diagnose_finetune({"w": tensor_change(a, a)})
    assert not d.changed and not d.lora
