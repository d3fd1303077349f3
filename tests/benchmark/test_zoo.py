"""The zoo builds a valid manifest whose models open, train for real, and keep their recorded promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modeltrace.benchmark.zoo import SCHEMA, TINY, ZooEvent, build_zoo
from modeltrace.benchmark.zoo import derive as D
from modeltrace.benchmark.zoo.families import (
    Spec,
    build_model,
    export_hf,
    import_hf,
    model_from_params,
    params_of,
    read_hf_folder,
)
from modeltrace.benchmark.zoo.tokenizer import pruned, train_tokenizer
from modeltrace.model import Model


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[ZooEvent]]:
    cache = tmp_path_factory.mktemp("zoo")
    events: list[ZooEvent] = []
    manifest = build_zoo(cache, settings=TINY, progress=events.append)
    return manifest, json.loads(manifest.read_text(encoding="utf-8")), events


def _model(manifest: dict, mid: str) -> dict:
    return next(m for m in manifest["models"] if m["id"] == mid)


def _pair(manifest: dict, pid: str) -> dict:
    return next(p for p in manifest["pairs"] if p["id"] == pid)


def test_manifest_is_valid(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    _path, m, events = tiny_zoo
    assert m["schema"] == SCHEMA and m["quick"] is True
    ids = [x["id"] for x in m["models"]]
    assert len(ids) == len(set(ids))
    assert {"llama-s0", "llama-s1", "gpt2-s0", "bert-s0", "mm-a", "mm-b", "mm-a-shell"} <= set(ids)
    labels = {"derived", "independent", "distilled"}
    for p in m["pairs"]:
        assert p["a"] in ids and p["b"] in ids, p["id"]
        assert p["label"] in labels and p["id"] == f"{p['a']}~{p['b']}"
    assert _pair(m, "llama-s0~llama-s1")["label"] == "independent"
    assert _pair(m, "mm-a~mm-a-shell")["kind"] == "multimodal-shell"
    assert _pair(m, "mm-a~mm-b")["label"] == "independent"
    merge = [p for p in m["pairs"] if p["kind"] == "merge-linear"]
    assert sorted(p["truth"]["merge_coef"] for p in merge) == [0.3, 0.7]
    assert [e.status for e in events if e.status != "start"] == ["built"] * len(ids)


def test_every_model_opens(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, m, _ = tiny_zoo
    for entry in m["models"]:
        with Model.open(str(path.parent / entry["path"])) as model:
            infos = model.source.infos()
            assert infos, entry["id"]
            name = next(iter(infos))
            assert model.source.read(name).dtype.name == "float32"
            if entry["format"] == "safetensors":
                assert model.config is not None and len(model.tokenizer_files) == 3


def test_training_lowers_the_loss(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    _, m, _ = tiny_zoo
    trained = [x for x in m["models"] if "train" in x]
    assert {x["id"] for x in trained} >= {"llama-s0", "gpt2-s0", "bert-s0", "mm-a", "llama-s0-finetune"}
    for x in trained:
        if x["kind"] in ("base", "other-shape"):
            assert x["train"]["final_loss"] < x["train"]["initial_loss"] - 0.3, x["id"]
        else:
            assert x["train"]["final_loss"] < x["train"]["initial_loss"], x["id"]


@pytest.mark.parametrize("mid", ["llama-s0-permute", "llama-s0-rotate", "gpt2-s0-permute", "bert-s0-permute"])
def test_function_preserving_derivations_keep_logits(tiny_zoo: tuple[Path, dict, list[ZooEvent]], mid: str) -> None:
    path, m, _ = tiny_zoo
    parent = _model(m, mid)["parents"][0]
    spec_a, pa = read_hf_folder(path.parent / _model(m, parent)["path"])
    spec_b, pb = read_hf_folder(path.parent / _model(m, mid)["path"])
    assert spec_a == spec_b
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)  # the weights did change
    ids = D.probe_ids(spec_a, seed=3)
    la, lb = D.logits(spec_a, pa, ids), D.logits(spec_b, pb, ids)
    assert float((la - lb).abs().max()) < 1e-3
    assert float(la.abs().max()) > 1.0  # the comparison is not between two near-zero outputs


def test_noise_has_the_recorded_scale(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, m, _ = tiny_zoo
    p = _pair(m, "llama-s0~llama-s0-noise-1_708")
    assert p["label"] == "derived" and p["truth"]["sigma_rel"] == pytest.approx(1 / 708)
    with Model.open(str(path.parent / "models/llama-s0")) as a, \
            Model.open(str(path.parent / "models/llama-s0-noise-1_708")) as b:
        ratios = []
        for name, info in a.source.infos().items():
            if len(info.shape) == 2:
                wa, wb = a.source.read(name), b.source.read(name)
                ratios.append(float((wb - wa).std() / wa.std()))
    assert len(ratios) >= 5
    for r in ratios:
        assert r == pytest.approx(1 / 708, rel=0.15)


def test_shell_renames_fuses_and_transposes(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _m, _ = tiny_zoo
    with Model.open(str(path.parent / "models/llama-s0-shell")) as shell:
        names = set(shell.source.infos())
        cfg = shell.config
    assert "llm.model.layers.0.self_attn.qkv_proj.weight" in names
    assert "llm.model.layers.0.mlp.gate_up_proj.weight" in names
    assert not any(n.startswith("model.") for n in names)
    assert cfg is not None and cfg["model_type"] == "llama3v" and "hidden_size" not in cfg
    h, inter = TINY.hidden, TINY.intermediate
    assert shell.source.infos()["llm.model.layers.0.mlp.down_proj.weight"].shape == (inter, h)
    with Model.open(str(path.parent / "models/mm-a-shell")) as mm, \
            Model.open(str(path.parent / "models/mm-a")) as orig:
        prefixes = {n.split(".", 1)[0] for n in mm.source.infos()}
        fc1 = orig.source.read("vpm.encoder.layers.0.mlp.fc1.weight")
        noisy = mm.source.read("vison.encoder.layers.0.mlp.fc1.weight")
        kv = mm.source.read("projection.attn.kv.weight")
        in_proj = orig.source.read("resampler.attn.in_proj_weight")
    assert prefixes == {"vison", "projection", "llm"}
    assert float((noisy - fc1).std() / fc1.std()) == pytest.approx(1 / 708, rel=0.2)
    assert kv.shape == (2 * TINY.hidden, TINY.hidden)
    assert float(abs(kv - in_proj[TINY.hidden:]).max()) < 0.01 * float(abs(in_proj).max())


def test_multimodal_tokenizers_share_added_ids(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _m, _ = tiny_zoo

    def added(mid: str) -> dict[str, int]:
        tj = json.loads((path.parent / "models" / mid / "tokenizer.json").read_text(encoding="utf-8"))
        return {t["content"]: t["id"] for t in tj["added_tokens"] if t["id"] >= 5}

    assert added("mm-a") == added("mm-a-shell")
    assert added("mm-a")["<image>"] == added("mm-b")["<img>"] == TINY.vocab


def test_rebuild_reuses_the_cache(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _m, _ = tiny_zoo
    before = path.read_bytes()
    stamp = (path.parent / "models/llama-s0/model.safetensors").stat().st_mtime_ns
    events: list[ZooEvent] = []
    again = build_zoo(path.parent, settings=TINY, progress=events.append)
    assert again == path and again.read_bytes() == before
    assert {e.status for e in events} == {"cached"}
    assert (path.parent / "models/llama-s0/model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_model_is_rebuilt(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _, _ = tiny_zoo
    (path.parent / "_records/llama-s0-cast-f16.json").unlink()  # as if the build stopped before the record
    (path.parent / "models/gpt2-s0-permute.tmp").mkdir()  # a half-written folder from a crash
    events: list[ZooEvent] = []
    build_zoo(path.parent, settings=TINY, progress=events.append)
    built = [e.model_id for e in events if e.status == "built"]
    assert built == ["llama-s0-cast-f16"]


# --- derivations on their own ---------------------------------------------------------------------------------


def _trained_like(family: str, seed: int = 0) -> tuple[Spec, dict[str, torch.Tensor]]:
    spec = Spec(family, 64, 16, 3, 2, 32, max_pos=16)
    model = build_model(spec, seed)
    with torch.no_grad():  # spread the norm gains as training would, so folding them matters
        for n, p in model.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return spec, params_of(model)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_hf_export_round_trips(family: str) -> None:
    spec, p = _trained_like(family)
    back = import_hf(spec, export_hf(spec, p))
    assert set(back) == set(p) and all(torch.equal(back[k], p[k]) for k in p)


def test_rotation_without_folding_would_change_logits() -> None:
    spec, p = _trained_like("llama")
    q, _ = torch.linalg.qr(torch.randn(spec.hidden, spec.hidden, generator=torch.Generator().manual_seed(1)))
    naive = {k: v.clone() for k, v in p.items()}
    naive["tok.weight"] = p["tok.weight"] @ q
    for i in range(spec.layers):
        for k in ("q", "k", "v", "up", "gate"):
            naive[f"blocks.{i}.{k}.weight"] = p[f"blocks.{i}.{k}.weight"] @ q
        for k in ("o", "down"):
            naive[f"blocks.{i}.{k}.weight"] = q.T @ p[f"blocks.{i}.{k}.weight"]
    naive["head.weight"] = p["head.weight"] @ q
    assert D.max_logit_diff(spec, p, spec, naive) > 1e-3
    rotated, _ = D.rotate(spec, p, 1)
    assert D.max_logit_diff(spec, p, spec, rotated) < 1e-4


def test_structural_derivations_shapes() -> None:
    spec, p = _trained_like("llama")
    s2, p2, truth = D.depth_upscale(spec, p)
    assert s2.layers == 4 and truth["duplicated_layers"] == [1] and truth["layer_map"] == [0, 1, 1, 2]
    assert torch.equal(p2["blocks.2.q.weight"], p["blocks.1.q.weight"])
    s3, p3, _ = D.width_prune(spec, p, 0.75)
    assert s3.intermediate == 24 and p3["blocks.0.down.weight"].shape == (16, 24)
    s4, p4 = D.drop_layers(spec, p, [1])
    assert s4.layers == 2 and torch.equal(p4["blocks.1.q.weight"], p["blocks.2.q.weight"])
    model_from_params(s4, p4)  # loads strictly


def test_lora_merge_has_the_recorded_rank() -> None:
    from modeltrace.benchmark.zoo.train import TokenData, train

    spec, p = _trained_like("llama")
    model = model_from_params(spec, p)
    data = TokenData("t", torch.randint(5, 64, (4000,), generator=torch.Generator().manual_seed(0)).numpy(), 64)
    train(model, data, steps=5, lr=1e-2, batch=4, seq=8, seed=0, lora_rank=2)
    delta = model.state_dict()["blocks.0.q.weight"] - p["blocks.0.q.weight"]
    assert float(delta.abs().max()) > 0
    assert int(torch.linalg.matrix_rank(delta, atol=1e-6)) == 2
    assert torch.equal(model.state_dict()["tok.weight"], p["tok.weight"])


def test_merges_and_int8() -> None:
    _, a = _trained_like("gpt2", 0)
    _, b = _trained_like("gpt2", 1)
    lin = D.merge_linear(a, b, 0.7)
    assert torch.allclose(lin["tok.weight"], 0.7 * a["tok.weight"] + 0.3 * b["tok.weight"])
    sl = D.merge_slerp(a, b, 0.0)
    assert torch.allclose(sl["tok.weight"], a["tok.weight"], atol=1e-6)
    q = D.quantize_int8({"w": a["blocks.0.up.weight"]})["w"]
    scale = a["blocks.0.up.weight"].abs().amax(1, keepdim=True) / 127
    assert torch.allclose(q / scale, torch.round(q / scale), atol=1e-3)
    assert float((q - a["blocks.0.up.weight"]).abs().max()) <= float(scale.max()) / 2 + 1e-7


def test_vocab_prune_keeps_a_consistent_tokenizer() -> None:
    text = "def function_name(argument):\n    return argument + other_value\n" * 200
    tok = train_tokenizer(text, 300)
    tj = json.loads(tok.to_str())
    learned = [t for t, i in tj["model"]["vocab"].items() if i >= 5 + 256]
    new, kept = pruned(tj, {learned[0]})
    vocab = new["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert len(kept) == len(vocab) and learned[0] not in vocab
    for merge in new["model"]["merges"]:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        assert a in vocab and b in vocab and a + b in vocab
    from tokenizers import Tokenizer

    assert Tokenizer.from_str(json.dumps(new)).encode("def function_name").ids


@pytest.mark.slow
def test_transformers_reads_the_zoo_as_its_own_architectures(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    """The folders are real Hugging Face checkpoints: transformers computes the same logits we do."""
    transformers = pytest.importorskip("transformers")
    path, _, _ = tiny_zoo
    for mid in ("llama-s0", "gpt2-s0", "bert-s0", "llama-s0-rotate"):
        folder = path.parent / "models" / mid
        spec, p = read_hf_folder(folder)
        ids = D.probe_ids(spec)
        auto = transformers.AutoModelForMaskedLM if spec.family == "bert" else transformers.AutoModelForCausalLM
        hf = auto.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            theirs = hf(ids).logits
        assert float((D.logits(spec, p, ids) - theirs).abs().max()) < 1e-4, mid
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent / "models/llama-s0"))
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
    assert tok.mask_token_id == 4 and tok.pad_token_id == 0


def test_gguf_copy_is_llama_cpp_layout(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    """Q/K rows are interleaved for llama.cpp's rotary kernel and quantized to Q8_0 (error below half a step)."""
    from modeltrace.benchmark.zoo.gguf_names import rope_interleave

    path, m, _ = tiny_zoo
    entry = _model(m, "llama-s0-gguf-q8_0")
    assert entry["format"] == "gguf" and entry["path"].endswith(".gguf")
    _, p = read_hf_folder(path.parent / "models/llama-s0")
    with Model.open(str(path.parent / entry["path"])) as g:
        infos = g.source.infos()
        assert infos["blk.0.attn_q.weight"].dtype == "Q8_0"
        q = g.source.read("blk.0.attn_q.weight")
    want = rope_interleave(p["blocks.0.q.weight"].numpy(), TINY.heads)
    step = abs(want).reshape(-1, 32).max(1) / 127
    assert float(abs(q - want).reshape(-1, 32).max(1).max() / step.max()) <= 0.51
    assert float(abs(q - p["blocks.0.q.weight"].numpy()).max()) > 10 * step.max()  # rows really moved
    truth = _pair(m, "llama-s0~llama-s0-gguf-q8_0")["truth"]
    assert truth["quant"] == "Q8_0" and truth["rope_qk_interleaved"] is True


