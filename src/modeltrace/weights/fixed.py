"""Tensors that are not learned, recognised by their content: closed forms and structural constants.

Fixed tensors are identical in unrelated models of one architecture (an STFT basis, a sinusoidal
position table, a causal mask), so they are never evidence of derivation; two independently
trained audio models sharing one STFT basis must not read as a copy. Names cannot be trusted (an
adversary or an exporter chooses them), so each tensor's content is checked against closed forms:

- integer and boolean storage (position ids, masks, counters);
- constant tensors (untrained gains and biases), and two-valued tensors with a zero (masks, identity);
- 1-D window functions (Hann, Hamming, Blackman, periodic or symmetric) and geometric sequences
  (rotary inverse frequencies ``base^(-2i/d)``);
- sinusoidal tables: every row, or every column over consecutive rows, obeys the recurrence of one
  sinusoid ``x[t+1] + x[t-1] = 2 cos(w) x[t]`` (sinusoidal position tables, rotary cos/sin caches,
  whatever their base or layout);
- DFT/STFT bases: every row's spectrum sits in a few bins (a windowed cosine or sine), rows at
  different frequencies;
- triangular filterbanks (mel filters): non-negative rows, each one contiguous triangle.

Each check reads at most `SAMPLE_ROWS` rows (a few blocks of consecutive rows for the column
recurrence), so the cost is a few reads per tensor whatever the model size; a learned tensor never
satisfies a closed form to the tolerance on every sampled row, and wrongly leaving out a learned
tensor could only cost power, never create evidence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from modeltrace.formats.base import TensorInfo, TensorSource

SAMPLE_ROWS = 16  # rows read per tensor for the row checks
RUN_ROWS = 6  # consecutive rows per block for the column recurrence
RUN_BLOCKS = 3
MAX_ROW = 1 << 16  # longer rows are not checked against closed forms (no fixed table is that wide)
MIN_LEN = 8  # shorter rows or sequences say too little to call them a closed form
INT_DTYPES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL", "INT64", "INT32", "BOOLEAN")
SPECTRAL_BINS = 8  # a windowed sinusoid of the standard windows puts its energy in at most 3 bin pairs


@dataclass(frozen=True)
class FixedTensor:
    """One tensor recognised as not learned: what it is and a digest of what was read of it."""

    name: str
    what: str  # "STFT/DFT basis", "sinusoidal table", "window", "constant", ...
    numel: int
    digest: str  # sha256 of the sampled rows: equal digests mean the same closed form in both models

    def describe(self) -> str:
        return f"{self.name} ({self.what}, {self.numel:,} values)"


def _tol(dtype: str) -> float:
    """Relative tolerance for a closed form stored in `dtype` (computed in float32 by model code)."""
    if dtype in ("BF16",) or dtype.startswith("F8"):
        return 2e-2
    if dtype == "F16":
        return 4e-3
    return 2e-3  # float32 tables of large arguments lose about p * 6e-8 in the argument


def _rows_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, row length) view checked: conv kernels (K, 1, N) and (K, N, 1) become (K, N)."""
    if len(shape) == 1:
        return 1, int(shape[0])
    lead = int(shape[0])
    rest = int(np.prod(shape[1:]))
    return lead, rest


