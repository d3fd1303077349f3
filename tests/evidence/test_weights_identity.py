"""`weight-identity` as an evidence method: its null, its power flag, its fallback for models without MLP roles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.evidence import METHODS, CompareContext
from modeltrace.evidence.weights_identity import WeightIdentityMethod
from modeltrace.model import Model


def _save(folder: Path, st: dict[str, np.ndarray]) -> Model:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, np.float32) for k, v in st.items()}, str(folder / "model.safetensors"))
    return Model.open(str(folder))


def _mlp(rng: np.random.Generator, units: int, d: int = 24, layers: int = 3) -> dict[str, np.ndarray]:
    st = {}
    for i in range(layers):
        p = f"model.layers.{i}.mlp."
        st[p + "up_proj.weight"] = rng.standard_normal((units, d))
        st[p + "down_proj.weight"] = rng.standard_normal((d, units))
    return st


def _cnn(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"features.0.weight": rng.standard_normal((32, 3, 3, 3)), "features.0.bias": rng.standard_normal(32),
            "features.3.weight": rng.standard_normal((64, 32, 3, 3)), "bn.weight": np.ones(64),
            "classifier.weight": rng.standard_normal((10, 64))}


def test_registered_with_its_reference() -> None:
    cls = METHODS.get("weight-identity")
    assert cls is WeightIdentityMethod
    assert "ICML 2025" in cls.reference and cls.null_hypothesis.startswith("A and B were trained")


def test_copy_is_rejected_and_layers_are_combined_with_fisher(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _mlp(rng, 64)
    ev = WeightIdentityMethod().run(CompareContext(_save(tmp_path / "a", st), _save(tmp_path / "b", st)))
    assert ev.status == "ok" and ev.powered
    assert ev.p_value is not None and ev.p_value < 1e-200
    assert ev.statistic == 3 * 64
    assert ev.details["combination"] == "fisher" and len(ev.details["layers"]) == 3
    assert {x["fixed"] for x in ev.details["layers"]} == {64}


def test_unrelated_models_are_not_rejected(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", _mlp(np.random.default_rng(1), 64))
    b = _save(tmp_path / "b", _mlp(np.random.default_rng(2), 64))
    ev = WeightIdentityMethod().run(CompareContext(a, b))
    assert ev.p_value is not None and ev.p_value > 1e-3 and ev.powered


def test_too_few_units_is_not_powered(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _mlp(rng, 3, layers=1)
    ctx = CompareContext(_save(tmp_path / "a", st), _save(tmp_path / "b", st), options={"threshold": 1e-6})
    ev = WeightIdentityMethod().run(ctx)
    assert not ev.powered and ev.details["reason"] == "too few comparable units"
    # 3 of 3 fixed: P(F >= 3) = 1/3!, randomized within the atom: U/6
    assert ev.details["min_attainable_p"] == pytest.approx(1 / 6)
    assert ev.p_value is not None and 0 < ev.p_value <= 1 / 6


def test_models_without_mlp_roles_fall_back_to_paired_weights(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _cnn(rng)
    a = _save(tmp_path / "a", st)
    ev = WeightIdentityMethod().run(CompareContext(a, _save(tmp_path / "b", st)))
    assert ev.details["combination"] == "bonferroni"
    assert {x["a"] for x in ev.details["layers"]} == {"features.0.weight", "features.3.weight", "classifier.weight"}
    assert ev.p_value is not None and ev.p_value < 1e-30
    ind = WeightIdentityMethod().run(CompareContext(a, _save(tmp_path / "c", _cnn(np.random.default_rng(9)))))
    assert ind.p_value is not None and ind.p_value > 1e-3


def test_norm_gains_and_buffers_alone_are_nothing_comparable(tmp_path: Path) -> None:
    # the traps: gains of 1 and identical buffers in two unrelated models
    st = {"model.layers.0.input_layernorm.weight": np.ones(64), "model.rotary_emb.inv_freq": np.arange(32.0),
          "model.norm.weight": np.ones(64)}
    ev = WeightIdentityMethod().run(CompareContext(_save(tmp_path / "a", st), _save(tmp_path / "b", st)))
    assert not ev.powered and ev.p_value == 1.0
    assert ev.details["reason"].startswith("nothing comparable")


def test_needs_weight_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    m = Model.open(str(tmp_path / "a"))
    assert WeightIdentityMethod().needs(CompareContext(m, m)) == "model A has no weight files"
