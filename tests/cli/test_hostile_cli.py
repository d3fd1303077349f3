"""Hostile inputs through the CLI: exit 2 with one line naming the file, output that always prints and parses."""

from __future__ import annotations

import json
import math
import shutil
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from st_builders import llama_folder, tokenizer_json, write_safetensors

from modeltrace.cli import cli, main
from modeltrace.textsafe import dumps, escape, finite

WEIGHTS = ["--method", "weight-identity"]


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN and Infinity, as any strict JSON parser does."""
    def refuse(token: str) -> None:
        raise AssertionError(f"non-JSON number {token} in the output")
    return json.loads(text, parse_constant=refuse)


def run_main(args: list[str]) -> tuple[int, str, str]:
    """main() with its streams captured: (exit status, stdout, stderr)."""
    with CliRunner().isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = llama_folder(tmp_path / "a", np.random.default_rng(0))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


def test_compare_rejects_the_hostile_tokenizer_config_that_inspect_rejects(pair: tuple[Path, Path]) -> None:
    a, b = pair
    (b / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "x", "template": [["y"]]}]}))
    want = f'error: {b / "tokenizer_config.json"}: chat_template[0] is not {{"name": string, "template": string}}\n'
    assert run_main(["inspect", str(b)]) == (2, "", want)
    for args in (["compare", str(a), str(b)], ["compare", "--json", *WEIGHTS, str(a), str(b)]):
        assert run_main(args) == (2, "", want)


def test_compare_rejects_a_config_of_wrong_types(pair: tuple[Path, Path]) -> None:
    a, b = pair
    cfg = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers="two")))
    assert run_main(["compare", *WEIGHTS, str(a), str(b)]) == (
        2, "", f"error: {b / 'config.json'}: num_hidden_layers is str, expected a number\n")


def test_nan_and_infinity_in_a_config_never_reach_the_json_output(pair: tuple[Path, Path]) -> None:
    a, b = pair
    for folder in pair:
        text = (folder / "config.json").read_text().rstrip("}") + ', "rope_theta": NaN, "rms_norm_eps": Infinity}'
        (folder / "config.json").write_text(text)
    result = CliRunner().invoke(cli, ["compare", "--json", "--method", "config-match", str(a), str(b)])
    assert result.exit_code == 0, result.output
    doc = _strict_json(result.stdout)
    normalized = doc["evidence"][0]["details"]["normalized"]["a"]
    assert normalized["rope_theta"] is None and normalized["norm_eps"] is None
    inspect = CliRunner().invoke(cli, ["inspect", "--json", str(a)])
    assert inspect.exit_code == 0
    _strict_json(inspect.stdout)


def test_lone_surrogates_and_controls_in_added_tokens_print_in_full(tmp_path: Path) -> None:
    root = llama_folder(tmp_path / "m", np.random.default_rng(0))
    tok = tokenizer_json(["[UNK]", "a"], [(2, "\ud800bad\udfff", True), (3, "\x00\x1b[2J\u200b\ufeff", False),
                                          (4, "last-token", False)])
    (root / "tokenizer.json").write_text(json.dumps(tok))  # json writes the lone surrogates as \\ud800 escapes
    result = CliRunner().invoke(cli, ["inspect", str(root)], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\\ud800bad\\udfff" in out and "\\x00\\x1b[2J\\u200b\\ufeff" in out
    assert "last-token" in out and "Files" in out  # the whole report was printed, not half of it
    out.encode("utf-8")  # every character encodes
    js = CliRunner().invoke(cli, ["inspect", "--json", str(root)])
    assert js.exit_code == 0
    added = _strict_json(js.stdout)["tokenizer"]["added_tokens"]
    assert added[0]["content"] == "\ud800bad\udfff"  # the data is kept exactly, as JSON escapes


def test_lone_surrogate_in_an_error_message_prints(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    write_safetensors(root / "model.safetensors", {"w": np.ones(2, np.float32)})
    (root / "tokenizer.json").write_text(json.dumps({"model": {"type": "Odd\ud800"}}))
    assert run_main(["inspect", str(root)]) == (
        2, "", (f"error: {root / 'tokenizer.json'}: unknown tokenizer model type 'Odd\\ud800' "
               "(known: BPE, WordPiece, WordLevel, Unigram)\n"))


def test_escape_makes_any_string_encodable() -> None:
    nasty = "".join(chr(c) for c in range(0x3000)) + "\ud800\udbff\udc00\udfff\U0010ffff"
    out = escape(nasty, limit=10**6)
    out.encode("utf-8")
    assert not [ch for ch in out if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")]
    assert not set(out) & {"\u202e", "\u2066", "\u200b", "\ufeff"}
    assert len(escape("x" * 10_000, limit=50)) == 50


def test_dumps_writes_null_for_non_finite_values_everywhere() -> None:
    doc = {"p": math.nan, "xs": (1.0, -math.inf, np.float32("nan")), "arr": np.array([np.inf, 2.0]),
           "n": np.int64(3), 5: {"deep": [math.inf]}}
    assert _strict_json(dumps(doc)) == {"p": None, "xs": [1.0, None, None], "arr": [None, 2.0], "n": 3,
                                        "5": {"deep": [None]}}
    assert finite(float("nan")) is None


def test_json_output_refuses_nan_loudly_if_one_slips_through() -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        json.dumps(float("nan"), allow_nan=False)  # what dumps relies on after `finite`
    assert dumps([1.5]) == "[1.5]"
