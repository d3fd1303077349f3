"""The pictures: drawn from the JSON only, absent (with a note saying why) when the result has no data for them."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from modeltrace.report import load
from modeltrace.report.document import Image as ImageBlock
from modeltrace.report.document import Para, build
from modeltrace.report.model import Report
from modeltrace.report.plots import all_plots, layer_curves, null_distributions
from modeltrace.stats.nulls import fixed_point_tail

MINIMAL = {"schema": "modeltrace.compare/1", "a": "A", "b": "B", "verdict": "inconclusive", "p_value": 1.0,
           "threshold": 1e-6, "reason": "no test could run", "evidence": []}


def test_a_result_without_weights_has_no_pictures_and_says_why() -> None:
    r = Report.from_json(MINIMAL)
    assert all(v == [] for v in all_plots(r).values())
    doc = build(r)
    notes = {s.id: s.blocks[0] for s in doc.sections if s.id in ("layers", "delta", "finetune", "null")}
    assert all(isinstance(b, Para) and b.style == "note" for b in notes.values())
    assert notes["delta"].text == "No tensor pairs of equal shape were compared, so there is no B - A to show."  # type: ignore[union-attr]


def test_pictures_are_pngs_of_readable_size(seed_twin: dict[str, Path]) -> None:
    doc = build(load(seed_twin["json"]))
    images = [b.plot for s in doc.sections for b in s.blocks if isinstance(b, ImageBlock)]
    assert {p.name for p in images} >= {"layer-heatmap", "layer-curves", "delta-histograms", "null-weight-identity"}
    for p in images:
        with Image.open(io.BytesIO(p.png)) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 250
        assert p.alt and p.caption


def test_the_null_picture_marks_the_exact_tail_of_the_observed_count(seed_twin: dict[str, Path]) -> None:
    r = load(seed_twin["json"])
    e = r.method("weight-identity")
    assert e is not None
    row = e.details["layers"][0]
    assert 0 < fixed_point_tail(int(row["fixed"]), int(row["kept"]), int(row["n_b"])) <= 1
    assert [p.name for p in null_distributions(r)][:2] == ["null-weight-identity", "null-weight-permutation"]
    assert layer_curves(r) is not None
