"""The report as a renderer-neutral document: sections of paragraphs, tables and pictures.

HTML and Markdown render the same `Document`, so both carry the same sections in the same order.
All text here is still raw (untrusted names included); each renderer escapes it for its syntax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from modeltrace.report.model import Report
from modeltrace.report.plots import Plot, all_plots
from modeltrace.report.summary import detection_sentence, fmt_p, p_is, summary
from modeltrace.textsafe import escape

Mark = Literal["", "same", "diff", "hl", "muted", "mono"]
MAX_ROWS = 200


@dataclass(frozen=True)
class Cell:
    """A table cell: text plus an optional mark (same/diff/hl colouring, muted, monospace)."""

    text: str
    mark: Mark = ""
    span: tuple[int, int] | None = None  # the part of `text` to highlight (a renamed prefix)


@dataclass(frozen=True)
class Para:
    """A paragraph; `lead` is the verdict line, `note` a muted remark (why a section is empty)."""

    text: str
    style: Literal["", "lead", "note"] = ""


@dataclass(frozen=True)
class Table:
    """Rows of cells under headers; `fold` when it is long (HTML shows it folded)."""

    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str = ""
    kind: str = ""  # a style hook: "evidence"
    fold: bool = False  # long: shown folded (HTML <details>), open in Markdown


@dataclass(frozen=True)
class Image:
    """A picture from `plots`."""

    plot: Plot


@dataclass(frozen=True)
class CodePair:
    """Two code excerpts side by side; identifiers in `marks_a` / `marks_b` are highlighted."""

    title_a: str
    title_b: str
    lines_a: tuple[str, ...]
    lines_b: tuple[str, ...]
    first_a: int
    first_b: int
    marks_a: frozenset[str]
    marks_b: frozenset[str]


Block = Para | Table | Image | CodePair


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    verdict: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


def _c(v: object, mark: Mark = "") -> Cell:
    return Cell("-" if v is None else str(v), mark)


FOLD_ROWS = 24


def _table(headers: list[str], rows: list[list[Cell]], caption: str = "", kind: str = "") -> Table:
    cut = len(rows) - MAX_ROWS
    shown = rows[:MAX_ROWS]
    if cut > 0:
        caption = (caption + " " if caption else "") + f"({cut} more row(s) in the JSON.)"
    return Table(tuple(headers), tuple(tuple(r) for r in shown), caption, kind, fold=len(shown) > FOLD_ROWS)


def _renamed(a: str, b: str) -> tuple[Cell, Cell]:
    """A's and B's names, with the part of B's name that differs highlighted (common suffix kept plain)."""
    k = 0
    while k < min(len(a), len(b)) and a[len(a) - 1 - k] == b[len(b) - 1 - k]:
        k += 1
    j = len(b) - k
    if 0 < j < len(b) and b[j] == ".":  # end the highlight on a name boundary
        j += 1
    return Cell(a, "mono"), Cell(b, "mono", (0, j) if j > 0 else None)


def build(report: Report, with_plots: bool = True) -> Document:
    """The whole report, in the order a reader needs it."""
    plots = all_plots(report) if with_plots else {"layers": [], "delta": [], "finetune": [], "null": []}
    sections = [
        _verdict(report), _evidence(report), _controls(report), _transforms(report),
        _pictures("layers", "Layer correspondence", plots["layers"], _layer_table(report),
                  "No layer correspondence: the weight tests did not run on these models."),
        _pictures("delta", "B - A against the fitted noise", plots["delta"], None,
                  "No tensor pairs of equal shape were compared, so there is no B - A to show."),
        _pictures("finetune", "Fine-tune delta sizes per tensor", plots["finetune"], None,
                  "No changed tensor pairs were compared."),
        _config(report), _tokenizer(report), _code(report), _renames(report),
        _pictures("null", "What unrelated models score: null distributions", plots["null"], None,
                  "No test with a known null distribution ran; the descriptive findings above have none."),
        _provenance(report),
    ]
    return Document(title=f"modeltrace: is {_short(report.b)} derived from {_short(report.a)}?", verdict=report.verdict,
                    sections=tuple(s for s in sections if s is not None))


def _short(ref: str) -> str:
    """A model's name for a title: the last part of a path, the whole of anything else (hf:org/name)."""
    if ref.startswith(("hf:", "http:", "https:", "openai:")):
        return ref
    return ref.rstrip("/").rsplit("/", 1)[-1] or ref


