"""Pair the tensors of model A with those of model B: renames, transposes, fused and split projections.

`match_models(a, b)` (or `match_sources` on two tensor sources) returns a `Matching`: a list of
`TensorPair`s, each saying which piece of A corresponds to which piece of B and how to bring B's
piece into A's layout. Stages 1-3 and 5 read metadata only (names, shapes), so they can never be
fooled by the statistical traps (norm gains near 1, shared buffers); stage 4 reads content only for
the tensors the names did not explain.

Stages, each over the tensors still unpaired:

1. same name, compatible shape;
2. renamed prefixes (``vpm.`` -> ``vison.``): suffix votes propose prefix maps, the best-supported win;
3. canonical roles (`modeltrace.roles`): same component, layer, kind and parameter; fused
   projections are split by rows (A's q, k, v <-> B's fused qkv, gate and up <-> gate_up, and back);
4. content, for what the names left unexplained (`modeltrace.weights.content`): signatures that
   survive unit permutation, transposition and noise (the Gram matrix of the residual axis, the
   sorted spectrum, norm-gain values); B's fused tensors split by the row sizes of A's fused
   families; one assignment per shape, with its margin reported as how sure the pairing is; B's
   block numbers from its names, so the layer order comes from the pairing. This stage reads
   tensor data, and only through quantities invariant to relabelling B's units (why the exact
   unit tests stay exact is in that module's docstring);
5. structure: tensors of the same shape (up to a transpose) paired in layer/graph order, when both
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
        p.how                                     # "name" | "prefix" | "role" | "fused" | "content" | "structure"
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
    m.nonfinite                                   # {"a": {name: count}, "b": {...}}: NaN/Inf zeroed on reading
    m.finite(side, name, arr)                     # the same zeroing for arrays read elsewhere

Excluded names (`exclude_a`, `exclude_b`: fixed buffers the caller detected) are never paired.
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
    # side ("a"/"b") -> tensor -> non-finite values zeroed on reading (the most seen in one read); filled
    # as tensors are read, so a report holding this dict shows every value the weight analysis zeroed
    nonfinite: dict[str, dict[str, int]] = field(default_factory=lambda: {"a": {}, "b": {}}, compare=False)

    def finite(self, side: str, name: str, arr: np.ndarray) -> np.ndarray:
        """`arr` with NaN and +-Inf replaced by 0, the count recorded: one corrupt value must not stop
        every weight method (SVDs and Procrustes fits fail on it) nor hide a copy."""
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if not bad:
            return arr
        seen = self.nonfinite.setdefault(side, {})
        seen[name] = max(bad, seen.get(name, 0))
        out: np.ndarray = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        return out

    def _take(self, side: str, name: str, transpose: bool, rows: Rows) -> np.ndarray:
        """Read, orient and slice; a transposed tensor comes back as a (non-contiguous) view, not a copy."""
        arr = (self.a_source if side == "a" else self.b_source).read(name)
        if transpose and arr.ndim == 2:
            arr = arr.T
        if rows is not None:
            arr = arr[rows[0]:rows[1]]
        return self.finite(side, name, arr.astype(np.float32, copy=False))

    def read_a(self, p: TensorPair) -> np.ndarray:
        """A's piece as float32, in (out, in) layout (non-finite values zeroed and counted)."""
        return self._take("a", p.a, p.a_transpose, p.a_rows)

    def read_b(self, p: TensorPair) -> np.ndarray:
        """B's piece as float32, in A's layout (same shape as `read_a(p)`)."""
        return self._take("b", p.b, p.b_transpose, p.b_rows)

    def read_piece(self, side: str, piece: Piece) -> np.ndarray:
        """A piece of one side ("a" or "b") as float32 in (out, in) layout."""
        return self._take(side, piece.name, piece.transpose, piece.rows)

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
        out: dict[str, object] = {"pairs": len(self.pairs), "by": dict(hows), "unmatched_a": len(self.unmatched_a),
                                  "unmatched_b": len(self.unmatched_b), "prefix_map": self.prefix_map}
        out["nonfinite_zeroed"] = self.nonfinite  # the live counts (see `finite`)
        return out


# --- helpers -----------------------------------------------------------------------------------

