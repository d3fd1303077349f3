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
@click.option("--seed", type=int, default=None, help="Only for reproducible examples: a known seed makes the set "
              "reproducible by anyone (default: a fresh secret seed).")
def make_cmd(out: Path, facts: int, glyphs: int, seed: int | None) -> None:
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


@probe.command("run")
@click.argument("set_path", metavar="SET", type=click.Path(path_type=Path))
@click.argument("models", metavar="MODEL...", nargs=-1, required=True)
@click.option("--cache", type=click.Path(path_type=Path), help="Response cache (SQLite); default ~/.cache/modeltrace.")
@click.option("--reference", "references", multiple=True, help="A model known to be unrelated (repeatable).")
@click.option("--chat", is_flag=True, help="Ask each item as a chat message (instruction-tuned models).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_cmd(set_path: Path, models: tuple[str, ...], cache: Path | None, references: tuple[str, ...],
            chat: bool, as_json: bool) -> None:
    """Ask every MODEL (folder or openai:URL#MODEL) the probe items; test each pair for shared mistakes."""
    from itertools import combinations

    from modeltrace.backends.resolve import cached, open_backend
    from modeltrace.evidence.behaviour import ask_probes
    from modeltrace.probes.mistakes import shared_mistakes

    ps = load_probe_set(set_path)
    answers = {}
    for ref in models + references:
        answers[ref] = ask_probes(cached(open_backend(ref), cache), ps.items, ps.root, chat=chat)
    refs = [answers[r] for r in references]
    rows = []
    for ref in models:
        right = sum(1 for it in ps.items if answers[ref].get(it.id, "").lower() == it.answer.lower())
        rows.append({"model": ref, "accuracy": right / len(ps.items)})
    pairs = []
    for a, b in combinations(models, 2):
        res = shared_mistakes(ps.items, answers[a], answers[b], refs)
        pairs.append({"a": a, "b": b, "both_wrong": res.both_wrong, "same_wrong": res.same_wrong,
                      "expected_same_wrong": round(res.expected_same_wrong, 3), "p_value": res.p_value})
    if as_json:
        click.echo(json.dumps({"schema": "modeltrace.probe-run/1", "items": len(ps.items), "models": rows,
                               "pairs": pairs}, indent=2))
        return
    for r in rows:
        click.echo(f"{r['model']}: accuracy {r['accuracy']:.3f} on {len(ps.items)} items")
    for p in pairs:
        click.echo(f"{p['a']} vs {p['b']}: {p['same_wrong']} shared wrong answers of {p['both_wrong']} "
                   f"both wrong ({p['expected_same_wrong']} expected), p = {p['p_value']:.3g}")
