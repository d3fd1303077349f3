"""The layer-correspondence matrix and its assignment."""

from __future__ import annotations

from modeltrace.weights.layers import layer_map


def test_diagonal_shortcut_when_every_layer_matches_itself() -> None:
    calls: list[tuple[int, int]] = []

    def score(i: int, j: int, full: bool) -> float:
        calls.append((i, j))
        return 0.9 if i == j else 0.0

    lm = layer_map([0, 1, 2], [0, 1, 2], score)
    assert not lm.full and calls == [(0, 0), (1, 1), (2, 2)]
    assert lm.assignment == {0: 0, 1: 1, 2: 2} and lm.dropped() == []


def test_dropped_duplicated_and_new_layers() -> None:
    source = {0: 0, 1: 2, 2: 2, 3: None}  # B layer -> A layer it copies (None: new)

    def score(i: int, j: int, full: bool) -> float:
        return 0.8 if source[j] == i else 0.05

    lm = layer_map([0, 1, 2], [0, 1, 2, 3], score)
    assert lm.full
    assert lm.assignment == {0: 0, 1: 2, 2: 2, 3: None}
    assert lm.dropped() == [1]
    rows = lm.entries("language_model")
    assert rows[1] == {"component": "language_model", "b_layer": 1, "a_layer": 2, "score": 0.8}
    assert rows[3]["a_layer"] is None and rows[3]["score"] == 0.05
