"""A model's fingerprint: alignment-invariant sketches of its MLP units plus artifact hashes, in one pass.

What is kept per MLP layer (component, layer) with n hidden units:

- the residual basis. A unit's input row w (norm gain folded in) and output column v live in the
  residual stream, whose coordinates a derived model may rotate or permute. They are expressed in a
  basis fixed by the model itself: the embedding rows E_T of a fixed list of common token strings
  (`TOKEN_CANDIDATES`, the first `BASIS_TOKENS` present in the vocabulary), whitened by their Gram
  matrix G = E_T E_T^T = L L^T: c = L^{-1} E_T w. A rotation R of the residual stream (E -> E R,
  w -> w R) leaves E_T w and G unchanged, so c is invariant; tokens are matched by string, so a
  reordered, extended or pruned vocabulary still gives the same basis on the tokens both keep.
  G is stored, so a comparison can re-whiten on the tokens two fingerprints share. Without a
  tokenizer (or for components outside the embedding's) the basis is a seeded subset of coordinates.
- `idx`: the units at `idx_count(n)` indices sampled by a seed and n alone (not the layer number, so a
  copied layer at another depth samples the same indices): the exact fixed-point test runs on these.
- `sel`: the `SEL_UNITS` units with the largest input rows (gain folded in; the norm is unchanged by a
  residual rotation), chosen by content, so a permutation of the units selects the same units: their
  input and output views carry the two-view permutation test.

Sketches are int8 with a float16 scale per row (`format.quantize`). Every tensor is read at most
once (MLP projections and gains whole, the embedding only at the basis tokens' rows), into one
reused buffer, so memory stays near the largest MLP matrix; weight files are hashed by threads in
parallel with the reading.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from modeltrace import __version__
from modeltrace.errors import FormatError, ModelTraceError
from modeltrace.formats.base import TensorSource, empty_float32
from modeltrace.index import format as fmt
from modeltrace.model import Model
from modeltrace.roles import Role, assign_roles, fixed_buffer
from modeltrace.weights.align import sample_units

FP_SEED = 20_261_204  # part of the format: fingerprints compare only when made with the same seed
BASIS_TOKENS = 48
MIN_BASIS_TOKENS = 16
IDX_UNITS = 32
SEL_UNITS = 24
COORD_DIMS = 32  # the coordinate view of the idx units, for fingerprints without a common token basis
VECTOR_BASIS = 16  # leading basis coordinates used by the candidate vector
VECTOR_DIM = VECTOR_BASIS * (VECTOR_BASIS - 1) // 2
MINHASH = 128
_CHARS = ("etaoinshrdlcumwfgypbvkjxqz" "ETAOINSHRDLCUMWFGYPBVKJXQZ" "0123456789" ".,;:!?'\"()-")
TOKEN_CANDIDATES: tuple[str, ...] = tuple(c for c in _CHARS) + tuple("\u0120" + c for c in _CHARS) + \
    tuple("\u2581" + c for c in _CHARS)
MLP_KINDS = ("mlp_up", "mlp_gate", "mlp_gate_up", "mlp_down", "mlp_norm")
CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "vocab_size", "max_position_embeddings",
               "rope_theta", "n_embd", "n_layer", "n_head", "n_inner", "hidden_act", "tie_word_embeddings")


@dataclass(frozen=True)
class LayerSketch:
    """The sketches of one MLP layer (see the module docstring); rows are in the layer's basis."""

    component: str
    layer: int
    n: int
    width: int  # residual width of a unit row
    basis: str  # "tokens" (the fingerprint's token basis) or "coords:<width>"
    idx_in: np.ndarray  # (len(idx), K) float32: units at `idx_indices(n)`
    cidx_in: np.ndarray  # (len(idx), COORD_DIMS) the same units on seeded raw coordinates, float16 precision
    sel: np.ndarray  # (t,) int64 unit indices chosen by content
    sel_in: np.ndarray  # (t, K)
    sel_out: np.ndarray | None  # (t, K) or None without an output projection
    kurtosis: float | None = None  # excess kurtosis of the input projection's weights (<= 512 rows; a direction prior)

    @property
    def idx(self) -> np.ndarray:
        return idx_indices(self.n)


@dataclass(frozen=True)
class Basis:
    """The token basis: the token strings, and the Gram matrix of their embedding rows."""

    tokens: tuple[str, ...]
    gram: np.ndarray  # (K, K) float32
    component: str


