"""Positive controls: the weight tests re-run on synthetic derivations of A, to say what they would catch.

A test that fails to reject proves nothing by itself: it may simply be unable to see the derivation
at hand. So before `independent` is said, each weight test that ran is run again, with the same
options, seed and threshold, on copies of A made in memory by what a copier can do:

- ``permute``: MLP units (and attention heads, when the config gives the head count) relabelled;
- ``rotate``: the residual stream turned by a random orthogonal matrix, norm gains folded into the
  next projections (function-preserving for RMSNorm models);
- ``noise``: Gaussian noise of a ladder of sizes, as a fraction of each tensor's standard deviation;
- ``rotate+noise``: both;
- ``rotate+permute``: both a rotation and relabelled units (reported, not required: see `OPTIONAL_KINDS`);
- ``finetune``: a rank-8 update of each matrix (0.2 of its spread) plus noise of 0.05, standing in
  for a fine-tune;
- ``drop-layer`` and ``duplicate-layer``: a middle block removed, or repeated after the last.

Controls run on a few layers of each component (`CONTROL_LAYERS`) plus everything outside layers
(embeddings, head), so they cost a fraction of the comparison. With fewer layers a test has
less to combine, so a control detected on the subset would be detected on the whole model too:
the detection limit reported is conservative. The ladders stop at the first strength that is not
detected ("nothing larger was tried"). Which kinds are in scope depends on the model: a rotation
needs a residual stream (a token embedding), layer edits need at least two layers.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modeltrace.evidence.base import CompareContext, ControlOutcome, Evidence, EvidenceMethod
from modeltrace.formats.base import TensorInfo, TensorSource
from modeltrace.model import Model
from modeltrace.roles import Role, assign_roles

CONTROL_LAYERS = 2  # layers of A's main component kept in a control copy (two: a drop or a repeat still shows)
NOISE_LADDER = (0.1, 0.3, 1.0)
ROTATE_NOISE_LADDER = (0.05, 0.2, 0.5)
# `independent` needs these detected: noise of 0.3 of each tensor's spread, and 0.2 after a rotation
# (a copier who adds more has a different model in most coordinates, and says so in its loss)
REQUIRED_NOISE = 0.3
REQUIRED_ROTATE_NOISE = 0.2
FINETUNE_RANK = 8
FINETUNE_SIZE = 0.2
FINETUNE_NOISE = 0.05
IN_KINDS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "mlp_gate", "mlp_up", "mlp_gate_up")
OUT_KINDS = ("attn_o", "mlp_down")
NORM_OF = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "attn_qkv": "attn_norm",
           "mlp_gate": "mlp_norm", "mlp_up": "mlp_norm", "mlp_gate_up": "mlp_norm", "lm_head": "final_norm"}
NORM_KINDS = ("attn_norm", "mlp_norm", "final_norm")

CACHE_BYTES = 512 << 20  # transformed tensors kept per control copy (each analysis reads them again)
ROTATION_BLOCK = 64  # coordinates mixed together by a control's rotation (see `Rotation`)
BLOCK = 8  # rows per block of generated noise: a row range reads the same noise as a whole read (small, as
#           the analyses read scattered single rows of embeddings)
ROWS_CACHE_BYTES = 64 << 20  # transformed row ranges kept (both analyses of a control read the same rows)
SPREAD_ROWS = 2048  # rows sampled to estimate a tensor's spread (the same estimate for every read)


class Op:
    """A transform of A's tensors. `apply` gets rows [start, start + len) of a tensor as stored (the
    whole tensor when start is 0 and every row is there) and the tensor's spread; `row_local` says
    whether a row range can be transformed on its own (else the whole tensor is read)."""

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        return arr

    def row_local(self, name: str) -> bool:
        return True


class DerivedSource(TensorSource):
    """A's tensors, a subset renamed or repeated, each passed through `op` when read. Never closes A."""

    format = "control"

    def __init__(self, base: TensorSource, names: dict[str, str], op: Op | None) -> None:
        super().__init__(base.path)
        self.base = base
        self.names = names  # our name -> A's name
        self.op = op
        base_infos = base.infos()
        self._infos = {new: TensorInfo(new, base_infos[old].shape, base_infos[old].dtype, base_infos[old].file,
                                       base_infos[old].quantization, base_infos[old].extra)
                       for new, old in names.items()}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()  # transformed tensors, newest last
        self._spread: dict[str, float] = {}
        self._rows: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._rows_bytes = 0

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def spread(self, name: str) -> float:
        """The standard deviation of A's tensor, from evenly spaced rows (a fixed estimate per tensor)."""
        if name not in self._spread:
            shape = self._infos[name].shape
            rows = int(shape[0]) if shape else 1
            if len(shape) < 2 or rows <= SPREAD_ROWS:
                x = np.asarray(self.base.read(self.names[name]), dtype=np.float64)
            else:
                pick = np.linspace(0, rows - 1, SPREAD_ROWS).astype(np.int64)
                x = np.concatenate([np.asarray(self.base.read_rows(self.names[name], int(i), int(i) + 1),
                                               dtype=np.float64).reshape(1, -1) for i in pick])
            self._spread[name] = float(x.std()) if x.size else 0.0
        return self._spread[name]

    def read(self, name: str) -> np.ndarray:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        arr = np.asarray(self.base.read(self.names[name]), dtype=np.float32)
        if self.op is not None:
            arr = np.ascontiguousarray(self.op.apply(name, arr, 0, self.spread(name)), dtype=np.float32)
        self._cache[name] = arr
        while sum(a.nbytes for a in self._cache.values()) > CACHE_BYTES and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return arr

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if self.op is None:
            return self.base.read_rows(self.names[name], start, stop)
        if name in self._cache:
            return self._cache[name][start:stop]
        if len(self._infos[name].shape) >= 2 and self.op.row_local(name):
            key = (name, start, stop)
            got = self._rows.get(key)
            if got is None:
                rows = np.asarray(self.base.read_rows(self.names[name], start, stop), dtype=np.float32)
                got = np.ascontiguousarray(self.op.apply(name, rows, start, self.spread(name)), dtype=np.float32)
                self._rows[key] = got
                self._rows_bytes += got.nbytes
                while self._rows_bytes > ROWS_CACHE_BYTES and len(self._rows) > 1:
                    self._rows_bytes -= self._rows.popitem(last=False)[1].nbytes
            return got
        return self.read(name)[start:stop]

    def metadata(self) -> dict[str, Any]:
        return self.base.metadata()

    def close(self) -> None:
        self._cache.clear()
        self._rows.clear()
        self._rows_bytes = 0


