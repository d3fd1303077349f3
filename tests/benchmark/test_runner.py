"""The benchmark runner end to end on a small manifest of synthetic Llama-shaped models built here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file
from scipy import stats

from modeltrace.benchmark import baselines, peers, runner
from modeltrace.benchmark.report import summarize
from modeltrace.cli import main
from modeltrace.cli.bench_cmd import bench
from modeltrace.evidence import METHODS, CompareContext, Evidence, EvidenceMethod

LAYERS, HIDDEN, FFN, VOCAB = 4, 32, 64, 128


def _llama(seed: int, layers: int = LAYERS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.normal(0, 0.02, (VOCAB, HIDDEN)),
                                "model.norm.weight": np.ones(HIDDEN), "lm_head.weight": rng.normal(0, 0.02, (VOCAB, HIDDEN))}
    for i in range(layers):
        p = f"model.layers.{i}."
        scale = 0.02 * (1 + 0.3 * rng.uniform())  # a per-layer spread for the weight-spread baseline
        for name, shape in (("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (HIDDEN, HIDDEN)),
                            ("self_attn.v_proj", (HIDDEN, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                            ("mlp.gate_proj", (FFN, HIDDEN)), ("mlp.up_proj", (FFN, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, FFN))):
            t[p + name + ".weight"] = rng.normal(0, scale, shape)
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN)
    return {k: v.astype(np.float32) for k, v in t.items()}


def _save(root: Path, name: str, tensors: dict[str, np.ndarray]) -> str:
    d = root / name
    d.mkdir(parents=True)
    save_file(tensors, str(d / "model.safetensors"))
    layers = len({k.split(".")[2] for k in tensors if k.startswith("model.layers.")})
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN,
                                               "num_hidden_layers": layers, "vocab_size": VOCAB}))
    return name


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base0..base2 independent; base0 noised (sigma_rel 1e-2) and layer-dropped; a 'distilled' fresh init."""
    root = tmp_path_factory.mktemp("zoo")
    models = {f"base{i}": _llama(100 + i) for i in range(3)}
    rng = np.random.default_rng(5)
    models["noise"] = {k: (v + rng.normal(0, 1e-2 * v.std(), v.shape)).astype(np.float32) if v.std() > 0 else v
                       for k, v in models["base0"].items()}
    models["drop"] = {k.replace("layers.3.", "layers.2."): v for k, v in models["base0"].items()
                      if "layers.2." not in k}
    models["student"] = _llama(999)
    for name, t in models.items():
        _save(root / "models", name, t)
    pairs = [
        {"id": "b0~noise", "a": "base0", "b": "noise", "label": "derived", "kind": "noise",
         "truth": {"sigma_rel": 1e-2}},
        {"id": "b0~drop", "a": "base0", "b": "drop", "label": "derived", "kind": "layer-drop",
         "truth": {"dropped_layers": [2]}},
        {"id": "b0~b1", "a": "base0", "b": "base1", "label": "independent", "kind": "independent-same-arch"},
        {"id": "b0~b2", "a": "base0", "b": "base2", "label": "independent", "kind": "independent-same-arch"},
        {"id": "b1~b2", "a": "base1", "b": "base2", "label": "independent", "kind": "independent-same-arch"},
        {"id": "b0~student", "a": "base0", "b": "student", "label": "distilled", "kind": "distill"},
    ]
    manifest = {"schema": "modeltrace.zoo/1", "quick": True,
                "models": [{"id": n, "family": "llama", "path": f"models/{n}", "format": "safetensors"}
                           for n in models], "pairs": pairs}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root / "manifest.json"


class CosineTestMethod(EvidenceMethod):
    """A stand-in evidence method for the test: same-named tensors' mean cosine, tested against a normal null."""

    name = "test-cosine"
    summary = "mean cosine of same-named 2-D tensors"

    def run(self, ctx: CompareContext) -> Evidence:
        a, b = ctx.a.source, ctx.b.source
        names = {i.name: i.shape for i in a.infos().values()}
        zs = []
        for info in b.infos().values():
            if names.get(info.name) == info.shape and len(info.shape) == 2:
                x, y = a.read(info.name).ravel(), b.read(info.name).ravel()
                zs.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))) * np.sqrt(x.size))
        z = float(np.mean(zs) * np.sqrt(len(zs)))
        p = float(stats.norm.sf(z))
        ctx.transforms.append(runner_transform(p))
        return Evidence(method=self.name, status="ok", statement=f"z = {z:.2f}", statistic=z, p_value=max(p, 1e-300))


