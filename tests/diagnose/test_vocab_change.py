"""Vocabulary changes from token->id maps and embedding rows."""

from __future__ import annotations

import numpy as np

from modeltrace.diagnose.vocab import diagnose_vocab


def vocab(n: int, prefix: str = "tok") -> dict[str, int]:
    return {f"{prefix}{i}": i for i in range(n)}


def test_extended_vocabulary_keeps_rows(rng: np.random.Generator) -> None:
    va = vocab(500)
    vb = dict(va) | {f"<extra{i}>": 500 + i for i in range(12)}
    ea = rng.standard_normal((500, 64)).astype(np.float32)
    eb = np.concatenate([ea, np.broadcast_to(ea.mean(axis=0), (12, 64))]).astype(np.float32)
    d = diagnose_vocab(va, vb, ea, eb)
    assert d.kinds == ("extended",)
    assert d.n_added == 12 and d.added[0] == "<extra0>"
    assert d.rows_kept == 1.0
    assert d.new_rows_init == "mean"


def test_pruned_and_reordered(rng: np.random.Generator) -> None:
    va = vocab(400)
    kept = [f"tok{i}" for i in range(400) if i % 4]
    order = rng.permutation(len(kept))
    vb = {kept[k]: int(j) for j, k in enumerate(order)}
    ea = rng.standard_normal((400, 32)).astype(np.float32)
    eb = np.empty((len(kept), 32), np.float32)
    for tok, j in vb.items():
        eb[j] = ea[va[tok]]
    d = diagnose_vocab(va, vb, ea, eb)
    assert set(d.kinds) == {"pruned", "reordered"}
    assert d.n_removed == 100 and d.removed[:2] == ("tok0", "tok4")
    assert d.rows_kept == 1.0


def test_same_tokens_retrained_rows(rng: np.random.Generator) -> None:
    va = vocab(300)
    ea = rng.standard_normal((300, 64)).astype(np.float32)
    eb = rng.standard_normal((300, 64)).astype(np.float32)
    d = diagnose_vocab(va, dict(va), ea, eb)
    assert d.kinds == ()
    assert d.rows_kept is not None and d.rows_kept < 0.01


def test_zero_initialised_new_rows(rng: np.random.Generator) -> None:
    va = vocab(50)
    vb = dict(va) | {"<new>": 50}
    ea = rng.standard_normal((50, 16)).astype(np.float32)
    eb = np.concatenate([ea, np.zeros((1, 16), np.float32)])
    assert diagnose_vocab(va, vb, ea, eb).new_rows_init == "zeros"
