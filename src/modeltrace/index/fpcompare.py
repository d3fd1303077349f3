"""Compare two fingerprints with the weight tests of `compare`, and return the same `CompareResult`.

`weight-identity` (exact, after Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language
Models", ICML 2025) on fingerprints. Both fingerprints keep, in each layer of n units, the units at
the same s indices (`idx_indices(n)`, seeded by n only). A's s units are matched into B's s stored
units by cosine (injective, as in `weights.align.match_units`); F = units that land on their own
index. Null hypothesis: A and B were trained from independent initializations by a procedure
equivariant to permuting hidden units. Then B equals in law B with its units relabelled by a uniform
permutation pi; the units B stores are B's units at pi^-1(S), and given which units they are, their
labels are a uniformly random bijection onto S. The content-based matching is fixed given the
contents, so F has exactly the law of the fixed points of a uniform permutation of s items matched
injectively: `stats.nulls.randomized_p(F, m, s, u)` is exactly uniform. Layers combine by Fisher.

`weight-permutation` (the two-view test of `evidence.weights_permutation`): the units of each layer
selected by content (largest basis norm: a unit permutation selects the same units) are matched
into B's selected units twice, by input rows and by output columns; K = units both views send to
the same B unit. Same assumption as the model test (the views' matchings are as if independent
under H0), with s = B's selected units as the null's n.

Sketch rows are in each model's own token basis (see `index.fingerprint`), so a rotated or permuted
residual stream needs no fitted alignment; when the two bases differ in tokens, both sides are
re-whitened on the tokens they share.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeltrace.compare import DEFAULT_THRESHOLD, CompareResult, decide
from modeltrace.evidence.base import Evidence, Transform
from modeltrace.index.fingerprint import MIN_BASIS_TOKENS, Fingerprint, LayerSketch, cholesky
from modeltrace.stats.combine import P_FLOOR, fisher
from modeltrace.stats.nulls import fixed_point_tail, randomized_p
from modeltrace.weights.align import UnitMatch, agreement, match_units
from modeltrace.weights.layers import LayerMap, layer_map

SOURCE_NOTE = "run on fingerprint sketches (index.fpcompare), not on the full weights"


@dataclass(frozen=True)
class _Rebase:
    """Maps sketch rows of one fingerprint's token basis into the basis shared with the other."""

    chol: np.ndarray | None  # L of the full basis (None: the identity map)
    cols: np.ndarray | None
    chol_sub: np.ndarray | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.chol is None or self.cols is None or self.chol_sub is None:
            return x
        raw = x.astype(np.float64) @ self.chol.T  # back to inner products with each token's embedding
        out: np.ndarray = np.linalg.solve(self.chol_sub, raw[:, self.cols].T).T.astype(np.float32)
        return out


def _chol(g: np.ndarray) -> np.ndarray | None:
    """The regularised Cholesky factor of a token Gram matrix (the fingerprint's own), or None."""
    return cholesky(g.astype(np.float64))


def shared_basis(a: Fingerprint, b: Fingerprint) -> tuple[_Rebase, _Rebase, int] | None:
    """Maps of both token bases onto the tokens they share (None when too few are shared)."""
    if a.basis is None or b.basis is None:
        return None
    if a.basis.tokens == b.basis.tokens:
        ident = _Rebase(None, None, None)
        return ident, ident, len(a.basis.tokens)
    pos_b = {t: i for i, t in enumerate(b.basis.tokens)}
    common = [(i, pos_b[t]) for i, t in enumerate(a.basis.tokens) if t in pos_b]
    if len(common) < MIN_BASIS_TOKENS:
        return None
    ca = np.array([i for i, _ in common], dtype=np.int64)
    cb = np.array([j for _, j in common], dtype=np.int64)
    out = []
    for fp, cols in ((a, ca), (b, cb)):
        assert fp.basis is not None
        full, sub = _chol(fp.basis.gram), _chol(fp.basis.gram[np.ix_(cols, cols)])
        if full is None or sub is None:
            return None
        out.append(_Rebase(full, cols, sub))
    return out[0], out[1], len(common)


