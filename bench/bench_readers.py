"""Reader benchmark on an 8B-shaped checkpoint: `modeltrace inspect` time and memory, full-read throughput.

Writes (once, then reuses) random bf16 weights with Llama-3-8B's shapes as sharded safetensors plus a
config.json and a tokenizer.json of Llama-3's size, then measures:

* `modeltrace inspect` in a fresh process: wall time and peak resident memory (targets: < 2 s, < 300 MB);
* reading every tensor as float32, shard by shard with the shard in the page cache, against `cat` over
  the same shard with the same warm cache (target: >= 70 % of cat's bytes per second);
* peak resident memory of one process reading every tensor of the model (target: < 2 x the largest
  tensor + 300 MB; the largest tensor is counted both as stored and as the float32 array returned).

Run: .venv/bin/python bench/bench_readers.py --out bench/results/readers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


@dataclass(frozen=True)
class Shape:
    """Decoder-only transformer shapes (Llama-3-8B by default)."""

    layers: int = 32
    hidden: int = 4096
    intermediate: int = 14336
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256
    added_tokens: int = 256
    merges: int = 280147
    shard_bytes: int = 5_000_000_000

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, kv = self.hidden, self.intermediate, self.hidden // self.heads * self.kv_heads
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                    (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                    (p + "post_attention_layernorm.weight", (h,))]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    def config(self) -> dict[str, Any]:
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
                "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "vocab_size": self.vocab, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "torch_dtype": "bfloat16", "bos_token_id": 128000,
                "eos_token_id": 128001, "tie_word_embeddings": False}


TINY = Shape(layers=2, hidden=256, intermediate=512, heads=4, kv_heads=2, vocab=4096, added_tokens=16,
             merges=2000, shard_bytes=2_000_000)


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tokenizer_json(shape: Shape, rng: np.random.Generator) -> dict[str, Any]:
    """A byte-level BPE tokenizer.json of the given size (made-up tokens; the size is what matters)."""
    base = shape.vocab - shape.added_tokens
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzĠ"))
    lengths = rng.integers(2, 9, size=base)
    vocab: dict[str, int] = {}
    for idx in range(base):
        tok = "".join(letters[rng.integers(0, len(letters), size=lengths[idx])]) + f"{idx:x}"
        vocab[tok] = idx
    toks = list(vocab)
    merges = [f"{toks[a]} {toks[b]}" for a, b in rng.integers(0, base, size=(shape.merges, 2))]
    added = [{"id": base + k, "content": f"<|reserved_special_token_{k}|>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for k in range(shape.added_tokens)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                              "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": True, "vocab": vocab, "merges": merges}}


def build(folder: Path, shape: Shape, seed: int = 0) -> dict[str, Any]:
    """Write the checkpoint unless a complete one with the same shape is already there."""
    marker = folder / ".complete.json"
    want = {"shape": asdict(shape), "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return {"reused": True, "seconds": 0.0}
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_file():
            old.unlink()
    rng = np.random.default_rng(seed)
    # a pool of random normal bf16 values, written cyclically from a different start per tensor: generating
    # 16 GB through the RNG would take far longer than writing it
    pool_elems = 32 * MB
    pool = (rng.standard_normal(pool_elems, dtype=np.float32) * 0.02).view(np.uint32) >> 16
    pool_bytes = memoryview(np.concatenate([pool, pool]).astype(np.uint16).tobytes())
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shp in shape.tensors():
        nbytes = numel(shp) * 2
        if shards[-1] and size + nbytes > shape.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shp))
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shp in group:
            nb = numel(shp) * 2
            header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + nb]}
            off += nb
            weight_map[name] = fname
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(len(hb).to_bytes(8, "little") + hb)
            for name, shp in group:
                left = numel(shp) * 2
                start = (int(rng.integers(0, pool_elems)) * 2)
                while left:
                    n = min(left, pool_elems * 2)
                    fh.write(pool_bytes[start:start + n])
                    left -= n
        total += off
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2))
    (folder / "tokenizer.json").write_text(json.dumps(_tokenizer_json(shape, rng)))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "model_max_length": 8192,
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    marker.write_text(json.dumps(want))
    return {"reused": False, "seconds": round(time.perf_counter() - t0, 1)}


# Linux keeps a process's peak RSS across exec, so a child started straight from this (large) process
# would report our peak as its own; a small launcher process forks the measured command instead.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"wall_s": time.perf_counter() - t0, "peak_rss_kb": usage.ru_maxrss,
               "cpu_s": usage.ru_utime + usage.ru_stime,
               "code": os.waitstatus_to_exitcode(status)}, fh)
"""


