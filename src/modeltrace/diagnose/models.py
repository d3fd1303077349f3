"""Diagnose two whole models: run the per-tensor estimators over the matched tensors and name the transforms.

Reads one tensor pair at a time (memory bounded by the largest tensor; embeddings by row chunks)
through the weight matching in `modeltrace.weights` (renames, transposes and fused projections
undone, layers re-paired by the layer map when B's stack was edited). Within a tensor, units
(rows; columns of output projections) are brought to A's residual coordinates and, when B's units
were permuted, matched back to A's by cosine; every statistic then runs on at most `MAX_ROWS`
sampled units, and singular values on the first `MAX_SPECTRA` changed matrices and every fourth after.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from modeltrace.diagnose._common import rel_rms
from modeltrace.diagnose.cast import CastDiagnosis, detect_cast
from modeltrace.diagnose.components import (
    ComponentDiagnosis,
    ComponentEntry,
    component_of,
    diagnose_components,
)
from modeltrace.diagnose.finetune import FinetuneDiagnosis, TensorChange, diagnose_finetune, tensor_change
from modeltrace.diagnose.layers import LayerDiagnosis, diagnose_layers
from modeltrace.diagnose.merge import MergeAccumulator, MergeFit, ShareAccumulator, ShareExplained
from modeltrace.diagnose.noise import NoiseDiagnosis, TensorNoise, diagnose_noise, tensor_noise
from modeltrace.diagnose.quantize import QuantDiagnosis, detect_quantization
from modeltrace.diagnose.upcycle import UpcycleDiagnosis, diagnose_upcycle
from modeltrace.diagnose.vocab import new_rows_init, rows_kept_share
from modeltrace.evidence.base import Transform
from modeltrace.roles import assign_roles
from modeltrace.weights.align import ResidualAlignment, unit_rows
from modeltrace.weights.analysis import WeightAnalysis, gather_rows
from modeltrace.weights.layers import MIN_SCORE
from modeltrace.weights.match import VOCAB_KINDS, Matching, Piece

if TYPE_CHECKING:
    from modeltrace.model import Model

MAX_ROWS = 1024  # units sampled per tensor
MAX_SPECTRA = 64  # changed matrices whose singular values are all computed (then every fourth one)
SEARCH_COLS = 256  # columns used to find a permuted unit's partner
ALIGNED_COS = 0.9  # units already this similar at the same index are taken as not permuted
PROBE_UNITS = 64  # units tried first to see whether a permutation explains B better
VOCAB_ROWS = 4096  # embedding rows sampled for vocabulary checks
MAX_UPCYCLE_LAYERS = 2
MAX_EXPERTS = 8
# projections that read the residual stream, and the norm whose gain a rotation folds into them
GAIN_OF = {"attn_q": "attn_norm", "attn_k": "attn_norm", "attn_v": "attn_norm", "attn_qkv": "attn_norm",
           "mlp_gate": "mlp_norm", "mlp_up": "mlp_norm", "mlp_gate_up": "mlp_norm", "lm_head": "final_norm"}
FLOAT_EQUAL = 1e-5  # relative RMS difference left by float round-off of a rotation
MAX_QUANT_ERROR = 0.5  # a quantization error above this share of A's RMS is no quantization of A
MERGE_SLOPE = 0.85  # B regressed on A with a slope below this (and some R^2) reads as a merge, not a fine-tune


@dataclass(frozen=True)
class Item:
    """One tensor of A and the tensor of B made from it (B's layer number may differ)."""

    key: str
    component: str
    layer_a: int | None
    layer_b: int | None
    kind: str
    param: str
    a: Piece
    b: Piece


@dataclass(frozen=True)
class PairStats:
    """Per-tensor findings kept after the tensors are dropped."""

    item: Item
    numel: int
    cast: CastDiagnosis
    quant: QuantDiagnosis | None
    declared_quant: str | None
    noise: TensorNoise | None
    change: TensorChange | None
    permuted: bool
    aligned_equal: bool = False  # equal to A (or a cast of it) once units or residual were aligned
    folded_gain: bool = False  # a norm gain B folded into the projections after it

    @property
    def informative(self) -> bool:
        return self.cast.kind != "uninformative" and self.numel >= 64


@dataclass
class ModelDiagnosis:
    """Everything the diagnosis found for one model pair, and the transforms it names."""

    pairs: list[PairStats]
    layers: dict[str, LayerDiagnosis] = field(default_factory=dict)
    noise: NoiseDiagnosis | None = None
    finetune: FinetuneDiagnosis | None = None
    merge: MergeFit | None = None
    share: ShareExplained | None = None
    vocab: dict[str, Any] | None = None
    upcycle: dict[str, UpcycleDiagnosis] = field(default_factory=dict)
    components: ComponentDiagnosis | None = None
    transforms: list[Transform] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """A JSON-ready summary (per-tensor rows capped at 200)."""
        rows = []
        for s in self.pairs[:200]:
            rows.append({
                "tensor": s.item.b.name, "a": s.item.a.name, "layer": s.item.layer_b, "kind": s.item.kind,
                "same": s.cast.kind, **({"cast": s.cast.dtype} if s.cast.kind == "cast" else {}),
                **({"quant": s.quant.scheme} if s.quant is not None and s.quant.scheme else {}),
                **({"sigma_rel": _r(s.noise.sigma_rel), "noise_like": s.noise.looks_noise}
                   if s.noise is not None and math.isfinite(s.noise.sigma_rel) else {}),
                **({"rel_change": _r(s.change.rel_change), "corr": _r(s.change.corr)} if s.change is not None else {}),
                **({"rank": s.change.rank.rank} if s.change is not None and s.change.rank is not None else {}),
                **({"permuted": True} if s.permuted else {}),
                **({"delta_hist": {"half_width_rel": s.noise.delta_hist[0], "counts": list(s.noise.delta_hist[1])}}
                   if s.noise is not None and s.noise.delta_hist is not None else {}),
            })
        out: dict[str, Any] = {"tensors": len(self.pairs), "per_tensor": rows, "notes": self.notes}
        if self.noise is not None:
            out["noise"] = {"detected": self.noise.detected, "sigma_rel": _r(self.noise.sigma_rel),
                            "sigma_abs": _r(self.noise.sigma_abs), "scale": self.noise.scale,
                            "reason": self.noise.reason}
        if self.finetune is not None:
            out["finetune"] = {"finetuned": self.finetune.finetuned, "rel_change": _r(self.finetune.rel_change),
                               "median_corr": _r(self.finetune.median_corr), "lora_rank": self.finetune.lora_rank,
                               "reason": self.finetune.reason}
        if self.share is not None:
            out["share_explained"] = {"r2": _r(self.share.r2), "slope": _r(self.share.slope)}
        if self.merge is not None:
            out["merge"] = {"alpha": _r(self.merge.alpha), "beta": _r(self.merge.beta), "r2": _r(self.merge.r2),
                            "method": self.merge.method, "slerp_t": _r(self.merge.slerp_t)}
        if self.layers:
            out["layers"] = {c: {"mapping": list(d.mapping), "reason": d.reason} for c, d in self.layers.items()}
        if self.vocab is not None:
            out["vocab"] = self.vocab
        if self.upcycle:
            out["upcycle"] = {k: v.reason for k, v in self.upcycle.items()}
        if self.components is not None:
            out["components"] = {c.component: {"status": c.status, "tensors": c.n_tensors, "matched": c.n_matched,
                                               "median_corr": _r(c.median_similarity)}
                                 for c in self.components.components}
        return out


def _r(x: float | None, nd: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{nd}g}")


# --- pairing ---------------------------------------------------------------------------------

def layer_diagnoses(wa: WeightAnalysis) -> dict[str, tuple[LayerDiagnosis, tuple[int, ...], tuple[int, ...]]]:
    """Per component with a computed layer map: the diagnosis, and A's and B's layer numbers."""
    out = {}
    for comp in wa.components():
        lm = wa.layer_map(comp)
        if not lm.a_layers or not lm.b_layers:
            continue
        scores = np.where(np.isnan(lm.scores), -np.inf, lm.scores)
        if not np.any(np.isfinite(scores)):
            continue
        out[comp] = (diagnose_layers(scores, threshold=MIN_SCORE), lm.a_layers, lm.b_layers)
    return out


def plan_items(m: Matching, remap: dict[str, dict[int, int]]) -> list[Item]:
    """The tensor pairs to diagnose: the matching's pairs, re-paired by layer where B's stack was edited."""
    items = []
    for p in m.pairs:
        if p.layer is not None and p.component in remap:
            continue
        items.append(Item(p.key, p.component, p.layer, p.layer, p.kind, p.param, Piece(p.a, p.a_rows, p.a_transpose),
                          Piece(p.b, p.b_rows, p.b_transpose)))
    for comp, assign in remap.items():
        for j, i in sorted(assign.items()):
            for (c, layer, kind, param), pa in m.view_a.items():
                if c != comp or layer != i:
                    continue
                pb = m.view_b.get((comp, j, kind, param))
                if pb is not None:
                    items.append(Item(f"{comp}.{j}<-{i}.{kind}.{param}", comp, i, j, kind, param, pa, pb))
    return items


# --- alignment -------------------------------------------------------------------------------

def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.where(n > 0, n, 1.0)
    return out


def align_units(a: np.ndarray, b: np.ndarray, kind: str, residual: ResidualAlignment | None,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Sampled unit rows of A and B's rows for the same units (permutation undone); None if incomparable.

    B's rows are taken to A's residual coordinates only where needed (the sampled rows, and the
    sampled columns for the search), so a residual rotation costs no full-matrix product."""
    if a.ndim < 2:
        return (a, b, False) if a.shape == b.shape else None
    xa = unit_rows(a, kind)
    yb = unit_rows(b, kind)
    rot = residual.r if residual is not None and residual.r is not None and yb.shape[1] == residual.r.shape[0] \
        else None

    def rows_b(idx: np.ndarray) -> np.ndarray:
        y: np.ndarray = yb[idx] if rot is None else yb[idx] @ rot.T
        return y

    if xa.shape[1] != yb.shape[1]:
        return None
    n = xa.shape[0]
    s = np.arange(n) if n <= MAX_ROWS else np.sort(rng.choice(n, MAX_ROWS, replace=False))
    cols = np.arange(xa.shape[1]) if xa.shape[1] <= SEARCH_COLS else np.sort(
        rng.choice(xa.shape[1], SEARCH_COLS, replace=False))
    same = yb.shape[0] == n
    yb_s = rows_b(s) if same else None
    ident = np.sum(_normalize(xa[s]) * _normalize(yb_s), axis=1) if yb_s is not None else None
    if yb_s is not None and ident is not None and (float(np.median(ident)) >= ALIGNED_COS or n < 8):
        return xa[s], yb_s, False
    # does a permutation explain B better? decided on a few units, then done for all sampled ones
    step = max(1, len(s) // PROBE_UNITS)
    yn = _normalize(yb[:, cols] if rot is None else yb @ rot.T[:, cols])
    probe_best = (_normalize(xa[s[::step]][:, cols]) @ yn.T).max(axis=1)
    ident_probe = float(np.median(ident[::step])) if ident is not None else 0.0
    if float(np.median(probe_best)) < max(0.5, ident_probe + 0.1):
        return (xa[s], yb_s, False) if yb_s is not None else None
    best = np.argmax(_normalize(xa[s][:, cols]) @ yn.T, axis=1)
    return xa[s], rows_b(best), bool(np.any(best != s))


def _vocab_rows(wa: WeightAnalysis, item: Item, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Sampled embedding rows of the same tokens in A and B (read in chunks)."""
    voc = wa.vocab()
    if voc is None or len(voc.rows_a) == 0:
        return None
    k = len(voc.rows_a)
    pick = np.sort(np.random.default_rng([seed, 17]).choice(k, size=min(k, VOCAB_ROWS), replace=False))
    ra, rb = voc.rows_a[pick], voc.rows_b[pick]
    order_b = np.argsort(rb)
    ea = gather_rows(wa.matching, "a", item.a, ra)
    eb_sorted = gather_rows(wa.matching, "b", item.b, rb[order_b])
    eb = np.empty_like(eb_sorted)
    eb[order_b] = eb_sorted
    return ea, eb


# --- the run ---------------------------------------------------------------------------------

class Diagnoser:
    """Runs the per-tensor estimators over a matching and turns the results into transforms."""

    def __init__(self, wa: WeightAnalysis, *, seed: int = 0, other: Model | None = None,
                 other_matching: Matching | None = None, max_spectra: int = MAX_SPECTRA) -> None:
        self.wa = wa
        self.m = wa.matching
        self.seed = seed
        self.other = other
        self.other_matching = other_matching
        self.max_spectra = max_spectra
        self._spectra_done = 0

    def run(self) -> ModelDiagnosis:
        layer_diags = {}
        partial_maps = []
        for comp, entry in layer_diagnoses(self.wa).items():
            _, la, lb = entry
            if tuple(self.m.side_layers("a", comp)) == la and tuple(self.m.side_layers("b", comp)) == lb:
                layer_diags[comp] = entry
            else:
                partial_maps.append(comp)
        remap: dict[str, dict[int, int]] = {}
        for comp, (d, la, lb) in layer_diags.items():
            assign = {lb[j]: la[i] for j, i in enumerate(d.mapping) if i is not None}
            if assign and (any(i != j for j, i in assign.items()) or la != lb):
                remap[comp] = assign
        items = plan_items(self.m, remap)
        b_roles = assign_roles(list(self.m.b_source.infos()))
        a_roles = assign_roles(list(self.m.a_source.infos()))
        # an expert of B paired with A's dense MLP is judged by the upcycling check, not tensor by tensor
        items = [it for it in items if not (getattr(b_roles.get(it.b.name), "expert", None) is not None
                                            and getattr(a_roles.get(it.a.name), "expert", None) is None)]
        res = self.wa.residual()
        emb_comp = (self.wa.embed_pieces() or (None, None, None))[2]
        other_pieces = self._other_pieces()
        merge_acc = MergeAccumulator(self.seed) if other_pieces is not None else None
        share = ShareAccumulator(self.seed)
        self._spectra_done = 0
        stats: list[PairStats] = []
        for n_item, item in enumerate(items):
            st = self._one(item, n_item, res if item.component == emb_comp else None, share, merge_acc,
                           other_pieces)
            if st is not None:
                stats.append(st)
        out = ModelDiagnosis(stats)
        out.layers = {c: d for c, (d, _, _) in layer_diags.items()}
        for comp in partial_maps:
            out.notes.append(f"{comp}: the layer map covers only layers with a dense MLP on both sides; "
                             "layer edits not judged")
        for comp, (d, la, lb) in layer_diags.items():
            self._layer_transforms(out, comp, d, la, lb)
        out.share = share.result()
        if merge_acc is not None:
            out.merge = merge_acc.result()
        self._weight_transforms(out)
        self._vocab(out)
        self._upcycle(out, layer_diags)
        self._components(out)
        return out

    # per tensor
    def _take_spectrum(self) -> bool:
        """Singular values for the first `max_spectra` changed matrices, then for every fourth one."""
        self._spectra_done += 1
        return self._spectra_done <= self.max_spectra or self._spectra_done % 4 == 0

    def _read(self, item: Item) -> tuple[np.ndarray, np.ndarray] | None:
        if item.kind in VOCAB_KINDS:
            return _vocab_rows(self.wa, item, self.seed)
        a = self.m.read_piece("a", item.a)
        b = self.m.read_piece("b", item.b)
        return (a, b) if a.shape == b.shape else None

    def _one(self, item: Item, n_item: int, residual: ResidualAlignment | None,
             share: ShareAccumulator, merge_acc: MergeAccumulator | None,
             other_pieces: dict[tuple[str, tuple[int, int] | None], Piece] | None) -> PairStats | None:
        got = self._read(item)
        if got is None:
            return None
        a, b = got
        declared = self.m.b_source.info(item.b.name).quantization
        cast = detect_cast(a, b, seed=self.seed)
        quant = None
        if cast.kind == "different" and a.ndim >= 1 and a.size >= 64:
            flip = item.b.transpose and b.ndim == 2 and item.kind not in VOCAB_KINDS
            stored_b = b.T if flip else b
            stored_a = a.T if flip else a
            quant = detect_quantization(stored_b, stored_a, seed=self.seed)
        if cast.kind != "different" or a.size < 2:
            return PairStats(item, int(a.size), cast, quant, declared, None, None, False)
        rotated = residual is not None and residual.r is not None
        if rotated and item.kind in GAIN_OF.values() and b.size > 1 and np.all(b == b.reshape(-1)[0]):
            # a residual rotation keeps the function only with the norm gains folded into the
            # projections that read the stream; B's gains are then constant and say nothing
            folded = CastDiagnosis("uninformative", None, cast.match_fraction, cast.chance_fraction, 0.0,
                                   cast.max_abs_diff, cast.n, 0.0, "B's gain is constant: folded into the "
                                   "projections that follow it")
            return PairStats(item, int(a.size), folded, None, declared, None, None, False, False, True)
        if rotated and item.kind in GAIN_OF and a.ndim == 2:
            a, b = self._fold_gains(item, a, b)
        if a.ndim == 1 and np.array_equal(np.sort(a), np.sort(b)):
            # the biases or gains of permuted units: the same values in another order
            same = CastDiagnosis("identical", None, cast.match_fraction, cast.chance_fraction, -300.0, 0.0, cast.n,
                                 1.0, "the same values as A's in another order (units permuted)")
            return PairStats(item, int(a.size), same, quant, declared, None, None, True, True)
        rng = np.random.default_rng([self.seed, n_item, 23])
        aligned = align_units(a, b, item.kind, residual, rng)
        if aligned is None:
            return PairStats(item, int(a.size), cast, quant, declared, None, None, False)
        xa, yb, permuted = aligned
        if permuted or rotated:
            # a permuted or rotated copy: judge equality and casts again on the aligned units
            again = detect_cast(xa, yb, seed=self.seed)
            if again.kind == "different" and rotated and rel_rms(xa, yb) < FLOAT_EQUAL:
                again = CastDiagnosis("identical", None, again.match_fraction, again.chance_fraction, -300.0,
                                      again.max_abs_diff, again.n, 1.0, "equal to A after the residual rotation "
                                      "is undone, up to float round-off")
            if again.kind in ("identical", "cast"):
                return PairStats(item, int(a.size), again, quant, declared, None, None, permuted, True)
        spectrum = xa.ndim >= 2 and item.kind not in VOCAB_KINDS and self._take_spectrum()
        noise = tensor_noise(xa, yb, seed=self.seed, spectrum=spectrum)
        change = tensor_change(xa, yb, seed=self.seed, with_rank=spectrum)
        share.add(xa, yb)
        if merge_acc is not None and other_pieces is not None and item.kind not in VOCAB_KINDS:
            pc = other_pieces.get((item.a.name, item.a.rows))
            if pc is not None and self.other_matching is not None:
                c = self.other_matching.read_piece("b", pc)
                if c.shape == a.shape:
                    rows_c = unit_rows(c, item.kind) if c.ndim >= 2 else c
                    if c.ndim >= 2:
                        # the same sampled units as A (B's permutation, if any, is already undone)
                        idx = np.arange(rows_c.shape[0]) if rows_c.shape[0] <= MAX_ROWS else np.sort(
                            np.random.default_rng([self.seed, n_item, 23]).choice(rows_c.shape[0], MAX_ROWS,
                                                                                  replace=False))
                        rows_c = rows_c[idx]
                    if rows_c.shape == xa.shape:
                        merge_acc.add(xa, yb, rows_c)
        return PairStats(item, int(a.size), cast, quant, declared, noise, change, permuted)

    def _fold_gains(self, item: Item, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Multiply the input columns of a projection by the gain of the norm before it, on each side,
        when B's gain is constant (folded into its projections)."""
        norm = GAIN_OF[item.kind]
        layer_a = item.layer_a if norm != "final_norm" else None
        layer_b = item.layer_b if norm != "final_norm" else None
        pa = self.m.piece("a", norm, layer_a, item.component)
        pb = self.m.piece("b", norm, layer_b, item.component)
        if pa is None or pb is None:
            return a, b
        ga = self.m.read_piece("a", pa).reshape(-1)
        gb = self.m.read_piece("b", pb).reshape(-1)
        if ga.shape[0] != a.shape[1] or gb.shape[0] != b.shape[1] or not np.all(gb == gb[0]):
            return a, b  # folding is only read off B when B's gain is constant (already folded)
        return a * ga[None, :], b * gb[None, :]

    def _other_pieces(self) -> dict[tuple[str, tuple[int, int] | None], Piece] | None:
        if self.other_matching is None:
            return None
        return {(p.a, p.a_rows): Piece(p.b, p.b_rows, p.b_transpose) for p in self.other_matching.pairs}

    # model level
    def _layer_transforms(self, out: ModelDiagnosis, comp: str, d: LayerDiagnosis, la: tuple[int, ...],
                          lb: tuple[int, ...]) -> None:
        if all(i is None for i in d.mapping):
            return
        if d.dropped:
            out.transforms.append(Transform("layer-drop", f"{comp}: A layers {[la[i] for i in d.dropped]} have no "
                                            "counterpart in B", {"component": comp,
                                                                 "layers": [la[i] for i in d.dropped]}))
        if d.duplicated:
            dup = {str(la[i]): [lb[j] for j in js] for i, js in d.duplicated.items()}
            out.transforms.append(Transform("layer-duplicate", f"{comp}: A layers copied more than once "
                                            f"({', '.join(f'A {k} -> B {v}' for k, v in dup.items())})",
                                            {"component": comp, "layers": dup}))
        if d.reordered:
            moved = [{"a_layer": la[i], "b_layer": lb[j]} for i, j in d.moved]
            out.transforms.append(Transform("layer-reorder", f"{comp}: {len(moved)} layer(s) out of A's order",
                                            {"component": comp, "moved": moved,
                                             "mapping": [None if i is None else la[i] for i in d.mapping]}))
        if d.new:
            out.transforms.append(Transform("layer-new", f"{comp}: B layers {[lb[j] for j in d.new]} match no "
                                            "layer of A", {"component": comp, "layers": [lb[j] for j in d.new]}))

    def _weight_transforms(self, out: ModelDiagnosis) -> None:
        inf = [s for s in out.pairs if s.informative]
        if not inf:
            out.notes.append("no informative tensor pair (all constant or unmatched)")
            return
        same = [s for s in inf if s.cast.kind == "identical"]
        cast = [s for s in inf if s.cast.kind == "cast"]
        realigned = sum(1 for s in same + cast if s.aligned_equal)
        folded = sum(1 for s in out.pairs if s.folded_gain)
        if folded:
            out.notes.append(f"{folded} norm gains of A are folded into B's projections (B's gains constant)")
        if realigned:
            out.notes.append(f"{realigned} tensors equal A's (or a cast of them) only once units or the "
                             "residual stream are aligned")
        if len(same) == len(inf):
            out.transforms.append(Transform("identical", f"all {len(inf)} informative tensors are bit-identical "
                                            "to A's" + (f" ({realigned} after alignment)" if realigned else ""),
                                            {"tensors": len(inf), "after_alignment": realigned,
                                             "folded_gains": folded}))
            return
        if same:
            out.notes.append(f"{len(same)} of {len(inf)} informative tensors are bit-identical to A's")
        changed = [s for s in inf if s.cast.kind == "different"]
        self._quantize(out, changed)
        changed = [s for s in changed if not self._is_quant(s)] if any(t.kind == "quantize"
                                                                        for t in out.transforms) else changed
        if cast and not changed:
            dtypes = Counter(s.cast.dtype for s in cast)
            dtype = dtypes.most_common(1)[0][0]
            out.transforms.append(Transform("cast", f"B is A cast to {dtype} ({len(cast)} tensors rounded, "
                                            f"{len(same)} unchanged)", {"dtype": dtype, "tensors": len(cast),
                                                                       "dtypes": dict(dtypes)}))
        if not changed:
            return
        noise_stats = [s.noise for s in changed if s.noise is not None]
        out.noise = diagnose_noise(noise_stats)
        # fine-tune and LoRA readings rest on weight matrices: vocabulary-sized vectors and gains alone
        # correlate between unrelated models that share a tokenizer or a normalisation scheme
        mats = [s for s in changed if s.change is not None and len(s.change.shape) >= 2
                and s.item.kind not in VOCAB_KINDS]
        changes = {s.item.key: s.change for s in mats if s.change is not None}
        layer_of = {s.item.key: s.item.layer_b for s in mats}
        out.finetune = diagnose_finetune(changes, layer_of)
        sh = out.share
        if out.noise.detected:
            nz = out.noise
            out.transforms.append(Transform(
                "noise", f"B = A + Gaussian noise, std {nz.sigma_rel:.3g} x each tensor's std "
                f"(about 1/{1 / nz.sigma_rel:.0f})" if nz.sigma_rel else "B = A + Gaussian noise",
                {"sigma_rel": _r(nz.sigma_rel), "sigma_abs": _r(nz.sigma_abs), "scale": nz.scale,
                 "sigma_rel_cv": _r(nz.sigma_rel_cv), "tensors": nz.n_noise, "of": nz.n_tensors}))
            return
        if sh is not None and sh.median_r2 >= 0.05 and sh.median_slope <= MERGE_SLOPE and out.merge is None \
                and sh.slope <= MERGE_SLOPE:
            out.transforms.append(Transform(
                "merge", f"B is only partly A: A explains {sh.r2:.1%} of B (slope {sh.slope:.3f}); "
                "pass the other model to estimate the mixing coefficients",
                {"share_explained": _r(sh.r2), "coef_a": _r(sh.slope), "median_share": _r(sh.median_r2),
                 "other": None}))
            return
        if out.merge is not None and out.merge.r2 >= 0.5 and out.merge.n_tensors:
            mf = out.merge
            est: dict[str, Any] = {"alpha": _r(mf.alpha), "beta": _r(mf.beta), "r2": _r(mf.r2),
                                   "method": mf.method, "other": self.other.ref if self.other is not None else None}
            if mf.slerp_t is not None:
                est["slerp_t"] = _r(mf.slerp_t)
            if mf.alpha < 0.97 or mf.beta > 0.03:
                out.transforms.append(Transform("merge", mf.reason, est))
                return
        ft = out.finetune
        if ft.finetuned:
            per_layer = {str(k): _r(v) for k, v in ft.per_layer.items()}
            out.transforms.append(Transform("finetune", f"{len(changes)} weight matrices changed; median "
                                            f"relative change {ft.rel_change:.3g}", {
                                                "rel_change": _r(ft.rel_change), "per_layer": per_layer,
                                                "median_corr": _r(ft.median_corr), "matrices": len(changes)}))
            if ft.lora:
                out.transforms.append(Transform("lora", f"a merged LoRA adapter of rank {ft.lora_rank} on "
                                                f"{len(ft.lora_tensors)} matrices", {
                                                    "rank": ft.lora_rank, "tensors": len(ft.lora_tensors),
                                                    "ranks": dict(Counter(ft.ranks[k] for k in ft.lora_tensors)),
                                                    "examples": list(ft.lora_tensors[:10])}))

    @staticmethod
    def _is_quant(s: PairStats) -> bool:
        return (s.quant is not None and s.quant.scheme is not None) or bool(s.declared_quant)

    def _quantize(self, out: ModelDiagnosis, changed: list[PairStats]) -> None:
        """B quantized from A: most changed tensors on a grid (or stored quantized), with a small error."""
        quant = [s for s in changed if self._is_quant(s)]
        big = [s for s in changed if s.numel >= 256]
        if not big or len([s for s in quant if s in big]) < 0.5 * len(big):
            return
        errs = [s.quant.rel_rms_error for s in quant if s.quant is not None and s.quant.rel_rms_error is not None]
        err = statistics.median(errs) if errs else None
        if err is None or err > MAX_QUANT_ERROR:  # a quantized model, but not a quantized A
            if err is not None:
                out.notes.append(f"B's tensors are quantized, but with an error of {err:.3g} x A's RMS: "
                                 "not a quantization of A")
            return
        schemes = Counter(s.quant.scheme for s in quant if s.quant is not None and s.quant.scheme is not None)
        declared = Counter(s.declared_quant for s in changed if s.declared_quant)
        scheme = (schemes or declared).most_common(1)[0][0]
        est: dict[str, Any] = {"scheme": scheme, "schemes": dict(schemes), "tensors": len(quant),
                               "rel_rms_error": _r(err),
                               "bits": next((s.quant.bits for s in quant if s.quant is not None
                                             and s.quant.scheme == scheme), None)}
        if declared:
            est["declared"] = dict(declared)
        out.transforms.append(Transform("quantize", f"B's values sit on a {scheme} grid in {len(quant)} tensors; "
                                        f"error {est['rel_rms_error']} of A's RMS", est))

    def _vocab(self, out: ModelDiagnosis) -> None:
        voc = self.wa.vocab()
        pieces = self.wa.embed_pieces()
        if voc is None or pieces is None:
            return
        info: dict[str, Any] = voc.describe()
        kinds: list[str] = []
        if info["only_b"]:
            kinds.append("extended")
        if info["only_a"]:
            kinds.append("pruned")
        if voc.reordered:
            kinds.append("reordered")
        info["kinds"] = kinds
        if kinds and len(voc.rows_a):
            k = len(voc.rows_a)
            pick = np.sort(np.random.default_rng([self.seed, 19]).choice(k, size=min(k, VOCAB_ROWS), replace=False))
            ra, rb = voc.rows_a[pick], voc.rows_b[pick]
            order_b = np.argsort(rb)
            ea = gather_rows(self.m, "a", pieces[0], ra)
            eb_sorted = gather_rows(self.m, "b", pieces[1], rb[order_b])
            eb = np.empty_like(eb_sorted)
            eb[order_b] = eb_sorted
            if ea.shape == eb.shape:
                info["rows_kept"] = _r(rows_kept_share(ea, eb))
            new_ids = np.setdiff1d(np.arange(voc.size_b), voc.rows_b)[:256]
            if new_ids.size and ea.shape[1:] == eb.shape[1:]:
                info["new_rows_init"] = new_rows_init(self._mean_row(pieces[0]),
                                                      gather_rows(self.m, "b", pieces[1], np.sort(new_ids)))
        out.vocab = info
        kept = info.get("rows_kept")
        if kinds and (kept is None or kept < 0.5):
            out.notes.append("the vocabularies differ, but B's embedding rows are not A's: no vocabulary change "
                             "of A")
            return
        if kinds:
            parts = [f"{info['only_b']} token(s) added" if info["only_b"] else "",
                     f"{info['only_a']} removed" if info["only_a"] else "",
                     f"{voc.reordered} moved to other ids" if voc.reordered else ""]
            out.transforms.append(Transform("vocab-change", "vocabulary " + "/".join(kinds) + ": "
                                            + ", ".join(p for p in parts if p), {
                                                "kinds": kinds, "added": info["only_b"], "removed": info["only_a"],
                                                "moved": voc.reordered, "shared": info["shared"],
                                                "how": voc.how, "rows_kept": info.get("rows_kept"),
                                                "new_rows_init": info.get("new_rows_init")}))

    def _mean_row(self, piece: Piece) -> np.ndarray:
        src = self.m.a_source
        if piece.transpose or piece.rows is not None:
            mat = self.m.read_piece("a", piece)
            return np.asarray(mat.mean(axis=0, dtype=np.float64))
        n = src.info(piece.name).shape[0]
        total: np.ndarray | None = None
        for start in range(0, n, 8192):
            block = src.read_rows(piece.name, start, min(n, start + 8192)).astype(np.float64)
            s = block.reshape(block.shape[0], -1).sum(axis=0)
            total = s if total is None else total + s
        assert total is not None
        return total / n

    def _upcycle(self, out: ModelDiagnosis, layer_diags: dict[str, Any]) -> None:
        infos = self.m.b_source.infos()
        roles = assign_roles(list(infos))
        experts: dict[tuple[str, int], dict[int, dict[str, str]]] = {}
        routers: dict[tuple[str, int], str] = {}
        for name, r in roles.items():
            if r.layer is None or r.param != "weight":
                continue
            if r.expert is not None and r.kind in ("mlp_gate", "mlp_up", "mlp_down"):
                experts.setdefault((r.component, r.layer), {}).setdefault(r.expert, {})[r.kind[4:]] = name
            elif r.kind == "other" and r.sub == "router":
                routers[(r.component, r.layer)] = name
        if not experts:
            return
        found: dict[str, UpcycleDiagnosis] = {}
        for (comp, layer_b) in sorted(experts)[:MAX_UPCYCLE_LAYERS]:
            assign = {}
            if comp in layer_diags:
                d, la, lb = layer_diags[comp]
                assign = {lb[j]: la[i] for j, i in enumerate(d.mapping) if i is not None}
            layer_a = assign.get(layer_b, layer_b)
            dense = {}
            for part in ("gate", "up", "down"):
                piece = self.m.piece("a", f"mlp_{part}", layer_a, comp)
                if piece is not None:
                    dense[part] = self.m.read_piece("a", piece)
            if not dense:
                continue
            exp_list = []
            for e in sorted(experts[(comp, layer_b)])[:MAX_EXPERTS]:
                names = experts[(comp, layer_b)][e]
                ex = {}
                for part, nm in names.items():
                    w = self.m.b_source.read(nm)
                    ex[part] = w.T if roles[nm].transposed and w.ndim == 2 else w
                if set(ex) & set(dense):
                    exp_list.append({k: v for k, v in ex.items() if k in dense})
            if not exp_list:
                continue
            try:
                router = self.m.b_source.read(routers[(comp, layer_b)]) if (comp, layer_b) in routers else None
                found[f"{comp}.{layer_b}"] = diagnose_upcycle({k: v for k, v in dense.items()
                                                               if k in exp_list[0]}, exp_list, router, seed=self.seed)
            except ValueError as exc:  # shapes that do not fit an upcycling (different widths)
                out.notes.append(f"upcycle check skipped for {comp} layer {layer_b}: {exc}")
        out.upcycle = found
        ups = {k: v for k, v in found.items() if v.upcycled}
        if ups:
            first = next(iter(ups.values()))
            out.transforms.append(Transform(
                "upcycle", f"B's experts were made from A's dense MLP ({first.reason})",
                {"layers": sorted(ups), "granularity": first.granularity, "router_new": first.router_new,
                 "experts_matched": {k: sum(1 for e in v.experts if e.matched >= 0.8) for k, v in ups.items()},
                 "experts_checked": {k: len(v.experts) for k, v in ups.items()}}))

    def _components(self, out: ModelDiagnosis) -> None:
        entries = []
        for s in out.pairs:
            sim = None
            if s.cast.kind == "identical" or s.cast.kind == "cast":
                sim = 1.0
            elif s.change is not None and s.informative:
                sim = s.change.corr
            entries.append(ComponentEntry(s.item.b.name, s.item.component, sim, s.numel))
        unmatched = list(self.m.unmatched_b)
        roles = assign_roles(unmatched) if unmatched else {}
        for name in unmatched:
            r = roles.get(name)
            comp = r.component if r is not None else component_of(name)
            entries.append(ComponentEntry(name, comp, None, self.m.b_source.info(name).numel))
        if not entries:
            return
        cd = diagnose_components(entries)
        out.components = cd
        if (cd.shared or cd.partial) and (len(cd.components) >= 2 or cd.new):
            out.transforms.append(Transform("component", cd.reason, {
                "shared": list(cd.shared), "new": list(cd.new), "partial": list(cd.partial),
                "per_component": {c.component: {"status": c.status, "tensors": c.n_tensors, "matched": c.n_matched,
                                                "median_corr": _r(c.median_similarity)} for c in cd.components}}))

