"""`config-match`: normalized hyperparameters, family, peculiar fields, and references to A in B's config."""

from __future__ import annotations

from typing import Any, ClassVar

from modeltrace.artifacts.config import ConfigInfo, auto_map_modules, auto_map_repos, is_peculiar, read_config
from modeltrace.artifacts.refs import a_module_names, names_of, points_at
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Kind
from modeltrace.textsafe import escape

NULL_CONFIG = "B's configuration was written independently of A's (no copied fields or references)"


class ConfigMatchMethod(EvidenceMethod):
    """Compare configs field by field after normalizing naming schemes; flag peculiar fields and references.

    Descriptive: equal hyperparameters are expected of any two models of one architecture, so no
    p-value is given. What counts is (a) fields that almost no architecture defines (counted over
    the configuration classes of `transformers`) shared with equal values, and (b) `auto_map` or
    `_name_or_path` entries of B that point at A's own modules or name: direct evidence that B's
    files were made from A's.
    """

    name: ClassVar[str] = "config-match"
    kind: ClassVar[Kind] = "artifacts"
    summary: ClassVar[str] = "normalized config fields, peculiar fields and references to A's modules or name"
    reference: ClassVar[str] = "Llama3-V / MiniCPM-Llama3-V 2.5 dispute (OpenBMB/MiniCPM-V issue #196, 2024)"
    null_hypothesis: ClassVar[str] = NULL_CONFIG
    stage: ClassVar[int] = 30

    def needs(self, ctx: CompareContext) -> str | None:
        for side, m in (("A", ctx.a), ("B", ctx.b)):
            has_config = m.file("config.json") is not None  # parsed in run(), where a bad file becomes a finding
            if not has_config and not any(p.suffix == ".gguf" for p in m.weight_files):
                return f"{side} has no config.json and no GGUF header to read a config from"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        ca, cb = read_config(ctx.a), read_config(ctx.b)
        if ca is None or cb is None:
            return Evidence.skipped(self.name, "a config could not be read", kind=self.kind)
        return self.compare(ca, cb, ctx)

    def compare(self, ca: ConfigInfo, cb: ConfigInfo, ctx: CompareContext) -> Evidence:
        keys = sorted(set(ca.normalized) & set(cb.normalized))
        equal = [k for k in keys if ca.normalized[k] == cb.normalized[k]]
        differ = {k: [ca.normalized[k], cb.normalized[k]] for k in keys if k not in equal}
        frac = len(equal) / len(keys) if keys else 0.0
        peculiar_shared: dict[str, Any] = {}
        peculiar_differ: dict[str, Any] = {}
        # GGUF keys are a fixed llama.cpp vocabulary: rarity is judged on config.json fields only
        both_hf = ca.source == "config.json" and cb.source == "config.json"
        for k in sorted(set(ca.raw) & set(cb.raw)) if both_hf else []:
            if not is_peculiar(k):
                continue
            if ca.raw[k] == cb.raw[k]:
                peculiar_shared[k] = ca.raw[k]
            else:
                peculiar_differ[k] = [ca.raw[k], cb.raw[k]]
        a_modules = a_module_names(ctx.a)
        refs: list[str] = []
        notes: list[str] = []
        for module in auto_map_modules(cb.auto_map):
            if module in a_modules:
                shipped = ctx.b.file(module + ".py") is not None
                refs.append(f"B's config.json auto_map points at A's module {escape(module)}"
                            + ("" if shipped else " (which B does not ship)"))
        for repo in auto_map_repos(cb.auto_map):
            if points_at(repo, names_of(ctx.a, ca.name_or_path)):
                refs.append(f"B's config.json auto_map loads code from {escape(repo)}, A's repository")
        if cb.name_or_path and points_at(cb.name_or_path, names_of(ctx.a, None)):
            refs.append(f"B's config.json _name_or_path is {escape(cb.name_or_path)}, A's name")
        elif cb.name_or_path and ca.name_or_path and points_at(cb.name_or_path, names_of(ctx.a, ca.name_or_path)):
            notes.append(f"B's config.json _name_or_path {escape(cb.name_or_path)} is A's own _name_or_path "
                         "(A's name, or a base model both start from)")
        same_family = ca.family is not None and ca.family == cb.family
        parts = [f"{len(equal)}/{len(keys)} normalized hyperparameters equal"]
        parts.append(f"family {escape(ca.family)} / {escape(cb.family)}" if not same_family
                     else f"same family {escape(ca.family)}")
        if peculiar_shared:
            parts.append(f"{len(peculiar_shared)} peculiar field(s) shared with equal values ("
                         + ", ".join(escape(f"{k}={v}") for k, v in list(peculiar_shared.items())[:8]) + ")")
        statement = "; ".join(refs + parts + notes)
        details = {
            "family": {"a": ca.family, "b": cb.family},
            "architectures": {"a": list(ca.architectures), "b": list(cb.architectures)},
            "normalized": {"a": ca.normalized, "b": cb.normalized, "equal": equal, "differ": differ},
            "peculiar_shared": peculiar_shared, "peculiar_differ": peculiar_differ,
            "references_to_a": refs, "notes": notes,
            "auto_map": {"a": ca.auto_map, "b": cb.auto_map},
            "name_or_path": {"a": ca.name_or_path, "b": cb.name_or_path},
            "strong_signal": bool(refs or peculiar_shared),
            "sources": {"a": ca.source, "b": cb.source},
            "why_no_p_value": "equal hyperparameters are expected of any two models of one architecture, and no "
                              "null distribution of config fields over independent models exists",
        }
        return Evidence(method=self.name, status="ok", statement=statement, null_hypothesis=self.null_hypothesis,
                        statistic=round(frac, 4), p_value=None, kind=self.kind, powered=False, details=details)
