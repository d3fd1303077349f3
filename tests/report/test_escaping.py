"""Hostile names (tensor names, tokens, file names, config values) are shown, never interpreted, by every reporter."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from report_helpers import HOSTILE_A, HOSTILE_B, HOSTILE_FILE, HOSTILE_TOKEN

from modeltrace.report import load
from modeltrace.report.markdown import md_escape


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def test_the_hostile_pair_carries_its_names_into_the_json(hostile: dict[str, Path]) -> None:
    raw = hostile["json"].read_text(encoding="utf-8")
    data = json.loads(raw)
    names = " ".join([*data["rename_map"], *data["rename_map"].values()])
    assert HOSTILE_A in names and HOSTILE_B in names
    assert HOSTILE_TOKEN in raw and HOSTILE_FILE in raw
    assert load(hostile["json"]).raw == data  # the json reporter wrote the canonical object unchanged


def test_html_has_no_live_script_no_handlers_no_external_assets(hostile: dict[str, Path]) -> None:
    html = hostile["html"].read_text(encoding="utf-8")
    tags = _parse(html)
    names = [t for t, _ in tags.tags]
    assert "script" not in names and "iframe" not in names and "object" not in names and "a" in names
    for tag, attrs in tags.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        for key in ("src", "href"):
            v = attrs.get(key)
            if v is not None:
                assert v.startswith(("data:image/png;base64,", "#")), (tag, key, v[:80])
    assert "<link" not in html and "@import" not in html and "url(" not in html
    # the names are there, as text
    text = "".join(tags.text)
    assert HOSTILE_A in text and HOSTILE_TOKEN in text and HOSTILE_FILE in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_html_forbids_scripts_and_remote_loads_by_policy(hostile: dict[str, Path]) -> None:
    tags = _parse(hostile["html"].read_text(encoding="utf-8"))
    csp = [a.get("content") or "" for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1
    policy = dict(part.strip().split(" ", 1) for part in csp[0].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'none'" and policy["img-src"] == "data:"
    assert policy["style-src"].startswith("'sha256-")


def test_html_embeds_its_plots_and_states_the_verdict(hostile: dict[str, Path]) -> None:
    html = hostile["html"].read_text(encoding="utf-8")
    report = load(hostile["json"])
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert imgs and all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in imgs)
    assert f"Verdict: {report.verdict.upper()}" in html


def test_markdown_shows_hostile_text_literally(hostile: dict[str, Path]) -> None:
    md = hostile["md"].read_text(encoding="utf-8")
    assert "<" not in md and ">" not in md.replace("&gt;", "")  # no raw HTML at all
    assert not re.search(r"(?<!\\)\]\(http", md) and "http://" not in md  # no link or autolink can form
    assert md_escape(HOSTILE_B) in md
    tables: list[list[str]] = [[]]
    for line in md.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    assert len(tables) > 3
    for rows in filter(None, tables):  # a hostile "|" never adds a cell: every row has the header's count
        counts = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(counts) == 1, rows[:3]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images and all((hostile["md"].parent / p).is_file() for p in images)


def test_md_escape_disarms_markdown_and_html() -> None:
    assert md_escape("<script>") == "&lt;script&gt;"
    assert md_escape("a|b") == "a\\|b"
    assert md_escape("[x](y)") == "\\[x\\](y)"
    assert md_escape("**b** _i_ `c`") == "\\*\\*b\\*\\* \\_i\\_ \\`c\\`"
    assert md_escape("http://e.com") == "http&#58;//e.com"
    assert md_escape("line\nbreak") == "line break"


def test_markdown_paragraphs_cannot_start_a_list_or_a_heading() -> None:
    from modeltrace.report.markdown import _literal_line

    assert _literal_line("- item") == "\\- item"
    assert _literal_line("=====") == "\\====="
    assert _literal_line("12. x") == "12\\. x"
    assert _literal_line("A: - x") == "A: - x"


def test_plots_draw_mathtext_in_names_as_text() -> None:
    from modeltrace.report.plots import _label

    assert _label("$\\frac{1}{2}$") == "\\$\\frac{1}{2}\\$"
    assert _label("a\x1b[31mb") == "a\\x1b[31mb"
