"""`code-clone`: winnowed syntax-tree fingerprints of two models' Python files, never imported or run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from modeltrace.artifacts.code import (
    CloneBudget,
    FilePairSimilarity,
    compare_code,
    load_files,
    null_sample,
    pair_p,
    rename_map,
)
from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Kind
from modeltrace.model import Model
from modeltrace.textsafe import escape

NULL_CODE = "B's Python code was written independently of A's"
MAX_REPORTED_PAIRS = 10
MAX_REPORTED_REGIONS = 8
SNIPPETS, SNIPPET_LINES = 2, 40  # the largest clone regions, as text, so a report can show them side by side
CLONE_ALPHA = 0.01  # file pairs this unlikely under the null feed the rename map and regions


def powered_threshold(ctx: CompareContext) -> float:
    """The verdict threshold of this compare (`--threshold`): a test whose smallest possible p-value is
    above it cannot decide on its own, so it reports powered=False."""
    from modeltrace.compare import DEFAULT_THRESHOLD

    return float(ctx.options.get("threshold", DEFAULT_THRESHOLD))


def _files(model: Model, extra: list[str]) -> list[tuple[Path, str]]:
    out = [(p, str(p.relative_to(model.root))) for p in model.code_files]
    for e in extra:
        p = Path(e)
        if p.is_dir():
            out.extend((q, str(q.relative_to(p.parent))) for q in sorted(p.rglob("*.py")) if q.is_file())
        elif p.is_file():
            out.append((p, p.name))
    return out


def _extra(options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """ctx.options["code"]: {"a": [...], "b": [...]}, or a list of paths ("a=PATH" / "b=PATH"; bare: B)."""
    spec = options.get("code")
    if not spec:
        return [], []
    if isinstance(spec, dict):
        return [str(x) for x in spec.get("a", [])], [str(x) for x in spec.get("b", [])]
    items = [spec] if isinstance(spec, str) else list(spec)
    a = [str(s)[2:] for s in items if str(s).startswith("a=")]
    b = [str(s).removeprefix("b=") for s in items if not str(s).startswith("a=")]
    return a, b


class CodeCloneMethod(EvidenceMethod):
    """Find copied code between A's and B's Python files despite renaming, reformatting and reordering.

    Winnowing over normalized syntax-tree tokens (Schleimer, Wilkerson & Aiken, SIGMOD 2003; MOSS).
    Null hypothesis: B's code was written independently of A's. The statistic of a file pair is
    the number of tokens inside verified shared k-grams on the side that shares less; its null
    distribution is measured on independently written modelling files of `transformers`
    (bench/bench_code_clones.py). p = (1 + #null pairs >= observed) / (N + 1), Bonferroni-corrected
    over the file pairs compared; its floor is therefore set by the size of that null sample.
    """

    name: ClassVar[str] = "code-clone"
    kind: ClassVar[Kind] = "artifacts"
    summary: ClassVar[str] = "copied modelling code found by winnowed syntax-tree fingerprints"
    reference: ClassVar[str] = ("Schleimer, Wilkerson & Aiken, Winnowing: Local Algorithms for Document "
                                "Fingerprinting, SIGMOD 2003")
    null_hypothesis: ClassVar[str] = NULL_CODE
    stage: ClassVar[int] = 30

    def needs(self, ctx: CompareContext) -> str | None:
        ea, eb = _extra(ctx.options)
        for side, m, extra in (("A", ctx.a, ea), ("B", ctx.b, eb)):
            if not m.code_files and not extra:
                return f"{side} ships no Python files (give more with the code option)"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        ea, eb = _extra(ctx.options)
        budget = CloneBudget()  # one budget of size, count and time for the whole method (artifacts.code)
        prints_a, skipped_a = load_files(_files(ctx.a, ea), budget)
        prints_b, skipped_b = load_files(_files(ctx.b, eb), budget)
        skipped = [f"A: {s}" for s in skipped_a] + [f"B: {s}" for s in skipped_b]
        if not prints_a or not prints_b:
            return Evidence.skipped(self.name, "no parseable Python files on one side: " + "; ".join(
                escape(s) for s in skipped[:4]), kind=self.kind)
        cmp = compare_code(prints_a, prints_b, skipped, budget)
        null = null_sample()
        n_pairs = cmp.n_pairs
        if not cmp.pairs:
            return Evidence(method=self.name, status="ok", statement=f"no shared code: none of the {n_pairs} file "
                            "pair(s) shares a fingerprint", null_hypothesis=self.null_hypothesis, statistic=0.0,
                            p_value=1.0, kind=self.kind, powered=False,
                            details={"pairs": [], "clone_regions": [], "rename_map": {},
                                     "files": {"a": cmp.n_files_a, "b": cmp.n_files_b}, "pairs_compared": n_pairs,
                                     "skipped_files": [escape(s) for s in cmp.skipped[:50]]})
        p_pairs = [pair_p(q, null) for q in cmp.pairs]
        if p_pairs[0] is not None:
            order = sorted(range(len(cmp.pairs)), key=lambda i: (p_pairs[i] or 1.0, -cmp.pairs[i].matched))
        else:
            order = list(range(len(cmp.pairs)))
        best = cmp.pairs[order[0]]
        p_best = p_pairs[order[0]]
        p = None if p_best is None else min(1.0, p_best * n_pairs)
        clones = [cmp.pairs[i] for i in order if (p_pairs[i] or 1.0) <= CLONE_ALPHA] or [best]
        renames = rename_map(q.renames for q in clones)
        regions = sorted((r for q in clones for r in q.regions), key=lambda r: -r.tokens)[:MAX_REPORTED_REGIONS]
        floor = 2.0 / (len(null[0]) + 1) * n_pairs if null[0] else None
        clone_found = any(q is not None and q <= CLONE_ALPHA for q in p_pairs)
        statement = self._statement(best, clones, clone_found, renames, n_pairs, regions)
        details: dict[str, Any] = {
            "pairs": [self._pair(cmp.pairs[i], p_pairs[i]) for i in order[:MAX_REPORTED_PAIRS]],
            "clone_regions": [r.to_json() for r in regions],
            "rename_map": {escape(k, 80): escape(v, 80) for k, v in list(renames.items())[:200]},
            "files": {"a": cmp.n_files_a, "b": cmp.n_files_b}, "pairs_compared": n_pairs,
            "skipped_files": [escape(s) for s in cmp.skipped[:50]],
            "clone_snippets": _snippets(regions[:SNIPPETS], _files(ctx.a, ea), _files(ctx.b, eb)),
            "null": {"pairs": len(null[0]), "source": "modeltrace/artifacts/data/code_clone_null.json",
                     "p_floor": floor} if null[0] else None,
            "p_value_method": "per file pair 2 * min(p of matched tokens, p of shared fraction) against "
                              "independent transformers files, then times the number of pairs (Bonferroni)",
        }
        return Evidence(method=self.name, status="ok", statement=statement, null_hypothesis=self.null_hypothesis,
                        statistic=best.similarity, p_value=p, kind=self.kind,
                        powered=floor is not None and floor <= powered_threshold(ctx), details=details)

    @staticmethod
    def _pair(q: FilePairSimilarity, p: float | None) -> dict[str, Any]:
        return {"a": escape(q.a_file), "b": escape(q.b_file), "similarity": q.similarity, "matched_tokens": q.matched,
                "tokens": {"a": q.a_tokens, "b": q.b_tokens}, "shared_fingerprints": q.shared_fingerprints,
                "p_uncorrected": p}

    @staticmethod
    def _statement(best: FilePairSimilarity, clones: list[FilePairSimilarity], p_pairs_ok: bool,
                   renames: dict[str, str], n_pairs: int, regions: list[Any]) -> str:
        s = (f"{escape(best.b_file)} shares {best.similarity:.0%} of its normalized code with {escape(best.a_file)} "
             f"({best.matched} tokens; best of {n_pairs} file pair(s))")
        others = [q for q in clones if q is not best]
        if p_pairs_ok and others:
            s += "; also " + ", ".join(f"{escape(q.b_file)} with {escape(q.a_file)} ({q.similarity:.0%})"
                                       for q in others[:3])
            if len(others) > 3:
                s += f" and {len(others) - 3} more pair(s)"
        if regions:
            r = regions[0]
            s += f"; largest clone region {escape(r.a_file)}:{r.a_lines[0]}-{r.a_lines[1]} vs " \
                 f"{escape(r.b_file)}:{r.b_lines[0]}-{r.b_lines[1]}"
        if renames:
            shown = list(renames.items())[:4]
            s += "; renamed identifiers " + ", ".join(f"{escape(a, 40)} -> {escape(b, 40)}" for a, b in shown)
            if len(renames) > 4:
                s += f" and {len(renames) - 4} more"
        return s


def _snippets(regions: list[Any], files_a: list[tuple[Path, str]], files_b: list[tuple[Path, str]]) -> list[dict[str, Any]]:
    """The source lines of each region on both sides (descriptive, capped; never run, escaped by reporters)."""
    from modeltrace.artifacts.code import MAX_FILE_BYTES
    from modeltrace.artifacts.files import read_bytes

    def text(files: list[tuple[Path, str]], label: str, lines: tuple[int, int]) -> str | None:
        path = next((p for p, lab in files if lab == label), None)
        if path is None:
            return None
        src = read_bytes(path, MAX_FILE_BYTES).decode("utf-8", "replace").splitlines()
        return "\n".join(src[lines[0] - 1:min(lines[1], lines[0] - 1 + SNIPPET_LINES)])

    out = []
    for r in regions:
        ta, tb = text(files_a, r.a_file, r.a_lines), text(files_b, r.b_file, r.b_lines)
        if ta is not None and tb is not None:
            out.append({**r.to_json(), "a_first_line": r.a_lines[0], "b_first_line": r.b_lines[0],
                        "a_text": ta, "b_text": tb})
    return out