def _verdict(r: Report) -> Section:
    sentences = summary(r)
    blocks: list[Block] = [Para(f"Verdict: {r.verdict.upper()} (combined {p_is(r.p_value)}, threshold "
                                f"{r.threshold:g})", "lead"),
                           Para(f"A: {r.a}"), Para(f"B: {r.b}")]
    blocks += [Para(s) for s in sentences]
    blocks.append(Para(f"Deciding test: {r.reason}", "note"))
    return Section("verdict", "Verdict and summary", tuple(blocks))


def _evidence(r: Report) -> Section:
    rows = []
    for e in r.evidence:
        status = e.status + (" (low power)" if e.tested and not e.powered else "")
        mark: Mark = "diff" if e.tested and e.p_value is not None and e.p_value < r.threshold else (
            "muted" if e.status != "ok" else "")
        note = e.statement if e.status == "ok" else f"skipped: {e.statement}" if e.status == "skipped" else (
            f"error: {e.statement}")
        rows.append([_c(e.method, "mono"), _c(e.kind), _c(e.null_hypothesis),
                     _c(None if e.statistic is None else f"{e.statistic:.4g}"), _c(fmt_p(e.p_value), mark),
                     _c(status, "muted" if e.status != "ok" else ""), _c(note)])
    return Section("evidence", "Evidence", (_table(
        ["method", "kind", "null hypothesis", "statistic", "p-value", "status", "finding / reason skipped"], rows,
        "A p-value is the chance of a statistic at least this extreme if the null hypothesis held. Rows "
        "without one describe, they do not test.", kind="evidence"),))


def _controls(r: Report) -> Section:
    blocks: list[Block] = []
    if r.controls:
        blocks.append(_table(["control (known transform of A)", "strength", "method", "p-value", "detected"],
                             [[_c(c.kind, "mono"), _c(None if c.strength is None else f"{c.strength:g}"),
                               _c(c.method, "mono"), _c(fmt_p(c.p_value)),
                               _c("yes" if c.detected else "no", "same" if c.detected else "diff")]
                              for c in r.controls]))
    blocks.append(Para(detection_sentence(r)))
    return Section("controls", "What would have been detected", tuple(blocks))


def _transforms(r: Report) -> Section | None:
    if not r.transforms:
        return None
    return Section("transforms", "How B differs from A", (_table(
        ["kind", "summary"], [[_c(t.get("kind"), "mono"), _c(t.get("summary"))] for t in r.transforms],
        "Estimates from the diagnosis (descriptive)."),))


def _pictures(sid: str, title: str, plots: list[Plot], extra: Table | None, empty: str) -> Section:
    blocks: list[Block] = [Image(p) for p in plots]
    if extra is not None:
        blocks.append(extra)
    if not blocks:
        blocks.append(Para(empty, "note"))
    return Section(sid, title, tuple(blocks))


def _layer_table(r: Report) -> Table | None:
    if not r.layer_map:
        return None
    return _table(["component", "B layer", "A layer", "score"],
                  [[_c(m.get("component"), "mono"), _c(m.get("b_layer")),
                    _c("no A layer matches" if m.get("a_layer") is None else m.get("a_layer"),
                       "diff" if m.get("a_layer") is None else ""),
                    _c(None if m.get("score") is None else f"{float(m['score']):.3f}")] for m in r.layer_map],
                  "Each B layer and the A layer it was matched to.")


def _config(r: Report) -> Section:
    e = r.method("config-match")
    if e is None or e.status != "ok":
        why = "config-match did not run" + (f": {e.statement}" if e is not None else "")
        return Section("config", "Configuration side by side", (Para(why, "note"),))
    d = e.details
    blocks: list[Block] = [Para(e.statement)]
    rows = []
    for key, label in (("family", "family"), ("architectures", "architectures"), ("name_or_path", "name_or_path"),
                       ("sources", "read from")):
        v = d.get(key)
        if isinstance(v, dict):
            a, b = (", ".join(map(str, x)) if isinstance(x, list) else x for x in (v.get("a"), v.get("b")))
            rows.append([_c(label), _c(a, "mono"), _c(b, "mono"), _same(a, b)])
    norm = d.get("normalized")
    if isinstance(norm, dict) and isinstance(norm.get("a"), dict) and isinstance(norm.get("b"), dict):
        na, nb = norm["a"], norm["b"]
        for key in list(dict.fromkeys([*na, *nb])):
            rows.append([_c(key, "mono"), _c(na.get(key), "mono"), _c(nb.get(key), "mono"), _same(na.get(key),
                                                                                                  nb.get(key))])
    if rows:
        blocks.append(_table(["field", "A", "B", ""], rows, "Normalized hyperparameters: names mapped across "
                             "naming schemes, so equal values mean the same architecture."))
    peculiar = d.get("peculiar_shared")
    if isinstance(peculiar, dict) and peculiar:
        blocks.append(_table(["field both configs carry (rare in other models)", "value in A and B"],
                             [[_c(k, "hl"), _c(v, "mono")] for k, v in peculiar.items()],
                             "Fields few configurations have: sharing them points to one origin of the config file."))
    no_p = d.get("why_no_p_value")
    if no_p:
        blocks.append(Para(f"No p-value: {no_p}.", "note"))
    return Section("config", "Configuration side by side", tuple(blocks))


