"""Search: a derived model finds its parent first, an unrelated one finds nothing; both candidate backends agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modeltrace.index.candidates import ExactCandidates, UsearchCandidates, open_candidates
from modeltrace.index.fingerprint import fingerprint, from_bytes, to_bytes
from modeltrace.index.search import search
from modeltrace.index.store import IndexStore


@pytest.fixture()
def index(tmp_path: Path, family: dict[str, Path]) -> IndexStore:
    s = IndexStore(tmp_path / "i.db")
    for name in ("base", "other0", "other1", "other2"):
        data = to_bytes(fingerprint(str(family[name])))
        s.add(name, from_bytes(data, name), data)
    return s


@pytest.mark.parametrize("child", ["noise", "permute", "rotate", "drop"])
@pytest.mark.parametrize("backend", ["exact", "usearch"])
def test_a_derived_model_finds_its_parent_first(index: IndexStore, family: dict[str, Path], child: str,
                                               backend: str) -> None:
    res = search(index, fingerprint(str(family[child])), top=3, backend=backend)
    assert res.hits[0].entry.name == "base"
    assert res.hits[0].related
    assert [h.entry.name for h in res.related] == ["base"]
    assert res.to_json()["summary"] == "1 related model(s) in the index"


def test_an_unrelated_model_finds_nothing(index: IndexStore, family: dict[str, Path]) -> None:
    res = search(index, fingerprint(str(family["other3"])), top=5)
    assert res.related == []
    assert res.to_json()["summary"] == "nothing in the index is related"
    assert res.candidates == 4


def test_the_candidate_cache_is_rebuilt_when_the_index_changes(index: IndexStore, family: dict[str, Path]) -> None:
    first = open_candidates(index, "usearch")
    assert len(first.search(np.ones(first_dim(), dtype=np.float32), 10)) == 4
    data = to_bytes(fingerprint(str(family["noise"])))
    index.add("noise", from_bytes(data, "noise"), data)
    again = open_candidates(index, "usearch")
    assert len(again.search(np.ones(first_dim(), dtype=np.float32), 10)) == 5


def first_dim() -> int:
    from modeltrace.index.fingerprint import VECTOR_DIM

    return VECTOR_DIM


def test_usearch_and_exact_agree_on_nearest_neighbours() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((500, first_dim())).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) + 7
    ex, us = ExactCandidates(), UsearchCandidates()
    ex.build(ids, vecs)
    us.build(ids, vecs)
    q = vecs[42] + 0.01 * rng.standard_normal(first_dim()).astype(np.float32)
    assert ex.search(q, 1)[0][0] == us.search(q, 1)[0][0] == 49
