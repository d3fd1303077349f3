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
