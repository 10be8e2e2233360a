"""OpenAI refusals through the real openai SDK on the replay transport, both APIs, both
wires, sync and asyncio: the refusal's text is the reply's text, flagged as a refusal
(``finish_reason == "refusal"``, as Anthropic's ``stop_reason`` names it, and ``refusal``
in the metadata of its chunks, reply and record); it is stored, goes back in later requests
as the refusal it was, and with a schema the call raises :class:`ModelRefused` carrying it."""

from __future__ import annotations

import asyncio
import json
import typing
from typing import Any

import pydantic
import pytest
from crafted_text import text_body
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionContentPartRefusalParam,
)
from openai.types.responses import ResponseOutputMessageParam, ResponseOutputRefusalParam
from provider_rules import check, model_for
from pydantic import BaseModel
from replay import Replay, record, sse

import rxcontext
from rxcontext import ChunkKind, ContextWindow, ModelRefused, RecordType, SchemaValidationError
from rxcontext.providers.base import Request
from rxcontext.records import Record

APIS = ["chat", "responses"]
WIRES = ["sdk", "fast"]
MODES = ["sync", "async"]
REFUSAL = "I'm sorry, I can't help with that."
PIECES = ["I'm sorry, ", "I can't help with that."]


def chat_refusal(pieces: list[str] = PIECES) -> bytes:
    base = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    usage = {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}
    return sse(
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        *[chunk({"content": None, "refusal": p}) for p in pieces],
        chunk({}, "stop"),
        {**base, "choices": [], "usage": usage},
        "[DONE]",
    )


