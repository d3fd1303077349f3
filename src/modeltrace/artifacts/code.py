"""Clone detection in modelling code: syntax trees, normalized token streams, winnowed fingerprints.

Python files are parsed with `ast` (never imported or run) under size and node-count caps.
Each tree becomes a token stream in which identifiers, literals, docstrings, comments, imports
and layout are normalized away, so renaming, reformatting and reordering leave it unchanged.
k-grams of the stream are hashed and a fingerprint set is selected by winnowing (Schleimer,
Wilkerson & Aiken, "Winnowing: Local Algorithms for Document Fingerprinting", SIGMOD 2003, the
method behind MOSS): any shared run of at least `WINDOW + K - 1` tokens is guaranteed to share a
fingerprint. Shared fingerprints are verified token by token, chained into clone regions, and the
identifiers at aligned positions give the rename map the copy implies.

Every step is bounded (sizes, counts and time, the constants below): a file over a cap is
skipped with its reason, and work left undone when a comparison-wide budget runs out is listed
in `CodeComparison.skipped`, so a truncated result always says so. The per-pair caps are those the
null sample (data/code_clone_null.json) was measured with; real modelling files never reach them.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from modeltrace.artifacts.files import read_bytes
from modeltrace.errors import FormatError

K = 24  # tokens per k-gram (an average source line is 6 to 10 tokens)
WINDOW = 12  # winnowing window: runs of >= K + WINDOW - 1 = 35 shared tokens are always found
MAX_FILE_BYTES = 512 * 1024  # the largest transformers modeling file is 196 KB (4.27); bigger files are skipped
MAX_NODES = 100_000  # a 196 KB modeling file has about 30,000; bigger trees are skipped
MAX_DEPTH = 500
MAX_FILES = 500  # per side; the rest are skipped (reported)
MAX_TOTAL_BYTES = 8 * 1024 * 1024  # source read per side; files past it are skipped (reported)
MAX_SECONDS = 60.0  # wall-clock budget of one load_files + compare_code; what is left is skipped (reported)
MAX_SCORED_PAIRS = 2000  # file pairs verified token by token, those sharing most fingerprints first
MAX_TOTAL_EXTEND_STEPS = 20_000_000  # token comparisons growing matches over all pairs of one comparison
MAX_TOTAL_VOTE_POSITIONS = 5_000_000  # aligned positions read for renames over all pairs of one comparison
MAX_OPEN_REGIONS = 64  # a match joins one of the 64 most recent clone regions (repetitive files make thousands)
MIN_TOKENS_FOR_SIMILARITY = 200  # below this a file is too small for its shared fraction to mean much
VOTE_MIN_RUN = K + WINDOW  # only matches this long vote on identifier renames
MAX_PAIRS_PER_HASH = 8  # boilerplate repeated many times in one file must not explode the pairing
MAX_VOTE_POSITIONS = 500_000  # aligned positions read for identifier renames per file pair
MAX_EXTEND_STEPS = 2_000_000  # token comparisons spent growing matches per file pair (repetitive files)
_MOD = (1 << 61) - 1
_BASE = 1_000_003


@dataclass
class CloneBudget:
    """What one comparison may still spend: token comparisons, rename votes and wall-clock time.

    Shared by every file pair of a comparison, so the caps bound the whole run, not each pair.
    """

    extend_steps: int = field(default_factory=lambda: MAX_TOTAL_EXTEND_STEPS)
    vote_positions: int = field(default_factory=lambda: MAX_TOTAL_VOTE_POSITIONS)
    deadline: float = field(default_factory=lambda: time.monotonic() + MAX_SECONDS)

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


@dataclass(frozen=True)
class CodeTokens:
    """A file's normalized token stream with, per token, its source line and raw identifier (if any)."""

    path: str
    tokens: tuple[str, ...]
    lines: tuple[int, ...]
    names: tuple[str | None, ...]
    n_lines: int

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Fingerprint:
    """Winnowed k-gram hashes of one file: hash -> token positions where it was selected."""

    tokens: CodeTokens
    positions: dict[int, tuple[int, ...]]


@dataclass(frozen=True)
class CloneRegion:
    """Aligned clone region: A's lines against B's lines, with the number of tokens matched."""

    a_file: str
    a_lines: tuple[int, int]
    b_file: str
    b_lines: tuple[int, int]
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return {"a": f"{self.a_file}:{self.a_lines[0]}-{self.a_lines[1]}",
                "b": f"{self.b_file}:{self.b_lines[0]}-{self.b_lines[1]}", "tokens": self.tokens}