def test_builds_are_deterministic(tiny_zoo: tuple[Path, dict, list[ZooEvent]], tmp_path: Path) -> None:
    from dataclasses import replace

    path, _, _ = tiny_zoo
    solo = replace(TINY, bases={"llama": 1}, derive={}, multimodal=False)
    other = build_zoo(tmp_path, settings=solo)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (other.parent / "models/llama-s0" / f).read_bytes() == (path.parent / "models/llama-s0" / f).read_bytes()


def test_console_progress_prints_one_line_per_model() -> None:
    import io

    from rich.console import Console

    from modeltrace.benchmark.zoo import console_progress

    buf = io.StringIO()
    report = console_progress(Console(file=buf, width=200, color_system=None))
    report(ZooEvent("llama-s0", "start", 0, 2))
    report(ZooEvent("llama-s0", "built", 1, 2, 3.25))
    report(ZooEvent("gguf-q4_k", "skipped", 2, 2, reason="writer [missing]"))
    assert buf.getvalue() == "[1/2] built llama-s0 (3.2s)\n[2/2] skipped gguf-q4_k: writer [missing]\n"


def test_module_entry_point_reuses_the_cache(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    from click.testing import CliRunner

    from modeltrace.benchmark.zoo.__main__ import main

    path, _, _ = tiny_zoo
    result = CliRunner().invoke(main, ["--tiny", "--cache", str(path.parent), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(path)
    assert "built" not in result.stderr and "cached" in result.stderr


def test_recorded_truth_matches_the_weights(tiny_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, m, _ = tiny_zoo
    root = path.parent
    _, base = read_hf_folder(root / "models/llama-s0")

    truth = _pair(m, "llama-s0~llama-s0-vocabprune")["truth"]
    spec, pruned_p = read_hf_folder(root / "models/llama-s0-vocabprune")
    kept = torch.tensor(truth["kept_ids"])
    assert spec.vocab == truth["new_vocab"] == len(kept) < truth["old_vocab"]
    assert torch.equal(pruned_p["tok.weight"], base["tok.weight"][kept])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "models/llama-s0-vocabprune/tokenizer.json"))
    assert max(tok.encode("import os\nfor key, value in items:\n    print(key)").ids) < spec.vocab

    truth = _pair(m, "llama-s0~llama-s0-vocabext")["truth"]
    spec, ext = read_hf_folder(root / "models/llama-s0-vocabext")
    assert spec.vocab == truth["old_vocab"] + truth["added_tokens"] and truth["added_tokens"] > 0
    assert torch.equal(ext["tok.weight"][: truth["old_vocab"]], base["tok.weight"])

    truth = _pair(m, "llama-s0~llama-s0-upscale")["truth"]
    _, up = read_hf_folder(root / "models/llama-s0-upscale")
    for new, old in enumerate(truth["layer_map"]):
        assert torch.equal(up[f"blocks.{new}.down.weight"], base[f"blocks.{old}.down.weight"])

    truth = _pair(m, "llama-s0~llama-s0-widthprune")["truth"]
    _, wp = read_hf_folder(root / "models/llama-s0-widthprune")
    for i, kept_neurons in enumerate(truth["kept_neurons"]):
        assert torch.equal(wp[f"blocks.{i}.up.weight"], base[f"blocks.{i}.up.weight"][kept_neurons])

    truth = _pair(m, "llama-s0~llama-s0-layerdrop")["truth"]
    spec, _ = read_hf_folder(root / "models/llama-s0-layerdrop")
    assert spec.layers == TINY.layers - len(truth["dropped_layers"])

    truth = _pair(m, "llama-s0~llama-s0-moe")["truth"]
    with Model.open(str(root / "models/llama-s0-moe")) as moe:
        e0 = moe.source.read("model.layers.0.block_sparse_moe.experts.0.w3.weight")
        assert sum(".experts." in n and n.endswith("w1.weight") for n in moe.source.infos()) \
            == truth["experts"] * TINY.layers
    dense = base["blocks.0.up.weight"].numpy()
    assert float((e0 - dense).std() / dense.std()) == pytest.approx(truth["expert_sigma_rel"], rel=0.2)


def test_benchmark_runs_end_to_end_on_the_tiny_zoo(tiny_zoo: tuple[Path, dict, list[ZooEvent]],
                                                   tmp_path: Path) -> None:
    """The CI smoke test of the benchmark: zoo -> every pair -> report; any failed pair fails the run."""
    from click.testing import CliRunner

    from modeltrace.cli import cli

    manifest = tiny_zoo[0]
    out = tmp_path / "results"
    res = CliRunner().invoke(cli, ["bench", "--manifest", str(manifest), "--out", str(out), "--no-peers",
                                   "--no-behaviour", "--no-realmodels", "--in-process",
                                   "--docs", str(tmp_path / "lineage.md")])
    assert res.exit_code == 0, res.output + str(res.exception)
    assert "0 errors" in res.output
    summary = json.loads((out / "summary.json").read_text())
    n_pairs = len(json.loads(Path(manifest).read_text())["pairs"])
    assert summary["counts"]["derived"] + summary["counts"]["independent"] + summary["counts"]["distilled"] == n_pairs
    assert (tmp_path / "lineage.md").read_text().startswith("# Lineage benchmark")
