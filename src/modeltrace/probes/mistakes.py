"""The shared-mistakes test: do A and B agree on *wrong* answers more than independent models would?

Null hypothesis: given which items each model gets wrong, A's and B's wrong answers are drawn
independently, each from that model's own distribution of wrong answers for the item. Under H0
the number S of items where both are wrong with the *same* wrong answer is a sum of independent
Bernoulli(q_i), q_i = sum_w P_A(w | i wrong) P_B(w | i wrong); its Poisson-binomial upper tail is
the p-value. Conditioning on which items are wrong makes shared right answers (what two good
models share) carry no weight, as they should not.

Where the wrong-answer distributions come from, in order of preference:
1. the item's choices: each model's own preference among the wrong labels, estimated from
   all items (so a shared bias such as "both like option A" is priced in);
2. the item's declared plausible confusions (uniform over them plus one unseen-answer slot).
Items with none of these are not scored (reported as such).

With reference models known to be unrelated to A and B, the null is measured instead of
modelled, because models trained on similar data share *which* wrong answer is tempting far
more than any model of independent choice allows (on the benchmark zoo, independently trained
bases reached p < 1e-7 under the modelled null). Null hypothesis then: among items both get
wrong, A and B give the same wrong answer no more often than A (or B) and an unrelated
reference model do on the items those two both get wrong. Each reference gives a one-sided
Fisher exact test on the 2x2 table (same, different wrong answer) x (pair A-B, pair X-R);
the p-value is the largest over the reference pairs (intersection-union test, valid without
a multiplicity correction). Assumes the references are as unrelated to A and B as independent
models are to each other (exchangeable with B under H0).
This is the bamboo-slip evidence of the Llama3-V case (../seed-case), made a test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

from modeltrace.probes.probeset import ProbeItem
from modeltrace.stats.combine import floor


def normalize_answer(text: str | None) -> str:
    """Answers compared case- and space-insensitively, punctuation at the ends stripped."""
    if text is None:
        return ""
    t = " ".join(str(text).strip().split()).strip(" .,:;!?\"'()[]").lower()
    return t


def poisson_binomial_sf(qs: Sequence[float], s: int) -> float:
    """P(S >= s) for S a sum of independent Bernoulli(q_i) (exact, by dynamic programming)."""
    if s <= 0:
        return 1.0
    dist = np.zeros(len(qs) + 1)
    dist[0] = 1.0
    for k, q in enumerate(qs, 1):
        dist[1:k + 1] = dist[1:k + 1] * (1 - q) + dist[0:k] * q
        dist[0] *= 1 - q
    return float(min(1.0, max(0.0, dist[s:].sum())))


@dataclass(frozen=True)
class SharedMistakes:
    n_items: int
    a_wrong: int
    b_wrong: int
    both_wrong: int
    same_wrong: int
    expected_same_wrong: float
    scored: int
    p_value: float
    both_right: int
    examples: list[dict[str, str]] = field(default_factory=list)
    null: str = "structure"  # "structure" (choices or confusions) or "references" (measured on reference pairs)
    reference_pairs: list[dict[str, Any]] = field(default_factory=list)


def _dist(counter: Counter[str], support: Sequence[str], alpha: float = 1.0) -> dict[str, float]:
    total = sum(counter[w] for w in support) + alpha * len(support)
    return {w: (counter[w] + alpha) / total for w in support}


def shared_mistakes(
    items: Sequence[ProbeItem],
    answers_a: Mapping[str, str],
    answers_b: Mapping[str, str],
    references: Sequence[Mapping[str, str]] = (),
) -> SharedMistakes:
    """Score A's and B's answers (item id -> answer text) on `items`; see the module docstring."""
    norm_a = {k: normalize_answer(v) for k, v in answers_a.items()}
    norm_b = {k: normalize_answer(v) for k, v in answers_b.items()}
    refs = [{k: normalize_answer(v) for k, v in r.items()} for r in references]
    # each model's preference among wrong labels, pooled over multiple-choice items
    pref_a: Counter[str] = Counter()
    pref_b: Counter[str] = Counter()
    for it in items:
        if it.choices:
            right = normalize_answer(it.answer)
            if norm_a.get(it.id, right) != right:
                pref_a[norm_a[it.id]] += 1
            if norm_b.get(it.id, right) != right:
                pref_b[norm_b[it.id]] += 1
    qs: list[float] = []
    a_wrong = b_wrong = both_wrong = same = both_right = scored = 0
    examples: list[dict[str, str]] = []
    for it in items:
        if it.id not in norm_a or it.id not in norm_b:
            continue
        right = normalize_answer(it.answer)
        wa, wb = norm_a[it.id] != right, norm_b[it.id] != right
        a_wrong += wa
        b_wrong += wb
        both_right += (not wa) and (not wb)
        if not (wa and wb):
            continue
        both_wrong += 1
        if it.choices:
            support = [normalize_answer(c) for c in it.choices if normalize_answer(c) != right]
            da, db = _dist(pref_a, support), _dist(pref_b, support)
            q = sum(da[w] * db[w] for w in support)
        elif it.confusions:
            support = sorted({normalize_answer(c) for c in it.confusions} - {right}) + ["<other>"]
            q = 1.0 / len(support)
        else:
            continue
        scored += 1
        qs.append(min(1.0, q))
        if norm_a[it.id] == norm_b[it.id]:
            same += 1
            if len(examples) < 10:
                examples.append({"id": it.id, "answer": it.answer, "a": answers_a[it.id], "b": answers_b[it.id]})
    p = floor(poisson_binomial_sf(qs, same)) if qs else 1.0
    null = "structure"
    ref_pairs = _reference_pairs(items, norm_a, norm_b, refs)
    if ref_pairs:
        null = "references"
        scored = both_wrong
        for rp in ref_pairs:
            table = [[same, both_wrong - same], [int(rp["same_wrong"]), int(rp["both_wrong"] - rp["same_wrong"])]]
            rp["p_value"] = floor(float(_st.fisher_exact(table, alternative="greater")[1])) if both_wrong else 1.0
        p = max(rp["p_value"] for rp in ref_pairs)
        rate = max(rp["same_wrong"] / rp["both_wrong"] for rp in ref_pairs)
        qs = [rate] * both_wrong
    return SharedMistakes(n_items=len(items), a_wrong=a_wrong, b_wrong=b_wrong, both_wrong=both_wrong,
                          same_wrong=same, expected_same_wrong=float(sum(qs)), scored=scored, p_value=p,
                          both_right=both_right, examples=examples, null=null, reference_pairs=ref_pairs)


def _reference_pairs(items: Sequence[ProbeItem], norm_a: Mapping[str, str], norm_b: Mapping[str, str],
                     refs: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """For each (A or B, reference) pair: items both got wrong and how many of those with the same answer."""
    out: list[dict[str, Any]] = []
    for side, ans in (("a", norm_a), ("b", norm_b)):
        for j, r in enumerate(refs):
            n = k = 0
            for it in items:
                if it.id not in ans or it.id not in r:
                    continue
                right = normalize_answer(it.answer)
                if ans[it.id] != right and r[it.id] != right:
                    n += 1
                    k += ans[it.id] == r[it.id]
            if n:
                out.append({"pair": f"{side}-ref{j}", "both_wrong": n, "same_wrong": k})
    return out
