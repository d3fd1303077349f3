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
from modeltrace.evidence import METHODS, CompareContext, Evidence, Transform
from modeltrace.model import WEIGHT_SUFFIXES, Model
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
            "hashed": bool(hashed) and len(hashed) == len(self.inputs),
            "hash_s": round(sum(float(side.get("hash_s", 0.0)) for side in hashed), 3),
            "hash_bytes": sum(int(side.get("hash_bytes", 0)) for side in hashed),
            "inputs": self.inputs,
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
