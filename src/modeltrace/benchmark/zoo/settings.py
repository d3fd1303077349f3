"""How big a zoo to build: the full benchmark, the quick CI subset, a tiny one for tests, and the held-out
and scale zoos.

The "tuning" zoos (full, quick, tiny) are the ones every threshold, gate and rule was tuned on. The held-out
zoos are built from fresh seeds, other widths, another learning rate and other text (see `text.py`), so
that a rule's measured error rates are not graded on the models it was tuned against; the scale zoo has
one family of realistic size (hidden 256, 6 layers, an 8k vocabulary). A change of any rule re-runs all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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
    zoo: str = "tuning"  # "tuning" | "heldout" | "scale": which benchmark the zoo belongs to
    seed_salt: str = ""  # prefixed to every derived seed; "" keeps the tuning zoo's seeds
    seed_offset: int = 0  # added to every base's training seed
    corpus: tuple[str, str] = ("main", "other")  # text.py splits: (base training, fine-tune data)
    power: bool = False  # the strength ladders of `plan_power` (noise, fine-tune steps, rotation, pruning)
    shape_cases: bool = False  # the shape-changing cases of `plan_shape_cases` and multi-network folders
    power_noise: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
    power_rotate_noise: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
    power_finetune: tuple[int, ...] = (10, 40, 160, 640)
    power_prune: tuple[float, ...] = (0.9, 0.75, 0.5, 0.25)

    def kinds_for(self, family: str) -> tuple[str, ...]:
        kinds = self.derive.get(family, (0, ()))[1]
        return tuple(k for k in kinds if family == "llama" or k not in LLAMA_ONLY)

    def recipe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "vocab": self.vocab, "hidden": self.hidden, "layers": self.layers, "heads": self.heads,
            "intermediate": self.intermediate, "seq": self.seq, "batch": self.batch,
            "main_chars": self.main_chars, "other_chars": self.other_chars}
        if self.zoo != "tuning":  # the tuning zoo's cache keys stay what they were before the held-out zoo
            out.update({"zoo": self.zoo, "seed_salt": self.seed_salt, "seed_offset": self.seed_offset,
                        "corpus": list(self.corpus), "lr": self.lr})
        return out


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

# Held-out: fresh seeds, another width and learning rate, bases trained on other standard-library packages
# interleaved with English prose, fine-tunes on prose only (no text the tuning zoo saw).
HELDOUT = replace(
    FULL, name="heldout", zoo="heldout", seed_salt="heldout-2026:", seed_offset=50_000,
    corpus=("heldout-main", "heldout-other"), hidden=80, heads=4, intermediate=320, lr=2e-3,
    shapes=((112, 4, 4, 448), (48, 3, 4, 160)), power=True, shape_cases=True,
)
HELDOUT_QUICK = replace(
    QUICK, name="heldout-quick", zoo="heldout", seed_salt="heldout-2026:", seed_offset=50_000,
    corpus=("heldout-main", "heldout-other"), hidden=80, heads=4, intermediate=320, lr=2e-3,
    shapes=((112, 4, 4, 448),), power=True, shape_cases=True,
)
HELDOUT_TINY = replace(
    TINY, name="heldout-tiny", zoo="heldout", seed_salt="heldout-2026:", seed_offset=50_000,
    corpus=("heldout-main", "heldout-other"), multimodal=False, bases={"llama": 2},
    derive={"llama": (1, ("noise", "permute"))}, power=True, shape_cases=True,
    power_noise=(0.05, 1.0), power_rotate_noise=(0.1,), power_finetune=(5,), power_prune=(0.5,), distill_steps=5,
)
# Realistic scale: one Llama family of hidden 256, 6 layers, an 8,192-token vocabulary, mixed code and prose.
SCALE = ZooSettings(
    name="scale", zoo="scale", seed_salt="scale-2026:", seed_offset=70_000, bases={"llama": 2}, other_shapes=0,
    derive={"llama": (1, ("finetune", "lora", "noise", "cast", "permute", "rotate", "width-prune", "layer-drop",
                          "distill"))},
    corpus=("heldout-mixed", "heldout-other"), vocab=8192, hidden=256, layers=6, heads=4, intermediate=1024,
    seq=64, batch=8, lr=2e-3, base_steps=200, finetune_steps=40, lora_steps=40, heal_steps=20, distill_steps=60,
    main_chars=3_000_000, other_chars=400_000, noise_scales=(0.05, 0.2), multimodal=False, shapes=(),
)

SETTINGS = {"full": FULL, "quick": QUICK, "tiny": TINY, "heldout": HELDOUT, "heldout-quick": HELDOUT_QUICK,
            "heldout-tiny": HELDOUT_TINY, "scale": SCALE}
ZOOS = ("tuning", "heldout", "scale")


def settings_for(zoo: str, quick: bool) -> ZooSettings:
    """The settings of benchmark `zoo` ("tuning", "heldout", "scale"); `quick` picks the small variant."""
    if zoo == "tuning":
        return QUICK if quick else FULL
    if zoo == "heldout":
        return HELDOUT_QUICK if quick else HELDOUT
    if zoo == "scale":
        return SCALE
    raise ValueError(f"unknown zoo {zoo!r} (known: {', '.join(ZOOS)})")
