"""Installable lineage tools run on the benchmark's pairs, each in its own virtual environment.

Each peer is installed under `<cache>/peers/<name>/venv` (never into modeltrace's environment), with
torch pinned to the CPU build already used here so no CUDA wheels are pulled, and driven by a small
script run with the peer's own interpreter: JSON lines in (one pair each), JSON lines out. A pair that
fails or hangs (a per-pair alarm) is that pair's error; a peer that fails to install is reported with
the error. Results are appended as they arrive, so a rerun skips pairs already done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modeltrace.benchmark.runner import PairSpec, Progress

MARK = "@@peer-result@@ "
TORCH_PIN = "torch==2.13.0"
PAIR_TIMEOUT_S = 900
INSTALL_TIMEOUT_S = 3600


@dataclass(frozen=True)
class PeerSpec:
    """How to install one peer and drive it."""

    name: str
    package: str
    version: str
    import_name: str
    install: tuple[tuple[str, ...], ...]  # pip argument lists, run in order
    driver: str  # a script read by the peer's interpreter
    positive: tuple[str, ...]  # verdicts that count as "derived" at the peer's own defaults
    about: str


_PK_DEPS = ("accelerate", "huggingface-hub", "numpy", "pandas", "protobuf", "pyarrow", "pydantic-settings>=2.12.0",
            "pydantic>=2.12.5", "rich", "safetensors", "sentencepiece", "structlog>=25.5.0", "tiktoken", "torch",
            "transformers")

# Drivers: the peer's public entry points, its result passed through as JSON. `A` is the parent, `B` the
# suspected derivative.
_DRIVER_HEAD = r'''
import json, os, signal, sys, time, traceback
MARK = "@@peer-result@@ "
TIMEOUT = int(sys.argv[1])
def _alarm(signum, frame):
    raise TimeoutError(f"no answer within {TIMEOUT} s")
signal.signal(signal.SIGALRM, _alarm)
def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()
'''

_DRIVER_LOOP = r'''
for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    t0 = time.perf_counter()
    signal.alarm(TIMEOUT)
    try:
        out = run(job["a"], job["b"])
        out["pair"] = job["pair"]
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        out = {"pair": job["pair"], "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=4)[-1500:]}
    finally:
        signal.alarm(0)
    out["elapsed_s"] = round(time.perf_counter() - t0, 3)
    emit(out)
'''

_PK_DRIVER = _DRIVER_HEAD + r'''
import logging
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from provenancekit.core.scanner import ModelProvenanceScanner
from provenancekit.services.cache import NullCache
scanner = ModelProvenanceScanner(cache=NullCache())
def run(a, b):
    res = scanner.compare(a, b).model_dump(mode="json")
    sc = res["scores"]
    return {"verdict": sc["provenance_decision"], "score": sc["pipeline_score"],
            "details": {"signals": res["signals"], "scores": sc, "interpretation": res["interpretation"]["label"]}}
''' + _DRIVER_LOOP

_DNA_DRIVER = _DRIVER_HEAD + r'''
from modeldna.scan import compare_pair
def run(a, b):
    # modeldna asks "is the first model derived from the second?"
    fp_b, fp_a, ev, verdict = compare_pair(b, a)
    return {"verdict": verdict.verdict.value, "score": verdict.probability,
            "details": {"features": ev.features(), "shape_compatible": ev.shape_compatible,
                        "layers_match": ev.layers_match, "notes": list(verdict.notes) + list(ev.notes)}}
''' + _DRIVER_LOOP

PEERS: dict[str, PeerSpec] = {
    "provenancekit": PeerSpec(
        name="provenancekit", package="cisco-ai-provenance-kit", version="1.0.0", import_name="provenancekit",
        # it declares Python >= 3.12 but runs on 3.11: install it alone past that check, then its
        # dependencies normally so pip picks releases that support this Python
        install=(("--no-deps", "--ignore-requires-python", "cisco-ai-provenance-kit==1.0.0"), _PK_DEPS),
        driver=_PK_DRIVER, positive=("Confirmed Match", "High-Confidence Match"),
        about="ModelProvenanceScanner.compare: metadata fingerprint gate, then a weighted identity score of "
              "five weight signals (EAS, NLF, LEP, END, WVC); verdict = its provenance_decision",
    ),
    "modeldna": PeerSpec(
        name="modeldna", package="modeldna", version="0.1.0", import_name="modeldna",
        install=(("modeldna==0.1.0",),),
        driver=_DNA_DRIVER, positive=("EXACT_COPY", "QUANTIZED_COPY", "FINE_TUNE", "SAME_LINEAGE", "LIKELY_MERGE"),
        about="modeldna.scan.compare_pair: sampled-weight fingerprints, logistic calibration to P(derived), "
              "verdict classes; SAME_FAMILY_UNRESOLVED (abstention) and NO_MATCH count as not derived",
    ),
}


@dataclass(frozen=True)
class PeerEnv:
    python: Path | None
    error: str | None


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_installed(spec: PeerSpec, root: Path) -> PeerEnv:
    """Create `<root>/<name>/venv` and install the peer there (once); the error when that fails."""
    home = root.resolve() / spec.name
    venv = home / "venv"
    marker = home / "installed.json"
    py = _venv_python(venv)
    if marker.is_file() and py.is_file():
        return PeerEnv(py, None)
    home.mkdir(parents=True, exist_ok=True)
    constraints = home / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n", encoding="utf-8")
    log = home / "install.log"
    try:
        if not py.is_file():
            subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, capture_output=True, text=True,
                           timeout=600)
        with open(log, "w", encoding="utf-8") as fh:
            for args in spec.install:
                proc = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-c",
                                       str(constraints), *args], stdout=fh, stderr=subprocess.STDOUT, text=True,
                                      timeout=INSTALL_TIMEOUT_S, check=False)
                if proc.returncode != 0:
                    return PeerEnv(None, f"pip install {' '.join(args)} failed (status {proc.returncode}): "
                                         + _tail(log))
        check = subprocess.run([str(py), "-c", f"import {spec.import_name}"], capture_output=True, text=True,
                               timeout=600, check=False)
        if check.returncode != 0:
            return PeerEnv(None, f"import {spec.import_name} failed: {_last_line(check.stderr)}")
    except (OSError, subprocess.SubprocessError) as exc:
        return PeerEnv(None, f"installing {spec.package} failed: {type(exc).__name__}: {exc}")
    marker.write_text(json.dumps({"package": spec.package, "version": spec.version,
                                  "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
                      encoding="utf-8")
    return PeerEnv(py, None)


def _base_python() -> str:
    """The interpreter a new venv is made from: the base of ours, so the peer shares nothing with it."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def _tail(path: Path, n: int = 3) -> str:
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip() and not ln.startswith("WARNING: Location")]
    return " | ".join(lines[-n:])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def classify(spec: PeerSpec, row: dict[str, Any]) -> bool | None:
    """Did the peer call this pair derived at its own defaults? None when it gave no verdict."""
    if row.get("error") or row.get("verdict") is None:
        return None
    return str(row["verdict"]) in spec.positive


