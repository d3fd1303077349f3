"""Any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp's server, Ollama, hosted APIs).

Chat and completions, images as data URLs where the endpoint takes them, log-probabilities
where offered. API keys come from the environment (never from the command line, so they do
not land in shell history or reports). A thread pool bounds concurrency; 429 and 5xx answers,
timeouts and dropped connections are retried with exponential backoff and jitter, honouring
Retry-After; malformed answers are retried too, then reported as a BackendError. Other 4xx
answers are not retried. The retry policy is tenacity's (stop, wait and retry strategies), not a
hand-written loop.
Payload building and response parsing are separate pure functions, tested on their own.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from modeltrace.backends.base import Backend, Request, Response
from modeltrace.errors import BackendError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_WAIT_S = 30.0  # longest pause between two tries, Retry-After included


class _Retryable(Exception):
    """One try failed in a way worth another: a 429/5xx answer, a timeout, a dropped connection, a bad body."""

    def __init__(self, why: str, retry_after: float | None = None) -> None:
        super().__init__(why)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header given in seconds (the HTTP-date form is ignored: the backoff applies)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def build_payload(model: str, req: Request) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for one request."""
    body: dict[str, Any] = {"model": model, "max_tokens": req.max_tokens, "temperature": req.temperature}
    if req.seed is not None:
        body["seed"] = req.seed
    if req.stop:
        body["stop"] = list(req.stop)
    if req.mode == "chat" or req.images:
        messages: list[dict[str, Any]] = [{"role": r, "content": c} for r, c in req.messages]
        if not messages:
            messages = [{"role": "user", "content": req.prompt}]
        if req.images:
            last = messages[-1]
            parts: list[dict[str, Any]] = [{"type": "text", "text": last["content"]}]
            for p in req.images:
                mime = mimetypes.guess_type(p)[0] or "image/png"
                with open(p, "rb") as fh:
                    b64 = base64.b64encode(fh.read()).decode("ascii")
                parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}})
            last["content"] = parts
        body["messages"] = messages
        if req.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = req.top_logprobs
        return "/v1/chat/completions", body
    body["prompt"] = req.prompt
    if req.top_logprobs:
        body["logprobs"] = req.top_logprobs
    return "/v1/completions", body


def parse_response(path: str, data: Any) -> Response:
    """A Response from an endpoint's JSON; raises BackendError if it is not the expected shape."""
    try:
        choice = data["choices"][0]
        finish = choice.get("finish_reason")
        if path.endswith("chat/completions"):
            text = choice["message"].get("content") or ""
            lp = (choice.get("logprobs") or {}).get("content") or []
            tokens = tuple(str(t.get("token", "")) for t in lp)
            tops = tuple({str(x["token"]): float(x["logprob"]) for x in (t.get("top_logprobs") or [])} for t in lp)
        else:
            text = choice["text"]
            lp = choice.get("logprobs") or {}
            tokens = tuple(str(t) for t in (lp.get("tokens") or []))
            tops = tuple({str(k): float(v) for k, v in (d or {}).items()} for d in (lp.get("top_logprobs") or []))
        if not isinstance(text, str):
            raise TypeError("text is not a string")
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise BackendError(f"malformed answer from the endpoint ({type(exc).__name__}: {exc})") from exc
    return Response(text=text, tokens=tokens, top_logprobs=tops, finish_reason=finish)


class OpenAICompatBackend(Backend):
    """A model behind an OpenAI-compatible endpoint."""

    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 0.5,
                 transport: Any | None = None, max_top_logprobs: int = 20) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.base_url = self.base_url.removesuffix("/v1")
        self.model = model
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff = backoff
        # OpenAI's chat API and vLLM's default both stop at 20; llama.cpp's server takes more
        self.max_top_logprobs = max_top_logprobs
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}#{self.model}"

    def _wait(self, state: Any) -> float:
        """Exponential backoff with jitter (tenacity), or the endpoint's Retry-After when that is longer."""
        import tenacity

        backoff = tenacity.wait_exponential_jitter(initial=self.backoff, max=MAX_WAIT_S, jitter=self.backoff)(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        after = exc.retry_after if isinstance(exc, _Retryable) else None
        return min(MAX_WAIT_S, max(backoff, after or 0.0))

    def _try(self, path: str, body: dict[str, Any]) -> Response:
        """One request: the Response, a _Retryable failure, or a BackendError that is final (4xx)."""
        import httpx

        try:
            r = self._client.post(path, json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code}", retry_after_seconds(r.headers.get("retry-after")))
        if r.status_code >= 400:
            raise BackendError(f"{self.base_url}{path}: HTTP {r.status_code}: {r.text[:300]}")
        try:
            return parse_response(path, r.json())
        except (ValueError, BackendError) as exc:
            raise _Retryable(f"malformed answer: {exc}") from exc

    def _one(self, req: Request) -> Response:
        import tenacity

        path, body = build_payload(self.model, req)
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.max_retries + 1), wait=self._wait,
                                     retry=tenacity.retry_if_exception_type(_Retryable))
        try:
            return retrying(self._try, path, body)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            raise BackendError(f"{self.base_url}{path}: gave up after {self.max_retries + 1} tries ({last})") from last

    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        out: list[Response | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = fut.result()
                    if on_response:
                        on_response(i, out[i])  # type: ignore[arg-type]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return [r for r in out if r is not None]

    def close(self) -> None:
        self._client.close()

    def __del__(self) -> None:  # a backend dropped without close() must not leak its connections
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
