"""Evidence methods, one module each, registered by stable kebab-case names.

Built-ins are registered here exactly as plugins are (entry-point group ``modeltrace.evidence``).
The order of registration is the order compare runs them: weight matching first, since
diagnosis and the artifact methods read its rename map.
"""

from __future__ import annotations

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.registry import Registry

METHODS: Registry[type[EvidenceMethod]] = Registry("evidence method", "modeltrace.evidence")

__all__ = ["METHODS", "CompareContext", "Evidence", "EvidenceMethod", "Transform"]
