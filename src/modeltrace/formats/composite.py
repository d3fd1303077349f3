"""Many files seen as one tensor source: sharded checkpoints, sub-module folders, several networks.

Files are opened on demand and at most `MAX_OPEN` stay open (least recently used closed first),
so a checkpoint of thousands of shards never exhausts file handles: listing reads each shard's
header once and closes it again. Each open shard keeps only a memory map, never tensor data.

Sub-networks. When the files of a folder are not shards of one checkpoint (their tensor names
collide: ``pnet.pt``, ``rnet.pt``, ``onet.pt`` all hold ``conv1.weight``), each file is one
*component*, its names prefixed by a name taken from its path (``pnet/conv1.weight``); see
`component_name`. Shards (names that never collide) stay one model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modeltrace.errors import FormatError
from modeltrace.formats.base import TensorInfo, TensorSource

MAX_OPEN = 16  # shards kept open at once
GENERIC_STEMS = ("model", "pytorch_model", "diffusion_pytorch_model", "flax_model", "tf_model", "weights",
                 "adapter_model", "consolidated")


def component_names(rels: Sequence[str]) -> list[str]:
    """`component_name` of each path, made unique (the path without its suffix where two would clash)."""
    names = [component_name(r) for r in rels]
    if len(set(names)) == len(names):
        return names
    return [str(PurePosixPath(r).with_suffix("")) for r in rels]


def component_name(rel: str) -> str:
    """A component's name from a weight file's path relative to the folder: the file's stem, or its
    folder's name when the stem is generic (``unet/diffusion_pytorch_model.safetensors`` -> ``unet``)."""
    p = PurePosixPath(rel)
    stem = p.name.split(".", 1)[0]
    base = stem.split("-0000", 1)[0]  # shard suffixes: model-00001-of-00002
    if (base in GENERIC_STEMS or base.startswith("model_")) and len(p.parts) > 1:
        return "/".join(p.parts[:-1])
    return "/".join((*p.parts[:-1], base))


class _Collision(Exception):
    def __init__(self, error: FormatError) -> None:
        super().__init__(str(error))
        self.error = error


class _Member:
    """One file of a composite: its path, or a source that was handed in already open."""

    def __init__(self, path: Path, source: TensorSource | None = None) -> None:
        self.path = path
        self.source = source
        self.keep_open = source is not None  # handed in open: the caller's lifetime, not the LRU's


class CompositeSource(TensorSource):
    """Union of several sources; `prefixes[i]` is prepended to the names of member i.

    Members are paths (opened on demand with `opener`, at most `max_open` at once) or sources that
    are already open (kept open until `close`).
    """

    format = "composite"

    def __init__(self, path: Path, sources: Sequence[TensorSource | Path], prefixes: list[str] | None = None,
                 *, opener: Callable[[Path], TensorSource] | None = None, max_open: int = MAX_OPEN,
                 components: Sequence[str] | None = None) -> None:
        """`components`: one name per member. With `prefixes` None the members are separate networks under
        ``name/`` prefixes; with `prefixes` they are used only when member names collide (without
        `components` a collision is a FormatError)."""
        super().__init__(path)
        if opener is None:
            from modeltrace.formats import open_file
            opener = open_file
        self._opener = opener
        self._max_open = max(1, max_open)
        self._members = [_Member(s.path, s) if isinstance(s, TensorSource) else _Member(Path(s)) for s in sources]
        self._open: OrderedDict[int, TensorSource] = OrderedDict()
        self.components: list[str] | None = None  # set when the members are separate networks
        try:
            if prefixes is None and components is not None:
                self.components = list(components)
                self._index([c + "/" for c in components])
                return
            try:
                self._index(list(prefixes or [""] * len(self._members)))
            except _Collision as exc:
                if components is None or len(set(components)) != len(self._members):
                    raise exc.error from None
                self.components = list(components)
                self._index([c + "/" for c in components])
        except BaseException:
            self.close()
            raise

    def _index(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes
        self._where: dict[str, tuple[int, str]] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._formats: set[str] = set()
        self._metadata: dict[str, Any] = {}
        for k, prefix in enumerate(prefixes):
            src = self._source(k)
            self._formats.add(src.format)
            for key, value in src.metadata().items():
                self._metadata.setdefault(key, value)
            for name, info in src.infos().items():
                full = prefix + name
                if full in self._where:
                    other = self._members[self._where[full][0]].path
                    raise _Collision(FormatError(src.path, f"tensor also stored in {other}", tensor=full))
                self._where[full] = (k, name)
                self._infos[full] = TensorInfo(full, info.shape, info.dtype, info.file, info.quantization,
                                               info.extra)

    def component_of(self, name: str) -> str | None:
        """The component (sub-network) a tensor belongs to, when the members are separate networks."""
        if self.components is None or name not in self._where:
            return None
        return self.components[self._where[name][0]]

    def _source(self, k: int) -> TensorSource:
        """Member k, opened if needed; the least recently used path-opened member is closed beyond `max_open`."""
        m = self._members[k]
        if m.keep_open and m.source is not None:
            return m.source
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        src = self._opener(m.path)
        self._open[k] = src
        while len(self._open) > self._max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return src

    @property
    def open_count(self) -> int:
        """Members opened by this source and open now (at most `max_open`)."""
        return len(self._open)

    @property
    def member_paths(self) -> list[Path]:
        return [m.path for m in self._members]

    @property
    def formats(self) -> list[str]:
        return sorted(self._formats)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def reader_of(self, name: str) -> tuple[TensorSource, str]:
        """The member source holding `name` (opened on demand) and the tensor's name inside it."""
        if name not in self._where:
            raise FormatError(self.path, "no such tensor", tensor=name)
        k, inner = self._where[name]
        return self._source(k), inner

    _lookup = reader_of  # older name

    def read(self, name: str) -> np.ndarray:
        src, inner = self.reader_of(name)
        return src.read(inner)

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        src, inner = self.reader_of(name)
        return src.read_into(inner, out)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        src, inner = self.reader_of(name)
        return src.read_rows(inner, start, stop)

    def metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def close(self) -> None:
        while self._open:
            _, src = self._open.popitem(last=False)
            src.close()
        for m in self._members:
            if m.keep_open and m.source is not None:
                m.source.close()
