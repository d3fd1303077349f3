"""Cost of the positive controls: `compare` of an independent 1B-shaped pair with and without them.

Two Llama-3.2-1B-shaped checkpoints (bf16, random weights from different seeds, bench_readers.py's
builder) are independent by construction, so nothing rejects and the controls run. Both commands are
timed in CPU seconds (user + system, robust to a shared machine) and wall seconds; the target is
controls under 25 % of compare's time. The verdicts are recorded too.

Run: ``.venv/bin/python bench/bench_controls.py [--tiny]``; the result is printed as JSON (with
``--write``, appended to docs/benchmarks/controls.md's data block, with the git commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_compare import LLAMA_1B, timed  # noqa: E402
from bench_readers import build  # noqa: E402

RUN = ("import sys, json; from modeltrace.compare import compare; from modeltrace.model import Model;"
       "r = compare(Model.open(sys.argv[1]), Model.open(sys.argv[2]), controls=sys.argv[3] == '1');"
       "json.dump(r.to_json(), open(sys.argv[4], 'w'))")


def commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 4-layer, hidden-256 pair (a smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    shape = replace(LLAMA_1B, layers=4, hidden=256, intermediate=1024, heads=4, kv_heads=2, vocab=8192,
                    shard_bytes=1 << 30) if args.tiny else LLAMA_1B
    cache = REPO / "bench" / "cache" / ("controls-tiny" if args.tiny else "controls-1b")
    a, b = cache / "a", cache / "b"
    build(a, shape, seed=1)
    build(b, shape, seed=2)
    res: dict[str, Any] = {"shape": "tiny" if args.tiny else "llama-3.2-1b", "commit": commit()}
    for label, flag in (("without_controls", "0"), ("with_controls", "1")):
        with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
            res[label] = timed([sys.executable, "-c", RUN, str(a), str(b), flag, out.name], args.threads)
            data = json.loads(Path(out.name).read_text())
        res[label]["verdict"] = data["verdict"]
        res[label]["controls_s"] = data["provenance"].get("controls_s")
        if flag == "1":
            res["detection_limit"] = data.get("detection_limit")
            res["controls_missed"] = data.get("controls_missed")
    base, full = res["without_controls"]["cpu_s"], res["with_controls"]["cpu_s"]
    res["controls_share_cpu"] = round((full - base) / max(full, 1e-9), 3)
    print(json.dumps(res, indent=2))
    if args.write:
        doc = REPO / "docs" / "benchmarks" / "controls.md"
        with doc.open("a") as fh:
            fh.write("\n```json\n" + json.dumps(res, indent=2) + "\n```\n")


if __name__ == "__main__":
    main()
