"""Behaviour evidence: run both models on the same inputs and test what they share.

- `shared-mistakes`: agreement on *wrong* answers on a probe set with known answers (the
  bamboo-slip test of the Llama3-V case; see probes.mistakes for the null and its p-value).
- `output-agreement`: agreement of greedy continuations on many prompts, tested against the
  agreement of reference models known to be unrelated (after Nikolić et al., "Model Provenance
  Testing for Large Language Models", 2025).
- `canary-recall`: B's accuracy on invented facts only A was trained on, against guessing.
All run only when asked (`--behaviour`, `--probes`), since they cost model queries.

Rules every test here keeps (so that no p-value decides more than it can stand for):
- a null measured on reference models needs at least two of them (`MIN_REFERENCES`); with fewer the
  test is skipped with the reason, before any query is spent;
- p-values come from exact tests (binomial, Fisher, Poisson-binomial), never from normal tails;
- `powered` means the smallest p-value the test can reach on this many prompts or items is below
  the threshold (`--threshold`) *and* an exact copy of A (A's own answers in B's place, scored against
  the same references) would have been caught (`with_copy_control`); the statement says which failed;
- a NaN p-value is an error, never p = 1 (`stats.exact.checked`);
- `controls` re-scores the answers already collected with A's own answers in B's place: what an exact
  copy of A would have scored against the same references (a positive control that costs no query).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import stats as _st

from modeltrace.backends.base import Backend, Request
from modeltrace.backends.resolve import cached, open_backend
from modeltrace.evidence.base import CompareContext, ControlOutcome, Evidence, EvidenceMethod
from modeltrace.probes.mistakes import poisson_binomial_sf, shared_mistakes
from modeltrace.probes.probeset import ProbeItem, load_probe_set
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.combine import P_FLOOR
from modeltrace.stats.exact import checked, sign_test_floor, sign_test_p, units_needed

MIN_REFERENCES = 2  # one reference is one draw of "an unrelated model": no measure of how unrelated models vary
DEFAULT_THRESHOLD = 1e-6


def threshold_of(ctx: CompareContext) -> float:
    """The verdict threshold (`--threshold`) every power and control check uses."""
    return float(ctx.options.get("threshold", DEFAULT_THRESHOLD))


def references_missing(ctx: CompareContext) -> str | None:
    """Why a reference-based test cannot run (fewer than MIN_REFERENCES given), or None."""
    n = len(ctx.options.get("references") or [])
    if n < MIN_REFERENCES:
        return (f"needs at least {MIN_REFERENCES} reference models known to be unrelated to A and B "
                f"(--reference, given {n}): the null is measured on them")
    return None


def with_copy_control(method: EvidenceMethod, ctx: CompareContext, ev: Evidence) -> Evidence:
    """`ev`, powered only if its cheap copy control (A's own data in B's place) was detected as well.

    A test whose smallest attainable p is below the threshold can still be blind here: references
    that answer like A leave too few prompts on which even an exact copy could differ from them.
    """
    copies = [c for c in method.controls(ctx, ev) if c.kind == "copy"]
    if not copies:
        return ev
    p = max(c.p_value for c in copies)
    details = {**ev.details, "copy_control_p": p}
    if not ev.powered or all(c.detected for c in copies):
        return replace(ev, details=details)
    return replace(ev, powered=False, details=details,
                   statement=ev.statement + f" (not powered: an exact copy of A would reach only p = {p:.3g} "
                                            f"here, not p < {threshold_of(ctx):g})")


def power_note(n: int, what: str, floor_p: float, threshold: float) -> str:
    """The sentence a test adds when n prompts or items cannot reach the threshold."""
    return (f" (not powered: {n} {what} cannot reach p < {threshold:g}; the smallest attainable p is "
            f"{floor_p:.3g}" + (f", {units_needed(threshold)} {what} needed)" if what == "prompts" else ")"))


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
    """The (cached) reference backends, opened once per compare and shared by every method that uses them."""
    if "references" not in ctx.shared:
        refs = ctx.options.get("references") or []
        ctx.shared["references"] = [cached(r if isinstance(r, Backend) else open_backend(str(r)),
                                           ctx.options.get("cache")) for r in refs]
    return list(ctx.shared["references"])


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


def ask_probes(backend: Backend, items: Sequence[ProbeItem], root: Any, *, chat: bool = False) -> dict[str, str]:
    """Each item's answer; items with images, and every item with `chat`, are asked as one user message."""
    reqs = [Request(prompt="" if (chat or it.image) else it.prompt,
                    mode="chat" if (chat or it.image) else "completion", max_tokens=8,
                    messages=(("user", it.prompt),) if (chat or it.image) else (),
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
        return references_missing(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        ps = load_probe_set(ctx.options["probes"])
        be_a, be_b = backends(ctx)
        chat = bool(ctx.options.get("chat"))
        ans_a = ask_probes(be_a, ps.items, ps.root, chat=chat)
        ans_b = ask_probes(be_b, ps.items, ps.root, chat=chat)
        refs = [ask_probes(r, ps.items, ps.root, chat=chat) for r in references(ctx)]
        ctx.shared[f"{self.name}:answers"] = (ps.items, ans_a, refs)
        res = shared_mistakes(ps.items, ans_a, ans_b, refs)
        threshold = threshold_of(ctx)
        p_value: float | None = None
        powered = False
        best = 1.0
        if res.null == "references":
            p_value = checked(res.p_value, self.name)
            best = best_fisher_p(res.both_wrong, res.reference_pairs)
            powered = best < threshold
        stmt = (f"on {res.n_items} probe items, A was wrong on {res.a_wrong} and B on {res.b_wrong}; of the "
                f"{res.both_wrong} both got wrong, {res.same_wrong} had the same wrong answer "
                f"({res.expected_same_wrong:.1f} expected for independent models, "
                "as often as A or B shares them with unrelated reference models)")
        if res.null != "references":
            # the references never erred together with A or B: there is no measured null, and the
            # modelled one is known to be far too optimistic (shared tempting answers)
            stmt = (f"on {res.n_items} probe items, A was wrong on {res.a_wrong} and B on {res.b_wrong}; no "
                    "reference model got an item wrong together with A or B, so there is no measured null")
        elif not powered:
            stmt += power_note(res.both_wrong, "shared wrong items", best, threshold)
        ev = Evidence(method=self.name, status="ok", statement=stmt, null_hypothesis=self.null_hypothesis,
                      statistic=float(res.same_wrong), p_value=p_value, kind="behaviour", powered=powered,
                      details={"items": res.n_items, "a_wrong": res.a_wrong, "b_wrong": res.b_wrong,
                               "both_wrong": res.both_wrong, "same_wrong": res.same_wrong,
                               "expected_same_wrong": res.expected_same_wrong, "scored": res.scored,
                               "both_right": res.both_right, "references": len(refs), "null": res.null,
                               "reference_pairs": res.reference_pairs, "min_attainable_p": best,
                               "queries": 2 * len(ps.items) + len(refs) * len(ps.items),
                               "examples": res.examples})
        return with_copy_control(self, ctx, ev)

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        got = ctx.shared.get(f"{self.name}:answers")
        if result.status != "ok" or got is None:
            return []
        items, ans_a, refs = got
        res = shared_mistakes(items, ans_a, ans_a, refs)
        if res.null != "references":
            return [ControlOutcome("copy", None, self.name, 1.0, False,
                                   "A's own answers in B's place: no reference erred with A, nothing to test")]
        p = checked(res.p_value, self.name)
        return [ControlOutcome("copy", None, self.name, p, p < threshold_of(ctx),
                               f"A's own answers in B's place: {res.same_wrong} of {res.both_wrong} shared "
                               "wrong answers")]


def best_fisher_p(both_wrong: int, reference_pairs: Sequence[dict[str, Any]]) -> float:
    """The smallest p the reference test can give here: every item A and B both got wrong answered alike."""
    if not both_wrong or not reference_pairs:
        return 1.0
    worst = 0.0
    for rp in reference_pairs:  # intersection-union: the largest p over reference pairs decides
        table = [[both_wrong, 0], [int(rp["same_wrong"]), int(rp["both_wrong"] - rp["same_wrong"])]]
        worst = max(worst, float(_st.fisher_exact(table, alternative="greater")[1]))
    return max(P_FLOOR, worst)


def agreement(xs: Sequence[str], ys: Sequence[str]) -> int:
    return sum(1 for x, y in zip(xs, ys) if x.strip() == y.strip())


def default_answers(outputs: Sequence[str], share: float = 0.01) -> set[str]:
    """Continuations a model gives to many different prompts (more than `share` of them, and at least 3).

    Such an answer is the model's default, not a response to the prompt: two unrelated models with
    the same default agree on every prompt where both fall back to it (measured on the zoo: 50 of
    68 agreements of two unrelated models were one default continuation).
    """
    counts = Counter(o.strip() for o in outputs)
    limit = max(3, int(share * len(outputs)))
    return {o for o, c in counts.items() if c >= limit}


def paired_agreement_test(x: Sequence[str], y: Sequence[str], r: Sequence[str]) -> float:
    """Exact one-sided McNemar test of H0: y agrees with x no more often than r does, on the same prompts.

    Only prompts where exactly one of y and r agrees with x count, and an agreement on an answer
    that is a default of both models that give it does not count (y and r are treated alike, so
    under H0 y is the one at most half the time: an exact binomial tail with p = 1/2, `stats.exact`).
    Its smallest value over n prompts is 2^-n.
    """
    dx, dy, dr = default_answers(x), default_answers(y), default_answers(r)
    yes = no = 0
    for a, b, c in zip(x, y, r):
        a, b, c = a.strip(), b.strip(), c.strip()
        yes += a == b and a != c and not (a in dx and a in dy)
        no += a == c and a != b and not (a in dx and a in dr)
    return sign_test_p(yes, yes + no)


class GenericPromptMethod(EvidenceMethod):
    """A behaviour test on generic prompts: runs when asked (--behaviour), since it costs model queries."""

    kind = "behaviour"
    stage = 40

    def needs(self, ctx: CompareContext) -> str | None:
        if not ctx.options.get("behaviour"):
            return "behaviour tests not requested (--behaviour)"
        return None


class OutputAgreementMethod(GenericPromptMethod):
    """Do A and B continue generic prompts alike more often than A and models known to be unrelated?"""

    name = "output-agreement"
    summary = "greedy-continuation agreement of A and B against A and unrelated reference models"
    reference = "Nikolić et al., 'Model Provenance Testing for Large Language Models' (2025)"
    null_hypothesis = ("B agrees with A no more often than some reference model known to be unrelated to both "
                       "does, or A with B no more often than with such a model (paired exact tests, "
                       "intersection-union over references and sides)")

    def needs(self, ctx: CompareContext) -> str | None:
        return super().needs(ctx) or references_missing(ctx)

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
        tests: list[dict[str, Any]] = []
        ref_outs: list[list[str]] = []
        for r in refs:
            out_r = [x.text for x in r.generate(reqs)]
            ref_outs.append(out_r)
            for side, mine, other in (("A", out_a, out_b), ("B", out_b, out_a)):
                tests.append({"side": side, "reference": r.identity, "agree": agreement(mine, out_r),
                              "p_value": checked(paired_agreement_test(mine, other, out_r), self.name)})
        ctx.shared[f"{self.name}:outputs"] = (out_a, ref_outs)
        p = max(x["p_value"] for x in tests)  # intersection-union: B must beat every reference, from both sides
        best = max(x["agree"] for x in tests)
        threshold = threshold_of(ctx)
        floor_p = sign_test_floor(n)
        powered = floor_p < threshold
        stmt = (f"A and B agree on {k_ab}/{n} greedy continuations; the closest of "
                f"{len(refs)} unrelated reference model(s) agrees with A or B on {best}/{n}")
        if not powered:
            stmt += power_note(n, "prompts", floor_p, threshold)
        ev = Evidence(method=self.name, status="ok", kind="behaviour", powered=powered, p_value=p,
                      statistic=k_ab / n, null_hypothesis=self.null_hypothesis, statement=stmt,
                      details={"prompts": n, "agree": k_ab, "references": tests, "min_attainable_p": floor_p,
                               "queries": (2 + len(refs)) * n})
        return with_copy_control(self, ctx, ev)

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        got = ctx.shared.get(f"{self.name}:outputs")
        if result.status != "ok" or got is None:
            return []
        out_a, ref_outs = got
        p = max(checked(paired_agreement_test(out_a, out_a, r), self.name) for r in ref_outs)
        return [ControlOutcome("copy", None, self.name, p, p < threshold_of(ctx),
                               "A's own continuations in B's place, against the same references")]


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
        chat = bool(ctx.options.get("chat"))
        ans_a = ask_probes(be_a, items, ps.root, chat=chat)
        ans_b = ask_probes(be_b, items, ps.root, chat=chat)
        right_a = sum(ans_a.get(it.id) == it.answer for it in items)
        right_b = sum(ans_b.get(it.id) == it.answer for it in items)
        chance = float(np.mean([1.0 / len(it.choices) for it in items]))
        qs = [1.0 / len(it.choices) for it in items]
        p = checked(max(P_FLOOR, poisson_binomial_sf(qs, right_b)), self.name)
        floor_p = max(P_FLOOR, float(np.prod(qs)))  # every item right
        threshold = threshold_of(ctx)
        powered = floor_p < threshold
        ctx.shared[f"{self.name}:a"] = (qs, right_a)
        stmt = (f"B answers {right_b} of {len(items)} invented canary facts right "
                f"(A: {right_a}; guessing: {chance * len(items):.1f})")
        if not powered:
            stmt += power_note(len(items), "canary items", floor_p, threshold)
        ev = Evidence(method=self.name, status="ok", kind="behaviour", powered=powered, p_value=p,
                      statistic=right_b / len(items), null_hypothesis=self.null_hypothesis, statement=stmt,
                      details={"items": len(items), "b_right": right_b, "a_right": right_a,
                               "chance_rate": chance, "min_attainable_p": floor_p, "queries": 2 * len(items)})
        return with_copy_control(self, ctx, ev)

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        """A copy of A would know what A knows: the same test on A's own answers."""
        got = ctx.shared.get(f"{self.name}:a")
        if result.status != "ok" or got is None:
            return []
        qs, right_a = got
        p = checked(max(P_FLOOR, poisson_binomial_sf(qs, right_a)), self.name)
        return [ControlOutcome("copy", None, self.name, p, p < threshold_of(ctx),
                               f"A's own answers: {right_a} of {len(qs)} canary facts right"
                               + ("" if p < threshold_of(ctx) else " (A does not know its canaries well enough)"))]
