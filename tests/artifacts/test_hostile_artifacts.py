"""Hostile artifact files: each wrong JSON type is a FormatError naming the file; big inputs stay bounded."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest

from modeltrace.artifacts.config import from_dict, read_config
from modeltrace.artifacts.tokenizer import read_tokenizer, tokenizer_from_gguf
from modeltrace.artifacts.tokenizer_compare import fixed_point_p
from modeltrace.errors import FormatError
from modeltrace.model import Model


def _folder(tmp_path: Path, files: dict[str, object]) -> Model:
    for name, content in files.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return Model.open(str(tmp_path))


TOKENIZER_JSON = {"model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}}, "added_tokens": []}


@pytest.mark.parametrize("config, message", [
    ({"chat_template": [{"name": "default", "template": ["x"]}]},
     'chat_template[0] is not {"name": string, "template": string}'),
    ({"chat_template": [{"name": ["unhashable"], "template": "x"}]},
     'chat_template[0] is not {"name": string, "template": string}'),
    ({"chat_template": [[{"a": [1]}]]}, 'chat_template[0] is not {"name": string, "template": string}'),
    ({"chat_template": []}, "chat_template lists 0 named templates; expected 1 to 64"),
    ({"chat_template": {"default": "x"}}, "chat_template is dict, neither a string nor a list of named templates"),
    ({"bos_token": ["<s>"]}, 'bos_token is list, neither a string nor {"content": string}'),
    ({"eos_token": {"content": 5}}, 'eos_token is dict, neither a string nor {"content": string}'),
    ({"additional_special_tokens": "<x>"}, "additional_special_tokens is str, not a list"),
    ({"additional_special_tokens": [1]}, ('additional_special_tokens[0] is int, neither a string nor {"content": '
                                         'string}')),
    ({"tokenizer_class": ["Fast"]}, "tokenizer_class is list, not a string"),
    ({"added_tokens_decoder": {"5": {"content": "<x>", "special": "yes"}}},
     "added_tokens_decoder[5].special is str, expected true or false"),
])
def test_tokenizer_config_of_wrong_types_is_a_format_error(tmp_path: Path, config: dict[str, object],
                                                           message: str) -> None:
    m = _folder(tmp_path, {"tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": config})
    with pytest.raises(FormatError) as err:
        read_tokenizer(m)
    assert str(err.value) == f"{tmp_path / 'tokenizer_config.json'}: {message}"


@pytest.mark.parametrize("tok, message", [
    ({**TOKENIZER_JSON, "added_tokens": [{"id": 2, "content": "<x>", "special": [1]}]},
     "added_tokens[0].special is list, expected true or false"),
    ({"model": {"type": "Unigram", "vocab": [["a", "high"]]}}, "model.vocab[0] is not [piece, score]"),
    ({"model": {"type": "Unigram", "vocab": [["a", 0.0]], "unk_id": "0"}},
     "model.unk_id: token id '0' is not an integer in [0, 4000000)"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": "no"}},
     "model.byte_fallback is str, expected true or false"),
])
def test_tokenizer_json_of_wrong_types_is_a_format_error(tmp_path: Path, tok: dict[str, object],
                                                         message: str) -> None:
    m = _folder(tmp_path, {"tokenizer.json": tok})
    with pytest.raises(FormatError) as err:
        read_tokenizer(m)
    assert str(err.value) == f"{tmp_path / 'tokenizer.json'}: {message}"


def test_special_tokens_map_of_wrong_type_names_that_file(tmp_path: Path) -> None:
    m = _folder(tmp_path, {"tokenizer.json": TOKENIZER_JSON, "special_tokens_map.json": {"unk_token": 3}})
    with pytest.raises(FormatError) as err:
        read_tokenizer(m)
    assert str(err.value) == f"{tmp_path / 'special_tokens_map.json'}: unk_token is int, neither a string nor " \
                             '{"content": string}'


def test_normalizer_nested_hundreds_of_levels_is_summarised_not_recursed(tmp_path: Path) -> None:
    norm: dict[str, object] = {"type": "NFC"}
    for _ in range(300):
        norm = {"type": "Sequence", "normalizers": [norm]}
    m = _folder(tmp_path, {"tokenizer.json": {**TOKENIZER_JSON, "normalizer": norm}})
    tok = read_tokenizer(m)
    assert tok is not None and tok.normalizer is not None and tok.normalizer == "Sequence[" * 9 + "..." + "]" * 9


def test_non_numeric_gguf_token_types_are_a_format_error(tmp_path: Path) -> None:
    meta = {"tokenizer.ggml.tokens": ["a", "b"], "tokenizer.ggml.token_type": [1, "control"]}
    with pytest.raises(FormatError) as err:
        tokenizer_from_gguf(meta, tmp_path / "m.gguf")
    assert str(err.value) == f"{tmp_path / 'm.gguf'}: GGUF key tokenizer.ggml.token_type[1] is str, expected an " \
                             "integer token type"


@pytest.mark.parametrize("config, message", [
    ({"model_type": ["llama"]}, "model_type is list, expected a string"),
    ({"architectures": "LlamaForCausalLM"}, "architectures is str, expected a list"),
    ({"auto_map": ["x"]}, "auto_map is list, expected an object"),
    ({"auto_map": {"AutoModel": {"a": 1}}}, "auto_map['AutoModel'] is dict, expected a string or a list of strings"),
    ({"hidden_size": "4096"}, "hidden_size is str, expected a number"),
    ({"text_config": {"num_hidden_layers": [32]}}, "text_config.num_hidden_layers is list, expected a number"),
    ({"vocab_size": True}, "vocab_size is bool, expected a number"),
])
def test_config_of_wrong_types_is_a_format_error(tmp_path: Path, config: dict[str, object], message: str) -> None:
    m = _folder(tmp_path, {"config.json": config})
    with pytest.raises(FormatError) as err:
        read_config(m)
    assert str(err.value) == f"{tmp_path / 'config.json'}: {message}"


def test_config_value_nested_deeply_or_huge_is_previewed_in_bounded_time() -> None:
    deep: object = 1
    for _ in range(900):
        deep = [deep]
    start = time.perf_counter()
    c = from_dict({"deep": deep, "huge": list(range(2_000_000))}, "config.json")
    assert time.perf_counter() - start < 2.0
    assert c.raw["deep"].startswith("[[[[") and len(c.raw["deep"]) <= 200
    assert c.raw["huge"].startswith("[0, 1, 2") and len(c.raw["huge"]) == 200


def test_sixty_thousand_shared_custom_tokens_take_bounded_memory_and_time() -> None:
    tracemalloc.start()
    start = time.perf_counter()
    p_all = fixed_point_p(60_000, 60_000)
    p_few = fixed_point_p(60_000, 3)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert p_all == 1e-300  # the p-value floor: 1/60000! is far below it
    assert p_few == pytest.approx(1 / 6, rel=1e-6)  # Markov's bound 1/k! above the exact limit
    assert elapsed < 2.0 and peak < 20 * 1024 * 1024


def test_fixed_point_p_stays_exact_at_the_exact_limit() -> None:
    # P(no fixed point) -> 1/e: P(at least one) = 1 - D(n)/n! = 1 - 1/e to double precision for n = 4096
    assert fixed_point_p(4096, 1) == pytest.approx(1 - 1 / 2.718281828459045, rel=1e-12)


@pytest.mark.parametrize("template", [
    "{#" * 100_000, "{%" * 100_000, "{{" + " " * 200_000 + "x", " " * 200_000 + "y",
    "".join("ab{%} "[(i * 7919) % 6] for i in range(200_000)),
], ids=["unclosed-comments", "unclosed-tags", "spaces-in-a-tag", "leading-spaces", "mixed"])
def test_huge_hostile_chat_templates_compare_in_linear_time(template: str) -> None:
    from modeltrace.artifacts.chat_template import MAX_COMPARE_CHARS, compare_templates

    start = time.perf_counter()
    c = compare_templates(template, template[::-1] + "z" * MAX_COMPARE_CHARS)
    assert time.perf_counter() - start < 5.0
    assert c.truncated and 0.0 <= c.similarity <= 1.0


def test_template_similarity_is_the_dice_coefficient_of_shingles() -> None:
    from modeltrace.artifacts.chat_template import similarity

    assert similarity("abcdefghij", "abcdefghij") == 1.0
    assert similarity("abcdefghij", "zzzzzzzzzz") == 0.0
    # shingles of 8: "abcdefghi" has 2, "abcdefghz" has 2; one ("abcdefgh") shared: 2 * 1 / 4
    assert similarity("abcdefghi", "abcdefghz") == 0.5
