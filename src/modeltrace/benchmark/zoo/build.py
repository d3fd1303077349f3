"""Build the zoo: plan every model, build what the cache lacks, write manifest.json with ground truth.

Each model is built in `models/<id>.tmp` and renamed into place, then its record (recipe hash, training
losses, recovered facts) is written to `_records/<id>.json`; a model counts as cached only when both exist
and the recipe hash matches, so an interrupted build resumes where it stopped and loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeltrace.benchmark.zoo.families import (
    Spec,
    TinyTransformer,
    export_hf,
    hf_config,
    read_hf_folder,
    write_hf_folder,
)
from modeltrace.benchmark.zoo.settings import FULL, QUICK, SETTINGS, ZooSettings
from modeltrace.benchmark.zoo.text import load_corpus
from modeltrace.benchmark.zoo.tokenizer import (
    tokenizer_from_json,
    train_tokenizer,
    write_tokenizer,
)
from modeltrace.benchmark.zoo.train import TokenData, TrainResult, train

log = logging.getLogger("modeltrace.benchmark.zoo")
SCHEMA = "modeltrace.zoo/1"
ZOO_VERSION = 1
FAMILY_SEED = {"llama": 1000, "gpt2": 2000, "bert": 3000, "mm": 4000}
Progress = Callable[["ZooEvent"], None]


@dataclass(frozen=True)
class ZooEvent:
    """One progress report: a model was built, found in the cache, or skipped."""

    model_id: str
    status: str  # "built" | "cached" | "skipped" | "start"
    index: int
    total: int
    seconds: float = 0.0
    reason: str = ""


@dataclass
class Task:
    """One model to build: its recipe (the cache key) and the pairs it contributes."""

    id: str
    family: str
    kind: str  # "base", "other-shape", a derivation kind, "multimodal", ...
    parents: tuple[str, ...]
    recipe: dict[str, Any]
    run: Callable[[Path], dict[str, Any]]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    ancestors: frozenset[str] = frozenset()
    shape: tuple[int, ...] = ()
    hash: str = ""


def stable_seed(text: str) -> int:
    return zlib.crc32(text.encode("utf-8")) % (2**31)


def default_cache(quick: bool, settings: str | None = None) -> Path:
    """bench/cache/zoo (full), zoo-quick, or zoo-<settings name> for the held-out and scale zoos."""
    if settings in (None, "full", "quick"):
        return Path("bench/cache") / ("zoo-quick" if quick or settings == "quick" else "zoo")
    return Path("bench/cache") / f"zoo-{settings}"


class Zoo:
    """The build state: cache folder, shared data, and loaders for models already built."""

    def __init__(self, cache: Path, settings: ZooSettings) -> None:
        self.cache = Path(cache)
        self.s = settings
        self.models_dir = self.cache / "models"
        self.records_dir = self.cache / "_records"
        self.data_dir = self.cache / "_data"
        self._params: dict[str, tuple[Spec, dict[str, torch.Tensor]]] = {}
        self._data: dict[str, Any] = {}
        self.tasks: dict[str, Task] = {}
        self.skipped: list[dict[str, str]] = []

    # --- shared data ---------------------------------------------------------------------------------------
    def data(self) -> dict[str, Any]:
        """Tokenizer and tokenized splits, built once and kept under `_data/`."""
        if self._data:
            return self._data
        self.data_dir.mkdir(parents=True, exist_ok=True)
        main = load_corpus(self.s.corpus[0], self.s.main_chars)
        other = load_corpus(self.s.corpus[1], self.s.other_chars)
        tok_path = self.data_dir / "tokenizer.json"
        if not tok_path.is_file():
            tok = train_tokenizer(main.text, self.s.vocab)
            _atomic_text(tok_path, tok.to_str(pretty=True))
        tok_json = json.loads(tok_path.read_text(encoding="utf-8"))
        tok = tokenizer_from_json(tok_json)
        arrays = {}
        for role, c in (("main", main), ("other", other)):
            p = self.data_dir / f"{c.split}-{c.sha256[:12]}.npy"
            if not p.is_file():
                ids = np.asarray(tok.encode(c.text).ids, dtype=np.int32)
                tmp = p.with_suffix(".tmp.npy")
                np.save(tmp, ids)
                os.replace(tmp, p)
            arrays[role] = np.load(p)
        self._data = {"tokenizer_json": tok_json, "tokenizer": tok, "main_corpus": main, "other_corpus": other,
                      "main": TokenData("main", arrays["main"], self.s.vocab),
                      "other": TokenData("other", arrays["other"], self.s.vocab),
                      "tokenizer_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest()}
        return self._data

    def seed(self, text: str) -> int:
        """A derived seed for `text` (a model id), salted per zoo so a held-out zoo draws fresh ones."""
        return stable_seed(self.s.seed_salt + text)

    def base_seed(self, family: str, offset: int) -> int:
        return FAMILY_SEED[family] + self.s.seed_offset + offset

    # --- loading and writing -----------------------------------------------------------------------------
    def load(self, model_id: str) -> tuple[Spec, dict[str, torch.Tensor]]:
        if model_id not in self._params:
            self._params[model_id] = read_hf_folder(self.models_dir / model_id)
        spec, params = self._params[model_id]
        return spec, {k: v.clone() for k, v in params.items()}

    def write_model(self, folder: Path, spec: Spec, params: dict[str, torch.Tensor],
                    tokenizer_json: dict[str, Any] | None = None) -> None:
        write_hf_folder(folder, hf_config(spec), export_hf(spec, params))
        write_tokenizer(folder, tokenizer_json or self.data()["tokenizer_json"], spec.max_pos)

    def spec(self, family: str, hidden: int | None = None, layers: int | None = None, heads: int | None = None,
             intermediate: int | None = None) -> Spec:
        s = self.s
        return Spec(family, s.vocab, hidden or s.hidden, layers or s.layers, heads or s.heads,
                    intermediate or s.intermediate, max_pos=s.seq)

    def train(self, model: TinyTransformer, split: str, steps: int, seed: int, lr: float | None = None,
              **kw: Any) -> TrainResult:
        return train(model, self.data()[split], steps=steps, lr=lr or self.s.lr, batch=self.s.batch,
                     seq=self.s.seq, seed=seed, **kw)

    # --- planning --------------------------------------------------------------------------------------------
    def add(self, task: Task) -> None:
        h = hashlib.sha256(json.dumps({"v": ZOO_VERSION, "recipe": task.recipe, "settings": self.s.recipe(),
                                       "parents": [self.tasks[p].hash for p in task.parents]},
                                      sort_keys=True, default=str).encode()).hexdigest()
        task.hash = h
        self.tasks[task.id] = task

    def plan(self) -> None:
        from modeltrace.benchmark.zoo import plan

        plan.plan_zoo(self)

    # --- building ---------------------------------------------------------------------------------------------
    def record_path(self, model_id: str) -> Path:
        return self.records_dir / f"{model_id}.json"

    def cached(self, task: Task) -> dict[str, Any] | None:
        rp = self.record_path(task.id)
        if not rp.is_file():
            return None
        try:
            rec = json.loads(rp.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        rel = rec.get("path")
        if rec.get("recipe_hash") != task.hash or not isinstance(rel, str) or not (self.cache / rel).exists():
            return None
        return rec  # type: ignore[no-any-return]

    def build_one(self, task: Task) -> dict[str, Any]:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.models_dir / f"{task.id}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        torch.manual_seed(self.seed(task.id))
        out = task.run(tmp)
        single = out.pop("single_file", None)
        if single:
            final = self.models_dir / f"{task.id}{Path(single).suffix}"
            _remove(final)
            os.replace(tmp / single, final)
            shutil.rmtree(tmp)
        else:
            final = self.models_dir / task.id
            _remove(final)
            os.replace(tmp, final)
        rec = {"id": task.id, "family": task.family, "kind": task.kind, "recipe_hash": task.hash,
               "path": str(final.relative_to(self.cache)), "format": out.pop("format", "safetensors"),
               "recipe": task.recipe, **out}
        text = json.dumps(rec, indent=1, sort_keys=True, default=_jsonable)
        _atomic_text(self.record_path(task.id), text)
        loaded: dict[str, Any] = json.loads(text)
        return loaded  # exactly what a later, cached run reads back

    def build(self, progress: Progress | None = None, workers: int = 1) -> Path:
        torch.set_num_threads(1)
        self.plan()
        built_in_parallel = self._build_parallel(workers, progress) if workers > 1 else set()
        records: dict[str, dict[str, Any]] = {}
        total = len(self.tasks)
        for n, task in enumerate(self.tasks.values()):
            rec = self.cached(task)
            if rec is not None:
                status, secs = "cached", 0.0
                if task.id in built_in_parallel:
                    records[task.id] = rec
                    continue
            else:
                if progress:
                    progress(ZooEvent(task.id, "start", n, total))
                t0 = time.perf_counter()
                rec = self.build_one(task)
                status, secs = "built", time.perf_counter() - t0
                log.info("built %s in %.1fs", task.id, secs)
            self._params.pop(task.id, None)
            records[task.id] = rec
            if progress:
                progress(ZooEvent(task.id, status, n + 1, total, secs))
        for sk in self.skipped:
            if progress:
                progress(ZooEvent(sk["kind"], "skipped", total, total, reason=sk["reason"]))
        return self.write_manifest(records)

    def _build_parallel(self, workers: int, progress: Progress | None) -> set[str]:
        """Build missing models in `workers` processes, level by level of the parent graph.

        Every task seeds itself from its id, so the bytes do not depend on which process built it.
        """
        import multiprocessing

        pending = [t for t in self.tasks.values() if self.cached(t) is None]
        if not pending:
            return set()
        self.data()  # tokenizer and token arrays once, before the workers read them
        level: dict[str, int] = {}
        for t in self.tasks.values():
            level[t.id] = 1 + max((level[p] for p in t.parents), default=-1)
        done: set[str] = set()
        # fork where the platform has it: spawn re-imports the caller's main module, which hangs a Pool
        # when a script calls build_zoo without an `if __name__ == "__main__"` guard
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ctx.Pool(workers) as pool:
            for lvl in sorted({level[t.id] for t in pending}):
                jobs = [(str(self.cache), self.s, t.id) for t in pending if level[t.id] == lvl]
                for mid, secs in pool.imap_unordered(_worker_build, jobs):
                    done.add(mid)
                    log.info("built %s in %.1fs", mid, secs)
                    if progress:
                        progress(ZooEvent(mid, "built", len(done), len(self.tasks), secs))
        return done

    def write_manifest(self, records: dict[str, dict[str, Any]]) -> Path:
        d = self.data()
        models = []
        for t in self.tasks.values():
            r = records[t.id]
            entry = {"id": t.id, "family": t.family, "kind": t.kind, "path": r["path"], "format": r["format"],
                     "parents": list(t.parents), "recipe": t.recipe}
            if r.get("train"):
                entry["train"] = r["train"]
            if r.get("config"):
                entry["config"] = r["config"]
            models.append(entry)
        pairs = []
        for t in self.tasks.values():
            for p in t.pairs:
                truth = dict(p.get("truth", {}))
                if p["label"] != "independent":  # facts of the child belong to its derived pairs only
                    truth.update(records[t.id].get("truth", {}))
                truth.update(p.get("override", {}))
                pairs.append({"id": p["id"], "a": p["a"], "b": p["b"], "label": p["label"], "kind": p["kind"],
                              "truth": truth})
        manifest = {
            "schema": SCHEMA, "quick": self.s.name != "full", "settings": self.s.name,
            "zoo_version": ZOO_VERSION, "zoo": self.s.zoo,
            "tokenizer": {"sha256": d["tokenizer_sha256"], "vocab_size": self.s.vocab, "kind": "byte-level BPE"},
            "corpus": {"main": d["main_corpus"].describe(), "other": d["other_corpus"].describe()},
            "torch": torch.__version__,
            "models": models, "pairs": pairs, "skipped": self.skipped,
        }
        path = self.cache / "manifest.json"
        _atomic_text(path, json.dumps(manifest, indent=1, default=_jsonable))
        return path


def build_zoo(cache_dir: Path | str | None = None, quick: bool = False, progress: Progress | None = None, *,
              settings: ZooSettings | str | None = None, workers: int | None = None) -> Path:
    """Build (or finish building) the zoo in `cache_dir`; return the path of its manifest.json.

    `quick` picks the CI subset; `settings` ("full", "quick", "tiny" or a ZooSettings) overrides it.
    `workers` processes build in parallel (default: up to 2 CPUs, one process for the tiny zoo); each
    trains single-threaded, and the models do not depend on the number of workers.
    """
    if isinstance(settings, str):
        settings = SETTINGS[settings]
    s = settings or (QUICK if quick else FULL)
    cache = Path(cache_dir) if cache_dir is not None else default_cache(s.name != "full", s.name)
    if workers is None:
        workers = 1 if s.name == "tiny" else max(1, min(2, os.cpu_count() or 1))
    return Zoo(cache, s).build(progress, workers)


_WORKER_ZOOS: dict[tuple[str, str], Zoo] = {}


def _worker_build(job: tuple[str, ZooSettings, str]) -> tuple[str, float]:
    cache, settings, mid = job
    zoo = _WORKER_ZOOS.get((cache, settings.name))
    if zoo is None:
        torch.set_num_threads(1)
        zoo = _WORKER_ZOOS[(cache, settings.name)] = Zoo(Path(cache), settings)
        zoo.plan()
    task = zoo.tasks[mid]
    t0 = time.perf_counter()
    if zoo.cached(task) is None:
        zoo.build_one(task)
    return mid, time.perf_counter() - t0


def console_progress(console: Any = None) -> Progress:
    """A progress callback that prints one line per model with rich (to stderr by default)."""
    from rich.console import Console
    from rich.markup import escape

    out = console or Console(stderr=True)

    def report(e: ZooEvent) -> None:
        if e.status == "start":
            return
        extra = f" ({e.seconds:.1f}s)" if e.status == "built" else (f": {escape(e.reason)}" if e.reason else "")
        out.print(f"[{e.index}/{e.total}] {e.status} {escape(e.model_id)}{extra}")

    return report


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


__all__ = ["SCHEMA", "Task", "Zoo", "ZooEvent", "build_zoo", "console_progress", "default_cache"]
