"""Which backend answers for a model: an explicit endpoint, or the local folder through transformers.

Endpoint references: `openai:BASE_URL#MODEL` or `http(s)://host:port[/v1]#MODEL`
(API key from OPENAI_API_KEY or the variable named by MODELTRACE_API_KEY_ENV).
"""

from __future__ import annotations

import os
from pathlib import Path

from modeltrace.backends.base import Backend
from modeltrace.backends.cache import CachedBackend, ResponseCache
from modeltrace.errors import BackendError


def default_cache_path() -> Path:
    base = os.environ.get("MODELTRACE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modeltrace")
    return Path(base) / "responses.sqlite"


def is_endpoint(ref: str) -> bool:
    return ref.startswith(("openai:", "http://", "https://"))


def open_backend(ref: str, *, concurrency: int = 4) -> Backend:
    """A backend for `ref`: an endpoint reference, or a local Hugging Face folder."""
    if is_endpoint(ref):
        from modeltrace.backends.openai_compat import OpenAICompatBackend

        url = ref.removeprefix("openai:")
        url, _, model = url.partition("#")
        if not model:
            raise BackendError(f"{ref}: name the served model after '#', e.g. http://127.0.0.1:8080/v1#my-model")
        return OpenAICompatBackend(url, model, concurrency=concurrency,
                                   api_key_env=os.environ.get("MODELTRACE_API_KEY_ENV", "OPENAI_API_KEY"))
    from modeltrace.backends.local import TransformersBackend

    p = Path(ref)
    if not p.is_dir():
        raise BackendError(f"{ref}: running a model needs a Hugging Face folder or an endpoint "
                           "(openai:URL#MODEL)")
    return TransformersBackend(p)


def cached(backend: Backend, cache_path: str | Path | None = None) -> CachedBackend:
    return CachedBackend(backend, ResponseCache(cache_path or default_cache_path()))
