from __future__ import annotations

import pytest
from fakeserver import FaultPlan, fake_openai_server

from modeltrace.backends.base import Request
from modeltrace.backends.openai_compat import (
    OpenAICompatBackend,
    build_payload,
    parse_response,
    retry_after_seconds,
)
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


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_client_error_is_not_retried(status: str) -> None:
    plan = FaultPlan([status, status, status])
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url + "/v1", "m", max_retries=3, backoff=0.01)
        assert be.base_url == url  # a trailing /v1 is accepted
        with pytest.raises(BackendError) as err:
            be.generate([Request(prompt="p")])
        be.close()
    assert str(err.value) == f'{url}/v1/completions: HTTP {status}: {{"error": "injected"}}'
    assert len(plan.requests) == 1  # one request: a 4xx is final


def test_retry_after_is_honoured() -> None:
    import time

    plan = FaultPlan(["429"], retry_after="0.6")
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url, "m", backoff=0.01)
        start = time.perf_counter()
        out = be.generate([Request(prompt="p")])
        elapsed = time.perf_counter() - start
        be.close()
    assert [r.text for r in out] == ["echo:p"] and len(plan.requests) == 2
    assert elapsed >= 0.6


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds("-1") is None and retry_after_seconds("inf") is None and retry_after_seconds(None) is None


def test_every_try_failing_gives_up_after_max_retries_plus_one() -> None:
    plan = FaultPlan(["500"] * 10)
    with fake_openai_server(plan) as url:
        be = OpenAICompatBackend(url, "m", max_retries=2, backoff=0.01)
        with pytest.raises(BackendError) as err:
            be.generate([Request(prompt="p")])
        be.close()
    assert str(err.value) == f"{url}/v1/completions: gave up after 3 tries (HTTP 500)"
    assert len(plan.requests) == 3
