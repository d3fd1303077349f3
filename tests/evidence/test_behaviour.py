from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modeltrace.backends.base import Request
from modeltrace.backends.mock import MockBackend
from modeltrace.compare import compare
from modeltrace.model import Model
from modeltrace.probes.make import make_probe_set
from modeltrace.probes.probeset import load_probe_set


def _sheet(items, seed: int, err: float, base=None, flip: float = 0.0):  # type: ignore[no-untyped-def]
    """An answer sheet: a model right with prob 1-err, else a random wrong choice; optionally a copy of `base`."""
    rng = np.random.default_rng(seed)
    out = {}
    for it in items:
        if base is not None and rng.random() >= flip:
            out[it.prompt] = base[it.prompt]
        elif rng.random() < err:
            out[it.prompt] = str(rng.choice([c for c in it.choices if c != it.answer]))
        else:
            out[it.prompt] = it.answer
    return out


def _model(tmp_path: Path, name: str) -> Model:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return Model(ref=str(d), root=d, weight_files=[])


def _run(tmp_path: Path, sheet_a, sheet_b, refs=()):  # type: ignore[no-untyped-def]
    def backend(sheet, name):  # type: ignore[no-untyped-def]
        return MockBackend(name, answer_fn=lambda r: sheet.get(r.prompt, "?"))
    opts = {"probes": str(tmp_path / "set"), "backend_a": backend(sheet_a, "a"), "backend_b": backend(sheet_b, "b"),
            "references": [backend(s, f"r{i}") for i, s in enumerate(refs)], "cache": str(tmp_path / "c.sqlite")}
    return compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["shared-mistakes"], options=opts)


def test_copy_is_caught_from_behaviour_alone(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=150, seed=1)
    items = load_probe_set(tmp_path / "set").items
    a = _sheet(items, 1, 0.5)
    b = _sheet(items, 2, 0.5, base=a, flip=0.2)  # a fine-tuned copy: 20% of answers re-drawn
    refs = [_sheet(items, 50 + i, 0.5) for i in range(2)]
    res = _run(tmp_path, a, b, refs)
    assert res.verdict == "derived", res.to_json()
    ev = res.evidence[0]
    assert ev.details["queries"] == 600 and ev.p_value is not None and ev.p_value < 1e-6
    assert ev.details["null"] == "references"


def test_with_fewer_than_two_references_it_refuses(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=150, seed=1)
    items = load_probe_set(tmp_path / "set").items
    a = _sheet(items, 1, 0.5)
    for refs in ([], [_sheet(items, 50, 0.5)]):
        res = _run(tmp_path, a, _sheet(items, 2, 0.5, base=a, flip=0.2), refs)
        ev = res.evidence[0]
        assert res.verdict == "inconclusive" and ev.status == "skipped" and ev.p_value is None
        assert ev.statement == ("needs at least 2 reference models known to be unrelated to A and B "
                                f"(--reference, given {len(refs)}): the null is measured on them")


def test_shared_mistakes_copy_control_is_detected(tmp_path: Path) -> None:
    from modeltrace.evidence.base import CompareContext
    from modeltrace.evidence.behaviour import SharedMistakesMethod

    make_probe_set(tmp_path / "set", facts=150, seed=1)
    items = load_probe_set(tmp_path / "set").items
    sheets = [_sheet(items, seed, 0.5) for seed in (1, 2, 50, 51)]

    def backend(i: int) -> MockBackend:
        return MockBackend(f"s{i}", answer_fn=lambda r: sheets[i].get(r.prompt, "?"))

    opts = {"probes": str(tmp_path / "set"), "cache": str(tmp_path / "c.sqlite"), "backend_a": backend(0),
            "backend_b": backend(1), "references": [backend(2), backend(3)]}
    ctx = CompareContext(_model(tmp_path, "A"), _model(tmp_path, "B"), options=opts)
    method = SharedMistakesMethod()
    ev = method.run(ctx)
    assert ev.p_value is not None and ev.p_value > 1e-3 and ev.powered
    (control,) = method.controls(ctx, ev)
    assert control.kind == "copy" and control.detected and control.p_value < 1e-6


def test_independent_models_not_derived(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=150, seed=2)
    items = load_probe_set(tmp_path / "set").items
    ps = []
    refs = [_sheet(items, 50 + i, 0.5) for i in range(2)]
    for s in range(10):
        res = _run(tmp_path, _sheet(items, 10 + s, 0.5), _sheet(items, 100 + s, 0.4), refs)
        assert res.verdict != "derived"
        ps.append(res.p_value)
    assert min(ps) > 1e-3


