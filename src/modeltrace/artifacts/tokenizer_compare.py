"""Two tokenizers side by side, with what they share weighed by how rare it is.

A shared base vocabulary (BERT's, Llama-3's, Qwen's) proves little: thousands of unrelated
models ship one. Custom added tokens that are the same strings at the same ids prove a lot.
The p-value here tests only the ids of the shared custom tokens (see `fixed_point_p`), and only
when both tokenizers are built on one known base: otherwise the shared added tokens may be that
unknown base's own, and no p-value is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modeltrace.artifacts.bases import PLACEHOLDER, BaseMatch, BaseTokenizer, identify_base
from modeltrace.artifacts.tokenizer import Tokenizer
from modeltrace.stats.nulls import fixed_point_tail

# Special tokens so common that sharing one (at any id) says nothing.
UBIQUITOUS = frozenset({"<s>", "</s>", "<unk>", "<pad>", "<mask>", "<eos>", "<bos>", "[PAD]", "[UNK]", "[CLS]",
                        "[SEP]", "[MASK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|padding|>",
                        "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                        "<|end_header_id|>", "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>",
                        "<|system|>", "<|end|>", "<|pad|>", "<cls>", "<sep>"})


@dataclass(frozen=True)
class SharedAdded:
    """An added token present in both tokenizers with the same content."""

    content: str
    id_a: int
    id_b: int
    custom: bool  # not the base's own token at that id, not a placeholder, not ubiquitous
    why: str


@dataclass(frozen=True)
class TokenizerComparison:
    """Everything `tokenizer-match` reports, computed from two parsed tokenizers."""

    size_a: int
    size_b: int
    shared_tokens: int
    jaccard: float
    same_id_fraction: float  # among tokens in both vocabularies
    identical_vocab: bool
    merges_a: int
    merges_b: int
    merge_prefix: int  # identical leading merges
    base_a: BaseMatch | None
    base_b: BaseMatch | None
    shared_added: tuple[SharedAdded, ...]
    only_a: tuple[tuple[int, str], ...]
    only_b: tuple[tuple[int, str], ...]
    units: int  # custom shared tokens grouped into units (an <x> </x> pair is one unit)
    units_same_ids: int
    p_value: float | None

    @property
    def custom_same_id(self) -> tuple[SharedAdded, ...]:
        return tuple(s for s in self.shared_added if s.custom and s.id_a == s.id_b)


def fixed_point_p(units: int, matched: int) -> float | None:
    """P(a uniformly random order of `units` items leaves at least `matched` of them in place).

    Null hypothesis: B's developers chose these custom tokens independently of A; granting even
    that they chose the same strings, the ids follow from the order in which B lists them, and
    every order is equally likely. Conservative: it ignores that B also had to choose the same
    starting id (or the same reserved slots) as A, and it counts an <x> </x> pair as one unit.

    This is the fixed-point law of `modeltrace.stats.nulls` with all `units` of `units` items
    matched (m = n): exact up to `nulls.EXACT_LIMIT` units, Markov's bound C(u, k) (u-k)!/u! = 1/k!
    above it (valid, conservative), so memory and time stay bounded for any number of tokens.
    """
    if units < 2 or matched < 1:
        return None
    return fixed_point_tail(matched, units, units)


def _why_standard(content: str, tid: int, base: BaseTokenizer | None) -> str | None:
    if base is not None and base.standard_added.get(tid) == content:
        return f"the {base.name} base's own token at this id"
    if PLACEHOLDER.match(content):
        return "a numbered placeholder"
    if content in UBIQUITOUS and (base is None or content in base.standard_added.values()):
        return "a special token most tokenizers carry"
    return None


def _units(tokens: list[SharedAdded]) -> list[list[SharedAdded]]:
    """Group custom tokens: a closing </x> joins the unit of its <x> when both are present."""
    by_content = {t.content: t for t in tokens}
    units: dict[str, list[SharedAdded]] = {}
    for t in sorted(tokens, key=lambda x: x.id_a):
        m = re.fullmatch(r"</(.+)>", t.content)
        opener = f"<{m.group(1)}>" if m else None
        if opener is not None and opener in by_content:
            units.setdefault(opener, []).append(t)
        else:
            units.setdefault(t.content, []).append(t)
    return list(units.values())


def compare_tokenizers(ta: Tokenizer, tb: Tokenizer, bases: tuple[BaseTokenizer, ...] | None = None
                       ) -> TokenizerComparison:
    va, vb = ta.full_vocab(), tb.full_vocab()
    shared = va.keys() & vb.keys()
    same_id = sum(va[t] == vb[t] for t in shared)
    union = len(va.keys() | vb.keys())
    prefix = 0
    for ma, mb in zip(ta.merges, tb.merges):
        if ma != mb:
            break
        prefix += 1
    base_a, base_b = identify_base(ta, bases), identify_base(tb, bases)
    base = base_a.base if base_a and base_b and base_a.base.name == base_b.base.name else None
    added_a = {t.content: t.id for t in ta.added_tokens}
    added_b = {t.content: t.id for t in tb.added_tokens}
    shared_added: list[SharedAdded] = []
    for content in sorted(added_a.keys() & added_b.keys(), key=lambda c: added_a[c]):
        ia, ib = added_a[content], added_b[content]
        why = _why_standard(content, ia, base)
        shared_added.append(SharedAdded(content=content, id_a=ia, id_b=ib, custom=why is None,
                                        why=why or "custom: not part of a known base"))
    custom = [s for s in shared_added if s.custom]
    units = _units(custom)
    matched = sum(all(t.id_a == t.id_b for t in u) for u in units)
    only_a = tuple(sorted((i, c) for c, i in added_a.items() if c not in added_b))
    only_b = tuple(sorted((i, c) for c, i in added_b.items() if c not in added_a))
    return TokenizerComparison(
        size_a=len(va), size_b=len(vb), shared_tokens=len(shared),
        jaccard=round(len(shared) / union, 6) if union else 0.0,
        same_id_fraction=round(same_id / len(shared), 6) if shared else 0.0,
        identical_vocab=va == vb, merges_a=len(ta.merges), merges_b=len(tb.merges), merge_prefix=prefix,
        base_a=base_a, base_b=base_b, shared_added=tuple(shared_added), only_a=only_a[:1000], only_b=only_b[:1000],
        units=len(units), units_same_ids=matched,
        # without a known base there is no telling custom tokens from a base's own: no p-value
        p_value=fixed_point_p(len(units), matched) if base is not None else None)


def id_ranges(ids: list[int]) -> str:
    """128002, 128010-128021 style."""
    out: list[str] = []
    s = sorted(set(ids))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ", ".join(out)
