"""`modeltrace bench`: run the lineage benchmark and write its report."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from modeltrace.textsafe import escape

ZOO_CHOICES = ("tuning", "heldout", "scale", "real")
LABELS = {"tuning": "tuning", "heldout": "held-out", "scale": "held-out, scale", "real": "held-out, real model"}


class _RichProgress:
    """The runner's progress drawn as one rich progress bar per stage."""

    def __init__(self, progress: Any) -> None:
        self._p = progress
        self._task: Any = None
        self._name = ""
        self._total = 0

    def stage(self, name: str, total: int) -> None:
        self.done()
        self._name, self._total = escape(name), total
        self._task = self._p.add_task(self._name, total=total or None)

    def done(self) -> None:
        """Stop the current stage's clock and drop its per-item note."""
        if self._task is not None:
            self._p.update(self._task, description=self._name)
            self._p.stop_task(self._task)

    def step(self, description: str) -> None:
        if self._task is None:
            self.stage("working", 0)
        self._p.update(self._task, description=f"{self._name} · {escape(description, limit=80)}",
                       advance=1 if self._total else 0)


def _command(argv: dict[str, Any]) -> str:
    """The canonical command line of this run, recorded in the report."""
    parts = ["modeltrace", "bench"]
    if argv["quick"]:
        parts.append("--quick")
    for z in argv.get("zoos") or ():
        parts += ["--zoo", z]
    for opt in ("zoos_docs", "power_docs"):
        if argv.get(opt) is not None:
            parts += [f"--{opt.replace('_', '-')}", str(argv[opt])]
    for opt in ("out", "cache", "manifest", "realmodels", "docs", "pairs"):
        if argv.get(opt) is not None:
            parts += [f"--{opt}", str(argv[opt])]
    for m in argv.get("methods") or ():
        parts += ["--methods", m]
    if argv["peers"] is not None:
        parts.append("--peers" if argv["peers"] else "--no-peers")
    if argv["no_realmodels"]:
        parts.append("--no-realmodels")
    if argv["in_process"]:
        parts.append("--in-process")
    if argv.get("skip_control_pairs"):
        parts.append("--skip-control-pairs")
    if argv.get("report_only"):
        parts.append("--report-only")
    if argv.get("behaviour") is not None:
        parts.append("--behaviour" if argv["behaviour"] else "--no-behaviour")
    return shlex.join(parts)


@click.command("bench")
@click.option("--quick", is_flag=True, help="The small zoo subset (the CI smoke test).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results"), show_default=True,
              help="Folder for pairs.jsonl, summary.json and peer results.")
@click.option("--cache", type=click.Path(path_type=Path), default=Path("bench/cache"), show_default=True,
              help="Folder for the zoo and the peers' virtual environments.")
@click.option("--methods", multiple=True, help="Evidence methods to run (repeatable; default: all registered).")
@click.option("--peers/--no-peers", default=None,
              help="Install and run the peer tools on the same pairs (default: on, off with --quick).")
@click.option("--pairs", "pairs", default=None, help="Only pairs whose id matches this shell-style glob.")
@click.option("--realmodels", type=click.Path(path_type=Path), default=None,
              help="Folder of the real models (default $MODELTRACE_REALMODELS or .cache/realmodels, fetched when absent; "
                   "with --quick only when given).")
@click.option("--no-realmodels", is_flag=True, help="Leave out the real-model table.")
@click.option("--manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Use this zoo manifest.json instead of building the zoo.")
@click.option("--docs", type=click.Path(path_type=Path), default=None,
              help="Markdown report path (default docs/benchmarks/lineage.md; with --quick, OUT/lineage.md).")
@click.option("--in-process", is_flag=True,
              help="Run pairs in this process (faster start; no per-pair memory figure, no crash isolation).")
@click.option("--behaviour/--no-behaviour", default=None,
              help="Run the behaviour and representation methods (they run the models; default: on, off with --quick).")
@click.option("--timeout", "timeout_s", type=float, default=1800.0, show_default=True,
              help="Seconds allowed per pair.")
@click.option("--zoo", "zoos", multiple=True, type=click.Choice(ZOO_CHOICES),
              help="Which zoo (repeatable): tuning (the one the rules were tuned on, default), heldout (fresh "
                   "seeds, widths and text), scale (hidden 256, 6 layers, 8k vocabulary), real (derivations of "
                   "SmolLM2-135M). With several, each runs into OUT/<zoo> and a side-by-side page is written.")
@click.option("--zoos-docs", type=click.Path(path_type=Path), default=None,
              help="Side-by-side page (default docs/benchmarks/lineage-zoos.md; with --quick, OUT/lineage-zoos.md).")
@click.option("--skip-control-pairs", is_flag=True,
              help="Leave out the independent pairs that only control a derivation (a derived model against a "
                   "base it does not come from); every pair of independent training runs stays.")
@click.option("--report-only", is_flag=True,
              help="Run no pair: report on the rows already in OUT (a run that was stopped), saying how many are missing.")
@click.option("--power-docs", type=click.Path(path_type=Path), default=None,
              help="Power-curve page (default docs/benchmarks/power.md; with --quick, OUT/power.md).")
