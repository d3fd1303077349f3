"""Derivations at a ladder of strengths (power curves) and the shape-changing cases of width pruning and
distillation into a smaller width, each with its ground truth.

Every ladder model is a child of the first base of the llama family; its pair carries `strength` (the
ladder's variable: relative noise sigma, fine-tune steps, kept fraction) so the report can say at which
strength each test stops detecting. The shape cases pair the base with:

- `distill-pruned-init`: a student initialised from the base pruned to half width, then distilled (derived);
- `distill-small-fresh`: a student of the same small shape from a fresh init, distilled (not derived in weights);
- `independent-pruned-shape`: a model of the pruned shape trained from scratch on the same text (independent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modeltrace.benchmark.zoo import derive as D
from modeltrace.benchmark.zoo.build import Task, Zoo
from modeltrace.benchmark.zoo.families import (
    build_model,
    export_hf,
    hf_config,
    model_from_params,
    with_shape,
    write_hf_folder,
)
from modeltrace.benchmark.zoo.plan import pair
from modeltrace.benchmark.zoo.tokenizer import write_tokenizer

POWER_KINDS = ("power-noise", "power-rotate-noise", "power-finetune", "power-width-prune",
               "power-width-prune-healed")
SHAPE_KINDS = ("distill-pruned-init", "distill-small-fresh", "independent-pruned-shape")
SMALL_FRACTION = 0.5  # the students' and the independent small model's width, relative to the base


def _tag(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def _child(zoo: Zoo, fam: str, kind: str, parent: str, cid: str, recipe: dict[str, Any], run: Any,
           strength: float, label: str = "derived", **truth: Any) -> Task:
    t = Task(cid, fam, kind, (parent,), {"kind": kind, "parents": [parent], **recipe}, run,
             ancestors=frozenset({parent}))
    t.pairs = [pair(parent, cid, label, kind, strength=strength, **truth)]
    return t


def plan_power(zoo: Zoo, fam: str, parent: str) -> None:
    """The strength ladders: noise, rotation plus noise, fine-tune steps, width pruning with and without healing."""
    s = zoo.s

    def noised(sigma: float, rotate: bool, cid: str):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            truth: dict[str, Any] = {}
            if rotate:
                p, truth = D.rotate(spec, p, zoo.seed(cid + "/rotation"))
            tensors = export_hf(spec, p)
            if sigma > 0:
                tensors = D.add_noise(tensors, sigma, zoo.seed(cid))
            write_hf_folder(tmp, hf_config(spec), tensors)
            write_tokenizer(tmp, zoo.data()["tokenizer_json"], spec.max_pos)
            return {"truth": truth}
        return run

    for sigma in s.power_noise:
        cid = f"{parent}-pnoise-{_tag(sigma)}"
        zoo.add(_child(zoo, fam, "power-noise", parent, cid, {"sigma_rel": sigma, "seed": zoo.seed(cid)},
                       noised(sigma, False, cid), sigma, sigma_rel=sigma))
    if fam == "llama":
        for sigma in s.power_rotate_noise:
            cid = f"{parent}-protnoise-{_tag(sigma)}"
            zoo.add(_child(zoo, fam, "power-rotate-noise", parent, cid, {"sigma_rel": sigma, "seed": zoo.seed(cid)},
                           noised(sigma, True, cid), sigma, sigma_rel=sigma, rotated=True))

    def tuned(steps: int, cid: str):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            model = model_from_params(spec, p)
            res = zoo.train(model, "other", steps, zoo.seed(cid), lr=1e-3)
            zoo.write_model(tmp, spec, {k: v.detach() for k, v in model.state_dict().items()})
            return {"train": res.to_dict()}
        return run

    for steps in s.power_finetune:
        cid = f"{parent}-pft-{steps}"
        zoo.add(_child(zoo, fam, "power-finetune", parent, cid, {"data": "other", "steps": steps, "lr": 1e-3},
                       tuned(steps, cid), float(steps), steps=steps, data="other"))
    if fam != "llama":
        return

    def pruned(frac: float, heal: int, cid: str):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            spec2, p2, truth = D.prune_width(spec, p, frac)
            out: dict[str, Any] = {"truth": truth}
            if heal:
                model = model_from_params(spec2, p2)
                out["train"] = zoo.train(model, "main", heal, zoo.seed(cid), lr=1e-3).to_dict()
                p2 = {k: v.detach() for k, v in model.state_dict().items()}
            zoo.write_model(tmp, spec2, p2)
            return out
        return run

    heal_steps = 2 * s.heal_steps
    for frac in s.power_prune:
        cid = f"{parent}-pprune-{_tag(frac)}"
        zoo.add(_child(zoo, fam, "power-width-prune", parent, cid, {"keep_fraction": frac, "heal_steps": 0},
                       pruned(frac, 0, cid), frac, kept_fraction=frac, healing_steps=0))
        cid = f"{parent}-pprune-{_tag(frac)}-healed"
        zoo.add(_child(zoo, fam, "power-width-prune-healed", parent, cid,
                       {"keep_fraction": frac, "heal_steps": heal_steps}, pruned(frac, heal_steps, cid), frac,
                       kept_fraction=frac, healing_steps=heal_steps))


def plan_shape_cases(zoo: Zoo, fam: str, parent: str) -> None:
    """Distillation into half the width, from a pruned-teacher init and from a fresh one; an independent model
    of that shape. Llama family only (width pruning of the residual stream)."""
    s = zoo.s

    def distilled(cid: str, from_pruned: bool):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            teacher = model_from_params(spec, p).eval()
            spec2, p2, truth = D.prune_width(spec, p, SMALL_FRACTION)
            student = model_from_params(spec2, p2) if from_pruned else build_model(spec2, zoo.seed(cid))
            res = zoo.train(student, "main", s.distill_steps, zoo.seed(cid), objective="distill", teacher=teacher)
            zoo.write_model(tmp, spec2, {k: v.detach() for k, v in student.state_dict().items()})
            return {"train": res.to_dict(), "truth": truth if from_pruned else {}}
        return run

    cid = f"{parent}-distill-pruned"
    zoo.add(_child(zoo, fam, "distill-pruned-init", parent, cid,
                   {"steps": s.distill_steps, "init": "pruned teacher", "keep_fraction": SMALL_FRACTION},
                   distilled(cid, True), SMALL_FRACTION, teacher=parent, kept_fraction=SMALL_FRACTION))
    cid = f"{parent}-distill-small"
    zoo.add(_child(zoo, fam, "distill-small-fresh", parent, cid,
                   {"steps": s.distill_steps, "init": "fresh", "seed": zoo.seed(cid), "width": SMALL_FRACTION},
                   distilled(cid, False), SMALL_FRACTION, label="distilled", teacher=parent, shares_weights=False))

    spec = zoo.spec(fam)
    small = with_shape(spec, hidden=max(2, round(spec.hidden * SMALL_FRACTION)),
                         intermediate=max(2, round(spec.intermediate * SMALL_FRACTION)), head_dim_kept=spec.head_dim)
    cid = f"{fam}-small-indep"
    seed = zoo.base_seed(fam, 200)

    def run_small(tmp: Path) -> dict[str, Any]:
        model = build_model(small, seed)
        res = zoo.train(model, "main", s.base_steps, seed)
        zoo.write_model(tmp, small, {k: v.detach() for k, v in model.state_dict().items()})
        return {"train": res.to_dict()}

    t = Task(cid, fam, "independent-pruned-shape", (), {"kind": "independent-pruned-shape", "spec": small.to_dict(),
                                                        "seed": seed, "steps": s.base_steps, "data": "main"},
             run_small, ancestors=frozenset({cid}))
    t.pairs = [pair(parent, cid, "independent", "independent-pruned-shape",
                    note="trained from scratch at the pruned students' shape; shares only the tokenizer"),
               pair(f"{parent}-distill-pruned", cid, "independent", "independent-pruned-shape",
                    note="same shape; one is pruned from another base, the other trained from scratch")]
    zoo.add(t)
