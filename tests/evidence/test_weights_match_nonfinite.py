"""A copy with NaN and Inf values in every tensor is still derived; the zeroed values are counted, nothing is printed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.compare import compare
from modeltrace.model import Model


def _llama(rng: np.random.Generator, d: int = 32, ff: int = 96, v: int = 80, layers: int = 2) -> dict[str, np.ndarray]:
    st = {"model.embed_tokens.weight": rng.standard_normal((v, d)), "model.norm.weight": 1 + 0.1 * rng.standard_normal(d),
          "lm_head.weight": rng.standard_normal((v, d))}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in "qkvo":
            st[p + f"self_attn.{n}_proj.weight"] = rng.standard_normal((d, d))
        st[p + "mlp.gate_proj.weight"] = rng.standard_normal((ff, d))
        st[p + "mlp.up_proj.weight"] = rng.standard_normal((ff, d))
        st[p + "mlp.down_proj.weight"] = rng.standard_normal((d, ff))
        st[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
        st[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(d)
    return {k: np.asarray(x, np.float32) for k, x in st.items()}


def _save(folder: Path, st: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(st, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4}))
    return folder


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_copy_with_one_nonfinite_value_per_tensor_is_derived_and_counted(
        bad: float, tmp_path: Path, rng: np.random.Generator, capfd: pytest.CaptureFixture[str]) -> None:
    st = _llama(rng)
    corrupt = {}
    for k, x in st.items():
        y = x.copy()
        y.reshape(-1)[rng.integers(y.size)] = bad
        corrupt[k] = y
    a, b = _save(tmp_path / "a", st), _save(tmp_path / "b", corrupt)
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=["weight-match", "weight-identity", "weight-permutation", "diagnosis"])
    assert r.verdict == "derived"
    assert all(e.status == "ok" for e in r.evidence), [(e.method, e.statement) for e in r.evidence if e.status != "ok"]
    match = next(e for e in r.evidence if e.method == "weight-match")
    zeroed = match.details["matching"]["nonfinite_zeroed"]
    assert zeroed["a"] == {} and set(zeroed["b"].values()) == {1}
    assert "model.layers.0.mlp.up_proj.weight" in zeroed["b"]
    assert "non-finite values zeroed" in match.statement
    out = capfd.readouterr()
    assert out.out == "" and out.err == ""
