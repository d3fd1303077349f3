"""Builders for tiny safetensors files and Hugging Face folders, byte by byte (shared by several test files)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

ST_DTYPES = {("f", 4): "F32", ("f", 2): "F16", ("f", 8): "F64", ("i", 8): "I64", ("i", 4): "I32", ("i", 1): "I8",
             ("u", 1): "U8", ("b", 1): "BOOL"}


def raw_safetensors(path: Path, header: dict[str, Any] | bytes, data: bytes = b"",
                    header_len: int | None = None) -> Path:
    """A safetensors file from a header (dict or raw bytes) and a data buffer, with an optional forged length."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hb) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Numpy arrays (float32/16/64, int) stored in file order with correct offsets."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs = []
    offset = 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        dtype = ST_DTYPES[(arr.dtype.kind, arr.dtype.itemsize)]
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    return raw_safetensors(path, header, b"".join(blobs))


def tiny_llama(rng: np.random.Generator, layers: int = 2, hidden: int = 8, inter: int = 16,
               vocab: int = 32) -> dict[str, np.ndarray]:
    """A Llama-shaped state dict with random float32 weights."""
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{m}.weight"] = rng.standard_normal((hidden, hidden), dtype=np.float32)
        t[p + "mlp.gate_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32)
        t[p + "mlp.up_proj.weight"] = rng.standard_normal((inter, hidden), dtype=np.float32)
        t[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, inter), dtype=np.float32)
        t[p + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    t["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    t["lm_head.weight"] = rng.standard_normal((vocab, hidden), dtype=np.float32)
    return t


def llama_params(layers: int = 2, hidden: int = 8, inter: int = 16, vocab: int = 32) -> int:
    per_layer = 4 * hidden * hidden + 3 * inter * hidden + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden


LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32,
                "intermediate_size": 16, "max_position_embeddings": 64, "torch_dtype": "float32"}


def tokenizer_json(vocab: list[str], added: list[tuple[int, str, bool]]) -> dict[str, Any]:
    """A minimal WordLevel tokenizer.json."""
    return {"version": "1.0", "added_tokens": [{"id": i, "content": c, "special": s, "single_word": False,
                                                "lstrip": False, "rstrip": False, "normalized": False}
                                               for i, c, s in added],
            "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(vocab)}, "unk_token": "[UNK]"}}


def llama_folder(root: Path, rng: np.random.Generator, shards: int = 1) -> Path:
    """A Hugging Face folder: config, tokenizer, weights (single file or `shards` shards with an index)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    vocab = ["[UNK]", "<s>", "</s>"] + [f"tok{i}" for i in range(29)]
    (root / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, [(0, "[UNK]", True), (1, "<s>", True),
                                                                          (2, "</s>", True)])))
    (root / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "unk_token": "[UNK]"}))
    tensors = tiny_llama(rng)
    if shards == 1:
        write_safetensors(root / "model.safetensors", tensors)
        return root
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(root / fname, {n: tensors[n] for n in part})
        weight_map.update({n: fname for n in part})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root
