"""Dense MLP upcycled into experts: copies with noise, permuted copies, neuron splits; and unrelated experts."""

from __future__ import annotations

import numpy as np

from modeltrace.diagnose.upcycle import diagnose_upcycle

H, I = 64, 256


def mlp(rng: np.random.Generator, neurons: int = I) -> dict[str, np.ndarray]:
    return {"gate": rng.standard_normal((neurons, H)).astype(np.float32),
            "up": rng.standard_normal((neurons, H)).astype(np.float32),
            "down": rng.standard_normal((H, neurons)).astype(np.float32)}


def test_copied_experts_with_noise(rng: np.random.Generator) -> None:
    dense = mlp(rng)
    experts = [{k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in dense.items()}
               for _ in range(4)]
    d = diagnose_upcycle(dense, experts, router=rng.standard_normal((4, H)))
    assert d.upcycled and d.granularity == "copy"
    assert d.router_new is True
    assert all(e.in_place and e.rel_change is not None and abs(e.rel_change - 0.1) < 0.02 for e in d.experts)


def test_permuted_copies_are_found(rng: np.random.Generator) -> None:
    dense = mlp(rng)
    perm = rng.permutation(I)
    expert = {"gate": dense["gate"][perm], "up": dense["up"][perm], "down": dense["down"][:, perm]}
    d = diagnose_upcycle(dense, [expert, expert])
    assert d.upcycled
    assert not d.experts[0].in_place
    assert d.experts[0].matched == 1.0


def test_fine_grained_split(rng: np.random.Generator) -> None:
    dense = mlp(rng)
    experts = [{"gate": dense["gate"][s:s + 64], "up": dense["up"][s:s + 64], "down": dense["down"][:, s:s + 64]}
               for s in range(0, I, 64)]
    d = diagnose_upcycle(dense, experts)
    assert d.upcycled and d.granularity == "split"
    assert all(e.dense_neurons == 64 for e in d.experts)


def test_unrelated_experts(rng: np.random.Generator) -> None:
    d = diagnose_upcycle(mlp(rng), [mlp(rng) for _ in range(4)])
    assert not d.upcycled
    assert all(e.matched < 0.05 for e in d.experts)
