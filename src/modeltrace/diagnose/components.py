"""Which components of B (vision tower, projector or resampler, language model) come from A?

Each tensor of B brings the Pearson correlation with its matched A tensor (None when it has no
counterpart, or when the correlation says nothing: constant tensors such as norm gains at init).
A component is `shared` when its median correlation is at least `shared_corr`, `new` when no
tensor matched or the median is below `new_corr` (independent tensors of n elements correlate
about N(0, 1/n), so a median below 0.1 is what unrelated weights give), and `partial` otherwise.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

SHARED_CORR = 0.5
NEW_CORR = 0.1

_PREFIXES = (
    ("vision_tower", re.compile(r"(^|\.)(vpm|vision_tower|vision_model|visual|vision|vison|image_encoder|"
                                r"vit|siglip|clip_vision)(\.|$)", re.IGNORECASE)),
    ("projector", re.compile(r"(^|\.)(resampler|projection|mm_projector|multi_modal_projector|projector|"
                             r"connector|merger|perceiver|abstractor)(\.|$)", re.IGNORECASE)),
)


@dataclass(frozen=True)
class ComponentEntry:
    """One tensor of B: its component, and its similarity to A's matched tensor (None: unmatched)."""

    name: str
    component: str
    similarity: float | None
    numel: int = 0


@dataclass(frozen=True)
class ComponentStatus:
    component: str
    n_tensors: int
    n_matched: int
    median_similarity: float | None
    status: str  # "shared", "partial", "new"
    numel: int


@dataclass(frozen=True)
class ComponentDiagnosis:
    components: tuple[ComponentStatus, ...]
    shared: tuple[str, ...]
    new: tuple[str, ...]
    partial: tuple[str, ...]
    reason: str


def component_of(name: str) -> str:
    """A fallback guess of a tensor's component from its module path (used when roles are unknown)."""
    for comp, pattern in _PREFIXES:
        if pattern.search(name):
            return comp
    return "language_model"


def diagnose_components(entries: Iterable[ComponentEntry], *, shared_corr: float = SHARED_CORR,
                        new_corr: float = NEW_CORR) -> ComponentDiagnosis:
    """Group per-tensor similarities by component and name each component shared, partial or new."""
    groups: dict[str, list[ComponentEntry]] = {}
    for e in entries:
        groups.setdefault(e.component, []).append(e)
    out: list[ComponentStatus] = []
    for comp, items in sorted(groups.items()):
        sims = [e.similarity for e in items if e.similarity is not None]
        med = statistics.median(sims) if sims else None
        if med is None or med < new_corr:
            status = "new"
        elif med >= shared_corr:
            status = "shared"
        else:
            status = "partial"
        out.append(ComponentStatus(comp, len(items), len(sims), med, status, sum(e.numel for e in items)))
    shared = tuple(c.component for c in out if c.status == "shared")
    new = tuple(c.component for c in out if c.status == "new")
    partial = tuple(c.component for c in out if c.status == "partial")
    parts = []
    if shared:
        parts.append("from A: " + ", ".join(shared))
    if partial:
        parts.append("partly from A: " + ", ".join(partial))
    if new:
        parts.append("new: " + ", ".join(new))
    return ComponentDiagnosis(tuple(out), shared, new, partial, "; ".join(parts) or "no tensors")
