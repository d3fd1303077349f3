"""Trained tiny models shared by the weight tests (trained once per session, cached in a temp folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tinytrain

N_INDEPENDENT_PAIRS = 20


@pytest.fixture(scope="session")
def base_state() -> dict[str, np.ndarray]:
    return tinytrain.train(seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """save(name, state, **kw) -> folder, under one session temp folder."""
    root = tmp_path_factory.mktemp("tiny")

    def save(name: str, state: dict[str, np.ndarray], **kw: object) -> Path:
        return tinytrain.save_model(root / name, state, **kw)  # type: ignore[arg-type]

    return save


@pytest.fixture(scope="session")
def independent_pairs(model_dir) -> list[tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    """20 disjoint pairs of models trained from different seeds on the same data and tokenizer."""
    out = []
    for k in range(N_INDEPENDENT_PAIRS):
        a = model_dir(f"ind{2 * k}", tinytrain.train(seed=100 + 2 * k))
        b = model_dir(f"ind{2 * k + 1}", tinytrain.train(seed=101 + 2 * k))
        out.append((a, b))
    return out
