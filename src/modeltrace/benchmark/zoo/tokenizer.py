"""The one byte-level BPE tokenizer every zoo family shares, trained deterministically on the main split.

Written in Hugging Face layout (tokenizer.json, tokenizer_config.json, special_tokens_map.json) so artifact
methods read it as they read any published tokenizer. Functions below derive the tokenizers of vocabulary
extension, vocabulary pruning and the multimodal family (added special tokens at fixed ids).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
PAD, BOS, EOS, UNK, MASK = range(len(SPECIALS))
MULTIMODAL_SPECIALS = ("<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<slice>", "</slice>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def train_tokenizer(text: str, vocab_size: int) -> Any:
    """Train a byte-level BPE (tokenizers library); same text and size give the same merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # fixed-size chunks make the word counts independent of line structure and thread scheduling
    chunks = [text[i:i + 4096] for i in range(0, len(text), 4096)]
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    return tok


def tokenizer_config(model_max_length: int, extra_specials: tuple[str, ...] = (),
                     first_extra_id: int | None = None) -> dict[str, Any]:
    added: dict[str, Any] = {}
    for i, t in enumerate(SPECIALS):
        added[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    for j, t in enumerate(extra_specials):
        assert first_extra_id is not None
        added[str(first_extra_id + j)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
    cfg: dict[str, Any] = {
        "added_tokens_decoder": added, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>", "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length, "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if extra_specials:
        cfg["additional_special_tokens"] = list(extra_specials)
    return cfg


def special_tokens_map(extra_specials: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                           "mask_token": "<mask>"}
    if extra_specials:
        out["additional_special_tokens"] = list(extra_specials)
    return out


def write_tokenizer(folder: Path, tokenizer_json: dict[str, Any], model_max_length: int,
                    extra_specials: tuple[str, ...] = (), first_extra_id: int | None = None) -> None:
    """Write the three Hugging Face tokenizer files into `folder`."""
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(model_max_length, extra_specials, first_extra_id), indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(extra_specials), indent=2),
                                                    encoding="utf-8")


def vocab_size_of(tokenizer_json: dict[str, Any]) -> int:
    ids = list(tokenizer_json["model"]["vocab"].values()) + [t["id"] for t in tokenizer_json["added_tokens"]]
    return int(max(ids)) + 1


def with_added_tokens(tokenizer_json: dict[str, Any], tokens: list[str], special: bool) -> dict[str, Any]:
    """A copy with `tokens` added after the current vocabulary, at consecutive ids."""
    out: dict[str, Any] = json.loads(json.dumps(tokenizer_json))
    start = vocab_size_of(out)
    for i, t in enumerate(tokens):
        out["added_tokens"].append({"id": start + i, "content": t, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": not special, "special": special})
    return out


def pruned(tokenizer_json: dict[str, Any], drop: set[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Remove learned tokens (and every merge that needs them), renumber the rest contiguously.

    Returns the new tokenizer and `kept`, the old id of each new id, so embedding rows follow.
    """
    out = json.loads(json.dumps(tokenizer_json))
    vocab: dict[str, int] = out["model"]["vocab"]
    merges = out["model"]["merges"]
    pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    removed = set(drop)
    kept_merges = []
    for a, b in pairs:  # merges are in creation order: a part removed earlier removes its products too
        if a in removed or b in removed or a + b in removed:
            removed.add(a + b)
            continue
        kept_merges.append([a, b] if not isinstance(merges[0], str) else f"{a} {b}")
    special_ids = {t["id"] for t in out["added_tokens"]}
    kept_old = sorted(i for tok, i in vocab.items() if tok not in removed or i in special_ids)
    kept_old_all = sorted(set(kept_old) | special_ids)
    new_of_old = {old: new for new, old in enumerate(kept_old_all)}
    out["model"]["vocab"] = {tok: new_of_old[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1])
                             if i in new_of_old}
    out["model"]["merges"] = kept_merges
    for t in out["added_tokens"]:
        t["id"] = new_of_old[t["id"]]
    return out, np.asarray(kept_old_all, dtype=np.int64)


def tokenizer_from_json(tokenizer_json: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tokenizer_json))
