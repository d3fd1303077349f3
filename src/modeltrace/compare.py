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
from modeltrace.evidence import METHODS, CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.evidence.controls import ControlReport, run_weight_controls, summarize
from modeltrace.model import Model
from modeltrace.stats.combine import bonferroni_min

SCHEMA = "modeltrace.compare/1"
FIXED = "fixed-tensors"
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
    controls: ControlReport | None = None
    controls_s: float = 0.0

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
            "controls": [o.to_json() for o in self.controls.outcomes] if self.controls else [],
            "detection_limit": self.controls.limit if self.controls else None,
            "controls_required": self.controls.required_kinds if self.controls else [],
            "controls_missed": self.controls.missed if self.controls else [],
            "provenance": {
                "tool": f"modeltrace {__version__}",
                "python": platform.python_version(),
                "seed": self.seed,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "elapsed_s": round(self.elapsed_s, 3),
                "controls_s": round(self.controls_s, 3),
                "inputs": self.inputs,
            },
        }


def decide(evidence: Sequence[Evidence], threshold: float,
           controls: ControlReport | None) -> tuple[Verdict, float, str]:
    """The verdict: `derived` below the threshold; `independent` only when nothing was found AND the
    positive controls showed the tests that ran would have caught each derivation kind in scope.

    A method that failed never reads as independence, a test that could not reject proves nothing,
    and the reason names only tests that ran.
    """
    tested = [e for e in evidence if e.status == "ok" and e.p_value is not None]
    errors = [e for e in evidence if e.status == "error"]
    p = bonferroni_min([e.p_value for e in tested if e.p_value is not None]) if tested else 1.0
    if tested and p < threshold:
        strongest = min(tested, key=lambda e: e.p_value if e.p_value is not None else 1.0)
        return "derived", p, f"{strongest.method}: {strongest.statement}"
    if errors:
        failed = "; ".join(f"{e.method} failed ({e.statement})" for e in errors[:3])
        return "inconclusive", p, (f"{failed}; a method that failed is never read as independence"
                                   + (f" (combined p of the tests that ran {p:.3g})" if tested else ""))
    if not tested:
        return "inconclusive", 1.0, "no test could run on these two models"
    ran = ", ".join(sorted({e.method for e in tested}))
    kinds = {e.kind for e in tested}
    found = "no shared " + " or ".join(
        k for k, has in (("weights", "weights" in kinds),
                         ("behaviour", bool(kinds & {"behaviour", "representation"})),
                         ("artifacts", "artifacts" in kinds)) if has)
    untested = [k for k, has in (("weights", "weights" in kinds),
                                 ("behaviour", bool(kinds & {"behaviour", "representation"}))) if not has]
    not_tested = "; " + " and ".join(untested) + " not tested" if untested else ""
    if controls is None:
        return "inconclusive", p, (f"{ran}: {found}{not_tested}; positive controls were not run, and without them "
                                   "nothing shows what these tests would have caught")
    if not controls.outcomes:
        return "inconclusive", p, (f"{ran}: {found}{not_tested}; no positive control could be made for these "
                                   "tests, so nothing shows what they would have caught")
    if controls.missed:
        return "inconclusive", p, (f"{ran}: {found}{not_tested}; but these tests would have missed a copy made by "
                                   f"{', '.join(controls.missed)} ({controls.limit})")
    return "independent", p, f"{ran}: {found}{not_tested}; {controls.limit}"


def plan(names: Sequence[str] | None = None) -> list[str]:
    """The methods to run, in stage order; `fixed-tensors` joins whenever a weight method runs."""
    chosen = list(dict.fromkeys(names)) if names else METHODS.names()
    classes = [(METHODS.get(n), n) for n in chosen]
    if FIXED not in chosen and any(cls.kind == "weights" for cls, _ in classes):
        classes.append((METHODS.get(FIXED), FIXED))
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
    controls: bool = True,
) -> CompareResult:
    """Run the evidence methods on A and B and decide whether B is derived from A."""
    t0 = time.perf_counter()
    ctx = CompareContext(a=a, b=b, seed=seed, options={**(options or {}), "threshold": threshold})
    evidence: list[Evidence] = []
    ran: list[tuple[EvidenceMethod, Evidence]] = []
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
            ev = method.run(ctx)
            evidence.append(ev)
            ran.append((method, ev))
        except ModelTraceError as exc:
            evidence.append(Evidence(method=name, status="error", statement=str(exc), kind=cls.kind,
                                     powered=False, details={"error": type(exc).__name__}))
        except Exception as exc:  # noqa: BLE001 - a bug in one method must not sink the others
            evidence.append(Evidence(method=name, status="error", statement=f"{type(exc).__name__}: {exc}",
                                     kind=cls.kind, powered=False,
                                     details={"error": type(exc).__name__,
                                              "traceback": traceback.format_exc(limit=6)}))
    t1 = time.perf_counter()
    report = positive_controls(ctx, evidence, ran, threshold, progress) if controls else None
    controls_s = time.perf_counter() - t1
    verdict, p, reason = decide(evidence, threshold, report)
    return CompareResult(
        a=a.ref, b=b.ref, verdict=verdict, p_value=p, threshold=threshold, reason=reason, evidence=evidence,
        transforms=ctx.transforms, layer_map=ctx.layer_map, rename_map=ctx.rename_map, seed=seed,
        inputs={"a": _file_digest(a, hash_files), "b": _file_digest(b, hash_files)},
        elapsed_s=time.perf_counter() - t0, controls=report, controls_s=controls_s,
    )


def positive_controls(ctx: CompareContext, evidence: Sequence[Evidence], ran: Sequence[tuple[EvidenceMethod, Evidence]],
                      threshold: float, progress: Callable[[str], None] | None = None) -> ControlReport | None:
    """What the tests that ran would have caught, measured only when nothing was found (else None)."""
    tested = [e for e in evidence if e.status == "ok" and e.p_value is not None]
    if not tested or any(e.status == "error" for e in evidence):
        return None
    if bonferroni_min([e.p_value for e in tested if e.p_value is not None]) < threshold:
        return None
    if progress:
        progress("controls")
    weight_tests = [(m, e) for m, e in ran if e.kind == "weights" and e.status == "ok" and e.p_value is not None]
    results = run_weight_controls(ctx, weight_tests, threshold) if weight_tests else []
    extra = []
    for m, e in ran:
        if e.kind != "weights" and e.status == "ok" and e.p_value is not None:
            try:
                extra.extend(m.controls(ctx, e))
            except ModelTraceError:
                continue  # no control for this test: it cannot clear anything on its own
    return summarize(results, extra)
