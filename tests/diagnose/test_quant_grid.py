"""Quantization grids: scheme detection and error level, and floats that must not fit any grid."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from modeltrace.diagnose.cast import round_bf16
from modeltrace.diagnose.quantize import detect_quantization


@pytest.fixture
def weights(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)


def q4_k(x: np.ndarray) -> np.ndarray:
    """Dequantized Q4_K as ggml lays it out: 256-blocks of 8 affine 32-sub-blocks, 6-bit scales and mins."""
    sub = x.reshape(-1, 8, 32).astype(np.float64)
    lo = np.minimum(sub.min(axis=2), 0.0)
    scale = (sub.max(axis=2) - lo) / 15
    d = (scale.max(axis=1) / 63).astype(np.float16).astype(np.float64)
    dmin = ((-lo).max(axis=1) / 63).astype(np.float16).astype(np.float64)
    sc = np.clip(np.rint(scale / d[:, None]), 1, 63)
    mn = np.clip(np.rint(-lo / np.where(dmin > 0, dmin, 1)[:, None]), 0, 63)
    step = (d[:, None] * sc).astype(np.float32)
    off = (dmin[:, None] * mn).astype(np.float32)
    q = np.clip(np.rint((sub + off[..., None]) / step[..., None]), 0, 15).astype(np.float32)
    return (step[..., None] * q - off[..., None]).astype(np.float32).reshape(x.shape)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((b.astype(np.float64) - a) ** 2) / np.mean(a.astype(np.float64) ** 2)))


@pytest.mark.parametrize("qtype,bits", [(QT.Q8_0, 8), (QT.Q4_0, 4), (QT.Q4_1, 4)])
def test_gguf_block_schemes(weights: np.ndarray, qtype: QT, bits: int) -> None:
    b = quants.dequantize(quants.quantize(weights, qtype), qtype)
    d = detect_quantization(b, weights)
    assert d.scheme == qtype.name
    assert d.bits == bits and d.block_size == 32
    assert d.rel_rms_error == pytest.approx(rel(weights, b), rel=1e-6)


def test_q4_k_superblocks(weights: np.ndarray) -> None:
    b = q4_k(weights)
    d = detect_quantization(b, weights)
    assert d.scheme == "Q4_K"
    assert 0.02 < (d.rel_rms_error or 0) < 0.2


def test_q4_1_is_not_read_as_q4_k(weights: np.ndarray) -> None:
    b = quants.dequantize(quants.quantize(weights, QT.Q4_1), QT.Q4_1)
    assert detect_quantization(b).scheme == "Q4_1"


def test_int8_per_channel_and_per_tensor(weights: np.ndarray) -> None:
    s = np.abs(weights).max(axis=1, keepdims=True) / 127
    per_row = (np.rint(weights / s) * s).astype(np.float32)
    assert detect_quantization(per_row, weights).scheme == "int8-per-channel"
    t = np.abs(weights).max() / 127
    per_tensor = (np.rint(weights / t) * t).astype(np.float32)
    assert detect_quantization(per_tensor, weights).scheme == "int8-per-tensor"


def test_error_level_orders_schemes(weights: np.ndarray) -> None:
    e8 = detect_quantization(quants.dequantize(quants.quantize(weights, QT.Q8_0), QT.Q8_0), weights).rel_rms_error
    e4 = detect_quantization(quants.dequantize(quants.quantize(weights, QT.Q4_0), QT.Q4_0), weights).rel_rms_error
    assert e8 is not None and e4 is not None
    assert e8 < 0.01
    assert 0.05 < e4 < 0.2


def test_float_weights_fit_no_grid(weights: np.ndarray) -> None:
    assert detect_quantization(weights).scheme is None
    assert detect_quantization(round_bf16(weights), weights).scheme is None


def test_few_distinct_values_are_uninformative() -> None:
    d = detect_quantization(np.ones((8, 64), np.float32))
    assert d.scheme is None
    assert "proves nothing" in d.reason


@pytest.mark.parametrize("qtype", ["Q5_0", "Q5_1"])
def test_five_bit_gguf_schemes(weights: np.ndarray, qtype: str) -> None:
    t = QT[qtype]
    b = quants.dequantize(quants.quantize(weights, t), t)
    d = detect_quantization(b, weights)
    assert (d.scheme, d.bits) == (qtype, 5)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K"])
def test_k_quants_from_the_gguf_encoder(weights: np.ndarray, qtype: str) -> None:
    from modeltrace.formats.gguf_write import quantize_k

    b = quants.dequantize(quantize_k(weights, qtype), QT[qtype]).reshape(weights.shape)
    assert detect_quantization(b, weights).scheme == qtype
