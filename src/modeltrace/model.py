"""A model on disk, opened lazily: its weight files, config, tokenizer files and code.

`Model.open(ref)` accepts a local folder in Hugging Face layout, a single weight file, or a
`hf:org/name[@revision]` reference resolved in the local hub cache (see `refs`). Nothing is
read beyond file listings and small JSON files until tensors are asked for.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from modeltrace.errors import FormatError, ResolveError, UnsafeFileError
from modeltrace.formats import detect_format, open_file
from modeltrace.formats.base import TensorSource
from modeltrace.formats.composite import CompositeSource, component_names
from modeltrace.refs import confinement_root, inside

MAX_JSON_BYTES = 64 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "tokenizer.model", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "spiece.model", "sentencepiece.bpe.model", "tokenizer.tiktoken")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def load_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse a small JSON file from a model folder, with a size cap and our own errors for every failure:
    unreadable, too large, not UTF-8, nested too deeply, an integer too long to convert, bad syntax."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):  # a FIFO would block for ever
            raise FormatError(path, "not a regular file")
        size = st.st_size
        if size > limit:
            raise FormatError(path, f"JSON file is {size} bytes, over the {limit}-byte cap")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(path, "not UTF-8 text") from exc
    except OSError as exc:
        raise FormatError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise FormatError(path, "JSON nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise FormatError(path, f"JSON holds a number too long to read ({exc})") from exc


def _inside(root: Path, rel: str, index: Path) -> Path:
    """`root / rel` for a path named in `index`, refused unless it stays inside the model folder, by its
    name and after following links (a hub-cache snapshot may link into its repository's blobs/)."""
    p = Path(os.path.normpath(root / rel))
    if not p.is_relative_to(os.path.normpath(root)):
        raise UnsafeFileError(index, f"shard path {rel!r} points outside the model folder")
    if p.exists() and not p.resolve().is_relative_to(confinement_root(root)):
        raise UnsafeFileError(index, f"shard path {rel!r} links outside the model folder")
    return p


def _listing(folder: Path) -> list[Path]:
    """Every file under `folder` (not under .git or .cache), each refused if it links outside the folder."""
    root = confinement_root(folder)
    files = []
    for p in folder.rglob("*"):
        parts = p.relative_to(folder).parts
        if ".git" in parts or ".cache" in parts or not p.is_file():
            continue
        inside(root, p)
        files.append(p)
    return sorted(files)


@dataclass
class Model:
    """A lazily opened model: files found, weight files chosen, config and tokenizer paths."""

    ref: str
    root: Path  # folder (or the folder holding the single file)
    weight_files: list[Path]
    single_file: bool = False
    files: list[Path] = field(default_factory=list)
    _source: TensorSource | None = field(default=None, repr=False)

    @classmethod
    def open(cls, ref: str, *, allow_download: bool = False) -> Model:
        from modeltrace.refs import resolve

        path = resolve(ref, allow_download=allow_download)
        if path.is_file():
            return cls(ref=ref, root=path.parent, weight_files=[path], single_file=True, files=[path])
        if not path.is_dir():
            raise ResolveError(ref, "no such file or folder")
        files = _listing(path)
        return cls(ref=ref, root=path, weight_files=_choose_weights(path, files), files=files)

    @classmethod
    def remote(cls, ref: str) -> Model:
        """A model known only through an endpoint: no files, so only behaviour methods apply."""
        return cls(ref=ref, root=Path.cwd(), weight_files=[], single_file=True, files=[])

    # --- weights -------------------------------------------------------------------------
    @property
    def source(self) -> TensorSource:
        """All weights as one source: shards and sub-module folders merged, separate networks (files whose
        names collide, several ONNX graphs, diffusers sub-folders) as components under ``name/`` prefixes."""
        if self._source is None:
            if not self.weight_files:
                raise FormatError(self.root, "no weight files found (looked for safetensors, .bin/.pt/.pth, "
                                  "GGUF and ONNX files)")
            if len(self.weight_files) == 1:
                self._source = open_file(self.weight_files[0])
            else:
                # shards are opened on demand, a few at a time (thousands of shards, few file handles)
                rels = [wf.relative_to(self.root).as_posix() for wf in self.weight_files]
                names = component_names(rels)
                if _separate_networks(self.root, self.weight_files):
                    folders = [Path(r).parts[0] for r in rels]
                    by_folder = all(len(Path(r).parts) > 1 for r in rels) and len(set(folders)) > 1
                    self._source = CompositeSource(self.root, list(self.weight_files), None,
                                                   components=folders if by_folder else names)
                else:  # shards, unless their names collide: then each file is its own network
                    prefixes = [_module_prefix(self.root, wf) for wf in self.weight_files]
                    indexed = any((self.root / n).is_file() for n in INDEX_FILES)
                    self._source = CompositeSource(self.root, list(self.weight_files), prefixes,
                                                   components=None if indexed else names)
        return self._source

    @property
    def formats(self) -> list[str]:
        return sorted({detect_format(p) for p in self.weight_files})

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- artifacts -----------------------------------------------------------------------
    def file(self, name: str) -> Path | None:
        """A file at the top of the model folder, if present (never for single-file models)."""
        if self.single_file:
            return None
        p = self.root / name
        return p if p.is_file() else None

    @cached_property
    def config(self) -> dict[str, Any] | None:
        """config.json as a dict (None when absent)."""
        p = self.file("config.json")
        if p is None:
            return None
        data = load_json(p)
        if not isinstance(data, dict):
            raise FormatError(p, "config.json is not a JSON object")
        return data

    @property
    def tokenizer_files(self) -> list[Path]:
        return [p for name in TOKENIZER_FILES if (p := self.file(name)) is not None]

    @property
    def code_files(self) -> list[Path]:
        """Modelling code shipped with the model (*.py), listed, never imported."""
        if self.single_file:
            return []
        return [p for p in self.files if p.suffix == ".py"]

    @property
    def name(self) -> str:
        return self.weight_files[0].name if self.single_file else self.root.name


def _separate_networks(root: Path, weight_files: list[Path]) -> bool:
    """Files that are distinct graphs, not shards: several ONNX files (ONNX never shards across
    graphs; encoder/decoder exports), or one weight set per sub-folder with none on top and no index
    (diffusers `unet/`, `vae/`, `text_encoder/`)."""
    if any((root / n).is_file() for n in INDEX_FILES):
        return False
    if len(weight_files) > 1 and all(p.suffix == ".onnx" for p in weight_files):
        return True
    parents = [p.parent for p in weight_files]
    return all(p != root for p in parents) and len({p.parent.relative_to(root).parts[0]
                                                    for p in weight_files}) > 1 and not (root / "modules.json").is_file()


def _module_prefix(root: Path, weight_file: Path) -> str:
    """Weights in sub-module folders (sentence-transformers `2_Dense/`) get the folder as prefix."""
    rel = weight_file.parent.relative_to(root)
    if rel == Path(".") or rel.parts[0] in ("onnx",):
        return ""
    return "/".join(rel.parts) + "/"


def _choose_weights(root: Path, files: list[Path]) -> list[Path]:
    """Pick the weight files of a Hugging Face folder: one format, all shards, sub-modules too."""
    top = [p for p in files if p.parent == root]
    for index_name in INDEX_FILES:
        index = root / index_name
        if index.is_file():
            data = load_json(index)
            wmap = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(wmap, dict) or not wmap:
                raise FormatError(index, "has no weight_map object")
            shards: list[Path] = []
            for rel in dict.fromkeys(wmap.values()):
                if not isinstance(rel, str):
                    raise FormatError(index, f"weight_map value {rel!r} is not a file name")
                p = _inside(root, rel, index)
                if not p.is_file():
                    raise FormatError(index, f"names shard {rel!r}, which is missing")
                shards.append(p)
            return shards + _submodule_weights(root, files)
    for suffixes in ((".safetensors",), (".bin", ".pt", ".pth", ".ckpt"), (".gguf",), (".onnx",)):
        chosen = [p for p in top if p.suffix in suffixes and not p.name.startswith("training_args")]
        if suffixes == (".onnx",):  # quantized or cached variants of a graph are not further graphs
            chosen = [p for p in chosen if not any(v in p.stem for v in ONNX_VARIANTS)] or chosen[:1]
        if chosen:
            return sorted(chosen) + _submodule_weights(root, files)
    # no weights on top: ONNX exports often live in onnx/, single sub-folder layouts otherwise
    onnx = [p for p in files if p.suffix == ".onnx"]
    if onnx:
        plain = [p for p in onnx if p.name == "model.onnx"]
        if plain:
            return [plain[0]]
        # an encoder/decoder export: one graph each, without the quantized or cached variants
        graphs = [p for p in onnx if not any(v in p.stem for v in ONNX_VARIANTS)]
        return sorted(graphs) if len(graphs) > 1 and len({p.parent for p in graphs}) == 1 else [min(onnx)]
    return _submodule_weights(root, files) or _subfolder_networks(root, files)


ONNX_VARIANTS = ("quantized", "_fp16", "_int8", "_uint8", "_q4", "_bnb4", "with_past", "merged")


def _subfolder_networks(root: Path, files: list[Path]) -> list[Path]:
    """One weight set per immediate sub-folder (diffusers `unet/`, `vae/`, `text_encoder/`): each sub-folder's
    own top-level weights, its index honoured, so each becomes a component of the model."""
    out: list[Path] = []
    for sub in sorted({p.relative_to(root).parts[0] for p in files if p.parent != root}):
        folder = root / sub
        inner = [p for p in files if p.parent == folder]
        if not folder.is_dir() or not inner:
            continue
        for index_name in INDEX_FILES:
            if (folder / index_name).is_file():
                data = load_json(folder / index_name)
                wmap = data.get("weight_map") if isinstance(data, dict) else None
                if isinstance(wmap, dict):
                    out.extend(p for rel in dict.fromkeys(wmap.values()) if isinstance(rel, str)
                               and (p := _inside(folder, rel, folder / index_name)).is_file())
                break
        else:
            for suffixes in ((".safetensors",), (".bin", ".pt", ".pth", ".ckpt"), (".gguf",), (".onnx",)):
                chosen = [p for p in inner if p.suffix in suffixes and not p.name.startswith("training_args")]
                if chosen:
                    out.extend(sorted(chosen))
                    break
    return out


def _submodule_weights(root: Path, files: list[Path]) -> list[Path]:
    """Weights of sentence-transformers modules listed in modules.json (e.g. 2_Dense)."""
    mj = root / "modules.json"
    if not mj.is_file():
        return []
    try:
        modules = load_json(mj)
    except FormatError:
        return []
    out: list[Path] = []
    for m in modules if isinstance(modules, list) else []:
        rel = m.get("path") if isinstance(m, dict) else None
        if not rel or not isinstance(rel, str):
            continue
        sub = _inside(root, rel, mj)
        if sub == Path(os.path.normpath(root)) or not sub.is_dir():
            continue
        for suffixes in ((".safetensors",), (".bin", ".pt", ".pth")):
            got = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix in suffixes)
            if got:
                out.extend(got)
                break
    return out
