"""Artifact evidence on the real models of ../shared/realmodels (skipped when they are absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeltrace.artifacts.bases import identify_base
from modeltrace.artifacts.config import read_config
from modeltrace.artifacts.tokenizer import read_tokenizer
from modeltrace.compare import compare
from modeltrace.model import Model


def _linked(realmodels: Path, name: str, tmp_path: Path) -> Path:
    """The model folder behind a symlink, so its path holds no hidden (dot) folder."""
    src = realmodels / name
    if not src.is_dir():
        pytest.skip(f"{name} absent from {realmodels}")
    link = tmp_path / name
    link.symlink_to(src, target_is_directory=True)
    return link


def test_rebranded_minilm_shares_only_a_widely_shared_base(realmodels: Path, tmp_path: Path) -> None:
    a = _linked(realmodels, "all-minilm-l6-v2", tmp_path)
    b = _linked(realmodels, "all-minilm-l6-v2-rebrand-internal", tmp_path)
    res = compare(Model.open(str(a)), Model.open(str(b)),
                  methods=["config-match", "tokenizer-match", "code-clone", "tensor-names"])
    ev = {e.method: e for e in res.evidence}
    tok = ev["tokenizer-match"]
    assert tok.status == "ok" and tok.p_value is None and not tok.powered
    assert tok.details["identical_vocab"] is True
    assert tok.details["base"]["a"]["name"] == "bert-base-uncased"
    assert "both built on the widely shared bert-base-uncased base, which by itself proves nothing" in tok.statement
    cfg = ev["config-match"]
    assert cfg.status == "ok" and cfg.statistic == 1.0 and cfg.details["family"] == {"a": "bert", "b": "bert"}
    assert ev["code-clone"].status == "skipped"
    names = ev["tensor-names"]
    assert names.status == "ok" and names.details["renamed"] == []
    assert names.details["identical_names"] == names.details["n_a"] > 100


def test_gguf_tokenizer_and_config(realmodels: Path) -> None:
    files = sorted((realmodels / "smollm2-135m-instruct-q4_1").glob("*.gguf"))
    if not files:
        pytest.skip("smollm2-135m-instruct-q4_1 absent")
    m = Model.open(str(files[0]))
    tok = read_tokenizer(m)
    assert tok is not None and tok.kind == "bpe" and tok.vocab_size == 49152 and len(tok.merges) == 48900
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template
    match = identify_base(tok)
    assert match is not None and match.exact and match.base.name == "smollm2"
    cfg = read_config(m)
    assert cfg is not None and cfg.family == "llama"
    assert cfg.normalized["hidden_size"] == 576 and cfg.normalized["num_layers"] == 30
    assert cfg.normalized["vocab_size"] == 49152


def test_same_gguf_twice_shares_only_its_known_base(realmodels: Path) -> None:
    files = sorted((realmodels / "smollm2-135m-instruct-q4_1").glob("*.gguf"))
    if not files:
        pytest.skip("smollm2-135m-instruct-q4_1 absent")
    res = compare(Model.open(str(files[0])), Model.open(str(files[0])), methods=["tokenizer-match", "config-match"])
    ev = {e.method: e for e in res.evidence}
    tok = ev["tokenizer-match"]
    assert tok.status == "ok" and tok.p_value is None
    assert tok.details["base"]["a"] == {"name": "smollm2", "exact_hash": True, "containment": 1.0,
                                        "used_by": "SmolLM / SmolLM2 family (HuggingFaceTB cosmo2 tokenizer)"}
    assert tok.details["merges"] == {"a": 48900, "b": 48900, "identical_prefix": 48900}
    assert "identical chat templates after normalization (the common chatml style)" in tok.statement
    cfg = ev["config-match"]
    assert cfg.status == "ok" and cfg.details["family"] == {"a": "llama", "b": "llama"}
