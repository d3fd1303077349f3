"""Widely shared base tokenizers, recognised by hashes of their vocabularies.

Many unrelated models reuse one base tokenizer (BERT's, GPT-2's, Llama-3's), so sharing one
proves little. `data/base_tokenizers.json` lists such bases; `identify_base` says which one a
tokenizer is built on.

Hash definition (`vocab_sha256`): the sha256 of the UTF-8 bytes of
``json.dumps(sorted([token, id] for token, id in mapping), ensure_ascii=False, separators=(",", ":"))``
where `mapping` is the token -> id mapping restricted to ids below `core_size`. The core is
the base vocabulary without the trailing block of control / user-defined tokens, since
derived models most often change exactly those (reserved special tokens renamed, tokens
appended). `sketch` is a bottom-256 MinHash sketch of the core's (id, token) pairs (the 256
smallest 16-hex-digit prefixes of sha256("<id>\\t<token>")), which estimates how much of a base
survives when a few ids were changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from modeltrace.artifacts.tokenizer import Tokenizer

SKETCH_SIZE = 256
CONTAINMENT_MATCH = 0.97  # fraction of a base's sketched (id, token) pairs that must be present

# Numbered placeholders that tokenizers reserve by the hundred: sharing one proves nothing.
PLACEHOLDER = re.compile(r"^(<\|reserved_special_token_\d+\|>|\[unused\d+\]|<unused\d+>|<extra_id_\d+>|"
                         r"<unk_?\d+>|\[PAD\d+\]|<\|extra_\d+\|>|<0x[0-9A-Fa-f]{2}>|"
                         r"<\|?(?:audio_|image_|video_)?reserved\w*?\d+\|?>)$")


@dataclass(frozen=True)
class BaseTokenizer:
    """One entry of the table of widely shared base tokenizers."""

    name: str
    kind: str
    core_size: int
    vocab_sha256: str | None  # None when the vocabulary was not available to hash
    sketch: tuple[str, ...]
    standard_added: dict[int, str]  # the base's own special tokens (placeholders left out), id -> content
    used_by: str
    source: str
    markers: tuple[tuple[int, str], ...] = ()  # (id, token) pairs that identify a base with no hash


@dataclass(frozen=True)
class BaseMatch:
    """How a tokenizer relates to a known base: exact core hash, or sketch containment."""

    base: BaseTokenizer
    exact: bool
    containment: float


def core_size(tok: Tokenizer) -> int:
    """One past the last id that is not a control / user-defined token (the base vocabulary's end)."""
    full = tok.full_vocab()
    if not full:
        return 0
    added = {t.id for t in tok.added_tokens}
    for tid, kind in tok.token_types.items():
        if kind in ("control", "user_defined"):
            added.add(tid)
    top = max(full.values())
    while top >= 0 and top in added:
        top -= 1
    return top + 1


def pair_hash(tid: int, token: str) -> str:
    return hashlib.sha256(f"{tid}\t{token}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def vocab_sha256(mapping: dict[str, int], limit: int | None = None) -> str:
    """The precise vocabulary hash of the module docstring."""
    items = sorted([t, i] for t, i in mapping.items() if limit is None or i < limit)
    blob = json.dumps(items, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def sketch(mapping: dict[str, int], limit: int | None = None, size: int = SKETCH_SIZE) -> tuple[str, ...]:
    hashes = sorted(pair_hash(i, t) for t, i in mapping.items() if limit is None or i < limit)
    return tuple(hashes[:size])


def make_entry(tok: Tokenizer, name: str, used_by: str, source: str) -> dict[str, Any]:
    """A table row for `tok` (used to build data/base_tokenizers.json from files at hand)."""
    k = core_size(tok)
    full = tok.full_vocab()
    standard = {t.id: t.content for t in tok.added_tokens if not PLACEHOLDER.match(t.content)}
    return {"name": name, "kind": tok.kind, "core_size": k, "vocab_sha256": vocab_sha256(full, k),
            "sketch": list(sketch(full, k)), "standard_added": {str(i): c for i, c in sorted(standard.items())},
            "used_by": used_by, "source": source}


def _entry(row: dict[str, Any]) -> BaseTokenizer:
    return BaseTokenizer(name=str(row["name"]), kind=str(row["kind"]), core_size=int(row["core_size"]),
                         vocab_sha256=row.get("vocab_sha256"), sketch=tuple(row.get("sketch", ())),
                         standard_added={int(k): str(v) for k, v in row.get("standard_added", {}).items()},
                         used_by=str(row.get("used_by", "")), source=str(row.get("source", "")),
                         markers=tuple((int(i), str(t)) for i, t in row.get("markers", ())))


@lru_cache(maxsize=1)
def known_bases() -> tuple[BaseTokenizer, ...]:
    """The shipped table (package data, trusted)."""
    text = resources.files("modeltrace.artifacts").joinpath("data/base_tokenizers.json").read_text("utf-8")
    return tuple(_entry(r) for r in json.loads(text)["bases"])


def identify_base(tok: Tokenizer, bases: tuple[BaseTokenizer, ...] | None = None) -> BaseMatch | None:
    """The known base `tok` is built on: exact core hash first, else sketch containment >= 0.97, else
    (for bases whose vocabulary was not at hand) the same core size and all marker tokens at their ids."""
    table = known_bases() if bases is None else bases
    full = tok.full_vocab()
    if not full:
        return None
    best: BaseMatch | None = None
    pairs: set[str] | None = None
    for base in table:
        if base.vocab_sha256 and len(full) >= base.core_size and vocab_sha256(full, base.core_size) == \
                base.vocab_sha256:
            return BaseMatch(base=base, exact=True, containment=1.0)
        if not base.sketch:
            if base.markers and core_size(tok) == base.core_size and all(
                    full.get(t) == i for i, t in base.markers):
                match = BaseMatch(base=base, exact=False, containment=float("nan"))
                best = best or match
            continue
        if pairs is None:
            pairs = {pair_hash(i, t) for t, i in full.items()}
        c = sum(h in pairs for h in base.sketch) / len(base.sketch)
        if c >= CONTAINMENT_MATCH and (best is None or c > best.containment):
            best = BaseMatch(base=base, exact=False, containment=c)
    return best
