"""`modeltrace inspect REF`: what a model is, from its files alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from modeltrace.inspect import InspectReport, inspect_model
from modeltrace.model import Model
from modeltrace.textsafe import dumps, escape

if TYPE_CHECKING:  # rich is imported only when tables are printed, so --json starts faster
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

ADDED_TOKENS_SHOWN = 20


def _t(value: object) -> Text:
    """Untrusted text as a rich Text: control characters escaped, never parsed as markup."""
    from rich.text import Text

    return Text(escape(value))


def _num(n: int) -> str:
    return f"{n:,}"


def _kv_table(title: str, rows: Sequence[tuple[str, object]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(_t(k), v if isinstance(v, Text) else _t(v))
    return table


def _count_table(title: str, head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, h in enumerate(head):
        table.add_column(h, justify="right" if i else "left", overflow="fold")
    for row in rows:
        table.add_row(*(_t(c) for c in row))
    return table


def render(report: InspectReport, console: Console) -> None:
    """The human form of an inspect report: a few rich tables, every name escaped."""
    summary = [
        ("model", report.name), ("format", ", ".join(report.formats)),
        ("architecture", report.architecture or "-"),
        ("family", f"{report.family} (from {report.family_source})" if report.family else "-"),
        ("naming scheme", report.scheme or "-"), ("parameters", _num(report.parameters)),
        ("counted", report.counted), ("tensors", _num(report.tensors)),
        ("layers", report.layers if report.layers is not None else "-"),
        ("fixed buffers", f"{_num(report.fixed_buffer_elements)} elements"),
        ("tensors without a role", _num(report.unassigned_tensors)),
    ]
    console.print(_kv_table("Model", summary))
    total = report.parameters or 1
    console.print(_count_table("Parameters by component", ("component", "parameters", "share"),
                               [(c, _num(n), f"{100 * n / total:.1f}%") for c, n in report.components.items()]))
    console.print(_count_table("Storage dtypes", ("dtype", "tensors", "elements"),
                               [(d, _num(n), _num(report.dtype_parameters.get(d, 0)))
                                for d, n in report.dtypes.items()]))
    if report.quantization:
        console.print(_count_table("Quantization", ("type", "tensors"),
                                   [(q, _num(n)) for q, n in report.quantization.items()]))
    if report.config:
        rows = [(k, v) for k, v in report.config.items() if not isinstance(v, dict)]
        console.print(_kv_table("Config", rows))
    tok = report.tokenizer
    if tok:
        rows = [("kind", tok.get("kind")), ("vocabulary size", _num(int(tok.get("vocab_size") or 0)))]
        if tok.get("tokenizer_class"):
            rows.append(("class", tok["tokenizer_class"]))
        for role, st in (tok.get("special_tokens") or {}).items():
            rows.append((role, f"{st['content']} (id {st['id']})" if isinstance(st, dict) else st))
        rows.append(("added tokens", _num(int(tok.get("added_tokens_count") or 0))))
        if "chat_template" in tok:
            rows.append(("chat template", "yes" if tok["chat_template"] else "no"))
        console.print(_kv_table("Tokenizer", rows))
        added = tok.get("added_tokens") or []
        if added:
            shown = added[:ADDED_TOKENS_SHOWN]
            table = _count_table("Added tokens" + (f" (first {len(shown)})" if len(added) > len(shown) else ""),
                                 ("content", "id", "special"),
                                 [(a["content"], a["id"], "yes" if a["special"] else "no") for a in shown])
            console.print(table)
    if report.code_files:
        console.print(_count_table("Modelling code (listed, never run)", ("file",),
                                   [(f,) for f in report.code_files]))
    hashed = any(f.sha256 for f in report.files)
    head = ("file", "kind", "bytes") + (("sha256",) if hashed else ())
    console.print(_count_table("Files", head, [
        (f.path, f.kind, _num(f.size)) + ((f.sha256 or "",) if hashed else ()) for f in report.files]))


@click.command("inspect")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--hash", "hash_files", is_flag=True, help="Add the sha256 of every file (reads every byte).")
@click.option("--download", is_flag=True, help="Fetch an hf: reference through huggingface_hub if not cached.")
def inspect(ref: str, as_json: bool, hash_files: bool, download: bool) -> None:
    """Show what the model REF is: formats, family, parameters, tokenizer and files.

    REF is a folder, a weight file, or hf:org/name[@revision] from the local hub cache.
    """
    with Model.open(ref, allow_download=download) as model:
        report = inspect_model(model, hash_files=hash_files)
    if as_json:
        click.echo(dumps(report.to_json(), indent=2))
    else:
        from rich.console import Console

        render(report, Console(highlight=False, soft_wrap=True))
