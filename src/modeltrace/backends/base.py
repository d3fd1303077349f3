"""One interface for running models: local or over HTTP, text or images, with a response cache.

A `Request` is plain data and has a canonical form (sorted-key JSON), which is what the cache
keys on: the same question to the same model is never asked twice, across runs and crashes.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["chat", "completion"]


@dataclass(frozen=True)
class Request:
    """One query: a prompt (completion) or messages (chat), decoding settings, optional images."""

    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)
    mode: Mode = "completion"
    max_tokens: int = 16
    temperature: float = 0.0
    top_logprobs: int = 0  # >0: ask for next-token log-probabilities at each generated position
    seed: int | None = None
    images: tuple[str, ...] = ()  # sha256-addressed image paths (the cache key uses the image bytes' hash)
    stop: tuple[str, ...] = ()

    def canonical(self) -> str:
        d = asdict(self)
        d["images"] = [_file_sha256(p) for p in self.images]
        return json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Response:
    """A model's answer: the text, and per generated token the top log-probabilities when asked."""

    text: str
    tokens: tuple[str, ...] = ()
    top_logprobs: tuple[dict[str, float], ...] = ()
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": list(self.tokens), "top_logprobs": [dict(d) for d in self.top_logprobs],
                "finish_reason": self.finish_reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Response:
        return cls(text=d.get("text", ""), tokens=tuple(d.get("tokens", ())),
                   top_logprobs=tuple(dict(x) for x in d.get("top_logprobs", ())),
                   finish_reason=d.get("finish_reason"))


class Backend(ABC):
    """A model that answers requests. `identity` names the model for cache keys and reports."""

    name: str = "?"
    # the most next-token log-probabilities one answer may list (None: as many as the vocabulary has)
    max_top_logprobs: int | None = None

    @property
    @abstractmethod
    def identity(self) -> str:
        """A stable string that names the model behind this backend (e.g. url + model name)."""

    @abstractmethod
    def generate(self, requests: Sequence[Request],
                 on_response: Callable[[int, Response], None] | None = None) -> list[Response]:
        """Answer every request (in order); `on_response(i, r)` is called as each answer arrives."""

    def close(self) -> None:
        """Release connections or model memory."""
