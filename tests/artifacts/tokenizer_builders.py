"""Builders of tokenizer files written byte by byte, for tests of the artifact readers."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def sentencepiece_model(pieces: list[tuple[str, float, int]], model_type: int = 1,
                        normalizer: str = "nmt_nfkc") -> bytes:
    """A SentencePiece ModelProto: pieces (piece, score, type), trainer_spec.model_type, normalizer name."""
    out = b""
    for piece, score, ptype in pieces:
        body = _field_bytes(1, piece.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", score)
        if ptype != 1:
            body += _field_varint(3, ptype)
        out += _field_bytes(1, body)
    out += _field_bytes(2, _field_varint(3, model_type))
    out += _field_bytes(3, _field_bytes(1, normalizer.encode()))
    return out


def bpe_tokenizer_json(vocab: dict[str, int], merges: list[str], added: list[dict[str, Any]],
                       pairs: bool = False) -> dict[str, Any]:
    return {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
        "model": {"type": "BPE", "vocab": vocab,
                  "merges": [m.split(" ") for m in merges] if pairs else merges},
    }


def added(tid: int, content: str, special: bool = True) -> dict[str, Any]:
    return {"id": tid, "content": content, "special": special, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def tiktoken_file(tokens: list[bytes]) -> str:
    return "".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens))


def synthetic_bpe_vocab(n: int) -> tuple[dict[str, int], list[str]]:
    """A deterministic BPE-like vocabulary of `n` tokens: byte characters, then merged strings."""
    vocab: dict[str, int] = {}
    for c in "abcdefghijklmnopqrstuvwxyzĠ":
        vocab[c] = len(vocab)
    keys = list(vocab)
    merges: list[str] = []
    i = 0
    while len(vocab) < n:
        left = keys[i % len(keys)]
        right = keys[(i * 7 + 3) % 27]
        tok = left + right
        if tok not in vocab:
            vocab[tok] = len(vocab)
            keys.append(tok)
            merges.append(f"{left} {right}")
        i += 1
    return vocab, merges
