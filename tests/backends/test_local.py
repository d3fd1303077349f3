from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from tinylm import write_tiny_llama

from modeltrace.backends.base import Request
from modeltrace.backends.local import TransformersBackend
from modeltrace.errors import BackendError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "m")


def test_greedy_is_deterministic_and_logprobs_sum(tiny: Path) -> None:
    be = TransformersBackend(tiny, threads=1)
    reqs = [Request(prompt="w1 w2 w3", max_tokens=4, top_logprobs=3), Request(prompt="w5", max_tokens=2)]
    a = be.generate(reqs)
    b = be.generate(reqs)
    assert [r.text for r in a] == [r.text for r in b]
    assert len(a[0].top_logprobs) == len(a[0].tokens) >= 1
    top = a[0].top_logprobs[0]
    assert len(top) == 3 and all(v <= 0 for v in top.values())
    lp = be.next_token_logprobs(["w1 w2 w3"])
    assert lp.shape == (1, 64) and np.isclose(np.exp(lp).sum(), 1.0, atol=1e-4)


def test_sampling_uses_the_seed(tiny: Path) -> None:
    be = TransformersBackend(tiny, threads=1)
    r1 = be.generate([Request(prompt="w1", max_tokens=8, temperature=1.5, seed=3)])
    r2 = be.generate([Request(prompt="w1", max_tokens=8, temperature=1.5, seed=3)])
    assert r1[0].text == r2[0].text


def test_hidden_states_shapes(tiny: Path) -> None:
    hs = TransformersBackend(tiny, threads=1).hidden_states(["w1 w2", "w3 w4 w5"])
    assert len(hs) == 3 and hs[0].shape == (2, 32)


def test_remote_code_is_refused(tiny: Path, tmp_path: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.Evil"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackendError, match="asks for its own code"):
        TransformersBackend(tmp_path)


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_greedy_requests_are_batched_with_the_same_answers(tiny: Path, max_tokens: int) -> None:
    """Left-padded batches give what one prompt at a time gives (prompts of different lengths)."""
    prompts = ["w1", "w3 w4 w5 w6 w7 w8", "w9 w10", "w2 w2 w2 w2", "w11 w12 w13"]
    batched = TransformersBackend(tiny, threads=1, batch_size=4)
    alone = TransformersBackend(tiny, threads=1, batch_size=1)
    reqs = [Request(prompt=p, max_tokens=max_tokens - (i % 2 if max_tokens > 1 else 0), top_logprobs=5)
            for i, p in enumerate(prompts)]
    seen: list[int] = []
    got = batched.generate(reqs, on_response=lambda i, r: seen.append(i))
    import torch

    alone._load()
    ref = [alone._decode(r, alone._tok(r.prompt, return_tensors="pt")["input_ids"],  # the unbatched path
                         lambda cur: alone._model(input_ids=cur, use_cache=False), torch) for r in reqs]
    assert sorted(seen) == list(range(len(prompts)))
    for g, r in zip(got, ref):
        assert g.text == r.text and g.tokens == r.tokens
        assert len(g.top_logprobs) == len(r.top_logprobs) == len(r.tokens)
        for tg, tr in zip(g.top_logprobs, r.top_logprobs):
            assert tg.keys() == tr.keys()
            assert np.allclose([tg[k] for k in tr], [tr[k] for k in tr], atol=1e-4)


def test_next_token_logprobs_batched_match_one_at_a_time(tiny: Path) -> None:
    prompts = ["w1", "w3 w4 w5 w6 w7 w8", "w9 w10"]
    batched = TransformersBackend(tiny, threads=1, batch_size=3).next_token_logprobs(prompts)
    alone = np.concatenate([TransformersBackend(tiny, threads=1).next_token_logprobs([p]) for p in prompts])
    assert batched.shape == (3, 64) and np.allclose(batched, alone, atol=1e-4)
