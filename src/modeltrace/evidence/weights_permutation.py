"""`weight-permutation`: do two views of each MLP layer agree on how B's units map to A's?

Robust to what an adversary can do without changing the function: permuted MLP neurons, and a
permuted or rotated residual stream (aligned first through the embeddings of shared tokens, see
`weights.align`). Per layer pair, A's sampled units are matched into B twice, once by the rows of
the input projection (up or fc1, norm gain folded in) and once by the columns of the output
projection (down or fc2); an adversary must permute both the same way, so in a derived pair the
two matchings agree. Statistic: K = the number of units both views send to the same B unit.

Null hypothesis: A and B were trained from independent initializations. Assumption (not exact):
under H0 the two views' matchings are as if independent, so K has the law of the fixed points of
a uniform permutation (`modeltrace.stats.nulls`). Neurons that two independent models learn
alike could make the views agree beyond chance; the calibration is measured on independently
trained pairs (same data, tokenizer and architecture, different seeds): tests/weights/test_independence.py
and docs/benchmarks/compare.md (50 pairs: no excess of small p-values found). Layers are
combined with Fisher's method. Reference for the idea of matching units and testing the
matching: Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language Models", ICML 2025.

Findings: the neuron permutation per layer (how many units moved) as a `permute` transform, and
the residual-stream map as `rotate` or `permute` when one was needed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.evidence.weights_common import combine_layers, skip_reason
from modeltrace.stats.nulls import randomized_p
from modeltrace.weights.align import agreement, match_units
from modeltrace.weights.analysis import WeightAnalysis, analysis_for, record_layer_map


class WeightPermutationMethod(EvidenceMethod):
    """Agreement of two independent-looking unit matchings (input rows, output columns) per MLP layer."""

    name: ClassVar[str] = "weight-permutation"
    summary: ClassVar[str] = ("two views of each MLP layer (input rows, output columns) agree on a unit "
                              "permutation, after residual alignment")
    reference: ClassVar[str] = ("Zhu, Ahmed, Kuditipudi & Liang, Independence Tests for Language Models, "
                                "ICML 2025; Schoenemann 1966 (orthogonal Procrustes)")
    stage: ClassVar[int] = 13

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        record_layer_map(ctx, wa)
        layers: list[dict[str, Any]] = []
        moved: dict[str, int] = {}
        for comp in wa.components():
            for i, j in wa.layer_pairs(comp):
                m1 = wa.match(comp, i, j, "in")
                m2 = wa.match(comp, i, j, "out")
                if m1 is None or m2 is None:
                    continue
                k, m = agreement(m1, m2)
                u = wa.uniform(comp, i, j, 2)
                p = randomized_p(k, m, m1.n_b, u)
                conf = m1.kept & m2.kept & (m1.target == m2.target)  # both views agree on these units
                n_moved = int(np.count_nonzero(conf & (m1.target != m1.sample)))
                layers.append({"component": comp, "a_layer": i, "b_layer": j, "agree": k, "kept": m,
                               "n_a": m1.n_a, "n_b": m1.n_b, "confident": int(np.count_nonzero(conf)),
                               "moved": n_moved, "p_value": p})
                moved[f"{comp}.{j}"] = n_moved
        if not layers:
            return Evidence(method=self.name, status="ok", powered=False, p_value=1.0, statistic=0.0,
                            statement="no MLP layers with both an input and an output projection on both sides",
                            details={"reason": "nothing comparable: no MLP layer pairs with two views",
                                     "matching": wa.matching.summary()})
        ev = combine_layers(self.name, layers, "agree", wa, ctx, how="fisher",
                            what="MLP units on which the input-row and output-column matchings agree")
        self._record(ctx, wa, ev, moved, layers)
        return ev

    @staticmethod
    def _record(ctx: CompareContext, wa: WeightAnalysis, ev: Evidence, moved: dict[str, int],
                layers: list[dict[str, Any]]) -> None:
        threshold = float(ctx.options.get("threshold", 1e-6))
        if ev.p_value is None or ev.p_value >= threshold:
            return
        res = wa.residual()
        if res.kind in ("rotate", "permute") and "residual" not in wa.reported:
            wa.reported.add("residual")
            ctx.transforms.append(Transform(
                "rotate" if res.kind == "rotate" else "permute",
                f"B's residual stream is A's {'rotated' if res.kind == 'rotate' else 'permuted'} "
                f"(fit {res.fit_rotation:.3g} vs {res.fit_identity:.3g} without it)",
                {"target": "residual", **res.describe()}))
        total = sum(moved.values())
        confident = sum(int(x["confident"]) for x in layers)
        if total and "permute" not in wa.reported:
            wa.reported.add("permute")
            ctx.transforms.append(Transform(
                "permute", f"MLP units permuted: {total} of {confident} sampled units on which both views agree moved",
                {"target": "mlp_units", "moved_per_layer": moved, "confident": confident}))
        heads: dict[str, int] = {}
        n_heads = 0
        for x in layers:
            got = heads_moved(ctx, wa, x["component"], int(x["a_layer"]), int(x["b_layer"]))
            if got is not None:
                heads[f"{x['component']}.{x['b_layer']}"], n = got
                n_heads += n
        if sum(heads.values()) and "permute-heads" not in wa.reported:
            wa.reported.add("permute-heads")
            ctx.transforms.append(Transform(
                "permute", f"attention (key-value) heads permuted: {sum(heads.values())} of {n_heads} moved",
                {"target": "attention_heads", "moved_per_layer": heads, "heads": n_heads}))


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
