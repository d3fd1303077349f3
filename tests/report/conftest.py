"""Demo data for the report tests: the seed case in miniature (built once per session) and a hostile pair.

The miniature comes from the project's tiny zoo builder (multimodal models only, a few seconds):
mm-a, its Llama3-V-style shell mm-a-shell (renamed prefixes, noise 1/708, the same added tokens) and
the independent twin mm-b. The code given to compare is the zoo module that defines the model, and
on the shell's side that file disguised (identifiers renamed), as `make demo` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from st_builders import LLAMA_CONFIG, tiny_llama, tokenizer_json, write_safetensors

from modeltrace.cli import cli

HOSTILE_A = "<script>alert(1)</script>"
HOSTILE_B = "[click](http://evil/x)|**b**$\\frac{1}{2}$<img src=x onerror=alert(2)>`x`"
HOSTILE_TOKEN = "<script>alert(3)</script>"
HOSTILE_FILE = "<img src=x onerror=alert(4)>[x](http:evil).py"  # no "/": it is a file name


def compare_to_files(a: Path, b: Path, out: Path, *extra: str) -> dict[str, Path]:
    """`modeltrace compare A B --json --report --md` into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "result.json", "html": out / "report.html", "md": out / "report.md"}
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), *extra, "--json", str(paths["json"]),
                                   "--report", str(paths["html"]), "--md", str(paths["md"])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return paths


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


def hostile_folder(root: Path, prefix: str, noise_from: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A tiny Llama folder whose tensor names start with `prefix` and whose tokenizer carries a hostile token."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    base = noise_from if noise_from is not None else {k: v * 1 for k, v in tiny_llama(rng, hidden=32, inter=64).items()}
    tensors = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * v.std() / 708 if noise_from is not None
                   else v) for k, v in base.items()}
    write_safetensors(root / "model.safetensors", {prefix + k[len("model."):] if k.startswith("model.") else k: v
                                                   for k, v in tensors.items()})
    cfg = dict(LLAMA_CONFIG, hidden_size=32, intermediate_size=64, name_or_path=HOSTILE_A)
    (root / "config.json").write_text(json.dumps(cfg))
    vocab = ["[UNK]", "<s>", "</s>", HOSTILE_TOKEN] + [f"tok{i}" for i in range(28)]
    (root / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, [(0, "[UNK]", True), (1, "<s>", True),
                                                                          (2, "</s>", True), (3, HOSTILE_TOKEN, True)])))
    return base


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


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str


def run_main(args: list[str]) -> Ran:
    """The `modeltrace` entry point (with its error boundary) with its streams captured."""
    from modeltrace.cli import main

    with CliRunner().isolation() as (out, err, _):
        try:
            ret = main(args)  # a command's ctx.exit(n) comes back as the return value, as the entry point sees it
            code = ret if isinstance(ret, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return Ran(code, out.getvalue().decode(), err.getvalue().decode())
