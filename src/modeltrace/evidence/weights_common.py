"""What the weight evidence methods share: when they can run, how per-layer p-values become one Evidence."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence
from modeltrace.stats.combine import P_FLOOR, bonferroni_min, fisher
from modeltrace.stats.nulls import fixed_point_tail, randomized_p
from modeltrace.weights.align import match_units, sample_units, unit_rows
from modeltrace.weights.analysis import WeightAnalysis
from modeltrace.weights.match import VOCAB_KINDS

MIN_ROWS = 8
SKIP_KINDS = VOCAB_KINDS + ("pos_embed", "type_embed")


def skip_reason(ctx: CompareContext) -> str | None:
    """None when both models have readable weights; else why the weight methods cannot run."""
    for label, model in (("A", ctx.a), ("B", ctx.b)):
        if not model.weight_files:
            return f"model {label} has no weight files"
    return None


def layer_seed(seed: int, component: str, layer: int, salt: int) -> list[int]:
    return [seed, zlib.crc32(component.encode()), layer, salt]


def min_attainable(m: int, n: int) -> float:
    """The smallest p-value a layer with m kept of n units can reach (all m fixed)."""
    return fixed_point_tail(m, m, n) if 0 < m <= n else 1.0


def combine_layers(method: str, layers: list[dict[str, Any]], stat_key: str, wa: WeightAnalysis,
                   ctx: CompareContext, *, how: str, what: str) -> Evidence:
    """One Evidence from per-layer results (Fisher across layers, whose nulls are independent)."""
    ps = [float(x["p_value"]) for x in layers]
    p = fisher(ps) if how == "fisher" else bonferroni_min(ps)
    total = int(sum(int(x[stat_key]) for x in layers))
    kept = int(sum(int(x["kept"]) for x in layers))
    best_possible = fisher([min_attainable(int(x["kept"]), int(x["n_b"])) for x in layers]) \
        if how == "fisher" else bonferroni_min([min_attainable(int(x["kept"]), int(x["n_b"])) for x in layers])
    threshold = float(ctx.options.get("threshold", 1e-6))
    powered = best_possible < threshold
    statement = (f"{total} of {kept} {what} over {len(layers)} layer pair(s); combined p = {p:.3g}")
    details: dict[str, Any] = {
        "layers": layers, "combination": how,
        "combination_note": ("Fisher across layers: each layer's units are relabelled independently under H0"
                             if how == "fisher" else "Bonferroni across tensors: valid under any dependence"),
        "sampled_rows_per_layer": wa.rows, "residual": wa.residual().describe(),
        "min_attainable_p": best_possible,
    }
    voc = wa.vocab()
    if voc is not None:
        details["vocab"] = voc.describe()
    if not powered:
        statement += f" (too few units to reach p < {threshold:g}: best attainable {best_possible:.3g})"
        details["reason"] = "too few comparable units"
    return Evidence(method=method, status="ok", statement=statement, statistic=float(total), p_value=max(p, P_FLOOR),
                    powered=powered, details=details)


def structural_parts(method: str, wa: WeightAnalysis, ctx: CompareContext) -> Evidence:
    """Fallback for models without recognised MLP layers: each paired weight with >= 8 rows is a part."""
    m = wa.matching
    layers: list[dict[str, Any]] = []
    for pair in m.pairs:
        if len(pair.shape) < 2 or pair.kind in SKIP_KINDS or pair.shape[0] < MIN_ROWS or pair.param != "weight":
            continue
        if int(np.prod(pair.shape[1:])) < 2:
            continue
        xa = unit_rows(m.read_a(pair), pair.kind)
        yb = unit_rows(m.read_b(pair), pair.kind)
        if xa.shape != yb.shape:
            continue
        proj = wa.projector(xa.shape[1])
        s = sample_units(xa.shape[0], wa.rows, np.random.default_rng([ctx.seed, len(layers), 5]))
        um = match_units(proj(xa[s]), proj(yb), s, xa.shape[0])
        k, kept = um.fixed_points()
        u = float(np.random.default_rng([ctx.seed, len(layers), 6]).random())
        layers.append({"a": pair.a, "b": pair.b, "fixed": k, "kept": kept, "n_b": um.n_b,
                       "p_value": randomized_p(k, kept, um.n_b, u)})
    if not layers:
        return Evidence(method=method, status="ok",
                        statement="nothing comparable: no MLP layers of equal width on both sides and no paired "
                                  "weight matrices",
                        p_value=1.0, statistic=0.0, powered=False,
                        details={"reason": "nothing comparable: no paired weights with at least "
                                           f"{MIN_ROWS} rows", "matching": m.summary()})
    return combine_layers(method, layers, "fixed", wa, ctx, how="bonferroni",
                          what="units of A matched to the same index in B (paired weights, no MLP roles)")
