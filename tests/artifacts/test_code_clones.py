"""Clone detection on real modelling files: disguised copies found, independent implementations not."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from minicpm_fixture import DATA, RESAMPLER_RENAMES, disguise

from modeltrace.artifacts import code as code_mod
from modeltrace.artifacts.code import (
    WINDOW,
    K,
    compare_code,
    compare_fingerprints,
    fingerprint,
    kgram_hashes,
    load_files,
    pair_p,
    parse_source,
    rename_map,
    winnow,
)
from modeltrace.errors import FormatError

transformers = pytest.importorskip("transformers")
MODELS = Path(transformers.__file__).parent / "models"


def _real(name: str) -> str:
    p = MODELS / name
    if not p.is_file():
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    return p.read_text(encoding="utf-8")


def _fp(source: str, label: str) -> code_mod.Fingerprint:
    return fingerprint(parse_source(source, label))


@pytest.mark.parametrize("name", ["bert/modeling_bert.py", "llama/modeling_llama.py", "resnet/modeling_resnet.py"])
def test_renamed_reformatted_reordered_copy_of_real_file_is_a_clone(name: str) -> None:
    src = _real(name)
    renames = {"hidden_states": "h", "attention_mask": "mask", "config": "cfg", "forward": "run"}
    copy = "# rewritten\n" + disguise(src, renames, seed=7)
    assert copy != src
    r = compare_fingerprints(_fp(src, "orig.py"), _fp(copy, "copy.py"))
    assert r.similarity > 0.9
    p = pair_p(r)
    assert p is not None and p < 0.01
    votes = rename_map([r.renames])
    assert votes.get("hidden_states") == "h" and votes.get("config") == "cfg"
    assert votes.items() <= renames.items()  # no spurious pairings of look-alike code


@pytest.mark.parametrize(("a", "b"), [("t5/modeling_t5.py", "resnet/modeling_resnet.py"),
                                      ("mamba/modeling_mamba.py", "vit/modeling_vit.py"),
                                      ("rwkv/modeling_rwkv.py", "superpoint/modeling_superpoint.py")])
def test_independent_real_implementations_are_not_clones(a: str, b: str) -> None:
    r = compare_fingerprints(_fp(_real(a), a), _fp(_real(b), b))
    p = pair_p(r)
    assert p is not None and p > 0.01
    assert r.similarity < 0.3


def test_copied_from_markers_are_confirmed_by_detection() -> None:
    """roberta carries '# Copied from transformers.models.bert' classes: the pair must be a clone."""
    roberta = MODELS / "roberta" / "modeling_roberta.py"
    if not roberta.is_file():
        pytest.skip("no roberta in this transformers")
    r = compare_fingerprints(_fp(_real("bert/modeling_bert.py"), "bert.py"), _fp(roberta.read_text(), "roberta.py"))
    p = pair_p(r)
    assert p is not None and p < 0.01
    assert r.regions and r.regions[0].tokens > 200


def test_minicpm_resampler_disguised_gives_the_rename_map() -> None:
    src = (DATA / "minicpm_resampler.py").read_text()
    copy = disguise(src, RESAMPLER_RENAMES, seed=3)
    r = compare_fingerprints(_fp(src, "resampler.py"), _fp(copy, "projection.py"))
    assert r.similarity > 0.9
    renames = rename_map([r.renames])
    assert renames["get_2d_sincos_pos_embed"] == "pos_embed_val"
    assert renames["get_2d_sincos_pos_embed_from_grid"] == "pos_embed_from_grid_val"
    assert renames["_set_2d_pos_cache"] == "_cache_pos"
    assert "forward" not in renames  # unchanged names are not renames
    region = r.regions[0]
    assert region.a_file == "resampler.py" and region.b_file == "projection.py"
    assert region.a_lines[0] <= region.a_lines[1]


def test_winnowing_guarantee_on_random_streams() -> None:
    """Any shared run of >= WINDOW + K - 1 tokens shares at least one selected fingerprint."""
    rnd = random.Random(0)
    vocab = [f"t{i}" for i in range(50)]
    for trial in range(20):
        shared = [rnd.choice(vocab) for _ in range(WINDOW + K - 1)]
        a = [rnd.choice(vocab) for _ in range(rnd.randrange(0, 200))] + shared + \
            [rnd.choice(vocab) for _ in range(50)]
        b = [rnd.choice(vocab) for _ in range(rnd.randrange(0, 200))] + shared
        ha = {h for h, _ in winnow(kgram_hashes(a))}
        hb = {h for h, _ in winnow(kgram_hashes(b))}
        assert ha & hb, trial


def test_winnow_picks_rightmost_minimum_once_per_change() -> None:
    assert winnow([5, 3, 3, 7, 1, 9, 9], window=3) == [(3, 2), (1, 4)]
    assert winnow([4, 2], window=3) == [(2, 1)]
    assert winnow([], window=3) == []


def test_normalization_ignores_comments_docstrings_names_literals_and_imports() -> None:
    a = parse_source('import os\n"""doc"""\ndef f(x):\n    """d"""\n    return x + 1  # c\n', "a.py")
    b = parse_source("from sys import path\n\n\ndef g(  y ):\n\n    return (y\n        + 2)\n", "b.py")
    assert a.tokens == b.tokens
    c = parse_source("def g(y):\n    return y - 2\n", "c.py")
    assert c.tokens != a.tokens


# --- hostile sources ----------------------------------------------------------------------------------

def test_deeply_nested_expression_is_refused_not_crashed() -> None:
    src = "x = " + "-" * 5000 + "1\n"
    with pytest.raises(FormatError) as err:
        parse_source(src, "bomb.py")
    assert str(err.value) in ("bomb.py: syntax tree nested more than 500 levels; refused",
                              "bomb.py: syntax tree too deep or too large to parse; refused")


def test_too_many_parentheses_is_a_format_error() -> None:
    with pytest.raises(FormatError, match=r"^bomb\.py: not valid Python \(line 1: too many nested parentheses\)$"):
        parse_source("x = " + "(" * 300 + "1" + ")" * 300, "bomb.py")


def test_node_count_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_mod, "MAX_NODES", 50)
    with pytest.raises(FormatError) as err:
        parse_source("x = [" + ", ".join(["1"] * 100) + "]\n", "wide.py")
    assert str(err.value) == "wide.py: syntax tree has more than 50 nodes; refused"


def test_oversized_and_binary_sources() -> None:
    with pytest.raises(FormatError) as err:
        parse_source(b"#" * (code_mod.MAX_FILE_BYTES + 1), "huge.py")
    assert str(err.value) == f"huge.py: source is {code_mod.MAX_FILE_BYTES + 1} bytes, over the " \
                             f"{code_mod.MAX_FILE_BYTES}-byte cap"
    with pytest.raises(FormatError, match=r"^nul\.py: "):
        parse_source(b"x = 1\x00\n", "nul.py")


def test_files_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "modeling_evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n")
    prints, skipped = load_files([(evil, "modeling_evil.py")])
    assert not skipped and len(prints) == 1
    cmp = compare_code(prints, prints)
    assert cmp.n_pairs == 1 and cmp.pairs == ()  # two statements: shorter than one k-gram
    assert not marker.exists()


def test_unparseable_file_is_skipped_with_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    good = tmp_path / "good.py"
    good.write_text("def f(x):\n    return x\n")
    prints, skipped = load_files([(bad, "bad.py"), (good, "good.py")])
    assert [p.tokens.path for p in prints] == ["good.py"]
    assert skipped == ["bad.py: not valid Python (line 1: invalid syntax)"]


def test_only_pairs_sharing_fingerprints_are_scored() -> None:
    src = (DATA / "minicpm_resampler.py").read_text()
    other = _real("resnet/modeling_resnet.py")
    a = [_fp(src, "resampler.py"), _fp(other, "resnet.py")]
    b = [_fp(disguise(src, RESAMPLER_RENAMES, seed=1), "projection.py")]
    cmp = compare_code(a, b)
    assert cmp.n_pairs == 2
    assert cmp.pairs[0].a_file == "resampler.py" and cmp.pairs[0].similarity > 0.9
    assert all(p.shared_fingerprints > 0 for p in cmp.pairs)


def _repetitive(folder: Path, n: int) -> list[tuple[Path, str]]:
    """n copies of one file that repeats a 144-statement block 40 times: thousands of equal k-grams."""
    ops = ["+", "-", "*", "/", "%", "**", "//", "<<", ">>", "&", "|", "^"]
    block = "".join(f"x = y {ops[i % 12]} (z {ops[(i // 12) % 12]} w)\n" if i % 2 else
                    f"if a {ops[i % 12]} b:\n    pass\n" for i in range(144))
    out = []
    for i in range(n):
        p = folder / f"modeling_{i}.py"
        p.write_text(block * 40)
        out.append((p, p.name))
    return out


def test_repetitive_files_stop_at_the_time_budget_and_say_so(tmp_path: Path) -> None:
    import time

    files = _repetitive(tmp_path, 6)
    budget = code_mod.CloneBudget(deadline=time.monotonic() + 1.0)
    start = time.perf_counter()
    prints, skipped = load_files(files, budget)
    cmp = compare_code(prints, prints, skipped, budget)
    assert time.perf_counter() - start < 8.0  # one second of budget, plus the pair or file under way
    assert any("budget was spent" in s for s in cmp.skipped)


def test_token_comparisons_are_capped_over_the_whole_comparison(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_mod, "MAX_TOTAL_EXTEND_STEPS", 50_000)
    prints, _ = load_files(_repetitive(tmp_path, 2))
    cmp = compare_code(prints, prints)
    assert cmp.n_pairs == 4 and len(cmp.pairs) == 4
    assert "matches were not grown past the cap of 50000 token comparisons (repetitive files): shared code may " \
           "be undercounted" in cmp.skipped


def test_source_past_the_per_side_cap_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_mod, "MAX_TOTAL_BYTES", 10)
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    prints, skipped = load_files([(tmp_path / "a.py", "a.py"), (tmp_path / "b.py", "b.py")])
    assert [p.tokens.path for p in prints] == ["a.py"]
    assert skipped == ["b.py: not read, past the 10-byte cap on source per side"]
