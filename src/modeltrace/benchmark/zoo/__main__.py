"""`python -m modeltrace.benchmark.zoo [--quick|--tiny] [--cache DIR] [--workers N]`: build the zoo, print its manifest path."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from modeltrace.benchmark.zoo.build import build_zoo, console_progress, default_cache


@click.command()
@click.option("--quick", is_flag=True, help="The CI subset (under 5 minutes of CPU).")
@click.option("--tiny", is_flag=True, help="The test-sized zoo (seconds).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Cache folder (default bench/cache/zoo or bench/cache/zoo-quick).")
@click.option("--workers", type=int, default=None, help="Build processes (default: up to 2).")
def main(quick: bool, tiny: bool, cache: Path | None, workers: int | None) -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = "tiny" if tiny else ("quick" if quick else "full")
    t0, c0 = time.perf_counter(), time.process_time()
    path = build_zoo(cache or default_cache(settings != "full"), quick=quick, progress=console_progress(),
                     settings=settings, workers=workers)
    click.echo(str(path))
    click.echo(f"wall {time.perf_counter() - t0:.1f}s, CPU of this process {time.process_time() - c0:.1f}s",
               err=True)


if __name__ == "__main__":
    main()
