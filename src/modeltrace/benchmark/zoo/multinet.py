"""Folders that hold several networks: a three-stage cascade shipped as three PyTorch files whose tensor
names collide across files (as a face detector's `pnet.pt`, `rnet.pt`, `onet.pt` do), a copy of it with
renamed files and modules, and an independently trained cascade of the same layout.

Each stage is a small convolutional classifier trained for a few steps on synthetic images (a bright
square somewhere on noise: is it in the left half?), so its weights are learned, not random.
"""

# mypy: disable-error-code="no-untyped-call,no-any-return"
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeltrace.benchmark.zoo.build import Task, Zoo
from modeltrace.benchmark.zoo.plan import pair

STAGES = (("pnet", 12, 10, 16), ("rnet", 24, 16, 48), ("onet", 32, 16, 64))  # name, image size, channels, fc
RENAMED_FILES = {"pnet": "stage1_proposal.pt", "rnet": "stage2_refine.pt", "onet": "stage3_output.pt"}
RENAMED_MODULES = {"conv1": "features.0", "conv2": "features.3", "fc": "classifier.0", "out": "classifier.2"}
KINDS = ("multi-network-renamed", "multi-network-independent")


class Stage(nn.Module):
    """conv-relu-pool, conv-relu-pool, fc, out: the same tensor names in every stage."""

    def __init__(self, size: int, ch: int, fc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.fc = nn.Linear(ch * (size // 4) ** 2, fc)
        self.out = nn.Linear(fc, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.out(F.relu(self.fc(x.flatten(1))))


def _images(size: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(n, 3, size, size, generator=gen) * 0.3
    side = max(2, size // 4)
    cols = torch.randint(0, size - side + 1, (n,), generator=gen)
    rows = torch.randint(0, size - side + 1, (n,), generator=gen)
    for i in range(n):
        x[i, :, rows[i]:rows[i] + side, cols[i]:cols[i] + side] += 1.5
    return x, (cols + side / 2 < size / 2).long()


def train_stage(size: int, ch: int, fc: int, seed: int, steps: int) -> tuple[dict[str, Tensor], dict[str, float]]:
    torch.manual_seed(seed)
    net = Stage(size, ch, fc)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        x, y = _images(size, 32, gen)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head, tail = losses[: max(1, steps // 5)], losses[-max(1, steps // 5):]
    return ({k: v.detach().clone() for k, v in net.state_dict().items()},
            {"initial_loss": sum(head) / len(head), "final_loss": sum(tail) / len(tail), "steps": steps})


def plan_multinet(zoo: Zoo) -> None:
    """Three models: cascade A, A with renamed files and modules (bit-identical tensors), cascade B."""
    steps = max(10, zoo.s.base_steps // 3)
    a, a2, b = "mnet-a", "mnet-a-renamed", "mnet-b"

    def cascade(seed_base: int):  # type: ignore[no-untyped-def]
        def run(tmp: Path) -> dict[str, Any]:
            info = {}
            for j, (name, size, ch, fc) in enumerate(STAGES):
                sd, info[name] = train_stage(size, ch, fc, seed_base + j, steps)
                torch.save(sd, tmp / f"{name}.pt")
            return {"format": "torch", "train": info}
        return run

    def renamed(tmp: Path) -> dict[str, Any]:
        src = zoo.models_dir / a
        for name, new in RENAMED_FILES.items():
            sd = torch.load(src / f"{name}.pt", weights_only=True)
            out = {}
            for k, v in sd.items():
                mod, _, leaf = k.partition(".")
                out[f"{RENAMED_MODULES.get(mod, mod)}.{leaf}"] = v.clone()
            torch.save(out, tmp / new)
        return {"format": "torch", "truth": {"files": RENAMED_FILES, "modules": RENAMED_MODULES}}

    recipe = {"stages": [list(s) for s in STAGES], "steps": steps}
    ta = Task(a, "multinet", "base", (), {"kind": "multinet", **recipe, "seed": zoo.base_seed("mm", 300)},
              cascade(zoo.base_seed("mm", 300)), ancestors=frozenset({a}))
    zoo.add(ta)
    tb = Task(b, "multinet", "base", (), {"kind": "multinet", **recipe, "seed": zoo.base_seed("mm", 310)},
              cascade(zoo.base_seed("mm", 310)), ancestors=frozenset({b}))
    tb.pairs = [pair(a, b, "independent", "multi-network-independent",
                     note="same three-file layout and tensor names; every stage trained from its own seed")]
    zoo.add(tb)
    tc = Task(a2, "multinet", "multi-network-renamed", (a,), {"kind": "multi-network-renamed", "parents": [a],
                                                               "files": RENAMED_FILES, "modules": RENAMED_MODULES},
              renamed, ancestors=frozenset({a}))
    tc.pairs = [pair(a, a2, "derived", "multi-network-renamed", components=len(STAGES)),
                pair(b, a2, "independent", "multi-network-independent", control_for="multi-network-renamed")]
    zoo.add(tc)