@dataclass(frozen=True)
class Fingerprint:
    """A parsed or freshly computed fingerprint."""

    ref: str
    meta: dict[str, Any]
    layers: tuple[LayerSketch, ...]
    basis: Basis | None
    vector: np.ndarray
    sha256: str = ""
    size: int = 0
    stats: dict[str, Any] = field(default_factory=dict, compare=False)

    def layer(self, component: str, layer: int) -> LayerSketch | None:
        for s in self.layers:
            if s.component == component and s.layer == layer:
                return s
        return None

    def components(self) -> list[str]:
        return sorted({s.component for s in self.layers})


def idx_count(n: int) -> int:
    """Units stored by index in a layer of n units: more in narrow layers, where they cost little.

    A function of n alone, so two fingerprints of layers with the same width store the same units.
    `IDX_UNITS` for the wide layers of large models keeps an 8B model's fingerprint within 256 KB.
    """
    if n <= 1024:
        return min(n, 4 * IDX_UNITS)
    if n <= 4096:
        return 2 * IDX_UNITS
    return IDX_UNITS


@lru_cache(maxsize=256)
def _idx_indices(n: int) -> np.ndarray:
    out = sample_units(n, idx_count(n), np.random.default_rng([FP_SEED, n]))
    out.setflags(write=False)
    return out


def idx_indices(n: int) -> np.ndarray:
    """The unit indices every fingerprint samples in a layer of n units (seeded by n only; read-only)."""
    return _idx_indices(n)


# --- computing ---------------------------------------------------------------------------------
@dataclass
class _Layer:
    component: str
    layer: int
    parts: dict[str, tuple[str, Role]] = field(default_factory=dict)


def _layers(roles: dict[str, Role]) -> list[_Layer]:
    """MLP parts per layer; a mixture-of-experts layer without a dense MLP is represented by its first expert."""
    dense: dict[tuple[str, int], _Layer] = {}
    experts: dict[tuple[str, int], dict[int, _Layer]] = {}
    norms: dict[tuple[str, int], tuple[str, Role]] = {}
    for name, role in roles.items():
        if role.kind not in MLP_KINDS or role.param != "weight" or role.layer is None or role.sub:
            continue
        key = (role.component, role.layer)
        if role.kind == "mlp_norm":
            norms[key] = (name, role)
        elif role.expert is None:
            dense.setdefault(key, _Layer(*key)).parts[role.kind] = (name, role)
        else:
            experts.setdefault(key, {}).setdefault(role.expert, _Layer(*key)).parts[role.kind] = (name, role)
    for key, by_expert in experts.items():
        if key not in dense:
            dense[key] = by_expert[min(by_expert)]
    for key, norm in norms.items():
        if key in dense:
            dense[key].parts["mlp_norm"] = norm
    return [dense[k] for k in sorted(dense)]


def _embedding(roles: dict[str, Role], infos: dict[str, Any]) -> tuple[str, str] | None:
    for kind in ("token_embed", "lm_head"):
        for name, role in roles.items():
            if role.kind == kind and role.param == "weight" and len(infos[name].shape) == 2:
                return name, role.component
    return None


def _vocab(model: Model) -> dict[str, int] | None:
    from modeltrace.artifacts.tokenizer import read_tokenizer

    try:
        tok = read_tokenizer(model)
    except ModelTraceError:
        return None
    return tok.full_vocab() if tok is not None and tok.vocab else None


def _basis(src: TensorSource, emb: tuple[str, str] | None, vocab: dict[str, int] | None,
           width: int | None) -> tuple[Basis | None, np.ndarray | None]:
    """(basis, W) with W (K, d) = L^{-1} E_T, the map from residual rows to basis coordinates."""
    if emb is None or vocab is None or width is None:
        return None, None
    name, component = emb
    rows = int(src.info(name).shape[0])
    k = min(BASIS_TOKENS, width)
    chosen = [(t, vocab[t]) for t in TOKEN_CANDIDATES if t in vocab and 0 <= vocab[t] < rows]
    seen: set[int] = set()
    picked: list[tuple[str, int]] = []
    for t, i in chosen:
        if i not in seen:
            seen.add(i)
            picked.append((t, i))
        if len(picked) == k:
            break
    if len(picked) < min(MIN_BASIS_TOKENS, k):
        return None, None
    ids = np.array([i for _, i in picked], dtype=np.int64)
    order = np.argsort(ids)
    e = np.empty((len(ids), width), dtype=np.float32)
    for pos in order:  # a handful of single rows; readers with fast row access read only these
        e[pos] = src.read_rows(name, int(ids[pos]), int(ids[pos]) + 1).reshape(-1)[:width]
    gram = (e.astype(np.float64) @ e.T.astype(np.float64))
    chol = cholesky(gram)
    if chol is None:
        return None, None
    w = np.linalg.solve(chol, e.astype(np.float64)).astype(np.float32)
    return Basis(tuple(t for t, _ in picked), gram.astype(np.float32), component), w