def runner_transform(p: float) -> Any:
    from modeltrace.evidence import Transform

    return Transform("noise", "test estimate", {"sigma_rel": 0.0105 if p < 1e-6 else None})


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_bench_cli_end_to_end_isolated_and_resumable(zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["--quick", "--manifest", str(zoo), "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--no-peers", "--no-realmodels"]
    res = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = _read_jsonl(out / "pairs.jsonl")
    assert sorted(r["pair"] for r in rows) == sorted(["b0~noise", "b0~drop", "b0~b1", "b0~b2", "b1~b2", "b0~student"])
    assert [(r["pair"], r["error"]) for r in rows if r.get("error")] == []
    for r in rows:
        assert r["verdict"] in ("derived", "independent", "inconclusive")
        assert r["peak_rss_mib"] >= r["start_rss_mib"] > 0  # measured in the pair's own process
        assert set(r["baselines"]) == {"weight-spread", "cka"}
    noise = next(r for r in rows if r["pair"] == "b0~noise")
    assert noise["baselines"]["weight-spread"]["statistic"] > 0.99
    assert noise["baselines"]["cka"]["statistic"] > 0.99
    drop = next(r for r in rows if r["pair"] == "b0~drop")
    assert drop["baselines"]["weight-spread"]["reason"] == "different depth (4 vs 3 layers)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"derived": 2, "independent": 3, "distilled": 1, "errors": 0}
    assert summary["meta"]["command"].startswith("modeltrace bench --quick --out ")
    doc = (out / "lineage.md").read_text()
    assert summary["meta"]["command"] in doc
    assert "## Targets" in doc and "## Real models" in doc
    assert (out / "img" / "lineage-roc.png").stat().st_size > 1000
    assert "pairs: 2 derived, 3 independent, 1 distilled, 0 errors" in res.output

    # a rerun does every pair from the file: nothing is appended
    res = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert len(_read_jsonl(out / "pairs.jsonl")) == len(rows)


def test_in_process_with_a_method_flows_into_metrics(zoo: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS._targets, "test-cosine", f"{__name__}:CosineTestMethod")
    cfg = runner.BenchConfig(out=tmp_path / "r", cache=tmp_path / "c", quick=True, methods=("test-cosine",),
                             peers=False, manifest=zoo, isolate=False, docs=tmp_path / "docs" / "lineage.md")
    s = runner.run_benchmark(cfg)
    comb, meth = s["detectors"]["combined"], s["detectors"]["test-cosine"]
    # noised copy: shared same-named tensors -> tiny p; independent pairs -> no detection
    assert comb["detected"] >= 1 and comb["false_positives"] == 0
    assert meth["ks_uniform"]["n"] == 3
    assert s["detection_by_kind"]["noise"]["test-cosine"] == {"detected": 1, "n": 1}
    assert s["detection_by_kind"]["distill"]["combined"] == {"detected": 0, "n": 1}
    assert s["diagnosis"]["overall"]["noise_sigma"] == {"correct": 1, "checked": 1}
    assert s["diagnosis"]["overall"]["dropped_layers"] == {"correct": 0, "checked": 1}
    assert "peak_rss_mib" not in _read_jsonl(tmp_path / "r" / "pairs.jsonl")[0]  # not per-pair in-process
    assert (tmp_path / "docs" / "img" / "lineage-qq.png").is_file()
    assert s["figures"]["qq"] == "img/lineage-qq.png"
    # a different method set is a different run: rows are not reused
    assert runner.run_key(["test-cosine"]) != runner.run_key([])


def test_pairs_glob_selects_and_unknown_glob_is_a_clear_error(zoo: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--manifest", str(zoo), "--out", str(tmp_path), "--no-peers", "--no-realmodels",
              "--pairs", "nothing*", "--in-process"])
    assert exc.value.code == 2
    assert "error: no pair id matches 'nothing*'" in capsys.readouterr().err
    assert [p.id for p in runner.select_pairs(runner.load_manifest(zoo).pairs, "b0~b*")] == ["b0~b1", "b0~b2"]


