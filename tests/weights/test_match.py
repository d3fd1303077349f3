"""Tensor matching: names, renamed prefixes, roles across naming schemes, fused and transposed weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.formats import open_file
from modeltrace.weights import match_sources


def _random_llama(rng: np.random.Generator, layers: int = 2, d: int = 16, ff: int = 40, v: int = 50,
                  prefix: str = "model.") -> dict[str, np.ndarray]:
    st = {prefix + "embed_tokens.weight": rng.standard_normal((v, d)), prefix + "norm.weight": np.ones(d),
          "lm_head.weight": rng.standard_normal((v, d)),
          prefix + "rotary_emb.inv_freq": np.arange(d // 2, dtype=np.float64)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        for n in ("q", "k", "v", "o"):
            st[p + f"self_attn.{n}_proj.weight"] = rng.standard_normal((d, d))
        st[p + "mlp.gate_proj.weight"] = rng.standard_normal((ff, d))
        st[p + "mlp.up_proj.weight"] = rng.standard_normal((ff, d))
        st[p + "mlp.down_proj.weight"] = rng.standard_normal((d, ff))
        st[p + "input_layernorm.weight"] = np.ones(d)
        st[p + "post_attention_layernorm.weight"] = np.ones(d)
    return {k: np.asarray(v, dtype=np.float32) for k, v in st.items()}


def _src(tmp_path: Path, name: str, state: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return open_file(path)


def _check_read(m, pairs=None) -> None:  # type: ignore[no-untyped-def]
    for p in pairs or m.pairs:
        a, b = m.read_a(p), m.read_b(p)
        assert a.shape == b.shape == p.shape, p
        if p.kind not in ("token_embed", "lm_head"):
            np.testing.assert_array_equal(a, b, err_msg=p.key)


def test_same_names_pair_and_fixed_buffers_never_do(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _random_llama(rng)
    m = match_sources(_src(tmp_path, "a", st), _src(tmp_path, "b", st))
    assert m.rename_map == {} and m.unmatched_a == () and m.unmatched_b == ()
    assert all(p.how == "name" for p in m.pairs)
    assert not any("inv_freq" in p.a for p in m.pairs)  # identical in unrelated models: never evidence
    assert m.hidden_size == 16
    assert m.layers("language_model") == [0, 1]
    assert [p.a for p in m.find("mlp_up")] == ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    _check_read(m)


def test_renamed_prefixes_fused_and_transposed(tmp_path: Path, rng: np.random.Generator) -> None:
    a = _random_llama(rng, prefix="llm.model.")
    a["vpm.encoder.layers.0.mlp.fc1.weight"] = rng.standard_normal((12, 8)).astype(np.float32)
    a["vpm.encoder.layers.0.mlp.fc2.weight"] = rng.standard_normal((8, 12)).astype(np.float32)
    a["resampler.kv_proj.weight"] = rng.standard_normal((16, 8)).astype(np.float32)
    a["resampler.attn.in_proj_weight"] = rng.standard_normal((48, 16)).astype(np.float32)
    b: dict[str, np.ndarray] = {}
    for k, v in a.items():
        k2 = k.replace("vpm.", "vison.").replace("resampler.", "projection.")
        b[k2] = v
    for i in range(2):
        p = f"llm.model.layers.{i}."
        qkv = np.concatenate([b.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        b[p + "self_attn.qkv_proj.weight"] = np.ascontiguousarray(qkv.T)  # fused and transposed
        b[p + "mlp.gate_up_proj.weight"] = np.concatenate([b.pop(p + "mlp.gate_proj.weight"),
                                                           b.pop(p + "mlp.up_proj.weight")])
        b[p + "mlp.down_proj.weight"] = np.ascontiguousarray(b[p + "mlp.down_proj.weight"].T)
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    assert m.prefix_map == {"vpm.": "vison.", "resampler.": "projection."}
    assert m.rename_map["vpm.encoder.layers.0.mlp.fc1.weight"] == "vison.encoder.layers.0.mlp.fc1.weight"
    assert m.rename_map["llm.model.layers.1.self_attn.k_proj.weight"] == "llm.model.layers.1.self_attn.qkv_proj.weight"
    assert m.unmatched_a == () and m.unmatched_b == ()
    k1 = m.find("attn_k", layer=1)[0]
    assert (k1.b_rows, k1.b_transpose, k1.how) == ((16, 32), True, "fused")
    assert {t.kind for t in m.transforms} == {"rename", "transpose", "fuse"}
    _check_read(m)


def test_fused_in_a_split_in_b(tmp_path: Path, rng: np.random.Generator) -> None:
    b = _random_llama(rng, layers=1)
    a = dict(b)
    p = "model.layers.0."
    a[p + "mlp.gate_up_proj.weight"] = np.concatenate([a.pop(p + "mlp.gate_proj.weight"), a.pop(p + "mlp.up_proj.weight")])
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    up = m.find("mlp_up", layer=0)[0]
    assert (up.a, up.a_rows, up.b) == (p + "mlp.gate_up_proj.weight", (40, 80), p + "mlp.up_proj.weight")
    _check_read(m)


def test_gguf_names_pair_with_hf_names_by_role(tmp_path: Path, rng: np.random.Generator) -> None:
    a = _random_llama(rng, layers=2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(2):
        hf, g = f"model.layers.{i}.", f"blk.{i}."
        names.update({hf + "self_attn.q_proj.weight": g + "attn_q.weight", hf + "self_attn.k_proj.weight": g + "attn_k.weight",
                      hf + "self_attn.v_proj.weight": g + "attn_v.weight",
                      hf + "self_attn.o_proj.weight": g + "attn_output.weight",
                      hf + "mlp.gate_proj.weight": g + "ffn_gate.weight", hf + "mlp.up_proj.weight": g + "ffn_up.weight",
                      hf + "mlp.down_proj.weight": g + "ffn_down.weight",
                      hf + "input_layernorm.weight": g + "attn_norm.weight",
                      hf + "post_attention_layernorm.weight": g + "ffn_norm.weight"})
    b = {names[k]: v for k, v in a.items() if k in names}
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    assert len(m.pairs) == len(b)
    assert m.rename_map["model.layers.1.mlp.down_proj.weight"] == "blk.1.ffn_down.weight"
    assert all(p.how == "role" for p in m.pairs)
    _check_read(m)


def test_anonymous_transposed_names_pair_by_structure(tmp_path: Path, rng: np.random.Generator) -> None:
    # an ONNX-like export: anonymous names in graph order, every matrix stored (in, out)
    a = _random_llama(rng, layers=2)
    b = {}
    order = ["q", "k", "v", "o"]
    n = 0
    for i in range(2):
        p = f"model.layers.{i}."
        for key in [p + f"self_attn.{x}_proj.weight" for x in order] + [p + "mlp.gate_proj.weight",
                                                                          p + "mlp.up_proj.weight",
                                                                          p + "mlp.down_proj.weight"]:
            b[f"onnx::MatMul_{1000 + n}"] = np.ascontiguousarray(a[key].T)
            n += 1
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    paired = {p.a: p for p in m.pairs}
    assert paired["model.layers.1.self_attn.v_proj.weight"].b == "onnx::MatMul_1009"
    assert all(p.b_transpose for p in m.pairs)  # squares follow the non-square majority
    assert len(m.pairs) == 14
    _check_read(m)


def test_vocabulary_of_different_size_still_pairs_embeddings(tmp_path: Path, rng: np.random.Generator) -> None:
    a = _random_llama(rng, layers=1, v=50)
    b = dict(a)
    b["model.embed_tokens.weight"] = np.concatenate([a["model.embed_tokens.weight"], np.zeros((6, 16), np.float32)])
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    emb = m.find("token_embed")[0]
    assert m.read_a(emb).shape == (50, 16) and m.read_b(emb).shape == (56, 16)


@pytest.mark.parametrize("shape_b", [(40, 17), (41, 16)])
def test_incompatible_shapes_stay_unpaired(tmp_path: Path, rng: np.random.Generator, shape_b: tuple[int, int]) -> None:
    a = _random_llama(rng, layers=1)
    b = dict(a)
    b["model.layers.0.mlp.up_proj.weight"] = rng.standard_normal(shape_b).astype(np.float32)
    m = match_sources(_src(tmp_path, "a", a), _src(tmp_path, "b", b))
    assert "model.layers.0.mlp.up_proj.weight" in m.unmatched_a


def test_excluded_tensors_are_never_paired(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _random_llama(rng)
    st["model.stft_basis"] = rng.standard_normal((8, 8)).astype(np.float32)
    ex = frozenset({"model.stft_basis", "model.layers.0.mlp.up_proj.weight"})
    m = match_sources(_src(tmp_path, "a", st), _src(tmp_path, "b", st), exclude_a=ex, exclude_b=ex)
    assert not {p.a for p in m.pairs} & ex and not {p.b for p in m.pairs} & ex
    assert m.unmatched_a == () and m.unmatched_b == ()
    assert len(m.find("mlp_up")) == 1
