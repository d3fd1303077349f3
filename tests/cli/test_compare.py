"""`modeltrace compare`: the verdict first, the JSON schema of issue 3, exit codes for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from modeltrace.cli import cli

METHODS = ["--method", "weight-match", "--method", "weight-identity", "--method", "weight-permutation"]
TOP_KEYS = {"schema", "a", "b", "verdict", "p_value", "threshold", "reason", "evidence", "transforms", "layer_map",
            "rename_map", "controls", "detection_limit", "controls_required", "controls_missed", "provenance"}
EVIDENCE_KEYS = {"method", "kind", "status", "statement", "null_hypothesis", "statistic", "p_value", "powered",
                 "details"}


def _model(folder: Path, seed: int, rename: str | None = None, noise: float = 0.0) -> Path:
    """A random two-layer Llama-shaped checkpoint (seeded), optionally a noisy, renamed copy."""
    rng = np.random.default_rng(seed)
    st: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((64, 32)),
                                 "model.norm.weight": np.ones(32)}
    for i in range(2):
        p = f"model.layers.{i}."
        st[p + "mlp.gate_proj.weight"] = rng.standard_normal((96, 32))
        st[p + "mlp.up_proj.weight"] = rng.standard_normal((96, 32))
        st[p + "mlp.down_proj.weight"] = rng.standard_normal((32, 96))
        st[p + "post_attention_layernorm.weight"] = np.ones(32)
        st[p + "rotary_emb.inv_freq"] = np.arange(16.0)
    if noise:
        st = {k: v + noise * rng.standard_normal(v.shape) * v.std() for k, v in st.items()}
    if rename:
        st = {k.replace("model.", rename, 1): v for k, v in st.items()}
    folder.mkdir(parents=True)
    save_file({k: np.asarray(v, np.float32) for k, v in st.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmp")
    a = _model(root / "a", 0)
    # B: the same weights under another prefix, with noise; C: unrelated
    b = root / "b"
    b.mkdir()
    from safetensors.numpy import load_file
    st = load_file(str(a / "model.safetensors"))
    rng = np.random.default_rng(5)
    st = {k.replace("model.", "backbone.", 1): v + rng.standard_normal(v.shape).astype(np.float32) * v.std() / 708
          for k, v in st.items()}
    save_file(st, str(b / "model.safetensors"))
    return {"a": a, "b": b, "c": _model(root / "c", 1)}


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, ["compare", *args], catch_exceptions=False)


def _json(*args: str) -> dict[str, Any]:
    res = _run("--json", *METHODS, *args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


def test_json_schema_for_a_derived_pair(models: dict[str, Path]) -> None:
    data = _json(str(models["a"]), str(models["b"]))
    assert set(data) == TOP_KEYS
    assert data["schema"] == "modeltrace.compare/1"
    assert data["verdict"] == "derived" and data["p_value"] < 1e-6
    assert [e["method"] for e in data["evidence"]] == ["fixed-tensors", "weight-match", "weight-identity", "weight-permutation"]
    for e in data["evidence"]:
        assert set(e) == EVIDENCE_KEYS
    assert all("kind" in t and "summary" in t for t in data["transforms"])
    rename = next(t for t in data["transforms"] if t["kind"] == "rename")
    assert rename["prefix_map"] == {"model.": "backbone."}
    assert data["rename_map"]["model.layers.1.mlp.up_proj.weight"] == "backbone.layers.1.mlp.up_proj.weight"
    assert not any("inv_freq" in k for k in data["rename_map"])
    assert [(r["b_layer"], r["a_layer"]) for r in data["layer_map"]] == [(0, 0), (1, 1)]
    assert data["provenance"]["seed"] == 0


def test_model_against_itself_and_against_an_unrelated_one(models: dict[str, Path]) -> None:
    same = _json(str(models["a"]), str(models["a"]))
    assert same["verdict"] == "derived"
    # 96 units in each of 2 layers: all fixed gives 1/96! per layer, Fisher-combined below 1e-290
    ev = {e["method"]: e for e in same["evidence"]}
    assert ev["weight-identity"]["p_value"] < 1e-290
    # weight-permutation counts residual coordinates: all fixed gives about 1/d!
    d = ev["weight-permutation"]["details"]["coordinates"]
    assert ev["weight-permutation"]["p_value"] <= 1 / math.factorial(d)
    other = _json(str(models["a"]), str(models["c"]))
    assert other["verdict"] == "independent" and other["p_value"] > 1e-6


def test_seed_and_threshold_are_recorded(models: dict[str, Path]) -> None:
    data = _json("--seed", "3", "--threshold", "0.5", str(models["a"]), str(models["c"]))
    assert data["provenance"]["seed"] == 3 and data["threshold"] == 0.5


def test_human_output_puts_the_verdict_first(models: dict[str, Path]) -> None:
    res = _run(*METHODS, str(models["a"]), str(models["b"]))
    assert res.exit_code == 0
    first = res.stdout.splitlines()[0]
    assert first.startswith("DERIVED  combined p = ")
    assert "weight-identity" in res.stdout and "prefixes: model. -> backbone." in res.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}", "{a}"], "no such file or folder"),
    (["{a}", "{a}", "--method", "weight-identiy"], ("unknown evidence method 'weight-identiy'; did you mean "
                                                     "'weight-identity'?")),
    (["{bad}", "{a}"], "model.safetensors"),
])
def test_bad_input_exits_2_with_one_line(models: dict[str, Path], tmp_path: Path, args: list[str],
                                         message: str) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    fill = {"missing": str(tmp_path / "nope"), "a": str(models["a"]), "bad": str(bad)}
    res = _run(*[a.format(**fill) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert res.stderr.startswith("error: ")
    assert "Traceback" not in res.output


def test_bad_threshold_is_a_usage_error(models: dict[str, Path]) -> None:
    res = _run("--threshold", "2", str(models["a"]), str(models["a"]))
    assert res.exit_code == 2
    assert "must be a number between 0 and 1" in res.output