def derived_model(a: Model, source: TensorSource, label: str) -> Model:
    """A Model that has A's files (config, tokenizer) but reads its tensors from `source`."""
    return Model(ref=f"{a.ref} [{label}]", root=a.root, weight_files=list(a.weight_files),
                 single_file=a.single_file, files=list(a.files), _source=source)


# --- what the transforms need to know about A -------------------------------------------------
@dataclass
class Layout:
    """A's tensors with roles, the kept subset, and the residual width."""

    infos: dict[str, TensorInfo]
    roles: dict[str, Role]
    keep: list[str]
    layers: list[int]
    component: str | None
    width: int | None
    source: TensorSource
    config: dict[str, Any] = field(default_factory=dict)

    def role(self, name: str) -> Role | None:
        return self.roles.get(name)


def _spread_pick(layers: list[int]) -> list[int]:
    if len(layers) <= CONTROL_LAYERS:
        return layers
    pick = np.unique(np.linspace(0, len(layers) - 1, CONTROL_LAYERS).round().astype(int))
    return [layers[i] for i in pick]


def layout_of(a: Model, exclude: Iterable[str] = ()) -> Layout:
    """A's tensors with roles; `CONTROL_LAYERS` layers of every component kept, layer edits on the main one.

    Every component keeps some layers, so a control copy is a copy of the whole model (a copier who
    permutes the vision tower permutes the language model too); the main component, whose layers are
    dropped or repeated, is the one holding the token embedding, else the deepest.
    """
    src = a.source
    infos = {n: i for n, i in src.infos().items() if n not in set(exclude) and i.numel > 0}
    roles = assign_roles(infos)
    per_comp: dict[str, set[int]] = {}
    for r in roles.values():
        if r.layer is not None:
            per_comp.setdefault(r.component, set()).add(r.layer)
    embed_comps = {r.component for r in roles.values() if r.kind == "token_embed"}
    comp = max(per_comp, key=lambda c: (c in embed_comps, len(per_comp[c]), c == "language_model")) \
        if per_comp else None
    kept_layers = {c: set(_spread_pick(sorted(ls))) for c, ls in per_comp.items()}
    layers = sorted(kept_layers.get(comp, set())) if comp else []
    keep = []
    for n in infos:
        role = roles.get(n)
        if role is None or role.layer is None or role.layer in kept_layers.get(role.component, set()):
            keep.append(n)
    width = None
    for n in keep:
        role = roles.get(n)
        if role is not None and role.kind == "token_embed" and len(infos[n].shape) == 2:
            width = int(infos[n].shape[1])
            break
    return Layout(infos, roles, keep, layers, comp, width, src, dict(a.config or {}))


