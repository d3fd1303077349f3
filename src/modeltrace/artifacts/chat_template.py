"""Chat templates normalized for comparison: Jinja comments, whitespace control and spacing removed.

Every step is linear in the template's length (a hostile template of a million characters must
not cost minutes): normalization is a left-to-right scan with `str.find`, not backtracking regular
expressions, and similarity is a Dice coefficient of character shingles, not difflib's ratio
(whose worst case is quadratic: two 5,000-character templates over a two-letter alphabet took
10 s). Only the first MAX_COMPARE_CHARS characters of a template are compared; the comparison says
when it cut one.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

MAX_COMPARE_CHARS = 200_000  # characters of each template normalized and compared; the rest is cut (reported)
SHINGLE = 8  # characters per shingle of the similarity measure
_OPENER = re.compile(r"\{[%{]")
_CLOSER = re.compile(r"[%}]\}")
_TRIM = re.compile(r"(\{[%{])[-+]|[-+]([%}]\})")
_SPACE = re.compile(r"\s+")

# Templates that many unrelated models ship: sharing one proves little.
COMMON_MARKERS = {
    "chatml": "<|im_start|>",
    "llama-3": "<|start_header_id|>",
    "llama-2": "[INST]",
    "gemma": "<start_of_turn>",
    "phi-3": "<|assistant|>",
}


@dataclass(frozen=True)
class TemplateComparison:
    """How two chat templates relate after normalization."""

    identical_raw: bool
    identical_normalized: bool
    similarity: float  # Dice coefficient of the normalized templates' 8-character shingles, 0..1
    sha256_a: str
    sha256_b: str
    style_a: str | None
    style_b: str | None
    truncated: bool = False  # a template was longer than MAX_COMPARE_CHARS: only its start was compared


def _drop_comments(t: str) -> str:
    """Remove `{# ... #}` comments (an unclosed `{#` is kept as text, as Jinja would reject it anyway)."""
    out: list[str] = []
    i = 0
    while True:
        j = t.find("{#", i)
        k = t.find("#}", j + 2) if j >= 0 else -1
        if k < 0:
            out.append(t[i:])
            return "".join(out)
        out.append(t[i:j])
        i = k + 2


def _tidy_tags(t: str) -> str:
    """One space inside each `{% %}` / `{{ }}` tag, whitespace runs in it collapsed to one space."""
    out: list[str] = []
    i = 0
    while (m := _OPENER.search(t, i)) is not None:
        close = _CLOSER.search(t, m.end())
        if close is None:  # no closer after this opener: none after any later opener either
            break
        inner = _SPACE.sub(" ", t[m.end():close.start()].strip())
        out.append(f"{t[i:m.start()]}{m.group()} {inner} {close.group()}")
        i = close.end()
    out.append(t[i:])
    return "".join(out)


def _drop_layout(t: str) -> str:
    """Remove whitespace right after a tag closer or right before a tag opener."""
    out: list[str] = []
    i = 0
    for m in _SPACE.finditer(t):
        s, e = m.span()
        if t[max(0, s - 2):s] in ("%}", "}}") or t[e:e + 2] in ("{%", "{{"):
            out.append(t[i:s])
            i = e
    out.append(t[i:])
    return "".join(out)


def normalize(template: str) -> str:
    """Drop Jinja comments, whitespace-control marks and layout whitespace; keep literal text.

    Linear in the length; only the first MAX_COMPARE_CHARS characters are read.
    """
    t = _drop_comments(template[:MAX_COMPARE_CHARS])
    t = _TRIM.sub(lambda m: m.group(1) or m.group(2), t)
    return _drop_layout(_tidy_tags(t)).strip()


def style(template: str) -> str | None:
    """The widely shared template family a template belongs to, if any."""
    for name, marker in COMMON_MARKERS.items():
        if marker in template:
            return name
    return None


def _shingles(t: str) -> Counter[str]:
    if len(t) <= SHINGLE:
        return Counter([t]) if t else Counter()
    return Counter(t[i:i + SHINGLE] for i in range(len(t) - SHINGLE + 1))


def similarity(a: str, b: str) -> float:
    """Dice coefficient 2|A & B| / (|A| + |B|) of the multisets of SHINGLE-character shingles (0..1).

    Linear in the lengths (difflib's ratio is quadratic in the worst case); 1.0 only for equal texts
    up to shingle order, 0.0 when no shingle is shared.
    """
    if a == b:
        return 1.0
    sa, sb = _shingles(a), _shingles(b)
    total = sum(sa.values()) + sum(sb.values())
    return 0.0 if total == 0 else 2 * sum((sa & sb).values()) / total


def compare_templates(a: str, b: str) -> TemplateComparison:
    na, nb = normalize(a), normalize(b)
    return TemplateComparison(
        identical_raw=a == b, identical_normalized=na == nb, similarity=round(similarity(na, nb), 4),
        sha256_a=hashlib.sha256(na.encode("utf-8", "replace")).hexdigest(),
        sha256_b=hashlib.sha256(nb.encode("utf-8", "replace")).hexdigest(), style_a=style(a), style_b=style(b),
        truncated=max(len(a), len(b)) > MAX_COMPARE_CHARS)
