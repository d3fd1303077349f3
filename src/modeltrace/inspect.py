"""What a model is, from its files alone: formats, family, parameter counts, tokenizer, files.

`inspect_model` reads only metadata (tensor headers, config.json, tokenizer files); tensor data
is never touched, so inspecting a 16 GB checkpoint takes a fraction of a second. With
`hash_files` every file is hashed (sha256), which does read every byte.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modeltrace.formats import detect_format
from modeltrace.model import INDEX_FILES, TOKENIZER_FILES, Model, load_json
from modeltrace.roles import assign_roles, component_of, fixed_buffer, scheme, scheme_of

SCHEMA = "modeltrace.inspect/1"
ADDED_TOKENS_CAP = 1000
COUNTED = {
    "safetensors": "elements of every stored tensor",
    "torch": "elements of every stored tensor (integer buffers and counters included)",
    "gguf": "elements of every tensor at its dequantized shape",
    "onnx": ("elements of every initializer as a logical float tensor: a quantized weight counts once at its "
             "float shape, its scales and zero points are not counted"),
}

# config.json keys of the quantities we summarise, in order of preference (names differ by family)
_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim", "hidden_dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num"),
    "vocab_size": ("vocab_size", "n_vocab", "padded_vocab_size"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff"),
    "max_positions": ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len"),
    "torch_dtype": ("torch_dtype", "dtype"),
}
# the same quantities in GGUF metadata, as suffixes of "<architecture>."
_GGUF_KEYS: dict[str, str] = {
    "hidden_size": "embedding_length", "num_layers": "block_count", "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv", "intermediate_size": "feed_forward_length",
    "max_positions": "context_length",
}


@dataclass(frozen=True)
class FileEntry:
    """One file of the model: where, how big, what it is and (with hashing) its sha256."""

    path: str  # relative to the model folder
    size: int
    kind: str  # weights, config, tokenizer, code, other
    sha256: str | None = None


@dataclass(frozen=True)
class InspectReport:
    """Everything `modeltrace inspect` shows; `to_json` is the canonical form."""

    ref: str
    name: str
    format: str  # the weight format, or "mixed" when the folder holds several
    formats: tuple[str, ...]
    architecture: str | None
    family: str | None
    family_source: str | None
    scheme: str | None
    parameters: int
    counted: str
    tensors: int
    components: dict[str, int]
    dtypes: dict[str, int]  # storage dtype -> number of tensors
    dtype_parameters: dict[str, int]  # storage dtype -> elements
    quantization: dict[str, int]  # quantization type -> number of tensors
    layers: int | None  # distinct layer numbers among the main component's tensors
    fixed_buffer_elements: int
    unassigned_tensors: int  # tensors no naming scheme knows (they keep their own names)
    config: dict[str, Any]
    tokenizer: dict[str, Any] | None
    code_files: tuple[str, ...]
    files: tuple[FileEntry, ...]
    format_metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out = {"schema": SCHEMA, **out}
        out["formats"] = list(self.formats)
        out["code_files"] = list(self.code_files)
        out["files"] = [asdict(f) for f in self.files]
        return out


def _file_kind(rel: Path) -> str:
    if rel.suffix == ".py":
        return "code"
    if rel.name in TOKENIZER_FILES:
        return "tokenizer"
    if rel.suffix == ".json" or rel.name in INDEX_FILES:
        return "config"
    return "other"


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    """sha256 of a file, read in chunks so memory stays small."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(model: Model, hash_files: bool) -> tuple[FileEntry, ...]:
    weights = {Path(p).resolve() for p in model.weight_files}
    out = []
    for p in model.files:
        rel = p.relative_to(model.root) if p.is_relative_to(model.root) else Path(p.name)
        kind = "weights" if p.resolve() in weights else _file_kind(rel)
        out.append(FileEntry(rel.as_posix(), p.stat().st_size, kind, sha256_file(p) if hash_files else None))
    return tuple(out)


