"""OpenAIResponsesModel through the real openai SDK on a replay transport (sync and async)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from replay import Replay, real_files, real_fixture, sse, stored
from replay import Reply as Served
from replay import record as rec

import rxcontext
from rxcontext import ContextWindow
from rxcontext.chunks import Chunk, ChunkKind, ToolCall, Usage
from rxcontext.errors import ProviderError, StreamInterrupted
from rxcontext.providers.base import Request, reply_from_chunks
from rxcontext.providers.openai import OUTPUT_KEY, OpenAIResponsesModel
from rxcontext.records import RecordType
from rxcontext.tools import Tool

KEY = "sk-test-RXCONTEXT0123456789secret"
MODES = ["sync", "async"]
WIRES = ["sdk", "fast"]


def model(replay: Replay, wire: str = "sdk", **params: Any) -> OpenAIResponsesModel:
    return OpenAIResponsesModel(
        "gpt-5.5",
        client=openai.OpenAI(api_key=KEY, max_retries=0, http_client=replay.client()),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=replay.async_client()
        ),
        wire=wire,  # type: ignore[arg-type]
        **params,
    )


HELLO = Request([rec(RecordType.PROMPT, "hi")])


def collect(m: OpenAIResponsesModel, mode: str, request: Request = HELLO) -> list[Chunk]:
    got: list[Chunk] = []

    async def run() -> None:
        async for chunk in m.aiter_chunks(request):
            got.append(chunk)

    try:
        if mode == "sync":
            got.extend(m.iter_chunks(request))
        else:
            asyncio.run(run())
    except ProviderError as exc:
        exc.chunks = got  # type: ignore[attr-defined]
        raise
    return got


def both(body: bytes | Path | Served, wire: str = "sdk") -> list[Chunk]:
    sync = collect(model(Replay(body), wire), "sync")
    assert collect(model(Replay(body), wire), "async") == sync
    return sync


def both_error(body: bytes | Path | Served, wire: str = "sdk") -> tuple[ProviderError, list[Chunk]]:
    results = []
    for mode in MODES:
        replay = Replay(body)
        with pytest.raises(ProviderError) as info:
            collect(model(replay, wire), mode)
        assert replay.closed == 1
        results.append((info.value, info.value.chunks))  # type: ignore[attr-defined]
    (err, chunks), (aerr, achunks) = results
    assert achunks == chunks
    assert (err.retryable, err.status_code, err.error_type, str(err)) == (
        aerr.retryable,
        aerr.status_code,
        aerr.error_type,
        str(aerr),
    )
    return err, chunks


def events(*payloads: dict[str, Any], tail: tuple[str, ...] = ()) -> bytes:
    """Frame Responses events as the API does: ``event:`` line + ``data:``, numbered."""
    numbered = [{**p, "sequence_number": i} for i, p in enumerate(payloads)]
    names = [p["type"] for p in payloads]
    return sse(*numbered, *tail, event_names=[*names, *([None] * len(tail))])


def response(status: str = "completed", output: list[Any] | None = None, **kw: Any) -> dict:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "model": "gpt-5.5",
        "status": status,
        "output": output or [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        **kw,
    }


USAGE = {
    "input_tokens": 20,
    "input_tokens_details": {"cached_tokens": 8},
    "output_tokens": 12,
    "output_tokens_details": {"reasoning_tokens": 5},
    "total_tokens": 32,
}


def completed(**kw: Any) -> dict[str, Any]:
    return {"type": "response.completed", "response": response(usage=USAGE, **kw)}


CREATED = {"type": "response.created", "response": response("in_progress")}


def text_delta(delta: str, index: int = 0, item: str = "msg_1") -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": item,
        "output_index": index,
        "content_index": 0,
        "delta": delta,
        "logprobs": [],
    }


def fc_added(index: int, item: str, call_id: str, name: str, args: str = "") -> dict[str, Any]:
    return {
        "type": "response.output_item.added",
        "output_index": index,
        "item": {
            "type": "function_call",
            "id": item,
            "call_id": call_id,
            "name": name,
            "arguments": args,
            "status": "in_progress",
        },
    }


def fc_delta(index: int, item: str, delta: str) -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.delta",
        "item_id": item,
        "output_index": index,
        "delta": delta,
    }


def fc_done(index: int, item: str, call_id: str, name: str, args: str) -> dict[str, Any]:
    return {
        "type": "response.output_item.done",
        "output_index": index,
        "item": {
            "type": "function_call",
            "id": item,
            "call_id": call_id,
            "name": name,
            "arguments": args,
            "status": "completed",
        },
    }


def check_shape(chunks: list[Chunk]) -> None:
    assert [c.kind for c in chunks].count(ChunkKind.DONE) == 1
    assert chunks[-1].kind is ChunkKind.DONE
    assert all(c.text for c in chunks if c.kind in (ChunkKind.TEXT, ChunkKind.THINKING))


# --- recorded streams -------------------------------------------------------------------


def done_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def oracle(path: Path) -> tuple[str, str]:
    """Text and reasoning as the server's own ``*.done`` events state them."""
    evs = done_events(path)
    text = "".join(e["text"] for e in evs if e["type"] == "response.output_text.done")
    thinking = "".join(
        e["text"]
        for e in evs
        if e["type"] in ("response.reasoning_summary_text.done", "response.reasoning_text.done")
    )
    return text, thinking


