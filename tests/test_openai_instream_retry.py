"""In-stream rate-limit and unavailable errors, in the shapes OpenAI sends them inside a 200
stream, are sent again as an HTTP 429 / 503 is: before the first chunk only. Through the
real openai SDK on the replay transport, both APIs, both wires, sync and asyncio.

Shapes: the Responses API's nested ``error`` event (openai-dotnet#881: ``type`` and
``code`` ``too_many_requests``; vercel/ai#20022: ``service_unavailable_error``, "Please
retry"), its documented flat ``error`` event, and OpenAI's rate-limit error object (``type``
``tokens`` / ``requests``, ``code`` ``rate_limit_exceeded``) relayed in a Chat stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from crafted_text import text_body
from provider_rules import model_for
from replay import Replay

import rxcontext
from rxcontext import ContextWindow, ProviderError, RetryPolicy, StreamInterrupted
from rxcontext.providers.base import Request

APIS = ["chat", "responses"]
WIRES = ["sdk", "fast"]
MODES = ["sync", "async"]
AGAIN = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0)

RETRYABLE = [
    {"type": "too_many_requests", "code": "too_many_requests", "message": "Too Many Requests"},
    {"type": "service_unavailable_error", "code": None, "message": "Please retry."},
    {"type": "tokens", "code": "rate_limit_exceeded", "message": "Rate limit reached (TPM)"},
    {"type": "requests", "code": "rate_limit_exceeded", "message": "Rate limit reached (RPM)"},
    {"type": "overloaded", "code": None, "message": "The engine is currently overloaded"},
]
IDS = ["too_many_requests", "service_unavailable", "tokens", "requests", "overloaded"]


def _event(api: str, error: dict[str, Any], flat: bool = False) -> bytes:
    """An error sent inside a 200 stream: Chat's ``{"error": ...}`` chunk, or a Responses
    ``error`` event (nested, as the API sends it, or ``flat``, as its reference shows it)."""
    error = {**error, "param": None}
    if api == "chat":
        return f"data: {json.dumps({'error': error})}\n\n".encode()
    if flat:
        fields = {key: error[key] for key in ("code", "message", "param")}
        event = {"type": "error", "sequence_number": 1, **fields}
    else:
        event = {"type": "error", "sequence_number": 1, "error": error}
    return f"event: error\ndata: {json.dumps(event)}\n\n".encode()


def _created() -> bytes:
    response = {"id": "resp_e", "object": "response", "status": "in_progress", "output": []}
    event = {"type": "response.created", "sequence_number": 0, "response": response}
    return f"event: response.created\ndata: {json.dumps(event)}\n\n".encode()


def _failing(api: str, error: dict[str, Any], flat: bool = False) -> bytes:
    return (_created() if api == "responses" else b"") + _event(api, error, flat)


def _call(cw: ContextWindow, mode: str) -> Any:
    return cw.call() if mode == "sync" else asyncio.run(cw.acall())


def _window(api: str, replay: Replay, wire: str) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(api, replay, wire), "r", retry=AGAIN)
    cw.add_prompt("hi")
    return cw


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("error", RETRYABLE, ids=IDS)
def test_an_in_stream_rate_limit_before_any_chunk_is_sent_again(
    error: dict[str, Any], api: str, wire: str, mode: str
) -> None:
    replay = Replay(_failing(api, error), text_body(api, ["Hello"]))
    cw = _window(api, replay, wire)
    assert _call(cw, mode).text == "Hello"
    assert len(replay.requests) == 2


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("code", ["too_many_requests", "rate_limit_exceeded"])
def test_the_documented_flat_responses_error_event_is_sent_again_too(code: str, wire: str) -> None:
    error = {"type": code, "code": code, "message": "Too Many Requests"}
    replay = Replay(_failing("responses", error, flat=True), text_body("responses", ["Hello"]))
    assert _call(_window("responses", replay, wire), "sync").text == "Hello"
    assert len(replay.requests) == 2


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("error", RETRYABLE, ids=IDS)
def test_the_error_says_retryable_and_keeps_its_type(
    error: dict[str, Any], api: str, wire: str
) -> None:
    m = model_for(api, Replay(_failing(api, error)), wire)
    with pytest.raises(ProviderError) as info:
        list(m.iter_chunks(Request([])))
    assert info.value.retryable is True
    assert info.value.error_type == error["type"]
    assert info.value.status_code is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_after_a_chunk_the_same_error_is_not_sent_again(api: str, wire: str, mode: str) -> None:
    # The reply's first text, then a rate limit: what was delivered stands, nothing is resent.
    error = RETRYABLE[0]
    body = text_body(api, ["Hel"])
    cut = body.index(b"Hel")
    head = body[: body.index(b"\n\n", cut) + 2]
    replay = Replay(head + _event(api, error), text_body(api, ["never"]))
    cw = _window(api, replay, wire)
    with pytest.raises(StreamInterrupted) as info:
        _call(cw, mode)
    assert len(replay.requests) == 1
    assert info.value.checkpoint.text == "Hel"
    assert isinstance(info.value.__cause__, ProviderError)
    assert info.value.__cause__.retryable is True


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_an_error_no_retry_can_mend_is_not_sent_again(api: str, wire: str) -> None:
    error = {"type": "invalid_request_error", "code": "invalid_prompt", "message": "no"}
    replay = Replay(_failing(api, error), text_body(api, ["never"]))
    with pytest.raises(StreamInterrupted) as info:
        _call(_window(api, replay, wire), "sync")
    assert len(replay.requests) == 1
    assert isinstance(info.value.__cause__, ProviderError)
    assert info.value.__cause__.retryable is False
