"""Behaviour evidence: run both models on the same inputs and test what they share.

- `shared-mistakes`: agreement on *wrong* answers on a probe set with known answers (the
  bamboo-slip test of the Llama3-V case; see probes.mistakes for the null and its p-value).
- `output-agreement`: agreement of greedy continuations on many prompts, tested against the
  agreement of reference models known to be unrelated (after Nikolić et al., "Model Provenance
  Testing for Large Language Models", 2025).
Both run only when asked (`--behaviour`, `--probes`), since they cost model queries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from modeltrace.backends.base import Backend, Request
from modeltrace.backends.resolve import cached, open_backend
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.probes.mistakes import poisson_binomial_sf, shared_mistakes
from modeltrace.probes.probeset import ProbeItem, load_probe_set
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.combine import floor


def backends(ctx: CompareContext) -> tuple[Backend, Backend]:
    """The (cached) backends for A and B, built once per compare and kept in ctx.shared."""
    if "backends" not in ctx.shared:
        pair = []
        for side, model in (("a", ctx.a), ("b", ctx.b)):
            be = ctx.options.get(f"backend_{side}")
            if be is None:
                be = open_backend(ctx.options.get(f"endpoint_{side}") or str(model.root))
            pair.append(cached(be, ctx.options.get("cache")))
        ctx.shared["backends"] = tuple(pair)
    return ctx.shared["backends"]  # type: ignore[no-any-return]


def references(ctx: CompareContext) -> list[Backend]:
    refs = ctx.options.get("references") or []
    return [cached(r if isinstance(r, Backend) else open_backend(str(r)), ctx.options.get("cache")) for r in refs]


def prompt_request(ctx: CompareContext, prompt: str, **kw: Any) -> Request:
    """A generic prompt as a plain completion, or as one user message where the models are chat models (--chat)."""
    if ctx.options.get("chat"):
        return Request(mode="chat", messages=(("user", prompt),), **kw)
    return Request(prompt=prompt, **kw)


_LETTER = re.compile(r"\b([A-Z])\b")


def extract_answer(item: ProbeItem, text: str) -> str:
    """The answer a reply gives: a choice label for multiple choice, else the first line."""
    if item.choices:
        m = _LETTER.search(text.strip().upper()[:40])
        if m and m.group(1) in item.choices:
            return m.group(1)
        return text.strip()[:20]
    return text.strip().splitlines()[0] if text.strip() else ""


def ask_probes(backend: Backend, items: Sequence[ProbeItem], root: Any) -> dict[str, str]:
    reqs = [Request(prompt=it.prompt, mode="chat" if it.image else "completion", max_tokens=8,
                    messages=(("user", it.prompt),) if it.image else (),
                    images=(str(root / it.image),) if it.image else ()) for it in items]
    answers = backend.generate(reqs)
    return {it.id: extract_answer(it, r.text) for it, r in zip(items, answers)}


class SharedMistakesMethod(EvidenceMethod):
    """Do A and B make the same mistakes on a private probe set more often than independent models would?"""

    name = "shared-mistakes"
    kind = "behaviour"
    stage = 40
    summary = "agreement on wrong answers on a probe set, against independent wrong-answer choices"
    reference = "the Llama3-V / MiniCPM-Llama3-V 2.5 case (2024): shared errors on unpublished bamboo-slip characters"
    null_hypothesis = ("given which items each model gets wrong, A's and B's wrong answers are chosen "
                       "independently (each from its own distribution of wrong answers)")

    def needs(self, ctx: CompareContext) -> str | None:
        if not ctx.options.get("probes"):
            return "no probe set given (--probes SET)"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        ps = load_probe_set(ctx.options["probes"])
        be_a, be_b = backends(ctx)
        ans_a = ask_probes(be_a, ps.items, ps.root)
        ans_b = ask_probes(be_b, ps.items, ps.root)
        refs = [ask_probes(r, ps.items, ps.root) for r in references(ctx)]
        res = shared_mistakes(ps.items, ans_a, ans_b, refs)
        powered = res.scored >= 5
        p_value: float | None = res.p_value
        if res.null != "references":
            # Without references the null is modelled, and models trained on similar data share
            # *tempting* wrong answers far beyond any model of independent choice (measured on the
            # benchmark zoo): report the modelled figure, but let it decide nothing.
            p_value, powered = None, False
        stmt = (f"on {res.n_items} probe items, A was wrong on {res.a_wrong} and B on {res.b_wrong}; of the "
                f"{res.both_wrong} both got wrong, {res.same_wrong} had the same wrong answer "
                f"({res.expected_same_wrong:.1f} expected for independent models, "
                + ("as often as A or B shares them with unrelated reference models)" if res.null == "references"
                   else "from each model's own spread of wrong answers)"))
        if p_value is None:
            stmt += "; give unrelated reference models (--reference) to turn this into a test"
        return Evidence(method=self.name, status="ok", statement=stmt, null_hypothesis=self.null_hypothesis,
                        statistic=float(res.same_wrong), p_value=p_value, kind="behaviour", powered=powered,
                        details={"items": res.n_items, "a_wrong": res.a_wrong, "b_wrong": res.b_wrong,
                                 "both_wrong": res.both_wrong, "same_wrong": res.same_wrong,
                                 "expected_same_wrong": res.expected_same_wrong, "scored": res.scored,
                                 "both_right": res.both_right, "references": len(refs), "null": res.null,
                                 "reference_pairs": res.reference_pairs, "p_value_modelled": res.p_value,
                                 "queries": 2 * len(ps.items) + len(refs) * len(ps.items),
                                 "examples": res.examples})


def agreement(xs: Sequence[str], ys: Sequence[str]) -> int:
    return sum(1 for x, y in zip(xs, ys) if x.strip() == y.strip())


def one_sided_two_proportion(k1: int, k2: int, n: int) -> float:
    """p-value of H0: p1 <= p2 against p1 > p2, from k1/n and k2/n (pooled z-test)."""
    if n == 0:
        return 1.0
    p1, p2 = k1 / n, k2 / n
    pool = (k1 + k2) / (2 * n)
    se = math.sqrt(max(pool * (1 - pool) * 2 / n, 1e-300))
    if pool in (0.0, 1.0):
        return 1.0 if p1 <= p2 else floor(0.0)
    return floor(float(_st.norm.sf((p1 - p2) / se)))


class OutputAgreementMethod(EvidenceMethod):
    """Do A and B continue generic prompts alike more often than A and models known to be unrelated?"""

    name = "output-agreement"
    kind = "behaviour"
    stage = 40
    summary = "greedy-continuation agreement of A and B against A and unrelated reference models"
    reference = "Nikolić et al., 'Model Provenance Testing for Large Language Models' (2025)"
    null_hypothesis = ("B agrees with A no more often than some reference model known to be unrelated to A "
                       "does (intersection-union over the references)")

    def needs(self, ctx: CompareContext) -> str | None:
        if not ctx.options.get("behaviour"):
            return "behaviour tests not requested (--behaviour)"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        n = int(ctx.options.get("prompts", 200))
        tokens = int(ctx.options.get("continuation_tokens", 4))
        prompts = generic_prompts(n, seed=ctx.seed)
        reqs = [prompt_request(ctx, p, max_tokens=tokens) for p in prompts]
        be_a, be_b = backends(ctx)
        out_a = [r.text for r in be_a.generate(reqs)]
        out_b = [r.text for r in be_b.generate(reqs)]
        k_ab = agreement(out_a, out_b)
        refs = references(ctx)
        if not refs:
            return Evidence(method=self.name, status="ok", kind="behaviour", powered=False, p_value=None,
                            statistic=k_ab / n, null_hypothesis=self.null_hypothesis,
                            statement=(f"A and B agree on {k_ab}/{n} greedy continuations; without reference "
                                       "models (--reference) there is no null to test against"),
                            details={"prompts": n, "agree": k_ab, "queries": 2 * n})
        per_ref: list[dict[str, Any]] = []
        for r in refs:
            k_ar = agreement(out_a, [x.text for x in r.generate(reqs)])
            per_ref.append({"reference": r.identity, "agree": k_ar,
                            "p_value": one_sided_two_proportion(k_ab, k_ar, n)})
        p = max(x["p_value"] for x in per_ref)  # intersection-union: reject only if B beats every reference
        best = max(x["agree"] for x in per_ref)
        return Evidence(method=self.name, status="ok", kind="behaviour", powered=True, p_value=p,
                        statistic=k_ab / n, null_hypothesis=self.null_hypothesis,
                        statement=(f"A and B agree on {k_ab}/{n} greedy continuations; the closest of "
                                   f"{len(refs)} unrelated reference model(s) agrees with A on {best}/{n}"),
                        details={"prompts": n, "agree": k_ab, "references": per_ref,
                                 "queries": (2 + len(refs)) * n})


def canary_items(items: Sequence[ProbeItem]) -> list[ProbeItem]:
    return [it for it in items if it.meta.get("canary") and it.choices and it.answer in it.choices]


class CanaryRecallMethod(EvidenceMethod):
    """Does B know the secret facts of A's canary probe set better than chance?"""

    name = "canary-recall"
    kind = "behaviour"
    stage = 40
    summary = "B's accuracy on invented facts only A was trained on, against guessing"
    reference = "canary probe sets (committed by hash before release); exact binomial test"
    null_hypothesis = ("B never learned the probe set: the right choice of each invented fact was placed at a "
                       "uniformly random position when the set was made, so B is right with probability 1/k "
                       "per item, independently")

    def needs(self, ctx: CompareContext) -> str | None:
        if not ctx.options.get("probes"):
            return "no probe set given (--probes SET)"
        if not canary_items(load_probe_set(ctx.options["probes"]).items):
            return "the probe set has no canary items (invented facts made by `modeltrace probe make`)"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        ps = load_probe_set(ctx.options["probes"])
        items = canary_items(ps.items)
        be_a, be_b = backends(ctx)
        ans_a = ask_probes(be_a, items, ps.root)
        ans_b = ask_probes(be_b, items, ps.root)
        right_a = sum(ans_a.get(it.id) == it.answer for it in items)
        right_b = sum(ans_b.get(it.id) == it.answer for it in items)
        chance = float(np.mean([1.0 / len(it.choices) for it in items]))
        # Poisson-binomial of per-item 1/k; all items of one set share k in practice
        p = floor(poisson_binomial_sf([1.0 / len(it.choices) for it in items], right_b))
        return Evidence(method=self.name, status="ok", kind="behaviour", powered=len(items) >= 30, p_value=p,
                        statistic=right_b / len(items), null_hypothesis=self.null_hypothesis,
                        statement=(f"B answers {right_b} of {len(items)} invented canary facts right "
                                   f"(A: {right_a}; guessing: {chance * len(items):.1f})"),
                        details={"items": len(items), "b_right": right_b, "a_right": right_a,
                                 "chance_rate": chance, "queries": 2 * len(items)})
