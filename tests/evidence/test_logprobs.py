from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modeltrace.backends.base import Backend, Request, Response
from modeltrace.backends.mock import MockBackend
from modeltrace.compare import compare
from modeltrace.evidence.logprobs import margin_test, rank_distance
from modeltrace.model import Model

TOKENS = [f"t{i}" for i in range(60)]


def _model(tmp_path: Path, name: str) -> Model:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return Model(ref=str(d), root=d, weight_files=[])


def test_rank_distance_orders_and_bounds() -> None:
    a = {"x": -0.1, "y": -1.0, "z": -2.0, "w": -3.0}
    assert rank_distance(a, dict(a)) == pytest.approx(0.0)
    assert rank_distance(a, {k: -v for k, v in a.items()}) == pytest.approx(2.0)
    # a token one side did not list sits at that side's floor: still a full ordering of the union
    assert 0.0 < rank_distance(a, {"x": -0.1, "y": -1.0, "q": -2.0}) < 1.0
    assert math.isnan(rank_distance(a, {}))
    assert math.isnan(rank_distance({"x": -1.0}, {"x": -1.0, "y": -2.0}))


def test_margin_test_is_calibrated_under_its_null(rng: np.random.Generator) -> None:
    # B exactly (1 - margin) times as far from A as the reference: p-values uniform, so about 5 % below 0.05
    ps = []
    for _ in range(400):
        d_ar = rng.gamma(4.0, 0.1, size=200)
        d_ab = 0.9 * rng.gamma(4.0, 0.1, size=200)
        ps.append(margin_test(d_ab, d_ar, 0.1))
    assert 0.02 < float(np.mean(np.array(ps) < 0.05)) < 0.09
    assert margin_test(0.5 * rng.gamma(4.0, 0.1, size=200), rng.gamma(4.0, 0.1, size=200), 0.1) < 1e-6


def _logits(seed: int, prompt: str) -> np.ndarray:
    h = int.from_bytes(hashlib.sha256(f"{seed}|{prompt}".encode()).digest()[:8], "little")
    return np.random.default_rng(h).standard_normal(len(TOKENS)) * 2.0


def _lm(seed: int, parent: int | None = None, drift: float = 0.0) -> Callable[[Request], dict[str, float]]:
    """Next-token log-probabilities: the model's own logits, or a parent's moved by `drift` (a fine-tune)."""
    def fn(req: Request) -> dict[str, float]:
        z = _logits(seed, req.prompt) if parent is None else _logits(parent, req.prompt) + drift * _logits(seed, req.prompt)
        z = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        return {t: float(v) for t, v in zip(TOKENS, z)}
    return fn


def _run(tmp_path: Path, b: Backend, refs: list[Backend], prompts: int = 150):  # type: ignore[no-untyped-def]
    opts = {"behaviour": True, "prompts": prompts, "cache": str(tmp_path / "c.sqlite"), "top_logprobs": 20,
            "backend_a": MockBackend("a", logprobs_fn=_lm(1)), "backend_b": b, "references": refs}
    return compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["logprob-similarity"], options=opts)


def test_fine_tune_is_caught_and_independent_models_are_not(tmp_path: Path) -> None:
    refs: list[Backend] = [MockBackend(f"r{i}", logprobs_fn=_lm(10 + i)) for i in range(2)]
    res = _run(tmp_path, MockBackend("ft", logprobs_fn=_lm(2, parent=1, drift=0.8)), refs)
    ev = res.evidence[0]
    assert res.verdict == "derived", ev.statement
    assert ev.details["queries"] == 4 * 150 and ev.details["top_logprobs"] == 20
    assert ev.details["prompts_needed"] is not None and ev.details["prompts_needed"] <= 150
    assert {t["side"] for t in ev.details["tests"]} == {"A", "B"} and len(ev.details["tests"]) == 4
    for s in range(8):
        res = _run(tmp_path, MockBackend(f"ind{s}", logprobs_fn=_lm(20 + s)), refs)
        assert res.verdict != "derived" and res.evidence[0].p_value is not None and res.evidence[0].p_value > 1e-3


def test_with_one_reference_it_refuses_before_any_query(tmp_path: Path) -> None:
    asked: list[Request] = []

    def lm(req: Request) -> dict[str, float]:
        asked.append(req)
        return _lm(1)(req)

    res = _run(tmp_path, MockBackend("ft", logprobs_fn=lm), [MockBackend("r0", logprobs_fn=_lm(10))])
    ev = res.evidence[0]
    assert ev.status == "skipped" and ev.p_value is None and not ev.powered and asked == []
    assert ev.statement == ("needs at least 2 reference models known to be unrelated to A and B "
                            "(--reference, given 1): the null is measured on them")


def _two_refs() -> list[Backend]:
    return [MockBackend(f"r{i}", logprobs_fn=_lm(10 + i)) for i in range(2)]


def test_a_backend_without_log_probabilities_is_named(tmp_path: Path) -> None:
    res = _run(tmp_path, MockBackend("plain"), _two_refs())
    ev = res.evidence[0]
    assert ev.status == "skipped" and "mock:plain" in ev.statement and "log-probabilities" in ev.statement


def test_endpoint_limit_sets_k(tmp_path: Path) -> None:
    class Capped(MockBackend):
        max_top_logprobs = 5

    opts = {"behaviour": True, "prompts": 40, "cache": str(tmp_path / "c.sqlite"),
            "backend_a": MockBackend("a", logprobs_fn=_lm(1)), "backend_b": Capped("b", logprobs_fn=_lm(1)),
            "references": _two_refs()}
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["logprob-similarity"], options=opts)
    assert res.evidence[0].details["top_logprobs"] == 5