EXPECTED: dict[str, dict[str, Any]] = {
    "function_call_roundtrip_gpt55.1.sse": {
        "id": "resp_00d64fa806f333310169fab1be69d081a08f8285661855594c",
        "usage": Usage(58, 23, 81, 0, 0),
        "calls": (
            ToolCall.parse("call_sVidsfFJ6zlzRpelrPkTPlpd", "multiply", '{"a":1231,"b":2331}'),
        ),
        "kept": [
            {
                "type": "function_call",
                "id": "fc_00d64fa806f333310169fab1bf324481a0852cda3180856290",
                "call_id": "call_sVidsfFJ6zlzRpelrPkTPlpd",
            }
        ],
    },
    "function_call_roundtrip_gpt55.2.sse": {
        "id": "resp_0dacb603de1c9e6b0169fab1c2314081a3b1df3cc5c09e0c60",
        "usage": Usage(94, 18, 112, 0, 0),
        "text": "1231 × 2331 = **2,869,461**",
    },
    "openrouter_reasoning_text_trailing_done.sse": {
        "id": "gen-1764265411-Fu1iEX7h5MRWiL79lb94",
        "usage": Usage(78, 37, 115, 0, 22),
        "text": "4",
        "thinking": 'The user asks: "What is 2+2?" They expect a straightforward answer: 4. '
        "Just answer 4.",
    },
    "reasoning_message_function_call_gpt55.1.sse": {
        "id": "resp_0fabc13af1ee0049006a691dfdab8881a1a75f2db7ff78cb83",
        "usage": Usage(63, 69, 132, 0, 26),
        "text": "I’ll check the capital lookup tool for “PotatoLand.”",
        "calls": (
            ToolCall.parse(
                "call_LabG58Uhrq9kZvR52BYKjToD", "get_capital", '{"country":"PotatoLand"}', 2
            ),
        ),
    },
    "reasoning_message_function_call_gpt55.2.sse": {
        "id": "resp_0fabc13af1ee0049006a691dffc71481a18c5ea1841dec14ce",
        "usage": Usage(147, 16, 163, 0, 0),
        "text": "The capital of PotatoLand is **Potato City**.",
    },
    "reasoning_summary_code_interpreter_gpt5.sse": {
        "id": "resp_68c35098e6fc819e80fb94b25b7d031b0f2d670b80edc507",
        "usage": Usage(3727, 347, 4074, 3200, 128),
    },
    "text_basic_gpt55.sse": {
        "id": "resp_00592e63e61b66660169fab1b9f8e481a2b321356198d7ac1b",
        "usage": Usage(11, 5, 16, 0, 0),
        "text": "pong",
        "kept": [
            {
                "type": "message",
                "id": "msg_00592e63e61b66660169fab1bada8481a28ef92eb62c168ead",
                "text": "pong",
                "phase": "final_answer",
            }
        ],
    },
    "web_search_annotations_gpt52.sse": {
        "id": "resp_0a4bc5e23769d65c00696d5e657050819db65effaff8424729",
        # two web_search_call items, each billed as a call on top of the tokens
        "usage": Usage(12243, 140, 12383, 0, 100, web_search_requests=2),
    },
}


