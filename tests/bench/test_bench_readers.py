"""The reader benchmark script runs end to end on a few-MB checkpoint and records what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_run_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "readers.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_readers.py"), "--tiny", "--repeats", "1",
                           "--cache", str(tmp_path / "ckpt"), "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    # 2 layers, hidden 256, intermediate 512, 4 heads / 2 kv heads, vocabulary 4096, untied head
    per_layer = 2 * 256 * 256 + 2 * 128 * 256 + 3 * 512 * 256 + 2 * 256
    assert r["parameters"] == 2 * 4096 * 256 + 2 * per_layer + 256
    assert r["inspect"]["reported_parameters"] == r["parameters"]
    assert r["inspect"]["reported_tensors"] == 21
    assert r["inspect"]["peak_rss_mb"]["max"] > 0
    assert len(r["read_warm"]["per_shard"]) == len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    assert sum(s["bytes"] for s in r["read_warm"]["per_shard"]) == r["files_bytes"]
    for mode in ("read", "read_into"):
        assert r["read_all"][mode]["peak_rss_mb"] > 0 and r["read_all"][mode]["elements"] == r["parameters"]
    assert r["largest_tensor"] == {"elements": 4096 * 256, "stored_bytes": 4096 * 256 * 2,
                                   "float32_bytes": 4096 * 256 * 4}
