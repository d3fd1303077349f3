"""`modeltrace index add|search|list|remove|stats`: a lineage index of fingerprints in one SQLite file.

The index path comes from --index, else $MODELTRACE_INDEX, else ~/.cache/modeltrace/index.db.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from modeltrace.compare import DEFAULT_THRESHOLD
from modeltrace.errors import IndexError_, ModelTraceError
from modeltrace.index.fingerprint import fingerprint as make_fingerprint
from modeltrace.index.fingerprint import from_bytes, to_bytes
from modeltrace.index.fpcompare import diagnosis
from modeltrace.index.store import IndexStore
from modeltrace.textsafe import escape


def default_index() -> Path:
    env = os.environ.get("MODELTRACE_INDEX")
    return Path(env) if env else Path.home() / ".cache" / "modeltrace" / "index.db"


def _store(ctx: click.Context, create: bool = False) -> IndexStore:
    path: Path = ctx.obj["index_path"]
    return IndexStore(path, create=create)


@click.group("index")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The index file (default $MODELTRACE_INDEX or ~/.cache/modeltrace/index.db).")
@click.pass_context
def index(ctx: click.Context, index_path: Path | None) -> None:
    """A searchable index of model fingerprints: what is this model derived from?"""
    ctx.ensure_object(dict)
    ctx.obj["index_path"] = index_path or default_index()


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--label")
        out[key] = value
    return out


@index.command("add")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--name", help="Name to index the model under (one REF only; default: the reference as given).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Labels stored with the model.")
@click.option("--replace", is_flag=True, help="Fingerprint again models already indexed under the same name.")
@click.option("--no-file-hashes", is_flag=True, help="Skip hashing weight files.")
@click.pass_context
def add(ctx: click.Context, refs: tuple[str, ...], name: str | None, labels: tuple[str, ...], replace: bool,
        no_file_hashes: bool) -> None:
    """Fingerprint models (or read fingerprint files) and add them, one transaction each.

    Models already indexed under their name are skipped, so an interrupted add carries on where it
    stopped. A model that cannot be read is reported and skipped; the exit status is then 2.
    """
    if name and len(refs) > 1:
        raise click.BadParameter("--name needs exactly one REF", param_hint="--name")
    lab = _labels(labels)
    failed: list[str] = []
    added = skipped = 0
    err = Console(file=sys.stderr, highlight=False)
    with _store(ctx, create=True) as store:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True, disable=len(refs) < 2 or not err.is_terminal) as progress:
            task = progress.add_task("indexing", total=len(refs))
            for ref in refs:
                key = name or ref
                progress.update(task, description=escape(key, limit=60))
                if store.has(key) and not replace:
                    skipped += 1
                    progress.advance(task)
                    continue
                try:
                    fp = make_fingerprint(ref, hash_files=not no_file_hashes)
                    data = to_bytes(fp)
                    store.add(key, from_bytes(data, ref), data, labels=lab, replace=replace)
                    added += 1
                except IndexError_:
                    raise  # the index itself is unusable: stop
                except ModelTraceError as exc:
                    failed.append(ref)
                    click.echo(f"error: {escape(str(exc), limit=500)}", err=True)
                progress.advance(task)
        total = store.count()
    click.echo(f"added {added}, skipped {skipped} already indexed, failed {len(failed)}; {total} model(s) in "
               f"{escape(ctx.obj['index_path'])}")
    if failed:
        ctx.exit(2)


@index.command("search")
@click.argument("ref", metavar="REF")
@click.option("--top", type=click.IntRange(1, 1000), default=10, show_default=True, help="Results to show.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema modeltrace.index-search/1).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=DEFAULT_THRESHOLD,
              show_default=True, help="p-value below which a model counts as related.")
@click.option("--candidates", type=click.IntRange(1, 100000), default=None,
              help="Models the full test runs on (default max(32, 4 x top)).")
@click.option("--backend", type=str, default=None, help="Candidate backend: usearch (default) or exact.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def search_cmd(ctx: click.Context, ref: str, top: int, as_json: bool, threshold: float, candidates: int | None,
               backend: str | None, seed: int) -> None:
    """The indexed models REF is most likely derived from or related to, best first."""
    from modeltrace.index.search import search

    query = make_fingerprint(ref)
    with _store(ctx) as store:
        result = search(store, query, top=top, threshold=threshold, seed=seed, candidates=candidates,
                        backend=backend)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    out = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not result.related:
        out.print(Text(f"nothing in the index is related to {escape(ref)} "
                       f"({result.candidates} candidate(s) of {result.indexed} tested, threshold {threshold:g})"))
    table = Table(title=f"{escape(ref, limit=80)}: {len(result.related)} related of {result.candidates} tested "
                        f"({result.indexed} indexed, {result.timings['total']:.3f}s)", title_justify="left")
    for col in ("rank", "name", "verdict", "p-value", "diagnosis"):
        table.add_column(col, justify="right" if col in ("rank", "p-value") else "left")
    for r, h in enumerate(result.hits, 1):
        table.add_row(str(r), Text(escape(h.entry.name, limit=80)), h.result.verdict, f"{h.result.p_value:.3g}",
                      Text(escape(diagnosis(h.result), limit=120)))
    out.print(table)


@index.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every indexed model."""
    with _store(ctx) as store:
        entries = store.entries()
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    for e in entries:
        click.echo(f"{e.id}\t{escape(e.name, limit=200)}\t{e.layers} layers\t{e.fp_size} bytes\t{e.added}")


@index.command("remove")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.pass_context
def remove(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Remove models by the name they were indexed under."""
    with _store(ctx) as store:
        n = store.remove(list(names))
    missing = len(names) - n
    click.echo(f"removed {n}" + (f"; {missing} name(s) were not indexed" if missing else ""))


@index.command("stats")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Size and state of the index."""
    with _store(ctx) as store:
        info: dict[str, Any] = store.stats()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        click.echo(f"{k}: {escape(v, limit=300)}")
