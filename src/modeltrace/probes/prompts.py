"""Generic prompts for behaviour tests, drawn reproducibly from text that ships with Python.

Sentences from the standard library's module docstrings: ordinary English and code prose that
needs no download, cut at a random word so models must continue mid-sentence.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from functools import lru_cache
from pathlib import Path

from modeltrace.errors import EvidenceError


@lru_cache(maxsize=1)
def _sentences() -> tuple[str, ...]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for p in sorted(stdlib.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8", errors="replace")))
        except (SyntaxError, ValueError):
            continue
        for para in (doc or "").split("\n\n"):
            words = para.split()
            if 8 <= len(words) <= 80:
                out.append(" ".join(words))
    return tuple(out)


def generic_prompts(n: int, seed: int = 0, min_words: int = 5, max_words: int = 20) -> list[str]:
    """`n` prompt prefixes (sentence starts cut at a random word), the same for the same seed."""
    rng = random.Random(seed)
    sents = _sentences()
    if not sents:
        raise EvidenceError("no standard-library docstrings found to build prompts from")
    out = []
    for _ in range(n):
        words = rng.choice(sents).split()
        hi = min(max_words, len(words) - 1)
        k = rng.randint(min(min_words, hi), hi)
        out.append(" ".join(words[:k]))
    return out
