"""`tensor-names`: module-prefix renames between A's and B's checkpoint keys."""

from __future__ import annotations

from typing import ClassVar

from modeltrace.artifacts.names import RenameReport, patterns_from_map, rename_patterns
from modeltrace.errors import FormatError
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Kind
from modeltrace.textsafe import escape


class TensorNamesMethod(EvidenceMethod):
    """Prefix maps (`vpm.` -> `vison.`) and whether every sub-key under a renamed prefix is unchanged.

    Descriptive, no p-value: two independent models built with the same code have the same tensor
    names, so equal sub-keys show a shared architecture, not shared weights. The rename pattern
    matters as context for the weight evidence and as a sign of deliberate relabelling.
    """

    name: ClassVar[str] = "tensor-names"
    kind: ClassVar[Kind] = "artifacts"
    summary: ClassVar[str] = "module-prefix renames between checkpoint keys, sub-keys compared"
    reference: ClassVar[str] = "Llama3-V / MiniCPM-Llama3-V 2.5 dispute (OpenBMB/MiniCPM-V issue #194, 2024)"
    null_hypothesis: ClassVar[str] = "B's checkpoint keys were named independently of A's"
    stage: ClassVar[int] = 30

    def needs(self, ctx: CompareContext) -> str | None:
        if ctx.rename_map:
            return None
        for side, m in (("A", ctx.a), ("B", ctx.b)):
            if not m.weight_files:
                return f"{side} has no weight files to read tensor names from"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        report: RenameReport | None = None
        source = "tensor-name lists"
        if ctx.a.weight_files and ctx.b.weight_files:
            try:
                report = rename_patterns(ctx.a.source.infos(), ctx.b.source.infos())
            except FormatError:
                if not ctx.rename_map:
                    raise
        from_map = patterns_from_map(ctx.rename_map) if ctx.rename_map else None
        if report is None or (from_map is not None and not report.renamed and from_map.renamed):
            report, source = from_map, "the weight matching's rename map"
        assert report is not None
        renamed = report.renamed
        parts = []
        if renamed:
            parts.append("renamed prefixes " + ", ".join(
                f"{escape(p.a_prefix, 60)} -> {escape(p.b_prefix, 60)}"
                + (" (every sub-key unchanged)" if p.all_unchanged else f" ({p.n_shared}/{max(p.n_a, p.n_b)} "
                   "sub-keys unchanged)") for p in renamed[:12]))
        if report.kept:
            parts.append("kept prefixes " + ", ".join(escape(p.a_prefix, 60) for p in report.kept[:12]))
        parts.append(f"{report.n_identical_names}/{report.n_a} of A's tensor names appear unchanged in B")
        all_unchanged = bool(renamed) and all(p.all_unchanged for p in renamed)
        details = {
            "source": source, "renamed": [p.to_json() for p in renamed], "kept": [p.to_json() for p in report.kept],
            "n_a": report.n_a, "n_b": report.n_b, "identical_names": report.n_identical_names,
            "covered_by_prefix_maps": report.covered, "all_renamed_sub_keys_unchanged": all_unchanged,
            "why_no_p_value": "models built from the same code share tensor names whether or not they share weights",
        }
        stat = report.covered / max(report.n_b, 1)
        return Evidence(method=self.name, status="ok", statement="; ".join(parts),
                        null_hypothesis=self.null_hypothesis, statistic=round(stat, 4), p_value=None, kind=self.kind,
                        powered=False, details=details)