def run_peer(spec: PeerSpec, python: Path, pairs: Sequence[PairSpec], results: Path,
             progress: Progress | None = None, timeout_s: int = PAIR_TIMEOUT_S) -> list[dict[str, Any]]:
    """Run the peer on every pair not yet in `results` (one process for all); return rows for `pairs`."""
    from modeltrace.benchmark.runner import append_row, read_rows

    key = f"{spec.package}=={spec.version}"
    done = {r["pair"]: r for r in read_rows(results) if r.get("run_key") == key}
    todo = [p for p in pairs if p.id not in done or done[p.id].get("error")]
    if progress is not None:
        progress.stage(f"peer {spec.name} ({len(pairs) - len(todo)} already done)", len(todo))
    if todo:
        results.parent.mkdir(parents=True, exist_ok=True)
        script = results.parent / f".driver-{spec.name}.py"
        script.write_text(spec.driver, encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        by_id = {p.id: p for p in todo}
        answered: set[str] = set()
        jobs = "".join(json.dumps({"pair": p.id, "a": str(p.a_path), "b": str(p.b_path)}) + "\n" for p in todo)
        with subprocess.Popen([str(python), str(script), str(timeout_s)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(jobs)
            proc.stdin.close()
            for line in proc.stdout:
                if not line.startswith(MARK):
                    continue
                out = json.loads(line[len(MARK):])
                pid = out.pop("pair", None)
                if pid not in by_id:
                    continue
                if progress is not None:
                    progress.step(f"{spec.name}: {pid}")
                row = {"pair": pid, "peer": spec.name, "run_key": key, **out}
                row["detected"] = classify(spec, row)
                append_row(results, row)
                done[pid] = row
                answered.add(pid)
            stderr = proc.stderr.read() if proc.stderr is not None else ""
            proc.wait()
        for p in todo:
            if p.id not in answered:
                row = {"pair": p.id, "peer": spec.name, "run_key": key, "detected": None,
                       "error": f"driver exited with status {proc.returncode} before answering: "
                                f"{_last_line(stderr)}"}
                append_row(results, row)
                done[p.id] = row
    return [done[p.id] for p in pairs if p.id in done]


def run_all(pairs: Sequence[PairSpec], root: Path, out: Path, progress: Progress | None = None,
            names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Install and run every peer; name -> {"about", "version", "error" | None, "rows"}."""
    results: dict[str, dict[str, Any]] = {}
    for name in names or list(PEERS):
        spec = PEERS[name]
        if progress is not None:
            progress.stage(f"installing peer {name}", 0)
        env = ensure_installed(spec, root)
        entry: dict[str, Any] = {"package": spec.package, "version": spec.version, "about": spec.about,
                                 "positive": list(spec.positive), "error": env.error, "rows": []}
        if env.python is not None:
            entry["rows"] = run_peer(spec, env.python, pairs, out / f"peers-{name}.jsonl", progress)
        results[name] = entry
    return results