def _rng(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _oriented(arr: np.ndarray, role: Role | None) -> tuple[np.ndarray, bool]:
    """The 2-D weight in (out, in) layout, and whether it was transposed to get there."""
    if arr.ndim == 2 and role is not None and role.transposed:
        return arr.T, True
    return arr, False


def _block_normal(seed: int, name: str, what: str, start: int, rows: int, cols: int) -> np.ndarray:
    """Standard normal values for rows [start, start + rows) of a (.., cols) array, the same whatever
    range is asked for: generated in blocks of BLOCK rows, each from its own seeded stream."""
    first, last = start // BLOCK, (start + rows - 1) // BLOCK
    blocks = [_rng(seed, what, name, b).standard_normal((BLOCK, cols), dtype=np.float32) for b in range(first, last + 1)]
    full = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    out: np.ndarray = full[start - first * BLOCK: start - first * BLOCK + rows]
    return out


class NoiseOp(Op):
    """Gaussian noise of `sigma` times each tensor's spread (elementwise, so any row range on its own)."""

    def __init__(self, seed: int, sigma: float) -> None:
        self.seed, self.sigma = seed, sigma

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        if arr.size < 2 or spread == 0:
            return arr
        flat = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr.reshape(1, -1)
        noise = _block_normal(self.seed, name, "noise", start if arr.ndim >= 2 else 0, *flat.shape)
        out: np.ndarray = (flat + (self.sigma * spread) * noise).reshape(arr.shape)
        return out


class FinetuneOp(Op):
    """A rank-`FINETUNE_RANK` update of each matrix (FINETUNE_SIZE of its spread) plus noise."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.noise = NoiseOp(seed, FINETUNE_NOISE)

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        if arr.ndim == 2 and min(arr.shape) > FINETUNE_RANK and spread > 0:
            u = _block_normal(self.seed, name, "lowrank-u", start, arr.shape[0], FINETUNE_RANK)
            v = _rng(self.seed, "lowrank-v", name).standard_normal((FINETUNE_RANK, arr.shape[1]), dtype=np.float32)
            arr = arr + (FINETUNE_SIZE * spread / np.sqrt(FINETUNE_RANK)) * (u @ v)
        return self.noise.apply(name, arr, start, spread)


class Rotation:
    """A random orthogonal R = P1 B P2 of the residual space: coordinate permutations around a
    block-diagonal of Haar-random ROTATION_BLOCK x ROTATION_BLOCK rotations. It mixes every coordinate
    with its block, which no permutation test can undo and only an alignment can, at n d b flops per
    (n, d) matrix instead of n d^2 (a dense 2048 x 2048 rotation of a 1B model's MLPs dominated the
    controls' cost)."""

    def __init__(self, d: int, rng: np.random.Generator) -> None:
        self.d = d
        self.p1, self.p2 = rng.permutation(d), rng.permutation(d)
        self.bounds = list(range(0, d, ROTATION_BLOCK)) + [d]
        self.blocks = []
        for lo, hi in zip(self.bounds, self.bounds[1:]):
            q, r_ = np.linalg.qr(rng.standard_normal((hi - lo, hi - lo)))
            self.blocks.append((q * np.sign(np.diag(r_))).astype(np.float32))

    def right(self, w: np.ndarray) -> np.ndarray:
        """w R for rows w (..., d)."""
        y = w[..., self.p1]
        out = np.empty(y.shape, dtype=np.float32)
        for (lo, hi), q in zip(zip(self.bounds, self.bounds[1:]), self.blocks):
            out[..., lo:hi] = y[..., lo:hi] @ q
        result: np.ndarray = out[..., self.p2]
        return result

    def left_t(self, w: np.ndarray) -> np.ndarray:
        """R^T w for columns w (d, m)."""
        return self.right(w.T).T


class RotateOp(Op):
    """Turn the residual stream by a random orthogonal R; norm gains folded into the next projections."""

    def __init__(self, lay: Layout, seed: int) -> None:
        d = lay.width
        assert d is not None
        self.rot = Rotation(d, _rng(seed, "rotation"))
        self.lay, self.d = lay, d
        self.gains: dict[tuple[str, int | None, str], str] = {}
        for n, r in lay.roles.items():
            if r.kind in NORM_KINDS and r.param == "weight":
                self.gains[(r.component, r.layer, r.kind)] = n
        self._gain_cache: dict[str, np.ndarray] = {}

    def _gain(self, role: Role, kind: str) -> np.ndarray | None:
        norm = NORM_OF.get(kind)
        gname = self.gains.get((role.component, role.layer if kind != "lm_head" else None, norm)) if norm else None
        if gname is None:
            return None
        if gname not in self._gain_cache:
            self._gain_cache[gname] = np.asarray(self.lay.source.read(gname), dtype=np.float32).reshape(-1)
        g = self._gain_cache[gname]
        return g if g.shape == (self.d,) else None

    def row_local(self, name: str) -> bool:
        role = self.lay.role(name)
        kind = role.kind if role is not None else "other"
        transposed = role is not None and role.transposed
        return not transposed and kind not in OUT_KINDS

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        role = self.lay.role(name)
        kind = role.kind if role is not None else "other"
        d, rot = self.d, self.rot
        if kind in NORM_KINDS and arr.ndim == 1:
            return np.ones_like(arr) if role is not None and role.param == "weight" else rot.right(arr)
        w, flipped = _oriented(arr, role)
        if w.ndim == 2 and (kind in IN_KINDS or kind in ("lm_head", "token_embed", "pos_embed")) \
                and w.shape[1] == d:
            g = self._gain(role, kind) if role is not None else None
            w = rot.right(w * g[None, :] if g is not None else w)
        elif w.ndim == 2 and kind in OUT_KINDS and w.shape[0] == d:
            w = rot.left_t(w)
        elif w.ndim == 1 and w.shape[0] == d or w.ndim == 2 and kind == "other" and w.shape[1] == d:
            w = rot.right(w)
        return w.T if flipped else w


class ChainOp(Op):
    def __init__(self, *ops: Op) -> None:
        self.ops = ops

    def row_local(self, name: str) -> bool:
        return all(o.row_local(name) for o in self.ops)

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        for o in self.ops:
            arr = o.apply(name, arr, start, spread)
        return arr


class PermuteOp(Op):
    """Relabel the MLP units of every kept layer (up/gate rows, down columns), and heads when known."""

    def __init__(self, lay: Layout, seed: int) -> None:
        self.lay, self.seed = lay, seed
        cfg = lay.config
        got = cfg.get("num_attention_heads") or cfg.get("n_head")
        self.n_heads = got if isinstance(got, int) else 0
        got_kv = cfg.get("num_key_value_heads")
        self.n_kv = got_kv if isinstance(got_kv, int) else self.n_heads

    def _units(self, comp: str, layer: int | None, n: int, what: str) -> np.ndarray:
        return _rng(self.seed, "perm", comp, layer, what, n).permutation(n)

    def _heads(self, comp: str, layer: int | None, rows: int, heads: int) -> np.ndarray | None:
        if heads < 2 or rows % heads:
            return None
        hp = _rng(self.seed, "heads", comp, layer, heads).permutation(heads)
        size = rows // heads
        out: np.ndarray = (hp[:, None] * size + np.arange(size)[None, :]).reshape(-1)
        return out

    def row_local(self, name: str) -> bool:
        role = self.lay.role(name)
        return role is not None and role.layer is None  # embeddings, head, final norm: left as they are

    def apply(self, name: str, arr: np.ndarray, start: int, spread: float) -> np.ndarray:
        role = self.lay.role(name)
        w, flipped = _oriented(arr, role)
        if role is None or role.layer is None:
            if role is None and w.ndim >= 2 and w.shape[0] >= 8:  # unknown scheme: output units of each tensor
                w = w[self._units("?", None, w.shape[0], name)]
            return w.T if flipped else w
        comp, layer, kind = role.component, role.layer, role.kind
        if kind in ("mlp_up", "mlp_gate"):
            w = w[self._units(comp, layer, w.shape[0], "mlp")]
        elif kind == "mlp_gate_up" and w.shape[0] % 2 == 0:
            h = w.shape[0] // 2
            p = self._units(comp, layer, h, "mlp")
            w = np.concatenate([w[:h][p], w[h:][p]])
        elif kind == "mlp_down" and w.ndim == 2:
            w = w[:, self._units(comp, layer, w.shape[1], "mlp")]
        elif kind in ("attn_q", "attn_k", "attn_v"):
            hp = self._heads(comp, layer, w.shape[0], self.n_heads if kind == "attn_q" else self.n_kv)
            w = w[hp] if hp is not None else w
        elif kind == "attn_o" and w.ndim == 2:
            hp = self._heads(comp, layer, w.shape[1], self.n_heads)
            w = w[:, hp] if hp is not None else w
        elif kind == "other" and w.ndim >= 2 and w.shape[0] >= 8:
            w = w[self._units(comp, layer, w.shape[0], name)]
        return w.T if flipped else w


_NUM = re.compile(r"(?<![0-9])(\d+)(?![0-9])")


def _renumber(name: str, old: int, new: int) -> str:
    """`name` with its layer number `old` replaced by `new` (the first number equal to it)."""
    for m in _NUM.finditer(name):
        if int(m.group(1)) == old:
            return name[:m.start()] + str(new) + name[m.end():]
    return name


def layer_names(lay: Layout, kind: str) -> dict[str, str]:
    """Names of the control copy (ours -> A's) for a plain copy, a dropped or a duplicated layer."""
    names = {n: n for n in lay.keep}
    if kind not in ("drop-layer", "duplicate-layer") or len(lay.layers) < 2:
        return names
    mid = lay.layers[len(lay.layers) // 2]
    in_mid = [n for n in lay.keep if (r := lay.role(n)) is not None and r.component == lay.component
              and r.layer == mid]
    if kind == "drop-layer":
        for n in in_mid:
            names.pop(n)
        return names
    top = max(r.layer for r in lay.roles.values() if r.component == lay.component and r.layer is not None)
    for n in in_mid:
        names[_renumber(n, mid, top + 1)] = n
    return names


# --- the plan and the run ------------------------------------------------------------------------
@dataclass(frozen=True)
class Control:
    kind: str
    strength: float | None
    names_kind: str = "copy"
    ladder: str = ""  # controls of one ladder are run in order and stop at the first miss


def plan_controls(lay: Layout) -> list[Control]:
    """The controls in scope for A's layout."""
    out = [Control("permute", None)]
    out += [Control("noise", s, ladder="noise") for s in NOISE_LADDER]
    out.append(Control("finetune", FINETUNE_SIZE))
    if lay.width is not None:
        out.append(Control("rotate", None))
        out.append(Control("rotate+permute", None))
        out += [Control("rotate+noise", s, ladder="rotate+noise") for s in ROTATE_NOISE_LADDER]
    if len(lay.layers) >= 2:
        out.append(Control("drop-layer", None, "drop-layer"))
        out.append(Control("duplicate-layer", None, "duplicate-layer"))
    return out


_REQUIRED_OF = {"noise": REQUIRED_NOISE, "rotate+noise": REQUIRED_ROTATE_NOISE}


# Not required: no weight test whose null is exact sees a copy both rotated and unit-permuted (a
# relabelling-exact test cannot see a relabelled copy, and the residual-coordinate test needs coordinates
# that a rotation mixes); the limit says so when it is missed, and activation-match (--behaviour) sees it.
OPTIONAL_KINDS = ("rotate+permute",)


def required(c: Control) -> bool:
    """Whether `independent` needs this control detected (the rest of a ladder only sets the limit)."""
    if c.kind in OPTIONAL_KINDS:
        return False
    if c.kind == "noise":
        return c.strength == REQUIRED_NOISE
    if c.kind == "rotate+noise":
        return c.strength == REQUIRED_ROTATE_NOISE
    return True


def _op_for(c: Control, lay: Layout, seed: int) -> Op | None:
    if c.kind == "permute":
        return PermuteOp(lay, seed)
    if c.kind == "noise":
        return NoiseOp(seed, float(c.strength or 0))
    if c.kind == "finetune":
        return FinetuneOp(seed)
    if c.kind == "rotate":
        return RotateOp(lay, seed)
    if c.kind == "rotate+noise":
        return ChainOp(RotateOp(lay, seed), NoiseOp(seed, float(c.strength or 0)))
    if c.kind == "rotate+permute":
        return ChainOp(RotateOp(lay, seed), PermuteOp(lay, seed))
    return None


@dataclass
class ControlReport:
    """Every control run, which were required, and the limit in words."""

    outcomes: list[ControlOutcome]
    required_kinds: list[str]
    missed: list[str]  # required controls no test detected, as "kind" or "kind strength"
    limit: str

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": [o.to_json() for o in self.outcomes], "required": self.required_kinds,
                "missed": self.missed, "detection_limit": self.limit}


def _label(c: Control) -> str:
    return c.kind if c.strength is None else f"{c.kind} {c.strength:g}"


def _ladder_order(controls: list[Control]) -> list[Control]:
    """Singles as they come; each ladder from its required strength up (then down, if that missed)."""
    singles = [c for c in controls if not c.ladder]
    out = list(singles)
    for name in dict.fromkeys(c.ladder for c in controls if c.ladder):
        rungs = sorted((c for c in controls if c.ladder == name), key=lambda c: c.strength or 0)
        req = _REQUIRED_OF[name]
        out += [c for c in rungs if (c.strength or 0) >= req]
        out += sorted((c for c in rungs if (c.strength or 0) < req), key=lambda c: -(c.strength or 0))
    return out


def run_weight_controls(ctx: CompareContext, tests: list[tuple[EvidenceMethod, Evidence]],
                        threshold: float) -> list[tuple[Control, ControlOutcome]]:
    """Each control copy of A once, every weight test in `tests` run on it.

    A ladder starts at its required strength and climbs until a miss ("nothing larger was tried");
    when the required strength is missed it steps down until a detection, to state the limit.
    """
    a = ctx.a
    exclude = frozenset(ctx.shared.get("exclude_a", frozenset()))
    lay = layout_of(a, exclude)
    sub = derived_model(a, DerivedSource(a.source, {n: n for n in lay.keep}, None), "control subset")
    results: list[tuple[Control, ControlOutcome]] = []
    req_hit: dict[str, bool] = {}  # ladder -> whether its required strength was detected
    closed: set[str] = set()  # ladders with nothing more worth running
    for c in _ladder_order(plan_controls(lay)):
        going_up = False
        if c.ladder:
            going_up = (c.strength or 0) >= _REQUIRED_OF[c.ladder]
            above = (c.strength or 0) > _REQUIRED_OF[c.ladder]
            if c.ladder in closed or (above and not req_hit.get(c.ladder, False)) \
                    or (not going_up and req_hit.get(c.ladder, False)):
                continue
        hit = False
        src = DerivedSource(a.source, layer_names(lay, c.names_kind), _op_for(c, lay, ctx.seed))
        b = derived_model(a, src, f"control: {_label(c)}")
        cctx = CompareContext(a=sub, b=b, seed=ctx.seed, options={**ctx.options, "threshold": threshold,
                                                                   "control": True})
        fixed = list(ctx.shared.get("fixed_a") or [])  # the copy carries A's fixed tensors, as found in A
        cctx.shared.update(exclude_a=exclude, exclude_b=exclude, fixed_a=fixed, fixed_b=fixed)
        for method, _ in tests:
            try:
                ev = type(method)().run(cctx)
                p = float(ev.p_value) if ev.p_value is not None else 1.0
                note = ""
            except Exception as exc:  # noqa: BLE001 - a control that cannot run is a miss, said so
                p, note = 1.0, f"{type(exc).__name__}: {exc}"
            det = p < threshold
            hit = hit or det
            results.append((c, ControlOutcome(c.kind, c.strength, method.name, p, det, note)))
        if c.ladder:
            if (c.strength or 0) == _REQUIRED_OF[c.ladder]:
                req_hit[c.ladder] = hit
            if going_up and not hit and (c.strength or 0) > _REQUIRED_OF[c.ladder]:
                closed.add(c.ladder)
            if not going_up and hit:
                closed.add(c.ladder)
    return results


def summarize(results: list[tuple[Control, ControlOutcome]], extra: list[ControlOutcome]) -> ControlReport:
    """Which required controls were detected by some test, and the detection limit in one sentence."""
    by_control: dict[Control, bool] = {}
    for c, o in results:
        by_control[c] = by_control.get(c, False) or o.detected
    req = [c for c in by_control if required(c)]
    missed = [_label(c) for c in req if not by_control[c]]
    caught = [c for c, d in by_control.items() if d]
    parts = []
    words = {"permute": "permutation", "rotate": "rotation", "rotate+permute": "rotation with permutation",
             "finetune": "a low-rank fine-tune", "drop-layer": "a dropped layer",
             "duplicate-layer": "a duplicated layer"}
    for kind, what in words.items():
        if any(c.kind == kind for c in caught):
            parts.append(what)
    for kind, what in (("noise", "noise"), ("rotate+noise", "noise with a rotation")):
        got = [c.strength for c in caught if c.kind == kind and c.strength is not None]
        if got:
            tried = [c.strength for c in by_control if c.kind == kind and c.strength is not None]
            more = "" if max(got) < max(tried) else " (nothing larger was tried)"
            parts.append(f"{what} up to {max(got):g} sigma{more}")
    if extra:
        parts += [f"{o.kind} ({o.method})" for o in extra if o.detected]
    limit = ("a copy of A made by " + ", ".join(parts) + " would have been detected") if parts \
        else "no positive control was detected: these tests could not have caught a copy"
    unseen = [words[c.kind] for c in by_control if not by_control[c] and c.kind in words]
    if unseen:
        limit += "; one made by " + " or ".join(dict.fromkeys(unseen)) + " would not"
    outcomes = [o for _, o in results] + list(extra)
    required_kinds = [_label(c) for c in req]
    if not results:  # only tests without weight controls ran: their own controls must all be detected
        required_kinds = [f"{o.kind} ({o.method})" for o in extra]
        missed = [f"{o.kind} ({o.method})" for o in extra if not o.detected]
    return ControlReport(outcomes, required_kinds, missed, limit)
