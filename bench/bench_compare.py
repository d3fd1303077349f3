"""Compare benchmark: `modeltrace compare` on large checkpoints, time and peak memory, and the power cost of sampling.

1. 1B-shaped: random bf16 weights with Llama-3.2-1B's shapes (16 layers, hidden 2048, MLP 8192,
   untied 128256-token embeddings) and a copy with Gaussian noise of 1 % of each tensor's spread, as
   sharded safetensors; `modeltrace compare A B --json` (weight methods) timed with peak RSS.
   Target: under 60 s on 2 cores.
2. 8B-shaped (``--8b``): bench_readers.py's Llama-3-8B-shaped checkpoint and a noised copy; the compare
   time against the time to read every tensor of both once (target: <= 2x), peak RSS < 4 GB.
3. Power of row sampling (``--power``): on tiny trained pairs (tests/weights/tinytrain.py) made harder by
   fine-tuning with noise, the p-value of weight-identity with m sampled rows per layer, m = 8..128.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_compare.py [--8b] [--power]``; results go to stdout as
JSON and, with ``--write``, to docs/benchmarks/compare.md's data block.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_readers import _LAUNCHER, Shape, build

LLAMA_1B = Shape(layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=128256,
                 added_tokens=256, merges=20000, shard_bytes=2_000_000_000)
METHODS = ["weight-match", "weight-identity", "weight-permutation"]
CHUNK = 1 << 24  # elements per noise chunk


def noised_copy(src: Path, dst: Path, sigma_rel: float, seed: int = 1) -> dict[str, Any]:
    """Write dst = src + N(0, (sigma_rel * std)^2) per tensor, bf16 in and out, streamed shard by shard."""
    marker = dst / ".complete.json"
    want = {"src": str(src.resolve()), "sigma_rel": sigma_rel, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return {"reused": True}
    t0 = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal(CHUNK * 2, dtype=np.float32)  # noise pool, read from a random start per chunk
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
            continue
        with open(f, "rb") as fin, open(dst / f.name, "wb") as fout:
            n = struct.unpack("<Q", fin.read(8))[0]
            hb = fin.read(n)
            header = json.loads(hb)
            fout.write(struct.pack("<Q", n) + hb)
            base = 8 + n
            for name, meta in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                     key=lambda kv: kv[1]["data_offsets"][0]):
                start, stop = meta["data_offsets"]
                fin.seek(base + start)
                left = (stop - start) // 2
                while left:
                    k = min(left, CHUNK)
                    raw = np.frombuffer(fin.read(k * 2), dtype="<u2")
                    x = (raw.astype(np.uint32) << 16).view(np.float32)
                    off = int(rng.integers(0, CHUNK))
                    y = x + pool[off:off + k] * (sigma_rel * float(x.std()) if len(meta["shape"]) > 1 else 0.0)
                    fout.write(((y.view(np.uint32) + 0x8000) >> 16).astype("<u2").tobytes())  # round to bf16
                    left -= k
    marker.write_text(json.dumps(want))
    return {"reused": False, "seconds": round(time.perf_counter() - t0, 1)}


def timed(cmd: list[str], threads: int) -> dict[str, Any]:
    """Wall time, CPU time (user + system) and peak RSS of a command with `threads` BLAS/OpenMP threads.

    The machine is shared, so wall time depends on the load; CPU time does not, and wall time on an
    idle machine with `threads` cores is at least CPU time / threads.
    """
    env_cmd = ["/usr/bin/env", f"OMP_NUM_THREADS={threads}", f"OPENBLAS_NUM_THREADS={threads}",
               f"MKL_NUM_THREADS={threads}", *cmd]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as stats:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, stats.name, *env_cmd], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        got = json.loads(Path(stats.name).read_text())
    if got["code"] != 0:
        raise SystemExit(f"command failed ({got['code']}): {' '.join(cmd)}")
    return {"wall_s": round(got["wall_s"], 1), "cpu_s": round(got["cpu_s"], 1),
            "peak_rss_mb": round(got["peak_rss_kb"] / 1024), "load_avg_1m": round(os.getloadavg()[0], 1)}


COMPARE = ("import sys, json; from modeltrace.compare import compare; from modeltrace.model import Model;"
           "r = compare(Model.open(sys.argv[1]), Model.open(sys.argv[2]), methods=sys.argv[3].split(','));"
           "json.dump(r.to_json(), open(sys.argv[4], 'w'))")
READ_ALL = ("import sys; from modeltrace.model import Model\n"
            "for ref in sys.argv[1:]:\n"
            "    s = Model.open(ref).source\n"
            "    for n in s.infos(): s.read(n)\n")


def bench_pair(a: Path, b: Path, threads: int, read_both: bool) -> dict[str, Any]:
    out = REPO / "bench" / "cache" / "compare-result.json"
    res: dict[str, Any] = {"compare": timed([sys.executable, "-c", COMPARE, str(a), str(b), ",".join(METHODS),
                                             str(out)], threads)}
    data = json.loads(out.read_text())
    res["verdict"] = data["verdict"]
    res["p_value"] = data["p_value"]
    res["evidence"] = {e["method"]: e["p_value"] for e in data["evidence"]}
    res["transforms"] = [t["kind"] for t in data["transforms"]]
    if read_both:
        res["read_both_once"] = timed([sys.executable, "-c", READ_ALL, str(a), str(b)], threads)
        res["ratio_wall"] = round(res["compare"]["wall_s"] / max(res["read_both_once"]["wall_s"], 1e-9), 2)
        res["ratio_cpu"] = round(res["compare"]["cpu_s"] / max(res["read_both_once"]["cpu_s"], 1e-9), 2)
    return res


def power_curve() -> dict[str, Any]:
    """weight-identity p-value against A's rows sampled per layer and coordinates compared per row."""
    sys.path.insert(0, str(REPO / "tests" / "weights"))
    import tinytrain as tt

    from modeltrace.evidence.base import CompareContext
    from modeltrace.evidence.weights_identity import WeightIdentityMethod
    from modeltrace.model import Model

    def run(a: Path, b: Path, **opts: int) -> dict[str, Any]:
        ev = WeightIdentityMethod().run(CompareContext(Model.open(str(a)), Model.open(str(b)), options=opts))
        return {"p_value": ev.p_value, "fixed": ev.statistic, "kept": sum(x["kept"] for x in ev.details["layers"])}

    out: dict[str, Any] = {}
    base = tt.train(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        a = tt.save_model(Path(tmp) / "a", base)
        for sigma in (1.0, 2.0, 3.0):
            b = tt.save_model(Path(tmp) / f"b{sigma}", tt.add_noise(base, sigma, seed=4))
            out[f"rows: tiny Llama (2 layers x 128 units, width 32) + noise {sigma} x spread"] = {
                f"rows={rows}": run(a, b, weight_rows=rows) for rows in (8, 16, 32, 64, 128)}
        rng = np.random.default_rng(0)
        wide = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((512, 2048)).astype(np.float32)
                for i in range(2)}
        wide.update({f"model.layers.{i}.mlp.down_proj.weight": rng.standard_normal((2048, 512)).astype(np.float32)
                     for i in range(2)})
        from safetensors.numpy import save_file
        for name, st in (("wa", wide),):
            (Path(tmp) / name).mkdir()
            save_file(st, str(Path(tmp) / name / "model.safetensors"))
        for sigma in (3.0, 6.0):
            noisy = {k: v + sigma * rng.standard_normal(v.shape).astype(np.float32) for k, v in wide.items()}
            (Path(tmp) / f"wb{sigma}").mkdir()
            save_file(noisy, str(Path(tmp) / f"wb{sigma}" / "model.safetensors"))
            out[f"coordinates: random MLP (2 layers x 512 units, width 2048) + noise {sigma} x spread"] = {
                f"cols={cols}": run(Path(tmp) / "wa", Path(tmp) / f"wb{sigma}", weight_rows=256, weight_cols=cols)
                for cols in (64, 256, 1024, 2048)}
    return out


