"""Write GGUF files (for tests and the benchmark's model zoo), with our own K-quant encoders.

F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0 go through ``gguf.quants.quantize``; Q4_K, Q5_K and Q6_K,
which the `gguf` package can only decode, are encoded here in numpy. The block layouts are
those of ggml's k-quants (``block_q4_K``: f16 d, f16 dmin, 12 bytes of packed 6-bit scales and
mins, 128 bytes of 4-bit quants; ``block_q5_K`` adds 32 bytes of fifth bits; ``block_q6_K``:
128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales, f16 d), all 256 elements per
super-block. Scale search follows the idea of ggml's ``make_qkx2_quants``/``make_qx_quants``
(try a few candidate scales, refit scale and offset by weighted least squares, keep the best);
the code is ours. Correctness is checked by decoding with ``gguf.quants.dequantize``.

As in llama.cpp, 1-D tensors (norms, biases) stay F32 and tensors whose rows are not a whole
number of blocks fall back to F16.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError

QK_K = 256
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
GGUF_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
QTYPES = GGUF_QUANTS + K_QUANTS
CHUNK_BLOCKS = 4096  # super-blocks encoded at a time, to bound the encoder's scratch memory (~4 MB a temp)
# llama_ftype values for general.file_type ("mostly <qtype>").
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q4_K": 15,
              "Q5_K": 17, "Q6_K": 18, "BF16": 32}


# ---------------------------------------------------------------------------- K-quant encoders


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to float16 and back, as the stored super-block scales will be."""
    return x.astype(np.float16).astype(np.float32)


def _fit_affine(x: np.ndarray, w: np.ndarray, nmax: int, steps: int, rmin: float, rdelta: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per group (last axis), a scale s >= 0 and offset m <= 0 with x ~ s*q + m, q in [0, nmax].

    Candidate inverse scales around nmax/(max-min) quantize the group; for each, scale and offset
    are refit by weighted least squares (offset clamped to <= 0), and the lowest weighted error wins.
    The error is computed from the weighted sums alone, so each candidate costs one pass.
    """
    xmin = np.minimum(x.min(axis=-1), 0.0)
    xmax = x.max(axis=-1)
    span = xmax - xmin
    safe = np.where(span > 0, span, 1.0).astype(np.float32)
    shifted = x - xmin[..., None]
    sw = w.sum(axis=-1)
    sx = np.einsum("...i,...i->...", w, x)
    sx2 = np.einsum("...i,...i,...i->...", w, x, x)

    def sse(s: np.ndarray, m: np.ndarray, sq: np.ndarray, sq2: np.ndarray, sqx: np.ndarray) -> np.ndarray:
        err: np.ndarray = s * s * sq2 + 2 * s * m * sq + m * m * sw - 2 * s * sqx - 2 * m * sx + sx2
        return err

    def sums(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        wq = w * q
        return wq.sum(axis=-1), np.einsum("...i,...i->...", wq, q), np.einsum("...i,...i->...", wq, x)

    best_s = span / nmax
    best_m = xmin
    q0 = np.clip(np.rint(shifted * (nmax / safe)[..., None]), 0, nmax)
    best_err = sse(best_s, best_m, *sums(q0))
    for i in range(steps + 1):
        iscale = (rmin + rdelta * i + nmax) / safe
        q = np.clip(np.rint(shifted * iscale[..., None]), 0, nmax)
        sq, sq2, sqx = sums(q)
        det = sw * sq2 - sq * sq
        ok = det > 0
        det = np.where(ok, det, 1.0)
        s = (sw * sqx - sq * sx) / det
        m = (sq2 * sx - sq * sqx) / det
        pos = m > 0
        s = np.where(pos, sqx / np.where(sq2 > 0, sq2, 1.0), s)
        m = np.where(pos, 0.0, m)
        err = sse(s, m, sq, sq2, sqx)
        better = ok & (err < best_err) & (s >= 0)
        best_s = np.where(better, s, best_s)
        best_m = np.where(better, m, best_m)
        best_err = np.where(better, err, best_err)
    best_s = np.where(span > 0, best_s, 0.0)
    return best_s.astype(np.float32), best_m.astype(np.float32)


def _quantize_6bit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative per-sub-block values (nb, 8) as a f16 super-scale times 6-bit integers."""
    top = values.max(axis=-1)
    d = _f16(top / 63.0)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1.0), 0.0)
    ints = np.clip(np.rint(values * inv[:, None]), 0, 63).astype(np.uint8)
    return d, ints


