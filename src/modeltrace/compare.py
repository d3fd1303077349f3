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
from pathlib import Path
from typing import Any, Literal

from modeltrace import __version__
from modeltrace.errors import ModelTraceError
from modeltrace.evidence import METHODS, CompareContext, Evidence, EvidenceMethod, Transform
from modeltrace.evidence.controls import ControlReport, run_weight_controls, summarize
from modeltrace.model import WEIGHT_SUFFIXES, Model
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
    # set by the caller (the CLI) so `report verify` can re-run the comparison exactly
    command: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

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
            "provenance": self.provenance(),
        }

    def provenance(self) -> dict[str, Any]:
        """Who made this result, how, from which bytes: enough for `modeltrace report verify` to redo it."""
        hashed = [side for side in self.inputs.values() if isinstance(side, dict) and "sha256" in side]
        return {
            "tool": f"modeltrace {__version__}",
            "version": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "command": list(self.command),
            "seed": self.seed,
            "seeds": {"compare": self.seed},
            "settings": {"threshold": self.threshold, **self.settings},
            "created": self.created,
            "elapsed_s": round(self.elapsed_s, 3),
            "controls_s": round(self.controls_s, 3),
            "hashed": bool(hashed) and len(hashed) == len(self.inputs),
            "hash_s": round(sum(float(side.get("hash_s", 0.0)) for side in hashed), 3),
            "hash_bytes": sum(int(side.get("hash_bytes", 0)) for side in hashed),
            "inputs": self.inputs,
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


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, streamed in 4 MiB chunks (memory stays flat on a 100 GB checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_digest(model: Model, hash_files: bool) -> dict[str, Any]:
    """The files compare may read for one side (weights, config, tokenizer, code), hashed when asked.

    Weight files other than the chosen ones (a .bin beside the .safetensors) are never read, so not
    hashed. `hash_s` is the wall time the hashing took, so a report can show what its provenance cost."""
    others = [p for p in model.files if p.suffix not in WEIGHT_SUFFIXES]
    return {"ref": model.ref, "weight_files": [str(p) for p in model.weight_files],
            **digest_files([*others, *model.weight_files], hash_files)}


def digest_files(paths: Sequence[str | Path], hash_files: bool) -> dict[str, Any]:
    """`files` (sorted, unique) and, when hashing, their `sha256`, total `hash_bytes` and `hash_s`."""
    files = sorted({Path(p).absolute() for p in paths})
    out: dict[str, Any] = {"files": [str(p) for p in files]}
    if hash_files:
        t0 = time.perf_counter()
        out["sha256"] = {str(p): sha256_file(p) for p in files}
        out["hash_bytes"] = sum(p.stat().st_size for p in files)
        out["hash_s"] = round(time.perf_counter() - t0, 3)
    return out


def extra_inputs(options: dict[str, Any], hash_files: bool) -> dict[str, Any]:
    """Inputs beside the two models: extra code (--code), the probe set and reference folders.

    Returns {} or {"extra": digest}; with a probe set whose secret is present, also its commitment
    (the publishable Merkle root, `modeltrace.probes.commit`), so a report can cite the probes it used."""
    paths: list[Path] = []
    for item in options.get("code") or []:
        _, _, path = str(item).partition("=")
        paths += _files_under(Path(path))
    for ref in options.get("references") or []:
        if Path(str(ref)).exists():
            paths += _files_under(Path(str(ref)))
    out: dict[str, Any] = {}
    probes = options.get("probes")
    if probes:  # the commitment secret stays out of the report, even as a hash
        paths += [f for f in _files_under(Path(str(probes))) if f.name != "commitment.secret"]
    if paths:
        out["extra"] = {"ref": "extra inputs (code, probes, references)", **digest_files(paths, hash_files)}
    if probes:
        out.setdefault("extra", {"ref": "extra inputs"})["probe_commitments"] = [_probe_commitment(Path(str(probes)))]
    return out


def _files_under(p: Path) -> list[Path]:
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and ".git" not in f.parts)
    return []


def _probe_commitment(root: Path) -> dict[str, Any]:
    from modeltrace.probes.commit import SECRET_FILE, commit
    from modeltrace.probes.probeset import load_probe_set

    folder = root if root.is_dir() else root.parent
    if not (folder / SECRET_FILE).is_file():
        return {"path": str(root), "root": None, "n_items": None,
                "note": "no commitment secret beside the set: run `modeltrace probe commit` to make one"}
    c = commit(load_probe_set(root))
    return {"path": str(root), "root": c["root"], "n_items": c["n_items"], "schema": c["schema"]}


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
