"""The benchmark runner: every evidence method and the combined verdict over every labelled pair.

Each pair runs in a fresh child process, forked one at a time from a server process that has already
imported the methods (multiprocessing's forkserver), for three reasons: its peak resident memory
(`ru_maxrss`) is then that pair's alone, a crash or hang in one reader costs that pair only (it is
recorded with the error, and a timeout kills it), and memory never accumulates across pairs. Results are appended to a JSONL file as each pair finishes; a rerun with the
same tool version and method set skips the pairs already there, so an interrupted run loses nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from modeltrace import __version__
from modeltrace.errors import FormatError, ModelTraceError
from modeltrace.model import load_json

MANIFEST_SCHEMA = "modeltrace.zoo/1"
LABELS = ("derived", "independent", "distilled")
DEFAULT_PAIR_TIMEOUT_S = 1800.0


class Progress(Protocol):
    """What the runner reports while it works (the CLI draws it with rich)."""

    def stage(self, name: str, total: int) -> None: ...

    def step(self, description: str) -> None: ...


class _Silent:
    def stage(self, name: str, total: int) -> None:
        pass

    def step(self, description: str) -> None:
        pass


@dataclass(frozen=True)
class PairSpec:
    """One labelled pair with resolved model paths."""

    id: str
    a: str
    b: str
    a_path: Path
    b_path: Path
    label: str
    kind: str
    truth: dict[str, Any] = field(default_factory=dict)
    set: str = "zoo"  # "zoo" or "real"
    other_path: Path | None = None  # a merge's other parent, given to compare as a user would


@dataclass(frozen=True)
class Manifest:
    path: Path
    quick: bool
    models: dict[str, dict[str, Any]]
    pairs: list[PairSpec]


def load_manifest(path: Path) -> Manifest:
    """Read and check a zoo manifest (schema modeltrace.zoo/1); errors name the file and the entry."""
    data = load_json(path)
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        raise FormatError(path, f"not a zoo manifest (expected schema {MANIFEST_SCHEMA!r})")
    models: dict[str, dict[str, Any]] = {}
    for i, m in enumerate(data.get("models") or []):
        if not isinstance(m, dict) or not isinstance(m.get("id"), str) or not isinstance(m.get("path"), str):
            raise FormatError(path, f"models[{i}] needs string fields 'id' and 'path'")
        models[m["id"]] = m
    pairs: list[PairSpec] = []
    for i, p in enumerate(data.get("pairs") or []):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) for k in ("id", "a", "b", "label")):
            raise FormatError(path, f"pairs[{i}] needs string fields 'id', 'a', 'b' and 'label'")
        if p["label"] not in LABELS:
            raise FormatError(path, f"pairs[{i}] ({p['id']}): label {p['label']!r} is not one of {LABELS}")
        for side in ("a", "b"):
            if p[side] not in models:
                raise FormatError(path, f"pairs[{i}] ({p['id']}): model {p[side]!r} is not in 'models'")
        pairs.append(PairSpec(
            id=p["id"], a=p["a"], b=p["b"], a_path=(path.parent / models[p["a"]]["path"]).resolve(),
            b_path=(path.parent / models[p["b"]]["path"]).resolve(), label=p["label"],
            kind=str(p.get("kind") or p["label"]), truth=dict(p.get("truth") or {}),
            other_path=_other_path(path, models, p),
        ))
    return Manifest(path=path, quick=bool(data.get("quick")), models=models, pairs=pairs)


def select_pairs(pairs: Sequence[PairSpec], pattern: str | None) -> list[PairSpec]:
    """Pairs whose id matches the shell-style `pattern` (all when None)."""
    if not pattern:
        return list(pairs)
    return [p for p in pairs if fnmatch.fnmatchcase(p.id, pattern)]


def run_key(methods: Sequence[str], options: dict[str, Any] | None = None) -> str:
    """Rows are reused only when the tool version, the method set and the compare options are the same."""
    key = f"modeltrace {__version__}|" + ",".join(sorted(methods))
    if options:
        key += "|" + json.dumps(options, sort_keys=True)
    return key


# --- one pair ---------------------------------------------------------------------------------------

def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def run_pair(job: dict[str, Any]) -> dict[str, Any]:
    """Compare one pair (and score the baselines); the result row without the pair's labels.

    Peak memory is the process's resident high-water mark after compare (before the baselines run),
    plus that of any child process compare started; meaningful only in a fresh process (`isolate`).
    """
    from modeltrace.benchmark.baselines import run_baselines
    from modeltrace.compare import compare
    from modeltrace.model import Model

    base_rss = _maxrss_mib(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    row: dict[str, Any] = {}
    try:
        with Model.open(job["a_path"]) as a, Model.open(job["b_path"]) as b:
            res = compare(a, b, methods=job["methods"], threshold=job["threshold"], seed=job["seed"],
                          options=job.get("options") or {})
            row["compare_s"] = round(time.perf_counter() - t0, 3)
            row["peak_rss_mib"] = round(max(_maxrss_mib(resource.RUSAGE_SELF),
                                            _maxrss_mib(resource.RUSAGE_CHILDREN)), 1)
            row["start_rss_mib"] = round(base_rss, 1)
            out = res.to_json()
            row["verdict"] = out["verdict"]
            row["p_value"] = out["p_value"]
            row["reason"] = out["reason"]
            row["evidence"] = {e["method"]: {k: e[k] for k in ("status", "p_value", "statistic", "powered",
                                                               "statement")} for e in out["evidence"]}
            row["transforms"] = out["transforms"]
            if job.get("baselines", True):
                t1 = time.perf_counter()
                row["baselines"] = run_baselines(a, b)
                row["baselines_s"] = round(time.perf_counter() - t1, 3)
    except ModelTraceError as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a crash on one pair is that pair's result, not the run's end
        row["error"] = f"internal {type(exc).__name__}: {exc}"
    return row


def _child(job: dict[str, Any], conn: Any) -> None:
    """Child-process entry: run one job and send its row back."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)  # the machine is shared; results do not depend on threads
    try:
        row = run_pair(job)
    except BaseException as exc:  # noqa: BLE001 - report, do not die silently: the parent records the error
        row = {"error": f"{type(exc).__name__}: {exc}"}
    conn.send(json.loads(json.dumps(row, default=_json_default)))
    conn.close()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class Isolator:
    """Runs each pair in a fresh process forked from a server that has already imported the methods.

    The fork server imports modeltrace, the evidence methods and the baselines once, so a pair costs a
    fork, not an interpreter start; each child's `ru_maxrss` starts at the server's resident size
    (reported as `start_rss_mib`) and ends at the pair's peak.
    """

    def __init__(self, methods: Sequence[str]) -> None:
        import multiprocessing as mp

        from modeltrace.evidence import METHODS

        self._ctx = mp.get_context("forkserver")
        mods = {"modeltrace.compare", "modeltrace.benchmark.runner", "modeltrace.benchmark.baselines",
                "modeltrace.benchmark.zoo.families"}
        for name in methods:
            target = METHODS._targets.get(name)
            if target:
                mods.add(target.partition(":")[0])
        self._ctx.set_forkserver_preload(sorted(mods))

    def run(self, job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        recv, send = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child, args=(job, send), daemon=True)
        proc.start()
        send.close()
        row: dict[str, Any]
        try:
            if recv.poll(timeout_s):
                row = recv.recv()
            else:
                row = {"error": f"timed out after {timeout_s:.0f} s"}
        except EOFError:
            proc.join(10)
            row = {"error": f"worker exited with status {proc.exitcode} before answering"}
        finally:
            recv.close()
            if proc.is_alive():
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        return row


