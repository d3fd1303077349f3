"""`modeltrace scan ROOT|LIST|HUB_CACHE`: fingerprint every checkpoint of a collection into the index."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from modeltrace.textsafe import escape


@click.command("scan")
@click.argument("root", type=click.Path(path_type=Path), metavar="ROOT|LIST|HUB_CACHE")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The index file (default $MODELTRACE_INDEX or ~/.cache/modeltrace/index.db).")
@click.option("--workers", type=click.IntRange(1, 256), default=2, show_default=True, help="Worker processes.")
@click.option("--no-file-hashes", is_flag=True, help="Skip hashing weight files.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def scan(ctx: click.Context, root: Path, index_path: Path | None, workers: int, no_file_hashes: bool,
         as_json: bool) -> None:
    """Fingerprint every model under ROOT and add it to the index; resumable; failures recorded, not fatal.

    The exit status is 2 when some model could not be indexed (each is listed with its reason).
    """
    from modeltrace.cli.index_cmd import default_index
    from modeltrace.index.store import IndexStore
    from modeltrace.scan.run import scan as run_scan
    from modeltrace.scan.walk import walk

    refs = walk(root)
    err = Console(file=sys.stderr, highlight=False)
    with IndexStore(index_path or default_index()) as store:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("scanning", total=len(refs))

            def progress(ref: str, what: str) -> None:
                bar.update(task, advance=1, description=escape(Path(ref).name, limit=50))

            report = run_scan(store, refs, workers=workers, hash_files=not no_file_hashes, progress=progress)
        total = store.count()
    if as_json:
        click.echo(json.dumps({**report.to_json(), "found": len(refs), "indexed": total}, indent=2))
    else:
        out = Console(file=sys.stdout, highlight=False, soft_wrap=True, width=200)
        table = Table(title=f"scan of {escape(root, limit=80)}: {len(refs)} model(s) found", title_justify="left")
        for col in ("added", "skipped (already indexed)", "failed", "seconds"):
            table.add_column(col, justify="right")
        table.add_row(str(len(report.added)), str(len(report.skipped)), str(len(report.failed)),
                      f"{report.seconds:.1f}")
        out.print(table)
        for ref, why in sorted(report.failed.items()):
            out.print(Text(f"failed: {escape(ref, limit=200)}: {escape(why, limit=400)}"))
    if report.failed:
        ctx.exit(2)