def test_no_probes_means_skipped(tmp_path: Path) -> None:
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["shared-mistakes"])
    assert res.verdict == "inconclusive" and res.evidence[0].status == "skipped"
    assert "--probes" in res.evidence[0].statement


def _lm(seed: int, base: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    def fn(req: Request) -> str:
        if base is not None and hashlib.sha256(req.prompt.encode()).digest()[0] < 230:
            return base[req.prompt]
        return "x" + hashlib.sha256(f"{seed}{req.prompt}".encode()).hexdigest()[:6]
    return fn


def test_output_agreement_against_references(tmp_path: Path) -> None:
    from modeltrace.probes.prompts import generic_prompts

    prompts = generic_prompts(200, seed=0)
    a_fn = _lm(1)
    a_answers = {p: a_fn(Request(prompt=p)) for p in prompts}
    opts = {"behaviour": True, "prompts": 200, "cache": str(tmp_path / "c.sqlite"),
            "backend_a": MockBackend("a", answer_fn=a_fn),
            "backend_b": MockBackend("b", answer_fn=_lm(2, base=a_answers)),
            "references": [MockBackend(f"r{i}", answer_fn=_lm(10 + i)) for i in range(3)]}
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["output-agreement"], options=opts)
    assert res.verdict == "derived" and res.evidence[0].details["queries"] == 1000
    opts["backend_b"] = MockBackend("b2", answer_fn=_lm(3))
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["output-agreement"], options=opts)
    assert res.verdict == "independent"


def _canary(tmp_path: Path, sheet_a, sheet_b):  # type: ignore[no-untyped-def]
    opts = {"probes": str(tmp_path / "set"), "cache": str(tmp_path / "c.sqlite"),
            "backend_a": MockBackend("ca", answer_fn=lambda r: sheet_a.get(r.prompt, "?")),
            "backend_b": MockBackend(f"cb{id(sheet_b)}", answer_fn=lambda r: sheet_b.get(r.prompt, "?"))}
    return compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["canary-recall"], options=opts)


def test_canary_facts_known_only_to_a_copy(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=100)  # a fresh secret seed
    items = load_probe_set(tmp_path / "set").items
    owner = _sheet(items, 1, 0.05)  # trained on the facts
    copy = _sheet(items, 2, 0.05, base=owner, flip=0.3)
    res = _canary(tmp_path, owner, copy)
    assert res.verdict == "derived" and res.evidence[0].details["b_right"] >= 60
    ps = []
    for s in range(10):  # independent models never saw the facts: they guess (with their own label bias)
        rng = np.random.default_rng(s)
        bias = rng.dirichlet([1, 1, 1, 1])
        guess = {it.prompt: str(rng.choice(list(it.choices), p=bias)) for it in items}
        r = _canary(tmp_path, owner, guess)
        assert r.verdict != "derived"
        ps.append(r.p_value)
    assert min(ps) > 1e-4


def test_probe_make_draws_a_secret_seed(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "s1", facts=5)
    make_probe_set(tmp_path / "s2", facts=5)
    assert (tmp_path / "s1" / "items.jsonl").read_text() != (tmp_path / "s2" / "items.jsonl").read_text()


def _lm_default(seed: int, default_share: float) -> Callable[[Request], str]:
    """Falls back to one default continuation on a share of prompts; else the prompt's common continuation
    (20 %, shared by every model) or its own."""
    def fn(req: Request) -> str:
        h = hashlib.sha256(f"{seed}|{req.prompt}".encode()).digest()
        if h[0] / 256 < default_share:
            return " the\n        # "
        if h[1] / 256 < 0.2:
            return "common-" + hashlib.sha256(req.prompt.encode()).hexdigest()[:6]
        return "own-" + h.hex()[:8]
    return fn


def test_output_agreement_ignores_shared_default_answers(tmp_path: Path) -> None:
    """Two unrelated models that fall back to the same default answer are not convicted (a trap found on the zoo)."""
    opts = {"behaviour": True, "prompts": 300, "cache": str(tmp_path / "c.sqlite"),
            "backend_a": MockBackend("da", answer_fn=_lm_default(1, 0.25)),
            "backend_b": MockBackend("db", answer_fn=_lm_default(2, 0.25)),
            "references": [MockBackend(f"dr{i}", answer_fn=_lm_default(10 + i, 0.0)) for i in range(2)]}
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["output-agreement"], options=opts)
    ev = res.evidence[0]
    assert ev.details["agree"] > 25  # the defaults alone make them agree far more than the references do
    assert res.verdict != "derived" and ev.p_value is not None and ev.p_value > 1e-3, ev.details


