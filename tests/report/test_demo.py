"""The demo's disguised modelling code: renamed identifiers, no docstrings, reordered definitions, parsed never run."""

from __future__ import annotations

import ast

from modeltrace.report.demo import RENAMES, disguise

SOURCE = '''"""module doc"""


class VisionTower:
    """doc"""

    def forward(self, img):
        return img


def sincos_2d(d, grid):
    return d * grid
'''


def test_disguise_renames_and_strips_what_a_copier_strips() -> None:
    out = disguise(SOURCE)
    tree = ast.parse(out)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert names == {RENAMES["VisionTower"], "forward", RENAMES["sincos_2d"]}
    assert "doc" not in out and "img" not in out and RENAMES["img"] in out
    assert out == disguise(SOURCE)  # seeded: the same disguise every time
