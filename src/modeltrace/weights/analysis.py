"""One shared weight analysis per compare: the matching, the residual alignment, unit views per layer.

Options (``ctx.options``): ``weight_rows`` (A's units sampled per layer, default 256) and ``weight_cols``
(coordinates of a unit row compared, default 256). Built once and kept in `ctx.shared["weights"]` (see `analysis_for`), so every weight method and
the diagnosis methods reuse the same tensors read once. Memory stays bounded: A keeps only its
sampled unit rows, B its unit rows after projection to at most `PROJECT_DIM` columns, and the
embedding is read in row chunks.

Views of an MLP layer (one row per hidden unit, in A's residual coordinates):
- ``in``: the input projection (up, else gate; fc1 in GPT/BERT naming), norm gain folded in;
- ``out``: the down projection's columns.
The gate projection is not read (it would cost a third more I/O and add no independent view).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modeltrace.formats.base import TensorSource
from modeltrace.formats.composite import CompositeSource
from modeltrace.weights.align import (
    DEFAULT_ROWS,
    OUTPUT_KINDS,
    PROJECT_DIM,
    Projector,
    ResidualAlignment,
    UnitMatch,
    WidthAlignment,
    align_residual,
    align_widths,
    match_units,
    procrustes,
    sample_units,
    screen_residual,
    unit_rows,
)
from modeltrace.weights.layers import OFFDIAG_ROWS, LayerMap, layer_map
from modeltrace.weights.match import Matching, Piece, match_models
from modeltrace.weights.vocab import VocabAlignment, align_vocab

if TYPE_CHECKING:
    from modeltrace.evidence.base import CompareContext
    from modeltrace.model import Model

SCREEN_TOKENS = 1024  # shared tokens read to screen the residual stream (identity? rotation possible?)
EMBED_SAMPLE = 8192  # shared tokens used to fit a rotation (at least twice the width)
MATCHED = "B's embeddings match A's"


def _fast_rows(src: TensorSource, name: str) -> bool:
    """Whether `src.read_rows` reads only the rows asked for (the base class reads the whole tensor)."""
    inner = src
    if isinstance(src, CompositeSource):
        inner = src.reader_of(name)[0]
    return type(inner).read_rows is not TensorSource.read_rows


def gather_rows(matching: Matching, side: str, piece: Piece, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` (sorted) of a piece, reading only runs of consecutive rows when the reader allows it."""
    src = matching.a_source if side == "a" else matching.b_source
    idx = np.asarray(idx, dtype=np.int64)
    if piece.transpose or piece.rows is not None or not _fast_rows(src, piece.name) or len(idx) == 0:
        whole: np.ndarray = matching.read_piece(side, piece)[idx]
        return whole.reshape(len(idx), -1)
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    out = []
    for run in np.split(idx, breaks):
        block = src.read_rows(piece.name, int(run[0]), int(run[-1]) + 1)
        out.append(matching.finite(side, piece.name, block.reshape(block.shape[0], -1)))
    return np.concatenate(out)


