"""`weight-permutation`: B's residual coordinates carry A's, after B's MLP units are matched to A's.

The identity test (`weight-identity`) takes its exact null from relabelling B's MLP units, so it
cannot see a copy whose units were permuted. This test takes its exact null from the other
symmetry of the null hypothesis: relabelling the coordinates of B's residual stream.

Null hypothesis: A and B were trained from independent initializations by a procedure that is
equivariant to permuting the residual-stream coordinates (every tensor that reads or writes the
residual stream has those coordinates permuted the same way: embeddings, input and output
projections, norm gains), from an initialization whose law is invariant to that permutation
(i.i.d. entries; norm gains all 1). Elementwise norms (RMSNorm, LayerNorm), Adam and weight decay
are equivariant, and so is the data, which never sees coordinates. Then B has the law of B with its
residual coordinates relabelled by a uniformly random permutation `rho`, independent of A. The
assumption fails for a model that writes a fixed, coordinate-specific tensor into its residual stream
(a sinusoidal position table added to the embeddings, a fixed DFT basis): two such models share
that coordinate structure, and this test would read it as shared weights. So the test does not run
when A and B carry the same position or token-type table (`shared_fixed_inputs`); a table computed in
code and never stored cannot be seen.

Statistic. (1) Align B's MLP units to A's without looking at B's residual labelling: each unit is
described by its responses to the embeddings of up to 128 shared tokens, `E[T] w` for its input row
and `E[T] v` for its output column, both computed in each model's own coordinates; these do not change
when B's residual coordinates are relabelled (nor rotated). A's sampled units are matched to B's by
the largest cosine of these profiles (`weights.align.match_units`, injective). (2) Describe each
residual coordinate c by the column c of the shared tokens' embeddings and, in every MLP layer, the
entries at c of the aligned units' input rows and output columns (A's units and the B units they were
matched to). (3) Match A's sampled coordinates to B's by the largest cosine of these descriptions and
count F = the coordinates that land on their own index.

Why the null law is exact. Step (1) is invariant to `rho`, so the matched units are a function of A
and of B's orbit under `rho`; in step (2) relabelling B's coordinates by `rho` permutes B's
coordinate descriptions the same way, so the matching of step (3) is equivariant:
g_{rho B} = rho o g_B. Which of A's coordinates keep a match (injectivity) does not depend on `rho`.
Conditional on A and on B's orbit, F therefore has the law of the fixed points of a uniform
permutation on the kept coordinates, which `stats.nulls` gives exactly, and the randomized p-value is
exactly uniform (its U hashes the seed, A's data and B's sorted coordinate norms, all invariant to
`rho`). Layers are paired by index (by relative depth when the depths differ), from metadata only,
so the pairing cannot depend on `rho` either. Ties of cosines (probability 0 for continuous weights)
and floating-point summation order are the only departures.

What it cannot see, and why no exact test can. A copy whose residual stream was rotated or permuted
defeats step (3). That is not a weakness of this statistic: a test whose null comes from a symmetry
of H0 is exact because, within each orbit of that symmetry, it rejects at most a fraction alpha of
the points; a derivation that applies a random element of the symmetry (permuted units, a permuted
residual stream) lands on a uniform point of A's orbit and is rejected with probability alpha at
most. Rotated copies whose units were not permuted are caught by `weight-identity` (its null uses
the unit symmetry, which the residual alignment does not touch); rotated *and* permuted copies are
reachable only by tests whose null rests on reference models or on a model of training. The
agreement of the input-row and output-column unit matchings after the residual alignment (the
statistic this method used before) is reported as a description (`details["view_agreement"]`),
never as a p-value: it is invariant to every relabelling, so no relabelling argument gives its null.

Calibration on independently trained pairs: bench/bench_calibration.py, docs/benchmarks/calibration.md.
Reference for unit matching and its permutation null: Zhu, Ahmed, Kuditipudi & Liang, "Independence
Tests for Language Models", ICML 2025.

Findings once the test rejects: the neuron permutation per layer (how many sampled units moved) as a
`permute` transform, and attention heads moved as another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.stats.combine import P_FLOOR
from modeltrace.stats.nulls import fixed_point_tail, randomized_p
from modeltrace.weights.align import agreement, fold_gain, match_units, sample_units, unit_rows
from modeltrace.weights.analysis import WeightAnalysis, analysis_for, gather_rows, record_layer_map
from modeltrace.weights.match import Matching, Piece

PROFILE_TOKENS = 128  # shared tokens whose embeddings describe a unit (profiles cost 4 * tokens * units * d flops)
MAX_COORDS = 1024  # A's residual coordinates sampled (B's are all candidates, which exactness needs)
DEFAULT_THRESHOLD = 1e-6


@dataclass(frozen=True)
class _Side:
    """One model's tensors for the test, in its own residual coordinates."""

    embed: np.ndarray  # (tokens, d): embedding rows of the profile tokens
    layers: dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> (input rows, output columns), (units, d)


