"""`weight-permutation`: permuted copies caught with an exact null; its blind spot stated; its calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from scipy import stats

from modeltrace.evidence import CompareContext
from modeltrace.evidence.weights_identity import WeightIdentityMethod
from modeltrace.evidence.weights_permutation import WeightPermutationMethod, coordinate_fixed_points
from modeltrace.model import Model


def _save(folder: Path, st: dict[str, np.ndarray]) -> Model:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in st.items()}, str(folder / "model.safetensors"))
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


def _permute_units(st: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = dict(st)
    for i in range(2):
        p = f"model.layers.{i}."
        perm = rng.permutation(st[p + "mlp.up_proj.weight"].shape[0])
        out[p + "mlp.gate_proj.weight"] = st[p + "mlp.gate_proj.weight"][perm]
        out[p + "mlp.up_proj.weight"] = st[p + "mlp.up_proj.weight"][perm]
        out[p + "mlp.down_proj.weight"] = st[p + "mlp.down_proj.weight"][:, perm]
    return out


def _transform_residual(st: dict[str, np.ndarray], r: np.ndarray) -> dict[str, np.ndarray]:
    """x' = x r: embeddings E r, input rows W diag(g) r, output projections r^T W, gains 1."""
    d = r.shape[0]
    out = {"model.embed_tokens.weight": st["model.embed_tokens.weight"] @ r}
    for i in range(2):
        p = f"model.layers.{i}."
        g = st[p + "post_attention_layernorm.weight"]
        out[p + "mlp.gate_proj.weight"] = (st[p + "mlp.gate_proj.weight"] * g) @ r
        out[p + "mlp.up_proj.weight"] = (st[p + "mlp.up_proj.weight"] * g) @ r
        out[p + "mlp.down_proj.weight"] = r.T @ st[p + "mlp.down_proj.weight"]
        out[p + "post_attention_layernorm.weight"] = np.ones(d)
    return out


def _relabel_residual(st: dict[str, np.ndarray], perm: np.ndarray) -> dict[str, np.ndarray]:
    """The null's symmetry: every residual coordinate c of the model becomes coordinate perm[c] (gains kept)."""
    inv = np.argsort(perm)
    out = {"model.embed_tokens.weight": st["model.embed_tokens.weight"][:, inv]}
    for i in range(2):
        p = f"model.layers.{i}."
        out[p + "mlp.gate_proj.weight"] = st[p + "mlp.gate_proj.weight"][:, inv]
        out[p + "mlp.up_proj.weight"] = st[p + "mlp.up_proj.weight"][:, inv]
        out[p + "mlp.down_proj.weight"] = st[p + "mlp.down_proj.weight"][inv]
        out[p + "post_attention_layernorm.weight"] = st[p + "post_attention_layernorm.weight"][inv]
    return out


def test_permuted_copy_is_caught_at_the_exact_floor(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng)
    a, b = _save(tmp_path / "a", st), _save(tmp_path / "b", _permute_units(st, rng))
    ctx = CompareContext(a, b)
    ev = WeightPermutationMethod().run(ctx)
    assert ev.status == "ok" and ev.powered and ev.statistic == 24
    assert ev.p_value is not None and ev.p_value <= 1 / 6.2e23  # 24! = 6.2e23: all 24 coordinates fixed
    perm = next(t for t in ctx.transforms if t.kind == "permute")
    assert perm.estimates["target"] == "mlp_units" and sum(perm.estimates["moved_per_layer"].values()) >= 150
    ident = WeightIdentityMethod().run(CompareContext(a, b))  # the identity test cannot see permuted units
    assert ident.p_value is not None and ident.p_value > 1e-4


def test_rotated_and_permuted_copy_is_its_stated_blind_spot(tmp_path: Path, rng: np.random.Generator) -> None:
    st = _llama(rng)
    r = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    a, b = _save(tmp_path / "a", st), _save(tmp_path / "b", _permute_units(_transform_residual(st, r), rng))
    ev = WeightPermutationMethod().run(CompareContext(a, b))
    assert ev.p_value is not None and ev.p_value > 1e-3
    assert ev.details["blind_to"] == "copies whose residual stream was rotated or permuted (see weight-identity)"
    assert "view_agreement" in ev.details and all("p_value" not in x for x in ev.details["view_agreement"])