def _first(cfg: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            return v
    return None


def _config_summary(cfg: dict[str, Any] | None, meta: dict[str, Any], arch: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg is not None:
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else None
        for key, names in _CONFIG_KEYS.items():
            v = _first(cfg, names)
            if v is None and text is not None:
                v = _first(text, names)
            if v is not None:
                out[key] = v
        if isinstance(cfg.get("vision_config"), dict):
            out["vision"] = {k: v for k, names in _CONFIG_KEYS.items() if k != "vocab_size"
                             and (v := _first(cfg["vision_config"], names)) is not None}
        out["source"] = "config.json"
    elif arch is not None and any(k.startswith(arch + ".") for k in meta):
        for key, suffix in _GGUF_KEYS.items():
            v = meta.get(f"{arch}.{suffix}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = v
        tokens = meta.get("tokenizer.ggml.tokens")
        if isinstance(tokens, dict) and isinstance(tokens.get("length"), int):
            out["vocab_size"] = tokens["length"]
        elif isinstance(tokens, list):
            out["vocab_size"] = len(tokens)
        out["source"] = "GGUF metadata"
    return out


def _format_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The small, scalar part of the format metadata (GGUF general.*, safetensors __metadata__, ONNX producer)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k.startswith("tokenizer."):
            continue
        if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 500):
            out[str(k)[:200]] = v
        if len(out) >= 64:
            break
    return out


def _tokenizer_summary(model: Model) -> dict[str, Any] | None:
    try:
        from modeltrace.artifacts.tokenizer import read_tokenizer
    except ImportError:
        return _minimal_tokenizer_summary(model)
    tok = read_tokenizer(model)
    if tok is None:
        return None
    vocab = tok.full_vocab()
    added = [{"id": t.id, "content": t.content, "special": t.special} for t in tok.added_tokens]
    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "tokenizer_class": tok.tokenizer_class,
        "special_tokens": {role: {"content": text, "id": vocab.get(text)}
                           for role, text in sorted(tok.special_tokens.items())},
        "added_tokens_count": len(added),
        "added_tokens": added[:ADDED_TOKENS_CAP],
        "chat_template": tok.chat_template is not None,
        "sources": list(tok.sources),
    }


def _minimal_tokenizer_summary(model: Model) -> dict[str, Any] | None:
    """Kind, vocabulary size and added tokens from tokenizer.json or vocab.txt only."""
    p = model.file("tokenizer.json")
    if p is not None:
        data = load_json(p)
        m = data.get("model") if isinstance(data, dict) else None
        vocab = m.get("vocab") if isinstance(m, dict) else None
        added = [{"id": t.get("id"), "content": t.get("content"), "special": bool(t.get("special"))}
                 for t in (data.get("added_tokens") or []) if isinstance(t, dict)]
        ids = {v for v in vocab.values()} if isinstance(vocab, dict) else set(range(len(vocab or [])))
        ids.update(t["id"] for t in added if isinstance(t["id"], int))
        return {"kind": str(m.get("type", "unknown")).lower() if isinstance(m, dict) else "unknown",
                "vocab_size": len(ids), "special_tokens": {}, "added_tokens_count": len(added),
                "added_tokens": added[:ADDED_TOKENS_CAP], "sources": ["tokenizer.json"]}
    p = model.file("vocab.txt")
    if p is not None:
        n = sum(1 for _ in p.open(encoding="utf-8", errors="replace"))
        return {"kind": "wordpiece", "vocab_size": n, "special_tokens": {}, "added_tokens_count": 0,
                "added_tokens": [], "sources": ["vocab.txt"]}
    return None


def parse_artifacts(model: Model) -> None:
    """Parse every file `inspect_model` reads (weight headers, config.json, the tokenizer files).

    A malformed one raises its FormatError, naming the file. `compare` calls this first, so a file
    that `inspect` rejects is bad input to `compare` too (exit 2), not a finding of one method.
    The results stay cached on `model` for the methods that use them.
    """
    if model.weight_files:
        model.source.infos()
        model.source.metadata()
    from modeltrace.artifacts.config import read_config

    read_config(model)
    if model.tokenizer_files or model.weight_files:
        from modeltrace.artifacts.tokenizer import read_tokenizer

        read_tokenizer(model)


def inspect_model(model: Model, hash_files: bool = False) -> InspectReport:
    """Summarise `model` from metadata only (and, with `hash_files`, the sha256 of every file)."""
    source = model.source
    infos = source.infos()
    names = list(infos)
    formats = tuple(sorted({detect_format(p) for p in model.weight_files}))
    meta = source.metadata()
    roles = assign_roles(names)
    sch = scheme_of(names)
    default_component = scheme(sch).component if sch else "other"

    components: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    dtype_params: Counter[str] = Counter()
    quant: Counter[str] = Counter()
    layers: dict[str, set[int]] = {}
    buffers = 0
    for name, info in infos.items():
        n = info.numel
        role = roles.get(name)
        is_buffer = fixed_buffer(name)
        if is_buffer:
            buffers += n
        comp = component_of(name, role, default_component if is_buffer else "other")
        components[comp] += n
        dtypes[info.dtype] += 1
        dtype_params[info.dtype] += n
        if info.quantization:
            quant[info.quantization] += 1
        if role is not None and role.layer is not None:
            layers.setdefault(role.component, set()).add(role.layer)

    cfg = model.config
    architecture: str | None = None
    family: str | None = None
    family_source: str | None = None
    gguf_arch = meta.get("general.architecture") if isinstance(meta.get("general.architecture"), str) else None
    if cfg is not None and (isinstance(cfg.get("model_type"), str) or isinstance(cfg.get("architectures"), list)):
        archs = cfg.get("architectures")
        architecture = str(archs[0]) if isinstance(archs, list) and archs else None
        family = str(cfg["model_type"]) if isinstance(cfg.get("model_type"), str) else None
        family_source = "config.json"
    elif gguf_arch is not None:
        architecture = family = gguf_arch
        family_source = "GGUF general.architecture"
    elif sch is not None:
        family = sch
        family_source = "tensor naming scheme"

    main = "language_model" if "language_model" in layers else (
        max(layers, key=lambda c: components[c]) if layers else None)
    fmt = formats[0] if len(formats) == 1 else "mixed"
    counted = "; ".join(f"{f}: {COUNTED.get(f, 'elements of every tensor the reader lists')}" for f in formats)
    return InspectReport(
        ref=model.ref, name=model.name, format=fmt, formats=formats, architecture=architecture, family=family,
        family_source=family_source, scheme=sch, parameters=sum(components.values()), counted=counted,
        tensors=len(infos), components=dict(components.most_common()), dtypes=dict(dtypes.most_common()),
        dtype_parameters=dict(dtype_params.most_common()), quantization=dict(quant.most_common()),
        layers=len(layers[main]) if main else None, fixed_buffer_elements=buffers,
        unassigned_tensors=sum(1 for n in names if n not in roles and not fixed_buffer(n)),
        config=_config_summary(cfg, meta, gguf_arch), tokenizer=_tokenizer_summary(model),
        code_files=tuple(p.relative_to(model.root).as_posix() for p in model.code_files),
        files=_files(model, hash_files), format_metadata=_format_metadata(meta))


__all__ = ["FileEntry", "InspectReport", "inspect_model", "parse_artifacts", "sha256_file"]
