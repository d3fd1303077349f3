"""`fixed-tensors`: tensors that are not learned, found by content and left out of the weight tests.

Descriptive (no p-value). Runs first (stage 5) whenever a weight method runs: the closed forms of
`modeltrace.weights.fixed` (STFT/DFT bases, windows, mel filterbanks, sinusoidal position and rotary
tables, masks, identity, constant and integer tensors) are found in A and in B, their names go into
``ctx.shared["exclude_a"]`` and ``ctx.shared["exclude_b"]``, and the weight matching never pairs
them. Such tensors are identical in unrelated models of one architecture, so a bit-identical STFT
basis must not supply hundreds of "matched units".
"""

from __future__ import annotations

from typing import Any, ClassVar

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.weights.fixed import FixedTensor, find_fixed

LISTED = 12  # fixed tensors named in the statement; the details list them all


class FixedTensorsMethod(EvidenceMethod):
    """Finds non-learned tensors in both models so that no weight test counts them."""

    name: ClassVar[str] = "fixed-tensors"
    summary: ClassVar[str] = ("tensors that are closed forms or constants (STFT bases, position tables, masks), "
                              "left out of the weight tests")
    reference: ClassVar[str] = "closed forms: Harris 1978 (windows); Vaswani et al. 2017 (sinusoidal positions)"
    null_hypothesis: ClassVar[str] = "descriptive: which tensors are not learned, no test"
    stage: ClassVar[int] = 5

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        fa = fixed_of(ctx, "a")
        fb = fixed_of(ctx, "b")
        digests_b = {f.digest for f in fb}
        shared = [f for f in fa if f.digest in digests_b]
        if not fa and not fb:
            statement = "no fixed (non-learned) tensors found"
        else:
            statement = (f"{len(fa)} fixed tensor(s) in A and {len(fb)} in B left out of the weight tests"
                         + (f"; {len(shared)} identical in both" if shared else ""))
            named = shared or fa or fb
            statement += ": " + ", ".join(f.describe() for f in named[:LISTED])
            if len(named) > LISTED:
                statement += f", and {len(named) - LISTED} more"
        details: dict[str, Any] = {"a": [_row(f) for f in fa], "b": [_row(f) for f in fb],
                                   "identical_in_both": [f.name for f in shared]}
        return Evidence(method=self.name, status="ok", statement=statement, null_hypothesis=self.null_hypothesis,
                        powered=False, details=details)


def fixed_of(ctx: CompareContext, side: str) -> list[FixedTensor]:
    """The fixed tensors of one side, found once per compare and recorded as the weight matching's exclusions."""
    key = f"fixed_{side}"
    got = ctx.shared.get(key)
    if isinstance(got, list):
        return got
    model = ctx.a if side == "a" else ctx.b
    found = find_fixed(model.source)
    ctx.shared[key] = found
    ctx.shared[f"exclude_{side}"] = frozenset(f.name for f in found)
    return found


def _row(f: FixedTensor) -> dict[str, Any]:
    return {"name": f.name, "what": f.what, "numel": f.numel}
