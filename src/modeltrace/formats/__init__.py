"""Format readers, chosen by content (magic bytes), never by file extension.

Each reader module exposes `sniff(head: bytes) -> bool` and a `TensorSource` subclass;
the registry maps a format name to "module:Class". Plugins add readers through the
``modeltrace.formats`` entry-point group and a matching ``modeltrace.format_sniffers`` entry.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from modeltrace.errors import FormatError
from modeltrace.formats.base import TensorInfo, TensorSource
from modeltrace.registry import Registry

READERS: Registry[type[TensorSource]] = Registry("format", "modeltrace.formats")
READERS.register("safetensors", "modeltrace.formats.safetensors:SafetensorsReader")
READERS.register("gguf", "modeltrace.formats.gguf:GGUFReader")
READERS.register("torch", "modeltrace.formats.torch_pickle:TorchReader")
READERS.register("onnx", "modeltrace.formats.onnx:ONNXReader")

# Order matters: the most specific magic first; ONNX (a bare protobuf) last.
_SNIFFERS: list[tuple[str, str]] = [
    ("gguf", "modeltrace.formats.gguf:sniff"),
    ("safetensors", "modeltrace.formats.safetensors:sniff"),
    ("torch", "modeltrace.formats.torch_pickle:sniff"),
    ("onnx", "modeltrace.formats.onnx:sniff"),
]

HEAD_BYTES = 64


def detect_format(path: Path) -> str:
    """The format name of `path`, decided from its first bytes."""
    path = Path(path)
    if not path.exists():
        raise FormatError(path, "no such file")
    if path.is_dir():
        raise FormatError(path, "is a folder, not a weight file")
    if not path.is_file():  # a FIFO or device: opening it could block for ever
        raise FormatError(path, "not a regular file")
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    if not head:
        raise FormatError(path, "file is empty")
    for name, target in _SNIFFERS:
        module, _, attr = target.partition(":")
        try:
            sniff = getattr(importlib.import_module(module), attr)
        except ImportError:  # a reader whose dependency is missing cannot claim files
            continue
        if sniff(head):
            return name
    raise FormatError(path, "not a known weight format (checked: safetensors, GGUF, PyTorch zip/pickle, ONNX)",
                      hint="supported: " + ", ".join(READERS.names()))


def open_file(path: str | Path) -> TensorSource:
    """Open one weight file with the reader its content calls for."""
    path = Path(path)
    reader = READERS.get(detect_format(path))
    return reader(path)


__all__ = ["READERS", "TensorInfo", "TensorSource", "detect_format", "open_file"]
