"""What every evidence method returns, and the context it runs in.

An evidence method tests one null hypothesis (by default: "A and B were trained from
independent initializations") and returns an `Evidence` with its statistic and p-value. A
method that cannot run on these inputs returns `Evidence.skipped(...)` with the reason; a
method that crashes is turned into an `error` finding by the compare pipeline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from modeltrace.model import Model

NULL_INDEPENDENT = "A and B were trained from independent initializations (no shared weights)"

Status = Literal["ok", "skipped", "error"]
Kind = Literal["weights", "artifacts", "behaviour", "representation"]


@dataclass(frozen=True)
class Evidence:
    """One test's outcome. `p_value` is None when the method is descriptive or did not run."""

    method: str
    status: Status
    statement: str  # one sentence a reader can check
    null_hypothesis: str = NULL_INDEPENDENT
    statistic: float | None = None
    p_value: float | None = None
    kind: Kind = "weights"
    powered: bool = True  # had enough data to reject the null if it were false
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped(cls, method: str, reason: str, kind: Kind = "weights") -> Evidence:
        return cls(method=method, status="skipped", statement=reason, kind=kind, powered=False,
                   details={"reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method, "kind": self.kind, "status": self.status, "statement": self.statement,
            "null_hypothesis": self.null_hypothesis, "statistic": self.statistic, "p_value": self.p_value,
            "powered": self.powered, "details": self.details,
        }


@dataclass(frozen=True)
class ControlOutcome:
    """One positive control: a test re-run on a synthetic derivation of A, and whether it rejected.

    `kind` names the derivation (permute, rotate, noise, rotate+noise, finetune, drop-layer,
    duplicate-layer, reseed, ...); `strength` is its size where it has one (noise as a fraction of
    each tensor's standard deviation). A control is detected when its p-value is below the threshold.
    """

    kind: str
    strength: float | None
    method: str
    p_value: float
    detected: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "strength": self.strength, "method": self.method, "p_value": self.p_value,
                "detected": self.detected, "note": self.note}


@dataclass(frozen=True)
class Transform:
    """One step of how B was made from A, with its estimates (`kind` from a fixed vocabulary)."""

    kind: str  # rename transpose fuse permute rotate noise quantize cast finetune lora layer-drop
    #            layer-duplicate layer-reorder merge vocab-change upcycle prune identical component
    summary: str
    estimates: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "summary": self.summary, **self.estimates}


@dataclass
class CompareContext:
    """Both models plus options and a scratch space shared by methods (e.g. one tensor matching)."""

    a: Model
    b: Model
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    transforms: list[Transform] = field(default_factory=list)
    layer_map: list[dict[str, Any]] = field(default_factory=list)
    rename_map: dict[str, str] = field(default_factory=dict)


class EvidenceMethod(ABC):
    """An evidence method: names itself, says what it tests, cites its reference."""

    name: ClassVar[str]
    kind: ClassVar[Kind] = "weights"
    summary: ClassVar[str]
    reference: ClassVar[str] = ""
    null_hypothesis: ClassVar[str] = NULL_INDEPENDENT
    stage: ClassVar[int] = 50  # run order: weight matching 10, diagnosis 20, artifacts 30, behaviour 40

    def needs(self, ctx: CompareContext) -> str | None:
        """None when the method can run on `ctx`; otherwise the reason it cannot."""
        return None

    @abstractmethod
    def run(self, ctx: CompareContext) -> Evidence:
        """Run the test. May add transforms, layer_map and rename_map entries to `ctx`."""

    def controls(self, ctx: CompareContext, result: Evidence) -> list[ControlOutcome]:
        """Positive controls of this test on synthetic derivations of A (what it would have caught).

        Called by compare only when `result` did not reject. The weight tests get theirs from
        `evidence.controls`, which re-runs them on transformed copies of A; a method that can make
        its own cheap controls (A against itself re-seeded) overrides this. Default: none.
        """
        return []
