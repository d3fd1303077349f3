"""Layer maps that are not monotone or one-to-one: a repeated block (depth up-scaling), reordered blocks."""

from __future__ import annotations

import numpy as np
import pytest
import tinytrain as tt

from modeltrace.compare import compare
from modeltrace.model import Model


def _with_layers(state: dict[str, np.ndarray], source: list[int]) -> dict[str, np.ndarray]:
    """B's layer j is a copy of A's layer source[j]."""
    out = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for j, i in enumerate(source):
        pre = f"model.layers.{i}."
        for k, v in state.items():
            if k.startswith(pre):
                out[f"model.layers.{j}." + k[len(pre):]] = v.copy()
    return out


@pytest.mark.parametrize("source", [[0, 1, 1], [0, 1, 0, 1], [1, 0]])
def test_layer_map_names_each_b_layers_source_and_the_tests_use_it(source: list[int], model_dir,  # type: ignore[no-untyped-def]
                                                                   base_state) -> None:
    a = model_dir("LE-A", base_state)
    b = model_dir(f"LE-{'-'.join(map(str, source))}", tt.add_noise(_with_layers(base_state, source), 0.01, 3))
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-identity", "weight-permutation"])
    assert r.verdict == "derived"
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == list(enumerate(source))
    ident = next(e for e in r.evidence if e.method == "weight-identity")
    assert [(x["b_layer"], x["a_layer"]) for x in ident.details["layers"]] == list(enumerate(source))
    assert all(x["p_value"] < 1e-20 for x in ident.details["layers"])
