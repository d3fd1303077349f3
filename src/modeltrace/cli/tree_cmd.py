"""`modeltrace tree REF... | --index DB`: the family tree of a collection, as JSON or Graphviz DOT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from modeltrace.compare import DEFAULT_THRESHOLD
from modeltrace.index.fingerprint import Fingerprint
from modeltrace.index.fingerprint import fingerprint as make_fingerprint
from modeltrace.textsafe import escape


@click.command("tree")
@click.argument("refs", nargs=-1, metavar="REF...")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Use every model of this index (instead of, or besides, REFs).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_THRESHOLD,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema modeltrace.lineage/1).")
@click.option("--dot", "dot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the tree as Graphviz DOT (render with `dot -Tsvg`).")
def tree(refs: tuple[str, ...], index_path: Path | None, threshold: float, as_json: bool, dot: Path | None) -> None:
    """Which models derive from which: edges with their kind and, where the evidence allows, direction."""
    from modeltrace.lineage.tree import build_tree, to_dot

    fps: dict[str, Fingerprint] = {}
    if index_path is not None:
        from modeltrace.index.store import IndexStore

        with IndexStore(index_path, create=False) as store:
            for entry in store.entries():
                fps[entry.name] = store.fingerprint(entry.id)
    for ref in refs:
        fps[ref] = make_fingerprint(ref)
    if len(fps) < 2:
        raise click.UsageError("need at least two models (REFs or --index)")
    result = build_tree(fps, threshold=threshold)
    if dot is not None:
        dot.write_text(to_dot(result), encoding="utf-8")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    out = sys.stdout
    from modeltrace.lineage.tree import Edge

    children: dict[str, list[Edge]] = {}
    for e in result.edges:
        children.setdefault(e.parent, []).append(e)

    def show(node: str, depth: int, seen: set[str]) -> None:
        for e in children.get(node, []):
            arrow = "->" if e.direction != "unknown" else "--"
            out.write(f"{'  ' * depth}{arrow} {escape(e.child, limit=120)}  [{e.kind}, p={e.p_value:.2g}, "
                      f"direction: {e.direction}]\n")
            if e.child not in seen:
                seen.add(e.child)
                show(e.child, depth + 1, seen)

    for r in result.roots:
        out.write(escape(r, limit=120) + "\n")
        show(r, 1, {r})
    out.write(f"{len(result.nodes)} model(s), {result.related_pairs} related pair(s) of {result.tested_pairs}, "
              f"{len(result.roots)} root(s)\n")
