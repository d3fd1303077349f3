from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from modeltrace.backends.base import Request
from modeltrace.backends.cache import CachedBackend, ResponseCache
from modeltrace.backends.mock import MockBackend


def test_cache_serves_repeats(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    inner = MockBackend("m")
    be = CachedBackend(inner, cache)
    reqs = [Request(prompt=f"q{i}") for i in range(5)]
    first = be.generate(reqs)
    second = be.generate(reqs + [Request(prompt="new")])
    assert [r.text for r in second[:5]] == [r.text for r in first]
    assert inner.calls == 6 and cache.count() == 6
    other = CachedBackend(MockBackend("m", seed=1), cache)  # another model does not share answers
    other.generate(reqs[:1])
    assert cache.count() == 7
    cache.close()


def test_sigkill_loses_nothing_answered(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        from modeltrace.backends.base import Request
        from modeltrace.backends.cache import CachedBackend, ResponseCache
        from modeltrace.backends.mock import MockBackend
        def slow(req):
            time.sleep(0.05)
            print(req.prompt, flush=True)
            return "a:" + req.prompt
        be = CachedBackend(MockBackend("m", answer_fn=slow), ResponseCache({str(db)!r}))
        be.generate([Request(prompt=f"q{{i}}") for i in range(200)])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = 0
    deadline = time.time() + 30
    while seen < 20 and time.time() < deadline:
        if proc.stdout.readline():
            seen += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    cache = ResponseCache(db)
    kept = cache.count()
    assert kept >= seen - 1  # every answer printed before the kill (but perhaps the one in flight) is stored
    calls: list[str] = []

    def record(req: Request) -> str:
        calls.append(req.prompt)
        return "a:" + req.prompt

    be = CachedBackend(MockBackend("m", answer_fn=record), cache)
    out = be.generate([Request(prompt=f"q{i}") for i in range(200)])
    assert [r.text for r in out] == [f"a:q{i}" for i in range(200)]
    assert len(calls) == 200 - kept
    cache.close()
