"""Integration tests against a real server: llama.cpp's server from `llama-cpp-python`, serving real GGUF models.

The servers are started as subprocesses on free loopback ports, polled until ready (bounded), shared by
the tests of this module and always stopped at its end. Without `llama_cpp` (the package did not build)
or without the real model files the tests skip and say why; under CI=true such a skip is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from fakeserver import FaultPlan, fake_openai_server
from faultproxy import FaultProxy

from modeltrace.backends.base import Request
from modeltrace.backends.cache import CachedBackend, ResponseCache
from modeltrace.backends.openai_compat import OpenAICompatBackend
from modeltrace.cli import cli
from modeltrace.errors import BackendError
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.mmd import mmd_test

pytestmark = pytest.mark.llama  # under CI=true a skip here (no server, no model) is a failure (tests/conftest.py)
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
MODELS = {  # alias -> GGUF file inside the realmodels folder
    "smollm": "smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma": "gemma-3-270m-q4_k_m/gemma-3-270m-q4_k_m.gguf",
    "qwen": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
}
READY_TIMEOUT_S = 120.0


def _missing_server_modules() -> list[str]:
    return [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerPool:
    """llama.cpp servers started on demand, one per model, stopped together."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.urls: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, alias: str, gguf: Path) -> str:
        if alias in self.urls:
            return self.urls[alias]
        port = _free_port()
        log_path = self.logs / f"{alias}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[alias] = proc
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"llama.cpp server for {gguf.name} exited with {proc.returncode}:\n{tail}")
            try:
                if httpx.get(url + "/v1/models", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"llama.cpp server for {gguf.name} not ready after {READY_TIMEOUT_S:.0f} s:\n{tail}")
            time.sleep(0.25)
        self.urls[alias] = url
        return url

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    p = ServerPool(tmp_path_factory.mktemp("llama-logs"))
    try:
        yield p
    finally:
        p.close()


def _server(pool: ServerPool, realmodels: Path, alias: str) -> str:
    missing = _missing_server_modules()
    if missing:
        pytest.skip(f"llama.cpp server not installed (missing {', '.join(missing)}): "
                    "pip install llama-cpp-python[server]")
    gguf = realmodels / MODELS[alias]
    if not gguf.is_file():
        pytest.skip(f"real model file absent: {gguf}")
    return pool.url(alias, gguf)


@pytest.fixture
def smollm(pool: ServerPool, realmodels: Path) -> str:
    return _server(pool, realmodels, "smollm")


@pytest.fixture
def gemma(pool: ServerPool, realmodels: Path) -> str:
    return _server(pool, realmodels, "gemma")


@pytest.fixture
def qwen(pool: ServerPool, realmodels: Path) -> str:
    return _server(pool, realmodels, "qwen")


PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,",
           "The opposite of hot is", "Water boils at", "import numpy as", "Monday, Tuesday,",
           "The sun rises in the", "A B C D"]


def test_fault_proxy_injects_each_fault() -> None:
    """The proxy itself (in front of the fake server): each scheduled fault happens once, then traffic passes."""
    schedule = ["429", "500", "503", "malformed", "drop", "drop-after", "slow"]
    with fake_openai_server(FaultPlan()) as up, FaultProxy(up, schedule, slow_s=0.1) as proxy:
        be = OpenAICompatBackend(proxy.url, "m", concurrency=2, timeout=5.0, backoff=0.01, max_retries=8)
        out = be.generate([Request(prompt=f"p{i}") for i in range(5)])
        be.close()
    assert [r.text for r in out] == [f"echo:p{i}" for i in range(5)]
    assert proxy.injected == Counter(schedule) and proxy.faults == []
    # one forward per answer, plus the ones whose answer was spoilt (malformed, drop-after, slow passes)
    assert proxy.forwarded == 5 + 2
    assert proxy.requests == 5 + 6


def test_completion_chat_and_logprobs(smollm: str) -> None:
    be = OpenAICompatBackend(smollm + "/v1", "smollm", concurrency=1, timeout=120.0)
    comp = Request(prompt="The capital of France is", max_tokens=4, top_logprobs=3)
    r1, r2 = be.generate([comp, comp])
    assert r1.text and r1.text == r2.text  # greedy decoding is deterministic
    assert "".join(r1.tokens) == r1.text
    assert 1 <= len(r1.top_logprobs) == len(r1.tokens) <= 4
    for top in r1.top_logprobs:
        assert 1 <= len(top) <= 3 and all(v <= 0.0 for v in top.values())
    # greedy: the first token is the most probable one (later ones pass llama.cpp's default repeat
    # penalty, applied after the log-probabilities are taken, so they need not be)
    first = r1.top_logprobs[0]
    assert r1.tokens[0] == max(first, key=first.__getitem__)
    assert r1.finish_reason in ("stop", "length")

    chat = Request(mode="chat", messages=(("user", "Name one colour."),), max_tokens=4, top_logprobs=2)
    c1, c2 = be.generate([chat, chat])
    assert isinstance(c1.text, str) and c1.text.strip() and c1.text == c2.text
    assert c1.finish_reason in ("stop", "length")
    assert len(c1.top_logprobs) == len(c1.tokens) >= 1
    assert all(1 <= len(t) <= 2 for t in c1.top_logprobs)

    sampled = [Request(prompt="Once upon a time", max_tokens=4, temperature=1.0, seed=1)] * 2
    s1, s1b = be.generate(sampled)
    assert s1.text == s1b.text  # the server honours per-request seeds
    be.close()