def test_every_recording_is_covered() -> None:
    names = {p.name for p in real_files("openai_responses", "*.sse")}
    if not names:
        pytest.skip("../shared/fixtures/real is absent")
    assert names == set(EXPECTED)


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_stream(name: str, wire: str) -> None:
    path = real_fixture(f"openai_responses/{name}")
    want = EXPECTED[name]
    chunks = both(path, wire)
    check_shape(chunks)
    reply = reply_from_chunks(chunks)
    text, thinking = oracle(path)
    assert reply.text == text == want.get("text", text)
    assert reply.thinking == thinking == want.get("thinking", thinking)
    assert reply.tool_calls == want.get("calls", ())
    assert reply.usage == want["usage"]
    assert (reply.finish_reason, reply.response_id) == ("completed", want["id"])
    assert chunks[-1].usage == want["usage"]
    if "kept" in want:
        assert reply.metadata[OUTPUT_KEY] == want["kept"]


@pytest.mark.fixtures
def test_reasoning_summary_deltas_are_thinking_of_their_item() -> None:
    chunks = both(real_fixture("openai_responses/reasoning_summary_code_interpreter_gpt5.sse"))
    thinking = [c for c in chunks if c.kind is ChunkKind.THINKING]
    assert len(thinking) == 92 and {c.index for c in thinking} == {0}
    assert thinking[0].text == "**Calcul"
    # Built-in tool items (code interpreter) are not function calls.
    assert not [c for c in chunks if c.kind is ChunkKind.TOOL_CALL]
    # Nor are they kept, so the reasoning item they followed is not kept either: the API
    # refuses one sent without its following item (tests/test_responses_reasoning_pairs.py).
    kept = reply_from_chunks(chunks).metadata[OUTPUT_KEY]
    assert [k["type"] for k in kept] == ["message"]


@pytest.mark.fixtures
def test_reasoning_text_from_openrouter_is_kept_with_its_item() -> None:
    chunks = both(real_fixture("openai_responses/openrouter_reasoning_text_trailing_done.sse"))
    kept = reply_from_chunks(chunks).metadata[OUTPUT_KEY]
    assert kept[0]["type"] == "reasoning" and kept[0]["id"] == "rs_tmp_2kbe7x16sax"
    assert kept[0]["content"][0]["text"].startswith("The user asks")
    assert kept[1] == {"type": "message", "id": "msg_tmp_8cjof4f6zpw", "text": "4"}


# --- second turn: what the SDK actually sent ---------------------------------------------


def recorded(path: str) -> dict[str, Any]:
    return json.loads(real_fixture(path).read_text())


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_stateless_function_call_round_trip(mode: str, wire: str) -> None:
    want = recorded("openai_responses/function_call_roundtrip_gpt55.2.request.json")
    replay = Replay(
        real_fixture("openai_responses/function_call_roundtrip_gpt55.1.sse"),
        real_fixture("openai_responses/function_call_roundtrip_gpt55.2.sse"),
    )
    options = {"store": False, "include": ["reasoning.encrypted_content"]}
    m = model(replay, wire, reasoning={"effort": "low"})
    history = [rec(RecordType.PROMPT, want["input"][0]["content"])]
    first = reply_from_chunks(collect(m, mode, Request(history, options=options)))
    history += stored(first)
    history.append(rec(RecordType.TOOL_OUTPUT, "2869461", tool_call_id=first.tool_calls[0].id))
    second = reply_from_chunks(collect(m, mode, Request(history, options=options)))
    assert second.text == "1231 × 2331 = **2,869,461**"
    sent = replay.bodies[1]
    for key in ("include", "model", "reasoning", "store", "stream"):
        assert sent[key] == want[key]
    # The recorded client re-serialised the arguments; we send the model's own string.
    assert sent["input"][1]["arguments"] == '{"a":1231,"b":2331}'
    assert json.loads(sent["input"][1].pop("arguments")) == json.loads(
        want["input"][1].pop("arguments")
    )
    assert sent["input"] == want["input"]


