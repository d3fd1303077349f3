"""Row reads of inline ONNX data, and `compare` of two ONNX exports: what the readers' row path costs.

Builds two float ONNX exports of all-MiniLM-L6-v2 (anonymous MatMul layout, weights inline, B = A plus 1 %
noise on every matrix) once, then measures, with whatever modeltrace is first on PYTHONPATH:

- 100 reads of 64 rows of the 30522 x 384 word embedding: CPU seconds per read and the peak bytes one
  read allocates (tracemalloc);
- with --compare, `python -m modeltrace compare a.onnx b.onnx` in a child process: wall and CPU seconds
  and peak resident memory.

    PYTHONPATH=src python bench/bench_onnx_rows.py --model .cache/realmodels/all-minilm-l6-v2 --compare
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np


def build(model: Path, out: Path) -> None:
    from modeltrace.formats import open_file
    from modeltrace.formats.onnx_write import write_onnx

    with open_file(model / "model.safetensors") as src:
        w = {n: src.read(n) for n in src.infos()}
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    write_onnx(out / "a.onnx", w)
    noisy = {n: (a + 0.01 * a.std() * rng.standard_normal(a.shape)).astype(np.float32) if a.ndim > 1 else a
             for n, a in w.items()}
    write_onnx(out / "b.onnx", noisy)


def rows(path: Path) -> dict[str, float]:
    from modeltrace.formats import open_file

    with open_file(path) as src:
        name = next(n for n, i in src.infos().items() if i.shape == (30522, 384))
        t0 = time.process_time()
        for k in range(100):
            src.read_rows(name, 64 * k, 64 * k + 64)
        cpu = time.process_time() - t0
        tracemalloc.start()
        src.read_rows(name, 6400, 6464)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {"rows_cpu_s_per_read": cpu / 100, "rows_peak_bytes": peak}


def compare(a: Path, b: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "modeltrace", "compare", "--json", str(a), str(b)],
                          capture_output=True, text=True, env=os.environ.copy(), check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    verdict = json.loads(proc.stdout).get("verdict") if proc.returncode == 0 else proc.stderr[-300:]
    return {"compare_wall_s": wall, "compare_cpu_s": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime), "compare_peak_rss_mb": after.ru_maxrss / 1024,
            "compare_exit": proc.returncode, "verdict": verdict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path(".cache/realmodels/all-minilm-l6-v2"))
    ap.add_argument("--exports", type=Path, default=Path("bench/cache/minilm-onnx"))
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args()
    if not (args.exports / "b.onnx").is_file():
        build(args.model, args.exports)
    result: dict[str, object] = {"a": str(args.exports / "a.onnx"), **rows(args.exports / "a.onnx")}
    if args.compare:
        result.update(compare(args.exports / "a.onnx", args.exports / "b.onnx"))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