def bench(quick: bool, out: Path, cache: Path, methods: tuple[str, ...], peers: bool | None, pairs: str | None,
          realmodels: Path | None, no_realmodels: bool, manifest: Path | None, docs: Path | None,
          in_process: bool, behaviour: bool | None, timeout_s: float, zoos: tuple[str, ...],
          zoos_docs: Path | None, power_docs: Path | None, skip_control_pairs: bool, report_only: bool) -> None:
    """Run every evidence method and the combined verdict over the benchmark's labelled pairs."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modeltrace.benchmark.runner import BenchConfig, check_selection, run_benchmark
    from modeltrace.compare import plan

    command = _command({"quick": quick, "out": out, "cache": cache, "methods": methods, "peers": peers,
                        "pairs": pairs, "realmodels": realmodels, "no_realmodels": no_realmodels,
                        "manifest": manifest, "docs": docs, "in_process": in_process, "behaviour": behaviour,
                        "zoos": zoos, "zoos_docs": zoos_docs, "power_docs": power_docs,
                        "skip_control_pairs": skip_control_pairs, "report_only": report_only})
    zoos = tuple(dict.fromkeys(zoos)) or ("tuning",)
    if manifest is not None and len(zoos) > 1:
        raise click.UsageError("--manifest names one zoo; give at most one --zoo with it")
    run_behaviour = (not quick) if behaviour is None else behaviour
    if realmodels is None and not quick:
        realmodels = Path(os.environ.get("MODELTRACE_REALMODELS") or ".cache/realmodels")
    plan(list(methods) or None)  # fail on an unknown method, a bad manifest or glob before any progress is drawn
    if manifest is not None:
        check_selection(manifest, pairs)
    console = Console(stderr=True)
    summaries: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for zoo in zoos:
        z_out = out / zoo if len(zoos) > 1 else out
        z_docs = docs if len(zoos) == 1 and docs is not None else _default_docs(zoo, quick, z_out)
        cfg = BenchConfig(
            out=z_out, cache=cache, quick=quick, methods=methods or None,
            peers=(not quick) if peers is None else peers, pairs_glob=pairs,
            # the published real-model pairs are run once, with the first zoo
            realmodels=None if no_realmodels or zoo != zoos[0] else realmodels, manifest=manifest,
            docs=z_docs, isolate=not in_process, timeout_s=timeout_s, command=command,
            options={"behaviour": True} if run_behaviour else {}, zoo=zoo, real_source=realmodels,
            skip_control_pairs=skip_control_pairs, run_missing=not report_only,
        )
        if len(zoos) > 1:
            click.echo(f"== zoo {zoo} ({LABELS.get(zoo, zoo)})")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as prog:
            shown = _RichProgress(prog)
            summary = run_benchmark(cfg, progress=shown)
            shown.done()
        summaries[zoo] = summary
        _echo_summary(summary, z_out, z_docs)
        failed = _failed_pairs(z_out / "pairs.jsonl")
        if summary["counts"]["errors"] or failed:
            bad.append(f"{zoo}: {summary['counts']['errors']} pair(s) failed and {len(failed)} had an evidence "
                       f"method end in an error (first: {', '.join(failed[:5]) or '-'}); see {z_out / 'pairs.jsonl'}")
    if len(zoos) > 1:
        from modeltrace.benchmark import zoos as zoos_page

        page = zoos_docs or (out / "lineage-zoos.md" if quick else Path("docs/benchmarks/lineage-zoos.md"))
        pw = power_docs or (out / "power.md" if quick else Path("docs/benchmarks/power.md"))
        written = zoos_page.write(
            {z: s for z, s in summaries.items()}, {z: s["_rows"] for z, s in summaries.items()},
            {z: s["_roots"] for z, s in summaries.items()}, [command], summaries[zoos[0]]["threshold"], page, pw)
        click.echo("wrote " + ", ".join(str(p) for p in written))
    if bad:
        for line in bad:
            click.echo(f"error: {line}", err=True)
        sys.exit(1)


def _default_docs(zoo: str, quick: bool, out: Path) -> Path:
    if quick:
        return out / "lineage.md"
    return Path("docs/benchmarks/lineage.md" if zoo == "tuning" else f"docs/benchmarks/lineage-{zoo}.md")


def _echo_summary(summary: dict[str, Any], out: Path, docs: Path) -> None:
    comb = summary["detectors"]["combined"]
    c = summary["counts"]
    click.echo(f"pairs: {c['derived']} derived, {c['independent']} independent, {c['distilled']} distilled, "
               f"{c['errors']} errors")
    click.echo(f"combined: AUROC {comb['auroc'] if comb['auroc'] is None else round(comb['auroc'], 4)}, "
               f"{comb['false_positives']} false positive(s), {comb['detected']}/{comb['n_derived']} derived detected")
    for name, t in summary["targets"].items():
        click.echo(f"target {name}: {'met' if t['met'] else 'not met'} ({t['value']})")
    click.echo(f"wrote {out / 'summary.json'} and {docs}")


def _failed_pairs(rows_path: Path) -> list[str]:
    """Pairs whose row records an evidence method that ended in an error (a bug, or an unreadable file)."""
    bad: list[str] = []
    if not rows_path.is_file():
        return bad
    for line in rows_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if any(e.get("status") == "error" for e in (row.get("evidence") or {}).values()):
            bad.append(str(row.get("pair")))
    return bad
