"""How big a zoo to build: the full benchmark, the quick CI subset, and a tiny one for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_ONLY = ("rotate", "shell", "upcycle-moe")
DERIVATION_KINDS = (
    "finetune", "lora", "continued-pretrain", "noise", "cast", "quantize-int8", "gguf-q8_0", "gguf-q4_k",
    "onnx-int8", "layer-drop", "width-prune", "depth-upscale", "merge-linear", "merge-slerp",
    "merge-task-arithmetic", "permute", "rotate", "shell", "vocab-extend", "vocab-prune", "upcycle-moe", "distill",
)


@dataclass(frozen=True)
class ZooSettings:
    """Every size and step count of one zoo build; part of every model's recipe (and so of the cache key)."""

    name: str
    bases: dict[str, int]  # independently trained bases per family
    other_shapes: int  # independent models of another width and depth, per family
    derive: dict[str, tuple[int, tuple[str, ...]]]  # family -> (how many bases get derivations, which kinds)
    vocab: int = 1024
    hidden: int = 64
    layers: int = 3
    heads: int = 4
    intermediate: int = 256
    seq: int = 64
    batch: int = 16
    lr: float = 3e-3
    base_steps: int = 300
    finetune_steps: int = 80
    lora_steps: int = 80
    lora_rank: int = 4
    cpt_steps: int = 200
    heal_steps: int = 40
    distill_steps: int = 120
    main_chars: int = 1_500_000
    other_chars: int = 500_000
    noise_scales: tuple[float, ...] = (1 / 708, 0.01, 0.05, 0.2)
    multimodal: bool = True
    mm_steps: int = 300
    shapes: tuple[tuple[int, int, int, int], ...] = field(default=((96, 4, 4, 384), (48, 2, 4, 192)))

    def kinds_for(self, family: str) -> tuple[str, ...]:
        kinds = self.derive.get(family, (0, ()))[1]
        return tuple(k for k in kinds if family == "llama" or k not in LLAMA_ONLY)

    def recipe(self) -> dict[str, object]:
        return {"vocab": self.vocab, "hidden": self.hidden, "layers": self.layers, "heads": self.heads,
                "intermediate": self.intermediate, "seq": self.seq, "batch": self.batch,
                "main_chars": self.main_chars, "other_chars": self.other_chars}


FULL = ZooSettings(
    name="full", bases={"llama": 6, "gpt2": 6, "bert": 6}, other_shapes=2,
    derive={f: (6, DERIVATION_KINDS) for f in ("llama", "gpt2", "bert")},
)

QUICK = ZooSettings(
    name="quick", bases={"llama": 4, "gpt2": 2, "bert": 2}, other_shapes=1,
    derive={"llama": (1, DERIVATION_KINDS), "gpt2": (1, ("noise", "permute", "finetune")),
            "bert": (1, ("noise", "permute", "finetune"))},
    base_steps=150, finetune_steps=40, lora_steps=40, cpt_steps=120, heal_steps=20, distill_steps=60,
    noise_scales=(1 / 708, 0.05), mm_steps=250, shapes=((96, 4, 4, 384),),
)

TINY = ZooSettings(
    name="tiny", bases={"llama": 2, "gpt2": 1, "bert": 1}, other_shapes=0,
    derive={"llama": (1, ("noise", "cast", "quantize-int8", "gguf-q8_0", "onnx-int8", "permute", "rotate", "shell",
                          "finetune", "merge-linear", "layer-drop", "width-prune", "depth-upscale", "vocab-extend",
                          "vocab-prune", "upcycle-moe")),
            "gpt2": (1, ("permute", "gguf-q8_0")), "bert": (1, ("permute",))},
    vocab=512, hidden=32, layers=2, heads=2, intermediate=64, seq=32, batch=8,
    base_steps=40, finetune_steps=5, heal_steps=5, main_chars=200_000, other_chars=60_000, noise_scales=(1 / 708,),
    mm_steps=10, shapes=(),
)

SETTINGS = {"full": FULL, "quick": QUICK, "tiny": TINY}