# --- many pairs, resumable --------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results JSONL file; a torn last line (an interrupted write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def latest_rows(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """pair id -> the last row written for it under `key`."""
    return {r["pair"]: r for r in read_rows(path) if r.get("run_key") == key and "pair" in r}


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_pairs(
    pairs: Sequence[PairSpec],
    results: Path,
    methods: Sequence[str],
    *,
    threshold: float,
    seed: int = 0,
    isolate: bool = True,
    timeout_s: float = DEFAULT_PAIR_TIMEOUT_S,
    progress: Progress | None = None,
    stage: str = "pairs",
    options: dict[str, Any] | None = None,
    run_missing: bool = True,
) -> list[dict[str, Any]]:
    """Run every pair not already in `results` under this run key; return the rows for `pairs`.

    Pairs whose last row is an error are run again. With `run_missing` False nothing is run: the rows
    already there are returned (a report on a run that was stopped).
    """
    prog = progress or _Silent()
    key = run_key(methods, options)
    done = latest_rows(results, key)
    todo = [p for p in pairs if p.id not in done or "error" in done[p.id]] if run_missing else []
    prog.stage(f"{stage} ({len(pairs) - len(todo)} already done)", len(todo))
    isolator = Isolator(methods) if isolate and todo else None
    for p in todo:
        prog.step(p.id)
        job_options = dict(options or {})
        if p.other_path is not None:
            job_options["other"] = str(p.other_path)
        job = {"a_path": str(p.a_path), "b_path": str(p.b_path), "methods": list(methods),
               "threshold": threshold, "seed": seed, "baselines": True, "options": job_options}
        t0 = time.perf_counter()
        result = isolator.run(job, timeout_s) if isolator is not None else run_pair(job)
        result.setdefault("wall_s", round(time.perf_counter() - t0, 3))
        if not isolate:
            result.pop("peak_rss_mib", None)  # the parent's high-water mark says nothing about this pair
            result.pop("start_rss_mib", None)
        row = {"pair": p.id, "set": p.set, "a": p.a, "b": p.b, "label": p.label, "kind": p.kind,
               "truth": p.truth, "run_key": key, "seed": seed, **result}
        append_row(results, row)
        done[p.id] = row
    return [done[p.id] for p in pairs if p.id in done]


