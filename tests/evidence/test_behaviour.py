from __future__ import annotations

import hashlib
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
    res = _run(tmp_path, a, b)
    assert res.verdict == "derived", res.to_json()
    ev = res.evidence[0]
    assert ev.details["queries"] == 300 and ev.p_value is not None and ev.p_value < 1e-6


def test_independent_models_not_derived(tmp_path: Path) -> None:
    make_probe_set(tmp_path / "set", facts=150, seed=2)
    items = load_probe_set(tmp_path / "set").items
    ps = []
    for s in range(10):
        res = _run(tmp_path, _sheet(items, 10 + s, 0.5), _sheet(items, 100 + s, 0.4))
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
        return "x" + hashlib.sha256(f"{seed}{req.prompt}".encode()).hexdigest()[:1]
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
