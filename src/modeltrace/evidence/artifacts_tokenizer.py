"""`tokenizer-match`: vocabularies, merges, added tokens, chat templates and tokenizer-config references."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from modeltrace.artifacts.bases import BaseMatch, known_bases
from modeltrace.artifacts.chat_template import MAX_COMPARE_CHARS, SHINGLE, compare_templates
from modeltrace.artifacts.config import auto_map_modules, auto_map_repos, read_config
from modeltrace.artifacts.refs import a_module_names, names_of, points_at
from modeltrace.artifacts.tokenizer import Tokenizer, read_tokenizer
from modeltrace.artifacts.tokenizer_compare import TokenizerComparison, compare_tokenizers, id_ranges
from modeltrace.errors import ModelTraceError
from modeltrace.evidence.artifacts_code import powered_threshold
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Kind
from modeltrace.textsafe import escape

NULL_TOKENIZER = ("B chose its custom added tokens independently of A, so their order (hence their ids) "
                  "is unrelated to A's")


def _base(m: BaseMatch | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"name": m.base.name, "exact_hash": m.exact,
            "containment": None if m.containment != m.containment else round(m.containment, 4),
            "used_by": m.base.used_by}


class TokenizerMatchMethod(EvidenceMethod):
    """Compare tokenizers as data and weigh what is shared by how rare it is.

    A known, widely shared base tokenizer shared by A and B is no evidence (no p-value). Custom
    added tokens with the same strings at the same ids are: the p-value is the chance that a random
    order of B's shared custom tokens puts at least as many at A's ids (`fixed_point_p`), which is
    conservative; it is given only when both tokenizers sit on one known base, since otherwise the
    shared added tokens may be an unlisted base's own. References in B's tokenizer config to A's own
    modules are reported as direct evidence.
    """

    name: ClassVar[str] = "tokenizer-match"
    kind: ClassVar[Kind] = "artifacts"
    summary: ClassVar[str] = "vocabulary overlap, merge order, added tokens at the same ids, chat templates"
    reference: ClassVar[str] = "Llama3-V / MiniCPM-Llama3-V 2.5 dispute (OpenBMB/MiniCPM-V issue #196, 2024)"
    null_hypothesis: ClassVar[str] = NULL_TOKENIZER
    stage: ClassVar[int] = 30

    def needs(self, ctx: CompareContext) -> str | None:
        for side, m in (("A", ctx.a), ("B", ctx.b)):
            tiktoken = not m.single_file and any(p.is_file() for p in m.root.glob("*.tiktoken"))
            if not m.tokenizer_files and not tiktoken and not any(p.suffix == ".gguf" for p in m.weight_files):
                return f"{side} ships no tokenizer files and no GGUF tokenizer"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        ta, tb = read_tokenizer(ctx.a), read_tokenizer(ctx.b)
        if ta is None or tb is None:
            side = "A" if ta is None else "B"
            return Evidence.skipped(self.name, f"{side} has no tokenizer to read", kind=self.kind)
        extra = ctx.options.get("tokenizer_bases")  # more BaseTokenizer entries, on top of the shipped table
        cmp = compare_tokenizers(ta, tb, known_bases() + tuple(extra) if extra else None)
        refs = self._references(ctx, tb)
        return self._evidence(ta, tb, cmp, refs, powered_threshold(ctx))

    def _references(self, ctx: CompareContext, tb: Tokenizer) -> list[str]:
        a_modules = a_module_names(ctx.a)
        out = []
        for module in auto_map_modules(tb.auto_map):
            if module in a_modules:
                shipped = ctx.b.file(module + ".py") is not None
                out.append(f"B's tokenizer config points at A's module {escape(module)}"
                           + ("" if shipped else " (which B does not ship)"))
        repos = auto_map_repos(tb.auto_map)
        if repos:
            try:
                cfg = read_config(ctx.a)
            except ModelTraceError:
                cfg = None
            a_names = names_of(ctx.a, cfg.name_or_path if cfg else None)
            out.extend(f"B's tokenizer config loads code from {escape(r)}, A's repository"
                       for r in repos if points_at(r, a_names))
        return out

    def _evidence(self, ta: Tokenizer, tb: Tokenizer, cmp: TokenizerComparison, refs: list[str],
                  threshold: float) -> Evidence:
        parts = list(refs)
        custom_same = cmp.custom_same_id
        base_name = cmp.base_a.base.name if cmp.base_a and cmp.base_b and \
            cmp.base_a.base.name == cmp.base_b.base.name else None
        if custom_same:
            parts.append(f"B adds the same {len(custom_same)} custom token(s) at the same ids as A (ids "
                         f"{id_ranges([s.id_a for s in custom_same])}: "
                         + " ".join(escape(s.content, 40) for s in custom_same[:16])
                         + (" ..." if len(custom_same) > 16 else "") + ")")
        moved = [s for s in cmp.shared_added if s.custom and s.id_a != s.id_b]
        if moved:
            parts.append(f"{len(moved)} custom token(s) shared at different ids")
        if cmp.identical_vocab:
            parts.append(f"identical vocabularies ({cmp.size_a} tokens)")
        else:
            parts.append(f"vocabulary overlap {cmp.jaccard:.3f} (Jaccard), {cmp.same_id_fraction:.3f} of shared "
                         "tokens at the same id")
        if base_name:
            parts.append(f"both built on the widely shared {base_name} base, which by itself proves nothing")
        elif cmp.identical_vocab:
            parts.append("the vocabulary is not in the table of widely shared bases: B reuses A's tokenizer, or "
                         "both reuse one not listed (so shared added tokens get no p-value)")
        elif custom_same:
            parts.append("no known base identified, so the shared added tokens may be a common base's own "
                         "(no p-value)")
        if cmp.merges_a and cmp.merges_b:
            parts.append(f"first {cmp.merge_prefix} of {min(cmp.merges_a, cmp.merges_b)} merges identical")
        template: dict[str, Any] | None = None
        if ta.chat_template and tb.chat_template:
            tc = compare_templates(ta.chat_template, tb.chat_template)
            template = {"identical_raw": tc.identical_raw, "identical_normalized": tc.identical_normalized,
                        "similarity": tc.similarity, "sha256_a": tc.sha256_a, "sha256_b": tc.sha256_b,
                        "style_a": tc.style_a, "style_b": tc.style_b, "truncated": tc.truncated,
                        "similarity_method": f"Dice coefficient of {SHINGLE}-character shingles of the normalized "
                                             f"templates (their first {MAX_COMPARE_CHARS} characters)"}
            if tc.identical_normalized:
                parts.append("identical chat templates after normalization"
                             + (f" (the common {tc.style_a} style)" if tc.style_a else ""))
            else:
                parts.append(f"chat templates {tc.similarity:.2f} alike after normalization")
        p = cmp.p_value
        details: dict[str, Any] = {
            "kind": {"a": ta.kind, "b": tb.kind}, "sources": {"a": list(ta.sources), "b": list(tb.sources)},
            "vocab_size": {"a": cmp.size_a, "b": cmp.size_b}, "shared_tokens": cmp.shared_tokens,
            "jaccard": cmp.jaccard, "same_id_fraction": cmp.same_id_fraction, "identical_vocab": cmp.identical_vocab,
            "merges": {"a": cmp.merges_a, "b": cmp.merges_b, "identical_prefix": cmp.merge_prefix,
                       # for reports, when the lists part: the first merges where they do
                       **({"first_differing": {side: [escape(m, 80) for m in
                                                      t.merges[cmp.merge_prefix:cmp.merge_prefix + 5]]
                                               for side, t in (("a", ta), ("b", tb))}}
                          if cmp.merge_prefix < max(cmp.merges_a, cmp.merges_b) else {})},
            "base": {"a": _base(cmp.base_a), "b": _base(cmp.base_b)},
            "added_tokens_side_by_side": [
                {"content": escape(s.content, 80), "id_a": s.id_a, "id_b": s.id_b, "custom": s.custom, "why": s.why}
                for s in cmp.shared_added[:2000]],
            "added_only_a": [[i, escape(c, 80)] for i, c in cmp.only_a[:500]],
            "added_only_b": [[i, escape(c, 80)] for i, c in cmp.only_b[:500]],
            "custom_units": cmp.units, "custom_units_same_ids": cmp.units_same_ids,
            "special_tokens": {"a": {k: escape(v, 80) for k, v in ta.special_tokens.items()},
                               "b": {k: escape(v, 80) for k, v in tb.special_tokens.items()}},
            "tokenizer_class": {"a": ta.tokenizer_class, "b": tb.tokenizer_class},
            "references_to_a": refs, "chat_template": template,
            "p_value_method": "fixed points of a uniformly random order of the shared custom-token units "
                              "(an <x> </x> pair is one unit); None when fewer than 2 units are shared or "
                              "when no known base tells custom tokens from the base's own",
        }
        return Evidence(method=self.name, status="ok", statement="; ".join(parts),
                        null_hypothesis=self.null_hypothesis, statistic=float(len(custom_same)), p_value=p,
                        kind=self.kind, powered=p is not None and cmp.units > 0 and
                        -math.lgamma(cmp.units + 1) <= math.log(threshold), details=details)
