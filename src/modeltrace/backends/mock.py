"""A deterministic stand-in model for tests: answers are a pure function of (seed, prompt)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from modeltrace.backends.base import Backend, Request, Response


class MockBackend(Backend):
    """Answers with a function of the prompt; `answer_fn` overrides it (e.g. a fixed answer sheet).

    `logprobs_fn` gives the next-token log-probability table of a prompt; a request that asks
    for `top_logprobs=k` gets its k best entries.
    """

    name = "mock"

    def __init__(self, model_id: str = "mock", seed: int = 0,
                 answer_fn: Callable[[Request], str] | None = None,
                 logprobs_fn: Callable[[Request], dict[str, float]] | None = None) -> None:
        self.model_id = model_id
        self.logprobs_fn = logprobs_fn
        self.seed = seed
        self.answer_fn = answer_fn
        self.calls = 0

    @property
    def identity(self) -> str:
        return f"mock:{self.model_id}#{self.seed}"

    def _answer(self, req: Request) -> str:
        if self.answer_fn is not None:
            return self.answer_fn(req)
        text = req.prompt or " ".join(c for _, c in req.messages)
        h = hashlib.sha256(f"{self.seed}:{text}".encode()).hexdigest()
        return "tok" + h[:2]

    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        out = []
        for i, r in enumerate(requests):
            self.calls += 1
            tops: tuple[dict[str, float], ...] = ()
            if r.top_logprobs and self.logprobs_fn is not None:
                table = sorted(self.logprobs_fn(r).items(), key=lambda kv: -kv[1])[: r.top_logprobs]
                tops = (dict(table),)
            resp = Response(text=self._answer(r), top_logprobs=tops, finish_reason="stop")
            out.append(resp)
            if on_response:
                on_response(i, resp)
        return out
