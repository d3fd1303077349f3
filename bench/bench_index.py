"""Lineage-index benchmark: fingerprints against models on the zoo, search recall, and search at 100,000 models.

1. ``--zoo MANIFEST``: every model of a built zoo (``python -m modeltrace.benchmark.zoo --quick``) is
   fingerprinted; every pair of the manifest is compared model against model (all methods without
   behaviour, and the weight methods alone) and fingerprint against fingerprint; then every model is
   indexed and each derived model searched for (itself excluded): the rank of its true parent, top-1
   and top-3 by derivation kind, and every model above the threshold that is not of the query's lineage.
2. ``--synthetic 1000,10000,100000``: indexes of synthetic fingerprints (families with known ancestry:
   fine-tuned, heavily changed, permuted, layer-dropped children and grandchildren, plus unrelated
   models, 1 in 5 models in a family) built with the same code as real ones; for sampled derived
   queries: search time (candidate stage plus the full test on the candidates), candidate-stage
   recall of the true parent (usearch against the exact scan), top-1/top-3, false relatives.
3. ``--8b``: an 8B-shaped bf16 checkpoint (bench_readers.py's): fingerprint size, wall and CPU time,
   peak memory, throughput against ``cat`` over the same files.

Run: ``nice -n 10 .venv/bin/python bench/bench_index.py --zoo bench/cache/zoo-quick/manifest.json
--synthetic 1000,10000,100000 --out bench/results/index.json``
"""

from __future__ import annotations

import os

# the search is a sequence of small matrix products: one BLAS thread each (threaded BLAS on a busy machine
# is many times slower at these sizes); set before numpy is imported
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from modeltrace.compare import compare
from modeltrace.index.candidates import ExactCandidates, UsearchCandidates, open_candidates
from modeltrace.index.fingerprint import (
    BASIS_TOKENS,
    COORD_DIMS,
    IDX_UNITS,
    SEL_UNITS,
    TOKEN_CANDIDATES,
    Basis,
    Fingerprint,
    LayerSketch,
    candidate_vector,
    compute,
    from_bytes,
    to_bytes,
)
from modeltrace.index.fpcompare import compare_fingerprints, diagnosis
from modeltrace.index.search import search
from modeltrace.index.store import IndexStore
from modeltrace.model import Model

WEIGHT_METHODS = ["weight-match", "weight-identity", "weight-permutation"]
THRESHOLD = 1e-6


