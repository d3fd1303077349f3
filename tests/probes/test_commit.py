from __future__ import annotations

import json
from pathlib import Path

import pytest

from modeltrace.errors import ProbeError
from modeltrace.probes.commit import commit, open_item, verify, verify_opening
from modeltrace.probes.make import make_probe_set
from modeltrace.probes.probeset import ITEMS_FILE, load_probe_set


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    make_probe_set(tmp_path / "set", facts=13, glyphs=4, seed=7)
    return tmp_path / "set"


def test_round_trip_verifies(probe_dir: Path) -> None:
    ps = load_probe_set(probe_dir)
    c = commit(ps)
    assert len(c["root"]) == 64 and c["n_items"] == 17
    assert verify(load_probe_set(probe_dir), c).ok


def test_commitment_reveals_no_item_text(probe_dir: Path) -> None:
    ps = load_probe_set(probe_dir)
    text = json.dumps(commit(ps))
    assert all(it.prompt not in text and it.answer not in text for it in ps.items)


def test_tampered_answer_is_detected(probe_dir: Path) -> None:
    c = commit(load_probe_set(probe_dir))
    lines = (probe_dir / ITEMS_FILE).read_text().splitlines()
    item = json.loads(lines[3])
    item["answer"] = "Z" if item["answer"] != "Z" else "Y"
    lines[3] = json.dumps(item)
    (probe_dir / ITEMS_FILE).write_text("\n".join(lines) + "\n")
    res = verify(load_probe_set(probe_dir), c)
    assert not res.ok and "root mismatch" in res.message


def test_tampered_image_is_detected(probe_dir: Path) -> None:
    c = commit(load_probe_set(probe_dir))
    img = min((probe_dir / "images").iterdir())
    data = bytearray(img.read_bytes())
    data[-20] ^= 0xFF
    img.write_bytes(bytes(data))
    assert not verify(load_probe_set(probe_dir), c).ok


def test_removed_item_is_detected(probe_dir: Path) -> None:
    c = commit(load_probe_set(probe_dir))
    lines = (probe_dir / ITEMS_FILE).read_text().splitlines()
    (probe_dir / ITEMS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    res = verify(load_probe_set(probe_dir), c)
    assert not res.ok and "16 items" in res.message


@pytest.mark.parametrize("index", [0, 5, 15, 16])
def test_single_item_opens_without_the_rest(probe_dir: Path, index: int) -> None:
    ps = load_probe_set(probe_dir)
    c = commit(ps)
    opening = open_item(ps, index)
    assert verify_opening(opening, c).ok
    forged = json.loads(json.dumps(opening))
    forged["item"]["answer"] = forged["item"]["answer"] + "x"
    assert not verify_opening(forged, c).ok


def test_opening_out_of_range(probe_dir: Path) -> None:
    with pytest.raises(ProbeError, match="out of range"):
        open_item(load_probe_set(probe_dir), 17)


def test_bad_probe_files(tmp_path: Path) -> None:
    (tmp_path / ITEMS_FILE).write_text('{"id": "a", "prompt": "p"}\n')
    with pytest.raises(ProbeError, match=r"items.jsonl:1: an item needs string fields id, prompt and answer"):
        load_probe_set(tmp_path)
    (tmp_path / ITEMS_FILE).write_text('{"id": "a", "prompt": "p", "answer": "x", "image": "../../etc/passwd"}\n')
    ps = load_probe_set(tmp_path)
    with pytest.raises(ProbeError, match="points outside the set folder"):
        commit(ps)
