"""Unit matching (equivariant, injective) and residual-stream alignment."""

from __future__ import annotations

import numpy as np

from modeltrace.weights.align import (
    Projector,
    agreement,
    align_residual,
    fold_gain,
    match_units,
    procrustes,
    sample_units,
    unit_rows,
)


def test_match_units_recovers_a_permutation_of_noisy_rows(rng: np.random.Generator) -> None:
    a = rng.standard_normal((200, 64)).astype(np.float32)
    perm = rng.permutation(200)
    b = a[perm] + 0.05 * rng.standard_normal((200, 64)).astype(np.float32)
    s = sample_units(200, 50, rng)
    um = match_units(a[s], b, s, 200)
    inv = np.argsort(perm)
    np.testing.assert_array_equal(um.target, inv[s])
    assert um.fixed_points() == (int(np.count_nonzero(inv[s] == s)), 50)
    assert um.confident().all()


def test_match_units_is_equivariant_and_injective(rng: np.random.Generator) -> None:
    a = rng.standard_normal((30, 8)).astype(np.float32)
    b = rng.standard_normal((10, 8)).astype(np.float32)  # 30 units into 10: collisions are certain
    s = np.arange(30)
    um = match_units(a, b, s, 30)
    kept = um.target[um.kept]
    assert len(kept) == len(set(kept.tolist())) <= 10
    pi = rng.permutation(10)
    um2 = match_units(a, b[np.argsort(pi)], s, 30)  # B's units relabelled: unit j becomes pi[j]
    np.testing.assert_array_equal(um2.target[um2.kept], pi[um.target[um.kept]])
    np.testing.assert_array_equal(um2.kept, um.kept)


def test_agreement_counts_units_both_views_send_to_the_same_place(rng: np.random.Generator) -> None:
    a1 = rng.standard_normal((40, 16)).astype(np.float32)
    a2 = rng.standard_normal((40, 16)).astype(np.float32)
    perm = rng.permutation(40)
    s = np.arange(40)
    k, m = agreement(match_units(a1, a1[perm], s, 40), match_units(a2, a2[perm], s, 40))
    assert (k, m) == (40, 40)
    k, m = agreement(match_units(a1, a1[perm], s, 40), match_units(a2, rng.standard_normal((40, 16)), s, 40))
    assert k < 5


def test_unit_rows_and_gain_folding() -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(unit_rows(w, "mlp_down"), w.T)
    np.testing.assert_array_equal(unit_rows(w, "mlp_up"), w)
    assert unit_rows(np.zeros((5, 2, 3, 3)), "other").shape == (5, 18)
    np.testing.assert_array_equal(fold_gain(w, np.array([1, 2, 3, 4], np.float32)), w * [1, 2, 3, 4])
    np.testing.assert_array_equal(fold_gain(w, np.ones(3)), w)  # wrong width: left alone


def test_projector_is_seeded_and_identity_for_short_rows(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 1000)).astype(np.float32)
    np.testing.assert_array_equal(Projector(1000, 1)(x), Projector(1000, 1)(x))
    assert Projector(1000, 1)(x).shape == (3, 256)
    cols = Projector(1000, 1).cols
    assert cols is not None and len(set(cols.tolist())) == 256
    assert Projector(100, 1).cols is None


def test_residual_alignment_finds_rotation_permutation_and_identity(rng: np.random.Generator) -> None:
    ea = rng.standard_normal((500, 24)).astype(np.float32)
    r = np.linalg.qr(rng.standard_normal((24, 24)))[0].astype(np.float32)
    rot = align_residual(ea, ea @ r + 0.01 * rng.standard_normal((500, 24)).astype(np.float32))
    assert rot.kind == "rotate" and np.abs(rot.r - r).max() < 0.02
    rows = rng.standard_normal((5, 24)).astype(np.float32)
    np.testing.assert_allclose(rot.to_a(rows @ r), rows, atol=0.05)
    p = np.eye(24, dtype=np.float32)[rng.permutation(24)]
    perm = align_residual(ea, ea @ p)
    assert perm.kind == "permute" and perm.moved() > 20
    same = align_residual(ea, ea + 0.01 * rng.standard_normal((500, 24)).astype(np.float32))
    assert same.kind == "identity" and same.r is None
    unrelated = align_residual(ea, rng.standard_normal((500, 24)).astype(np.float32))
    assert unrelated.kind == "identity"
    assert align_residual(None, None).kind == "unavailable"
    few = align_residual(ea[:10], ea[:10] @ r)  # rotation-like, but 10 tokens cannot fix 24 dimensions
    assert few.kind == "unavailable" and few.r is None
    assert same.reason == "B's embeddings match A's"
    assert unrelated.reason.startswith("token Gram matrices differ")
    np.testing.assert_allclose(procrustes(ea, ea @ r), r, atol=1e-4)
