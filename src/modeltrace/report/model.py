"""The one Report model: the canonical compare JSON (`modeltrace.compare/1`), read and checked.

Every reporter renders a `Report` and nothing else, so a saved result renders again, identically,
without the models: `modeltrace report result.json --html out.html`. The JSON comes from whoever
sent it; it is validated here (shape, types) and its strings are escaped by each renderer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeltrace.errors import FormatError

SCHEMA = "modeltrace.compare/1"
MAX_RESULT_BYTES = 64 * 1024 * 1024
VERDICTS = ("derived", "independent", "inconclusive")


@dataclass(frozen=True)
class EvidenceRow:
    """One evidence method's outcome as the JSON records it."""

    method: str
    kind: str
    status: str
    statement: str
    null_hypothesis: str
    statistic: float | None
    p_value: float | None
    powered: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def tested(self) -> bool:
        """Ran and produced a p-value (a test, not a description)."""
        return self.status == "ok" and self.p_value is not None


@dataclass(frozen=True)
class Control:
    """A positive control: B's known transform of A, and whether the test detected it."""

    kind: str
    strength: float | None
    method: str
    p_value: float | None
    detected: bool


@dataclass(frozen=True)
class Report:
    """A compare result, ready to render. `raw` is the JSON object it was read from."""

    source: str
    a: str
    b: str
    verdict: str
    p_value: float
    threshold: float
    reason: str
    evidence: tuple[EvidenceRow, ...]
    transforms: tuple[dict[str, Any], ...]
    layer_map: tuple[dict[str, Any], ...]
    rename_map: dict[str, str]
    provenance: dict[str, Any]
    controls: tuple[Control, ...]
    detection_limit: str | None
    raw: dict[str, Any]

    def method(self, name: str) -> EvidenceRow | None:
        """The evidence of method `name`, if it is in the result."""
        return next((e for e in self.evidence if e.method == name), None)

    def transform(self, kind: str) -> dict[str, Any] | None:
        return next((t for t in self.transforms if t.get("kind") == kind), None)

    @classmethod
    def from_json(cls, obj: Any, source: str = "<result>") -> Report:
        """Check the shape of a canonical result and build the Report; a bad one is a FormatError."""
        if not isinstance(obj, dict):
            raise FormatError(source, f"a compare result is a JSON object, got {type(obj).__name__}")
        schema = obj.get("schema")
        if schema != SCHEMA:
            raise FormatError(source, f"schema is {_short(schema)}, expected {SCHEMA!r}")
        verdict = obj.get("verdict")
        if verdict not in VERDICTS:
            raise FormatError(source, f"verdict is {_short(verdict)}, expected one of {', '.join(VERDICTS)}")
        evidence = obj.get("evidence")
        if not isinstance(evidence, list):
            raise FormatError(source, "'evidence' must be a list")
        rows = tuple(_evidence(e, i, source) for i, e in enumerate(evidence))
        controls_raw = obj.get("controls") or []
        if not isinstance(controls_raw, list):
            raise FormatError(source, "'controls' must be a list")
        limit = obj.get("detection_limit")
        return cls(
            source=source, a=_str(obj, "a", source), b=_str(obj, "b", source), verdict=verdict,
            p_value=_prob(obj.get("p_value"), "p_value", source, required=True) or 0.0,
            threshold=_prob(obj.get("threshold"), "threshold", source, required=True) or 0.0,
            reason=str(obj.get("reason", "")), evidence=rows,
            transforms=tuple(t for t in _list(obj, "transforms", source) if isinstance(t, dict)),
            layer_map=tuple(t for t in _list(obj, "layer_map", source) if isinstance(t, dict)),
            rename_map={str(k): str(v) for k, v in _dict(obj, "rename_map", source).items()},
            provenance=_dict(obj, "provenance", source),
            controls=tuple(_control(c, i, source) for i, c in enumerate(controls_raw)),
            detection_limit=None if limit is None else str(limit), raw=obj,
        )


def load(path: str | Path) -> Report:
    """Read a saved result file (size-capped, our own errors for bad JSON)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise FormatError(p, f"cannot read: {exc.strerror or exc}") from exc
    if size > MAX_RESULT_BYTES:
        raise FormatError(p, f"result is {size} bytes, over the {MAX_RESULT_BYTES}-byte cap")
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FormatError(p, "not UTF-8 text") from exc
    except RecursionError as exc:
        raise FormatError(p, "JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(p, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return Report.from_json(obj, str(p))


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _str(obj: dict[str, Any], key: str, source: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise FormatError(source, f"{key!r} must be a string, got {_short(v)}")
    return v


def _list(obj: dict[str, Any], key: str, source: str) -> list[Any]:
    v = obj.get(key, [])
    if not isinstance(v, list):
        raise FormatError(source, f"{key!r} must be a list")
    return v


def _dict(obj: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    v = obj.get(key, {})
    if not isinstance(v, dict):
        raise FormatError(source, f"{key!r} must be an object")
    return v


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _prob(v: object, what: str, source: str, required: bool = False) -> float | None:
    if v is None and not required:
        return None
    f = _num(v)
    if f is None or not 0.0 <= f <= 1.0:
        raise FormatError(source, f"{what} must be a number in [0, 1], got {_short(v)}")
    return f


def _evidence(e: object, i: int, source: str) -> EvidenceRow:
    where = f"evidence[{i}]"
    if not isinstance(e, dict):
        raise FormatError(source, f"{where} must be an object")
    method, status = e.get("method"), e.get("status")
    if not isinstance(method, str) or not isinstance(status, str):
        raise FormatError(source, f"{where} needs string 'method' and 'status'")
    details = e.get("details") or {}
    if not isinstance(details, dict):
        raise FormatError(source, f"{where}.details must be an object")
    return EvidenceRow(method=method, kind=str(e.get("kind", "")), status=status,
                       statement=str(e.get("statement", "")), null_hypothesis=str(e.get("null_hypothesis", "")),
                       statistic=_num(e.get("statistic")),
                       p_value=_prob(e.get("p_value"), f"{where}.p_value", source),
                       powered=bool(e.get("powered", False)), details=details)


def _control(c: object, i: int, source: str) -> Control:
    if not isinstance(c, dict):
        raise FormatError(source, f"controls[{i}] must be an object")
    return Control(kind=str(c.get("kind", "")), strength=_num(c.get("strength")), method=str(c.get("method", "")),
                   p_value=_prob(c.get("p_value"), f"controls[{i}].p_value", source),
                   detected=bool(c.get("detected", False)))
