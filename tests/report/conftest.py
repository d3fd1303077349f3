"""Demo data for the report tests: the seed case in miniature (built once per session) and a hostile pair.

The miniature comes from the project's tiny zoo builder (multimodal models only, a few seconds):
mm-a, its Llama3-V-style shell mm-a-shell (renamed prefixes, noise 1/708, the same added tokens) and
the independent twin mm-b. The code given to compare is the zoo module that defines the model, and
on the shell's side that file disguised (identifiers renamed), as `make demo` does.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from report_helpers import HOSTILE_A, HOSTILE_B, HOSTILE_FILE, compare_to_files, hostile_folder


@pytest.fixture(scope="session")
def seed_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modeltrace.benchmark.zoo import TINY, build_zoo

    manifest = build_zoo(tmp_path_factory.mktemp("zoo"), settings=replace(TINY, bases={}, derive={}, multimodal=True))
    return manifest.parent / "models"


@pytest.fixture(scope="session")
def seed_code(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from modeltrace.benchmark.zoo import multimodal
    from modeltrace.report.demo import disguise

    a = Path(multimodal.__file__)
    b = tmp_path_factory.mktemp("code") / "llama3v_modeling.py"
    b.write_text(disguise(a.read_text(encoding="utf-8")), encoding="utf-8")
    return a, b


@pytest.fixture(scope="session")
def seed_copy(seed_zoo: Path, seed_code: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    a, b = seed_code
    return compare_to_files(seed_zoo / "mm-a", seed_zoo / "mm-a-shell", tmp_path_factory.mktemp("copy"),
                            "--code", f"a={a}", "--code", f"b={b}")


@pytest.fixture(scope="session")
def seed_twin(seed_zoo: Path, seed_code: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    a, _ = seed_code
    return compare_to_files(seed_zoo / "mm-a", seed_zoo / "mm-b", tmp_path_factory.mktemp("twin"),
                            "--code", f"a={a}", "--code", f"b={a}")


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pair whose tensor names, token and config contain HTML, Markdown and mathtext control text."""
    root = tmp_path_factory.mktemp("hostile")
    base = hostile_folder(root / "a", HOSTILE_A + ".")
    hostile_folder(root / "b", HOSTILE_B + ".", noise_from=base)
    code = root / "code"
    code.mkdir()
    (code / HOSTILE_FILE).write_text(f"def f():\n    return '{HOSTILE_A}'\n")
    return compare_to_files(root / "a", root / "b", root / "out", "--code", f"a={code / HOSTILE_FILE}",
                            "--code", f"b={code / HOSTILE_FILE}")


@pytest.fixture(scope="session")
def real_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's independent real-model pair (EfficientNet-Lite0 and Lite1), weight methods only, to stay fast."""
    env = os.environ.get("MODELTRACE_REALMODELS")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "realmodels"
    if not (root / "efficientnet-lite0").is_dir():
        pytest.skip("real models absent: run `make realmodels` or set MODELTRACE_REALMODELS")
    return compare_to_files(root / "efficientnet-lite0", root / "efficientnet-lite1", tmp_path_factory.mktemp("real"),
                            "--method", "weight-identity", "--method", "diagnosis", "--method", "tensor-names")