def ascii_quotes(value: Any) -> Any:
    """pydantic-ai stored request bodies with typographic quotes made ASCII."""
    text = json.dumps(value, ensure_ascii=False)
    for fancy, plain in (("’", "'"), ("“", '\\"'), ("”", '\\"')):
        text = text.replace(fancy, plain)
    return json.loads(text)


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_reasoning_items_round_trip(mode: str, wire: str) -> None:
    want = recorded("openai_responses/reasoning_message_function_call_gpt55.2.request.json")
    replay = Replay(
        real_fixture("openai_responses/reasoning_message_function_call_gpt55.1.sse"),
        real_fixture("openai_responses/reasoning_message_function_call_gpt55.2.sse"),
    )
    options = {"include": ["reasoning.encrypted_content"]}
    m = model(replay, wire)
    history = [
        rec(RecordType.SYSTEM_PROMPT, want["instructions"]),
        rec(RecordType.PROMPT, "What is the capital of PotatoLand?"),
    ]
    first = reply_from_chunks(collect(m, mode, Request(history, options=options)))
    history += stored(first)
    history.append(rec(RecordType.TOOL_OUTPUT, "Potato City", tool_call_id=first.tool_calls[0].id))
    collect(m, mode, Request(history, options=options))
    first_sent, sent = replay.bodies
    assert first_sent["instructions"] == sent["instructions"] == want["instructions"]
    assert first_sent["input"] == [{"role": "user", "content": want["input"][0]["content"]}]
    assert sent["include"] == want["include"]
    # Reasoning item (with the encrypted_content of its output_item.done event), the
    # commentary message with its id and phase, the call with its item id, the output.
    assert ascii_quotes(sent["input"]) == want["input"]


def test_previous_response_id_sends_only_the_given_records() -> None:
    replay = Replay(events(CREATED, completed()))
    records = [rec(RecordType.TOOL_OUTPUT, "42", tool_call_id="call_9", tool_name="f")]
    list(model(replay).iter_chunks(Request(records, previous_response_id="resp_prev")))
    body = replay.bodies[0]
    assert body["previous_response_id"] == "resp_prev"
    assert body["input"] == [{"type": "function_call_output", "call_id": "call_9", "output": "42"}]
    assert "instructions" not in body


def test_request_body_from_records_of_another_provider() -> None:
    """Records without Responses metadata (say, from a Chat or Anthropic reply) still map."""
    replay = Replay(events(CREATED, completed()))
    weather = Tool("weather", "Current weather").string("city")
    records = [
        rec(RecordType.SYSTEM_PROMPT, "Be brief."),
        rec(RecordType.PROMPT, "Paris?"),
        rec(
            RecordType.MODEL_RESP,
            "Checking.",
            metadata={"thinking_blocks": [{"type": "thinking", "signature": "s"}]},
        ),
        rec(RecordType.TOOL_CALL, '{"city":"Paris"}', tool_call_id="c1", tool_name="weather"),
        rec(RecordType.TOOL_OUTPUT, "sunny", tool_call_id="c1", tool_name="weather"),
        rec(RecordType.SYSTEM_PROMPT, "Now answer in French."),
        rec(RecordType.MODEL_RESP, "Ensoleillé."),
    ]
    request = Request(records, tools=[weather], max_output_tokens=50, options={"top_p": 0.5})
    list(model(replay, temperature=0.1).iter_chunks(request))
    body = replay.bodies[0]
    assert body["instructions"] == "Be brief."
    assert (body["max_output_tokens"], body["temperature"], body["top_p"]) == (50, 0.1, 0.5)
    assert body["tools"] == [weather.to_openai_responses()]
    assert body["stream"] is True
    assert body["input"] == [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "Checking."},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"role": "system", "content": "Now answer in French."},
        {"role": "assistant", "content": "Ensoleillé."},
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_tool_call_arguments_that_are_no_json_object_go_back_empty(mode: str, wire: str) -> None:
    """A call cut by the token limit is stored as the model wrote it (``'{"i": 1'``) but
    sent back as ``"{}"``, as Chat, AnthropicModel and GeminiModel send it: servers that
    parse stored arguments (vLLM, SGLang) refuse the cut text. A JSON object goes back
    byte for byte, with or without the call's kept item id."""
    sent_as = {'{ "i" : 1 }': '{ "i" : 1 }', '{"i": 1': "{}", "": "{}", "[1]": "{}"}
    kept = [
        {"type": "reasoning", "id": "rs_1", "summary": []},  # pairs the call with its item id
        {"type": "function_call", "id": "fc_0", "call_id": "c0"},
    ]
    records = [
        rec(RecordType.PROMPT, "go"),
        rec(RecordType.MODEL_RESP, "", metadata={OUTPUT_KEY: kept}),
    ]
    for i, raw in enumerate(sent_as):
        records.append(rec(RecordType.TOOL_CALL, raw, tool_call_id=f"c{i}", tool_name="f"))
    for i in range(len(sent_as)):
        records.append(rec(RecordType.TOOL_OUTPUT, "done", tool_call_id=f"c{i}", tool_name="f"))
    for raw in ('{"i": 1', "[1]"):  # and a call with no reply record before it
        records.append(rec(RecordType.TOOL_CALL, raw, tool_call_id="alone", tool_name="f"))
        records.append(rec(RecordType.TOOL_OUTPUT, "done", tool_call_id="alone", tool_name="f"))
    replay = Replay(events(CREATED, completed()))
    collect(model(replay, wire), mode, Request(records))
    calls = [i for i in replay.bodies[0]["input"] if i.get("type") == "function_call"]
    assert calls[0] == {
        "type": "function_call",
        "call_id": "c0",
        "name": "f",
        "arguments": '{ "i" : 1 }',
        "id": "fc_0",
    }
    assert [c["arguments"] for c in calls] == [*sent_as.values(), "{}", "{}"]