@dataclass
class WeightAnalysis:
    """Everything the weight methods share for one pair of models (see the module docstring)."""

    matching: Matching
    seed: int
    model_a: Model | None = None
    model_b: Model | None = None
    rows: int = DEFAULT_ROWS
    cols: int = PROJECT_DIM
    _vocab: VocabAlignment | None = None
    _residual: ResidualAlignment | None = None
    _widths: WidthAlignment | None = None
    _widths_done: bool = False
    _units: dict[tuple[str, str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    _samples: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _nunits: dict[tuple[str, str, int], int] = field(default_factory=dict)
    _maps: dict[str, LayerMap] = field(default_factory=dict)
    _matches: dict[tuple[str, int, int, str, int | None], UnitMatch] = field(default_factory=dict)
    _proj: dict[int, Projector] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    gated: bool = True  # believe a residual rotation only when it fits well (see `align_residual`)

    # --- vocabulary and residual stream ---------------------------------------------------
    def embed_pieces(self) -> tuple[Piece, Piece, str] | None:
        for kind in ("token_embed", "lm_head"):
            for p in self.matching.pairs:
                if p.kind == kind and p.param == "weight" and len(p.shape) == 2:
                    return Piece(p.a, p.a_rows, p.a_transpose), Piece(p.b, p.b_rows, p.b_transpose), p.component
        # not paired: of different widths (a width-pruned model); each side's own embedding by role
        for kind in ("token_embed", "lm_head"):
            for key, pa in self.matching.view_a.items():
                if key[2] == kind and key[3] == "weight" and key[1] is None:
                    pb = self.matching.view_b.get(key)
                    if pb is not None:
                        return pa, pb, key[0]
        return None

    def _embed_widths(self) -> tuple[int, int] | None:
        pieces = self.embed_pieces()
        if pieces is None:
            return None
        wa_, wb_ = (self._piece_shape(s, p) for s, p in (("a", pieces[0]), ("b", pieces[1])))
        if len(wa_) != 2 or len(wb_) != 2:
            return None
        return int(wa_[1]), int(wb_[1])

    def _piece_shape(self, side: str, piece: Piece) -> tuple[int, ...]:
        src = self.matching.a_source if side == "a" else self.matching.b_source
        shape = tuple(src.info(piece.name).shape)
        return tuple(reversed(shape)) if piece.transpose and len(shape) == 2 else shape

    def widths(self) -> WidthAlignment | None:
        """Residual dimensions paired across models of different widths (None for equal widths)."""
        if not self._widths_done:
            self._widths_done = True
            w = self._embed_widths()
            pieces, voc = self.embed_pieces(), self.vocab()
            if w is not None and w[0] != w[1] and pieces is not None and voc is not None and len(voc.rows_a) >= 2:
                rng = np.random.default_rng([self.seed, 13])
                k = len(voc.rows_a)
                pick = rng.permutation(k)[:max(EMBED_SAMPLE, 4 * max(w))]
                ea, eb = self._embed_rows(pieces, voc, pick)
                self._widths = align_widths(ea, eb, self.seed)
        return self._widths

    def vocab(self) -> VocabAlignment | None:
        if self._vocab is None:
            pieces = self.embed_pieces()
            if pieces is None:
                return None
            va = self.matching.a_source.info(pieces[0].name).shape
            vb = self.matching.b_source.info(pieces[1].name).shape
            na = va[1] if pieces[0].transpose else va[0]
            nb = vb[1] if pieces[1].transpose else vb[0]
            self._vocab = align_vocab(self.model_a, self.model_b, int(na), int(nb))
        return self._vocab

    def residual(self) -> ResidualAlignment:
        if self._residual is None:
            pieces = self.embed_pieces()
            voc = self.vocab()
            if pieces is None or voc is None or len(voc.rows_a) == 0:
                self._residual = align_residual(None, None)
                return self._residual
            w = self._embed_widths()
            if w is not None and w[0] != w[1]:
                self._residual = ResidualAlignment(
                    "unavailable", None, float("nan"), float("nan"), 0,
                    f"residual widths differ (A {w[0]}, B {w[1]}): dimensions paired through embedding columns")
                return self._residual
            # a small sample screens (identity? no rotation possible?); only a rotation-like pair reads more
            k = len(voc.rows_a)
            rng = np.random.default_rng([self.seed, 11])
            order = rng.permutation(k)
            ea, eb = self._embed_rows(pieces, voc, order[:SCREEN_TOKENS])
            if not self.gated:
                self._residual = self._ungated(pieces, voc, order, ea, eb)
                return self._residual
            verdict, fit_i, gram = screen_residual(ea, eb)
            if verdict == "match":
                self._residual = ResidualAlignment("identity", None, fit_i, float("nan"), len(ea), MATCHED)
            elif verdict == "differ":
                self._residual = ResidualAlignment(
                    "identity", None, fit_i, float("nan"), len(ea),
                    f"token Gram matrices differ (relative error {gram:.3g}): no rotation relates them")
            else:
                ea, eb = self._embed_rows(pieces, voc, order[:max(EMBED_SAMPLE, 2 * ea.shape[1])])
                self._residual = align_residual(ea, eb)
        return self._residual

    def _ungated(self, pieces: tuple[Piece, Piece, str], voc: VocabAlignment, order: np.ndarray,
                 ea: np.ndarray, eb: np.ndarray) -> ResidualAlignment:
        """The Procrustes rotation whenever it fits better than the identity, however loosely.

        For a test whose null is exact under any alignment that does not depend on B's unit labels
        (weight-identity: R is a function of the embeddings alone), a loose fit costs nothing in
        validity, and it is what lets a rotated copy with heavy noise still be aligned.
        """
        nb = float(np.linalg.norm(eb)) or 1.0
        fit_i = float(np.linalg.norm(ea - eb)) / nb
        if fit_i < 1e-6:
            return ResidualAlignment("identity", None, fit_i, float("nan"), len(ea), "B's embeddings equal A's")
        ea, eb = self._embed_rows(pieces, voc, order[:max(EMBED_SAMPLE, 2 * ea.shape[1])])
        if ea.shape[0] < ea.shape[1]:
            return ResidualAlignment("unavailable", None, fit_i, float("nan"), ea.shape[0],
                                     f"{ea.shape[0]} shared tokens cannot fix a {ea.shape[1]}-dimensional rotation")
        fit_i = float(np.linalg.norm(ea - eb)) / (float(np.linalg.norm(eb)) or 1.0)
        r = procrustes(ea, eb)
        fit_r = float(np.linalg.norm(ea @ r - eb)) / (float(np.linalg.norm(eb)) or 1.0)
        if fit_r >= fit_i:
            return ResidualAlignment("identity", None, fit_i, fit_r, ea.shape[0])
        is_perm = bool(np.all(np.max(np.abs(r), axis=1) > 0.9))
        return ResidualAlignment("permute" if is_perm else "rotate", r, fit_i, fit_r, ea.shape[0],
                                 "ungated: used whatever its fit")

    def _embed_rows(self, pieces: tuple[Piece, Piece, str], voc: VocabAlignment,
                    pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ra, rb = voc.rows_a[pick], voc.rows_b[pick]
        oa, ob = np.argsort(ra), np.argsort(rb)
        ea_sorted = gather_rows(self.matching, "a", pieces[0], ra[oa])
        eb_sorted = gather_rows(self.matching, "b", pieces[1], rb[ob])
        ea = np.empty_like(ea_sorted)
        ea[oa] = ea_sorted
        eb = np.empty_like(eb_sorted)
        eb[ob] = eb_sorted
        return ea, eb

    # --- units -----------------------------------------------------------------------------
    def projector(self, dim: int) -> Projector:
        if dim not in self._proj:
            self._proj[dim] = Projector(dim, self.seed, self.cols)
        return self._proj[dim]

    def _mlp_pieces(self, side: str, component: str, layer: int) -> dict[str, tuple[Piece, str]]:
        m = self.matching
        out: dict[str, tuple[Piece, str]] = {}
        up = m.piece(side, "mlp_up", layer, component)
        gate = m.piece(side, "mlp_gate", layer, component)
        down = m.piece(side, "mlp_down", layer, component)
        if up is not None:
            out["in"] = (up, "mlp_up")
        elif gate is not None:
            out["in"] = (gate, "mlp_gate")
        if down is not None:
            out["out"] = (down, "mlp_down")
        return out

    def mlp_layers(self, component: str) -> tuple[list[int], list[int]]:
        la = [i for i in self.matching.side_layers("a", component) if "in" in self._mlp_pieces("a", component, i)]
        lb = [j for j in self.matching.side_layers("b", component) if "in" in self._mlp_pieces("b", component, j)]
        return la, lb

    def components(self) -> list[str]:
        """Components whose MLP layers can be compared: present on both sides with equal unit-row widths."""
        comps = sorted({k[0] for k in self.matching.view_a} & {k[0] for k in self.matching.view_b})
        out = []
        for c in comps:
            la, lb = self.mlp_layers(c)
            if la and lb and any(self.comparable(c, i, j) for i in la[:1] for j in lb):
                out.append(c)
        return out

    def row_width(self, side: str, component: str, layer: int, view: str = "in") -> int | None:
        """Length of one unit row of a view, from metadata only."""
        got = self._mlp_pieces(side, component, layer).get(view)
        if got is None:
            return None
        piece, kind = got
        src = self.matching.a_source if side == "a" else self.matching.b_source
        shape = src.info(piece.name).shape
        if piece.transpose and len(shape) == 2:
            shape = (shape[1], shape[0])
        if kind in OUTPUT_KINDS and len(shape) == 2:
            return int(shape[0])
        return int(np.prod(shape[1:])) if len(shape) > 1 else None

    def comparable(self, component: str, i: int, j: int, view: str = "in") -> bool:
        wa, wb = self.row_width("a", component, i, view), self.row_width("b", component, j, view)
        if wa is not None and wa != wb and wb is not None and component == self._embed_component():
            w = self.widths()  # rows over residual streams of different widths: compared over the paired dims
            return w is not None and (wa, wb) == (w.d_a, w.d_b) and len(w.sel_a) >= 2
        return wa is not None and wa == wb

    def units(self, side: str, component: str, layer: int) -> dict[str, np.ndarray]:
        """Unit rows of one MLP layer: A's sampled rows, or all of B's (projected, in A's coordinates)."""
        key = (side, component, layer)
        if key in self._units:
            return self._units[key]
        m = self.matching
        views: dict[str, np.ndarray] = {}
        gain_piece = m.piece(side, "mlp_norm", layer, component)
        gain = m.read_piece(side, gain_piece).reshape(-1) if gain_piece is not None else None
        residual = self.residual() if component == self._embed_component() else None
        for view, (piece, kind) in self._mlp_pieces(side, component, layer).items():
            src = m.a_source if side == "a" else m.b_source
            shape = src.info(piece.name).shape
            if side == "a" and kind not in OUTPUT_KINDS and not piece.transpose and piece.rows is None:
                # A needs only its sampled unit rows: read just those
                n = int(shape[0])
                rows = gather_rows(m, "a", piece, self.sample(component, layer, n))
                dim = rows.shape[1]
            else:
                rows = unit_rows(m.read_piece(side, piece), kind)  # a transposed view, not a copy, for "out"
                n, dim = rows.shape
                if side == "a":
                    rows = rows[self.sample(component, layer, n)]
            if view == "in":
                self._nunits[key] = n
            g_full = gain
            widths = self.widths() if component == self._embed_component() else None
            if widths is not None and dim == (widths.d_a if side == "a" else widths.d_b):
                # different widths: keep the paired residual dimensions, in pair order on both sides
                sel = widths.sel_a if side == "a" else widths.sel_b
                rows = rows[:, sel]
                dim = len(sel)
                if g_full is not None and g_full.shape == ((widths.d_a if side == "a" else widths.d_b),):
                    g_full = g_full[sel]
            gain_used = g_full
            # gain folding, residual alignment and coordinate sampling: rows @ diag(g) R^T [:, cols]
            cols = self.projector(dim).cols
            mat: np.ndarray | None = None
            if side == "b" and residual is not None and residual.r is not None and dim == residual.r.shape[0]:
                mat = residual.r.T if cols is None else residual.r.T[:, cols]
            g = gain_used.astype(np.float32) if view != "out" and gain_used is not None \
                and gain_used.shape == (dim,) else None
            if mat is not None:
                out = rows @ (mat if g is None else g[:, None] * mat)
            else:
                out = rows if cols is None else rows[:, cols]
                if g is not None:
                    out = out * (g if cols is None else g[cols])[None, :]
            views[view] = np.ascontiguousarray(out, dtype=np.float32)
            del rows
        self._units[key] = views
        return views

    def _embed_component(self) -> str | None:
        pieces = self.embed_pieces()
        return pieces[2] if pieces is not None else None

    def sample(self, component: str, layer: int, n: int) -> np.ndarray:
        key = (component, layer)
        if key not in self._samples:
            rng = np.random.default_rng([self.seed, layer, len(component), 3])
            self._samples[key] = sample_units(n, self.rows, rng)
        return self._samples[key]

    def n_units(self, side: str, component: str, layer: int) -> int:
        self.units(side, component, layer)
        return self._nunits[(side, component, layer)]

    def match(self, component: str, i: int, j: int, view: str = "in", rows: int | None = None) -> UnitMatch | None:
        if not self.comparable(component, i, j, view):
            return None
        ua, ub = self.units("a", component, i), self.units("b", component, j)
        if view not in ua or view not in ub or ua[view].shape[1] != ub[view].shape[1]:
            return None
        mkey = (component, i, j, view, rows)
        if mkey not in self._matches:
            s = self._samples[(component, i)]
            xa = ua[view] if rows is None else ua[view][:rows]
            self._matches[mkey] = match_units(xa, ub[view], s[: len(xa)], self.n_units("a", component, i))
        return self._matches[mkey]

    def uniform(self, component: str, i: int, j: int, salt: int) -> float:
        """The U of a randomized p-value for layer pair (i, j), reproducible and independent of F under H0.

        U is a hash of the run seed, A's sampled rows and the *sorted* norms of B's rows. Under H0, F's
        law given A and given B up to a relabelling of its units is the same exact null for every such
        (A, B); U depends on nothing else, so U is independent of F while still varying between model
        pairs (a U fixed by the seed alone would be the same for every pair, and the p-values of many
        pairs would then not be uniform).
        """
        ua, ub = self.units("a", component, i), self.units("b", component, j)
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{self.seed}|{component}|{i}|{j}|{salt}".encode())
        h.update(np.ascontiguousarray(ua["in"]).tobytes())
        h.update(np.sort(np.linalg.norm(ub["in"].astype(np.float64), axis=1)).tobytes())
        return (int.from_bytes(h.digest(), "little") >> 11) / float(1 << 53)

    # --- layers ----------------------------------------------------------------------------
    def layer_map(self, component: str) -> LayerMap:
        if component not in self._maps:
            la, lb = self.mlp_layers(component)

            def score(i: int, j: int, full: bool) -> float:
                um = self.match(component, i, j, rows=None if full else OFFDIAG_ROWS)
                return float(np.mean(um.confident())) if um is not None and len(um.best) else 0.0

            self._maps[component] = layer_map(la, lb, score)
        return self._maps[component]

    def layer_pairs(self, component: str) -> list[tuple[int, int]]:
        """(A layer, B layer) pairs to test: B's assigned source layer, else the same index."""
        lmap = self.layer_map(component)
        used: set[int] = set()
        out = []
        for j in lmap.b_layers:
            i = lmap.assignment.get(j)
            if i is None and j in lmap.a_layers:
                i = j
            if i is not None and self.comparable(component, i, j):
                out.append((i, j))
                used.add(i)
        return out


def analysis_for(ctx: CompareContext, *, gated: bool = True) -> WeightAnalysis:
    """The shared analysis of `ctx` (built on first use), with the matching's findings recorded in ctx.

    `gated=False` gives a second analysis on the same matching whose residual alignment is used
    however loosely it fits (for tests whose null holds under any label-free alignment).
    """
    key = "weights" if gated else "weights_ungated"
    wa = ctx.shared.get(key)
    if isinstance(wa, WeightAnalysis):
        return wa
    matching = ctx.shared.get("matching")
    if not isinstance(matching, Matching):
        matching = match_models(ctx.a, ctx.b, exclude_a=frozenset(ctx.shared.get("exclude_a", frozenset())),
                                exclude_b=frozenset(ctx.shared.get("exclude_b", frozenset())))
        ctx.shared["matching"] = matching
    rows = int(ctx.options.get("weight_rows", DEFAULT_ROWS))
    cols = int(ctx.options.get("weight_cols", PROJECT_DIM))
    wa = WeightAnalysis(matching=matching, seed=ctx.seed, model_a=ctx.a, model_b=ctx.b, rows=rows, cols=cols,
                        gated=gated)
    ctx.shared[key] = wa
    other = ctx.shared.get("weights_ungated" if gated else "weights")
    if isinstance(other, WeightAnalysis):
        wa._vocab = other._vocab
        res = other._residual
        if res is not None and (res.kind != "identity" or res.reason == MATCHED):
            wa._residual = res  # only a fit the gate turned down is worth fitting again without it
    ctx.rename_map.update(matching.rename_map)
    kinds = {t.kind for t in ctx.transforms}
    ctx.transforms.extend(t for t in matching.transforms if t.kind not in kinds)
    return wa


def record_layer_map(ctx: CompareContext, wa: WeightAnalysis) -> list[dict[str, Any]]:
    """Put the layer correspondence of every component into ctx.layer_map (once)."""
    if ctx.shared.get("layer_map_recorded"):
        return ctx.layer_map
    ctx.shared["layer_map_recorded"] = True
    for comp in wa.components():
        ctx.layer_map.extend(wa.layer_map(comp).entries(comp))
    return ctx.layer_map
