"""The `diagnosis` evidence method on tiny safetensors models built here, where the truth is known."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants
from safetensors.numpy import save_file

from modeltrace.compare import CompareResult, compare
from modeltrace.diagnose.cast import round_bf16
from modeltrace.evidence import METHODS, Transform
from modeltrace.model import Model

H, INTER, LAYERS, VOCAB = 64, 160, 4, 256
Tensors = dict[str, np.ndarray]


def llama(rng: np.random.Generator, layers: int = LAYERS, prefix: str = "model.") -> Tensors:
    t: Tensors = {f"{prefix}embed_tokens.weight": (rng.standard_normal((VOCAB, H)) * 0.02).astype(np.float32)}
    for i in range(layers):
        p = f"{prefix}layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = (rng.standard_normal((H, H)) * 0.05).astype(np.float32)
        t[p + "mlp.gate_proj.weight"] = (rng.standard_normal((INTER, H)) * 0.05).astype(np.float32)
        t[p + "mlp.up_proj.weight"] = (rng.standard_normal((INTER, H)) * 0.05).astype(np.float32)
        t[p + "mlp.down_proj.weight"] = (rng.standard_normal((H, INTER)) * 0.03).astype(np.float32)
        t[p + "input_layernorm.weight"] = (1 + 0.05 * rng.standard_normal(H)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.05 * rng.standard_normal(H)).astype(np.float32)
    t[f"{prefix}norm.weight"] = np.ones(H, np.float32)  # untrained gain: identical in every model
    t["lm_head.weight"] = (rng.standard_normal((VOCAB, H)) * 0.02).astype(np.float32)
    return t


def save(root: Path, name: str, tensors: Tensors, tokenizer: dict[str, Any] | None = None) -> Model:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
    if tokenizer is not None:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    return Model.open(str(folder))


def diagnose(tmp_path: Path, a: Tensors, b: Tensors, c: Tensors | None = None, **kw: Any) -> CompareResult:
    ma, mb = save(tmp_path, "a", a, kw.pop("tok_a", None)), save(tmp_path, "b", b, kw.pop("tok_b", None))
    options = {"other": save(tmp_path, "c", c)} if c is not None else {}
    result = compare(ma, mb, methods=["diagnosis"], options=options, seed=0)
    (ev,) = [e for e in result.evidence if e.method == "diagnosis"]
    assert ev.status == "ok", ev.statement
    assert ev.p_value is None and ev.method == "diagnosis"
    return result


def kinds(result: CompareResult) -> list[str]:
    return [t.kind for t in result.transforms]


def one(result: CompareResult, kind: str) -> Transform:
    got = [t for t in result.transforms if t.kind == kind]
    assert len(got) == 1, kinds(result)
    return got[0]


def mapped(a: Tensors, fn: Callable[[np.ndarray], np.ndarray]) -> Tensors:
    return {k: fn(v) for k, v in a.items()}


@pytest.fixture
def model_a(rng: np.random.Generator) -> Tensors:
    return llama(rng)


def test_registered_as_a_descriptive_weight_method() -> None:
    cls = METHODS.get("diagnosis")
    assert (cls.name, cls.kind, cls.stage) == ("diagnosis", "weights", 20)


def test_identical_copy(tmp_path: Path, model_a: Tensors) -> None:
    r = diagnose(tmp_path, model_a, model_a)
    assert kinds(r) == ["identical"]


@pytest.mark.parametrize("storage,dtype", [("f16", "f16"), ("bf16", "bf16")])
def test_cast(tmp_path: Path, model_a: Tensors, storage: str, dtype: str) -> None:
    fn = (lambda v: v.astype(np.float16)) if storage == "f16" else round_bf16
    r = diagnose(tmp_path, model_a, mapped(model_a, fn))
    assert kinds(r) == ["cast"]
    assert one(r, "cast").estimates["dtype"] == dtype


@pytest.mark.parametrize("qtype,error", [(QT.Q8_0, (0.002, 0.01)), (QT.Q4_0, (0.05, 0.15))])
def test_quantized(tmp_path: Path, model_a: Tensors, qtype: QT, error: tuple[float, float]) -> None:
    b = mapped(model_a, lambda v: quants.dequantize(quants.quantize(v, qtype), qtype) if v.ndim == 2 else v)
    r = diagnose(tmp_path, model_a, b)
    assert kinds(r) == ["quantize"]
    est = one(r, "quantize").estimates
    assert est["scheme"] == qtype.name
    assert error[0] < est["rel_rms_error"] < error[1]


def test_quantized_independent_model_is_no_quantization_of_a(tmp_path: Path, model_a: Tensors,
                                                              rng: np.random.Generator) -> None:
    c = llama(rng)
    b = mapped(c, lambda v: quants.dequantize(quants.quantize(v, QT.Q8_0), QT.Q8_0) if v.ndim == 2 else v)
    r = diagnose(tmp_path, model_a, b)
    assert kinds(r) == []
    assert any("not a quantization of A" in n for n in r.evidence[0].details["notes"])


def test_permuted_copy_is_identical_once_aligned(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    b = dict(model_a)
    for i in range(LAYERS):
        perm = rng.permutation(INTER)
        p = f"model.layers.{i}.mlp."
        b[p + "gate_proj.weight"] = model_a[p + "gate_proj.weight"][perm]
        b[p + "up_proj.weight"] = model_a[p + "up_proj.weight"][perm]
        b[p + "down_proj.weight"] = model_a[p + "down_proj.weight"][:, perm]
    r = diagnose(tmp_path, model_a, b)
    assert kinds(r) == ["identical"]
    assert one(r, "identical").estimates["after_alignment"] == 3 * LAYERS


def test_noise_of_one_in_708(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    b = mapped(model_a, lambda v: (v + rng.standard_normal(v.shape) * v.std() / 708).astype(np.float32))
    r = diagnose(tmp_path, model_a, b)
    assert kinds(r) == ["noise"]
    est = one(r, "noise").estimates
    assert est["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)
    assert est["scale"] == "relative"


def test_llama3v_style_shell(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    """Renamed prefix, permuted MLP neurons and Gaussian noise of 1/708: the noise level is still read."""
    b: Tensors = {}
    perms = [rng.permutation(INTER) for _ in range(LAYERS)]
    for k, v in model_a.items():
        w = v
        for i, perm in enumerate(perms):
            if f".layers.{i}.mlp." in k:
                w = w[:, perm] if "down_proj" in k else w[perm]
        b["llm." + k] = (w + rng.standard_normal(w.shape) * v.std() / 708).astype(np.float32)
    r = diagnose(tmp_path, model_a, b)
    assert "noise" in kinds(r)
    assert one(r, "noise").estimates["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)
    assert not {"finetune", "lora", "merge"} & set(kinds(r))
    ev = r.evidence[0]
    assert any(row.get("permuted") for row in ev.details["per_tensor"])
    report = json.loads(json.dumps(r.to_json()))  # the whole result is plain JSON
    assert [t["kind"] for t in report["transforms"]] == kinds(r)


def test_rotated_residual_stream_with_noise(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    """B's residual stream rotated by an orthogonal Q (embeddings and every projection), plus noise."""
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    b: Tensors = {}
    for k, v in model_a.items():
        if v.ndim == 2 and ("o_proj" in k or "down_proj" in k):
            w = q.T @ v  # outputs written into the residual stream
        elif v.ndim == 2:
            w = v @ q  # embeddings, lm_head and every input projection read the residual stream
        else:
            w = v
        b[k] = (w + rng.standard_normal(w.shape) * v.std() / 708).astype(np.float32)
    r = diagnose(tmp_path, model_a, b)
    assert kinds(r) == ["noise"]
    assert one(r, "noise").estimates["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)


def test_rotation_with_norm_gains_folded_is_identical(tmp_path: Path, model_a: Tensors,
                                                      rng: np.random.Generator) -> None:
    """The function-preserving rotation: gains folded into the projections after them, then rotated."""
    q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    b: Tensors = {}
    for k, v in model_a.items():
        layer = k.split(".layers.")[1].split(".")[0] if ".layers." in k else None
        pre = f"model.layers.{layer}." if layer is not None else ""
        if v.ndim == 1:
            b[k] = np.ones_like(v)
        elif "o_proj" in k or "down_proj" in k:
            b[k] = q.T @ v
        elif "q_proj" in k or "k_proj" in k or "v_proj" in k:
            b[k] = (v * model_a[pre + "input_layernorm.weight"][None, :]) @ q
        elif "gate_proj" in k or "up_proj" in k:
            b[k] = (v * model_a[pre + "post_attention_layernorm.weight"][None, :]) @ q
        elif k == "lm_head.weight":
            b[k] = (v * model_a["model.norm.weight"][None, :]) @ q
        else:
            b[k] = v @ q
    r = diagnose(tmp_path, model_a, {k: v.astype(np.float32) for k, v in b.items()})
    assert kinds(r) == ["identical"]
    est = one(r, "identical").estimates
    assert est["folded_gains"] == 2 * LAYERS  # the final norm is all ones in A already: uninformative
    assert est["after_alignment"] > 0


def test_other_option_must_be_a_model(tmp_path: Path, model_a: Tensors) -> None:
    ma, mb = save(tmp_path, "a", model_a), save(tmp_path, "b", model_a)
    (ev,) = compare(ma, mb, methods=["diagnosis"], options={"other": 3}).evidence
    assert ev.status == "error"
    assert ev.statement == "compare option 'other' must be a Model or a model reference, got int"
    missing = str(tmp_path / "nowhere")
    (ev,) = compare(ma, mb, methods=["diagnosis"], options={"other": missing}).evidence
    assert (ev.status, ev.details["error"]) == ("error", "ResolveError")
    assert missing in ev.statement


def test_llama3v_style_noise_in_bf16(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    """A stored in bf16, B = bf16(A + noise of 1/708): rounding hides most of the noise, the fit recovers it."""
    a = mapped(model_a, round_bf16)
    b = mapped(a, lambda v: round_bf16((v + rng.standard_normal(v.shape) * v.std() / 708).astype(np.float32)))
    r = diagnose(tmp_path, a, b)
    assert kinds(r) == ["noise"]
    assert one(r, "noise").estimates["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)


def lora_merged(a: Tensors, rng: np.random.Generator, rank: int, scale: float = 0.05) -> Tensors:
    b = dict(a)
    for k, v in a.items():
        if "q_proj" in k or "v_proj" in k:
            delta = rng.standard_normal((v.shape[0], rank)) @ rng.standard_normal((rank, v.shape[1]))
            delta *= scale * np.linalg.norm(v) / np.linalg.norm(delta)
            b[k] = round_bf16((v + delta).astype(np.float32))  # merged, then saved in bf16
    return b


@pytest.mark.parametrize("rank", [4, 8, 12])  # 12 of 64: a spike strong enough to pass for noise if unchecked
def test_lora_merge_rank(tmp_path: Path, model_a: Tensors, rng: np.random.Generator, rank: int) -> None:
    r = diagnose(tmp_path, model_a, lora_merged(model_a, rng, rank))
    assert kinds(r) == ["finetune", "lora"]
    assert abs(one(r, "lora").estimates["rank"] - rank) <= 2
    ft = one(r, "finetune").estimates
    assert ft["rel_change"] == pytest.approx(0.05, rel=0.2)
    assert set(ft["per_layer"]) == {str(i) for i in range(LAYERS)}


def test_full_finetune_per_layer(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    b: Tensors = {}
    for k, v in model_a.items():
        layer = next((i for i in range(LAYERS) if f".layers.{i}." in k), None)
        step = 0.02 * (1 + (layer or 0)) if v.ndim == 2 else 0.0
        # a smooth, correlated change with a decaying spectrum (not i.i.d. noise, not low rank)
        d = rng.standard_normal(v.shape)
        if v.ndim == 2:
            d = np.cumsum(d, axis=1)
        b[k] = (v + step * v.std() * d / d.std()).astype(np.float32) if step else v
    r = diagnose(tmp_path, model_a, b)
    assert "finetune" in kinds(r) and "noise" not in kinds(r)
    per_layer = one(r, "finetune").estimates["per_layer"]
    assert per_layer["0"] < per_layer["1"] < per_layer["2"] < per_layer["3"]


def renumbered(a: Tensors, order: list[int]) -> Tensors:
    out = {k: v for k, v in a.items() if ".layers." not in k}
    for j, i in enumerate(order):
        out |= {k.replace(f".layers.{i}.", f".layers.{j}."): v for k, v in a.items() if f".layers.{i}." in k}
    return out


def test_layer_drop(tmp_path: Path, model_a: Tensors) -> None:
    r = diagnose(tmp_path, model_a, renumbered(model_a, [0, 1, 3]))
    assert one(r, "layer-drop").estimates["layers"] == [2]
    assert "identical" in kinds(r)  # the kept layers are compared with their true sources


def test_layer_duplicate_and_reorder(tmp_path: Path, model_a: Tensors) -> None:
    r = diagnose(tmp_path, model_a, renumbered(model_a, [0, 1, 2, 1, 2, 3]))
    assert one(r, "layer-duplicate").estimates["layers"] == {"1": [1, 3], "2": [2, 4]}
    assert "layer-reorder" not in kinds(r)
    r = diagnose(tmp_path / "2", model_a, renumbered(model_a, [0, 2, 1, 3]))
    assert one(r, "layer-reorder").estimates["mapping"] == [0, 2, 1, 3]


def test_merge_with_other_model(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    c = llama(rng)
    b = {k: (0.3 * v + 0.7 * c[k]).astype(np.float32) for k, v in model_a.items()}
    r = diagnose(tmp_path, model_a, b, c)
    est = one(r, "merge").estimates
    assert est["alpha"] == pytest.approx(0.3, abs=0.1)
    assert est["beta"] == pytest.approx(0.7, abs=0.1)
    assert est["method"] == "linear"


def test_slerp_merge_with_other_model(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    c = llama(rng)

    def slerp(x: np.ndarray, y: np.ndarray, t: float = 0.3) -> np.ndarray:
        th = math.acos(min(1.0, float(x.ravel() @ y.ravel() / (np.linalg.norm(x) * np.linalg.norm(y)))))
        if th < 1e-4:
            return x
        return ((math.sin((1 - t) * th) * x + math.sin(t * th) * y) / math.sin(th)).astype(np.float32)

    r = diagnose(tmp_path, model_a, {k: slerp(v, c[k]) for k, v in model_a.items()}, c)
    est = one(r, "merge").estimates
    assert est["method"] == "slerp"
    assert est["slerp_t"] == pytest.approx(0.3, abs=0.05)


def test_merge_without_other_model(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    c = llama(rng)
    b = {k: (0.5 * v + 0.5 * c[k]).astype(np.float32) for k, v in model_a.items()}
    est = one(diagnose(tmp_path, model_a, b), "merge").estimates
    assert est["other"] is None
    assert est["share_explained"] == pytest.approx(0.5, abs=0.1)  # equal spreads: 0.25 / (0.25 + 0.25)
    assert est["coef_a"] == pytest.approx(0.5, abs=0.1)


def test_independent_models_get_no_derivation(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    r = diagnose(tmp_path, model_a, llama(rng))
    assert kinds(r) == []
    assert "no transform of A explains B" in r.evidence[0].statement


def test_vocabulary_extended_by_tokens(tmp_path: Path, model_a: Tensors) -> None:
    def tok(vocab: dict[str, int]) -> dict[str, Any]:
        return {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": vocab,
                                                                "unk_token": "t0"}}

    va = {f"t{i}": i for i in range(VOCAB)}
    vb = dict(va) | {f"<new{i}>": VOCAB + i for i in range(8)}
    b = dict(model_a)
    emb = model_a["model.embed_tokens.weight"]
    b["model.embed_tokens.weight"] = np.concatenate([emb, np.repeat(emb.mean(0, keepdims=True), 8, 0)])
    b["lm_head.weight"] = np.concatenate([model_a["lm_head.weight"], np.zeros((8, H), np.float32)])
    r = diagnose(tmp_path, model_a, b, tok_a=tok(va), tok_b=tok(vb))
    est = one(r, "vocab-change").estimates
    assert (est["kinds"], est["added"], est["removed"], est["how"]) == (["extended"], 8, 0, "tokens")
    assert est["rows_kept"] == 1.0 and est["new_rows_init"] == "mean"


def test_dense_mlp_upcycled_into_experts(tmp_path: Path, model_a: Tensors, rng: np.random.Generator) -> None:
    b = {k: v for k, v in model_a.items() if ".mlp." not in k}
    for i in range(LAYERS):
        for e in range(4):
            for m in ("gate_proj", "up_proj", "down_proj"):
                v = model_a[f"model.layers.{i}.mlp.{m}.weight"]
                b[f"model.layers.{i}.mlp.experts.{e}.{m}.weight"] = (
                    v + rng.standard_normal(v.shape) * 0.2 * v.std()).astype(np.float32)
        b[f"model.layers.{i}.mlp.gate.weight"] = rng.standard_normal((4, H)).astype(np.float32)
    r = diagnose(tmp_path, model_a, b)
    est = one(r, "upcycle").estimates
    assert est["granularity"] == "copy" and est["router_new"] is True
    assert all(n == 4 for n in est["experts_matched"].values())
    assert "layer-drop" not in kinds(r)


def test_components_of_a_multimodal_model(tmp_path: Path, rng: np.random.Generator) -> None:
    def vision(r: np.random.Generator) -> Tensors:
        t: Tensors = {}
        for i in range(2):
            p = f"vpm.encoder.layers.{i}."
            t[p + "mlp.fc1.weight"] = (r.standard_normal((128, 48)) * 0.05).astype(np.float32)
            t[p + "mlp.fc2.weight"] = (r.standard_normal((48, 128)) * 0.05).astype(np.float32)
            t[p + "self_attn.q_proj.weight"] = (r.standard_normal((48, 48)) * 0.05).astype(np.float32)
        return t

    def resampler(r: np.random.Generator) -> Tensors:
        return {"resampler.kv_proj.weight": (r.standard_normal((H, 48)) * 0.05).astype(np.float32),
                "resampler.query": (r.standard_normal((16, H)) * 0.05).astype(np.float32)}

    a = vision(rng) | resampler(rng) | llama(rng, prefix="llm.model.")
    b = {k: v for k, v in a.items() if not k.startswith("resampler.")} | resampler(rng)
    r = diagnose(tmp_path, a, b)
    est = one(r, "component").estimates
    assert set(est["shared"]) == {"vision_tower", "language_model"}
    assert est["new"] == ["projector"]


# --- real models (skipped when absent) ------------------------------------------------------------

def real_compare(realmodels: Path, a: str, b: str) -> CompareResult:
    result = compare(Model.open(str(realmodels / a)), Model.open(str(realmodels / b)), methods=["diagnosis"])
    (ev,) = [e for e in result.evidence if e.method == "diagnosis"]
    assert ev.status == "ok", ev.statement
    return result


@pytest.mark.realmodels
def test_real_rebranded_copy_is_identical(realmodels: Path) -> None:
    r = real_compare(realmodels, "all-minilm-l6-v2", "all-minilm-l6-v2-rebrand-internal")
    assert kinds(r) == ["identical"]


@pytest.mark.realmodels
def test_real_int8_onnx_export_is_quantized(realmodels: Path) -> None:
    r = real_compare(realmodels, "all-minilm-l6-v2", "all-minilm-l6-v2-int8-onnx")
    est = one(r, "quantize").estimates
    assert est["scheme"] == "int8-per-channel" and est["bits"] == 8
    assert 0.001 < est["rel_rms_error"] < 0.03
    assert not {"noise", "finetune", "lora", "merge"} & set(kinds(r))


@pytest.mark.realmodels
def test_real_independent_cnns_get_no_derivation(realmodels: Path) -> None:
    r = real_compare(realmodels, "efficientnet-lite0", "efficientnet-lite1")
    assert not {"identical", "cast", "noise", "finetune", "lora", "merge", "quantize"} & set(kinds(r))


@pytest.mark.realmodels
def test_real_weights_plus_noise(realmodels: Path, tmp_path: Path, rng: np.random.Generator) -> None:
    from safetensors.numpy import load_file

    a = load_file(str(realmodels / "all-minilm-l6-v2" / "model.safetensors"))
    b = {k: (v + rng.standard_normal(v.shape) * v.std() / 708).astype(v.dtype) if v.dtype == np.float32 else v
         for k, v in a.items()}
    folder = tmp_path / "noisy"
    folder.mkdir()
    save_file(b, str(folder / "model.safetensors"))
    result = compare(Model.open(str(realmodels / "all-minilm-l6-v2")), Model.open(str(folder)),
                     methods=["diagnosis"])
    assert kinds(result) == ["noise"]
    assert one(result, "noise").estimates["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)


# --- tiny models trained on CPU: independent pairs and a real fine-tune ------------------------------

def _tinytrain() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "weights" / "tinytrain.py"
    if not path.is_file():
        pytest.skip("tests/weights/tinytrain.py is absent")
    spec = importlib.util.spec_from_file_location("diagnosis_tinytrain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_trained_models(tmp_path: Path) -> None:
    """Independently trained pairs get no derivation; a real fine-tune is a fine-tune (not LoRA, not noise);
    the Llama3-V shell (noise, permuted neurons and heads) on a trained model gives the noise level."""
    pytest.importorskip("torch")
    tt = _tinytrain()
    base = tt.train(0)
    tt.save_model(tmp_path / "a", base)

    def run(name: str, state: dict[str, np.ndarray]) -> list[Transform]:
        tt.save_model(tmp_path / name, state)
        r = compare(Model.open(str(tmp_path / "a")), Model.open(str(tmp_path / name)), methods=["diagnosis"])
        assert r.evidence[0].status == "ok", r.evidence[0].statement
        return r.transforms

    derived = {"identical", "cast", "quantize", "noise", "finetune", "lora", "merge", "layer-drop",
               "layer-duplicate", "layer-reorder", "upcycle", "component"}
    for seed in (1, 2, 3):
        assert not derived & {t.kind for t in run(f"independent{seed}", tt.train(seed))}
    ft = run("finetuned", tt.train(1, steps=20, start=base))
    assert [t.kind for t in ft] == ["finetune"]
    shell = tt.permute_heads(tt.permute_neurons(tt.add_noise(base, 1 / 708, 3), 4), 5)
    (noise,) = run("shell", shell)
    assert noise.kind == "noise"
    assert noise.estimates["sigma_rel"] == pytest.approx(1 / 708, rel=0.3)
