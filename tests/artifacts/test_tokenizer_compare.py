"""Tokenizers side by side: a shared base proves little, shared custom tokens at the same ids a lot."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from modeltrace.artifacts.bases import BaseTokenizer, make_entry
from modeltrace.artifacts.tokenizer import AddedToken, Tokenizer, read_tokenizer
from modeltrace.artifacts.tokenizer_compare import compare_tokenizers, fixed_point_p, id_ranges
from modeltrace.model import Model

BASE_VOCAB = {f"w{i}": i for i in range(1000)}
STANDARD = [AddedToken(1000, "<s>", True), AddedToken(1001, "</s>", True)]
CUSTOM = ["<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>",
          "<slice>", "</slice>", "<tool>", "<think>"]


def _tok(added: list[AddedToken], vocab: dict[str, int] | None = None) -> Tokenizer:
    return Tokenizer(kind="bpe", vocab=dict(BASE_VOCAB if vocab is None else vocab),
                     merges=[f"w{i} w{i + 1}" for i in range(50)], added_tokens=added)


def _custom(start: int, names: list[str]) -> list[AddedToken]:
    return [AddedToken(start + i, c, True) for i, c in enumerate(names)]


def _bases() -> tuple[BaseTokenizer, ...]:
    row = make_entry(_tok(STANDARD), "toy-base", "tests", "built in the test")
    return (BaseTokenizer(name=row["name"], kind=row["kind"], core_size=row["core_size"],
                          vocab_sha256=row["vocab_sha256"], sketch=tuple(row["sketch"]),
                          standard_added={int(k): v for k, v in row["standard_added"].items()},
                          used_by=row["used_by"], source=row["source"]),)


def test_shared_base_with_different_added_tokens_proves_nothing() -> None:
    a = _tok(STANDARD + _custom(1002, ["<a1>", "<a2>", "<a3>"]))
    b = _tok(STANDARD + _custom(1002, ["<b1>", "<b2>"]))
    c = compare_tokenizers(a, b, _bases())
    assert c.base_a is not None and c.base_a.exact and c.base_a.base.name == "toy-base"
    assert c.base_b is not None and c.base_b.base.name == "toy-base"
    assert c.custom_same_id == ()
    assert [s.why for s in c.shared_added] == ["the toy-base base's own token at this id"] * 2
    assert c.p_value is None
    assert c.only_a == ((1002, "<a1>"), (1003, "<a2>"), (1004, "<a3>"))
    assert c.only_b == ((1002, "<b1>"), (1003, "<b2>"))
    assert c.merge_prefix == 50


def test_copied_tokenizer_shares_custom_tokens_at_same_ids() -> None:
    a = _tok(STANDARD + _custom(1002, CUSTOM))
    b = _tok(STANDARD + _custom(1002, CUSTOM))
    c = compare_tokenizers(a, b, _bases())
    assert len(c.custom_same_id) == 14
    assert c.identical_vocab
    # 14 tokens, 6 open/close pairs -> 8 units, all in place
    assert (c.units, c.units_same_ids) == (8, 8)
    assert c.p_value == pytest.approx(1 / math.factorial(8))


def test_same_strings_at_other_ids_are_not_counted_as_same_ids() -> None:
    a = _tok(STANDARD + _custom(1002, CUSTOM))
    b = _tok(STANDARD + _custom(1002, list(reversed(CUSTOM))))
    c = compare_tokenizers(a, b, _bases())
    assert c.custom_same_id == ()
    assert c.units == 8 and c.units_same_ids == 0
    assert c.p_value is None


def test_placeholders_and_ubiquitous_tokens_are_not_custom() -> None:
    extra = [AddedToken(1002, "<|reserved_special_token_7|>", True), AddedToken(1003, "[unused3]", False),
             AddedToken(1004, "<pad>", True)]
    c = compare_tokenizers(_tok(extra), _tok(extra), ())
    assert c.p_value is None
    assert [s.custom for s in c.shared_added] == [False, False, False]
    assert [s.why for s in c.shared_added] == ["a numbered placeholder", "a numbered placeholder",
                                               "a special token most tokenizers carry"]


def test_fixed_point_null_is_exact() -> None:
    assert fixed_point_p(3, 3) == pytest.approx(1 / 6)
    assert fixed_point_p(3, 1) == pytest.approx(2 / 3)  # 1 - D3 / 3! = 1 - 2/6
    assert fixed_point_p(4, 2) == pytest.approx(7 / 24)  # (C(4,2) D2 + C(4,4) D0) / 4! = (6 + 1) / 24
    assert fixed_point_p(1, 1) is None and fixed_point_p(5, 0) is None


def test_id_ranges() -> None:
    assert id_ranges([128010 + i for i in range(12)] + [128002]) == "128002, 128010-128021"


def test_copies_read_from_disk_compare_identical(tmp_path: Path) -> None:
    from tokenizer_builders import added, bpe_tokenizer_json, write_json

    vocab = {f"t{i}": i for i in range(300)}
    toks = [added(300 + i, c) for i, c in enumerate(CUSTOM[:6])]
    for d in ("a", "b"):
        write_json(tmp_path / d / "tokenizer.json", bpe_tokenizer_json(vocab, [], toks))
    ta = read_tokenizer(Model.open(str(tmp_path / "a")))
    tb = read_tokenizer(Model.open(str(tmp_path / "b")))
    assert ta is not None and tb is not None
    c = compare_tokenizers(ta, tb, ())
    assert c.identical_vocab and len(c.custom_same_id) == 6 and c.units == 3
    assert c.p_value is None  # no known base: the six may be the base's own tokens
    base = make_entry(Tokenizer(kind="bpe", vocab=vocab), "t-base", "tests", "test")
    known = (BaseTokenizer(name="t-base", kind="bpe", core_size=base["core_size"], vocab_sha256=base["vocab_sha256"],
                           sketch=tuple(base["sketch"]), standard_added={}, used_by="", source=""),)
    c = compare_tokenizers(ta, tb, known)
    assert c.p_value == pytest.approx(1 / 6)