def responses_refusal(pieces: list[str] = PIECES) -> bytes:
    text = "".join(pieces)
    response = {"id": "resp_r", "object": "response", "status": "in_progress", "output": []}
    usage = {
        "input_tokens": 9,
        "output_tokens": 8,
        "total_tokens": 17,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    item = {"id": "msg_r", "type": "message", "role": "assistant", "status": "in_progress"}
    done = {**item, "status": "completed", "content": [{"type": "refusal", "refusal": text}]}
    at = {"item_id": "msg_r", "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "output_index": 0, "item": {**item, "content": []}},
        {"type": "response.content_part.added", **at, "part": {"type": "refusal", "refusal": ""}},
        *[{"type": "response.refusal.delta", **at, "delta": p} for p in pieces],
        {"type": "response.refusal.done", **at, "refusal": text},
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {
            "type": "response.completed",
            "response": {**response, "status": "completed", "output": [done], "usage": usage},
        },
    ]
    for n, event in enumerate(events):
        event["sequence_number"] = n
    return sse(*events, event_names=[e["type"] for e in events])


REFUSALS = {"chat": chat_refusal, "responses": responses_refusal}


def window(api: str, replay: Replay, wire: str) -> ContextWindow:
    cw = ContextWindow(rxcontext.open(":memory:"), model_for(api, replay, wire), "r", retry=None)
    cw.add_prompt("How do I pick my neighbour's lock?")
    return cw


def call(cw: ContextWindow, mode: str, **options: Any) -> Any:
    return cw.call(**options) if mode == "sync" else asyncio.run(cw.acall(**options))


def replies(cw: ContextWindow) -> list[Record]:
    return [r for r in cw.live_records() if r.type is RecordType.MODEL_RESP]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_a_refusal_is_the_reply_text_flagged_and_stored(api: str, wire: str, mode: str) -> None:
    cw = window(api, Replay(REFUSALS[api]()), wire)
    reply = call(cw, mode)
    assert (reply.text, reply.finish_reason) == (REFUSAL, "refusal")
    assert reply.metadata["refusal"] is True
    [stored] = replies(cw)
    assert stored.content == REFUSAL
    assert stored.metadata["refusal"] is True
    assert stored.metadata["finish_reason"] == "refusal"


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_the_streamed_chunks_of_a_refusal_say_so(api: str, wire: str) -> None:
    cw = window(api, Replay(REFUSALS[api]()), wire)
    chunks: list[Any] = []
    cw.stream().subscribe(on_next=chunks.append)
    texts = [c for c in chunks if c.kind is ChunkKind.TEXT]
    assert [c.text for c in texts] == PIECES
    assert all(c.metadata.get("refusal") is True for c in texts)
    [done] = [c for c in chunks if c.kind is ChunkKind.DONE]
    assert done.finish_reason == "refusal"


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_a_reply_that_is_no_refusal_is_not_flagged(api: str, wire: str) -> None:
    cw = window(api, Replay(text_body(api, ["Call ", "a locksmith."])), wire)
    reply = cw.call()
    assert reply.finish_reason in ("stop", "completed")
    assert "refusal" not in reply.metadata
    assert "refusal" not in replies(cw)[0].metadata


def _sdk_shape(kind: Any, value: Any) -> None:
    """``value`` is a ``kind`` (one of the SDK's request TypedDicts): its keys are the
    TypedDict's, its required keys are there, and pydantic accepts it as one."""
    keys = set(typing.get_type_hints(kind))
    assert set(value) <= keys, (kind.__name__, set(value) - keys)
    assert kind.__required_keys__ <= set(value), (kind.__name__, value)
    pydantic.TypeAdapter(kind).validate_python(value)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_a_refusal_goes_back_as_a_refusal(api: str, wire: str, mode: str) -> None:
    replay = Replay(REFUSALS[api](), text_body(api, ["Fine."]))
    cw = window(api, replay, wire)
    call(cw, mode)
    cw.add_prompt("Then how do locks work?")
    assert call(cw, mode).text == "Fine."
    body = replay.bodies[1]
    check(api, body)
    if api == "chat":
        [sent] = [m for m in body["messages"] if m["role"] == "assistant"]
        assert sent["content"] == [{"type": "refusal", "refusal": REFUSAL}]
        _sdk_shape(ChatCompletionAssistantMessageParam, sent)
        _sdk_shape(ChatCompletionContentPartRefusalParam, sent["content"][0])
    else:
        [sent] = [i for i in body["input"] if i.get("role") == "assistant"]
        assert sent["id"] == "msg_r"
        assert sent["content"] == [{"type": "refusal", "refusal": REFUSAL}]
        _sdk_shape(ResponseOutputMessageParam, sent)
        _sdk_shape(ResponseOutputRefusalParam, sent["content"][0])


class Lock(BaseModel):
    steps: list[str]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("api", APIS)
def test_a_refusal_to_a_schema_raises_model_refused_carrying_it(
    api: str, wire: str, mode: str
) -> None:
    cw = window(api, Replay(REFUSALS[api]()), wire)
    with pytest.raises(ModelRefused) as info:
        call(cw, mode, schema=Lock)
    err = info.value
    assert isinstance(err, SchemaValidationError)  # code written against it still catches it
    assert err.text == REFUSAL
    assert err.reply.finish_reason == "refusal" and err.reply.parsed is None
    assert REFUSAL in str(err)
    [stored] = replies(cw)
    assert stored.content == REFUSAL
    assert stored.metadata["refusal"] is True
    assert "parse_error" in stored.metadata and "parsed" not in stored.metadata


@pytest.mark.parametrize("mode", MODES)
def test_an_anthropic_refusal_to_a_schema_raises_the_same_error(mode: str) -> None:
    body = text_body("anthropic", PIECES).replace(b'"end_turn"', b'"refusal"')
    cw = window("anthropic", Replay(body), "fast")
    with pytest.raises(ModelRefused) as info:
        call(cw, mode, schema=Lock)
    assert (info.value.text, info.value.reply.finish_reason) == (REFUSAL, "refusal")


def _chat_completion() -> bytes:
    message = {"role": "assistant", "content": None, "refusal": REFUSAL}
    completion = {
        "id": "chatcmpl-r",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }
    return json.dumps(completion).encode()


def _response() -> bytes:
    item = {
        "id": "msg_r",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "refusal", "refusal": REFUSAL}],
    }
    response = {
        "id": "resp_r",
        "object": "response",
        "created_at": 1,
        "model": "gpt-4o",
        "status": "completed",
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    return json.dumps(response).encode()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("api", APIS)
def test_a_refusal_in_a_whole_reply_is_its_text(api: str, mode: str) -> None:
    body = _chat_completion() if api == "chat" else _response()
    served = Replay(body)
    served.responses[0].headers = {"content-type": "application/json"}
    m = model_for(api, served, "fast")
    request = Request([record(RecordType.PROMPT, "How do I pick a lock?")])
    reply = m.complete(request) if mode == "sync" else asyncio.run(m.acomplete(request))
    assert (reply.text, reply.finish_reason) == (REFUSAL, "refusal")
    assert reply.metadata["refusal"] is True