def cholesky(gram: np.ndarray) -> np.ndarray | None:
    """Cholesky factor of a Gram matrix with a 1e-6 ridge relative to its mean diagonal, or None."""
    scale = float(np.trace(gram)) / max(1, gram.shape[0])
    if not np.isfinite(scale) or scale <= 0:
        return None
    try:
        out: np.ndarray = np.linalg.cholesky(gram + 1e-6 * scale * np.eye(gram.shape[0]))
    except np.linalg.LinAlgError:
        return None
    return out


def _coords(width: int, k: int = BASIS_TOKENS) -> np.ndarray:
    k = min(k, width)
    return np.sort(np.random.default_rng([FP_SEED, width, k, 7]).choice(width, size=k, replace=False))


def _orient(arr: np.ndarray, width: int | None, kind: str, role: Role) -> np.ndarray:
    """One row per hidden unit, `width` columns: input rows of up/gate, columns of down."""
    if arr.ndim != 2:
        arr = arr.reshape(arr.shape[0], -1)
    want_rows = kind != "mlp_down"  # for up/gate the units are rows of the (out, in) layout
    if width is not None and arr.shape[0] != arr.shape[1]:
        if want_rows:
            return arr if arr.shape[1] == width else arr.T
        return arr.T if arr.shape[0] == width else arr
    stored_out_in = not role.transposed
    if want_rows:
        return arr if stored_out_in else arr.T
    return arr.T if stored_out_in else arr


def _mlp_dtype(infos: dict[str, Any], roles: dict[str, Role]) -> str | None:
    """The storage dtype (or quantization) most of the MLP weights use: "F32", "BF16", "Q4_K", ..."""
    counts: dict[str, int] = {}
    for name, role in roles.items():
        if role.kind in MLP_KINDS and role.kind != "mlp_norm" and role.param == "weight":
            key = infos[name].quantization or infos[name].dtype
            counts[key] = counts.get(key, 0) + infos[name].numel
    return max(counts, key=lambda k: counts[k]) if counts else None


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _artifacts(model: Model, vocab: dict[str, int] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cfg = model.config
    if cfg is not None:
        cpath = model.file("config.json")
        out["config"] = {"sha256": _sha(cpath.read_bytes()) if cpath is not None else None,
                         "fields": {k: cfg[k] for k in CONFIG_KEYS if k in cfg
                                    and isinstance(cfg[k], (str, int, float, bool, list))}}
    tok_files = {p.name: _sha(p.read_bytes()) for p in model.tokenizer_files if p.stat().st_size < (64 << 20)}
    if tok_files or vocab:
        tok: dict[str, Any] = {"files": tok_files}
        if vocab:
            strings = sorted(vocab)
            tok["size"] = len(vocab)
            tok["vocab_sha256"] = _sha("\n".join(f"{t}\t{vocab[t]}" for t in strings).encode("utf-8", "replace"))
            tok["strings_sha256"] = _sha("\n".join(strings).encode("utf-8", "replace"))
        out["tokenizer"] = tok
    return out


def minhash(strings: list[str], k: int = MINHASH) -> np.ndarray:
    """Bottom-k sketch of a set of strings (64-bit hashes): estimates the Jaccard overlap of two vocabularies."""
    hs = np.fromiter((int.from_bytes(hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).digest(), "little")
                      for s in strings), dtype=np.uint64, count=len(strings))
    return np.unique(hs)[:k]


