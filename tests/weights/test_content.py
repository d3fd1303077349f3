"""Pairing by content: a copy in a naming scheme no table knows, with fused, transposed and permuted projections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tinytrain as tt

from modeltrace.compare import compare
from modeltrace.model import Model
from modeltrace.weights import match_models

ORDER = (1, 0)  # B block j holds A layer ORDER[j]: the layer order is shuffled too


def custom_shell(state: dict[str, np.ndarray], seed: int, sigma_rel: float = 0.05,
                 order: tuple[int, ...] = ORDER) -> dict[str, np.ndarray]:
    """Every key renamed into a custom layout; q|k|v and gate|up fused and stored transposed, o and down
    transposed; MLP units and heads permuted; noise of `sigma_rel` of each tensor's std; blocks renumbered."""
    st = tt.add_noise(tt.permute_heads(tt.permute_neurons(state, seed), seed + 1), sigma_rel, seed + 2)
    out = {"net.lexicon": st["model.embed_tokens.weight"], "net.readout": st["lm_head.weight"],
           "net.final_scale": st["model.norm.weight"]}
    for j, i in enumerate(order):
        p, q = f"model.layers.{i}.", f"net.stage_{j}."
        out[q + "pre_a"] = st[p + "input_layernorm.weight"]
        out[q + "pre_b"] = st[p + "post_attention_layernorm.weight"]
        qkv = np.concatenate([st[p + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[q + "tokmix.fused_in"] = np.ascontiguousarray(qkv.T)
        out[q + "tokmix.proj_out"] = np.ascontiguousarray(st[p + "self_attn.o_proj.weight"].T)
        gate_up = np.concatenate([st[p + "mlp.gate_proj.weight"], st[p + "mlp.up_proj.weight"]])
        out[q + "chanmix.w13"] = np.ascontiguousarray(gate_up.T)
        out[q + "chanmix.w2"] = np.ascontiguousarray(st[p + "mlp.down_proj.weight"].T)
    return out


def expected_pairs() -> dict[str, str]:
    want = {"model.embed_tokens.weight": "net.lexicon", "lm_head.weight": "net.readout",
            "model.norm.weight": "net.final_scale"}
    for j, i in enumerate(ORDER):
        p, q = f"model.layers.{i}.", f"net.stage_{j}."
        want.update({p + "input_layernorm.weight": q + "pre_a", p + "post_attention_layernorm.weight": q + "pre_b",
                     p + "self_attn.o_proj.weight": q + "tokmix.proj_out", p + "mlp.down_proj.weight": q + "chanmix.w2"})
        for k, n in enumerate("qkv"):
            want[p + f"self_attn.{n}_proj.weight"] = q + f"tokmix.fused_in[{k * tt.HIDDEN}:{(k + 1) * tt.HIDDEN}]"
        for k, n in enumerate(("gate", "up")):
            want[p + f"mlp.{n}_proj.weight"] = q + f"chanmix.w13[{k * tt.FF}:{(k + 1) * tt.FF}]"
    return want


@pytest.fixture(scope="module")
def shell_dirs(model_dir, base_state) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    a = model_dir("content-A", base_state)
    b = model_dir("content-B", custom_shell(base_state, 21))
    (b / "config.json").write_text(json.dumps({"arch": "mystery", "d_model": tt.HIDDEN, "n_blocks": 2,
                                               "ffn_width": tt.FF, "n_heads": tt.HEADS}))
    return a, b


def test_every_matrix_paired_with_its_source_under_an_unknown_scheme(shell_dirs: tuple[Path, Path]) -> None:
    a, b = shell_dirs
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        m = match_models(ma, mb)
        got = {p.a: p.b + (f"[{p.b_rows[0]}:{p.b_rows[1]}]" if p.b_rows else "") for p in m.pairs}
        assert got == expected_pairs()
        assert {p.how for p in m.pairs} == {"content"}
        assert m.unmatched_a == () and m.unmatched_b == ()
        for p in m.pairs:  # B's piece, read in A's layout, is A's up to the permutation and the noise
            assert m.read_a(p).shape == m.read_b(p).shape
        # B's own block numbers: block 0 holds A's layer 1
        assert m.piece("b", "mlp_up", 0) is not None and m.piece("b", "mlp_up", 0).name == "net.stage_0.chanmix.w13"
        rename = next(t for t in m.transforms if t.kind == "rename")
        assert rename.estimates["content"]["pairs"] == len(m.pairs)
        assert rename.estimates["content"]["block_map"] == {"0": 1, "1": 0}
        assert rename.estimates["content"]["min_margin"] > 0


def test_custom_shell_is_derived_with_layer_order_and_noise(shell_dirs: tuple[Path, Path]) -> None:
    a, b = shell_dirs
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-identity", "weight-permutation", "diagnosis"])
    assert r.verdict == "derived" and r.p_value < 1e-6
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 1), (1, 0)]
    noise = next(t for t in r.transforms if t.kind == "noise")
    assert 0.03 < noise.estimates["sigma_rel"] < 0.08


def test_repeated_block_under_an_unknown_scheme_is_mapped(model_dir, base_state) -> None:  # type: ignore[no-untyped-def]
    a = model_dir("content-A", base_state)
    b = model_dir("content-B-upscaled", custom_shell(base_state, 21, order=(0, 1, 1)))
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-permutation"])
    assert r.verdict == "derived"
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 0), (1, 1), (2, 1)]
    perm = next(e for e in r.evidence if e.method == "weight-permutation")
    tested = [(x["b_layer"], x["a_layer"]) for x in perm.details["layers"]]
    # the residual-coordinate test uses each A layer once (its units are matched once), along the map
    assert set(tested) <= {(0, 0), (1, 1), (2, 1)} and {a for _, a in tested} == {0, 1}


def test_unknown_scheme_on_the_a_side_is_paired_too(shell_dirs: tuple[Path, Path]) -> None:
    a, b = shell_dirs
    with Model.open(str(b)) as mb, Model.open(str(a)) as ma:
        m = match_models(mb, ma)  # the custom layout is now A
        got = {p.b: p.a + (f"[{p.a_rows[0]}:{p.a_rows[1]}]" if p.a_rows else "") for p in m.pairs}
        assert got == expected_pairs()
        assert m.unmatched_a == () and m.unmatched_b == ()
        for p in m.pairs:
            assert m.read_a(p).shape == m.read_b(p).shape == p.shape
        r = compare(mb, ma, methods=["weight-match", "weight-identity", "weight-permutation"])
    assert r.verdict == "derived" and r.p_value < 1e-6
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 1), (1, 0)]
