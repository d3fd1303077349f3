"""Training loops of the zoo: causal LM, masked LM, LoRA, distillation; seeded, single-threaded, on CPU.

Losses are measured on a fixed held-out window set before and after training, so `initial_loss` and
`final_loss` in the manifest compare like with like.
"""

# mypy: disable-error-code="no-any-return,no-untyped-call"
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from modeltrace.benchmark.zoo.families import TinyTransformer
from modeltrace.benchmark.zoo.tokenizer import MASK

EVAL_FRACTION = 0.05
LORA_TARGETS = ("q", "k", "v", "o", "up", "gate", "down")


@dataclass(frozen=True)
class TrainResult:
    """What one training run did, as recorded in the manifest."""

    objective: str
    steps: int
    lr: float
    batch: int
    seq: int
    data: str
    initial_loss: float
    final_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "steps": self.steps, "lr": self.lr, "batch": self.batch,
                "seq": self.seq, "data": self.data, "initial_loss": round(self.initial_loss, 5),
                "final_loss": round(self.final_loss, 5)}


class TokenData:
    """A token stream with a held-out tail; windows are drawn with an explicit seed."""

    def __init__(self, name: str, ids: np.ndarray, vocab: int) -> None:
        self.name = name
        self.ids = torch.from_numpy(ids.astype(np.int64))
        self.vocab = vocab
        self.split = int(len(ids) * (1 - EVAL_FRACTION))

    def batch(self, gen: torch.Generator, batch: int, length: int) -> Tensor:
        starts = torch.randint(0, self.split - length - 1, (batch,), generator=gen)
        return torch.stack([self.ids[s:s + length] for s in starts.tolist()])

    def eval_batches(self, batch: int, length: int, n: int = 4) -> list[Tensor]:
        tail = self.ids[self.split:]
        span = len(tail) - length - 1
        starts = np.linspace(0, span, n * batch).astype(np.int64)
        wins = torch.stack([tail[s:s + length] for s in starts.tolist()])
        return list(wins.split(batch))


def mask_tokens(ids: Tensor, gen: torch.Generator, vocab: int, rate: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT masking (Devlin et al. 2019): 15% targets; of them 80% <mask>, 10% random, 10% kept."""
    targets = ids.clone()
    pick = torch.rand(ids.shape, generator=gen) < rate
    targets[~pick] = -100
    inp = ids.clone()
    r = torch.rand(ids.shape, generator=gen)
    inp[pick & (r < 0.8)] = MASK
    rand_ids = torch.randint(5, vocab, ids.shape, generator=gen)
    swap = pick & (r >= 0.8) & (r < 0.9)
    inp[swap] = rand_ids[swap]
    return inp, targets


def lm_inputs(model: TinyTransformer, window: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if model.spec.family == "bert":
        return mask_tokens(window[:, :-1], gen, model.spec.vocab)
    return window[:, :-1], window[:, 1:]


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@torch.no_grad()
def eval_loss(model: TinyTransformer, data: TokenData, batch: int, seq: int,
              params: dict[str, Tensor] | None = None) -> float:
    """Mean held-out loss (masked LM uses a fixed masking seed)."""
    gen = torch.Generator().manual_seed(12345)
    total = 0.0
    batches = data.eval_batches(batch, seq + 1)
    for w in batches:
        inp, tgt = lm_inputs(model, w, gen)
        logits = model(inp) if params is None else functional_call(model, params, (inp,))
        total += float(_loss(logits, tgt))
    return total / len(batches)


def _schedule(step: int, steps: int, lr: float) -> float:
    warm = max(1, steps // 10)
    if step < warm:
        return lr * (step + 1) / warm
    prog = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def train(model: TinyTransformer, data: TokenData, *, steps: int, lr: float, batch: int, seq: int, seed: int,
          objective: str = "lm", teacher: TinyTransformer | None = None, lora_rank: int = 0,
          lora_alpha: float = 16.0) -> TrainResult:
    """Train `model` in place. objective: "lm" (causal or masked by family) or "distill" (needs teacher;
    the student matches the teacher's full output distribution by KL divergence, Hinton et al. 2015).

    With `lora_rank > 0` only low-rank adapters (Hu et al. 2021, LoRA) train; they are merged into the
    weights at the end, scaled by alpha / rank.
    """
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    initial = eval_loss(model, data, batch, seq)
    base = {k: v.detach() for k, v in model.named_parameters()}
    adapters: dict[str, tuple[Tensor, Tensor]] = {}
    if lora_rank > 0:
        for name, w in base.items():
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blocks" and parts[2] in LORA_TARGETS and parts[3] == "weight":
                a = (torch.randn(lora_rank, w.shape[1], generator=gen) / math.sqrt(w.shape[1])).requires_grad_()
                b = torch.zeros(w.shape[0], lora_rank, requires_grad=True)
                adapters[name] = (a, b)
        trainable = [t for ab in adapters.values() for t in ab]
    else:
        trainable = list(model.parameters())
    scale = lora_alpha / max(1, lora_rank)

    def merged() -> dict[str, Tensor]:
        out = dict(base)
        for n, (a, b) in adapters.items():
            out[n] = base[n] + scale * (b @ a)
        return out

    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=0.0 if lora_rank else 0.01)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _schedule(step, steps, lr)
        window = data.batch(gen, batch, seq + 1)
        inp, tgt = lm_inputs(model, window, gen)
        logits = functional_call(model, merged(), (inp,)) if adapters else model(inp)
        if objective == "distill":
            assert teacher is not None
            with torch.no_grad():
                t_logits = teacher(inp)
            loss = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                            reduction="batchmean") / logits.shape[1]
        else:
            loss = _loss(logits, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
    model.eval()
    if adapters:
        with torch.no_grad():
            for n, w in merged().items():
                if n in adapters:
                    dict(model.named_parameters())[n].copy_(w)
    final = eval_loss(model, data, batch, seq)
    return TrainResult(objective + (f"+lora{lora_rank}" if lora_rank else ""), steps, lr, batch, seq, data.name,
                       initial, final, time.perf_counter() - t0)
