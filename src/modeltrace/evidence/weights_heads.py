"""`weight-heads`: do A's attention heads land on their own index in B? (exact permutation test)

Catches copies whose MLPs were re-trained or replaced while attention was kept, which the MLP-unit
tests cannot see. After the unit-matching tests of Zhu, Ahmed, Kuditipudi & Liang ("Independence
Tests for Language Models", ICML 2025), with attention heads as the units; the head signatures
are the query-key and value-output circuits of Elhage et al. ("A Mathematical Framework for
Transformer Circuits", 2021).

Unit. A key-value group g (a head in multi-head attention; in grouped-query attention the query
heads that share key and value head g). Its signature is two d x d circuits on the residual
stream, restricted to a fixed subset of at most `COORDS` residual coordinates:
QK_g = sum_{h in g} Q_h^T K_g and OV_g = sum_{h in g} O_h V_g. Both are unchanged by any change of
basis inside a head (the circuits multiply it out) and by permuting the query heads inside a
group (the sums), so they compare heads, not their storage. B's are expressed in A's residual
coordinates first (the residual alignment of `weights.align`, read from embeddings only).

Null hypothesis: A and B were trained from independent initializations by a procedure that is
equivariant to permuting the key-value groups of a layer, from an initialization whose law is
invariant to such permutations. Then B's group labels in each layer are a uniform random
permutation, independent of A and across layers. Matching A's groups to B's by the largest
cosine of their signatures, made injective, is equivariant; F = the number of groups that land on
their own index has the exact law of `modeltrace.stats.nulls` (fixed points of a uniform
permutation), and `randomized_p` is exactly uniform under H0. The head count is B's own config's
when it names one, else A's (the partition into heads must not be chosen by looking at B's values:
it is fixed by shapes and config). Layers are combined with Fisher's method: their relabellings are
independent under H0.

Permuted heads. A copy whose heads were permuted has no fixed points, and no statistic that is
unchanged by relabelling B's heads has a null from relabelling alone; so the p-value is the exact
fixed-point test only. The two views are still matched separately (QK rows, OV rows) and their
agreement (groups both views send to the same B group, and how many moved) is reported in the
details as a description, with the p-value it would have if the two views' matchings were
independent under H0 (the assumption `weight-permutation` makes); it does not enter the p-value.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modeltrace.evidence.base import CompareContext, Evidence, EvidenceMethod
from modeltrace.evidence.weights_common import skip_reason
from modeltrace.stats.combine import P_FLOOR, fisher
from modeltrace.stats.nulls import fixed_point_tail, randomized_p
from modeltrace.weights.align import agreement, match_units
from modeltrace.weights.analysis import WeightAnalysis, analysis_for, record_layer_map

if TYPE_CHECKING:
    from modeltrace.model import Model

COORDS = 64  # residual coordinates the circuits are restricted to
HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
KV_KEYS = ("num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num")


def _config_int(cfg: dict[str, Any] | None, keys: tuple[str, ...]) -> int | None:
    for c in (cfg or {}, (cfg or {}).get("text_config") or {}):
        if isinstance(c, dict):
            for k in keys:
                v = c.get(k)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
    return None


def _gguf_heads(model: Model) -> tuple[int | None, int | None]:
    """Head counts from a GGUF file's own metadata (``<arch>.attention.head_count[_kv]``)."""
    if not model.weight_files or any(p.suffix != ".gguf" for p in model.weight_files):
        return None, None
    meta = model.source.metadata()
    n = next((v for k, v in meta.items() if k.endswith(".attention.head_count")), None)
    kv = next((v for k, v in meta.items() if k.endswith(".attention.head_count_kv")), None)
    ok = [v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in (n, kv)]
    return ok[0], ok[1]


def head_counts(ctx: CompareContext, side: str) -> tuple[int, int] | None:
    """(query heads, key-value heads) from that side's config (or GGUF metadata), else A's."""
    for model in ((ctx.b, ctx.a) if side == "b" else (ctx.a,)):
        n, kv = _config_int(model.config, HEAD_KEYS), _config_int(model.config, KV_KEYS)
        if n is None:
            n, kv = _gguf_heads(model)
        if n is not None:
            kv = kv or n
            return (n, kv) if n % kv == 0 else None
    return None