def test_copy_on_few_prompts_is_not_powered_and_its_control_says_why(tmp_path: Path) -> None:
    from modeltrace.evidence.base import CompareContext
    from modeltrace.evidence.logprobs import LogprobSimilarityMethod

    opts = {"behaviour": True, "prompts": 12, "cache": str(tmp_path / "c.sqlite"), "top_logprobs": 20,
            "backend_a": MockBackend("a", logprobs_fn=_lm(1)), "backend_b": MockBackend("b", logprobs_fn=_lm(1)),
            "references": _two_refs()}
    ctx = CompareContext(_model(tmp_path, "A"), _model(tmp_path, "B"), options=opts)
    method = LogprobSimilarityMethod()
    ev = method.run(ctx)
    assert not ev.powered and ev.p_value == 2.0 ** -12
    assert ev.statement.endswith("(not powered: 12 prompts cannot reach p < 1e-06; the smallest attainable p is "
                                 "0.000244, 20 prompts needed)")
    (control,) = method.controls(ctx, ev)
    assert control.kind == "copy" and control.p_value == 2.0 ** -12 and not control.detected
    ctx = CompareContext(_model(tmp_path, "A"), _model(tmp_path, "B"), options={**opts, "threshold": 1e-3})
    ev = method.run(ctx)
    assert ev.powered and method.controls(ctx, ev)[0].detected  # --threshold reaches the power check


def test_margin_test_refuses_nan() -> None:
    from modeltrace.errors import EvidenceError

    with pytest.raises(EvidenceError, match="rank distance is NaN"):
        margin_test(np.array([0.1, math.nan]), np.array([0.5, 0.5]), 0.1)


# --- trained models: a real fine-tune (other data) against independently trained references -------

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "weights"))
import tinytrain


class TinyBackend(Backend):
    """A tinytrain byte-level model answering next-token requests (the prompt's last bytes as context)."""

    def __init__(self, name: str, state: dict[str, np.ndarray]) -> None:
        self._name = name
        self.model = tinytrain.TinyLlama()
        self.model.load(state)
        self.model.eval()

    @property
    def identity(self) -> str:
        return f"tiny:{self._name}"

    def generate(self, requests, on_response=None):  # type: ignore[no-untyped-def]
        out = []
        names = tinytrain.token_strings()
        for i, r in enumerate(requests):
            ids = torch.tensor([list(r.prompt.encode("utf-8"))[-tinytrain.SEQ:]])
            with torch.no_grad():
                logp = torch.log_softmax(self.model(ids)[0, -1], dim=-1)
            v, idx = torch.topk(logp, r.top_logprobs or 1)
            resp = Response(text=names[int(idx[0])], top_logprobs=({names[int(k)]: float(x) for k, x in zip(idx, v)},))
            out.append(resp)
            if on_response:
                on_response(i, resp)
        return out


@pytest.fixture(scope="module")
def trained() -> dict[str, TinyBackend]:
    base = tinytrain.train(seed=0)
    # 40 steps on the other half of the data at a third of the base's learning rate (as the zoo's fine-tunes)
    states = {"base": base, "finetune": tinytrain.train(seed=7, start=base, data_offset=1, steps=40, lr=1e-3)}
    for s in range(1, 6):
        states[f"ind{s}"] = tinytrain.train(seed=s)
    return {k: TinyBackend(k, v) for k, v in states.items()}


def _trained(tmp_path: Path, trained: dict[str, TinyBackend], b: str, refs: list[str]):  # type: ignore[no-untyped-def]
    opts = {"behaviour": True, "prompts": 200, "cache": str(tmp_path / "c.sqlite"), "top_logprobs": 50,
            "backend_a": trained["base"], "backend_b": trained[b], "references": [trained[r] for r in refs]}
    return compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["logprob-similarity"], options=opts)


def test_trained_fine_tune_on_other_data_is_caught(tmp_path: Path, trained: dict[str, TinyBackend]) -> None:
    res = _trained(tmp_path, trained, "finetune", ["ind1", "ind2"])
    assert res.verdict == "derived", res.evidence[0].statement


def test_trained_independent_models_are_not_derived(tmp_path: Path, trained: dict[str, TinyBackend]) -> None:
    for b, refs in (("ind3", ["ind1", "ind2"]), ("ind4", ["ind1", "ind5"]), ("ind5", ["ind2", "ind3"])):
        res = _trained(tmp_path, trained, b, refs)
        assert res.verdict != "derived", res.evidence[0].statement


def test_chat_mode_sends_messages(tmp_path: Path) -> None:
    seen: list[Request] = []

    def chat_lm(seed: int, parent: int | None = None) -> Callable[[Request], dict[str, float]]:
        inner = _lm(seed, parent, drift=0.5)

        def fn(req: Request) -> dict[str, float]:
            seen.append(req)
            return inner(Request(prompt=req.messages[-1][1]))
        return fn

    opts = {"behaviour": True, "prompts": 60, "cache": str(tmp_path / "c.sqlite"), "chat": True,
            "backend_a": MockBackend("a", logprobs_fn=chat_lm(1)),
            "backend_b": MockBackend("b", logprobs_fn=chat_lm(2, parent=1)),
            "references": [MockBackend(f"r{i}", logprobs_fn=chat_lm(10 + i)) for i in range(2)]}
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["logprob-similarity"], options=opts)
    assert res.verdict == "derived", res.evidence[0].statement
    assert len(seen) == 4 * 60 and all(r.mode == "chat" and r.messages[0][0] == "user" and not r.prompt for r in seen)
