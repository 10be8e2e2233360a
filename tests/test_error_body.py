"""A gateway that answers a streaming request with ``200 application/json {"error": ...}``.

Through the real SDKs on a replayed transport, both wires, sync and async: the server's
message reaches the user as a typed ProviderError classified by its error type (not a
retryable "the connection was cut"), the request is not sent again, and a key the message
quotes is masked. A body that is an event stream, or a non-JSON body, is read as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest

import rxcontext
from rxcontext import ContextWindow, ProviderError, RetryPolicy
from rxcontext.providers import AnthropicModel
from rxcontext.providers._error_body import LIMIT
from rxcontext.providers.openai import OpenAIModel, OpenAIResponsesModel

KEY = "sk-test-ERRORBODY-0123456789abcdef"
OPENAI_ERROR = {
    "error": {
        "message": f"Incorrect API key provided: {KEY}. You can find your API key at ...",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
}
OPENAI_OVERLOADED = {"error": {"message": "The server is busy", "type": "server_error"}}
ANTHROPIC_ERROR = {
    "type": "error",
    "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
APIS = ["chat", "responses", "anthropic"]
WIRES = ["sdk", "fast"]
MODES = ["sync", "async"]


class Gateway:
    """Answers every request with status 200, ``content_type`` and ``body``."""

    def __init__(self, body: bytes, content_type: str | None = "application/json") -> None:
        self.body = body
        self.headers = {} if content_type is None else {"content-type": content_type}
        self.requests = 0
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        return httpx2.Response(200, headers=self.headers, content=self.body)

    def model(self, api: str, wire: str) -> Any:
        sync, aio = (
            httpx2.Client(transport=self.transport),
            httpx2.AsyncClient(transport=self.transport),
        )
        if api == "anthropic":
            return AnthropicModel(
                "claude-test",
                client=anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=sync),
                async_client=anthropic.AsyncAnthropic(api_key=KEY, max_retries=0, http_client=aio),
                wire=wire,  # type: ignore[arg-type]
            )
        cls = OpenAIModel if api == "chat" else OpenAIResponsesModel
        return cls(
            "gpt-test",
            client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=sync),
            async_client=openai.AsyncOpenAI(api_key=KEY, max_retries=0, http_client=aio),
            wire=wire,  # type: ignore[arg-type]
        )


def call(gateway: Gateway, api: str, wire: str, mode: str) -> ProviderError:
    """The ProviderError a window's call ends with (three attempts allowed)."""
    store = rxcontext.open(":memory:")
    try:
        policy = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0)
        window = ContextWindow(store, gateway.model(api, wire), context="c", retry=policy)
        window.add_prompt("hi")
        with pytest.raises(Exception) as caught:
            window.call() if mode == "sync" else asyncio.run(window.acall())
    finally:
        store.close()
    at: BaseException | None = caught.value
    while at is not None and not isinstance(at, ProviderError):
        at = at.__cause__
    assert at is not None, repr(caught.value)
    return at


def _body(api: str, overloaded: bool = False) -> bytes:
    if api == "anthropic":
        return json.dumps(ANTHROPIC_OVERLOADED if overloaded else ANTHROPIC_ERROR).encode()
    return json.dumps(OPENAI_OVERLOADED if overloaded else OPENAI_ERROR).encode()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_a_json_error_body_is_the_servers_error_sent_once(
    api: str, wire: str, mode: str, content_type: str
) -> None:
    gateway = Gateway(_body(api), content_type)
    error = call(gateway, api, wire, mode)
    assert gateway.requests == 1  # not sent again: the key will not become right
    assert not error.retryable
    assert error.error_type != "incomplete_stream"
    assert "connection was cut" not in str(error)
    if api == "anthropic":
        assert error.error_type == "authentication_error"
        assert "invalid x-api-key" in str(error)
    else:
        assert error.error_type == "invalid_request_error"
        assert "Incorrect API key provided" in str(error)
    assert KEY not in str(error)
    at: BaseException | None = error
    while at is not None:  # nor in the SDK exception it was raised from
        assert KEY not in str(at)
        at = at.__cause__


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_a_retryable_error_body_is_sent_again(api: str, wire: str, mode: str) -> None:
    """Classified by its type as the same error inside a stream would be: a busy server is
    worth asking again."""
    gateway = Gateway(_body(api, overloaded=True))
    error = call(gateway, api, wire, mode)
    assert error.retryable and gateway.requests == 3
    assert error.error_type in ("server_error", "overloaded_error")
    assert "busy" in str(error)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"<html>502 Bad Gateway</html>", "text/html", id="html"),
        pytest.param(b'{"id": "not an error"}', "application/json", id="json-no-error"),
        pytest.param(b'{"error": {"message": "cut', "application/json", id="json-cut"),
        pytest.param(None, "application/json", id="json-too-long"),
    ],
)
def test_a_body_that_is_no_json_error_is_still_a_cut_stream(
    api: str, wire: str, body: bytes | None, content_type: str
) -> None:
    if body is None:  # an error body past the limit is not read
        body = json.dumps({"error": {"message": "x" * LIMIT, "type": "invalid_request_error"}})
        body = body.encode()
    gateway = Gateway(body, content_type)
    error = call(gateway, api, wire, "sync")
    assert error.error_type == "incomplete_stream" and error.retryable
    assert gateway.requests == 3


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", ["chat", "anthropic"])
def test_an_event_stream_without_its_content_type_still_streams(api: str, wire: str) -> None:
    """A server that sends its stream with no ``content-type`` (or a wrong one) is read as
    before: the body is tapped, not held back."""
    if api == "chat":
        events = [
            {"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        body = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)
        body += b"data: [DONE]\n\n"
    else:
        message = {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-test",
            "usage": {"input_tokens": 1, "output_tokens": 0},
        }
        events = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "hi"},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 1},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        body = b"".join(f"event: {n}\ndata: {json.dumps(e)}\n\n".encode() for n, e in events)
    for content_type in (None, "application/json"):
        gateway = Gateway(body, content_type)
        store = rxcontext.open(":memory:")
        try:
            window = ContextWindow(store, gateway.model(api, wire), context="c")
            window.add_prompt("hi")
            assert window.call().text == "hi"
        finally:
            store.close()


def test_one_check_raises_the_body_as_each_provider_builds_its_error() -> None:
    """BodyTap.raise_error is the one end-of-stream check both providers call, each with how
    it builds its exception: given the body, for a JSON error body only."""
    from rxcontext.providers._error_body import tap

    def read(content_type: str, body: bytes) -> Any:
        response = httpx2.Response(200, headers={"content-type": content_type}, content=body)
        kept = tap(response)
        b"".join(response.iter_bytes())
        return kept

    def build(body: Any) -> Exception:
        return LookupError(body)

    with pytest.raises(LookupError) as info:
        read("application/json", json.dumps(OPENAI_ERROR).encode()).raise_error(build)
    assert info.value.args == (OPENAI_ERROR,)
    read("application/json", b'{"ok": true}').raise_error(build)
    read("text/event-stream", json.dumps(OPENAI_ERROR).encode()).raise_error(build)
