"""`python -m modeltrace.benchmark.zoo [--zoo tuning|heldout|scale] [--quick|--tiny] [--cache DIR] [--workers N]`:
build a zoo, print its manifest path."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from modeltrace.benchmark.zoo.build import build_zoo, console_progress, default_cache
from modeltrace.benchmark.zoo.settings import ZOOS, settings_for


@click.command()
@click.option("--zoo", "zoo", type=click.Choice(ZOOS), default="tuning", show_default=True,
              help="tuning: the zoo the rules were tuned on; heldout: fresh seeds, widths and text; "
                   "scale: one family of realistic size.")
@click.option("--quick", is_flag=True, help="The CI subset (under 5 minutes of CPU).")
@click.option("--tiny", is_flag=True, help="The test-sized zoo (seconds).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Cache folder (default bench/cache/zoo, zoo-quick, or zoo-<settings>).")
@click.option("--workers", type=int, default=None, help="Build processes (default: up to 2).")
def main(zoo: str, quick: bool, tiny: bool, cache: Path | None, workers: int | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    if tiny:
        settings = "tiny" if zoo == "tuning" else f"{zoo}-tiny"
        if zoo == "scale":
            raise click.UsageError("the scale zoo has no tiny variant")
    else:
        settings = settings_for(zoo, quick).name
    t0, c0 = time.perf_counter(), time.process_time()
    path = build_zoo(cache or default_cache(quick or tiny, settings), progress=console_progress(),
                     settings=settings, workers=workers)
    click.echo(str(path))
    click.echo(f"wall {time.perf_counter() - t0:.1f}s, CPU of this process {time.process_time() - c0:.1f}s",
               err=True)


if __name__ == "__main__":
    main()
