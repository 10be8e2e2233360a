"""Differential tests: ``wire="fast"`` gives exactly what ``wire="sdk"`` gives.

The same bytes, split into network chunks at random places, go through both wires on the
sync and the async path; chunks (and errors: type, flags, message, cause chain) must match.
Streams are the recorded ones plus generated ones (hypothesis): random text, reasoning and
tool-call fragments in random interleavings, quirks of OpenAI-compatible servers, error
payloads, failed responses and transport cuts; and the same streams with one event broken
(tests/wire_faults.py): non-object JSON, a field missing or of the wrong type at any depth,
invalid JSON, invalid UTF-8, a body cut anywhere. Every error is a ``ProviderError`` and
every chunk is well-typed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from replay import real_files
from wire_faults import EXAMPLES, assert_well_typed, broken, cause_chain, sdk_cause, truncated

from rxcontext.chunks import Chunk, ChunkKind
from rxcontext.errors import ProviderError
from rxcontext.providers.base import Request
from rxcontext.providers.openai import OpenAIModel, OpenAIResponsesModel

KEY = "sk-test-RXCONTEXT0123456789secret"


@dataclass
class Served:
    body: bytes = b""
    cuts: list[int] = field(default_factory=list)
    """Offsets where the body is split into network chunks."""
    error_after: int | None = None
    """Raise ``error`` after this many network chunks."""
    error: Exception | None = None
    status: int = 200
    closed: int = 0


class Pieces(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, served: Served) -> None:
        self.served = served
        self._closed = False

    def _parts(self) -> Iterator[bytes]:
        s = self.served
        bounds = [0, *sorted(set(s.cuts)), len(s.body)]
        parts = [s.body[a:b] for a, b in pairwise(bounds) if b > a]
        for n, part in enumerate(parts):
            if s.error_after is not None and n >= s.error_after:
                break
            yield part
        if s.error is not None:
            raise s.error

    def __iter__(self) -> Iterator[bytes]:
        yield from self._parts()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._parts():
            yield part

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.served.closed += 1

    async def aclose(self) -> None:
        self.close()


class Server:
    """One transport for all examples; ``served`` is what the next request gets."""

    def __init__(self) -> None:
        self.served = Served()
        self.transport = httpx2.MockTransport(self._handle)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(
            self.served.status,
            headers={"content-type": "text/event-stream"},
            stream=Pieces(self.served),
        )


SERVER = Server()


def _models(cls: Any) -> dict[str, Any]:
    client = openai.OpenAI(
        api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=SERVER.transport)
    )
    async_client = openai.AsyncOpenAI(
        api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient(transport=SERVER.transport)
    )
    return {w: cls("m", client=client, async_client=async_client, wire=w) for w in ("sdk", "fast")}


CHAT = _models(OpenAIModel)
RESPONSES = _models(OpenAIResponsesModel)
REQUEST = Request([])

Outcome = tuple[list[Chunk], tuple[Any, ...] | None]


def run(m: Any, mode: str, served: Served) -> Outcome:
    SERVER.served = served
    got: list[Chunk] = []

    async def consume() -> None:
        async for c in m.aiter_chunks(REQUEST):
            got.append(c)

    error = None
    try:
        if mode == "sync":
            for c in m.iter_chunks(REQUEST):
                got.append(c)
        else:
            asyncio.run(consume())
    except ProviderError as exc:  # anything else fails the test
        error = (
            exc.retryable,
            exc.status_code,
            exc.error_type,
            exc.retry_after,
            str(exc),
            cause_chain(exc),
        )
    assert served.closed == 1
    assert_well_typed(got)
    return got, error


def same_everywhere(models: dict[str, Any], make: Any) -> Outcome:
    """Run sdk/fast × sync/async on fresh copies of a served body; all must agree."""
    outcomes = {
        (w, mode): run(models[w], mode, make()) for w in models for mode in ("sync", "async")
    }
    first = outcomes["sdk", "sync"]
    for key, outcome in outcomes.items():
        assert outcome == first, key
    return first


def served_factory(body: bytes, cuts: list[int], error_after: int | None = None, error: Any = None):
    return lambda: Served(body, list(cuts), error_after, error)


# --- recorded streams, split at random places ----------------------------------------------

RECORDED = [
    *[(p, "chat") for p in real_files("openai_chat")],
    *[(p, "responses") for p in real_files("openai_responses")],
]


@pytest.mark.fixtures
@pytest.mark.skipif(not RECORDED, reason="../shared/fixtures/real is absent")
@pytest.mark.parametrize(("path", "api"), RECORDED, ids=[p.name for p, _ in RECORDED])
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_recorded_streams_split_anywhere(path: Any, api: str, data: st.DataObject) -> None:
    body = path.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40))
    models = CHAT if api == "chat" else RESPONSES
    chunks, _ = same_everywhere(models, served_factory(body, cuts))
    assert chunks


@pytest.mark.fixtures
@pytest.mark.skipif(not RECORDED, reason="../shared/fixtures/real is absent")
def test_recorded_streams_never_fall_back_to_the_sdk_models(monkeypatch: Any) -> None:
    """On well-formed events the fast wire reads every event itself: the SDK's event models
    are built only for an event that is not what it expects (and that costs the SDK's time)."""
    built: list[Any] = []
    for models in (CHAT, RESPONSES):
        for client in (models["fast"]._client.get(), models["fast"]._async_client.get()):
            process = client._process_response_data

            def spy(*args: Any, process: Any = process, **kwargs: Any) -> Any:
                built.append(kwargs.get("data"))
                return process(*args, **kwargs)

            monkeypatch.setattr(client, "_process_response_data", spy)
    for path, api in RECORDED:
        models = CHAT if api == "chat" else RESPONSES
        for mode in ("sync", "async"):
            run(models["fast"], mode, Served(path.read_bytes()))
    assert built == []


# --- generated chat streams ----------------------------------------------------------------

texts = st.text(max_size=8)
names = st.sampled_from(["f", "get_weather", "search_the_web"])


def frame(payloads: list[Any], crlf: bool, comments: list[bool], events: list[str | None]) -> bytes:
    """SSE frames of ``payloads`` (JSON-able values; a str or bytes is the data as it is)."""
    nl = b"\r\n" if crlf else b"\n"
    out = []
    for i, payload in enumerate(payloads):
        if comments[i % len(comments)]:
            out.append(b": OPENROUTER PROCESSING" + nl + nl)
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data = payload.encode()
        else:
            data = json.dumps(payload, ensure_ascii=crlf).encode()
        name = events[i] if i < len(events) else None
        head = b"event: " + name.encode() + nl if name else b""
        out.append(head + b"data: " + data + nl + nl)
    return b"".join(out)


def chat_chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {"id": "chatcmpl-g", "object": "chat.completion.chunk", "created": 1}
    out["model"] = "m"
    if delta is not None:
        out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    out.update(extra)
    return out


@st.composite
def tool_call_fragments(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    args = json.dumps(draw(st.dictionaries(st.text(max_size=4), texts, max_size=3)))
    style = draw(st.sampled_from(["standard", "repeat", "whole", "no_args_key"]))
    call_id, name = f"call_{index}_{draw(st.integers(0, 99))}", draw(names)
    if style == "whole":
        return [
            {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": args},
            }
        ]
    cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=5)))
    pieces = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=False)]
    first: dict[str, Any] = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name},
    }
    if style != "no_args_key":
        first["function"]["arguments"] = ""
    out = [first]
    for piece in pieces:
        frag: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
        if style == "repeat":
            frag.update(id=call_id, type="function")
            frag["function"]["name"] = name
        out.append(frag)
    return out