@dataclass(frozen=True)
class FilePairSimilarity:
    """How much of two files is shared code, in normalized tokens."""

    a_file: str
    b_file: str
    a_tokens: int
    b_tokens: int
    a_covered: int  # tokens of A inside verified shared k-grams
    b_covered: int
    shared_fingerprints: int
    regions: tuple[CloneRegion, ...]
    renames: dict[str, Counter[str]] = field(compare=False)

    @property
    def matched(self) -> int:
        """The pair's statistic: tokens covered on the side that shares less."""
        return min(self.a_covered, self.b_covered)

    @property
    def similarity(self) -> float:
        """Share of the smaller file's tokens found in the other (0..1)."""
        small = min(self.a_tokens, self.b_tokens)
        return 0.0 if small == 0 else round(min(self.a_covered, self.b_covered) / small, 4)


# --- parsing and normalization -------------------------------------------------------------------

def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


_SKIP = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.Import, ast.ImportFrom)


def _node_tokens(node: ast.AST) -> list[tuple[str, str | None]]:
    """Tokens one node contributes, before its children: (normalized token, raw identifier)."""
    name = type(node).__name__
    if isinstance(node, ast.Name):
        return [("ID", node.id)]
    if isinstance(node, ast.arg):
        return [("ARG", node.arg)]
    if isinstance(node, ast.Attribute):
        return [(".", None), ("ID", node.attr)]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [(name, None), ("ID", node.name)]
    if isinstance(node, ast.keyword):
        return [("KW", node.arg)] if node.arg else [("**", None)]
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or v is None or v is Ellipsis:
            return [(repr(v), None)]
        if isinstance(v, (int, float, complex)):
            return [("NUM", None)]
        return [("STR", None)]
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.AugAssign)):
        return [(f"{name}:{type(node.op).__name__}", None)]
    if isinstance(node, ast.BoolOp):
        return [(f"{name}:{type(node.op).__name__}", None)]
    if isinstance(node, ast.Compare):
        return [(f"Compare:{','.join(type(o).__name__ for o in node.ops)}", None)]
    if isinstance(node, ast.alias):
        return []
    return [(name, None)]


def tokenize_tree(tree: ast.AST, path: str, n_lines: int) -> CodeTokens:
    """Pre-order walk with an explicit stack (no recursion): bounded by MAX_NODES and MAX_DEPTH."""
    tokens: list[str] = []
    lines: list[int] = []
    names: list[str | None] = []
    stack: list[tuple[ast.AST, int, int]] = [(tree, 0, 1)]
    seen = 0
    while stack:
        node, depth, line = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise FormatError(path, f"syntax tree has more than {MAX_NODES} nodes; refused")
        if depth > MAX_DEPTH:
            raise FormatError(path, f"syntax tree nested more than {MAX_DEPTH} levels; refused")
        line = getattr(node, "lineno", line)
        for tok, raw in _node_tokens(node):
            tokens.append(tok)
            lines.append(line)
            names.append(raw)
        children = [c for c in ast.iter_child_nodes(node) if not isinstance(c, _SKIP) and not _is_docstring(c)]
        for child in reversed(children):
            stack.append((child, depth + 1, line))
    return CodeTokens(path=path, tokens=tuple(tokens), lines=tuple(lines), names=tuple(names), n_lines=n_lines)


def parse_source(source: bytes | str, path: str) -> CodeTokens:
    """Parse Python source as data and normalize it; any failure is a FormatError naming `path`."""
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else source
    if len(raw) > MAX_FILE_BYTES:
        raise FormatError(path, f"source is {len(raw)} bytes, over the {MAX_FILE_BYTES}-byte cap")
    try:
        tree = ast.parse(raw, filename=path)
    except SyntaxError as exc:
        raise FormatError(path, f"not valid Python (line {exc.lineno}: {exc.msg})") from exc
    except (RecursionError, MemoryError) as exc:
        raise FormatError(path, "syntax tree too deep or too large to parse; refused") from exc
    except ValueError as exc:  # null bytes
        raise FormatError(path, f"not parseable as Python: {exc}") from exc
    return tokenize_tree(tree, path, raw.count(b"\n") + 1)


def parse_file(path: Path, label: str | None = None) -> CodeTokens:
    return parse_source(read_bytes(path, MAX_FILE_BYTES), label or path.name)


# --- fingerprints ---------------------------------------------------------------------------------

