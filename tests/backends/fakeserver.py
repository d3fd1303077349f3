"""A real HTTP server on loopback that speaks the OpenAI API and injects faults on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FaultPlan:
    """Faults to inject, consumed in order, then normal answers.

    Kinds: an HTTP status ("429", "500", "400", "404"...), malformed, drop, slow. A 429 carries
    `Retry-After: retry_after`.
    """

    def __init__(self, faults: list[str] | None = None, slow_s: float = 0.5, retry_after: str = "0") -> None:
        self.faults = list(faults or [])
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []

    def next(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt") or json.dumps(body.get("messages"))
    text = f"echo:{prompt[-12:]}"
    if "messages" in body:
        return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    return {"choices": [{"text": text, "finish_reason": "stop",
                         "logprobs": {"tokens": ["e"], "top_logprobs": [{"e": -0.1, "x": -2.5}]}}]}


@contextmanager
def fake_openai_server(plan: FaultPlan) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n))
            with plan.lock:
                plan.requests.append(body)
            fault = plan.next()
            if fault == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "slow":
                time.sleep(plan.slow_s)
            if fault is not None and fault.isdigit():
                payload = b'{"error": "injected"}'
                self.send_response(int(fault))
                if fault == "429":
                    self.send_header("Retry-After", plan.retry_after)
            else:
                payload = b'{"choices": [' if fault == "malformed" else json.dumps(_answer(body)).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)
