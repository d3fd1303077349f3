"""A small lazy registry: entries are "module:attr" strings, imported on first use.

Built-in entries are registered exactly like plugins (entry points under
``modeltrace.<kind>``), so the extension path is exercised every day.
"""

from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Generic, TypeVar

from modeltrace.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to lazily imported objects of one kind (readers, methods, backends, reporters)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        self._group = entry_point_group
        self._plugins_loaded = False

    def register(self, name: str, target: str) -> None:
        """Register `target` ("package.module:attr") under `name`."""
        self._targets[name] = target
        self._loaded.pop(name, None)

    def _load_plugins(self) -> None:
        if self._plugins_loaded or not self._group:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self._group):
            self._targets.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._targets)

    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name lists what exists and the nearest one."""
        self._load_plugins()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            close = difflib.get_close_matches(name, list(self._targets), n=1)
            raise UnknownNameError(self.kind, name, list(self._targets), close[0] if close else None)
        module, _, attr = self._targets[name].partition(":")
        obj = getattr(importlib.import_module(module), attr)
        self._loaded[name] = obj
        return obj  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._targets