def test_kept_messages_give_way_to_an_edited_record_text() -> None:
    replay = Replay(events(CREATED, completed()))
    kept = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc"},
        {"type": "message", "id": "msg_1", "text": "a", "phase": "commentary"},
        {"type": "message", "id": "msg_2", "text": "b", "phase": "final_answer"},
    ]
    records = [
        rec(RecordType.PROMPT, "q"),
        rec(RecordType.MODEL_RESP, "resumed and longer", metadata={OUTPUT_KEY: kept}),
    ]
    list(model(replay).iter_chunks(Request(records)))
    # Without its messages the reasoning item may not go either: the API refuses one not
    # followed by the item it produced (tests/test_responses_reasoning_pairs.py).
    assert replay.bodies[0]["input"][1:] == [
        {"role": "assistant", "content": "resumed and longer"},
    ]


# --- crafted streams ---------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
def test_interleaved_function_calls_keyed_by_item(wire: str) -> None:
    stream = events(
        CREATED,
        fc_added(0, "fc_a", "call_a", "weather"),
        fc_added(1, "fc_b", "call_b", "time"),
        fc_delta(0, "fc_a", '{"city":'),
        fc_delta(1, "fc_b", '{"tz":'),
        fc_delta(1, "fc_b", '"CET"}'),
        fc_delta(0, "fc_a", '"Oslo"}'),
        fc_done(0, "fc_a", "call_a", "weather", '{"city":"Oslo"}'),
        fc_done(1, "fc_b", "call_b", "time", '{"tz":"CET"}'),
        completed(),
    )
    chunks = both(stream, wire)
    check_shape(chunks)
    assert chunks[:6] == [
        Chunk(ChunkKind.TOOL_CALL, "", 0, "call_a", "weather"),
        Chunk(ChunkKind.TOOL_CALL, "", 1, "call_b", "time"),
        Chunk(ChunkKind.TOOL_CALL, '{"city":', 0),
        Chunk(ChunkKind.TOOL_CALL, '{"tz":', 1),
        Chunk(ChunkKind.TOOL_CALL, '"CET"}', 1),
        Chunk(ChunkKind.TOOL_CALL, '"Oslo"}', 0),
    ]
    reply = reply_from_chunks(chunks)
    assert [(c.id, c.name, dict(c.arguments)) for c in reply.tool_calls] == [
        ("call_a", "weather", {"city": "Oslo"}),
        ("call_b", "time", {"tz": "CET"}),
    ]
    assert reply.usage == Usage(20, 12, 32, 8, 5)
    assert reply.metadata[OUTPUT_KEY] == [
        {"type": "function_call", "id": "fc_a", "call_id": "call_a"},
        {"type": "function_call", "id": "fc_b", "call_id": "call_b"},
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_argument_deltas_follow_their_item_id(wire: str) -> None:
    """A delta without (or with a wrong) output_index still lands on its item's call."""
    no_index = fc_delta(0, "fc_b", '{"b":1}')
    del no_index["output_index"]
    stream = events(
        fc_added(3, "fc_a", "call_a", "f"),
        fc_added(5, "fc_b", "call_b", "g"),
        no_index,
        fc_delta(0, "fc_a", '{"a":1}'),
        completed(),
    )
    chunks = both(stream, wire)
    assert chunks[2:4] == [
        Chunk(ChunkKind.TOOL_CALL, '{"b":1}', 5),
        Chunk(ChunkKind.TOOL_CALL, '{"a":1}', 3),
    ]
    reply = reply_from_chunks(chunks)
    assert [(c.id, c.raw) for c in reply.tool_calls] == [
        ("call_a", '{"a":1}'),
        ("call_b", '{"b":1}'),
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_arguments_only_in_the_finished_item(wire: str) -> None:
    """Some compatible servers send no argument deltas, only the whole finished item."""
    stream = events(
        fc_added(0, "fc_a", "call_a", "now"),
        fc_done(0, "fc_a", "call_a", "now", '{"tz":"UTC"}'),
        fc_added(1, "fc_b", "call_b", "now", '{"tz":"CET"}'),
        fc_done(1, "fc_b", "call_b", "now", '{"tz":"CET"}'),
        completed(),
    )
    reply = reply_from_chunks(both(stream, wire))
    assert [c.raw for c in reply.tool_calls] == ['{"tz":"UTC"}', '{"tz":"CET"}']


@pytest.mark.parametrize("wire", WIRES)
def test_reasoning_summary_and_text_deltas_are_thinking(wire: str) -> None:
    stream = events(
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Plan",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": "rs_1",
            "output_index": 0,
            "summary_index": 0,
            "delta": "",
        },
        {
            "type": "response.reasoning_text.delta",
            "item_id": "rs_2",
            "output_index": 1,
            "content_index": 0,
            "delta": "raw",
        },
        text_delta("Hi", 2),
        text_delta("", 2),
        completed(),
    )
    chunks = both(stream, wire)
    assert chunks[:3] == [
        Chunk(ChunkKind.THINKING, "Plan", 0),
        Chunk(ChunkKind.THINKING, "raw", 1),
        Chunk(ChunkKind.TEXT, "Hi"),
    ]


@pytest.mark.parametrize("wire", WIRES)
def test_response_failed_is_an_error(wire: str) -> None:
    failed = response("failed", error={"code": "server_error", "message": "The model crashed"})
    stream = events(CREATED, text_delta("par"), {"type": "response.failed", "response": failed})
    err, chunks = both_error(stream, wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "par")]
    assert (err.retryable, err.error_type, err.status_code) == (True, "server_error", None)
    assert "The model crashed" in str(err)