@lru_cache(maxsize=65536)
def _token_hash(tok: str) -> int:
    return int.from_bytes(hashlib.blake2b(tok.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def kgram_hashes(tokens: Sequence[str], k: int = K) -> list[int]:
    """Karp-Rabin rolling hashes of every k-gram (mod 2^61 - 1)."""
    n = len(tokens)
    if n < k:
        return []
    hs = [_token_hash(t) % _MOD for t in tokens]
    top = pow(_BASE, k - 1, _MOD)
    h = 0
    for i in range(k):
        h = (h * _BASE + hs[i]) % _MOD
    out = [h]
    for i in range(k, n):
        h = ((h - hs[i - k] * top) * _BASE + hs[i]) % _MOD
        out.append(h)
    return out


def winnow(hashes: Sequence[int], window: int = WINDOW) -> list[tuple[int, int]]:
    """Robust winnowing: in each window keep the minimum hash (rightmost on ties), record each new pick."""
    picked: list[tuple[int, int]] = []
    if not hashes:
        return picked
    if len(hashes) <= window:
        i = min(range(len(hashes)), key=lambda j: (hashes[j], -j))
        return [(hashes[i], i)]
    dq: deque[int] = deque()
    last = -1
    for i, h in enumerate(hashes):
        while dq and hashes[dq[-1]] >= h:
            dq.pop()
        dq.append(i)
        if dq[0] <= i - window:
            dq.popleft()
        if i >= window - 1 and dq[0] != last:
            last = dq[0]
            picked.append((hashes[last], last))
    return picked


def fingerprint(tokens: CodeTokens, k: int = K, window: int = WINDOW) -> Fingerprint:
    pos: dict[int, list[int]] = defaultdict(list)
    for h, p in winnow(kgram_hashes(tokens.tokens, k), window):
        pos[h].append(p)
    return Fingerprint(tokens=tokens, positions={h: tuple(v) for h, v in pos.items()})


# --- comparison -----------------------------------------------------------------------------------

def compare_fingerprints(fa: Fingerprint, fb: Fingerprint, k: int = K,
                         budget: CloneBudget | None = None) -> FilePairSimilarity:
    """Verified shared k-grams of two files, chained into regions, with identifier votes.

    `budget` is the comparison-wide budget that this pair draws on (a fresh one when None).
    """
    budget = CloneBudget() if budget is None else budget
    ta, tb = fa.tokens, fb.tokens
    pairs: list[tuple[int, int]] = []
    shared = 0
    for h, pos_b in fb.positions.items():
        pos_a = fa.positions.get(h)
        if not pos_a:
            continue
        hit = False
        for pa in pos_a[:MAX_PAIRS_PER_HASH]:
            for pb in pos_b[:MAX_PAIRS_PER_HASH]:
                if ta.tokens[pa:pa + k] == tb.tokens[pb:pb + k]:
                    pairs.append((pa, pb))
                    hit = True
        shared += hit
    spans = _extend(pairs, ta.tokens, tb.tokens, k, budget)
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    left = MAX_VOTE_POSITIONS
    for pa, pb, length in sorted(spans, key=lambda s: -s[2]):
        if length < VOTE_MIN_RUN or left <= 0 or budget.vote_positions <= 0:
            continue  # short runs align look-alike code as often as copied code
        names_a, names_b = ta.names[pa:pa + length], tb.names[pb:pb + length]
        left -= length
        budget.vote_positions -= length
        for na, nb in zip(names_a, names_b):
            if na is not None and nb is not None:
                votes[na][nb] += 1
    regions = _regions(spans, ta, tb)
    return FilePairSimilarity(a_file=ta.path, b_file=tb.path, a_tokens=len(ta), b_tokens=len(tb),
                              a_covered=_union_length((s, s + n) for s, _, n in spans),
                              b_covered=_union_length((s, s + n) for _, s, n in spans),
                              shared_fingerprints=shared, regions=regions, renames=dict(votes))


def _union_length(intervals: Iterable[tuple[int, int]]) -> int:
    """Number of integers covered by half-open intervals."""
    total = 0
    end = -1
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _extend(pairs: list[tuple[int, int]], a: Sequence[str], b: Sequence[str], k: int,
            shared: CloneBudget) -> list[tuple[int, int, int]]:
    """Grow each verified k-gram match left and right while tokens agree (as MOSS's match display does).

    Matches already inside a grown match on the same diagonal are skipped (pairs come in order of
    A's position, so on one diagonal the grown matches are disjoint and increasing: comparing with
    the last one's end suffices). Growing stops after MAX_EXTEND_STEPS token comparisons per pair and
    when the comparison's shared budget is spent, so a file repeating one line 100,000 times stays cheap.
    """
    out: list[tuple[int, int, int]] = []
    grown_end: dict[int, int] = {}  # diagonal -> end in A of the last grown match on it
    budget = min(MAX_EXTEND_STEPS, shared.extend_steps)
    start_budget = budget
    for pa, pb in sorted(pairs):
        diag = pb - pa
        if pa < grown_end.get(diag, -1):
            continue
        s_a, s_b = pa, pb
        e_a, e_b = pa + k, pb + k
        if budget > 0:
            while s_a > 0 and s_b > 0 and budget > 0 and a[s_a - 1] == b[s_b - 1]:
                s_a -= 1
                s_b -= 1
                budget -= 1
            while e_a < len(a) and e_b < len(b) and budget > 0 and a[e_a] == b[e_b]:
                e_a += 1
                e_b += 1
                budget -= 1
        grown_end[diag] = e_a
        out.append((s_a, s_b, e_a - s_a))
    shared.extend_steps -= start_budget - budget
    return out


def _regions(pairs: list[tuple[int, int, int]], ta: CodeTokens, tb: CodeTokens) -> tuple[CloneRegion, ...]:
    """Chain matches that follow each other in both files (small gaps allowed) into regions."""
    gap = K + WINDOW
    open_regions: list[list[int]] = []  # [a_start, a_end, b_start, b_end, tokens]
    for pa, pb, length in sorted(pairs):
        for r in open_regions[-MAX_OPEN_REGIONS:]:
            if 0 <= pa - r[1] <= gap and 0 <= pb - r[3] <= gap or (r[0] <= pa <= r[1] and r[2] <= pb <= r[3]):
                r[1] = max(r[1], pa + length)
                r[3] = max(r[3], pb + length)
                r[4] += length
                break
        else:
            open_regions.append([pa, pa + length, pb, pb + length, length])
    regions = [CloneRegion(a_file=ta.path, a_lines=(min(ta.lines[r[0]:r[1]]), max(ta.lines[r[0]:r[1]])),
                           b_file=tb.path, b_lines=(min(tb.lines[r[2]:r[3]]), max(tb.lines[r[2]:r[3]])),
                           tokens=min(r[4], r[1] - r[0])) for r in open_regions]
    regions.sort(key=lambda r: -r.tokens)
    return tuple(regions)


def rename_map(votes: Iterable[dict[str, Counter[str]]], min_votes: int = 2,
               min_agreement: float = 0.5) -> dict[str, str]:
    """Identifier renames implied by aligned clone regions: A name -> B name.

    Kept when the B name wins a strict majority of A name's aligned positions and, in turn, A name is
    the B name's most frequent partner (a mutual best match), so look-alike code does not pair
    unrelated names.
    """
    total: dict[str, Counter[str]] = defaultdict(Counter)
    for v in votes:
        for a, c in v.items():
            total[a].update(c)
    back: dict[str, Counter[str]] = defaultdict(Counter)
    for a, c in total.items():
        for b, n in c.items():
            back[b][a] += n
    out: dict[str, str] = {}
    for a, c in sorted(total.items()):
        (b, n), *rest = c.most_common(2)
        if b == a or n < min_votes or n / sum(c.values()) <= min_agreement or (rest and rest[0][1] == n):
            continue  # a rename needs a strict majority of A name's aligned positions, with no tie
        if back[b].most_common(1)[0][0] == a:
            out[a] = b
    return out


@dataclass(frozen=True)
class CodeComparison:
    """File pairs sharing fingerprints, most shared first, with the implied rename map.

    `n_pairs` counts every pair of files; pairs sharing no fingerprint are not listed (their
    statistic is 0) but count for the multiple-testing correction.
    """

    pairs: tuple[FilePairSimilarity, ...]
    renames: dict[str, str]
    skipped: tuple[str, ...]  # files that could not be parsed, with the reason
    n_files_a: int
    n_files_b: int
    n_pairs: int


def load_files(files: Sequence[tuple[Path, str]], budget: CloneBudget | None = None
               ) -> tuple[list[Fingerprint], list[str]]:
    """Parse and fingerprint (path, label) files; unparseable ones are skipped with their reason.

    At most MAX_FILES files and MAX_TOTAL_BYTES of source are read, and none once `budget`'s time
    is spent; what is left out is listed among the skipped, with the cap that stopped it.
    """
    budget = CloneBudget() if budget is None else budget
    prints: list[Fingerprint] = []
    skipped: list[str] = []
    total = 0
    todo = list(files)
    for n, (path, label) in enumerate(todo[:MAX_FILES]):
        if budget.expired():
            skipped.append(f"{len(todo[:MAX_FILES]) - n} more files not read: the {MAX_SECONDS:g}-second "
                           "budget was spent")
            break
        try:
            size = path.stat().st_size
        except OSError as exc:
            skipped.append(f"{label}: cannot read: {exc.strerror or exc}")
            continue
        if size <= MAX_FILE_BYTES and total + size > MAX_TOTAL_BYTES:
            skipped.append(f"{label}: not read, past the {MAX_TOTAL_BYTES}-byte cap on source per side")
            continue
        try:
            prints.append(fingerprint(parse_file(path, label)))
            total += size
        except FormatError as exc:
            skipped.append(str(exc))
    if len(todo) > MAX_FILES:
        skipped.append(f"{len(todo) - MAX_FILES} more files over the {MAX_FILES}-file cap")
    return prints, skipped


def compare_code(prints_a: Sequence[Fingerprint], prints_b: Sequence[Fingerprint],
                 skipped: Sequence[str] = (), budget: CloneBudget | None = None) -> CodeComparison:
    """File pairs sharing fingerprints, scored most-shared first within `budget` (see the module doc)."""
    budget = CloneBudget() if budget is None else budget
    index: dict[int, list[int]] = defaultdict(list)
    for i, fa in enumerate(prints_a):
        for h in fa.positions:
            index[h].append(i)
    candidates: list[tuple[int, int, int]] = []  # (shared hashes, index in A, index in B)
    for j, fb in enumerate(prints_b):
        counts: Counter[int] = Counter()
        for h in fb.positions:
            counts.update(index.get(h, ()))
        candidates.extend((n, i, j) for i, n in counts.items())
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    skipped = list(skipped)
    if len(candidates) > MAX_SCORED_PAIRS:
        skipped.append(f"{len(candidates) - MAX_SCORED_PAIRS} file pairs sharing fewest fingerprints not scored "
                       f"(cap {MAX_SCORED_PAIRS})")
    pairs: list[FilePairSimilarity] = []
    todo = candidates[:MAX_SCORED_PAIRS]
    for n, (_, i, j) in enumerate(todo):
        if budget.expired():
            skipped.append(f"{len(todo) - n} file pairs not scored: the {MAX_SECONDS:g}-second budget was spent")
            break
        pairs.append(compare_fingerprints(prints_a[i], prints_b[j], budget=budget))
    if budget.extend_steps <= 0:
        skipped.append(f"matches were not grown past the cap of {MAX_TOTAL_EXTEND_STEPS} token comparisons "
                       "(repetitive files): shared code may be undercounted")
    if budget.vote_positions <= 0:
        skipped.append(f"identifier renames read from the first {MAX_TOTAL_VOTE_POSITIONS} aligned positions only")
    pairs.sort(key=lambda p: (-p.matched, p.a_file, p.b_file))
    renames = rename_map(p.renames for p in pairs if p.regions)
    return CodeComparison(pairs=tuple(pairs), renames=renames, skipped=tuple(skipped),
                          n_files_a=len(prints_a), n_files_b=len(prints_b),
                          n_pairs=len(prints_a) * len(prints_b))


# --- calibration ---------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def null_sample() -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`matched` and `similarity` of independent file pairs measured by bench/bench_code_clones.py."""
    try:
        text = resources.files("modeltrace.artifacts").joinpath("data/code_clone_null.json").read_text("utf-8")
    except FileNotFoundError:
        return (), ()
    doc = json.loads(text)
    return (tuple(sorted(int(x) for x in doc["matched"])),
            tuple(sorted(float(x) for x in doc.get("similarity", ()))))


def empirical_p(value: float, null: Sequence[float]) -> float | None:
    """(1 + #null values >= value) / (1 + N): the smallest value is 1 / (N + 1)."""
    values = sorted(null)
    if not values:
        return None
    at_least = len(values) - bisect.bisect_left(values, value)
    return (1 + at_least) / (1 + len(values))


def pair_p(pair: FilePairSimilarity, null: tuple[Sequence[int], Sequence[float]] | None = None) -> float | None:
    """One file pair's p-value: the smaller of the matched-tokens and the similarity p-values, times 2.

    Matched tokens catch a copied part of a large file; the shared fraction catches a whole small
    file copied (used only when the smaller file has at least MIN_TOKENS_FOR_SIMILARITY tokens).
    """
    null_m, null_s = null_sample() if null is None else null
    p_m = empirical_p(pair.matched, null_m)
    if p_m is None:
        return None
    p_s = empirical_p(pair.similarity, null_s) if min(pair.a_tokens, pair.b_tokens) >= MIN_TOKENS_FOR_SIMILARITY \
        and null_s else None
    return min(1.0, 2 * min(p_m, p_s if p_s is not None else 1.0))
