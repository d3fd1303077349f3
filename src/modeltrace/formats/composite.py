"""Many files seen as one tensor source: sharded checkpoints and multi-module folders.

Only one shard is open at a time unless a caller keeps reading across shards, and even then
each shard keeps only a memory map, never tensor data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modeltrace.errors import FormatError
from modeltrace.formats.base import TensorInfo, TensorSource


class CompositeSource(TensorSource):
    """Union of several sources; `prefixes[i]` is prepended to the names of source i."""

    format = "composite"

    def __init__(self, path: Path, sources: list[TensorSource], prefixes: list[str] | None = None) -> None:
        super().__init__(path)
        self.sources = sources
        prefixes = prefixes or [""] * len(sources)
        self._where: dict[str, tuple[TensorSource, str]] = {}
        self._infos: dict[str, TensorInfo] = {}
        for src, prefix in zip(sources, prefixes):
            for name, info in src.infos().items():
                full = prefix + name
                if full in self._where:
                    raise FormatError(src.path, f"tensor also stored in {self._where[full][0].path}", tensor=full)
                self._where[full] = (src, name)
                self._infos[full] = TensorInfo(full, info.shape, info.dtype, info.file, info.quantization, info.extra)

    @property
    def formats(self) -> list[str]:
        return sorted({s.format for s in self.sources})

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def _lookup(self, name: str) -> tuple[TensorSource, str]:
        if name not in self._where:
            raise FormatError(self.path, "no such tensor", tensor=name)
        return self._where[name]

    def read(self, name: str) -> np.ndarray:
        src, inner = self._lookup(name)
        return src.read(inner)

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        src, inner = self._lookup(name)
        return src.read_into(inner, out)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        src, inner = self._lookup(name)
        return src.read_rows(inner, start, stop)

    def metadata(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for s in self.sources:
            for k, v in s.metadata().items():
                merged.setdefault(k, v)
        return merged

    def close(self) -> None:
        for s in self.sources:
            s.close()
