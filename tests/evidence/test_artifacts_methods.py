"""The artifact evidence methods through compare(): the Llama3-V miniature, an independent model, hostile files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from modeltrace.compare import compare
from modeltrace.evidence import METHODS
from modeltrace.evidence.base import Evidence
from modeltrace.model import Model

ARTIFACT_METHODS = ["config-match", "tokenizer-match", "code-clone", "tensor-names"]


def _fixture_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "artifacts" / "minicpm_fixture.py"
    spec = importlib.util.spec_from_file_location("minicpm_fixture", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("minicpm_fixture", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fx = _fixture_module()
    root = tmp_path_factory.mktemp("llama3v")
    return {"a": fx.build_original(root), "b": fx.build_copy(root), "c": fx.build_unrelated(root)}


def _run(a: Path, b: Path, **kw: Any) -> dict[str, Evidence]:
    res = compare(Model.open(str(a)), Model.open(str(b)), methods=ARTIFACT_METHODS, **kw)
    json.dumps(res.to_json())  # the whole result stays serializable
    return {e.method: e for e in res.evidence}


def test_methods_are_registered_as_artifact_stage() -> None:
    for name in ARTIFACT_METHODS:
        cls = METHODS.get(name)
        assert cls.name == name and cls.kind == "artifacts" and cls.stage == 30


def test_llama3v_miniature_every_signal_found(folders: dict[str, Path]) -> None:
    ev = _run(folders["a"], folders["b"])
    assert all(e.status == "ok" for e in ev.values()), {k: e.statement for k, e in ev.items()}

    tok = ev["tokenizer-match"]
    assert "B's tokenizer config points at A's module modeling_minicpmv (which B does not ship)" in tok.statement
    assert "B adds the same 13 custom token(s) at the same ids as A (ids 128002, 128010-128021" in tok.statement
    assert "widely shared llama-3 base, which by itself proves nothing" in tok.statement
    assert tok.details["base"]["a"]["name"] == "llama-3"
    # 13 tokens = <unk> + 6 open/close pairs = 7 units, all at A's ids: p = 1/7!
    assert tok.p_value == pytest.approx(1 / 5040)
    side = {d["content"]: d for d in tok.details["added_tokens_side_by_side"]}
    assert side["<slice>"] == {"content": "<slice>", "id_a": 128020, "id_b": 128020, "custom": True,
                               "why": "custom: not part of a known base"}
    assert side["<|begin_of_text|>"]["custom"] is False

    cfg = ev["config-match"]
    assert cfg.details["strong_signal"] is True
    assert {"query_num": 96, "slice_mode": True}.items() <= cfg.details["peculiar_shared"].items()
    assert "image_size" not in cfg.details["peculiar_shared"]  # common to many architectures
    assert cfg.statistic == 1.0 and cfg.p_value is None

    code = ev["code-clone"]
    pairs = {(p["a"], p["b"]): p for p in code.details["pairs"]}
    assert pairs[("resampler.py", "projection.py")]["similarity"] > 0.9
    assert pairs[("modeling_minicpmv.py", "modeling_llama3v.py")]["similarity"] > 0.9
    renames = code.details["rename_map"]
    assert renames["get_2d_sincos_pos_embed"] == "pos_embed_val"
    assert renames["_set_2d_pos_cache"] == "_cache_pos"
    assert any(r["a"].startswith("resampler.py:") and r["b"].startswith("projection.py:")
               for r in code.details["clone_regions"])
    assert code.p_value is not None and code.p_value < 0.05

    names = ev["tensor-names"]
    renamed = {(r["a"], r["b"]): r for r in names.details["renamed"]}
    assert renamed[("vpm.", "vison.")]["all_sub_keys_unchanged"] is True
    assert renamed[("resampler.", "projection.")]["all_sub_keys_unchanged"] is True
    assert [k["a"] for k in names.details["kept"]] == ["llm."]
    assert "vpm. -> vison. (every sub-key unchanged)" in names.statement


def test_independent_model_on_the_same_base_shows_no_copy(folders: dict[str, Path]) -> None:
    ev = _run(folders["a"], folders["c"])
    tok = ev["tokenizer-match"]
    assert tok.status == "ok" and tok.p_value is None and not tok.powered
    assert "custom token(s) at the same ids" not in tok.statement
    assert "6 custom token(s) shared at different ids" in tok.statement
    assert tok.details["references_to_a"] == []
    cfg = ev["config-match"]
    assert cfg.details["peculiar_shared"] == {} and cfg.details["references_to_a"] == []
    code = ev["code-clone"]
    assert code.p_value is not None and code.p_value > 0.05
    assert code.details["rename_map"] == {}
    names = ev["tensor-names"]
    assert names.details["renamed"] == []


def test_compare_on_a_copy_reports_config_auto_map_reference(tmp_path: Path, folders: dict[str, Path]) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(folders["b"], b)
    cfg = json.loads((b / "config.json").read_text())
    cfg["auto_map"]["AutoModel"] = "modeling_minicpmv.MiniCPMV"
    cfg["_name_or_path"] = "MiniCPM-Llama3-V-2_5"
    cfg["auto_map"]["AutoConfig"] = "openbmb/MiniCPM-Llama3-V-2_5--configuration_minicpm.MiniCPMVConfig"
    (b / "config.json").write_text(json.dumps(cfg))
    ev = _run(folders["a"], b)
    refs = ev["config-match"].details["references_to_a"]
    assert "B's config.json auto_map points at A's module modeling_minicpmv (which B does not ship)" in refs
    assert "B's config.json _name_or_path is MiniCPM-Llama3-V-2_5, A's name" in refs
    assert "B's config.json auto_map loads code from openbmb/MiniCPM-Llama3-V-2_5, A's repository" in refs
    assert "B's config.json auto_map points at A's module configuration_minicpm (which B does not ship)" in refs


def test_missing_artifacts_skip_with_reasons(tmp_path: Path, folders: dict[str, Path]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "notes.txt").write_text("nothing here")
    ev = _run(folders["a"], bare)
    assert ev["config-match"].status == "skipped"
    assert ev["config-match"].statement == "B has no config.json and no GGUF header to read a config from"
    assert ev["tokenizer-match"].statement == "B ships no tokenizer files and no GGUF tokenizer"
    assert ev["code-clone"].statement == "B ships no Python files (give more with the code option)"
    assert ev["tensor-names"].statement == "B has no weight files to read tensor names from"


def test_extra_code_option(tmp_path: Path, folders: dict[str, Path]) -> None:
    fx = _fixture_module()
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "proj.py").write_text(fx.disguise((fx.DATA / "minicpm_resampler.py").read_text(),
                                              fx.RESAMPLER_RENAMES, seed=11))
    bare = tmp_path / "weights-only"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    res = compare(Model.open(str(folders["a"])), Model.open(str(bare)), methods=["code-clone"],
                  options={"code": [str(repo)]})
    ev = res.evidence[0]
    assert ev.status == "ok"
    assert ev.details["pairs"][0]["a"] == "resampler.py" and ev.details["pairs"][0]["b"] == "repo/proj.py"
    assert ev.details["rename_map"]["get_2d_sincos_pos_embed"] == "pos_embed_val"


def test_hostile_files_become_findings_not_crashes(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "x", "hidden_size": 8}))
    (a / "tokenizer.json").write_text("[" * 50_000 + "]" * 50_000)
    (b / "config.json").write_text("{" * 50_000)
    (b / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                                  "added_tokens": []}))
    (a / "modeling_bomb.py").write_text("x = " + "-" * 5000 + "1\n")
    (a / "modeling_ok.py").write_text("def f(x):\n    return x\n")
    (b / "modeling_ok.py").write_text("def g(y):\n    return y\n")
    evil = "\x1b[2J<script>alert(1)</script>"
    (b / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [f"{evil}.X", None]}}))
    ev = _run(a, b)
    tok = ev["tokenizer-match"]
    assert tok.status == "error"
    assert tok.statement == f"{a / 'tokenizer.json'}: JSON nested too deeply"
    assert ev["config-match"].status == "error"
    assert ev["config-match"].statement.startswith(f"{b / 'config.json'}: ")
    code = ev["code-clone"]
    assert code.status == "ok"
    assert code.details["skipped_files"][0].startswith("A: modeling_bomb.py: syntax tree")
    for e in ev.values():
        assert "\x1b" not in e.statement


def test_evil_token_strings_are_escaped_in_statements(tmp_path: Path) -> None:
    evil = "<\x1b[31mred\u202e>"
    tj = {"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(50)}, "merges": []},
          "added_tokens": [{"id": 50 + i, "content": f"{evil}{i}", "special": True} for i in range(4)]}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "tokenizer.json").write_text(json.dumps(tj))
    ev = _run(tmp_path / "a", tmp_path / "b")["tokenizer-match"]
    assert ev.status == "ok" and ev.p_value is None  # no known base: these may be a base's own tokens
    assert "4 custom token(s) at the same ids" in ev.statement
    assert "(so shared added tokens get no p-value)" in ev.statement
    assert "\x1b" not in ev.statement and "\u202e" not in ev.statement
    assert "\\x1b[31mred\\u202e" in ev.statement
    assert all("\x1b" not in d["content"] for d in ev.details["added_tokens_side_by_side"])


def test_tensor_names_from_the_weight_matchings_rename_map(tmp_path: Path) -> None:
    from modeltrace.evidence.artifacts_names import TensorNamesMethod
    from modeltrace.evidence.base import CompareContext

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    names = [f"vpm.encoder.layers.{i}.mlp.fc{j}.weight" for i in range(3) for j in (1, 2)]
    ctx = CompareContext(a=Model.open(str(tmp_path / "a")), b=Model.open(str(tmp_path / "b")),
                         rename_map={n: n.replace("vpm.", "vison.", 1) for n in names})
    method = TensorNamesMethod()
    assert method.needs(ctx) is None
    ev = method.run(ctx)
    assert ev.details["source"] == "the weight matching's rename map"
    assert ev.details["renamed"] == [{"a": "vpm.", "b": "vison.", "n_a": 6, "n_b": 6, "n_shared": 6,
                                      "all_sub_keys_unchanged": True}]
    assert ev.statement.startswith("renamed prefixes vpm. -> vison. (every sub-key unchanged)")


def test_gguf_header_keys_are_not_flagged_peculiar(tmp_path: Path) -> None:
    from modeltrace.artifacts.config import from_gguf
    from modeltrace.evidence.artifacts_config import ConfigMatchMethod
    from modeltrace.evidence.base import CompareContext

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    ctx = CompareContext(a=Model.open(str(tmp_path / "a")), b=Model.open(str(tmp_path / "b")))
    meta = {"general.architecture": "llama", "general.quantization_version": 2, "llama.embedding_length": 576,
            "llama.block_count": 30}
    ca, cb = from_gguf(meta, "a.gguf"), from_gguf(meta, "b.gguf")
    assert ca is not None and cb is not None
    ev = ConfigMatchMethod().compare(ca, cb, ctx)
    assert ev.details["peculiar_shared"] == {} and ev.statistic == 1.0
    assert ev.statement == "2/2 normalized hyperparameters equal; same family llama"


def test_broken_config_of_a_does_not_sink_tokenizer_match(tmp_path: Path) -> None:
    tj = {"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(50)}, "merges": []}, "added_tokens": []}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "tokenizer.json").write_text(json.dumps(tj))
    (tmp_path / "a" / "config.json").write_text("not json")
    (tmp_path / "a" / "modeling_x.py").write_text("X = 1\n")
    (tmp_path / "b" / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["a--modeling_x.Tok", None]}}))
    (tmp_path / "b" / "config.json").write_text("{}")
    ev = _run(tmp_path / "a", tmp_path / "b")
    assert ev["config-match"].status == "error"
    assert ev["config-match"].statement == f"{tmp_path / 'a' / 'config.json'}: invalid JSON at line 1 column 1: " \
                                           "Expecting value"
    tok = ev["tokenizer-match"]
    assert tok.status == "ok"
    assert tok.details["references_to_a"] == [("B's tokenizer config points at A's module modeling_x (which B does "
                                              "not ship)")]


def test_tiktoken_only_models_are_compared(tmp_path: Path) -> None:
    import base64

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "qwen.tiktoken").write_text(
            "".join(f"{base64.b64encode(t.encode()).decode()} {i}\n" for i, t in enumerate(["a", "b", "ab", " x"])))
    ev = _run(tmp_path / "a", tmp_path / "b")["tokenizer-match"]
    assert ev.status == "ok" and ev.details["identical_vocab"] is True
    assert ev.details["kind"] == {"a": "tiktoken", "b": "tiktoken"}


def test_extra_base_table_entries_from_options(tmp_path: Path) -> None:
    from modeltrace.artifacts.bases import BaseTokenizer, make_entry
    from modeltrace.artifacts.tokenizer import Tokenizer

    vocab = {f"t{i}": i for i in range(200)}
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": []},
          "added_tokens": [{"id": 200 + i, "content": c, "special": True}
                           for i, c in enumerate(["<img>", "</img>", "<cap>", "<ocr>", "<det>"])]}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "tokenizer.json").write_text(json.dumps(tj))
    row = make_entry(Tokenizer(kind="bpe", vocab=vocab), "house-base", "one lab's models", "test")
    base = BaseTokenizer(name="house-base", kind="bpe", core_size=row["core_size"], vocab_sha256=row["vocab_sha256"],
                         sketch=tuple(row["sketch"]), standard_added={}, used_by="", source="")
    plain = _run(tmp_path / "a", tmp_path / "b")["tokenizer-match"]
    assert plain.p_value is None
    res = compare(Model.open(str(tmp_path / "a")), Model.open(str(tmp_path / "b")), methods=["tokenizer-match"],
                  options={"tokenizer_bases": [base]})
    ev = res.evidence[0]
    assert ev.details["base"]["a"]["name"] == "house-base"
    assert ev.details["custom_units"] == 4  # <img> </img> is one unit
    assert ev.p_value == pytest.approx(1 / 24)
