"""What the zoo contains: bases, other shapes, every derivation of each base, and the labelled pairs.

Each task's recipe is data (the cache key); its `run` builds the model into a fresh folder. Pairs carry the
ground truth known at planning time; facts found while building (kept neurons, logit differences) are
merged in from the model's record when the manifest is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeltrace.benchmark.zoo import derive as D
from modeltrace.benchmark.zoo.build import Task, Zoo
from modeltrace.benchmark.zoo.families import (
    FAMILIES,
    Spec,
    build_model,
    export_hf,
    hf_config,
    model_from_params,
    write_hf_folder,
)
from modeltrace.benchmark.zoo.tokenizer import pruned, with_added_tokens, write_tokenizer

SAME_SHAPE_KINDS = {"finetune", "lora", "continued-pretrain", "noise", "cast", "quantize-int8", "gguf-q8_0",
                    "gguf-q4_k", "onnx-int8", "merge-linear", "merge-slerp", "merge-task-arithmetic", "permute",
                    "rotate", "shell", "distill"}
FUNCTION_TOLERANCE = 1e-3


def pair(a: str, b: str, label: str, kind: str, **truth: Any) -> dict[str, Any]:
    return {"id": f"{a}~{b}", "a": a, "b": b, "label": label, "kind": kind, "truth": truth}


def plan_zoo(zoo: Zoo) -> None:
    for fam in FAMILIES:
        if zoo.s.bases.get(fam, 0):
            plan_family(zoo, fam)
    if zoo.s.multimodal:
        from modeltrace.benchmark.zoo.multimodal import plan_multimodal

        plan_multimodal(zoo)
    if zoo.s.shape_cases:
        from modeltrace.benchmark.zoo.multinet import plan_multinet

        plan_multinet(zoo)


def plan_family(zoo: Zoo, fam: str) -> None:
    s = zoo.s
    n = s.bases[fam]
    bases = [f"{fam}-s{i}" for i in range(n)]
    for i, bid in enumerate(bases):
        seed = zoo.base_seed(fam, i)
        spec = zoo.spec(fam)
        task = Task(bid, fam, "base", (), {"kind": "base", "spec": spec.to_dict(), "seed": seed,
                                           "steps": s.base_steps, "lr": s.lr, "data": "main"},
                    _trainer(zoo, spec, seed, s.base_steps), ancestors=frozenset({bid}))
        task.pairs = [pair(o, bid, "independent", "independent-same-arch") for o in bases[:i]]
        zoo.add(task)
    others: list[str] = []
    for j, (h, layers, heads, inter) in enumerate(s.shapes[: s.other_shapes]):
        wid = f"{fam}-w{j}"
        seed = zoo.base_seed(fam, 100 + j)
        spec = zoo.spec(fam, h, layers, heads, inter)
        task = Task(wid, fam, "other-shape", (), {"kind": "other-shape", "spec": spec.to_dict(), "seed": seed,
                                                  "steps": s.base_steps, "lr": s.lr, "data": "main"},
                    _trainer(zoo, spec, seed, s.base_steps), ancestors=frozenset({wid}))
        task.pairs = [pair(o, wid, "independent", "independent-other-shape") for o in bases + others]
        others.append(wid)
        zoo.add(task)
    count, _ = s.derive.get(fam, (0, ()))
    for i in range(min(count, n)):
        for kind in s.kinds_for(fam):
            for task in derivations(zoo, fam, bases, i, kind):
                _add_control(task, bases)
                zoo.add(task)
    if fam == "llama" and (s.power or s.shape_cases):
        from modeltrace.benchmark.zoo.power import plan_power, plan_shape_cases

        if s.power:
            plan_power(zoo, fam, bases[0])
        if s.shape_cases:
            plan_shape_cases(zoo, fam, bases[0])


def _add_control(task: Task, bases: list[str]) -> None:
    """One independent pair per derived model: the child against a base that is not among its ancestors."""
    if not task.pairs or task.pairs[0]["label"] == "independent":
        return
    idx = bases.index(task.parents[0]) if task.parents[0] in bases else 0
    for step in range(1, len(bases)):
        c = bases[(idx + step) % len(bases)]
        if c not in task.ancestors:
            kind = "independent-same-arch" if task.kind in SAME_SHAPE_KINDS else "independent-other-shape"
            task.pairs.append(pair(c, task.id, "independent", kind, control_for=task.kind))
            return


def _trainer(zoo: Zoo, spec: Spec, seed: int, steps: int):  # type: ignore[no-untyped-def]
    def run(tmp: Path) -> dict[str, Any]:
        model = build_model(spec, seed)
        res = zoo.train(model, "main", steps, seed)
        zoo.write_model(tmp, spec, {k: v.detach() for k, v in model.state_dict().items()})
        return {"train": res.to_dict()}

    return run


def derivations(zoo: Zoo, fam: str, bases: list[str], i: int, kind: str) -> list[Task]:
    s = zoo.s
    parent = bases[i]
    other = bases[(i + 1) % len(bases)]
    anc = frozenset({parent})

    def task(cid: str, recipe: dict[str, Any], run: Any, parents: tuple[str, ...] = (parent,),
             ancestors: frozenset[str] = anc, label: str = "derived", **truth: Any) -> Task:
        t = Task(cid, fam, kind, parents, {"kind": kind, "parents": list(parents), **recipe}, run,
                 ancestors=ancestors)
        t.pairs = [pair(parent, cid, label, kind, **truth)]
        return t

    def trained(cid: str, split: str, steps: int, lr: float, **kw: Any):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            model = model_from_params(spec, p)
            res = zoo.train(model, split, steps, zoo.seed(cid), lr=lr, **kw)
            zoo.write_model(tmp, spec, {k: v.detach() for k, v in model.state_dict().items()})
            return {"train": res.to_dict()}
        return run

    def tensor_level(fn: Any, dtype: str = "float32"):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            cfg = hf_config(spec)
            cfg["torch_dtype"] = dtype
            write_hf_folder(tmp, cfg, fn(export_hf(spec, p)))
            write_tokenizer(tmp, zoo.data()["tokenizer_json"], spec.max_pos)
            return {}
        return run

    if kind == "finetune":
        cid = f"{parent}-finetune"
        return [task(cid, {"data": "other", "steps": s.finetune_steps, "lr": 1e-3},
                     trained(cid, "other", s.finetune_steps, 1e-3), data="other", steps=s.finetune_steps)]
    if kind == "lora":
        cid = f"{parent}-lora"
        return [task(cid, {"data": "other", "steps": s.lora_steps, "rank": s.lora_rank, "alpha": 16.0},
                     trained(cid, "other", s.lora_steps, 3e-3, lora_rank=s.lora_rank),
                     lora_rank=s.lora_rank, lora_alpha=16.0, lora_targets=["q", "k", "v", "o", "mlp"])]
    if kind == "continued-pretrain":
        cid = f"{parent}-cpt"
        return [task(cid, {"data": "main", "steps": s.cpt_steps, "lr": 1e-3},
                     trained(cid, "main", s.cpt_steps, 1e-3), data="main", steps=s.cpt_steps)]
    if kind == "noise":
        out = []
        for sigma in s.noise_scales:
            tag = "1_708" if abs(sigma - 1 / 708) < 1e-12 else f"{sigma:g}"
            cid = f"{parent}-noise-{tag}"
            seed = zoo.seed(cid)
            out.append(task(cid, {"sigma_rel": sigma, "seed": seed},
                            tensor_level(lambda t, sg=sigma, sd=seed: D.add_noise(t, sg, sd)), sigma_rel=sigma))
        return out
    if kind == "cast":
        return [task(f"{parent}-cast-{dt}", {"dtype": dt},
                     tensor_level(lambda t, d=dt: D.cast(t, d), {"bf16": "bfloat16", "f16": "float16"}[dt]),
                     dtype=dt) for dt in ("bf16", "f16")]
    if kind == "quantize-int8":
        return [task(f"{parent}-int8", {"scheme": "int8 per-channel symmetric, dequantized"},
                     tensor_level(D.quantize_int8), scheme="int8 per-channel symmetric", bits=8)]
    if kind in ("gguf-q8_0", "gguf-q4_k"):
        return _gguf(zoo, fam, parent, kind, task)
    if kind == "onnx-int8":
        return _onnx(zoo, parent, kind, task)
    if kind == "layer-drop":
        cid = f"{parent}-layerdrop"
        drop = [s.layers // 2]

        def run_drop(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            spec2, p2 = D.drop_layers(spec, p, drop)
            model = model_from_params(spec2, p2)
            res = zoo.train(model, "main", s.heal_steps, zoo.seed(cid), lr=1e-3)
            zoo.write_model(tmp, spec2, {k: v.detach() for k, v in model.state_dict().items()})
            return {"train": res.to_dict()}
        return [task(cid, {"drop": drop, "heal_steps": s.heal_steps}, run_drop, dropped_layers=drop,
                     layer_map=[j for j in range(s.layers) if j not in drop], healing_steps=s.heal_steps)]
    if kind == "width-prune":
        cid = f"{parent}-widthprune"

        def run_prune(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            spec2, p2, truth = D.width_prune(spec, p, 0.75)
            zoo.write_model(tmp, spec2, p2)
            return {"truth": truth}
        return [task(cid, {"keep_fraction": 0.75}, run_prune, kept_fraction=0.75)]
    if kind == "depth-upscale":
        cid = f"{parent}-upscale"

        def run_up(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            spec2, p2, truth = D.depth_upscale(spec, p)
            zoo.write_model(tmp, spec2, p2)
            return {"truth": truth}
        return [task(cid, {"scheme": "duplicate middle layers"}, run_up)]
    if kind in ("merge-linear", "merge-slerp"):
        if other == parent:
            zoo.skipped.append({"kind": kind, "model": parent, "reason": "needs a second base of the family"})
            return []
        linear = kind == "merge-linear"
        w_parent = 0.7 if linear else 0.6
        cid = f"{parent}-{kind}-{other.rsplit('-', 1)[1]}"

        def run_merge(tmp: Path) -> dict[str, Any]:
            spec, pa = zoo.load(parent)
            _, pb = zoo.load(other)
            merged = D.merge_linear(pa, pb, w_parent) if linear else D.merge_slerp(pa, pb, 1 - w_parent)
            zoo.write_model(tmp, spec, merged)
            return {}
        t = task(cid, {"other": other, "weight_parent": w_parent}, run_merge, parents=(parent, other),
                 ancestors=frozenset({parent, other}), merge_coef=w_parent, other=other,
                 method="linear" if linear else "slerp")
        t.pairs.append(pair(other, cid, "derived", kind, merge_coef=round(1 - w_parent, 6), other=parent,
                            method="linear" if linear else "slerp"))
        return [t]
    if kind == "merge-task-arithmetic":
        kinds = s.kinds_for(fam)
        if "finetune" not in kinds or "lora" not in kinds:
            zoo.skipped.append({"kind": kind, "model": parent, "reason": "needs the finetune and lora children"})
            return []
        ft, lo = f"{parent}-finetune", f"{parent}-lora"
        coef = 0.6
        cid = f"{parent}-merge-task-arithmetic"

        def run_ta(tmp: Path) -> dict[str, Any]:
            spec, pb = zoo.load(parent)
            _, pf = zoo.load(ft)
            _, pl = zoo.load(lo)
            zoo.write_model(tmp, spec, D.merge_task_arithmetic(pb, [(pf, pb), (pl, pb)], coef))
            return {}
        return [task(cid, {"coef": coef, "task_models": [ft, lo]}, run_ta, parents=(parent, ft, lo),
                     merge_coef=coef, task_models=[ft, lo], method="task-arithmetic")]
    if kind in ("permute", "rotate"):
        cid = f"{parent}-{kind}"

        def run_fp(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            p2, truth = (D.permute if kind == "permute" else D.rotate)(spec, p, zoo.seed(cid))
            diff = D.max_logit_diff(spec, p, spec, p2)
            if diff > FUNCTION_TOLERANCE:
                raise AssertionError(f"{cid}: {kind} changed the logits by {diff:g}")
            zoo.write_model(tmp, spec, p2)
            return {"truth": {**truth, "logit_max_abs_diff": diff}}
        return [task(cid, {"seed": zoo.seed(cid)}, run_fp, function_preserving=True)]
    if kind == "shell":
        cid = f"{parent}-shell"

        def run_shell(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            cfg, tensors, truth = D.llama3v_shell(spec, p, zoo.seed(cid))
            write_hf_folder(tmp, cfg, tensors)
            write_tokenizer(tmp, zoo.data()["tokenizer_json"], spec.max_pos)
            return {"truth": truth}
        return [task(cid, {"seed": zoo.seed(cid)}, run_shell)]
    if kind == "vocab-extend":
        return [task(f"{parent}-vocabext", {"new_tokens": 32}, _vocab_extend(zoo, parent, f"{parent}-vocabext"))]
    if kind == "vocab-prune":
        return [task(f"{parent}-vocabprune", {"drop": 128, "criterion": "least frequent on other split"},
                     _vocab_prune(zoo, parent))]
    if kind == "upcycle-moe":
        cid = f"{parent}-moe"

        def run_moe(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            cfg, tensors, truth = D.upcycle_moe(spec, p, 4, 2, 0.01, zoo.seed(cid))
            write_hf_folder(tmp, cfg, tensors)
            write_tokenizer(tmp, zoo.data()["tokenizer_json"], spec.max_pos)
            return {"truth": truth}
        return [task(cid, {"experts": 4, "top_k": 2, "expert_sigma_rel": 0.01}, run_moe)]
    if kind == "distill":
        cid = f"{parent}-distill"
        seed = zoo.seed(cid)

        def run_distill(tmp: Path) -> dict[str, Any]:
            spec, p = zoo.load(parent)
            teacher = model_from_params(spec, p).eval()
            student = build_model(spec, seed)
            res = zoo.train(student, "main", s.distill_steps, seed, objective="distill", teacher=teacher)
            zoo.write_model(tmp, spec, {k: v.detach() for k, v in student.state_dict().items()})
            return {"train": res.to_dict()}
        return [task(cid, {"steps": s.distill_steps, "student_seed": seed}, run_distill, label="distilled",
                     teacher=parent, student_init_seed=seed, shares_weights=False)]
    raise ValueError(f"unknown derivation kind {kind!r}")


def _vocab_extend(zoo: Zoo, parent: str, cid: str):  # type: ignore[no-untyped-def]
    def run(tmp: Path) -> dict[str, Any]:
        spec, p = zoo.load(parent)
        d = zoo.data()
        tok_json = d["tokenizer_json"]
        words = D.new_words(d["other_corpus"].text, tok_json["model"]["vocab"], 32)
        g = D.gen_for(zoo.seed(cid))
        rows, head_rows = [], []
        for w in words:
            ids = torch.tensor(d["tokenizer"].encode(w).ids)
            e = p["tok.weight"][ids].mean(0)
            rows.append(e + 0.01 * float(p["tok.weight"].std()) * torch.randn(e.shape, generator=g))
            if "head.weight" in p:
                head_rows.append(p["head.weight"][ids].mean(0))
        spec2, p2 = D.vocab_rows(spec, p, extra=torch.stack(rows),
                                 extra_head=torch.stack(head_rows) if head_rows else None)
        zoo.write_model(tmp, spec2, p2, with_added_tokens(tok_json, words, special=False))
        return {"truth": {"added_tokens": len(words), "old_vocab": spec.vocab, "new_vocab": spec2.vocab,
                          "init": "mean of the rows of the word's old tokens"}}
    return run


def _vocab_prune(zoo: Zoo, parent: str):  # type: ignore[no-untyped-def]
    def run(tmp: Path) -> dict[str, Any]:
        spec, p = zoo.load(parent)
        d = zoo.data()
        tok_json = d["tokenizer_json"]
        counts = np.bincount(d["other"].ids.numpy(), minlength=spec.vocab)
        first_learned = 5 + 256
        learned = np.arange(first_learned, spec.vocab)
        order = learned[np.lexsort((learned, counts[learned]))]
        inv = {i: t for t, i in tok_json["model"]["vocab"].items()}
        drop = {inv[int(i)] for i in order[:128]}
        new_json, kept = pruned(tok_json, drop)
        spec2, p2 = D.vocab_rows(spec, p, rows=torch.from_numpy(kept))
        zoo.write_model(tmp, spec2, p2, new_json)
        return {"truth": {"old_vocab": spec.vocab, "new_vocab": spec2.vocab, "removed": spec.vocab - spec2.vocab,
                          "kept_ids": kept.tolist()}}
    return run


def _gguf(zoo: Zoo, fam: str, parent: str, kind: str, task: Any) -> list[Task]:
    try:
        from modeltrace.formats.gguf_write import tensor_qtype, write_gguf
    except ImportError as exc:
        zoo.skipped.append({"kind": kind, "model": parent,
                            "reason": f"GGUF writer unavailable (modeltrace.formats.gguf_write: {exc})"})
        return []
    from modeltrace.benchmark.zoo.gguf_names import gguf_tokenizer, to_gguf

    qtype = {"gguf-q8_0": "Q8_0", "gguf-q4_k": "Q4_K"}[kind]
    cid = f"{parent}-{kind}"

    def run(tmp: Path) -> dict[str, Any]:
        spec, p = zoo.load(parent)
        tensors, meta = to_gguf(spec, D.numpy_tensors(export_hf(spec, p)))
        write_gguf(tmp / "model.gguf", tensors, qtype=qtype, arch=fam, metadata=meta,
                   tokenizer=gguf_tokenizer(zoo.data()["tokenizer_json"], spec.vocab))
        stored = {n: tensor_qtype(tuple(a.shape), qtype) for n, a in tensors.items()}
        counts: dict[str, int] = {}
        for q in stored.values():
            counts[q] = counts.get(q, 0) + 1
        return {"single_file": "model.gguf", "format": "gguf",
                "truth": {"stored_types": counts, "rope_qk_interleaved": fam == "llama",
                          "dropped": "masked-LM head" if fam == "bert" else None}}
    return [task(cid, {"qtype": qtype}, run, quant=qtype)]


def _onnx(zoo: Zoo, parent: str, kind: str, task: Any) -> list[Task]:
    try:
        from modeltrace.formats.onnx_write import write_onnx
    except ImportError as exc:
        zoo.skipped.append({"kind": kind, "model": parent,
                            "reason": f"ONNX writer unavailable (modeltrace.formats.onnx_write: {exc})"})
        return []
    cid = f"{parent}-onnx-int8"

    def run(tmp: Path) -> dict[str, Any]:
        spec, p = zoo.load(parent)
        write_onnx(tmp / "model.onnx", D.numpy_tensors(export_hf(spec, p)), quantize="int8")
        return {"single_file": "model.onnx", "format": "onnx"}
    return [task(cid, {"quantize": "int8"}, run, quantize="int8 per-channel symmetric (DequantizeLinear)")]


__all__ = ["pair", "plan_zoo"]
