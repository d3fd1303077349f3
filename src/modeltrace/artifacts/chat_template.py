"""Chat templates normalized for comparison: Jinja comments, whitespace control and spacing removed."""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass

MAX_COMPARE_CHARS = 200_000
_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_TRIM = re.compile(r"(\{[%{])[-+]|[-+]([%}]\})")
_INNER_SPACE = re.compile(r"(\{[%{])\s*(.*?)\s*([%}]\})", re.DOTALL)
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
    similarity: float  # difflib ratio of the normalized templates, 0..1
    sha256_a: str
    sha256_b: str
    style_a: str | None
    style_b: str | None


def normalize(template: str) -> str:
    """Drop Jinja comments, whitespace-control marks and layout whitespace; keep literal text."""
    t = _COMMENT.sub("", template[:MAX_COMPARE_CHARS])
    t = _TRIM.sub(lambda m: m.group(1) or m.group(2), t)
    t = _INNER_SPACE.sub(lambda m: f"{m.group(1)} {_SPACE.sub(' ', m.group(2))} {m.group(3)}", t)
    t = re.sub(r"([%}]\})\s+", r"\1", t)
    t = re.sub(r"\s+(\{[%{])", r"\1", t)
    return t.strip()


def style(template: str) -> str | None:
    """The widely shared template family a template belongs to, if any."""
    for name, marker in COMMON_MARKERS.items():
        if marker in template:
            return name
    return None


def compare_templates(a: str, b: str) -> TemplateComparison:
    na, nb = normalize(a), normalize(b)
    sm = difflib.SequenceMatcher(None, na, nb, autojunk=False)
    ratio = 1.0 if na == nb else (sm.quick_ratio() if len(na) + len(nb) > 40_000 else sm.ratio())
    return TemplateComparison(
        identical_raw=a == b, identical_normalized=na == nb, similarity=round(ratio, 4),
        sha256_a=hashlib.sha256(na.encode("utf-8", "replace")).hexdigest(),
        sha256_b=hashlib.sha256(nb.encode("utf-8", "replace")).hexdigest(), style_a=style(a), style_b=style(b))
