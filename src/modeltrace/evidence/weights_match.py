"""`weight-match`: pair A's tensors with B's and record the renames, transposes, fusions and layer map.

Descriptive (no p-value): it runs first so that later methods and the report see the rename
map, the transforms found from metadata and the layer correspondence. The tests are
`weight-identity` and `weight-permutation`.
"""

from __future__ import annotations

from typing import ClassVar

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.weights.analysis import analysis_for, record_layer_map


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
        bad = {side: sum(v.values()) for side, v in m.nonfinite.items() if v}
        if bad:
            statement += "; non-finite values zeroed: " + ", ".join(f"{n} in {s.upper()}" for s, n in bad.items())
        return Evidence(method=self.name, status="ok", statement=statement, powered=False,
                        details={"matching": m.summary(), "residual": res.describe(),
                                 "vocab": voc.describe() if voc is not None else None,
                                 "unmatched_a": list(m.unmatched_a[:50]), "unmatched_b": list(m.unmatched_b[:50]),
                                 "layers_mapped": sum(1 for e in lmap if e.get("a_layer") is not None)})
