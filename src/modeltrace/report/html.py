"""The HTML reporter: one self-contained file, readable offline, that never runs or loads anything.

Pictures are embedded as base64 PNG; the only style sheet is inline and allowed by its hash. A
Content-Security-Policy meta tag forbids scripts, frames, forms and every remote load, so even a
name that escaped escaping could not run. Every string from the result goes through `html.escape`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path
from typing import ClassVar

from modeltrace.report.document import Block, Cell, CodePair, Document, Image, Para, Table, build
from modeltrace.report.model import Report

CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --line:#dcdce0; --bg:#ffffff; --soft:#f5f5f7;
        --red:#b3261e; --green:#1e7b34; --amber:#8a5a00; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 32px 64px; }
h1 { font-size: 22px; margin: 0 0 4px; overflow-wrap:anywhere; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p { margin: 6px 0; overflow-wrap:anywhere; }
p.lead { font-size: 19px; font-weight: 650; padding: 10px 14px; border-radius: 8px; margin: 14px 0; }
.v-derived p.lead { background:#fdecea; color:var(--red); }
.v-independent p.lead { background:#e8f5ec; color:var(--green); }
.v-inconclusive p.lead { background:#fff4dc; color:var(--amber); }
p.note { color: var(--muted); font-size: 13.5px; }
nav { font-size: 13px; color: var(--muted); margin: 8px 0 0; }
nav a { color: inherit; margin-right: 10px; }
table { border-collapse: collapse; width: 100%; margin: 10px 0 4px; font-size: 13px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line);
         overflow-wrap: break-word; word-break: normal; }
table.evidence td:nth-child(-n+2), table.evidence td:nth-child(4), table.evidence td:nth-child(5),
table.evidence td:nth-child(6) { white-space: nowrap; }
table.evidence td:nth-child(3) { color: var(--muted); font-size: 12px; min-width: 180px; }
mark { background: #ffe066; color: inherit; padding: 0 1px; border-radius: 2px; }
details { margin: 10px 0; } summary { cursor: pointer; color: var(--muted); font-size: 13px; }
th { background: var(--soft); font-weight: 600; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 12.5px; padding-top: 4px; }
td.mono, td.hl { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 12.5px; }
td.same { color: var(--green); font-weight: 600; }
td.diff { color: var(--red); font-weight: 600; }
td.hl { background: #fff3bf; }
td.mono { word-break: break-all; }
td.muted { color: var(--muted); }
figure { margin: 14px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.codepair { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; margin: 12px 0; }
.codepair > div { min-width: 0; }
.codehead { font-size: 12.5px; color: var(--muted); margin-bottom: 2px; overflow-wrap: anywhere; }
pre { margin: 0; padding: 8px 10px; background: var(--soft); border: 1px solid var(--line); border-radius: 6px;
      font: 11.5px/1.45 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; overflow-x: auto;
      max-height: 520px; }
pre .ln { display: inline-block; width: 3.2em; color: #a0a0a8; user-select: none; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def csp() -> str:
    """The policy: nothing but data: images and this file's own style sheet (by hash)."""
    digest = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
    return ("default-src 'none'; img-src data:; style-src 'sha256-" + digest + "'; script-src 'none'; "
            "object-src 'none'; frame-src 'none'; base-uri 'none'; form-action 'none'")


def _cell(c: Cell, tag: str = "td") -> str:
    cls = f' class="{c.mark}"' if c.mark else ""
    if c.span is None:
        return f"<{tag}{cls}>{_e(c.text)}</{tag}>"
    i, j = c.span
    return f"<{tag}{cls}>{_e(c.text[:i])}<mark>{_e(c.text[i:j])}</mark>{_e(c.text[j:])}</{tag}>"


_IDENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)")


def _code(lines: tuple[str, ...], first: int, marks: frozenset[str]) -> str:
    rows = []
    for k, line in enumerate(lines):
        parts = _IDENT.split(line)
        body = "".join(f"<mark>{_e(p)}</mark>" if i % 2 and p in marks else _e(p) for i, p in enumerate(parts))
        rows.append(f'<span class="ln">{first + k}</span>{body}')
    return "<pre>" + "\n".join(rows) + "</pre>"


def _block(b: Block) -> str:
    if isinstance(b, Para):
        cls = f' class="{b.style}"' if b.style else ""
        return f"<p{cls}>{_e(b.text)}</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{_e(h)}</th>" for h in b.headers)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in b.rows)
        cap = f"<caption>{_e(b.caption)}</caption>" if b.caption else ""
        cls = f' class="{_e(b.kind)}"' if b.kind else ""
        table = f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        if b.fold:
            return f"<details><summary>Show all {len(b.rows)} rows</summary>{table}</details>"
        return table
    if isinstance(b, CodePair):
        return (f'<div class="codepair"><div><div class="codehead">{_e(b.title_a)}</div>'
                f"{_code(b.lines_a, b.first_a, b.marks_a)}</div><div><div class=\"codehead\">{_e(b.title_b)}</div>"
                f"{_code(b.lines_b, b.first_b, b.marks_b)}</div></div>")
    assert isinstance(b, Image)
    data = base64.b64encode(b.plot.png).decode("ascii")
    return (f'<figure id="fig-{_e(b.plot.name)}"><img src="data:image/png;base64,{data}" alt="{_e(b.plot.alt)}">'
            f"<figcaption>{_e(b.plot.caption)}</figcaption></figure>")


def render_document(doc: Document) -> str:
    """The whole HTML page for a document."""
    nav = " ".join(f'<a href="#{_e(s.id)}">{_e(s.title)}</a>' for s in doc.sections)
    parts = []
    for s in doc.sections:
        parts.append(f'<section id="{_e(s.id)}"><h2>{_e(s.title)}</h2>' + "".join(_block(b) for b in s.blocks)
                     + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp())}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(doc.title)}</title><style>{CSS}</style></head>"
            f'<body class="v-{_e(doc.verdict)}"><main><h1>{_e(doc.title)}</h1><nav>{nav}</nav>'
            + "".join(parts)
            + "<footer>Generated by modeltrace from the canonical result JSON (schema modeltrace.compare/1); "
              "rebuild it with: modeltrace report RESULT.json --html OUT.html</footer></main></body></html>\n")


class HTMLReporter:
    """`html`: one self-contained HTML file."""

    name: ClassVar[str] = "html"
    suffix: ClassVar[str] = ".html"

    def render(self, report: Report) -> str:
        return render_document(build(report))

    def write(self, report: Report, out: Path) -> list[Path]:
        out.write_text(self.render(report), encoding="utf-8")
        return [out]
