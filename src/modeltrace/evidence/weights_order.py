"""`weight-order`: did B keep a subset of A's units and residual dimensions in A's order? (exact test)

Width pruning (Minitron, Sheared-LLaMA, "small from big" releases) keeps some MLP units and some
residual dimensions of the large model, in their original order, then heals by further training.
The pruned model's units no longer sit at A's indices, so a fixed-point test sees nothing, but the
matched pairs are monotone. Statistic, per MLP layer pair (and once for the residual stream): the
confident matches (A index, B index) of `weights.align` (MLP rows compared over the paired residual
dimensions when the widths differ), and I = the number of pairs out of order.

Null hypothesis: A and B were trained from independent initializations by a procedure equivariant
to permuting B's MLP units (and residual dimensions), from an initialization invariant to it. The
matching rules are equivariant and which matches are kept does not depend on B's labels, so under H0 the
matched B indices are in uniformly random order and I has the exact Mahonian law
(`modeltrace.stats.inversions`). Per-layer p-values are exact and discrete (conservative); layers
and the residual stream are combined with Fisher's method, valid for independent super-uniform
p-values (B's labels in each layer and in the residual stream are relabelled independently under H0).
A copy whose units were permuted has no order to keep: this test is then uninformative, and
`weight-permutation` is the one that sees it. After Zhu, Ahmed, Kuditipudi & Liang, "Independence
Tests for Language Models" (ICML 2025), which match units across models of different widths.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.evidence.weights_common import layer_seed, skip_reason
from modeltrace.stats.combine import P_FLOOR, fisher
from modeltrace.stats.inversions import inversion_tail
from modeltrace.weights.align import order_test
from modeltrace.weights.analysis import analysis_for, record_layer_map


class WeightOrderMethod(EvidenceMethod):
    """MLP units and residual dimensions of B matched to A's in A's order (exact test of kept order)."""

    name: ClassVar[str] = "weight-order"
    summary: ClassVar[str] = ("B's units and residual dimensions, matched to A's, keep A's order (width pruning "
                              "keeps a subset in order)")
    reference: ClassVar[str] = ("Zhu, Ahmed, Kuditipudi & Liang, Independence Tests for Language Models, ICML 2025; "
                                "Muralidharan et al., Compact Language Models via Pruning and Knowledge "
                                "Distillation (Minitron), 2024")
    stage: ClassVar[int] = 15

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        record_layer_map(ctx, wa)
        rows: list[dict[str, Any]] = []
        widths = wa.widths()
        if widths is not None and widths.order_m >= 2:
            rows.append({"component": "residual", "a_layer": None, "b_layer": None, "inversions": widths.inversions,
                         "pairs": widths.order_m, "n_a": widths.d_a, "n_b": widths.d_b, "p_value": widths.order_p})
        for comp in wa.components():
            for i, j in wa.layer_pairs(comp):
                um = wa.match(comp, i, j)
                if um is None:
                    continue
                conf = um.kept
                if np.count_nonzero(conf) < 2:
                    rows.append({"component": comp, "a_layer": i, "b_layer": j, "inversions": 0,
                                 "pairs": int(np.count_nonzero(conf)), "n_a": um.n_a, "n_b": um.n_b, "p_value": 1.0})
                    continue
                k, m, p = order_test(um.sample[conf], um.target[conf],
                                     np.random.default_rng(layer_seed(ctx.seed, comp, i, 31)))
                rows.append({"component": comp, "a_layer": i, "b_layer": j, "inversions": k, "pairs": m,
                             "n_a": um.n_a, "n_b": um.n_b, "p_value": p})
        tested = [x for x in rows if x["pairs"] >= 2]
        if not tested:
            why = ("no MLP layers comparable between A and B" + ("" if widths is None else
                   f", and only {len(widths.sel_a)} residual dimension(s) paired"))
            return Evidence(method=self.name, status="ok", powered=False, p_value=1.0, statistic=0.0,
                            statement=f"nothing comparable: {why}",
                            details={"reason": f"nothing comparable: {why}", "matching": wa.matching.summary(),
                                     **({"widths": widths.describe()} if widths is not None else {})})
        p = fisher([float(x["p_value"]) for x in tested])
        best = fisher([inversion_tail(0, int(x["pairs"])) for x in tested])
        threshold = float(ctx.options.get("threshold", 1e-6))
        powered = best < threshold
        inv = sum(int(x["inversions"]) for x in tested)
        total = sum(int(x["pairs"]) * (int(x["pairs"]) - 1) // 2 for x in tested)
        statement = (f"{inv} of {total} matched pairs out of A's order over {len(tested)} test(s) "
                     f"(random order: about half); combined p = {p:.3g}")
        details: dict[str, Any] = {"tests": rows, "combination": "Fisher (independent, conservative p-values)",
                                   "min_attainable_p": best}
        if widths is not None:
            details["widths"] = widths.describe()
            mlp = [x for x in tested if x["component"] != "residual"]
            if mlp:
                details["mlp_kept_fraction"] = round(float(np.mean([x["n_b"] / x["n_a"] for x in mlp])), 4)
            statement += (f"; residual widths A {widths.d_a}, B {widths.d_b} ({len(widths.sel_a)} dimensions paired, "
                          f"{widths.confident} confidently)")
        if not powered:
            statement += f" (too few matched units to reach p < {threshold:g}: best attainable {best:.3g})"
            details["reason"] = "too few matched units"
        if p < threshold and widths is not None and widths.d_b < widths.d_a \
                and not any(t.kind == "prune" for t in ctx.transforms):
            mlp_kept = details.get("mlp_kept_fraction")
            ctx.transforms.append(Transform(
                "prune", f"B is A width-pruned: {widths.d_b} of {widths.d_a} residual dimensions kept"
                + (f", {mlp_kept:.1%} of MLP units" if isinstance(mlp_kept, float) else ""),
                {"residual_kept": widths.d_b, "residual_of": widths.d_a,
                 "residual_kept_fraction": round(widths.d_b / widths.d_a, 4), "mlp_kept_fraction": mlp_kept,
                 "paired_dims": len(widths.sel_a), "confident_dims": widths.confident}))
        return Evidence(method=self.name, status="ok", statement=statement, statistic=float(inv),
                        p_value=max(p, P_FLOOR), powered=powered, details=details)