def test_unit_alignment_does_not_see_the_residual_labelling(tmp_path: Path, rng: np.random.Generator) -> None:
    st_a, st_b = _llama(rng), _llama(rng)
    a = _save(tmp_path / "a", st_a)
    b = _save(tmp_path / "b", st_b)
    b2 = _save(tmp_path / "b2", _relabel_residual(st_b, rng.permutation(24)))
    e1 = WeightPermutationMethod().run(CompareContext(a, b))
    e2 = WeightPermutationMethod().run(CompareContext(a, b2))
    strip = [{k: v for k, v in x.items() if k != "mean_profile_cosine"} for x in e1.details["layers"]]
    assert strip == [{k: v for k, v in x.items() if k != "mean_profile_cosine"} for x in e2.details["layers"]]


def test_unrelated_models_record_no_transform(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", _llama(np.random.default_rng(1)))
    b = _save(tmp_path / "b", _llama(np.random.default_rng(2)))
    ctx = CompareContext(a, b)
    ev = WeightPermutationMethod().run(ctx)
    assert ev.p_value is not None and ev.p_value > 1e-3
    assert ctx.transforms == []


def test_threshold_reaches_the_power_check(tmp_path: Path, rng: np.random.Generator) -> None:
    a = _save(tmp_path / "a", _llama(rng))
    ev = WeightPermutationMethod().run(CompareContext(a, a, options={"threshold": 1e-30}))
    assert not ev.powered  # 24 coordinates: the smallest attainable p is 1/24! = 1.6e-24
    assert ev.statement.endswith("(too few coordinates to reach p < 1e-30: best attainable 1.61e-24)")
    assert WeightPermutationMethod().run(CompareContext(a, a, options={"threshold": 1e-20})).powered


def test_without_token_embeddings_it_does_not_test(tmp_path: Path, rng: np.random.Generator) -> None:
    st = {k: v for k, v in _llama(rng).items() if "embed" not in k}
    m = _save(tmp_path / "a", st)
    ev = WeightPermutationMethod().run(CompareContext(m, m))
    assert ev.p_value is None and not ev.powered
    assert ev.statement == "not tested: no token embeddings of shared tokens to align B's MLP units with A's"


def test_coordinate_null_is_exact_even_for_a_copy_relabelled_at_random() -> None:
    """Given A and B's orbit, F's law is exact: relabel a *copy* of A's coordinates uniformly, 4,000 times."""
    rng = np.random.default_rng(7)
    d = 12
    xa = rng.standard_normal((d, 40))
    xb0 = xa + 0.3 * rng.standard_normal((d, 40))  # strongly related to A: only rho is random
    ps = []
    for t in range(4000):
        perm = rng.permutation(d)
        ps.append(coordinate_fixed_points(xa, xb0[np.argsort(perm)], seed=t)[2])
    ps_arr = np.array(ps)
    for level in (0.1, 0.01):
        k = int((ps_arr < level).sum())
        lo, hi = stats.binomtest(k, len(ps), level).proportion_ci(0.999, method="exact")
        assert lo <= level <= hi, (level, k)
    assert stats.kstest(ps_arr, "uniform").pvalue > 1e-3


def test_a_shared_position_table_breaks_the_symmetry_and_the_test_does_not_run(tmp_path: Path) -> None:
    table = np.sin(np.arange(32)[:, None] / (1 + np.arange(24))[None, :])  # fixed, coordinate-specific
    st_a, st_b = _llama(np.random.default_rng(1)), _llama(np.random.default_rng(2))
    a = _save(tmp_path / "a", {**st_a, "model.embed_positions.weight": table})
    b = _save(tmp_path / "b", {**st_b, "model.embed_positions.weight": table})
    ev = WeightPermutationMethod().run(CompareContext(a, b))
    assert ev.p_value is None and not ev.powered
    assert ev.statement == ("not tested: A and B carry the same position table (model.embed_positions.weight): a "
                            "fixed tensor written into the residual stream breaks the coordinate symmetry this "
                            "test's null rests on")
    learned = _save(tmp_path / "c", {**st_b, "model.embed_positions.weight": table + 0.1})
    assert WeightPermutationMethod().run(CompareContext(a, learned)).p_value is not None