def _same(a: object, b: object) -> Cell:
    return Cell("same", "same") if a == b else Cell("differs", "diff")


def _tokenizer(r: Report) -> Section:
    e = r.method("tokenizer-match")
    if e is None or e.status != "ok":
        why = "tokenizer-match did not run" + (f": {e.statement}" if e is not None else "")
        return Section("tokenizer", "Tokenizer side by side", (Para(why, "note"),))
    d = e.details
    blocks: list[Block] = [Para(e.statement)]
    facts = []
    for key, label in (("vocab_size", "vocabulary size"), ("kind", "model kind"), ("tokenizer_class", "class")):
        v = d.get(key)
        if isinstance(v, dict):
            facts.append([_c(label), _c(v.get("a"), "mono"), _c(v.get("b"), "mono"),
                          _c("same" if v.get("a") == v.get("b") else "differs",
                             "same" if v.get("a") == v.get("b") else "diff")])
    merges = d.get("merges")
    if isinstance(merges, dict):
        same = merges.get("identical_prefix")
        first = "none differ" if same is not None and same == merges.get("a") == merges.get("b") else (
            f"first difference at merge #{same + 1}" if same is not None else "-")
        facts.append([_c("merges"), _c(merges.get("a")), _c(merges.get("b")),
                      _c(f"first {same} identical; {first}", "same" if "none" in first else "diff")])
    for key, label in (("jaccard", "vocabulary overlap (Jaccard)"), ("same_id_fraction", "shared tokens at same id")):
        if isinstance(d.get(key), int | float):
            facts.append([_c(label), _c(f"{float(d[key]):.3f}"), _c(""), _c("")])
    if facts:
        blocks.append(_table(["", "A", "B", "comparison"], facts))
    diff = merges.get("first_differing") if isinstance(merges, dict) else None
    if isinstance(diff, dict) and (diff.get("a") or diff.get("b")):
        start = int(merges.get("identical_prefix") or 0) if isinstance(merges, dict) else 0
        la, lb = list(diff.get("a") or []), list(diff.get("b") or [])
        blocks.append(_table(["merge #", "A", "B"],
                             [[_c(start + k + 1), _c(la[k] if k < len(la) else "(none)", "mono"),
                               _c(lb[k] if k < len(lb) else "(none)", "mono")] for k in range(max(len(la), len(lb)))],
                             "The first merges where the two tokenizers part: a copied tokenizer keeps A's order."))
    rows = [t for t in d.get("added_tokens_side_by_side") or [] if isinstance(t, dict)]
    if rows:
        trs = []
        for t in rows:
            same_id = t.get("id_a") is not None and t.get("id_a") == t.get("id_b")
            trs.append([_c(t.get("content"), "mono"), _c(t.get("id_a")), _c(t.get("id_b")),
                        _c("same id" if same_id else "different or missing", "same" if same_id else "diff"),
                        _c("custom" if t.get("custom") else "common", "hl" if t.get("custom") else "muted"),
                        _c(t.get("why"))])
        blocks.append(_table(["special / added token", "id in A", "id in B", "", "kind", "why it matters"], trs,
                             "Custom tokens (not ones most tokenizers carry) at the same ids are what a copy keeps."))
    return Section("tokenizer", "Tokenizer side by side", tuple(blocks))