def _sample_rows(src: TensorSource, info: TensorInfo, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to SAMPLE_ROWS rows spread over the tensor, and their indices."""
    idx = np.unique(np.linspace(0, rows - 1, num=min(rows, SAMPLE_ROWS)).astype(np.int64))
    out = [np.asarray(src.read_rows(info.name, int(i), int(i) + 1), dtype=np.float64).reshape(1, -1)
           for i in idx]
    return np.concatenate(out), idx


def _runs(src: TensorSource, info: TensorInfo, rows: int) -> list[np.ndarray]:
    """A few blocks of consecutive rows (for recurrences down the columns)."""
    if rows < RUN_ROWS * 2:
        return [np.asarray(src.read_rows(info.name, 0, rows), dtype=np.float64).reshape(rows, -1)]
    starts = np.unique(np.linspace(0, rows - RUN_ROWS, num=RUN_BLOCKS).astype(np.int64))
    return [np.asarray(src.read_rows(info.name, int(s), int(s) + RUN_ROWS), dtype=np.float64)
            .reshape(RUN_ROWS, -1) for s in starts]


# --- closed forms ------------------------------------------------------------------------------
def _windows(n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for sym, den in (("periodic", n), ("symmetric", max(n - 1, 1))):
        t = 2 * np.pi * np.arange(n) / den
        out[f"Hann ({sym})"] = 0.5 - 0.5 * np.cos(t)
        out[f"Hamming ({sym})"] = 0.54 - 0.46 * np.cos(t)
        out[f"Blackman ({sym})"] = 0.42 - 0.5 * np.cos(t) + 0.08 * np.cos(2 * t)
    return out


def is_window(x: np.ndarray, tol: float) -> str | None:
    """Name of the standard window `x` equals (up to scale), or None."""
    if x.ndim != 1 or len(x) < MIN_LEN:
        return None
    scale = float(np.max(np.abs(x)))
    if scale == 0:
        return None
    for name, w in _windows(len(x)).items():
        s = float(np.dot(x, w) / np.dot(w, w))
        if s != 0 and np.max(np.abs(x - s * w)) <= tol * scale:
            return f"{name} window"
    return None


def is_geometric(x: np.ndarray, tol: float) -> bool:
    """A strictly monotone positive geometric sequence (rotary inverse frequencies base^(-2i/d))."""
    if x.ndim != 1 or len(x) < MIN_LEN or np.any(x <= 0):
        return False
    lx = np.log(x)
    d = np.diff(lx)
    if np.all(np.abs(d) < 1e-12):
        return False  # constant: reported as constant
    return bool(np.max(np.abs(d - d.mean())) <= max(tol, 1e-6) * max(1.0, abs(float(d.mean())) * len(x)))


def sinusoid_residual(x: np.ndarray, axis: int) -> float:
    """Largest relative residual of the one-sinusoid recurrence along `axis`, over all lines.

    A pure sinusoid (any amplitude, phase and frequency, including a constant) satisfies
    x[t+1] + x[t-1] = 2 c x[t] with c = cos(w); c is fitted per line by least squares.
    """
    x = np.moveaxis(x, axis, -1)
    if x.shape[-1] < 3:
        return float("inf")
    lhs = x[..., 2:] + x[..., :-2]
    mid = x[..., 1:-1]
    den = np.sum(mid * mid, axis=-1)
    c2 = np.divide(np.sum(lhs * mid, axis=-1), den, out=np.zeros_like(den), where=den > 0)  # 2 cos(w)
    res = lhs - c2[..., None] * mid
    scale = np.max(np.abs(x), axis=-1)
    line = np.max(np.abs(res), axis=-1) / np.where(scale > 0, scale, 1.0)
    zero = scale == 0
    line[zero] = 0.0
    return float(np.max(line)) if line.size else float("inf")


def is_spectral_basis(rows: np.ndarray, tol: float) -> bool:
    """Rows that are windowed sinusoids at several frequencies (a DFT or STFT basis)."""
    r, n = rows.shape
    if r < 4 or n < 8 * SPECTRAL_BINS:  # shorter rows have too few bins for concentration to mean anything
        return False
    spec = np.abs(np.fft.rfft(rows, axis=1)) ** 2
    total = spec.sum(axis=1)
    live = total > (tol * tol) * float(total.max())  # rows that are zero up to rounding (sin at k = 0) say nothing
    if np.count_nonzero(live) < 4:
        return False
    top = np.sort(spec[live], axis=1)[:, -SPECTRAL_BINS:].sum(axis=1)
    if np.min(top / total[live]) < 1 - tol:
        return False
    peaks = np.argmax(spec[live], axis=1)
    return len(np.unique(peaks)) >= min(4, int(np.count_nonzero(live)))


def is_triangular_bank(rows: np.ndarray, tol: float) -> bool:
    """Non-negative rows, each one contiguous triangle (mel or other triangular filterbanks)."""
    r, n = rows.shape
    if r < 4 or n < MIN_LEN or np.min(rows) < 0:
        return False
    scale = float(np.max(rows))
    if scale <= 0:
        return False
    shaped = 0
    last_start = -1
    for row in rows:
        nz = np.flatnonzero(row > tol * scale)
        if len(nz) == 0:
            continue
        if nz[-1] - nz[0] + 1 != len(nz) or nz[0] < last_start:
            return False  # support not contiguous, or filters not in order of frequency
        last_start = int(nz[0])
        seg = row[max(nz[0] - 1, 0): nz[-1] + 2]
        kinks = np.abs(np.diff(seg, 2)) > tol * scale
        if np.count_nonzero(kinks) > 5:  # two feet, and a peak that may fall between two samples
            return False
        shaped += 1
    return shaped >= 4


def classify(rows: np.ndarray, runs: list[np.ndarray], info: TensorInfo) -> str | None:
    """What kind of closed form the sampled content of `info` is, or None for a learned tensor."""
    tol = _tol(info.dtype)
    flat = rows.reshape(-1)
    if flat.size == 0 or not np.all(np.isfinite(flat)) or not all(np.all(np.isfinite(r)) for r in runs):
        return None  # a closed form is finite everywhere; non-finite values are the weight matching's to count
    if float(flat.min()) == float(flat.max()):
        return "constant"
    vals = np.unique(flat)
    if len(vals) == 2 and (0.0 in vals):
        return "mask or identity"
    if len(info.shape) == 1:
        win = is_window(flat, tol)
        if win:
            return win
        if is_geometric(flat, tol):
            return "geometric sequence (rotary frequencies)"
        if len(flat) >= MIN_LEN and sinusoid_residual(flat[None, :], 1) <= tol:
            return "sinusoid"
        return None
    if rows.shape[1] >= MIN_LEN and sinusoid_residual(rows, 1) <= tol:
        return "sinusoidal table"
    if runs and all(r.shape[0] >= 3 for r in runs) and rows.shape[1] >= 2 \
            and max(sinusoid_residual(r, 0) for r in runs) <= tol and sum(r.shape[0] for r in runs) >= MIN_LEN:
        return "sinusoidal table"
    if is_spectral_basis(rows, tol):
        return "STFT/DFT basis"
    if is_triangular_bank(rows, tol):
        return "triangular filterbank"
    return None


def find_fixed(src: TensorSource) -> list[FixedTensor]:
    """Every tensor of `src` whose content is a closed form or a structural constant."""
    out: list[FixedTensor] = []
    for name, info in src.infos().items():
        if info.numel == 0:
            continue
        rows, width = _rows_view(info.shape)
        if info.dtype.upper() in INT_DTYPES:
            out.append(FixedTensor(name, "integer or boolean buffer", info.numel, _digest_of(src, info, rows)))
            continue
        if width > MAX_ROW or width < 1:
            continue
        sample, _ = _sample_rows(src, info, rows) if rows > 1 else (
            np.asarray(src.read(name), dtype=np.float64).reshape(1, -1), np.zeros(1, dtype=np.int64))
        runs = _runs(src, info, rows) if rows >= 3 else []
        what = classify(sample, runs, info)
        if what is not None:
            out.append(FixedTensor(name, what, info.numel, _hash(sample)))
    return out


def _hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32).tobytes()).hexdigest()


def _digest_of(src: TensorSource, info: TensorInfo, rows: int) -> str:
    sample, _ = _sample_rows(src, info, rows) if rows > 1 else (
        np.asarray(src.read(info.name), dtype=np.float64).reshape(1, -1), None)
    return _hash(sample)