@pytest.mark.parametrize("wire", WIRES)
def test_response_incomplete_is_an_error(wire: str) -> None:
    incomplete = response("incomplete", incomplete_details={"reason": "max_output_tokens"})
    stream = events(text_delta("par"), {"type": "response.incomplete", "response": incomplete})
    err, chunks = both_error(stream, wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "par")]
    assert (err.retryable, err.error_type) == (False, "max_output_tokens")
    assert "max_output_tokens" in str(err)


def cut_short(path: Path, ending: str) -> bytes:
    """A recorded stream with its ``response.completed`` event turned into ``ending``
    (``incomplete``: cut by ``max_output_tokens``; ``failed``: a server error), the usage
    unchanged, as the API sends it then."""
    out = []
    for line in path.read_text().split("\n"):
        if line == "event: response.completed":
            line = f"event: response.{ending}"
        elif line.startswith('data: {"type":"response.completed"'):
            data = json.loads(line[6:])
            data["type"] = f"response.{ending}"
            data["response"]["status"] = ending
            if ending == "incomplete":
                data["response"]["incomplete_details"] = {"reason": "max_output_tokens"}
            else:
                data["response"]["error"] = {"code": "server_error", "message": "The model crashed"}
            line = "data: " + json.dumps(data)
        out.append(line)
    return "\n".join(out).encode()


