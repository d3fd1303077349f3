"""`modeltrace probe`: make a secret probe set, commit to it, verify and open it, run models on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from modeltrace.probes.commit import commit, open_item, read_json, verify, verify_opening
from modeltrace.probes.make import make_probe_set
from modeltrace.probes.probeset import load_probe_set


@click.group("probe")
def probe() -> None:
    """Secret probe sets: make, commit, verify, reveal, run."""


@probe.command("make")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--facts", default=200, show_default=True, help="Invented facts (multiple choice).")
@click.option("--glyphs", default=0, show_default=True, help="Images of invented glyphs to read.")
@click.option("--seed", default=0, show_default=True)
def make_cmd(out: Path, facts: int, glyphs: int, seed: int) -> None:
    """Write a new private probe set to OUT (items.jsonl, images/)."""
    path = make_probe_set(out, facts=facts, glyphs=glyphs, seed=seed)
    n = len(path.read_text(encoding="utf-8").splitlines())
    click.echo(f"wrote {n} items to {path}")
    click.echo("train your model on it before release; commit to it now: modeltrace probe commit " + str(out))


@probe.command("commit")
@click.argument("set_path", metavar="SET", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the commitment here (else stdout).")
def commit_cmd(set_path: Path, output: Path | None) -> None:
    """Print a publishable commitment (salted Merkle root) to SET; the secret stays in SET."""
    c = commit(load_probe_set(set_path))
    text = json.dumps(c, indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
        click.echo(f"commitment written to {output}; publish it, keep {set_path} and its secret private")
    else:
        click.echo(text)


@probe.command("verify")
@click.argument("set_path", metavar="SET", type=click.Path(path_type=Path))
@click.argument("commitment", type=click.Path(path_type=Path))
@click.option("--reveal", "reveal", type=int, multiple=True, help="Print an opening of item N (repeatable).")
def verify_cmd(set_path: Path, commitment: Path, reveal: tuple[int, ...]) -> None:
    """Prove SET is the set behind COMMITMENT; exit 1 if it is not."""
    ps = load_probe_set(set_path)
    c = read_json(commitment)
    res = verify(ps, c)
    click.echo(("OK: " if res.ok else "MISMATCH: ") + res.message)
    for n in reveal:
        click.echo(json.dumps(open_item(ps, n), ensure_ascii=False))
    if not res.ok:
        sys.exit(1)


@probe.command("check-opening")
@click.argument("opening", type=click.Path(path_type=Path))
@click.argument("commitment", type=click.Path(path_type=Path))
def check_opening_cmd(opening: Path, commitment: Path) -> None:
    """Check one revealed item (from `verify --reveal`) against a published COMMITMENT."""
    res = verify_opening(read_json(opening), read_json(commitment))
    click.echo(("OK: " if res.ok else "MISMATCH: ") + res.message)
    if not res.ok:
        sys.exit(1)
