"""Fuzzing the artifact parsers: for any input, a parser works or raises modeltrace's FormatError, in bounded time.

Structured strategies (hypothesis) build config.json files, tokenizer files (tokenizer.json,
tokenizer_config.json, special_tokens_map.json, added_tokens.json, chat_template.json/.jinja, vocab.txt,
merges.txt, SentencePiece protos, GGUF tokenizer metadata), chat templates, Python sources (modelling
code) and tensor names that are nearly valid, then put odd JSON values, odd characters and odd sizes in
them. Each example runs the path `inspect` and `compare` take: parse, summarise, compare two of them and
write the JSON output. Anything but success or a FormatError (one line naming the file) fails, as does
an example slower than MAX_EXAMPLE_SECONDS or one that makes the process allocate more than
MEMORY_HEADROOM bytes of address space.

The budget is fixed and deterministic (derandomized) in `make test`; MODELTRACE_FUZZ_EXAMPLES=<n> runs
n examples per target instead, with random seeds (`make fuzz`; see docs/fuzzing.md, "Parsers").
"""

from __future__ import annotations

import json
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzing import capped_address_space, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from modeltrace.artifacts.chat_template import compare_templates, normalize
from modeltrace.artifacts.code import compare_code, compare_fingerprints, fingerprint, parse_source
from modeltrace.artifacts.config import read_config
from modeltrace.artifacts.tokenizer import parse_sentencepiece, read_tokenizer, tokenizer_from_gguf
from modeltrace.artifacts.tokenizer_compare import compare_tokenizers
from modeltrace.errors import FormatError
from modeltrace.inspect import inspect_model, parse_artifacts
from modeltrace.model import Model
from modeltrace.roles import assign_roles, canonical, component_of, scheme_of
from modeltrace.textsafe import dumps, escape

MAX_EXAMPLE_SECONDS = 10.0  # one example: parse, summarise, compare, write JSON (inputs are under 1 MB)


_settings = fuzz_settings


@pytest.fixture(scope="module", autouse=True)
def memory_cap() -> Iterator[None]:
    """Cap the address space while fuzzing: a parser that tries to allocate GBs fails with MemoryError."""
    with capped_address_space():
        yield


def works_or_format_error(fn: Callable[[], object], where: Path | str | None = None) -> object:
    """Run `fn`: success or a one-line FormatError (naming `where` when given) in bounded time; else fail."""
    start = time.perf_counter()
    try:
        return fn()
    except FormatError as exc:
        msg = str(exc)
        assert "\n" not in escape(msg, limit=10**6), msg
        if where is not None:
            assert msg.startswith(str(where)), msg
        return None
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < MAX_EXAMPLE_SECONDS, f"took {elapsed:.1f} s"


# --- JSON values, with the odd ones parsers meet in hostile files -----------------------------------------

ODD_TEXT = st.sampled_from(["", "<s>", "</s>", "<|im_start|>", "\ud800", "\x00", "\x1b[2J", "\u202e", "a" * 5000,
                            "{%", "%}", "{{", "}}", "{#", "0", "-1", "1e999", "null", "[PAD]", "▁the"])
TEXT = st.one_of(st.text(max_size=12), ODD_TEXT)
NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.sampled_from([0, 1, -1, 2**31, 2**63]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(TEXT, inner, max_size=4)),
                           max_leaves=12)
DEEP = st.integers(min_value=1, max_value=400).map(lambda n: json.loads("[" * n + "1" + "]" * n))
_ODD = st.one_of(st.lists(SCALARS, max_size=3), st.dictionaries(TEXT, SCALARS, max_size=3), JSON_VALUES, DEEP,
                 st.lists(st.integers(0, 50), max_size=3000))
ODD_VALUES = st.deferred(lambda: _ODD)  # deferred: short reprs of the nested strategies below


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The well-typed value or, as often, any odd JSON value instead."""
    return st.deferred(lambda: st.one_of(value, ODD_VALUES))


def _write(folder: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        elif isinstance(content, str):
            (folder / name).write_text(content, encoding="utf-8", errors="surrogatepass")
        else:
            (folder / name).write_text(json.dumps(content), encoding="utf-8", errors="surrogatepass")


def _weights(folder: Path) -> None:
    """A tiny valid safetensors file, so the folder is a model inspect and compare accept."""
    data = np.ones(4, np.float32).tobytes()
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]}})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + data)


def _inspect_folder(files: dict[str, Any]) -> None:
    """What `modeltrace inspect --json` and compare's pre-check do with a folder of these files."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _weights(folder)
        _write(folder, files)

        def run() -> None:
            with Model.open(str(folder)) as model:
                parse_artifacts(model)
                read_config(model)
                report = inspect_model(model)
                text = dumps(report.to_json(), indent=2)
                assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text.replace('"Infinity"', "")
                tok = read_tokenizer(model)
                if tok is not None:
                    cmp = compare_tokenizers(tok, tok)
                    assert cmp.identical_vocab
                    if tok.chat_template is not None:
                        assert compare_templates(tok.chat_template, tok.chat_template).similarity == 1.0
                    dumps(tok.summary())

        works_or_format_error(run, folder)


