"""Representation evidence (gray-box: both models run locally on the same inputs).

- `activation-match`: MLP neuron activations of A and B on the same tokens; each sampled
  neuron of A is matched to its most correlated neuron of B and we count neurons that land on
  their own index. After Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language
  Models" (ICML 2025, the MATCH statistic on activations): activations do not change when the
  residual stream is rotated or permuted, so this catches a rotated copy that defeats
  element-wise weight comparison. Null: independent initializations and training equivariant
  to permuting MLP neurons; then the count has the exact law in stats.nulls.
  The null needs no reference model: it comes from the unit symmetry of training. Powered when
  the smallest attainable p (every sampled neuron on its own index) is below the threshold.
- `representation-cka`: linear CKA of per-layer hidden states (after REEF, Zhang et al. 2025).
  Independently trained models on the same data also reach high CKA, so it is tested only against
  at least two local reference models (skipped otherwise): prompts are cut into blocks of
  `CKA_BLOCK`, and an exact sign test over blocks asks whether B is closer to A than each reference
  (by the margin) on more blocks than chance allows (`stats.exact`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from modeltrace.evidence.base import CompareContext, ControlOutcome, Evidence, EvidenceMethod
from modeltrace.evidence.behaviour import power_note, references_missing, threshold_of, with_copy_control
from modeltrace.probes.prompts import generic_prompts
from modeltrace.stats.combine import fisher
from modeltrace.stats.exact import checked, sign_test_floor, sign_test_p
from modeltrace.stats.nulls import fixed_point_tail

CKA_BLOCK = 8  # prompts per block: CKA is a statistic of a sample, so the sign test runs over blocks

# the module whose INPUT is the MLP's post-activation neuron vector, per naming scheme
_DOWN = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.(?:mlp\.(?:down_proj|c_proj|fc2|dense_4h_to_h)|"
                   r"output\.dense|feed_forward\.w2)$")


def _local_backend(ctx: CompareContext, side: str) -> Any:
    from modeltrace.backends.local import TransformersBackend

    key = f"local_{side}"
    if key not in ctx.shared:
        model = ctx.a if side == "a" else ctx.b
        ctx.shared[key] = TransformersBackend(model.root, threads=ctx.options.get("threads"))
    return ctx.shared[key]


def mlp_activations(backend: Any, texts: list[str], max_tokens: int = 4096) -> dict[int, np.ndarray]:
    """Per layer index, an array (tokens, neurons) of MLP post-activation values over `texts`."""
    import torch

    backend._load()
    model, tok = backend._model, backend._tok
    acts: dict[int, list[np.ndarray]] = {}
    hooks = []
    for name, module in model.named_modules():
        m = _DOWN.search(name)
        if m:
            layer = int(m.group(1))

            def hook(_mod: Any, inputs: tuple[Any, ...], layer: int = layer) -> None:
                x = inputs[0].detach().float()
                acts.setdefault(layer, []).append(x.reshape(-1, x.shape[-1]).numpy())
            hooks.append(module.register_forward_pre_hook(hook))
    try:
        seen = 0
        with torch.no_grad():
            for t in texts:
                enc = tok(t, return_tensors="pt", truncation=True, max_length=64)
                model(**enc)
                seen += int(enc["input_ids"].shape[1])
                if seen >= max_tokens:
                    break
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v, axis=0) for k, v in sorted(acts.items())}


def _pieces(tok: Any, text: str) -> list[str]:
    ids = tok(text, truncation=True, max_length=64)["input_ids"]
    return [str(p) for p in tok.convert_ids_to_tokens(ids)]


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0, keepdims=True)
    sd = np.sqrt((x * x).sum(axis=0, keepdims=True))
    return x / np.where(sd > 0, sd, 1.0)


def match_fixed_points(xa: np.ndarray, xb: np.ndarray, sample: np.ndarray) -> tuple[int, float]:
    """(#sampled A-neurons whose best-correlated B-neuron has the same index, mean best |corr|)."""
    za, zb = _standardize(xa), _standardize(xb)
    corr = np.abs(za[:, sample].T @ zb)  # (m, n)
    best = corr.argmax(axis=1)
    # injective: where two A-neurons pick one B-neuron, only the stronger keeps it (see stats.nulls)
    keep = np.ones(len(sample), dtype=bool)
    strength = corr[np.arange(len(sample)), best]
    order = np.argsort(-strength)
    taken: set[int] = set()
    for i in order:
        if int(best[i]) in taken:
            keep[i] = False
        taken.add(int(best[i]))
    fixed = int(np.sum(keep & (best == sample)))
    return fixed, float(strength.mean())


class ActivationMatchMethod(EvidenceMethod):
    """Do A's MLP neurons fire like B's neurons of the same index on the same tokens?"""

    name = "activation-match"
    kind = "representation"
    stage = 40
    summary = "neuron matching through activations on shared inputs (survives residual rotation)"
    reference = "Zhu, Ahmed, Kuditipudi & Liang, 'Independence Tests for Language Models', ICML 2025"

    def needs(self, ctx: CompareContext) -> str | None:
        if not (ctx.options.get("representation") or ctx.options.get("behaviour")):
            return "representation tests not requested (--behaviour)"
        for m in (ctx.a, ctx.b):
            if m.single_file or m.config is None:
                return f"{m.ref}: needs a local Hugging Face folder to run"
        return None

    def run(self, ctx: CompareContext) -> Evidence:
        texts = generic_prompts(int(ctx.options.get("prompts", 64)), seed=ctx.seed, min_words=12, max_words=40)
        be_a, be_b = _local_backend(ctx, "a"), _local_backend(ctx, "b")
        be_a._load()
        be_b._load()
        # activations are compared token by token: keep the texts both tokenizers cut into the same pieces
        # (a vocabulary extended or pruned changes some cuts, and would misalign every later row)
        same = [t for t in texts if _pieces(be_a._tok, t) == _pieces(be_b._tok, t)]
        if not same:
            return Evidence(method=self.name, status="ok", kind="representation", powered=False, p_value=None,
                            statement=f"the two tokenizers cut none of {len(texts)} prompts into the same tokens",
                            details={"prompts": len(texts), "same_tokens": 0})
        texts = same
        acts_a = mlp_activations(be_a, texts)
        acts_b = mlp_activations(be_b, texts)
        rng = np.random.default_rng(ctx.seed)
        layers = []
        samples: dict[int, np.ndarray] = {}
        for layer in sorted(set(acts_a) & set(acts_b)):
            xa, xb = acts_a[layer], acts_b[layer]
            if xa.shape != xb.shape:
                continue
            n = xa.shape[1]
            m = min(n, int(ctx.options.get("neurons", 512)))
            sample = np.sort(rng.choice(n, size=m, replace=False))
            k, strength = match_fixed_points(xa, xb, sample)
            layers.append({"layer": layer, "neurons": n, "sampled": m, "fixed": k, "mean_best_corr": strength,
                           "p_value": fixed_point_tail(k, m, n)})
            samples[layer] = sample
        if not layers:
            return Evidence(method=self.name, status="ok", kind="representation", powered=False, p_value=None,
                            statement="no MLP layers with the same width to compare", details={})
        p = checked(fisher([x["p_value"] for x in layers]), self.name)
        floor_p = fisher([fixed_point_tail(x["sampled"], x["sampled"], x["neurons"]) for x in layers])
        threshold = threshold_of(ctx)
        powered = floor_p < threshold
        fixed = sum(x["fixed"] for x in layers)
        sampled = sum(x["sampled"] for x in layers)
        strength = float(np.mean([x["mean_best_corr"] for x in layers]))
        note = ""
        if fixed < 0.1 * sampled and strength > 0.9:
            note = " (neurons match almost perfectly under another order: permuted neurons?)"
        stmt = (f"{fixed} of {sampled} sampled MLP neurons in {len(layers)} layers fire most like the neuron of "
                f"the same index in the other model; mean best correlation {strength:.3f}{note}")
        if not powered:
            stmt += power_note(sampled, "neurons", floor_p, threshold)
        ctx.shared[f"{self.name}:a"] = (texts, acts_a, samples)
        return Evidence(method=self.name, status="ok", kind="representation", powered=powered, p_value=p,
                        statistic=fixed / sampled, null_hypothesis=self.null_hypothesis, statement=stmt,
                        details={"layers": layers, "tokens": int(next(iter(acts_a.values())).shape[0]),
                                 "prompts": len(texts), "min_attainable_p": floor_p})


    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        """A against A with Gaussian noise on its weights (`control_noise` of each matrix's spread, default 0.1).

        Run only when A is small enough to copy in memory (`NOISE_CONTROL_MAX_PARAMS`): one more forward
        pass of A over the same texts, matched exactly as B was.
        """
        got = ctx.shared.get(f"{self.name}:a")
        if result.status != "ok" or got is None:
            return []
        texts, acts_a, samples = got
        rel = float(ctx.options.get("control_noise", 0.1))
        be_a = _local_backend(ctx, "a")
        be_a._load()
        size = sum(int(p.numel()) for p in be_a._model.parameters())
        if size > NOISE_CONTROL_MAX_PARAMS:
            return []
        acts_n = mlp_activations(_NoisedCopy(be_a, rel, ctx.seed), texts)
        ps = [fixed_point_tail(match_fixed_points(acts_a[layer], acts_n[layer], s)[0], len(s),
                               acts_a[layer].shape[1]) for layer, s in samples.items() if layer in acts_n]
        if not ps:
            return []
        p = checked(fisher(ps), self.name)
        return [ControlOutcome("noise", rel, self.name, p, p < threshold_of(ctx),
                               f"A with Gaussian noise of {rel:g} of each weight matrix's spread, on the same texts")]


NOISE_CONTROL_MAX_PARAMS = 200_000_000  # above this a second copy of A in memory is not cheap


class _NoisedCopy:
    """A transformers backend's model copied with seeded Gaussian noise on its weight matrices (same tokenizer)."""

    def __init__(self, backend: Any, rel: float, seed: int) -> None:
        import copy

        import torch

        self._tok = backend._tok
        self._model = copy.deepcopy(backend._model)
        gen = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for p in self._model.parameters():
                if p.dim() == 2:
                    noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * rel * float(p.float().std())
                    p.add_(noise.to(p.dtype))

    def _load(self) -> None:
        return None


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two (samples, features) matrices."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    xty = np.linalg.norm(x.T @ y) ** 2
    denom = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(xty / denom) if denom > 0 else 0.0


def unit_rows(layers: list[np.ndarray]) -> list[np.ndarray]:
    """Each layer's inputs centred over the sample and scaled to unit length.

    Linear CKA on raw pooled states is ruled by the few inputs of largest norm: on the tiny zoo
    one prompt moved the statistic by more than the gap between a fine-tune and an unrelated model.
    """
    out = []
    for h in layers:
        h = h - h.mean(axis=0)
        out.append(h / np.clip(np.linalg.norm(h, axis=1, keepdims=True), 1e-12, None))
    return out


def layer_pairs(n_a: int, n_b: int) -> list[tuple[int, int]]:
    """Layers at the same relative depth, so that models of different depth still line up."""
    depth = min(n_a, n_b)
    return [(round(i * (n_a - 1) / max(1, depth - 1)), round(i * (n_b - 1) / max(1, depth - 1)))
            for i in range(depth)]


def cka_distance(hx: list[np.ndarray], hy: list[np.ndarray], rows: np.ndarray | None = None) -> float:
    """1 - linear CKA, averaged over layers at the same relative depth (on `rows` of the inputs if given)."""
    def sel(h: np.ndarray) -> np.ndarray:
        return h if rows is None else h[rows]

    return float(np.mean([1.0 - linear_cka(sel(hx[i]), sel(hy[j])) for i, j in layer_pairs(len(hx), len(hy))]))


def blocks(n: int, size: int = CKA_BLOCK) -> list[np.ndarray]:
    """Consecutive blocks of `size` prompts (a last partial block is dropped: every unit alike)."""
    return [np.arange(i, i + size) for i in range(0, n - size + 1, size)]


def block_sign_p(hx: list[np.ndarray], hy: list[np.ndarray], hr: list[np.ndarray], margin: float) -> float:
    """Exact sign test over prompt blocks of H0: P(d_block(x, y) < (1 - margin) d_block(x, r)) <= 1/2.

    The prompts are drawn independently, so the blocks are independent units; each block's CKA
    distances are computed on that block's inputs alone. Ties count for H0.
    """
    units = blocks(hx[0].shape[0])
    wins = sum(cka_distance(hx, hy, b) < (1.0 - margin) * cka_distance(hx, hr, b) for b in units)
    return sign_test_p(int(wins), len(units))


class RepresentationCKAMethod(EvidenceMethod):
    """How similar are A's and B's hidden states on the same inputs, layer by layer?"""

    name = "representation-cka"
    kind = "representation"
    stage = 40
    summary = "linear CKA of hidden states per layer, tested against local reference models when given"
    reference = "REEF: Zhang et al., 'REEF: Representation Encoding Fingerprints for LLMs', ICLR 2025"
    null_hypothesis = ("on a random block of prompts, B's hidden states are at least (1 - margin) times as far "
                       "(1 - linear CKA, mean over layers) from A's as those of each unrelated reference model with "
                       "probability at least 1/2, and A's from B's likewise")

    def needs(self, ctx: CompareContext) -> str | None:
        return ActivationMatchMethod().needs(ctx) or references_missing(ctx)

    def run(self, ctx: CompareContext) -> Evidence:
        refs, why = _local_references(ctx)
        if why:
            return Evidence.skipped(self.name, f"{why}; CKA is tested only against local reference models",
                                    kind="representation")
        texts = generic_prompts(int(ctx.options.get("prompts", 64)), seed=ctx.seed + 1)
        ha = unit_rows(_local_backend(ctx, "a").hidden_states(texts))
        hb = unit_rows(_local_backend(ctx, "b").hidden_states(texts))
        pairs = layer_pairs(len(ha), len(hb))
        ckas = [linear_cka(ha[i], hb[j]) for i, j in pairs]
        margin = float(ctx.options.get("cka_margin", 0.1))
        d_ab = cka_distance(ha, hb)
        tests = []
        ref_states = [(r.identity, unit_rows(r.hidden_states(texts))) for r in refs]
        for name, hr in ref_states:
            for side, hx, hy in (("A", ha, hb), ("B", hb, ha)):
                d_r = cka_distance(hx, hr)
                tests.append({"side": side, "reference": name, "distance_to_reference": round(d_r, 5),
                              "ratio": round(d_ab / d_r, 4) if d_r > 0 else None,
                              "p_value": checked(block_sign_p(hx, hy, hr, margin), self.name)})
        ctx.shared[f"{self.name}:states"] = (ha, [hr for _, hr in ref_states], margin)
        p = max(t["p_value"] for t in tests)  # intersection-union over references and sides
        closest = min(t["distance_to_reference"] for t in tests)
        n_blocks = len(blocks(len(texts)))
        floor_p = sign_test_floor(n_blocks)
        threshold = threshold_of(ctx)
        powered = floor_p < threshold
        details: dict[str, Any] = {"cka": ckas, "layer_pairs": pairs, "prompts": len(texts), "blocks": n_blocks,
                                   "block_size": CKA_BLOCK, "distance": round(d_ab, 5), "margin": margin,
                                   "tests": tests, "min_attainable_p": floor_p}
        stmt = (f"mean linear CKA of hidden states (inputs at unit length) over {len(pairs)} layers: "
                f"{np.mean(ckas):.3f}; 1 - CKA is {d_ab:.3f} between A and B and at least {closest:.3f} between "
                f"either and {len(refs)} unrelated reference model(s) (the null allows down to {1 - margin:.2f} "
                f"of that on most blocks of {CKA_BLOCK} prompts)")
        if not powered:
            stmt += power_note(n_blocks, f"blocks of {CKA_BLOCK} prompts", floor_p, threshold)
        ev = Evidence(method=self.name, status="ok", kind="representation", powered=powered, p_value=p,
                      statistic=float(np.mean(ckas)), null_hypothesis=self.null_hypothesis, details=details,
                      statement=stmt)
        return with_copy_control(self, ctx, ev)

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        """A copy of A (its own hidden states in B's place) against the same references and blocks."""
        got = ctx.shared.get(f"{self.name}:states")
        if result.status != "ok" or got is None:
            return []
        ha, hrs, margin = got
        p = max(block_sign_p(ha, ha, hr, margin) for hr in hrs)
        return [ControlOutcome("copy", None, self.name, p, p < threshold_of(ctx),
                               "A's own hidden states in B's place, against the same references")]


def _local_references(ctx: CompareContext) -> tuple[list[Any], str]:
    """The reference models as local transformers backends; empty with the reason if one is an endpoint."""
    from modeltrace.backends.cache import CachedBackend
    from modeltrace.backends.local import TransformersBackend
    from modeltrace.evidence.behaviour import references

    out = []
    for r in references(ctx):  # the same backends the behaviour tests use: each model loaded once
        inner = r
        while isinstance(inner, CachedBackend):
            inner = inner.inner
        if not isinstance(inner, TransformersBackend):
            return [], f"reference {r.identity} is not a local model (hidden states need one)"
        out.append(inner)
    return out, ""