def _code(r: Report) -> Section:
    e = r.method("code-clone")
    if e is None or e.status != "ok":
        why = "code-clone did not run" + (f": {e.statement}" if e is not None else "")
        return Section("code", "Code clones side by side", (Para(why, "note"),))
    d = e.details
    blocks: list[Block] = [Para(e.statement)]
    pairs = [p for p in d.get("pairs") or [] if isinstance(p, dict)]
    if pairs:
        blocks.append(_table(["file in A", "file in B", "similarity", "matched tokens", "p (uncorrected)"],
                             [[_c(p.get("a"), "mono"), _c(p.get("b"), "mono"),
                               _c(f"{float(p['similarity']):.0%}" if isinstance(p.get("similarity"), int | float)
                                  else None), _c(p.get("matched_tokens")), _c(fmt_p(p.get("p_uncorrected")))]
                              for p in pairs], "File pairs that share code, most significant first."))
    renames = d.get("rename_map") or {}
    renames = renames if isinstance(renames, dict) else {}
    for sn in [x for x in d.get("clone_snippets") or [] if isinstance(x, dict)]:
        blocks.append(CodePair(f"A: {sn.get('a')}", f"B: {sn.get('b')}", _code_lines(sn.get("a_text")),
                               _code_lines(sn.get("b_text")), int(sn.get("a_first_line") or 1),
                               int(sn.get("b_first_line") or 1), frozenset(map(str, renames)),
                               frozenset(map(str, renames.values()))))
    regions = [g for g in d.get("clone_regions") or [] if isinstance(g, dict)]
    if regions:
        blocks.append(_table(["region in A", "region in B", "shared tokens"],
                             [[_c(g.get("a"), "mono"), _c(g.get("b"), "mono"), _c(g.get("tokens"))] for g in regions],
                             "The same code, side by side: file and line range on each side."))
    if renames:
        blocks.append(_table(["identifier in A", "renamed in B"],
                             [[Cell(str(a), "mono"), Cell(str(b), "mono", (0, len(str(b))))] for a, b in renames.items()],
                             "Identifiers the copy renamed while keeping the code's structure."))
    return Section("code", "Code clones side by side", tuple(blocks))


def _code_lines(text: object, limit: int = 60) -> tuple[str, ...]:
    """Code from a model, line by line, with control and bidi characters made visible (Trojan Source)."""
    return tuple(escape(line, limit=400) for line in str(text or "").split("\n")[:limit])


def _renames(r: Report) -> Section:
    t = r.transform("rename") or {}
    blocks: list[Block] = []
    pm = t.get("prefix_map") or {}
    if isinstance(pm, dict) and pm:
        blocks.append(_table(["prefix in A", "prefix in B"],
                             [[Cell(str(a), "mono"), Cell(str(b), "mono", (0, len(str(b))))] for a, b in pm.items()]))
    if r.rename_map:
        blocks.append(_table(["tensor in A", "tensor in B"], [list(_renamed(a, b)) for a, b in r.rename_map.items()],
                             f"{len(r.rename_map)} tensor(s) renamed; the renamed part is highlighted."))
    names = r.method("tensor-names")
    if names is not None and names.status == "ok":
        blocks.insert(0, Para(names.statement))
    if not blocks:
        blocks.append(Para("No tensor was renamed between A and B.", "note"))
    return Section("renames", "Tensor rename map", tuple(blocks))


def _provenance(r: Report) -> Section:
    p = r.provenance
    rows = [[_c("tool"), _c(p.get("tool"), "mono")], [_c("python"), _c(p.get("python"), "mono")],
            [_c("created"), _c(p.get("created"))], [_c("seed"), _c(p.get("seed"), "mono")],
            [_c("command"), _c(" ".join(map(str, p.get("command") or [])) or None, "mono")],
            [_c("compare time"), _c(f"{p['elapsed_s']} s" if "elapsed_s" in p else None)]]
    if p.get("hashed"):
        mb = float(p.get("hash_bytes") or 0) / 1e6
        rows.append([_c("hashing cost"), _c(f"{p.get('hash_s')} s for {mb:.1f} MB (sha256, streamed)")])
    else:
        rows.append([_c("hashing"), _c("input files were not hashed: this result cannot be checked with "
                                       "`modeltrace report verify`", "diff")])
    blocks: list[Block] = [_table(["", ""], rows)]
    files = []
    inputs: dict[str, Any] = p["inputs"] if isinstance(p.get("inputs"), dict) else {}
    for side, info in inputs.items():
        if not isinstance(info, dict):
            continue
        sums: dict[str, Any] = info["sha256"] if isinstance(info.get("sha256"), dict) else {}
        for f in info.get("files") or info.get("weight_files") or []:
            files.append([_c(side), _c(f, "mono"), _c(sums.get(f, "not hashed"), "mono")])
    if files:
        blocks.append(_table(["side", "file", "sha256"], files, "Every input file compare could read."))
    commits = [c for info in inputs.values() if isinstance(info, dict)
               for c in info.get("probe_commitments") or []]
    if commits:
        blocks.append(_table(["probe set", "commitment root (sha256 Merkle)", "items"],
                             [[_c(c.get("path"), "mono"), _c(c.get("root") or c.get("note"), "mono"),
                               _c(c.get("n_items"))] for c in commits if isinstance(c, dict)]))
    return Section("provenance", "Provenance", tuple(blocks))
