"""`diagnosis`: how B was made from A, with estimates (descriptive: no p-value).

Runs after the weight matching (stage 20) and reuses its shared analysis (`ctx.shared["weights"]`,
built by `modeltrace.weights.analysis.analysis_for`). It names each transform it finds in
`ctx.transforms`: identical, cast, quantize, noise (`sigma_rel`), finetune (relative change per
layer), lora (`rank`), layer-drop / layer-duplicate / layer-reorder / layer-new, merge (with the
compare option `other`, a Model or a model reference: mixing coefficients; without it: the share of B that A explains),
vocab-change, upcycle and component. The estimators and their assumptions are documented in
`modeltrace.diagnose`.
"""

from __future__ import annotations

from typing import ClassVar

from modeltrace.diagnose.layers import score_matrices
from modeltrace.diagnose.models import Diagnoser
from modeltrace.errors import EvidenceError
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.model import Model
from modeltrace.weights.analysis import analysis_for, record_layer_map
from modeltrace.weights.match import match_models


class DiagnosisMethod(EvidenceMethod):
    """Names the transforms that turn A into B and estimates their parameters."""

    name: ClassVar[str] = "diagnosis"
    summary: ClassVar[str] = ("how B was made from A: copy, cast, quantization, noise, fine-tune or LoRA, "
                              "layer edits, merge, vocabulary change, upcycling, shared components")
    reference: ClassVar[str] = ("Gavish & Donoho 2014 (singular-value threshold); Marchenko & Pastur 1967; "
                                "Ilharco et al. ICLR 2023 (task arithmetic); Komatsuzaki et al. ICLR 2023 "
                                "(sparse upcycling); ggml block quantization formats")
    null_hypothesis: ClassVar[str] = "descriptive: estimates of how B was made from A, no test"
    stage: ClassVar[int] = 20

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        record_layer_map(ctx, wa)
        other = ctx.options.get("other")
        parts = list(other) if isinstance(other, (list, tuple)) else None  # base A + several task models
        if parts is not None:
            other = parts[0] if len(parts) == 1 else None
        if isinstance(other, str):
            other = Model.open(other)
        if other is not None and not isinstance(other, Model):
            raise EvidenceError(f"compare option 'other' must be a Model or a model reference, "
                                f"got {type(other).__name__}")
        other_matching = match_models(ctx.a, other) if other is not None else None
        diag = Diagnoser(wa, seed=ctx.seed, other=other, other_matching=other_matching).run()
        extra: dict[str, object] = {}
        if parts is not None and len(parts) > 1:
            from modeltrace.diagnose.merge import merge_parts_transform

            merge, extra["merge_parts"] = merge_parts_transform(wa.matching, ctx.a, parts, seed=ctx.seed)
            diag.transforms[:] = [t for t in diag.transforms if t.kind != "merge"] + ([merge] if merge else [])
        have = {t.kind for t in ctx.transforms}
        new = [t for t in diag.transforms if t.kind not in have]
        ctx.transforms.extend(new)
        kinds = [t.kind for t in diag.transforms]
        if diag.transforms:
            statement = "B = A with: " + "; ".join(t.summary for t in diag.transforms)
        else:
            statement = (f"compared {len(diag.pairs)} tensor pair(s): no transform of A explains B"
                         + (f" ({diag.notes[0]})" if diag.notes else ""))
        return Evidence(method=self.name, status="ok", statement=statement, null_hypothesis=self.null_hypothesis,
                        statistic=None, p_value=None, kind="weights", powered=False,
                        details={"transforms": kinds, **diag.details(), **extra,
                                 "layer_scores": score_matrices({c: wa.layer_map(c) for c in wa.components()})})
