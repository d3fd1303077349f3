"""`logprob-similarity`: are B's next-token distributions closer to A's than unrelated models' are?

Greedy answers keep only the top choice, and a fine-tune changes many of those; the *order of the
less likely tokens* is what training leaves behind, and it survives fine-tuning much longer (on the
benchmark zoo a full fine-tune agrees with its parent on fewer greedy continuations than unrelated
models do, yet its next-token rankings stay three times closer). One query per prompt and model:
a single next token with its top-k log-probabilities, which local models and OpenAI-compatible
endpoints (`logprobs`) both give.

Statistic: per prompt, the rank distance 1 - Spearman correlation of the two log-probability
tables over the union of their listed tokens (a token one side did not list gets that side's
smallest listed value, an upper bound on it). Test: against at least two reference models known
to be unrelated, in the spirit of Nikolić et al., "Model Provenance Testing for Large Language
Models" (2025): for each reference R and each side (A and B), an exact one-sided sign test over
prompts of H0: "on a random prompt, d(A,B) < (1 - margin) * d(A,R) with probability at most 1/2";
intersection-union over references and sides (the largest p-value decides). Prompts are drawn
independently (`probes.prompts`), so under H0 the count of prompts that favour B is stochastically
below Binomial(n, 1/2) and the exact binomial tail is a valid p-value at any level, down to its
floor 2^-n (`stats.exact`). The null holds in particular when B and R are exchangeable relative to A
(then P(d_AB < d_AR) <= 1/2, and the margin only shrinks the event). The margin keeps the null at
the level of models, not prompts: two unrelated models are never exactly equally far from A; the
null allows B to be up to `margin` closer to A than the closest reference on most prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from modeltrace.backends.base import Backend, Request
from modeltrace.errors import EvidenceError
from modeltrace.evidence.base import CompareContext, ControlOutcome, Evidence
from modeltrace.evidence.behaviour import (
    GenericPromptMethod,
    backends,
    power_note,
    prompt_request,
    references,
    references_missing,
    threshold_of,
    with_copy_control,
)
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.exact import checked, sign_test_floor, sign_test_p

DEFAULT_K = 100  # local models and llama.cpp give any k; endpoints cap it (OpenAI and vLLM: 20)
DEFAULT_MARGIN = 0.1
Table = dict[str, float]


def rank_distance(a: Table, b: Table) -> float:
    """1 - Spearman correlation of two top-k log-probability tables over the union of their tokens.

    0 for the same ranking, about 1 for unrelated ones, up to 2 for reversed ones; nan when the
    union has fewer than three tokens or one side ranks them all alike.
    """
    if not a or not b:
        return math.nan
    keys = sorted(set(a) | set(b))
    if len(keys) < 3:
        return math.nan
    fa, fb = min(a.values()), min(b.values())
    va = np.array([a.get(k, fa) for k in keys], dtype=np.float64)
    vb = np.array([b.get(k, fb) for k in keys], dtype=np.float64)
    ra, rb = _st.rankdata(va), _st.rankdata(vb)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    if den == 0.0:
        return math.nan
    return 1.0 - float((ra * rb).sum()) / den


def distances(xs: Sequence[Table], ys: Sequence[Table]) -> np.ndarray:
    return np.array([rank_distance(x, y) for x, y in zip(xs, ys)], dtype=np.float64)


def margin_test(d_ab: np.ndarray, d_ar: np.ndarray, margin: float) -> float:
    """Exact one-sided sign test of H0: P(d_ab < (1 - margin) d_ar) <= 1/2 on a random prompt (ties count for H0)."""
    if np.isnan(d_ab).any() or np.isnan(d_ar).any():
        raise EvidenceError("logprob-similarity: a rank distance is NaN (prompts without comparable tables "
                            "must be dropped first)")
    n = len(d_ab)
    return sign_test_p(int(np.count_nonzero(d_ab < (1.0 - margin) * d_ar)), n)


def tables(backend: Backend, reqs: Sequence[Request]) -> list[Table]:
    """The first next-token log-probability table each request got (empty where the backend gave none)."""
    return [dict(r.top_logprobs[0]) if r.top_logprobs else {} for r in backend.generate(reqs)]


def side_tests(d_ab: np.ndarray, d_xr: dict[str, np.ndarray], margin: float,
               side: str) -> list[dict[str, Any]]:
    out = []
    for ref, d in d_xr.items():
        mean_r = float(d.mean())
        out.append({"side": side, "reference": ref, "distance_to_reference": round(mean_r, 5),
                    "ratio": round(float(d_ab.mean()) / mean_r, 4) if mean_r > 0 else None,
                    "p_value": margin_test(d_ab, d, margin)})
    return out


def prompts_needed(d_ab: np.ndarray, d_refs: list[np.ndarray], margin: float, threshold: float,
                   step: int = 10) -> int | None:
    """The smallest prefix of the prompts (in steps of `step`) at which every test is below threshold."""
    for n in range(step, len(d_ab) + 1, step):
        if max(margin_test(d_ab[:n], d[:n], margin) for d in d_refs) < threshold:
            return n
    return None


class LogprobSimilarityMethod(GenericPromptMethod):
    """Are B's next-token rankings closer to A's than those of models known to be unrelated to A?"""

    name = "logprob-similarity"
    summary = "rank distance of next-token log-probabilities, A-B against A-reference and B-reference"
    reference = ("Nikolić et al., 'Model Provenance Testing for Large Language Models' (2025): testing "
                 "against unrelated reference models; here on next-token log-probability rankings")
    null_hypothesis = ("B's next-token rankings are at least (1 - margin) times as far from A's as those of "
                       "the closest unrelated reference model on a random prompt with probability at least 1/2, "
                       "and A's from B's likewise (exact sign tests, intersection-union over references and sides)")

    def needs(self, ctx: CompareContext) -> str | None:
        return super().needs(ctx) or references_missing(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        n = int(ctx.options.get("prompts", 200))
        margin = float(ctx.options.get("logprob_margin", DEFAULT_MARGIN))
        threshold = threshold_of(ctx)
        be_a, be_b = backends(ctx)
        refs = references(ctx)
        limits = [b.max_top_logprobs for b in (be_a, be_b, *refs) if b.max_top_logprobs]
        k = int(ctx.options.get("top_logprobs") or min([DEFAULT_K, *limits]))
        prompts = generic_prompts(n, seed=ctx.seed)
        reqs = [prompt_request(ctx, p, max_tokens=1, top_logprobs=k) for p in prompts]
        sides = {"A": tables(be_a, reqs), "B": tables(be_b, reqs)}
        for side, be in (("A", be_a), ("B", be_b)):
            if not any(sides[side]):
                return Evidence.skipped(self.name, f"{be.identity} gave no log-probabilities (model {side})",
                                        kind="behaviour")
        ref_tables: dict[str, list[Table]] = {}
        for r in refs:
            t = tables(r, reqs)
            if not any(t):
                return Evidence.skipped(self.name, f"reference {r.identity} gave no log-probabilities",
                                        kind="behaviour")
            ref_tables[r.identity] = t
        d_ab = distances(sides["A"], sides["B"])
        d_side = {s: {rid: distances(sides[s], t) for rid, t in ref_tables.items()} for s in ("A", "B")}
        keep = ~np.isnan(d_ab)
        for per_ref in d_side.values():
            for d in per_ref.values():
                keep &= ~np.isnan(d)
        used = int(keep.sum())
        d_ab = d_ab[keep]
        details: dict[str, Any] = {"prompts": n, "prompts_used": used, "top_logprobs": k, "margin": margin,
                                   "distance": round(float(d_ab.mean()), 5) if used else None,
                                   "queries": (2 + len(refs)) * n}
        if used == 0:
            return Evidence(method=self.name, status="ok", kind="behaviour", powered=False, p_value=None,
                            statistic=None, null_hypothesis=self.null_hypothesis, details=details,
                            statement=f"none of {n} prompts gave comparable log-probabilities from A, B and "
                                      "every reference")
        refs_d = {s: {rid: d[keep] for rid, d in d_side[s].items()} for s in ("A", "B")}
        tests = [t for s in ("A", "B") for t in side_tests(d_ab, refs_d[s], margin, s)]
        for test in tests:
            test["p_value"] = checked(test["p_value"], self.name)
        p = max(t["p_value"] for t in tests)
        ratio = max((t["ratio"] for t in tests if t["ratio"] is not None), default=None)
        closest = min(t["distance_to_reference"] for t in tests)
        floor_p = sign_test_floor(used)
        powered = floor_p < threshold
        ctx.shared[f"{self.name}:distances"] = (refs_d["A"], margin)
        details.update(tests=tests, ratio=ratio, min_attainable_p=floor_p, prompts_needed=prompts_needed(
            d_ab, [d for per in refs_d.values() for d in per.values()], margin, threshold))
        stmt = (f"on {used} prompts, A's and B's next-token rankings (top {k}) are at rank distance "
                f"{float(d_ab.mean()):.3f}; the closest of {len(refs)} unrelated reference model(s) is at "
                f"{closest:.3f} from A or B (largest ratio {ratio}; the null allows down to {1 - margin:.2f} "
                "on most prompts)")
        if not powered:
            stmt += power_note(used, "prompts", floor_p, threshold)
        ev = Evidence(method=self.name, status="ok", kind="behaviour", powered=powered, p_value=p,
                      statistic=float(d_ab.mean()), null_hypothesis=self.null_hypothesis, statement=stmt,
                      details=details)
        return with_copy_control(self, ctx, ev)

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        """A copy of A (rank distance 0 on every prompt) against the same references and prompts."""
        got = ctx.shared.get(f"{self.name}:distances")
        if result.status != "ok" or got is None:
            return []
        d_a, margin = got
        p = max(margin_test(np.zeros_like(d), d, margin) for d in d_a.values())
        return [ControlOutcome("copy", None, self.name, p, p < threshold_of(ctx),
                               "A's own rankings in B's place, against the same references")]
