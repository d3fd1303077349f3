"""Pair the tensors of model A with those of model B: renames, transposes, fused and split projections.

`match_models(a, b)` (or `match_sources` on two tensor sources) returns a `Matching`: a list of
`TensorPair`s, each saying which piece of A corresponds to which piece of B and how to bring B's
piece into A's layout. It reads metadata only (names, shapes); no tensor data is touched, so the
matching itself can never be fooled by the statistical traps (norm gains near 1, shared buffers).

Stages, each over the tensors still unpaired:

1. same name, compatible shape;
2. renamed prefixes (``vpm.`` -> ``vison.``): suffix votes propose prefix maps, the best-supported win;
3. canonical roles (`modeltrace.roles`): same component, layer, kind and parameter; fused
   projections are split by rows (A's q, k, v <-> B's fused qkv, gate and up <-> gate_up, and back);
4. structure: tensors of the same shape (up to a transpose) paired in layer/graph order, when both
   sides have the same number of them.

Orientation. Every 2-D weight is brought to torch.nn.Linear's (out, in) layout: A's when its
naming scheme stores it transposed (GPT-2 Conv1D), B's likewise; when neither side's scheme
says, a B tensor whose shape is A's reversed is transposed; a square one follows the majority of
B's non-square pairs (ONNX exports transpose all of them). All of this is metadata only.

API used by the evidence and diagnosis methods::

    m = match_models(model_a, model_b)            # or match_sources(src_a, src_b)
    for p in m.pairs:                             # TensorPair, frozen
        p.a, p.b                                  # tensor names in A and in B
        p.key                                     # role key ("language_model.3.mlp_up.weight") or A's name
        p.component, p.layer, p.kind, p.param     # role fields (kind "other" when unknown)
        p.shape                                   # the piece's shape, in A's (out, in) layout
        p.a_rows, p.b_rows                        # (start, stop) row ranges when a side is fused, else None
        p.a_transpose, p.b_transpose              # whether the stored tensor is transposed on reading
        p.how                                     # "name" | "prefix" | "role" | "fused" | "structure"
    m.read_a(p), m.read_b(p)                      # float32 arrays, same shape, B in A's layout
                                                  # (a transposed tensor comes back as a view)
    m.piece("a" | "b", kind, layer, component)    # each side's own tensor for a role (Piece), paired or not
    m.read_piece("a" | "b", piece)                # that tensor, oriented and sliced
    m.side_layers("a" | "b", component)           # layer numbers each side has
    m.find(kind, layer=None, component=None)      # pairs with that role
    m.layers(component="language_model")          # A's layer numbers that have pairs
    m.unmatched_a, m.unmatched_b                  # names left over (fixed buffers are never paired)
    m.rename_map                                  # A name -> B name, for every pair whose names differ
    m.prefix_map                                  # condensed: A prefix -> B prefix
    m.transforms                                  # Transform(kind in rename/transpose/fuse) found
    m.hidden_size                                 # A's residual width when a token embedding is paired
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from modeltrace.evidence.base import Transform
from modeltrace.formats.base import TensorInfo, TensorSource
from modeltrace.roles import Role, assign_roles, fixed_buffer

if TYPE_CHECKING:
    from modeltrace.model import Model

Rows = tuple[int, int] | None

# fused kinds and the parts they stack, in row order (as Hugging Face models lay them out)
FUSED: dict[str, tuple[str, ...]] = {"attn_qkv": ("attn_q", "attn_k", "attn_v"),
                                     "mlp_gate_up": ("mlp_gate", "mlp_up")}
VOCAB_KINDS = ("token_embed", "lm_head")  # rows are vocabulary entries: their count may differ
KIND_ORDER = {k: i for i, k in enumerate((
    "token_embed", "pos_embed", "type_embed", "embed_norm", "attn_norm", "attn_q", "attn_k", "attn_v",
    "attn_qkv", "attn_o", "mlp_norm", "mlp_gate", "mlp_up", "mlp_gate_up", "mlp_down", "other",
    "final_norm", "lm_head"))}


@dataclass(frozen=True)
class TensorPair:
    """One piece of A and the piece of B that corresponds to it (see the module docstring)."""

    a: str
    b: str
    key: str
    component: str
    layer: int | None
    kind: str
    param: str
    shape: tuple[int, ...]
    a_rows: Rows = None
    b_rows: Rows = None
    a_transpose: bool = False
    b_transpose: bool = False
    how: str = "name"


@dataclass(frozen=True)
class Piece:
    """One side's tensor for a role: name, row range when fused, whether it is read transposed."""

    name: str
    rows: Rows = None
    transpose: bool = False


