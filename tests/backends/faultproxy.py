"""A loopback HTTP proxy in front of a real server that injects faults into its answers.

Faults are taken in arrival order from a schedule, then requests pass through untouched:
- `slow`: wait `slow_s`, then forward (a slow but correct answer);
- `429` / `500` / `503`: answer with that status (429 with Retry-After: 0) without asking the server;
- `malformed`: forward, then send back only the first half of the server's JSON, with status 200;
- `drop`: close the connection before asking the server;
- `drop-after`: ask the server (it does the work), then close the connection without answering.
Every fault injected and every request forwarded is counted, so a test can check that each
fault really happened.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

FAULTS = ("slow", "429", "500", "503", "malformed", "drop", "drop-after")


class FaultProxy:
    """Forwards to `upstream` (http://host:port), injecting the scheduled faults first."""

    def __init__(self, upstream: str, faults: Iterable[str] = (), *, slow_s: float = 0.5,
                 upstream_timeout: float = 120.0) -> None:
        self.faults = list(faults)
        unknown = sorted(set(self.faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(FAULTS)}")
        u = urlsplit(upstream)
        if u.scheme != "http" or not u.hostname or not u.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = u.hostname, u.port
        self.slow_s = slow_s
        self.upstream_timeout = upstream_timeout
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next_fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
            if fault:
                self.injected[fault] += 1
            return fault

    def _forward(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=self.upstream_timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            keep = [(k, v) for k, v in r.getheaders() if k.lower() in ("content-type", "retry-after")]
            with self._lock:
                self.forwarded += 1
            return r.status, keep, data
        finally:
            conn.close()

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.close()

            def _handle(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                fwd_headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                fault = proxy._next_fault()
                if fault == "drop":
                    self._drop()
                    return
                if fault in ("429", "500", "503"):
                    hdrs = [("Content-Type", "application/json")]
                    if fault == "429":
                        hdrs.append(("Retry-After", "0"))
                    self._reply(int(fault), hdrs, b'{"error": {"message": "injected fault"}}')
                    return
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                try:
                    status, headers, data = proxy._forward(method, self.path, body, fwd_headers)
                except OSError as exc:
                    self._reply(502, [("Content-Type", "text/plain")], f"upstream failed: {exc}".encode())
                    return
                if fault == "drop-after":
                    self._drop()
                    return
                if fault == "malformed":
                    data = data[: max(1, len(data) // 2)]
                self._reply(status, headers, data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