def usage(p: int, c: int, r: int) -> dict[str, Any]:
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": r},
        "completion_tokens_details": {"reasoning_tokens": r},
    }


@st.composite
def chat_payloads(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The events of a well-formed chat stream (no ``[DONE]``)."""
    queues: list[list[dict[str, Any]]] = []
    queues.append([{"content": t} for t in draw(st.lists(texts, max_size=6))])
    field_name = draw(st.sampled_from(["reasoning_content", "reasoning"]))
    queues.append([{field_name: t} for t in draw(st.lists(texts, max_size=4))])
    queues.append(
        draw(st.lists(st.sampled_from([{"role": "assistant"}, {}, {"content": None}]), max_size=3))
    )
    for i in range(draw(st.integers(0, 3))):
        queues.append([{"tool_calls": [f]} for f in draw(tool_call_fragments(i))])
    deltas: list[dict[str, Any]] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        deltas.append(q.pop(0))
    # Sometimes two tool-call fragments share one delta.
    merged: list[dict[str, Any]] = []
    for d in deltas:
        if merged and "tool_calls" in d and "tool_calls" in merged[-1] and draw(st.booleans()):
            merged[-1] = {"tool_calls": merged[-1]["tool_calls"] + d["tool_calls"]}
        else:
            merged.append(d)
    payloads: list[Any] = []
    if draw(st.booleans()):
        payloads.append({**chat_chunk(None, choices=[]), "id": "", "prompt_filter_results": []})
    payloads += [chat_chunk(d) for d in merged]
    finish = draw(st.sampled_from([None, "stop", "length", "tool_calls", "content_filter"]))
    payloads.append(chat_chunk({}, finish))
    tail = draw(st.sampled_from(["usage_chunk", "usage_in_choice", "none"]))
    u = usage(*draw(st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 9))))
    if tail == "usage_chunk":
        payloads.append(chat_chunk(None, choices=[], usage=u))
    elif tail == "usage_in_choice":
        payloads.append(chat_chunk({"role": "assistant", "content": ""}, usage=u))
    return payloads


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[bytes, list[int], int | None, Exception | None]:
    payloads: list[Any] = draw(chat_payloads())
    events: list[str | None] = [None] * len(payloads)
    ending = draw(
        st.sampled_from(["done", "done", "done", "none", "none", "error", "groq_error", "bad_json"])
    )
    if ending == "done":
        payloads.append("[DONE]")
    elif ending in ("error", "groq_error"):
        at = draw(st.integers(0, len(payloads)))
        body = {
            "message": draw(texts) or None,
            "type": draw(st.sampled_from([None, "server_error", "x"])),
        }
        if draw(st.booleans()):
            body["code"] = draw(st.sampled_from([400, 429, 500, "tool_use_failed"]))
        payloads.insert(at, {"error": body})
        events.insert(at, "error" if ending == "groq_error" else None)
    elif ending == "bad_json":
        at = draw(st.integers(0, len(payloads)))
        payloads.insert(at, draw(st.sampled_from(["{", "", "nope", '{"a": }'])))
        events.insert(at, None)
    comments = draw(st.lists(st.booleans(), min_size=1, max_size=5))
    body_bytes = frame(payloads, draw(st.booleans()), comments, events)
    cuts = draw(st.lists(st.integers(0, len(body_bytes)), max_size=30))
    error_after: int | None = None
    error: Exception | None = None
    if draw(st.sampled_from([False] * 7 + [True])):
        error_after = draw(st.integers(0, len(cuts) + 1))
        error = draw(
            st.sampled_from(
                [
                    httpx2.ReadError("reset"),
                    httpx2.RemoteProtocolError("peer closed"),
                    httpx2.ReadTimeout("slow"),
                ]
            )
        )
    return body_bytes, cuts, error_after, error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=chat_streams())
def test_generated_chat_streams(
    stream: tuple[bytes, list[int], int | None, Exception | None],
) -> None:
    same_everywhere(CHAT, served_factory(*stream))


# --- generated Responses streams -----------------------------------------------------------


def ev(kind: str, **kw: Any) -> dict[str, Any]:
    return {"type": kind, **kw}


@st.composite
def responses_payloads(draw: st.DrawFn, ending: str | None = None) -> list[Any]:
    """The events of a Responses stream (numbered), ending as ``ending`` says (or drawn)."""
    queues: list[list[dict[str, Any]]] = []
    output: list[dict[str, Any]] = []
    n_items = draw(st.integers(0, 4))
    for index in range(n_items):
        kind = draw(st.sampled_from(["message", "reasoning", "function_call"]))
        pieces = draw(st.lists(texts, max_size=5))
        joined = "".join(pieces)
        item_id = f"{kind[:2]}_{index}"
        if kind == "message":
            item = {
                "type": "message",
                "id": item_id,
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": joined, "annotations": []}],
            }
            if draw(st.booleans()):
                item["phase"] = draw(st.sampled_from(["commentary", "final_answer"]))
            added = {**item, "content": [], "status": "in_progress"}
            deltas = [
                ev(
                    "response.output_text.delta",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    delta=p,
                    logprobs=[],
                )
                for p in pieces
            ]
        elif kind == "reasoning":
            summary = draw(st.booleans())
            item = {
                "type": "reasoning",
                "id": item_id,
                "summary": [{"type": "summary_text", "text": joined}] if summary else [],
                "encrypted_content": draw(st.one_of(st.none(), st.text(max_size=6))),
            }
            if not summary:
                item["content"] = [{"type": "reasoning_text", "text": joined}]
            added = {**item, "summary": []}
            name = (
                "response.reasoning_summary_text.delta"
                if summary
                else "response.reasoning_text.delta"
            )
            deltas = [
                ev(
                    name,
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    content_index=0,
                    delta=p,
                )
                for p in pieces
            ]
        else:
            args = json.dumps(draw(st.dictionaries(st.text(max_size=3), texts, max_size=2)))
            cuts = sorted(draw(st.lists(st.integers(0, len(args)), max_size=4)))
            pieces = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)], strict=False)]
            item = {
                "type": "function_call",
                "id": item_id,
                "call_id": f"call_{index}",
                "name": draw(names),
                "arguments": args,
                "status": "completed",
            }
            style = draw(st.sampled_from(["deltas", "whole_in_done", "whole_in_added"]))
            added = {
                **item,
                "arguments": args if style == "whole_in_added" else "",
                "status": "in_progress",
            }
            deltas = (
                []
                if style != "deltas"
                else [
                    ev(
                        "response.function_call_arguments.delta",
                        item_id=item_id,
                        output_index=index,
                        delta=p,
                    )
                    for p in pieces
                ]
            )
        output.append(item)
        queues.append(
            [
                ev("response.output_item.added", output_index=index, item=added),
                *deltas,
                ev("response.output_item.done", output_index=index, item=item),
            ]
        )
    payloads: list[Any] = [
        ev("response.created", response={"id": "resp_g", "status": "in_progress", "output": []})
    ]
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        payloads.append(q.pop(0))
    response = {
        "id": "resp_g",
        "object": "response",
        "model": "m",
        "output": output,
        "usage": {
            "input_tokens": draw(st.integers(0, 50)),
            "output_tokens": 3,
            "total_tokens": 99,
            "input_tokens_details": {"cached_tokens": 1},
            "output_tokens_details": {"reasoning_tokens": 2},
        },
    }
    if ending is None:
        ending = draw(
            st.sampled_from(
                [*["completed"] * 5, "failed", "incomplete", "error", "error_key", "none"]
            )
        )
    if ending == "completed":
        payloads.append(ev("response.completed", response={**response, "status": "completed"}))
    elif ending == "failed":
        error = {"code": draw(st.sampled_from(["server_error", "invalid_prompt"])), "message": "m"}
        payloads.append(
            ev("response.failed", response={**response, "status": "failed", "error": error})
        )
    elif ending == "incomplete":
        details = {"reason": draw(st.sampled_from(["max_output_tokens", "content_filter"]))}
        payloads.append(
            ev(
                "response.incomplete",
                response={**response, "status": "incomplete", "incomplete_details": details},
            )
        )
    elif ending == "error":
        code = draw(st.sampled_from([None, "rate_limit_exceeded", "bad"]))
        payloads.insert(
            draw(st.integers(1, len(payloads))), ev("error", code=code, message="boom", param=None)
        )
    elif ending == "error_key":
        payloads.append({"error": {"message": "boom", "type": "server_error"}})
    return [
        {**p, "sequence_number": i} if isinstance(p, dict) and "type" in p else p
        for i, p in enumerate(payloads)
    ]


@st.composite
def responses_streams(draw: st.DrawFn) -> tuple[bytes, list[int], int | None, Exception | None]:
    payloads = draw(responses_payloads())
    if draw(st.booleans()):
        payloads.append("[DONE]")
    events = [p.get("type") if isinstance(p, dict) else None for p in payloads]
    comments = draw(st.lists(st.booleans(), min_size=1, max_size=3))
    body = frame(payloads, draw(st.booleans()), comments, events)
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=30))
    error_after: int | None = None
    err: Exception | None = None
    if draw(st.sampled_from([False] * 7 + [True])):
        error_after = draw(st.integers(0, len(cuts) + 1))
        err = draw(st.sampled_from([httpx2.ReadError("reset"), httpx2.ReadTimeout("slow")]))
    return body, cuts, error_after, err


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=responses_streams())
def test_generated_responses_streams(
    stream: tuple[bytes, list[int], int | None, Exception | None],
) -> None:
    same_everywhere(RESPONSES, served_factory(*stream))


# --- HTTP errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("models", [CHAT, RESPONSES], ids=["chat", "responses"])
@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
def test_http_errors_agree(models: dict[str, Any], status: int) -> None:
    body = json.dumps({"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"}})

    def make() -> Served:
        return Served(body.encode(), status=status)

    chunks, error = same_everywhere(models, make)
    assert chunks == [] and error is not None and error[1] == status
    assert KEY not in error[4]


# --- malformed events: both wires end alike, with a ProviderError --------------------------


@st.composite
def broken_chat_streams(draw: st.DrawFn) -> tuple[bytes, list[int], int | None, Exception | None]:
    """A chat stream with one event broken (or the body cut anywhere)."""
    payloads: list[Any] = draw(chat_payloads())
    if draw(st.sampled_from([True] * 5 + [False])) and payloads:
        at = draw(st.integers(0, len(payloads) - 1))
        _, data = draw(broken(payloads[at]))
        if draw(st.booleans()):
            payloads[at] = data
        else:
            payloads.insert(at, data)
    payloads.append("[DONE]")
    body = frame(payloads, draw(st.booleans()), [False], [])
    if draw(st.sampled_from([False] * 4 + [True])):
        body = truncated(draw, body)
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=12))
    error: Exception | None = None
    error_after: int | None = None
    if draw(st.sampled_from([False] * 5 + [True])):
        error_after = draw(st.integers(0, len(cuts) + 1))
        error = httpx2.ReadError("reset")
    return body, cuts, error_after, error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=broken_chat_streams())
def test_broken_chat_events_end_both_wires_alike(
    stream: tuple[bytes, list[int], int | None, Exception | None],
) -> None:
    _, error = same_everywhere(CHAT, served_factory(*stream))
    event(f"error_type: {error[2] if error else None}")


@st.composite
def broken_responses_streams(
    draw: st.DrawFn,
) -> tuple[bytes, list[int], int | None, Exception | None]:
    """A Responses stream with one event broken (or the body cut anywhere)."""
    payloads = draw(responses_payloads("completed"))
    if draw(st.sampled_from([True] * 5 + [False])):
        at = draw(st.integers(0, len(payloads) - 1))
        _, data = draw(broken(payloads[at]))
        if draw(st.booleans()):
            payloads[at] = data
        else:
            payloads.insert(at, data)
    events = [p.get("type") if isinstance(p, dict) else None for p in payloads]
    body = frame(payloads, draw(st.booleans()), [False], events)
    if draw(st.sampled_from([False] * 4 + [True])):
        body = truncated(draw, body)
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=12))
    error: Exception | None = None
    error_after: int | None = None
    if draw(st.sampled_from([False] * 5 + [True])):
        error_after = draw(st.integers(0, len(cuts) + 1))
        error = httpx2.ReadError("reset")
    return body, cuts, error_after, error


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=broken_responses_streams())
def test_broken_responses_events_end_both_wires_alike(
    stream: tuple[bytes, list[int], int | None, Exception | None],
) -> None:
    _, error = same_everywhere(RESPONSES, served_factory(*stream))
    event(f"error_type: {error[2] if error else None}")


HELLO = chat_chunk({"content": "Hel"})
STOP = chat_chunk({}, "stop")


def chat_body(*middle: bytes) -> bytes:
    return b"".join(
        [frame([HELLO], False, [False], []), *middle, frame([STOP, "[DONE]"], False, [False], [])]
    )


@pytest.mark.parametrize(
    ("middle", "error_type"),
    [
        pytest.param(b"data: []\n\n", "invalid_event", id="array"),
        pytest.param(b'data: "lo"\n\n', "invalid_event", id="string"),
        pytest.param(b"data: 5\n\n", "invalid_event", id="number"),
        pytest.param(b"data: null\n\n", "invalid_event", id="null"),
        pytest.param(b'data: {"choices": "lo"}\n\n', "invalid_event", id="choices-string"),
        pytest.param(b'data: {"choices": [{"delta": "lo"}]}\n\n', "invalid_event", id="delta-str"),
        pytest.param(
            b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
            "invalid_event",
            id="content-number",
        ),
        pytest.param(
            b'data: {"choices": [{"index": 0, "delta": {"content": ["lo"]}}]}\n\n',
            "invalid_event",
            id="content-list",
        ),
        pytest.param(
            b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, '
            b'"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}}]}\n\n',
            "invalid_event",
            id="arguments-object",
        ),
        pytest.param(
            b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": 1}]}\n\n',
            "invalid_event",
            id="finish-reason-number",
        ),
        pytest.param(b'data: {"id": "c", "usage": "lots"}\n\n', "invalid_event", id="usage-str"),
        pytest.param(
            b'data: {"id": "c", "usage": {"prompt_tokens": "many"}}\n\n',
            "invalid_event",
            id="count-str",
        ),
        pytest.param(
            b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens":'
            b' 1, "total_tokens": 2, "prompt_tokens_details": false}}\n\n',
            "invalid_event",
            id="details-false",  # found by test_broken_chat_events_end_both_wires_alike
        ),
        pytest.param(
            b'data: {"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens":'
            b' 1, "total_tokens": 2, "completion_tokens_details": 0}}\n\n',
            "invalid_event",
            id="details-zero",
        ),
        pytest.param(b'data: {"choices": [\n\n', "invalid_json", id="cut-json"),
        pytest.param(
            b'data: {"choices": [{"index": 0, "delta": {"content": "l\xffo"}}]}\n\n',
            "invalid_utf8",
            id="utf8",
        ),
        pytest.param(b": \xff\n\n", "invalid_utf8", id="utf8-in-comment"),
    ],
)
def test_malformed_chat_event_examples(middle: bytes, error_type: str) -> None:
    chunks, error = same_everywhere(CHAT, lambda: Served(chat_body(middle)))
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None
    retryable, status, kind, _, message, _ = error
    assert (retryable, status, kind) == (False, None, error_type)
    assert "base_url" in message


def test_counts_the_sdk_coerces_are_coerced_on_both_wires() -> None:
    """``"7"`` for a token count: the SDK's model makes it 7 (when the whole usage object
    validates); the fast wire reads the event the SDK's way and gets 7 too."""
    counts = {"prompt_tokens": "7", "completion_tokens": 2.0, "total_tokens": 9}
    usage = frame([{"id": "c", "choices": [], "usage": counts}], False, [False], [])
    chunks, error = same_everywhere(CHAT, lambda: Served(chat_body(usage)))
    assert error is None
    assert chunks[-1].usage is not None and chunks[-1].usage.input_tokens == 7
    # Without total_tokens the SDK does not validate it, so "7" stays a string: an error.
    del counts["total_tokens"]
    usage = frame([{"id": "c", "choices": [], "usage": counts}], False, [False], [])
    _, error = same_everywhere(CHAT, lambda: Served(chat_body(usage)))
    assert error is not None and error[2] == "invalid_event"