def calibration(pairs: int) -> dict[str, Any]:
    """p-values of both weight tests on `pairs` independently trained tiny pairs: KS test and tail rates."""
    sys.path.insert(0, str(REPO / "tests" / "weights"))
    import tempfile

    import tinytrain as tt
    from scipy import stats

    from modeltrace.compare import compare
    from modeltrace.model import Model

    combined: dict[str, list[float]] = {"weight-identity": [], "weight-permutation": []}
    per_layer: dict[str, list[float]] = {"weight-identity": [], "weight-permutation": []}
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(pairs):
            a = tt.save_model(Path(tmp) / f"{k}a", tt.train(seed=5000 + 2 * k))
            b = tt.save_model(Path(tmp) / f"{k}b", tt.train(seed=5001 + 2 * k))
            r = compare(Model.open(str(a)), Model.open(str(b)), methods=METHODS)
            verdicts.append(r.verdict)
            for e in r.evidence:
                if e.method in combined and e.p_value is not None:
                    combined[e.method].append(e.p_value)
                    per_layer[e.method] += [x["p_value"] for x in e.details["layers"]]
    out: dict[str, Any] = {"pairs": pairs, "derived": verdicts.count("derived")}
    for m, ps_combined in combined.items():
        for label, ps in (("combined", ps_combined), ("per_layer", per_layer[m])):
            arr = np.array(ps)
            out[f"{m} {label}"] = {"n": len(arr), "ks_p": round(float(stats.kstest(arr, "uniform").pvalue), 3),
                                   "rate_p<0.05": round(float(np.mean(arr < 0.05)), 3),
                                   "rate_p<0.01": round(float(np.mean(arr < 0.01)), 3),
                                   "min_p": float(arr.min())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--8b", dest="big", action="store_true", help="also run the 8B-shaped pair")
    ap.add_argument("--power", action="store_true", help="measure the power cost of row sampling")
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--calibration", type=int, default=0, metavar="N",
                    help="p-value calibration on N independently trained tiny pairs")
    args = ap.parse_args()
    cache = REPO / "bench" / "cache"
    report: dict[str, Any] = {}
    if not args.skip_1b:
        a = cache / "llama3.2-1b-shape"
        report["build_1b"] = build(a, replace(LLAMA_1B), seed=0)
        b = cache / "llama3.2-1b-shape-noised"
        report["noise_1b"] = noised_copy(a, b, sigma_rel=0.01)
        report["1b"] = bench_pair(a, b, args.threads, read_both=True)
        print(json.dumps(report, indent=1), flush=True)
    if args.big:
        a = cache / "llama3-8b-shape"
        report["build_8b"] = build(a, Shape(), seed=0)
        b = cache / "llama3-8b-shape-noised"
        report["noise_8b"] = noised_copy(a, b, sigma_rel=0.01)
        report["8b"] = bench_pair(a, b, args.threads, read_both=True)
        print(json.dumps(report, indent=1), flush=True)
    if args.power:
        report["power"] = power_curve()
    if args.calibration:
        report["calibration"] = calibration(args.calibration)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