class _Pair:
    """Both fingerprints' layers in a shared basis, with matchings cached."""

    def __init__(self, a: Fingerprint, b: Fingerprint) -> None:
        self.a, self.b = a, b
        self.shared = shared_basis(a, b)
        self._rows: dict[tuple[str, int, int, str], np.ndarray | None] = {}
        self._matches: dict[tuple[str, int, int, str], UnitMatch | None] = {}

    def rows(self, side: str, s: LayerSketch, view: str) -> np.ndarray | None:
        key = (side, s.layer, id(s), view)
        if key not in self._rows:
            x = {"idx": s.idx_in, "cidx": s.cidx_in, "in": s.sel_in, "out": s.sel_out}[view]
            if x is not None and s.basis == "tokens" and view != "cidx":
                if self.shared is None:
                    x = None
                else:
                    x = (self.shared[0] if side == "a" else self.shared[1])(x)
            self._rows[key] = x
        return self._rows[key]

    def comparable(self, sa: LayerSketch, sb: LayerSketch, view: str = "in") -> bool:
        """Layers compare when their residual widths agree (as in `compare`) and their bases can be matched."""
        if sa.width != sb.width:
            return False
        if view == "cidx":
            return sa.n == sb.n
        if sa.basis != sb.basis:
            return False
        return sa.basis != "tokens" or self.shared is not None

    def identity_view(self, sa: LayerSketch, sb: LayerSketch) -> str | None:
        """The view the identity test uses: the basis sketches, else the raw-coordinate ones."""
        if sa.n != sb.n:
            return None
        if self.comparable(sa, sb, "idx"):
            return "idx"
        return "cidx" if self.comparable(sa, sb, "cidx") else None

    def any_comparable(self, sa: LayerSketch, sb: LayerSketch) -> bool:
        return self.comparable(sa, sb) or self.identity_view(sa, sb) is not None

    def match(self, sa: LayerSketch, sb: LayerSketch, view: str) -> UnitMatch | None:
        key = (sa.component, sa.layer, sb.layer, view)
        if key not in self._matches:
            um = None
            if self.comparable(sa, sb, view) and (view not in ("idx", "cidx") or sa.n == sb.n):
                xa, yb = self.rows("a", sa, view), self.rows("b", sb, view)
                if xa is not None and yb is not None and xa.shape[1] == yb.shape[1] and len(xa) and len(yb):
                    um = match_units(xa, yb, np.arange(len(xa)), len(xa))
            self._matches[key] = um
        return self._matches[key]