def _pack_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins into ggml's 12-byte k-quant layout."""
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = mn[:, 0:4] | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def _encode_affine_k(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shared part of Q4_K/Q5_K: (d, dmin, packed scales, quants (nb, 8, 32))."""
    nb = blocks.shape[0]
    nmax = (1 << bits) - 1
    x = blocks.reshape(nb, 8, 32).astype(np.float32)
    av = np.sqrt((x * x).mean(axis=-1, keepdims=True))
    w = av + np.abs(x)  # emphasise large weights, as ggml's reference quantizer does
    if bits == 4:
        s, m = _fit_affine(x, w, nmax, steps=20, rmin=-1.0, rdelta=0.1)
    else:
        s, m = _fit_affine(x, w, nmax, steps=15, rmin=-0.5, rdelta=0.1)
    d, sc = _quantize_6bit(s)
    dmin, mn = _quantize_6bit(-m)
    step = d[:, None] * sc.astype(np.float32)
    off = dmin[:, None] * mn.astype(np.float32)
    q = np.rint((x + off[..., None]) / np.where(step > 0, step, 1.0)[..., None])
    q = np.where(step[..., None] > 0, np.clip(q, 0, nmax), 0).astype(np.uint8)
    return d, dmin, _pack_scales(sc, mn), q


def encode_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (nb, 144) bytes of block_q4_K."""
    d, dmin, scales, q = _encode_affine_k(blocks, 4)
    nb = q.shape[0]
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(nb, 128)
    return np.concatenate([d.astype("<f2").view(np.uint8).reshape(nb, 2),
                           dmin.astype("<f2").view(np.uint8).reshape(nb, 2), scales, qs], axis=1)


def encode_q5_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (nb, 176) bytes of block_q5_K."""
    d, dmin, scales, q = _encode_affine_k(blocks, 5)
    nb = q.shape[0]
    low = q & 0x0F
    qs = (low[:, 0::2, :] | (low[:, 1::2, :] << 4)).reshape(nb, 128)
    high = (q >> 4) & 1  # (nb, 8, 32): bit j of qh[b] is the fifth bit of sub-block j, element b
    qh = np.zeros((nb, 32), dtype=np.uint8)
    for j in range(8):
        qh |= high[:, j, :] << j
    return np.concatenate([d.astype("<f2").view(np.uint8).reshape(nb, 2),
                           dmin.astype("<f2").view(np.uint8).reshape(nb, 2), scales, qh, qs], axis=1)


def _fit_symmetric(x: np.ndarray, w: np.ndarray, nmax: int, steps: int) -> np.ndarray:
    """Per group (last axis), a signed scale s with x ~ s*q, q in [-nmax, nmax-1], by candidate search.

    For fixed q the best scale is sum(wqx)/sum(wq^2), leaving an error of sum(wx^2) - sum(wqx)^2/sum(wq^2),
    so each candidate is ranked by sum(wqx)^2/sum(wq^2).
    """
    idx = np.abs(x).argmax(axis=-1)
    vmax = np.take_along_axis(x, idx[..., None], axis=-1)[..., 0]
    safe = np.where(vmax != 0, vmax, 1.0).astype(np.float32)
    best_s = -vmax / nmax
    q0 = np.clip(np.rint(x * (-nmax / safe)[..., None]), -nmax, nmax - 1)
    wq0 = w * q0
    # Score of the plain scale -vmax/nmax: 2*s*sum(wqx) - s^2*sum(wq^2) (higher is better).
    best_score = 2 * best_s * np.einsum("...i,...i->...", wq0, x) - best_s**2 * np.einsum("...i,...i->...", wq0, q0)
    for i in range(-steps, steps + 1):
        iscale = -(nmax + 0.1 * i) / safe
        q = np.clip(np.rint(x * iscale[..., None]), -nmax, nmax - 1)
        wq = w * q
        sqx = np.einsum("...i,...i->...", wq, x)
        sq2 = np.einsum("...i,...i->...", wq, q)
        score = sqx * sqx / np.where(sq2 > 0, sq2, 1.0)
        better = (sq2 > 0) & (score > best_score)
        best_s = np.where(better, sqx / np.where(sq2 > 0, sq2, 1.0), best_s)
        best_score = np.where(better, score, best_score)
    return np.where(vmax != 0, best_s, 0.0).astype(np.float32)


def encode_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(nb, 256) float32 -> (nb, 210) bytes of block_q6_K."""
    nb = blocks.shape[0]
    x = blocks.reshape(nb, 16, 16).astype(np.float32)
    s = _fit_symmetric(x, x * x + 1e-30, 32, steps=9)
    idx = np.abs(s).argmax(axis=-1)
    smax = np.take_along_axis(s, idx[:, None], axis=-1)[:, 0]
    d = _f16(-smax / 128.0)
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1.0), 0.0)
    sc = np.clip(np.rint(s * inv[:, None]), -128, 127).astype(np.int8)
    step = d[:, None] * sc.astype(np.float32)
    q = np.rint(x / np.where(step != 0, step, 1.0)[..., None])
    q = np.where(step[..., None] != 0, np.clip(q, -32, 31), 0)
    u = (q + 32).astype(np.uint8).reshape(nb, 256)
    halves = u.reshape(nb, 2, 128)
    ql = ((halves[:, :, 0:64] & 0x0F) | ((halves[:, :, 64:128] & 0x0F) << 4)).reshape(nb, 128)
    hi = (halves >> 4).reshape(nb, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.astype("<f2").view(np.uint8).reshape(nb, 2)], axis=1)


