"""Our K-quant encoders, decoded by the gguf package's reference dequantizers, and the GGUF writer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from modeltrace.errors import FormatError
from modeltrace.formats.gguf import GGUFReader
from modeltrace.formats.gguf_write import (
    encode_q4_k,
    encode_q5_k,
    encode_q6_k,
    quantize_k,
    tensor_qtype,
    write_gguf,
)

ENCODERS = {"Q4_K": (encode_q4_k, 144), "Q5_K": (encode_q5_k, 176), "Q6_K": (encode_q6_k, 210)}


def _decode(raw: np.ndarray, qtype: str) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(-1, 256)


def _rel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


@pytest.mark.parametrize("qtype", list(ENCODERS))
def test_block_sizes_match_ggml(qtype: str) -> None:
    encode, size = ENCODERS[qtype]
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]] == (256, size)
    raw = encode(np.zeros((3, 256), np.float32))
    assert raw.shape == (3, size) and raw.dtype == np.uint8
    np.testing.assert_array_equal(_decode(raw, qtype), np.zeros((3, 256), np.float32))


# Measured on this data: Q4_K 0.059, Q5_K 0.030, Q6_K 0.015 (Q4_0 0.075, Q4_1 0.063, Q5_0 0.037).
@pytest.mark.parametrize(("qtype", "bound", "legacy"), [("Q4_K", 0.065, "Q4_1"), ("Q5_K", 0.033, "Q5_0"),
                                                        ("Q6_K", 0.017, "Q5_0")])
def test_gaussian_round_trip_error(qtype: str, bound: float, legacy: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    x[3] += 0.3  # a block with an offset
    x[5] = 0.0  # an all-zero block
    encode, _ = ENCODERS[qtype]
    y = _decode(encode(x), qtype)
    err = _rel_rmse(y, x)
    assert err < bound
    qt = gguf.GGMLQuantizationType[legacy]
    legacy_err = _rel_rmse(gguf.quants.dequantize(gguf.quants.quantize(x, qt), qt), x)
    assert err < legacy_err  # K-quants beat the legacy type of the same or more bits
    np.testing.assert_array_equal(y[5], 0.0)


@pytest.mark.parametrize("qtype", list(ENCODERS))
def test_sub_block_order_and_signs(qtype: str) -> None:
    # Each 16-element group holds its own level; a mistake in where scales, mins or bits go scrambles them.
    levels = np.repeat(np.linspace(-3.5, 4.0, 16), 16).astype(np.float32)
    rng = np.random.default_rng(1)
    x = np.stack([levels, -levels, levels[::-1], levels + 0.01 * rng.standard_normal(256).astype(np.float32)])
    encode, _ = ENCODERS[qtype]
    y = _decode(encode(x), qtype)
    assert np.abs(y - x).max() < 0.06 * np.abs(x).max(), np.abs(y - x).max()


@pytest.mark.parametrize("qtype", list(ENCODERS))
def test_element_error_is_within_one_step(qtype: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (8, 256)).astype(np.float32)
    encode, _ = ENCODERS[qtype]
    y = _decode(encode(x), qtype)
    levels = {"Q4_K": 15, "Q5_K": 31, "Q6_K": 63}[qtype]
    step = 2.0 / levels  # a range of 2 split into `levels` steps
    # Rounding alone gives a mean error of step/4; the scale search may clip an extreme by up to a step.
    # Measured: max/step 0.63, 0.83, 0.50 and mean/step 0.20, 0.21, 0.20 for Q4_K, Q5_K, Q6_K.
    assert np.abs(y - x).max() <= step
    assert np.abs(y - x).mean() <= 0.25 * step


def test_quantize_k_keeps_leading_shape() -> None:
    x = np.random.default_rng(3).standard_normal((2, 3, 512)).astype(np.float32)
    raw = quantize_k(x, "Q6_K")
    assert raw.shape == (2, 3, 2 * 210)
    back = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K)
    assert back.shape == x.shape and _rel_rmse(back, x) < 0.02


def test_tensor_qtype_fallbacks() -> None:
    assert tensor_qtype((256,), "Q4_K") == "F32"
    assert tensor_qtype((4, 96), "Q4_K") == "F16"
    assert tensor_qtype((4, 96), "Q8_0") == "Q8_0"
    assert tensor_qtype((4, 100), "Q8_0") == "F16"
    assert tensor_qtype((4, 512), "Q5_K") == "Q5_K"
    assert tensor_qtype((7,), "F16") == "F32"
    assert tensor_qtype((2, 7), "BF16") == "BF16"


@pytest.mark.parametrize("qtype", ["F32", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_K"])
def test_write_every_type(tmp_path: Path, qtype: str) -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    path = write_gguf(tmp_path / "m.gguf", {"w": w}, qtype, arch="qwen2", metadata={"qwen2.block_count": 2})
    with GGUFReader(path) as src:
        assert src.info("w").dtype == qtype
        assert src.metadata()["general.architecture"] == "qwen2"
        tol = {"F32": 0.0, "BF16": 0.01, "Q4_0": 0.1, "Q4_1": 0.08, "Q5_0": 0.05, "Q5_K": 0.04}[qtype]
        assert _rel_rmse(src.read("w"), w) <= tol


def test_unknown_qtype(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    with pytest.raises(FormatError) as err:
        write_gguf(path, {"w": np.zeros((2, 256), np.float32)}, "Q3_K")
    assert str(err.value) == (f"{path}: cannot write GGUF type 'Q3_K' (supported: F32, F16, BF16, Q8_0, "
                              "Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)")
    assert not path.exists()