# --- config.json ----------------------------------------------------------------------------------------

CONFIG_KEYS = ["model_type", "architectures", "auto_map", "_name_or_path", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "vocab_size", "intermediate_size",
               "max_position_embeddings", "rope_theta", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
               "torch_dtype", "query_num", "slice_mode", "image_size", "patch_size", "sliding_window"]
SUBCONFIGS = ["text_config", "vision_config", "llm_config", "encoder", "decoder"]


def _config_values(key: str) -> st.SearchStrategy[Any]:
    if key == "model_type":
        return _maybe(st.sampled_from(["llama", "qwen2", "minicpmv", "bert", ""]))
    if key == "architectures":
        return _maybe(st.lists(st.sampled_from(["LlamaForCausalLM", "MiniCPMV"]), max_size=2))
    if key == "auto_map":
        return _maybe(st.dictionaries(st.sampled_from(["AutoModel", "AutoConfig", "AutoTokenizer"]),
                                      st.one_of(TEXT, st.lists(st.one_of(st.none(), TEXT), max_size=2)),
                                      max_size=3))
    if key in ("_name_or_path", "hidden_act", "torch_dtype"):
        return _maybe(TEXT)
    return _maybe(NUMBERS)


def _config(depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields = st.fixed_dictionaries({}, optional={k: _config_values(k) for k in CONFIG_KEYS})
    if depth >= 1:
        return fields
    subs = st.dictionaries(st.sampled_from(SUBCONFIGS), _maybe(_config(depth + 1)), max_size=2)
    return st.builds(lambda f, s: {**f, **s}, fields, subs)


@_settings(150)
@given(config=_config())
def test_config_json(config: dict[str, Any]) -> None:
    _inspect_folder({"config.json": config})


@_settings(40)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["{", "[" * 5000, '{"a": NaN}', '{"a": 1e999}', "\ufeff{}", "{}" * 3])))
def test_config_json_raw_text(text: str) -> None:
    _inspect_folder({"config.json": text})


# --- tokenizer files ------------------------------------------------------------------------------------

TOKENS = st.one_of(st.text(max_size=6), ODD_TEXT)
IDS = _maybe(st.integers(min_value=0, max_value=300))


def _added_token() -> st.SearchStrategy[Any]:
    return _maybe(st.fixed_dictionaries({"id": IDS, "content": _maybe(TOKENS)},
                                        optional={"special": _maybe(st.booleans()), "lstrip": st.booleans()}))


def _normalizer(depth: int = 0) -> st.SearchStrategy[Any]:
    leaf = st.fixed_dictionaries({"type": _maybe(st.sampled_from(["NFC", "Lowercase", "Strip"]))})
    if depth >= 3:
        return _maybe(leaf)
    seq = st.fixed_dictionaries({"type": st.just("Sequence"),
                                 "normalizers": _maybe(st.lists(_normalizer(depth + 1), max_size=3))})
    return _maybe(st.one_of(leaf, seq))


TOKENIZER_MODEL = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["BPE", "WordPiece", "WordLevel"]),
                           "vocab": _maybe(st.dictionaries(TOKENS, IDS, max_size=20))},
                          optional={"merges": _maybe(st.lists(st.one_of(st.just("a b"), st.lists(TOKENS, max_size=3),
                                                                        TOKENS), max_size=10)),
                                    "byte_fallback": _maybe(st.booleans())}),
    st.fixed_dictionaries({"type": st.just("Unigram"),
                           "vocab": _maybe(st.lists(_maybe(st.tuples(TOKENS, NUMBERS).map(list)), max_size=20))},
                          optional={"unk_id": IDS}),
    st.fixed_dictionaries({}, optional={"type": ODD_VALUES, "vocab": ODD_VALUES, "merges": ODD_VALUES}),
)
TOKENIZER_JSON = st.fixed_dictionaries(
    {"model": _maybe(TOKENIZER_MODEL)},
    optional={"added_tokens": _maybe(st.lists(_added_token(), max_size=6)), "normalizer": _normalizer(),
              "pre_tokenizer": _normalizer()})