def compute(model: Model, *, hash_files: bool = True, threads: int = 2) -> Fingerprint:
    """The fingerprint of an opened model (see the module docstring)."""
    t0 = time.perf_counter()
    src = model.source
    infos = src.infos()
    roles = assign_roles(list(infos))
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    hashes: dict[str, Future[str]] = {}
    try:
        if hash_files:
            hashes = {str(p.relative_to(model.root)) if not model.single_file else p.name: pool.submit(_hash_file, p)
                      for p in model.weight_files}
        emb = _embedding(roles, infos)
        width = int(infos[emb[0]].shape[1]) if emb is not None else None
        vocab = _vocab(model)
        basis, to_basis = _basis(src, emb, vocab, width)
        layers, read_bytes = _sketch_layers(src, infos, roles, basis, to_basis, width, threads=threads)
        buffers = {}
        for name in sorted(infos):
            if fixed_buffer(name) and infos[name].numel <= (1 << 24):
                buffers[name] = _sha(np.ascontiguousarray(src.read(name)).tobytes())
        file_hashes = {k: f.result() for k, f in hashes.items()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    meta: dict[str, Any] = {
        "name": model.name, "formats": model.formats,
        "tensors": len(infos), "parameters": int(sum(i.numel for i in infos.values())),
        "tensor_names_sha256": _sha("\n".join(sorted(infos)).encode("utf-8", "replace")),
        "fixed_buffers": buffers, "files": file_hashes,
        "hidden_size": width, "embedding_rows": int(infos[emb[0]].shape[0]) if emb is not None else None,
        "mlp_dtype": _mlp_dtype(infos, roles),
        "experts": len({r.expert for r in roles.values() if r.expert is not None}), **_artifacts(model, vocab),
    }
    if vocab:
        meta["_minhash"] = minhash(list(vocab))
    fp = Fingerprint(ref=model.ref, meta=meta, layers=tuple(layers), basis=basis, vector=candidate_vector(layers),
                     stats={"seconds": time.perf_counter() - t0, "tensor_bytes_read": read_bytes,
                            "file_bytes": int(sum(p.stat().st_size for p in model.weight_files))})
    return fp


def _read_oriented(src: TensorSource, buf: np.ndarray, name: str, role: Role, width: int | None,
                   kind: str) -> np.ndarray:
    info = src.info(name)
    arr = src.read_into(name, buf[: info.numel]) if info.numel <= buf.size else src.read(name)
    if kind == "mlp_gate_up" and arr.ndim == 2:
        half = arr.shape[0] // 2 if (width is None or arr.shape[1] == width) else None
        arr = arr[half:] if half is not None else arr[:, arr.shape[1] // 2:].T
        return np.asarray(arr)
    return _orient(arr, width, kind, role)


def _to_basis(rows: np.ndarray, to_basis: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
    if to_basis is not None:
        out: np.ndarray = (rows @ to_basis.T).astype(np.float32)
        return out
    assert cols is not None
    return np.ascontiguousarray(rows[:, cols], dtype=np.float32)


def _sketch_layers(src: TensorSource, infos: dict[str, Any], roles: dict[str, Role], basis: Basis | None,
                   to_basis: np.ndarray | None, width: int | None, threads: int = 2) -> tuple[list[LayerSketch], int]:
    """Sketch every MLP layer; layers run in `threads` threads, each with one reused read buffer."""
    plan = [lay for lay in _layers(roles)
            if any(k in lay.parts for k in ("mlp_up", "mlp_gate_up", "mlp_gate"))]
    names = [n for lay in plan for n, _ in lay.parts.values()]
    if not plan:
        return [], 0
    size = max(infos[n].numel for n in names)
    local = threading.local()

    def one(lay: _Layer) -> tuple[LayerSketch, int]:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = empty_float32(size)
        return _sketch_one(src, infos, lay, buf, basis, to_basis, width)

    workers = max(1, min(threads, len(plan)))
    if workers == 1:
        done = [one(lay) for lay in plan]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(one, plan))
    return [d[0] for d in done], sum(d[1] for d in done)


def _sketch_one(src: TensorSource, infos: dict[str, Any], lay: _Layer, buf: np.ndarray, basis: Basis | None,
                to_basis: np.ndarray | None, width: int | None) -> tuple[LayerSketch, int]:
    inp = lay.parts.get("mlp_up") or lay.parts.get("mlp_gate_up") or lay.parts.get("mlp_gate")
    assert inp is not None
    gain = None
    if "mlp_norm" in lay.parts:
        gain = np.array(src.read(lay.parts["mlp_norm"][0]), dtype=np.float32).reshape(-1)
    w_in = _read_oriented(src, buf, inp[0], inp[1], width if lay.component == _comp(basis) else None, inp[1].kind)
    read_bytes = int(infos[inp[0]].numel) * 4
    n, d = w_in.shape
    tokens = to_basis is not None and basis is not None and lay.component == basis.component and d == width
    g = gain if gain is not None and gain.shape == (d,) else None
    # units chosen by content: the largest input rows (gain folded in), a rotation- and permutation-invariant key
    norms = np.sqrt(np.einsum("ij,ij->i", w_in, w_in) if g is None else
                    np.einsum("ij,ij,j->i", w_in, w_in, (g * g).astype(np.float32)))
    sel = np.sort(np.argsort(-norms.astype(np.float64), kind="stable")[: min(SEL_UNITS, n)])
    kurt = _kurtosis(w_in[_kurtosis_rows(n)])
    idx = idx_indices(n)
    pick = np.concatenate([idx, sel])
    rows = w_in[pick] * g[None, :] if g is not None else np.array(w_in[pick])
    cols = None if tokens else _coords(d)
    c = _to_basis(rows, to_basis if tokens else None, cols)
    cidx = np.ascontiguousarray(rows[: len(idx)][:, _coords(d, COORD_DIMS)], dtype=np.float32)
    del w_in
    c_out = None
    if "mlp_down" in lay.parts:
        name, role = lay.parts["mlp_down"]
        v = _read_oriented(src, buf, name, role, d, "mlp_down")
        read_bytes += int(infos[name].numel) * 4
        if v.shape == (n, d):
            c_out = _to_basis(np.array(v[sel]), to_basis if tokens else None, cols)
    return LayerSketch(
        component=lay.component, layer=lay.layer, n=n, width=d, basis="tokens" if tokens else f"coords:{d}",
        idx_in=_roundtrip(c[: len(idx)]), cidx_in=cidx.astype(np.float16).astype(np.float32), sel=sel.astype(np.int64),
        sel_in=_roundtrip(c[len(idx):]), sel_out=_roundtrip(c_out) if c_out is not None else None,
        kurtosis=kurt), read_bytes


KURTOSIS_ROWS = 512


def _kurtosis_rows(n: int) -> np.ndarray:
    """Evenly spaced rows the kurtosis is estimated on: all of them in small layers, 512 in large ones."""
    return np.unique(np.linspace(0, n - 1, min(n, KURTOSIS_ROWS)).round().astype(np.int64))


def _kurtosis(w: np.ndarray) -> float | None:
    """Excess kurtosis of a weight matrix's values (MoTHer's direction signal, Horwitz et al., ICLR 2025).

    Power sums in float64 over blocks of rows, so the memory stays a block, not a float64 copy.
    """
    n = w.size
    if n < 4:
        return None
    sums = np.zeros(4)
    step = max(1, (1 << 20) // max(1, w.shape[1] if w.ndim > 1 else 1))
    for r in range(0, w.shape[0], step):
        x = w[r:r + step].astype(np.float64).reshape(-1)
        x2 = x * x
        sums += (x.sum(), x2.sum(), (x2 * x).sum(), (x2 * x2).sum())
    m1, m2r, m3r, m4r = sums / n
    var = m2r - m1 * m1
    if not np.isfinite(var) or var <= 0:
        return None
    m4 = m4r - 4 * m1 * m3r + 6 * m1 * m1 * m2r - 3 * m1 ** 4
    return round(float(m4 / (var * var) - 3.0), 6)


def _comp(basis: Basis | None) -> str | None:
    return basis.component if basis is not None else None


def _roundtrip(x: np.ndarray) -> np.ndarray:
    """What the file will hold: sketches are compared exactly as stored, whether fresh or loaded."""
    q, s = fmt.quantize(x)
    return fmt.dequantize(q, s)


def candidate_vector(layers: list[LayerSketch] | tuple[LayerSketch, ...]) -> np.ndarray:
    """A small vector per model for the nearest-neighbour stage: invariant to unit permutation and rotation.

    The off-diagonal second moments of the content-selected units over the leading basis coordinates,
    averaged over layers (each layer normalised): derived models share their largest units, so their
    vectors are close; unrelated models' off-diagonal moments have independent signs.
    """
    acc = np.zeros(VECTOR_DIM, dtype=np.float64)
    iu = np.triu_indices(VECTOR_BASIS, k=1)
    used = 0
    for s in layers:
        x = s.sel_in.astype(np.float64)
        if x.shape[1] < VECTOR_BASIS:
            x = np.pad(x, ((0, 0), (0, VECTOR_BASIS - x.shape[1])))
        x = x[:, :VECTOR_BASIS]
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        m = (x.T @ x)[iu]
        nm = float(np.linalg.norm(m))
        if nm > 0:
            acc += m / nm
            used += 1
    nrm = float(np.linalg.norm(acc))
    return (acc / nrm if nrm > 0 else acc).astype(np.float32)


# --- files ---------------------------------------------------------------------------------------
def to_raw(fp: Fingerprint) -> fmt.RawFingerprint:
    arrays: dict[str, np.ndarray] = {"vector": fp.vector.astype(np.float32)}
    layers_meta = []
    for k, s in enumerate(fp.layers):
        p = f"layers/{k}/"
        # the raw-coordinate view in float16: the distances that rank a parent above its siblings need it
        arrays[p + "cidx_in.f2"] = s.cidx_in.astype(np.float16)
        for key, x in (("idx_in", s.idx_in), ("sel_in", s.sel_in), ("sel_out", s.sel_out)):
            if x is not None:
                q, sc = fmt.quantize(x)
                arrays[p + key + ".q"], arrays[p + key + ".s"] = q, sc
        arrays[p + "sel"] = s.sel.astype(np.int32)
        layers_meta.append({"component": s.component, "layer": s.layer, "n": s.n, "width": s.width,
                            "basis": s.basis, **({"kurtosis": s.kurtosis} if s.kurtosis is not None else {})})
    meta = {k: v for k, v in fp.meta.items() if not k.startswith("_")}
    if "_minhash" in fp.meta:
        arrays["tokenizer/minhash"] = np.asarray(fp.meta["_minhash"], dtype=np.uint64)
    header: dict[str, Any] = {
        "schema": fmt.SCHEMA, "version": fmt.VERSION, "ref": fp.ref, "tool": f"modeltrace {__version__}",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": {"seed": FP_SEED, "basis_tokens": BASIS_TOKENS, "idx_units": IDX_UNITS, "sel_units": SEL_UNITS,
                   "vector_dim": VECTOR_DIM, "quantization": "int8 rows, float16 scale per row"},
        "model": meta, "layers": layers_meta,
    }
    if fp.basis is not None:
        header["basis"] = {"tokens": list(fp.basis.tokens), "component": fp.basis.component}
        arrays["basis/gram"] = fp.basis.gram.astype(np.float32)
    return fmt.RawFingerprint(header, arrays)


def from_raw(raw: fmt.RawFingerprint, where: str | Path, sha256: str = "", size: int = 0) -> Fingerprint:
    """A `Fingerprint` from a parsed file; every missing or inconsistent part is a `FormatError`."""
    h, a = raw.header, raw.arrays

    def need(name: str, ndim: int, dtype: str) -> np.ndarray:
        x = a.get(name)
        if x is None:
            raise FormatError(where, f"fingerprint lacks array {name!r}")
        if x.ndim != ndim or x.dtype != fmt.DTYPES[dtype]:
            raise FormatError(where, f"array {name!r} should be {ndim}-D {dtype}, is {x.ndim}-D {x.dtype}")
        return x

    params = h.get("params")
    if not isinstance(params, dict) or params.get("seed") != FP_SEED:
        raise FormatError(where, "fingerprint made with other sampling parameters (seed) than this version uses")
    vector = need("vector", 1, "f4")
    if vector.shape != (VECTOR_DIM,):
        raise FormatError(where, f"candidate vector has {vector.shape[0]} values, expected {VECTOR_DIM}")
    layers_meta = h.get("layers")
    if not isinstance(layers_meta, list):
        raise FormatError(where, "fingerprint header lacks its 'layers' list")
    layers = []
    for k, lm in enumerate(layers_meta):
        if not isinstance(lm, dict) or not isinstance(lm.get("component"), str) \
                or not isinstance(lm.get("layer"), int) or not isinstance(lm.get("n"), int) \
                or not isinstance(lm.get("basis"), str) or lm["n"] < 1 \
                or not isinstance(lm.get("width"), int) or lm["width"] < 1:
            raise FormatError(where, f"layer entry {k} is malformed")
        p = f"layers/{k}/"

        def rows(key: str, required: bool = True, p: str = p, k: int = k) -> np.ndarray | None:
            if not required and p + key + ".q" not in a:
                return None
            q, s = need(p + key + ".q", 2, "i1"), need(p + key + ".s", 1, "f2")
            if s.shape[0] != q.shape[0]:
                raise FormatError(where, f"layer {k} {key}: {q.shape[0]} rows but {s.shape[0]} scales")
            return fmt.dequantize(q, s)

        idx_in, sel_in = rows("idx_in"), rows("sel_in")
        cidx_in = need(p + "cidx_in.f2", 2, "f2").astype(np.float32)
        sel_out = rows("sel_out", required=False)
        sel = need(p + "sel", 1, "i4").astype(np.int64)
        assert idx_in is not None and sel_in is not None and cidx_in is not None
        n = int(lm["n"])
        if idx_in.shape[0] != len(idx_indices(n)) or sel.shape[0] != sel_in.shape[0] \
                or cidx_in.shape[0] != idx_in.shape[0] \
                or (sel_out is not None and sel_out.shape != sel_in.shape) \
                or idx_in.shape[1] != sel_in.shape[1] or (len(sel) and (sel.min() < 0 or sel.max() >= n)):
            raise FormatError(where, f"layer {k}: sketch shapes do not fit a layer of {n} units")
        kurt = lm.get("kurtosis")
        layers.append(LayerSketch(lm["component"], int(lm["layer"]), n, int(lm["width"]), lm["basis"], idx_in,
                                  cidx_in, sel, sel_in, sel_out,
                                  float(kurt) if isinstance(kurt, (int, float)) and not isinstance(kurt, bool) else None))
    basis = None
    if "basis" in h:
        b = h["basis"]
        gram = need("basis/gram", 2, "f4")
        if not isinstance(b, dict) or not isinstance(b.get("tokens"), list) \
                or not all(isinstance(t, str) for t in b["tokens"]) or not isinstance(b.get("component"), str) \
                or gram.shape != (len(b["tokens"]), len(b["tokens"])):
            raise FormatError(where, "fingerprint basis is malformed")
        basis = Basis(tuple(b["tokens"]), gram, b["component"])
    model = h.get("model")
    if not isinstance(model, dict):
        raise FormatError(where, "fingerprint header lacks its 'model' object")
    meta = dict(model)
    if "tokenizer/minhash" in a:
        meta["_minhash"] = need("tokenizer/minhash", 1, "u8")
    ref = h.get("ref")
    return Fingerprint(ref=ref if isinstance(ref, str) else str(where), meta=meta, layers=tuple(layers),
                       basis=basis, vector=vector, sha256=sha256, size=size)


def save(fp: Fingerprint, path: Path) -> Fingerprint:
    data = fmt.dumps(to_raw(fp))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return Fingerprint(fp.ref, fp.meta, fp.layers, fp.basis, fp.vector, _sha(data), len(data), fp.stats)


def to_bytes(fp: Fingerprint) -> bytes:
    return fmt.dumps(to_raw(fp))


def from_bytes(data: bytes, where: str | Path) -> Fingerprint:
    return from_raw(fmt.loads(data, where), where, _sha(data), len(data))


def load(path: Path) -> Fingerprint:
    """Read a fingerprint file (bounded parsing; a bad file is one `FormatError`)."""
    raw = fmt.read(path)
    data = path.read_bytes()
    return from_raw(raw, path, _sha(data), len(data))


def fingerprint(ref: str, *, hash_files: bool = True) -> Fingerprint:
    """Open a model reference, or read a fingerprint file, and return its fingerprint."""
    if fmt.is_fingerprint_file(ref):
        return load(Path(ref))
    with Model.open(ref) as model:
        return compute(model, hash_files=hash_files)


def describe(fp: Fingerprint) -> dict[str, Any]:
    """A short JSON-able summary (for `fingerprint` and `index list`)."""
    return {"ref": fp.ref, "name": fp.meta.get("name"), "layers": len(fp.layers),
            "basis": "tokens" if fp.basis is not None else "coordinates",
            "parameters": fp.meta.get("parameters"), "bytes": fp.size, "sha256": fp.sha256}


__all__ = ["Basis", "Fingerprint", "LayerSketch", "candidate_vector", "compute", "describe", "fingerprint",
           "from_bytes", "load", "save", "to_bytes"]