def run_rusage(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`: its wall time, its own peak RSS (MB) and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as stats:
        subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, stats.name, *cmd], stdout=out, stderr=err,
                       cwd=REPO, check=True)
        got = json.loads(Path(stats.name).read_text())
        out.seek(0)
        err.seek(0)
        if got["code"] != 0:
            raise SystemExit(f"command failed ({got['code']}): {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
        return {"wall_s": got["wall_s"], "cpu_s": got["cpu_s"], "peak_rss_mb": got["peak_rss_kb"] / 1024,
                "stdout": out.read().decode()}


def worker_read(folder: Path, shard: str | None, via_mmap: bool = False) -> None:
    """Read every tensor (of one shard, or of the model) as float32; print what was read and how fast.

    With `via_mmap`, convert zero-copy views of a memory map in one go (the reader's earlier read
    path, kept as the baseline): `raw_to_float32(reader.raw(name), dtype)`.
    """
    sys.path.insert(0, str(REPO / "src"))
    from modeltrace.formats.base import raw_to_float32
    from modeltrace.formats.safetensors import SafetensorsReader
    from modeltrace.model import Model

    with Model.open(str(folder)) as model:
        src = model.source
        if via_mmap:
            readers = {p.name: SafetensorsReader(p) for p in model.weight_files}

            class _Mapped:
                def read(self, name: str) -> np.ndarray:
                    info = src.info(name)
                    r = readers[Path(info.file).name]
                    return raw_to_float32(r.raw(name), info.dtype).reshape(info.shape)

            reader: Any = _Mapped()
        else:
            reader = src
        names = [n for n, i in src.infos().items() if shard is None or Path(i.file).name == shard]
        stored = sum(os.path.getsize(p) for p in model.weight_files
                     if shard is None or p.name == shard)
        elems = 0
        largest = 0
        c0 = _cpu()
        t0 = time.perf_counter()
        for name in names:
            arr = reader.read(name)
            assert arr.dtype == np.float32
            elems += arr.size
            largest = max(largest, arr.nbytes)
            del arr
        dt = time.perf_counter() - t0
        cpu = _cpu() - c0
    print(json.dumps({"tensors": len(names), "elements": elems, "file_bytes": stored, "read_s": dt, "read_cpu_s": cpu,
                      "largest_f32_bytes": largest}))


def _cpu() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def cat_run(path: Path) -> dict[str, Any]:
    """`cat path > /dev/null`: wall and CPU seconds."""
    r = run_rusage(["/bin/sh", "-c", 'exec cat "$0" > /dev/null', str(path)])
    return {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "readers.json")
    ap.add_argument("--cache", type=Path, default=None, help="checkpoint folder (default bench/cache/<shape>)")
    ap.add_argument("--tiny", action="store_true", help="a few-MB checkpoint, for a smoke test of this script")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker-read", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--via-mmap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the baseline read through a memory map (the earlier read path)")
    args = ap.parse_args()
    if args.worker_read:
        worker_read(args.worker_read, args.shard, args.via_mmap)
        return
    shape = TINY if args.tiny else Shape()
    folder = args.cache or REPO / "bench" / "cache" / ("tiny-llama-shape" if args.tiny else "llama3-8b-shape")
    py = sys.executable
    result: dict[str, Any] = {
        "schema": "modeltrace.bench.readers/1",
        "command": " ".join([Path(py).relative_to(REPO).as_posix() if Path(py).is_relative_to(REPO) else py,
                             "bench/bench_readers.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "numpy": np.__version__, "mem_total_mb": _meminfo("MemTotal"),
                    "load_average_start": os.getloadavg()},
        "shape": asdict(shape), "checkpoint": str(folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder),
    }
    print(f"building {folder} ...", file=sys.stderr)
    result["build"] = build(folder, shape)
    shards = sorted(folder.glob("*.safetensors"))
    result["files_bytes"] = sum(p.stat().st_size for p in shards)
    params = sum(numel(s) for _, s in shape.tensors())
    largest_elems = max(numel(s) for _, s in shape.tensors())
    result["parameters"] = params
    result["largest_tensor"] = {"elements": largest_elems, "stored_bytes": largest_elems * 2,
                                "float32_bytes": largest_elems * 4}

    # 1. inspect, in a fresh process each time (interpreter start and imports included)
    runs = []
    for k in range(args.repeats + 1):
        r = run_rusage([py, "-m", "modeltrace", "inspect", str(folder)])
        if k:  # the first run warms the page cache for headers and tokenizer files
            runs.append(r)
    js = run_rusage([py, "-m", "modeltrace", "inspect", "--json", str(folder)])
    report = json.loads(js["stdout"])
    walls = [r["wall_s"] for r in runs]
    peaks = [r["peak_rss_mb"] for r in runs]
    cpus = [r["cpu_s"] for r in runs]
    result["inspect"] = {
        "command": f"modeltrace inspect {result['checkpoint']}",
        "wall_s": {"min": min(walls), "median": statistics.median(walls), "max": max(walls)},
        "peak_rss_mb": {"max": max(peaks), "median": statistics.median(peaks)},
        "cpu_s": {"min": min(cpus), "median": statistics.median(cpus), "max": max(cpus)},
        "json_run": {"wall_s": js["wall_s"], "cpu_s": js["cpu_s"], "peak_rss_mb": js["peak_rss_mb"]},
        "reported_parameters": report["parameters"], "reported_tensors": report["tensors"],
        "target": {"wall_s": 2.0, "peak_rss_mb": 300},
        "met": max(walls) < 2.0 and max(peaks) < 300,
    }
    assert report["parameters"] == params, (report["parameters"], params)
    print(json.dumps(result["inspect"]), file=sys.stderr)

    # 2. per shard, warm cache: cat vs reading every tensor as float32 (wall time, and CPU time, which
    # depends less on how many other processes share the machine)
    per_shard = []
    for shard in shards:
        cat_run(shard)  # warm the page cache
        cats = [cat_run(shard) for _ in range(2)]
        r = run_rusage([py, str(Path(__file__).resolve()), "--worker-read", str(folder), "--shard", shard.name])
        w = json.loads(r["stdout"])
        cats.append(cat_run(shard))
        entry = {"shard": shard.name, "bytes": shard.stat().st_size,
                 "cat_s": [c["wall_s"] for c in cats], "cat_cpu_s": [c["cpu_s"] for c in cats],
                 "read_s": w["read_s"], "read_cpu_s": w["read_cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                 "tensors": w["tensors"]}
        if not args.no_baseline:
            b = run_rusage([py, str(Path(__file__).resolve()), "--worker-read", str(folder), "--shard", shard.name,
                            "--via-mmap"])
            wb = json.loads(b["stdout"])
            entry["mmap_baseline"] = {"read_s": wb["read_s"], "read_cpu_s": wb["read_cpu_s"],
                                      "peak_rss_mb": b["peak_rss_mb"]}
        per_shard.append(entry)
        print(json.dumps(per_shard[-1]), file=sys.stderr)
    total_bytes = sum(s["bytes"] for s in per_shard)
    cat_best = sum(min(s["cat_s"]) for s in per_shard)
    cat_median = sum(statistics.median(s["cat_s"]) for s in per_shard)
    cat_cpu = sum(min(s["cat_cpu_s"]) for s in per_shard)
    read_total = sum(s["read_s"] for s in per_shard)
    read_cpu = sum(s["read_cpu_s"] for s in per_shard)
    result["read_warm"] = {
        "per_shard": per_shard,
        "cat_gb_per_s_best": total_bytes / cat_best / 1e9,
        "cat_gb_per_s_median": total_bytes / cat_median / 1e9,
        "read_gb_per_s": total_bytes / read_total / 1e9,
        "ratio_vs_cat_best": cat_best / read_total,
        "ratio_vs_cat_median": cat_median / read_total,
        "cat_cpu_s": cat_cpu, "read_cpu_s": read_cpu, "ratio_cpu": cat_cpu / read_cpu,
        "mmap_baseline": None if args.no_baseline else {
            "read_gb_per_s": total_bytes / sum(s["mmap_baseline"]["read_s"] for s in per_shard) / 1e9,
            "read_cpu_s": sum(s["mmap_baseline"]["read_cpu_s"] for s in per_shard),
            "peak_rss_mb": max(s["mmap_baseline"]["peak_rss_mb"] for s in per_shard)},
        "target_ratio": 0.7,
        "met": cat_best / read_total >= 0.7,
    }

    # 3. one process reading every tensor of the model: peak memory
    r = run_rusage([py, str(Path(__file__).resolve()), "--worker-read", str(folder)])
    w = json.loads(r["stdout"])
    assert w["elements"] == params
    lim_f32 = 2 * largest_elems * 4 / MB + 300
    lim_stored = 2 * largest_elems * 2 / MB + 300
    result["read_all"] = {
        "wall_s": r["wall_s"], "read_s": w["read_s"], "read_cpu_s": w["read_cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
        "limit_mb_largest_as_float32": lim_f32, "limit_mb_largest_as_stored": lim_stored,
        "met_float32": r["peak_rss_mb"] < lim_f32, "met_stored": r["peak_rss_mb"] < lim_stored,
    }
    result["machine"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("inspect", "read_all")}, indent=2))
    print(json.dumps({k: v for k, v in result["read_warm"].items() if k != "per_shard"}, indent=2))


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


if __name__ == "__main__":
    main()
