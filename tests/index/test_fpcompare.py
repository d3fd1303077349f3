"""Fingerprint against fingerprint: the derivations of the family are found, unrelated models are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modeltrace.index.fingerprint import fingerprint, from_bytes, to_bytes
from modeltrace.index.fpcompare import compare_fingerprints, diagnosis, jaccard
from modeltrace.stats.nulls import randomized_p


def fp(path: Path):  # type: ignore[no-untyped-def]
    f = fingerprint(str(path))
    return from_bytes(to_bytes(f), str(path))


@pytest.mark.parametrize("child", ["noise", "permute", "rotate", "drop"])
def test_every_derivation_of_the_base_is_called_derived(family: dict[str, Path], child: str) -> None:
    r = compare_fingerprints(fp(family["base"]), fp(family[child]))
    assert r.verdict == "derived"
    assert r.p_value < 1e-10


def test_unrelated_models_are_not_derived_and_never_cleared(family: dict[str, Path]) -> None:
    """Sketches carry no positive controls, so a fingerprint comparison never says independent."""
    base = fp(family["base"])
    for k in range(4):
        r = compare_fingerprints(base, fp(family[f"other{k}"]))
        assert r.verdict == "inconclusive", r.reason
        assert "positive controls were not run" in r.reason
        assert r.p_value > 1e-6


def test_permuted_units_fail_identity_and_pass_the_two_view_test(family: dict[str, Path]) -> None:
    r = compare_fingerprints(fp(family["base"]), fp(family["permute"]))
    by = {e.method: e for e in r.evidence}
    assert by["weight-identity"].p_value is not None and by["weight-identity"].p_value > 1e-6
    assert by["weight-permutation"].p_value is not None and by["weight-permutation"].p_value < 1e-20
    assert "permute" in diagnosis(r)


def test_rotated_residual_is_found_through_the_token_basis(family: dict[str, Path]) -> None:
    r = compare_fingerprints(fp(family["base"]), fp(family["rotate"]))
    by = {e.method: e for e in r.evidence}
    assert by["weight-identity"].p_value is not None and by["weight-identity"].p_value < 1e-20
    assert "rotate" in [t.kind for t in r.transforms]


def test_dropped_layer_is_mapped_and_named(family: dict[str, Path]) -> None:
    r = compare_fingerprints(fp(family["base"]), fp(family["drop"]))
    assert [(e["b_layer"], e["a_layer"]) for e in r.layer_map] == [(0, 0), (1, 2)]
    assert "layer-drop" in [t.kind for t in r.transforms]


def test_result_has_the_compare_schema_and_json_form(family: dict[str, Path]) -> None:
    r = compare_fingerprints(fp(family["base"]), fp(family["noise"]))
    js = r.to_json()
    assert js["schema"] == "modeltrace.compare/1"
    assert [e["method"] for e in js["evidence"]] == ["weight-identity", "weight-permutation",
                                                     "fingerprint-artifacts"]


def test_identical_vocabularies_have_jaccard_one(family: dict[str, Path]) -> None:
    assert jaccard(fp(family["base"]), fp(family["other0"])) == 1.0


def test_identity_p_values_are_uniform_on_independent_sketches() -> None:
    """The null of the stored-index test: B's stored units carry uniformly random labels of S."""
    from modeltrace.weights.align import match_units

    rng = np.random.default_rng(0)
    ps = []
    for _ in range(300):
        a = rng.standard_normal((32, 16)).astype(np.float32)
        b = rng.standard_normal((32, 16)).astype(np.float32)
        um = match_units(a, b, np.arange(32), 32)
        k, m = um.fixed_points()
        ps.append(randomized_p(k, m, 32, float(rng.random())))
    from scipy import stats

    assert stats.kstest(ps, "uniform").pvalue > 0.01
