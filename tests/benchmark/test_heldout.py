"""The held-out zoo: fresh seeds and text, strength ladders, shape cases and multi-network folders with their
ground truth; the power curves and the side-by-side page read from result rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from modeltrace.benchmark import metrics, power, zoos
from modeltrace.benchmark.report import summarize, tier_of
from modeltrace.benchmark.zoo import ZooEvent, build_zoo
from modeltrace.benchmark.zoo import derive as D
from modeltrace.benchmark.zoo.families import (
    Spec,
    build_model,
    hf_config,
    model_from_params,
    params_of,
    spec_from_hf_config,
)
from modeltrace.benchmark.zoo.settings import HELDOUT_QUICK, HELDOUT_TINY, QUICK, SCALE, settings_for
from modeltrace.benchmark.zoo.text import load_corpus, split_files
from modeltrace.cli.bench_cmd import bench


@pytest.fixture(scope="module")
def heldout_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[ZooEvent]]:
    cache = tmp_path_factory.mktemp("heldout")
    events: list[ZooEvent] = []
    path = build_zoo(cache, settings=HELDOUT_TINY, progress=events.append)
    return path, json.loads(path.read_text(encoding="utf-8")), events


def test_tuning_recipe_keys_are_unchanged_by_the_heldout_fields() -> None:
    assert set(QUICK.recipe()) == {"vocab", "hidden", "layers", "heads", "intermediate", "seq", "batch",
                                   "main_chars", "other_chars"}
    held = HELDOUT_QUICK.recipe()
    assert held["zoo"] == "heldout" and held["corpus"] == ["heldout-main", "heldout-other"]
    assert (HELDOUT_QUICK.hidden, HELDOUT_QUICK.lr) != (QUICK.hidden, QUICK.lr)


def test_settings_for_names_each_zoo() -> None:
    assert settings_for("tuning", True) is QUICK and settings_for("heldout", True) is HELDOUT_QUICK
    assert settings_for("scale", False) is SCALE
    assert (SCALE.hidden, SCALE.layers, SCALE.vocab) == (256, 6, 8192)
    with pytest.raises(ValueError, match="unknown zoo 'nope' \\(known: tuning, heldout, scale\\)"):
        settings_for("nope", False)


def test_heldout_text_shares_no_file_with_the_tuning_text() -> None:
    tuning = set(split_files("main")) | set(split_files("other"))
    assert not tuning & set(split_files("heldout-main"))
    main = load_corpus("heldout-main", HELDOUT_QUICK.main_chars).text
    other = load_corpus("heldout-other", HELDOUT_QUICK.other_chars).text
    # the prose is cut in halves, but pydoc's topics repeat sections: most, not all, of the fine-tune prose
    # is new to the bases (the share below is the one text.py states)
    windows = [other[i:i + 300] for i in range(0, len(other) - 300, 997)]
    shared = sum(w in main for w in windows) / len(windows)
    assert len(windows) > 200 and 0.1 < shared < 0.2


def test_heldout_manifest_has_ladders_shapes_and_multinet(heldout_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    _, m, events = heldout_zoo
    assert m["zoo"] == "heldout" and m["settings"] == "heldout-tiny"
    kinds = {p["kind"] for p in m["pairs"]}
    assert set(power.AXES) - {"real-noise", "real-rotate-noise"} <= kinds
    assert {"distill-pruned-init", "distill-small-fresh", "independent-pruned-shape", "multi-network-renamed",
            "multi-network-independent"} <= kinds
    ladder = sorted(p["truth"]["strength"] for p in m["pairs"] if p["kind"] == "power-noise")
    assert ladder == [0.05, 1.0]
    labels = {p["kind"]: p["label"] for p in m["pairs"]}
    assert labels["distill-pruned-init"] == "derived" and labels["distill-small-fresh"] == "distilled"
    base = next(x for x in m["models"] if x["id"] == "llama-s0")
    assert base["recipe"]["seed"] == 1000 + HELDOUT_TINY.seed_offset
    assert [e.status for e in events if e.status != "start"] == ["built"] * len(m["models"])


def test_heldout_build_resumes_from_its_cache(heldout_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, m, _ = heldout_zoo
    events: list[ZooEvent] = []
    build_zoo(path.parent, settings=HELDOUT_TINY, progress=events.append)
    assert [e.status for e in events] == ["cached"] * len(m["models"])


def test_pruned_models_keep_their_head_size_and_reopen(heldout_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _, _ = heldout_zoo
    cfg = json.loads((path.parent / "models" / "llama-s0-pprune-0p5" / "config.json").read_text(encoding="utf-8"))
    base = json.loads((path.parent / "models" / "llama-s0" / "config.json").read_text(encoding="utf-8"))
    assert cfg["hidden_size"] == base["hidden_size"] // 2 and cfg["head_dim"] == base["head_dim"]
    assert spec_from_hf_config(cfg).head_dim == base["head_dim"]


def test_multinet_copy_has_the_same_tensors_under_new_names(heldout_zoo: tuple[Path, dict, list[ZooEvent]]) -> None:
    path, _, _ = heldout_zoo
    a, b = path.parent / "models" / "mnet-a", path.parent / "models" / "mnet-a-renamed"
    assert sorted(f.name for f in a.iterdir()) == ["onet.pt", "pnet.pt", "rnet.pt"]
    names = [set(torch.load(a / f, weights_only=True)) for f in ("pnet.pt", "rnet.pt", "onet.pt")]
    assert names[0] == names[1] == names[2]  # colliding tensor names across files
    src = torch.load(a / "onet.pt", weights_only=True)
    dst = torch.load(b / "stage3_output.pt", weights_only=True)
    assert torch.equal(src["conv1.weight"], dst["features.0.weight"]) and "conv1.weight" not in dst


def test_prune_width_keeps_heads_and_runs() -> None:
    spec = Spec("llama", 64, 32, 2, 4, 64, max_pos=16)
    p = params_of(build_model(spec, 3))
    spec2, p2, truth = D.prune_width(spec, p, 0.5)
    assert (spec2.hidden, spec2.intermediate, spec2.head_dim) == (16, 32, 8)
    assert p2["blocks.0.q.weight"].shape == (32, 16) and p2["blocks.0.o.weight"].shape == (16, 32)
    assert truth["residual_kept"] == "16/32" and len(truth["kept_residual"]) == 16
    out = model_from_params(spec2, p2)(torch.zeros(1, 8, dtype=torch.long))
    assert out.shape == (1, 8, 64)
    assert spec_from_hf_config(hf_config(spec2)) == spec2


def _row(pair: str, kind: str, strength: float, p: float, label: str = "derived") -> dict:
    return {"pair": pair, "a": "x", "b": pair, "label": label, "kind": kind, "truth": {"strength": strength},
            "verdict": "derived" if p < 1e-6 else "inconclusive", "p_value": p,
            "evidence": {"weight-identity": {"status": "ok", "p_value": p, "powered": True}}}


def test_power_curve_says_where_detection_stops() -> None:
    rows = [_row("n1", "power-noise", 0.01, 1e-50), _row("n2", "power-noise", 0.1, 1e-9),
            _row("n3", "power-noise", 0.5, 0.2), _row("n4", "power-noise", 1.0, 1e-8),
            _row("k1", "power-width-prune", 0.9, 1e-30), _row("k2", "power-width-prune", 0.25, 0.5)]
    cl = {c["kind"]: c for c in power.curves({"heldout": rows}, ["weight-identity"], 1e-6)}
    lim = cl["power-noise"]["limits"]["weight-identity"]
    assert (lim["detected_through"], lim["first_missed"], lim["detected"], lim["n"]) == (0.1, 0.5, 3, 4)
    prune = cl["power-width-prune"]["limits"]["combined"]  # harder downwards: 0.9 first, then 0.25
    assert (prune["detected_through"], prune["first_missed"]) == (0.9, 0.25)


def test_clopper_pearson_matches_the_closed_form_at_zero() -> None:
    lo, hi = metrics.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = metrics.clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))


def test_tiers_keep_casts_apart_from_hard_cases() -> None:
    assert tier_of("cast") == tier_of("gguf-q4_k") != tier_of("finetune")
    assert tier_of("power-noise") == "strength ladders" and tier_of("made-up") == "other"


def test_side_by_side_page_has_both_columns_and_the_claimed_level(tmp_path: Path) -> None:
    rows_t = [_row("d1", "cast", 0, 1e-40), _row("i1", "independent-same-arch", 0, 0.3, "independent")]
    rows_h = [_row("d2", "power-noise", 0.2, 1e-3), _row("i2", "independent-same-arch", 0, 1e-7, "independent")]
    summaries = {}
    for z, rows in (("tuning", rows_t), ("heldout", rows_h)):
        s = summarize(rows, methods=["weight-identity"], meta={"methods": ["weight-identity"], "git": "abc"})
        s.pop("_series")
        summaries[z] = s
    written = zoos.write(summaries, {"tuning": rows_t, "heldout": rows_h}, {}, ["modeltrace bench --zoo x"], 1e-6,
                         tmp_path / "lineage-zoos.md", tmp_path / "power.md")
    page = (tmp_path / "lineage-zoos.md").read_text(encoding="utf-8")
    assert "| measure | tuning | held-out |" in page
    assert "| combined: false positives among independent pairs | 0/1 | 1/1 |" in page
    assert "| held-out | weight-identity | 1/1 [0.025, 1] |" in page
    assert "format (cast, quantize, export, rename)" in page
    assert (tmp_path / "power.md").is_file() and any(p.suffix == ".png" for p in written)


def test_bench_refuses_several_zoos_with_one_manifest(tmp_path: Path) -> None:
    m = tmp_path / "manifest.json"
    m.write_text(json.dumps({"schema": "modeltrace.zoo/1", "models": [], "pairs": []}), encoding="utf-8")
    res = CliRunner().invoke(bench, ["--zoo", "tuning", "--zoo", "heldout", "--manifest", str(m)])
    assert res.exit_code == 2
    assert "--manifest names one zoo; give at most one --zoo with it" in res.output


def test_real_rotation_keeps_a_llamas_logits() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from modeltrace.benchmark.zoo.gguf_names import rope_interleave
    from modeltrace.benchmark.zoo.real import fold_and_rotate, rope_deinterleave

    w = np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32)
    assert np.array_equal(rope_deinterleave(rope_interleave(w, 3), 3), w)
    cfg = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 50, "tie_word_embeddings": True, "rms_norm_eps": 1e-5}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if "norm" in n:
                prm.copy_(1 + 0.3 * torch.randn_like(prm))
    t = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    rot = fold_and_rotate(cfg, t, 7)
    model2 = LlamaForCausalLM(LlamaConfig(**{**cfg, "tie_word_embeddings": False})).eval()
    model2.load_state_dict({k: torch.from_numpy(v) for k, v in rot.items()}, strict=True)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, model2(ids).logits, atol=1e-4)


def test_skipping_control_pairs_keeps_every_base_pair() -> None:
    from modeltrace.benchmark.runner import PairSpec, without_control_pairs

    def spec(pid: str, label: str, **truth: object) -> PairSpec:
        return PairSpec(pid, "a", "b", Path("a"), Path("b"), label, "k", dict(truth))

    pairs = [spec("base", "independent"), spec("ctl", "independent", control_for="noise"),
             spec("der", "derived", control_for="x")]
    assert [p.id for p in without_control_pairs(pairs)] == ["base", "der"]


def test_report_only_runs_no_pair_and_returns_the_rows_written(tmp_path: Path) -> None:
    from modeltrace.benchmark.runner import PairSpec, append_row, run_key, run_pairs

    pairs = [PairSpec(p, "a", "b", tmp_path / "missing-a", tmp_path / "missing-b", "derived", "k") for p in "xy"]
    results = tmp_path / "pairs.jsonl"
    append_row(results, {"pair": "x", "run_key": run_key(["weight-identity"]), "verdict": "derived"})
    rows = run_pairs(pairs, results, ["weight-identity"], threshold=1e-6, isolate=False, run_missing=False)
    assert [r["pair"] for r in rows] == ["x"]
    assert len(results.read_text(encoding="utf-8").splitlines()) == 1
