"""A small family of related models plus unrelated ones, written once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import builders


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family")
    base = builders.random_state(0)
    out = {
        "base": builders.save(root / "base", base),
        "noise": builders.save(root / "noise", builders.noised(base, 0.05, 1)),
        "permute": builders.save(root / "permute", builders.permuted(base, 2)),
        "rotate": builders.save(root / "rotate", builders.rotated(base, 3)),
        "drop": builders.save(root / "drop", builders.dropped(base, 1)),
    }
    for k in range(4):
        out[f"other{k}"] = builders.save(root / f"other{k}", builders.random_state(100 + k))
    return out
