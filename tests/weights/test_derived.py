"""Derived pairs: every derivation of a trained tiny model is called derived (p < 1e-6), with its findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tinytrain as tt

from modeltrace.compare import compare
from modeltrace.model import Model

WEIGHT_METHODS = ["weight-match", "weight-identity", "weight-permutation"]


def _compare(a: Path, b: Path, **kw: object):  # type: ignore[no-untyped-def]
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        return compare(ma, mb, methods=WEIGHT_METHODS, **kw)  # type: ignore[arg-type]


def _p(result, method: str) -> float:  # type: ignore[no-untyped-def]
    return next(e.p_value for e in result.evidence if e.method == method)


@pytest.fixture(scope="module")
def a_dir(model_dir, base_state):  # type: ignore[no-untyped-def]
    return model_dir("A", base_state)


def test_model_against_itself_is_derived_at_the_floor(a_dir: Path) -> None:
    r = _compare(a_dir, a_dir)
    assert r.verdict == "derived"
    assert _p(r, "weight-identity") == 1e-300 and _p(r, "weight-permutation") < 1e-35  # 1/32! over 32 coordinates
    assert r.transforms == [] and r.rename_map == {}
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 0), (1, 1)]


@pytest.mark.parametrize("how", ["bf16", "noise-1/708", "noise-1e-2"])
def test_cast_and_noise_are_derived(how: str, a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    if how == "bf16":
        b = model_dir("B-bf16", base_state, dtype="bfloat16")
    else:
        sigma = 1 / 708 if how == "noise-1/708" else 1e-2
        b = model_dir(f"B-{how}", tt.add_noise(base_state, sigma, seed=7))
    r = _compare(a_dir, b)
    assert r.verdict == "derived" and r.p_value < 1e-6
    assert _p(r, "weight-identity") < 1e-100


def test_fine_tune_is_derived(a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    tuned = tt.train(seed=3, steps=60, start=base_state, data_offset=1, lr=1e-3)
    rel = np.mean([np.linalg.norm(tuned[k] - base_state[k]) / np.linalg.norm(base_state[k])
                   for k in base_state if k.endswith("up_proj.weight")])
    assert rel > 0.02  # it did move
    r = _compare(a_dir, model_dir("B-ft", tuned))
    assert r.verdict == "derived" and _p(r, "weight-identity") < 1e-6


def test_permuted_neurons_and_heads_are_derived_and_reported(a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    state = tt.permute_heads(tt.permute_neurons(base_state, 2), 3)
    assert tt.loss_of(state) == pytest.approx(tt.loss_of(base_state), abs=1e-4)  # same function
    r = _compare(a_dir, model_dir("B-perm", state))
    assert r.verdict == "derived" and _p(r, "weight-permutation") < 1e-30
    assert _p(r, "weight-identity") > 1e-3  # the identity test alone is blind to a permutation
    perm = {t.estimates["target"]: t for t in r.transforms if t.kind == "permute"}
    assert sum(perm["mlp_units"].estimates["moved_per_layer"].values()) > 200
    assert perm["attention_heads"].estimates["heads"] == 2 * tt.HEADS
    assert sum(perm["attention_heads"].estimates["moved_per_layer"].values()) >= 4


@pytest.mark.parametrize("permutation", [False, True])
def test_rotated_or_permuted_residual_with_permuted_neurons_is_beyond_the_exact_weight_tests(
        permutation: bool, a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    """Both symmetries of the null used at once: no test exact by relabelling can see it (weights_permutation)."""
    state = tt.rotate_residual(base_state, 4, permutation=permutation)
    assert tt.loss_of(state) == pytest.approx(tt.loss_of(base_state), abs=1e-4)
    r = _compare(a_dir, model_dir(f"B-rot{permutation}", tt.permute_neurons(state, 5)))
    assert _p(r, "weight-permutation") > 1e-3 and _p(r, "weight-identity") > 1e-3
    ev = next(e for e in r.evidence if e.method == "weight-permutation")
    assert ev.details["blind_to"] == "copies whose residual stream was rotated or permuted (see weight-identity)"


def test_rotation_found_through_a_reordered_vocabulary(a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    order = rng.permutation(tt.VOCAB)
    state = tt.rotate_residual(base_state, 6)
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][order]
    state["lm_head.weight"] = state["lm_head.weight"][order]
    vocab = [tt.token_strings()[i] for i in order]
    r = _compare(a_dir, model_dir("B-vocab", state, vocab=vocab))
    assert r.verdict == "derived"
    ev = next(e for e in r.evidence if e.method == "weight-match")
    assert ev.details["vocab"]["how"] == "tokens" and ev.details["vocab"]["reordered"] > 200
    assert ev.details["residual"]["kind"] == "rotate"


def test_layer_drop_is_derived_and_mapped(a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    r = _compare(a_dir, model_dir("B-drop", tt.drop_layer(base_state, 0)))
    assert r.verdict == "derived" and r.p_value < 1e-6
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 1)]


def test_llama3v_style_shell_is_derived(base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    mm = tt.multimodal(base_state, 9)
    a = model_dir("MM", mm)
    b = model_dir("MM-shell", tt.llama3v_shell(mm, 10))
    r = _compare(a, b)
    assert r.verdict == "derived" and r.p_value < 1e-6
    assert _p(r, "weight-permutation") < 1e-30
    rename = next(t for t in r.transforms if t.kind == "rename")
    assert rename.estimates["prefix_map"] == {"vpm.": "vison.", "resampler.": "projection."}
    assert {"rename", "transpose", "fuse", "permute"} <= {t.kind for t in r.transforms}
    assert r.rename_map["llm.model.layers.0.self_attn.q_proj.weight"] == "llm.model.layers.0.self_attn.qkv_proj.weight"
    heads = next(t for t in r.transforms if t.estimates.get("target") == "attention_heads")
    assert heads.estimates["heads"] == 2 * tt.HEADS and sum(heads.estimates["moved_per_layer"].values()) >= 4
    comps = {e["component"] for e in r.layer_map if e["a_layer"] is not None}
    assert comps == {"language_model", "vision_tower"}


def _wide_state(seed: int, d: int = 256, ff: int = 512) -> dict[str, np.ndarray]:
    """An untrained Llama-shaped model wide enough for 256-element quantization blocks."""
    rng = np.random.default_rng(seed)
    st = {"model.embed_tokens.weight": rng.standard_normal((300, d)) * 0.1, "model.norm.weight": np.ones(d),
          "lm_head.weight": rng.standard_normal((300, d)) * 0.1}
    for i in range(2):
        p = f"model.layers.{i}."
        st.update({p + "mlp.gate_proj.weight": rng.standard_normal((ff, d)) * 0.05,
                   p + "mlp.up_proj.weight": rng.standard_normal((ff, d)) * 0.05,
                   p + "mlp.down_proj.weight": rng.standard_normal((d, ff)) * 0.05,
                   p + "post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(d)})
    return {k: np.asarray(v, np.float32) for k, v in st.items()}


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def _gguf_name(k: str) -> str:
    if k in GGUF_NAMES:
        return GGUF_NAMES[k]
    i = k.split(".")[2]
    rest = k.split(".", 3)[3]
    return f"blk.{i}." + {"mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                          "mlp.down_proj.weight": "ffn_down.weight",
                          "post_attention_layernorm.weight": "ffn_norm.weight"}[rest]


def test_cross_format_gguf_q4k_and_int8_onnx(tmp_path: Path) -> None:
    from modeltrace.formats import gguf_write, onnx_write  # our own writers: never a reason to skip
    st = _wide_state(1)
    a = tt.save_model(tmp_path / "a", st)
    g = gguf_write.write_gguf(tmp_path / "b.gguf", {_gguf_name(k): v for k, v in st.items()}, qtype="Q4_K")
    o = onnx_write.write_onnx(tmp_path / "b.onnx", st, quantize="int8")
    other = tt.save_model(tmp_path / "c", _wide_state(2))
    og = gguf_write.write_gguf(tmp_path / "c.gguf", {_gguf_name(k): v for k, v in _wide_state(2).items()}, qtype="Q4_K")
    for b in (g, o):
        r = _compare(a, b)
        assert r.verdict == "derived" and _p(r, "weight-identity") < 1e-100, b
        assert r.rename_map or b.suffix == ".onnx"
    r = _compare(a, og)
    assert r.verdict == "independent"
    assert _compare(a, other).verdict == "independent"


def test_width_pruned_mlp_is_derived_on_the_kept_units(a_dir: Path, base_state, model_dir) -> None:  # type: ignore[no-untyped-def]
    keep = np.sort(np.random.default_rng(0).choice(tt.FF, 96, replace=False))
    state = dict(base_state)
    for i in tt.layer_ids(base_state):
        p = f"model.layers.{i}.mlp."
        state[p + "gate_proj.weight"] = base_state[p + "gate_proj.weight"][keep]
        state[p + "up_proj.weight"] = base_state[p + "up_proj.weight"][keep]
        state[p + "down_proj.weight"] = np.ascontiguousarray(base_state[p + "down_proj.weight"][:, keep])
    r = _compare(a_dir, model_dir("B-pruned", state))
    assert r.verdict == "derived" and _p(r, "weight-permutation") < 1e-30
    ev = next(e for e in r.evidence if e.method == "weight-permutation")
    assert {(x["units_a"], x["units_b"]) for x in ev.details["layers"]} == {(tt.FF, 96)}
