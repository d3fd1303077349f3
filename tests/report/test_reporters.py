"""Every reporter on the demo pair: the same sections in the same order, every picture, the evidence it needs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

from PIL import Image

from modeltrace.report import REPORTERS, load
from modeltrace.report.document import build

SECTIONS = ["verdict", "evidence", "controls", "transforms", "layers", "delta", "finetune", "config", "tokenizer",
            "code", "renames", "null", "provenance"]
COPY_FIGURES = ["layer-heatmap", "layer-curves", "delta-histograms", "finetune-deltas", "null-weight-identity",
                "null-weight-permutation", "null-code-clone"]


def test_reporters_are_registered_like_the_other_extension_points() -> None:
    assert REPORTERS.names() == ["html", "json", "markdown"]
    assert REPORTERS.get("html").suffix == ".html"


def test_html_has_every_section_in_order_and_every_picture(seed_copy: dict[str, Path]) -> None:
    html = seed_copy["html"].read_text(encoding="utf-8")
    ids = re.findall(r'<section id="([a-z]+)">', html)
    assert ids == SECTIONS
    figs = re.findall(r'<figure id="fig-([a-z-]+)"><img src="data:image/png;base64,([^"]+)"', html)
    assert [f for f, _ in figs] == COPY_FIGURES
    for _, data in figs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.width > 300 and im.height > 150


def test_html_shows_the_evidence_a_dispute_needs(seed_copy: dict[str, Path]) -> None:
    html = seed_copy["html"].read_text(encoding="utf-8")
    report = load(seed_copy["json"])
    for e in report.evidence:  # the evidence table: one row per method, skipped ones with their reason
        assert f'<td class="mono">{e.method}</td>' in html
    assert "skipped: behaviour tests not requested (--behaviour)" in html
    assert "A and B were trained from independent initializations (no shared weights)" in html
    # configuration side by side, the peculiar shared fields highlighted
    assert '<td class="mono">architectures</td>' not in html and "<td>architectures</td>" in html
    assert '<td class="hl">query_num</td><td class="mono">8</td>' in html
    # tokenizer side by side: the added tokens at the same ids
    assert re.search(r'<td class="mono">&lt;image&gt;</td><td>512</td><td>512</td><td class="same">same id</td>', html)
    # code clones: the identifier rename map, highlighted
    assert '<td class="mono">VisionTower</td><td class="mono"><mark>VisualEncoder</mark></td>' in html
    # the clone regions as code, side by side, renamed identifiers highlighted on both sides
    assert html.count('<div class="codepair">') == 2
    assert "class <mark>VisionTower</mark>(nn.Module):" in html and "class <mark>VisualEncoder</mark>(nn.Module):" in html
    # tensor rename map, the renamed prefix highlighted
    assert '<td class="mono"><mark>vison.</mark>encoder.layers.0.mlp.fc1.weight</td>' in html
    assert "Gaussian noise was fitted with std" in html  # the B - A histogram against the fitted noise
    assert "sha256" in html and report.provenance["inputs"]["a"]["sha256"][
        report.provenance["inputs"]["a"]["weight_files"][0]] in html


def test_markdown_has_the_same_sections_and_writes_its_pictures_beside_it(seed_copy: dict[str, Path]) -> None:
    md = seed_copy["md"].read_text(encoding="utf-8")
    html = seed_copy["html"].read_text(encoding="utf-8")
    assert re.findall(r"^## (.+)$", md, flags=re.MULTILINE) == re.findall(r"<h2>([^<]+)</h2>", html)
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert [Path(p).stem for p in pics] == COPY_FIGURES
    for p in pics:
        assert (seed_copy["md"].parent / p).read_bytes().startswith(b"\x89PNG")
    assert "\\<image\\>" not in md and "&lt;image&gt;" in md
    assert "```text\nclass VisualEncoder(nn.Module):" in md or "class VisualEncoder(nn.Module):" in md


def test_json_reporter_writes_the_canonical_object(seed_copy: dict[str, Path], tmp_path: Path) -> None:
    report = load(seed_copy["json"])
    out = REPORTERS.get("json")().write(report, tmp_path / "again.json")
    assert json.loads(out[0].read_text()) == json.loads(seed_copy["json"].read_text())


def test_the_twin_report_shows_why_it_is_not_derived(seed_twin: dict[str, Path]) -> None:
    html = seed_twin["html"].read_text(encoding="utf-8")
    assert "Verdict: INDEPENDENT" in html and "DERIVED" not in html
    assert "A and B share their architecture" in html
    assert "No Gaussian noise model fits B - A" in html
    assert "no A layer matches" in html  # the layer map: no B layer comes from an A layer
    doc = build(load(seed_twin["json"]), with_plots=False)
    assert [s.id for s in doc.sections] == [s for s in SECTIONS if s != "transforms"]


def test_diagnosis_records_the_data_the_pictures_need(seed_copy: dict[str, Path]) -> None:
    report = load(seed_copy["json"])
    d = report.method("diagnosis")
    assert d is not None
    rows = [r for r in d.details["per_tensor"] if "delta_hist" in r]
    assert rows and all(len(r["delta_hist"]["counts"]) == 41 and r["delta_hist"]["half_width_rel"] > 0 for r in rows)
    scores = d.details["layer_scores"]
    assert set(scores) == {"language_model", "vision_tower"}
    assert scores["language_model"]["scores"][0][0] == 1.0


def test_tokenizer_section_shows_the_first_differing_merges() -> None:
    from modeltrace.report.html import render_document
    from modeltrace.report.model import Report

    tok = {"method": "tokenizer-match", "status": "ok", "statement": "s", "details": {
        "merges": {"a": 10, "b": 12, "identical_prefix": 7, "first_differing": {"a": ["Ġ t", "h e"], "b": ["e r"]}}}}
    r = Report.from_json({"schema": "modeltrace.compare/1", "a": "A", "b": "B", "verdict": "inconclusive",
                          "p_value": 1.0, "threshold": 1e-6, "reason": "r", "evidence": [tok]})
    html = render_document(build(r, with_plots=False))
    assert ("<tr><td>8</td><td class=\"mono\">Ġ t</td><td class=\"mono\">e r</td></tr>"
            "<tr><td>9</td><td class=\"mono\">h e</td><td class=\"mono\">(none)</td></tr>") in html
    assert "first 7 identical; first difference at merge #8" in html


def test_positive_controls_are_rendered_as_a_table(seed_twin: dict[str, Path]) -> None:
    from modeltrace.report.html import render_document
    from modeltrace.report.model import Report

    obj = json.loads(seed_twin["json"].read_text())
    obj["controls"] = [{"kind": "rotate+noise", "strength": 0.05, "method": "weight-permutation", "p_value": 1e-300,
                        "detected": True}]
    html = render_document(build(Report.from_json(obj), with_plots=False))
    assert ('<tr><td class="mono">rotate+noise</td><td>0.05</td><td class="mono">weight-permutation</td>'
            '<td>&lt; 1e-300</td><td class="same">yes</td></tr>') in html