def circuits(q: np.ndarray, k: np.ndarray, v: np.ndarray, o: np.ndarray, n_heads: int, n_kv: int,
             cols: np.ndarray) -> np.ndarray | None:
    """One row per key-value group: its QK and OV circuits on residual coordinates `cols`, flattened."""
    d = q.shape[1]
    if q.shape[0] % n_heads or k.shape[0] % n_kv or k.shape != v.shape or o.shape[1] != q.shape[0] \
            or k.shape[1] != d or o.shape[0] != d:
        return None
    hd, kd = q.shape[0] // n_heads, k.shape[0] // n_kv
    if kd != hd:
        return None
    per = n_heads // n_kv
    qh = q[:, cols].reshape(n_heads, hd, len(cols)).astype(np.float64)
    kh = k[:, cols].reshape(n_kv, hd, len(cols)).astype(np.float64)
    vh = v[:, cols].reshape(n_kv, hd, len(cols)).astype(np.float64)
    oh = o[cols].reshape(len(cols), n_heads, hd).transpose(1, 0, 2).astype(np.float64)  # (heads, cols, hd)
    rows = []
    for g in range(n_kv):
        qk = sum(qh[h].T @ kh[g] for h in range(g * per, (g + 1) * per))
        ov = sum(oh[h] @ vh[g] for h in range(g * per, (g + 1) * per))
        rows.append(np.concatenate([np.ravel(qk), np.ravel(ov)]))
    return np.stack(rows)


