"""Fixed (non-learned) tensors are recognised by content and never count as evidence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modeltrace.compare import compare
from modeltrace.formats.base import TensorInfo
from modeltrace.model import Model
from modeltrace.weights.fixed import classify, find_fixed

sys.path.insert(0, str(Path(__file__).parent))


def stft_basis(n_fft: int = 64, symmetric: bool = False) -> np.ndarray:
    """Real and imaginary DFT rows times a Hann window, as conv kernels (2 * (n/2+1), 1, n)."""
    n = np.arange(n_fft)
    w = 0.5 - 0.5 * np.cos(2 * np.pi * n / (n_fft - 1 if symmetric else n_fft))
    k = np.arange(n_fft // 2 + 1)[:, None]
    ang = 2 * np.pi * k * n[None, :] / n_fft
    return np.concatenate([np.cos(ang) * w, -np.sin(ang) * w])[:, None, :].astype(np.float32)


def sinusoidal_table(positions: int = 128, dim: int = 32, interleaved: bool = True) -> np.ndarray:
    p = np.arange(positions)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2) / dim)
    s, c = np.sin(p * freq), np.cos(p * freq)
    if interleaved:
        out = np.empty((positions, dim))
        out[:, 0::2], out[:, 1::2] = s, c
        return out.astype(np.float32)
    return np.concatenate([s, c], axis=1).astype(np.float32)


def rotary_cache(positions: int = 64, dim: int = 16, base: float = 500000.0) -> np.ndarray:
    inv = base ** (-np.arange(0, dim, 2) / dim)
    ang = np.arange(positions)[:, None] * inv[None, :]
    return np.cos(np.concatenate([ang, ang], axis=1)).astype(np.float32)


def mel_bank(n_mels: int = 10, n_freq: int = 65) -> np.ndarray:
    edges = np.linspace(0, n_freq - 1, n_mels + 2)
    f = np.arange(n_freq)
    rows = [np.clip(np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)), 0, None)
            for lo, mid, hi in zip(edges, edges[1:], edges[2:])]
    return np.array(rows, dtype=np.float32)


def _classify(arr: np.ndarray, dtype: str = "F32") -> str | None:
    info = TensorInfo("t", tuple(arr.shape), dtype, "f")
    rows = np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1) if arr.ndim > 1 else arr[None, :]
    runs = [rows[s:s + 6] for s in (0, max(0, len(rows) // 2 - 3), max(0, len(rows) - 6))] if arr.ndim > 1 else []
    return classify(rows.astype(np.float64), runs, info)


@pytest.mark.parametrize("arr, what", [
    (stft_basis(), "STFT/DFT basis"),
    (stft_basis(symmetric=True), "STFT/DFT basis"),
    (sinusoidal_table(), "sinusoidal table"),
    (sinusoidal_table(interleaved=False), "sinusoidal table"),
    (sinusoidal_table().T.copy(), "sinusoidal table"),
    (rotary_cache(), "sinusoidal table"),
    (mel_bank(), "triangular filterbank"),
    (np.tril(np.ones((16, 16), dtype=np.float32)), "mask or identity"),
    (np.eye(16, dtype=np.float32), "mask or identity"),
    (np.ones(32, dtype=np.float32), "constant"),
    ((10000.0 ** (-np.arange(0, 32, 2) / 32)).astype(np.float32), "geometric sequence (rotary frequencies)"),
    ((0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)).astype(np.float32), "Hann (periodic) window"),
])
def test_closed_forms_are_recognised(arr: np.ndarray, what: str) -> None:
    assert _classify(arr) == what


@pytest.mark.parametrize("seed", range(5))
def test_learned_looking_tensors_are_not_fixed(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for shape in [(64, 32), (128, 1, 64), (16, 400), (32,), (8, 8)]:
        arr = rng.standard_normal(shape).astype(np.float32) * 0.02
        assert _classify(arr) is None, shape
    gains = (1 + 0.05 * rng.standard_normal(64)).astype(np.float32)  # trained norm gains: near 1, not constant
    assert _classify(gains) is None
    smooth = np.cumsum(rng.standard_normal((32, 64)), axis=1).astype(np.float32)  # smooth but not a closed form
    assert _classify(smooth) is None


def test_trained_model_has_no_fixed_tensors_but_its_untrained_gains(tmp_path: Path) -> None:
    import tinytrain

    folder = tinytrain.save_model(tmp_path / "m", tinytrain.train(seed=3, steps=30))
    found = find_fixed(Model.open(str(folder)).source)
    assert all(f.what == "constant" for f in found), [f.describe() for f in found]


def _audio_model(folder: Path, seed: int, fixed: dict[str, np.ndarray]) -> Path:
    """A small convolutional model trained from its own seed, plus shared fixed tensors under plain names."""
    rng = np.random.default_rng(seed)
    tensors = {
        "frontend.weight": fixed.get("frontend.weight", rng.standard_normal((66, 1, 64)).astype(np.float32)),
        "encoder.0.weight": (rng.standard_normal((48, 66, 3)) * 0.1).astype(np.float32),
        "encoder.0.bias": (rng.standard_normal(48) * 0.1).astype(np.float32),
        "encoder.1.weight": (rng.standard_normal((48, 48, 3)) * 0.1).astype(np.float32),
        "encoder.1.bias": (rng.standard_normal(48) * 0.1).astype(np.float32),
        "classifier.weight": (rng.standard_normal((24, 48)) * 0.1).astype(np.float32),
    }
    tensors.update({k: v for k, v in fixed.items() if k != "frontend.weight"})
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy-audio"}))
    return folder


@pytest.mark.parametrize("fixed", [
    {"frontend.weight": stft_basis()},
    {"frontend.weight": stft_basis(), "encoder.pos.weight": sinusoidal_table(128, 48)},
], ids=["stft-basis", "stft-basis-and-position-table"])
def test_independent_models_sharing_a_fixed_tensor_are_not_derived(tmp_path: Path,
                                                                   fixed: dict[str, np.ndarray]) -> None:
    a = Model.open(str(_audio_model(tmp_path / "a", 1, fixed)))
    b = Model.open(str(_audio_model(tmp_path / "b", 2, fixed)))
    r = compare(a, b)
    assert r.verdict != "derived", r.reason
    ev = {e.method: e for e in r.evidence}
    listed = set(ev["fixed-tensors"].details["identical_in_both"])
    assert listed == set(fixed), ev["fixed-tensors"].statement
    assert "identical in both" in ev["fixed-tensors"].statement
    assert ev["weight-identity"].p_value is not None and ev["weight-identity"].p_value > 1e-6


def test_a_copy_sharing_the_fixed_tensor_is_still_derived(tmp_path: Path) -> None:
    fixed = {"frontend.weight": stft_basis()}
    a = _audio_model(tmp_path / "a", 1, fixed)
    b = tmp_path / "b"
    b.mkdir()
    (b / "model.safetensors").write_bytes((a / "model.safetensors").read_bytes())
    (b / "config.json").write_text("{}")
    r = compare(Model.open(str(a)), Model.open(str(b)))
    assert r.verdict == "derived"