# --- 1. the zoo -------------------------------------------------------------------------------
def lineage(models: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Model id -> root of its derivation tree (union of parents), for 'related' ground truth."""
    parent = {m: m for m in models}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for mid, m in models.items():
        for p in m.get("parents") or []:
            if p in parent:
                parent[find(mid)] = find(p)
    return {m: find(m) for m in models}


def zoo(manifest_path: Path) -> dict[str, Any]:
    man = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    models = {m["id"]: m for m in man["models"]}
    fps: dict[str, Fingerprint] = {}
    fp_rows = []
    for mid, m in models.items():
        t0, c0 = time.perf_counter(), time.process_time()
        with Model.open(str(root / m["path"])) as model:
            fp = compute(model)
        data = to_bytes(fp)
        fps[mid] = from_bytes(data, mid)
        fp_rows.append({"model": mid, "bytes": len(data), "layers": len(fp.layers), "wall_s": round(time.perf_counter() - t0, 3),
                        "cpu_s": round(time.process_time() - c0, 3), "basis": "tokens" if fp.basis else "coordinates"})
    pairs = []
    for p in man["pairs"]:
        if p["a"] not in models or p["b"] not in models:
            continue
        pa, pb = str(root / models[p["a"]]["path"]), str(root / models[p["b"]]["path"])
        row: dict[str, Any] = {"pair": p["id"], "kind": p["kind"], "label": p["label"]}
        for key, methods in (("model", None), ("weights", WEIGHT_METHODS)):
            t0 = time.perf_counter()
            with Model.open(pa) as a, Model.open(pb) as b:
                r = compare(a, b, methods=methods, threshold=THRESHOLD, options={"threshold": THRESHOLD})
            row[key] = {"verdict": r.verdict, "p_value": r.p_value, "s": round(time.perf_counter() - t0, 3)}
        t0 = time.perf_counter()
        r = compare_fingerprints(fps[p["a"]], fps[p["b"]], threshold=THRESHOLD)
        row["fingerprint"] = {"verdict": r.verdict, "p_value": r.p_value, "s": round(time.perf_counter() - t0, 4),
                              "diagnosis": diagnosis(r)}
        pairs.append(row)
        print(f"  {p['id']}: model {row['model']['verdict']}, weights {row['weights']['verdict']}, "
              f"fingerprint {row['fingerprint']['verdict']}", file=sys.stderr)
    roots = lineage(models)
    searches = []
    with tempfile.TemporaryDirectory() as tmp:
        store = IndexStore(Path(tmp) / "zoo.db")
        for mid, fp in fps.items():
            data = to_bytes(fp)
            store.add(mid, from_bytes(data, mid), data)
        cand = open_candidates(store)
        for mid, fp in fps.items():
            res = search(store, fp, top=10, threshold=THRESHOLD, exclude={mid}, cand=cand)
            m = models[mid]
            parents = set(m.get("parents") or [])
            related = [h.entry.name for h in res.related]
            rank = next((k for k, name in enumerate(related, 1) if name in parents), None)
            false_rel = [name for name in related if roots[name] != roots[mid]]
            searches.append({"model": mid, "kind": m["kind"], "parents": sorted(parents), "parent_rank": rank,
                             "related": related[:5], "false_related": false_rel,
                             "search_s": round(res.timings["total"], 4), "candidates": res.candidates})
        store.close()
    return {"fingerprints": fp_rows, "pairs": pairs, "searches": searches}


def scan_eval(root: Path, workers: list[int]) -> list[dict[str, Any]]:
    """`modeltrace scan` over a zoo's models folder into a fresh index, by worker count."""
    from modeltrace.scan.run import scan
    from modeltrace.scan.walk import walk

    refs = walk(root)
    out = []
    for w in workers:
        with tempfile.TemporaryDirectory() as tmp:
            store = IndexStore(Path(tmp) / "scan.db")
            rep = scan(store, refs, workers=w)
            out.append({"workers": w, "models": len(refs), "added": len(rep.added), "failed": len(rep.failed),
                        "seconds": round(rep.seconds, 2), "models_per_s": round(len(rep.added) / rep.seconds, 2)})
            store.close()
    return out


# what `lineage.tree.edge_kind` should call each zoo derivation
EXPECTED_KIND = {"finetune": {"finetune"}, "lora": {"finetune", "noise"}, "continued-pretrain": {"finetune"},
                 "noise": {"noise", "identical"}, "cast": {"cast"}, "quantize-int8": {"quantize"},
                 "gguf-q8_0": {"quantize"}, "gguf-q4_k": {"quantize"}, "onnx-int8": {"quantize"},
                 "layer-drop": {"layer-drop"}, "width-prune": {"prune"}, "depth-upscale": {"upscale"},
                 "merge-linear": {"merge"}, "merge-slerp": {"merge"}, "merge-task-arithmetic": {"merge", "finetune"},
                 "permute": {"permute"}, "rotate": {"rotate"}, "shell": {"permute", "identical"},
                 "vocab-extend": {"vocab-change"}, "vocab-prune": {"vocab-change"}, "upcycle-moe": {"upcycle"},
                 "distill": {"distill"}, "multimodal-shell": {"identical", "noise"}}


def tree_eval(manifest_path: Path) -> dict[str, Any]:
    """The zoo's tree recovered from fingerprints: edges placed, directions and kinds right, misses listed."""
    from modeltrace.lineage.tree import build_tree, to_dot

    man = json.loads(manifest_path.read_text())
    root = manifest_path.parent
    fps = {}
    for m in man["models"]:
        with Model.open(str(root / m["path"])) as model:
            fps[m["id"]] = from_bytes(to_bytes(compute(model)), m["id"])
    t0 = time.perf_counter()
    tree = build_tree(fps, threshold=THRESHOLD)
    seconds = time.perf_counter() - t0
    rows = []
    for m in man["models"]:
        if not m["parents"]:
            continue
        truth = set(m["parents"])
        got = set(tree.parents(m["id"]))
        near = got | {e.child for e in tree.edges if e.parent == m["id"]}
        kinds = sorted({e.kind for e in tree.edges if e.child == m["id"] and e.parent in truth}
                       | {e.kind for e in tree.edges if e.parent == m["id"] and e.child in truth})
        rows.append({"model": m["id"], "kind": m["kind"], "parents": sorted(truth), "tree_parents": sorted(got),
                     "placed": bool(truth & near), "direction": bool(truth & got),
                     "kind_right": bool(set(kinds) & EXPECTED_KIND.get(m["kind"], set())), "edge_kinds": kinds})
    (REPO / "docs" / "benchmarks" / "img").mkdir(parents=True, exist_ok=True)
    (REPO / "docs" / "benchmarks" / "img" / "index-zoo-tree.dot").write_text(to_dot(tree))
    draw_tree(tree.to_json(), {m["id"]: set(m["parents"]) for m in man["models"]},
              REPO / "docs" / "benchmarks" / "img" / "index-zoo-tree.png")
    return {"seconds": round(seconds, 1), "tree": tree.to_json(), "rows": rows}


def draw_tree(tree: dict[str, Any], truth: dict[str, set[str]], path: Path) -> None:
    """The recovered tree as a picture: layered by depth from the roots; green edges match the zoo's truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    children: dict[str, list[str]] = defaultdict(list)
    for e in tree["edges"]:
        children[e["parent"]].append(e["child"])
    depth: dict[str, int] = {}
    order: list[str] = []

    def visit(n: str, d: int) -> None:
        if n in depth:
            return
        depth[n] = d
        order.append(n)
        for c in sorted(children.get(n, [])):
            visit(c, d + 1)

    for r in tree["roots"]:
        visit(r, 0)
    for n in tree["nodes"]:
        visit(n, 0)
    rows: dict[int, list[str]] = defaultdict(list)
    for n in order:
        rows[depth[n]].append(n)
    pos = {n: (k, -d) for d, ns in rows.items() for k, n in enumerate(ns)}
    width = max(len(v) for v in rows.values())
    fig, ax = plt.subplots(figsize=(max(12, width * 0.9), 2.2 * (len(rows) + 1)))
    for e in tree["edges"]:
        (x0, y0), (x1, y1) = pos[e["parent"]], pos[e["child"]]
        ok = e["parent"] in truth.get(e["child"], set())
        ax.annotate("", xy=(x1, y1 + 0.12), xytext=(x0, y0 - 0.12),
                    arrowprops={"arrowstyle": "->", "color": "green" if ok else "red",
                                "linestyle": "--" if e["direction"] == "unknown" else "-"})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, e["kind"], fontsize=6, ha="center")
    for n, (x, y) in pos.items():
        ax.text(x, y, n, fontsize=6, ha="center", va="center", rotation=30,
                bbox={"boxstyle": "round", "fc": "white", "ec": "grey"})
    ax.set_xlim(-1, width)
    ax.set_ylim(-len(rows), 1)
    ax.axis("off")
    ax.set_title("Quick zoo lineage from fingerprints (green: parent edge as in the zoo; red: not; dashed: "
                 "direction unknown)", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --- 2. synthetic index ----------------------------------------------------------------------
K = BASIS_TOKENS
LAYERS = 2
UNITS = 14336  # an 8B model's MLP width: idx_count(UNITS) == IDX_UNITS
BASIS = Basis(TOKEN_CANDIDATES[:K], np.eye(K, dtype=np.float32), "language_model")


def _layer(rng: np.random.Generator, layer: int) -> LayerSketch:
    sel = np.sort(rng.choice(UNITS, SEL_UNITS, replace=False)).astype(np.int64)
    f = np.float32
    return LayerSketch("language_model", layer, UNITS, 4096, "tokens", rng.standard_normal((IDX_UNITS, K)).astype(f),
                       rng.standard_normal((IDX_UNITS, COORD_DIMS)).astype(f), sel,
                       rng.standard_normal((SEL_UNITS, K)).astype(f), rng.standard_normal((SEL_UNITS, K)).astype(f))


def _noised(s: LayerSketch, rng: np.random.Generator, sigma: float, layer: int | None = None) -> LayerSketch:
    def nz(x: np.ndarray) -> np.ndarray:
        return (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)
    return LayerSketch(s.component, s.layer if layer is None else layer, s.n, s.width, s.basis, nz(s.idx_in),
                       nz(s.cidx_in), s.sel, nz(s.sel_in), None if s.sel_out is None else nz(s.sel_out))


def _permuted(s: LayerSketch, rng: np.random.Generator) -> LayerSketch:
    """Units relabelled: the stored idx units become other units; the selected units move with their labels."""
    perm = rng.permutation(s.n)
    new_sel = perm[s.sel]
    order = np.argsort(new_sel)
    f = np.float32
    return LayerSketch(s.component, s.layer, s.n, s.width, s.basis, rng.standard_normal(s.idx_in.shape).astype(f),
                       rng.standard_normal(s.cidx_in.shape).astype(f), new_sel[order].astype(np.int64),
                       s.sel_in[order], None if s.sel_out is None else s.sel_out[order])


def _fp(name: str, layers: list[LayerSketch]) -> Fingerprint:
    return Fingerprint(ref=name, meta={"name": name, "parameters": 0}, layers=tuple(layers), basis=BASIS,
                       vector=candidate_vector(layers))


CHILD_KINDS = ("finetune", "heavy", "permute", "layer-drop")


def synth_models(n: int, seed: int, parent: dict[str, str]) -> Iterator[tuple[str, Fingerprint, dict[str, str]]]:
    """n fingerprints, made lazily: families (base, 4 children, 1 grandchild = 6) filling 20 %, unrelated
    models the rest; `parent` receives each derived model's parent."""
    rng = np.random.default_rng(seed)
    made = 0
    n_fam = max(1, n // 5 // 6)
    for f in range(n_fam):
        base = [_layer(rng, i) for i in range(LAYERS)]
        bname = f"fam{f}-base"
        yield bname, _fp(bname, base), {"family": str(f), "kind": "base"}
        children = {}
        for kind in CHILD_KINDS:
            if kind == "finetune":
                ls = [_noised(s, rng, 0.3) for s in base]
            elif kind == "heavy":
                ls = [_noised(s, rng, 0.8) for s in base]
            elif kind == "permute":
                ls = [_permuted(_noised(s, rng, 0.1), rng) for s in base]
            else:
                ls = [_noised(base[0], rng, 0.1)]
            name = f"fam{f}-{kind}"
            children[kind] = ls
            parent[name] = bname
            yield name, _fp(name, ls), {"family": str(f), "kind": kind}
        gname = f"fam{f}-finetune-finetune"
        parent[gname] = f"fam{f}-finetune"
        yield gname, _fp(gname, [_noised(s, rng, 0.3) for s in children["finetune"]]), \
            {"family": str(f), "kind": "grandchild"}
        made += 6
    for k in range(n - made):
        name = f"solo{k}"
        yield name, _fp(name, [_layer(rng, i) for i in range(LAYERS)]), {"kind": "unrelated"}


def test_cost(layers: int = 32, repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """Size and comparison time of fingerprints with an 8B model's shapes (32 layers of 14336 units, width 4096)."""
    rng = np.random.default_rng(seed)
    base = [_layer(rng, i) for i in range(layers)]
    a = _fp("a", base)
    b = _fp("b", [_noised(s, rng, 0.3) for s in base])
    c = _fp("c", [_layer(rng, i) for i in range(layers)])
    da, db, dc = to_bytes(a), to_bytes(b), to_bytes(c)
    fa, _fb, _fc = from_bytes(da, "a"), from_bytes(db, "b"), from_bytes(dc, "c")
    half = len(to_bytes(_fp("h", base[: layers // 2])))
    out: dict[str, Any] = {"layers": layers, "fingerprint_bytes": len(da),
                           "bytes_per_layer": round((len(da) - half) / (layers - layers // 2), 1)}
    from modeltrace.index.search import SCREEN_LAYERS

    for label, data in (("derived", db), ("unrelated", dc)):
        t0 = time.perf_counter()
        for _ in range(repeats):
            r = compare_fingerprints(fa, from_bytes(data, label), threshold=THRESHOLD)
        out[f"{label}_s"] = round((time.perf_counter() - t0) / repeats, 4)
        out[f"{label}_verdict"] = r.verdict
        t0 = time.perf_counter()
        for _ in range(repeats):
            r = compare_fingerprints(fa, from_bytes(data, label), threshold=THRESHOLD, screen=SCREEN_LAYERS)
        out[f"{label}_screen_s"] = round((time.perf_counter() - t0) / repeats, 4)
    t0 = time.perf_counter()
    for _ in range(repeats):
        from_bytes(dc, "c")
    out["parse_s"] = round((time.perf_counter() - t0) / repeats, 4)
    return out


def synthetic(sizes: list[int], queries: int, seed: int, keep: Path | None) -> list[dict[str, Any]]:
    results = []
    for n in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="mt-index-"))
        try:
            t0 = time.perf_counter()
            parent: dict[str, str] = {}
            kinds: dict[str, str] = {}
            store = IndexStore(tmp / "index.db")
            batch = []
            for name, fp, labels in synth_models(n, seed, parent):  # memory holds one batch, not the index
                kinds[name] = labels["kind"]
                data = to_bytes(fp)
                batch.append((name, from_bytes(data, name), data, labels))
                if len(batch) == 2000:
                    store.add_many(batch)
                    batch = []
            if batch:
                store.add_many(batch)
            del batch
            t_fill = time.perf_counter() - t0
            t0 = time.perf_counter()
            cand = open_candidates(store, "usearch")
            t_ann = time.perf_counter() - t0
            ids, vecs = store.vectors()
            exact = ExactCandidates()
            exact.build(ids, vecs)
            name_of = {e.id: e.name for e in store.entries()}
            id_of = {v: k for k, v in name_of.items()}
            rng = np.random.default_rng(seed + 1)
            derived = sorted(parent)
            unrelated = sorted(k for k, v in kinds.items() if v == "unrelated")
            pick = list(rng.choice(derived, min(queries, len(derived)), replace=False))
            pick_u = list(rng.choice(unrelated, min(queries // 4, len(unrelated)), replace=False)) if unrelated else []
            fps = {q: store.fingerprint(id_of[q]) for q in pick + pick_u}
            rows = []
            for q in pick + pick_u:
                fp = fps[q]
                res = search(store, fp, top=3, threshold=THRESHOLD, exclude={q}, cand=cand)
                k = res.candidates
                ann = {name_of[i] for i, _ in cand.search(fp.vector, k + 1)} - {q}
                ex = {name_of[i] for i, _ in exact.search(fp.vector, k + 1)} - {q}
                related = [h.entry.name for h in res.related]
                fam = q.split("-")[0] if q.startswith("fam") else None
                rows.append({"query": q, "kind": kinds[q], "parent": parent.get(q),
                             "parent_in_ann": parent.get(q) in ann if q in parent else None,
                             "parent_in_exact": parent.get(q) in ex if q in parent else None,
                             "rank": (related.index(parent[q]) + 1) if q in parent and parent[q] in related else None,
                             "false_related": [r for r in related if fam is None or not r.startswith(fam + "-")],
                             "search_s": res.timings["total"], "tests_s": res.timings["tests"],
                             "candidates_s": res.timings["candidates"]})
            st = store.stats()
            store.close()
            times = np.array([r["search_s"] for r in rows])
            d = [r for r in rows if r["parent"]]
            by_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "top1": 0, "top3": 0, "ann": 0})
            for r in d:
                b = by_kind[r["kind"]]
                b["n"] += 1
                b["top1"] += r["rank"] == 1
                b["top3"] += r["rank"] is not None and r["rank"] <= 3
                b["ann"] += bool(r["parent_in_ann"])
            results.append({
                "models": n, "families": sum(1 for k in kinds.values() if k == "base"),
                "fill_s": round(t_fill, 2), "ann_build_s": round(t_ann, 2), "db_bytes": st["file_bytes"],
                "mean_fingerprint_bytes": st["mean_fingerprint_bytes"], "queries": len(rows),
                "search_median_s": round(float(np.median(times)), 4),
                "search_p95_s": round(float(np.percentile(times, 95)), 4),
                "search_max_s": round(float(times.max()), 4),
                "candidate_stage_median_s": round(float(np.median([r["candidates_s"] for r in rows])), 5),
                "recall_ann": round(float(np.mean([r["parent_in_ann"] for r in d])), 4),
                "recall_exact": round(float(np.mean([r["parent_in_exact"] for r in d])), 4),
                "top1": round(float(np.mean([r["rank"] == 1 for r in d])), 4),
                "top3": round(float(np.mean([r["rank"] is not None and r["rank"] <= 3 for r in d])), 4),
                "false_related": sum(len(r["false_related"]) for r in rows),
                "by_kind": dict(by_kind), "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
            print(f"  {n}: {json.dumps({k: v for k, v in results[-1].items() if k != 'by_kind'})}", file=sys.stderr)
        finally:
            if keep is None:
                shutil.rmtree(tmp, ignore_errors=True)
    return results


def ann_size(n: int, seed: int = 0) -> dict[str, Any]:
    """The HNSW structure alone over n random candidate vectors: file size, build and query time."""
    from modeltrace.index.fingerprint import VECTOR_DIM

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, VECTOR_DIM)).astype(np.float32)
    cand = UsearchCandidates()
    t0 = time.perf_counter()
    cand.build(np.arange(n, dtype=np.int64), vecs)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.ann"
        cand.save(path)
        size = path.stat().st_size
    t0 = time.perf_counter()
    for k in range(200):
        cand.search(vecs[k], 32)
    return {"vectors": n, "file_bytes": size, "bytes_per_model": round(size / n, 1), "build_s": round(build, 2),
            "query_ms": round((time.perf_counter() - t0) / 200 * 1e3, 3)}


# --- 3. 8B-shaped checkpoint -----------------------------------------------------------------
def eight_b(cache: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_readers import Shape, build

    info = build(cache, Shape())
    files = sorted(cache.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in files)
    out: dict[str, Any] = {"checkpoint_bytes": size, "build": info}
    for label, cmd in (("cat", ["/bin/sh", "-c", 'exec cat "$@" > /dev/null', "sh", *map(str, files)]),):
        subprocess.run(cmd, check=True)  # warm the page cache as far as memory allows
        r = _timed(cmd)
        out[label] = {**r, "MB_per_s": round(size / r["wall_s"] / 1e6, 1)}
    fp_out = cache.parent / "llama8b.mtfp"
    for label, extra in (("fingerprint", []), ("fingerprint_no_file_hashes", ["--no-file-hashes"])):
        cmd = [sys.executable, "-m", "modeltrace", "fingerprint", str(cache), "-o", str(fp_out), "--json", *extra]
        r = _timed(cmd, env={**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")})
        out[label] = {**r, "MB_per_s": round(size / r["wall_s"] / 1e6, 1),
                      "share_of_cat": round(out["cat"]["wall_s"] / r["wall_s"], 3), "summary": json.loads(r.pop("stdout"))}
    out["fingerprint_bytes"] = fp_out.stat().st_size
    return out


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd`; wall and CPU seconds and the peak resident memory of that process alone (wait4)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert p.stdout is not None
    stdout = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited with {p.returncode}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "stdout": stdout}


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}")


def render(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks/index.md, derived from the results JSON."""
    runs = result.get("runs", [])
    latest = {sec: k for k, r in enumerate(runs) for sec in r["sections"]}  # the run each section is from
    out: list[str] = ["Sections and the run that produced them:", ""]
    for k, r in enumerate(runs):
        secs = [sec for sec in r["sections"] if latest[sec] == k]
        if secs:
            out.append(f"- `{r['command']}` at commit `{r['git'][:12]}`: {', '.join(secs)}")
    out.append("")
    out += _targets(result)
    z = result.get("zoo")
    if z:
        pairs = z["pairs"]
        same_all = sum(p["model"]["verdict"] == p["fingerprint"]["verdict"] for p in pairs)
        same_w = sum(p["weights"]["verdict"] == p["fingerprint"]["verdict"] for p in pairs)
        out += ["### Fingerprint against fingerprint, model against model (quick zoo)", "",
                (f"{len(pairs)} pairs; same verdict as the full compare (all methods but behaviour): {same_all}; "
                f"as the weight methods alone: {same_w}."), "",
                ("| pair | kind | label | model verdict | model p | weights p | fingerprint verdict | fingerprint p | "
                "log10 p lost |"), "|---|---|---|---|---|---|---|---|---|"]
        for p in pairs:
            pm, pf = p["model"]["p_value"], p["fingerprint"]["p_value"]
            lost = (np.log10(max(pf, 1e-300)) - np.log10(max(pm, 1e-300))) if pm and pf else 0.0
            flag = "" if p["model"]["verdict"] == p["fingerprint"]["verdict"] else " **differs**"
            out.append(f"| {p['pair']} | {p['kind']} | {p['label']} | {p['model']['verdict']} | {_p(pm)} | "
                       f"{_p(p['weights']['p_value'])} | {p['fingerprint']['verdict']}{flag} | {_p(pf)} | "
                       f"{lost:+.0f} |")
        fps = z["fingerprints"]
        out += ["", (f"Fingerprints: {len(fps)} models, {min(f['bytes'] for f in fps)}-{max(f['bytes'] for f in fps)} "
                    f"bytes, median {int(np.median([f['bytes'] for f in fps]))}; "
                    f"median fingerprinting time {np.median([f['wall_s'] for f in fps]):.2f} s."), ""]
        rows = [s for s in z["searches"] if s["parents"]]
        by: dict[str, list[Any]] = defaultdict(list)
        for s in rows:
            by[s["kind"]].append(s["parent_rank"])
        out += ["### Search on the quick zoo: rank of the true parent among the related hits", "",
                "Every model indexed; each derived model searched for with itself excluded.", "",
                "| derivation kind | models | parent top-1 | parent top-3 | ranks |", "|---|---|---|---|---|"]
        for kind in sorted(by):
            ranks = by[kind]
            out.append(f"| {kind} | {len(ranks)} | {sum(r == 1 for r in ranks)} | "
                       f"{sum(r is not None and r <= 3 for r in ranks)} | "
                       f"{', '.join('-' if r is None else str(r) for r in ranks)} |")
        t1 = sum(s["parent_rank"] == 1 for s in rows)
        t3 = sum(s["parent_rank"] is not None and s["parent_rank"] <= 3 for s in rows)
        false_rel = sum(len(s["false_related"]) for s in z["searches"])
        out += ["", (f"All: top-1 {t1} of {len(rows)}, top-3 {t3} of {len(rows)}. Models reported related that are "
                    f"not of the query's lineage, over all {len(z['searches'])} searches: {false_rel}. Median search "
                    f"time {np.median([s['search_s'] for s in z['searches']]):.3f} s."), ""]
    syn = result.get("synthetic")
    if syn:
        out += ["### Synthetic index: search time and candidate-stage recall by size", "",
                ("| models | families | index file | fill | HNSW build | search median | p95 | max | candidate stage "
                "median | recall (HNSW) | recall (exact scan) | top-1 | top-3 | false relatives | peak RSS |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in syn:
            out.append(f"| {r['models']:,} | {r['families']:,} | {r['db_bytes'] / 1e6:.0f} MB | {r['fill_s']:.0f} s | "
                       f"{r['ann_build_s']:.1f} s | {r['search_median_s']:.3f} s | {r['search_p95_s']:.3f} s | "
                       f"{r['search_max_s']:.3f} s | {r['candidate_stage_median_s'] * 1e3:.2f} ms | {r['recall_ann']:.3f} | "
                       f"{r['recall_exact']:.3f} | {r['top1']:.3f} | {r['top3']:.3f} | {r['false_related']} | "
                       f"{r['rss_mib']:.0f} MiB |")
        last = syn[-1]
        out += ["", (f"By derivation kind at {last['models']:,} models (queries, parent in the candidates, top-1, "
                    "top-3):"), ""]
        for kind, b in sorted(last["by_kind"].items()):
            out.append(f"- {kind}: {b['n']} queries, candidates {b['ann']}, top-1 {b['top1']}, top-3 {b['top3']}")
        out.append("")
    tc = result.get("test_cost_8b_shapes")
    if tc:
        out += [(f"Fingerprint with an 8B model's shapes ({tc['layers']} layers of 14,336 units): {tc['fingerprint_bytes']:,} "
                f"bytes; one full fingerprint test {tc['derived_s']:.3f} s (derived pair), {tc['unrelated_s']:.3f} s "
                "(unrelated pair, full layer map)."), ""]
    ann = result.get("ann_size")
    if ann:
        out += [(f"The HNSW structure alone over {ann['vectors']:,} random candidate vectors: {ann['file_bytes'] / 1e6:.1f} MB "
                f"({ann['bytes_per_model']} bytes per model), built in {ann['build_s']} s, {ann['query_ms']} ms per "
                "query for 32 neighbours."), ""]
    e = result.get("8b")
    if e:
        f1, f2 = e["fingerprint"], e["fingerprint_no_file_hashes"]
        out += ["### 8B-shaped checkpoint (bf16, 4 shards)", "",
                "| run | wall | CPU | MB/s of the files | share of cat's speed | peak RSS |", "|---|---|---|---|---|---|",
                f"| cat | {e['cat']['wall_s']} s | {e['cat']['cpu_s']} s | {e['cat']['MB_per_s']} | 1 | - |",
                (f"| fingerprint | {f1['wall_s']} s | {f1['cpu_s']} s | {f1['MB_per_s']} | {f1['share_of_cat']} | "
                f"{f1['peak_rss_mib']} MiB |"),
                (f"| fingerprint --no-file-hashes | {f2['wall_s']} s | {f2['cpu_s']} s | {f2['MB_per_s']} | "
                f"{f2['share_of_cat']} | {f2['peak_rss_mib']} MiB |"), "",
                f"Checkpoint {e['checkpoint_bytes'] / 1e9:.2f} GB; fingerprint file {e['fingerprint_bytes']:,} bytes.", ""]
    tr = result.get("tree")
    if tr:
        rows = tr["rows"]
        n = len(rows)
        out += ["### Lineage tree of the quick zoo (`modeltrace tree`)", "",
                (f"{n} derived models; parent edge placed (either direction) {sum(r['placed'] for r in rows)}, direction "
                f"right {sum(r['direction'] for r in rows)}, kind right {sum(r['kind_right'] for r in rows)}; "
                f"{tr['tree']['related_pairs']} related pairs of {tr['tree']['tested_pairs']} tested in "
                f"{tr['seconds']} s. The tree as DOT: `docs/benchmarks/img/index-zoo-tree.dot`."), "",
                "| model | kind | true parent(s) | tree parent(s) | placed | direction | edge kind |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['model']} | {r['kind']} | {', '.join(r['parents'])} | {', '.join(r['tree_parents']) or '-'} | "
                       f"{'yes' if r['placed'] else 'no'} | {'yes' if r['direction'] else 'no'} | "
                       f"{', '.join(r['edge_kinds']) or '-'}{'' if r['kind_right'] else ' (wrong)'} |")
        out.append("")
    sc = result.get("scan")
    if sc:
        out += ["### Scan throughput by worker count (`modeltrace scan`, quick zoo, 2-core machine)", "",
                "| workers | models | added | failed | seconds | models/s |", "|---|---|---|---|---|---|"]
        for r in sc:
            out.append(f"| {r['workers']} | {r['models']} | {r['added']} | {r['failed']} | {r['seconds']} | "
                       f"{r['models_per_s']} |")
        out.append("")
    return "\n".join(out)


def _targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets, each with the measured number and whether it holds."""
    out = ["### Targets", ""]
    z, syn, e, tc = result.get("zoo"), result.get("synthetic"), result.get("8b"), result.get("test_cost_8b_shapes")

    def line(what: str, got: str, ok: bool) -> None:
        out.append(f"- {what}: {got} - **{'met' if ok else 'not met'}**")

    if e:
        line("fingerprint of an 8B model <= 256 KB", f"{e['fingerprint_bytes']:,} bytes", e["fingerprint_bytes"] <= 256_000)
        peak = max(e["fingerprint"]["peak_rss_mib"], e["fingerprint_no_file_hashes"]["peak_rss_mib"])
        line("peak memory < 1 GB", f"{peak} MiB", peak < 1024)
        share = e["fingerprint_no_file_hashes"]["share_of_cat"]
        line(">= 70 % of cat's throughput", f"{share:.0%} without file hashes, "
             f"{e['fingerprint']['share_of_cat']:.0%} with them (CPU {e['fingerprint_no_file_hashes']['cpu_s']} s "
             f"and {e['fingerprint']['cpu_s']} s against cat's {e['cat']['cpu_s']} s)", share >= 0.7)
    if z:
        same = sum(p["model"]["verdict"] == p["fingerprint"]["verdict"] for p in z["pairs"])
        line("fingerprint verdicts equal model verdicts on the zoo's pairs", f"{same} of {len(z['pairs'])}",
             same == len(z["pairs"]))
        rows = [s for s in z["searches"] if s["parents"]]
        t3 = sum(s["parent_rank"] is not None and s["parent_rank"] <= 3 for s in rows)
        miss = [s["model"] for s in rows if not (s["parent_rank"] is not None and s["parent_rank"] <= 3)]
        line("every derived model's parent in the top 3 of `index search`", f"{t3} of {len(rows)}"
             + (f" (missed: {', '.join(miss)})" if miss else ""), t3 == len(rows))
        fr = sum(len(s["false_related"]) for s in z["searches"])
        line("nothing unrelated above the threshold", f"{fr} unrelated models reported related", fr == 0)
    if syn:
        big = syn[-1]
        line(f"search over {big['models']:,} models in under 1 s", f"median {big['search_median_s']} s, max "
             f"{big['search_max_s']} s (2-layer synthetic fingerprints)", big["search_max_s"] < 1.0)
        out.append(f"- candidate-stage recall at {big['models']:,}: {big['recall_ann']:.3f} (exact scan "
                   f"{big['recall_exact']:.3f})")
    if tc:
        first = 32 * tc["unrelated_screen_s"]
        out.append(f"- with 8B-shaped fingerprints the tests on 32 candidates cost about {first:.2f} s of first looks "
                   f"plus {tc['derived_s']:.2f} s per related candidate (see the hub-scale section)")
    out.append("")
    return out


def hub_scale(result: dict[str, Any], models: int = 2_000_000) -> str:
    """The 2M-model extrapolation, every input a measured number of the results JSON."""
    syn, tc, ann = result.get("synthetic") or [], result.get("test_cost_8b_shapes"), result.get("ann_size")
    if not syn or not tc or not ann:
        return "(needs the synthetic, test-cost and ann-size sections)"
    fp8 = tc["fingerprint_bytes"]
    disk = models * fp8
    small = syn[-1]["db_bytes"] / syn[-1]["models"]
    ann_mem = models * ann["bytes_per_model"]
    c = [(r["models"], r["candidate_stage_median_s"]) for r in syn]
    # HNSW query time grows about logarithmically: fit t = a + b log10(n) on the measured sizes
    xs, ys = np.log10([m for m, _ in c]), np.array([t for _, t in c])
    slope, icpt = np.polyfit(xs, ys, 1) if len(c) > 1 else (0.0, float(ys[0]))
    t_cand = float(icpt + slope * np.log10(models))
    per = tc["unrelated_screen_s"]
    t_tests = 32 * per
    t_related = tc["derived_s"]
    lines = [
        (f"Inputs (measured above): an 8B-shaped fingerprint is {fp8:,} bytes; the synthetic index used "
        f"{small / 1e3:.1f} kB of file per (2-layer) model; the HNSW structure needs {ann['bytes_per_model']} bytes "
        f"per model; the candidate stage took {', '.join(f'{t * 1e3:.2f} ms at {m:,}' for m, t in c)}; the "
        f"first look at one 8B-shaped candidate {per * 1e3:.0f} ms and a full test {t_related * 1e3:.0f} ms."),
        "",
        (f"- **Disk**: {models:,} fingerprints of 8B shape would be {disk / 1e9:.0f} GB (an upper bound: the size grows "
        f"with the number of MLP layers, {tc['bytes_per_layer'] / 1e3:.1f} kB per layer, and most hub models are "
        f"far smaller than 8B); the candidate vectors {models * 480 / 1e9:.2f} GB."),
        (f"- **Memory**: the HNSW graph {ann_mem / 1e9:.2f} GB ({ann['bytes_per_model']} B x {models:,}); fingerprints "
        "are read from the file only for the candidates of a query, so they need no memory."),
        (f"- **Search time**: candidate stage about {t_cand * 1e3:.2f} ms at {models:,} (log fit "
        f"{icpt * 1e3:.3f} + {slope * 1e3:.3f} log10(n) ms); the tests do not grow with the index: 32 first looks at "
        f"8B-shaped candidates about {t_tests:.2f} s plus {t_related:.2f} s per related candidate, on one core of this "
        "(shared, loaded) machine. The tests of different candidates are independent and parallelise across cores."),
        (f"- **Building**: inserting is one transaction per model (bulk loads batch them); the HNSW graph took "
         f"{syn[-1]['ann_build_s']} s for {syn[-1]['models']:,} models on this loaded machine (reading the vectors "
         f"included; {ann['build_s']} s for {ann['vectors']:,} vectors alone), so of the order of "
         f"{syn[-1]['ann_build_s'] * models / syn[-1]['models'] / 3600:.1f} hours for {models:,} by linear "
         "extrapolation (HNSW insertion grows as n log n; usearch inserts in parallel on more cores); it is rebuilt "
         "only when the index changed."),
    ]
    return "\n".join(lines)


def write_doc(result: dict[str, Any], doc: Path) -> None:
    text = doc.read_text()
    for start, end, body in (("<!-- results:start -->", "<!-- results:end -->", render(result)),
                             ("<!-- hub:start -->", "<!-- hub:end -->", hub_scale(result))):
        a, b = text.index(start) + len(start), text.index(end)
        text = text[:a] + "\n" + body + "\n" + text[b:]
    doc.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, help="zoo manifest.json")
    ap.add_argument("--synthetic", type=str, default="", help="comma-separated index sizes")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--8b", dest="eight_b", type=Path, default=None, help="folder for the 8B-shaped checkpoint")
    ap.add_argument("--scan", type=Path, default=None, help="a models folder to scan with 1, 2 and 4 workers")
    ap.add_argument("--tree", type=Path, default=None, help="zoo manifest.json: recover its lineage tree")
    ap.add_argument("--test-cost", action="store_true", help="time the tests on fingerprints of 8B shapes")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "index.json")
    ap.add_argument("--write-doc", action="store_true",
                    help="only render docs/benchmarks/index.md's results block from --out")
    args = ap.parse_args()
    if args.write_doc:
        write_doc(json.loads(args.out.read_text()), REPO / "docs" / "benchmarks" / "index.md")
        return
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs = result.get("runs") or ([{"command": result["command"], "git": result.get("git", ""),
                                    "sections": [k for k in ("zoo", "synthetic") if k in result]}]
                                  if "command" in result else [])
    sections = [k for k, on in (("zoo", args.zoo), ("synthetic", args.synthetic), ("8b", args.eight_b),
                                ("test_cost_8b_shapes", args.test_cost or args.synthetic),
                                ("ann_size", args.test_cost), ("tree", args.tree), ("scan", args.scan)) if on]
    git = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, cwd=REPO)
    runs = [r for r in runs if not set(r["sections"]) <= set(sections)]
    runs.append({"command": " ".join(sys.argv), "git": git.stdout.strip(), "sections": sections})
    result["runs"] = runs
    if args.zoo:
        result["zoo"] = zoo(args.zoo)
    if args.synthetic:
        result["synthetic"] = synthetic([int(x) for x in args.synthetic.split(",")], args.queries, args.seed, None)
    if args.synthetic or args.test_cost:
        result["test_cost_8b_shapes"] = test_cost()
    if args.test_cost:
        result["ann_size"] = ann_size(20_000)
    if args.eight_b:
        result["8b"] = eight_b(args.eight_b)
    if args.tree:
        result["tree"] = tree_eval(args.tree)
    if args.scan:
        result["scan"] = scan_eval(args.scan, [1, 2, 4])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(args.out)


if __name__ == "__main__":
    main()
