"""Tensor-name rename patterns: which module prefixes of A became which prefixes of B.

In the Llama3-V case every checkpoint key of MiniCPM-Llama3-V 2.5 reappeared with its top
module renamed (`vpm.` -> `vison.`, `resampler.` -> `projection.`) and every sub-key unchanged.
`rename_patterns` finds such prefix maps from two name lists (or from a tensor-level rename
map made by the weight matching) and says, per prefix, how many sub-keys carried over unchanged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MAX_NAMES = 1_000_000
MIN_JACCARD = 0.25  # sub-key sets this alike make two prefixes "the same module"
MIN_SHARED_RENAMED = 3  # a rename needs this many shared sub-keys ("weight" alone matches anything)
MAX_DEPTH = 3


@dataclass(frozen=True)
class PrefixRename:
    """A's prefix renamed to B's prefix, with the sub-keys under it compared."""

    a_prefix: str
    b_prefix: str
    n_a: int  # sub-keys under the prefix in A
    n_b: int
    n_shared: int  # sub-keys present under both prefixes unchanged

    @property
    def all_unchanged(self) -> bool:
        return self.n_a == self.n_b == self.n_shared

    def to_json(self) -> dict[str, object]:
        return {"a": self.a_prefix, "b": self.b_prefix, "n_a": self.n_a, "n_b": self.n_b,
                "n_shared": self.n_shared, "all_sub_keys_unchanged": self.all_unchanged}


@dataclass(frozen=True)
class RenameReport:
    """Prefix renames, prefixes kept as they were, and how many names each side has."""

    renamed: tuple[PrefixRename, ...]
    kept: tuple[PrefixRename, ...]
    n_a: int
    n_b: int
    n_identical_names: int

    @property
    def covered(self) -> int:
        """Names of B explained by a kept or renamed prefix with the sub-key unchanged."""
        return sum(p.n_shared for p in self.renamed + self.kept)


def _split(name: str, depth: int) -> tuple[str, str] | None:
    parts = name.split(".")
    if len(parts) <= depth:
        return None
    return ".".join(parts[:depth]) + ".", ".".join(parts[depth:])


def _groups(names: Iterable[str], depth: int) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for n in names:
        s = _split(n, depth)
        if s is not None:
            out[s[0]].add(s[1])
    return out


def rename_patterns(names_a: Iterable[str], names_b: Iterable[str]) -> RenameReport:
    """Prefix maps A -> B from the two name lists alone.

    For prefix depth 1..3, the names under each prefix (the "sub-keys") of A are matched to the
    prefix of B with the most alike sub-key set (Jaccard >= 0.25, 3 shared sub-keys for a rename), greedily by overlap; names
    already explained at a shallower depth are not used again.
    """
    la = list(dict.fromkeys(names_a))[:MAX_NAMES]
    lb = list(dict.fromkeys(names_b))[:MAX_NAMES]
    set_b = set(lb)
    left_a, left_b = set(la), set(lb)
    renamed: list[PrefixRename] = []
    kept: list[PrefixRename] = []
    for depth in range(1, MAX_DEPTH + 1):
        ga, gb = _groups(left_a, depth), _groups(left_b, depth)
        if not ga or not gb:
            break
        # index B's prefixes by sub-key so only candidates that share something are scored
        by_sub: dict[str, list[str]] = defaultdict(list)
        for pb, subs in gb.items():
            for s in subs:
                by_sub[s].append(pb)
        cands: list[tuple[int, float, str, str]] = []
        for pa, subs_a in ga.items():
            hits: Counter[str] = Counter()
            for s in subs_a:
                hits.update(by_sub.get(s, ()))
            for pb, inter in hits.items():
                jac = inter / (len(subs_a) + len(gb[pb]) - inter)
                if jac >= MIN_JACCARD:
                    cands.append((inter, jac, pa, pb))
        cands.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
        used_a: set[str] = set()
        used_b: set[str] = set()
        for inter, _jac, pa, pb in cands:
            if pa in used_a or pb in used_b or (pa != pb and inter < MIN_SHARED_RENAMED):
                continue
            used_a.add(pa)
            used_b.add(pb)
            pr = PrefixRename(a_prefix=pa, b_prefix=pb, n_a=len(ga[pa]), n_b=len(gb[pb]), n_shared=inter)
            (kept if pa == pb else renamed).append(pr)
            left_a -= {pa + s for s in ga[pa]}
            left_b -= {pb + s for s in gb[pb]}
    return RenameReport(renamed=tuple(renamed), kept=tuple(kept), n_a=len(la), n_b=len(lb),
                        n_identical_names=sum(n in set_b for n in la))


def patterns_from_map(rename_map: Mapping[str, str]) -> RenameReport:
    """Prefix maps implied by a tensor-level map A name -> B name (from the weight matching).

    The prefixes come from `rename_patterns` over the map's two sides; a sub-key counts as
    unchanged only when the map really pairs `P + sub` in A with `Q + sub` in B.
    """
    items = list(rename_map.items())[:MAX_NAMES]
    base = rename_patterns([a for a, _ in items], [b for _, b in items])
    mapped = dict(items)

    def recount(p: PrefixRename) -> PrefixRename:
        under = [a for a in mapped if a.startswith(p.a_prefix)]
        same = sum(mapped[a] == p.b_prefix + a[len(p.a_prefix):] for a in under)
        return PrefixRename(p.a_prefix, p.b_prefix, p.n_a, p.n_b, same)

    return RenameReport(renamed=tuple(recount(p) for p in base.renamed), kept=tuple(recount(p) for p in base.kept),
                        n_a=base.n_a, n_b=base.n_b, n_identical_names=sum(a == b for a, b in items))