def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _canon_shape(shape: tuple[int, ...], transposed: bool) -> tuple[int, ...]:
    return tuple(reversed(shape)) if transposed and len(shape) == 2 else tuple(shape)


def _piece_name(name: str, rows: Rows) -> str:
    return name if rows is None else f"{name}[{rows[0]}:{rows[1]}]"


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
        self.sa, self.sb = sa, sb
        self.pairs: list[TensorPair] = []
        self.b_layer: dict[str, int] = {}  # B's own block number for content pairs (from its names)
        self.content_extra: dict[ViewKey, Piece] = {}  # B tensors matched by content beyond one-to-one
        self.content_notes: dict[str, object] = {}
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


    # stage 4: content
    def by_content(self) -> None:
        """Pair what names left unexplained by content signatures (see `modeltrace.weights.content`).

        Runs over the tensors still unpaired on both sides: A's (whose roles are usually known)
        against B's whole tensors, or B's fused tensors split into row blocks sized like A's fused
        families (q|k|v, gate|up), in either orientation. Matrices first (one assignment per shape),
        then the 1-D tensors, with a bonus for landing in the B block that holds the A layer's matrices.
        """
        from modeltrace.weights import content as ct

        fa = [n for n in self.A.free if len(self.A.infos[n].shape) >= 1]
        fb = [n for n in self.B.free if len(self.B.infos[n].shape) >= 1]
        if not fa or not fb:
            return

        def unknown(side: _Side, n: str) -> bool:
            r = side.roles.get(n)
            return r is None or r.kind == "other"

        if not any(unknown(self.A, n) for n in fa) and not any(unknown(self.B, n) for n in fb):
            return  # the names explain both sides; what is left differs in shape (a pruned model), not in name
        hidden = self._hidden()
        b_layer = ct.first_varying_int(list(self.B.infos))

        def a_axis(n: str) -> int:
            r = self.A.role(n)
            shape = self.A.canon(n)
            if len(shape) > 2:
                return 1
            if r is not None and r.kind in ("attn_o", "mlp_down"):
                return 0
            if r is not None and r.kind != "other":
                return 1
            return 0 if (hidden is not None and shape[0] == hidden and shape[1] != hidden) else 1

        def read_a(n: str) -> np.ndarray:
            x = self.sa.read(n)
            return x.T if self.A.a_t(n) and x.ndim == 2 else x

        sig_a: dict[str, ct.Signature] = {}
        for n in fa:
            x = read_a(n)
            sig_a[n] = (ct.matrix_signature(x, a_axis(n)) if x.ndim >= 2
                        else ct.vector_signature(x, hidden is not None and x.shape[0] == hidden))
        a_shapes = {sig_a[n].shape for n in fa}
        # B candidates: (name, rows, transpose) with a signature per residual axis asked for
        cands: list[tuple[str, Rows, bool]] = []
        splits = self._fused_splits(fa)
        for n in fb:
            shape = self.B.infos[n].shape
            if len(shape) == 1:
                cands.append((n, None, False))
                continue
            if len(shape) > 2:  # conv kernels and the like: whole, as stored
                if tuple(shape) in a_shapes:
                    cands.append((n, None, False))
                continue
            whole = [t for t in (False, True) if _canon_shape(shape, t) in a_shapes]
            cands.extend((n, None, t) for t in dict.fromkeys(whole))
            if shape[0] == shape[1]:
                continue
            for t in (False, True):
                r, c = _canon_shape(shape, t)
                for sizes in splits.get((r, c), ()):
                    start = 0
                    for size in sizes:
                        cands.append((n, (start, start + size), t))
                        start += size
                    break  # the first split that fits; the pieces' scores decide their partners
        cache: dict[str, np.ndarray] = {}

        def read_b(n: str, rows: Rows, t: bool) -> np.ndarray:
            if n not in cache:
                cache.clear()
                cache[n] = self.sb.read(n)
            x = cache[n]
            if t and x.ndim == 2:
                x = x.T
            return x[rows[0]:rows[1]] if rows is not None else x

        sig_b: dict[tuple[int, int], ct.Signature] = {}  # (candidate, residual axis) -> signature
        axes_needed = {(sig_a[n].shape, a_axis(n)) for n in fa if len(sig_a[n].shape) >= 2}
        for k, (n, rows, t) in enumerate(cands):
            x = read_b(n, rows, t)
            if x.ndim == 1:
                sig_b[(k, 0)] = ct.vector_signature(x, hidden is not None and x.shape[0] == hidden)
                continue
            for shape, ax in axes_needed:
                if shape == x.shape:
                    sig_b[(k, ax)] = ct.matrix_signature(x, ax)
        cache.clear()
        # a B tensor that could be whole or fused (a vocabulary-sized gate|up) keeps the better reading
        mats_a = [n for n in fa if len(sig_a[n].shape) >= 2]

        def best_score(k: int) -> float:
            return max((ct.score(sig_a[n], sb_) for n in mats_a
                        if (sb_ := sig_b.get((k, a_axis(n)))) is not None), default=-1.0)

        dropped: set[int] = set()
        by_name: dict[str, list[int]] = defaultdict(list)
        for k, (n, _, _) in enumerate(cands):
            by_name[n].append(k)
        for n, ks in by_name.items():
            whole_k = [k for k in ks if cands[k][1] is None]
            split_k = [k for k in ks if cands[k][1] is not None]
            if whole_k and split_k and len(self.B.infos[n].shape) == 2:
                w = max(best_score(k) for k in whole_k)
                sp = float(np.mean([best_score(k) for k in split_k]))
                dropped.update(split_k if w >= sp else whole_k)
        votes: Counter[bool] = Counter()
        made: list[tuple[str, int, float, float]] = []
        taken: set[int] = set()
        whole_used: set[str] = set()

        def piece_shape(k: int) -> tuple[int, ...]:
            n, rows, t = cands[k]
            c = _canon_shape(self.B.infos[n].shape, t)
            return c if rows is None else (rows[1] - rows[0],) + c[1:]

        def sq_mlp(n: str) -> bool:
            """Square matrices: their orientation is voted, never read from content (see the module doc)."""
            shape = sig_a[n].shape
            return len(shape) == 2 and shape[0] == shape[1]

        mats = [n for n in fa if len(sig_a[n].shape) >= 2]
        # square matrices last: their orientation is the vote of the non-square pairs
        groups = sorted({(sq_mlp(n), sig_a[n].shape) for n in mats})
        for sq, shape in groups:
            flip = votes[True] > votes[False]
            voted = sq and sum(votes.values()) > 0  # with no non-square pair to vote, content decides
            for _ in range(3):  # again when the two orientations of one square tensor both won
                la = [n for n in mats if sig_a[n].shape == shape and sq_mlp(n) == sq and n in self.A.free]
                lb = [k for k in range(len(cands)) if k not in taken and k not in dropped
                      and len(self.B.infos[cands[k][0]].shape) >= 2
                      and piece_shape(k) == shape and cands[k][0] not in whole_used]
                if not la or not lb:
                    break
                mat = np.full((len(la), len(lb)), -1.0)
                for i, n in enumerate(la):
                    for j, k in enumerate(lb):
                        if voted and cands[k][1] is None and cands[k][2] != (self.A.a_t(n) ^ flip):
                            continue
                        sb_ = sig_b.get((k, a_axis(n)))
                        if sb_ is not None:
                            mat[i, j] = ct.score(sig_a[n], sb_)
                clash = False
                for i, j, sc, margin in ct.assign(mat):
                    k = lb[j]
                    n_b, rows, t = cands[k]
                    if rows is None and n_b in whole_used:
                        clash = True
                        continue
                    a = la[i]
                    self._add(a, n_b, "content", b_rows=rows, b_t=t)
                    taken.add(k)
                    if rows is None:
                        whole_used.add(n_b)
                    if len(shape) == 2 and shape[0] != shape[1]:
                        votes[t != self.A.a_t(a)] += 1
                    made.append((a, k, sc, margin))
                if not clash:
                    break
            # what is left of B in this shape (a repeated block): its best A partner's role
            la_all = [n for n in mats if sig_a[n].shape == shape and sq_mlp(n) == sq]
            for k in range(len(cands)):
                n_b, rows, t = cands[k]
                if k in taken or k in dropped or n_b in whole_used or n_b not in b_layer or len(self.B.infos[n_b].shape) < 2 \
                        or piece_shape(k) != shape or (rows is None and n_b not in self.B.free):
                    continue
                best = max(((ct.score(sig_a[n], sb_), n) for n in la_all
                            if (sb_ := sig_b.get((k, a_axis(n)))) is not None), default=None)
                if best is not None and best[0] >= ct.MIN_SCORE and (ra := self.A.role(best[1])) is not None:
                    self.content_extra.setdefault((ra.component, b_layer[n_b], ra.kind, ra.param),
                                                  Piece(n_b, rows, t))
        # B block -> A layer, by the majority of the matrices paired
        block: dict[int, Counter[int]] = defaultdict(Counter)
        for a, k, _, _ in made:
            ra, n_b = self.A.role(a), cands[k][0]
            if ra is not None and ra.layer is not None and n_b in b_layer:
                block[b_layer[n_b]][ra.layer] += 1
        b_to_a = {j: c.most_common(1)[0][0] for j, c in block.items()}
        # vectors: value (or sorted value) signatures, plus a bonus for the block that holds the layer
        vecs = [n for n in fa if len(sig_a[n].shape) == 1 and n in self.A.free]
        for length in sorted({sig_a[n].shape for n in vecs}):
            la = [n for n in vecs if sig_a[n].shape == length]
            lb = [k for k, (n, _, _) in enumerate(cands) if n in self.B.free and tuple(self.B.infos[n].shape) == length]
            if not la or not lb:
                continue
            mat = np.full((len(la), len(lb)), -1.0)
            for i, n in enumerate(la):
                ra = self.A.role(n)
                for j, k in enumerate(lb):
                    sb_ = sig_b.get((k, 0))
                    s = ct.score(sig_a[n], sb_) if sb_ is not None else -1.0
                    if s < 0 and sig_a[n].flat and sb_ is not None and sb_.flat:
                        s = 0.0  # two untrained gains: only their place can tell
                    j_block = b_layer.get(cands[k][0])
                    a_layer = ra.layer if ra is not None else None
                    if (j_block is not None and b_to_a.get(j_block) == a_layer and a_layer is not None) or \
                            (j_block is None and a_layer is None):
                        s += 0.5
                    mat[i, j] = s
            for i, j, s, margin in ct.assign(mat):
                k = lb[j]
                self._add(la[i], cands[k][0], "content", b_t=False)
                made.append((la[i], k, s, margin))
        for a, k, _, _ in made:
            n_b = cands[k][0]
            if n_b in b_layer:
                self.b_layer[n_b] = b_layer[n_b]
        if made:
            margins = [m[3] for m in made]
            self.content_notes = {
                "pairs": len(made), "min_score": round(min(m[2] for m in made), 4),
                "min_margin": round(min(margins), 4), "uncertain": sum(1 for x in margins if x < 0.05),
                "block_map": {str(j): i for j, i in sorted(b_to_a.items())},
                "examples": {a: _piece_name(cands[k][0], cands[k][1]) for a, k, _, _ in made[:10]}}

    def _hidden(self) -> int | None:
        for n, r in self.A.roles.items():
            if r.kind == "token_embed" and len(self.A.infos[n].shape) == 2:
                return int(self.A.canon(n)[1])
        dims: Counter[int] = Counter(d for i in self.A.infos.values() if len(i.shape) == 2 for d in i.shape)
        return dims.most_common(1)[0][0] if dims else None

    def _fused_splits(self, free_a: list[str]) -> dict[tuple[int, int], list[tuple[int, ...]]]:
        """(rows, cols) of a fused tensor -> row-block sizes, from A's unpaired fused families (q|k|v, gate|up)."""
        out: dict[tuple[int, int], list[tuple[int, ...]]] = defaultdict(list)
        by_role = {(r.component, r.layer, r.kind, r.param): n for n in free_a
                   if (r := self.A.role(n)) is not None and len(self.A.infos[n].shape) == 2}
        for (comp, layer, kind, param), _ in list(by_role.items()):
            for parts in FUSED.values():
                if kind != parts[0]:
                    continue
                names = [by_role.get((comp, layer, p, param)) for p in parts]
                if any(x is None for x in names):
                    continue
                shapes = [self.A.canon(x) for x in names if x is not None]
                if len({s[1] for s in shapes}) != 1:
                    continue
                sizes = tuple(s[0] for s in shapes)
                key = (sum(sizes), shapes[0][1])
                if sizes not in out[key]:
                    out[key].append(sizes)
        return out

    # stage 5
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
            if p.how == "content":
                layer_b = self.b_layer.get(p.b, p.layer) if p.layer is not None else None
            vb.setdefault((p.component, layer_b, p.kind, p.param), Piece(p.b, p.b_rows, p.b_transpose))
        for key, piece in self.content_extra.items():
            vb.setdefault(key, piece)
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
    ia = [n for n, i in sa.infos().items() if _usable(i) and n not in exclude_a]
    ib = [n for n, i in sb.infos().items() if _usable(i) and n not in exclude_b]
    known_a = sum(1 for r in assign_roles(ia).values() if r.kind != "other")
    known_b = sum(1 for r in assign_roles(ib).values() if r.kind != "other")
    if 2 * known_a < known_b and known_a < 0.5 * len(ia):
        # A's names are the unknown ones: pair from B's side (whose roles say what each tensor is), then flip
        return _flip(match_sources(sb, sa, exclude_a=exclude_b, exclude_b=exclude_a))
    bld = _Builder(sa, sb, frozenset(exclude_a), frozenset(exclude_b))
    bld.by_name()
    prefix_map = bld.by_prefix()
    fused = bld.by_role()
    bld.by_content()
    bld.by_structure()
    bld.settle_squares()
    pairs = sorted(bld.pairs, key=lambda p: (p.component, p.layer if p.layer is not None else -1,
                                             KIND_ORDER.get(p.kind, 99), _natural(p.a), p.a_rows or (0, 0)))
    rename_map = {p.a: p.b for p in pairs if p.a != p.b}
    transforms: list[Transform] = []
    content = [p for p in pairs if p.how == "content"]
    fused.extend(sorted({f"B:{p.b}" for p in content if p.b_rows is not None}))
    if rename_map:
        transforms.append(Transform("rename", f"{len(rename_map)} tensor name(s) differ"
                                    + (f"; prefixes {', '.join(f'{k!r}->{v!r}' for k, v in prefix_map.items())}"
                                       if prefix_map else "")
                                    + (f"; {len(content)} piece(s) paired by content" if content else ""),
                                    {"renamed": len(rename_map), "prefix_map": prefix_map,
                                     "by": dict(Counter(p.how for p in pairs if p.a != p.b)),
                                     **({"content": bld.content_notes} if content else {})}))
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