def test_a_fallback_to_the_sdk_after_calls_of_two_choices_keeps_both_calls() -> None:
    """An event the fast reader hands to the SDK's model (here a count the SDK coerces)
    after reading tool calls of two choices: the SDK's re-read must start from the calls
    known before the event, not after its first choice (which lost that call's id and
    name on the fast wire)."""

    def call(index: int, name: str) -> dict[str, Any]:
        return {"index": index, "id": f"c{index}", "type": "function",
                "function": {"name": name, "arguments": "{}"}}  # fmt: skip

    counts = {"prompt_tokens": "5", "completion_tokens": 1, "total_tokens": 6}
    event = {
        "id": "c",
        "choices": [
            {"index": 0, "delta": {"tool_calls": [call(0, "f0")]}, "finish_reason": None},
            {"index": 0, "delta": {"tool_calls": [call(1, "f1")]}, "finish_reason": None},
        ],
        "usage": counts,
    }
    chunks, error = same_everywhere(
        CHAT, lambda: Served(chat_body(frame([event], False, [False], [])))
    )
    assert error is None
    calls = [(c.index, c.id, c.name) for c in chunks if c.kind is ChunkKind.TOOL_CALL]
    assert calls == [(0, "c0", "f0"), (1, "c1", "f1")]


def test_invalid_utf8_keeps_the_events_before_it_in_the_same_read() -> None:
    """The events before a bad line in the same network read still reach the subscriber."""
    body = chat_body(b'data: {"choices": [{"index": 0, "delta": {"content": "\xff"}}]}\n\n')
    chunks, error = same_everywhere(CHAT, lambda: Served(body))  # one piece: one read
    assert [c.text for c in chunks] == ["Hel"] and error is not None and error[2] == "invalid_utf8"