ViewKey = tuple[str, int | None, str, str]  # (component, layer, kind, param)


@dataclass(frozen=True)
class Matching:
    """Tensor pairs between A and B plus what the pairing found (renames, transposes, fusions)."""

    a_source: TensorSource
    b_source: TensorSource
    pairs: tuple[TensorPair, ...]
    unmatched_a: tuple[str, ...]
    unmatched_b: tuple[str, ...]
    rename_map: dict[str, str] = field(default_factory=dict)
    prefix_map: dict[str, str] = field(default_factory=dict)
    transforms: tuple[Transform, ...] = ()
    hidden_size: int | None = None
    view_a: dict[ViewKey, Piece] = field(default_factory=dict)
    view_b: dict[ViewKey, Piece] = field(default_factory=dict)

    @staticmethod
    def _take(arr: np.ndarray, transpose: bool, rows: Rows) -> np.ndarray:
        """Orient and slice; a transposed tensor comes back as a (non-contiguous) view, not a copy."""
        if transpose and arr.ndim == 2:
            arr = arr.T
        if rows is not None:
            arr = arr[rows[0]:rows[1]]
        return arr.astype(np.float32, copy=False)

    def read_a(self, p: TensorPair) -> np.ndarray:
        """A's piece as float32, in (out, in) layout."""
        return self._take(self.a_source.read(p.a), p.a_transpose, p.a_rows)

    def read_b(self, p: TensorPair) -> np.ndarray:
        """B's piece as float32, in A's layout (same shape as `read_a(p)`)."""
        return self._take(self.b_source.read(p.b), p.b_transpose, p.b_rows)

    def read_piece(self, side: str, piece: Piece) -> np.ndarray:
        """A piece of one side ("a" or "b") as float32 in (out, in) layout."""
        src = self.a_source if side == "a" else self.b_source
        return self._take(src.read(piece.name), piece.transpose, piece.rows)

    def piece(self, side: str, kind: str, layer: int | None, component: str = "language_model",
              param: str = "weight") -> Piece | None:
        """Each side's own tensor for a role, whether or not it is paired (layer numbers are that side's)."""
        view = self.view_a if side == "a" else self.view_b
        return view.get((component, layer, kind, param))

    def side_layers(self, side: str, component: str = "language_model") -> list[int]:
        view = self.view_a if side == "a" else self.view_b
        return sorted({k[1] for k in view if k[0] == component and k[1] is not None})

    def find(self, kind: str, layer: int | None = None, component: str | None = None,
             param: str = "weight") -> list[TensorPair]:
        return [p for p in self.pairs if p.kind == kind and p.param == param
                and (layer is None or p.layer == layer) and (component is None or p.component == component)]

    def layers(self, component: str | None = None) -> list[int]:
        return sorted({p.layer for p in self.pairs if p.layer is not None
                       and (component is None or p.component == component)})

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def summary(self) -> dict[str, object]:
        hows = Counter(p.how for p in self.pairs)
        return {"pairs": len(self.pairs), "by": dict(hows), "unmatched_a": len(self.unmatched_a),
                "unmatched_b": len(self.unmatched_b), "prefix_map": self.prefix_map}


# --- helpers -----------------------------------------------------------------------------------

def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _canon_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transposed and len(shape) == 2 else tuple(shape)


def _usable(info: TensorInfo) -> bool:
    return info.numel > 0 and not fixed_buffer(info.name) and info.dtype not in ("STRING",)


@dataclass
class _Side:
    infos: dict[str, TensorInfo]
    roles: dict[str, Role]
    free: dict[str, None]  # insertion-ordered set of unpaired names

    def role(self, name: str) -> Role | None:
        return self.roles.get(name)

    def a_t(self, name: str) -> bool:
        r = self.roles.get(name)
        return bool(r is not None and r.transposed and len(self.infos[name].shape) == 2)

    def canon(self, name: str) -> tuple[int, ...]:
        return _canon_shape(self.infos[name].shape, self.a_t(name))


