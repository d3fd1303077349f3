"""`weight-permutation`: blind spots of the identity test covered (permuted units), its findings recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from modeltrace.evidence import CompareContext
from modeltrace.evidence.weights_identity import WeightIdentityMethod
from modeltrace.evidence.weights_permutation import WeightPermutationMethod
from modeltrace.model import Model


def _save(folder: Path, st: dict[str, np.ndarray]) -> Model:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, np.float32) for k, v in st.items()}, str(folder / "model.safetensors"))
    return Model.open(str(folder))


def _llama(rng: np.random.Generator, units: int = 80, d: int = 24) -> dict[str, np.ndarray]:
    st = {"model.embed_tokens.weight": rng.standard_normal((200, d))}
    for i in range(2):
        p = f"model.layers.{i}."
        st[p + "mlp.gate_proj.weight"] = rng.standard_normal((units, d))
        st[p + "mlp.up_proj.weight"] = rng.standard_normal((units, d))
        st[p + "mlp.down_proj.weight"] = rng.standard_normal((d, units))
        st[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
    return st


def _permute_and_rotate(st: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    d = st["model.embed_tokens.weight"].shape[1]
    r = np.linalg.qr(rng.standard_normal((d, d)))[0]
    out = {"model.embed_tokens.weight": st["model.embed_tokens.weight"] @ r}
    for i in range(2):
        p = f"model.layers.{i}."
        g = st[p + "post_attention_layernorm.weight"]
        perm = rng.permutation(st[p + "mlp.up_proj.weight"].shape[0])
        out[p + "mlp.gate_proj.weight"] = (st[p + "mlp.gate_proj.weight"] * g)[perm] @ r
        out[p + "mlp.up_proj.weight"] = (st[p + "mlp.up_proj.weight"] * g)[perm] @ r
        out[p + "mlp.down_proj.weight"] = r.T @ st[p + "mlp.down_proj.weight"][:, perm]
        out[p + "post_attention_layernorm.weight"] = np.ones(d)
    return out


def test_permuted_and_rotated_copy(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng)
    a, b = _save(tmp_path / "a", st), _save(tmp_path / "b", _permute_and_rotate(st, rng))
    ctx = CompareContext(a, b)
    ev = WeightPermutationMethod().run(ctx)
    assert ev.status == "ok" and ev.powered and ev.p_value is not None and ev.p_value < 1e-100
    assert ev.statistic == 160
    kinds = [t.kind for t in ctx.transforms]
    assert "rotate" in kinds and "permute" in kinds
    perm = next(t for t in ctx.transforms if t.kind == "permute")
    assert sum(perm.estimates["moved_per_layer"].values()) >= 150
    ident = WeightIdentityMethod().run(ctx)  # rotation undone, permutation not: the identity test sees nothing
    assert ident.p_value is not None and ident.p_value > 1e-4


def test_unrelated_models_record_no_transform(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", _llama(np.random.default_rng(1)))
    b = _save(tmp_path / "b", _llama(np.random.default_rng(2)))
    ctx = CompareContext(a, b)
    ev = WeightPermutationMethod().run(ctx)
    assert ev.p_value is not None and ev.p_value > 1e-3
    assert ctx.transforms == []
    assert ev.details["residual"]["kind"] == "identity"


def test_mlp_without_output_projection_is_not_powered(tmp_path: Path, rng: np.random.Generator) -> None:
    st = {k: v for k, v in _llama(rng).items() if "down_proj" not in k}
    m = _save(tmp_path / "a", st)
    ev = WeightPermutationMethod().run(CompareContext(m, m))
    assert not ev.powered and ev.details["reason"].startswith("nothing comparable")
