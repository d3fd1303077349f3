"""`modeltrace report RESULT.json --html OUT.html --md OUT.md`, and `modeltrace report verify RESULT.json`.

Rendering reads only the saved JSON (no models). `verify` re-runs the comparison on the same files:
exit 0 when the verdict and every p-value reproduce, 1 when something differs, 2 when an input
file is missing or its sha256 differs (or the result is malformed).
"""

from __future__ import annotations

from pathlib import Path

import click

from modeltrace.textsafe import escape

_OUT = click.Path(dir_okay=False, path_type=Path)


class _DefaultRender(click.Group):
    """`report FILE ...` means `report render FILE ...`; `report verify FILE` is the subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["render", *args]
        return super().parse_args(ctx, args)


@click.group("report", cls=_DefaultRender)
def report() -> None:
    """Render a saved compare result, or verify that it reproduces.

    `modeltrace report RESULT.json --html OUT.html --md OUT.md` (short for `report render ...`) rebuilds
    the reports from the JSON alone; `modeltrace report verify RESULT.json` re-runs the comparison."""


@report.command("render")
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--html", "html_out", type=_OUT, metavar="FILE", help="Write the self-contained HTML report.")
@click.option("--md", "md_out", type=_OUT, metavar="FILE", help="Write the Markdown report (pictures beside it).")
@click.option("--json", "json_out", type=_OUT, metavar="FILE", help="Write the canonical JSON again.")
def render(result: Path, html_out: Path | None, md_out: Path | None, json_out: Path | None) -> None:
    """Render RESULT (a saved `compare --json FILE`); with no output option, print its summary."""
    from modeltrace.report import load, write
    from modeltrace.report.summary import summary

    rep = load(result)
    outputs = {"html": html_out, "markdown": md_out, "json": json_out}
    if not any(outputs.values()):
        for sentence in summary(rep):
            click.echo(escape(sentence, limit=4000))
        return
    for name, path in outputs.items():
        if path is not None:
            click.echo(f"wrote {escape(write(rep, name, path)[0], limit=2000)}")


@report.command("verify")
@click.argument("result", type=click.Path(path_type=Path))
@click.pass_context
def verify(ctx: click.Context, result: Path) -> None:
    """Re-run the comparison RESULT records on the same files; say whether verdict and p-values reproduce."""
    from modeltrace.report import load
    from modeltrace.report.verify import verify as run_verify

    rep = load(result)
    outcome = run_verify(rep)
    click.echo(f"inputs: {outcome.files_checked} file(s), sha256 unchanged")
    width = max(len(c.what) for c in outcome.checks)
    for c in outcome.checks:
        mark = "same" if c.same else "DIFFERS"
        line = f"{c.what:<{width}}  {mark:<7}  saved: {c.saved}"
        if not c.same:
            line += f"   re-run: {c.rerun}"
        click.echo(escape(line, limit=4000))
    if outcome.reproduced:
        click.echo(f"reproduced: verdict {rep.verdict} and every p-value")
    else:
        click.echo(f"NOT reproduced: {sum(not c.same for c in outcome.checks)} check(s) differ")
        ctx.exit(1)