def responses_body(*events: Any) -> bytes:
    head = [
        ev("response.created", response={"id": "resp_x", "status": "in_progress"}),
        ev("response.output_text.delta", item_id="m", output_index=0, delta="Hel"),
    ]
    return frame([*head, *events], False, [False], [])


@pytest.mark.parametrize(
    ("event", "error_type"),
    [
        pytest.param(b"[1, 2]", "invalid_event", id="array"),
        pytest.param(ev("response.output_text.delta", delta=5), "invalid_event", id="delta-int"),
        pytest.param(
            ev("response.output_item.added", output_index=0, item="call"),
            "invalid_event",
            id="item-string",
        ),
        pytest.param(
            ev(
                "response.output_item.added",
                output_index=0,
                item={"type": "function_call", "id": "fc", "call_id": 7, "name": "f"},
            ),
            "invalid_event",
            id="call-id-int",
        ),
        pytest.param(
            ev(
                "response.output_item.done",
                output_index=0,
                item={"type": "reasoning", "id": "rs", "summary": [{"text": 1}]},
            ),
            "invalid_event",
            id="summary-text-int",
        ),
        pytest.param(
            ev("response.completed", response={"id": "r", "status": "completed", "usage": 3}),
            "invalid_event",
            id="usage-int",
        ),
        pytest.param(ev("response.completed", response="done"), "invalid_event", id="response-str"),
        pytest.param(ev("error", message=["boom"], code=None), "invalid_event", id="error-list"),
    ],
)
def test_malformed_responses_event_examples(event: Any, error_type: str) -> None:
    chunks, error = same_everywhere(RESPONSES, lambda: Served(responses_body(event)))
    assert [c.text for c in chunks] == ["Hel"]
    assert error is not None and error[:3] == (False, None, error_type)