@pytest.mark.fixtures
@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("ending", ["incomplete", "failed"])
def test_a_response_cut_short_delivers_its_usage_before_the_error(ending: str, wire: str) -> None:
    """The usage a ``response.incomplete`` / ``response.failed`` event reports was billed: it
    is delivered (a USAGE chunk) before the error, as a checkpoint's usage to be spent."""
    body = cut_short(real_fixture("openai_responses/text_basic_gpt55.sse"), ending)
    err, chunks = both_error(body, wire)
    assert chunks == [
        Chunk(ChunkKind.TEXT, "pong"),
        Chunk(ChunkKind.USAGE, usage=Usage(11, 5, 16, 0, 0)),
    ]
    if ending == "incomplete":
        assert (err.retryable, err.error_type) == (False, "max_output_tokens")
    else:
        assert (err.retryable, err.error_type) == (True, "server_error")
        assert "The model crashed" in str(err) and isinstance(err.__cause__, openai.APIError)


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wire", WIRES)
def test_a_reply_cut_by_max_output_tokens_keeps_its_usage_in_the_checkpoint(
    mode: str, wire: str
) -> None:
    """docs/guarantees.md: what a cut attempt was billed (the checkpoint's usage) is spent."""
    body = cut_short(real_fixture("openai_responses/text_basic_gpt55.sse"), "incomplete")
    cw = ContextWindow(rxcontext.open(":memory:"), model(Replay(body), wire), "r", retry=None)
    cw.add_prompt("hi")
    with pytest.raises(StreamInterrupted) as info:
        cw.call() if mode == "sync" else asyncio.run(cw.acall())
    cause = info.value.__cause__
    assert isinstance(cause, ProviderError) and cause.error_type == "max_output_tokens"
    (cp,) = cw.checkpoints()
    assert (cp.text, cp.usage) == ("pong", Usage(11, 5, 16, 0, 0))
    kept = cw.keep(cp.id)
    assert kept.metadata["usage"]["total_tokens"] == 16
    assert cw.stats().usage.total_tokens == 16


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("code", "retryable"), [("rate_limit_exceeded", True), ("invalid_prompt", False), (None, False)]
)
def test_bare_error_event(code: str | None, retryable: bool, wire: str) -> None:
    error = {"type": "error", "code": code, "message": "Something went wrong", "param": None}
    err, chunks = both_error(events(CREATED, text_delta("a"), error), wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "a")]
    assert (err.retryable, err.error_type) == (retryable, code)
    assert "Something went wrong" in str(err)


@pytest.mark.parametrize("wire", WIRES)
def test_stream_ending_without_completed_is_an_error(wire: str) -> None:
    err, chunks = both_error(events(CREATED, text_delta("a")), wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "a")]
    assert (err.retryable, err.error_type) == (True, "incomplete_stream")


@pytest.mark.parametrize("wire", WIRES)
def test_error_payload_with_error_key(wire: str) -> None:
    err, _ = both_error(
        events(CREATED) + sse({"error": {"message": "nope", "type": "server_error"}}), wire
    )
    assert (err.retryable, err.error_type) == (True, "server_error")
    assert isinstance(err.__cause__, openai.APIError)


# --- complete(): the non-streaming API gives the streamed Reply ---------------------------


def completed_response(path: Path) -> dict[str, Any]:
    return next(e for e in done_events(path) if e["type"] == "response.completed")["response"]


@pytest.mark.fixtures
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "name",
    [
        "text_basic_gpt55.sse",
        "function_call_roundtrip_gpt55.1.sse",
        "function_call_roundtrip_gpt55.2.sse",
        "reasoning_summary_code_interpreter_gpt5.sse",
        "web_search_annotations_gpt52.sse",
        "reasoning_message_function_call_gpt55.1.sse",
        "openrouter_reasoning_text_trailing_done.sse",
    ],
)
def test_complete_equals_streamed(name: str, mode: str) -> None:
    """The completed event's response is the non-streaming body of the same reply."""
    path = real_fixture(f"openai_responses/{name}")
    streamed = reply_from_chunks(both(path))
    body = json.dumps(completed_response(path)).encode()
    m = model(Replay(Served(body, headers={"content-type": "application/json"})))
    got = m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))
    # The server re-encrypts reasoning (and OpenRouter renames its items) in the final
    # response object; everything else is the same.
    same_items = name not in (
        "reasoning_message_function_call_gpt55.1.sse",
        "openrouter_reasoning_text_trailing_done.sse",
    )
    if same_items:
        assert got == streamed
    else:
        assert got.metadata != streamed.metadata
        assert [k["type"] for k in got.metadata[OUTPUT_KEY]] == [
            k["type"] for k in streamed.metadata[OUTPUT_KEY]
        ]
        assert (got.text, got.thinking, got.tool_calls, got.usage) == (
            streamed.text,
            streamed.thinking,
            streamed.tool_calls,
            streamed.usage,
        )
        assert (got.finish_reason, got.response_id) == (
            streamed.finish_reason,
            streamed.response_id,
        )


