"""Reader benchmark on an 8B-shaped checkpoint: `modeltrace inspect` time and memory, full-read throughput.

Writes (once, then reuses) random bf16 weights with Llama-3-8B's shapes as sharded safetensors plus a
config.json and a tokenizer.json of Llama-3's size, then measures:

* `modeltrace inspect` in a fresh process: wall time and peak resident memory (targets: < 2 s, < 300 MB);
* reading every tensor as float32, shard by shard with the shard in the page cache, against `cat` over
  the same shard with the same warm cache (target: >= 70 % of cat's speed, both counted in bytes of the
  files read per second): `cat`, `source.read(name)` for every tensor, and `source.read_into(name, buf)`
  with one reused buffer, run in turn several times so that changes in the machine's load hit all three
  alike; medians of wall time and CPU time;
* peak resident memory of one process reading every tensor of the model, with `read` and with
  `read_into` (target: < 2 x the largest tensor + 300 MB; the largest tensor is counted both as stored
  and as the float32 array returned);
* where the time of a bf16 read goes, step by step on 1 GiB of the last shard (`breakdown`).

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


MODES = ("read", "read_into", "mmap")


def worker_read(folder: Path, shard: str | None, mode: str = "read") -> None:
    """Read every tensor (of one shard, or of the model) as float32; print what was read and how fast.

    Iterates `Model.open(folder).source` as a user would. `read`: `source.read(name)`, a fresh array
    per tensor. `read_into`: `source.read_into(name, buf)` with one buffer from
    `source.read_buffer(names)`, allocated inside the timed loop. `mmap`: the reader's earlier read path, kept as a
    baseline: `raw_to_float32(reader.raw(name), dtype)` on zero-copy views of a memory map.
    """
    sys.path.insert(0, str(REPO / "src"))
    from modeltrace.formats.base import raw_to_float32
    from modeltrace.formats.safetensors import SafetensorsReader
    from modeltrace.model import Model

    with Model.open(str(folder)) as model:
        src = model.source
        if mode == "mmap":
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
        if mode == "read_into":
            buf = src.read_buffer(names)
        for name in names:
            arr = src.read_into(name, buf) if mode == "read_into" else reader.read(name)
            assert arr.dtype == np.float32
            elems += arr.size
            largest = max(largest, arr.nbytes)
            del arr
        dt = time.perf_counter() - t0
        cpu = _cpu() - c0
    print(json.dumps({"tensors": len(names), "elements": elems, "file_bytes": stored, "read_s": dt, "read_cpu_s": cpu,
                      "largest_f32_bytes": largest}))


def breakdown(shard: Path, repeats: int, nbytes: int = 1 << 30) -> dict[str, Any]:
    """Where the time of a bf16 read goes: CPU and wall seconds of each step on `nbytes` of one shard.

    All steps run in turn `repeats` times (medians reported) on the same warm bytes: reading alone into a
    256 KB buffer (what `cat` does), a memcpy of the float32 output size (the fastest this core writes
    that much memory), the reader's conversion into a reused array, the same into a fresh array (the
    allocation and first touch included), and the reused-array conversion split over two threads.
    """
    import threading

    sys.path.insert(0, str(REPO / "src"))
    from modeltrace.formats.base import pread_float32

    with open(shard, "rb") as fh:
        start = 8 + int.from_bytes(fh.read(8), "little")
    nbytes = min(nbytes, shard.stat().st_size - start) // 4 * 4
    n = nbytes // 2
    fd = os.open(shard, os.O_RDONLY)
    buf = bytearray(256 * 1024)
    out = np.ones(n, dtype=np.float32)
    other = np.ones(n, dtype=np.float32)

    def pread_only() -> None:
        for off in range(0, nbytes, len(buf)):
            os.preadv(fd, [buf], start + off)

    def two_threads() -> None:
        h = n // 2
        t = threading.Thread(target=pread_float32, args=(fd, shard, start + 2 * h, nbytes - 2 * h, "BF16"),
                             kwargs={"out": out[h:]})
        t.start()
        pread_float32(fd, shard, start, 2 * h, "BF16", out=out[:h])
        t.join()

    steps = {"pread_only": pread_only, "memcpy_output_size": lambda: np.copyto(out, other),
             "convert_into_reused": lambda: pread_float32(fd, shard, start, nbytes, "BF16", out=out),
             "convert_fresh": lambda: pread_float32(fd, shard, start, nbytes, "BF16"),
             "convert_into_reused_2_threads": two_threads}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    try:
        pread_only()  # warm
        for _ in range(repeats):
            for name, step in steps.items():
                c0, t0 = _cpu(), time.perf_counter()
                step()
                got[name].append((time.perf_counter() - t0, _cpu() - c0))
    finally:
        os.close(fd)
    return {"shard": shard.name, "bf16_bytes": nbytes, "float32_bytes": 2 * nbytes, "load_average_1m":
            os.getloadavg()[0], **{k: {"wall_s": statistics.median(w for w, _ in v),
                                       "cpu_s": statistics.median(c for _, c in v)} for k, v in got.items()}}


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
    ap.add_argument("--mode", choices=MODES, default="read", help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true",
                    help="also time the earlier read path (a memory map, converted in one go) once per shard")
    args = ap.parse_args()
    if args.worker_read:
        worker_read(args.worker_read, args.shard, args.mode)
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

    # 2. per shard, warm cache: cat, read and read_into in turn, `repeats` times (wall time, and CPU time,
    # which depends less on how many other processes share the machine)
    me = str(Path(__file__).resolve())

    def worker(shard: str | None, mode: str) -> dict[str, Any]:
        cmd = [py, me, "--worker-read", str(folder), "--mode", mode]
        r = run_rusage(cmd + (["--shard", shard] if shard else []))
        w = json.loads(r["stdout"])
        return {"read_s": w["read_s"], "read_cpu_s": w["read_cpu_s"], "peak_rss_mb": r["peak_rss_mb"],
                "elements": w["elements"]}

    per_shard = []
    loads = []
    for shard in shards:
        cat_run(shard)  # warm the page cache
        entry: dict[str, Any] = {"shard": shard.name, "bytes": shard.stat().st_size, "cat": [], "read": [],
                                 "read_into": [], "load_average_1m": []}
        for _ in range(args.repeats):
            entry["load_average_1m"].append(os.getloadavg()[0])
            entry["cat"].append(cat_run(shard))
            entry["read"].append(worker(shard.name, "read"))
            entry["read_into"].append(worker(shard.name, "read_into"))
        if args.baseline:
            entry["mmap_baseline"] = worker(shard.name, "mmap")
        loads += entry["load_average_1m"]
        per_shard.append(entry)
        print(json.dumps(per_shard[-1]), file=sys.stderr)
    total_bytes = sum(s["bytes"] for s in per_shard)

    def med(key: str, field: str) -> float:
        """Sum over shards of each shard's median."""
        return sum(statistics.median(r[field] for r in s[key]) for s in per_shard)

    cat_wall, cat_cpu = med("cat", "wall_s"), med("cat", "cpu_s")
    cat_best = sum(min(r["wall_s"] for r in s["cat"]) for s in per_shard)
    summary: dict[str, Any] = {
        "basis": "bytes of the safetensors files read per second, for cat and the readers alike",
        "repeats": args.repeats, "load_average_1m": {"min": min(loads), "median": statistics.median(loads),
                                                     "max": max(loads)},
        "cat": {"wall_s": cat_wall, "cpu_s": cat_cpu, "gb_per_s": total_bytes / cat_wall / 1e9,
                "gb_per_s_best": total_bytes / cat_best / 1e9},
    }
    for mode in ("read", "read_into"):
        wall, cpu = med(mode, "read_s"), med(mode, "read_cpu_s")
        summary[mode] = {"wall_s": wall, "cpu_s": cpu, "gb_per_s": total_bytes / wall / 1e9,
                         "ratio_vs_cat": cat_wall / wall, "ratio_vs_cat_cpu": cat_cpu / cpu,
                         "met": cat_wall / wall >= 0.7}
    if args.baseline:
        wall = sum(s["mmap_baseline"]["read_s"] for s in per_shard)
        summary["mmap_baseline"] = {"wall_s": wall, "cpu_s": sum(s["mmap_baseline"]["read_cpu_s"] for s in per_shard),
                                    "gb_per_s": total_bytes / wall / 1e9}
    result["read_warm"] = {"per_shard": per_shard, **summary, "target_ratio": 0.7,
                           "met": summary["read_into"]["met"] or summary["read"]["met"]}

    # 3. one process reading every tensor of the model: peak memory, both ways of reading
    lim_f32 = 2 * largest_elems * 4 / MB + 300
    lim_stored = 2 * largest_elems * 2 / MB + 300
    result["read_all"] = {"limit_mb_largest_as_float32": lim_f32, "limit_mb_largest_as_stored": lim_stored}
    for mode in ("read", "read_into"):
        w = worker(None, mode)
        assert w["elements"] == params
        result["read_all"][mode] = {**w, "gb_per_s": result["files_bytes"] / w["read_s"] / 1e9,
                                    "met_float32": w["peak_rss_mb"] < lim_f32,
                                    "met_stored": w["peak_rss_mb"] < lim_stored}
        print(json.dumps(result["read_all"][mode]), file=sys.stderr)
    # 4. where the time goes, on 1 GiB of the last shard
    result["breakdown"] = breakdown(shards[-1], args.repeats)
    print(json.dumps(result["breakdown"]), file=sys.stderr)
    result["machine"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("inspect", "read_all", "breakdown")}, indent=2))
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