@pytest.mark.parametrize(
    "after",
    [
        httpx2.ReadTimeout("the proxy held the connection open"),
        httpx2.RemoteProtocolError("peer closed the connection"),
        None,
    ],
)
def test_a_response_ends_at_its_final_event_whatever_the_body_does_after(
    after: Exception | None,
) -> None:
    """``response.completed`` ends the reply (Responses sends no ``[DONE]``): a proxy that
    holds the connection open after it (the read times out), drops it, or sends more, must
    not turn a whole reply into an error, on either wire, sync or async."""
    done = ev("response.completed", response={"id": "resp_x", "status": "completed"})
    late = [ev("response.output_text.delta", item_id="m", output_index=0, delta="lo"), b"[1]"]
    body = responses_body(done, *([] if after is not None else late))
    chunks, error = same_everywhere(RESPONSES, lambda: Served(body, error=after))
    assert error is None
    assert [c.text for c in chunks if c.text] == ["Hel"]
    assert chunks[-1].kind is ChunkKind.DONE and chunks[-1].response_id == "resp_x"


# --- in-stream errors: the SDK's exception is in the cause chain on both wires ---------------


def _error_of(models: dict[str, Any], body: bytes) -> dict[str, BaseException]:
    out = {}
    for wire, model in models.items():
        SERVER.served = Served(body)
        try:
            list(model.iter_chunks(REQUEST))
        except ProviderError as exc:
            out[wire] = exc
    assert set(out) == {"sdk", "fast"}
    return out