class WeightHeadsMethod(EvidenceMethod):
    """Attention heads (key-value groups) of A that match their own index in B (exact test)."""

    name: ClassVar[str] = "weight-heads"
    summary: ClassVar[str] = "A's attention heads match B's heads at the same index (QK and OV circuits)"
    reference: ClassVar[str] = ("Zhu, Ahmed, Kuditipudi & Liang, Independence Tests for Language Models, ICML 2025; "
                                "Elhage et al., A Mathematical Framework for Transformer Circuits, 2021")
    stage: ClassVar[int] = 14

    def needs(self, ctx: CompareContext) -> str | None:
        return skip_reason(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        wa = analysis_for(ctx)
        record_layer_map(ctx, wa)
        ha, hb = head_counts(ctx, "a"), head_counts(ctx, "b")
        if ha is None or hb is None:
            return self._nothing("no attention head count in the config", wa)
        if ha != hb:
            return self._nothing(f"head counts differ (A {ha[0]}/{ha[1]}, B {hb[0]}/{hb[1]} query/key-value)", wa)
        layers: list[dict[str, Any]] = []
        for comp in wa.components() or ["language_model"]:
            for i, j in self._pairs(wa, comp):
                got = self._layer(ctx, wa, comp, i, j, ha)
                if got is not None:
                    layers.append(got)
        if not layers:
            return self._nothing("no layer with q, k, v and o projections of matching shapes on both sides", wa)
        p = fisher([x["p_value"] for x in layers])
        total, kept = sum(x["fixed"] for x in layers), sum(x["kept"] for x in layers)
        best = fisher([fixed_point_tail(x["kept"], x["kept"], x["n_b"]) if x["kept"] else 1.0 for x in layers])
        threshold = float(ctx.options.get("threshold", 1e-6))
        powered = best < threshold
        statement = (f"{total} of {kept} attention heads (key-value groups) of A matched to the same index in B "
                     f"over {len(layers)} layer pair(s); combined p = {p:.3g}")
        agree, both = sum(x["views_agree"] for x in layers), sum(x["views_kept"] for x in layers)
        moved = sum(x["moved"] for x in layers)
        if moved and agree:
            statement += f"; the QK and OV views agree on {agree} of {both} heads, {moved} of them moved (permuted)"
        details: dict[str, Any] = {"layers": layers, "combination": "Fisher across layers",
                                   "views": {"agree": agree, "kept": both, "moved": moved,
                                             "p_if_independent": fisher([x["views_agree_p_if_independent"]
                                                                         for x in layers]),
                                             "note": "descriptive: assumes the QK and OV matchings are independent "
                                                     "under H0 (not exact); not used in the p-value"},
                                   "heads": ha[0], "kv_heads": ha[1], "min_attainable_p": best,
                                   "residual": wa.residual().describe()}
        if not powered:
            statement += f" (too few heads to reach p < {threshold:g}: best attainable {best:.3g})"
            details["reason"] = "too few heads"
        return Evidence(method=self.name, status="ok", statement=statement, statistic=float(total),
                        p_value=max(p, P_FLOOR), powered=powered, details=details)

    @staticmethod
    def _pairs(wa: WeightAnalysis, comp: str) -> list[tuple[int, int]]:
        m = wa.matching
        la, lb = m.side_layers("a", comp), m.side_layers("b", comp)
        if wa.components():
            lmap = wa.layer_map(comp)
            out = []
            for j in lb:
                i = lmap.assignment.get(j)
                if i is None and j in la:
                    i = j
                if i is not None:
                    out.append((i, j))
            return out
        return [(i, i) for i in la if i in lb]

    @staticmethod
    def _layer(ctx: CompareContext, wa: WeightAnalysis, comp: str, i: int, j: int,
               heads: tuple[int, int]) -> dict[str, Any] | None:
        m = wa.matching
        pa = [m.piece("a", k, i, comp) for k in ("attn_q", "attn_k", "attn_v", "attn_o")]
        pb = [m.piece("b", k, j, comp) for k in ("attn_q", "attn_k", "attn_v", "attn_o")]
        if any(p is None for p in pa + pb):
            return None
        wa_ = [m.read_piece("a", p) for p in pa if p is not None]
        wb_ = [m.read_piece("b", p) for p in pb if p is not None]
        if any(x.ndim != 2 for x in wa_ + wb_) or [x.shape for x in wa_] != [x.shape for x in wb_]:
            return None
        res = wa.residual()
        if res.r is not None and wb_[0].shape[1] == res.r.shape[0]:
            wb_ = [res.to_a(x) for x in wb_[:3]] + [res.r @ wb_[3]]
        d = wa_[0].shape[1]
        rng = np.random.default_rng([ctx.seed, d, 23])
        cols = np.sort(rng.choice(d, size=min(COORDS, d), replace=False))
        xa = circuits(wa_[0], wa_[1], wa_[2], wa_[3], heads[0], heads[1], cols)
        xb = circuits(wb_[0], wb_[1], wb_[2], wb_[3], heads[0], heads[1], cols)
        if xa is None or xb is None or len(xa) < 2:
            return None
        n = len(xa)
        um = match_units(xa, xb, np.arange(n), n)
        f, kept = um.fixed_points()
        u = _uniform(ctx.seed, comp, i, j, xa, xb)
        half = xa.shape[1] // 2  # QK | OV
        m_qk = match_units(xa[:, :half], xb[:, :half], np.arange(n), n)
        m_ov = match_units(xa[:, half:], xb[:, half:], np.arange(n), n)
        agree, both = agreement(m_qk, m_ov)
        same = m_qk.kept & m_ov.kept & (m_qk.target == m_ov.target)
        return {"component": comp, "a_layer": i, "b_layer": j, "fixed": f, "kept": kept, "n_b": n,
                "p_value": randomized_p(f, kept, n, u),
                "views_agree": agree, "views_kept": both,
                "moved": int(np.count_nonzero(same & (m_qk.target != m_qk.sample))),
                "views_agree_p_if_independent": fixed_point_tail(agree, both, n) if both else 1.0}

    def _nothing(self, why: str, wa: WeightAnalysis) -> Evidence:
        return Evidence(method=self.name, status="ok", powered=False, p_value=1.0, statistic=0.0,
                        statement=f"nothing comparable: {why}",
                        details={"reason": f"nothing comparable: {why}", "matching": wa.matching.summary()})


def _uniform(seed: int, comp: str, i: int, j: int, xa: np.ndarray, xb: np.ndarray) -> float:
    """U for the randomized p-value: a hash of the seed, A's signatures and the sorted norms of B's
    (unchanged by relabelling B's heads, so independent of F under H0; see WeightAnalysis.uniform)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}|{comp}|{i}|{j}|heads".encode())
    h.update(np.ascontiguousarray(xa).tobytes())
    h.update(np.sort(np.linalg.norm(xb, axis=1)).tobytes())
    return (int.from_bytes(h.digest(), "little") >> 11) / float(1 << 53)