SPECIAL = _maybe(st.one_of(TOKENS, st.fixed_dictionaries({"content": _maybe(TOKENS)})))
TEMPLATE_TEXT = st.lists(st.sampled_from(list("{}%#-+ \n\tab'[]") + ["{%", "%}", "{{", "}}", "{#", "#}",
                                                                      "<|im_start|>", "\ud800"]),
                         max_size=60).map(lambda t: "".join(t) * 3)
TEMPLATE = _maybe(st.one_of(TEMPLATE_TEXT, st.lists(_maybe(st.fixed_dictionaries(
    {"name": _maybe(st.sampled_from(["default", "tool_use", "rag"])), "template": _maybe(TEMPLATE_TEXT)})),
    max_size=3)))
TOKENIZER_CONFIG = st.fixed_dictionaries({}, optional={
    "bos_token": SPECIAL, "eos_token": SPECIAL, "unk_token": SPECIAL, "pad_token": SPECIAL,
    "additional_special_tokens": _maybe(st.lists(SPECIAL, max_size=4)),
    "added_tokens_decoder": _maybe(st.dictionaries(st.one_of(st.integers(0, 300).map(str), TEXT),
                                                   _added_token(), max_size=4)),
    "chat_template": TEMPLATE, "auto_map": _maybe(st.dictionaries(TEXT, TEXT, max_size=2)),
    "tokenizer_class": _maybe(TEXT), "name_or_path": _maybe(TEXT),
})
TOKENIZER_FILES: dict[str, st.SearchStrategy[Any]] = {
    "tokenizer.json": TOKENIZER_JSON, "tokenizer_config.json": TOKENIZER_CONFIG,
    "special_tokens_map.json": _maybe(st.fixed_dictionaries({}, optional={
        "bos_token": SPECIAL, "eos_token": SPECIAL, "additional_special_tokens": _maybe(st.lists(SPECIAL, max_size=3))})),
    "added_tokens.json": _maybe(st.dictionaries(TOKENS, IDS, max_size=4)),
    "chat_template.json": _maybe(st.fixed_dictionaries({"chat_template": TEMPLATE})),
    "chat_template.jinja": TEMPLATE_TEXT,
    "vocab.txt": st.lists(TOKENS, max_size=20).map("\n".join),
    "vocab.json": _maybe(st.dictionaries(TOKENS, IDS, max_size=10)),
    "merges.txt": st.lists(st.one_of(st.just("a b"), TOKENS), max_size=10).map(
        lambda ls: "#version: 0.2\n" + "\n".join(ls)),
}
# valid companions of the fuzzed file, so that parsing reaches it (a broken tokenizer.json stops the read first)
VALID_TOKENIZER = {
    "tokenizer.json": {"model": {"type": "WordLevel", "vocab": {"<s>": 0, "a": 1}}, "added_tokens": [
        {"id": 2, "content": "<x>", "special": True}]},
    "tokenizer_config.json": {"bos_token": "<s>", "chat_template": "{% for m in messages %}{{ m }}{% endfor %}",
                              "added_tokens_decoder": {"3": {"content": "<y>", "special": False}}},
    "special_tokens_map.json": {"eos_token": {"content": "</s>"}},
}


@_settings(120)
@pytest.mark.parametrize("name", sorted(TOKENIZER_FILES))
@given(data=st.data())
def test_tokenizer_files(name: str, data: st.DataObject) -> None:
    companions = {k: v for k, v in VALID_TOKENIZER.items() if k != name and not (
        name in ("vocab.json", "vocab.txt", "merges.txt") and k == "tokenizer.json")}
    _inspect_folder({**companions, name: data.draw(TOKENIZER_FILES[name], label=name)})


@_settings(100)
@given(files=st.fixed_dictionaries({}, optional=TOKENIZER_FILES))
def test_tokenizer_folders(files: dict[str, Any]) -> None:
    _inspect_folder(files)


@_settings(60)
@given(data=st.one_of(st.binary(max_size=300), st.lists(st.tuples(st.integers(1, 5), st.binary(max_size=12)),
                                                        max_size=12).map(
    lambda fields: b"".join(bytes([n << 3 | 2, len(b)]) + b for n, b in fields))))
