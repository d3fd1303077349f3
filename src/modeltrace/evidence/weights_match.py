"""`weight-match`: pair A's tensors with B's and record the renames, transposes, fusions and layer map.

Descriptive overall (no p-value): it runs first so that later methods and the report see the
rename map, the transforms found and the layer correspondence. The tests are `weight-identity`,
`weight-permutation` and `weight-heads`.

Folders of several networks. When a side's files are separate networks (components, see
`modeltrace.formats.composite`), each A component is reported with the B component most of its
tensors paired with, how many were paired, and an exact p-value for that component alone: per
paired weight with at least `MIN_ROWS` rows, F = the number of A's sampled rows (output units or
channels) whose most similar B row has the same index; under H0 (B's units of each tensor are a
uniform relabelling, independent of A; the pairing reads B only through relabelling-invariant
content) the randomized p-value of `modeltrace.stats.nulls.randomized_p` is uniform; the tensors of
a component are combined with Bonferroni, valid under any dependence between them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, ClassVar

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.stats.combine import P_FLOOR, bonferroni_min
from modeltrace.stats.nulls import randomized_p
from modeltrace.weights.align import match_units, sample_units, unit_rows
from modeltrace.weights.analysis import WeightAnalysis, analysis_for, record_layer_map
from modeltrace.weights.match import TensorPair

MIN_ROWS = 8


class WeightMatchMethod(EvidenceMethod):
    """Tensor pairing, residual alignment and layer correspondence (descriptive)."""

    name: ClassVar[str] = "weight-match"
    summary: ClassVar[str] = "pairs tensors (renames, transposes, fused projections) and maps layers"
    reference: ClassVar[str] = "metadata matching; orthogonal Procrustes (Schoenemann 1966) for the residual map"
    stage: ClassVar[int] = 10

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        lmap = record_layer_map(ctx, wa)
        m = wa.matching
        res = wa.residual()
        voc = wa.vocab()
        statement = (f"paired {m.n_pairs} tensor piece(s); {len(m.unmatched_a)} of A and {len(m.unmatched_b)} "
                     f"of B unpaired; {len(m.rename_map)} renamed")
        details: dict[str, Any] = {
            "matching": m.summary(), "residual": res.describe(), "vocab": voc.describe() if voc is not None else None,
            "unmatched_a": list(m.unmatched_a[:50]), "unmatched_b": list(m.unmatched_b[:50]),
            "layers_mapped": sum(1 for e in lmap if e.get("a_layer") is not None)}
        comps = component_report(wa, ctx.seed)
        if comps:
            details["components"] = comps
            threshold = float(ctx.options.get("threshold", 1e-6))
            shared = [f"{c['a']}->{c['b']}" for c in comps if c["p_value"] is not None and c["p_value"] < threshold]
            statement += f"; components shared: {', '.join(shared) if shared else 'none'} (of {len(comps)} in A)"
        bad = {side: sum(v.values()) for side, v in m.nonfinite.items() if v}
        if bad:
            statement += "; non-finite values zeroed: " + ", ".join(f"{n} in {s.upper()}" for s, n in bad.items())
        return Evidence(method=self.name, status="ok", statement=statement, powered=False, details=details)


def _component(source: object, name: str) -> str | None:
    get = getattr(source, "component_of", None)
    out = get(name) if callable(get) else None
    return out if isinstance(out, str) else None


def component_report(wa: WeightAnalysis, seed: int) -> list[dict[str, Any]]:
    """Per A component: its B partner (by the majority of paired tensors), counts and an exact p-value."""
    m = wa.matching
    if getattr(m.a_source, "components", None) is None and getattr(m.b_source, "components", None) is None:
        return []
    by: dict[str, Counter[str]] = defaultdict(Counter)
    pairs: dict[tuple[str, str], list[TensorPair]] = defaultdict(list)
    for p in m.pairs:
        ca, cb = _component(m.a_source, p.a) or "", _component(m.b_source, p.b) or ""
        by[ca][cb] += 1
        pairs[(ca, cb)].append(p)
    size_a = Counter(_component(m.a_source, n) or "" for n in m.a_source.infos())
    size_b = Counter(_component(m.b_source, n) or "" for n in m.b_source.infos())
    out: list[dict[str, Any]] = []
    for k, ca in enumerate(sorted(size_a)):
        if not by.get(ca):
            out.append({"a": ca, "b": None, "pairs": 0, "tensors_a": size_a[ca], "tensors_b": 0, "p_value": None,
                        "tested": 0})
            continue
        cb, n = by[ca].most_common(1)[0]
        ps = []
        for t, p in enumerate(pairs[(ca, cb)]):
            if len(p.shape) < 2 or p.shape[0] < MIN_ROWS or int(np.prod(p.shape[1:])) < 2:
                continue
            xa, yb = unit_rows(m.read_a(p), p.kind), unit_rows(m.read_b(p), p.kind)
            if xa.shape != yb.shape:
                continue
            proj = wa.projector(xa.shape[1])
            s = sample_units(xa.shape[0], wa.rows, np.random.default_rng([seed, k, t, 17]))
            um = match_units(proj(xa[s]), proj(yb), s, xa.shape[0])
            f, kept = um.fixed_points()
            u = float(np.random.default_rng([seed, k, t, 18]).random())
            ps.append(randomized_p(f, kept, um.n_b, u))
        out.append({"a": ca, "b": cb, "pairs": n, "tensors_a": size_a[ca], "tensors_b": size_b.get(cb, 0),
                    "tested": len(ps), "p_value": max(P_FLOOR, bonferroni_min(ps)) if ps else None})
    return out
