"""The splicing stand-in an AnthropicModel keeps per client (``_stainless.StandIns``).

One stand-in (and its SDK ``Messages`` resource) serves every request of a client; the
history each request splices is set around its own SDK call (a context variable). These
tests send through the real SDK on an httpx2 MockTransport: requests of other windows,
threads, tasks and interleaved generators each carry their own history; a client's key,
URL and headers are read at each request; a stand-in is never shared between clients.
"""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx2
import pytest
from replay import record
from test_provider_anthropic import text_stream

from rxcontext.chunks import ChunkKind
from rxcontext.providers import AnthropicModel
from rxcontext.providers._stainless import SplicingClient, StandIns
from rxcontext.providers.base import Request
from rxcontext.records import RecordType

KEY = "sk-ant-stand-in-test"
SSE = {"content-type": "text/event-stream"}


def _request(prompt: str) -> Request:
    return Request([record(RecordType.PROMPT, prompt)])


def _prompt(request: httpx2.Request) -> str:
    body = json.loads(request.read())
    return str(body["messages"][0]["content"][0]["text"])


class _Seen:
    """A transport's log of the requests it answered (a text reply to each)."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.requests: list[httpx2.Request] = []
        self.lock = threading.Lock()
        self.barrier = barrier

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        with self.lock:
            self.requests.append(request)
        if self.barrier is not None:
            self.barrier.wait(10)  # both requests are in flight at once
        return httpx2.Response(200, headers=SSE, content=text_stream(_prompt(request)))

    def prompts(self) -> list[str]:
        return [_prompt(r) for r in self.requests]


def _model(seen: _Seen, **client: Any) -> AnthropicModel:
    transport = httpx2.MockTransport(seen.handle)
    return AnthropicModel(
        "claude-test",
        client=anthropic.Anthropic(
            api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=transport), **client
        ),
        async_client=anthropic.AsyncAnthropic(
            api_key=KEY,
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=transport),
            **client,
        ),
        wire="fast",
    )


def _text(chunks: Any) -> str:
    return "".join(c.text for c in chunks if c.kind is ChunkKind.TEXT)


@pytest.mark.parametrize("wire", ["fast", "sdk"])
def test_threads_sending_at_once_through_one_stand_in_send_their_own_history(wire: str):
    seen = _Seen(threading.Barrier(2))
    model = _model(seen)
    model.wire = wire  # type: ignore[assignment]
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def send(prompt: str) -> None:
        try:
            got[prompt] = _text(model.iter_chunks(_request(prompt)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(p,)) for p in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(seen.prompts()) == ["first", "second"]
    assert got == {"first": "first", "second": "second"}


def test_interleaved_generators_on_one_thread_send_their_own_history():
    seen = _Seen()
    model = _model(seen)
    first = model.iter_chunks(_request("first"))
    second = model.iter_chunks(_request("second"))  # prepared before the first is sent
    assert next(c for c in second if c.kind is ChunkKind.TEXT).text == "second"
    assert next(c for c in first if c.kind is ChunkKind.TEXT).text == "first"
    first.close()
    second.close()
    assert seen.prompts() == ["second", "first"]


def test_asyncio_tasks_and_interleaved_generators_send_their_own_history():
    seen = _Seen()
    model = _model(seen)

    async def collect(prompt: str) -> str:
        return _text([c async for c in model.aiter_chunks(_request(prompt))])

    async def main() -> None:
        assert await asyncio.gather(collect("a"), collect("b"), collect("c")) == ["a", "b", "c"]
        first = model.aiter_chunks(_request("first"))
        second = model.aiter_chunks(_request("second"))
        chunk = await anext(second)
        while chunk.kind is not ChunkKind.TEXT:
            chunk = await anext(second)
        assert chunk.text == "second"
        assert _text([c async for c in first]) == "first"
        await second.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    assert sorted(seen.prompts()[:3]) == ["a", "b", "c"]
    assert seen.prompts()[3:] == ["second", "first"]


def test_the_client_key_url_and_headers_are_read_at_each_request():
    seen = _Seen()
    model = _model(seen, default_headers={"x-team": "one"})
    client = model._client.get()
    assert _text(model.iter_chunks(_request("one"))) == "one"
    client.api_key = "sk-ant-another"
    client.base_url = "http://elsewhere.invalid/v2/"
    client._custom_headers["x-team"] = "two"
    assert _text(model.iter_chunks(_request("two"))) == "two"
    first, second = seen.requests
    sent = [r.headers.get("x-api-key") or r.headers["authorization"] for r in seen.requests]
    assert KEY in sent[0] and "sk-ant-another" in sent[1] and KEY not in sent[1]
    assert first.headers["x-team"] == "one" and second.headers["x-team"] == "two"
    assert str(second.url) == "http://elsewhere.invalid/v2/v1/messages"
    stand_in = model._stand_ins.get(client)
    assert (stand_in.api_key, stand_in.auth_token) == ("sk-ant-another", client.auth_token)


def test_a_stand_in_is_never_shared_between_clients():
    seen = _Seen()
    model = _model(seen)
    client = model._client.get()
    other = client.with_options(api_key="sk-ant-other")
    mine = model._stand_ins.get(client)
    assert model._stand_ins.get(client) is mine
    theirs = model._stand_ins.get(other)
    assert theirs is not mine and theirs._client is other
    assert model._stand_ins.get(client) is not theirs  # asked again: its own, not the last
    # Each model keeps its own; another model on the same client sends its own model name.
    twin = AnthropicModel("claude-twin", client=client, wire="fast")
    assert twin._stand_ins is not model._stand_ins
    assert _text(twin.iter_chunks(_request("twin"))) == "twin"
    assert _text(model.iter_chunks(_request("mine"))) == "mine"
    names = [json.loads(r.read())["model"] for r in seen.requests]
    assert names == ["claude-twin", "claude-test"]


def test_stand_ins_built_by_many_threads_at_once_are_each_for_their_client():
    clients = [object() for _ in range(8)]
    stand_ins = StandIns(lambda c: ("for", c))
    barrier = threading.Barrier(8)
    wrong: list[Any] = []

    def ask(client: object) -> None:
        barrier.wait(10)
        for _ in range(2000):
            got = stand_ins.get(client)
            if got[1] is not client:
                wrong.append(got)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_stand_in_called_outside_a_splice_refuses_to_send():
    posted: list[Any] = []
    real = SimpleNamespace(post=lambda *a, **kw: posted.append((a, kw)))
    stand_in = SplicingClient(real, "messages", lambda body, extra: b"{}")
    with pytest.raises(RuntimeError, match="outside a Splice"):
        stand_in.post("/v1/messages", body={"messages": []}, options={})
    assert posted == []


def test_a_client_given_a_recording_tracer_provider_is_not_spliced_from_that_request_on():
    """``splicing`` asks at each request whether the SDK's spans may record (they read the
    body): a client given a real tracer provider after its first request is sent the SDK's
    own body from then on, and spliced again once it is taken away."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from rxcontext.providers._anthropic_request import splicing

    client = anthropic.Anthropic(api_key=KEY, max_retries=0, http_client=httpx2.Client())
    assert splicing(client)
    client._open_telemetry["tracer_provider"] = sdk_trace.TracerProvider()
    assert not splicing(client)
    del client._open_telemetry["tracer_provider"]
    assert splicing(client)
