"""Layer-correspondence matrices: dropped, duplicated, reordered and new layers."""

from __future__ import annotations

import numpy as np
import pytest

from modeltrace.diagnose.layers import diagnose_layers


def scores(rng: np.random.Generator, n_a: int, mapping: list[int | None]) -> np.ndarray:
    s = rng.normal(0.0, 0.02, size=(n_a, len(mapping)))
    for j, i in enumerate(mapping):
        if i is not None:
            s[i, j] = 0.95 + rng.normal(0, 0.01)
    return s


def test_same_stack(rng: np.random.Generator) -> None:
    d = diagnose_layers(scores(rng, 8, list(range(8))))
    assert d.mapping == tuple(range(8))
    assert d.kinds == ()
    assert "in order" in d.reason


def test_dropped_layers(rng: np.random.Generator) -> None:
    d = diagnose_layers(scores(rng, 12, [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]))
    assert d.dropped == (4, 9)
    assert d.kinds == ("layer-drop",)


def test_duplicated_layers_depth_upscaling(rng: np.random.Generator) -> None:
    mapping = list(range(6)) + list(range(2, 8))  # 8 layers -> 12, layers 2..5 twice
    d = diagnose_layers(scores(rng, 8, mapping))
    assert d.duplicated == {2: (2, 6), 3: (3, 7), 4: (4, 8), 5: (5, 9)}
    assert not d.reordered and d.dropped == ()
    assert d.kinds == ("layer-duplicate",)


def test_reordered_layers(rng: np.random.Generator) -> None:
    d = diagnose_layers(scores(rng, 6, [0, 1, 4, 3, 2, 5]))
    assert d.reordered
    assert "layer-reorder" in d.kinds
    assert len(d.moved) == 2


def test_new_layers(rng: np.random.Generator) -> None:
    d = diagnose_layers(scores(rng, 6, [0, 1, 2, None, 3, 4, 5]))
    assert d.new == (3,)
    assert d.kinds == ("layer-new",)


def test_unrelated_stacks_match_nothing(rng: np.random.Generator) -> None:
    noise = rng.normal(0.0, 0.02, size=(8, 8))
    assert diagnose_layers(noise).mapping == (None,) * 8
    d = diagnose_layers(noise, threshold=0.5)
    assert d.mapping == (None,) * 8
    assert "no B layer matches" in d.reason


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty 2-D"):
        diagnose_layers(np.zeros(4))
