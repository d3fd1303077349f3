"""`weight-heads`: attention kept while the MLPs were replaced is caught; independent models are not; the null is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.compare import compare
from modeltrace.evidence import METHODS
from modeltrace.evidence.weights_heads import WeightHeadsMethod, circuits
from modeltrace.model import Model
from modeltrace.stats.nulls import fixed_point_tail

D, HEADS, FF, LAYERS, VOCAB = 64, 8, 96, 6, 120


def _llama(rng: np.random.Generator, kv: int = HEADS) -> dict[str, np.ndarray]:
    hd = D // HEADS
    st = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, D)), "model.norm.weight": np.ones(D),
          "lm_head.weight": rng.standard_normal((VOCAB, D))}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        st[p + "self_attn.q_proj.weight"] = rng.standard_normal((D, D)) * 0.1
        st[p + "self_attn.k_proj.weight"] = rng.standard_normal((kv * hd, D)) * 0.1
        st[p + "self_attn.v_proj.weight"] = rng.standard_normal((kv * hd, D)) * 0.1
        st[p + "self_attn.o_proj.weight"] = rng.standard_normal((D, D)) * 0.1
        st[p + "mlp.gate_proj.weight"] = rng.standard_normal((FF, D)) * 0.1
        st[p + "mlp.up_proj.weight"] = rng.standard_normal((FF, D)) * 0.1
        st[p + "mlp.down_proj.weight"] = rng.standard_normal((D, FF)) * 0.1
        st[p + "input_layernorm.weight"] = np.ones(D)
        st[p + "post_attention_layernorm.weight"] = np.ones(D)
    return {k: np.asarray(v, np.float32) for k, v in st.items()}


def _save(folder: Path, st: dict[str, np.ndarray], kv: int = HEADS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in st.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": HEADS,
                                                    "num_key_value_heads": kv, "hidden_size": D}))
    return folder


def _permute_heads(st: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = dict(st)
    hd = D // HEADS
    for i in range(LAYERS):
        p = f"model.layers.{i}.self_attn."
        rows = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in rng.permutation(HEADS)])
        for n in ("q_proj", "k_proj", "v_proj"):
            out[p + n + ".weight"] = st[p + n + ".weight"][rows]
        out[p + "o_proj.weight"] = st[p + "o_proj.weight"][:, rows]
    return out


def _heads(r):  # type: ignore[no-untyped-def]
    return next(e for e in r.evidence if e.method == "weight-heads")


def test_registered_with_its_reference() -> None:
    assert METHODS.get("weight-heads") is WeightHeadsMethod
    assert "ICML 2025" in WeightHeadsMethod.reference


def test_kept_attention_with_replaced_mlps_is_caught(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng)
    fresh = _llama(np.random.default_rng(99))
    b = dict(st)
    for k, w in st.items():
        if ".mlp." in k:
            b[k] = fresh[k]  # the MLPs re-trained from scratch
        elif "self_attn" in k:
            b[k] = w + 0.02 * rng.standard_normal(w.shape).astype(np.float32) * float(w.std())
    with Model.open(str(_save(tmp_path / "a", st))) as ma, Model.open(str(_save(tmp_path / "b", b))) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-identity", "weight-heads"])
    ev = _heads(r)
    assert r.verdict == "derived" and ev.p_value is not None and ev.p_value < 1e-20 and ev.powered
    ident = next(e for e in r.evidence if e.method == "weight-identity")
    assert ident.p_value is not None and ident.p_value > 1e-6  # the MLP test alone misses it
    assert sum(x["fixed"] for x in ev.details["layers"]) == HEADS * LAYERS
    assert sum(x["moved"] for x in ev.details["layers"]) == 0


def test_permuted_heads_are_reported_not_tested(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng)
    b = _permute_heads(st, np.random.default_rng(5))
    with Model.open(str(_save(tmp_path / "a", st))) as ma, Model.open(str(_save(tmp_path / "b", b))) as mb:
        ev = _heads(compare(ma, mb, methods=["weight-match", "weight-heads"]))
    views = ev.details["views"]
    assert views["agree"] == views["kept"] == HEADS * LAYERS and views["moved"] > LAYERS
    assert views["p_if_independent"] < 1e-20 and "permuted" in ev.statement


def test_grouped_query_attention_groups_are_the_units(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng, kv=2)
    with Model.open(str(_save(tmp_path / "a", st, 2))) as ma, Model.open(str(_save(tmp_path / "b", st, 2))) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-heads"])
    ev = _heads(r)
    assert {x["n_b"] for x in ev.details["layers"]} == {2} and not ev.powered


def test_independent_models_are_not_called_derived(tmp_path: Path) -> None:
    ps = []
    for k in range(6):
        a = _save(tmp_path / f"a{k}", _llama(np.random.default_rng(2 * k)))
        b = _save(tmp_path / f"b{k}", _llama(np.random.default_rng(2 * k + 1)))
        with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
            ev = _heads(compare(ma, mb, methods=["weight-match", "weight-heads"]))
        assert ev.powered
        ps.append(ev.p_value)
    assert min(ps) > 1e-4


def test_circuits_do_not_change_with_a_basis_change_inside_a_head(rng: np.random.Generator) -> None:
    hd = D // HEADS
    q, k, v, o = (rng.standard_normal((D, D)) for _ in range(4))
    rot = [np.linalg.qr(rng.standard_normal((hd, hd)))[0] for _ in range(HEADS)]
    big = np.zeros((D, D))
    for h, r in enumerate(rot):
        big[h * hd:(h + 1) * hd, h * hd:(h + 1) * hd] = r
    cols = np.arange(0, D, 2)
    x = circuits(q, k, v, o, HEADS, HEADS, cols)
    y = circuits(big @ q, big @ k, big @ v, o @ big.T, HEADS, HEADS, cols)
    assert x is not None and y is not None
    np.testing.assert_allclose(x, y, atol=1e-9)


@pytest.mark.parametrize("n", [4, 8])
def test_min_attainable_is_the_exact_all_fixed_tail(n: int) -> None:
    import math

    assert fixed_point_tail(n, n, n) == pytest.approx(1 / math.factorial(n))