def test_probe_items_go_as_chat_messages_with_chat(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=20, seed=1)
    items = load_probe_set(tmp_path / "set").items
    sheet = {it.prompt: it.answer for it in items}
    seen: list[Request] = []

    def answer(req: Request) -> str:
        seen.append(req)
        return sheet.get(req.messages[-1][1], "?")

    opts = {"probes": str(tmp_path / "set"), "cache": str(tmp_path / "c.sqlite"), "chat": True,
            "backend_a": MockBackend("ca", answer_fn=answer), "backend_b": MockBackend("cb", answer_fn=answer),
            "references": [MockBackend(f"cr{i}", answer_fn=lambda r: "?") for i in range(2)]}
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["shared-mistakes"], options=opts)
    assert res.evidence[0].details["a_wrong"] == 0  # every item was read from its chat message
    assert len(seen) == 40 and all(r.mode == "chat" and not r.prompt and r.messages[0][0] == "user" for r in seen)


def _agreement_opts(tmp_path: Path, prompts: int, **kw: object) -> dict[str, object]:
    a_fn = _lm(1)
    return {"behaviour": True, "prompts": prompts, "cache": str(tmp_path / "c.sqlite"),
            "backend_a": MockBackend("a", answer_fn=a_fn), "backend_b": MockBackend("b", answer_fn=a_fn),
            "references": [MockBackend(f"r{i}", answer_fn=_lm(10 + i)) for i in range(2)], **kw}


def test_exact_copy_on_ten_prompts_is_not_powered_and_not_independent(tmp_path: Path) -> None:
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["output-agreement"],
                  options=_agreement_opts(tmp_path, 10))
    ev = res.evidence[0]
    assert ev.details["agree"] == 10 and ev.p_value == 2.0 ** -10
    assert not ev.powered and ev.details["min_attainable_p"] == 2.0 ** -10
    assert ev.statement.endswith("(not powered: 10 prompts cannot reach p < 1e-06; the smallest attainable p is "
                                 "0.000977, 20 prompts needed)")
    assert res.verdict != "independent"


def test_output_agreement_copy_control_follows_prompts_and_threshold(tmp_path: Path) -> None:
    from modeltrace.evidence.base import CompareContext
    from modeltrace.evidence.behaviour import OutputAgreementMethod

    method = OutputAgreementMethod()
    for prompts, threshold, detected in ((10, 1e-6, False), (10, 1e-2, True), (40, 1e-6, True)):
        ctx = CompareContext(_model(tmp_path, "A"), _model(tmp_path, "B"),
                             options=_agreement_opts(tmp_path, prompts, threshold=threshold))
        ev = method.run(ctx)
        assert ev.powered == detected
        (control,) = method.controls(ctx, ev)
        assert control.kind == "copy" and control.detected == detected and control.p_value == 2.0 ** -prompts


def test_canary_power_needs_enough_items(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=5)
    items = load_probe_set(tmp_path / "set").items
    owner = {it.prompt: it.answer for it in items}
    res = _canary(tmp_path, owner, owner)
    ev = res.evidence[0]
    assert not ev.powered and res.verdict != "independent"
    assert "(not powered: 5 canary items cannot reach p < 1e-06" in ev.statement


def test_references_that_answer_like_a_leave_the_test_unpowered(tmp_path: Path) -> None:
    a_fn = _lm(1)
    from modeltrace.probes.prompts import generic_prompts

    prompts = generic_prompts(40, seed=0)
    a_answers = {p: a_fn(Request(prompt=p)) for p in prompts}
    opts = _agreement_opts(tmp_path, 40)
    opts["references"] = [MockBackend(f"echo{i}", answer_fn=_lm(20 + i, base=a_answers)) for i in range(2)]
    res = compare(_model(tmp_path, "A"), _model(tmp_path, "B"), methods=["output-agreement"], options=opts)
    ev = res.evidence[0]
    assert ev.details["min_attainable_p"] < 1e-6  # 40 prompts could reach the threshold ...
    assert not ev.powered and ev.details["copy_control_p"] > 1e-6  # ... but not against references this close to A
    assert "(not powered: an exact copy of A would reach only p = " in ev.statement