def test_sentencepiece_protos(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        path.write_bytes(data)
        works_or_format_error(lambda: parse_sentencepiece(path), path)


GGUF_META = st.fixed_dictionaries({}, optional={
    "tokenizer.ggml.tokens": _maybe(st.lists(TOKENS, max_size=10)),
    "tokenizer.ggml.token_type": _maybe(st.lists(_maybe(st.integers(0, 7)), max_size=10)),
    "tokenizer.ggml.model": _maybe(st.sampled_from(["gpt2", "llama", "bert"])),
    "tokenizer.ggml.merges": _maybe(st.lists(TOKENS, max_size=4)),
    "tokenizer.ggml.bos_token_id": _maybe(st.integers(-2, 12)),
    "tokenizer.chat_template": TEMPLATE,
})


@_settings(100)
@given(meta=GGUF_META)
def test_gguf_tokenizer_metadata(meta: dict[str, Any]) -> None:
    where = Path("model.gguf")
    works_or_format_error(lambda: tokenizer_from_gguf(meta, where), where)


# --- chat templates ----------------------------------------------------------------------------------------

@_settings(150)
@given(a=st.one_of(TEMPLATE_TEXT, st.text(max_size=300)), b=st.one_of(TEMPLATE_TEXT, st.text(max_size=300)),
       repeat=st.sampled_from([1, 1, 1, 50, 2000]))
def test_chat_templates(a: str, b: str, repeat: int) -> None:
    def run() -> None:
        c = compare_templates(a * repeat, b)
        assert 0.0 <= c.similarity <= 1.0
        assert c.identical_normalized == (normalize(a * repeat) == normalize(b))

    works_or_format_error(run)


# --- Python sources (modelling code) --------------------------------------------------------------------

STATEMENTS = st.sampled_from([
    "x = y + 1", "def f(a, *b, **c):\n    return a", "class M(nn.Module):\n    pass", "import torch",
    "if a:\n    b()\nelse:\n    c()", "for i in range(3):\n    x[i] = i", "s = '''doc'''", "x = (" * 50 + "1" + ")" * 50,
    "lambda: (yield)", "async def g():\n    await h()", "x = [i for i in y if i]", "@dec\ndef h(): ...",
    "x = 1\x00", "def (:", "x = '\ud800'", "\tmixed = 1", "try:\n    pass\nexcept E as e:\n    raise",
    "x = " + "-" * 400 + "1", "match x:\n    case [a, *_]:\n        pass", "f'{x!r:>{w}}'",
])
SOURCES = st.one_of(
    st.lists(STATEMENTS, max_size=30).map("\n".join),
    st.tuples(st.lists(STATEMENTS, min_size=1, max_size=6).map("\n".join), st.integers(1, 400)).map(
        lambda t: (t[0] + "\n") * t[1]),  # repetitive files
    st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@_settings(120)
@given(a=SOURCES, b=SOURCES)
def test_python_sources(a: str, b: str) -> None:
    def run() -> None:
        prints = []
        for label, src in (("a.py", a), ("b.py", b)):
            try:
                prints.append(fingerprint(parse_source(src, label)))
            except FormatError as exc:
                assert str(exc).startswith(label) and "\n" not in escape(str(exc), limit=10**6)
        if len(prints) == 2:
            pair = compare_fingerprints(prints[0], prints[1])
            assert 0.0 <= pair.similarity <= 1.0
            compare_code(prints, prints)

    works_or_format_error(run)


# --- tensor names ------------------------------------------------------------------------------------------

NAME_PARTS = st.sampled_from(["model.", "module.", "_orig_mod.", "layers.", "0.", "12.", "self_attn.", "q_proj.",
                              "mlp.", "weight", "bias", "vision_tower.", "resampler.", "blk.", "attn_q.", ".", "",
                              "\x1b", "\ud800", "{L}", "(", "0_Transformer/"])
NAMES = st.one_of(st.lists(NAME_PARTS, max_size=12).map("".join),
                  st.tuples(NAME_PARTS, st.integers(1, 3000), NAME_PARTS).map(lambda t: t[0] * t[1] + t[2]),
                  st.text(max_size=40))


@_settings(150)
@given(names=st.lists(NAMES, max_size=8))
def test_tensor_names(names: list[str]) -> None:
    def run() -> None:
        roles = assign_roles(names)
        assert set(roles) <= set(names)
        scheme_of(names)
        for n in names:
            canonical(n)
            component_of(n, roles.get(n))
            escape(n).encode("utf-8")

    works_or_format_error(run)
