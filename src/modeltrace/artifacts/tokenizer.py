"""Tokenizers read as data: vocabularies, merges, added tokens, special tokens and chat templates.

Reads Hugging Face `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`,
`added_tokens.json`, `vocab.txt` (WordPiece), `vocab.json` + `merges.txt` (GPT-2 BPE),
SentencePiece `.model` files (the protobuf decoded here field by field, never run),
tiktoken rank files and GGUF tokenizer metadata. Nothing is executed: `auto_map` entries and
`tokenizer_class` names are recorded as strings, never imported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeltrace.artifacts.files import read_bytes, read_json, read_json_object, read_text
from modeltrace.errors import FormatError

if TYPE_CHECKING:
    from modeltrace.model import Model

MAX_VOCAB = 4_000_000  # no released tokenizer comes near; a bigger list is hostile or broken
MAX_MERGES = 4_000_000
MAX_TOKEN_CHARS = 4096
MAX_TEMPLATE_CHARS = 1_000_000
MAX_NAMED_TEMPLATES = 64  # chat_template as a list of {"name", "template"}: more entries are refused
MAX_COMPONENT_DEPTH = 8  # nesting of normalizer / pre-tokenizer Sequences summarised; deeper is cut
MAX_SPECIAL_TOKENS = 10_000  # additional_special_tokens kept; the rest are ignored (the count is kept)

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# SentencePiece piece types (sentencepiece_model.proto) and GGUF token types share one numbering.
PIECE_TYPES = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
GGUF_MODELS = {"gpt2": "bpe", "llama": "sentencepiece", "bert": "wordpiece", "t5": "unigram",
               "rwkv": "rwkv", "plamo2": "plamo2", "none": "none"}


@dataclass(frozen=True)
class AddedToken:
    """A token added on top of the model's vocabulary (or flagged special in it)."""

    id: int
    content: str
    special: bool


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer's content as data. `kind` is bpe, wordpiece, unigram, wordlevel, sentencepiece or tiktoken."""

    kind: str
    vocab: dict[str, int]
    merges: list[str] = field(default_factory=list)
    added_tokens: list[AddedToken] = field(default_factory=list)
    special_tokens: dict[str, str] = field(default_factory=dict)
    chat_template: str | None = None
    auto_map: dict[str, Any] = field(default_factory=dict)
    tokenizer_class: str | None = None
    normalizer: str | None = None
    pre_tokenizer: str | None = None
    token_types: dict[int, str] = field(default_factory=dict)  # non-normal SentencePiece / GGUF types
    sources: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids over the vocabulary and the added tokens."""
        ids = set(self.vocab.values())
        ids.update(t.id for t in self.added_tokens)
        return len(ids)

    def full_vocab(self) -> dict[str, int]:
        """Vocabulary with the added tokens merged in (added tokens win on conflict)."""
        out = dict(self.vocab)
        for t in self.added_tokens:
            out[t.content] = t.id
        return out

    def id_to_token(self) -> dict[int, str]:
        return {i: t for t, i in self.full_vocab().items()}

    def summary(self) -> dict[str, Any]:
        """A short, JSON-ready description (token strings escaped) for `inspect` and reports."""
        from modeltrace.textsafe import escape

        tmpl = self.chat_template
        return {
            "kind": self.kind, "vocab_size": self.vocab_size, "merges": len(self.merges),
            "added_tokens": len(self.added_tokens),
            "special_tokens": {k: escape(v, 80) for k, v in list(self.special_tokens.items())[:32]},
            "chat_template": None if tmpl is None else {
                "chars": len(tmpl), "sha256": hashlib.sha256(tmpl.encode("utf-8", "replace")).hexdigest()},
            "auto_map": {escape(k, 80): escape(v, 200) for k, v in list(self.auto_map.items())[:16]},
            "tokenizer_class": None if self.tokenizer_class is None else escape(self.tokenizer_class, 120),
            "normalizer": self.normalizer, "pre_tokenizer": self.pre_tokenizer, "sources": list(self.sources),
        }


# --- small validation helpers -----------------------------------------------------------------

def _check_token(path: Path, tok: object, where: str) -> str:
    if not isinstance(tok, str):
        raise FormatError(path, f"{where}: token {tok!r:.60} is not a string")
    if len(tok) > MAX_TOKEN_CHARS:
        raise FormatError(path, f"{where}: a token is {len(tok)} characters long, over the {MAX_TOKEN_CHARS} cap")
    return tok


def _check_id(path: Path, value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= MAX_VOCAB:
        raise FormatError(path, f"{where}: token id {value!r:.40} is not an integer in [0, {MAX_VOCAB})")
    return value


def _vocab_dict(path: Path, raw: object, where: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise FormatError(path, f"{where} is not an object of token -> id")
    if len(raw) > MAX_VOCAB:
        raise FormatError(path, f"{where} has {len(raw)} entries, over the {MAX_VOCAB} cap")
    return {_check_token(path, t, where): _check_id(path, i, where) for t, i in raw.items()}


def _merges_list(path: Path, raw: object, where: str) -> list[str]:
    if not isinstance(raw, list):
        raise FormatError(path, f"{where} is not a list")
    if len(raw) > MAX_MERGES:
        raise FormatError(path, f"{where} has {len(raw)} entries, over the {MAX_MERGES} cap")
    out: list[str] = []
    for m in raw:
        if isinstance(m, str):
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            out.append(f"{m[0]} {m[1]}")  # tokenizers >= 0.20 writes merges as pairs
        else:
            raise FormatError(path, f"{where}: entry {m!r:.60} is neither 'a b' nor ['a', 'b']")
    return out


def _component_summary(obj: object, depth: int = 0) -> str | None:
    """A short name for a normalizer / pre-tokenizer object ("Sequence[NFC, Lowercase]").

    Descriptive only, so odd shapes give None rather than an error; nesting is cut at
    MAX_COMPONENT_DEPTH ("[...]") and the name at 200 characters.
    """
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if not isinstance(kind, str):
        return None
    kind = kind[:80]
    for key in ("normalizers", "pretokenizers"):
        subs = obj.get(key)
        if isinstance(subs, list):
            if depth >= MAX_COMPONENT_DEPTH:
                return f"{kind}[...]"
            names = [s for s in (_component_summary(x, depth + 1) for x in subs[:32]) if s]
            return f"{kind}[{', '.join(names)}]"[:200]
    return kind


def _flag(path: Path, value: object, where: str) -> bool:
    """A true/false field (`special`, `byte_fallback`); absent or null is false."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FormatError(path, f"{where} is {type(value).__name__}, expected true or false")
    return value