@pytest.mark.parametrize(
    "payload",
    [
        {"error": {"message": "overloaded", "type": "server_error", "code": 503}},
        {"error": "just text"},
        {"error": {"message": 5}},
    ],
    ids=["object", "text", "bad-message"],
)
def test_chat_in_stream_error_has_the_sdk_exception_on_both_wires(payload: Any) -> None:
    errors = _error_of(CHAT, chat_body(frame([payload], False, [False], [])))
    for exc in errors.values():
        assert type(exc.__cause__) is openai.APIError
        assert exc.__cause__.body == payload["error"]
    assert cause_chain(errors["sdk"]) == cause_chain(errors["fast"])


@pytest.mark.parametrize(
    ("event", "body"),
    [
        (ev("error", code="server_error", message="boom", param=None), None),
        (
            ev(
                "response.failed",
                response={
                    "id": "r",
                    "status": "failed",
                    "error": {"code": "server_error", "message": "boom"},
                },
            ),
            {"code": "server_error", "message": "boom"},
        ),
    ],
    ids=["error", "failed"],
)
def test_responses_in_stream_error_has_the_sdk_exception_on_both_wires(
    event: Any, body: Any
) -> None:
    errors = _error_of(RESPONSES, responses_body(event))
    for exc in errors.values():
        api = sdk_cause(exc, openai.APIError)
        assert type(api) is openai.APIError and api.message == "boom"
        assert exc.retryable and "boom" in str(exc)
        if body is not None:
            assert api.body == body
    assert cause_chain(errors["sdk"]) == cause_chain(errors["fast"])