def _uniform(seed: int, sa: LayerSketch, sb: LayerSketch, xa: np.ndarray, yb: np.ndarray, salt: int) -> float:
    """U for a randomized p-value: a hash of A's rows and the sorted norms of B's (label-invariant)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{seed}|{sa.component}|{sa.layer}|{sb.layer}|{salt}".encode())
    h.update(np.ascontiguousarray(xa, dtype=np.float32).tobytes())
    h.update(np.sort(np.linalg.norm(yb.astype(np.float64), axis=1)).tobytes())
    return (int.from_bytes(h.digest(), "little") >> 11) / float(1 << 53)


def _min_attainable(m: int, n: int) -> float:
    return fixed_point_tail(m, m, n) if 0 < m <= n else 1.0


def _combine(method: str, layers: list[dict[str, Any]], stat: str, what: str, threshold: float,
             details: dict[str, Any]) -> Evidence:
    p = fisher([float(x["p_value"]) for x in layers])
    best = fisher([_min_attainable(int(x["kept"]), int(x["n"])) for x in layers])
    total = int(sum(int(x[stat]) for x in layers))
    kept = int(sum(int(x["kept"]) for x in layers))
    powered = best < threshold
    statement = f"{total} of {kept} {what} over {len(layers)} layer pair(s); combined p = {p:.3g}"
    if not powered:
        statement += f" (too few units to reach p < {threshold:g}: best attainable {best:.3g})"
    return Evidence(method=method, status="ok", statement=statement, statistic=float(total),
                    p_value=max(p, P_FLOOR), powered=powered,
                    details={"layers": layers, "combination": "fisher", "min_attainable_p": best,
                             "source": SOURCE_NOTE, **details})


VIEW_NAMES = {"idx": "token basis", "cidx": "raw coordinates"}


def _rel_dist(xa: np.ndarray, yb: np.ndarray) -> list[float]:
    """||a - b|| / ||a|| per matched unit: how far B's unit moved from A's (0 for a copy)."""
    num = np.linalg.norm(xa.astype(np.float64) - yb.astype(np.float64), axis=1)
    den = np.maximum(np.linalg.norm(xa.astype(np.float64), axis=1), 1e-30)
    out: list[float] = (num / den).tolist()
    return out


def _rms(x: list[float]) -> float | None:
    """Root mean square: squared distances add up along a chain of independent changes."""
    return round(float(np.sqrt(np.mean(np.square(x)))), 6) if x else None


def _identity(ident: dict[str, list[dict[str, Any]]], views: list[str], threshold: float,
              note: dict[str, Any]) -> Evidence:
    """The identity test in each view the two fingerprints share; the best view, Bonferroni over views.

    The token basis is invariant to a rotated residual stream but is itself changed when a model's
    embeddings change a lot (a merge with another model); raw coordinates are the reverse. Each
    view's Fisher combination is a valid p-value; the smallest times the number of views is too.
    """
    what = "sampled MLP units of A matched to the same index in B"
    evs = {v: _combine("weight-identity", ident[v], "fixed", what + f" ({VIEW_NAMES[v]})", threshold, note)
           for v in views}
    best = min(views, key=lambda v: float(evs[v].p_value or 1.0))
    ev = evs[best]
    k = len(views)
    p = min(1.0, (ev.p_value or 1.0) * k)
    floor_best = min(float(evs[v].details["min_attainable_p"]) for v in views) * k
    statement = ev.statement.rsplit("; combined p", 1)[0] + f"; combined p = {p:.3g}" + \
        (f" (best of {k} views, Bonferroni)" if k > 1 else "")
    powered = floor_best < threshold
    if not powered:
        statement += f" (too few units to reach p < {threshold:g})"
    details = {**ev.details, "view": VIEW_NAMES[best], "view_key": best,
               "views": {VIEW_NAMES[v]: evs[v].p_value for v in views},
               "layers": [x for v in views for x in ident[v]]}
    return Evidence(method="weight-identity", status="ok", statement=statement, statistic=ev.statistic,
                    p_value=max(p, P_FLOOR), powered=powered, details=details)


def _confident_share(pair: _Pair, sa: list[LayerSketch], sb: list[LayerSketch], view: str) -> np.ndarray:
    """Share of A's units whose best match in B's layer is confident, for every layer pair at once.

    The score of `weights.layers` (best cosine >= 0.5 and >= 1.25 x the runner-up), computed as one
    batched product over all layer pairs whose stored rows have the same shape (0 elsewhere).
    """
    out = np.zeros((len(sa), len(sb)))
    ra = [pair.rows("a", s, view) for s in sa]
    rb = [pair.rows("b", s, view) for s in sb]
    shapes = {x.shape for x in ra + rb if x is not None}
    for shape in shapes:
        ia = [k for k, x in enumerate(ra) if x is not None and x.shape[1] == shape[1]]
        ib = [k for k, y in enumerate(rb) if y is not None and y.shape[1] == shape[1]]
        ia = [k for k in ia if ra[k] is not None and ra[k].shape == shape]  # type: ignore[union-attr]
        if not ia or not ib:
            continue
        xa = np.stack([_unit(ra[k]) for k in ia])  # type: ignore[arg-type]
        for k in ib:
            y = rb[k]
            assert y is not None
            if len(y) < 2:
                continue
            ok = [q for q in ia if pair.comparable(sa[q], sb[k], view)
                  and (view not in ("idx", "cidx") or sa[q].n == sb[k].n)]
            if not ok:
                continue
            sims = xa[[ia.index(q) for q in ok]] @ _unit(y).T  # (layers, units of A, units of B)
            top2 = -np.partition(-sims, 1, axis=2)[:, :, :2]
            conf = (top2[:, :, 0] >= 0.5) & (top2[:, :, 0] >= 1.25 * np.maximum(top2[:, :, 1], 1e-12))
            out[ok, k] = np.maximum(out[ok, k], conf.mean(axis=1))
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-30)
    return out.astype(np.float32)


def _layer_maps(pair: _Pair) -> dict[str, tuple[LayerMap, dict[int, LayerSketch], dict[int, LayerSketch]]]:
    out = {}
    for comp in sorted(set(pair.a.components()) & set(pair.b.components())):
        la = {s.layer: s for s in pair.a.layers if s.component == comp}
        lb = {s.layer: s for s in pair.b.layers if s.component == comp}
        oa, ob = sorted(la), sorted(lb)
        share = np.zeros((len(oa), len(ob)))
        for view in ("idx", "in", "cidx"):
            share = np.maximum(share, _confident_share(pair, [la[i] for i in oa], [lb[j] for j in ob], view))

        def score(i: int, j: int, full: bool, share: np.ndarray = share, oa: list[int] = oa,
                  ob: list[int] = ob) -> float:
            return float(share[oa.index(i), ob.index(j)])

        out[comp] = (layer_map(oa, ob, score), la, lb)
    return out


def _pairs(lmap: LayerMap, la: dict[int, LayerSketch], lb: dict[int, LayerSketch],
           pair: _Pair) -> list[tuple[int, int]]:
    out = []
    for j in lmap.b_layers:
        i = lmap.assignment.get(j)
        if i is None and j in la:
            i = j
        if i is not None and pair.any_comparable(la[i], lb[j]):
            out.append((i, j))
    return out


_Plan = dict[str, tuple[LayerMap | None, dict[int, LayerSketch], dict[int, LayerSketch], list[tuple[int, int]]]]


def _screen_pairs(pair: _Pair, layers: int) -> _Plan:
    """Up to `layers` evenly spaced same-index layer pairs per component (no layer map)."""
    out: _Plan = {}
    for comp in sorted(set(pair.a.components()) & set(pair.b.components())):
        la = {s.layer: s for s in pair.a.layers if s.component == comp}
        lb = {s.layer: s for s in pair.b.layers if s.component == comp}
        common = sorted(set(la) & set(lb))
        if len(common) > layers:
            common = [common[int(k)] for k in np.linspace(0, len(common) - 1, layers).round().astype(int)]
        out[comp] = (None, la, lb, [(i, i) for i in common if pair.any_comparable(la[i], lb[i])])
    return out


def compare_fingerprints(a: Fingerprint, b: Fingerprint, *, threshold: float = DEFAULT_THRESHOLD,
                         seed: int = 0, screen: int | None = None) -> CompareResult:
    """Is B derived from A, from their fingerprints alone? The same verdict rule as `compare`.

    `screen`: test only that many evenly spaced same-index layer pairs per component and build no
    layer map (the search's cheap first look; its p-values are valid, with less power for models
    whose layers moved).
    """
    t0 = time.perf_counter()
    pair = _Pair(a, b)
    plan: _Plan
    if screen is not None:
        plan = _screen_pairs(pair, screen)
        maps: dict[str, tuple[LayerMap, dict[int, LayerSketch], dict[int, LayerSketch]]] = {}
    else:
        maps = _layer_maps(pair)
        plan = {comp: (lmap, la, lb, _pairs(lmap, la, lb, pair)) for comp, (lmap, la, lb) in maps.items()}
    ident: dict[str, list[dict[str, Any]]] = {"idx": [], "cidx": []}
    id_cos: dict[str, list[float]] = {"idx": [], "cidx": []}
    id_dist: dict[str, list[float]] = {"idx": [], "cidx": []}
    perm_dist: list[float] = []
    perm: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    perm_cos: list[float] = []
    moved = 0
    confident = 0
    for comp, (lmap, la, lb, todo) in plan.items():
        if lmap is not None:
            layer_rows.extend(lmap.entries(comp))
        for i, j in todo:
            sa, sb = la[i], lb[j]
            for view in ("idx", "cidx"):
                um = pair.match(sa, sb, view) if sa.n == sb.n else None
                if um is None:
                    continue
                k, m = um.fixed_points()
                xa, yb = pair.rows("a", sa, view), pair.rows("b", sb, view)
                assert xa is not None and yb is not None
                u = _uniform(seed, sa, sb, xa, yb, 1 if view == "idx" else 3)
                n = len(yb)
                ident[view].append({"component": comp, "a_layer": i, "b_layer": j, "fixed": k, "kept": m, "n": n,
                                    "n_a": sa.n, "n_b": sb.n, "view": VIEW_NAMES[view],
                                    "p_value": randomized_p(k, m, n, u)})
                hit = um.kept & (um.target == um.sample)
                if np.any(hit):
                    id_cos[view].append(float(np.mean(um.best[hit])))
                    id_dist[view].extend(_rel_dist(xa[hit], yb[um.target[hit]]))
            m1, m2 = pair.match(sa, sb, "in"), pair.match(sa, sb, "out")
            if m1 is not None and m2 is not None:
                k, m = agreement(m1, m2)
                xa, yb = pair.rows("a", sa, "in"), pair.rows("b", sb, "in")
                assert xa is not None and yb is not None
                u = _uniform(seed, sa, sb, xa, yb, 2)
                conf = m1.kept & m2.kept & (m1.target == m2.target)
                if np.any(conf):
                    perm_cos.append(float(np.mean(m1.best[conf])))
                    perm_dist.extend(_rel_dist(xa[conf], yb[m1.target[conf]]))
                n_moved = int(np.count_nonzero(conf & (sb.sel[np.maximum(m1.target, 0)] != sa.sel[m1.sample])))
                moved += n_moved
                confident += int(np.count_nonzero(conf))
                perm.append({"component": comp, "a_layer": i, "b_layer": j, "agree": k, "kept": m,
                             "n": m1.n_b, "moved": n_moved, "p_value": randomized_p(k, m, m1.n_b, u)})
    basis_note = {"shared_basis_tokens": pair.shared[2] if pair.shared else 0}
    evidence: list[Evidence] = []
    views = [v for v in ("idx", "cidx") if ident[v]]
    if views:
        evidence.append(_identity(ident, views, threshold, basis_note))
        key = str(evidence[-1].details["view_key"])
        evidence[-1].details["rms_relative_distance"] = _rms(id_dist[key])
        evidence[-1].details["distances"] = {VIEW_NAMES[v]: _rms(id_dist[v]) for v in views}
    else:
        evidence.append(Evidence.skipped("weight-identity", "no layer pair with the same unit count and a "
                                         "shared basis in the two fingerprints"))
    if perm:
        evidence.append(_combine("weight-permutation", perm, "agree", "selected MLP units on which the input-row "
                                 "and output-column matchings agree", threshold, basis_note))
        evidence[-1].details["rms_relative_distance"] = _rms(perm_dist)
    else:
        evidence.append(Evidence.skipped("weight-permutation", "no layer pair with both views and a shared basis "
                                         "in the two fingerprints"))
    artifacts, transforms = _artifacts(a, b)
    evidence.append(artifacts)
    # no positive controls from sketches alone: a fingerprint comparison says derived or inconclusive,
    # never independent (compare the models themselves for that)
    verdict, p, reason = decide(evidence, threshold, None)
    if verdict == "derived" and screen is None:
        identity_rejects = evidence[0].p_value is not None and evidence[0].p_value < threshold
        chosen = str(evidence[0].details.get("view_key", "idx"))
        transforms.extend(_transforms(maps, id_cos[chosen] if identity_rejects else perm_cos, moved, confident, a, b))
        by_view = evidence[0].details.get("views") or {}
        p_basis, p_raw = by_view.get(VIEW_NAMES["idx"]), by_view.get(VIEW_NAMES["cidx"])
        if p_basis is not None and p_raw is not None and p_basis < threshold <= p_raw:
            transforms.append(Transform("rotate", "B's residual stream is A's rotated or permuted: units agree in "
                                        "the token basis, not on raw coordinates",
                                        {"target": "residual", "p_token_basis": p_basis, "p_raw_coordinates": p_raw}))
    return CompareResult(
        a=a.ref, b=b.ref, verdict=verdict, p_value=p, threshold=threshold, reason=reason, evidence=evidence,
        transforms=transforms, layer_map=layer_rows, rename_map={}, seed=seed,
        inputs={"a": {"ref": a.ref, "fingerprint_sha256": a.sha256}, "b": {"ref": b.ref, "fingerprint_sha256": b.sha256}},
        elapsed_s=time.perf_counter() - t0)


def jaccard(a: Fingerprint, b: Fingerprint) -> float | None:
    """Estimated Jaccard overlap of the two vocabularies from their bottom-k sketches."""
    ha, hb = a.meta.get("_minhash"), b.meta.get("_minhash")
    if ha is None or hb is None or not len(ha) or not len(hb):
        return None
    k = min(len(ha), len(hb))
    union = np.unique(np.concatenate([ha, hb]))[:k]
    both = np.intersect1d(np.intersect1d(ha, hb), union)
    return float(len(both)) / float(len(union))


def _artifacts(a: Fingerprint, b: Fingerprint) -> tuple[Evidence, list[Transform]]:
    """Descriptive artifact comparison (no p-value): file, config, tokenizer and buffer hashes."""
    ma, mb = a.meta, b.meta
    fa, fb = dict(ma.get("files") or {}), dict(mb.get("files") or {})
    same_files = sorted(set(fa.values()) & set(fb.values()))
    ta, tb = dict(ma.get("tokenizer") or {}), dict(mb.get("tokenizer") or {})
    ca, cb = dict(ma.get("config") or {}), dict(mb.get("config") or {})
    bufa, bufb = dict(ma.get("fixed_buffers") or {}), dict(mb.get("fixed_buffers") or {})
    jac = jaccard(a, b)
    details: dict[str, Any] = {
        "identical_weight_files": len(same_files),
        "same_tokenizer_vocab": bool(ta.get("vocab_sha256")) and ta.get("vocab_sha256") == tb.get("vocab_sha256"),
        "vocab_jaccard_estimate": None if jac is None else round(jac, 4),
        "same_config": bool(ca.get("sha256")) and ca.get("sha256") == cb.get("sha256"),
        "config_fields_differ": sorted(k for k in set(ca.get("fields", {})) | set(cb.get("fields", {}))
                                       if ca.get("fields", {}).get(k) != cb.get("fields", {}).get(k)),
        "same_tensor_names": ma.get("tensor_names_sha256") == mb.get("tensor_names_sha256"),
        "fixed_buffers_identical": sum(1 for k, v in bufa.items() if bufb.get(k) == v),
        "fixed_buffers_note": "bit-identical closed forms (rotary tables, position ids) are never evidence",
    }
    parts = []
    if same_files:
        parts.append(f"{len(same_files)} identical weight file(s)")
    parts.append("same tokenizer vocabulary" if details["same_tokenizer_vocab"]
                 else f"vocabulary overlap ~{jac:.2f}" if jac is not None else "no tokenizer on one side")
    parts.append("same config" if details["same_config"] else
                 f"config differs in {len(details['config_fields_differ'])} field(s)")
    transforms = []
    if same_files and len(same_files) == len(fa) == len(fb):
        transforms.append(Transform("identical", "the weight files are byte-identical", {"files": len(same_files)}))
    ev = Evidence(method="fingerprint-artifacts", status="ok", kind="artifacts", powered=False,
                  statement="; ".join(parts) + " (descriptive)", details=details)
    return ev, transforms


def _transforms(maps: dict[str, tuple[LayerMap, dict[int, LayerSketch], dict[int, LayerSketch]]],
                cosines: list[float], moved: int, confident: int, a: Fingerprint, b: Fingerprint) -> list[Transform]:
    out: list[Transform] = []
    for comp, (lmap, la, lb) in maps.items():
        dropped = lmap.dropped()
        sources = [i for i in lmap.assignment.values() if i is not None]
        if dropped and len(lb) < len(la):
            out.append(Transform("layer-drop", f"{comp}: A's layer(s) {dropped} have no counterpart in B",
                                 {"component": comp, "dropped": dropped}))
        dup = sorted({i for i in sources if sources.count(i) > 1})
        if dup:
            out.append(Transform("layer-duplicate", f"{comp}: A's layer(s) {dup} appear more than once in B",
                                 {"component": comp, "duplicated": dup}))
        widths = {(la[i].n, lb[j].n) for j, i in lmap.assignment.items() if i is not None and la[i].n != lb[j].n}
        if widths:
            out.append(Transform("prune" if all(nb < na for na, nb in widths) else "upcycle",
                                 f"{comp}: MLP widths differ ({sorted(widths)[:3]})", {"widths": sorted(widths)}))
    if moved:
        out.append(Transform("permute", f"MLP units permuted: {moved} of {confident} selected units on which both "
                             "views agree moved", {"target": "mlp_units", "moved": moved, "confident": confident}))
    if cosines:
        c = float(np.mean(cosines))
        kind = "identical" if c > 0.995 else ("noise" if c > 0.95 else "finetune")
        if not any(t.kind == "identical" for t in out):
            out.append(Transform(kind, f"matched units' mean cosine {c:.4f} (sketch precision about 0.01)",
                                 {"mean_cosine": round(c, 5)}))
    jac = jaccard(a, b)
    ta, tb = a.meta.get("tokenizer") or {}, b.meta.get("tokenizer") or {}
    if jac is not None and ta.get("strings_sha256") != tb.get("strings_sha256"):
        out.append(Transform("vocab-change", f"vocabularies differ (estimated overlap {jac:.2f})",
                             {"jaccard": round(jac, 4), "size_a": ta.get("size"), "size_b": tb.get("size")}))
    return out


def diagnosis(result: CompareResult) -> str:
    """One line: how B relates to A, from the transforms found."""
    if result.verdict != "derived":
        return result.verdict
    kinds = [t.kind for t in result.transforms]
    return ", ".join(dict.fromkeys(kinds)) if kinds else "derived"


def compare_if_fingerprint(ref_a: str, ref_b: str, *, threshold: float = DEFAULT_THRESHOLD,
                           seed: int = 0) -> CompareResult | None:
    """For `compare A B`: when either is a fingerprint file, compare fingerprints (a model side is
    fingerprinted on the fly); None when both are models, so the caller runs the full compare."""
    from modeltrace.index.fingerprint import fingerprint
    from modeltrace.index.format import is_fingerprint_file

    if not (is_fingerprint_file(ref_a) or is_fingerprint_file(ref_b)):
        return None
    return compare_fingerprints(fingerprint(ref_a), fingerprint(ref_b), threshold=threshold, seed=seed)