def test_cache_resumes_after_sigkill(smollm: str, tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    prompts = PROMPTS[:6]
    script = textwrap.dedent(f"""
        from modeltrace.backends.base import Request
        from modeltrace.backends.cache import CachedBackend, ResponseCache
        from modeltrace.backends.openai_compat import OpenAICompatBackend
        be = CachedBackend(OpenAICompatBackend({smollm!r}, "smollm", concurrency=1, timeout=120.0),
                           ResponseCache({str(db)!r}))
        be.generate([Request(prompt=p, max_tokens=3) for p in {prompts!r}],
                    on_response=lambda i, r: print(i, flush=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 2 and time.monotonic() < deadline:
        if proc.stdout.readline():
            seen += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert seen == 2, "the run was not answering before the kill"

    cache = ResponseCache(db)
    kept = cache.count()
    assert seen <= kept < len(prompts)  # everything announced was stored; the run was cut short
    be = CachedBackend(OpenAICompatBackend(smollm, "smollm", concurrency=2, timeout=120.0), cache)
    reqs = [Request(prompt=p, max_tokens=3) for p in prompts]
    resumed = be.generate(reqs)
    assert be.asked == len(prompts) - kept  # only the missing answers were asked for
    direct = OpenAICompatBackend(smollm, "smollm", concurrency=2, timeout=120.0)
    fresh = direct.generate(reqs)
    assert [r.text for r in resumed] == [r.text for r in fresh]
    direct.close()
    be.close()
    cache.close()


def test_run_through_fault_proxy_completes_correctly(smollm: str, tmp_path: Path) -> None:
    reqs = [Request(prompt=p, max_tokens=3, top_logprobs=2) for p in PROMPTS[:6]]
    direct = OpenAICompatBackend(smollm, "smollm", concurrency=1, timeout=120.0)
    truth = direct.generate(reqs)
    direct.close()
    schedule = ["429", "500", "malformed", "drop", "slow", "drop-after", "503", "drop"]
    with FaultProxy(smollm, schedule, slow_s=0.5) as proxy:
        cache = ResponseCache(tmp_path / "c.sqlite")
        be = CachedBackend(OpenAICompatBackend(proxy.url + "/v1", "smollm", concurrency=3, timeout=120.0,
                                               backoff=0.02, max_retries=8), cache)
        got = be.generate(reqs)
        be.close()
    assert proxy.injected == Counter(schedule)  # every fault was served
    assert [r.text for r in got] == [r.text for r in truth]
    assert [r.tokens for r in got] == [r.tokens for r in truth]
    for g, t in zip(got, truth):
        for dg, dt in zip(g.top_logprobs, t.top_logprobs):
            assert dg.keys() == dt.keys()
            assert np.allclose([dg[k] for k in dt], [dt[k] for k in dt], atol=1e-4)
    assert cache.count() == len(reqs)  # only good answers are stored
    cache.close()


def test_proxy_failing_for_good_is_a_clear_error(smollm: str) -> None:
    with FaultProxy(smollm, ["500"] * 3) as proxy:
        be = OpenAICompatBackend(proxy.url, "smollm", concurrency=1, timeout=30.0, backoff=0.01, max_retries=2)
        with pytest.raises(BackendError, match=r"/v1/completions: gave up after 3 tries \(HTTP 500\)"):
            be.generate([Request(prompt="hello", max_tokens=2)])
        be.close()
    assert proxy.forwarded == 0


@pytest.mark.slow
def test_same_model_cli_on_real_servers(smollm: str, gemma: str, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--prompts", "4", "--samples", "3", "--max-tokens", "4", "--cache", str(tmp_path / "c.sqlite"),
              "--json"]
    # two names for one served model: separate identities, so both sides are really asked
    same = runner.invoke(cli, ["same-model", f"{smollm}/v1#smollm", f"openai:{smollm}#smollm-again", *common])
    assert same.exit_code == 0, same.output
    s = json.loads(same.output)
    assert s["verdict"] == "not distinguishable" and s["queries"] == 24
    # a dozen sampled completions per side cannot tell these two flat distributions apart (measured:
    # p = 0.2 to 0.5 at temperature 1, 0.5 and 0.3); greedy completions can
    diff = runner.invoke(cli, ["same-model", f"{smollm}/v1#smollm", f"{gemma}/v1#gemma", *common,
                               "--temperature", "0"])
    assert diff.exit_code == 0, diff.output
    d = json.loads(diff.output)
    assert d["verdict"] == "different" and d["p_value"] < 0.01, d

    # the same model sampled with other seeds on B's side: a genuine two-sample test, not a replay
    # (A's side is the CLI's own requests, answered from its cache)
    texts = generic_prompts(4, seed=0)
    cache = ResponseCache(tmp_path / "c.sqlite")
    be = CachedBackend(OpenAICompatBackend(smollm + "/v1", "smollm", concurrency=2, timeout=120.0), cache)

    def draw(offset: int) -> list[list[str]]:
        reqs = [Request(prompt=t, max_tokens=4, temperature=1.0, seed=offset + s) for t in texts for s in range(3)]
        out = [r.text for r in be.generate(reqs)]
        return [out[i * 3:(i + 1) * 3] for i in range(len(texts))]

    xa = draw(0)
    assert be.asked == 0
    xb = draw(100_000)
    be.close()
    cache.close()
    assert xa != xb
    assert mmd_test(xa, xb, length=16, seed=0).p_value > 0.01


@pytest.mark.slow
def test_probe_run_cli_on_real_servers(smollm: str, gemma: str, tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(cli, ["probe", "make", str(tmp_path / "set"), "--facts", "8", "--seed", "3"])
    assert made.exit_code == 0, made.output
    a, g = f"{smollm}/v1#smollm", f"{gemma}/v1#gemma"
    cache = str(tmp_path / "c.sqlite")
    res = runner.invoke(cli, ["probe", "run", str(tmp_path / "set"), a, g, "--cache", cache, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["schema"] == "modeltrace.probe-run/1" and out["items"] == 8
    assert [m["model"] for m in out["models"]] == [a, g]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in out["models"])
    (pair,) = out["pairs"]
    assert (pair["a"], pair["b"]) == (a, g)
    assert 0 <= pair["same_wrong"] <= pair["both_wrong"] <= 8
    assert pair["p_value"] > 1e-6  # unrelated models are not convicted
    # a rerun is answered from the cache: same numbers, and the server is not asked again
    again = runner.invoke(cli, ["probe", "run", str(tmp_path / "set"), a, g, "--cache", cache, "--json"])
    assert again.exit_code == 0 and json.loads(again.output) == out
    assert ResponseCache(cache).count() == 16


@pytest.mark.slow
def test_logprob_similarity_cli_on_real_servers(smollm: str, gemma: str, qwen: str, tmp_path: Path) -> None:
    """Next-token log-probabilities from real endpoints: one model under two names is caught, two unrelated are not."""
    runner = CliRunner()
    common = ["--behaviour", "--method", "logprob-similarity", "--prompts", "64", "--top-logprobs", "10",
              "--cache", str(tmp_path / "c.sqlite"), "--json"]
    refs = ["--reference", f"{gemma}/v1#gemma", "--reference", f"{qwen}/v1#qwen"]
    same = runner.invoke(cli, ["compare", f"{smollm}/v1#smollm", f"openai:{smollm}#smollm-again", *refs, *common])
    assert same.exit_code == 0, same.output
    s = json.loads(same.output)
    (ev,) = s["evidence"]
    assert ev["status"] == "ok" and ev["details"]["top_logprobs"] == 10, ev
    assert ev["details"]["distance"] < 0.05 and s["verdict"] == "derived", ev["statement"]
    assert ev["details"]["queries"] == 4 * 64

    # the chat endpoint (first assistant token under each model's chat template) works the same way
    chat = runner.invoke(cli, ["compare", f"{smollm}/v1#smollm", f"openai:{smollm}#smollm-again", *refs, *common,
                               "--chat"])
    assert chat.exit_code == 0, chat.output
    c = json.loads(chat.output)
    assert c["verdict"] == "derived" and c["evidence"][0]["details"]["distance"] < 0.05, c["evidence"][0]

    # two unrelated models and only one other unrelated model to measure the null on: refused, not decided
    diff = runner.invoke(cli, ["compare", f"{smollm}/v1#smollm", f"{gemma}/v1#gemma",
                               "--reference", f"{qwen}/v1#qwen", *common])
    assert diff.exit_code == 0, diff.output
    d = json.loads(diff.output)
    (ev,) = d["evidence"]
    assert ev["status"] == "skipped" and "needs at least 2 reference models" in ev["statement"]
    assert d["verdict"] != "derived"