# --- real models ------------------------------------------------------------------------------------

def shared_dir() -> Path | None:
    """../shared next to the checkout (or $MODELTRACE_SHARED), where the real-model pairs are described."""
    for cand in (os.environ.get("MODELTRACE_SHARED"), Path.cwd().parent / "shared",
                 Path(__file__).resolve().parents[3].parent / "shared"):
        if cand and (Path(cand) / "realmodels" / "pairs.json").is_file():
            return Path(cand)
    return None


@dataclass(frozen=True)
class RealPairs:
    pairs: list[PairSpec]
    skipped: str | None  # why the real-model table is empty


def real_pairs(models_dir: Path, *, fetch: bool = True, log: Callable[[str], None] | None = None) -> RealPairs:
    """The labelled real-model pairs of ../shared/realmodels, fetching the models when absent."""
    shared = shared_dir()
    if shared is None:
        return RealPairs([], "../shared/realmodels/pairs.json not found (set MODELTRACE_SHARED)")
    script = shared / "realmodels" / "fetch_models.sh"
    if not (models_dir.is_dir() and any(models_dir.iterdir())):
        if not fetch or not script.is_file():
            return RealPairs([], f"models absent at {models_dir} and not fetched")
        if log:
            log(f"fetching real models into {models_dir}")
        try:
            proc = subprocess.run(["bash", str(script), str(models_dir)], capture_output=True, text=True,
                                  timeout=3600, env=dict(os.environ, PYTHON=sys.executable), check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return RealPairs([], f"fetch_models.sh failed: {exc}")
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            return RealPairs([], f"fetch_models.sh exited with status {proc.returncode}: {tail}")
    data = load_json(shared / "realmodels" / "pairs.json")
    out: list[PairSpec] = []
    missing: list[str] = []
    for p in data.get("pairs", []):
        a, b = (models_dir / p["a"]).resolve(), (models_dir / p["b"]).resolve()
        if not a.exists() or not b.exists():
            missing.append(p["id"])
            continue
        out.append(PairSpec(id=p["id"], a=p["a"], b=p["b"], a_path=a, b_path=b, label=p["label"],
                            kind=p.get("kind", p["label"]), truth={}, set="real"))
    reason = f"models missing for {', '.join(missing)}" if missing and not out else None
    return RealPairs(out, reason)


# --- the whole benchmark ----------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run depends on; `command` is recorded verbatim in the report."""

    out: Path
    cache: Path
    quick: bool = False
    methods: tuple[str, ...] | None = None
    peers: bool = True
    pairs_glob: str | None = None
    realmodels: Path | None = None
    manifest: Path | None = None
    docs: Path | None = None
    isolate: bool = True
    timeout_s: float = DEFAULT_PAIR_TIMEOUT_S
    threshold: float = 1e-6
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # passed to compare (e.g. {"behaviour": True})
    command: str = "modeltrace bench"
    zoo: str = "tuning"  # "tuning", "heldout", "scale" (zoo/settings.py) or "real" (zoo/real.py)
    real_source: Path | None = None  # where the real zoo finds SmolLM2 (default: realmodels or its default)
    skip_control_pairs: bool = False  # leave out the independent pairs that only control a derivation
    run_missing: bool = True  # False: report on the rows already written, run nothing


def _other_path(path: Path, models: dict[str, dict[str, Any]], pair: dict[str, Any]) -> Path | None:
    """For a merge, the path of the other parent its truth names (compare's `--other`)."""
    other = (pair.get("truth") or {}).get("other")
    if pair.get("label") != "derived" or not isinstance(other, str) or other not in models:
        return None
    return Path(path.parent / str(models[other]["path"])).resolve()


def training_roots(manifest: Manifest) -> dict[str, str]:
    """Each model's original training run: follow the recipe's first parent until a model has none."""
    roots: dict[str, str] = {}
    for mid in manifest.models:
        cur, seen = mid, {mid}
        while True:
            parents = (manifest.models.get(cur, {}).get("recipe") or {}).get("parents") or []
            if not parents or parents[0] in seen or parents[0] not in manifest.models:
                break
            cur = parents[0]
            seen.add(cur)
        roots[mid] = cur
    return roots


def check_selection(manifest_path: Path, pairs_glob: str | None) -> tuple[Manifest, list[PairSpec]]:
    """Load the manifest and select the pairs; an empty selection is an error naming the glob."""
    manifest = load_manifest(manifest_path)
    pairs = select_pairs(manifest.pairs, pairs_glob)
    if pairs_glob and not pairs:
        raise ModelTraceError(f"no pair id matches {pairs_glob!r}",
                              hint="pair ids look like " + ", ".join(p.id for p in manifest.pairs[:3]))
    return manifest, pairs


def without_control_pairs(pairs: Sequence[PairSpec]) -> list[PairSpec]:
    """Pairs less the independent ones that control a derivation (a derived model against a base it does not
    come from, `truth.control_for`): they repeat the pairs of training runs that the base pairs already
    hold, so calibration keeps every draw; the false-positive count is then over the base pairs only."""
    return [p for p in pairs if not (p.label == "independent" and "control_for" in p.truth)]


def build_or_load_zoo(cfg: BenchConfig, progress: Progress | None = None) -> Path:
    """The manifest: the given one, or the zoo built (or reused) under the cache."""
    if cfg.manifest is not None:
        return cfg.manifest
    try:
        from modeltrace.benchmark.zoo import build_zoo  # type: ignore[attr-defined, unused-ignore]
    except ImportError as exc:
        raise ModelTraceError(f"the model zoo is unavailable: {exc}",
                              hint="pass --manifest with a zoo manifest.json") from exc
    if cfg.zoo == "real":
        from modeltrace.benchmark.zoo.real import build_real_zoo

        models = cfg.real_source or cfg.realmodels or Path(os.environ.get("MODELTRACE_REALMODELS")
                                                          or ".cache/realmodels")
        if progress is not None:
            progress.stage("building the real-model derivations", 0)
        try:
            return build_real_zoo(models, cfg.cache / "zoo-real",
                                  log=(lambda m: progress.step(m)) if progress is not None else (lambda m: None))
        except FileNotFoundError as exc:
            raise ModelTraceError(str(exc), hint="fetch the real models (make realmodels) or pass --realmodels")
    from modeltrace.benchmark.zoo.settings import settings_for

    settings = settings_for(cfg.zoo, cfg.quick)
    cache_dir = cfg.cache / ({"full": "zoo", "quick": "zoo-quick"}.get(settings.name) or f"zoo-{settings.name}")
    staged = False

    def _zoo_progress(event: Any) -> None:
        nonlocal staged
        if progress is None:
            return
        if not staged:
            progress.stage("building the zoo", int(getattr(event, "total", 0) or 0))
            staged = True
        status = getattr(event, "status", "")
        if status in ("built", "cached"):
            progress.step(f"{getattr(event, 'model_id', '?')} ({status})")

    return Path(build_zoo(cache_dir, quick=cfg.quick, progress=_zoo_progress, settings=settings))


def run_benchmark(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Build or load the zoo, run every pair (and the peers and real models), write the report."""
    from modeltrace.compare import plan

    methods = plan(list(cfg.methods) if cfg.methods else None)
    manifest, pairs = check_selection(build_or_load_zoo(cfg, progress), cfg.pairs_glob)
    if cfg.skip_control_pairs:
        pairs = without_control_pairs(pairs)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with _exclusive(cfg.out / ".lock"):
        return _run_locked(cfg, methods, manifest, pairs, progress)


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """One run per results folder: two would both run the pairs not yet done and append twice."""
    with open(lock, "w", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ModelTraceError(f"another benchmark run is writing to {lock.parent}",
                                  hint="wait for it to finish, or pass another --out") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_locked(cfg: BenchConfig, methods: list[str], manifest: Manifest, pairs: list[PairSpec],
                progress: Progress | None) -> dict[str, Any]:
    from modeltrace.benchmark import peers as peers_mod
    from modeltrace.benchmark import report

    started = time.time()
    rows = run_pairs(pairs, cfg.out / "pairs.jsonl", methods, threshold=cfg.threshold, seed=cfg.seed,
                     isolate=cfg.isolate, timeout_s=cfg.timeout_s, progress=progress, stage="zoo pairs",
                     options=cfg.options, run_missing=cfg.run_missing)

    real: RealPairs = RealPairs([], "not requested (quick mode, or --no-realmodels)")
    real_rows: list[dict[str, Any]] = []
    if cfg.realmodels is not None:
        real = real_pairs(cfg.realmodels)
        if real.pairs:
            real_rows = run_pairs(real.pairs, cfg.out / "realmodels.jsonl", methods, threshold=cfg.threshold,
                                  seed=cfg.seed, isolate=cfg.isolate, timeout_s=cfg.timeout_s,
                                  progress=progress, stage="real-model pairs", options=cfg.options)

    peer_results: dict[str, dict[str, Any]] = {}
    if cfg.peers:
        peer_results = peers_mod.run_all(list(pairs) + list(real.pairs), cfg.cache / "peers", cfg.out,
                                         progress=progress)

    summary = report.summarize(
        rows, real_rows=real_rows, real_skipped=real.skipped, peers=peer_results, methods=methods,
        threshold=cfg.threshold, meta={
            "command": cfg.command, "quick": cfg.quick, "manifest": str(manifest.path),
            "tool": f"modeltrace {__version__}", "python": sys.version.split()[0], "seed": cfg.seed,
            "git": _git_revision(), "isolated": cfg.isolate, "pairs_glob": cfg.pairs_glob,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1), "methods": list(methods), "options": cfg.options,
            "zoo": cfg.zoo, "pairs_planned": len(pairs), "pairs_reported": len(rows),
        }, roots=training_roots(manifest))
    report.write(summary, cfg.out, cfg.docs)
    summary["_rows"] = rows  # for the side-by-side page; not in summary.json
    summary["_roots"] = training_roots(manifest)
    return summary


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

