"""`modeltrace compare A B`: is B derived from A? The verdict first, then the evidence behind it.

`--json` prints the canonical result (schema ``modeltrace.compare/1``), `--json FILE` writes it;
`--report FILE` and `--md FILE` write the HTML and Markdown reports rendered from it (any
combination; writing any file turns on the sha256 of every input). The exit status is 0
whatever the verdict; 2 for bad input (a missing file, a malformed checkpoint, an unknown method).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from modeltrace.compare import DEFAULT_THRESHOLD, CompareResult
from modeltrace.compare import compare as run_compare
from modeltrace.errors import ModelTraceError
from modeltrace.inspect import parse_artifacts
from modeltrace.model import Model
from modeltrace.textsafe import dumps, escape

VERDICT_STYLE = {"derived": "bold red", "independent": "bold green", "inconclusive": "bold yellow"}
LAYER_ROWS_SHOWN = 40


def _t(value: object, limit: int = 300) -> Text:
    """Untrusted text (names from model files) as rich Text: escaped, never parsed as markup."""
    return Text(escape(value, limit=limit))


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}" if p >= 1e-4 or p == 0 else f"{p:.2e}"


def _threshold(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if math.isnan(value) or not 0 < value < 1:
        raise click.BadParameter(f"must be a number between 0 and 1 (exclusive), got {value}")
    return value


def render(result: CompareResult, console: Console) -> None:
    """The human form of a compare result, the verdict on the first line."""
    head = Text()
    head.append(result.verdict.upper(), style=VERDICT_STYLE.get(result.verdict, "bold"))
    head.append(f"  combined p = {_p(result.p_value)} (threshold {result.threshold:g})")
    console.print(head)
    console.print(_t(result.reason, limit=1200))
    console.print(Text("A: ") + _t(result.a) + Text("   B: ") + _t(result.b))

    table = Table(title="Evidence", title_justify="left")
    table.add_column("method", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("p-value", justify="right", no_wrap=True)
    table.add_column("statistic", justify="right", no_wrap=True)
    for e in result.evidence:
        stat = "-" if e.statistic is None else f"{e.statistic:.4g}"
        status = e.status + (" (low power)" if e.status == "ok" and e.p_value is not None and not e.powered else "")
        table.add_row(_t(e.method), _t(status), _p(e.p_value), stat)
    console.print(table)
    for e in result.evidence:
        console.print(Text("  ") + _t(e.method) + Text(": ") + _t(e.statement, limit=400))

    if result.controls is not None and result.verdict != "derived":
        missed = f"; missed: {', '.join(result.controls.missed)}" if result.controls.missed else ""
        console.print(Text("Positive controls: ") + _t(result.controls.limit + missed, limit=800))
    if result.transforms:
        tt = Table(title="How B differs from A", title_justify="left")
        tt.add_column("kind")
        tt.add_column("summary", overflow="fold")
        for t in result.transforms:
            tt.add_row(_t(t.kind), _t(t.summary, limit=400))
        console.print(tt)
    if result.layer_map:
        lt = Table(title="Layer correspondence (B layer <- A layer)", title_justify="left")
        for col in ("component", "B layer", "A layer", "score"):
            lt.add_column(col, justify="left" if col == "component" else "right")
        for row in result.layer_map[:LAYER_ROWS_SHOWN]:
            lt.add_row(_t(row.get("component", "")), str(row.get("b_layer")),
                       "-" if row.get("a_layer") is None else str(row.get("a_layer")),
                       "-" if row.get("score") is None else f"{row['score']:.3f}")
        console.print(lt)
        if len(result.layer_map) > LAYER_ROWS_SHOWN:
            console.print(f"... {len(result.layer_map) - LAYER_ROWS_SHOWN} more layer(s) in --json output")
    if result.rename_map:
        prefixes: dict[str, Any] = {}
        for t in result.transforms:
            if t.kind == "rename":
                prefixes = dict(t.estimates.get("prefix_map") or {})
        line = Text(f"{len(result.rename_map)} tensor(s) renamed")
        if prefixes:
            line += Text("; prefixes: ") + _t(", ".join(f"{k} -> {v}" for k, v in prefixes.items()))
        console.print(line)


@click.command("compare")
@click.argument("model_a", metavar="A")
@click.argument("model_b", metavar="B")
@click.option("--json", "as_json", is_flag=False, flag_value="-", default=None, metavar="[FILE]",
              help="The canonical JSON (schema modeltrace.compare/1): printed, or written to FILE.")
@click.option("--report", "html_out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the HTML report (one self-contained file).")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the Markdown report (pictures in a folder beside it).")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True, callback=_threshold,
              help="Combined p-value below which B is called derived.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Run only these evidence methods (repeatable); default: all.")
@click.option("--download", is_flag=True, help="Allow fetching hf: references that are not in the local cache.")
@click.option("--hash/--no-hash", "hash_files", default=None,
              help="Record the sha256 of every input file (default: on when a report or JSON file is written).")
@click.option("--probes", type=click.Path(exists=True, path_type=Path), metavar="SET",
              help="A probe set with known answers: run the shared-mistakes and canary tests on it.")
@click.option("--behaviour", is_flag=True,
              help="Also run both models (locally or at their endpoints): output agreement, next-token "
                   "log-probabilities and representations.")
@click.option("--reference", "references", multiple=True, metavar="REF",
              help="A model known to be unrelated to A (folder or endpoint; repeatable): the measured null of "
                   "the behaviour tests.")
@click.option("--other", "other", multiple=True, metavar="REF",
              help="A model B may be a merge of (repeatable): one gives mixing coefficients; a base A and "
                   "several task models give task-arithmetic or TIES coefficients.")
@click.option("--code", "code", multiple=True, metavar="a=PATH|b=PATH",
              help="Extra modelling code for A or B (repeatable), compared but never run.")
@click.option("--prompts", type=int, default=200, show_default=True, help="Prompts for the behaviour tests.")
@click.option("--chat", is_flag=True,
              help="Send the behaviour prompts as chat messages (for chat-only endpoints and instruction models).")
@click.option("--top-logprobs", type=click.IntRange(3, 1000), metavar="K",
              help="Next-token log-probabilities per prompt for logprob-similarity "
                   "(default 100, or the smallest limit of an endpoint: 20).")
@click.option("--cache", type=click.Path(path_type=Path), help="Response cache (default ~/.cache/modeltrace).")
@click.option("--no-controls", "no_controls", is_flag=True,
              help="Skip the positive controls (faster; without them nothing is called independent).")
@click.pass_context
def compare(ctx: click.Context, model_a: str, model_b: str, as_json: str | None, html_out: Path | None,
            md_out: Path | None, threshold: float, seed: int,
            methods: tuple[str, ...], download: bool, hash_files: bool | None, probes: Path | None, behaviour: bool,
            references: tuple[str, ...], other: tuple[str, ...], code: tuple[str, ...], prompts: int,
            chat: bool, top_logprobs: int | None, cache: Path | None, no_controls: bool) -> None:
    """Is model B derived from model A? Weight, artifact and (when asked) behaviour evidence.

    A and B are folders, weight files or hf:org/name[@rev]; either may also be an endpoint
    (openai:URL#MODEL or http(s)://host:port/v1#MODEL), which only the behaviour tests can use.
    """
    from modeltrace.backends.resolve import is_endpoint

    options: dict[str, Any] = {"threshold": threshold, "prompts": prompts, "behaviour": behaviour,
                               "references": list(references), "code": list(code), "chat": chat}
    if top_logprobs is not None:
        options["top_logprobs"] = top_logprobs
    if probes is not None:
        options["probes"] = str(probes)
    if cache is not None:
        options["cache"] = str(cache)
    if other:
        options["other"] = other[0] if len(other) == 1 else list(other)
    files_out = {"html": html_out, "markdown": md_out, "json": None if as_json in (None, "-") else Path(as_json)}
    if hash_files is None:
        hash_files = any(files_out.values())
    try:
        opened = []
        for side, ref in (("a", model_a), ("b", model_b)):
            if is_endpoint(ref):
                options[f"endpoint_{side}"] = ref
                opened.append(Model.remote(ref))
            else:
                opened.append(Model.open(ref, allow_download=download))
        a, b = opened
        try:
            for side, m in (("a", a), ("b", b)):  # a file inspect rejects is bad input (exit 2), not a finding
                if f"endpoint_{side}" not in options:
                    parse_artifacts(m)
            result = run_compare(a, b, methods=list(methods) or None, threshold=threshold, seed=seed,
                                 options=options, hash_files=hash_files, controls=not no_controls)
        finally:
            a.close()
            b.close()
    except ModelTraceError as exc:
        click.echo(f"error: {escape(str(exc), limit=2000)}", err=True)
        if exc.hint:
            click.echo(f"hint: {escape(exc.hint, limit=2000)}", err=True)
        ctx.exit(2)
        return
    record_provenance(result, ctx, options, hash_files)
    if as_json == "-":
        click.echo(_jsonable(result.to_json()))
    else:
        render(result, Console(file=sys.stdout, highlight=False, soft_wrap=False))
    if any(files_out.values()):
        from modeltrace.report import write_all

        canonical = json.loads(_jsonable(result.to_json()))
        for path in write_all(canonical, files_out):
            click.echo(f"wrote {escape(path, limit=2000)}", err=True)


def record_provenance(result: CompareResult, ctx: click.Context, options: dict[str, Any], hash_files: bool) -> None:
    """The exact command, the settings `report verify` re-runs with, and the extra inputs (code, probes)."""
    from modeltrace.compare import extra_inputs

    p = ctx.params
    argv = ["modeltrace", "compare", p["model_a"], p["model_b"], "--seed", str(p["seed"]),
            "--threshold", repr(p["threshold"])]
    for name in p["methods"]:
        argv += ["--method", name]
    for flag in ("download", "behaviour", "chat"):
        argv += [f"--{flag}"] if p[flag] else []
    for key in ("probes", "prompts", "top_logprobs", "cache"):
        argv += [f"--{key.replace('_', '-')}", str(p[key])] if p[key] is not None else []
    argv += ["--no-controls"] if p["no_controls"] else []
    for key, values in (("reference", p["references"]), ("code", p["code"]), ("other", p["other"])):
        for v in values:
            argv += [f"--{key}", v]
    typed = Path(sys.argv[0])
    as_typed = typed.name == "modeltrace" or (typed.name == "__main__.py" and typed.parent.name == "modeltrace")
    result.command = ["modeltrace", *sys.argv[1:]] if as_typed else argv

    def where(ref: str) -> str:  # a local path, absolute, so verify works from any folder
        return str(Path(ref).absolute()) if Path(ref).exists() else ref

    result.settings = {"a": where(p["model_a"]), "b": where(p["model_b"]), "methods": list(p["methods"]),
                       "seed": p["seed"], "download": False, "controls": not p["no_controls"],
                       "options": {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | list)}}
    result.inputs.update(extra_inputs(options, hash_files))


def _jsonable(doc: dict[str, Any]) -> str:
    """The canonical JSON text: numpy values made plain, NaN and Infinity written as null (never as
    the non-JSON tokens), and `allow_nan=False` so a value that slips through fails loudly."""
    return dumps(doc, indent=2)