_K_ENCODERS = {"Q4_K": encode_q4_k, "Q5_K": encode_q5_k, "Q6_K": encode_q6_k}


def quantize_k(array: np.ndarray, qtype: str) -> np.ndarray:
    """A float array whose last axis is a multiple of 256, encoded chunk by chunk to (..., row_bytes)."""
    encode = _K_ENCODERS[qtype]
    size = _BLOCK_BYTES[qtype]
    blocks = np.ascontiguousarray(array, dtype=np.float32).reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], size), dtype=np.uint8)
    for i in range(0, blocks.shape[0], CHUNK_BLOCKS):
        out[i:i + CHUNK_BLOCKS] = encode(blocks[i:i + CHUNK_BLOCKS])
    return out.reshape(array.shape[:-1] + (array.shape[-1] // QK_K * size,))


_BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


# ---------------------------------------------------------------------------- the writer


def tensor_qtype(shape: tuple[int, ...], qtype: str) -> str:
    """The type a tensor of `shape` is stored as when the file's type is `qtype` (llama.cpp's fallbacks)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    if qtype in ("F32", "F16", "BF16"):
        return "F32" if len(shape) <= 1 and qtype != "F32" else qtype
    if len(shape) <= 1:
        return "F32"
    block = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]
    return qtype if shape[-1] % block == 0 else "F16"


def _add_value(writer: Any, key: str, value: Any) -> None:
    from gguf.constants import GGUFValueType

    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
        if 0 <= value < 2**32:
            writer.add_uint32(key, value)
        elif -(2**31) <= value < 0:
            writer.add_int32(key, value)
        else:
            writer.add_int64(key, value)
    elif isinstance(value, (float, np.floating)):
        writer.add_float32(key, float(value))
    elif isinstance(value, str):
        writer.add_key_value(key, value, GGUFValueType.STRING)
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = value.tolist() if isinstance(value, np.ndarray) else list(value)
        if items:
            writer.add_array(key, items)
    else:
        raise TypeError(f"metadata value for {key!r} has unsupported type {type(value).__name__}")


def write_gguf(path: str | Path, tensors: Mapping[str, np.ndarray], qtype: str = "F16", arch: str = "llama",
               metadata: dict[str, Any] | None = None, tokenizer: dict[str, Any] | None = None) -> Path:
    """Write `tensors` (numpy shapes, HF orientation) to GGUF, quantized to `qtype` where the shape allows.

    `metadata` keys are written as given; `tokenizer` keys without a dot get the ``tokenizer.ggml.``
    prefix (``{"model": "gpt2", "tokens": [...]}``). Returns the path written.
    """
    import gguf
    from gguf.constants import GGMLQuantizationType

    path = Path(path)
    if qtype not in QTYPES:
        raise FormatError(path, f"cannot write GGUF type {qtype!r} (supported: {', '.join(QTYPES)})")
    writer = gguf.GGUFWriter(path, arch)
    try:
        writer.add_name(path.stem)
        if qtype in FILE_TYPES:
            writer.add_file_type(FILE_TYPES[qtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in (metadata or {}).items():
            _add_value(writer, key, value)
        for key, value in (tokenizer or {}).items():
            _add_value(writer, key if "." in key else f"tokenizer.ggml.{key}", value)
        for name, array in tensors.items():
            arr = np.asarray(array)
            target = tensor_qtype(tuple(arr.shape), qtype)
            data = arr.astype(np.float32, copy=False)
            if target == "F32":
                writer.add_tensor(name, np.ascontiguousarray(data))
            elif target == "F16":
                writer.add_tensor(name, np.ascontiguousarray(data.astype(np.float16)))
            elif target in _K_ENCODERS:
                raw = quantize_k(data, target)
                writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=GGMLQuantizationType[target])
            else:
                qt = GGMLQuantizationType[target]
                raw = gguf.quants.quantize(np.ascontiguousarray(data), qt)
                writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path
