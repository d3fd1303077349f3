"""Helpers of the report tests: hostile names, a compare that writes every report, the CLI entry point captured."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