class _Builder:
    def __init__(self, sa: TensorSource, sb: TensorSource, exclude_a: frozenset[str] = frozenset(),
                 exclude_b: frozenset[str] = frozenset()) -> None:
        ia = {n: i for n, i in sa.infos().items() if _usable(i) and n not in exclude_a}
        ib = {n: i for n, i in sb.infos().items() if _usable(i) and n not in exclude_b}
        self.A = _Side(ia, assign_roles(ia), dict.fromkeys(ia))
        self.B = _Side(ib, assign_roles(ib), dict.fromkeys(ib))
        self.pairs: list[TensorPair] = []
        self.square_votes: Counter[bool] = Counter()
        self.pending_square: list[tuple[str, str, str]] = []

    # orientation of B relative to A's canonical layout; None when incompatible
    def _b_orient(self, a: str, b: str, a_rows: Rows = None, b_rows: Rows = None) -> bool | None:
        ca = self.A.canon(a)
        if a_rows is not None:
            ca = (a_rows[1] - a_rows[0],) + ca[1:]
        sb = self.B.infos[b].shape
        ra = self.A.role(a)
        loose = ra is not None and ra.kind in VOCAB_KINDS and len(ca) == 2 and len(sb) == 2
        rb = self.B.role(b)
        b_known = rb is not None and rb.transposed
        for t in (b_known, not b_known):
            cb = _canon_shape(sb, t)
            if b_rows is not None:
                if b_rows[1] > cb[0]:
                    continue
                cb = (b_rows[1] - b_rows[0],) + cb[1:]
            if cb == ca or (loose and cb[1:] == ca[1:]):
                return t
        return None

    def _add(self, a: str, b: str, how: str, a_rows: Rows = None, b_rows: Rows = None,
             role: Role | None = None, b_t: bool | None = None, a_t: bool | None = None) -> None:
        if b_t is None:
            b_t = self._b_orient(a, b, a_rows, b_rows)
            if b_t is None:
                return
        role = role or self.A.role(a) or self.B.role(b)
        a_t = self.A.a_t(a) if a_t is None else a_t
        ca = _canon_shape(self.A.infos[a].shape, a_t)
        shape = ((a_rows[1] - a_rows[0],) + ca[1:]) if a_rows is not None else ca
        self.pairs.append(TensorPair(
            a=a, b=b, key=role.key if role is not None else a,
            component=role.component if role is not None else "other",
            layer=role.layer if role is not None else None, kind=role.kind if role is not None else "other",
            param=role.param if role is not None else (a.rsplit(".", 1)[-1] if "." in a else "weight"),
            shape=shape, a_rows=a_rows, b_rows=b_rows, a_transpose=a_t, b_transpose=b_t, how=how))
        self.A.free.pop(a, None)
        self.B.free.pop(b, None)

    def _pair_or_defer(self, a: str, b: str, how: str) -> bool:
        """Pair two whole tensors; a square 2-D pair with no scheme to say its orientation waits for the vote."""
        sa, sb = self.A.canon(a), self.B.infos[b].shape
        if len(sa) == 2 and sa[0] == sa[1] and self.B.role(b) is None and tuple(sb) == sa:
            self.pending_square.append((a, b, how))
            self.A.free.pop(a, None)
            self.B.free.pop(b, None)
            return True
        t = self._b_orient(a, b)
        if t is None:
            return False
        if len(sa) == 2 and sa[0] != sa[1] and self.B.role(b) is None:
            self.square_votes[t] += 1
        self._add(a, b, how, b_t=t)
        return True

    # stage 1
    def by_name(self) -> None:
        for n in list(self.A.free):
            if n in self.B.free:
                self._pair_or_defer(n, n, "name")

    # stage 2
    def by_prefix(self) -> dict[str, str]:
        def suffixes(name: str) -> list[tuple[str, str]]:
            parts = name.split(".")
            return [(".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:])) for i in range(len(parts) - 1)]

        index: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for b in self.B.free:
            for pre, rest in suffixes(b):
                index[rest].append((pre, b))
        votes: Counter[tuple[str, str]] = Counter()
        for a in self.A.free:
            for pre_a, rest in suffixes(a):
                if rest.count(".") < 1:
                    continue
                for pre_b, b in index.get(rest, ()):
                    if pre_a != pre_b and self.A.canon(a) in (self.B.infos[b].shape,
                                                              tuple(reversed(self.B.infos[b].shape))):
                        votes[(pre_a, pre_b)] += 1
        chosen: dict[str, str] = {}
        for (pa, pb), v in sorted(votes.items(), key=lambda kv: (-kv[1], len(kv[0][0]) + len(kv[0][1]))):
            if v < 2 or any(pa.startswith(x) or x.startswith(pa) for x in chosen) \
                    or any(pb.startswith(y) or y.startswith(pb) for y in chosen.values()):
                continue
            chosen[pa] = pb
            for a in list(self.A.free):
                if a.startswith(pa):
                    b = pb + a[len(pa):]
                    if b in self.B.free:
                        self._pair_or_defer(a, b, "prefix")
        return chosen

    # stage 3
    def by_role(self) -> list[str]:
        fused_notes: list[str] = []
        ka = {self.A.roles[n].key: n for n in self.A.free if n in self.A.roles}
        kb = {self.B.roles[n].key: n for n in self.B.free if n in self.B.roles}
        for key, a in ka.items():
            if key in kb and a in self.A.free:
                self._pair_or_defer(a, kb[key], "role")
        # fused on one side, split on the other
        for side_fused, side_split, a_is_fused in ((self.B, self.A, False), (self.A, self.B, True)):
            for n in list(side_fused.free):
                r = side_fused.roles.get(n)
                if r is None or r.kind not in FUSED:
                    continue
                parts = []
                for kind in FUSED[r.kind]:
                    want = Role(r.component, r.layer, kind, r.param, r.expert, r.sub)
                    hit = [m for m in side_split.free if side_split.roles.get(m) == want]
                    if len(hit) != 1:
                        break
                    parts.append((kind, hit[0]))
                if len(parts) != len(FUSED[r.kind]):
                    continue
                rows = [side_split.canon(m)[0] for _, m in parts]
                stored_t = side_fused.a_t(n)
                fits = [t for t in (stored_t, not stored_t)
                        if (c := _canon_shape(side_fused.infos[n].shape, t))[0] == sum(rows)
                        and all(side_split.canon(m)[1:] == c[1:] for _, m in parts)]
                if not fits:
                    continue
                fused_t = fits[0]
                start = 0
                for (kind, m), nrows in zip(parts, rows):
                    piece = (start, start + nrows)
                    start += nrows
                    role = side_split.roles[m]
                    if a_is_fused:
                        self._add(n, m, "fused", a_rows=piece, role=role, b_t=self.B.a_t(m), a_t=fused_t)
                    else:
                        self._add(m, n, "fused", b_rows=piece, role=role, b_t=fused_t)
                side_fused.free.pop(n, None)
                fused_notes.append(f"{'A' if a_is_fused else 'B'}:{n}")
        return fused_notes

    # stage 4
    def by_structure(self) -> None:
        def order(side: _Side, name: str, pos: int) -> tuple[object, ...]:
            r = side.roles.get(name)
            if r is None:
                return (1, pos)
            return (0, r.component, r.layer if r.layer is not None else -1, KIND_ORDER.get(r.kind, 99),
                    _natural(name))

        def sig(shape: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(sorted(shape)) if len(shape) == 2 else tuple(shape)

        groups_a: dict[tuple[int, ...], list[str]] = defaultdict(list)
        groups_b: dict[tuple[int, ...], list[str]] = defaultdict(list)
        pos_a = {n: i for i, n in enumerate(self.A.infos)}
        for n in sorted(self.A.free, key=lambda n: order(self.A, n, pos_a[n])):
            groups_a[sig(self.A.canon(n))].append(n)
        pos_b = {n: i for i, n in enumerate(self.B.infos)}
        for n in sorted(self.B.free, key=lambda n: order(self.B, n, pos_b[n])):
            groups_b[sig(self.B.infos[n].shape)].append(n)
        for s, la in groups_a.items():
            lb = groups_b.get(s, [])
            if not lb or len(la) != len(lb) or (len(s) == 1 and s[0] < 2):
                continue
            for a, b in zip(la, lb):
                self._pair_or_defer(a, b, "structure")

    def views(self, pairs: list[TensorPair]) -> tuple[dict[ViewKey, Piece], dict[ViewKey, Piece]]:
        """Each side's tensors by role: from the pairs (B's own layer number where its role gives one),
        plus unpaired tensors whose roles are known (layers only one side has)."""
        va: dict[ViewKey, Piece] = {}
        vb: dict[ViewKey, Piece] = {}
        for p in pairs:
            ra = self.A.role(p.a)
            if ra is not None and (ra.expert is not None or ra.sub) and ra.kind not in FUSED:
                continue  # experts and sub-roles (shared experts, q_norm) are not the layer's MLP
            va[(p.component, p.layer, p.kind, p.param)] = Piece(p.a, p.a_rows, p.a_transpose)
            rb = self.B.role(p.b)
            layer_b = rb.layer if rb is not None and rb.kind not in FUSED and p.how != "structure" else p.layer
            if rb is not None and rb.kind in FUSED:
                layer_b = rb.layer
            vb.setdefault((p.component, layer_b, p.kind, p.param), Piece(p.b, p.b_rows, p.b_transpose))
        for side, view in ((self.A, va), (self.B, vb)):
            for n in side.free:
                r = side.roles.get(n)
                if r is not None and r.expert is None and not r.sub:
                    view.setdefault((r.component, r.layer, r.kind, r.param), Piece(n, None, side.a_t(n)))
        return va, vb

    def settle_squares(self) -> None:
        t = self.square_votes[True] > self.square_votes[False]
        for a, b, how in self.pending_square:
            self._add(a, b, how, b_t=t)
        self.pending_square = []


def match_sources(sa: TensorSource, sb: TensorSource, *, exclude_a: frozenset[str] = frozenset(),
                  exclude_b: frozenset[str] = frozenset()) -> Matching:
    """Pair A's tensors with B's (see the module docstring for the stages).

    Tensors named in `exclude_a` / `exclude_b` are never paired (fixed, non-learned buffers such as
    STFT bases or sinusoidal position tables, which agree in unrelated models); they are not listed
    as unmatched either.
    """
    bld = _Builder(sa, sb, frozenset(exclude_a), frozenset(exclude_b))
    bld.by_name()
    prefix_map = bld.by_prefix()
    fused = bld.by_role()
    bld.by_structure()
    bld.settle_squares()
    pairs = sorted(bld.pairs, key=lambda p: (p.component, p.layer if p.layer is not None else -1,
                                             KIND_ORDER.get(p.kind, 99), _natural(p.a), p.a_rows or (0, 0)))
    rename_map = {p.a: p.b for p in pairs if p.a != p.b}
    transforms: list[Transform] = []
    if rename_map:
        transforms.append(Transform("rename", f"{len(rename_map)} tensor name(s) differ"
                                    + (f"; prefixes {', '.join(f'{k!r}->{v!r}' for k, v in prefix_map.items())}"
                                       if prefix_map else ""),
                                    {"renamed": len(rename_map), "prefix_map": prefix_map,
                                     "by": dict(Counter(p.how for p in pairs if p.a != p.b))}))
    flipped = [p for p in pairs if p.a_transpose != p.b_transpose and len(p.shape) == 2]
    if flipped:
        transforms.append(Transform("transpose", f"{len(flipped)} matrix(es) stored transposed in B relative to A",
                                    {"count": len(flipped), "examples": [p.b for p in flipped[:5]]}))
    if fused:
        transforms.append(Transform("fuse", f"{len(fused)} fused projection(s) split to pair with the other side",
                                    {"count": len(fused), "tensors": fused[:20]}))
    hidden = None
    emb = [p for p in pairs if p.kind == "token_embed" and p.param == "weight" and len(p.shape) == 2]
    if emb:
        hidden = int(emb[0].shape[1])
    view_a, view_b = bld.views(pairs)
    return Matching(a_source=sa, b_source=sb, pairs=tuple(pairs), unmatched_a=tuple(bld.A.free),
                    unmatched_b=tuple(bld.B.free), rename_map=rename_map, prefix_map=prefix_map,
                    transforms=tuple(transforms), hidden_size=hidden, view_a=view_a, view_b=view_b)


def match_models(a: Model, b: Model, *, exclude_a: frozenset[str] = frozenset(),
                 exclude_b: frozenset[str] = frozenset()) -> Matching:
    """Pair the tensors of two opened models (see `match_sources`; excluded names are never paired)."""
    return match_sources(a.source, b.source, exclude_a=exclude_a, exclude_b=exclude_b)
