"""`python -m modeltrace.report.demo`: the reports `make demo` writes, and where to open them.

Pairs: the seed case in miniature from the tiny zoo (mm-a and its Llama3-V-style shell; mm-a and
its independent twin mm-b) and, when the real models are present, MiniLM against its int8 ONNX
export (derived) and two separately trained EfficientNets (independent). The miniature ships no
modelling code, so the demo gives the comparison the code that built mm-a
(`modeltrace/benchmark/zoo/multimodal.py`) on A's side and, on the shell's side, that file
disguised the way the Llama3-V authors disguised MiniCPM's resampler: identifiers renamed,
comments and docstrings dropped, definitions reordered. Every compare runs as a subprocess with
the exact command printed, so what the reports record is what was typed.
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import click

RENAMES = {
    "VisionTower": "VisualEncoder", "Resampler": "Projection", "TinyVLM": "Llama3V", "EncoderLayer": "Block",
    "Embeddings": "PatchEmbed", "Encoder": "Transformer", "Attention": "SelfAttn", "sincos_2d": "pos_embed_val",
    "train_vlm": "fit", "vlm_tensors": "state_of", "vlm_config": "config_of", "shell_tensors": "rewrap",
    "render": "draw", "feats": "features", "img": "pixels", "heads": "n_heads", "grid": "height",
}


class _Renamer(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = RENAMES.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = RENAMES.get(node.arg, node.arg)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        node.attr = RENAMES.get(node.attr, node.attr)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.name = RENAMES.get(node.name, node.name)
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        node.name = RENAMES.get(node.name, node.name)
        return node


def disguise(source: str, seed: int = 0) -> str:
    """Rename identifiers, drop comments and docstrings, reorder definitions, reformat (never run)."""
    tree = _Renamer().visit(ast.parse(source))
    rnd = random.Random(seed)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body.pop(0)
        idx = [i for i, n in enumerate(body) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        moved = [body[i] for i in idx]
        rnd.shuffle(moved)
        for i, n in zip(idx, moved, strict=True):
            body[i] = n
    return "# llama3v modelling code\n" + ast.unparse(tree) + "\n"


def _pairs(zoo: Path, real: Path | None, inputs: Path) -> list[tuple[str, list[str]]]:
    from modeltrace.benchmark.zoo import multimodal

    code_a = Path(multimodal.__file__)
    code_b = inputs / "llama3v_modeling.py"
    code_b.write_text(disguise(code_a.read_text(encoding="utf-8")), encoding="utf-8")
    m = zoo / "models"
    out = [("seed-case-copy", [str(m / "mm-a"), str(m / "mm-a-shell"), "--code", f"a={code_a}", "--code", f"b={code_b}"]),
           ("seed-case-independent-twin", [str(m / "mm-a"), str(m / "mm-b"), "--code", f"a={code_a}",
                                           "--code", f"b={code_a}"])]
    if real is not None:
        out += [("minilm-vs-int8-onnx", [str(real / "all-minilm-l6-v2"), str(real / "all-minilm-l6-v2-int8-onnx")]),
                ("efficientnet-lite0-vs-lite1", [str(real / "efficientnet-lite0"), str(real / "efficientnet-lite1")])]
    return out


@click.command()
@click.option("--zoo", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A tiny zoo built by `python -m modeltrace.benchmark.zoo --tiny --cache DIR`.")
@click.option("--realmodels", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The real-model folder (skipped, saying so, when absent).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"), show_default=True)
def main(zoo: Path, realmodels: Path | None, out: Path) -> None:
    """Write the demo reports (HTML, Markdown, JSON) and say how to open them."""
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / "inputs"
    inputs.mkdir(exist_ok=True)
    real = realmodels if realmodels is not None and (realmodels / "all-minilm-l6-v2").is_dir() else None
    if real is None:
        click.echo(f"real models not found under {realmodels}: their reports are skipped (make realmodels)")
    written = []
    for name, args in _pairs(zoo, real, inputs):
        cmd = [sys.executable, "-m", "modeltrace", "compare", *args, "--json", str(out / f"{name}.json"),
               "--report", str(out / f"{name}.html"), "--md", str(out / f"{name}.md")]
        click.echo("\n$ modeltrace " + " ".join(cmd[3:]))
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            raise click.ClickException(f"compare failed for {name} (exit {proc.returncode})")
        written.append(name)
    click.echo(f"\nReports in {out.absolute()}/ (self-contained HTML: open offline in any browser):")
    for name in written:
        click.echo(f"  {name}: {out.absolute() / (name + '.html')}   (Markdown: {name}.md, JSON: {name}.json)")
    first = out.absolute() / f"{written[0]}.html"
    click.echo(f"\nOpen one with: xdg-open {first}   (macOS: open {first}); "
               f"rebuild from the JSON: modeltrace report {out / written[0]}.json --html again.html; "
               f"re-run and check: modeltrace report verify {out / written[0]}.json")


if __name__ == "__main__":
    main()
