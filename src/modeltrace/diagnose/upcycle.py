"""Were B's mixture-of-experts experts copied from A's dense MLP (sparse upcycling)?

Sparse upcycling (Komatsuzaki et al., "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints", ICLR 2023) initialises every expert as a copy of the dense MLP, and fine-grained
variants split the dense MLP's neurons among experts; the router is new. For each expert we match
its neurons (rows of gate/up, columns of down) to the dense MLP's by correlation over a sample of
input features, so copies, permuted copies and neuron subsets are all found; a neuron counts as
matched when its best correlation exceeds `match_corr` (independent rows of width d correlate
about N(0, 1/d)).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modeltrace.diagnose._common import rel_rms, sample_flat

MAX_NEURONS = 512  # expert neurons matched per expert (a fixed sample when there are more)
MAX_FEATURES = 256  # input features used to compare neurons
MATCH_CORR = 0.5


@dataclass(frozen=True)
class ExpertMatch:
    """How one expert relates to the dense MLP."""

    index: int
    matched: float  # share of sampled neurons whose best dense-neuron correlation is above match_corr
    median_corr: float  # median best correlation
    rel_change: float | None  # ||E - D|| / ||D|| when shapes agree and neurons are in place
    in_place: bool  # neurons sit at the same positions as in the dense MLP
    dense_neurons: int  # distinct dense neurons the sampled expert neurons map to


@dataclass(frozen=True)
class UpcycleDiagnosis:
    """Whether the experts descend from the dense MLP, and how (copies or neuron subsets)."""

    upcycled: bool
    experts: tuple[ExpertMatch, ...]
    granularity: str | None  # "copy" (full MLP per expert) or "split" (subsets of its neurons)
    router_new: bool | None
    confidence: float
    reason: str


def _neuron_rows(mlp: Mapping[str, np.ndarray], max_features: int = MAX_FEATURES, seed: int = 0) -> np.ndarray:
    """One row per neuron: sampled input features of its gate/up rows and down column, side by side.

    The same feature positions are taken for every MLP of the same hidden size (fixed `seed`)."""
    mats = [np.asarray(mlp[k]) for k in ("gate", "up") if k in mlp]
    if "down" in mlp:
        mats.append(np.asarray(mlp["down"]).T)
    if not mats:
        raise ValueError("an MLP needs at least one of 'gate', 'up', 'down'")
    n = mats[0].shape[0]
    if any(m.ndim != 2 or m.shape[0] != n for m in mats):
        raise ValueError("gate/up rows and down columns disagree on the number of neurons")
    per = max(1, max_features // len(mats))
    parts = []
    for m in mats:
        cols = np.arange(m.shape[1]) if m.shape[1] <= per else np.sort(
            np.random.default_rng(seed).choice(m.shape[1], per, replace=False))
        parts.append(np.asarray(m[:, cols], dtype=np.float64))
    return np.concatenate(parts, axis=1)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(nrm > 0, nrm, 1.0)


def match_expert(dense: Mapping[str, np.ndarray], expert: Mapping[str, np.ndarray], index: int = 0, *,
                 seed: int = 0) -> ExpertMatch:
    """Match one expert's neurons to the dense MLP's neurons."""
    d_rows = _neuron_rows(dense, seed=seed)
    e_rows = _neuron_rows(expert, seed=seed)
    if d_rows.shape[1] != e_rows.shape[1]:
        raise ValueError(f"expert {index}: neuron width {e_rows.shape[1]} differs from the dense MLP's "
                         f"{d_rows.shape[1]}")
    picks = np.arange(e_rows.shape[0]) if e_rows.shape[0] <= MAX_NEURONS else np.sort(
        np.random.default_rng(seed + 1 + index).choice(e_rows.shape[0], MAX_NEURONS, replace=False))
    dn = _normalise(d_rows)
    en = _normalise(e_rows[picks])
    sim = en @ dn.T
    best = sim.argmax(axis=1)
    best_corr = sim[np.arange(sim.shape[0]), best]
    matched = float(np.mean(best_corr > MATCH_CORR))
    in_place = bool(e_rows.shape[0] == d_rows.shape[0] and np.mean(best == picks) > 0.9)
    rel = None
    if in_place:
        rel = statistics.median(rel_rms(sample_flat(dense[k]), sample_flat(expert[k]))
                                for k in ("gate", "up", "down") if k in dense and k in expert
                                and np.shape(dense[k]) == np.shape(expert[k]))
    return ExpertMatch(index, matched, float(np.median(best_corr)), rel, in_place,
                       int(np.unique(best[best_corr > MATCH_CORR]).size))


def diagnose_upcycle(dense: Mapping[str, np.ndarray], experts: Sequence[Mapping[str, np.ndarray]],
                     router: np.ndarray | None = None, *, seed: int = 0, min_matched: float = 0.8
                     ) -> UpcycleDiagnosis:
    """Do B's experts descend from A's dense MLP? `dense` and each expert map 'gate'/'up'/'down' to matrices
    (gate/up: neurons x hidden, down: hidden x neurons)."""
    if not experts:
        raise ValueError("no experts given")
    matches = tuple(match_expert(dense, e, i, seed=seed) for i, e in enumerate(experts))
    good = [m for m in matches if m.matched >= min_matched]
    upcycled = len(good) >= max(1, math.ceil(0.5 * len(matches)))
    n_dense = _neuron_rows(dense, 1).shape[0]
    n_exp = _neuron_rows(experts[0], 1).shape[0]
    granularity = None
    if upcycled:
        granularity = "copy" if n_exp >= n_dense else "split"
    router_new = None if router is None else True
    if upcycled:
        reason = (f"{len(good)} of {len(matches)} experts are made of the dense MLP's neurons "
                  f"({'whole copies' if granularity == 'copy' else f'{n_exp} of its {n_dense} neurons each'}"
                  f", median best correlation {statistics.median(m.median_corr for m in good):.3f})")
        if router is not None:
            reason += "; the router has no counterpart in the dense model (new)"
    else:
        reason = f"only {len(good)} of {len(matches)} experts match the dense MLP's neurons"
    return UpcycleDiagnosis(upcycled, matches, granularity, router_new, len(good) / len(matches), reason)
