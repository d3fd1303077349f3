"""Model folders: which weight files are chosen, shards through the index, artifacts, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from st_builders import llama_folder, llama_params, write_safetensors

from modeltrace.errors import FormatError, ResolveError, UnsafeFileError
from modeltrace.model import Model


def test_single_file_model(tmp_path: Path) -> None:
    p = write_safetensors(tmp_path / "w.safetensors", {"a": np.ones((2, 3), dtype=np.float32)})
    (tmp_path / "config.json").write_text("{not json")  # a single file never reads its neighbours
    with Model.open(str(p)) as m:
        assert m.single_file and m.weight_files == [p] and m.files == [p]
        assert m.config is None and m.tokenizer_files == [] and m.code_files == []
        assert m.formats == ["safetensors"]
        assert m.name == "w.safetensors"
        assert sum(i.numel for i in m.source.infos().values()) == 6


def test_folder_with_config_tokenizer_and_code(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(1))
    marker = tmp_path / "ran.txt"
    (root / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with Model.open(str(root)) as m:
        assert [p.name for p in m.weight_files] == ["model.safetensors"]
        assert m.config is not None and m.config["architectures"] == ["LlamaForCausalLM"]
        assert [p.name for p in m.tokenizer_files] == ["tokenizer.json", "tokenizer_config.json"]
        assert [p.name for p in m.code_files] == ["modeling_evil.py"]
        assert sum(i.numel for i in m.source.infos().values()) == llama_params()
    assert not marker.exists()  # code files are listed, never imported


def test_safetensors_preferred_over_pickles(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(1))
    (root / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not read")
    (root / "training_args.bin").write_bytes(b"x")
    with Model.open(str(root)) as m:
        assert [p.name for p in m.weight_files] == ["model.safetensors"]


def test_sentence_transformers_submodules_get_prefixes(tmp_path: Path) -> None:
    root = tmp_path / "st"
    root.mkdir()
    write_safetensors(root / "model.safetensors", {"embeddings.word_embeddings.weight": np.ones((4, 2), np.float32)})
    (root / "2_Dense").mkdir()
    write_safetensors(root / "2_Dense" / "model.safetensors", {"linear.weight": np.ones((3, 2), np.float32)})
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with Model.open(str(root)) as m:
        assert sorted(m.source.infos()) == ["2_Dense/linear.weight", "embeddings.word_embeddings.weight"]
        np.testing.assert_array_equal(m.source.read("2_Dense/linear.weight"), np.ones((3, 2)))


def test_module_path_outside_the_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "st"
    root.mkdir()
    write_safetensors(root / "model.safetensors", {"a": np.ones(2, np.float32)})
    (root / "modules.json").write_text(json.dumps([{"path": "../elsewhere"}]))
    with pytest.raises(UnsafeFileError) as err:
        Model.open(str(root))
    assert str(err.value) == f"{root / 'modules.json'}: shard path '../elsewhere' points outside the model folder"


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(1), shards=2)
    (root / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FormatError) as err:
        Model.open(str(root))
    index = root / "model.safetensors.index.json"
    assert str(err.value) == f"{index}: names shard 'model-00002-of-00002.safetensors', which is missing"


@pytest.mark.parametrize("rel", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_path_outside_the_folder(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write_safetensors(tmp_path / "x.safetensors", {"a": np.ones(2, np.float32)})
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": rel}}))
    with pytest.raises(UnsafeFileError) as err:
        Model.open(str(root))
    assert str(err.value) == (f"{root / 'model.safetensors.index.json'}: shard path {rel!r} points outside "
                              "the model folder")


@pytest.mark.parametrize("content, message", [
    ('{"weight_map": {}}', "has no weight_map object"),
    ("[]", "has no weight_map object"),
    ('{"weight_map": {"a": 3}}', "weight_map value 3 is not a file name"),
])
def test_malformed_index(tmp_path: Path, content: str, message: str) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / "model.safetensors.index.json").write_text(content)
    with pytest.raises(FormatError) as err:
        Model.open(str(root))
    assert str(err.value) == f"{root / 'model.safetensors.index.json'}: {message}"


@pytest.mark.parametrize("content, message", [
    ('{"model_type": ', "invalid JSON at line 1 column 16: Expecting value"),
    ("[1, 2]", "config.json is not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_bad_config(tmp_path: Path, content: str | bytes, message: str) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(1))
    cfg = root / "config.json"
    if isinstance(content, bytes):
        cfg.write_bytes(content)
    else:
        cfg.write_text(content)
    m = Model.open(str(root))
    with pytest.raises(FormatError) as err:
        _ = m.config
    assert str(err.value) == f"{cfg}: {message}"


def test_oversized_json_is_refused_before_parsing(tmp_path: Path) -> None:
    from modeltrace.model import load_json

    p = tmp_path / "big.json"
    p.write_text('{"a": "' + "x" * 100 + '"}')
    with pytest.raises(FormatError) as err:
        load_json(p, limit=50)
    assert str(err.value) == f"{p}: JSON file is 109 bytes, over the 50-byte cap"


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    m = Model.open(str(tmp_path))
    with pytest.raises(FormatError) as err:
        _ = m.source
    assert str(err.value) == (f"{tmp_path}: no weight files found (looked for safetensors, .bin/.pt/.pth, GGUF "
                              "and ONNX files)")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ResolveError) as err:
        Model.open(str(tmp_path / "absent"))
    assert str(err.value) == f"{tmp_path / 'absent'}: no such file or folder"


def test_folder_under_a_hidden_cache_path_is_listed(tmp_path: Path) -> None:
    """Hidden folders *above* the model (e.g. .cache/realmodels/x) do not hide its files."""
    root = llama_folder(tmp_path / ".cache" / "models" / "m", np.random.default_rng(1))
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.safetensors").write_bytes(b"x")
    with Model.open(str(root)) as m:
        assert [p.name for p in m.weight_files] == ["model.safetensors"]
        assert all(".cache" not in p.relative_to(root).parts for p in m.files)
        assert len(m.files) == 4


def test_sharded_pytorch_bin_folder_through_its_index(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    shards = {"pytorch_model-00001-of-00002.bin": {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
              "pytorch_model-00002-of-00002.bin": {"b.weight": torch.ones(4, dtype=torch.bfloat16)}}
    weight_map = {}
    for name, sd in shards.items():
        torch.save(sd, tmp_path / name)
        weight_map.update({k: name for k in sd})
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with Model.open(str(tmp_path)) as m:
        assert [p.name for p in m.weight_files] == sorted(shards)
        assert m.formats == ["torch"]
        assert sorted(m.source.infos()) == ["a.weight", "b.weight"]
        np.testing.assert_array_equal(m.source.read("a.weight"), np.arange(6, dtype=np.float32).reshape(2, 3))
        np.testing.assert_array_equal(m.source.read("b.weight"), np.ones(4, np.float32))
