"""Power and size of `same-model` (MMD on sampled completions) on real models behind llama.cpp's server.

Starts llama.cpp's server (llama-cpp-python) for the real GGUF models of ../shared/realmodels, samples
completions of generic prompts at temperature 1 (the command's defaults: 20 prompts x 10 samples x 16
tokens), and runs the MMD test (after Gao, Liang & Guestrin 2025) on prefixes of 5, 10 and 20 prompts:
- size: one model against itself sampled with other seeds (the null holds; p should be uniform);
- power: different models (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B).

    python bench/bench_same_model.py --models .cache/realmodels --out bench/results/same-model.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from modeltrace.backends.base import Request
from modeltrace.backends.cache import CachedBackend, ResponseCache
from modeltrace.backends.openai_compat import OpenAICompatBackend
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.mmd import mmd_test

MODELS = {
    "smollm2-135m": "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-0.5b": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
}


@contextmanager
def llama_server(gguf: Path, alias: str, log: Path) -> Iterator[str]:
    """llama.cpp's server for one model on a free loopback port, stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                                 alias, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512",
                                 "--n_threads", "1", "--n_threads_batch", "1"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{gguf}: the server exited ({proc.returncode}); see {log}")
            try:
                if httpx.get(url + "/v1/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{gguf}: the server was not ready after 180 s; see {log}")
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def sample(url: str, alias: str, prompts: list[str], samples: int, tokens: int, seed_base: int,
           cache: ResponseCache) -> tuple[list[list[str]], float]:
    be = CachedBackend(OpenAICompatBackend(url + "/v1", alias, concurrency=1, timeout=300.0), cache)
    reqs = [Request(prompt=p, max_tokens=tokens, temperature=1.0, seed=seed_base + s)
            for p in prompts for s in range(samples)]
    t0 = time.perf_counter()
    out = [r.text for r in be.generate(reqs)]
    per_query = (time.perf_counter() - t0) / max(1, be.asked) if be.asked else 0.0
    be.close()
    return [out[i * samples:(i + 1) * samples] for i in range(len(prompts))], per_query


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", type=Path, default=Path(".cache/realmodels"))
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cache", type=Path, default=Path("bench/cache/same-model.sqlite"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/same-model.json"))
    args = ap.parse_args(argv)
    prompts = generic_prompts(args.prompts, seed=0)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    cache = ResponseCache(args.cache)
    draws: dict[str, list[list[str]]] = {}
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    for alias, rel in MODELS.items():
        gguf = args.models / rel
        if not gguf.is_file():
            print(f"{gguf}: absent, {alias} left out", file=sys.stderr)
            continue
        with llama_server(gguf, alias, args.cache.parent / f"server-{alias}.log") as url:
            for tag, base in (("", 0), ("/reseeded", 1_000_000)):
                draws[alias + tag], seconds[alias + tag] = sample(url, alias, prompts, args.samples,
                                                                  args.max_tokens, base, cache)
                print(f"{alias}{tag}: {args.prompts * args.samples} completions "
                      f"({seconds[alias + tag]:.2f} s per new query)", file=sys.stderr)
    names = [m for m in MODELS if m in draws]
    pairs = [(m, m + "/reseeded", "same") for m in names]
    pairs += [(a, b, "different") for i, a in enumerate(names) for b in names[i + 1:]]
    rows: list[dict[str, Any]] = []
    for a, b, truth in pairs:
        row: dict[str, Any] = {"a": a, "b": b, "truth": truth, "p_values": {}}
        for n in sorted({5, 10, args.prompts}):
            if n > args.prompts:
                continue
            r = mmd_test(draws[a][:n], draws[b][:n], length=4 * args.max_tokens, seed=0)
            row["p_values"][str(n)] = r.p_value
        rows.append(row)
        print(f"{a} vs {b} ({truth}): " + ", ".join(f"{k} prompts p={v:.3g}" for k, v in row["p_values"].items()),
              file=sys.stderr)
    result = {"schema": "modeltrace.bench-same-model/1", "prompts": args.prompts, "samples": args.samples,
              "max_tokens": args.max_tokens, "temperature": 1.0, "seconds_per_query": seconds, "pairs": rows,
              "wall_seconds": round(time.perf_counter() - t_start, 1)}
    cache.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
