"""The compare pipeline: plan evidence methods, run each with a seed, combine, decide.

CLI -> references -> lazy models -> methods whose needs are met (skipped ones keep their
reason) -> each run (a crash becomes an `error` finding, not a crash) -> combined p-value ->
verdict -> one `CompareResult`, which reporters render.
"""

from __future__ import annotations

import hashlib
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from modeltrace import __version__
from modeltrace.errors import ModelTraceError
from modeltrace.evidence import METHODS, CompareContext, Evidence, Transform
from modeltrace.model import Model
from modeltrace.stats.combine import bonferroni_min, harmonic_mean_p

SCHEMA = "modeltrace.compare/1"
DEFAULT_THRESHOLD = 1e-6
Verdict = Literal["derived", "independent", "inconclusive"]


@dataclass
class CompareResult:
    """Everything compare found; `to_json` is the canonical form every reporter derives from."""

    a: str
    b: str
    verdict: Verdict
    p_value: float
    threshold: float
    reason: str
    evidence: list[Evidence]
    transforms: list[Transform]
    layer_map: list[dict[str, Any]]
    rename_map: dict[str, str]
    seed: int
    inputs: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "a": self.a,
            "b": self.b,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "reason": self.reason,
            "evidence": [e.to_json() for e in self.evidence],
            "transforms": [t.to_json() for t in self.transforms],
            "layer_map": self.layer_map,
            "rename_map": self.rename_map,
            "provenance": {
                "tool": f"modeltrace {__version__}",
                "python": platform.python_version(),
                "seed": self.seed,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "elapsed_s": round(self.elapsed_s, 3),
                "inputs": self.inputs,
            },
        }


def decide(evidence: Sequence[Evidence], threshold: float) -> tuple[Verdict, float, str]:
    """Combine the p-values of powered tests into a verdict (see stats.combine for why Bonferroni)."""
    tested = [e for e in evidence if e.status == "ok" and e.p_value is not None]
    if not tested:
        return "inconclusive", 1.0, "no test could run on these two models"
    p = bonferroni_min([e.p_value for e in tested if e.p_value is not None])
    strongest = min(tested, key=lambda e: e.p_value if e.p_value is not None else 1.0)
    if p < threshold:
        return "derived", p, f"{strongest.method}: {strongest.statement}"
    if any(e.powered for e in tested):
        hmp = harmonic_mean_p([e.p_value for e in tested if e.p_value is not None])
        return "independent", p, (f"{sum(e.powered for e in tested)} powered test(s) found no shared weights "
                                  f"or behaviour (harmonic-mean p {hmp:.3g})")
    return "inconclusive", p, "the tests that ran had too little power: " + "; ".join(
        f"{e.method}: {e.statement}" for e in tested)


def plan(names: Sequence[str] | None = None) -> list[str]:
    """The methods to run, in stage order."""
    chosen = list(names) if names else METHODS.names()
    classes = [(METHODS.get(n), n) for n in chosen]
    return [n for cls, n in sorted(classes, key=lambda cn: (cn[0].stage, cn[1]))]


def _file_digest(model: Model, hash_files: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"ref": model.ref, "weight_files": [str(p) for p in model.weight_files]}
    if hash_files:
        out["sha256"] = {}
        for p in model.weight_files:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            out["sha256"][str(p)] = h.hexdigest()
    return out


def compare(
    a: Model,
    b: Model,
    *,
    methods: Sequence[str] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    hash_files: bool = False,
) -> CompareResult:
    """Run the evidence methods on A and B and decide whether B is derived from A."""
    t0 = time.perf_counter()
    ctx = CompareContext(a=a, b=b, seed=seed, options=dict(options or {}))
    evidence: list[Evidence] = []
    for name in plan(methods):
        cls = METHODS.get(name)
        method = cls()
        if progress:
            progress(name)
        try:
            reason = method.needs(ctx)
            if reason is not None:
                evidence.append(Evidence.skipped(name, reason, kind=cls.kind))
                continue
            evidence.append(method.run(ctx))
        except ModelTraceError as exc:
            evidence.append(Evidence(method=name, status="error", statement=str(exc), kind=cls.kind,
                                     powered=False, details={"error": type(exc).__name__}))
        except Exception as exc:  # noqa: BLE001 - a bug in one method must not sink the others
            evidence.append(Evidence(method=name, status="error", statement=f"{type(exc).__name__}: {exc}",
                                     kind=cls.kind, powered=False,
                                     details={"error": type(exc).__name__,
                                              "traceback": traceback.format_exc(limit=6)}))
    verdict, p, reason = decide(evidence, threshold)
    return CompareResult(
        a=a.ref, b=b.ref, verdict=verdict, p_value=p, threshold=threshold, reason=reason, evidence=evidence,
        transforms=ctx.transforms, layer_map=ctx.layer_map, rename_map=ctx.rename_map, seed=seed,
        inputs={"a": _file_digest(a, hash_files), "b": _file_digest(b, hash_files)},
        elapsed_s=time.perf_counter() - t0,
    )
