"""A merge given its base and task models: task arithmetic and TIES named with their coefficients, via `--other`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from modeltrace.cli import cli
from modeltrace.diagnose.merge import merge_from_parts, ties_direction


def _base(rng: np.random.Generator) -> dict[str, np.ndarray]:
    st = {"model.embed_tokens.weight": rng.standard_normal((64, 32))}
    for i in range(3):
        p = f"model.layers.{i}.mlp."
        st[p + "up_proj.weight"] = rng.standard_normal((80, 32))
        st[p + "gate_proj.weight"] = rng.standard_normal((80, 32))
        st[p + "down_proj.weight"] = rng.standard_normal((32, 80))
    return {k: v.astype(np.float32) for k, v in st.items()}


def _save(folder: Path, st: dict[str, np.ndarray]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in st.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(folder)


def _tasks(base: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    return [{k: v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()} for _ in range(2)]


def test_task_arithmetic_coefficients_are_recovered(rng: np.random.Generator) -> None:
    base = _base(rng)
    t1, t2 = _tasks(base, rng)
    b = {k: base[k] + 0.6 * (t1[k] - base[k]) + 0.3 * (t2[k] - base[k]) for k in base}
    fit = merge_from_parts((base[k], b[k], [t1[k], t2[k]]) for k in base)
    assert fit.method == "task-arithmetic" and fit.r2 > 0.999
    assert fit.lambdas == pytest.approx((0.6, 0.3), abs=1e-3)


def test_ties_merge_is_named_with_density_and_scale(rng: np.random.Generator) -> None:
    base = _base(rng)
    t1, t2 = _tasks(base, rng)
    b = {k: base[k] + 0.8 * ties_direction([(t1[k] - base[k]).ravel(), (t2[k] - base[k]).ravel()], 0.2)
         .reshape(base[k].shape).astype(np.float32) for k in base}
    fit = merge_from_parts((base[k], b[k], [t1[k], t2[k]]) for k in base)
    assert fit.method == "ties" and fit.density == 0.2 and fit.r2 > 0.99
    assert fit.lambdas[0] == pytest.approx(0.8, abs=0.01)
    assert fit.fits["task-arithmetic"] < fit.r2 - 0.1


def test_ties_direction_trims_elects_and_averages() -> None:
    d1 = np.array([1.0, -2.0, 0.1, 3.0])
    d2 = np.array([0.5, 4.0, -0.1, -1.0])
    # density 0.5 keeps the two largest of each: d1 -> [0,-2,0,3], d2 -> [0,4,0,-1]; signs elected: [0,+,0,+]
    np.testing.assert_allclose(ties_direction([d1, d2], 0.5), [0.0, 4.0, 0.0, 3.0])
    np.testing.assert_allclose(ties_direction([d1], 1.0), d1)


def test_other_is_repeatable_and_diagnoses_the_merge(tmp_path: Path, rng: np.random.Generator) -> None:
    base = _base(rng)
    t1, t2 = _tasks(base, rng)
    b = {k: base[k] + 0.5 * (t1[k] - base[k]) + 0.5 * (t2[k] - base[k]) for k in base}
    a_ref, b_ref = _save(tmp_path / "base", base), _save(tmp_path / "merged", b)
    t_refs = [_save(tmp_path / "t1", t1), _save(tmp_path / "t2", t2)]
    out = CliRunner().invoke(cli, ["compare", a_ref, b_ref, "--json", "--method", "weight-match", "--method",
                                   "diagnosis", "--other", t_refs[0], "--other", t_refs[1]],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    res = json.loads(out.output)
    merge = next(t for t in res["transforms"] if t["kind"] == "merge")
    assert merge["method"] == "task-arithmetic" and merge["others"] == t_refs
    assert merge["lambdas"] == pytest.approx([0.5, 0.5], abs=1e-3)
    diag = next(e for e in res["evidence"] if e["method"] == "diagnosis")
    assert diag["details"]["merge_parts"]["r2"] > 0.999
