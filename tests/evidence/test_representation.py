from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from tinylm import write_tiny_llama

from modeltrace.compare import compare
from modeltrace.model import Model


def rotate_copy(src: Path, dst: Path, seed: int = 0) -> None:
    """B = A with the residual stream rotated by a random orthogonal matrix (norm gains folded first)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] @ q.T
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        for norm, mats in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                           ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            gain = sd[p + norm + ".weight"]
            for m in mats:
                sd[p + m + ".weight"] = (sd[p + m + ".weight"] * gain) @ q.T
            sd[p + norm + ".weight"] = torch.ones_like(gain)
        for m in ("self_attn.o_proj", "mlp.down_proj"):
            sd[p + m + ".weight"] = q @ sd[p + m + ".weight"]
    gain = sd["model.norm.weight"]
    sd["lm_head.weight"] = (sd["lm_head.weight"] * gain) @ q.T
    sd["model.norm.weight"] = torch.ones_like(gain)
    model.load_state_dict(sd)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rep")
    out = {"a": write_tiny_llama(root / "a", seed=0, chars=True), "c": write_tiny_llama(root / "c", seed=1, chars=True)}
    # give A non-trivial norm gains so folding them matters
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(out["a"])
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.3 * torch.rand_like(p))
    m.save_pretrained(out["a"])
    rotate_copy(out["a"], root / "b")
    out["b"] = root / "b"
    return out


def _logits(path: Path) -> np.ndarray:
    from transformers import LlamaForCausalLM
    m = LlamaForCausalLM.from_pretrained(path)
    with torch.no_grad():
        return m(torch.tensor([[1, 5, 7, 9, 11]])).logits.numpy()


def test_rotation_keeps_the_function(models: dict[str, Path]) -> None:
    np.testing.assert_allclose(_logits(models["a"]), _logits(models["b"]), atol=2e-4)


def test_rotated_copy_is_caught(models: dict[str, Path]) -> None:
    res = compare(Model.open(str(models["a"])), Model.open(str(models["b"])),
                  methods=["activation-match", "representation-cka"], options={"representation": True, "prompts": 32})
    ev = {e.method: e for e in res.evidence}
    assert res.verdict == "derived", ev["activation-match"].statement
    assert ev["activation-match"].p_value is not None and ev["activation-match"].p_value < 1e-6
    assert ev["representation-cka"].status == "skipped"  # no references: CKA is not tested


def test_independent_models_are_not_derived(models: dict[str, Path]) -> None:
    res = compare(Model.open(str(models["a"])), Model.open(str(models["c"])),
                  methods=["activation-match"], options={"representation": True, "prompts": 32})
    assert res.verdict == "independent", res.evidence[0].statement


def _noised_copy(src: Path, dst: Path, rel: float, seed: int = 0) -> Path:
    """B = A with Gaussian noise of `rel` times each weight's own spread (a stand-in for a fine-tune)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * rel * float(p.std()))
    m.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def cka_models(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cka")
    out = {"a": models["a"], "ft": _noised_copy(models["a"], root / "ft", 0.3)}
    for s in (2, 3, 4):
        out[f"r{s}"] = write_tiny_llama(root / f"r{s}", seed=s, chars=True)
    return out


def _cka(a: Path, b: Path, refs: list[object]):  # type: ignore[no-untyped-def]
    res = compare(Model.open(str(a)), Model.open(str(b)), methods=["representation-cka"],
                  options={"representation": True, "prompts": 200, "references": refs})
    return res, res.evidence[0]


def test_cka_against_references_catches_a_perturbed_copy(cka_models: dict[str, Path]) -> None:
    refs = [str(cka_models["r2"]), str(cka_models["r3"])]
    res, ev = _cka(cka_models["a"], cka_models["ft"], refs)
    assert res.verdict == "derived" and ev.powered and len(ev.details["tests"]) == 4, ev.statement
    res, ev = _cka(cka_models["a"], cka_models["r4"], refs)
    assert res.verdict != "derived" and ev.p_value is not None and ev.p_value > 1e-3, ev.statement


def test_cka_needs_two_local_references(cka_models: dict[str, Path]) -> None:
    _, ev = _cka(cka_models["a"], cka_models["ft"], [str(cka_models["r2"])])
    assert ev.status == "skipped" and ev.p_value is None and not ev.powered
    assert ev.statement == ("needs at least 2 reference models known to be unrelated to A and B "
                            "(--reference, given 1): the null is measured on them")
    _, ev = _cka(cka_models["a"], cka_models["ft"], ["http://127.0.0.1:9/v1#m", str(cka_models["r2"])])
    assert ev.status == "skipped" and "not a local model" in ev.statement


def test_cka_on_few_prompts_is_not_powered_and_says_so(cka_models: dict[str, Path]) -> None:
    refs = [str(cka_models["r2"]), str(cka_models["r3"])]
    res = compare(Model.open(str(cka_models["a"])), Model.open(str(cka_models["a"])),
                  methods=["representation-cka"], options={"representation": True, "prompts": 48, "references": refs})
    ev = res.evidence[0]
    assert not ev.powered and ev.details["min_attainable_p"] == 2.0 ** -6
    assert ev.statement.endswith("(not powered: 6 blocks of 8 prompts cannot reach p < 1e-06; the smallest "
                                 "attainable p is 0.0156)")


def test_activation_match_power_follows_the_threshold(models: dict[str, Path]) -> None:
    a, c = Model.open(str(models["a"])), Model.open(str(models["c"]))
    res = compare(a, c, methods=["activation-match"],
                  options={"representation": True, "prompts": 16, "neurons": 2, "threshold": 1e-6})
    ev = res.evidence[0]
    assert not ev.powered and "not powered" in ev.statement and ev.details["min_attainable_p"] > 1e-6


def test_activation_match_noise_control_is_detected(models: dict[str, Path]) -> None:
    from modeltrace.evidence.base import CompareContext
    from modeltrace.evidence.representation import ActivationMatchMethod

    a, c = Model.open(str(models["a"])), Model.open(str(models["c"]))
    ctx = CompareContext(a, c, options={"representation": True, "prompts": 32})
    method = ActivationMatchMethod()
    ev = method.run(ctx)
    assert ev.p_value is not None and ev.p_value > 1e-3  # independent models: nothing found
    (control,) = method.controls(ctx, ev)
    assert control.kind == "noise" and control.strength == 0.1 and control.detected and control.p_value < 1e-6
