"""Lineage trees on a tiny family: the base is the root, its derivations hang under it, casts point down."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))

import builders

from modeltrace.cli import cli
from modeltrace.index.fingerprint import fingerprint
from modeltrace.lineage.tree import build_tree, to_dot


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tree")
    base = builders.random_state(0)
    half = {k: v.astype(np.float16) for k, v in base.items()}  # a float16 cast
    out = {"base": builders.save(root / "base", base), "f16": builders.save(root / "f16", half),
           "permute": builders.save(root / "permute", builders.permuted(base, 2)),
           "drop": builders.save(root / "drop", builders.dropped(base, 1)),
           "other": builders.save(root / "other", builders.random_state(9))}
    return out


def test_family_hangs_together_and_the_cast_points_down(collection: dict[str, Path]) -> None:
    fps = {k: fingerprint(str(p)) for k, p in collection.items()}
    tree = build_tree(fps)
    assert len(tree.roots) == 2 and "other" in tree.roots  # one family, one unrelated model
    assert tree.parents("f16") == ["base"]
    edge = next(e for e in tree.edges if e.child == "f16")
    assert edge.kind == "cast" and edge.direction == "derivation"
    assert tree.parents("other") == []
    assert tree.parents("permute") == ["base"]  # the base is the medoid of its copies
    edge = next(e for e in tree.edges if e.child == "permute")
    assert edge.kind == "permute" and edge.direction == "centrality"
    assert tree.related_pairs == 6 and tree.tested_pairs == 10


def test_dot_output_escapes_names() -> None:
    from modeltrace.lineage.tree import Edge, Tree

    t = Tree(["a\"b", "c\x1b[31m"], [Edge("a\"b", "c\x1b[31m", "finetune", 1e-9, 0.1, "unknown", "")], ["a\"b"], 1, 1)
    dot = to_dot(t)
    assert '"a\\"b" -> "c\\\\x1b[31m" [label="finetune", style=dashed];' in dot


def test_tree_command_json(collection: dict[str, Path]) -> None:
    r = CliRunner().invoke(cli, ["tree", str(collection["base"]), str(collection["f16"]), "--json"],
                           catch_exceptions=False)
    js = json.loads(r.output)
    assert js["schema"] == "modeltrace.lineage/1"
    assert [(e["parent"], e["child"], e["kind"]) for e in js["edges"]] == [
        (str(collection["base"]), str(collection["f16"]), "cast")]