def test_unknown_method_is_a_one_line_error(zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--manifest", str(zoo), "--out", str(tmp_path), "--methods", "no-such-method"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown evidence method 'no-such-method'")


def test_bad_manifest_names_the_file_and_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"schema": "modeltrace.zoo/1", "models": [{"id": "x", "path": "x"}],
                               "pairs": [{"id": "p", "a": "x", "b": "y", "label": "derived"}]}))
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--manifest", str(bad), "--out", str(tmp_path / "o"), "--no-peers", "--no-realmodels"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {bad}: pairs[0] (p): model 'y' is not in 'models'\n"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(Exception, match="not a zoo manifest"):
        runner.load_manifest(bad)


def test_a_crashing_pair_is_recorded_not_fatal(zoo: Path, tmp_path: Path) -> None:
    spec = runner.load_manifest(zoo).pairs[0]
    broken = runner.PairSpec(id="broken", a="x", b="y", a_path=tmp_path / "missing", b_path=spec.b_path,
                             label="derived", kind="noise")
    rows = runner.run_pairs([broken], tmp_path / "p.jsonl", [], threshold=1e-6, isolate=True, timeout_s=120)
    assert rows[0]["error"].startswith("ResolveError: ")
    # errored pairs are run again on the next call (and fail again, appended)
    runner.run_pairs([broken], tmp_path / "p.jsonl", [], threshold=1e-6, isolate=False)
    assert len(_read_jsonl(tmp_path / "p.jsonl")) == 2


def test_baselines_on_known_inputs(rng: np.random.Generator) -> None:
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert baselines.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # rotation and scale invariant
    assert baselines.linear_cka(x, rng.normal(size=(200, 16))) < 0.2


def test_peer_driver_protocol_records_answers_and_errors(zoo: Path, tmp_path: Path) -> None:
    driver = peers._DRIVER_HEAD + r'''
def run(a, b):
    if b.endswith("base1"):
        raise ValueError("cannot read " + os.path.basename(b))
    print("noise a peer prints on stdout")
    return {"verdict": "MATCH" if b.endswith("noise") else "NO", "score": 0.9 if b.endswith("noise") else 0.1}
''' + peers._DRIVER_LOOP
    spec = peers.PeerSpec(name="fake", package="fake-peer", version="0", import_name="json", install=(),
                          driver=driver, positive=("MATCH",), about="a fake peer")
    pairs = runner.load_manifest(zoo).pairs[:3]
    rows = peers.run_peer(spec, Path(sys.executable), pairs, tmp_path / "peers-fake.jsonl")
    by = {r["pair"]: r for r in rows}
    assert by["b0~noise"]["detected"] is True and by["b0~noise"]["score"] == 0.9
    assert by["b0~drop"]["detected"] is False
    assert by["b0~b1"]["detected"] is None and by["b0~b1"]["error"] == "ValueError: cannot read base1"
    # rerun: only the errored pair is asked again
    again = peers.run_peer(spec, Path(sys.executable), pairs, tmp_path / "peers-fake.jsonl")
    assert len(again) == 3 and len(_read_jsonl(tmp_path / "peers-fake.jsonl")) == 4
    s = summarize([], peers={"fake": {"package": "fake-peer", "version": "0", "about": "x", "positive": ["MATCH"],
                                      "error": None, "rows": rows}})
    assert s["peers"]["fake"]["errors"] == 1


@pytest.mark.slow  # creates a virtual environment
def test_peer_that_fails_to_install_reports_the_error(tmp_path: Path) -> None:
    spec = peers.PeerSpec(name="ghost", package="ghost", version="0", import_name="ghost_pkg_xyz",
                          install=(("--no-index", "ghost-pkg-that-does-not-exist-xyz"),), driver="",
                          positive=(), about="")
    env = peers.ensure_installed(spec, tmp_path)
    assert env.python is None
    assert env.error is not None and env.error.startswith(
        "pip install --no-index ghost-pkg-that-does-not-exist-xyz failed (status 1): ")


