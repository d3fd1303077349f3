"""`weight-identity`: do A's MLP units land on their own index in B? (exact permutation test)

After Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language Models" (ICML 2025).
Null hypothesis: A and B were trained from independent initializations by a procedure that is
equivariant to permuting the hidden units of an MLP layer (or conv output channels), from an
initialization whose law is invariant to such permutations. Then B's unit labels in each layer are
a uniformly random permutation relative to A's, independently across layers.

Statistic, per layer pair (A layer i, B layer j from the layer map): m sampled units of A are
matched to B's n units by the largest cosine of their rows (input projection with the norm gain
folded in, after the residual alignment of `weights.align`); F = the number that land on their own
index. The residual alignment is used however loosely it fits: it is computed from the token
embeddings alone, which B's MLP unit labels do not touch, so under H0 the matching stays equivariant
to relabelling B's units and the null below is exact whatever the alignment (this is what lets a
rotated copy with heavy noise be aligned; the agreement test keeps the strict gate). Its exact null law and a randomized p-value (exactly uniform under H0) are in
`modeltrace.stats.nulls`. Layers are combined with Fisher's method: under H0 their relabellings are
independent, so the layer p-values are independent. Models with no recognised MLP layers fall back
to every paired weight with at least 8 rows (conv kernels: output channels), combined with
Bonferroni, which needs no independence.

Never used: 1-D tensors (norm gains near 1 everywhere), fixed buffers, and token-embedding rows
(a shared tokenizer makes them alike in unrelated models).
"""

from __future__ import annotations

from typing import Any, ClassVar

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import combine_layers, skip_reason, structural_parts
from modeltrace.stats.combine import fisher
from modeltrace.stats.nulls import randomized_p, spearman_identity_p
from modeltrace.weights.align import lap_matching
from modeltrace.weights.analysis import WeightAnalysis, analysis_for, record_layer_map

SPEARMAN_MAX_UNITS = 2048  # the LAP is cubic in the number of units


class WeightIdentityMethod(EvidenceMethod):
    """MLP units of A that match their own index in B (exact test of unit correspondence)."""

    name: ClassVar[str] = "weight-identity"
    summary: ClassVar[str] = "A's hidden units match B's units at the same index more often than chance"
    reference: ClassVar[str] = ("Zhu, Ahmed, Kuditipudi & Liang, Independence Tests for Language Models, "
                                "ICML 2025")
    stage: ClassVar[int] = 12

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx, gated=False)  # the null is exact under any alignment of the residual stream
        record_layer_map(ctx, wa)
        layers: list[dict[str, Any]] = []
        for comp in wa.components():
            for i, j in wa.layer_pairs(comp):
                um = wa.match(comp, i, j)
                if um is None:
                    continue
                k, m = um.fixed_points()
                u = wa.uniform(comp, i, j, 1)
                p = randomized_p(k, m, um.n_b, u) if m <= um.n_b else 1.0
                row: dict[str, Any] = {"component": comp, "a_layer": i, "b_layer": j, "fixed": k, "kept": m,
                                       "sampled": len(um.sample), "n_a": um.n_a, "n_b": um.n_b, "p_value": p}
                spear = None if ctx.options.get("control") else self._spearman(wa, comp, i, j)
                if spear is not None:
                    row["spearman_rho"], row["spearman_p"] = spear
                layers.append(row)
        if layers:
            ev = combine_layers(self.name, layers, "fixed", wa, ctx, how="fisher",
                                what="MLP units of A matched to the same index in B")
            sp = [x["spearman_p"] for x in layers if "spearman_p" in x]
            if sp:
                ev.details["spearman"] = {
                    "p_value": fisher(sp), "layers": len(sp),
                    "note": "the paper's statistic (rank correlation of the full one-to-one matching with the "
                            "identity, normal approximation); reported, not used in the verdict"}
            return ev
        return structural_parts(self.name, wa, ctx)

    @staticmethod
    def _spearman(wa: WeightAnalysis, comp: str, i: int, j: int) -> tuple[float, float] | None:
        """Zhu et al.'s statistic on a layer whose units were all sampled and are few enough for the LAP."""
        ua, ub = wa.units("a", comp, i), wa.units("b", comp, j)
        xa, yb = ua.get("in"), ub.get("in")
        if xa is None or yb is None or xa.shape != yb.shape or len(xa) > SPEARMAN_MAX_UNITS \
                or wa.n_units("a", comp, i) != len(xa):  # every unit sampled, in order
            return None
        rho, p = spearman_identity_p(lap_matching(xa, yb))
        return round(rho, 6), p
