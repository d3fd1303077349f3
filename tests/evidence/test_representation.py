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
    assert ev["representation-cka"].statistic is not None and ev["representation-cka"].statistic > 0.99


def test_independent_models_are_not_derived(models: dict[str, Path]) -> None:
    res = compare(Model.open(str(models["a"])), Model.open(str(models["c"])),
                  methods=["activation-match"], options={"representation": True, "prompts": 32})
    assert res.verdict == "independent", res.evidence[0].statement
