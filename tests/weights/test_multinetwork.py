"""Folders that hold several networks: each file a component, paired with its copy by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modeltrace.compare import compare
from modeltrace.model import Model

NETS = {  # a face-detection cascade in the MTCNN style: the three files reuse the same tensor names
    "pnet": {"conv1.weight": (10, 3, 3, 3), "conv1.bias": (10,), "conv2.weight": (16, 10, 3, 3),
             "conv2.bias": (16,), "conv3.weight": (32, 16, 3, 3), "conv3.bias": (32,), "head.weight": (6, 32)},
    "rnet": {"conv1.weight": (28, 3, 3, 3), "conv1.bias": (28,), "conv2.weight": (48, 28, 3, 3),
             "conv2.bias": (48,), "fc.weight": (128, 192), "fc.bias": (128,), "head.weight": (6, 128)},
    "onet": {"conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3),
             "conv2.bias": (64,), "fc.weight": (256, 576), "fc.bias": (256,), "head.weight": (16, 256)},
}
RENAMED = {"pnet": "z_propose", "rnet": "a_refine", "onet": "m_output"}


def _state(seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {net: {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in spec.items()}
            for net, spec in NETS.items()}


def _write(folder: Path, nets: dict[str, dict[str, np.ndarray]], rename: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for net, st in nets.items():
        name = RENAMED[net] if rename else net
        if rename:  # the modules renamed too
            st = {f"body.layer_{k.replace('.', '_w_')}": v for k, v in st.items()}
        torch.save({k: torch.from_numpy(v.copy()) for k, v in st.items()}, folder / f"{name}.pt")
    return folder


def test_colliding_names_make_one_component_per_file(tmp_path: Path) -> None:
    with Model.open(str(_write(tmp_path / "a", _state(0)))) as m:
        names = set(m.source.infos())
        assert "pnet/conv1.weight" in names and "onet/conv1.weight" in names and len(names) == 21
        assert m.source.components == ["onet", "pnet", "rnet"]  # type: ignore[attr-defined]


def test_renamed_copy_is_derived_per_component(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", _state(0))
    b = _write(tmp_path / "b", _state(0), rename=True)
    c = _write(tmp_path / "c", _state(1), rename=True)
    methods = ["weight-match", "weight-identity", "weight-permutation"]
    with Model.open(str(a)) as ma, Model.open(str(b)) as mb:
        r = compare(ma, mb, methods=methods)
    assert r.verdict == "derived" and r.p_value < 1e-6
    match = next(e for e in r.evidence if e.method == "weight-match")
    comps = {x["a"]: x for x in match.details["components"]}
    assert {k: v["b"] for k, v in comps.items()} == {"pnet": "z_propose", "rnet": "a_refine", "onet": "m_output"}
    for net, x in comps.items():
        assert x["pairs"] == x["tensors_a"] == len(NETS[net])
        assert x["p_value"] < 1e-6
    with Model.open(str(a)) as ma, Model.open(str(c)) as mc:
        r = compare(ma, mc, methods=methods)
    assert r.verdict != "derived"


@pytest.mark.parametrize("layout", ["index", "disjoint"])
def test_shards_stay_one_model(tmp_path: Path, layout: str) -> None:
    from safetensors.numpy import save_file

    root = tmp_path / "m"
    root.mkdir()
    save_file({"a.weight": np.ones((2, 2), np.float32)}, str(root / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": np.ones((2, 2), np.float32)}, str(root / "model-00002-of-00002.safetensors"))
    if layout == "index":
        (root / "model.safetensors.index.json").write_text(
            '{"weight_map": {"a.weight": "model-00001-of-00002.safetensors", '
            '"b.weight": "model-00002-of-00002.safetensors"}}')
    with Model.open(str(root)) as m:
        assert sorted(m.source.infos()) == ["a.weight", "b.weight"]
        assert m.source.components is None  # type: ignore[attr-defined]


def test_diffusers_folders_are_components(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    root = tmp_path / "pipe"
    for sub, fname in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        (root / sub).mkdir(parents=True)
        save_file({"conv_in.weight": np.ones((4, 4), np.float32)}, str(root / sub / f"{fname}.safetensors"))
    (root / "model_index.json").write_text("{}")
    with Model.open(str(root)) as m:
        assert sorted(m.source.infos()) == ["text_encoder/conv_in.weight", "unet/conv_in.weight",
                                            "vae/conv_in.weight"]


def test_encoder_decoder_onnx_pair_is_two_components(tmp_path: Path) -> None:
    from modeltrace.formats.onnx_write import write_onnx

    root = tmp_path / "whisper"
    root.mkdir()
    write_onnx(root / "encoder.onnx", {"proj.weight": np.ones((4, 4), np.float32)})
    write_onnx(root / "decoder.onnx", {"proj.weight": np.ones((4, 4), np.float32)})
    with Model.open(str(root)) as m:
        assert m.source.components == ["decoder", "encoder"]  # type: ignore[attr-defined]


def test_quantized_onnx_variant_is_not_a_second_network(tmp_path: Path) -> None:
    from modeltrace.formats.onnx_write import write_onnx

    root = tmp_path / "export"
    root.mkdir()
    write_onnx(root / "model.onnx", {"proj.weight": np.ones((4, 4), np.float32)})
    write_onnx(root / "model_quantized.onnx", {"proj.weight": np.ones((4, 4), np.float32)})
    with Model.open(str(root)) as m:
        assert [p.name for p in m.weight_files] == ["model.onnx"]