def test_summary_puts_peers_and_their_sub_scores_beside_modeltrace() -> None:
    def row(pair: str, label: str, p: float) -> dict[str, Any]:
        return {"pair": pair, "label": label, "kind": "noise" if label == "derived" else "independent-same-arch",
                "verdict": "derived" if p < 1e-6 else "independent", "p_value": p, "evidence": {}, "truth": {},
                "transforms": [], "baselines": {}}
    rows = [row("d1", "derived", 1e-30), row("d2", "derived", 1e-3), row("n1", "independent", 0.4),
            row("n2", "independent", 0.9)]
    prow = [{"pair": "d1", "verdict": "EXACT_COPY", "score": 0.99, "detected": True,
             "details": {"features": {"sigma_r": 0.9}}},
            {"pair": "d2", "verdict": "NO_MATCH", "score": None, "detected": False,
             "details": {"features": {"sigma_r": 0.8}}},
            {"pair": "n1", "verdict": "SAME_LINEAGE", "score": 0.95, "detected": True,
             "details": {"features": {"sigma_r": 0.85}}},
            {"pair": "n2", "error": "boom", "detected": None}]
    s = summarize(rows, peers={"modeldna": {"package": "modeldna", "version": "0.1.0", "about": "x",
                                            "positive": ["EXACT_COPY"], "error": None, "rows": prow},
                               "broken": {"package": "b", "version": "1", "about": "y", "positive": [],
                                          "error": "pip install failed", "rows": []}})
    dna = s["detectors"]["modeldna"]
    assert (dna["detected"], dna["false_positives"]) == (1, 1)
    assert dna["auroc"] == pytest.approx(0.625)  # d1 0.99 beats both; d2 and n2 (no score) tie; d2 < n1
    sub = s["detectors"]["modeldna:sigma_r"]
    assert sub["auroc"] == pytest.approx(0.75) and sub["detected"] is None  # 0.9 beats 0.85 and n2 (no score); 0.8 only n2
    assert s["detectors"]["combined"]["auroc"] == 1.0
    assert "broken" not in s["detectors"] and s["peers"]["broken"]["error"] == "pip install failed"
    assert s["peers"]["modeldna"]["errors"] == 1
    assert s["targets"]["detect_all_weight_sharing"]["met"] is False
    assert s["targets"]["zero_false_positives"]["met"] is True


def test_two_runs_on_one_results_folder_are_refused(zoo: Path, tmp_path: Path) -> None:
    import fcntl

    from modeltrace.errors import ModelTraceError

    out = tmp_path / "r"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        cfg = runner.BenchConfig(out=out, cache=tmp_path / "c", quick=True, methods=("weight-identity",),
                                 peers=False, manifest=zoo, isolate=False)
        with pytest.raises(ModelTraceError, match=f"another benchmark run is writing to {out}"):
            runner.run_benchmark(cfg)


def test_real_pairs_come_from_the_shared_pairs_file(realmodels: Path) -> None:
    rp = runner.real_pairs(realmodels, fetch=False)
    assert rp.skipped is None
    assert [(p.id, p.label) for p in rp.pairs] == [("P01", "derived"), ("P02", "derived"), ("N16", "independent"),
                                                   ("N22", "independent"), ("N23", "independent")]
    assert all(p.set == "real" and p.a_path.is_absolute() and p.a_path.exists() for p in rp.pairs)


@pytest.mark.realmodels  # needs ../shared/realmodels: under CI=true a skip is a failure
def test_absent_real_models_are_reported_as_skipped(tmp_path: Path) -> None:
    if runner.shared_dir() is None:
        pytest.skip("../shared/realmodels/pairs.json absent")
    rp = runner.real_pairs(tmp_path / "none", fetch=False)
    assert rp.pairs == [] and rp.skipped == f"models absent at {tmp_path / 'none'} and not fetched"
