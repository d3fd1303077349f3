"""Model backends: local transformers, OpenAI-compatible HTTP endpoints, and a mock; a response cache.

A model reference picks its backend: `openai:` or `http(s)://` URLs go to the HTTP backend, local
folders with a config.json to transformers, `mock:` names to the deterministic test double.
"""

from __future__ import annotations

from modeltrace.backends.base import Backend, Request, Response
from modeltrace.registry import Registry

BACKENDS: Registry[type[Backend]] = Registry("backend", "modeltrace.backends")

__all__ = ["BACKENDS", "Backend", "Request", "Response"]
