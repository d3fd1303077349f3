"""The `modeltrace` command line: thin commands over the library, and one error boundary.

Subcommands live one per module and are imported only when used, so `modeltrace --help`
stays fast and a missing optional dependency breaks only the command that needs it.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

import click

from modeltrace import __version__
from modeltrace.errors import ModelTraceError
from modeltrace.textsafe import escape

COMMANDS: dict[str, str] = {
    "inspect": "modeltrace.cli.inspect_cmd:inspect",
    "compare": "modeltrace.cli.compare_cmd:compare",
    "bench": "modeltrace.cli.bench_cmd:bench",
    "probe": "modeltrace.cli.probe_cmd:probe",
    "same-model": "modeltrace.cli.same_model_cmd:same_model",
    "report": "modeltrace.cli.report_cmd:report",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            cmd = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            why = str(exc)  # `exc` itself is unbound once the except block ends

            @click.command(cmd_name, help=f"(unavailable: {why})")
            def unavailable() -> None:
                raise ModelTraceError(f"command {cmd_name!r} is unavailable: {why}",
                                      hint="install the extra it needs, e.g. pip install 'modeltrace[dev]'")
            return unavailable
        assert isinstance(cmd, click.Command)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modeltrace")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Is model B derived from model A? Evidence a third party can check."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI; known errors become one line on stderr and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        rv = cli.main(args=args, prog_name="modeltrace", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            sys.exit(rv)  # a command's ctx.exit(2) comes back as a return value here, not as SystemExit
        return rv
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ModelTraceError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {escape(str(exc), limit=2000)}", err=True)
        if exc.hint:
            click.echo(f"hint: {escape(exc.hint, limit=2000)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("error: out of memory", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(f"internal error: {type(exc).__name__}: {escape(str(exc), limit=500)} "
                   "(run with --debug for the traceback)", err=True)
        sys.exit(1)
