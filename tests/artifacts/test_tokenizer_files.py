"""Tokenizer files parsed as data: every supported layout, hostile inputs, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizer_builders import (
    added,
    bpe_tokenizer_json,
    sentencepiece_model,
    tiktoken_file,
    write_json,
)

from modeltrace.artifacts.bases import core_size, identify_base, vocab_sha256
from modeltrace.artifacts.tokenizer import (
    AddedToken,
    byte_level,
    parse_sentencepiece,
    parse_tiktoken,
    read_tokenizer,
    tokenizer_from_gguf,
)
from modeltrace.errors import FormatError
from modeltrace.model import Model

VOCAB = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4}
MERGES = ["a b", "ab c"]


def _folder(tmp_path: Path, files: dict[str, object]) -> Model:
    for name, content in files.items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content, encoding="utf-8")
        else:
            write_json(p, content)
    return Model.open(str(tmp_path))


def test_tokenizer_json_bpe_with_config_overlays(tmp_path: Path) -> None:
    m = _folder(tmp_path, {
        "tokenizer.json": bpe_tokenizer_json(VOCAB, MERGES, [added(5, "<s>"), added(6, "</s>")]),
        "tokenizer_config.json": {
            "added_tokens_decoder": {"7": {"content": "<image>", "special": True},
                                     "5": {"content": "<s>", "special": True}},
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
            "auto_map": {"AutoTokenizer": ["modeling_minicpmv.PreTrainedTokenizerFastWrapper", None]},
            "tokenizer_class": "PreTrainedTokenizerFastWrapper",
            "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>",
        },
        "special_tokens_map.json": {"additional_special_tokens": ["<image>"]},
    })
    tok = read_tokenizer(m)
    assert tok is not None
    assert tok.kind == "bpe"
    assert tok.vocab == VOCAB
    assert tok.merges == MERGES
    assert tok.added_tokens == [AddedToken(5, "<s>", True), AddedToken(6, "</s>", True),
                                AddedToken(7, "<image>", True)]
    assert tok.special_tokens == {"bos_token": "<s>", "eos_token": "</s>",
                                  "additional_special_tokens[0]": "<image>"}
    assert tok.chat_template is not None and tok.chat_template.startswith("{{ bos_token }}")
    assert tok.auto_map["AutoTokenizer"][0] == "modeling_minicpmv.PreTrainedTokenizerFastWrapper"
    assert tok.tokenizer_class == "PreTrainedTokenizerFastWrapper"
    assert tok.normalizer == "Sequence[NFC]"
    assert tok.pre_tokenizer == "ByteLevel"
    assert tok.vocab_size == 8
    assert tok.sources == ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")
    assert read_tokenizer(m) is tok  # read once per model object
    summary = tok.summary()
    assert summary["kind"] == "bpe" and summary["vocab_size"] == 8 and summary["added_tokens"] == 3
    assert summary["auto_map"] == {"AutoTokenizer": "['modeling_minicpmv.PreTrainedTokenizerFastWrapper', None]"}
    assert summary["chat_template"]["chars"] == len(tok.chat_template)


def test_merges_written_as_pairs_read_the_same(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"tokenizer.json": bpe_tokenizer_json(VOCAB, MERGES, [], pairs=True)})
    tok = read_tokenizer(m)
    assert tok is not None and tok.merges == MERGES


def test_vocab_json_and_merges_txt(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"vocab.json": VOCAB, "merges.txt": "#version: 0.2\na b\nab c\n"})
    tok = read_tokenizer(m)
    assert tok is not None
    assert (tok.kind, tok.vocab, tok.merges) == ("bpe", VOCAB, MERGES)
    assert tok.sources == ("vocab.json", "merges.txt")


def test_vocab_txt_wordpiece(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"vocab.txt": "[PAD]\n[UNK]\nhello\n##lo\n"})
    tok = read_tokenizer(m)
    assert tok is not None
    assert tok.kind == "wordpiece"
    assert tok.vocab == {"[PAD]": 0, "[UNK]": 1, "hello": 2, "##lo": 3}


def test_sentencepiece_model_decoded_without_running_it(tmp_path: Path) -> None:
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("▁the", -1.5, 1), ("<img>", 0.0, 4),
              ("<0x0A>", 0.0, 6)]
    p = tmp_path / "tokenizer.model"
    p.write_bytes(sentencepiece_model(pieces, model_type=2))
    tok = parse_sentencepiece(p)
    assert tok.kind == "sentencepiece"
    assert tok.extra["model_type"] == "bpe"
    assert tok.vocab == {"<unk>": 0, "<s>": 1, "</s>": 2, "▁the": 3, "<img>": 4, "<0x0A>": 5}
    assert tok.token_types == {0: "unknown", 1: "control", 2: "control", 4: "user_defined", 5: "byte"}
    assert tok.added_tokens == [AddedToken(1, "<s>", True), AddedToken(2, "</s>", True),
                                AddedToken(4, "<img>", False)]
    assert tok.normalizer == "nmt_nfkc"
    assert tok.extra["scores_sum"] == pytest.approx(-1.5)


def test_truncated_sentencepiece_is_a_format_error(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.model"
    p.write_bytes(sentencepiece_model([("<unk>", 0.0, 2), ("▁a", -1.0, 1)])[:-9])
    with pytest.raises(FormatError) as err:
        parse_sentencepiece(p)
    assert str(err.value) == f"{p}: protobuf field 3 runs past the end of its message"


def test_random_bytes_are_not_a_sentencepiece_model(tmp_path: Path) -> None:
    p = tmp_path / "spiece.model"
    p.write_bytes(b"\x07\x07\x07\x07")
    with pytest.raises(FormatError, match="unsupported protobuf wire type 7"):
        parse_sentencepiece(p)


def test_tiktoken_ranks_in_byte_level_form(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.tiktoken"
    p.write_text(tiktoken_file([b"a", b" the", b"\n", "é".encode()]))
    tok = parse_tiktoken(p)
    assert tok.kind == "tiktoken"
    assert tok.vocab == {"a": 0, "Ġthe": 1, "Ċ": 2, byte_level("é".encode()): 3}
    assert byte_level("é".encode()) == "Ã©"  # GPT-2's byte-level spelling, as vocab.json has it


def test_tiktoken_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer.tiktoken"
    p.write_text("YQ== 0\n!!notbase64 1\n")
    with pytest.raises(FormatError) as err:
        parse_tiktoken(p)
    assert str(err.value) == f"{p}: line 2 is not 'base64-token rank'"


def test_gguf_metadata_tokenizer(tmp_path: Path) -> None:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
            "tokenizer.ggml.tokens": ["<|endoftext|>", "a", "b", "ab", "<tool>"],
            "tokenizer.ggml.token_type": [3, 1, 1, 1, 4], "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
            "tokenizer.chat_template": "{{ messages }}"}
    tok = tokenizer_from_gguf(meta, tmp_path / "m.gguf")
    assert tok is not None
    assert tok.kind == "bpe"
    assert tok.vocab == {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "<tool>": 4}
    assert tok.added_tokens == [AddedToken(0, "<|endoftext|>", True), AddedToken(4, "<tool>", False)]
    assert tok.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    assert tok.chat_template == "{{ messages }}"
    assert tok.merges == ["a b"]
    assert tokenizer_from_gguf({"general.architecture": "llama"}, tmp_path / "m.gguf") is None


def test_gguf_token_type_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(FormatError) as err:
        tokenizer_from_gguf({"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1]},
                            tmp_path / "m.gguf")
    assert str(err.value) == f"{tmp_path / 'm.gguf'}: GGUF key tokenizer.ggml.token_type does not list one " \
                             "type per token"


def test_no_tokenizer_files_gives_none(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"config.json": {"model_type": "bert"}})
    assert read_tokenizer(m) is None


def test_chat_template_list_and_jinja_file(tmp_path: Path) -> None:
    m = _folder(tmp_path, {
        "vocab.json": VOCAB,
        "tokenizer_config.json": {"chat_template": [{"name": "tool_use", "template": "T"},
                                                    {"name": "default", "template": "D"}]},
    })
    tok = read_tokenizer(m)
    assert tok is not None and tok.chat_template == "D"
    (tmp_path / "chat_template.jinja").write_text("J")
    tok = read_tokenizer(Model.open(str(tmp_path)))
    assert tok is not None and tok.chat_template == "J"


# --- hostile files ------------------------------------------------------------------------------

def test_deeply_nested_json_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError) as err:
        read_tokenizer(Model.open(str(tmp_path)))
    assert str(err.value) == f"{tmp_path / 'tokenizer.json'}: JSON nested too deeply"


def test_oversized_vocab_txt_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modeltrace.artifacts import files

    p = tmp_path / "vocab.txt"
    p.write_text("a\n" * 1000)
    monkeypatch.setattr(files, "MAX_TEXT_BYTES", 100)
    with pytest.raises(FormatError) as err:
        read_tokenizer(Model.open(str(tmp_path)))
    assert str(err.value) == f"{p}: file is 2000 bytes, over the 100-byte cap"


@pytest.mark.parametrize(("model", "message"), [
    ({"type": "BPE", "vocab": {"a": -1}, "merges": []},
     "model.vocab: token id -1 is not an integer in [0, 4000000)"),
    ({"type": "BPE", "vocab": {"a": 0}, "merges": [1]}, "model.merges: entry 1 is neither 'a b' nor ['a', 'b']"),
    ({"type": "Exotic"}, "unknown tokenizer model type 'Exotic' (known: BPE, WordPiece, WordLevel, Unigram)"),
    ({"type": "WordPiece", "vocab": ["a"]}, "model.vocab is not an object of token -> id"),
])
def test_malformed_tokenizer_json(tmp_path: Path, model: dict[str, object], message: str) -> None:
    write_json(tmp_path / "tokenizer.json", {"model": model, "added_tokens": []})
    with pytest.raises(FormatError) as err:
        read_tokenizer(Model.open(str(tmp_path)))
    assert str(err.value) == f"{tmp_path / 'tokenizer.json'}: {message}"


def test_bad_added_tokens_decoder_key(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"vocab.json": VOCAB,
                           "tokenizer_config.json": {"added_tokens_decoder": {"x1": {"content": "<a>"}}}})
    with pytest.raises(FormatError) as err:
        read_tokenizer(m)
    assert str(err.value) == f"{tmp_path / 'tokenizer_config.json'}: added_tokens_decoder key 'x1' is not a " \
                             "token id"


def test_control_characters_kept_as_data(tmp_path: Path) -> None:
    evil = "\x1b[31m<script>alert(1)</script>"
    m = _folder(tmp_path, {"vocab.json": {**VOCAB, evil: 5}})
    tok = read_tokenizer(m)
    assert tok is not None and tok.vocab[evil] == 5


# --- the base table and real files -----------------------------------------------------------------

def test_vocab_hash_is_order_free_and_core_drops_trailing_added(tmp_path: Path) -> None:
    assert vocab_sha256({"b": 1, "a": 0}) == vocab_sha256({"a": 0, "b": 1})
    assert vocab_sha256({"a": 0, "b": 1}) != vocab_sha256({"a": 1, "b": 0})
    m = _folder(tmp_path, {"tokenizer.json": bpe_tokenizer_json(VOCAB, MERGES, [added(5, "<s>"),
                                                                               added(6, "</s>")])})
    tok = read_tokenizer(m)
    assert tok is not None and core_size(tok) == 5


def test_real_bert_vocab_identified_from_either_file(realmodels: Path, tmp_path: Path) -> None:
    src = realmodels / "all-minilm-l6-v2"
    tok = read_tokenizer(Model.open(str(src)))
    assert tok is not None and tok.vocab_size == 30522
    match = identify_base(tok)
    assert match is not None and match.exact and match.base.name == "bert-base-uncased"
    # vocab.txt alone spells the same vocabulary: the same hash
    (tmp_path / "vocab.txt").write_bytes((src / "vocab.txt").read_bytes())
    alone = read_tokenizer(Model.open(str(tmp_path)))
    assert alone is not None and alone.kind == "wordpiece"
    match = identify_base(alone)
    assert match is not None and match.exact and match.base.name == "bert-base-uncased"


def test_changed_ids_fall_back_to_sketch(realmodels: Path, tmp_path: Path) -> None:
    lines = (realmodels / "all-minilm-l6-v2" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    lines[1:51] = [f"[custom{i}]" for i in range(50)]  # rename 50 of the [unusedN] ids
    (tmp_path / "vocab.txt").write_text("\n".join(lines), encoding="utf-8")
    tok = read_tokenizer(Model.open(str(tmp_path)))
    assert tok is not None
    match = identify_base(tok)
    assert match is not None and not match.exact and match.base.name == "bert-base-uncased"
    assert match.containment >= 0.97


def test_unrelated_vocab_matches_no_base(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"vocab.json": {f"tok{i}": i for i in range(2000)}})
    tok = read_tokenizer(m)
    assert tok is not None and identify_base(tok) is None


def test_table_is_valid_json_with_documented_hash() -> None:
    from importlib import resources

    doc = json.loads(resources.files("modeltrace.artifacts").joinpath("data/base_tokenizers.json")
                     .read_text("utf-8"))
    assert doc["schema"] == "modeltrace.base_tokenizers/1"
    names = {b["name"] for b in doc["bases"]}
    assert {"bert-base-uncased", "smollm2", "gemma-3", "qwen2.5", "llama-3", "gpt2"} <= names