@pytest.mark.parametrize("mode", MODES)
def test_complete_failed_and_incomplete_are_errors(mode: str) -> None:
    for body, error_type in (
        (response("failed", error={"code": "server_error", "message": "x"}), "server_error"),
        (response("incomplete", incomplete_details={"reason": "content_filter"}), "content_filter"),
    ):
        served = Served(json.dumps(body).encode(), headers={"content-type": "application/json"})
        m = model(Replay(served))
        with pytest.raises(ProviderError) as info:
            m.complete(HELLO) if mode == "sync" else asyncio.run(m.acomplete(HELLO))
        assert info.value.error_type == error_type


# --- HTTP, transport, cancellation -------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("status", "retryable", "headers", "retry_after"),
    [
        (401, False, {}, None),
        (400, False, {}, None),
        (429, True, {"retry-after": "3"}, 3.0),
        (500, True, {}, None),
        (502, True, {}, None),
    ],
)
def test_http_errors(
    status: int, retryable: bool, headers: dict[str, str], retry_after: float | None, wire: str
) -> None:
    body = json.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {KEY}",
                "type": "invalid_request_error",
            }
        }
    ).encode()
    served = Served(body, status, {"content-type": "application/json", **headers})
    err, chunks = both_error(served, wire)
    assert chunks == []
    assert (err.status_code, err.retryable, err.retry_after) == (status, retryable, retry_after)
    assert isinstance(err.__cause__, openai.APIStatusError)
    for text in (str(err), repr(err), str(err.__cause__), repr(err.__cause__)):
        assert KEY not in text


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (httpx2.ReadError("reset"), "connection_error"),
        (httpx2.DecodingError("corrupt gzip body"), "connection_error"),
        (httpx2.RemoteProtocolError("peer closed"), "connection_error"),
        (httpx2.ReadTimeout("slow"), "timeout"),
    ],
)
def test_transport_error_mid_stream(error: Exception, error_type: str, wire: str) -> None:
    body = events(CREATED, text_delta("a"), text_delta("b"), completed())
    err, chunks = both_error(Served(body, cut_after=2, error=error), wire)
    assert chunks == [Chunk(ChunkKind.TEXT, "a")]
    assert (err.retryable, err.error_type) == (True, error_type)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("mode", MODES)
def test_transport_error_at_connect(mode: str, wire: str) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused")

    transport = httpx2.MockTransport(handler)
    m = OpenAIResponsesModel(
        "m",
        client=openai.OpenAI(
            api_key=KEY, max_retries=0, http_client=httpx2.Client(transport=transport)
        ),
        async_client=openai.AsyncOpenAI(
            api_key=KEY, max_retries=0, http_client=httpx2.AsyncClient(transport=transport)
        ),
        wire=wire,  # type: ignore[arg-type]
    )
    with pytest.raises(ProviderError) as info:
        collect(m, mode)
    assert (info.value.retryable, info.value.error_type) == (True, "connection_error")


LONG = events(CREATED, *[text_delta(f"w{i} ") for i in range(20)], completed())


@pytest.mark.parametrize("wire", WIRES)
def test_cancellation_closes_the_response(wire: str) -> None:
    replay = Replay(LONG)
    gen = model(replay, wire).iter_chunks(HELLO)
    assert next(gen) == Chunk(ChunkKind.TEXT, "w0 ")
    gen.close()
    assert replay.closed == 1

    replay = Replay(LONG)
    gen = model(replay, wire).iter_chunks(HELLO)
    next(gen)
    del gen
    gc.collect()
    assert replay.closed == 1

    replay = Replay(LONG)

    async def run() -> None:
        agen = model(replay, wire).aiter_chunks(HELLO)
        await anext(agen)
        await agen.aclose()

    asyncio.run(run())
    assert replay.closed == 1


def test_name() -> None:
    assert OpenAIResponsesModel("gpt-5-mini", client=openai.OpenAI(api_key=KEY)).name == (
        "openai-responses:gpt-5-mini"
    )