def _flip(m: Matching) -> Matching:
    """The same matching seen from the other side (B becomes A); every piece is already in the (out, in)
    layout of the side whose names were understood, so shapes and orientations carry over."""
    pairs = tuple(TensorPair(a=p.b, b=p.a, key=p.key, component=p.component, layer=p.layer, kind=p.kind,
                             param=p.param, shape=p.shape, a_rows=p.b_rows, b_rows=p.a_rows,
                             a_transpose=p.b_transpose, b_transpose=p.a_transpose, how=p.how) for p in m.pairs)
    transforms = []
    for t in m.transforms:
        est = dict(t.estimates)
        if t.kind == "fuse":
            est["tensors"] = [("A:" + x[2:]) if x.startswith("B:") else ("B:" + x[2:]) for x in est.get("tensors", [])]
        if t.kind == "rename" and "content" in est:
            est["content"] = {("a_block_map" if k == "block_map" else k): v for k, v in est["content"].items()
                              if k != "examples"}
        transforms.append(Transform(t.kind, t.summary.replace("in B relative to A", "in A relative to B"), est))
    return Matching(a_source=m.b_source, b_source=m.a_source, pairs=pairs, unmatched_a=m.unmatched_b,
                    unmatched_b=m.unmatched_a, rename_map={p.a: p.b for p in pairs if p.a != p.b},
                    prefix_map={v: k for k, v in m.prefix_map.items()}, transforms=tuple(transforms),
                    hidden_size=m.hidden_size, view_a=m.view_b, view_b=m.view_a)


def match_models(a: Model, b: Model, *, exclude_a: frozenset[str] = frozenset(),
                 exclude_b: frozenset[str] = frozenset()) -> Matching:
    """Pair the tensors of two opened models (see `match_sources`; excluded names are never paired)."""
    return match_sources(a.source, b.source, exclude_a=exclude_a, exclude_b=exclude_b)
