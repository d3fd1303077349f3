from __future__ import annotations

import pytest
from fakeserver import FaultPlan, fake_openai_server

from modeltrace.backends.base import Request
from modeltrace.backends.openai_compat import OpenAICompatBackend, build_payload, parse_response
from modeltrace.errors import BackendError


def test_payload_and_parse_completion() -> None:
    path, body = build_payload("m", Request(prompt="hi", max_tokens=3, top_logprobs=2))
    assert path == "/v1/completions" and body == {"model": "m", "max_tokens": 3, "temperature": 0.0,
                                                  "prompt": "hi", "logprobs": 2}
    r = parse_response(path, {"choices": [{"text": "yo", "finish_reason": "length",
                                           "logprobs": {"tokens": ["yo"], "top_logprobs": [{"yo": -0.5}]}}]})
    assert r.text == "yo" and r.top_logprobs == ({"yo": -0.5},)


def test_payload_chat_with_image(tmp_path) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    path, body = build_payload("m", Request(prompt="read", mode="chat", images=(str(img),)))
    assert path == "/v1/chat/completions"
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "read"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_malformed_answer_is_backend_error() -> None:
    with pytest.raises(BackendError, match="malformed answer"):
        parse_response("/v1/completions", {"choices": []})


@pytest.mark.parametrize("faults", [["429", "429"], ["500"], ["malformed"], ["drop"], ["slow"]])
def test_faults_are_retried(faults: list[str]) -> None:
    plan = FaultPlan(faults, slow_s=0.2)
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url, "m", concurrency=2, timeout=5.0, backoff=0.01)
        out = be.generate([Request(prompt=f"p{i}") for i in range(4)])
        be.close()
    assert sorted(r.text for r in out) == sorted(f"echo:p{i}" for i in range(4))
    assert [r.text for r in out] == [f"echo:p{i}" for i in range(4)]  # order kept
    assert len(plan.requests) == 4 + len([f for f in faults if f != "slow"])


def test_timeout_then_give_up() -> None:
    plan = FaultPlan(["slow"] * 3, slow_s=1.0)
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url, "m", concurrency=1, timeout=0.2, max_retries=2, backoff=0.01)
        with pytest.raises(BackendError, match="gave up after 3 tries"):
            be.generate([Request(prompt="p")])
        be.close()


def test_client_error_is_not_retried() -> None:
    plan = FaultPlan()
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url + "/v1", "m", max_retries=3)
        assert be.base_url == url  # a trailing /v1 is accepted
        be.close()
