"""Composite sources: many shards read with few open files; separate networks when names collide."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.errors import FormatError
from modeltrace.formats.composite import MAX_OPEN, CompositeSource, component_name
from modeltrace.model import Model

N_SHARDS = 1100


def _shards(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    wmap = {}
    for k in range(n):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({f"t{k}.weight": np.full((2, 3), k, np.float32)}, str(root / fname))
        wmap[f"t{k}.weight"] = fname
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    return root


def test_thousand_shards_read_under_a_low_file_limit(tmp_path: Path) -> None:
    root = _shards(tmp_path / "m", N_SHARDS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, in_use + 4 * MAX_OPEN), hard))
    try:
        with Model.open(str(root)) as m:
            src = m.source
            assert len(src.infos()) == N_SHARDS
            for k in range(N_SHARDS):
                assert float(src.read(f"t{k}.weight")[0, 0]) == k
            assert isinstance(src, CompositeSource) and src.open_count <= MAX_OPEN
        assert src.open_count == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_collision_without_component_names_is_one_line_error(tmp_path: Path) -> None:
    for n in ("x", "y"):
        save_file({"w": np.ones(2, np.float32)}, str(tmp_path / f"{n}.safetensors"))
    with pytest.raises(FormatError) as err:
        CompositeSource(tmp_path, [tmp_path / "x.safetensors", tmp_path / "y.safetensors"])
    assert str(err.value) == f"{tmp_path / 'y.safetensors'} [tensor w]: tensor also stored in {tmp_path / 'x.safetensors'}"


def test_collision_with_component_names_splits_into_networks(tmp_path: Path) -> None:
    for n in ("x", "y"):
        save_file({"w": np.full(2, ord(n), np.float32)}, str(tmp_path / f"{n}.safetensors"))
    src = CompositeSource(tmp_path, [tmp_path / "x.safetensors", tmp_path / "y.safetensors"], ["", ""],
                          components=["x", "y"], max_open=1)
    assert sorted(src.infos()) == ["x/w", "y/w"] and src.components == ["x", "y"]
    assert src.read("y/w")[0] == ord("y") and src.read("x/w")[0] == ord("x") and src.open_count == 1
    assert src.component_of("y/w") == "y"
    src.close()


@pytest.mark.parametrize(("rel", "name"), [("pnet.pt", "pnet"), ("unet/diffusion_pytorch_model.safetensors", "unet"),
                                           ("text_encoder/model-00001-of-00002.safetensors", "text_encoder"),
                                           ("onnx/encoder_model.onnx", "onnx/encoder_model")])
def test_component_names_from_paths(rel: str, name: str) -> None:
    assert component_name(rel) == name