def _token_text(value: object) -> str | None:
    """A special-token entry is either a string or an AddedToken-like {"content": ...} object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


# --- Hugging Face files -----------------------------------------------------------------------

def parse_tokenizer_json(path: Path) -> Tokenizer:
    """tokenizer.json of the `tokenizers` library: model, vocabulary, merges, added tokens."""
    data = read_json_object(path)
    model = data.get("model")
    if not isinstance(model, dict):
        raise FormatError(path, "has no 'model' object")
    mtype = model.get("type")
    merges: list[str] = []
    extra: dict[str, Any] = {}
    if mtype == "BPE" or (mtype is None and "merges" in model):
        kind = "bpe"
        vocab = _vocab_dict(path, model.get("vocab"), "model.vocab")
        merges = _merges_list(path, model.get("merges", []), "model.merges")
        extra["byte_fallback"] = _flag(path, model.get("byte_fallback"), "model.byte_fallback")
    elif mtype == "WordPiece":
        kind = "wordpiece"
        vocab = _vocab_dict(path, model.get("vocab"), "model.vocab")
    elif mtype == "WordLevel":
        kind = "wordlevel"
        vocab = _vocab_dict(path, model.get("vocab"), "model.vocab")
    elif mtype == "Unigram":
        kind = "unigram"
        raw = model.get("vocab")
        if not isinstance(raw, list):
            raise FormatError(path, "model.vocab of a Unigram model is not a list of [piece, score]")
        if len(raw) > MAX_VOCAB:
            raise FormatError(path, f"model.vocab has {len(raw)} entries, over the {MAX_VOCAB} cap")
        vocab = {}
        for i, entry in enumerate(raw):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], (int, float))
                    and not isinstance(entry[1], bool)):
                raise FormatError(path, f"model.vocab[{i}] is not [piece, score]")
            vocab.setdefault(_check_token(path, entry[0], f"model.vocab[{i}]"), i)
        unk = model.get("unk_id")
        if unk is not None:
            extra["unk_id"] = _check_id(path, unk, "model.unk_id")
    else:
        raise FormatError(path, f"unknown tokenizer model type {mtype!r:.40} (known: BPE, WordPiece, "
                          "WordLevel, Unigram)")
    added: list[AddedToken] = []
    raw_added = data.get("added_tokens", [])
    if not isinstance(raw_added, list):
        raise FormatError(path, "'added_tokens' is not a list")
    if len(raw_added) > MAX_VOCAB:
        raise FormatError(path, f"'added_tokens' has {len(raw_added)} entries, over the {MAX_VOCAB} cap")
    for i, t in enumerate(raw_added):
        if not isinstance(t, dict):
            raise FormatError(path, f"added_tokens[{i}] is not an object")
        added.append(AddedToken(id=_check_id(path, t.get("id"), f"added_tokens[{i}]"),
                                content=_check_token(path, t.get("content"), f"added_tokens[{i}]"),
                                special=_flag(path, t.get("special"), f"added_tokens[{i}].special")))
    return Tokenizer(kind=kind, vocab=vocab, merges=merges, added_tokens=added,
                     normalizer=_component_summary(data.get("normalizer")),
                     pre_tokenizer=_component_summary(data.get("pre_tokenizer")),
                     sources=(path.name,), extra=extra)


def parse_vocab_txt(path: Path) -> Tokenizer:
    """WordPiece vocab.txt: one token per line, the line number is the id."""
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_VOCAB:
        raise FormatError(path, f"has {len(lines)} lines, over the {MAX_VOCAB} cap")
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines):
        vocab.setdefault(_check_token(path, line.rstrip("\r"), f"line {i + 1}"), i)
    return Tokenizer(kind="wordpiece", vocab=vocab, sources=(path.name,))


def parse_vocab_json_merges(vocab_path: Path, merges_path: Path | None) -> Tokenizer:
    """GPT-2 style vocab.json (token -> id) with merges.txt (one "a b" merge per line)."""
    vocab = _vocab_dict(vocab_path, read_json(vocab_path), "vocab.json")
    merges: list[str] = []
    sources = [vocab_path.name]
    if merges_path is not None:
        sources.append(merges_path.name)
        for n, line in enumerate(read_text(merges_path).split("\n")):
            line = line.rstrip("\r")
            if not line or (n == 0 and line.startswith("#version")):
                continue
            if line.count(" ") != 1:
                raise FormatError(merges_path, f"line {n + 1} is not a merge 'a b'")
            merges.append(line)
            if len(merges) > MAX_MERGES:
                raise FormatError(merges_path, f"more than {MAX_MERGES} merges")
    return Tokenizer(kind="bpe", vocab=vocab, merges=merges, sources=tuple(sources))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = _bytes_to_unicode()


def byte_level(token: bytes) -> str:
    """A byte string as GPT-2 byte-level BPE writes it in vocab.json (so formats compare)."""
    return "".join(BYTE_CHARS[b] for b in token)


def parse_tiktoken(path: Path) -> Tokenizer:
    """tiktoken rank file: `base64(token bytes) rank` per line; tokens kept in GPT-2 byte-level form."""
    vocab: dict[str, int] = {}
    for n, line in enumerate(read_text(path).split("\n")):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise FormatError(path, f"line {n + 1} is not 'base64-token rank'")
        try:
            tok = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError) as exc:
            raise FormatError(path, f"line {n + 1} is not 'base64-token rank'") from exc
        if len(tok) > MAX_TOKEN_CHARS:
            raise FormatError(path, f"line {n + 1}: token of {len(tok)} bytes, over the {MAX_TOKEN_CHARS} cap")
        vocab[byte_level(tok)] = _check_id(path, rank, f"line {n + 1}")
        if len(vocab) > MAX_VOCAB:
            raise FormatError(path, f"more than {MAX_VOCAB} tokens")
    return Tokenizer(kind="tiktoken", vocab=vocab, sources=(path.name,))


# --- SentencePiece protobuf, decoded by hand ------------------------------------------------------

def _varint(buf: bytes, pos: int, path: Path) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise FormatError(path, "truncated protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FormatError(path, "protobuf varint longer than 10 bytes")


def _fields(buf: bytes, path: Path) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message, without descending into sub-messages."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos, path)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos, path)
            out.append((num, wire, val))
        elif wire == 1:
            if pos + 8 > n:
                raise FormatError(path, "truncated protobuf fixed64")
            out.append((num, wire, buf[pos:pos + 8]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, path)
            if pos + length > n:
                raise FormatError(path, f"protobuf field {num} runs past the end of its message")
            out.append((num, wire, buf[pos:pos + length]))
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise FormatError(path, "truncated protobuf fixed32")
            out.append((num, wire, buf[pos:pos + 4]))
            pos += 4
        else:
            raise FormatError(path, f"unsupported protobuf wire type {wire} (not a SentencePiece model?)")
    return out


SPM_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def parse_sentencepiece(path: Path) -> Tokenizer:
    """A SentencePiece ModelProto: pieces (field 1: piece, score, type), trainer_spec.model_type,
    normalizer_spec.name. Decoded as plain protobuf; the SentencePiece runtime is never loaded."""
    buf = read_bytes(path)
    vocab: dict[str, int] = {}
    scores: list[float] = []
    types: dict[int, str] = {}
    added: list[AddedToken] = []
    model_type = "unigram"
    normalizer: str | None = None
    for num, wire, val in _fields(buf, path):
        if num == 1 and isinstance(val, bytes):
            idx = len(scores)
            if idx >= MAX_VOCAB:
                raise FormatError(path, f"more than {MAX_VOCAB} pieces")
            piece, score, ptype = "", 0.0, 1
            for pn, pw, pv in _fields(val, path):
                if pn == 1 and isinstance(pv, bytes):
                    try:
                        piece = pv.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise FormatError(path, f"piece {idx} is not UTF-8") from exc
                elif pn == 2 and pw == 5 and isinstance(pv, bytes):
                    score = struct.unpack("<f", pv)[0]
                elif pn == 3 and isinstance(pv, int):
                    ptype = pv
            _check_token(path, piece, f"piece {idx}")
            vocab.setdefault(piece, idx)
            scores.append(score)
            if ptype != 1:
                types[idx] = PIECE_TYPES.get(ptype, f"type{ptype}")
            if ptype in (3, 4):
                added.append(AddedToken(id=idx, content=piece, special=ptype == 3))
        elif num == 2 and isinstance(val, bytes):
            for tn, _tw, tv in _fields(val, path):
                if tn == 3 and isinstance(tv, int):
                    model_type = SPM_MODEL_TYPES.get(tv, f"type{tv}")
        elif num == 3 and isinstance(val, bytes):
            for nn, _nw, nv in _fields(val, path):
                if nn == 1 and isinstance(nv, bytes):
                    normalizer = nv.decode("utf-8", "replace")[:200]
    if not scores:
        raise FormatError(path, "no SentencePiece pieces found (not a SentencePiece model?)")
    return Tokenizer(kind="sentencepiece", vocab=vocab, added_tokens=added, token_types=types,
                     normalizer=normalizer, sources=(path.name,),
                     extra={"model_type": model_type, "scores_sum": float(sum(scores))})


# --- GGUF metadata ----------------------------------------------------------------------------

def _str_list(meta: Mapping[str, Any], key: str, where: Path) -> list[str] | None:
    v = meta.get(key)
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise FormatError(where, f"GGUF key {key} is not a list of strings")
    if len(v) > MAX_VOCAB:
        raise FormatError(where, f"GGUF key {key} has {len(v)} entries, over the {MAX_VOCAB} cap")
    return list(v)


def tokenizer_from_gguf(meta: Mapping[str, Any], path: Path) -> Tokenizer | None:
    """The tokenizer stored in GGUF key-values (tokenizer.ggml.*), or None when there is none."""
    tokens = _str_list(meta, "tokenizer.ggml.tokens", path)
    if tokens is None:
        return None
    gmodel = meta.get("tokenizer.ggml.model")
    kind = GGUF_MODELS.get(str(gmodel), str(gmodel))
    raw_types = meta.get("tokenizer.ggml.token_type")
    ttypes: list[int] = []
    if raw_types is not None:
        if not isinstance(raw_types, (list, tuple)) or len(raw_types) != len(tokens):
            raise FormatError(path, "GGUF key tokenizer.ggml.token_type does not list one type per token")
        for i, t in enumerate(raw_types):
            if isinstance(t, bool) or not isinstance(t, int):
                raise FormatError(path, f"GGUF key tokenizer.ggml.token_type[{i}] is {type(t).__name__}, "
                                  "expected an integer token type")
        ttypes = list(raw_types)
    vocab: dict[str, int] = {}
    types: dict[int, str] = {}
    added: list[AddedToken] = []
    for i, tok in enumerate(tokens):
        _check_token(path, tok, f"tokenizer.ggml.tokens[{i}]")
        vocab.setdefault(tok, i)
        t = ttypes[i] if ttypes else 1
        if t != 1:
            types[i] = PIECE_TYPES.get(t, f"type{t}")
        if t in (3, 4):
            added.append(AddedToken(id=i, content=tok, special=t == 3))
    merges = _str_list(meta, "tokenizer.ggml.merges", path) or []
    special: dict[str, str] = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"),
                      ("padding", "pad_token"), ("seperator", "sep_token"), ("separator", "sep_token"),
                      ("cls", "cls_token"), ("mask", "mask_token"), ("eot", "eot_token")):
        v = meta.get(f"tokenizer.ggml.{key}_token_id")
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(tokens):
            special[name] = tokens[v]
    tmpl = meta.get("tokenizer.chat_template")
    extra: dict[str, Any] = {"gguf_model": gmodel}
    if isinstance(meta.get("tokenizer.ggml.pre"), str):
        extra["gguf_pre"] = meta["tokenizer.ggml.pre"]
    return Tokenizer(kind=kind, vocab=vocab, merges=merges, added_tokens=added, special_tokens=special,
                     chat_template=_template(tmpl, path), token_types=types, sources=(path.name,), extra=extra)


def _template(value: object, path: Path) -> str | None:
    """chat_template is a string, or a list of {"name": str, "template": str} (the "default" one is taken).

    Anything else (a name that is not a string, a list of lists) is a FormatError of `path`.
    """
    if value is None:
        return None
    chosen: object = value
    if isinstance(value, list):
        if not value or len(value) > MAX_NAMED_TEMPLATES:
            raise FormatError(path, f"chat_template lists {len(value)} named templates; expected 1 to "
                              f"{MAX_NAMED_TEMPLATES}")
        named: dict[str, str] = {}
        for i, e in enumerate(value):
            if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("template"), str)):
                raise FormatError(path, f'chat_template[{i}] is not {{"name": string, "template": string}}')
            named.setdefault(e["name"], e["template"])
        chosen = named.get("default", next(iter(named.values())))
    if not isinstance(chosen, str):
        raise FormatError(path, f"chat_template is {type(chosen).__name__}, neither a string nor a list of "
                          "named templates")
    if len(chosen) > MAX_TEMPLATE_CHARS:
        raise FormatError(path, f"chat_template is {len(chosen)} characters, over the {MAX_TEMPLATE_CHARS} cap")
    return chosen


# --- assembling a model's tokenizer -------------------------------------------------------------

_SPM_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _base_from_files(model: Model) -> Tokenizer | None:
    f = model.file
    if (p := f("tokenizer.json")) is not None:
        return parse_tokenizer_json(p)
    if (p := f("vocab.json")) is not None:
        return parse_vocab_json_merges(p, f("merges.txt"))
    for name in _SPM_NAMES:
        if (p := f(name)) is not None:
            return parse_sentencepiece(p)
    if (p := f("vocab.txt")) is not None:
        return parse_vocab_txt(p)
    if not model.single_file:
        tik = sorted(p for p in model.root.glob("*.tiktoken") if p.is_file())
        if tik:
            return parse_tiktoken(tik[0])
    return None


def _base_from_gguf(model: Model) -> Tokenizer | None:
    ggufs = [p for p in model.weight_files if p.suffix == ".gguf"]
    if not ggufs:
        return None
    source = model.source
    full = getattr(source, "tokenizer_metadata", None)  # the GGUF reader gives token lists in full here
    if callable(full):
        return tokenizer_from_gguf(full(), ggufs[0])
    from modeltrace.formats import open_file  # split GGUF or mixed folders: read the first GGUF's header

    with open_file(ggufs[0]) as one:
        reader_full = getattr(one, "tokenizer_metadata", None)
        meta = reader_full() if callable(reader_full) else one.metadata()
    return tokenizer_from_gguf(meta, ggufs[0])


_CACHE_ATTR = "_modeltrace_tokenizer"


def read_tokenizer(model: Model) -> Tokenizer | None:
    """The model's tokenizer from its files (or GGUF metadata), or None when it ships none.

    The result is kept on the model object: several methods read it, and a 262k-token GGUF
    vocabulary takes seconds to decode.
    """
    cached = model.__dict__.get(_CACHE_ATTR, _CACHE_ATTR)
    if cached is not _CACHE_ATTR:
        return cached  # type: ignore[no-any-return]
    tok = _read_tokenizer(model)
    model.__dict__[_CACHE_ATTR] = tok
    return tok


def _read_tokenizer(model: Model) -> Tokenizer | None:
    base = _base_from_files(model)
    if base is None:
        base = _base_from_gguf(model)
    cfg_path = model.file("tokenizer_config.json")
    stm_path = model.file("special_tokens_map.json")
    at_path = model.file("added_tokens.json")
    ct_json = model.file("chat_template.json")
    ct_jinja = model.file("chat_template.jinja")
    if base is None and cfg_path is None:
        return None
    if base is None:
        base = Tokenizer(kind="unknown", vocab={})
    added = {t.id: t for t in base.added_tokens}
    special = dict(base.special_tokens)
    sources = list(base.sources)
    chat_template = base.chat_template
    auto_map: dict[str, Any] = dict(base.auto_map)
    tokenizer_class = base.tokenizer_class
    extra = dict(base.extra)
    if at_path is not None:
        sources.append(at_path.name)
        for content, tid in _vocab_dict(at_path, read_json(at_path), "added_tokens.json").items():
            added.setdefault(tid, AddedToken(id=tid, content=content, special=False))
    if stm_path is not None:
        sources.append(stm_path.name)
        _merge_special(read_json_object(stm_path), special, stm_path)
    if cfg_path is not None:
        sources.append(cfg_path.name)
        cfg = read_json_object(cfg_path)
        decoder = cfg.get("added_tokens_decoder")
        if decoder is not None:
            if not isinstance(decoder, dict):
                raise FormatError(cfg_path, "added_tokens_decoder is not an object of id -> token")
            for key, val in decoder.items():
                if not re.fullmatch(r"\d{1,7}", str(key)):
                    raise FormatError(cfg_path, f"added_tokens_decoder key {key!r:.40} is not a token id")
                text = _token_text(val)
                if text is None:
                    raise FormatError(cfg_path, f"added_tokens_decoder[{key}] has no 'content' string")
                tid = _check_id(cfg_path, int(key), "added_tokens_decoder")
                _check_token(cfg_path, text, f"added_tokens_decoder[{key}]")
                special_flag = _flag(cfg_path, val.get("special"), f"added_tokens_decoder[{key}].special") \
                    if isinstance(val, dict) else False
                added[tid] = AddedToken(id=tid, content=text, special=special_flag)
        _merge_special(cfg, special, cfg_path)
        if "chat_template" in cfg:
            chat_template = _template(cfg["chat_template"], cfg_path)
        am = cfg.get("auto_map")
        if isinstance(am, dict):
            auto_map = am
        elif am is not None:
            raise FormatError(cfg_path, "auto_map is not an object")
        tc = cfg.get("tokenizer_class")
        if isinstance(tc, str):
            tokenizer_class = tc[:200]
        elif tc is not None:
            raise FormatError(cfg_path, f"tokenizer_class is {type(tc).__name__}, not a string")
        for key in ("name_or_path", "_name_or_path"):
            if isinstance(cfg.get(key), str):
                extra["name_or_path"] = cfg[key][:500]
    if ct_json is not None:
        sources.append(ct_json.name)
        chat_template = _template(read_json_object(ct_json).get("chat_template"), ct_json) or chat_template
    if ct_jinja is not None:
        sources.append(ct_jinja.name)
        chat_template = _template(read_text(ct_jinja), ct_jinja)
    return Tokenizer(kind=base.kind, vocab=base.vocab, merges=base.merges,
                     added_tokens=sorted(added.values(), key=lambda t: t.id), special_tokens=special,
                     chat_template=chat_template, auto_map=auto_map, tokenizer_class=tokenizer_class,
                     normalizer=base.normalizer, pre_tokenizer=base.pre_tokenizer, token_types=base.token_types,
                     sources=tuple(dict.fromkeys(sources)), extra=extra)


def _special_text(path: Path, value: object, where: str) -> str | None:
    """A special-token entry: null, a string or {"content": string, ...}; anything else is a FormatError."""
    if value is None:
        return None
    text = _token_text(value)
    if text is None:
        raise FormatError(path, f'{where} is {type(value).__name__}, neither a string nor {{"content": string}}')
    return _check_token(path, text, where)


def _merge_special(data: Mapping[str, Any], special: dict[str, str], path: Path) -> None:
    for key in SPECIAL_KEYS:
        text = _special_text(path, data.get(key), key)
        if text is not None:
            special[key] = text
    extra = data.get("additional_special_tokens")
    if extra is None:
        return
    if not isinstance(extra, list):
        raise FormatError(path, f"additional_special_tokens is {type(extra).__name__}, not a list")
    for i, v in enumerate(extra[:MAX_SPECIAL_TOKENS]):
        text = _special_text(path, v, f"additional_special_tokens[{i}]")
        if text is not None:
            special[f"additional_special_tokens[{i}]"] = text