def _threshold(ctx: CompareContext) -> float:
    return float(ctx.options.get("threshold", DEFAULT_THRESHOLD))


def _in_piece(m: Matching, side: str, component: str, layer: int) -> Piece | None:
    return m.piece(side, "mlp_up", layer, component) or m.piece(side, "mlp_gate", layer, component)


def _mlp_layers(m: Matching, side: str, component: str) -> list[int]:
    """Layers with an input and an output projection (from metadata only)."""
    return [i for i in m.side_layers(side, component)
            if _in_piece(m, side, component, i) is not None and m.piece(side, "mlp_down", i, component) is not None]


def _layer_views(m: Matching, side: str, component: str, layer: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(input rows with the norm gain folded in, output columns), one row per unit, in the side's own coordinates."""
    up, down = _in_piece(m, side, component, layer), m.piece(side, "mlp_down", layer, component)
    if up is None or down is None:
        return None
    w_in = unit_rows(m.read_piece(side, up), "mlp_up")
    w_out = unit_rows(m.read_piece(side, down), "mlp_down")
    gain_piece = m.piece(side, "mlp_norm", layer, component)
    if gain_piece is not None:
        w_in = fold_gain(w_in, m.read_piece(side, gain_piece).reshape(-1))
    if w_in.ndim != 2 or w_out.ndim != 2 or w_in.shape != w_out.shape:
        return None
    return np.asarray(w_in, np.float32), np.ascontiguousarray(w_out, np.float32)


def _layer_pairs(la: list[int], lb: list[int]) -> list[tuple[int, int]]:
    """Same index when the depths agree, else the same relative depth (metadata only: no dependence on rho)."""
    if not la or not lb:
        return []
    if la == lb:
        return [(i, i) for i in la]
    depth = min(len(la), len(lb))
    return [(la[round(k * (len(la) - 1) / max(1, depth - 1))], lb[round(k * (len(lb) - 1) / max(1, depth - 1))])
            for k in range(depth)]


def _block(x: np.ndarray) -> np.ndarray:
    """A feature block scaled to unit Frobenius norm (a scalar per block: equivariant in the coordinates)."""
    n = float(np.linalg.norm(x))
    out: np.ndarray = x / n if n > 0 else x
    return out


def _uniform(seed: int, ea: np.ndarray, fb: np.ndarray) -> float:
    """U for the randomized p-value: a hash of the seed, A's data and B's *sorted* coordinate norms."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}|weight-permutation".encode())
    h.update(np.ascontiguousarray(ea).tobytes())
    h.update(np.sort(np.linalg.norm(fb.astype(np.float64), axis=0)).tobytes())
    return (int.from_bytes(h.digest(), "little") >> 11) / float(1 << 53)


@dataclass(frozen=True)
class ResidualTest:
    """Outcome of the residual-coordinate test (see the module docstring)."""

    fixed: int
    kept: int
    n: int
    p_value: float
    min_attainable: float
    layers: list[dict[str, Any]]
    tokens: int


def residual_coordinate_test(wa: WeightAnalysis, seed: int) -> ResidualTest | str:
    """Run steps (1)-(3) of the module docstring; a string says why the test cannot run."""
    pieces = wa.embed_pieces()
    voc = wa.vocab()
    if pieces is None or voc is None or len(voc.rows_a) < 8:
        return "no token embeddings of shared tokens to align B's MLP units with A's"
    m = wa.matching
    shared = shared_fixed_inputs(m)
    if shared:
        return (f"A and B carry the same position table ({', '.join(shared)}): a fixed tensor written into the "
                "residual stream breaks the coordinate symmetry this test's null rests on")
    comp = pieces[2]
    rng = np.random.default_rng([seed, 23])
    pick = np.sort(rng.choice(len(voc.rows_a), size=min(PROFILE_TOKENS, len(voc.rows_a)), replace=False))
    ea, eb = (_gather(m, side, piece, rows) for side, piece, rows in
              (("a", pieces[0], voc.rows_a[pick]), ("b", pieces[1], voc.rows_b[pick])))
    if ea.shape[1] != eb.shape[1]:
        return f"residual widths differ (A {ea.shape[1]}, B {eb.shape[1]})"
    d = ea.shape[1]
    fa, fb = [_block(ea)], [_block(eb)]
    layers: list[dict[str, Any]] = []
    for i, j in _layer_pairs(_mlp_layers(m, "a", comp), _mlp_layers(m, "b", comp)):
        va, vb = _layer_views(m, "a", comp, i), _layer_views(m, "b", comp, j)  # one layer pair in memory at a time
        if va is None or vb is None or va[0].shape[1] != d or vb[0].shape[1] != d:
            continue
        (ia, oa), (ib, ob) = va, vb
        s = sample_units(ia.shape[0], wa.rows, np.random.default_rng([seed, i, 29]))
        prof_a = np.concatenate([ia[s] @ ea.T, oa[s] @ ea.T], axis=1)
        prof_b = np.concatenate([ib @ eb.T, ob @ eb.T], axis=1)
        um = match_units(prof_a, prof_b, s, ia.shape[0])
        k = um.kept
        src, dst = s[k], um.target[k]
        fa += [_block(ia[src]), _block(oa[src])]
        fb += [_block(ib[dst]), _block(ob[dst])]
        layers.append({"a_layer": i, "b_layer": j, "units_a": int(ia.shape[0]), "units_b": int(ib.shape[0]),
                       "sampled": len(s), "aligned": int(k.sum()),
                       "moved": int(np.count_nonzero(src != dst)),
                       "mean_profile_cosine": round(float(um.best[k].mean()), 4) if k.any() else None})
        del va, vb, ia, oa, ib, ob, prof_b
    xa, xb = np.concatenate(fa, axis=0).T, np.concatenate(fb, axis=0).T  # (d, features)
    fixed, kept, p, best = coordinate_fixed_points(xa, xb, seed)
    return ResidualTest(fixed=fixed, kept=kept, n=d, p_value=p, min_attainable=best, layers=layers,
                        tokens=len(pick))


def coordinate_fixed_points(xa: np.ndarray, xb: np.ndarray, seed: int) -> tuple[int, int, float, float]:
    """Step (3): (F, kept, randomized p, smallest attainable p) for coordinate descriptions (d, features).

    Exact under any law of `xb` that is invariant to relabelling its rows (the coordinates), given `xa`.
    """
    d = xb.shape[0]
    coords = sample_units(d, MAX_COORDS, np.random.default_rng([seed, 31]))
    g = match_units(xa[coords], xb, coords, d)
    fixed, kept = g.fixed_points()
    u = _uniform(seed, xa[coords], xb.T)
    p = randomized_p(fixed, kept, d, u) if kept else 1.0
    best = fixed_point_tail(kept, kept, d) if kept else 1.0
    return fixed, kept, max(P_FLOOR, p), best


def shared_fixed_inputs(m: Matching) -> list[str]:
    """Position and token-type tables that are the same in A and B (B's names): coordinate-specific inputs."""
    out = []
    for pair in m.pairs:
        if pair.kind not in ("pos_embed", "type_embed") or pair.param != "weight":
            continue
        a, b = m.read_a(pair), m.read_b(pair)
        if a.shape == b.shape and np.allclose(a, b, rtol=0.0, atol=1e-6 * max(1e-30, float(np.abs(a).max()))):
            out.append(pair.b)
    return out


def _gather(m: Matching, side: str, piece: Any, rows: np.ndarray) -> np.ndarray:
    order = np.argsort(rows)
    got = gather_rows(m, side, piece, rows[order])
    out = np.empty_like(got)
    out[order] = got
    return out.astype(np.float32)


class WeightPermutationMethod(EvidenceMethod):
    """Residual coordinates of A that land on their own index in B once B's MLP units are aligned to A's."""

    name: ClassVar[str] = "weight-permutation"
    summary: ClassVar[str] = ("A's residual coordinates match B's at the same index once B's MLP units are "
                              "aligned to A's through shared token embeddings (sees permuted units)")
    reference: ClassVar[str] = ("Zhu, Ahmed, Kuditipudi & Liang, Independence Tests for Language Models, "
                                "ICML 2025 (unit matching, permutation nulls)")
    null_hypothesis: ClassVar[str] = (
        "A and B were trained from independent initializations by a procedure equivariant to relabelling "
        "residual-stream coordinates (so B's coordinates are uniformly relabelled relative to A's)")
    stage: ClassVar[int] = 13

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        record_layer_map(ctx, wa)
        agree, moved = _view_agreement(wa)
        got = residual_coordinate_test(wa, ctx.seed)
        if isinstance(got, str):
            return Evidence(method=self.name, status="ok", powered=False, p_value=None, statistic=None,
                            null_hypothesis=self.null_hypothesis,
                            statement=f"not tested: {got}",
                            details={"reason": got, "view_agreement": agree})
        threshold = _threshold(ctx)
        powered = got.min_attainable < threshold
        stmt = (f"{got.fixed} of {got.kept} sampled residual coordinates of A land on their own index in B "
                f"after aligning {sum(x['aligned'] for x in got.layers)} MLP units in {len(got.layers)} layer "
                f"pair(s); p = {got.p_value:.3g}")
        details: dict[str, Any] = {
            "fixed": got.fixed, "kept": got.kept, "coordinates": got.n, "profile_tokens": got.tokens,
            "layers": got.layers, "min_attainable_p": got.min_attainable, "view_agreement": agree,
            "null": "exact: fixed points of a uniform relabelling of B's residual coordinates (randomized p)",
            "blind_to": "copies whose residual stream was rotated or permuted (see weight-identity)",
        }
        if not powered:
            stmt += f" (too few coordinates to reach p < {threshold:g}: best attainable {got.min_attainable:.3g})"
            details["reason"] = "too few residual coordinates"
        ev = Evidence(method=self.name, status="ok", statement=stmt, null_hypothesis=self.null_hypothesis,
                      statistic=float(got.fixed), p_value=got.p_value, powered=powered, details=details)
        if got.p_value < threshold:
            self._record(ctx, wa, got, moved)
        return ev

    @staticmethod
    def _record(ctx: CompareContext, wa: WeightAnalysis, got: ResidualTest, moved: dict[str, int]) -> None:
        total = sum(int(x["moved"]) for x in got.layers)
        aligned = sum(int(x["aligned"]) for x in got.layers)
        if total and "permute" not in wa.reported:
            wa.reported.add("permute")
            per_layer = {f"{x['b_layer']}": int(x["moved"]) for x in got.layers}
            ctx.transforms.append(Transform(
                "permute", f"MLP units permuted: {total} of {aligned} aligned sampled units moved",
                {"target": "mlp_units", "moved_per_layer": per_layer, "confident": aligned}))
        comp = (wa.embed_pieces() or (None, None, ""))[2]
        heads: dict[str, int] = {}
        n_heads = 0
        for x in got.layers:
            hm = heads_moved(ctx, wa, comp, int(x["a_layer"]), int(x["b_layer"]))
            if hm is not None:
                heads[f"{comp}.{x['b_layer']}"], n = hm
                n_heads += n
        if sum(heads.values()) and "permute-heads" not in wa.reported:
            wa.reported.add("permute-heads")
            ctx.transforms.append(Transform(
                "permute", f"attention (key-value) heads permuted: {sum(heads.values())} of {n_heads} moved",
                {"target": "attention_heads", "moved_per_layer": heads, "heads": n_heads}))


def _view_agreement(wa: WeightAnalysis) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per MLP layer pair: units the input-row and output-column matchings send to the same B unit (descriptive)."""
    out: list[dict[str, Any]] = []
    moved: dict[str, int] = {}
    for comp in wa.components():
        for i, j in wa.layer_pairs(comp):
            m1, m2 = wa.match(comp, i, j, "in"), wa.match(comp, i, j, "out")
            if m1 is None or m2 is None:
                continue
            k, kept = agreement(m1, m2)
            conf = m1.kept & m2.kept & (m1.target == m2.target)
            moved[f"{comp}.{j}"] = int(np.count_nonzero(conf & (m1.target != m1.sample)))
            out.append({"component": comp, "a_layer": i, "b_layer": j, "agree": k, "kept": kept})
    return out, moved


def heads_moved(ctx: CompareContext, wa: WeightAnalysis, comp: str, i: int, j: int) -> tuple[int, int] | None:
    """(moved, heads): key-value heads of A layer i whose value block best matches another head of B layer j.

    Descriptive, run only once the test has rejected independence. Heads are the row blocks of the
    value projection (after residual alignment); the head count comes from A's config.
    """
    cfg = ctx.a.config or {}
    if comp != (wa.embed_pieces() or (None, None, ""))[2]:
        return None  # the top-level config's head count is the language model's
    n_kv = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
    m = wa.matching
    pa, pb = m.piece("a", "attn_v", i, comp), m.piece("b", "attn_v", j, comp)
    if not isinstance(n_kv, int) or n_kv < 2 or pa is None or pb is None:
        return None
    va, vb = m.read_piece("a", pa), m.read_piece("b", pb)
    if va.ndim != 2 or va.shape != vb.shape or va.shape[0] % n_kv:
        return None
    res = wa.residual()
    if res.r is not None and vb.shape[1] == res.r.shape[0]:
        vb = res.to_a(vb)
    ha = va.reshape(n_kv, -1)
    hb = np.ascontiguousarray(vb).reshape(n_kv, -1)
    um = match_units(ha, hb, np.arange(n_kv), n_kv)
    return int(np.count_nonzero(um.kept & (um.target != um.sample))), n_kv