@pytest.mark.parametrize(
    "middle",
    [
        pytest.param(b"retry: abc\n\n", id="retry-not-a-number"),
        pytest.param(b"retry: 5\n\n", id="retry-alone"),
        pytest.param(b"event:\n\n", id="empty-event-name"),
        pytest.param(b"id: a\x00b\n\n", id="id-with-nul"),
        pytest.param(b"id: 7\n\n\n", id="id-then-two-blank-lines"),
        pytest.param(
            b'id: 7\ndata: {"id": "c", "object": "chat.completion.chunk", "choices": []}\n\n\n',
            id="id-kept-for-a-later-blank-line",
        ),
        pytest.param(b"id:\n\n", id="empty-id"),
    ],
)
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_id_retry_and_event_lines_end_events_as_the_sdks_decoder_does(
    api: str, middle: bytes
) -> None:
    """Which ``id:``, ``retry:`` and ``event:`` lines make a blank line end an event (which,
    with no data, is an error to both wires) follows the SDK's decoder: an event name must
    not be empty, a retry must be a number, an id holds no NUL and is kept for every later
    event (as the SSE spec says)."""
    if api == "chat":
        same_everywhere(CHAT, lambda: Served(chat_body(middle)))
    else:
        tail = ev("response.completed", response={"id": "resp_x", "status": "completed"})
        body = responses_body() + middle + frame([tail], False, [False], [])
        same_everywhere(RESPONSES, lambda: Served(body))
